//! `confab-bench` (`make bench`): how fast Confab is on this machine, next
//! to the limits of the parts it is built from, measured in the same run.
//!
//! - [`load`]: the load generator (N clients over M conversations, DIRECT
//!   and GROUP, a target rate or as fast as possible, over `Connect`
//!   streams or unary calls) against any gateway address.
//! - [`echo`]: the gRPC ceiling, a bare tonic unary echo server with the
//!   same payload; [`baselines`]: the Kafka ceiling (raw rdkafka
//!   produce→consume through the same broker) and the database ceiling (raw
//!   batched inserts into the same PostgreSQL).
//! - [`idle`]: many idle `Connect` streams, memory per stream.
//! - [`reads`]: `GetHistory` on a table of millions of rows (with its
//!   generator, whose text is [`corpus`]'s); [`inbox`]: `ListConversations`
//!   and `Sync` on it; [`search`]: `SearchMessages` on it.
//! - [`ingest`]: history's ingest rate from a pre-filled ingress topic,
//!   with search indexing on or off.
//! - [`suite`]: everything above in one run, as a table and as JSON.
//!
//! Nothing here asserts a speed: the numbers are reported, and
//! `docs/benchmarks.md` records them with the machine and the command.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub mod baselines;
pub mod compression;
pub mod corpus;
pub mod echo;
pub mod idle;
pub mod inbox;
pub mod ingest;
pub mod load;
pub mod reads;
pub mod search;
pub mod suite;
pub mod user_stack;

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Latency {
    /// How many samples.
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: u64,
}

impl Latency {
    /// `p50/p90/p99/p99.9/max` in milliseconds, for tables.
    pub fn brief(&self) -> String {
        if self.count == 0 {
            return "-".into();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        format!(
            "{:.2}/{:.2}/{:.2}/{:.2}/{:.2} ms",
            ms(self.p50_us),
            ms(self.p90_us),
            ms(self.p99_us),
            ms(self.p999_us),
            ms(self.max_us)
        )
    }
}

/// An HDR histogram of durations (1 µs to 10 min, 3 significant digits).
#[derive(Clone)]
pub struct Recorder(Histogram<u64>);

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// An empty histogram.
    pub fn new() -> Self {
        Self(Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"))
    }

    /// Records one duration (clamped into the histogram's range).
    pub fn record(&mut self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, 600_000_000);
        self.0.saturating_record(us);
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Recorder) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// How many samples.
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The percentiles.
    pub fn summary(&self) -> Latency {
        if self.0.is_empty() {
            return Latency::default();
        }
        Latency {
            count: self.0.len(),
            p50_us: self.0.value_at_quantile(0.50),
            p90_us: self.0.value_at_quantile(0.90),
            p99_us: self.0.value_at_quantile(0.99),
            p999_us: self.0.value_at_quantile(0.999),
            max_us: self.0.max(),
            mean_us: self.0.mean().round() as u64,
        }
    }
}

/// What a process used over a measurement window.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct ProcStats {
    /// What it is (`confab dev`, `gateway`, `bench client`, ...).
    pub label: String,
    pub pid: u32,
    /// User + system CPU time used in the window.
    pub cpu_seconds: f64,
    /// `cpu_seconds` / wall seconds: how many cores it kept busy.
    pub cores: f64,
    /// Resident set size at the end of the window.
    pub rss_kib: u64,
    /// Peak resident set size over the process's life (VmHWM).
    pub peak_rss_kib: u64,
}

/// A point-in-time reading of a process's CPU time.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    pid: u32,
    /// Whether `pid` is a server's root whose children's time counts too
    /// ([`server_cpu_ticks`]).
    server: bool,
    ticks: u64,
    at: Instant,
}

impl CpuMark {
    /// Reads `pid`'s CPU time now (0 ticks if the process is gone).
    pub fn now(pid: u32) -> Self {
        Self::read(pid, false)
    }

    /// Reads the CPU time of the server whose root process is `root`
    /// (PostgreSQL's postmaster): its own, its live children's and its
    /// reaped children's.
    pub fn server(root: u32) -> Self {
        Self::read(root, true)
    }

    fn read(pid: u32, server: bool) -> Self {
        let mut mark = Self {
            pid,
            server,
            ticks: 0,
            at: Instant::now(),
        };
        mark.ticks = mark.ticks_now().unwrap_or(0);
        mark
    }

    fn ticks_now(&self) -> Option<u64> {
        if self.server {
            server_cpu_ticks(self.pid)
        } else {
            cpu_ticks(self.pid)
        }
    }

    /// What the process (or server) used since this mark; the RSS is the
    /// process's (a server's root's).
    pub fn stats(&self, label: &str) -> ProcStats {
        let ticks = self.ticks_now().unwrap_or(self.ticks);
        let wall = self.at.elapsed().as_secs_f64().max(1e-9);
        let cpu_seconds = ticks.saturating_sub(self.ticks) as f64 / clock_ticks_per_sec() as f64;
        ProcStats {
            label: label.to_string(),
            pid: self.pid,
            cpu_seconds,
            cores: cpu_seconds / wall,
            rss_kib: status_kib(self.pid, "VmRSS:").unwrap_or(0),
            peak_rss_kib: status_kib(self.pid, "VmHWM:").unwrap_or(0),
        }
    }
}

/// utime + stime of `pid`, in clock ticks (`/proc/<pid>/stat`, fields 14
/// and 15).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let fields = confab_tests::procs::stat_fields(pid)?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The CPU time, in clock ticks, of a server whose processes are all
/// children of `root` (PostgreSQL's postmaster): `root`'s and its live
/// children's utime + stime, plus `root`'s cutime + cstime, the time of
/// the children it has reaped (so a backend that exits between two
/// readings still counts). `None` if `root` is gone.
pub fn server_cpu_ticks(root: u32) -> Option<u64> {
    let fields = confab_tests::procs::stat_fields(root)?;
    let field = |i: usize| -> Option<u64> { fields.get(i)?.parse().ok() };
    let own = field(11)? + field(12)?;
    let reaped = field(13)? + field(14)?;
    let live: u64 = confab_tests::procs::children(root)
        .into_iter()
        .filter_map(cpu_ticks)
        .sum();
    Some(own + reaped + live)
}

/// A `kB` line of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`).
pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    proc_kib(pid, "status", key)
}

/// The number after `key` in `/proc/<pid>/<file>` (`status`,
/// `smaps_rollup`).
pub fn proc_kib(pid: u32, file: &str, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The resident set size of `pid` in KiB (0 if unreadable).
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:").unwrap_or(0)
}

/// `sysconf(_SC_CLK_TCK)`, from `getconf` (100 on Linux if that fails).
pub fn clock_ticks_per_sec() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// What this machine is, for the report.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    /// Whether the binaries measured are a release build.
    pub release_build: bool,
}

impl Machine {
    /// Reads `/proc`.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0.0);
        Self {
            cpu_model,
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            memory_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            release_build: !cfg!(debug_assertions),
        }
    }
}

/// A binary next to the running executable (`confab-bench`, `confab`,
/// `confab-gateway`, ...): the same build profile as the caller. The
/// tests of the tests crate find `confab-bench` there only once it is
/// built (`cargo build -p confab-tools`, which `make test` runs).
pub fn sibling_bin(name: &str) -> PathBuf {
    let bin = confab_tests::confab_bin().with_file_name(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p confab-tools` first (make test and make bench do)",
        bin.display()
    );
    bin
}

/// Messages per second over `window`.
pub fn per_sec(count: u64, window: Duration) -> f64 {
    if window.is_zero() {
        return 0.0;
    }
    count as f64 / window.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_samples() {
        let mut r = Recorder::new();
        for ms in 1..=1000u64 {
            r.record(Duration::from_micros(ms * 1000));
        }
        let s = r.summary();
        assert_eq!(s.count, 1000);
        // 3 significant digits: within 0.1%.
        assert!((499_000..=501_000).contains(&s.p50_us), "{s:?}");
        assert!((989_000..=991_000).contains(&s.p99_us), "{s:?}");
        assert!((999_000..=1_001_000).contains(&s.max_us), "{s:?}");
        assert!(s.p50_us <= s.p90_us && s.p90_us <= s.p99_us && s.p99_us <= s.p999_us);
    }

    #[test]
    fn merged_histograms_count_both() {
        let mut a = Recorder::new();
        let mut b = Recorder::new();
        a.record(Duration::from_millis(1));
        b.record(Duration::from_millis(100));
        a.merge(&b);
        assert_eq!(a.summary().count, 2);
        assert!(a.summary().max_us >= 99_000);
        assert_eq!(Recorder::new().summary(), Latency::default());
    }

    #[test]
    fn this_process_uses_cpu_and_memory() {
        let pid = std::process::id();
        let mark = CpuMark::now(pid);
        // Burn a little CPU so the counter moves (bounded by iterations).
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let s = mark.stats("self");
        assert!(s.cpu_seconds > 0.0, "{s:?}");
        assert!(s.rss_kib > 0 && s.peak_rss_kib >= s.rss_kib, "{s:?}");
    }
}
