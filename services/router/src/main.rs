//! `confab-router`: the router service of the distributed stack. Configured by
//! `CONFAB_*` environment variables (docs/operations.md); a bad value exits
//! with 64 before any port is bound.

use clap::Parser;
use confab_runtime::process::ServiceFlags;

/// The router service of Confab's distributed stack. Every flag mirrors a
/// CONFAB_* variable (the flag wins); see docs/operations.md for all of them.
#[derive(Parser)]
#[command(name = "confab-router", version)]
struct Cli {
    #[command(flatten)]
    service: ServiceFlags,
    /// comma-separated history addresses [env: CONFAB_HISTORY_ADDRS]
    #[arg(long)]
    history_addrs: Option<String>,
}

fn main() {
    let cli = Cli::parse();
    let env = cli
        .service
        .overlay()
        .flag(confab_core::vars::HISTORY_ADDRS, cli.history_addrs);
    let config = confab_router::distributed::RouterConfig::from_env(&env);
    confab_runtime::process::main(
        "confab-router",
        &env,
        config,
        "127.0.0.1:50061",
        confab_router::distributed::run,
    );
}
