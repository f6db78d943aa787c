//! History's readiness check "database": every [`CHECK_EVERY`] a `SELECT 1`
//! on a connection of its own (so a pool busy with long transactions does
//! not make history look down), and the pool's usage as gauges
//! ([`DB_POOL_CONNECTIONS`], [`DB_POOL_MAX`]).

use crate::PostgresStore;
use confab_core::metrics::{DB_POOL_CONNECTIONS, DB_POOL_MAX};
use confab_runtime::readiness::{spawn_check, Readiness};
use confab_runtime::shutdown::Signal;
use sqlx::{Connection, PgConnection};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// The name of the readiness check.
pub const CHECK: &str = "database";

/// How often the database is checked and the pool gauges set.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Bound on connecting, and on the query: a database that does not answer
/// within this counts as unreachable.
pub const CHECK_TIMEOUT: Duration = Duration::from_millis(900);

/// Keeps the check "database" current until `shutdown`: passing while
/// PostgreSQL at `url` answers `SELECT 1` within [`CHECK_TIMEOUT`]. The
/// probe's connection is opened again after any failure (e.g. PostgreSQL
/// restarted). Also sets the pool gauges of `store` every time.
pub fn spawn_database_check(
    readiness: &Readiness,
    store: Arc<PostgresStore>,
    url: String,
    shutdown: Signal,
) -> JoinHandle<()> {
    let conn: Arc<Mutex<Option<PgConnection>>> = Arc::new(Mutex::new(None));
    spawn_check(readiness, CHECK, CHECK_EVERY, shutdown, move || {
        let (store, url, conn) = (store.clone(), url.clone(), conn.clone());
        async move {
            report_pool(&store);
            let mut conn = conn.lock().await;
            let result = ping(&mut conn, &url).await;
            if result.is_err() {
                // A broken connection stays broken: start afresh next time.
                *conn = None;
            }
            result
        }
    })
}

/// Sets the pool gauges from `store`'s pool.
pub fn report_pool(store: &PostgresStore) {
    let usage = store.pool_usage();
    metrics::gauge!(DB_POOL_CONNECTIONS, "state" => "idle").set(f64::from(usage.idle));
    metrics::gauge!(DB_POOL_CONNECTIONS, "state" => "in_use").set(f64::from(usage.in_use));
    metrics::gauge!(DB_POOL_MAX).set(f64::from(usage.max));
}

/// `SELECT 1` on `conn`, connecting first when there is none.
async fn ping(conn: &mut Option<PgConnection>, url: &str) -> Result<(), String> {
    let c = match conn {
        Some(c) => c,
        None => {
            let fresh = tokio::time::timeout(CHECK_TIMEOUT, PgConnection::connect(url))
                .await
                .map_err(|_| unanswered("connecting"))?
                .map_err(|e| format!("cannot connect: {e}"))?;
            conn.insert(fresh)
        }
    };
    tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(c))
        .await
        .map_err(|_| unanswered("SELECT 1"))?
        .map(|_| ())
        .map_err(|e| format!("SELECT 1 failed: {e}"))
}

fn unanswered(what: &str) -> String {
    format!("no answer {what} within {} ms", CHECK_TIMEOUT.as_millis())
}
