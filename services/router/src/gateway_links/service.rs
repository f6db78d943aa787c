//! The `RouterLink` gRPC service: accepts a gateway's `Attach` stream
//! (its `hello` first), applies its presence frames until it ends, and
//! streams the gateway's frames back; and the server that serves it.

use super::links::GatewayLinks;
use confab_proto::internal::v1::router_link_server::{RouterLink, RouterLinkServer};
use confab_proto::internal::v1::{gateway_frame, GatewayFrame, RouterFrame};
use confab_runtime::server::Server;
use confab_runtime::shutdown::Signal;
use futures::Stream;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};

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
        let opened = self
            .links
            .open(&gateway_id, hello.user_ids, hello.completes_in_deliveries);
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
                Ok(Some(GatewayFrame {
                    frame: Some(gateway_frame::Frame::Typing(relay)),
                })) => links.relay_typing(relay).await,
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
        confab_runtime::compressed!(RouterLinkServer::new(RouterLinkService::new(
            links, shutdown
        ))),
        confab_proto::FILE_DESCRIPTOR_SET,
    )
}
