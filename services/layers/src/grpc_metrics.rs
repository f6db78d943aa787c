//! Per-call gRPC metrics: every call counted by service, method and status
//! code, unary durations, open streams. Labels are bounded: `service` and
//! `method` come from the descriptor sets a server serves (any other path
//! counts as `unknown`), `code` is one of the 17 gRPC code names.

use crate::{Answer, Around, Inner};
use confab_core::metrics::{
    code_name, GRPC_DURATION, GRPC_REQUESTS, GRPC_STREAMS_OPEN, GRPC_STREAMS_OPENED,
};
use http_body::{Frame, SizeHint};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::codegen::Bytes;

/// What the layer knows about one gRPC path.
#[derive(Debug)]
struct MethodInfo {
    service: String,
    method: String,
    streaming: bool,
}

/// Records [`GRPC_REQUESTS`], [`GRPC_DURATION`], [`GRPC_STREAMS_OPENED`]
/// and [`GRPC_STREAMS_OPEN`] for every call through a tonic server.
#[derive(Debug, Clone)]
pub struct GrpcMetrics {
    methods: Arc<HashMap<String, Arc<MethodInfo>>>,
    unknown: Arc<MethodInfo>,
}

impl GrpcMetrics {
    /// A layer that knows the methods in these encoded
    /// `FileDescriptorSet`s; calls to any other path are labelled `unknown`.
    pub fn new(descriptor_sets: &[&[u8]]) -> Self {
        use prost::Message;
        let mut methods = HashMap::new();
        for set in descriptor_sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
                tracing::warn!("undecodable descriptor set; its methods count as unknown");
                continue;
            };
            for file in &set.file {
                let package = file.package();
                for service in &file.service {
                    let full = if package.is_empty() {
                        service.name().to_string()
                    } else {
                        format!("{package}.{}", service.name())
                    };
                    for m in &service.method {
                        methods.insert(
                            format!("/{full}/{}", m.name()),
                            Arc::new(MethodInfo {
                                service: full.clone(),
                                method: m.name().to_string(),
                                streaming: m.client_streaming() || m.server_streaming(),
                            }),
                        );
                    }
                }
            }
        }
        Self {
            methods: Arc::new(methods),
            unknown: Arc::new(MethodInfo {
                service: "unknown".into(),
                method: "unknown".into(),
                streaming: false,
            }),
        }
    }
}

impl Around for GrpcMetrics {
    fn around<S: Inner<B>, B>(&self, inner: &mut S, req: http::Request<B>) -> Answer<S::Error> {
        let info = self
            .methods
            .get(req.uri().path())
            .unwrap_or(&self.unknown)
            .clone();
        let mut call = Call::start(info);
        let response = inner.call(req);
        Box::pin(async move {
            let response = match response.await {
                Ok(r) => r,
                Err(e) => {
                    call.finish(tonic::Code::Unknown);
                    return Err(e);
                }
            };
            // Errors before any message (e.g. UNAUTHENTICATED) come as
            // "trailers-only": the status is in the headers.
            if let Some(code) = grpc_status(response.headers()) {
                call.finish(code);
                return Ok(response);
            }
            Ok(response.map(|body| {
                tonic::body::Body::new(MeteredBody {
                    inner: body,
                    call: Some(call),
                })
            }))
        })
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?;
    let code = value.to_str().ok()?.trim().parse::<i32>().ok()?;
    Some(tonic::Code::from_i32(code))
}

/// One call in flight; records its outcome once. Dropped unfinished (the
/// response body went away before its status): `CANCELLED`.
#[derive(Debug)]
struct Call {
    info: Arc<MethodInfo>,
    started: Instant,
    done: bool,
}

impl Call {
    fn start(info: Arc<MethodInfo>) -> Self {
        if info.streaming {
            let labels = [
                ("service", info.service.clone()),
                ("method", info.method.clone()),
            ];
            metrics::counter!(GRPC_STREAMS_OPENED, &labels).increment(1);
            metrics::gauge!(GRPC_STREAMS_OPEN, &labels).increment(1.0);
        }
        Self {
            info,
            started: Instant::now(),
            done: false,
        }
    }

    fn finish(&mut self, code: tonic::Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let info = &self.info;
        let labels = [
            ("service", info.service.clone()),
            ("method", info.method.clone()),
        ];
        metrics::counter!(
            GRPC_REQUESTS,
            "service" => info.service.clone(),
            "method" => info.method.clone(),
            "code" => code_name(code),
        )
        .increment(1);
        if info.streaming {
            metrics::gauge!(GRPC_STREAMS_OPEN, &labels).decrement(1.0);
        } else {
            metrics::histogram!(GRPC_DURATION, &labels)
                .record(self.started.elapsed().as_secs_f64());
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(tonic::Code::Cancelled);
    }
}

/// A response body that records its call's status from the trailers.
struct MeteredBody {
    inner: tonic::body::Body,
    call: Option<Call>,
}

impl MeteredBody {
    fn finish(&mut self, code: tonic::Code) {
        if let Some(mut call) = self.call.take() {
            call.finish(code);
        }
    }
}

impl http_body::Body for MeteredBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    this.finish(code);
                }
            }
            Poll::Ready(Some(Err(status))) => this.finish(status.code()),
            Poll::Ready(None) => this.finish(tonic::Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_knows_methods_and_streaming_from_descriptors() {
        let layer = GrpcMetrics::new(&[
            confab_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ]);
        let send = &layer.methods["/confab.v1.Chat/SendMessage"];
        assert_eq!(
            (send.service.as_str(), send.method.as_str(), send.streaming),
            ("confab.v1.Chat", "SendMessage", false)
        );
        assert!(layer.methods["/confab.v1.Chat/Connect"].streaming);
        assert!(layer.methods["/grpc.health.v1.Health/Watch"].streaming);
        assert!(!layer.methods.contains_key("/confab.v1.Chat/user-123"));
    }
}
