//! One message, one trace: W3C trace context (`traceparent`) carried along
//! every hop (gRPC metadata, Kafka headers, the internal records and frames)
//! and a `tracing` span per hop that carries its ids.
//!
//! Every hop span is declared with the fields [`TRACE_ID`], [`SPAN_ID`] and
//! [`PARENT_SPAN_ID`] left empty and handed to [`start`] (or [`start_from`])
//! with the context it continues; `start` fills the fields and returns the
//! span's own context, to be passed on to the next hop. Log lines inside the
//! span carry those fields in both log formats (text prints the span's
//! fields before the message, JSON under `span` and `spans`), so `grep
//! <trace id>` over the services' logs follows a message.
//!
//! With span export on ([`crate::telemetry`], `CONFAB_OTLP_ENDPOINT`) the
//! ids are those of the exported OpenTelemetry span, so the trace ids in the
//! logs, in the propagated `traceparent`s and in the exported spans are the
//! same; without it they are drawn here.
//!
//! Per-message events of the hops ("write accepted", "sequenced",
//! "routed", "delivered", "completed") are logged at DEBUG with the target
//! [`HOP`], so `CONFAB_LOG=info,confab::hop=debug` shows the path of every
//! message without the rest of the debug output.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::registry::LookupSpan;

/// The gRPC metadata key and Kafka header of the trace context.
pub const TRACEPARENT: &str = "traceparent";

/// The target of the per-message hop events (DEBUG).
pub const HOP: &str = "confab::hop";

/// Field of a hop span: its trace id (32 hex digits).
pub const TRACE_ID: &str = "trace_id";
/// Field of a hop span: its own span id (16 hex digits).
pub const SPAN_ID: &str = "span_id";
/// Field of a hop span: the span id of the context it continues (absent
/// for the first span of a trace).
pub const PARENT_SPAN_ID: &str = "parent_span_id";

/// Set by [`crate::telemetry`] once spans are exported.
static OTEL: AtomicBool = AtomicBool::new(false);

/// Spans get their ids from OpenTelemetry from now on.
pub(crate) fn use_opentelemetry() {
    OTEL.store(true, Ordering::Relaxed);
}

/// See [`hops_observed`]. True until [`crate::telemetry`] says otherwise,
/// so a subscriber installed some other way (a test's) sees every span.
/// Process-wide on purpose, unlike readiness: it follows what the one
/// global tracing subscriber records and exports, which every server in
/// the process shares.
static HOPS_OBSERVED: AtomicBool = AtomicBool::new(true);

/// Set by [`crate::telemetry`] when it installs the subscriber (and by
/// tests of the hops that skip their span).
pub fn set_hops_observed(observed: bool) {
    HOPS_OBSERVED.store(observed, Ordering::Relaxed);
}

/// Whether anything looks at the hop spans inside which nothing is logged
/// above DEBUG: spans are exported, or the per-message hop events
/// ([`HOP`], DEBUG) are logged.
///
/// When not, the hops where that holds on the busy path (`gateway.write`,
/// `history.sequence` and `history.publish` for every record,
/// `router.route` with the members cached, `gateway.deliver` for an
/// in-order delivery) skip making their span, and [`start`] still hands
/// on the trace context: the spans alone, formatted for the log on every
/// message and never printed, were about a fifth of `confab dev`'s CPU
/// (docs/benchmarks-log.md). Hops that may log a warning (a call, a
/// read, a membership lookup, a gap fill) always make theirs.
pub fn hops_observed() -> bool {
    HOPS_OBSERVED.load(Ordering::Relaxed)
}

/// `make()`'s span when [`hops_observed`], a disabled one otherwise.
pub fn observed_span(make: impl FnOnce() -> Span) -> Span {
    if hops_observed() {
        make()
    } else {
        Span::none()
    }
}

/// A W3C trace context: which trace, which span in it, sampled or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace id (never 0).
    pub trace_id: u128,
    /// The span id (never 0).
    pub span_id: u64,
    /// The `sampled` flag.
    pub sampled: bool,
}

impl TraceParent {
    /// Parses a `traceparent` value (`00-<32 hex>-<16 hex>-<2 hex>`, lower
    /// case; a later version may append fields after a `-`). `None` for
    /// anything else, including all-zero ids and version `ff`: per the W3C
    /// specification an invalid value is ignored and a new trace started.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        let (head, rest) = (value.get(..55)?, value.get(55..)?);
        let mut parts = head.split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let lower_hex = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if parts.next().is_some()
            || !lower_hex(version, 2)
            || !lower_hex(trace, 32)
            || !lower_hex(span, 16)
            || !lower_hex(flags, 2)
            || version == "ff"
            || (version == "00" && !rest.is_empty())
            || (!rest.is_empty() && !rest.starts_with('-'))
        {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        if trace_id == 0 || span_id == 0 {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The first span of a new trace (random ids, sampled).
    pub fn root() -> Self {
        Self {
            trace_id: random_u128(),
            span_id: random_span_id(),
            sampled: true,
        }
    }

    /// A new span in the same trace.
    pub fn child(&self) -> Self {
        Self {
            span_id: random_span_id(),
            ..*self
        }
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The span id as 16 lower-case hex digits.
    pub fn span_id_hex(&self) -> String {
        format!("{:016x}", self.span_id)
    }

    /// The `traceparent` of `metadata`, if it holds a valid one.
    pub fn from_metadata(metadata: &tonic::metadata::MetadataMap) -> Option<Self> {
        Self::parse(metadata.get(TRACEPARENT)?.to_str().ok()?)
    }

    /// The `traceparent` header of `headers`, if it holds a valid one.
    pub fn from_headers(headers: &http::HeaderMap) -> Option<Self> {
        Self::parse(headers.get(TRACEPARENT)?.to_str().ok()?)
    }

    /// Puts this context into `request`'s metadata as `traceparent`.
    pub fn inject<T>(&self, request: &mut tonic::Request<T>) {
        if let Ok(value) = self.to_string().parse() {
            request.metadata_mut().insert(TRACEPARENT, value);
        }
    }

    fn otel_context(&self) -> opentelemetry::Context {
        let flags = if self.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_bytes(self.trace_id.to_be_bytes()),
            SpanId::from_bytes(self.span_id.to_be_bytes()),
            flags,
            true,
            TraceState::default(),
        ))
    }
}

/// `00-<32 hex>-<16 hex>-<2 hex>`.
const TRACEPARENT_LEN: usize = 55;

impl fmt::Display for TraceParent {
    /// `00-{trace_id:032x}-{span_id:016x}-{flags:02x}`, hex-encoded into a
    /// buffer on the stack: every message's record and delivery carries one,
    /// and `write!` with padded hex was 3% of the router's CPU.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [b'-'; TRACEPARENT_LEN];
        out[..2].copy_from_slice(b"00");
        let hex = |bytes: &[u8], to: &mut [u8]| hex::encode_to_slice(bytes, to);
        hex(&self.trace_id.to_be_bytes(), &mut out[3..35]).map_err(|_| fmt::Error)?;
        hex(&self.span_id.to_be_bytes(), &mut out[36..52]).map_err(|_| fmt::Error)?;
        hex(&[u8::from(self.sampled)], &mut out[53..55]).map_err(|_| fmt::Error)?;
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

fn random_u128() -> u128 {
    loop {
        let n = uuid::Uuid::new_v4().as_u128();
        if n != 0 {
            return n;
        }
    }
}

fn random_span_id() -> u64 {
    loop {
        let n = uuid::Uuid::new_v4().as_u128() as u64;
        if n != 0 {
            return n;
        }
    }
}

/// An INFO hop span: `tracing::info_span!` with the [`TRACE_ID`],
/// [`SPAN_ID`] and [`PARENT_SPAN_ID`] fields that [`start`] fills, then the
/// caller's own fields. `hop_span!(parent: p, "name", field = v, ...)` sets
/// its parent like `info_span!` does.
#[macro_export]
macro_rules! hop_span {
    (parent: $parent:expr, $name:literal $(, $($fields:tt)*)?) => {
        ::tracing::info_span!(
            parent: $parent,
            $name,
            trace_id = ::tracing::field::Empty,
            span_id = ::tracing::field::Empty,
            parent_span_id = ::tracing::field::Empty,
            $($($fields)*)?
        )
    };
    ($name:literal $(, $($fields:tt)*)?) => {
        ::tracing::info_span!(
            $name,
            trace_id = ::tracing::field::Empty,
            span_id = ::tracing::field::Empty,
            parent_span_id = ::tracing::field::Empty,
            $($($fields)*)?
        )
    };
}

/// Starts the hop `span` as a child of `parent` (a new trace without one):
/// fills its [`TRACE_ID`], [`SPAN_ID`] and [`PARENT_SPAN_ID`] fields,
/// remembers its context for [`current`], and returns that context, the
/// `traceparent` to hand to the next hop. Works (and returns a context)
/// whether or not the span is enabled.
pub fn start(span: &Span, parent: Option<TraceParent>) -> TraceParent {
    let ctx = opentelemetry_ids(span, parent).unwrap_or_else(|| match parent {
        Some(p) => p.child(),
        None => TraceParent::root(),
    });
    // Displayed, so text logs show them unquoted (`trace_id=4bf9…`).
    span.record(TRACE_ID, tracing::field::display(ctx.trace_id_hex()));
    span.record(SPAN_ID, tracing::field::display(ctx.span_id_hex()));
    if let Some(p) = parent {
        span.record(PARENT_SPAN_ID, tracing::field::display(p.span_id_hex()));
    }
    span.with_subscriber(|(id, dispatch)| {
        if let Some(data) = dispatch
            .downcast_ref::<tracing_subscriber::Registry>()
            .and_then(|registry| registry.span(id))
        {
            let mut extensions = data.extensions_mut();
            extensions.replace(Hop {
                ctx,
                continues: parent.is_some(),
            });
        }
    });
    ctx
}

/// What [`start`] leaves in a hop span's extensions.
#[derive(Debug, Clone, Copy)]
struct Hop {
    /// The span's own context.
    ctx: TraceParent,
    /// Whether it continued a context it was given (rather than starting a
    /// trace).
    continues: bool,
}

/// [`start`] continuing the `traceparent` value `parent` (from a record or a
/// frame); an empty or invalid one starts a new trace.
pub fn start_from(span: &Span, parent: &str) -> TraceParent {
    start(span, TraceParent::parse(parent))
}

/// The context of the innermost hop span around the caller (the one to send
/// with an outgoing call), if any.
pub fn current() -> Option<TraceParent> {
    current_hop().map(|hop| hop.ctx)
}

/// Whether the innermost hop span around the caller continues a context it
/// was given (a client's `traceparent`, a record's), rather than having
/// started its trace.
pub fn current_continues() -> bool {
    current_hop().is_some_and(|hop| hop.continues)
}

fn current_hop() -> Option<Hop> {
    Span::current()
        .with_subscriber(|(id, dispatch)| {
            let registry = dispatch.downcast_ref::<tracing_subscriber::Registry>()?;
            let span = registry.span(id)?;
            span.scope()
                .find_map(|s| s.extensions().get::<Hop>().copied())
        })
        .flatten()
}

/// The ids OpenTelemetry gave `span` as a child of `parent`, when spans are
/// exported and this one is.
fn opentelemetry_ids(span: &Span, parent: Option<TraceParent>) -> Option<TraceParent> {
    if !OTEL.load(Ordering::Relaxed) || span.is_disabled() {
        return None;
    }
    let parent_cx = parent.map(|p| p.otel_context()).unwrap_or_default();
    span.set_parent(parent_cx).ok()?;
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() {
        return None;
    }
    Some(TraceParent {
        trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
        span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
        sampled: sc.is_sampled(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_w3c_format() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tp = TraceParent::parse(text).expect("valid");
        assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.span_id_hex(), "00f067aa0ba902b7");
        assert!(tp.sampled);
        assert_eq!(tp.to_string(), text);
        let unsampled =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                .expect("valid");
        assert!(!unsampled.sampled);
        assert_eq!(
            unsampled.to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        );
        // A later version may add fields.
        assert!(TraceParent::parse(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"
        )
        .is_some());
        for bad in [
            "",
            "00-abc",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736+00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0\u{e9}",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn children_keep_the_trace_and_roots_start_one() {
        let root = TraceParent::root();
        let child = root.child();
        assert_eq!(child.trace_id, root.trace_id);
        assert_ne!(child.span_id, root.span_id);
        assert_ne!(TraceParent::root().trace_id, root.trace_id);
        assert_eq!(TraceParent::parse(&root.to_string()), Some(root));
    }

    #[test]
    fn hop_spans_record_their_ids_and_are_found_from_inside() {
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry().with(tracing_subscriber::fmt::layer());
        tracing::subscriber::with_default(subscriber, || {
            assert_eq!(current(), None);
            let parent = TraceParent::root();
            let span = tracing::info_span!(
                "hop",
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty,
                parent_span_id = tracing::field::Empty
            );
            let ctx = start(&span, Some(parent));
            assert_eq!(ctx.trace_id, parent.trace_id);
            assert_ne!(ctx.span_id, parent.span_id);
            let inner = span.in_scope(|| tracing::info_span!("inner").in_scope(current));
            assert_eq!(inner, Some(ctx));
            assert!(span.in_scope(current_continues));
            let root = tracing::info_span!("root", trace_id = tracing::field::Empty);
            let started = start(&root, None);
            assert_eq!(root.in_scope(current), Some(started));
            assert!(!root.in_scope(current_continues), "it started its trace");
        });
        // Without a subscriber the span is disabled, but the context still
        // goes on.
        let span = tracing::info_span!("hop", trace_id = tracing::field::Empty);
        let ctx = start_from(&span, "not a traceparent");
        assert_ne!(ctx.trace_id, 0);
    }

    #[test]
    fn metadata_round_trip() {
        let tp = TraceParent::root();
        let mut req = tonic::Request::new(());
        tp.inject(&mut req);
        assert_eq!(TraceParent::from_metadata(req.metadata()), Some(tp));
        let mut headers = http::HeaderMap::new();
        headers.insert(TRACEPARENT, http::HeaderValue::from_static("garbage"));
        assert_eq!(TraceParent::from_headers(&headers), None);
    }
}
