//! The short chaos run (the long one is `make chaos`): every service is
//! killed with SIGKILL and stopped with SIGTERM, the broker is killed and
//! PostgreSQL crashed, one at a time, while clients send in DIRECT and GROUP
//! conversations; the checker's invariants must all hold (see
//! `confab_tools::chaos`).

use confab_tools::chaos::{self, Config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_loss_no_duplicates_no_gaps_under_every_fault() {
    let report = chaos::run(Config::short()).await;
    println!("{report}");
    assert!(
        report.acknowledged > 100,
        "too little traffic to judge:\n{report}"
    );
    assert!(
        report.faults.len() == Config::every_fault().len(),
        "every fault was applied:\n{report}"
    );
    assert_eq!(report.violations(), 0, "\n{report}");
}
