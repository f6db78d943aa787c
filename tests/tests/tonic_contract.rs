//! What Confab relies on in tonic where tonic gives no typed signal, pinned
//! so that an upgrade that changes it fails here instead of silently
//! changing a status code:
//! - a message over `max_decoding_message_size` is refused with
//!   OUT_OF_RANGE, and only that (`confab_layers::decoding`);
//! - a status the client made up from a transport failure carries a
//!   `source()`, one parsed from the server's answer does not
//!   (`confab_layers::breaker::GrpcFailures`, the history client's
//!   `error_for`).

use confab_layers::breaker::{FailureEvaluator, GrpcFailures};
use confab_layers::decoding::{is_too_large, message_too_large};
use std::error::Error as _;
use tokio::net::TcpListener;
use tonic::transport::{Endpoint, Server};
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A health service on a free port, refusing messages over `limit` bytes.
async fn health_server(limit: usize) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (_reporter, service) = tonic_health::server::health_reporter();
    tokio::spawn(
        Server::builder()
            .add_service(service.max_decoding_message_size(limit))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

fn client(addr: std::net::SocketAddr) -> HealthClient<tonic::transport::Channel> {
    HealthClient::new(
        Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect_lazy(),
    )
}

#[tokio::test]
async fn a_message_over_the_decoding_limit_is_out_of_range_and_names_both_sizes() {
    let addr = health_server(64).await;
    let status = client(addr)
        .check(HealthCheckRequest {
            service: "x".repeat(200),
        })
        .await
        .expect_err("over the limit");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(is_too_large(&status));
    // The sizes Confab quotes back are read from this wording.
    let ours = message_too_large(status.message(), 64);
    assert_eq!(ours.code(), Code::ResourceExhausted);
    assert!(
        ours.message()
            .contains("at most 64 are accepted (CONFAB_MAX_MESSAGE_BYTES=64)"),
        "tonic's wording changed: {:?} became {:?}",
        status.message(),
        ours.message()
    );
    // A request under the limit is not refused that way.
    let status = client(addr)
        .check(HealthCheckRequest {
            service: "unknown".into(),
        })
        .await
        .expect_err("no such service");
    assert!(!is_too_large(&status), "{status:?}");
}

#[tokio::test]
async fn transport_failures_carry_a_source_and_server_answers_do_not() {
    // The server's own answer: NOT_FOUND for a service it does not know.
    let addr = health_server(4 * 1024 * 1024).await;
    let answered = client(addr)
        .check(HealthCheckRequest {
            service: "unknown".into(),
        })
        .await
        .expect_err("no such service");
    assert_eq!(answered.code(), Code::NotFound);
    assert!(answered.source().is_none(), "{answered:?}");
    assert!(!GrpcFailures.is_failure(&answered));

    // Nobody listens on this port any more: the client makes the status up.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("addr")
    };
    let failed = client(closed)
        .check(HealthCheckRequest::default())
        .await
        .expect_err("nothing listens");
    assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    assert!(failed.source().is_some(), "{failed:?}");
    assert!(GrpcFailures.is_failure(&failed));
}
