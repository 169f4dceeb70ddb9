//! The REST/JSON mirror under `/api/v1` (DESIGN §3): the same requests as gRPC, as JSON with the
//! same snake_case names, the same core, the same errors (`{"error": {"code", "message"}}`).
//! List responses are `{"items": [...], "next_cursor": "...", "as_of_offset": N}`.
//!
//! One error shape everywhere (DESIGN §7): bad JSON, unknown body fields, unknown or malformed
//! query parameters, unknown routes and methods all answer `{"error": {"code", "message"}}`,
//! naming the field and what is accepted; nothing is silently ignored.
//!
//! The OpenAPI document at `/api/v1/openapi.json` is generated from these handlers' annotations
//! and the contract types' schemas (derived in runcast-contract's build.rs), never written by hand.

use crate::App;
use crate::commands::WriteOptions;
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
    Agent, AgentStatus, AppendLogsRequest, AppendLogsResponse, CreateExecutionRequest, EventType, Execution,
    ExecutionStatus, HeartbeatRequest, ReportProgressRequest, ReportStepRequest, RequestApprovalRequest,
    ResolveApprovalRequest, UpdateExecutionStatusRequest,
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

/// Protobuf has no required fields, so the generated schemas say none are; these are the fields a
/// request is refused without (the path supplies the ids of REST routes).
struct RequiredFields;

const REQUIRED_FIELDS: &[(&str, &[&str])] = &[
    ("CreateExecutionRequest", &["workflow_id"]),
    ("UpdateExecutionStatusRequest", &["status"]),
    ("ReportStepRequest", &["step_id", "status"]),
    ("RequestApprovalRequest", &["approval_id"]),
    ("AppendLogsRequest", &["lines"]),
];

impl utoipa::Modify for RequiredFields {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Some(components) = openapi.components.as_mut() else { return };
        for (name, fields) in REQUIRED_FIELDS {
            if let Some(utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Object(object))) =
                components.schemas.get_mut(*name)
            {
                object.required = fields.iter().map(|field| (*field).to_owned()).collect();
            }
        }
    }
}

/// The REST routes and, at [`OPENAPI_PATH`], their OpenAPI document.
pub(crate) fn router(app: App) -> Router {
    let (router, document) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(create_execution, list_executions))
        .routes(routes!(get_execution))
        .routes(routes!(update_execution_status))
        .routes(routes!(report_step))
        .routes(routes!(report_progress))
        .routes(routes!(append_logs))
        .routes(routes!(request_approval))
        .routes(routes!(heartbeat))
        .routes(routes!(cancel_execution))
        .routes(routes!(pause_execution))
        .routes(routes!(resume_execution))
        .routes(routes!(resolve_approval))
        .routes(routes!(list_events, delete_events))
        .routes(routes!(list_agents))
        .with_state(app)
        .split_for_parts();
    let mut document = document;
    // After the routes added their schemas.
    utoipa::Modify::modify(&RequiredFields, &mut document);
    let document = std::sync::Arc::new(document);
    router
        .route(OPENAPI_PATH, get(move || async move { Json(document.as_ref().clone()) }))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn unknown_route(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("route {method} {}: the routes are listed at {OPENAPI_PATH}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let message =
        format!("{} does not take {method}: the methods of each route are listed at {OPENAPI_PATH}", uri.path());
    runcast_runtime::auth::json_error(StatusCode::METHOD_NOT_ALLOWED, "INVALID_ARGUMENT", &message).into_response()
}

/// Query parameters as `T` (whose fields are the only accepted names), or a 400 naming the
/// parameter that is unknown or malformed and the accepted ones.
struct Params<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Self(value)),
            Err(rejection) => {
                let text = rejection.body_text();
                let detail = text.strip_prefix("Failed to deserialize query string: ").unwrap_or(&text);
                Err(ApiError::invalid("query string", format!("is not accepted: {detail}")))
            }
        }
    }
}

/// No query parameters at all: a route that takes none refuses any rather than ignoring it.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParameters {}

type NoQuery = Params<NoParameters>;

/// The `Idempotency-Key` header (the IETF draft's, and Stripe's): another way to send a write's
/// `request_id`, or a create's `idempotency_key`, for HTTP clients that set it by habit or by
/// middleware. Its value may be quoted (the draft makes it a structured-field string).
#[derive(Debug, Default)]
struct IdempotencyKey(Option<String>);

/// The header as the OpenAPI document lists it.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // documents the header `IdempotencyKey` reads
struct IdempotencyKeyHeader {
    /// The same as the body's `request_id` (a create's `idempotency_key`): a retry with the same
    /// key is applied once. Given in both places, they must be equal. A key sent again with
    /// another change is refused (400): one key, one change.
    #[param(rename = "Idempotency-Key")]
    idempotency_key: Option<String>,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, ApiError> {
        let mut values = parts.headers.get_all("idempotency-key").iter();
        let Some(value) = values.next() else {
            return Ok(Self(None));
        };
        if values.next().is_some() {
            return Err(ApiError::invalid("Idempotency-Key header", "is given more than once"));
        }
        let text =
            value.to_str().map_err(|_| ApiError::invalid("Idempotency-Key header", "is not visible ASCII"))?.trim();
        let unquoted = text.strip_prefix('"').and_then(|rest| rest.strip_suffix('"')).unwrap_or(text);
        Ok(Self(Some(unquoted.to_owned()).filter(|key| !key.is_empty())))
    }
}

impl IdempotencyKey {
    /// Puts the header's key into a command's `request_id` (checked as one), unless the body
    /// gave the same one already; a different one is refused rather than one of them ignored.
    fn into_request_id(self, request_id: &mut String) -> Result<(), ApiError> {
        if let Some(key) = &self.0 {
            validate::id("Idempotency-Key header", key)?;
        }
        self.into_field("request_id", request_id)
    }

    fn into_field(self, field: &str, body: &mut String) -> Result<(), ApiError> {
        match self.0 {
            None => Ok(()),
            Some(key) if body.is_empty() => {
                *body = key;
                Ok(())
            }
            Some(key) if *body == key => Ok(()),
            Some(key) => Err(ApiError::invalid(
                field,
                format!(
                    "'{body}' differs from the Idempotency-Key header '{key}': send one of them, or the same in both"
                ),
            )),
        }
    }
}

/// The REST bodies of commands that carry the caller's `request_id`.
trait CarriesRequestId {
    fn request_id_mut(&mut self) -> &mut String;
}

macro_rules! carries_request_id {
    ($($request:ty),*) => {
        $(impl CarriesRequestId for $request {
            fn request_id_mut(&mut self) -> &mut String {
                &mut self.request_id
            }
        })*
    };
}

carries_request_id!(
    UpdateExecutionStatusRequest,
    ReportStepRequest,
    ReportProgressRequest,
    RequestApprovalRequest,
    AppendLogsRequest,
    ReasonBody,
    Resolution
);

/// The property names of a request type's schema: what a body may contain.
fn field_names<T: utoipa::PartialSchema>() -> Vec<String> {
    match T::schema() {
        utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Object(object)) => {
            object.properties.keys().cloned().collect()
        }
        _ => Vec::new(),
    }
}

/// A JSON value as `T`, refusing fields `T` does not have rather than ignoring them.
fn typed<T: serde::de::DeserializeOwned + utoipa::PartialSchema>(value: serde_json::Value) -> Result<T, ApiError> {
    let mut unknown = Vec::new();
    let parsed: T = serde_ignored::deserialize(value, |path| unknown.push(path.to_string()))
        .map_err(|err| ApiError::invalid("request body", err))?;
    match unknown.first() {
        Some(field) => Err(ApiError::invalid(
            field,
            format!("is not a field of this request: the fields are {}", field_names::<T>().join(", ")),
        )),
        None => Ok(parsed),
    }
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

fn body<T: serde::de::DeserializeOwned + utoipa::PartialSchema>(
    payload: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<T, ApiError> {
    let Json(value) = payload.map_err(|rejection| ApiError::invalid("request body", rejection.body_text()))?;
    typed(value)
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

#[utoipa::path(post, path = "/api/v1/executions", tag = "executions", params(IdempotencyKeyHeader),
    request_body(content = CreateExecutionRequest, example = json!({"workflow_id": "nightly-build", "idempotency_key": "build-2026-12-01", "labels": {"team": "infra"}, "input": {"branch": "main"}, "heartbeat_timeout_seconds": 300})),
    responses((status = 201, description = "Created, or the execution an earlier create with the same idempotency_key made", body = Execution), (status = 400, description = "Bad input", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 403, description = "Role not allowed", body = ErrorBody), (status = 503, description = "NATS unreachable", body = ErrorBody)))]
async fn create_execution(
    State(app): State<App>,
    Extension(principal): Extension<Principal>,
    _: NoQuery,
    key: IdempotencyKey,
    payload: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<(StatusCode, Json<Execution>), ApiError> {
    let mut request = body::<CreateExecutionRequest>(payload)?;
    key.into_field("idempotency_key", &mut request.idempotency_key)?;
    let (id, command) = requests::create(&principal.tenant, request)?;
    let execution = app.executions.execute(&principal.tenant, &id, command, WriteOptions::default()).await?;
    Ok((StatusCode::CREATED, Json(execution)))
}

#[utoipa::path(get, path = "/api/v1/executions/{id}", tag = "executions", params(("id" = String, Path, description = "execution_id")),
    responses((status = 200, description = "The current state, read from the stream (reads its own writes)", body = Execution), (status = 404, description = "No such execution in your tenant", body = ErrorBody), (status = 400, description = "Bad input", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 403, description = "Role not allowed", body = ErrorBody)))]
async fn get_execution(
    State(app): State<App>,
    Extension(principal): Extension<Principal>,
    _: NoQuery,
    Path(id): Path<String>,
) -> Result<Json<Execution>, ApiError> {
    let id = validate::id("execution_id", &id)?;
    Ok(Json(app.executions.get(&principal.tenant, &id).await?))
}

#[utoipa::path(post, path = "/api/v1/executions/{id}/status", tag = "executions", params(("id" = String, Path, description = "execution_id"), IdempotencyKeyHeader),
    request_body(content = UpdateExecutionStatusRequest, description = "`status`, `message`, `error`, `expected_version`, `agent_id` (the agent that moves it to running owns it), `request_id` (sent again after a lost answer, applied once); `execution_id` is the path's",
        example = json!({"status": "running", "agent_id": "worker-7", "request_id": "0193a1b2-7c4d-7e8f-9a0b-1c2d3e4f5a6b"})),
    responses((status = 200, description = "The execution after the change", body = Execution), (status = 404, body = ErrorBody), (status = 409, description = "Illegal transition (FAILED_PRECONDITION) or lost race (ABORTED)", body = ErrorBody), (status = 413, description = "The state would exceed its size limit (RESOURCE_EXHAUSTED)", body = ErrorBody), (status = 400, description = "Bad input", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 403, description = "Role not allowed", body = ErrorBody), (status = 503, description = "NATS or (for an execution older than the stream) PostgreSQL unreachable", body = ErrorBody)))]
async fn update_execution_status(
    State(app): State<App>,
    Extension(principal): Extension<Principal>,
    _: NoQuery,
    Path(id): Path<String>,
    key: IdempotencyKey,
    payload: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Json<Execution>, ApiError> {
    let mut request =
        UpdateExecutionStatusRequest { execution_id: id, ..body::<UpdateExecutionStatusRequest>(payload)? };
    key.into_request_id(request.request_id_mut())?;
    let (id, command, options) = requests::update_status(request)?;
    Ok(Json(app.executions.execute(&principal.tenant, &id, command, options).await?))
}

/// A worker command over REST: the gRPC request's JSON as the body, its `execution_id` the path's.
async fn execute_from_path<T: serde::de::DeserializeOwned + utoipa::PartialSchema + CarriesRequestId>(
    app: &App,
    principal: &Principal,
    (id, key): (String, IdempotencyKey),
    payload: Result<Json<serde_json::Value>, JsonRejection>,
    with_id: fn(T, String) -> T,
    to_command: fn(T) -> Result<requests::Change, ApiError>,
) -> Result<Json<Execution>, ApiError> {
    let mut request = with_id(body::<T>(payload)?, id);
    key.into_request_id(request.request_id_mut())?;
    let (id, command, options) = to_command(request)?;
    Ok(Json(app.executions.execute(&principal.tenant, &id, command, options).await?))
}

#[utoipa::path(post, path = "/api/v1/executions/{id}/steps", tag = "workers", params(("id" = String, Path, description = "execution_id"), IdempotencyKeyHeader),
    request_body(content = ReportStepRequest, description = "`step_id`, `name`, `status` (pending, running, completed, failed, skipped), `error`, `request_id` (sent again after a lost answer, applied once)",
        example = json!({"step_id": "compile", "name": "Compile", "status": "running"})),
    responses((status = 200, description = "The execution after the change", body = Execution), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn report_step(
    State(app): State<App>,
    Extension(principal): Extension<Principal>,
    _: NoQuery,
    Path(id): Path<String>,
    key: IdempotencyKey,
    payload: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Json<Execution>, ApiError> {
    let with_id = |request, execution_id| ReportStepRequest { execution_id, ..request };
    execute_from_path(&app, &principal, (id, key), payload, with_id, requests::report_step).await
}

#[utoipa::path(post, path = "/api/v1/executions/{id}/progress", tag = "workers", params(("id" = String, Path, description = "execution_id"), IdempotencyKeyHeader),
    request_body(content = ReportProgressRequest, description = "`percent` (0-100), `current_step`, `message`, `request_id` (sent again after a lost answer, applied once)",
        example = json!({"percent": 40, "current_step": "compile", "message": "412 of 1030 units"})),
    responses((status = 200, description = "The execution after the change", body = Execution), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn report_progress(
    State(app): State<App>,
    Extension(principal): Extension<Principal>,
    _: NoQuery,
    Path(id): Path<String>,
    key: IdempotencyKey,
    payload: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Json<Execution>, ApiError> {
    let with_id = |request, execution_id| ReportProgressRequest { execution_id, ..request };
    execute_from_path(&app, &principal, (id, key), payload, with_id, requests::report_progress).await
}

#[utoipa::path(post, path = "/api/v1/executions/{id}/approvals", tag = "workers", params(("id" = String, Path, description = "execution_id"), IdempotencyKeyHeader),
    request_body(content = RequestApprovalRequest, description = "`approval_id`, `reason`, optional `deadline` (RFC 3339)",
        example = json!({"approval_id": "deploy-prod", "reason": "ship 1.4 to production", "deadline": "2026-12-02T09:00:00Z"})),
    responses((status = 200, description = "The execution, now blocked", body = Execution), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn request_approval(
    State(app): State<App>,
    Extension(principal): Extension<Principal>,
    _: NoQuery,
    Path(id): Path<String>,
    key: IdempotencyKey,
    payload: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Json<Execution>, ApiError> {
    let with_id = |request, execution_id| RequestApprovalRequest { execution_id, ..request };
    execute_from_path(&app, &principal, (id, key), payload, with_id, requests::request_approval).await
}

#[utoipa::path(post, path = "/api/v1/executions/{id}/logs", tag = "workers", params(("id" = String, Path, description = "execution_id"), IdempotencyKeyHeader),
    request_body(content = AppendLogsRequest, description = "`lines`: each `text` and optional `stream` (stdout, stderr); numbered 1, 2, 3… per execution",
        example = json!({"lines": [{"text": "compiling 412 units"}, {"text": "warning: unused import", "stream": "stderr"}]})),
    responses((status = 200, description = "How many lines were appended and the number of the last", body = AppendLogsResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn append_logs(
    State(app): State<App>,
    Extension(principal): Extension<Principal>,
    _: NoQuery,
    Path(id): Path<String>,
    key: IdempotencyKey,
    payload: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Json<AppendLogsResponse>, ApiError> {
    let mut chunk = AppendLogsRequest { execution_id: id, ..body::<AppendLogsRequest>(payload)? };
    key.into_request_id(chunk.request_id_mut())?;
    let execution_id = validate::id("execution_id", &chunk.execution_id)?;
    let target = crate::logs::LogTarget::resolve(&app.executions, &principal.tenant, execution_id).await?;
    let last_line_number = target.append(app.executions.store(), &principal.tenant, &chunk).await?;
    Ok(Json(AppendLogsResponse { lines_appended: chunk.lines.len() as u64, last_line_number }))
}

#[utoipa::path(post, path = "/api/v1/agents/{id}/heartbeat", tag = "workers", params(("id" = String, Path, description = "agent_id")),
    request_body(content = HeartbeatRequest, description = "`status`, `cpu_percent`, `memory_percent`, `gpu_percent`, `running_execution_ids`, `labels`, `timeout_seconds`",
        example = json!({"status": "online", "cpu_percent": 37.5, "memory_percent": 61.0, "running_execution_ids": ["0193a1b2-7c4d-7e8f-9a0b-1c2d3e4f5a6b"], "timeout_seconds": 30})),
    responses((status = 200, description = "The agent after the heartbeat", body = Agent), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn heartbeat(
    State(app): State<App>,
    Extension(principal): Extension<Principal>,
    _: NoQuery,
    Path(id): Path<String>,
    payload: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Json<Agent>, ApiError> {
    let request = HeartbeatRequest { agent_id: id, ..body::<HeartbeatRequest>(payload)? };
    Ok(Json(crate::agents::heartbeat(app.executions.store(), &principal.tenant, request).await?))
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(default)]
struct ReasonBody {
    reason: String,
    /// The caller's id for this change: a retry with the same id applies it once.
    request_id: String,
}

/// Cancel, pause and resume: the body (`{"reason": "..."}`) is optional.
async fn control(
    app: &App,
    principal: &Principal,
    (id, key): (&str, IdempotencyKey),
    payload: Bytes,
    command: fn(String) -> Command,
) -> Result<Json<Execution>, ApiError> {
    let mut body = if payload.iter().all(u8::is_ascii_whitespace) {
        ReasonBody::default()
    } else {
        let value = serde_json::from_slice(&payload).map_err(|err| ApiError::invalid("request body", err))?;
        typed::<ReasonBody>(value)?
    };
    key.into_request_id(body.request_id_mut())?;
    let (id, reason, options) = requests::with_reason(id, &body.reason, &body.request_id)?;
    Ok(Json(app.executions.execute(&principal.tenant, &id, command(reason), options).await?))
}

#[utoipa::path(post, path = "/api/v1/executions/{id}/cancel", tag = "executions", params(("id" = String, Path, description = "execution_id"), IdempotencyKeyHeader),
    request_body(content = ReasonBody, description = "Optional"),
    responses((status = 200, body = Execution), (status = 404, body = ErrorBody), (status = 409, description = "Illegal transition (FAILED_PRECONDITION) or lost race (ABORTED)", body = ErrorBody), (status = 400, description = "Bad input", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 403, description = "Role not allowed", body = ErrorBody)))]
async fn cancel_execution(
    State(app): State<App>,
    Extension(principal): Extension<Principal>,
    _: NoQuery,
    Path(id): Path<String>,
    key: IdempotencyKey,
    payload: Bytes,
) -> Result<Json<Execution>, ApiError> {
    control(&app, &principal, (&id, key), payload, |reason| Command::Cancel { reason }).await
}

#[utoipa::path(post, path = "/api/v1/executions/{id}/pause", tag = "executions", params(("id" = String, Path, description = "execution_id"), IdempotencyKeyHeader),
    request_body(content = ReasonBody, description = "Optional"),
    responses((status = 200, body = Execution), (status = 404, body = ErrorBody), (status = 409, description = "Illegal transition (FAILED_PRECONDITION) or lost race (ABORTED)", body = ErrorBody), (status = 400, description = "Bad input", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 403, description = "Role not allowed", body = ErrorBody)))]
async fn pause_execution(
    State(app): State<App>,
    Extension(principal): Extension<Principal>,
    _: NoQuery,
    Path(id): Path<String>,
    key: IdempotencyKey,
    payload: Bytes,
) -> Result<Json<Execution>, ApiError> {
    control(&app, &principal, (&id, key), payload, |reason| Command::Pause { reason }).await
}

#[utoipa::path(post, path = "/api/v1/executions/{id}/resume", tag = "executions", params(("id" = String, Path, description = "execution_id"), IdempotencyKeyHeader),
    request_body(content = ReasonBody, description = "Optional"),
    responses((status = 200, body = Execution), (status = 404, body = ErrorBody), (status = 409, description = "Illegal transition (FAILED_PRECONDITION) or lost race (ABORTED)", body = ErrorBody), (status = 400, description = "Bad input", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 403, description = "Role not allowed", body = ErrorBody)))]
async fn resume_execution(
    State(app): State<App>,
    Extension(principal): Extension<Principal>,
    _: NoQuery,
    Path(id): Path<String>,
    key: IdempotencyKey,
    payload: Bytes,
) -> Result<Json<Execution>, ApiError> {
    control(&app, &principal, (&id, key), payload, |reason| Command::Resume { reason }).await
}

#[derive(Debug, Deserialize, ToSchema)]
struct Resolution {
    granted: bool,
    #[serde(default)]
    comment: String,
    /// The caller's id for this change: a retry with the same id applies it once.
    #[serde(default)]
    request_id: String,
}

#[utoipa::path(post, path = "/api/v1/executions/{id}/approvals/{approval_id}", tag = "executions",
    params(("id" = String, Path, description = "execution_id"), ("approval_id" = String, Path), IdempotencyKeyHeader), request_body = Resolution,
    responses((status = 200, body = Execution), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 400, description = "Bad input", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 403, description = "Role not allowed", body = ErrorBody)))]
async fn resolve_approval(
    State(app): State<App>,
    Extension(principal): Extension<Principal>,
    _: NoQuery,
    Path((id, approval_id)): Path<(String, String)>,
    key: IdempotencyKey,
    payload: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Json<Execution>, ApiError> {
    let mut resolution = body::<Resolution>(payload)?;
    key.into_request_id(resolution.request_id_mut())?;
    let request = ResolveApprovalRequest {
        execution_id: id,
        approval_id,
        granted: resolution.granted,
        comment: resolution.comment,
        request_id: resolution.request_id,
    };
    let (id, command, options) = requests::resolve_approval(request, &principal.subject)?;
    Ok(Json(app.executions.execute(&principal.tenant, &id, command, options).await?))
}

#[derive(Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(default, deny_unknown_fields)]
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
    Params(query): Params<ListExecutionsQuery>,
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
#[serde(default, deny_unknown_fields)]
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
    Params(query): Params<ListEventsQuery>,
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
#[serde(default, deny_unknown_fields)]
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
    Params(query): Params<ListAgentsQuery>,
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
    fn unknown_body_fields_are_refused_naming_them_and_the_accepted_ones() {
        let err = typed::<CreateExecutionRequest>(serde_json::json!({"workflow": "nightly"})).expect_err("unknown");
        assert_eq!(err.kind(), crate::error::ApiErrorKind::InvalidArgument);
        assert!(err.to_string().starts_with("workflow is not a field of this request"), "{err}");
        assert!(err.to_string().contains("workflow_id") && err.to_string().contains("idempotency_key"), "{err}");
        let ok = typed::<CreateExecutionRequest>(serde_json::json!({"workflow_id": "nightly", "labels": {"a": "b"}}));
        assert_eq!(ok.expect("known fields").workflow_id, "nightly");
        let err = typed::<Resolution>(serde_json::json!({"granted": true, "coment": "typo"})).expect_err("typo");
        assert!(err.to_string().starts_with("coment is not a field"), "{err}");
        let err = typed::<CreateExecutionRequest>(serde_json::json!({"workflow_id": 7})).expect_err("wrong type");
        assert!(err.to_string().starts_with("request body"), "{err}");
    }

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
#[serde(default, deny_unknown_fields)]
struct DeleteEventsQuery {
    /// RFC 3339 cutoff: every event that occurred before it is deleted.
    older_than: Option<String>,
}

/// Retention on demand (admin): deletes the caller's tenant's history before the cutoff, never
/// another tenant's (DESIGN §7).
#[utoipa::path(delete, path = "/api/v1/events", tag = "events", params(DeleteEventsQuery),
    responses((status = 200, description = "What was deleted: rows_deleted (of the caller's tenant only)"), (status = 400, description = "Bad input", body = ErrorBody), (status = 401, description = "No or bad credentials", body = ErrorBody), (status = 403, description = "Role not allowed", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn delete_events(
    State(app): State<App>,
    Extension(principal): Extension<Principal>,
    Params(query): Params<DeleteEventsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let cutoff = rfc3339("older_than", query.older_than.as_deref())?.ok_or_else(|| {
        ApiError::invalid("older_than", "is required: an RFC 3339 timestamp, e.g. 2026-01-01T00:00:00Z")
    })?;
    if cutoff > chrono::Utc::now() {
        return Err(ApiError::invalid("older_than", "is in the future: it would delete events still being written"));
    }
    let rows_deleted = app.queries.delete_events_older_than(&principal.tenant, cutoff).await?;
    tracing::info!(tenant = %principal.tenant, %cutoff, rows_deleted, "history deleted on demand");
    Ok(Json(serde_json::json!({ "rows_deleted": rows_deleted })))
}
