//! `confab-history`: the history service of the distributed stack. Configured by
//! `CONFAB_*` environment variables (docs/operations.md); a bad value exits
//! with 64 before any port is bound.

use clap::Parser;
use confab_common::config::{Overlay, EXIT_CONFIG};
use confab_common::{shutdown, telemetry};

/// The history service of Confab's distributed stack. Every flag mirrors a
/// CONFAB_* variable (the flag wins); see docs/operations.md for all of them.
#[derive(Parser)]
#[command(name = "confab-history", version)]
struct Cli {
    /// address to serve HistoryReader on [env: CONFAB_LISTEN]
    #[arg(long)]
    listen: Option<String>,
    /// Kafka bootstrap servers [env: CONFAB_KAFKA_BROKERS]
    #[arg(long)]
    kafka_brokers: Option<String>,
    /// PostgreSQL URL (prefer the variable: flags show in ps) [env: CONFAB_DATABASE_URL]
    #[arg(long)]
    database_url: Option<String>,
    /// Apply the database migrations and exit.
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Apply the PostgreSQL migrations (CONFAB_DATABASE_URL) and exit.
    Migrate,
}

fn main() {
    let cli = Cli::parse();
    let migrate_only = matches!(cli.command, Some(Cmd::Migrate));
    let env = Overlay::default()
        .flag("CONFAB_LISTEN", cli.listen)
        .flag("CONFAB_KAFKA_BROKERS", cli.kafka_brokers)
        .flag("CONFAB_DATABASE_URL", cli.database_url);
    let config = match confab_history::distributed::HistoryConfig::from_env(&env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("confab-history: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    let listen = confab_common::config::Env::get(&env, "CONFAB_LISTEN")
        .unwrap_or_else(|| "127.0.0.1:50071".into());
    telemetry::init(std::env::var("CONFAB_LOG_FORMAT").is_ok_and(|f| f == "json"));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("confab-history: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if migrate_only {
        let code = runtime.block_on(async move {
            match confab_history::PostgresStore::connect(&config.database_url, config.limits, 1)
                .await
            {
                Ok(_) => {
                    println!("confab-history: migrations applied");
                    0
                }
                Err(e) => {
                    eprintln!("confab-history: cannot migrate: {e}");
                    1
                }
            }
        });
        std::process::exit(code);
    }
    let code = runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(&listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("confab-history: cannot listen on {listen}: {e}");
                return EXIT_CONFIG;
            }
        };
        let (trigger, signal) = shutdown::channel();
        tokio::spawn(async move {
            shutdown::os_signal().await;
            trigger.fire();
        });
        match confab_history::distributed::run(config, listener, signal).await {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "history failed");
                1
            }
        }
    });
    std::process::exit(code);
}
