//! [`GatewayLinks`]: the router's attached gateways, opened, updated by
//! presence frames and closed; and the router's `DeliverySink` in
//! distributed mode, queueing deliveries and completions to each gateway
//! (a gateway too slow for too long is dropped).

use super::directory::{Directory, Link};
use async_trait::async_trait;
use confab_core::presence::{PushPresence, Seen};
use confab_core::seams::{Delivery, DeliverySink};
use confab_proto::internal::v1::{
    gateway_frame, router_frame, Complete, Deliver, DeliverPresence, DeliverReceipt, GatewayFrame,
    Origin, OutcomeRecord, PresenceAck, RelayTyping, RouterFrame,
};
use confab_proto::v1::{Presence, Receipt};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

/// Limits of the router's gateway links.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Frames queued per gateway before the router waits for it.
    pub queue: usize,
    /// How long a full gateway queue may hold the router before the link is dropped.
    pub max_stall: Duration,
    /// How long a new stream may take to send its `hello`.
    pub hello_timeout: Duration,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            queue: 4096,
            max_stall: Duration::from_secs(2),
            hello_timeout: Duration::from_secs(10),
        }
    }
}

/// What the stream handler needs of a freshly opened link.
pub(super) struct Opened {
    /// The link's id.
    pub(super) id: u64,
    /// Frames to send to the gateway.
    pub(super) frames: mpsc::Receiver<RouterFrame>,
    /// A status that ends the stream.
    pub(super) kill: mpsc::Receiver<Status>,
    /// Resolves once the link has been removed from the directory.
    pub(super) gone: oneshot::Receiver<()>,
}

/// The router's attached gateways and the users on each: where deliveries
/// and completions go in distributed mode.
pub struct GatewayLinks {
    /// Queue sizes and timeouts.
    pub(super) config: LinkConfig,
    /// Attached gateways and their users.
    directory: Mutex<Directory>,
    /// Source of link ids.
    next_link: AtomicU64,
    /// Outcomes dropped because their origin gateway was not attached.
    orphaned: AtomicU64,
    /// Where users' first and last sessions anywhere are reported (see
    /// [`GatewayLinks::presence_changes`]).
    seen: Mutex<Option<mpsc::UnboundedSender<Seen>>>,
}

/// Counter of outcomes whose origin gateway was not attached to the router
/// that routed them (the sender's call ends with the retry-safe UNAVAILABLE).
pub const OUTCOMES_ORPHANED: &str = "confab_router_outcomes_orphaned_total";

impl GatewayLinks {
    /// No gateway attached yet.
    pub fn new(config: LinkConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            directory: Mutex::new(Directory::default()),
            next_link: AtomicU64::new(1),
            orphaned: AtomicU64::new(0),
            seen: Mutex::new(None),
        })
    }

    fn directory(&self) -> MutexGuard<'_, Directory> {
        // Every update leaves the maps consistent before anything can panic,
        // so a poisoned lock is still usable.
        self.directory.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on, every user's first session on any attached gateway and
    /// last one ending, in order, for [`confab_core::presence::run`]; the
    /// users on the gateways attached already come first.
    pub fn presence_changes(&self) -> mpsc::UnboundedReceiver<Seen> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut dir = self.directory();
        dir.take_seen();
        let mut users: Vec<&String> = dir.users.keys().collect();
        users.sort();
        for user in users {
            let _ = tx.send(Seen::Arrived(user.clone()));
        }
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        rx
    }

    /// Passes on the presence changes of the last update of `dir` (under
    /// its lock, so they stay in order).
    fn report_seen(&self, dir: &mut Directory) {
        let seen = dir.take_seen();
        if seen.is_empty() {
            return;
        }
        if let Some(tx) = self.seen.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            for s in seen {
                let _ = tx.send(s);
            }
        }
    }

    /// The ids of the attached gateways, sorted.
    pub fn gateways(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.directory().gateways.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// How many outcomes were dropped because their origin gateway was not
    /// attached here (for tests).
    #[cfg(any(test, feature = "testing"))]
    pub fn orphaned_outcomes(&self) -> u64 {
        self.orphaned.load(Ordering::Relaxed)
    }

    /// The gateways that announced a session of `user`, sorted (for tests).
    #[cfg(any(test, feature = "testing"))]
    pub fn gateways_of(&self, user: &str) -> Vec<String> {
        self.directory()
            .users
            .get(user)
            .map(|g| g.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Registers a new stream of `gateway_id` (which completes requests
    /// from deliveries when `completes_in_deliveries`); an older stream of
    /// the same gateway is ended, since the gateway has moved on to this one.
    pub(super) fn open(
        &self,
        gateway_id: &str,
        users: Vec<String>,
        completes_in_deliveries: bool,
    ) -> Opened {
        let id = self.next_link.fetch_add(1, Ordering::Relaxed);
        let (tx, frames) = mpsc::channel(self.config.queue.max(1));
        let (kill_tx, kill) = mpsc::channel(1);
        let (gone_tx, gone) = oneshot::channel();
        let mut dir = self.directory();
        if let Some(old) = dir.remove_link(gateway_id) {
            tracing::info!(
                gateway_id,
                "gateway attached again; ending its previous link"
            );
            let _ = old.kill.try_send(Status::unavailable(
                "a newer link of this gateway replaced this one",
            ));
        }
        dir.gateways.insert(
            gateway_id.to_string(),
            Link {
                id,
                tx,
                kill: kill_tx,
                users: HashSet::new(),
                completes_in_deliveries,
                _gone: gone_tx,
            },
        );
        for user in users {
            dir.add_user(gateway_id, user);
        }
        self.report_seen(&mut dir);
        Opened {
            id,
            frames,
            kill,
            gone,
        }
    }

    /// Applies a presence frame from the gateway's stream `link`.
    pub(super) fn apply(&self, gateway_id: &str, link: u64, frame: GatewayFrame) {
        let mut dir = self.directory();
        if !dir.is_current(gateway_id, link) {
            return;
        }
        let epoch = match &frame.frame {
            Some(gateway_frame::Frame::Hello(h)) => h.epoch,
            Some(gateway_frame::Frame::UsersOnline(f)) => f.epoch,
            Some(gateway_frame::Frame::UsersOffline(f)) => f.epoch,
            // Not presence (see `read_presence`).
            Some(gateway_frame::Frame::Typing(_)) | None => return,
        };
        match frame.frame {
            Some(gateway_frame::Frame::Hello(hello)) => {
                // A resync: the new list replaces what the gateway said before.
                let old: Vec<String> = dir
                    .gateways
                    .get(gateway_id)
                    .map(|l| l.users.iter().cloned().collect())
                    .unwrap_or_default();
                for user in old {
                    dir.remove_user(gateway_id, &user);
                }
                for user in hello.user_ids {
                    dir.add_user(gateway_id, user);
                }
            }
            Some(gateway_frame::Frame::UsersOnline(online)) => {
                for user in online.user_ids {
                    dir.add_user(gateway_id, user);
                }
            }
            Some(gateway_frame::Frame::UsersOffline(offline)) => {
                for user in offline.user_ids {
                    dir.remove_user(gateway_id, &user);
                }
            }
            Some(gateway_frame::Frame::Typing(_)) | None => {}
        }
        self.report_seen(&mut dir);
        // Acknowledged after the directory changed, under its lock: a
        // delivery routed after the gateway reads the ack sees the change.
        Self::ack_in(&dir, gateway_id, link, epoch);
    }

    /// Tells the gateway that its presence up to `epoch` is applied. Best
    /// effort: with its queue full the ack is skipped, and its sessions stop
    /// waiting for it after a bound.
    pub(crate) fn ack(&self, gateway_id: &str, link: u64, epoch: u64) {
        let dir = self.directory();
        Self::ack_in(&dir, gateway_id, link, epoch);
    }

    fn ack_in(dir: &Directory, gateway_id: &str, link: u64, epoch: u64) {
        if !dir.is_current(gateway_id, link) {
            return;
        }
        if let Some(l) = dir.gateways.get(gateway_id) {
            let frame = RouterFrame {
                frame: Some(router_frame::Frame::PresenceAck(PresenceAck { epoch })),
            };
            if l.tx.try_send(frame).is_err() {
                tracing::debug!(
                    gateway_id,
                    epoch,
                    "gateway queue full; presence ack skipped"
                );
            }
        }
    }

    /// Removes the stream `link` of `gateway_id` (if it is still the current
    /// one) and its users; with `status`, ends the stream with it at once.
    /// Whether it removed the link.
    pub(super) fn close(&self, gateway_id: &str, link: u64, status: Option<Status>) -> bool {
        let removed = {
            let mut dir = self.directory();
            if !dir.is_current(gateway_id, link) {
                return false;
            }
            let removed = dir.remove_link(gateway_id);
            self.report_seen(&mut dir);
            removed
        };
        match (removed, status) {
            (Some(link), Some(status)) => {
                let _ = link.kill.try_send(status);
                true
            }
            (removed, _) => removed.is_some(),
        }
    }

    /// Queues `frame` for a gateway. A full queue holds the caller (and so
    /// the router's consumer) up to `max_stall`; past it the link is dropped:
    /// the gateway reconnects and its sessions fill any gap from history.
    async fn send(
        &self,
        gateway_id: &str,
        link: u64,
        tx: mpsc::Sender<RouterFrame>,
        frame: RouterFrame,
    ) {
        let frame = match tx.try_send(frame) {
            Ok(()) => return,
            // The stream is ending; its reader removes the link.
            Err(mpsc::error::TrySendError::Closed(_)) => return,
            Err(mpsc::error::TrySendError::Full(frame)) => frame,
        };
        let stalled = tokio::time::timeout(self.config.max_stall, tx.send(frame))
            .await
            .is_err();
        // Several routing tasks may give up on the same link; one drops it.
        if stalled
            && self.close(
                gateway_id,
                link,
                Some(Status::resource_exhausted(
                    "this gateway fell too far behind; reconnect and let sessions fill gaps from history",
                )),
            )
        {
            tracing::warn!(
                gateway_id,
                queue = self.config.queue,
                stall_ms = self.config.max_stall.as_millis() as u64,
                "gateway reads too slowly; dropped its link"
            );
        }
    }
}

impl GatewayLinks {
    /// Sends to each gateway with sessions of some of `recipients` the frame
    /// `frame` makes for those users. One slow gateway does not hold up the
    /// others' share.
    async fn fan_out(&self, recipients: &[String], frame: impl Fn(Vec<String>) -> RouterFrame) {
        self.fan_out_to(recipients, |_, users| frame(users)).await
    }

    /// [`fan_out`](Self::fan_out), the frame made knowing the gateway it
    /// goes to: its id, and whether it completes requests from deliveries.
    async fn fan_out_to(
        &self,
        recipients: &[String],
        frame: impl Fn((&str, bool), Vec<String>) -> RouterFrame,
    ) {
        let targets: Vec<_> = {
            let dir = self.directory();
            let mut per_gateway: BTreeMap<&str, Vec<String>> = BTreeMap::new();
            for user in recipients {
                for gateway_id in dir.users.get(user).into_iter().flatten() {
                    per_gateway
                        .entry(gateway_id.as_str())
                        .or_default()
                        .push(user.clone());
                }
            }
            per_gateway
                .into_iter()
                .filter_map(|(gateway_id, users)| {
                    let link = dir.gateways.get(gateway_id)?;
                    let gateway = (gateway_id.to_string(), link.completes_in_deliveries);
                    Some((gateway, link.id, link.tx.clone(), users))
                })
                .collect()
        };
        futures::future::join_all(targets.into_iter().map(
            |((gateway_id, completes), link, tx, recipient_ids)| {
                let frame = frame((&gateway_id, completes), recipient_ids);
                async move { self.send(&gateway_id, link, tx, frame).await }
            },
        ))
        .await;
    }
}

#[async_trait]
impl PushPresence for GatewayLinks {
    async fn push_presence(&self, recipients: &[String], presence: Presence) {
        self.fan_out(recipients, |recipient_ids| RouterFrame {
            frame: Some(router_frame::Frame::Presence(DeliverPresence {
                recipient_ids,
                presence: Some(presence.clone()),
            })),
        })
        .await;
    }
}

impl GatewayLinks {
    /// Relays a typing indicator a gateway sent to the gateways with
    /// sessions of its recipients.
    pub async fn relay_typing(&self, relay: RelayTyping) {
        let Some(typing) = relay.typing else {
            return;
        };
        self.fan_out(&relay.recipient_ids, |recipient_ids| RouterFrame {
            frame: Some(router_frame::Frame::Typing(RelayTyping {
                recipient_ids,
                typing: Some(typing.clone()),
            })),
        })
        .await;
    }
}

#[async_trait]
impl DeliverySink for GatewayLinks {
    async fn deliver(&self, recipients: &[String], delivery: Arc<Delivery>) {
        self.fan_out(recipients, |recipient_ids| {
            deliver_frame(&delivery, recipient_ids, None)
        })
        .await;
    }

    /// The origin gateway's share of the delivery carries the completion
    /// (`Deliver.completes`); a `Complete` frame follows only where that
    /// gateway has none of the recipients or does not take completions in
    /// deliveries (an older gateway).
    async fn deliver_and_complete(
        &self,
        recipients: &[String],
        delivery: Arc<Delivery>,
        outcome: OutcomeRecord,
    ) {
        let Some(origin) = &outcome.origin else {
            return self.deliver(recipients, delivery).await;
        };
        let folded = AtomicBool::new(false);
        self.fan_out_to(recipients, |(gateway_id, takes), recipient_ids| {
            let completes = (takes && gateway_id == origin.gateway_id).then(|| {
                folded.store(true, Ordering::Relaxed);
                origin.clone()
            });
            deliver_frame(&delivery, recipient_ids, completes)
        })
        .await;
        if !folded.load(Ordering::Relaxed) {
            self.complete(outcome).await;
        }
    }

    async fn receipt(&self, recipients: &[String], receipt: Receipt) {
        self.fan_out(recipients, |recipient_ids| RouterFrame {
            frame: Some(router_frame::Frame::Receipt(DeliverReceipt {
                recipient_ids,
                receipt: Some(receipt.clone()),
            })),
        })
        .await;
    }

    async fn complete(&self, outcome: OutcomeRecord) {
        let Some(origin) = &outcome.origin else {
            return;
        };
        let gateway_id = origin.gateway_id.clone();
        let target = self
            .directory()
            .gateways
            .get(&gateway_id)
            .map(|l| (l.id, l.tx.clone()));
        let Some((link, tx)) = target else {
            // Its client times out with the retry-safe UNAVAILABLE.
            self.orphaned.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(OUTCOMES_ORPHANED).increment(1);
            tracing::debug!(
                gateway_id,
                request_id = origin.request_id,
                "origin gateway is not attached to this router; dropping the outcome"
            );
            return;
        };
        let frame = RouterFrame {
            frame: Some(router_frame::Frame::Complete(Complete {
                outcome: Some(outcome),
            })),
        };
        self.send(&gateway_id, link, tx, frame).await;
    }
}

/// The `Deliver` frame of `delivery` for `recipient_ids` on one gateway,
/// completing that gateway's request `completes`.
fn deliver_frame(
    delivery: &Delivery,
    recipient_ids: Vec<String>,
    completes: Option<Origin>,
) -> RouterFrame {
    RouterFrame {
        frame: Some(router_frame::Frame::Deliver(Deliver {
            recipient_ids,
            message: Some(delivery.message.clone()),
            traceparent: delivery.traceparent.clone(),
            accepted_at_ms: delivery.accepted_at_ms,
            completes,
        })),
    }
}
