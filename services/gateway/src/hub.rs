//! The gateway's live state: which sessions each user has open here, and
//! which requests are waiting for history's verdict. It also announces when
//! a user gets a first session or closes a last one here (`Presence`), which
//! is what routers use, in distributed mode, to know where to push.

use async_trait::async_trait;
use confab_core::metrics::{SESSIONS_OPEN, TYPING_RELAYS, USERS_ONLINE};
use confab_core::presence::{PushPresence, Seen};
use confab_core::seams::{Delivery, DeliverySink, Live};
use confab_proto::internal::v1::{OutcomeRecord, RelayTyping};
use confab_proto::v1::{Presence as PresenceFrame, Receipt, Typing};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot};
use tonic::Status;

/// Presence changes a subscriber may fall behind by before it must resync
/// from a fresh snapshot.
const PRESENCE_BUFFER: usize = 4096;

/// Typing indicators queued for the router links before the oldest are
/// dropped (each link reads them as they come).
const TYPING_BUFFER: usize = 1024;

/// A change in who has sessions on this gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// The user opened their first session here.
    Online(String),
    /// The user's last session here ended.
    Offline(String),
}

/// How long an offline state is remembered to drop the copies of it that
/// other routers send (each router sends every change; copies come within
/// moments of each other).
const PRESENCE_COPIES_WINDOW: Duration = Duration::from_secs(60);

/// What each user was last said to be (online or not, and when) to the
/// sessions here. Users online are kept; an offline state is forgotten
/// once [`PRESENCE_COPIES_WINDOW`] has passed, so this holds the users
/// online and the recent departures, not every user ever seen.
#[derive(Debug, Default)]
struct PresenceSent {
    last: HashMap<String, (bool, Instant)>,
    /// Entries left by the last sweep: the next one runs when the map has
    /// doubled since (each insert pays for its share of a sweep).
    swept_to: usize,
}

impl PresenceSent {
    /// Whether `user` being `online` at `now` changes what sessions here
    /// were last told (a copy of the same state is no change).
    fn changes(&mut self, user: &str, online: bool, now: Instant) -> bool {
        let changed = match self.last.get_mut(user) {
            Some(last) => {
                let changed = last.0 != online;
                *last = (online, now);
                changed
            }
            None => {
                self.last.insert(user.to_string(), (online, now));
                true
            }
        };
        if self.last.len() > 2 * self.swept_to.max(1024) {
            self.last.retain(|_, (online, at)| {
                *online || now.saturating_duration_since(*at) < PRESENCE_COPIES_WINDOW
            });
            self.swept_to = self.last.len();
        }
        changed
    }
}

/// A session as the hub sees it.
struct SessionEntry {
    /// Unique within this gateway.
    id: u64,
    /// Live messages for the session task (bounded: a full queue means the
    /// client reads too slowly).
    tx: mpsc::Sender<Live>,
    /// Ends the client's stream at once with a status.
    kill: mpsc::Sender<Status>,
}

/// Sessions and pending requests of one gateway.
pub struct Hub {
    /// This gateway's id, stamped on every request it produces.
    gateway_id: String,
    /// Open sessions by user id.
    sessions: Mutex<HashMap<String, Vec<SessionEntry>>>,
    /// Requests waiting for their outcome, by request id.
    pending: Mutex<HashMap<u64, oneshot::Sender<OutcomeRecord>>>,
    /// Source of request and session ids.
    next_id: AtomicU64,
    /// Presence changes with their epoch, sent under the `sessions` lock
    /// (never blocks).
    presence: broadcast::Sender<(u64, Presence)>,
    /// Presence epoch: bumped by every change, under the `sessions` lock.
    epoch: AtomicU64,
    /// Attached routers and the presence epoch each has acknowledged.
    acked: Mutex<HashMap<String, u64>>,
    /// Wakes sessions waiting for acknowledgements.
    acked_changed: tokio::sync::Notify,
    /// Routers whose first acknowledgement (of the hello) arrived on the
    /// current link.
    greeted: Mutex<std::collections::HashSet<String>>,
    /// Counts changes in the set of routers that know this gateway's users
    /// (a link lost, or a link up and its hello acknowledged): after one,
    /// a router may have routed messages that never reached this gateway.
    routing: tokio::sync::watch::Sender<u64>,
    /// Typing indicators on their way to the router that carries each one
    /// (see [`Hub::typing_router`]); dropped when no link is listening.
    typing_out: broadcast::Sender<Arc<RelayTyping>>,
    /// What each user was last said to be to sessions here: every router
    /// sends each change, and only a change is passed on.
    presence_sent: Mutex<PresenceSent>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("gateway_id", &self.gateway_id)
            .finish_non_exhaustive()
    }
}

/// Removes a session from the hub when dropped.
pub struct Registration {
    /// The hub it is registered with.
    hub: Arc<Hub>,
    /// Whose session it is.
    user: String,
    /// Which session.
    id: u64,
    /// The presence epoch once this session was registered.
    pub epoch: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut sessions = self.hub.sessions();
        if let Some(list) = sessions.get_mut(&self.user) {
            let before = list.len();
            list.retain(|s| s.id != self.id);
            sessions_closed(before - list.len());
            if list.is_empty() {
                sessions.remove(&self.user);
                self.hub.announce(Presence::Offline(self.user.clone()));
            }
        }
    }
}

/// Counts `n` sessions gone from the hub in [`SESSIONS_OPEN`]. (Gauges go
/// up and down rather than being set, so several hubs in one process add
/// up.)
fn sessions_closed(n: usize) {
    if n > 0 {
        metrics::gauge!(SESSIONS_OPEN).decrement(n as f64);
    }
}

/// A request waiting for its outcome; dropping it forgets the request.
pub struct Pending {
    /// The hub it waits on.
    hub: Arc<Hub>,
    /// The request id carried in the ingress record's origin.
    pub request_id: u64,
    /// Fires when the outcome arrives.
    pub rx: oneshot::Receiver<OutcomeRecord>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Ok(mut p) = self.hub.pending.lock() {
            p.remove(&self.request_id);
        }
    }
}

impl Hub {
    /// An empty hub for gateway `gateway_id`.
    pub fn new(gateway_id: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            gateway_id: gateway_id.into(),
            sessions: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            presence: broadcast::channel(PRESENCE_BUFFER).0,
            epoch: AtomicU64::new(0),
            acked: Mutex::new(HashMap::new()),
            acked_changed: tokio::sync::Notify::new(),
            greeted: Mutex::new(std::collections::HashSet::new()),
            routing: tokio::sync::watch::channel(0).0,
            typing_out: broadcast::channel(TYPING_BUFFER).0,
            presence_sent: Mutex::new(PresenceSent::default()),
        })
    }

    /// Every user's first session here and last one ending, in order, from
    /// now on (the users with sessions now first): presence in embedded
    /// mode, where this gateway is the only one (see
    /// [`confab_core::presence::run`]).
    pub fn presence_changes(self: &Arc<Self>) -> mpsc::UnboundedReceiver<Seen> {
        let (tx, rx) = mpsc::unbounded_channel();
        let hub = self.clone();
        tokio::spawn(async move {
            let mut known: std::collections::HashSet<String> = std::collections::HashSet::new();
            loop {
                let (_, users, mut changes) = hub.presence();
                // A fresh snapshot (at the start, or after falling behind):
                // report the difference from what was reported.
                let now: std::collections::HashSet<String> = users.into_iter().collect();
                for gone in known.difference(&now) {
                    let _ = tx.send(Seen::Left(gone.clone()));
                }
                for new in now.difference(&known) {
                    let _ = tx.send(Seen::Arrived(new.clone()));
                }
                known = now;
                loop {
                    let seen = match changes.recv().await {
                        Ok((_, Presence::Online(u))) => {
                            known.insert(u.clone());
                            Seen::Arrived(u)
                        }
                        Ok((_, Presence::Offline(u))) => {
                            known.remove(&u);
                            Seen::Left(u)
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    if tx.send(seen).is_err() {
                        return;
                    }
                }
            }
        });
        rx
    }

    /// Relays `typing` to the sessions of `recipients`: through the router
    /// that carries its conversation's indicators when routers are
    /// attached (they reach every gateway), straight to this gateway's
    /// sessions otherwise (embedded mode). Best effort: an indicator is not
    /// stored, and one lost with a link is replaced by the next.
    pub fn relay_typing(&self, recipients: Vec<String>, typing: Typing) {
        let active = if typing.active { "true" } else { "false" };
        metrics::counter!(TYPING_RELAYS, "active" => active).increment(1);
        if self.acked().is_empty() {
            self.push(&recipients, Live::Typing(Arc::new(typing)));
        } else {
            let _ = self.typing_out.send(Arc::new(RelayTyping {
                recipient_ids: recipients,
                typing: Some(typing),
            }));
        }
    }

    /// Indicators for [`Hub::typing_router`] to forward, from now on.
    pub fn typing_out(&self) -> broadcast::Receiver<Arc<RelayTyping>> {
        self.typing_out.subscribe()
    }

    /// The attached router that carries the typing indicators of
    /// `conversation_id`: one of them, the same while the attached set does
    /// not change, so a conversation's indicators stay in order.
    pub fn typing_router(&self, conversation_id: &str) -> Option<String> {
        let mut routers: Vec<String> = self.acked().keys().cloned().collect();
        routers.sort();
        let i = confab_core::seams::partition_of(conversation_id, routers.len());
        routers.into_iter().nth(i)
    }

    /// Pushes a typing indicator a router relayed to the sessions of
    /// `recipients` here.
    pub fn deliver_typing(&self, recipients: &[String], typing: Typing) {
        self.push(recipients, Live::Typing(Arc::new(typing)));
    }

    /// This gateway's id.
    pub fn gateway_id(&self) -> &str {
        &self.gateway_id
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<String, Vec<SessionEntry>>> {
        // A panic while holding the lock leaves consistent data (plain inserts
        // and removals), so a poisoned lock is still usable.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a session of `user`; it receives live messages on `tx`.
    pub fn register(
        self: &Arc<Self>,
        user: &str,
        tx: mpsc::Sender<Live>,
        kill: mpsc::Sender<Status>,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut sessions = self.sessions();
        let list = sessions.entry(user.to_string()).or_default();
        if list.is_empty() {
            self.announce(Presence::Online(user.to_string()));
        }
        list.push(SessionEntry { id, tx, kill });
        metrics::gauge!(SESSIONS_OPEN).increment(1.0);
        let epoch = self.epoch.load(Ordering::SeqCst);
        drop(sessions);
        Registration {
            hub: self.clone(),
            user: user.to_string(),
            id,
            epoch,
        }
    }

    /// Every user with a session here now, and the presence changes after
    /// that snapshot. A receiver that lags (`RecvError::Lagged`) must take a
    /// new snapshot with a new receiver.
    pub fn presence(&self) -> (u64, Vec<String>, broadcast::Receiver<(u64, Presence)>) {
        let sessions = self.sessions();
        // Subscribing under the lock: no change is missed or counted twice.
        let rx = self.presence.subscribe();
        let mut users: Vec<String> = sessions.keys().cloned().collect();
        users.sort();
        (self.epoch.load(Ordering::SeqCst), users, rx)
    }

    /// Sends a presence change; callers hold the sessions lock.
    fn announce(&self, change: Presence) {
        match &change {
            Presence::Online(_) => metrics::gauge!(USERS_ONLINE).increment(1.0),
            Presence::Offline(_) => metrics::gauge!(USERS_ONLINE).decrement(1.0),
        }
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        // No subscriber (embedded mode, or no router attached): nothing to do.
        let _ = self.presence.send((epoch, change));
    }

    fn acked(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        self.acked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many routers this gateway is attached to now (for tests).
    #[cfg(any(test, feature = "testing"))]
    pub fn attached_routers(&self) -> usize {
        self.acked().len()
    }

    /// A router link to `router` is up; its acknowledgements count from now.
    pub fn router_attached(&self, router: &str) {
        self.acked().insert(router.to_string(), 0);
        self.greeted().remove(router);
        self.acked_changed.notify_waiters();
    }

    /// `router` has applied this gateway's presence up to `epoch`.
    pub fn router_acked(&self, router: &str, epoch: u64) {
        let known = match self.acked().get_mut(router) {
            Some(e) => {
                *e = (*e).max(epoch);
                true
            }
            None => false,
        };
        self.acked_changed.notify_waiters();
        // The first acknowledgement on a link: from now on this router
        // pushes to our users; what it routed before did not reach us.
        if known && self.greeted().insert(router.to_string()) {
            self.routing.send_modify(|n| *n += 1);
        }
    }

    /// The link to `router` is gone: nothing to wait for from it, and what
    /// it had routed to us but not yet sent is lost with the link.
    pub fn router_detached(&self, router: &str) {
        self.acked().remove(router);
        self.greeted().remove(router);
        self.acked_changed.notify_waiters();
        self.routing.send_modify(|n| *n += 1);
    }

    /// Changes when routing may have skipped this gateway (see
    /// [`Hub::router_detached`], [`Hub::router_acked`]); sessions then check
    /// history for messages they did not get live.
    pub fn routing_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.routing.subscribe()
    }

    fn greeted(&self) -> MutexGuard<'_, std::collections::HashSet<String>> {
        self.greeted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until every attached router has applied presence up to `epoch`,
    /// at most `limit`; whether they all did. With no router attached
    /// (embedded mode) there is nothing to wait for.
    pub async fn presence_settled(&self, epoch: u64, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.acked_changed.notified();
            tokio::pin!(notified);
            // Registered before checking, so a change in between still wakes us.
            notified.as_mut().enable();
            if self.acked().values().all(|e| *e >= epoch) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// Number of open sessions (all users; for tests).
    #[cfg(any(test, feature = "testing"))]
    pub fn session_count(&self) -> usize {
        self.sessions().values().map(Vec::len).sum()
    }

    /// A new pending request.
    pub fn pending(self: &Arc<Self>) -> Pending {
        let request_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(request_id, tx);
        Pending {
            hub: self.clone(),
            request_id,
            rx,
        }
    }
}

impl Hub {
    /// Queues `live` for every session of every user in `recipients`; a
    /// session whose queue is full reads too slowly and is disconnected,
    /// unless `live` is [droppable](Live::droppable): then only it is lost.
    fn push(&self, recipients: &[String], live: Live) {
        let mut sessions = self.sessions();
        for user in recipients {
            let Some(list) = sessions.get_mut(user) else {
                continue;
            };
            let before = list.len();
            list.retain(|s| match s.tx.try_send(live.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) if live.droppable() => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::info!(user_id = %user, session = s.id, "session reads too slowly; disconnecting it");
                    let _ = s.kill.try_send(Status::resource_exhausted(format!(
                        "session queue limit: your session fell {} messages behind (CONFAB_SESSION_QUEUE={}); \
                         reconnect and resume from the last seq you received",
                        s.tx.max_capacity(),
                        s.tx.max_capacity()
                    )));
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
            sessions_closed(before - list.len());
            if list.is_empty() {
                sessions.remove(user);
                self.announce(Presence::Offline(user.clone()));
            }
        }
    }
}

#[async_trait]
impl PushPresence for Hub {
    /// Passes a change on to the sessions of `recipients` here; the same
    /// state again (another router's copy) is dropped.
    async fn push_presence(&self, recipients: &[String], presence: PresenceFrame) {
        {
            let mut sent = self.presence_sent.lock().unwrap_or_else(|p| p.into_inner());
            if !sent.changes(&presence.user_id, presence.online, Instant::now()) {
                return;
            }
        }
        self.push(recipients, Live::Presence(Arc::new(presence)));
    }
}

#[async_trait]
impl DeliverySink for Hub {
    async fn deliver(&self, recipients: &[String], delivery: Arc<Delivery>) {
        self.push(recipients, Live::Message(delivery));
    }

    async fn receipt(&self, recipients: &[String], receipt: Receipt) {
        self.push(recipients, Live::Receipt(Arc::new(receipt)));
    }

    async fn complete(&self, outcome: OutcomeRecord) {
        let Some(origin) = &outcome.origin else {
            return;
        };
        if origin.gateway_id != self.gateway_id {
            return;
        }
        let waiter = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&origin.request_id);
        if let Some(tx) = waiter {
            let _ = tx.send(outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(hub: &Arc<Hub>, user: &str, queue: usize) -> (Registration, mpsc::Receiver<Live>) {
        let (tx, rx) = mpsc::channel(queue);
        let (kill, _) = mpsc::channel(1);
        (hub.register(user, tx, kill), rx)
    }

    #[test]
    fn presence_copies_are_dropped_and_old_departures_forgotten() {
        let mut sent = PresenceSent::default();
        let start = Instant::now();
        assert!(sent.changes("alice", true, start));
        assert!(!sent.changes("alice", true, start), "another router's copy");
        assert!(sent.changes("alice", false, start));
        assert!(!sent.changes("alice", false, start));
        assert!(sent.changes("carol", true, start));
        // Many users come and go; long after, the map is swept as it grows.
        for i in 0..5000 {
            sent.changes(&format!("u{i}"), false, start);
        }
        let later = start + PRESENCE_COPIES_WINDOW + Duration::from_secs(1);
        for i in 0..5000 {
            sent.changes(&format!("v{i}"), false, later);
        }
        assert!(
            sent.last.len() <= 5000 + 1 + 1024,
            "the old departures are forgotten: {}",
            sent.last.len()
        );
        assert!(
            !sent.changes("carol", true, later),
            "an online user is kept"
        );
        assert!(
            !sent.changes("v4999", false, later),
            "a recent departure is kept"
        );
    }

    #[tokio::test]
    async fn presence_follows_first_and_last_sessions_after_the_snapshot() {
        let hub = Hub::new("g");
        let (alice, _a) = session(&hub, "alice", 4);
        let (epoch, snapshot, mut changes) = hub.presence();
        assert_eq!(snapshot, vec!["alice".to_string()]);
        assert_eq!(epoch, 1, "alice coming online was the first change");
        let (bob1, _b1) = session(&hub, "bob", 4);
        let (bob2, _b2) = session(&hub, "bob", 4);
        drop(bob1);
        drop(bob2);
        drop(alice);
        let mut seen = Vec::new();
        while let Ok(change) = changes.try_recv() {
            seen.push(change);
        }
        assert_eq!(
            seen,
            vec![
                (2, Presence::Online("bob".into())),
                (3, Presence::Offline("bob".into())),
                (4, Presence::Offline("alice".into())),
            ]
        );
    }

    #[tokio::test]
    async fn sessions_wait_for_every_attached_router_to_apply_their_presence() {
        let hub = Hub::new("g");
        let limit = std::time::Duration::from_secs(5);
        // No router attached (embedded mode): settled at once.
        let (reg, _rx) = session(&hub, "alice", 4);
        assert!(hub.presence_settled(reg.epoch, limit).await);
        hub.router_attached("r1");
        hub.router_attached("r2");
        let (bob, _b) = session(&hub, "bob", 4);
        let waiter = {
            let hub = hub.clone();
            tokio::spawn(async move { hub.presence_settled(bob.epoch, limit).await })
        };
        hub.router_acked("r1", bob.epoch);
        assert!(!waiter.is_finished(), "r2 has not acknowledged yet");
        hub.router_detached("r2");
        assert!(
            waiter.await.expect("task"),
            "a detached router is not waited for"
        );
        // An acknowledgement that never comes: bounded.
        hub.router_attached("r3");
        let short = std::time::Duration::from_millis(50);
        assert!(
            !hub.presence_settled(hub.epoch.load(Ordering::SeqCst), short)
                .await
        );
    }

    #[tokio::test]
    async fn a_user_whose_last_session_is_dropped_for_being_slow_goes_offline() {
        let hub = Hub::new("g");
        let (slow, _rx) = session(&hub, "carol", 1);
        let (_, _, mut changes) = hub.presence();
        let m = Arc::new(Delivery::default());
        hub.deliver(&["carol".to_string()], m.clone()).await;
        hub.deliver(&["carol".to_string()], m).await;
        assert_eq!(
            changes.try_recv().ok().map(|(_, p)| p),
            Some(Presence::Offline("carol".into()))
        );
        assert_eq!(hub.session_count(), 0);
        // Its registration going away later announces nothing more.
        drop(slow);
        assert!(changes.try_recv().is_err());
    }
}
