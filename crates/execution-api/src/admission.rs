//! Admission control on both listeners: at most `max_concurrent` requests in flight each; beyond
//! that a request is refused at once, never queued (`RESOURCE_EXHAUSTED` for gRPC, 503 with
//! `Retry-After` for REST), and a request that takes longer than `timeout` to answer is cut
//! (`DEADLINE_EXCEEDED` / 504).
//!
//! Once authenticated, a request also takes one of its tenant's slots: at most `per_tenant` in
//! flight per tenant and listener, beyond which it is refused at once too (`RESOURCE_EXHAUSTED` /
//! 429 with `Retry-After`). One tenant's flood (a retry storm, a runaway loop) then meets its own
//! limit while the replica's other slots stay for the other tenants.
//!
//! It is tower's concurrency limit + load shedding + timeout in one middleware because one
//! exception matters: `AppendLogs` streams its request for as long as the agent writes logs, so it
//! holds a slot but has no deadline. Streaming responses (`WatchExecution`) release their slot once
//! the stream has started.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use runcast_contract::EntityId;
use runcast_runtime::auth::Principal;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// gRPC methods whose request is a stream of unbounded length.
const CLIENT_STREAMING: &[&str] = &["/runcast.v1.ExecutionService/AppendLogs"];

#[derive(Clone, Debug)]
pub(crate) struct Admission {
    listener: &'static str,
    slots: Arc<Semaphore>,
    tenants: Arc<TenantSlots>,
    timeout: Duration,
}

impl Admission {
    /// `per_tenant`: a tenant's share of the listener's `max_concurrent` slots (at most all).
    pub(crate) fn new(listener: &'static str, max_concurrent: usize, per_tenant: usize, timeout: Duration) -> Self {
        Self {
            listener,
            slots: Arc::new(Semaphore::new(max_concurrent)),
            tenants: Arc::new(TenantSlots::new(per_tenant.min(max_concurrent))),
            timeout,
        }
    }
}

/// Requests in flight per tenant. Only tenants with a request in flight have an entry, so it holds
/// at most as many as the listener has slots.
#[derive(Debug)]
struct TenantSlots {
    limit: usize,
    in_flight: Mutex<HashMap<EntityId, usize>>,
    /// When each refused tenant was last named in a warning.
    warned: quick_cache::sync::Cache<EntityId, Instant>,
}

/// A tenant refused at its share is named in a warning at most this often, whatever its flood.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// Refused tenants whose last warning is remembered (the least recently refused forgotten beyond).
const WARNED_TENANTS: usize = 1_000;

impl TenantSlots {
    fn new(limit: usize) -> Self {
        Self { limit, in_flight: Mutex::default(), warned: quick_cache::sync::Cache::new(WARNED_TENANTS) }
    }

    /// Whether a refusal of `tenant` at `now` is to be logged: its first, then one per
    /// [`WARN_EVERY`].
    fn warn_now(&self, tenant: &EntityId, now: Instant) -> bool {
        if self.warned.get(tenant).is_some_and(|at| now.saturating_duration_since(at) < WARN_EVERY) {
            return false;
        }
        self.warned.insert(tenant.clone(), now);
        true
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<EntityId, usize>> {
        self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One of `tenant`'s slots, given back on drop; `None` when it holds them all.
    fn try_take(self: &Arc<Self>, tenant: EntityId) -> Option<TenantSlot> {
        let mut in_flight = self.in_flight();
        match in_flight.get_mut(&tenant) {
            Some(count) if *count >= self.limit => return None,
            Some(count) => *count += 1,
            None => {
                in_flight.insert(tenant.clone(), 1);
            }
        }
        drop(in_flight);
        Some(TenantSlot { slots: self.clone(), tenant })
    }
}

struct TenantSlot {
    slots: Arc<TenantSlots>,
    tenant: EntityId,
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        let mut in_flight = self.slots.in_flight();
        if let Some(count) = in_flight.get_mut(&self.tenant) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                in_flight.remove(&self.tenant);
            }
        }
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

/// Runs inside authentication: the request's tenant takes one of its slots for as long as the
/// request runs (a streaming response's until it starts, an upload's until it ends).
pub(crate) async fn admit_tenant(State(admission): State<Admission>, request: Request, next: Next) -> Response {
    // Public paths (health, reflection) carry no principal and have no tenant.
    let Some(tenant) = request.extensions().get::<Principal>().map(|principal| principal.tenant.clone()) else {
        return next.run(request).await;
    };
    let Some(slot) = admission.tenants.try_take(tenant.clone()) else {
        metrics::counter!("runcast_api_tenant_requests_shed_total", "listener" => admission.listener).increment(1);
        if admission.tenants.warn_now(&tenant, Instant::now()) {
            tracing::warn!(
                %tenant,
                listener = admission.listener,
                limit = admission.tenants.limit,
                "a tenant's requests are refused at its share of the request slots \
                 (RUNCAST_MAX_CONCURRENT_REQUESTS_PER_TENANT): a runaway client or a retry storm? \
                 (said once a minute per tenant)"
            );
        }
        return refusal(is_grpc(&request), Refusal::TenantOverloaded(admission.tenants.limit));
    };
    let response = next.run(request).await;
    drop(slot);
    response
}

/// When a request refused for want of a slot may try again (`Retry-After`, gRPC's retry pushback).
const RETRY_AFTER_MS: u32 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Overloaded,
    TenantOverloaded(usize),
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
        // 429, not 503: the replica has room, this tenant is using its share.
        Refusal::TenantOverloaded(limit) => (
            format!(
                "the tenant has its maximum of {limit} requests in flight on this replica \
                 (RUNCAST_MAX_CONCURRENT_REQUESTS_PER_TENANT): retry in a moment"
            ),
            tonic::Code::ResourceExhausted,
            "RESOURCE_EXHAUSTED",
            StatusCode::TOO_MANY_REQUESTS,
        ),
        Refusal::TimedOut(after) => (
            format!("the request did not complete within {after:?} (RUNCAST_REQUEST_TIMEOUT)"),
            tonic::Code::DeadlineExceeded,
            "DEADLINE_EXCEEDED",
            StatusCode::GATEWAY_TIMEOUT,
        ),
    };
    let try_again = matches!(refusal, Refusal::Overloaded | Refusal::TenantOverloaded(_));
    if grpc {
        let mut status = tonic::Status::new(status, message);
        if try_again {
            status.metadata_mut().insert(runcast_contract::client::RETRY_PUSHBACK, RETRY_AFTER_MS.into());
        }
        return status.into_http::<axum::body::Body>().into_response();
    }
    let mut response = runcast_runtime::auth::json_error(http_status, code, &message);
    if try_again {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_MS / 1000));
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
    fn a_tenant_holding_its_slots_is_refused_and_the_others_are_not() {
        let slots = Arc::new(TenantSlots::new(2));
        let (flood, quiet) =
            (EntityId::parse("tenant", "flood").expect("id"), EntityId::parse("tenant", "quiet").expect("id"));
        let first = slots.try_take(flood.clone()).expect("first");
        let second = slots.try_take(flood.clone()).expect("second");
        assert!(slots.try_take(flood.clone()).is_none(), "a third while two are in flight");
        let other = slots.try_take(quiet.clone()).expect("another tenant has its own");
        drop(first);
        let third = slots.try_take(flood.clone()).expect("a slot given back is taken again");
        drop((second, third, other));
        assert!(slots.in_flight().is_empty(), "tenants without requests in flight are forgotten");
    }

    #[test]
    fn a_refused_tenant_is_named_once_a_minute_at_most() {
        let slots = TenantSlots::new(1);
        let (flood, other) =
            (EntityId::parse("tenant", "flood").expect("id"), EntityId::parse("tenant", "other").expect("id"));
        let now = Instant::now();
        assert!(slots.warn_now(&flood, now), "its first refusal");
        assert!(!slots.warn_now(&flood, now + Duration::from_secs(59)));
        assert!(slots.warn_now(&other, now + Duration::from_secs(59)), "each tenant its own");
        assert!(slots.warn_now(&flood, now + Duration::from_secs(61)), "a minute later");
    }

    #[test]
    fn a_tenants_share_is_at_most_the_listeners_slots() {
        let admission = Admission::new("rest", 8, 100, Duration::from_secs(1));
        assert_eq!(admission.tenants.limit, 8);
    }

    #[test]
    fn refusals_speak_the_callers_protocol() {
        let tenant = refusal(false, Refusal::TenantOverloaded(4));
        assert_eq!(tenant.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(tenant.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("1"));
        let tenant = refusal(true, Refusal::TenantOverloaded(4));
        assert_eq!(tenant.headers().get("grpc-status").and_then(|v| v.to_str().ok()), Some("8"));
        let pushback = |response: &Response| response.headers().get("grpc-retry-pushback-ms").cloned();
        assert_eq!(pushback(&tenant).as_ref().and_then(|v| v.to_str().ok()), Some("1000"), "says when to try again");
        assert_eq!(pushback(&refusal(true, Refusal::Overloaded)).as_ref().and_then(|v| v.to_str().ok()), Some("1000"));
        assert_eq!(pushback(&refusal(true, Refusal::TimedOut(Duration::from_secs(2)))), None);
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
