//! SIGTERM on the real `confab-gateway` binary: streams end with UNAVAILABLE
//! telling the client to reconnect, calls in flight get their answers, the
//! process exits 0 within its grace period, and nothing is lost or repeated
//! when the client resumes on another gateway. A gateway that cannot drain
//! exits when its grace period (`CONFAB_SHUTDOWN_GRACE_MS`) is over.

use confab_proto::v1::{client_frame, server_frame, Resume};
use confab_tests::procs::ServiceProc;
use confab_tests::stack::{ProcStack, Role};
use confab_tests::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tonic::Code;

/// History, a router and two gateways on a real broker and PostgreSQL,
/// the gateways with `gateway_env` too.
async fn stack(gateway_env: &[(&str, &str)]) -> ProcStack {
    let mut builder = ProcStack::builder("graceful")
        .gateways(2)
        .partitions(2)
        .log("info");
    for (k, v) in gateway_env {
        builder = builder.env_for(Role::Gateway, k, *v);
    }
    builder.start_fresh().await
}

/// Waits until a record whose payload contains `needle` is in the ingress
/// topic (read from the start of every partition).
async fn wait_for_ingress(bootstrap: &str, prefix: &str, needle: &'static [u8]) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
    let (bootstrap, topic) = (bootstrap.to_string(), format!("{prefix}.ingress"));
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "graceful-test-reader")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..2 {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)
                .expect("partition");
        }
        consumer.assign(&tpl).expect("assign");
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                if m.payload()
                    .is_some_and(|p| p.windows(needle.len()).any(|w| w == needle))
                {
                    return;
                }
            }
        }
        panic!("no ingress record with {needle:?} within {DEADLINE:?}");
    })
    .await
    .expect("reader");
}

/// What a client retries (docs/operations.md, "What clients see"): the
/// server's UNAVAILABLE, or the connection closing under the call (tonic:
/// CANCELLED or UNKNOWN "connection closed", INTERNAL "h2 protocol error"
/// for a call a GOAWAY refused).
fn retryable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled
    ) || (status.code() == Code::Internal && status.message().starts_with("h2 protocol error"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_streams_with_reconnect_and_loses_nothing() {
    let mut stack = stack(&[]).await;
    let alice = stack.user(0, "alice").await;
    let conv = alice.group_when_ready("graceful", &["bob"]).await.id;
    // A stream on the gateway that will stop, resumed from the start.
    let mut stream = alice
        .session(client_frame::Frame::Resume(Resume {
            last_seq: HashMap::from([(conv.clone(), 0)]),
        }))
        .await
        .expect("connect");
    // A writer on the same gateway, sending until the gateway goes away.
    let writer = {
        let (alice, conv) = (alice.clone(), conv.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0.. {
                match alice.send(&conv, &format!("k{i}"), "hello").await {
                    Ok(m) => acked.push(m.seq),
                    Err(e) => return (acked, e),
                }
            }
            unreachable!()
        })
    };
    // Received on the stream: seqs in order until the stream ends.
    let mut received = Vec::new();
    while received.len() < 20 {
        match stream.next_frame().await.expect("a frame") {
            server_frame::Frame::Message(m) => received.push(m.seq),
            server_frame::Frame::CaughtUp(_) | server_frame::Frame::Ack(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let stop = tokio::spawn({
        let mut g = std::mem::replace(
            &mut stack.gateways[0],
            ServiceProc::new("confab-gateway", "replaced", Vec::new(), "/dev/null".into()),
        );
        async move { (g.terminate(Duration::from_secs(15)).await, g) }
    });
    let end = loop {
        match stream.next_or_status().await {
            Ok(server_frame::Frame::Message(m)) => received.push(m.seq),
            Ok(_) => {}
            Err(status) => break status,
        }
    };
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    assert!(
        end.message().contains("shutting down") && end.message().contains("resume"),
        "the status tells the client what to do: {end:?}"
    );
    let (stopped, old) = stop.await.expect("stop");
    assert!(
        stopped.status.is_some_and(|s| s.success()),
        "exit 0 within the grace period: {stopped:?}; log:\n{}",
        old.tail(20)
    );
    let (acked, error) = writer.await.expect("writer");
    assert!(
        retryable(&error),
        "calls during shutdown fail as retryable: {error:?}"
    );
    assert!(!acked.is_empty());
    // Resume on the other gateway from the last seq seen: the rest, once.
    let last = *received.last().expect("received");
    assert_eq!(
        received,
        (1..=last).collect::<Vec<_>>(),
        "in order, no gap, no repeat"
    );
    let alice = stack.user(1, "alice").await;
    let mut resumed = alice
        .session(client_frame::Frame::Resume(Resume {
            last_seq: HashMap::from([(conv.clone(), last)]),
        }))
        .await
        .expect("connect to the other gateway");
    let head = alice
        .all_seqs(&conv)
        .await
        .last()
        .copied()
        .expect("history");
    let mut rest = Vec::new();
    loop {
        match resumed.next_frame().await.expect("frame") {
            server_frame::Frame::Message(m) => rest.push(m.seq),
            server_frame::Frame::CaughtUp(c) => {
                assert!(c.error.is_none(), "{c:?}");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(rest, (last + 1..=head).collect::<Vec<_>>());
    for seq in &acked {
        assert!(*seq <= head, "acknowledged seq {seq} is stored");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_cannot_drain_exits_when_its_grace_period_is_over() {
    let mut stack = stack(&[
        ("CONFAB_SHUTDOWN_GRACE_MS", "500"),
        ("CONFAB_SEND_TIMEOUT_MS", "60000"),
    ])
    .await;
    let alice = stack.user(0, "alice").await;
    let conv = alice.group_when_ready("graceful", &["bob"]).await.id;
    alice.send(&conv, "first", "hello").await.expect("send");
    // Without history no outcome comes back: this call stays in flight.
    stack.histories[0].kill9();
    let pending = tokio::spawn(async move { alice.send(&conv, "stuck", "hello").await });
    // Once it is in the ingress topic, the gateway waits for its outcome.
    wait_for_ingress(&stack.bootstrap, &stack.kafka_prefix, b"stuck").await;
    let stopped = stack.gateways[0].terminate(Duration::from_secs(20)).await;
    let status = stopped.status.expect("it exited by itself");
    assert_eq!(
        status.code(),
        Some(1),
        "exit 1 when work was left in flight"
    );
    assert!(
        stopped.took < Duration::from_millis(3000),
        "within the 500 ms grace period (and start-up slack), not the 60 s send timeout: {stopped:?}"
    );
    assert!(
        stack.gateways[0].tail(50).contains("grace period over"),
        "{}",
        stack.gateways[0].tail(50)
    );
    let err = pending.await.expect("task").expect_err("no answer");
    assert!(retryable(&err), "{err:?}");
}
