//! A server (or any service task that ends on a shutdown signal) run inside
//! the test process: spawned on a port-0 listener of 127.0.0.1, stopped
//! with its trigger, and checked to have ended cleanly. Also what most
//! in-process history servers are made of.

use crate::DEADLINE;
use confab_core::validate::SizeLimits;
use confab_history::{SqliteStore, Store};
use confab_runtime::shutdown::{self, Signal, Trigger};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A task of this process and the trigger that stops it; aborted if dropped
/// while running.
pub struct Served {
    /// Where it listens, if it does.
    addr: Option<SocketAddr>,
    /// Stops it (taken once fired).
    trigger: Option<Trigger>,
    /// The task (taken once joined).
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Served {
    /// Spawns `run(signal)`.
    pub fn spawn<F, E>(run: impl FnOnce(Signal) -> F) -> Served
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<anyhow::Error>,
    {
        let (trigger, signal) = shutdown::channel();
        let fut = run(signal);
        Served {
            addr: None,
            trigger: Some(trigger),
            task: Some(tokio::spawn(async move { fut.await.map_err(Into::into) })),
        }
    }

    /// Spawns `serve(listener, signal)` on `listener`.
    pub fn spawn_on<F, E>(
        listener: TcpListener,
        serve: impl FnOnce(TcpListener, Signal) -> F,
    ) -> Served
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<anyhow::Error>,
    {
        let addr = listener.local_addr().expect("listener address");
        let mut served = Served::spawn(|signal| serve(listener, signal));
        served.addr = Some(addr);
        served
    }

    /// Binds a free port of 127.0.0.1 and spawns `serve(listener, signal)`
    /// on it.
    pub async fn listen<F, E>(serve: impl FnOnce(TcpListener, Signal) -> F) -> Served
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<anyhow::Error>,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Served::spawn_on(listener, serve)
    }

    /// Where it listens; panics for a task that does not.
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("a served task that listens")
    }

    /// Whether the task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Fires the trigger: the task begins to stop ([`Served::stop`] waits
    /// for it).
    pub fn fire(&mut self) {
        if let Some(t) = self.trigger.take() {
            t.fire();
        }
    }

    /// Stops it and checks that it ended cleanly within [`DEADLINE`]
    /// (`what` names it in the failure).
    pub async fn stop(self, what: &str) {
        self.stop_within(what, DEADLINE).await;
    }

    /// [`Served::stop`], giving it `within` to end.
    pub async fn stop_within(mut self, what: &str, within: Duration) {
        self.fire();
        if let Some(task) = self.task.take() {
            let ended = tokio::time::timeout(within, task).await;
            assert!(
                matches!(ended, Ok(Ok(Ok(())))),
                "{what} stopped cleanly: {ended:?}"
            );
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A fresh SQLite history store in `dir` (`confab.db`), with the default
/// limits.
pub async fn sqlite_store(dir: &Path) -> Arc<dyn Store> {
    Arc::new(
        SqliteStore::open(&dir.join("confab.db"), SizeLimits::default())
            .await
            .expect("open sqlite"),
    )
}
