//! What every connection of a replica shares: the hub, the replay sources, the authenticator,
//! the limits, the replica-wide counters behind `/ws/stats`, and the shutdown token that drains
//! connections.

use crate::hub::Hub;
use crate::replay::Sources;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use runcast_contract::StreamKind;
use runcast_runtime::auth::{Action, AuthError, AuthErrorKind, Authenticator, Principal, json_error};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Per-connection limits and timings (all from the configuration).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_subscriptions: usize,
    pub max_messages_per_second: u32,
    pub max_frame_bytes: usize,
    pub queue_capacity: usize,
    pub ping_interval: Duration,
    pub write_timeout: Duration,
    pub sse_heartbeat: Duration,
    /// Empty: any origin.
    pub allowed_origins: Vec<String>,
}

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

pub struct Gateway {
    pub hub: Arc<Hub>,
    pub sources: Sources,
    pub authenticator: Authenticator,
    pub limits: Limits,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    next_connection: AtomicU64,
    connections: Mutex<Connections>,
    resyncs: AtomicU64,
    replays: AtomicU64,
}

#[derive(Default)]
struct Connections {
    websocket: usize,
    sse: usize,
    /// Connections per subject.
    users: HashMap<String, usize>,
}

impl Gateway {
    pub fn new(
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
            connections: Mutex::default(),
            resyncs: AtomicU64::new(0),
            replays: AtomicU64::new(0),
        }
    }

    fn connections(&self) -> std::sync::MutexGuard<'_, Connections> {
        self.connections.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a connection in; the returned id is for logs.
    pub fn connected(&self, transport: Transport, subject: &str) -> u64 {
        let mut connections = self.connections();
        match transport {
            Transport::WebSocket => connections.websocket += 1,
            Transport::Sse => connections.sse += 1,
        }
        *connections.users.entry(subject.to_owned()).or_insert(0) += 1;
        metrics::gauge!("runcast_ws_connections", "transport" => transport.name()).increment(1.0);
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    pub fn disconnected(&self, transport: Transport, subject: &str) {
        let mut connections = self.connections();
        match transport {
            Transport::WebSocket => connections.websocket = connections.websocket.saturating_sub(1),
            Transport::Sse => connections.sse = connections.sse.saturating_sub(1),
        }
        if let Some(count) = connections.users.get_mut(subject) {
            *count -= 1;
            if *count == 0 {
                connections.users.remove(subject);
            }
        }
        metrics::gauge!("runcast_ws_connections", "transport" => transport.name()).decrement(1.0);
    }

    pub fn count_resync(&self) {
        self.resyncs.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("runcast_ws_resyncs_total").increment(1);
    }

    pub fn count_replay(&self, recovered: bool, replayed: u64) {
        self.replays.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("runcast_ws_replays_total", "recovered" => if recovered { "true" } else { "false" })
            .increment(1);
        metrics::histogram!("runcast_ws_replayed_events").record(replayed as f64);
    }

    /// `/ws/stats`.
    pub fn stats(&self) -> serde_json::Value {
        let (websocket, sse, users) = {
            let connections = self.connections();
            (connections.websocket, connections.sse, connections.users.len())
        };
        let subscriptions = self.hub.subscriptions_by_kind();
        let streams: serde_json::Map<String, serde_json::Value> = StreamKind::ALL
            .into_iter()
            .map(|kind| {
                (
                    kind.base_name().to_owned(),
                    serde_json::json!({"head": self.hub.head(kind), "live": self.hub.is_live(kind)}),
                )
            })
            .collect();
        serde_json::json!({
            "connections": {"websocket": websocket, "sse": sse, "total": websocket + sse},
            "users": users,
            "subscriptions": subscriptions,
            "subscriptions_total": subscriptions.values().sum::<usize>(),
            "streams": streams,
            "events_dispatched": self.hub.dispatched(),
            "resyncs": self.resyncs.load(Ordering::Relaxed),
            "replays": self.replays.load(Ordering::Relaxed),
            "draining": self.shutdown.is_cancelled(),
        })
    }

    /// Authentication at upgrade: `Authorization: Bearer`, `X-API-Key`, or `?token=` (browsers
    /// cannot set headers on a WebSocket or EventSource), then the read permission.
    pub fn authenticate(&self, headers: &HeaderMap, query_token: Option<&str>) -> Result<Principal, AuthError> {
        let has_header = headers.contains_key(header::AUTHORIZATION) || headers.contains_key("x-api-key");
        let principal = match query_token {
            Some(token) if !has_header => self.authenticator.verify_token(token)?,
            _ => self.authenticator.authenticate_headers(headers)?,
        };
        principal.require(Action::Read)?;
        Ok(principal)
    }

    /// Everything a new WebSocket or SSE connection must pass, in order: the replica is not
    /// draining, the browser origin is allowed, the credentials verify with read permission.
    /// `Err` is the HTTP answer to send instead.
    pub fn admit(&self, headers: &HeaderMap, query_token: Option<&str>) -> Result<Principal, Box<Response>> {
        if self.shutdown.is_cancelled() {
            return Err(Box::new(json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "DRAINING",
                "this replica is shutting down; connect to another one",
            )));
        }
        if let Some(refusal) = self.refuse_origin(headers) {
            return Err(Box::new(refusal));
        }
        self.authenticate(headers, query_token).map_err(|err| Box::new(auth_failure(&err)))
    }

    /// The refusal of a cross-origin browser connection whose origin is not allowed.
    pub fn refuse_origin(&self, headers: &HeaderMap) -> Option<Response> {
        if self.limits.allowed_origins.is_empty() {
            return None;
        }
        // No Origin header: not a browser, nothing to protect against.
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())?;
        if self.limits.allowed_origins.iter().any(|allowed| allowed == origin) {
            None
        } else {
            Some(json_error(
                StatusCode::FORBIDDEN,
                "ORIGIN_NOT_ALLOWED",
                &format!("origin {origin} is not in RUNCAST_WS_ALLOWED_ORIGINS"),
            ))
        }
    }
}

/// The HTTP answer to a failed authentication at upgrade.
fn auth_failure(err: &AuthError) -> Response {
    match err.kind() {
        AuthErrorKind::Unauthenticated => json_error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", &err.to_string()),
        AuthErrorKind::PermissionDenied => json_error(StatusCode::FORBIDDEN, "PERMISSION_DENIED", &err.to_string()),
    }
}
