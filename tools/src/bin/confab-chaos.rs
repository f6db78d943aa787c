//! `make chaos`: the long chaos run against real processes, the real broker
//! and a real PostgreSQL on this machine. Prints the checker's report and
//! exits 1 if any invariant was violated.
//!
//! Options: `--short` (the scenario `make test` runs), `--seconds N` (load phase), `--users N`, `--rounds N` (how many
//! times every fault is applied), `--down-ms N` (how long each target stays
//! down), `--logs DIR` (keep the services' logs there).
//!
//! `--soak MINUTES` (`make soak`): instead, a moderate steady load for that
//! long with a few faults in its first half, reading every process's
//! memory, descriptors, threads and the consumer lag thirty times (at most
//! once a minute); growth that does not level off after the faults fails
//! the run. `--plot FILE` writes the readings as an SVG plot.

use confab_tools::chaos::{self, Config};
use std::time::Duration;

fn main() {
    let mut config = Config::long();
    let mut plot: Option<std::path::PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = |what: &str| {
            args.next()
                .unwrap_or_else(|| fail(&format!("{flag} needs {what}")))
        };
        match flag.as_str() {
            "--short" => {
                config = Config {
                    log_dir: config.log_dir.take(),
                    ..Config::short()
                }
            }
            "--seconds" => config.load_for = Duration::from_secs(number(&value("seconds"))),
            "--users" => config.users = number(&value("a count")) as usize,
            "--rounds" => config.rounds = number(&value("a count")) as usize,
            "--down-ms" => config.down_for = Duration::from_millis(number(&value("milliseconds"))),
            "--logs" => config.log_dir = Some(value("a directory").into()),
            "--soak" => {
                let minutes = number(&value("minutes"));
                config = Config {
                    log_dir: config.log_dir.take(),
                    ..Config::soak(Duration::from_secs(minutes * 60))
                }
            }
            "--plot" => plot = Some(value("a file").into()),
            "-h" | "--help" => {
                println!("usage: confab-chaos [--short | --soak MINUTES] [--seconds N] [--users N] [--rounds N] [--down-ms N] [--logs DIR] [--plot FILE]");
                return;
            }
            other => fail(&format!("unknown option {other} (try --help)")),
        }
    }
    if config.users < 2 || config.rounds == 0 || config.load_for.is_zero() {
        fail("--users must be at least 2, --rounds and --seconds at least 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&format!("runtime: {e}")));
    let report = runtime.block_on(chaos::run(config));
    println!("{report}");
    if let (Some(path), Some(samples)) = (&plot, &report.samples) {
        samples
            .plot(path, "make soak: every process over the run")
            .unwrap_or_else(|e| fail(&format!("plot {}: {e}", path.display())));
        println!("plot: {}", path.display());
    }
    std::process::exit(if report.violations() == 0 { 0 } else { 1 });
}

fn number(s: &str) -> u64 {
    s.parse()
        .unwrap_or_else(|_| fail(&format!("{s:?} is not a whole number")))
}

fn fail(msg: &str) -> ! {
    eprintln!("confab-chaos: {msg}");
    std::process::exit(64);
}
