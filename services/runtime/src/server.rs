//! One way to serve a Confab gRPC service: next to it the standard health
//! service and server reflection (v1, and v1alpha which grpcurl 1.8 speaks),
//! HTTP/2 keepalive to find peers that vanished, optional TLS and the
//! connection limits of [`Transport`], a graceful stop that
//! marks the service not serving before draining, and per-call metrics
//! ([`crate::metrics`]) with the process's readiness. Internal services
//! (router, history) are served with a [`ServiceToken`] that every caller
//! must present ([`serve_with_auth`]).

use crate::shutdown::Signal;
use crate::transport::Transport;
use confab_layers::idle::IdleIncoming;
use confab_layers::message_limit::MessageLimitLayer;
use confab_layers::service_token::{ServiceAuthLayer, ServiceToken};
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

/// Serves `routes` (the service named `service_name`, e.g.
/// `<ChatServer<_> as NamedService>::NAME`) on `listener` until `shutdown`;
/// reflection describes `descriptor_set`. Anyone may call: this is for the
/// gateway (which authenticates its users itself) and in-process tests.
pub async fn serve(
    what: &'static str,
    service_name: &'static str,
    routes: Routes,
    descriptor_set: &'static [u8],
    listener: TcpListener,
    shutdown: Signal,
) -> Result<(), tonic::transport::Error> {
    serve_with_auth(
        what,
        service_name,
        routes,
        descriptor_set,
        listener,
        shutdown,
        None,
    )
    .await
}

/// [`serve`], and with `auth` every call except health checks (reflection
/// included) must present that token ([`ServiceAuthLayer`]). Plaintext, with
/// the connection limits of [`Transport::internal`].
pub async fn serve_with_auth(
    what: &'static str,
    service_name: &'static str,
    routes: Routes,
    descriptor_set: &'static [u8],
    listener: TcpListener,
    shutdown: Signal,
    auth: Option<ServiceToken>,
) -> Result<(), tonic::transport::Error> {
    serve_with_transport(
        what,
        service_name,
        routes,
        descriptor_set,
        listener,
        shutdown,
        auth,
        &Transport::internal(),
    )
    .await
}

/// [`serve_with_auth`] over `transport`: TLS (and client certificates) when
/// configured, at most `max_concurrent_streams` calls per connection, and
/// connections without a call closed after `idle_timeout`
/// ([`crate::transport`]). `max_message_bytes` is the caller's to apply to
/// its service (tonic sets it per service).
#[allow(clippy::too_many_arguments)]
pub async fn serve_with_transport(
    what: &'static str,
    service_name: &'static str,
    routes: Routes,
    descriptor_set: &'static [u8],
    listener: TcpListener,
    shutdown: Signal,
    auth: Option<ServiceToken>,
    transport: &Transport,
) -> Result<(), tonic::transport::Error> {
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
    let layer = confab_layers::grpc_metrics::GrpcMetricsLayer::new(&[
        descriptor_set,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]);
    let readiness = crate::readiness::process_readiness();
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
    let routes = routes
        .add_service(health_service)
        .add_service(v1)
        .add_service(v1alpha);
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
                .layer(layer)
                .layer(MessageLimitLayer::new(transport.max_message_bytes))
                .layer(ServiceAuthLayer::new(auth)),
        )
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, stop)
        .await;
    follow.abort();
    readiness.set(false);
    served
}
