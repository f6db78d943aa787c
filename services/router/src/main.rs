//! `confab-router`: the router service of the distributed stack. Configured by
//! `CONFAB_*` environment variables (docs/operations.md); a bad value exits
//! with 64 before any port is bound.

use clap::Parser;
use confab_common::config::{Overlay, EXIT_CONFIG};
use confab_common::{shutdown, telemetry};

/// The router service of Confab's distributed stack. Every flag mirrors a
/// CONFAB_* variable (the flag wins); see docs/operations.md for all of them.
#[derive(Parser)]
#[command(name = "confab-router", version)]
struct Cli {
    /// address to serve RouterLink on [env: CONFAB_LISTEN]
    #[arg(long)]
    listen: Option<String>,
    /// Kafka bootstrap servers [env: CONFAB_KAFKA_BROKERS]
    #[arg(long)]
    kafka_brokers: Option<String>,
    /// comma-separated history addresses [env: CONFAB_HISTORY_ADDRS]
    #[arg(long)]
    history_addrs: Option<String>,
}

fn main() {
    let cli = Cli::parse();
    let env = Overlay::default()
        .flag("CONFAB_LISTEN", cli.listen)
        .flag("CONFAB_KAFKA_BROKERS", cli.kafka_brokers)
        .flag("CONFAB_HISTORY_ADDRS", cli.history_addrs);
    let config = match confab_router::distributed::RouterConfig::from_env(&env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("confab-router: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    let listen = confab_common::config::Env::get(&env, "CONFAB_LISTEN")
        .unwrap_or_else(|| "127.0.0.1:50061".into());
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
