//! Logs and traces. Logs go through `tracing`: JSON lines when stdout is not a terminal
//! (collectors, tests), readable text on a terminal. Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//! set, every `tracing` span is also an OpenTelemetry span, exported over OTLP/gRPC; without it no
//! OpenTelemetry span is made at all. Either way the W3C trace context travels from gRPC/HTTP
//! requests through NATS headers to the persister and the gateway (see [`trace_context`]), so one
//! trace shows a command from the caller to the clients.

use crate::config::TelemetryArgs;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Set once by [`init`]: whether spans leave this process.
static TRACES_EXPORTED: AtomicBool = AtomicBool::new(false);

/// Whether spans leave this process (an OTLP endpoint is set and its exporter was built).
///
/// A span per request or per event costs more than the rest of a small request (the api spent a
/// fifth of its CPU per `ReportProgress` on its request span): without an exporter nobody would
/// ever see it, so those spans are then made at DEBUG (for logs only) and the trace context still
/// travels (see [`trace_context::layer`]). Nor is the OpenTelemetry layer installed then: it kept
/// span data of its own for every live span (1.4 KiB for each of the gateway's connections, whose
/// session span lives as long as the connection) and read the clock at every poll of an
/// instrumented future, for nothing.
pub fn traces_exported() -> bool {
    TRACES_EXPORTED.load(Ordering::Relaxed)
}

/// A span that is recorded (INFO) when traces leave the process, else a DEBUG one, for logs (see
/// [`traces_exported`]). Takes what `tracing::info_span!` takes.
#[macro_export]
macro_rules! traced_span {
    ($($span:tt)+) => {
        if $crate::telemetry::traces_exported() {
            ::tracing::span!(::tracing::Level::INFO, $($span)+)
        } else {
            ::tracing::span!(::tracing::Level::DEBUG, $($span)+)
        }
    };
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
    let (provider, exported) = tracer_provider(args.otlp_endpoint.as_deref(), service);
    let traces = exported.then(|| tracing_opentelemetry::layer().with_tracer(provider.tracer(service)));
    let installed = tracing_subscriber::registry().with(filter).with(logs).with(traces).try_init().is_ok();
    if installed {
        TRACES_EXPORTED.store(exported, Ordering::Relaxed);
    }
    TelemetryGuard(installed.then_some(provider))
}

/// async-nats logs every client event (each failed reconnect attempt) at INFO: keep it at WARN
/// unless the filter names it; our own connection log says what matters, with the URL.
fn with_quiet_dependencies(filter: &str) -> String {
    if filter.contains("async_nats") { filter.to_owned() } else { format!("{filter},async_nats=warn") }
}

/// The tracer provider, exporting when an OTLP endpoint is configured; returns it and whether it
/// exports.
fn tracer_provider(endpoint: Option<&str>, service: &'static str) -> (SdkTracerProvider, bool) {
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service).build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let Some(endpoint) = endpoint.filter(|e| !e.is_empty()) else { return (builder.build(), false) };
    use opentelemetry_otlp::WithExportConfig as _;
    match opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint).build() {
        Ok(exporter) => (builder.with_batch_exporter(exporter).build(), true),
        Err(err) => {
            eprintln!("OTEL_EXPORTER_OTLP_ENDPOINT={endpoint:?}: cannot export traces ({err}); continuing without");
            (builder.build(), false)
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

    tokio::task_local! {
        /// The trace context of the request being served when its span is not recorded (see
        /// [`layer`]): what [`inject_current`] gives the events it publishes.
        static UNRECORDED_REQUEST: opentelemetry::Context;
    }

    /// Adds the trace context of the request being served (else of the current span) to headers
    /// of a message about to be published.
    pub fn inject_current(headers: &mut async_nats::HeaderMap) {
        let context = UNRECORDED_REQUEST.try_with(Clone::clone).unwrap_or_else(|_| tracing::Span::current().context());
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut NatsHeaders(headers))
        });
    }

    /// Makes `span` a child of the trace context in a consumed message's headers, if any (nothing
    /// to do for a span that is not recorded).
    pub fn follow_nats(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
        if span.is_disabled() {
            return;
        }
        if let Some(headers) = headers {
            let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
                propagator.extract(&ReadNatsHeaders(headers))
            });
            let _ = span.set_parent(parent);
        }
    }

    /// Links `span` to the trace context in a consumed message's headers, if any (for spans that
    /// handle many messages, such as a batch). Links only show in exported spans: without an
    /// exporter this does nothing.
    pub fn link_nats(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
        use opentelemetry::trace::TraceContextExt as _;
        if !super::traces_exported() || span.is_disabled() {
            return;
        }
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

    /// Middleware: the request continues the caller's trace (W3C `traceparent`), or starts one.
    /// With an exporter that is an INFO span. Without one, the request gets the ids of a span
    /// (a span id of its own under the caller's trace) but no span is recorded, which costs a
    /// fraction of one, and the events it publishes carry them all the same; its span is then a
    /// DEBUG one, for logs.
    pub async fn layer(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
        use tracing::Instrument as _;
        if super::traces_exported() {
            let span = tracing::info_span!("request", method = %request.method(), path = %request.uri().path());
            follow_http(&span, request.headers());
            return next.run(request).instrument(span).await;
        }
        let context = unrecorded_child(request.headers());
        let span = tracing::debug_span!("request", method = %request.method(), path = %request.uri().path());
        UNRECORDED_REQUEST.scope(context, next.run(request).instrument(span)).await
    }

    /// The trace context of a request whose span is not recorded: the caller's trace and sampling
    /// decision (when its `traceparent` is valid) or a new sampled trace, and a new span id.
    fn unrecorded_child(headers: &http::HeaderMap) -> opentelemetry::Context {
        use opentelemetry::trace::{SpanContext, TraceContextExt as _, TraceFlags, TraceState};
        use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator};
        let ids = RandomIdGenerator::default();
        let caller = headers
            .contains_key("traceparent")
            .then(|| {
                let context = opentelemetry::global::get_text_map_propagator(|propagator| {
                    propagator.extract(&HttpHeaders(headers))
                });
                context.span().span_context().clone()
            })
            .filter(SpanContext::is_valid);
        let (trace_id, flags, state) = match caller {
            Some(caller) => (caller.trace_id(), caller.trace_flags(), caller.trace_state().clone()),
            None => (ids.new_trace_id(), TraceFlags::SAMPLED, TraceState::default()),
        };
        let own = SpanContext::new(trace_id, ids.new_span_id(), flags, false, state);
        opentelemetry::Context::new().with_remote_span_context(own)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

        /// The `traceparent` an event published while serving a request with `headers` carries.
        fn published_traceparent(headers: &[(&'static str, &str)]) -> String {
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
            let mut request = http::HeaderMap::new();
            for (name, value) in headers {
                request.insert(*name, value.parse().expect("ascii"));
            }
            let mut published = async_nats::HeaderMap::new();
            UNRECORDED_REQUEST.sync_scope(unrecorded_child(&request), || inject_current(&mut published));
            published.get("traceparent").map(|value| value.as_str().to_owned()).expect("a traceparent")
        }

        #[test]
        fn an_unrecorded_request_continues_the_callers_trace_with_a_span_id_of_its_own() {
            let caller = format!("00-{CALLER_TRACE}-00f067aa0ba902b7-01");
            let published = published_traceparent(&[("traceparent", &caller)]);
            let parts: Vec<&str> = published.split('-').collect();
            assert_eq!(parts.len(), 4, "{published}");
            assert_eq!(parts[1], CALLER_TRACE);
            assert_ne!(parts[2], "00f067aa0ba902b7");
            assert_eq!(parts[3], "01");
            // The caller's sampling decision is kept.
            let unsampled =
                published_traceparent(&[("traceparent", &format!("00-{CALLER_TRACE}-00f067aa0ba902b7-00"))]);
            assert_eq!(unsampled.split('-').nth(3), Some("00"), "{unsampled}");
        }

        #[test]
        fn an_unrecorded_request_without_a_valid_caller_trace_starts_a_sampled_one() {
            for headers in [
                vec![],
                vec![("traceparent", "00-not-a-trace-01")],
                vec![("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01")],
            ] {
                let published = published_traceparent(&headers);
                let parts: Vec<&str> = published.split('-').collect();
                assert_eq!(parts.len(), 4, "{published}");
                assert_ne!(parts[1], "0".repeat(32), "a valid trace for {headers:?}");
                assert_eq!(parts[3], "01", "{headers:?}");
            }
            assert_ne!(published_traceparent(&[]), published_traceparent(&[]), "a new trace per request");
        }
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
        // What `init` installs with an exporter, minus the exporter.
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        let provider = SdkTracerProvider::builder().build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
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
        });
    }

    #[test]
    fn without_an_exporter_spans_are_for_logs_only() {
        let args = TelemetryArgs { log_filter: "info".into(), log_format: "json".into(), otlp_endpoint: None };
        let _guard = init(&args, "test");
        assert!(!traces_exported());
        let span = tracing::info_span!("session");
        assert!(!span.is_disabled(), "the span is still there, for the logs inside it");
        assert_eq!(trace_context::trace_id(&span), "0".repeat(32), "but no OpenTelemetry span behind it");
    }
}
