//! `confab-gateway`: the gateway service of the distributed stack. Configured by
//! `CONFAB_*` environment variables (docs/operations.md); a bad value exits
//! with 64 before any port is bound.

use clap::Parser;
use confab_core::vars;
use confab_runtime::process::{HistoryFlags, ServiceFlags};

/// The gateway service of Confab's distributed stack. Every flag mirrors a
/// CONFAB_* variable (the flag wins); see docs/operations.md for all of them.
#[derive(Parser)]
#[command(name = "confab-gateway", version)]
struct Cli {
    #[command(flatten)]
    service: ServiceFlags,
    #[command(flatten)]
    history: HistoryFlags,
    /// unique id of this gateway [env: CONFAB_GATEWAY_ID]
    #[arg(long)]
    gateway_id: Option<String>,
    /// comma-separated router addresses [env: CONFAB_ROUTER_ADDRS]
    #[arg(long)]
    router_addrs: Option<String>,
}

fn main() {
    let cli = Cli::parse();
    let env = cli
        .history
        .over(cli.service.overlay())
        .flag(vars::GATEWAY_ID, cli.gateway_id)
        .flag(vars::ROUTER_ADDRS, cli.router_addrs);
    confab_runtime::process::main(&env, confab_gateway::distributed::run);
}
