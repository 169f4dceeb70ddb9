//! Logs and traces. Logs go through `tracing`: JSON lines when stdout is not a terminal
//! (collectors, tests), readable text on a terminal. Traces: every `tracing` span is also an
//! OpenTelemetry span, exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set; the W3C
//! trace context travels from gRPC/HTTP requests through NATS headers to the persister and the
//! gateway (see [`trace_context`]), so one trace shows a command from the caller to the clients.

use crate::config::TelemetryArgs;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::io::IsTerminal;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// Flushes and stops the trace exporter when dropped (at the end of `main`).
#[must_use = "traces are flushed when the guard is dropped"]
pub struct TelemetryGuard(Option<SdkTracerProvider>);

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take()
            && let Err(err) = provider.shutdown()
        {
            eprintln!("could not flush traces: {err}");
        }
    }
}

/// Installs the global subscriber and trace propagator, and announces the service on `/metrics`
/// ([`crate::ops::announce`]). A second call (several services in one test process) keeps the
/// first subscriber.
pub fn init(args: &TelemetryArgs, service: &'static str) -> TelemetryGuard {
    crate::ops::announce(service);
    let filter = EnvFilter::try_new(with_quiet_dependencies(&args.log_filter)).unwrap_or_else(|err| {
        eprintln!("RUST_LOG={:?} is not a valid filter ({err}); using \"info\"", args.log_filter);
        EnvFilter::new("info")
    });
    let json = match args.log_format.as_str() {
        "json" => true,
        "text" => false,
        _ => !std::io::stdout().is_terminal(),
    };
    let logs = if json {
        tracing_subscriber::fmt::layer().json().flatten_event(true).with_current_span(false).boxed()
    } else {
        tracing_subscriber::fmt::layer().with_target(true).boxed()
    };
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    let provider = tracer_provider(args.otlp_endpoint.as_deref(), service);
    let traces = tracing_opentelemetry::layer().with_tracer(provider.tracer(service));
    let installed = tracing_subscriber::registry().with(filter).with(logs).with(traces).try_init().is_ok();
    TelemetryGuard(installed.then_some(provider))
}

/// async-nats logs every client event (each failed reconnect attempt) at INFO: keep it at WARN
/// unless the filter names it; our own connection log says what matters, with the URL.
fn with_quiet_dependencies(filter: &str) -> String {
    if filter.contains("async_nats") { filter.to_owned() } else { format!("{filter},async_nats=warn") }
}

/// Spans always get trace ids (so context propagates and logs can be correlated); they are
/// exported only when an OTLP endpoint is configured.
fn tracer_provider(endpoint: Option<&str>, service: &'static str) -> SdkTracerProvider {
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service).build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let Some(endpoint) = endpoint.filter(|e| !e.is_empty()) else { return builder.build() };
    use opentelemetry_otlp::WithExportConfig as _;
    match opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint).build() {
        Ok(exporter) => builder.with_batch_exporter(exporter).build(),
        Err(err) => {
            eprintln!("OTEL_EXPORTER_OTLP_ENDPOINT={endpoint:?}: cannot export traces ({err}); continuing without");
            builder.build()
        }
    }
}

/// The W3C trace context (`traceparent`, `tracestate`) in and out of NATS and HTTP headers.
pub mod trace_context {
    use opentelemetry::propagation::{Extractor, Injector};
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    struct NatsHeaders<'a>(&'a mut async_nats::HeaderMap);

    impl Injector for NatsHeaders<'_> {
        fn set(&mut self, key: &str, value: String) {
            self.0.insert(key, value.as_str());
        }
    }

    struct ReadNatsHeaders<'a>(&'a async_nats::HeaderMap);

    impl Extractor for ReadNatsHeaders<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).map(async_nats::HeaderValue::as_str)
        }

        fn keys(&self) -> Vec<&str> {
            self.0.iter().map(|(name, _)| name.as_ref()).collect()
        }
    }

    struct HttpHeaders<'a>(&'a http::HeaderMap);

    impl Extractor for HttpHeaders<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|value| value.to_str().ok())
        }

        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(http::HeaderName::as_str).collect()
        }
    }

    /// Adds the current span's trace context to headers of a message about to be published.
    pub fn inject_current(headers: &mut async_nats::HeaderMap) {
        let context = tracing::Span::current().context();
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut NatsHeaders(headers))
        });
    }

    /// Makes `span` a child of the trace context in a consumed message's headers, if any.
    pub fn follow_nats(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
        if let Some(headers) = headers {
            let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
                propagator.extract(&ReadNatsHeaders(headers))
            });
            let _ = span.set_parent(parent);
        }
    }

    /// Links `span` to the trace context in a consumed message's headers, if any (for spans that
    /// handle many messages, such as a batch).
    pub fn link_nats(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
        use opentelemetry::trace::TraceContextExt as _;
        if let Some(headers) = headers {
            let context = opentelemetry::global::get_text_map_propagator(|propagator| {
                propagator.extract(&ReadNatsHeaders(headers))
            });
            let linked = context.span().span_context().clone();
            if linked.is_valid() {
                span.add_link(linked);
            }
        }
    }

    /// Makes `span` a child of the trace context of an incoming HTTP or gRPC request, if any.
    pub fn follow_http(span: &tracing::Span, headers: &http::HeaderMap) {
        let parent =
            opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&HttpHeaders(headers)));
        let _ = span.set_parent(parent);
    }

    /// The trace id of `span`, as 32 hex digits ("000…" when it has none).
    pub fn trace_id(span: &tracing::Span) -> String {
        use opentelemetry::trace::TraceContextExt as _;
        span.context().span().span_context().trace_id().to_string()
    }

    /// Middleware: one span per request, continuing the caller's trace (W3C `traceparent`).
    pub async fn layer(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
        use tracing::Instrument as _;
        let span = tracing::info_span!("request", method = %request.method(), path = %request.uri().path());
        follow_http(&span, request.headers());
        next.run(request).instrument(span).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn async_nats_event_noise_is_turned_down_unless_asked_for() {
        assert_eq!(with_quiet_dependencies("info"), "info,async_nats=warn");
        assert_eq!(with_quiet_dependencies("debug,async_nats=trace"), "debug,async_nats=trace");
    }

    #[test]
    fn a_span_context_round_trips_through_nats_headers() {
        let args = TelemetryArgs { log_filter: "info".into(), log_format: "json".into(), otlp_endpoint: None };
        let _guard = init(&args, "test");
        let outer = tracing::info_span!("request");
        let mut headers = async_nats::HeaderMap::new();
        outer.in_scope(|| trace_context::inject_current(&mut headers));
        let traceparent = headers.get("traceparent").map(|v| v.as_str().to_owned()).expect("injected");
        assert_eq!(traceparent.split('-').nth(1), Some(trace_context::trace_id(&outer).as_str()));

        let consumer = tracing::info_span!("dispatch");
        trace_context::follow_nats(&consumer, Some(&headers));
        assert_eq!(
            trace_context::trace_id(&consumer),
            trace_context::trace_id(&outer),
            "the consumer continues the trace"
        );
    }
}
