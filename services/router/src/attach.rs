//! The router's side of `confab.internal.v1.RouterLink`: every gateway keeps
//! one `Attach` stream open to every router, announces which users have
//! sessions on it, and receives the deliveries for those users and the
//! outcomes of the requests it accepted. `GatewayLinks` is the router's
//! `DeliverySink` in distributed mode.

use async_trait::async_trait;
use confab_core::seams::{Delivery, DeliverySink};
use confab_proto::internal::v1::router_link_server::{RouterLink, RouterLinkServer};
use confab_proto::internal::v1::{
    gateway_frame, router_frame, Complete, Deliver, GatewayFrame, OutcomeRecord, PresenceAck,
    RouterFrame,
};
use confab_runtime::server::Server;
use confab_runtime::shutdown::Signal;
use futures::Stream;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};

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

/// One attached gateway's stream.
struct Link {
    /// Tells this stream apart from an earlier or later one of the same gateway.
    id: u64,
    /// Frames for the gateway, in order.
    tx: mpsc::Sender<RouterFrame>,
    /// Ends the stream at once with a status, ahead of the queued frames.
    kill: mpsc::Sender<Status>,
    /// Users with at least one session on that gateway.
    users: HashSet<String>,
    /// Dropped with the link: stops the task reading the gateway's frames.
    _gone: oneshot::Sender<()>,
}

/// Who is where, as the gateways announced it.
#[derive(Default)]
struct Directory {
    /// Attached gateways by gateway id.
    gateways: HashMap<String, Link>,
    /// Gateway ids holding each user's sessions.
    users: HashMap<String, BTreeSet<String>>,
}

impl Directory {
    fn add_user(&mut self, gateway_id: &str, user: String) {
        let Some(link) = self.gateways.get_mut(gateway_id) else {
            return;
        };
        if link.users.insert(user.clone()) {
            self.users
                .entry(user)
                .or_default()
                .insert(gateway_id.to_string());
        }
    }

    fn remove_user(&mut self, gateway_id: &str, user: &str) {
        if let Some(link) = self.gateways.get_mut(gateway_id) {
            link.users.remove(user);
        }
        if let Some(gateways) = self.users.get_mut(user) {
            gateways.remove(gateway_id);
            if gateways.is_empty() {
                self.users.remove(user);
            }
        }
    }

    /// Removes a gateway's link and every user it announced.
    fn remove_link(&mut self, gateway_id: &str) -> Option<Link> {
        let link = self.gateways.remove(gateway_id)?;
        for user in &link.users {
            if let Some(gateways) = self.users.get_mut(user) {
                gateways.remove(gateway_id);
                if gateways.is_empty() {
                    self.users.remove(user);
                }
            }
        }
        Some(link)
    }

    /// The current link of `gateway_id`, if it is `link`.
    fn is_current(&self, gateway_id: &str, link: u64) -> bool {
        self.gateways.get(gateway_id).is_some_and(|l| l.id == link)
    }
}

/// What the stream handler needs of a freshly opened link.
struct Opened {
    /// The link's id.
    id: u64,
    /// Frames to send to the gateway.
    frames: mpsc::Receiver<RouterFrame>,
    /// A status that ends the stream.
    kill: mpsc::Receiver<Status>,
    /// Resolves once the link has been removed from the directory.
    gone: oneshot::Receiver<()>,
}

/// The router's attached gateways and the users on each: where deliveries
/// and completions go in distributed mode.
pub struct GatewayLinks {
    /// Queue sizes and timeouts.
    config: LinkConfig,
    /// Attached gateways and their users.
    directory: Mutex<Directory>,
    /// Source of link ids.
    next_link: AtomicU64,
    /// Outcomes dropped because their origin gateway was not attached.
    orphaned: AtomicU64,
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
        })
    }

    fn directory(&self) -> MutexGuard<'_, Directory> {
        // Every update leaves the maps consistent before anything can panic,
        // so a poisoned lock is still usable.
        self.directory.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ids of the attached gateways, sorted.
    pub fn gateways(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.directory().gateways.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// How many outcomes were dropped because their origin gateway was not
    /// attached here.
    pub fn orphaned_outcomes(&self) -> u64 {
        self.orphaned.load(Ordering::Relaxed)
    }

    /// The gateways that announced a session of `user`, sorted.
    pub fn gateways_of(&self, user: &str) -> Vec<String> {
        self.directory()
            .users
            .get(user)
            .map(|g| g.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Registers a new stream of `gateway_id`; an older stream of the same
    /// gateway is ended, since the gateway has moved on to this one.
    fn open(&self, gateway_id: &str, users: Vec<String>) -> Opened {
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
                _gone: gone_tx,
            },
        );
        for user in users {
            dir.add_user(gateway_id, user);
        }
        Opened {
            id,
            frames,
            kill,
            gone,
        }
    }

    /// Applies a presence frame from the gateway's stream `link`.
    fn apply(&self, gateway_id: &str, link: u64, frame: GatewayFrame) {
        let mut dir = self.directory();
        if !dir.is_current(gateway_id, link) {
            return;
        }
        let epoch = match &frame.frame {
            Some(gateway_frame::Frame::Hello(h)) => h.epoch,
            Some(gateway_frame::Frame::UsersOnline(f)) => f.epoch,
            Some(gateway_frame::Frame::UsersOffline(f)) => f.epoch,
            None => return,
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
            None => {}
        }
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
    fn close(&self, gateway_id: &str, link: u64, status: Option<Status>) -> bool {
        let removed = {
            let mut dir = self.directory();
            if !dir.is_current(gateway_id, link) {
                return false;
            }
            dir.remove_link(gateway_id)
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

#[async_trait]
impl DeliverySink for GatewayLinks {
    async fn deliver(&self, recipients: &[String], delivery: Arc<Delivery>) {
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
                    Some((gateway_id.to_string(), link.id, link.tx.clone(), users))
                })
                .collect()
        };
        // One slow gateway does not hold up the others' share of a message.
        futures::future::join_all(targets.into_iter().map(
            |(gateway_id, link, tx, recipient_ids)| {
                let frame = RouterFrame {
                    frame: Some(router_frame::Frame::Deliver(Deliver {
                        recipient_ids,
                        message: Some(delivery.message.clone()),
                        traceparent: delivery.traceparent.clone(),
                        accepted_at_ms: delivery.accepted_at_ms,
                    })),
                };
                async move { self.send(&gateway_id, link, tx, frame).await }
            },
        ))
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

/// The `RouterLink` service over a router's `GatewayLinks`.
#[derive(Clone)]
pub struct RouterLinkService {
    /// Where attached gateways are kept.
    links: Arc<GatewayLinks>,
    /// Ends every stream when the server shuts down.
    shutdown: Signal,
}

impl RouterLinkService {
    /// A service registering gateways in `links`; its streams end when
    /// `shutdown` fires.
    pub fn new(links: Arc<GatewayLinks>, shutdown: Signal) -> Self {
        Self { links, shutdown }
    }
}

type Outbound = Pin<Box<dyn Stream<Item = Result<RouterFrame, Status>> + Send>>;

#[tonic::async_trait]
impl RouterLink for RouterLinkService {
    type AttachStream = Outbound;

    async fn attach(
        &self,
        req: Request<Streaming<GatewayFrame>>,
    ) -> Result<Response<Outbound>, Status> {
        let peer = req.remote_addr();
        let mut inbound = req.into_inner();
        let wait = self.links.config.hello_timeout;
        let first = tokio::time::timeout(wait, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no hello within {} ms of attaching",
                    wait.as_millis()
                ))
            })??;
        let hello = match first.and_then(|f| f.frame) {
            Some(gateway_frame::Frame::Hello(hello)) => hello,
            _ => {
                return Err(Status::invalid_argument(
                    "the first frame of attach must be hello",
                ))
            }
        };
        if hello.gateway_id.is_empty() {
            return Err(Status::invalid_argument("hello.gateway_id is required"));
        }
        let gateway_id = hello.gateway_id;
        let users = hello.user_ids.len();
        let opened = self.links.open(&gateway_id, hello.user_ids);
        self.links.ack(&gateway_id, opened.id, hello.epoch);
        tracing::info!(gateway_id = %gateway_id, peer = ?peer, users, "gateway attached");
        tokio::spawn(read_presence(
            self.links.clone(),
            gateway_id,
            opened.id,
            inbound,
            opened.gone,
            self.shutdown.clone(),
        ));
        Ok(Response::new(outbound(
            opened.frames,
            opened.kill,
            self.shutdown.clone(),
        )))
    }
}

/// Applies the gateway's presence frames until its stream ends, the link is
/// dropped, or the router shuts down; then forgets the gateway.
async fn read_presence(
    links: Arc<GatewayLinks>,
    gateway_id: String,
    link: u64,
    mut inbound: Streaming<GatewayFrame>,
    mut gone: oneshot::Receiver<()>,
    shutdown: Signal,
) {
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut gone => break,
            _ = &mut stop => break,
            frame = inbound.message() => match frame {
                Ok(Some(frame)) => links.apply(&gateway_id, link, frame),
                Ok(None) => {
                    tracing::info!(gateway_id = %gateway_id, "gateway detached");
                    break;
                }
                Err(status) => {
                    tracing::info!(gateway_id = %gateway_id, error = %status.message(), "gateway link broke");
                    break;
                }
            },
        }
    }
    links.close(&gateway_id, link, None);
}

/// The frames for one gateway, in order; a kill status or shutdown jumps the
/// queue and ends the stream.
fn outbound(
    frames: mpsc::Receiver<RouterFrame>,
    kill: mpsc::Receiver<Status>,
    shutdown: Signal,
) -> Outbound {
    let stop: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(shutdown.wait());
    Box::pin(futures::stream::unfold(
        Some((frames, kill, stop)),
        |state| async move {
            let (mut frames, mut kill, mut stop) = state?;
            tokio::select! {
                biased;
                Some(status) = kill.recv() => Some((Err(status), None)),
                _ = &mut stop => Some((
                    Err(Status::unavailable("the router is shutting down; reconnect")),
                    None,
                )),
                frame = frames.recv() => frame.map(|f| (Ok(f), Some((frames, kill, stop)))),
            }
        },
    ))
}

/// The `RouterLink` server over `links`, for [`Server::serve`]: when
/// `shutdown` fires, every gateway stream ends with UNAVAILABLE (the
/// gateways reconnect elsewhere or when the router is back). A router
/// process requires the service token of every gateway
/// ([`Server::service_token`]); in-process tests may leave it open.
pub fn server(links: Arc<GatewayLinks>, shutdown: Signal) -> Server {
    Server::new(
        "router",
        RouterLinkServer::new(RouterLinkService::new(links, shutdown)),
        confab_proto::FILE_DESCRIPTOR_SET,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_proto::internal::v1::{Origin, UsersOffline, UsersOnline};
    use confab_proto::v1::Message;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn message(seq: u64) -> Arc<Delivery> {
        Arc::new(Delivery::bare(Message {
            conversation_id: "c".into(),
            seq,
            ..Default::default()
        }))
    }

    /// The recipients and seq of the next frame, which must be a delivery.
    fn next_delivery(rx: &mut mpsc::Receiver<RouterFrame>) -> (Vec<String>, u64) {
        match rx.try_recv().ok().and_then(|f| f.frame) {
            Some(router_frame::Frame::Deliver(d)) => (
                d.recipient_ids,
                d.message.map(|m| m.seq).unwrap_or_default(),
            ),
            other => panic!("expected a delivery, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn each_gateway_gets_one_delivery_with_just_its_users() {
        let links = GatewayLinks::new(LinkConfig::default());
        let mut g1 = links.open("g1", names(&["alice", "bob"]));
        let mut g2 = links.open("g2", names(&["bob", "carol"]));
        links
            .deliver(&names(&["alice", "bob", "carol", "dave"]), message(7))
            .await;
        assert_eq!(next_delivery(&mut g1.frames), (names(&["alice", "bob"]), 7));
        assert_eq!(next_delivery(&mut g2.frames), (names(&["bob", "carol"]), 7));
        assert!(g1.frames.try_recv().is_err() && g2.frames.try_recv().is_err());
        // Nobody of these recipients is attached: nothing is sent.
        links.deliver(&names(&["dave"]), message(8)).await;
        assert!(g1.frames.try_recv().is_err() && g2.frames.try_recv().is_err());
    }

    #[tokio::test]
    async fn presence_frames_move_users_and_a_closed_link_forgets_its_users() {
        let links = GatewayLinks::new(LinkConfig::default());
        let mut g1 = links.open("g1", names(&["alice"]));
        let online = |users: &[&str], epoch| GatewayFrame {
            frame: Some(gateway_frame::Frame::UsersOnline(UsersOnline {
                user_ids: names(users),
                epoch,
            })),
        };
        let offline = |users: &[&str], epoch| GatewayFrame {
            frame: Some(gateway_frame::Frame::UsersOffline(UsersOffline {
                user_ids: names(users),
                epoch,
            })),
        };
        let mut acks = || match g1.frames.try_recv().ok().and_then(|f| f.frame) {
            Some(router_frame::Frame::PresenceAck(a)) => Some(a.epoch),
            _ => None,
        };
        links.apply("g1", g1.id, online(&["bob"], 1));
        assert_eq!(links.gateways_of("bob"), names(&["g1"]));
        assert_eq!(acks(), Some(1), "each applied change is acknowledged");
        links.apply("g1", g1.id, offline(&["alice"], 2));
        assert!(links.gateways_of("alice").is_empty());
        assert_eq!(acks(), Some(2));
        // Frames of a stale link change nothing and are not acknowledged.
        links.apply("g1", g1.id + 100, online(&["carol"], 3));
        assert!(links.gateways_of("carol").is_empty());
        assert_eq!(acks(), None);
        links.close("g1", g1.id, None);
        assert!(links.gateways().is_empty());
        assert!(links.gateways_of("bob").is_empty());
    }

    #[tokio::test]
    async fn outcomes_go_to_their_origin_gateway_only() {
        let links = GatewayLinks::new(LinkConfig::default());
        let mut g1 = links.open("g1", vec![]);
        let mut g2 = links.open("g2", vec![]);
        let outcome = |gateway: &str, request_id| OutcomeRecord {
            origin: Some(Origin {
                gateway_id: gateway.into(),
                request_id,
            }),
            ..Default::default()
        };
        links.complete(outcome("g2", 5)).await;
        links.complete(outcome("elsewhere", 6)).await;
        match g2.frames.try_recv().ok().and_then(|f| f.frame) {
            Some(router_frame::Frame::Complete(c)) => {
                assert_eq!(
                    c.outcome.and_then(|o| o.origin).map(|o| o.request_id),
                    Some(5)
                )
            }
            other => panic!("expected a completion, got {other:?}"),
        }
        assert!(g1.frames.try_recv().is_err() && g2.frames.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_gateway_that_stays_full_past_the_bound_is_dropped() {
        let links = GatewayLinks::new(LinkConfig {
            queue: 1,
            max_stall: Duration::from_millis(50),
            ..LinkConfig::default()
        });
        let mut g1 = links.open("g1", names(&["alice"]));
        links.deliver(&names(&["alice"]), message(1)).await;
        // The queue is full and nobody reads it.
        links.deliver(&names(&["alice"]), message(2)).await;
        assert!(links.gateways().is_empty());
        assert!(links.gateways_of("alice").is_empty());
        let status = g1.kill.try_recv().expect("kill status");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            matches!(
                g1.gone.try_recv(),
                Err(oneshot::error::TryRecvError::Closed)
            ),
            "the reader is told to stop"
        );
    }

    #[tokio::test]
    async fn a_new_link_of_the_same_gateway_replaces_the_old_one() {
        let links = GatewayLinks::new(LinkConfig::default());
        let mut old = links.open("g1", names(&["alice"]));
        let new = links.open("g1", names(&["bob"]));
        assert_eq!(
            old.kill.try_recv().map(|s| s.code()).ok(),
            Some(tonic::Code::Unavailable)
        );
        assert!(links.gateways_of("alice").is_empty());
        // The old stream's reader ending does not remove the new link.
        links.close("g1", old.id, None);
        assert_eq!(links.gateways_of("bob"), names(&["g1"]));
        links.close("g1", new.id, None);
        assert!(links.gateways().is_empty());
    }
}
