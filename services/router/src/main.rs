//! `confab-router`: the router service of the distributed stack. Configured by
//! `CONFAB_*` environment variables (docs/operations.md); a bad value exits
//! with 64 before any port is bound.

use confab_common::config::{ProcessEnv, EXIT_CONFIG};
use confab_common::{shutdown, telemetry};

fn main() {
    let config = match confab_router::distributed::RouterConfig::from_env(&ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("confab-router: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    let listen = std::env::var("CONFAB_LISTEN").unwrap_or_else(|_| "127.0.0.1:50061".into());
    telemetry::init(std::env::var("CONFAB_LOG_FORMAT").is_ok_and(|f| f == "json"));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("confab-router: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(&listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("confab-router: cannot listen on {listen}: {e}");
                return EXIT_CONFIG;
            }
        };
        let (trigger, signal) = shutdown::channel();
        tokio::spawn(async move {
            shutdown::os_signal().await;
            trigger.fire();
        });
        match confab_router::distributed::run(config, listener, signal).await {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "router failed");
                1
            }
        }
    });
    std::process::exit(code);
}
