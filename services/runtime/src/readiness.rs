//! Readiness: the serving flag that whoever serves gRPC keeps, and named
//! checks of the process's dependencies ("database", "kafka"), each kept
//! current by a task ([`spawn_check`]). `/readyz` is 200 only while the
//! process serves and every check passes, and names what fails otherwise.

use crate::shutdown::Signal;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;

/// Whether this process should get traffic: the serving flag that whoever
/// serves gRPC keeps ([`Readiness::set`]), and named checks of the
/// process's dependencies ([`Readiness::check`]). Ready means serving and
/// every check passing. Clones share the state. Starts not ready. A
/// service's configuration holds its own (each read makes a new one), so
/// processes sharing a test process do not share it, and whoever started
/// a service can watch it.
#[derive(Debug, Clone)]
pub struct Readiness(Arc<ReadinessState>);

#[derive(Debug)]
struct ReadinessState {
    /// Whether the process serves (set by [`crate::server::Server`]).
    serving: AtomicBool,
    /// The registered checks by id: their name and whether they pass.
    checks: Mutex<BTreeMap<u64, (String, bool)>>,
    /// Source of check ids.
    next_id: AtomicU64,
    /// The verdict, for subscribers; changed only under the `checks` lock.
    verdict: watch::Sender<bool>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self(Arc::new(ReadinessState {
            serving: AtomicBool::new(false),
            checks: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            verdict: watch::channel(false).0,
        }))
    }
}

/// Why a process is not ready: what [`Readiness::why_not`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReady {
    /// The process does not serve (not started yet, or shutting down).
    pub not_serving: bool,
    /// The names of the checks that fail, sorted, each once.
    pub failing: Vec<String>,
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if self.not_serving {
            parts.push("not serving".to_string());
        }
        if !self.failing.is_empty() {
            parts.push(format!("failing checks: {}", self.failing.join(", ")));
        }
        write!(f, "not ready: {}", parts.join("; "))
    }
}

impl Readiness {
    /// New state: not serving, no checks.
    pub fn new() -> Self {
        Self::default()
    }

    fn checks(&self) -> MutexGuard<'_, BTreeMap<u64, (String, bool)>> {
        // Every update is a single insert, remove or flag write: a poisoned
        // lock still holds consistent data.
        self.0
            .checks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sets the serving flag.
    pub fn set(&self, serving: bool) {
        let checks = self.checks();
        self.0.serving.store(serving, Ordering::SeqCst);
        self.publish(&checks);
    }

    /// Whether the process serves (whatever the checks say).
    pub fn is_serving(&self) -> bool {
        self.0.serving.load(Ordering::SeqCst)
    }

    /// Whether the process serves and every check passes.
    pub fn is_ready(&self) -> bool {
        self.why_not().is_none()
    }

    /// `None` when ready; otherwise what is wrong.
    pub fn why_not(&self) -> Option<NotReady> {
        let checks = self.checks();
        Self::verdict(self.is_serving(), &checks)
    }

    fn verdict(serving: bool, checks: &BTreeMap<u64, (String, bool)>) -> Option<NotReady> {
        let failing: BTreeSet<&String> = checks
            .values()
            .filter(|(_, ok)| !ok)
            .map(|(name, _)| name)
            .collect();
        (!serving || !failing.is_empty()).then(|| NotReady {
            not_serving: !serving,
            failing: failing.into_iter().cloned().collect(),
        })
    }

    /// Tells subscribers about the verdict; callers hold the `checks` lock.
    fn publish(&self, checks: &BTreeMap<u64, (String, bool)>) {
        let ready = Self::verdict(self.is_serving(), checks).is_none();
        self.0.verdict.send_if_modified(|v| {
            let changed = *v != ready;
            *v = ready;
            changed
        });
    }

    /// Registers a check called `name` (e.g. "database", "kafka"), failing
    /// until it is first [`ReadinessCheck::set`]; it is removed when the
    /// returned handle is dropped. Several checks may share a name (e.g.
    /// two services in one test process): the name fails while any of them
    /// does.
    pub fn check(&self, name: &str) -> ReadinessCheck {
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        let mut checks = self.checks();
        checks.insert(id, (name.to_string(), false));
        self.publish(&checks);
        drop(checks);
        ReadinessCheck {
            readiness: self.clone(),
            id,
        }
    }

    /// The verdict (ready or not) now and at every change, for whoever
    /// mirrors it elsewhere (e.g. the `grpc.health.v1` status).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.0.verdict.subscribe()
    }
}

/// One named readiness check (see [`Readiness::check`]); dropping it
/// removes the check.
#[derive(Debug)]
pub struct ReadinessCheck {
    readiness: Readiness,
    id: u64,
}

impl ReadinessCheck {
    /// Records whether the check passes now.
    pub fn set(&self, ok: bool) {
        let mut checks = self.readiness.checks();
        if let Some(entry) = checks.get_mut(&self.id) {
            entry.1 = ok;
        }
        self.readiness.publish(&checks);
    }
}

impl ReadinessCheck {
    /// Fails the check for as long as the process lives: for a fault the
    /// process does not recover from, and exits over (dropping the check
    /// would remove it, and make the process ready again meanwhile).
    pub fn fail_until_exit(self) {
        self.set(false);
        std::mem::forget(self);
    }
}

/// Why a part a process cannot work without ended before its shutdown.
#[derive(Debug, thiserror::Error)]
#[error("the {what} stopped: {why}; the process exits so that it is restarted")]
pub struct PartFailed {
    /// The part, as its readiness check is named.
    pub what: &'static str,
    /// What ended it.
    pub why: String,
}

/// Watches `part`, which runs until the process's shutdown: the process is
/// ready only while it runs (a check named `what`), and the returned signal
/// fires if it ends with an error or a panic, so that the process stops
/// serving and exits (to be restarted) instead of answering while the part
/// is dead. The returned future ends with what the part did.
pub fn watch_part<E: std::fmt::Display + Send + 'static>(
    what: &'static str,
    part: tokio::task::JoinHandle<Result<(), E>>,
    readiness: &Readiness,
) -> (
    impl Future<Output = Result<(), PartFailed>> + Send + 'static,
    Signal,
) {
    let (stop, failed) = crate::shutdown::channel();
    let check = readiness.check(what);
    check.set(true);
    let watch = tokio::spawn(async move {
        let ended = match part.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("it panicked: {e}")),
        };
        ended.map_err(|why| {
            check.fail_until_exit();
            let failed = PartFailed { what, why };
            tracing::error!(error = %failed, "not ready; stopping");
            stop.fire();
            failed
        })
    });
    let ended = async move {
        watch.await.unwrap_or_else(|e| {
            Err(PartFailed {
                what,
                why: format!("its watch ended: {e}"),
            })
        })
    };
    (ended, failed)
}

/// `tasks` as one part for [`watch_part`]: ends with the first of them
/// that panics, or once they all have ended.
pub fn all_of(
    tasks: Vec<tokio::task::JoinHandle<()>>,
) -> tokio::task::JoinHandle<Result<(), String>> {
    let mut set = tokio::task::JoinSet::new();
    for task in tasks {
        set.spawn(task);
    }
    tokio::spawn(async move {
        while let Some(ended) = set.join_next().await {
            match ended {
                Ok(Ok(())) => {}
                Ok(Err(e)) | Err(e) => return Err(format!("a task panicked: {e}")),
            }
        }
        Ok(())
    })
}

impl Drop for ReadinessCheck {
    fn drop(&mut self) {
        let mut checks = self.readiness.checks();
        checks.remove(&self.id);
        self.readiness.publish(&checks);
    }
}

/// Runs `probe` every `every` until `shutdown`, keeping the check `name` of
/// `readiness` current: it fails from the start
/// until the first probe passes, and whenever a probe fails or takes longer
/// than `every` plus a second. Changes are logged (warn when failing, with
/// the probe's error; info when passing again). The check is removed when
/// the task ends.
pub fn spawn_check<F, Fut>(
    readiness: &Readiness,
    name: &'static str,
    every: Duration,
    shutdown: Signal,
    mut probe: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let check = readiness.check(name);
    let limit = every + Duration::from_secs(1);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<bool> = None;
        let stop = shutdown.wait();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => break,
                _ = ticks.tick() => {}
            }
            let result = tokio::select! {
                biased;
                _ = &mut stop => break,
                r = tokio::time::timeout(limit, probe()) => r,
            };
            let result = result
                .unwrap_or_else(|_| Err(format!("no answer within {} ms", limit.as_millis())));
            let ok = result.is_ok();
            match (&result, last) {
                (Err(e), Some(true) | None) => {
                    tracing::warn!(check = name, error = %e, "readiness check failing")
                }
                (Ok(()), Some(false)) => {
                    tracing::info!(check = name, "readiness check passing again")
                }
                _ => {}
            }
            last = Some(ok);
            check.set(ok);
        }
        drop(check);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A part of several tasks, one of which panics while the others run:
    /// the process is not ready from then on (for good), the stop signal
    /// fires, and the watch ends with the failure.
    #[tokio::test]
    async fn a_part_that_panics_makes_the_process_not_ready_and_stops_it() {
        let readiness = Readiness::new();
        readiness.set(true);
        let (release, hold) = crate::shutdown::channel();
        let (fail, failing) = crate::shutdown::channel();
        let running = tokio::spawn(hold.clone().wait());
        let panics = tokio::spawn(async move {
            failing.wait().await;
            panic!("a bug in a lane");
        });
        let (watch, failed) = watch_part("sequencer", all_of(vec![running, panics]), &readiness);
        assert!(readiness.is_ready(), "ready while every task runs");
        assert!(!failed.is_fired());
        fail.fire();
        failed.clone().wait().await;
        let error = watch.await.expect_err("a task panicked");
        assert_eq!(error.what, "sequencer");
        assert!(error.why.contains("panicked"), "{error}");
        let why = readiness.why_not().expect("not ready").to_string();
        assert!(why.contains("sequencer"), "{why}");
        release.fire();
        assert!(!readiness.is_ready(), "still not ready: the process exits");
    }

    /// Tasks that end at shutdown end the watch without a failure, and
    /// leave readiness as it was.
    #[tokio::test]
    async fn a_part_that_ends_cleanly_is_no_failure() {
        let readiness = Readiness::new();
        readiness.set(true);
        let (stop, signal) = crate::shutdown::channel();
        let tasks = (0..3)
            .map(|_| tokio::spawn(signal.clone().wait()))
            .collect();
        let (watch, failed) = watch_part("router", all_of(tasks), &readiness);
        stop.fire();
        watch.await.expect("no failure");
        assert!(!failed.is_fired());
        assert!(readiness.is_ready());
    }

    #[test]
    fn readiness_is_a_shared_flag() {
        let a = Readiness::new();
        let b = a.clone();
        assert!(!b.is_ready());
        a.set(true);
        assert!(b.is_ready());
        a.set(false);
        assert!(!b.is_ready());
    }

    #[test]
    fn readiness_needs_serving_and_every_check() {
        let r = Readiness::new();
        let verdicts = r.subscribe();
        r.set(true);
        assert!(r.is_ready() && *verdicts.borrow());
        let db = r.check("database");
        let kafka = r.check("kafka");
        let kafka2 = r.check("kafka");
        // A new check fails until it first passes.
        assert_eq!(
            r.why_not(),
            Some(NotReady {
                not_serving: false,
                failing: vec!["database".into(), "kafka".into()],
            })
        );
        assert!(!*verdicts.borrow());
        db.set(true);
        kafka.set(true);
        assert_eq!(r.why_not().map(|w| w.failing), Some(vec!["kafka".into()]));
        kafka2.set(true);
        assert!(r.is_ready() && *verdicts.borrow());
        db.set(false);
        r.set(false);
        let why = r.why_not().expect("not ready");
        assert_eq!(
            why.to_string(),
            "not ready: not serving; failing checks: database"
        );
        // A dropped check no longer counts.
        drop(db);
        r.set(true);
        assert!(r.is_ready());
        drop(kafka);
        drop(kafka2);
        assert!(r.is_ready());
    }

    #[tokio::test]
    async fn readiness_changes_reach_subscribers() {
        let r = Readiness::new();
        let mut rx = r.subscribe();
        assert!(!*rx.borrow_and_update());
        r.set(true);
        rx.changed().await.expect("a change");
        assert!(*rx.borrow_and_update());
        let c = r.check("kafka");
        rx.changed().await.expect("a change");
        assert!(!*rx.borrow_and_update());
        c.set(true);
        rx.changed().await.expect("a change");
        assert!(*rx.borrow_and_update());
        // Setting the same value again is not a change.
        c.set(true);
        r.set(true);
        assert!(!rx.has_changed().expect("open"));
    }
}
