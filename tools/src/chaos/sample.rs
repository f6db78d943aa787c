//! The soak's readings: every process's memory (PSS), open file
//! descriptors and threads (from `/proc`), and each consumer group's lag
//! (from the services' `/metrics`), taken at a fixed interval; the check
//! that none of them grows without levelling off; and the plot.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// What is read of each process.
pub const METRICS: [Metric; 4] = [Metric::Memory, Metric::Fds, Metric::Threads, Metric::Lag];

/// One quantity read over the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// Memory, MiB: the proportional set size (`Pss:` of
    /// `/proc/<pid>/smaps_rollup`), each shared page divided among the
    /// processes that map it, so that a server of several processes
    /// (PostgreSQL) is their sum and its shared buffers count once.
    Memory,
    /// Open file descriptors (sockets included).
    Fds,
    /// Threads.
    Threads,
    /// Records waiting for a consumer group, summed over its partitions
    /// (each partition's highest report: a consumer keeps reporting 0 for
    /// partitions it owned before a rebalance).
    Lag,
}

impl Metric {
    /// Its name in reports and the plot.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Memory => "memory, PSS (MiB)",
            Metric::Fds => "open file descriptors",
            Metric::Threads => "threads",
            Metric::Lag => "consumer lag (records)",
        }
    }

    /// How much a series may still rise over the steady part without
    /// counting as growth: a fraction of its level, and at least an amount
    /// (what a process varies by while it levels off).
    fn tolerance(self) -> (f64, f64) {
        match self {
            Metric::Memory => (0.15, 8.0),
            Metric::Fds => (0.2, 16.0),
            Metric::Threads => (0.2, 8.0),
            Metric::Lag => (0.5, 1000.0),
        }
    }
}

/// A process (or a server of several) to read.
pub struct Watched {
    /// `gateway-0`, `broker`, `postgres`.
    pub label: String,
    /// Its processes now (empty while it is down).
    pub pids: Vec<u32>,
    /// Where it serves `/metrics`, if it reports consumer lag.
    pub metrics: Option<SocketAddr>,
    /// Its memory is a cache with a configured bound (PostgreSQL's buffer
    /// pool fills up to `shared_buffers` as the data grows): plotted, not
    /// judged. Its descriptors and threads (connections) are judged.
    pub memory_is_cache: bool,
}

/// Every reading, by metric and series (a process's label, or a consumer
/// group), as (minutes since the start, value).
#[derive(Debug, Clone, Default)]
pub struct Samples {
    pub series: BTreeMap<(Metric, String), Vec<(f64, f64)>>,
    /// The series whose memory is not judged ([`Watched::memory_is_cache`]).
    pub caches: std::collections::BTreeSet<String>,
}

impl Samples {
    /// Reads every process of `watched` once, `start` being minute 0.
    pub async fn take(&mut self, start: Instant, watched: &[Watched]) {
        let at = start.elapsed().as_secs_f64() / 60.0;
        let mut lag: BTreeMap<(String, String), f64> = BTreeMap::new();
        for w in watched {
            if w.memory_is_cache {
                self.caches.insert(w.label.clone());
            }
            if w.pids.is_empty() {
                continue;
            }
            let read = |file: &str, key: &str| -> u64 {
                w.pids
                    .iter()
                    .filter_map(|&pid| crate::bench::proc_kib(pid, file, key))
                    .sum()
            };
            let fds: usize = w
                .pids
                .iter()
                .filter_map(|pid| std::fs::read_dir(format!("/proc/{pid}/fd")).ok())
                .map(|dir| dir.count())
                .sum();
            for (metric, value) in [
                (Metric::Memory, read("smaps_rollup", "Pss:") as f64 / 1024.0),
                (Metric::Fds, fds as f64),
                (Metric::Threads, read("status", "Threads:") as f64),
            ] {
                self.push(metric, &w.label, at, value);
            }
            if let Some(addr) = w.metrics {
                if let Ok((200, body)) = confab_tests::http::get(addr, "/metrics").await {
                    for (group, partition, value) in lag_lines(&body) {
                        let highest = lag.entry((group, partition)).or_insert(0.0);
                        *highest = highest.max(value);
                    }
                }
            }
        }
        let mut by_group: BTreeMap<String, f64> = BTreeMap::new();
        for ((group, _), value) in lag {
            *by_group.entry(group).or_default() += value;
        }
        for (group, value) in by_group {
            self.push(Metric::Lag, &format!("group {group}"), at, value);
        }
    }

    fn push(&mut self, metric: Metric, name: &str, at: f64, value: f64) {
        self.series
            .entry((metric, name.to_string()))
            .or_default()
            .push((at, value));
    }

    /// The series that grew without levelling off after minute `from`
    /// (the steady part, after the faults). Its readings from then on,
    /// split into an earlier and a later half, grow without levelling off
    /// when both hold: every reading of the later half is above the
    /// earlier half's highest (still rising), and the later half's trend
    /// (least squares), carried over the whole steady part, exceeds the
    /// metric's tolerance (rising by more than noise). One line each.
    pub fn growth(&self, from: f64) -> Vec<String> {
        let mut found = Vec::new();
        for ((metric, name), points) in &self.series {
            if *metric == Metric::Memory && self.caches.contains(name) {
                continue;
            }
            let steady: Vec<(f64, f64)> =
                points.iter().copied().filter(|(t, _)| *t >= from).collect();
            if steady.len() < 4 {
                continue;
            }
            let (earlier, later) = steady.split_at(steady.len() / 2);
            let high = earlier.iter().map(|p| p.1).fold(f64::MIN, f64::max);
            let low = later.iter().map(|p| p.1).fold(f64::MAX, f64::min);
            let span = steady[steady.len() - 1].0 - steady[0].0;
            let rise = slope(later) * span;
            let mean = later.iter().map(|p| p.1).sum::<f64>() / later.len() as f64;
            let (fraction, least) = metric.tolerance();
            if low > high && rise > (mean * fraction).max(least) {
                found.push(format!(
                    "{name}: {} kept growing after minute {from:.1} (at {rise:.1} per {span:.1} minutes in the second half of the steady part; highest {high:.1} before it, lowest {low:.1} in it)",
                    metric.name()
                ));
            }
        }
        found
    }

    /// The first and last reading and the highest of each series, for the
    /// report.
    pub fn summary(&self) -> Vec<String> {
        self.series
            .iter()
            .filter_map(|((metric, name), points)| {
                let first = points.first()?.1;
                let last = points.last()?.1;
                let high = points.iter().map(|p| p.1).fold(f64::MIN, f64::max);
                Some(format!(
                    "{name} {}: first {first:.1}, last {last:.1}, highest {high:.1}",
                    metric.name()
                ))
            })
            .collect()
    }

    /// Plots every metric, a line per series, to an SVG file at `path`:
    /// a row per metric, Confab's services on the left and the broker and
    /// PostgreSQL on the right (their scales differ tenfold).
    pub fn plot(&self, path: &Path, title: &str) -> anyhow::Result<()> {
        use plotters::prelude::*;
        let root = SVGBackend::new(path, (1400, 1400)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, ("sans-serif", 22))?;
        let end = self
            .series
            .values()
            .flat_map(|p| p.iter().map(|(t, _)| *t))
            .fold(0.0, f64::max)
            .max(0.1);
        let ours = |name: &str| {
            ["gateway", "router", "history", "group "]
                .iter()
                .any(|prefix| name.starts_with(prefix))
        };
        let panels = root.split_evenly((METRICS.len(), 2));
        for (i, panel) in panels.iter().enumerate() {
            let (metric, left) = (METRICS[i / 2], i % 2 == 0);
            let series: Vec<(&String, &Vec<(f64, f64)>)> = self
                .series
                .iter()
                .filter(|((m, name), _)| *m == metric && ours(name) == left)
                .map(|((_, name), points)| (name, points))
                .collect();
            if series.is_empty() {
                continue;
            }
            let top = series
                .iter()
                .flat_map(|(_, p)| p.iter().map(|(_, v)| *v))
                .fold(1.0, f64::max)
                * 1.15;
            let whose = if left {
                "Confab"
            } else {
                "broker and PostgreSQL"
            };
            let mut chart = ChartBuilder::on(panel)
                .caption(format!("{}: {whose}", metric.name()), ("sans-serif", 16))
                .margin(8)
                .x_label_area_size(30)
                .y_label_area_size(60)
                .build_cartesian_2d(0.0..end, 0.0..top)?;
            chart
                .configure_mesh()
                .x_desc("minutes")
                .light_line_style(WHITE)
                .draw()?;
            for (i, (name, points)) in series.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                chart
                    .draw_series(LineSeries::new(
                        points.iter().copied(),
                        color.stroke_width(2),
                    ))?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK.mix(0.3))
                .draw()?;
        }
        root.present()?;
        Ok(())
    }
}

/// The least-squares slope of `points` (value per minute).
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (mt, mv) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (t, v)| (a + t / n, b + v / n));
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (t, v)| {
        (num + (t - mt) * (v - mv), den + (t - mt) * (t - mt))
    });
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

/// `(group, partition, lag)` of each `confab_kafka_consumer_lag_records`
/// line of a Prometheus text page.
fn lag_lines(page: &str) -> Vec<(String, String, f64)> {
    let label = |labels: &str, key: &str| -> Option<String> {
        let start = labels.find(&format!("{key}=\""))? + key.len() + 2;
        let end = labels[start..].find('"')? + start;
        Some(labels[start..end].to_string())
    };
    page.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(confab_core::metrics::KAFKA_CONSUMER_LAG)?;
            let (labels, value) = rest.strip_prefix('{')?.split_once('}')?;
            Some((
                label(labels, "group")?,
                label(labels, "partition")?,
                value.trim().parse().ok()?,
            ))
        })
        .collect()
}

/// How often a run of `load_for` is read: thirty times, but at most once
/// every minute and at least every five seconds.
pub fn interval_for(load_for: Duration) -> Duration {
    (load_for / 30).clamp(Duration::from_secs(5), Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(metric: Metric, values: &[f64]) -> Samples {
        let mut s = Samples::default();
        for (i, v) in values.iter().enumerate() {
            s.push(metric, "p", i as f64, *v);
        }
        s
    }

    #[test]
    fn growth_that_levels_off_passes_and_growth_that_goes_on_fails() {
        let levelling = [100.0, 130.0, 150.0, 158.0, 160.0, 161.0, 160.0, 161.0];
        assert!(samples(Metric::Memory, &levelling).growth(0.0).is_empty());
        let leaking = [100.0, 110.0, 120.0, 130.0, 140.0, 150.0, 160.0, 170.0];
        let found = samples(Metric::Memory, &leaking).growth(0.0);
        assert_eq!(found.len(), 1, "{found:?}");
        // Noise within the tolerance is not growth.
        let noisy = [100.0, 101.0, 103.0, 102.0, 106.0, 107.0, 106.0, 108.0];
        assert!(samples(Metric::Memory, &noisy).growth(0.0).is_empty());
        // A cache's memory is not judged.
        let mut cache = samples(Metric::Memory, &leaking);
        cache.caches.insert("p".into());
        assert!(cache.growth(0.0).is_empty());
        // Only the steady part counts.
        let warming = [10.0, 50.0, 100.0, 100.0, 101.0, 100.0, 101.0, 100.0];
        assert!(samples(Metric::Memory, &warming).growth(2.0).is_empty());
    }

    #[test]
    fn the_plot_has_a_panel_per_metric_and_side() {
        let mut s = Samples::default();
        for t in 0..10 {
            for (metric, name, v) in [
                (Metric::Memory, "gateway-0", 30.0),
                (Metric::Memory, "postgres", 400.0),
                (Metric::Fds, "gateway-0", 40.0),
                (Metric::Threads, "broker", 12.0),
                (Metric::Lag, "group router", 3.0),
            ] {
                s.push(metric, name, t as f64, v + t as f64);
            }
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("plot.svg");
        s.plot(&path, "test").expect("plot");
        let svg = std::fs::read_to_string(&path).expect("svg");
        for caption in [
            "memory, PSS (MiB): Confab",
            "memory, PSS (MiB): broker and PostgreSQL",
            "open file descriptors: Confab",
            "threads: broker and PostgreSQL",
            "consumer lag (records): Confab",
        ] {
            assert!(svg.contains(caption), "{caption}");
        }
        assert!(
            !svg.contains("threads: Confab"),
            "an empty panel is left out"
        );
    }

    #[test]
    fn lag_lines_are_read_by_group_and_partition() {
        let page = "# HELP x\nconfab_kafka_consumer_lag_records{group=\"router\",partition=\"3\",topic=\"t\"} 12\nconfab_kafka_consumer_lag_records{partition=\"1\",group=\"history\"} 0\nother 5\n";
        assert_eq!(
            lag_lines(page),
            [
                ("router".into(), "3".into(), 12.0),
                ("history".into(), "1".into(), 0.0)
            ]
        );
    }
}
