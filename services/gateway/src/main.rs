//! `confab-gateway`: the gateway service of the distributed stack. Configured by
//! `CONFAB_*` environment variables (docs/operations.md); a bad value exits
//! with 64 before any port is bound.

use clap::Parser;
use confab_runtime::process::ServiceFlags;

/// The gateway service of Confab's distributed stack. Every flag mirrors a
/// CONFAB_* variable (the flag wins); see docs/operations.md for all of them.
#[derive(Parser)]
#[command(name = "confab-gateway", version)]
struct Cli {
    #[command(flatten)]
    service: ServiceFlags,
    /// unique id of this gateway [env: CONFAB_GATEWAY_ID]
    #[arg(long)]
    gateway_id: Option<String>,
    /// comma-separated history addresses [env: CONFAB_HISTORY_ADDRS]
    #[arg(long)]
    history_addrs: Option<String>,
    /// comma-separated router addresses [env: CONFAB_ROUTER_ADDRS]
    #[arg(long)]
    router_addrs: Option<String>,
}

fn main() {
    let cli = Cli::parse();
    let env = cli
        .service
        .overlay()
        .flag(confab_core::vars::GATEWAY_ID, cli.gateway_id)
        .flag(confab_core::vars::HISTORY_ADDRS, cli.history_addrs)
        .flag(confab_core::vars::ROUTER_ADDRS, cli.router_addrs);
    let config = confab_gateway::distributed::DistributedConfig::from_env(&env);
    confab_runtime::process::main(
        "confab-gateway",
        &env,
        config,
        "127.0.0.1:50051",
        confab_gateway::distributed::run,
    );
}
