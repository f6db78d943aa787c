//! Networks that drop packets instead of closing (issue 21, part 2): the
//! chaos run with every service in a network namespace of its own, and
//! each link cut in turn for ten seconds by iptables in the namespace
//! (packets dropped both ways, not refused): a gateway from the broker,
//! a history instance from the broker and from PostgreSQL, a gateway from
//! a router, the clients from a gateway. While a link is cut every call is
//! answered within the checker's bound (six seconds: failing fast, not
//! waiting for the link), and afterwards the stack recovers by itself: no
//! client goes without an acknowledged send for longer than thirty seconds,
//! and nothing is lost, duplicated, reordered or left undelivered.
//! `make chaos` cuts every link too, twice. Needs root (namespaces,
//! iptables).

use confab_tools::chaos::{self, Config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cut_link_fails_fast_and_recovers_without_loss() {
    let config = Config::short_partitions();
    let faults = config.faults.len();
    let report = chaos::run(config).await;
    println!("{report}");
    assert_eq!(report.faults.len(), faults, "every link was cut");
    assert!(
        report.acknowledged > 100,
        "too little traffic to judge:\n{report}"
    );
    assert_eq!(report.violations(), 0, "\n{report}");
}
