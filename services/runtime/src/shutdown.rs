//! A shutdown signal that any number of tasks can wait on.

use tokio::sync::watch;

/// Tells tasks to stop. Dropping it also counts as "stop".
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// Waits for the trigger. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Signal(watch::Receiver<bool>);

/// A new trigger and its signal.
pub fn channel() -> (Trigger, Signal) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Signal(rx))
}

impl Trigger {
    /// Signals every waiter.
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }
}

impl Signal {
    /// Completes once shutdown has been requested.
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// Whether shutdown has been requested.
    pub fn is_fired(&self) -> bool {
        *self.0.borrow()
    }
}

/// A signal that fires when `a` or `b` does (or either's trigger is
/// dropped).
pub fn either(a: Signal, b: Signal) -> Signal {
    let (trigger, signal) = channel();
    tokio::spawn(async move {
        tokio::select! {
            _ = a.wait() => {}
            _ = b.wait() => {}
        }
        trigger.fire();
    });
    signal
}

/// Completes on SIGINT or SIGTERM.
pub async fn os_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
