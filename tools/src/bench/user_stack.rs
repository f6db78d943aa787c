//! `make stack`, the stack the README has users run, measured from outside
//! as a user would: started by `make stack` itself (PostgreSQL, the nisshi
//! broker on the engine the script chooses, the services as the script
//! starts them), its whole CPU while idle, then fixed-rate load through its
//! gateway in rising steps until one is more than it can take.

use super::load::{self, LoadOpts, LoadReport, Via};
use super::{CpuMark, ProcStats};
use anyhow::{anyhow, Context, Result};
use confab_tests::make_stack::{repo_root, MakeStack};
use confab_tests::postgres::postmaster_pid;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How to measure it.
#[derive(Debug, Clone)]
pub struct UserStackOpts {
    /// How long the idle CPU is measured, after `settle`.
    pub idle: Duration,
    /// How long the stack is left alone after it is ready, before that.
    pub settle: Duration,
    /// The fixed rates (messages/s) tried in turn, lowest first; the first
    /// is the one whose latency is reported as the stack's.
    pub rates: Vec<f64>,
    /// Load options of every step (label, rate and target are set per step).
    pub load: LoadOpts,
    /// The p99 a step must stay under to hold.
    pub p99_limit: Duration,
}

/// What it measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UserStackReport {
    /// Each process `make stack` started (PostgreSQL: the whole server)
    /// over the idle window.
    pub idle: Vec<ProcStats>,
    pub idle_seconds: f64,
    /// The steps run, in order, up to the first that was overloaded (or
    /// the highest rate).
    pub steps: Vec<LoadReport>,
    /// The highest rate whose step held: no errors, at least 95% of the
    /// rate acknowledged, delivery p99 within the limit.
    pub sustained_rate: Option<f64>,
    pub p99_limit_ms: f64,
}

impl UserStackReport {
    /// The whole stack's idle CPU, in % of one core.
    pub fn idle_percent(&self) -> f64 {
        self.idle.iter().map(|p| p.cores).sum::<f64>() * 100.0
    }

    /// "13.3% over 30 s (broker 11.1%, ...)".
    pub fn idle_summary(&self) -> String {
        format!(
            "{:.1}% over {:.0} s ({})",
            self.idle_percent(),
            self.idle_seconds,
            self.idle
                .iter()
                .map(|p| format!("{} {:.1}%", p.label, p.cores * 100.0))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// Whether a step at `rate` held.
pub fn holds(r: &LoadReport, rate: f64, p99_limit: Duration) -> bool {
    r.errors.is_empty()
        && r.acked_per_sec >= 0.95 * rate
        && r.delivery.count > 0
        && r.delivery.p99_us as u128 <= p99_limit.as_micros()
}

/// Starts `make stack` with the bench's token secret and limits, measures,
/// and stops it with `make stack-down`.
pub async fn measure(opts: &UserStackOpts) -> Result<UserStackReport> {
    let secret = opts.load.secret.clone();
    let stack = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, String)> = confab_tests::GENEROUS_LIMITS
            .iter()
            .map(|(k, v)| (*k, v.to_string()))
            .chain([("CONFAB_JWT_SECRET", secret)])
            .collect();
        MakeStack::up(&repo_root(), &[], &env)
    })
    .await
    .context("make stack")?;
    let result = measure_on(&stack, opts).await;
    tokio::task::spawn_blocking(move || stack.down())
        .await
        .context("make stack-down")?;
    result
}

async fn measure_on(stack: &MakeStack, opts: &UserStackOpts) -> Result<UserStackReport> {
    super::suite::procs::ready(stack.gateway).await?;
    let started = stack.started().map_err(|e| anyhow!(e))?;
    let postmaster = started
        .pg_data
        .as_deref()
        .and_then(postmaster_pid)
        .context("make stack's PostgreSQL postmaster")?;
    let mut watch: Vec<(String, u32)> = started
        .processes
        .iter()
        .filter(|(name, _)| name != "prometheus")
        .cloned()
        .collect();
    tokio::time::sleep(opts.settle).await;
    let marks: Vec<(String, CpuMark)> = watch
        .iter()
        .map(|(name, pid)| (name.clone(), CpuMark::now(*pid)))
        .chain([("PostgreSQL".to_string(), CpuMark::server(postmaster))])
        .collect();
    tokio::time::sleep(opts.idle).await;
    let idle: Vec<ProcStats> = marks.iter().map(|(l, m)| m.stats(l)).collect();
    let mut report = UserStackReport {
        idle_seconds: opts.idle.as_secs_f64(),
        idle,
        p99_limit_ms: opts.p99_limit.as_secs_f64() * 1000.0,
        ..Default::default()
    };
    eprintln!("make stack idle: {}", report.idle_summary());
    // Gateway first, as the other load runs list them.
    watch.sort_by_key(|(name, _)| match name.as_str() {
        "gateway" => 0,
        "router" => 1,
        "history" => 2,
        _ => 3,
    });
    for (step, &rate) in opts.rates.iter().enumerate() {
        let mut o = opts.load.clone();
        o.run_id = format!("{}s{step}", opts.load.run_id);
        o.label = format!("make stack connect {rate:.0}/s");
        o.target = stack.gateway;
        o.via = Via::Connect;
        o.rate = Some(rate);
        o.watch = watch.clone();
        o.watch_servers = vec![("PostgreSQL".to_string(), postmaster)];
        let r = load::run(&o).await?;
        eprint!("{}", load::describe(&r));
        let held = holds(&r, rate, opts.p99_limit);
        // Overloaded (the sends fall behind the rate or fail): every higher
        // rate would be too. A step that only misses the p99 limit does not
        // end the climb: at low rates the latency is the consumers' fetch
        // wait (a record waits for the broker's next look), which load hides.
        let overloaded = !r.errors.is_empty() || r.acked_per_sec < 0.95 * rate;
        report.steps.push(r);
        if held {
            report.sustained_rate = Some(rate);
        }
        if overloaded {
            break;
        }
    }
    Ok(report)
}
