//! The two-minute soak (`make soak` runs thirty minutes): a moderate steady
//! load on the distributed stack with a few faults in its first minute,
//! every process's memory, descriptors and threads and each consumer
//! group's lag read every five seconds. Nothing grows without levelling
//! off in the second minute, the chaos checker's invariants hold, and the
//! plot is written.

use confab_tools::chaos::sample::{Metric, METRICS};
use confab_tools::chaos::{self, Config};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_minutes_of_steady_load_with_faults_grow_nothing_and_lose_nothing() {
    let config = Config::soak(Duration::from_secs(120));
    let faults = config.faults.len();
    let report = chaos::run(config).await;
    println!("{report}");
    assert_eq!(report.faults.len(), faults, "every fault was applied");
    assert!(report.acknowledged > 100, "too little traffic:\n{report}");
    let samples = report
        .samples
        .as_ref()
        .expect("the soak reads its processes");
    for metric in METRICS {
        let series = samples.series.keys().filter(|(m, _)| *m == metric).count();
        // Six services, the broker and two PostgreSQL servers; lag of the
        // history and router groups.
        let expected = if metric == Metric::Lag { 2 } else { 9 };
        assert_eq!(
            series,
            expected,
            "{}: {:?}",
            metric.name(),
            samples.series.keys()
        );
    }
    for ((metric, name), points) in &samples.series {
        assert!(
            points.len() >= 20,
            "{name} {}: {} readings",
            metric.name(),
            points.len()
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let plot = dir.path().join("soak.svg");
    samples.plot(&plot, "soak").expect("plot");
    let svg = std::fs::read_to_string(&plot).expect("the plot");
    assert!(svg.contains("<svg") && svg.contains("gateway-0") && svg.contains("polyline"));
    assert_eq!(report.violations(), 0, "\n{report}");
}
