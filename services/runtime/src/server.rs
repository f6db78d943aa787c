//! One way to serve a Confab gRPC service, used by every service and by
//! tests: [`Server`]. Next to the service it serves the standard health
//! service and server reflection (v1, and v1alpha which grpcurl 1.8 speaks),
//! with HTTP/2 keepalive to find peers that vanished, optional TLS and the
//! connection limits of a [`Transport`], a graceful stop that marks the
//! service not serving before draining, per-call metrics, and readiness.
//! Internal services (router, history) are served with a [`ServiceToken`]
//! that every caller must present.

use crate::readiness::Readiness;
use crate::shutdown::Signal;
use crate::transport::Transport;
use confab_layers::decoding::RequestDecoding;
use confab_layers::grpc_metrics::GrpcMetrics;
use confab_layers::idle::IdleIncoming;
use confab_layers::service_token::{RequireToken, ServiceToken};
use confab_layers::Around as _;
use std::convert::Infallible;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

/// A gRPC server being set up: what it serves, then who may call and over
/// which transport; [`Server::serve`] runs it.
pub struct Server {
    /// The serving process's name in logs ("gateway", "router", ...).
    name: &'static str,
    /// The served service's full name, reported by the health service.
    service_name: &'static str,
    /// The served service's routes, behind the token check it is given.
    routes: Box<dyn FnOnce(RequireToken) -> Routes + Send>,
    /// Describes the service for reflection and metrics.
    descriptor_set: &'static [u8],
    /// Required of every caller but health checks, when set.
    token: Option<ServiceToken>,
    /// TLS and connection limits.
    transport: Transport,
    /// Set while serving, cleared from the start of shutdown.
    readiness: Readiness,
}

impl Server {
    /// `service` (a generated tonic server, possibly wrapped in layers),
    /// described by `descriptor_set`, served by the process called `name`:
    /// anyone may call, over [`Transport::internal`], keeping a readiness
    /// of its own (see [`Server::readiness`]).
    pub fn new<S>(name: &'static str, service: S, descriptor_set: &'static [u8]) -> Self
    where
        S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        Self {
            name,
            service_name: S::NAME,
            routes: Box::new(move |check| Routes::new(InterceptedService::new(service, check))),
            descriptor_set,
            token: None,
            transport: Transport::internal(),
            readiness: Readiness::new(),
        }
    }

    /// Every call except health checks (reflection included) must present
    /// `token` ([`RequireToken`]); `None` requires nothing.
    pub fn service_token(mut self, token: Option<ServiceToken>) -> Self {
        self.token = token;
        self
    }

    /// Serves over `transport`: TLS (and client certificates) when
    /// configured, at most its `max_concurrent_streams` calls per
    /// connection, connections without a call closed after its
    /// `idle_timeout`, requests over its `max_message_bytes` refused.
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Keeps `readiness` (set while serving, cleared from the start of
    /// shutdown): the one the service's checks and its `/readyz` share.
    pub fn readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    /// Serves on `listener` until `shutdown`, then drains the calls in
    /// flight.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: Signal,
    ) -> Result<(), tonic::transport::Error> {
        let Self {
            name: what,
            service_name,
            routes,
            descriptor_set,
            token: auth,
            transport,
            readiness,
        } = self;
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status(service_name, ServingStatus::Serving)
            .await;
        let reflection = |b: tonic_reflection::server::Builder<'static>| {
            b.register_encoded_file_descriptor_set(descriptor_set)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let (v1, v1alpha) = match (
            reflection(tonic_reflection::server::Builder::configure()).build_v1(),
            reflection(tonic_reflection::server::Builder::configure()).build_v1alpha(),
        ) {
            (Ok(a), Ok(b)) => (a, b),
            _ => unreachable!("the embedded descriptor sets are valid"),
        };
        let layer = GrpcMetrics::new(&[
            descriptor_set,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ]);
        let addr = listener.local_addr().ok();
        tracing::info!(
            addr = ?addr,
            service = service_name,
            tls = transport.tls.is_some(),
            client_certs = transport.tls.as_ref().is_some_and(|t| t.requires_client_cert()),
            "{what} serving grpc"
        );
        let stop = {
            let health = health.clone();
            let readiness = readiness.clone();
            async move {
                shutdown.wait().await;
                readiness.set(false);
                // Load balancers and peers see "not serving" before connections drain.
                health
                    .set_service_status(service_name, ServingStatus::NotServing)
                    .await;
                tracing::info!("{what} shutting down");
            }
        };
        // Health stays open to orchestrators; the service and reflection (which
        // lists the internal API) require the token when there is one.
        let check = RequireToken::new(auth);
        let routes = routes(check.clone())
            .add_service(crate::compressed!(health_service))
            .add_service(InterceptedService::new(
                crate::compressed!(v1),
                check.clone(),
            ))
            .add_service(InterceptedService::new(crate::compressed!(v1alpha), check));
        let builder = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .max_concurrent_streams(transport.max_concurrent_streams);
        let builder = match &transport.tls {
            Some(tls) => builder.tls_config(tls.config())?,
            None => builder,
        };
        let incoming = IdleIncoming::new(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            transport.idle_timeout,
        );
        // The listener is bound: connections from now on are served.
        readiness.set(true);
        // grpc.health.v1 follows readiness: NOT_SERVING while a dependency
        // check fails (Kafka, the database) and from the start of shutdown.
        let follow = {
            let health = health.clone();
            let mut verdict = readiness.subscribe();
            tokio::spawn(async move {
                loop {
                    let status = if *verdict.borrow_and_update() {
                        ServingStatus::Serving
                    } else {
                        ServingStatus::NotServing
                    };
                    health.set_service_status(service_name, status).await;
                    if verdict.changed().await.is_err() {
                        break;
                    }
                }
            })
        };
        let served = builder
            // Calls are counted on their connection for its idle timeout from
            // the outermost layer; metrics next, so refused calls are counted
            // as UNAUTHENTICATED and requests over the message limit as
            // RESOURCE_EXHAUSTED (tonic says OUT_OF_RANGE).
            .layer(
                tower::ServiceBuilder::new()
                    .layer(incoming.layer())
                    .layer(layer.layer())
                    .layer(RequestDecoding::new(transport.max_message_bytes).layer()),
            )
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, stop)
            .await;
        follow.abort();
        readiness.set(false);
        served
    }
}
