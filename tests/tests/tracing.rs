//! One message, one trace, across the real binaries on a real broker and
//! PostgreSQL: a client's W3C `traceparent` (gRPC metadata) is continued by
//! the gateway, carried through the ingress record and its Kafka header to
//! history, through the outcome to the router, and in the delivery frame to
//! the gateway that writes the message to the recipient's stream. Every hop
//! logs its per-message event (`CONFAB_LOG=info,confab::hop=debug`) inside
//! its hop span, whose fields carry the trace id, its span id and its
//! parent's: history logs JSON, the router and the gateway text, and both
//! formats are followed here. A message sent without a `traceparent` gets a
//! new trace that is followed the same way, and so is a `send` frame of a
//! `Connect` stream opened with one (in the stream's trace) or without one
//! (in a trace of its own). The same spans, with the same ids,
//! reach an OTLP/gRPC collector run in this test (`CONFAB_OTLP_ENDPOINT`),
//! each under its service's `service.name`. With the log at INFO (no hop
//! events logged) every hop is still exported: the hops that skip their
//! span when nothing would see it make it when spans are exported.

use confab_proto::v1::SendMessageRequest;
use confab_proto::v1::{client_frame, ClientFrame, Ping};
use confab_runtime::trace::TraceParent;
use confab_tests::stack::{ProcStack, Role};
use confab_tests::{Session, User, DEADLINE};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::{Request, Response, Status};

/// A hop span as a log line shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hop {
    name: String,
    trace_id: String,
    span_id: String,
    /// `None` for the first span of a trace.
    parent: Option<String>,
    /// Its other fields.
    fields: HashMap<String, String>,
}

/// A per-message hop event (target `confab::hop`) of a log.
#[derive(Debug, Clone)]
struct Event {
    message: String,
    fields: HashMap<String, String>,
    /// The spans around it, outermost first.
    spans: Vec<Hop>,
}

impl Event {
    fn innermost(&self) -> Option<&Hop> {
        self.spans.last()
    }

    fn trace_id(&self) -> Option<&str> {
        self.innermost().map(|h| h.trace_id.as_str())
    }

    fn field(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }
}

fn hop(name: &str, mut fields: HashMap<String, String>) -> Option<Hop> {
    let trace_id = fields.remove("trace_id")?;
    let span_id = fields.remove("span_id")?;
    let parent = fields.remove("parent_span_id");
    Some(Hop {
        name: name.to_string(),
        trace_id,
        span_id,
        parent,
        fields,
    })
}

/// `key=value` pairs separated by spaces (values without spaces), quotes
/// around a value removed.
fn pairs(text: &str) -> HashMap<String, String> {
    text.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

/// A text line: `<time> DEBUG a{k=v ...}:b{k=v ...}: confab::hop: <message> k=v ...`.
fn parse_text(line: &str) -> Option<Event> {
    let (head, tail) = line.split_once(" confab::hop: ")?;
    let mut spans = Vec::new();
    let mut rest = head;
    while let Some(open) = rest.find('{') {
        let name_start = rest[..open].rfind([' ', ':']).map_or(0, |i| i + 1);
        let name = &rest[name_start..open];
        let close = open + rest[open..].find('}')?;
        if let Some(h) = hop(name, pairs(&rest[open + 1..close])) {
            spans.push(h);
        }
        rest = &rest[close + 1..];
    }
    let message: Vec<&str> = tail
        .split_whitespace()
        .take_while(|w| !w.contains('='))
        .collect();
    Some(Event {
        message: message.join(" "),
        fields: pairs(tail),
        spans,
    })
}

/// A JSON line: `{"target":"confab::hop","fields":{"message":..},"spans":[..]}`.
fn parse_json(line: &str) -> Option<Event> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v.get("target")?.as_str()? != "confab::hop" {
        return None;
    }
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let object = |v: &serde_json::Value| -> HashMap<String, String> {
        v.as_object()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), text(v))).collect())
            .unwrap_or_default()
    };
    let mut fields = object(v.get("fields")?);
    let message = fields.remove("message")?;
    let spans = v
        .get("spans")
        .and_then(|s| s.as_array())
        .map(|spans| {
            spans
                .iter()
                .filter_map(|s| {
                    let mut f = object(s);
                    let name = f.remove("name")?;
                    hop(&name, f)
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Event {
        message,
        fields,
        spans,
    })
}

/// Every hop event in the log at `path`.
fn events(path: &Path, json: bool) -> Vec<Event> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| if json { parse_json(l) } else { parse_text(l) })
        .collect()
}

/// A span as the collector received it.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
}

/// An OTLP/gRPC trace collector keeping every span it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Exported>>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut got = Vec::new();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(any_value::Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                got.push(Exported {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                });
            }
        }
        self.spans.lock().expect("lock").extend(got);
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    /// Serves on a free port of 127.0.0.1; its address.
    async fn serve(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind collector");
        let addr = listener.local_addr().expect("collector address");
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(self.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        tokio::spawn(server);
        addr
    }

    fn spans_of(&self, trace_id: &str) -> Vec<Exported> {
        self.spans
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

/// History logs JSON, the router and the gateway text.
fn logs_json(role: Role) -> bool {
    role == Role::History
}

struct Stack {
    procs: ProcStack,
    collector: Collector,
}

impl Stack {
    async fn start() -> Stack {
        Self::start_logging("info,confab::hop=debug").await
    }

    /// The stack with `CONFAB_LOG=log`, exporting spans to its collector.
    async fn start_logging(log: &str) -> Stack {
        let collector = Collector::default();
        let otlp = collector.serve().await;
        let mut builder = ProcStack::builder("tracing")
            .partitions(2)
            .log(log)
            .env("CONFAB_OTLP_ENDPOINT", format!("http://{otlp}"))
            // Export finished spans every 100 ms (default 5 s).
            .env("OTEL_BSP_SCHEDULE_DELAY", "100");
        for role in Role::ALL {
            let format = if logs_json(role) { "json" } else { "text" };
            builder = builder.env_for(role, "CONFAB_LOG_FORMAT", format);
        }
        Stack {
            procs: builder.start_fresh().await,
            collector,
        }
    }

    fn gateway_addr(&self) -> SocketAddr {
        self.procs.gateway_addr(0)
    }

    /// The end of every service's log, for failure messages.
    fn tails(&self) -> String {
        self.procs.tails(60)
    }

    fn events(&self, role: Role) -> Vec<Event> {
        events(&self.procs.first(role).log, logs_json(role))
    }

    /// Polls `role`'s log until an event matches; fails with the log's tail
    /// after [`DEADLINE`].
    async fn wait_event(&self, role: Role, what: &str, matches: impl Fn(&Event) -> bool) -> Event {
        let found = confab_tests::poll(what, DEADLINE, POLL, || {
            let found = self.events(role).into_iter().find(|e| matches(e));
            async move { Ok(found) }
        })
        .await;
        found.unwrap_or_else(|e| panic!("{}: {e}; logs:\n{}", role.name(), self.tails()))
    }

    /// The gateway's `completed` event of the send (`what`) that got `seq`.
    async fn completed(&self, seq: u64, what: &str) -> Event {
        let seq = seq.to_string();
        self.wait_event(Role::Gateway, &format!("{what} completed"), |e| {
            e.message == "completed" && e.field("seq") == Some(&seq)
        })
        .await
    }

    /// Waits until message `seq` of trace `trace_id` has left its mark at
    /// every hop (gateway: written and completed; history: sequenced and
    /// published; router: routed; gateway: delivered to `recipient`), and
    /// returns its hop spans by name.
    async fn follow(&self, trace_id: &str, seq: u64, recipient: &str) -> HashMap<String, Hop> {
        let seq = seq.to_string();
        let in_trace =
            |e: &Event, message: &str| e.message == message && e.trace_id() == Some(trace_id);
        let mut found = Vec::new();
        found.push(
            self.wait_event(Role::Gateway, "write accepted", |e| {
                in_trace(e, "write accepted")
            })
            .await,
        );
        found.push(
            self.wait_event(Role::Gateway, "completed", |e| {
                in_trace(e, "completed") && e.field("seq") == Some(&seq)
            })
            .await,
        );
        let sequenced = self
            .wait_event(Role::History, "sequenced", |e| {
                in_trace(e, "sequenced") && e.field("seq") == Some(&seq)
            })
            .await;
        found.push(
            self.wait_event(Role::History, "published", |e| in_trace(e, "published"))
                .await,
        );
        found.push(sequenced);
        found.push(
            self.wait_event(Role::Router, "routed", |e| {
                in_trace(e, "routed") && e.field("seq") == Some(&seq)
            })
            .await,
        );
        found.push(
            self.wait_event(Role::Gateway, "delivered", |e| {
                in_trace(e, "delivered")
                    && e.innermost().is_some_and(|h| {
                        h.name == "gateway.deliver"
                            && h.fields.get("user_id").map(String::as_str) == Some(recipient)
                            && h.fields.get("seq") == Some(&seq)
                    })
            })
            .await,
        );
        let mut hops = HashMap::new();
        for span in found.into_iter().flat_map(|e| e.spans) {
            hops.insert(span.name.clone(), span);
        }
        hops
    }
}

/// The hop spans in the order a message passes them.
const PATH: [&str; 6] = [
    "gateway.call",
    "gateway.write",
    "history.sequence",
    "history.publish",
    "router.route",
    "gateway.deliver",
];

/// Every hop of `path` is in `trace_id`, is the child of the one before,
/// and has a span id of its own; the first continues `first_parent`.
fn assert_chain(
    hops: &HashMap<String, Hop>,
    path: &[&str],
    trace_id: &str,
    first_parent: Option<&str>,
) {
    let mut parent = first_parent.map(str::to_string);
    let mut ids = HashSet::new();
    for &name in path {
        let hop = hops
            .get(name)
            .unwrap_or_else(|| panic!("no {name} span in the logs: {hops:#?}"));
        assert_eq!(hop.trace_id, trace_id, "{name}: {hop:?}");
        assert_eq!(
            hop.parent, parent,
            "{name} is the child of the hop before it: {hops:#?}"
        );
        assert_eq!(hop.span_id.len(), 16, "{hop:?}");
        assert!(
            ids.insert(hop.span_id.clone()),
            "{name} has a span id of its own: {hops:#?}"
        );
        parent = Some(hop.span_id.clone());
    }
}

/// How often the logs and the collector are looked at.
const POLL: Duration = Duration::from_millis(50);

/// The `service.name` a hop span is exported under.
fn service_of(hop: &str) -> &'static str {
    match hop.split('.').next() {
        Some("gateway") => "confab-gateway",
        Some("history") => "confab-history",
        _ => "confab-router",
    }
}

/// Waits until the collector has one span of each hop of [`PATH`] in
/// `trace_id`, from the service of that hop, and returns them by name.
async fn exported_hops(collector: &Collector, trace_id: &str) -> HashMap<String, Hop> {
    let found = confab_tests::poll("every hop exported", DEADLINE, POLL, || {
        let hops: HashMap<String, Hop> = collector
            .spans_of(trace_id)
            .into_iter()
            .filter(|s| PATH.contains(&s.name.as_str()))
            .map(|s| {
                let hop = Hop {
                    name: s.name.clone(),
                    trace_id: s.trace_id,
                    span_id: s.span_id,
                    parent: Some(s.parent).filter(|p| !p.is_empty()),
                    fields: HashMap::new(),
                };
                (s.name, hop)
            })
            .collect();
        async move { Ok(Some(hops).filter(|h| h.len() == PATH.len())) }
    })
    .await;
    let hops = found.unwrap_or_else(|e| {
        panic!(
            "trace {trace_id}: {e}; got {:#?}",
            collector.spans_of(trace_id)
        )
    });
    for s in collector.spans_of(trace_id) {
        assert_eq!(s.service, service_of(&s.name), "{s:?}");
    }
    hops
}

/// The collector received every hop span of `hops` from its service, with
/// the same ids (so trace ids in logs, `traceparent`s and exported spans
/// agree).
async fn assert_exported(collector: &Collector, trace_id: &str, hops: &HashMap<String, Hop>) {
    let missing = || -> Vec<&str> {
        let spans = collector.spans_of(trace_id);
        PATH.into_iter()
            .filter(|name| {
                let hop = &hops[*name];
                !spans.iter().any(|s| {
                    s.name == *name
                        && s.service == service_of(name)
                        && s.span_id == hop.span_id
                        && Some(s.parent.as_str()).filter(|p| !p.is_empty())
                            == hop.parent.as_deref()
                })
            })
            .collect()
    };
    let exported = confab_tests::poll("every hop span exported", DEADLINE, POLL, || {
        let done = missing().is_empty();
        async move { Ok(Some(()).filter(|_| done)) }
    })
    .await;
    if let Err(e) = exported {
        panic!(
            "trace {trace_id}: {e}: spans {:?} missing; got {:#?}",
            missing(),
            collector.spans_of(trace_id)
        );
    }
}

/// `user` sends `body` to `conv` with `client` as its `traceparent`
/// metadata; the stored message.
async fn send_traced(
    user: &User,
    conv: &str,
    client_msg_id: &str,
    body: &str,
    client: TraceParent,
) -> confab_proto::v1::Message {
    let mut req = user.req(SendMessageRequest {
        reply_to_seq: 0,
        conversation_id: conv.into(),
        client_msg_id: client_msg_id.into(),
        body: body.into(),
    });
    req.metadata_mut().insert(
        "traceparent",
        client.to_string().parse().expect("ascii traceparent"),
    );
    user.client
        .clone()
        .send_message(req)
        .await
        .expect("send")
        .into_inner()
        .message
        .expect("message")
}

/// `user` sends `body` to `conv` in a trace of the client's own (a new
/// root `traceparent`), and `live` receives it: that traceparent, its trace
/// id, and the stored message.
async fn send_in_a_new_trace(
    user: &User,
    live: &mut Session,
    conv: &str,
    client_msg_id: &str,
    body: &str,
) -> (TraceParent, String, confab_proto::v1::Message) {
    let client = TraceParent::root();
    let sent = send_traced(user, conv, client_msg_id, body, client).await;
    live.messages_until(conv, sent.seq)
        .await
        .expect("the recipient gets it live");
    (client, client.trace_id_hex(), sent)
}

#[tokio::test]
async fn a_message_is_one_trace_from_the_sender_to_the_recipients_stream() {
    let stack = Stack::start().await;
    let addr = stack.gateway_addr();
    let alice = User::connect(addr, "alice").await;
    let bob = User::connect(addr, "bob").await;
    let mut live = bob.live().await;
    let conv = alice.group("traced", &["bob"]).await;

    // A membership change is traced like a message: the creation's trace
    // goes from the gateway's CreateConversation call to history.
    let created = stack
        .wait_event(Role::Gateway, "the creation's write", |e| {
            e.message == "write accepted"
                && e.spans.first().is_some_and(|c| {
                    c.fields.get("method").map(String::as_str) == Some("CreateConversation")
                })
        })
        .await;
    let created_trace = created.trace_id().expect("trace id").to_string();
    stack
        .wait_event(Role::History, "the creation sequenced", |e| {
            e.message == "sequenced" && e.trace_id() == Some(&created_trace)
        })
        .await;

    // 1. The client chose the trace: every hop continues it.
    let (client, trace_id, sent) =
        send_in_a_new_trace(&alice, &mut live, &conv.id, "traced-1", "follow me").await;
    let hops = stack.follow(&trace_id, sent.seq, "bob").await;
    assert_chain(&hops, &PATH, &trace_id, Some(&client.span_id_hex()));
    assert_eq!(
        hops["gateway.call"]
            .fields
            .get("method")
            .map(String::as_str),
        Some("SendMessage")
    );
    // grep <trace id> over the three logs finds it, in JSON and in text.
    for p in stack.procs.all() {
        let log = std::fs::read_to_string(&p.log).expect("log");
        assert!(
            log.contains(&trace_id),
            "{} does not mention {trace_id}",
            p.label
        );
    }
    assert_exported(&stack.collector, &trace_id, &hops).await;

    // 2. No traceparent: the gateway starts a trace, followed the same way.
    let plain = alice
        .send(&conv.id, "traced-2", "no context")
        .await
        .expect("send");
    live.messages_until(&conv.id, plain.seq)
        .await
        .expect("bob gets it live");
    let completed = stack.completed(plain.seq, "the plain send").await;
    let fresh = completed.trace_id().expect("trace id").to_string();
    assert_ne!(fresh, trace_id, "a new trace");
    let fresh_hops = stack.follow(&fresh, plain.seq, "bob").await;
    assert_chain(&fresh_hops, &PATH, &fresh, None);
    assert_exported(&stack.collector, &fresh, &fresh_hops).await;

    // 3. A `send` frame continues the trace of its stream's metadata.
    let stream_trace = TraceParent::root();
    let (tx, rx) = tokio::sync::mpsc::channel::<ClientFrame>(8);
    tx.send(ClientFrame {
        frame: Some(client_frame::Frame::Ping(Ping { nonce: 7 })),
    })
    .await
    .expect("queue ping");
    let mut req = bob.req(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut().insert(
        "traceparent",
        stream_trace.to_string().parse().expect("ascii traceparent"),
    );
    let inbound = bob
        .client
        .clone()
        .connect(req)
        .await
        .expect("connect")
        .into_inner();
    let mut stream = Session {
        tx,
        inbound: Box::pin(inbound),
    };
    stream
        .send_text(&conv.id, "traced-3", "from a stream")
        .await;
    let acked = stream.next_ack().await;
    assert!(acked.error.is_none(), "{acked:?}");
    let stream_hops = stack
        .follow(&stream_trace.trace_id_hex(), acked.seq, "bob")
        .await;
    assert_chain(
        &stream_hops,
        &PATH,
        &stream_trace.trace_id_hex(),
        Some(&stream_trace.span_id_hex()),
    );
    assert_eq!(
        stream_hops["gateway.call"]
            .fields
            .get("method")
            .map(String::as_str),
        Some("Connect")
    );

    // 4. On a stream opened without a traceparent, each `send` frame starts
    // a trace of its own.
    live.send_text(&conv.id, "traced-4", "from a plain stream")
        .await;
    let acked = live.next_ack().await;
    assert!(acked.error.is_none(), "{acked:?}");
    let completed = stack.completed(acked.seq, "the plain stream's send").await;
    let own = completed.trace_id().expect("trace id").to_string();
    assert_eq!(
        completed.spans.len(),
        1,
        "a gateway.write of its own, outside the stream's span: {completed:?}"
    );
    let own_hops = stack.follow(&own, acked.seq, "bob").await;
    assert_chain(&own_hops, &PATH[1..], &own, None);
}

/// With the log at INFO the hop events are not logged, and the hops with
/// nothing to log above DEBUG skip their spans unless they are exported
/// (`trace::hops_observed`): with export on, every hop of a message is
/// still exported, chained from the client's span.
#[tokio::test]
async fn with_the_log_at_info_every_hop_is_still_exported() {
    let stack = Stack::start_logging("info").await;
    let addr = stack.gateway_addr();
    let alice = User::connect(addr, "alice").await;
    let bob = User::connect(addr, "bob").await;
    let mut live = bob.live().await;
    let conv = alice.group("traced at info", &["bob"]).await;
    let (client, trace_id, _) = send_in_a_new_trace(
        &alice,
        &mut live,
        &conv.id,
        "info-1",
        "exported, not logged",
    )
    .await;
    let hops = exported_hops(&stack.collector, &trace_id).await;
    assert_chain(&hops, &PATH, &trace_id, Some(&client.span_id_hex()));
    for p in stack.procs.all() {
        let log = std::fs::read_to_string(&p.log).expect("log");
        assert!(
            !log.contains(&trace_id),
            "{} logged a hop event at INFO:\n{log}",
            p.label
        );
    }
}
