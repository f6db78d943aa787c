//! `confab-router`: the router service of the distributed stack. Configured by
//! `CONFAB_*` environment variables (docs/operations.md); a bad value exits
//! with 64 before any port is bound.

/// mimalloc, as in history: glibc's malloc, free and `malloc_consolidate`
/// were about a fifth of the router's CPU while routing at full load
/// (docs/benchmarks-log.md). The router holds no client connections, so the
/// gateway's reason for the system allocator (memory per idle stream) does
/// not apply.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use confab_runtime::process::{HistoryFlags, ServiceFlags};

/// The router service of Confab's distributed stack. Every flag mirrors a
/// CONFAB_* variable (the flag wins); see docs/operations.md for all of them.
#[derive(Parser)]
#[command(name = "confab-router", version)]
struct Cli {
    #[command(flatten)]
    service: ServiceFlags,
    #[command(flatten)]
    history: HistoryFlags,
}

fn main() {
    let cli = Cli::parse();
    let env = cli.history.over(cli.service.overlay());
    confab_runtime::process::main(&env, confab_router::distributed::run);
}
