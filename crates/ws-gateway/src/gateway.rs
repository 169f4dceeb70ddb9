//! What every connection of a replica shares: the hub, the replay sources, the authenticator,
//! the limits, the connection caps (per replica, per tenant, per subject), the counters behind
//! `/ws/stats`, and the shutdown token that drains connections.
//!
//! A connection is counted when it is admitted, before the upgrade or the SSE response: an
//! [`Admission`] holds its place under every cap and gives it back when dropped, so the live count
//! can never exceed a cap, whatever happens between admission and close.

use crate::hub::Hub;
use crate::replay::Sources;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use runcast_contract::{EntityId, StreamKind};
use runcast_runtime::auth::{Action, AuthError, Authenticator, Principal, Role, json_error};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Per-connection limits and timings (all from the configuration).
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub max_subscriptions: usize,
    pub max_messages_per_second: u32,
    pub max_frame_bytes: usize,
    pub queue_capacity: usize,
    pub ping_interval: Duration,
    pub write_timeout: Duration,
    pub sse_heartbeat: Duration,
    /// Empty: any origin.
    pub allowed_origins: Vec<String>,
    /// Bytes of events queued per connection before `resync` (besides `queue_capacity`).
    pub queue_bytes: usize,
    /// Connections (WebSocket + SSE) this replica holds at most; beyond: 503.
    pub max_connections: usize,
    /// Connections of one tenant on this replica; beyond: 429.
    pub max_connections_per_tenant: usize,
    /// Connections of one subject (`sub`) of a tenant on this replica; beyond: 429.
    pub max_connections_per_subject: usize,
    /// Replays (and snapshots) one connection runs at once; its other resumes wait their turn.
    pub max_replays_per_connection: usize,
    /// A draining replica tells each client to wait a delay drawn uniformly from this window
    /// before it reconnects (`retry_after_ms` of `reconnect`), so its clients reach the other
    /// replicas spread over the window rather than all at once. Zero: reconnect at once.
    pub drain_reconnect_window: Duration,
    /// WebSocket messages compressed (`permessage-deflate`) for clients that offer it.
    pub compression: bool,
}

/// Seconds a refused connection is told to wait (`Retry-After`).
const RETRY_AFTER_SECONDS: &str = "5";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    Sse,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::Sse => "sse",
        }
    }
}

pub(crate) struct Gateway {
    pub hub: Arc<Hub>,
    pub sources: Sources,
    pub authenticator: Authenticator,
    pub limits: Limits,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    next_connection: AtomicU64,
    /// Admitted connections (the replica cap is checked against this before anything else).
    admitted: AtomicUsize,
    connections: Mutex<Connections>,
    resyncs: AtomicU64,
    replays: AtomicU64,
}

#[derive(Default, Clone, Copy)]
struct Counts {
    websocket: usize,
    sse: usize,
}

impl Counts {
    fn total(self) -> usize {
        self.websocket + self.sse
    }

    fn slot(&mut self, transport: Transport) -> &mut usize {
        match transport {
            Transport::WebSocket => &mut self.websocket,
            Transport::Sse => &mut self.sse,
        }
    }
}

#[derive(Default)]
struct Connections {
    all: Counts,
    tenants: HashMap<EntityId, Counts>,
    /// Connections per (tenant, subject).
    users: HashMap<(EntityId, String), usize>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    Draining,
    Origin(String),
    Auth(AuthError),
    /// The replica holds `RUNCAST_WS_MAX_CONNECTIONS` connections.
    ReplicaFull(usize),
    /// The tenant holds `RUNCAST_WS_MAX_CONNECTIONS_PER_TENANT` connections on this replica.
    TenantFull(usize),
    /// The subject holds `RUNCAST_WS_MAX_CONNECTIONS_PER_SUBJECT` connections on this replica.
    SubjectFull(usize),
}

impl Refusal {
    /// The one place a refusal becomes an HTTP answer.
    pub(crate) fn into_response(self) -> Response {
        let retry = |status, code: &str, message: &str| {
            let mut response = json_error(status, code, message);
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
            response
        };
        match self {
            Self::Draining => json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "DRAINING",
                "this replica is shutting down; connect to another one",
            ),
            Self::Origin(origin) => json_error(
                StatusCode::FORBIDDEN,
                "ORIGIN_NOT_ALLOWED",
                &format!("origin {origin} is not in RUNCAST_WS_ALLOWED_ORIGINS"),
            ),
            Self::Auth(err) => err.into_response(),
            // The same code as the api's overload answer; the status says "another replica".
            Self::ReplicaFull(cap) => retry(
                StatusCode::SERVICE_UNAVAILABLE,
                "RESOURCE_EXHAUSTED",
                &format!(
                    "this replica holds its maximum of {cap} connections (RUNCAST_WS_MAX_CONNECTIONS); retry later or elsewhere"
                ),
            ),
            Self::TenantFull(cap) => retry(
                StatusCode::TOO_MANY_REQUESTS,
                "RESOURCE_EXHAUSTED",
                &format!(
                    "the tenant holds its maximum of {cap} connections on this replica (RUNCAST_WS_MAX_CONNECTIONS_PER_TENANT)"
                ),
            ),
            Self::SubjectFull(cap) => retry(
                StatusCode::TOO_MANY_REQUESTS,
                "RESOURCE_EXHAUSTED",
                &format!(
                    "this subject holds its maximum of {cap} connections on this replica (RUNCAST_WS_MAX_CONNECTIONS_PER_SUBJECT)"
                ),
            ),
        }
    }
}

/// An admitted connection: its principal and its place under every cap, given back on drop.
pub(crate) struct Admission {
    gateway: Arc<Gateway>,
    /// Shared with the connection's session (every connection carries one).
    pub principal: Arc<Principal>,
    pub transport: Transport,
    /// For logs.
    pub connection: u64,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.gateway.release(self.transport, &self.principal);
    }
}

impl Gateway {
    pub(crate) fn new(
        hub: Arc<Hub>,
        sources: Sources,
        authenticator: Authenticator,
        limits: Limits,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        Self {
            hub,
            sources,
            authenticator,
            limits,
            shutdown,
            tasks,
            next_connection: AtomicU64::new(1),
            admitted: AtomicUsize::new(0),
            connections: Mutex::default(),
            resyncs: AtomicU64::new(0),
            replays: AtomicU64::new(0),
        }
    }

    fn connections(&self) -> std::sync::MutexGuard<'_, Connections> {
        self.connections.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a place under the per-tenant and per-subject caps (the replica's is already held).
    fn count_in(&self, transport: Transport, principal: &Principal) -> Result<(), Refusal> {
        let limits = &self.limits;
        let mut connections = self.connections();
        let tenant = connections.tenants.get(&principal.tenant).copied().unwrap_or_default();
        if tenant.total() >= limits.max_connections_per_tenant {
            return Err(Refusal::TenantFull(limits.max_connections_per_tenant));
        }
        let user = (principal.tenant.clone(), principal.subject.clone());
        if connections.users.get(&user).copied().unwrap_or(0) >= limits.max_connections_per_subject {
            return Err(Refusal::SubjectFull(limits.max_connections_per_subject));
        }
        *connections.all.slot(transport) += 1;
        *connections.tenants.entry(principal.tenant.clone()).or_default().slot(transport) += 1;
        *connections.users.entry(user).or_insert(0) += 1;
        drop(connections);
        metrics::gauge!("runcast_ws_connections", "transport" => transport.name()).increment(1.0);
        Ok(())
    }

    fn release(&self, transport: Transport, principal: &Principal) {
        let mut connections = self.connections();
        let slot = connections.all.slot(transport);
        *slot = slot.saturating_sub(1);
        if let Some(tenant) = connections.tenants.get_mut(&principal.tenant) {
            let slot = tenant.slot(transport);
            *slot = slot.saturating_sub(1);
            if tenant.total() == 0 {
                connections.tenants.remove(&principal.tenant);
            }
        }
        let user = (principal.tenant.clone(), principal.subject.clone());
        if let Some(count) = connections.users.get_mut(&user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                connections.users.remove(&user);
            }
        }
        drop(connections);
        self.admitted.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("runcast_ws_connections", "transport" => transport.name()).decrement(1.0);
    }

    /// Takes a place under the replica cap; `false` when it is full.
    fn reserve(&self) -> bool {
        let cap = self.limits.max_connections;
        self.admitted.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < cap).then_some(n + 1)).is_ok()
    }

    pub(crate) fn count_resync(&self) {
        self.resyncs.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("runcast_ws_resyncs_total").increment(1);
    }

    pub(crate) fn count_replay(&self, outcome: &crate::replay::Outcome) {
        self.replays.fetch_add(1, Ordering::Relaxed);
        let recovered = if outcome.recovered { "true" } else { "false" };
        metrics::counter!("runcast_ws_replays_total", "recovered" => recovered).increment(1);
        metrics::counter!("runcast_ws_resumes_total", "source" => outcome.source().as_str()).increment(1);
        metrics::histogram!("runcast_ws_replayed_events").record(outcome.replayed as f64);
    }

    /// `/ws/stats` as `principal` may see it: its tenant's connections and subscriptions, or
    /// everything (every tenant, replica-wide counters) for role `admin`.
    pub(crate) fn stats(&self, principal: &Principal) -> serde_json::Value {
        let admin = principal.roles.contains(&Role::Admin);
        let tenant = (!admin).then_some(&principal.tenant);
        let (counts, users, tenants) = {
            let connections = self.connections();
            match tenant {
                None => (connections.all, connections.users.len(), connections.tenants.len()),
                Some(tenant) => (
                    connections.tenants.get(tenant).copied().unwrap_or_default(),
                    connections.users.keys().filter(|(t, _)| t == tenant).count(),
                    1,
                ),
            }
        };
        let subscriptions = self.hub.subscriptions_by_kind(tenant);
        let streams: serde_json::Map<String, serde_json::Value> = StreamKind::ALL
            .into_iter()
            .map(|kind| {
                (
                    kind.base_name().to_owned(),
                    serde_json::json!({
                        "head": self.hub.head(kind),
                        "epoch": &*self.hub.epoch(kind),
                        "live": self.hub.is_live(kind),
                    }),
                )
            })
            .collect();
        let mut stats = serde_json::json!({
            "scope": if admin { "replica" } else { "tenant" },
            "tenant": principal.tenant.as_str(),
            "connections": {"websocket": counts.websocket, "sse": counts.sse, "total": counts.total()},
            "users": users,
            "subscriptions": subscriptions,
            "subscriptions_total": subscriptions.values().sum::<usize>(),
            "streams": streams,
            "draining": self.shutdown.is_cancelled(),
        });
        if admin && let Some(object) = stats.as_object_mut() {
            object.insert("tenants".into(), tenants.into());
            object.insert("events_dispatched".into(), self.hub.dispatched().into());
            object.insert("resyncs".into(), self.resyncs.load(Ordering::Relaxed).into());
            object.insert("replays".into(), self.replays.load(Ordering::Relaxed).into());
            object.insert(
                "limits".into(),
                serde_json::json!({
                    "max_connections": self.limits.max_connections,
                    "max_connections_per_tenant": self.limits.max_connections_per_tenant,
                    "max_connections_per_subject": self.limits.max_connections_per_subject,
                }),
            );
        }
        stats
    }

    /// Authentication at upgrade: `Authorization: Bearer`, `X-API-Key`, or `?token=` (browsers
    /// cannot set headers on a WebSocket or EventSource), then the read permission.
    pub(crate) fn authenticate(&self, headers: &HeaderMap, query_token: Option<&str>) -> Result<Principal, AuthError> {
        let has_header = headers.contains_key(header::AUTHORIZATION) || headers.contains_key("x-api-key");
        let principal = match query_token {
            Some(token) if !has_header => self.authenticator.verify_token(token)?,
            _ => self.authenticator.authenticate_headers(headers)?,
        };
        principal.require(Action::Read)?;
        Ok(principal)
    }

    /// Everything a new WebSocket or SSE connection must pass, in order: the replica is not
    /// draining, the browser origin is allowed, the replica has room (checked before the
    /// credentials, so a full replica sheds load cheaply), the credentials verify with read
    /// permission, the tenant and the subject have room. The [`Admission`] holds the places.
    pub(crate) fn admit(
        self: &Arc<Self>,
        headers: &HeaderMap,
        query_token: Option<&str>,
        transport: Transport,
    ) -> Result<Admission, Refusal> {
        if self.shutdown.is_cancelled() {
            return Err(Refusal::Draining);
        }
        self.check_origin(headers)?;
        if !self.reserve() {
            metrics::counter!("runcast_ws_refused_total", "reason" => "replica").increment(1);
            return Err(Refusal::ReplicaFull(self.limits.max_connections));
        }
        let counted = self
            .authenticate(headers, query_token)
            .map_err(Refusal::Auth)
            .and_then(|principal| self.count_in(transport, &principal).map(|()| principal));
        match counted {
            Ok(principal) => Ok(Admission {
                gateway: self.clone(),
                principal: Arc::new(principal),
                transport,
                connection: self.next_connection.fetch_add(1, Ordering::Relaxed),
            }),
            Err(refusal) => {
                self.admitted.fetch_sub(1, Ordering::AcqRel);
                let reason = match refusal {
                    Refusal::TenantFull(_) => "tenant",
                    Refusal::SubjectFull(_) => "subject",
                    _ => "auth",
                };
                metrics::counter!("runcast_ws_refused_total", "reason" => reason).increment(1);
                Err(refusal)
            }
        }
    }

    /// Refuses a cross-origin browser connection whose origin is not allowed.
    pub(crate) fn check_origin(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        if self.limits.allowed_origins.is_empty() {
            return Ok(());
        }
        // No Origin header: not a browser, nothing to protect against.
        let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
            return Ok(());
        };
        if self.limits.allowed_origins.iter().any(|allowed| allowed == origin) {
            Ok(())
        } else {
            Err(Refusal::Origin(origin.to_owned()))
        }
    }
}
