//! The ops endpoints of the persister: the shared `/healthz` and `/metrics`, and a `/readyz` that
//! adds the lag of each stream to the shared readiness report:
//! `{"ready": true, "checks": {...}, "details": {"lag": {"EXECUTIONS": 0, ...}}}`.
//! Lag is information, not a check: a persister catching up is still ready.

use crate::lag::LagBoard;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use runcast_runtime::ops::{self, Readiness};

#[derive(Clone)]
struct Ops {
    readiness: Readiness,
    lag: LagBoard,
}

pub(crate) fn router(readiness: Readiness, lag: LagBoard) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(|| async { ops::render_metrics() }))
        .with_state(Ops { readiness, lag })
}

async fn readyz(State(state): State<Ops>) -> Response {
    let (ready, checks) = state.readiness.report();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({
        "ready": ready,
        "checks": checks,
        "details": { "lag": state.lag.snapshot() },
    });
    (status, axum::Json(body)).into_response()
}
