//! An OpenTelemetry trace endpoint (OTLP over gRPC) on a free loopback port, so tests can check
//! that a service process really exports its spans — and in which trace — when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` points at it.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value;
pub use opentelemetry_proto::tonic::trace::v1::Span;
use std::time::Duration;
use tokio::sync::mpsc;

/// Receives the spans exported to [`TraceCollector::endpoint`]; stops with the test's runtime.
pub struct TraceCollector {
    pub endpoint: String,
    exported: mpsc::Receiver<ExportTraceServiceRequest>,
}

struct Forward(mpsc::Sender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Forward {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        // A test that stopped reading has its answer already; dropping the rest is fine.
        let _ = self.0.try_send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl TraceCollector {
    pub async fn start() -> crate::Result<Self> {
        let (sender, exported) = mpsc::channel(10_000);
        let router = tonic::service::Routes::new(TraceServiceServer::new(Forward(sender))).into_axum_router();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|err| crate::HarnessError::io("cannot bind the OTLP collector", err))?;
        let addr = listener.local_addr().map_err(|err| crate::HarnessError::io("OTLP collector address", err))?;
        tokio::spawn(async move { axum::serve(listener, router).await });
        Ok(Self { endpoint: format!("http://{addr}"), exported })
    }

    /// Waits until `wanted` holds for the spans received so far, as (service name, span) pairs.
    pub async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut wanted: impl FnMut(&[(String, Span)]) -> bool,
    ) -> crate::Result<Vec<(String, Span)>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut received = Vec::new();
        while !wanted(&received) {
            match tokio::time::timeout_at(deadline, self.exported.recv()).await {
                Ok(Some(request)) => received.extend(spans(request)),
                Ok(None) | Err(_) => {
                    let services: std::collections::BTreeSet<&str> = received.iter().map(|(s, _)| s.as_str()).collect();
                    return Err(crate::HarnessError(format!(
                        "timed out after {timeout:?} waiting for {what}; {} spans received from {services:?}",
                        received.len()
                    )));
                }
            }
        }
        Ok(received)
    }
}

/// (service name, span) of every span in an export request.
fn spans(request: ExportTraceServiceRequest) -> Vec<(String, Span)> {
    let mut all = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|resource| &resource.attributes)
            .find(|attribute| attribute.key == "service.name")
            .and_then(|attribute| match attribute.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(name) => Some(name.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            all.extend(scope.spans.into_iter().map(|span| (service.clone(), span)));
        }
    }
    all
}
