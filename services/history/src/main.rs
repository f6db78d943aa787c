//! `confab-history`: the history service of the distributed stack. Configured by
//! `CONFAB_*` environment variables (docs/operations.md); a bad value exits
//! with 64 before any port is bound.

/// mimalloc: glibc's malloc and free were a third of history's CPU while
/// sequencing (docs/benchmarks-log.md). The gateway and `confab dev` keep the
/// system allocator: there mimalloc gained nothing measurable and cost about
/// 4 KiB more per idle stream.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use confab_core::config::EXIT_CONFIG;
use confab_runtime::process::ServiceFlags;

/// The history service of Confab's distributed stack. Every flag mirrors a
/// CONFAB_* variable (the flag wins); see docs/operations.md for all of them.
#[derive(Parser)]
#[command(name = "confab-history", version)]
struct Cli {
    #[command(flatten)]
    service: ServiceFlags,
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
    let env = cli
        .service
        .overlay()
        .flag(confab_core::vars::DATABASE_URL, cli.database_url);
    if let Some(Cmd::Migrate) = cli.command {
        std::process::exit(migrate(&env));
    }
    confab_runtime::process::main(&env, confab_history::distributed::run);
}

/// `confab-history migrate`: applies the migrations; the exit code.
fn migrate(env: &dyn confab_core::config::Env) -> i32 {
    let config = confab_history::distributed::HistoryConfig::from_env_for_migrate(env);
    match (config, tokio::runtime::Runtime::new()) {
        (Err(e), _) => {
            eprintln!("confab-history: {e}");
            EXIT_CONFIG
        }
        (_, Err(e)) => {
            eprintln!("confab-history: cannot start the runtime: {e}");
            1
        }
        (Ok(config), Ok(runtime)) => runtime.block_on(async move {
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
        }),
    }
}
