//! `confab`: run everything in one process, or mint a token.

use clap::{Parser, Subcommand};
use confab::dev::DevConfig;
use confab_core::config::{ProcessEnv, EXIT_CONFIG};
use confab_runtime::shutdown;
use confab_runtime::telemetry;

#[derive(Parser)]
#[command(name = "confab", version, about = "Confab chat backend")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run gateway, router and history in one process (SQLite, in-process log).
    Dev {
        /// Address to serve gRPC on [env: CONFAB_LISTEN, default 127.0.0.1:50051].
        #[arg(long)]
        listen: Option<String>,
        /// Directory for the SQLite database [env: CONFAB_DATA_DIR, default ./data].
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        /// Address to serve /metrics, /livez and /readyz on [env: CONFAB_METRICS_LISTEN, default: none].
        #[arg(long)]
        metrics_listen: Option<String>,
    },
    /// Print a token for USER signed with CONFAB_JWT_SECRET (or the development secret).
    Token {
        /// The user id (the token's `sub`).
        user: String,
        /// Seconds until the token expires.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Cmd::Token { user, ttl } => token(&user, ttl),
        Cmd::Dev {
            listen,
            data_dir,
            metrics_listen,
        } => dev(listen, data_dir, metrics_listen),
    };
    std::process::exit(code);
}

fn config() -> Result<DevConfig, i32> {
    DevConfig::from_env(&ProcessEnv).map_err(|e| {
        eprintln!("confab: {e}");
        EXIT_CONFIG
    })
}

fn token(user: &str, ttl: u64) -> i32 {
    let config = match config() {
        Ok(c) => c,
        Err(code) => return code,
    };
    match config.authenticator().and_then(|a| a.mint(user, ttl)) {
        Ok(token) => {
            println!("{token}");
            0
        }
        Err(e) => {
            eprintln!("confab token: {e}");
            EXIT_CONFIG
        }
    }
}

fn dev(
    listen: Option<String>,
    data_dir: Option<std::path::PathBuf>,
    metrics_listen: Option<String>,
) -> i32 {
    let mut config = match config() {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some(l) = listen {
        config.listen = l;
    }
    if let Some(d) = data_dir {
        config.data_dir = d;
    }
    if let Some(m) = metrics_listen.filter(|m| !m.trim().is_empty()) {
        config.metrics_listen = Some(m);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("confab: cannot start the runtime: {e}");
            return 1;
        }
    };
    // Within the runtime: span export (CONFAB_OTLP_ENDPOINT) runs on it.
    let telemetry =
        match runtime.block_on(async { telemetry::init_from_env("confab", &ProcessEnv) }) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("confab: {e}");
                return EXIT_CONFIG;
            }
        };
    let code = runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(&config.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("confab: cannot listen on {}: {e}", config.listen);
                return EXIT_CONFIG;
            }
        };
        let metrics = match confab::dev::start_metrics(&config).await {
            Ok(m) => m,
            Err(e) => {
                let listen = config.metrics_listen.as_deref().unwrap_or_default();
                eprintln!("confab: cannot listen on {listen} (CONFAB_METRICS_LISTEN): {e}");
                return EXIT_CONFIG;
            }
        };
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| config.listen.clone());
        println!("confab dev: serving gRPC on {addr} (history in {})", config.db_path().display());
        if let Some(m) = &metrics {
            println!("  metrics:      http://{}/metrics (health: /livez, /readyz)", m.addr);
        }
        println!("  get a token:  TOKEN=$(make -s token NAME=alice)");
        println!("  first call:   grpcurl -plaintext -H \"authorization: Bearer $TOKEN\" {addr} confab.v1.Chat/ListConversations");
        let (trigger, signal) = shutdown::channel();
        tokio::spawn(async move {
            shutdown::os_signal().await;
            trigger.fire();
        });
        let code = match confab::dev::run(config, listener, signal).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("confab: {e:#}");
                1
            }
        };
        if let Some(m) = metrics {
            m.stop().await;
        }
        code
    });
    telemetry.shutdown();
    code
}
