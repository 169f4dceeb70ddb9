//! Admission control on both listeners: at most `max_concurrent` requests in flight each; beyond
//! that a request is refused at once, never queued (`RESOURCE_EXHAUSTED` for gRPC, 503 with
//! `Retry-After` for REST), and a request that takes longer than `timeout` to answer is cut
//! (`DEADLINE_EXCEEDED` / 504).
//!
//! It is tower's concurrency limit + load shedding + timeout in one middleware because one
//! exception matters: `AppendLogs` streams its request for as long as the agent writes logs, so it
//! holds a slot but has no deadline. Streaming responses (`WatchExecution`) release their slot once
//! the stream has started.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// gRPC methods whose request is a stream of unbounded length.
const CLIENT_STREAMING: &[&str] = &["/runcast.v1.ExecutionService/AppendLogs"];

#[derive(Clone, Debug)]
pub(crate) struct Admission {
    listener: &'static str,
    slots: Arc<Semaphore>,
    timeout: Duration,
}

impl Admission {
    pub(crate) fn new(listener: &'static str, max_concurrent: usize, timeout: Duration) -> Self {
        Self { listener, slots: Arc::new(Semaphore::new(max_concurrent)), timeout }
    }
}

fn is_grpc(request: &Request) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"))
}

/// Whether a request may run without a deadline.
fn unbounded(path: &str) -> bool {
    CLIENT_STREAMING.contains(&path)
}

pub(crate) async fn admit(State(admission): State<Admission>, request: Request, next: Next) -> Response {
    let grpc = is_grpc(&request);
    let Ok(slot) = admission.slots.clone().try_acquire_owned() else {
        metrics::counter!("runcast_api_requests_shed_total", "listener" => admission.listener).increment(1);
        return refusal(grpc, Refusal::Overloaded);
    };
    let response = if unbounded(request.uri().path()) {
        next.run(request).await
    } else {
        match tokio::time::timeout(admission.timeout, next.run(request)).await {
            Ok(response) => response,
            Err(_) => {
                metrics::counter!("runcast_api_requests_timed_out_total", "listener" => admission.listener)
                    .increment(1);
                refusal(grpc, Refusal::TimedOut(admission.timeout))
            }
        }
    };
    drop(slot);
    response
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Overloaded,
    TimedOut(Duration),
}

fn refusal(grpc: bool, refusal: Refusal) -> Response {
    let (message, status, code, http_status) = match refusal {
        Refusal::Overloaded => (
            "the api is at its limit of concurrent requests (RUNCAST_MAX_CONCURRENT_REQUESTS): retry in a moment"
                .to_owned(),
            tonic::Code::ResourceExhausted,
            "RESOURCE_EXHAUSTED",
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        Refusal::TimedOut(after) => (
            format!("the request did not complete within {after:?} (RUNCAST_REQUEST_TIMEOUT)"),
            tonic::Code::DeadlineExceeded,
            "DEADLINE_EXCEEDED",
            StatusCode::GATEWAY_TIMEOUT,
        ),
    };
    if grpc {
        return tonic::Status::new(status, message).into_http::<axum::body::Body>().into_response();
    }
    let mut response = runcast_runtime::auth::json_error(http_status, code, &message);
    if refusal == Refusal::Overloaded {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_client_streaming_methods_run_without_a_deadline() {
        assert!(unbounded("/runcast.v1.ExecutionService/AppendLogs"));
        assert!(!unbounded("/runcast.v1.ExecutionService/WatchExecution"));
        assert!(!unbounded("/api/v1/executions"));
    }

    #[test]
    fn refusals_speak_the_callers_protocol() {
        let rest = refusal(false, Refusal::Overloaded);
        assert_eq!(rest.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(rest.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("1"));
        let grpc = refusal(true, Refusal::Overloaded);
        assert_eq!(grpc.status(), StatusCode::OK, "gRPC errors travel in grpc-status");
        assert_eq!(grpc.headers().get("grpc-status").and_then(|v| v.to_str().ok()), Some("8"));
        let late = refusal(false, Refusal::TimedOut(Duration::from_secs(2)));
        assert_eq!(late.status(), StatusCode::GATEWAY_TIMEOUT);
        let late = refusal(true, Refusal::TimedOut(Duration::from_secs(2)));
        assert_eq!(late.headers().get("grpc-status").and_then(|v| v.to_str().ok()), Some("4"));
    }
}
