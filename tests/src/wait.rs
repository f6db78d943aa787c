//! The one polling loop of the tests and the tools ([`poll`]), waiting on a
//! condition ([`wait_until`]), and retrying what a server answers with
//! UNAVAILABLE ([`retry_unavailable`]).

use crate::DEADLINE;
use anyhow::{anyhow, Result};
use std::time::{Duration, Instant};
use tonic::Status;

/// Waits until `cond` holds, polling, or fails after [`DEADLINE`]; how long
/// it took.
pub async fn wait_until<F: FnMut() -> bool>(what: &str, cond: F) -> Duration {
    wait_until_within(what, DEADLINE, cond).await
}

/// Waits until `cond` holds, polling every 20 ms, or fails ("timed out
/// waiting for `what`") once `within` has passed; how long it took.
pub async fn wait_until_within<F: FnMut() -> bool>(
    what: &str,
    within: Duration,
    mut cond: F,
) -> Duration {
    let started = Instant::now();
    poll(what, within, Duration::from_millis(20), || {
        std::future::ready(Ok(cond().then_some(())))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    started.elapsed()
}

/// `call()` again while it fails with UNAVAILABLE (consumer groups still
/// forming, or a write whose outcome did not come in time: retried with the
/// same `client_msg_id`, as clients are told to), for at most `within`; its
/// success. Any other error, or UNAVAILABLE after `within`, fails the test.
pub async fn retry_unavailable<T, F, Fut>(what: &str, within: Duration, call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    retry_unavailable_seeing(what, within, call, |_| {}).await
}

/// [`retry_unavailable`], showing each UNAVAILABLE it retried to `seen`.
pub async fn retry_unavailable_seeing<T, F, Fut>(
    what: &str,
    within: Duration,
    mut call: F,
    mut seen: impl FnMut(&Status),
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    // The probes share these with the caller's `seen`, one at a time.
    let seen = std::cell::RefCell::new(&mut seen);
    let last = std::cell::RefCell::new(None);
    let got = poll(what, within, Duration::from_millis(50), || {
        let (call, seen, last) = (call(), &seen, &last);
        async move {
            match call.await {
                Ok(v) => Ok(Some(v)),
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    (seen.borrow_mut())(&status);
                    *last.borrow_mut() = Some(status);
                    Ok(None)
                }
                Err(status) => Err(anyhow!("{what}: {status:?}")),
            }
        }
    })
    .await;
    got.unwrap_or_else(|e| panic!("{e}; last UNAVAILABLE: {:?}", last.borrow()))
}

/// The one polling loop of the tests and the tools (bench, chaos): asks `probe` every
/// `every` until it yields a value, and fails ("timed out waiting for
/// `what`") once `within` has passed. An error from `probe` ends the wait
/// at once.
pub async fn poll<T, F, Fut>(
    what: &str,
    within: Duration,
    every: Duration,
    mut probe: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(anyhow!("timed out waiting for {what} ({within:?})"));
        }
        tokio::time::sleep(every).await;
    }
}

/// The blocking form of [`poll`], for tests that run no async runtime:
/// checks `cond` every 50 ms until it holds (true) or `within` has passed
/// (false, for the caller to say what did not happen).
pub fn poll_blocking(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
