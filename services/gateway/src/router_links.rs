//! The gateway's side of `confab.internal.v1.RouterLink` (distributed mode).
//! The gateway keeps one `Attach` stream open to every configured router: it
//! says `hello` with the users that have sessions here, then announces users
//! as they get their first session or close their last one, and hands what
//! the router pushes to the hub. A router that is down or a stream that
//! breaks is retried with capped exponential backoff, with a fresh `hello`
//! every time.

use crate::hub::{Hub, Presence};
use confab_core::seams::{Delivery, DeliverySink};
use confab_history_client::{endpoint_with, AddressError};
use confab_layers::breaker::{BreakerConfig, CircuitBreakerLayer, GrpcFailures};
use confab_layers::service_token::ServiceToken;
use confab_proto::internal::v1::router_link_client::RouterLinkClient;
use confab_proto::internal::v1::{
    gateway_frame, outcome_record, router_frame, GatewayFrame, Hello, OutcomeRecord, RouterFrame,
    UsersOffline, UsersOnline,
};
use confab_runtime::shutdown::Signal;
use confab_runtime::transport::ClientTls;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use tonic::Status;
use tower::{Service, ServiceExt};

/// Presence frames queued towards one router before announcing waits.
const OUTBOUND_FRAMES: usize = 256;

/// Most presence changes folded into one pass.
const MAX_PRESENCE_BATCH: usize = 1024;

/// How the gateway reaches its routers.
#[derive(Debug, Clone)]
pub struct AttachConfig {
    /// Every router's address (`host:port`); the gateway attaches to each.
    pub routers: Vec<String>,
    /// Wait before the first reconnect; doubles after each failed attempt.
    pub backoff_min: Duration,
    /// Longest wait between two attempts before jitter, which may double it
    /// ([`confab_runtime::retry::backoff`]).
    pub backoff_max: Duration,
    /// Longest wait to connect and be accepted by a router.
    pub connect_timeout: Duration,
    /// The token routers require (`CONFAB_SERVICE_TOKEN`), sent when
    /// attaching; `None` sends none.
    pub service_token: Option<ServiceToken>,
    /// TLS to routers (`CONFAB_TLS_CA`, presenting `CONFAB_TLS_CERT` when
    /// set); `None`: plaintext.
    pub tls: Option<ClientTls>,
    /// The circuit breaker on attach calls to each router (`CONFAB_BREAKER_*`):
    /// a router that keeps refusing is not dialled again until its breaker
    /// lets a probe through, and its state is a metric
    /// (`confab_breaker_state{breaker="router <addr>"}`) and a log line.
    pub breaker: BreakerConfig,
}

impl AttachConfig {
    /// Default timings for `routers`.
    pub fn new(routers: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            routers: routers.into_iter().map(Into::into).collect(),
            backoff_min: Duration::from_millis(100),
            // With jitter, at most 5 s between attempts.
            backoff_max: Duration::from_millis(2500),
            connect_timeout: Duration::from_secs(2),
            service_token: None,
            tls: None,
            breaker: BreakerConfig::default(),
        }
    }
}

/// Keeps `hub` attached to every router in `config` until `shutdown` fires.
/// Fails at once only if an address is unusable.
pub async fn run(
    hub: Arc<Hub>,
    config: AttachConfig,
    shutdown: Signal,
) -> Result<(), AddressError> {
    let endpoints = config
        .routers
        .iter()
        .map(|addr| Ok((addr.clone(), endpoint_with(addr, config.tls.as_ref())?)))
        .collect::<Result<Vec<_>, AddressError>>()?;
    if endpoints.is_empty() {
        tracing::warn!("no router configured: nothing will be delivered to this gateway");
    }
    futures::future::join_all(endpoints.into_iter().map(|(addr, endpoint)| {
        keep_attached(
            hub.clone(),
            addr,
            endpoint.connect_timeout(config.connect_timeout),
            config.clone(),
            shutdown.clone(),
        )
    }))
    .await;
    Ok(())
}

/// An `Attach` call: connect, then open the stream.
type AttachRequest = (Endpoint, tonic::Request<ReceiverStream<GatewayFrame>>);

/// Attach calls to one router, through its circuit breaker.
type AttachCalls =
    tower::util::BoxService<AttachRequest, tonic::Response<tonic::Streaming<RouterFrame>>, Status>;

/// The breaker-guarded attach calls to the router at `addr`.
fn attach_calls(addr: &str, config: &BreakerConfig) -> AttachCalls {
    let breaker = CircuitBreakerLayer::new(format!("router {addr}"), config.clone(), GrpcFailures);
    tower::ServiceBuilder::new()
        .layer(breaker)
        .service(tower::service_fn(
            |(endpoint, request): AttachRequest| async move {
                // A connection failure is UNAVAILABLE with its cause (a
                // failure for the breaker); the router's refusal keeps its code.
                let channel = endpoint
                    .connect()
                    .await
                    .map_err(|e| Status::unavailable(describe(&e)))?;
                RouterLinkClient::new(channel).attach(request).await
            },
        ))
        .boxed()
}

/// Why one attach attempt ended.
enum Ended {
    /// The gateway is shutting down.
    Shutdown,
    /// No link was established.
    Failed(String),
    /// An established link broke or was ended by the router.
    Lost(String),
}

/// Attaches to one router again and again until shutdown.
async fn keep_attached(
    hub: Arc<Hub>,
    addr: String,
    endpoint: Endpoint,
    config: AttachConfig,
    shutdown: Signal,
) {
    let fresh = || confab_runtime::retry::backoff(config.backoff_min, config.backoff_max);
    let mut delays = fresh();
    let mut failures = 0u32;
    let mut calls = attach_calls(&addr, &config.breaker);
    loop {
        if shutdown.is_fired() {
            return;
        }
        match attach_once(
            &hub,
            &addr,
            &endpoint,
            &config,
            &mut calls,
            shutdown.clone(),
        )
        .await
        {
            Ended::Shutdown => {
                tracing::info!(router = %addr, "detached from router: shutting down");
                return;
            }
            Ended::Lost(reason) => {
                tracing::warn!(router = %addr, error = %reason, "router link lost; reconnecting");
                delays = fresh();
                failures = 0;
            }
            Ended::Failed(reason) => {
                failures += 1;
                // The first failure of a streak is worth a warning; the
                // retries after it are not.
                if failures == 1 {
                    tracing::warn!(router = %addr, error = %reason, "cannot attach to router; retrying");
                } else {
                    tracing::debug!(router = %addr, error = %reason, attempts = failures, "cannot attach to router; retrying");
                }
            }
        }
        let wait = delays.next().unwrap_or(config.backoff_max);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.clone().wait() => return,
        }
    }
}

/// One link's life: connect, hello, then presence up and deliveries down
/// until the link breaks or the gateway shuts down.
async fn attach_once(
    hub: &Arc<Hub>,
    addr: &str,
    endpoint: &Endpoint,
    config: &AttachConfig,
    calls: &mut AttachCalls,
    shutdown: Signal,
) -> Ended {
    let stop = shutdown.wait();
    tokio::pin!(stop);
    let (epoch, snapshot, mut presence) = hub.presence();
    let mut typing = hub.typing_out();
    let users = snapshot.len();
    let (out, out_rx) = mpsc::channel(OUTBOUND_FRAMES);
    if out.try_send(hello(hub, epoch, snapshot)).is_err() {
        return Ended::Failed("cannot queue hello".into());
    }
    let connect = async {
        let mut request = tonic::Request::new(ReceiverStream::new(out_rx));
        if let Some(token) = &config.service_token {
            token.attach(&mut request);
        }
        calls
            .ready()
            .await
            .map_err(|s| s.message().to_string())?
            .call((endpoint.clone(), request))
            .await
            .map_err(|s| s.message().to_string())
    };
    let attached = tokio::select! {
        _ = &mut stop => return Ended::Shutdown,
        r = tokio::time::timeout(config.connect_timeout, connect) => r,
    };
    let mut inbound = match attached {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(e)) => return Ended::Failed(e),
        Err(_) => {
            return Ended::Failed(format!(
                "not attached within {} ms",
                config.connect_timeout.as_millis()
            ))
        }
    };
    tracing::info!(router = %addr, gateway_id = hub.gateway_id(), users, "attached to router");
    hub.router_attached(addr);
    let _detach = Detach { hub, addr };
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => return Ended::Shutdown,
            frame = inbound.message() => match frame {
                Ok(Some(frame)) => apply(hub, addr, frame).await,
                Ok(None) => return Ended::Lost("the router ended the link".into()),
                Err(status) => return Ended::Lost(status.message().to_string()),
            },
            relay = typing.recv() => match relay {
                Ok(relay) => {
                    let ours = relay.typing.as_ref().is_some_and(|t| {
                        hub.typing_router(&t.conversation_id).as_deref() == Some(addr)
                    });
                    // Best effort: a full queue drops the indicator.
                    if ours {
                        let frame = GatewayFrame {
                            frame: Some(gateway_frame::Frame::Typing((*relay).clone())),
                        };
                        let _ = out.try_send(frame);
                    }
                }
                // Indicators missed while behind are not worth a resync.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return Ended::Shutdown,
            },
            change = presence.recv() => {
                let frames = match change {
                    Ok(first) => presence_frames(first, &mut presence),
                    Err(broadcast::error::RecvError::Lagged(_)) => None,
                    // The hub is gone: nothing left to announce or deliver to.
                    Err(broadcast::error::RecvError::Closed) => return Ended::Shutdown,
                };
                let frames = match frames {
                    Some(frames) => frames,
                    None => {
                        // Fell behind the hub's changes: start over from a
                        // snapshot, which the router takes as a replacement.
                        tracing::debug!(router = %addr, "presence changes overflowed; resending hello");
                        let (epoch, snapshot, rx) = hub.presence();
                        presence = rx;
                        vec![hello(hub, epoch, snapshot)]
                    }
                };
                for frame in frames {
                    if out.send(frame).await.is_err() {
                        return Ended::Lost("the router stopped reading".into());
                    }
                }
            }
        }
    }
}

/// An error with its causes ("transport error" alone says little).
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Stops waiting for a router's acknowledgements when its link ends.
struct Detach<'a> {
    /// The hub that counts them.
    hub: &'a Hub,
    /// The router.
    addr: &'a str,
}

impl Drop for Detach<'_> {
    fn drop(&mut self) {
        self.hub.router_detached(self.addr);
    }
}

fn hello(hub: &Hub, epoch: u64, user_ids: Vec<String>) -> GatewayFrame {
    GatewayFrame {
        frame: Some(gateway_frame::Frame::Hello(Hello {
            gateway_id: hub.gateway_id().to_string(),
            user_ids,
            epoch,
            // `apply` completes requests from `Deliver.completes`.
            completes_in_deliveries: true,
        })),
    }
}

/// `first` and whatever else is already queued, as frames in the order of
/// the changes (consecutive changes of one kind share a frame); `None` when
/// the receiver fell behind and must resync.
fn presence_frames(
    first: (u64, Presence),
    rx: &mut broadcast::Receiver<(u64, Presence)>,
) -> Option<Vec<GatewayFrame>> {
    let mut changes = vec![first];
    while changes.len() < MAX_PRESENCE_BATCH {
        match rx.try_recv() {
            Ok(change) => changes.push(change),
            Err(broadcast::error::TryRecvError::Lagged(_)) => return None,
            Err(_) => break,
        }
    }
    let mut frames: Vec<GatewayFrame> = Vec::new();
    for (epoch, change) in changes {
        let (online, user) = match change {
            Presence::Online(u) => (true, u),
            Presence::Offline(u) => (false, u),
        };
        // Each frame carries the epoch of the last change it holds.
        let extended = match frames.last_mut().and_then(|f| f.frame.as_mut()) {
            Some(gateway_frame::Frame::UsersOnline(f)) if online => {
                f.user_ids.push(user.clone());
                f.epoch = epoch;
                true
            }
            Some(gateway_frame::Frame::UsersOffline(f)) if !online => {
                f.user_ids.push(user.clone());
                f.epoch = epoch;
                true
            }
            _ => false,
        };
        if !extended {
            let user_ids = vec![user];
            frames.push(GatewayFrame {
                frame: Some(if online {
                    gateway_frame::Frame::UsersOnline(UsersOnline { user_ids, epoch })
                } else {
                    gateway_frame::Frame::UsersOffline(UsersOffline { user_ids, epoch })
                }),
            });
        }
    }
    Some(frames)
}

/// Hands a router's frame to the hub.
async fn apply(hub: &Hub, router: &str, frame: RouterFrame) {
    match frame.frame {
        Some(router_frame::Frame::PresenceAck(ack)) => hub.router_acked(router, ack.epoch),
        Some(router_frame::Frame::Deliver(d)) => match d.message {
            Some(message) => {
                // The outcome of this gateway's request that wrote it: what
                // a waiter reads of the `Complete` frame it stands for.
                let completion = d.completes.map(|origin| OutcomeRecord {
                    origin: Some(origin),
                    conversation_id: message.conversation_id.clone(),
                    result: Some(outcome_record::Result::Message(message.clone())),
                    ..OutcomeRecord::default()
                });
                let delivery = Delivery {
                    message,
                    traceparent: d.traceparent,
                    accepted_at_ms: d.accepted_at_ms,
                };
                hub.deliver(&d.recipient_ids, Arc::new(delivery)).await;
                if let Some(outcome) = completion {
                    hub.complete(outcome).await;
                }
            }
            None => tracing::debug!("router sent a delivery without a message; ignoring it"),
        },
        Some(router_frame::Frame::Typing(t)) => match t.typing {
            Some(typing) => hub.deliver_typing(&t.recipient_ids, typing),
            None => tracing::debug!("router sent a typing frame without an indicator; ignoring it"),
        },
        Some(router_frame::Frame::Receipt(r)) => match r.receipt {
            Some(receipt) => hub.receipt(&r.recipient_ids, receipt).await,
            None => tracing::debug!("router sent a receipt frame without a receipt; ignoring it"),
        },
        Some(router_frame::Frame::Presence(p)) => match p.presence {
            Some(presence) => {
                confab_core::presence::PushPresence::push_presence(hub, &p.recipient_ids, presence)
                    .await
            }
            None => tracing::debug!("router sent a presence frame without a presence; ignoring it"),
        },
        Some(router_frame::Frame::Complete(c)) => match c.outcome {
            Some(outcome) => hub.complete(outcome).await,
            None => tracing::debug!("router sent a completion without an outcome; ignoring it"),
        },
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_changes_of_one_kind_share_a_frame_and_keep_their_order() {
        let (tx, mut rx) = broadcast::channel(16);
        for (epoch, change) in [
            (2, Presence::Online("bob".into())),
            (3, Presence::Offline("carol".into())),
            (4, Presence::Offline("dave".into())),
            (5, Presence::Online("carol".into())),
        ] {
            tx.send((epoch, change)).expect("subscribed");
        }
        let frames =
            presence_frames((1, Presence::Online("alice".into())), &mut rx).expect("no lag");
        let kinds: Vec<(bool, Vec<String>, u64)> = frames
            .into_iter()
            .filter_map(|f| match f.frame {
                Some(gateway_frame::Frame::UsersOnline(o)) => Some((true, o.user_ids, o.epoch)),
                Some(gateway_frame::Frame::UsersOffline(o)) => Some((false, o.user_ids, o.epoch)),
                _ => None,
            })
            .collect();
        let v = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            kinds,
            vec![
                (true, v(&["alice", "bob"]), 2),
                (false, v(&["carol", "dave"]), 4),
                (true, v(&["carol"]), 5),
            ],
            "each frame carries the epoch of its last change"
        );
    }

    #[tokio::test]
    async fn a_delivery_that_completes_a_request_answers_it_with_its_message() {
        let hub = Hub::new("g1");
        let mut pending = hub.pending();
        let message = confab_proto::v1::Message {
            conversation_id: "c".into(),
            seq: 5,
            body: "hi".into(),
            ..Default::default()
        };
        let frame = RouterFrame {
            frame: Some(router_frame::Frame::Deliver(
                confab_proto::internal::v1::Deliver {
                    recipient_ids: vec![],
                    message: Some(message.clone()),
                    completes: Some(confab_proto::internal::v1::Origin {
                        gateway_id: "g1".into(),
                        request_id: pending.request_id,
                    }),
                    ..Default::default()
                },
            )),
        };
        apply(&hub, "r1", frame).await;
        let outcome = (&mut pending.rx).await.expect("completed");
        assert_eq!(
            outcome.result,
            Some(outcome_record::Result::Message(message))
        );
        assert_eq!(outcome.conversation_id, "c");
    }

    #[test]
    fn a_receiver_that_fell_behind_must_resync() {
        let (tx, mut rx) = broadcast::channel(2);
        for i in 0..5 {
            tx.send((i, Presence::Online(format!("u{i}"))))
                .expect("subscribed");
        }
        assert!(presence_frames((9, Presence::Online("x".into())), &mut rx).is_none());
    }
}
