//! Logging and tracing set-up: `RUST_LOG`-style filtering (`CONFAB_LOG`),
//! text or JSON lines (`CONFAB_LOG_FORMAT`), and optionally the export of
//! spans over OTLP/gRPC (`CONFAB_OTLP_ENDPOINT`, filtered by
//! `CONFAB_OTLP_FILTER`). See [`crate::trace`] for the hop spans.

use confab_core::config::{ConfigError, Env};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// Where spans are exported (OTLP over gRPC, e.g. `http://127.0.0.1:4317`);
/// unset: no export.
pub const OTLP_ENDPOINT_VAR: &str = confab_core::vars::OTLP_ENDPOINT;
/// Which spans are exported, as a `CONFAB_LOG`-style filter.
pub const OTLP_FILTER_VAR: &str = confab_core::vars::OTLP_FILTER;
/// The default of [`OTLP_FILTER_VAR`]: the spans (and events) of Confab's
/// own crates at INFO and above, which includes every hop span.
pub const OTLP_FILTER_DEFAULT: &str = "confab=info";
/// The log filter when `CONFAB_LOG` (and `RUST_LOG`) are unset.
pub const LOG_FILTER_DEFAULT: &str = "info,sqlx=warn,h2=warn,tower=warn";

/// What [`init_from_env`] started; [`Telemetry::shutdown`] sends the spans
/// still buffered before the process exits.
#[must_use = "call shutdown() before exiting, or buffered spans are lost"]
pub struct Telemetry {
    /// The span exporter, when `CONFAB_OTLP_ENDPOINT` is set.
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is buffered and stops exporting (at most 5 s). Call it
    /// outside the runtime's `block_on` but while the runtime still exists:
    /// the exports run on it.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown_with_timeout(Duration::from_secs(5)) {
                eprintln!("spans not exported at exit: {e}");
            }
        }
    }
}

/// Installs the global subscriber once (later calls are no-ops), logging
/// only. `json` selects one JSON object per line (for log shippers).
pub fn init(json: bool) {
    let _ = install(json, None);
}

/// The span export settings of [`init_from_env`].
struct Otlp {
    /// The collector's address.
    endpoint: String,
    /// Which spans go there.
    filter: EnvFilter,
    /// `service.name` of every span.
    service: &'static str,
}

/// Logging as `CONFAB_LOG` and `CONFAB_LOG_FORMAT` say and, when
/// `CONFAB_OTLP_ENDPOINT` is set, span export as `service` (the
/// `service.name` resource attribute). Must be called within a Tokio
/// runtime (the exporter's connection lives on it). A bad
/// `CONFAB_OTLP_ENDPOINT` or `CONFAB_OTLP_FILTER` is a [`ConfigError`].
pub fn init_from_env(service: &'static str, env: &dyn Env) -> Result<Telemetry, ConfigError> {
    let json = env
        .get(confab_core::vars::LOG_FORMAT)
        .is_some_and(|f| f == "json");
    let otlp = match env.get(OTLP_ENDPOINT_VAR) {
        None => None,
        Some(endpoint) => {
            check_endpoint(&endpoint)?;
            let filter_text = env
                .get(OTLP_FILTER_VAR)
                .unwrap_or_else(|| OTLP_FILTER_DEFAULT.into());
            let filter = EnvFilter::try_new(&filter_text).map_err(|e| ConfigError {
                key: OTLP_FILTER_VAR.into(),
                value: filter_text.clone(),
                reason: format!("expected a filter like {OTLP_FILTER_DEFAULT:?}: {e}"),
            })?;
            Some(Otlp {
                endpoint: endpoint.trim().to_string(),
                filter,
                service,
            })
        }
    };
    install(json, otlp)
}

/// An OTLP/gRPC endpoint must be `http://host:port` (no TLS: send to a
/// local collector or agent).
fn check_endpoint(endpoint: &str) -> Result<(), ConfigError> {
    let bad = |reason: &str| ConfigError {
        key: OTLP_ENDPOINT_VAR.into(),
        value: endpoint.to_string(),
        reason: reason.into(),
    };
    let uri: http::Uri = endpoint
        .trim()
        .parse()
        .map_err(|_| bad("expected an OTLP/gRPC address like http://127.0.0.1:4317"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(bad(
                "https is not supported: export to a collector or agent over http:// (e.g. on the same host)",
            ))
        }
        _ => {
            return Err(bad(
                "expected an OTLP/gRPC address like http://127.0.0.1:4317",
            ))
        }
    }
    if uri.host().is_none_or(str::is_empty) || uri.port_u16().is_none() {
        return Err(bad(
            "expected an OTLP/gRPC address with host and port, like http://127.0.0.1:4317",
        ));
    }
    Ok(())
}

fn install(json: bool, otlp: Option<Otlp>) -> Result<Telemetry, ConfigError> {
    let log_filter = EnvFilter::try_from_env(confab_core::vars::LOG)
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(LOG_FILTER_DEFAULT));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = if json {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    let (export, provider) = match otlp {
        None => (None, None),
        Some(otlp) => {
            let provider = provider(&otlp)?;
            let tracer = provider.tracer(otlp.service);
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(Reevaluated(otlp.filter));
            (Some(layer), Some(provider))
        }
    };
    let exporting = provider.is_some();
    let hops_logged = logs_hop_events(&log_filter);
    let installed = if exporting {
        tracing_subscriber::registry()
            .with(fmt.with_filter(Reevaluated(log_filter)))
            .with(export)
            .try_init()
    } else {
        tracing_subscriber::registry()
            .with(fmt.with_filter(log_filter))
            .try_init()
    }
    .is_ok();
    if installed {
        crate::trace::set_hops_observed(exporting || hops_logged);
        if exporting {
            crate::trace::use_opentelemetry();
        }
    }
    Ok(Telemetry {
        provider: provider.filter(|_| installed),
    })
}

/// Whether `filter` lets the per-message hop events through (target
/// [`crate::trace::HOP`] at DEBUG), asked of its directives alone, outside
/// any filtering pass. A filter on span fields counts as yes.
fn logs_hop_events(filter: &EnvFilter) -> bool {
    use tracing::callsite::{Callsite, Identifier};
    use tracing::field::FieldSet;
    use tracing::metadata::Kind;
    use tracing::subscriber::Interest;
    use tracing::{Level, Metadata};

    /// A hop event's callsite, only ever asked about.
    struct HopEvent;
    impl Callsite for HopEvent {
        fn set_interest(&self, _: Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            &HOP_EVENT
        }
    }
    static HOP_EVENT_CALLSITE: HopEvent = HopEvent;
    static HOP_EVENT: Metadata<'static> = Metadata::new(
        "hop event",
        crate::trace::HOP,
        Level::DEBUG,
        None,
        None,
        None,
        FieldSet::new(&[], Identifier(&HOP_EVENT_CALLSITE)),
        Kind::EVENT,
    );
    !tracing_subscriber::layer::Filter::<Registry>::callsite_enabled(filter, &HOP_EVENT).is_never()
}

/// A per-layer filter that asks its inner filter about every span and
/// event rather than letting a callsite be cached as always enabled.
///
/// With two per-layer-filtered layers (logs and span export), a callsite
/// cached as always enabled is created without a filtering pass, and its
/// span then takes whatever per-layer verdicts an earlier pass on the same
/// thread left behind (a pass that created nothing, e.g. for a callsite
/// only one layer wanted): a hop span could go missing from the log lines
/// inside it while still being exported. Evaluating every callsite each
/// time keeps the verdicts fresh.
struct Reevaluated(EnvFilter);

impl<S> tracing_subscriber::layer::Filter<S> for Reevaluated
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn enabled(
        &self,
        meta: &tracing::Metadata<'_>,
        cx: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        tracing_subscriber::layer::Filter::<S>::enabled(&self.0, meta, cx)
    }

    fn callsite_enabled(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if tracing_subscriber::layer::Filter::<S>::callsite_enabled(&self.0, meta).is_never() {
            tracing::subscriber::Interest::never()
        } else {
            tracing::subscriber::Interest::sometimes()
        }
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        tracing_subscriber::layer::Filter::<S>::max_level_hint(&self.0)
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        tracing_subscriber::layer::Filter::<S>::on_new_span(&self.0, attrs, id, ctx)
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        tracing_subscriber::layer::Filter::<S>::on_record(&self.0, id, values, ctx)
    }

    fn on_enter(&self, id: &tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        tracing_subscriber::layer::Filter::<S>::on_enter(&self.0, id, ctx)
    }

    fn on_exit(&self, id: &tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        tracing_subscriber::layer::Filter::<S>::on_exit(&self.0, id, ctx)
    }

    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        tracing_subscriber::layer::Filter::<S>::on_close(&self.0, id, ctx)
    }
}

/// The tracer provider exporting to `otlp.endpoint` in batches.
fn provider(otlp: &Otlp) -> Result<SdkTracerProvider, ConfigError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| ConfigError {
        key: OTLP_ENDPOINT_VAR.into(),
        value: otlp.endpoint.clone(),
        reason: "span export must be set up within a Tokio runtime (a bug)".into(),
    })?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(otlp.endpoint.clone())
        .build()
        .map_err(|e| ConfigError {
            key: OTLP_ENDPOINT_VAR.into(),
            value: otlp.endpoint.clone(),
            reason: e.to_string(),
        })?;
    Ok(SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(otlp.service).build())
        .with_batch_exporter(OnRuntime {
            inner: Arc::new(exporter),
            runtime,
        })
        .build())
}

/// Runs the exporter's calls on the Tokio runtime: the batch processor
/// exports from a thread of its own, where tonic's timers and connection
/// cannot run.
#[derive(Debug)]
struct OnRuntime {
    /// The OTLP/gRPC exporter.
    inner: Arc<opentelemetry_otlp::SpanExporter>,
    /// The runtime its channel lives on.
    runtime: tokio::runtime::Handle,
}

impl SpanExporter for OnRuntime {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let inner = self.inner.clone();
        let task = self.runtime.spawn(async move { inner.export(batch).await });
        async move {
            task.await
                .unwrap_or_else(|e| Err(OTelSdkError::InternalFailure(e.to_string())))
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called once while the provider is built, before any export.
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn the_endpoint_must_be_plain_http_with_a_port() {
        assert!(check_endpoint("http://127.0.0.1:4317").is_ok());
        assert!(check_endpoint(" http://collector:4317 ").is_ok());
        for bad in [
            "127.0.0.1:4317",
            "https://collector:4317",
            "http://collector",
            "ftp://x:1",
            "not a url",
        ] {
            let e = check_endpoint(bad).expect_err(bad);
            assert_eq!(e.key, OTLP_ENDPOINT_VAR, "{bad}");
        }
    }

    #[test]
    fn hop_spans_are_observed_when_the_filter_logs_hop_events() {
        for (filter, logged) in [
            (LOG_FILTER_DEFAULT, false),
            ("info", false),
            ("warn", false),
            ("confab=info", false),
            ("info,confab::hop=debug", true),
            ("debug", true),
            ("trace", true),
            ("confab=debug", true),
            ("info,confab::hop=trace", true),
            ("debug,confab::hop=info", false),
            ("info,[gateway.write]=debug", true),
        ] {
            let filter_text = filter;
            let filter = EnvFilter::try_new(filter_text).expect(filter_text);
            assert_eq!(logs_hop_events(&filter), logged, "{filter_text}");
        }
    }

    #[test]
    fn a_bad_export_filter_names_its_variable() {
        let env = HashMap::from([
            (
                OTLP_ENDPOINT_VAR.to_string(),
                "http://127.0.0.1:4317".to_string(),
            ),
            (OTLP_FILTER_VAR.to_string(), "confab=loud".to_string()),
        ]);
        let e = init_from_env("confab-test", &env).err().expect("refused");
        assert_eq!(e.key, OTLP_FILTER_VAR);
    }
}
