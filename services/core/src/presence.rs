//! Presence: whether a user has a session on any gateway, and when its last
//! one ended. Written once for both modes: the embedded gateway feeds
//! [`run`] its hub's sessions, a router the sessions every attached gateway
//! announced; [`run`] turns a user's first session and last one ending into
//! `online` and `offline` (after a grace period, so a reconnect does not
//! flap), records them through history, and pushes a `presence` frame to
//! the user's DIRECT partners. Nothing here is sequenced or stored with the
//! messages.

use crate::seams::HistoryApi;
use crate::time::{now_ms, timestamp};
use confab_proto::internal::v1::PresenceUpdate;
use confab_proto::v1::Presence;
use futures::StreamExt as _;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long a user with no session left still counts as online: a
/// reconnect within it changes nothing (`CONFAB_PRESENCE_GRACE_MS`).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// How long a recorded `online` lasts unless renewed: a user whose
/// recorders all died stops counting as online after it.
pub const LEASE: Duration = Duration::from_secs(60);

/// How often the online users' records are renewed.
pub const RENEW_EVERY: Duration = Duration::from_secs(20);

/// The grace period from `CONFAB_PRESENCE_GRACE_MS` ([`DEFAULT_GRACE`]
/// when unset).
pub fn grace_from_env(
    env: &dyn crate::config::Env,
) -> Result<Duration, crate::config::ConfigError> {
    crate::config::millis_or(env, crate::vars::PRESENCE_GRACE_MS, DEFAULT_GRACE)
}

/// What the feeder of [`run`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// The user's first session (here, or on any gateway for a router).
    Arrived(String),
    /// The user's last session ended.
    Left(String),
}

/// A change of a user's presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The user came online.
    Online(String),
    /// The user went offline; its last session ended at `last_seen_ms`.
    Offline {
        /// The user.
        user: String,
        /// When its last session ended (ms since the epoch).
        last_seen_ms: i64,
    },
}

/// Who is online, with the grace period of those who just left.
#[derive(Debug)]
pub struct Tracker {
    grace: Duration,
    /// With a session now.
    present: HashSet<String>,
    /// Without a session since (instant, ms since the epoch), not yet
    /// offline.
    leaving: HashMap<String, (Instant, i64)>,
}

impl Tracker {
    /// Nobody online; `grace` as [`DEFAULT_GRACE`] says.
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            present: HashSet::new(),
            leaving: HashMap::new(),
        }
    }

    /// `user` has a session now: online, unless it already was or is back
    /// within its grace period.
    pub fn arrived(&mut self, user: &str) -> Option<Change> {
        let back = self.leaving.remove(user).is_some();
        let new = self.present.insert(user.to_string());
        (new && !back).then(|| Change::Online(user.to_string()))
    }

    /// `user` has no session left (at `now`, `now_ms`): offline once the
    /// grace period passes without it coming back.
    pub fn left(&mut self, user: &str, now: Instant, now_ms: i64) {
        if self.present.remove(user) {
            self.leaving.insert(user.to_string(), (now, now_ms));
        }
    }

    /// The users whose grace period has passed by `now`: offline.
    pub fn due(&mut self, now: Instant) -> Vec<Change> {
        let grace = self.grace;
        let mut gone: Vec<(String, i64)> = self
            .leaving
            .iter()
            .filter(|(_, (at, _))| *at + grace <= now)
            .map(|(u, (_, ms))| (u.clone(), *ms))
            .collect();
        gone.sort();
        for (u, _) in &gone {
            self.leaving.remove(u);
        }
        gone.into_iter()
            .map(|(user, last_seen_ms)| Change::Offline { user, last_seen_ms })
            .collect()
    }

    /// When the next grace period ends.
    pub fn next_due(&self) -> Option<Instant> {
        self.leaving.values().map(|(at, _)| *at + self.grace).min()
    }

    /// Everyone online, those in their grace period included, sorted.
    pub fn online(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .present
            .iter()
            .chain(self.leaving.keys())
            .cloned()
            .collect();
        all.sort();
        all
    }
}

/// Where `presence` frames go: to the sessions of `recipients`.
#[async_trait::async_trait]
pub trait PushPresence: Send + Sync + 'static {
    /// Pushes `presence` to every session of every user in `recipients`.
    async fn push_presence(&self, recipients: &[String], presence: Presence);
}

/// A record of `user` online from `now_ms` for a [`LEASE`].
fn alive(user: &str, now_ms: i64) -> PresenceUpdate {
    PresenceUpdate {
        user_id: user.to_string(),
        alive_until_ms: now_ms.saturating_add(LEASE.as_millis() as i64),
        last_seen_ms: 0,
    }
}

/// Changes announced together at most: what a mass reconnect queues is
/// recorded in calls of this many.
const MAX_ANNOUNCED: usize = 512;

/// Partner lookups (and pushes) of one announcement in flight at once.
const PARTNER_LOOKUPS: usize = 16;

/// The record and the frame of `change` at `now_ms`.
fn record_of(change: Change, now_ms: i64) -> (PresenceUpdate, Presence) {
    match change {
        Change::Online(user) => (
            alive(&user, now_ms),
            Presence {
                user_id: user,
                online: true,
                last_seen: None,
            },
        ),
        Change::Offline { user, last_seen_ms } => (
            PresenceUpdate {
                user_id: user.clone(),
                alive_until_ms: 0,
                last_seen_ms,
            },
            Presence {
                user_id: user,
                online: false,
                last_seen: Some(timestamp(last_seen_ms)),
            },
        ),
    }
}

/// Records `changes` (of distinct users) through `history` in one call,
/// then pushes each to its user's DIRECT partners, [`PARTNER_LOOKUPS`] at
/// a time. Best effort: a failure is logged (the next change, or the
/// renewal, records the state again).
async fn announce(history: &dyn HistoryApi, push: &dyn PushPresence, changes: Vec<Change>) {
    if changes.is_empty() {
        return;
    }
    let now = now_ms();
    let (updates, frames): (Vec<PresenceUpdate>, Vec<Presence>) =
        changes.into_iter().map(|c| record_of(c, now)).unzip();
    if let Err(e) = history.record_presence(updates).await {
        tracing::warn!(users = frames.len(), error = %e, "could not record presence");
    }
    futures::stream::iter(frames)
        .for_each_concurrent(PARTNER_LOOKUPS, |presence| async move {
            match history.direct_partners(&presence.user_id).await {
                Ok(partners) if !partners.is_empty() => {
                    push.push_presence(&partners, presence).await
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(user_id = %presence.user_id, error = %e, "could not find whom to tell of a presence change");
                }
            }
        })
        .await;
}

/// Resolves at `at`, or never.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Follows what `seen` reports until it closes: announces each change (see
/// [`Tracker`]), and renews the online users' records every
/// [`RENEW_EVERY`].
pub async fn run(
    mut seen: mpsc::UnboundedReceiver<Seen>,
    history: Arc<dyn HistoryApi>,
    push: Arc<dyn PushPresence>,
    grace: Duration,
) {
    let mut tracker = Tracker::new(grace);
    let mut renew = tokio::time::interval_at(Instant::now() + RENEW_EVERY, RENEW_EVERY);
    loop {
        tokio::select! {
            event = seen.recv() => {
                let Some(event) = event else { return };
                // What else is waiting already (a mass reconnect) is
                // announced with it; a user's arrivals and departures in
                // it make at most one change (see `Tracker`).
                let mut changes = Vec::new();
                let mut next = Some(event);
                while let Some(event) = next.take() {
                    match event {
                        Seen::Arrived(user) => changes.extend(tracker.arrived(&user)),
                        Seen::Left(user) => tracker.left(&user, Instant::now(), now_ms()),
                    }
                    if changes.len() < MAX_ANNOUNCED {
                        next = seen.try_recv().ok();
                    }
                }
                announce(history.as_ref(), push.as_ref(), changes).await;
            }
            () = sleep_until_some(tracker.next_due()) => {
                for changes in tracker.due(Instant::now()).chunks(MAX_ANNOUNCED) {
                    announce(history.as_ref(), push.as_ref(), changes.to_vec()).await;
                }
            }
            _ = renew.tick() => {
                let now = now_ms();
                let updates: Vec<PresenceUpdate> =
                    tracker.online().iter().map(|u| alive(u, now)).collect();
                if !updates.is_empty() {
                    if let Err(e) = history.record_presence(updates).await {
                        tracing::warn!(error = %e, "could not renew the online users' presence");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::error::ChatError;
    use confab_proto::v1::{
        Conversation, GetHistoryRequest, GetHistoryResponse, GetPresenceRequest,
        GetPresenceResponse, ListConversationsRequest, ListConversationsResponse, SyncRequest,
        SyncResponse,
    };
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// History that records presence and knows everyone's partner.
    #[derive(Default)]
    struct Recorder {
        /// The size of each `record_presence` call.
        recorded: Mutex<Vec<usize>>,
        in_flight: AtomicUsize,
        most_in_flight: AtomicUsize,
    }

    fn unused<T>() -> Result<T, ChatError> {
        Err(ChatError::Internal("not used here".into()))
    }

    #[async_trait::async_trait]
    impl HistoryApi for Recorder {
        async fn get_history(
            &self,
            _: &str,
            _: GetHistoryRequest,
        ) -> Result<GetHistoryResponse, ChatError> {
            unused()
        }
        async fn list_conversations(
            &self,
            _: &str,
            _: ListConversationsRequest,
        ) -> Result<ListConversationsResponse, ChatError> {
            unused()
        }
        async fn conversation(&self, _: &str) -> Result<Conversation, ChatError> {
            unused()
        }
        async fn get_conversation(&self, _: &str, _: &str) -> Result<Conversation, ChatError> {
            unused()
        }
        async fn sync(&self, _: &str, _: SyncRequest) -> Result<SyncResponse, ChatError> {
            unused()
        }
        async fn get_presence(
            &self,
            _: &str,
            _: GetPresenceRequest,
        ) -> Result<GetPresenceResponse, ChatError> {
            unused()
        }
        async fn get_edit_history(
            &self,
            _: &str,
            _: confab_proto::v1::GetEditHistoryRequest,
        ) -> Result<confab_proto::v1::GetEditHistoryResponse, ChatError> {
            unused()
        }
        async fn search_messages(
            &self,
            _: &str,
            _: confab_proto::v1::SearchMessagesRequest,
        ) -> Result<confab_proto::v1::SearchMessagesResponse, ChatError> {
            unused()
        }
        async fn direct_partners(&self, user: &str) -> Result<Vec<String>, ChatError> {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::task::yield_now().await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            Ok(vec![format!("{user}.partner")])
        }
        async fn record_presence(&self, updates: Vec<PresenceUpdate>) -> Result<(), ChatError> {
            self.recorded.lock().expect("lock").push(updates.len());
            Ok(())
        }
    }

    /// The frames pushed, by recipient.
    #[derive(Default)]
    struct Pushed(Mutex<Vec<(String, Presence)>>);

    #[async_trait::async_trait]
    impl PushPresence for Pushed {
        async fn push_presence(&self, recipients: &[String], presence: Presence) {
            let mut pushed = self.0.lock().expect("lock");
            for r in recipients {
                pushed.push((r.clone(), presence.clone()));
            }
        }
    }

    #[tokio::test]
    async fn arrivals_waiting_together_are_recorded_in_one_call_and_told_concurrently() {
        let (tx, rx) = mpsc::unbounded_channel();
        for i in 0..100 {
            tx.send(Seen::Arrived(format!("u{i}"))).expect("send");
        }
        // Back within the grace period: no second change for u0.
        tx.send(Seen::Left("u0".into())).expect("send");
        tx.send(Seen::Arrived("u0".into())).expect("send");
        drop(tx);
        let history = Arc::new(Recorder::default());
        let pushed = Arc::new(Pushed::default());
        run(rx, history.clone(), pushed.clone(), DEFAULT_GRACE).await;
        assert_eq!(*history.recorded.lock().expect("lock"), [100]);
        let pushed = pushed.0.lock().expect("lock");
        assert_eq!(pushed.len(), 100);
        assert!(pushed
            .iter()
            .all(|(to, p)| p.online && *to == format!("{}.partner", p.user_id)));
        let most = history.most_in_flight.load(Ordering::SeqCst);
        assert!(
            most > 1 && most <= PARTNER_LOOKUPS,
            "partner lookups in flight at once: {most}"
        );
    }

    #[test]
    fn a_reconnect_within_the_grace_period_does_not_flap() {
        let grace = Duration::from_secs(5);
        let mut t = Tracker::new(grace);
        let start = Instant::now();
        assert_eq!(t.arrived("alice"), Some(Change::Online("alice".into())));
        assert_eq!(t.arrived("alice"), None, "already online");
        t.left("alice", start, 1_000);
        assert_eq!(t.online(), ["alice"], "online through the grace period");
        assert_eq!(t.next_due(), Some(start + grace));
        assert!(t.due(start + grace / 2).is_empty());
        assert_eq!(t.arrived("alice"), None, "back within the grace period");
        assert_eq!(t.next_due(), None);
        t.left("alice", start, 2_000);
        t.left("alice", start, 3_000);
        assert_eq!(
            t.due(start + grace),
            [Change::Offline {
                user: "alice".into(),
                last_seen_ms: 2_000
            }]
        );
        assert!(t.online().is_empty());
        assert_eq!(t.arrived("alice"), Some(Change::Online("alice".into())));
        t.left("bob", start, 1);
        assert!(t.due(start + grace * 2).is_empty(), "bob was never here");
    }
}
