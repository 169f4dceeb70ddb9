//! The gRPC front end: `runcast.v1.ExecutionService` and `runcast.v1.AgentService`. Each method
//! takes the authenticated principal the auth layer left in the request, converts the request
//! (see [`crate::requests`]) and calls the same core as REST.

use crate::App;
use crate::commands::WriteOptions;
use crate::domain::state_machine::Command;
use crate::error::ApiError;
use crate::queries::{EventFilter, ExecutionFilter};
use crate::{agents, logs, requests, validate};
use chrono::{DateTime, Utc};
use runcast_contract::v1::agent_service_server::AgentService;
use runcast_contract::v1::execution_service_server::ExecutionService;
use runcast_contract::v1::*;
use runcast_contract::{EntityId, WireEnum};
use runcast_runtime::auth::Principal;
use tonic::{Request, Response, Status, Streaming};

fn principal<T>(request: &Request<T>) -> Result<Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no credentials: send `authorization: Bearer <token>` or `x-api-key`"))
}

fn enums<E: WireEnum>(field: &str, raw: &[i32]) -> Result<Vec<E>, ApiError> {
    raw.iter()
        .map(|value| {
            E::try_from(*value).map_err(|_| {
                ApiError::invalid(field, format!("has the unknown value {value}: expected {}", E::expected()))
            })
        })
        .collect()
}

fn time(field: &str, value: Option<prost_types::Timestamp>) -> Result<Option<DateTime<Utc>>, ApiError> {
    value.map(|ts| runcast_contract::json::to_datetime(&ts).map_err(|err| ApiError::invalid(field, err))).transpose()
}

impl App {
    async fn run(
        &self,
        tenant: &EntityId,
        id: &EntityId,
        command: Command,
        options: WriteOptions,
    ) -> Result<Response<Execution>, Status> {
        Ok(Response::new(self.executions.execute(tenant, id, command, options).await?))
    }
}

#[tonic::async_trait]
impl ExecutionService for App {
    async fn create_execution(&self, request: Request<CreateExecutionRequest>) -> Result<Response<Execution>, Status> {
        let principal = principal(&request)?;
        let (id, command) = requests::create(&principal.tenant, request.into_inner())?;
        self.run(&principal.tenant, &id, command, WriteOptions::default()).await
    }

    async fn get_execution(&self, request: Request<GetExecutionRequest>) -> Result<Response<Execution>, Status> {
        let principal = principal(&request)?;
        let id = validate::id("execution_id", &request.get_ref().execution_id)?;
        Ok(Response::new(self.executions.get(&principal.tenant, &id).await?))
    }

    async fn list_executions(
        &self,
        request: Request<ListExecutionsRequest>,
    ) -> Result<Response<ListExecutionsResponse>, Status> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        let filter = ExecutionFilter {
            workflow_id: validate::optional_id("workflow_id", &request.workflow_id)?,
            statuses: enums("statuses", &request.statuses)?,
            page_size: validate::page_size(request.page_size),
            cursor: request.page_token,
        };
        let page = self.queries.list_executions(&principal.tenant, &filter).await?;
        Ok(Response::new(ListExecutionsResponse {
            executions: page.items,
            next_page_token: page.next_cursor,
            as_of_offset: page.as_of_offset,
        }))
    }

    async fn update_execution_status(
        &self,
        request: Request<UpdateExecutionStatusRequest>,
    ) -> Result<Response<Execution>, Status> {
        let principal = principal(&request)?;
        let (id, command, options) = requests::update_status(request.into_inner())?;
        self.run(&principal.tenant, &id, command, options).await
    }

    async fn report_step(&self, request: Request<ReportStepRequest>) -> Result<Response<Execution>, Status> {
        let principal = principal(&request)?;
        let (id, command, options) = requests::report_step(request.into_inner())?;
        self.run(&principal.tenant, &id, command, options).await
    }

    async fn report_progress(&self, request: Request<ReportProgressRequest>) -> Result<Response<Execution>, Status> {
        let principal = principal(&request)?;
        let (id, command, options) = requests::report_progress(request.into_inner())?;
        self.run(&principal.tenant, &id, command, options).await
    }

    async fn append_logs(
        &self,
        request: Request<Streaming<AppendLogsRequest>>,
    ) -> Result<Response<AppendLogsResponse>, Status> {
        let principal = principal(&request)?;
        let mut chunks = request.into_inner();
        let mut response = AppendLogsResponse::default();
        let mut target: Option<logs::LogTarget> = None;
        while let Some(chunk) = chunks.message().await? {
            let id = validate::id("execution_id", &chunk.execution_id)?;
            let target = match &mut target {
                Some(known) if known.execution_id != id => {
                    return Err(ApiError::invalid(
                        "execution_id",
                        "must be the same in every message of one AppendLogs call",
                    )
                    .into());
                }
                Some(known) => known,
                None => target.insert(logs::LogTarget::resolve(&self.executions, &principal.tenant, id).await?),
            };
            response.last_line_number = target.append(self.executions.store(), &principal.tenant, &chunk).await?;
            response.lines_appended += chunk.lines.len() as u64;
        }
        Ok(Response::new(response))
    }

    async fn cancel_execution(&self, request: Request<CancelExecutionRequest>) -> Result<Response<Execution>, Status> {
        let principal = principal(&request)?;
        let request = request.get_ref();
        let (id, reason, options) = requests::with_reason(&request.execution_id, &request.reason, &request.request_id)?;
        self.run(&principal.tenant, &id, Command::Cancel { reason }, options).await
    }

    async fn pause_execution(&self, request: Request<PauseExecutionRequest>) -> Result<Response<Execution>, Status> {
        let principal = principal(&request)?;
        let request = request.get_ref();
        let (id, reason, options) = requests::with_reason(&request.execution_id, &request.reason, &request.request_id)?;
        self.run(&principal.tenant, &id, Command::Pause { reason }, options).await
    }

    async fn resume_execution(&self, request: Request<ResumeExecutionRequest>) -> Result<Response<Execution>, Status> {
        let principal = principal(&request)?;
        let request = request.get_ref();
        let (id, reason, options) = requests::with_reason(&request.execution_id, &request.reason, &request.request_id)?;
        self.run(&principal.tenant, &id, Command::Resume { reason }, options).await
    }

    async fn request_approval(&self, request: Request<RequestApprovalRequest>) -> Result<Response<Execution>, Status> {
        let principal = principal(&request)?;
        let (id, command, options) = requests::request_approval(request.into_inner())?;
        self.run(&principal.tenant, &id, command, options).await
    }

    async fn resolve_approval(&self, request: Request<ResolveApprovalRequest>) -> Result<Response<Execution>, Status> {
        let principal = principal(&request)?;
        let (id, command, options) = requests::resolve_approval(request.into_inner(), &principal.subject)?;
        self.run(&principal.tenant, &id, command, options).await
    }

    async fn list_events(&self, request: Request<ListEventsRequest>) -> Result<Response<ListEventsResponse>, Status> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        let filter = EventFilter {
            execution_id: validate::optional_id("execution_id", &request.execution_id)?,
            workflow_id: validate::optional_id("workflow_id", &request.workflow_id)?,
            types: enums("types", &request.types)?,
            since: time("since", request.since)?,
            until: time("until", request.until)?,
            page_size: validate::page_size(request.page_size),
            cursor: request.page_token,
        };
        let page = self.queries.list_events(&principal.tenant, &filter).await?;
        Ok(Response::new(ListEventsResponse { events: page.items, next_page_token: page.next_cursor }))
    }

    type WatchExecutionStream = crate::watch::WatchStream;

    async fn watch_execution(
        &self,
        request: Request<WatchExecutionRequest>,
    ) -> Result<Response<Self::WatchExecutionStream>, Status> {
        let principal = principal(&request)?;
        let id = validate::id("execution_id", &request.get_ref().execution_id)?;
        let stream = crate::watch::watch(
            &self.executions,
            &self.log,
            &principal.tenant,
            &id,
            request.get_ref().from_offset,
            self.shutdown.clone(),
        )
        .await?;
        Ok(Response::new(stream))
    }
}

#[tonic::async_trait]
impl AgentService for App {
    async fn heartbeat(&self, request: Request<HeartbeatRequest>) -> Result<Response<Agent>, Status> {
        let principal = principal(&request)?;
        Ok(Response::new(agents::heartbeat(self.executions.store(), &principal.tenant, request.into_inner()).await?))
    }

    async fn list_agents(&self, request: Request<ListAgentsRequest>) -> Result<Response<ListAgentsResponse>, Status> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        let statuses = enums("statuses", &request.statuses)?;
        let page = self
            .queries
            .list_agents(&principal.tenant, &statuses, validate::page_size(request.page_size), &request.page_token)
            .await?;
        Ok(Response::new(ListAgentsResponse {
            agents: page.items,
            next_page_token: page.next_cursor,
            as_of_offset: page.as_of_offset,
        }))
    }
}
