//! The REST/JSON mirror under `/api/v1` (DESIGN §3): the same requests as gRPC, as JSON with the
//! same snake_case names, the same core, the same errors (`{"error": {"code", "message"}}`).
//! List responses are `{"items": [...], "next_cursor": "...", "as_of_offset": N}`.
//!
//! The OpenAPI document at `/api/v1/openapi.json` is generated from these handlers' annotations
//! and the contract types' schemas (derived in runcast-contract's build.rs), never written by hand.

use crate::App;
use crate::domain::state_machine::Command;
use crate::error::ApiError;
use crate::policy::OPENAPI_PATH;
use crate::queries::{EventFilter, ExecutionFilter, Page};
use crate::{requests, validate};
use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Json, Router};
use runcast_contract::v1::{
    AgentStatus, CreateExecutionRequest, EventType, Execution, ExecutionStatus, ResolveApprovalRequest,
};
use runcast_contract::{WireEnum, json::parse_wire_name};
use runcast_runtime::auth::Principal;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Runcast execution API",
        description = "Commands and queries for executions and agents. Every list carries `as_of_offset`: \
                       subscribe to the live stream from it and nothing is missed."
    ),
    modifiers(&Credentials),
    security(("bearer" = []), ("api_key" = []))
)]
struct ApiDoc;

/// Bearer JWTs and API keys, as the auth layer accepts them.
struct Credentials;

impl utoipa::Modify for Credentials {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
        components
            .add_security_scheme("api_key", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))));
    }
}

/// The REST routes and, at [`OPENAPI_PATH`], their OpenAPI document.
pub fn router(app: App) -> Router {
    let (router, document) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(create_execution, list_executions))
        .routes(routes!(get_execution))
        .routes(routes!(cancel_execution))
        .routes(routes!(pause_execution))
        .routes(routes!(resume_execution))
        .routes(routes!(resolve_approval))
        .routes(routes!(list_events, delete_events))
        .routes(routes!(list_agents))
        .with_state(app)
        .split_for_parts();
    let document = std::sync::Arc::new(document);
    router.route(OPENAPI_PATH, get(move || async move { Json(document.as_ref().clone()) }))
}

/// The body of every error response.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // documents the shape `runcast_runtime::auth::json_error` writes
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct ErrorDetail {
    /// `INVALID_ARGUMENT`, `NOT_FOUND`, `FAILED_PRECONDITION`, `ABORTED`, `UNAUTHENTICATED`,
    /// `PERMISSION_DENIED`, `UNAVAILABLE` or `INTERNAL`.
    code: String,
    /// What went wrong and what to do about it.
    message: String,
}

#[derive(Serialize, ToSchema)]
struct ListResponse<T> {
    items: Vec<T>,
    next_cursor: String,
    as_of_offset: u64,
}

impl<T> From<Page<T>> for ListResponse<T> {
    fn from(page: Page<T>) -> Self {
        Self { items: page.items, next_cursor: page.next_cursor, as_of_offset: page.as_of_offset }
    }
}

fn body<T>(payload: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    payload.map(|Json(value)| value).map_err(|rejection| ApiError::invalid("request body", rejection.body_text()))
}

/// A comma list of wire names (`running,blocked`), empty when absent.
fn wire_list<E: WireEnum>(field: &str, value: Option<&str>) -> Result<Vec<E>, ApiError> {
    value
        .into_iter()
        .flat_map(|list| list.split(','))
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| {
            parse_wire_name::<E>(name)
                .map_err(|err| ApiError::invalid(field, err))
                .and_then(|raw| E::try_from(raw).map_err(|_| ApiError::invalid(field, "is unknown")))
        })
        .collect()
}

fn rfc3339(field: &str, value: Option<&str>) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    value
        .map(|text| {
            chrono::DateTime::parse_from_rfc3339(text)
                .map(|time| time.with_timezone(&chrono::Utc))
                .map_err(|err| ApiError::invalid(field, format!("'{text}' is not an RFC 3339 timestamp ({err})")))
        })
        .transpose()
}

#[utoipa::path(post, path = "/api/v1/executions", tag = "executions", request_body = CreateExecutionRequest,
    responses((status = 201, description = "Created, or the execution an earlier create with the same idempotency_key made", body = Execution), (status = 400, description = "Bad input", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 403, description = "Role not allowed", body = ErrorBody), (status = 503, description = "NATS unreachable", body = ErrorBody)))]
async fn create_execution(
    State(app): State<App>,
    Extension(principal): Extension<Principal>,
    payload: Result<Json<CreateExecutionRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Execution>), ApiError> {
    let (id, command) = requests::create(&principal.tenant, body(payload)?)?;
    let execution = app.executions.execute(&principal.tenant, &id, command, None).await?;
    Ok((StatusCode::CREATED, Json(execution)))
}

#[utoipa::path(get, path = "/api/v1/executions/{id}", tag = "executions", params(("id" = String, Path, description = "execution_id")),
    responses((status = 200, description = "The current state, read from the stream (reads its own writes)", body = Execution), (status = 404, description = "No such execution in your tenant", body = ErrorBody), (status = 400, description = "Bad input", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 403, description = "Role not allowed", body = ErrorBody)))]
async fn get_execution(
    State(app): State<App>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Execution>, ApiError> {
    let id = validate::id("execution_id", &id)?;
    Ok(Json(app.executions.get(&principal.tenant, &id).await?))
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(default)]
struct ReasonBody {
    reason: String,
}

/// Cancel, pause and resume: the body (`{"reason": "..."}`) is optional.
async fn control(
    app: &App,
    principal: &Principal,
    id: &str,
    payload: Bytes,
    command: fn(String) -> Command,
) -> Result<Json<Execution>, ApiError> {
    let reason = if payload.iter().all(u8::is_ascii_whitespace) {
        String::new()
    } else {
        serde_json::from_slice::<ReasonBody>(&payload).map_err(|err| ApiError::invalid("request body", err))?.reason
    };
    let (id, reason) = requests::with_reason(id, &reason)?;
    Ok(Json(app.executions.execute(&principal.tenant, &id, command(reason), None).await?))
}

#[utoipa::path(post, path = "/api/v1/executions/{id}/cancel", tag = "executions", params(("id" = String, Path, description = "execution_id")),
    request_body(content = ReasonBody, description = "Optional"),
    responses((status = 200, body = Execution), (status = 404, body = ErrorBody), (status = 409, description = "Illegal transition (FAILED_PRECONDITION) or lost race (ABORTED)", body = ErrorBody), (status = 400, description = "Bad input", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 403, description = "Role not allowed", body = ErrorBody)))]
async fn cancel_execution(
    State(app): State<App>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    payload: Bytes,
) -> Result<Json<Execution>, ApiError> {
    control(&app, &principal, &id, payload, |reason| Command::Cancel { reason }).await
}

#[utoipa::path(post, path = "/api/v1/executions/{id}/pause", tag = "executions", params(("id" = String, Path, description = "execution_id")),
    request_body(content = ReasonBody, description = "Optional"),
    responses((status = 200, body = Execution), (status = 404, body = ErrorBody), (status = 409, description = "Illegal transition (FAILED_PRECONDITION) or lost race (ABORTED)", body = ErrorBody), (status = 400, description = "Bad input", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 403, description = "Role not allowed", body = ErrorBody)))]
async fn pause_execution(
    State(app): State<App>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    payload: Bytes,
) -> Result<Json<Execution>, ApiError> {
    control(&app, &principal, &id, payload, |reason| Command::Pause { reason }).await
}

#[utoipa::path(post, path = "/api/v1/executions/{id}/resume", tag = "executions", params(("id" = String, Path, description = "execution_id")),
    request_body(content = ReasonBody, description = "Optional"),
    responses((status = 200, body = Execution), (status = 404, body = ErrorBody), (status = 409, description = "Illegal transition (FAILED_PRECONDITION) or lost race (ABORTED)", body = ErrorBody), (status = 400, description = "Bad input", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 403, description = "Role not allowed", body = ErrorBody)))]
async fn resume_execution(
    State(app): State<App>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    payload: Bytes,
) -> Result<Json<Execution>, ApiError> {
    control(&app, &principal, &id, payload, |reason| Command::Resume { reason }).await
}

#[derive(Deserialize, ToSchema)]
struct Resolution {
    granted: bool,
    #[serde(default)]
    comment: String,
}

#[utoipa::path(post, path = "/api/v1/executions/{id}/approvals/{approval_id}", tag = "executions",
    params(("id" = String, Path, description = "execution_id"), ("approval_id" = String, Path)), request_body = Resolution,
    responses((status = 200, body = Execution), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 400, description = "Bad input", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 403, description = "Role not allowed", body = ErrorBody)))]
async fn resolve_approval(
    State(app): State<App>,
    Extension(principal): Extension<Principal>,
    Path((id, approval_id)): Path<(String, String)>,
    payload: Result<Json<Resolution>, JsonRejection>,
) -> Result<Json<Execution>, ApiError> {
    let resolution = body(payload)?;
    let request = ResolveApprovalRequest {
        execution_id: id,
        approval_id,
        granted: resolution.granted,
        comment: resolution.comment,
    };
    let (id, command) = requests::resolve_approval(request, &principal.subject)?;
    Ok(Json(app.executions.execute(&principal.tenant, &id, command, None).await?))
}

#[derive(Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(default)]
struct ListExecutionsQuery {
    /// Only executions of this workflow.
    workflow_id: Option<String>,
    /// Comma list of statuses, e.g. `running,blocked`.
    statuses: Option<String>,
    /// Page size (default 50, at most 500).
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/executions", tag = "executions", params(ListExecutionsQuery),
    responses((status = 200, description = "Newest first", body = ListResponse<Execution>), (status = 400, description = "Bad input", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 403, description = "Role not allowed", body = ErrorBody), (status = 503, description = "PostgreSQL unreachable", body = ErrorBody)))]
async fn list_executions(
    State(app): State<App>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<ListExecutionsQuery>,
) -> Result<Json<ListResponse<Execution>>, ApiError> {
    let filter = ExecutionFilter {
        workflow_id: validate::optional_id("workflow_id", query.workflow_id.as_deref().unwrap_or(""))?,
        statuses: wire_list::<ExecutionStatus>("statuses", query.statuses.as_deref())?,
        page_size: validate::page_size(query.limit.unwrap_or(0)),
        cursor: query.cursor.unwrap_or_default(),
    };
    Ok(Json(app.queries.list_executions(&principal.tenant, &filter).await?.into()))
}

#[derive(Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(default)]
struct ListEventsQuery {
    /// Only events of this execution.
    execution_id: Option<String>,
    /// Only events of this workflow's executions.
    workflow_id: Option<String>,
    /// Comma list of event types, e.g. `execution.started,step.failed`.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    types: Option<String>,
    /// RFC 3339: events at or after.
    since: Option<String>,
    /// RFC 3339: events before.
    until: Option<String>,
    /// Page size (default 50, at most 500).
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/events", tag = "events", params(ListEventsQuery),
    responses((status = 200, description = "Oldest first", body = ListResponse<runcast_contract::v1::Event>), (status = 400, description = "Bad input", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 403, description = "Role not allowed", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn list_events(
    State(app): State<App>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<ListEventsQuery>,
) -> Result<Json<ListResponse<runcast_contract::v1::Event>>, ApiError> {
    let filter = EventFilter {
        execution_id: validate::optional_id("execution_id", query.execution_id.as_deref().unwrap_or(""))?,
        workflow_id: validate::optional_id("workflow_id", query.workflow_id.as_deref().unwrap_or(""))?,
        types: wire_list::<EventType>("type", query.types.as_deref())?,
        since: rfc3339("since", query.since.as_deref())?,
        until: rfc3339("until", query.until.as_deref())?,
        page_size: validate::page_size(query.limit.unwrap_or(0)),
        cursor: query.cursor.unwrap_or_default(),
    };
    Ok(Json(app.queries.list_events(&principal.tenant, &filter).await?.into()))
}

#[derive(Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(default)]
struct ListAgentsQuery {
    /// Comma list of agent statuses, e.g. `online,busy`.
    statuses: Option<String>,
    /// Page size (default 50, at most 500).
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/agents", tag = "agents", params(ListAgentsQuery),
    responses((status = 200, body = ListResponse<runcast_contract::v1::Agent>), (status = 400, description = "Bad input", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 403, description = "Role not allowed", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn list_agents(
    State(app): State<App>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<ListAgentsQuery>,
) -> Result<Json<ListResponse<runcast_contract::v1::Agent>>, ApiError> {
    let statuses = wire_list::<AgentStatus>("statuses", query.statuses.as_deref())?;
    let page = app
        .queries
        .list_agents(
            &principal.tenant,
            &statuses,
            validate::page_size(query.limit.unwrap_or(0)),
            query.cursor.as_deref().unwrap_or(""),
        )
        .await?;
    Ok(Json(page.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comma_lists_of_wire_names() {
        let statuses = wire_list::<ExecutionStatus>("statuses", Some("running, blocked")).expect("valid");
        assert_eq!(statuses, [ExecutionStatus::Running, ExecutionStatus::Blocked]);
        assert!(wire_list::<ExecutionStatus>("statuses", None).expect("absent").is_empty());
        let err = wire_list::<EventType>("type", Some("execution.started,bogus")).expect_err("unknown");
        assert!(err.to_string().starts_with("type unknown event type 'bogus'"), "{err}");
    }
}

#[derive(Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(default)]
struct DeleteEventsQuery {
    /// RFC 3339 cutoff: every event that occurred before it is deleted.
    older_than: Option<String>,
}

/// Retention on demand (admin): whole daily partitions where they lie entirely before the cutoff,
/// row deletes for the rest — the mechanism the persister's own retention uses.
#[utoipa::path(delete, path = "/api/v1/events", tag = "events", params(DeleteEventsQuery),
    responses((status = 200, description = "What was deleted: partitions_dropped, rows_deleted"), (status = 400, description = "Bad input", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 403, description = "Role not allowed", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn delete_events(
    State(app): State<App>,
    Query(query): Query<DeleteEventsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let cutoff = rfc3339("older_than", query.older_than.as_deref())?.ok_or_else(|| {
        ApiError::invalid("older_than", "is required: an RFC 3339 timestamp, e.g. 2026-01-01T00:00:00Z")
    })?;
    if cutoff > chrono::Utc::now() {
        return Err(ApiError::invalid("older_than", "is in the future: it would delete events still being written"));
    }
    let deleted = event_persister::retention::delete_events_older_than(app.queries.pool(), cutoff).await.map_err(
        |err| match err.kind() {
            event_persister::error::ErrorKind::Unavailable => {
                ApiError::unavailable(format!("cannot delete events: {err}"))
            }
            _ => ApiError::internal(format!("cannot delete events: {err}")),
        },
    )?;
    Ok(Json(serde_json::json!({
        "partitions_dropped": deleted.partitions_dropped,
        "rows_deleted": deleted.rows_deleted,
    })))
}
