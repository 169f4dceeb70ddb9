//! What the persister tests share: an isolated test world (streams + database), the persister as
//! a process, protobuf events built the way the api builds them (whole state, version per
//! entity), pipelined publishing, and the expected read model as the fold of what was published.

use async_nats::HeaderMap;
use async_nats::jetstream;
use prost::Message as _;
use runcast_contract::v1::{
    Agent, AgentStatus, Approval, ApprovalStatus, Event, EventType, Execution, ExecutionStatus, LogLine,
    event::Payload, event::State,
};
use runcast_contract::{EntityId, StreamKind, Topology};
use runcast_runtime::config::StreamLimits;
use runcast_testkit::{Infra, Isolation, ServiceProcess, events, eventually};
use sqlx::PgPool;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// Un-awaited publish acks at most (STACK-NOTES: the client stalls beyond 5,000).
const PUBLISH_WINDOW: usize = 1000;
pub(crate) const WAIT: Duration = Duration::from_secs(90);

pub(crate) struct World {
    pub infra: Infra,
    pub isolation: Isolation,
    pub topology: Topology,
    pub jetstream: jetstream::Context,
    pub pool: PgPool,
}

impl World {
    /// Servers, a stream prefix and database of its own, streams and schema ready.
    pub(crate) async fn start() -> Self {
        let infra = Infra::start().await.expect("servers");
        let isolation = infra.isolate().await.expect("isolation");
        Self::on(infra, isolation).await
    }

    pub(crate) async fn on(infra: Infra, isolation: Isolation) -> Self {
        let topology = Topology::with_prefix(&isolation.stream_prefix).expect("prefix");
        let client =
            async_nats::ConnectOptions::new().retry_on_initial_connect().connect(infra.nats.url()).await.expect("nats");
        let jetstream = jetstream::new(client);
        runcast_runtime::nats::provision_streams(&jetstream, &topology, &StreamLimits::default())
            .await
            .expect("streams");
        let pool = PgPool::connect(&isolation.database_url).await.expect("postgres");
        event_persister::schema::migrate(&pool).await.expect("migrates");
        event_persister::schema::ensure_partitions(&pool, 2).await.expect("partitions");
        Self { infra, isolation, topology, jetstream, pool }
    }

    /// The persister process on this world, with short waits so tests run fast.
    pub(crate) async fn persister(&self, extra: &[(&str, &str)]) -> ServiceProcess {
        let mut env = vec![
            ("RUNCAST_BATCH_WAIT", "50ms"),
            ("RUNCAST_LAG_INTERVAL", "200ms"),
            ("RUNCAST_DB_RETRY_MAX", "1s"),
            ("RUNCAST_SHUTDOWN_GRACE", "5s"),
        ];
        env.extend_from_slice(extra);
        self.infra.services(&self.isolation, "persister-tests").start("event-persister", &env).await
    }

    pub(crate) fn subject(&self, kind: StreamKind, tenant: &str, entity: &str) -> String {
        self.topology.entity_subject(
            kind,
            &EntityId::parse("tenant", tenant).expect("id"),
            &EntityId::parse("entity", entity).expect("id"),
        )
    }

    /// Publishes in order with a bounded window of outstanding acks; returns each event with
    /// its offset.
    pub(crate) async fn publish(&self, events: Vec<(String, Event)>) -> Vec<Published> {
        publish(&self.jetstream, events).await
    }

    pub(crate) async fn history_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&self.pool).await.unwrap_or(-1)
    }

    /// Waits until the history holds `count` rows.
    pub(crate) async fn wait_for_history(&self, count: i64) {
        let outcome = eventually(&format!("{count} history rows"), WAIT, || async {
            (self.history_count().await == count).then_some(())
        })
        .await;
        if let Err(err) = outcome {
            panic!("{err} (now: {})", self.history_count().await);
        }
    }

    /// (stream, offset, event_id) of every history row, in order.
    pub(crate) async fn history(&self) -> Vec<(String, i64, String)> {
        sqlx::query_as("SELECT stream, stream_offset, event_id::text FROM events ORDER BY stream, stream_offset")
            .fetch_all(&self.pool)
            .await
            .expect("history")
    }

    pub(crate) async fn executions(&self) -> BTreeMap<(String, String), ExecutionView> {
        read_executions(&self.pool).await
    }
}

pub(crate) async fn publish(js: &jetstream::Context, events: Vec<(String, Event)>) -> Vec<Published> {
    let mut pending = VecDeque::with_capacity(PUBLISH_WINDOW);
    let mut published = Vec::with_capacity(events.len());
    for (subject, event) in events {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.event_id.as_str());
        let ack = js.publish_with_headers(subject, headers, event.encode_to_vec().into()).await.expect("publish");
        pending.push_back((event, ack));
        if pending.len() >= PUBLISH_WINDOW
            && let Some((event, ack)) = pending.pop_front()
        {
            published.push(Published::new(event, ack.await.expect("ack").sequence));
        }
    }
    while let Some((event, ack)) = pending.pop_front() {
        published.push(Published::new(event, ack.await.expect("ack").sequence));
    }
    published
}

#[derive(Debug, Clone)]
pub(crate) struct Published {
    pub event: Event,
    pub offset: u64,
}

impl Published {
    fn new(event: Event, offset: u64) -> Self {
        Self { event, offset }
    }
}

/// What the read model says about one execution.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExecutionView {
    pub version: i64,
    pub last_offset: i64,
    pub status: String,
    pub idempotency_key: Option<String>,
    pub state: Execution,
    /// (approval_id, status, version)
    /// (approval id, status) of each approval row.
    pub approvals: Vec<(String, String)>,
}

type ExecutionRow = (String, String, i64, i64, String, Option<String>, Vec<u8>);

pub(crate) async fn read_executions(pool: &PgPool) -> BTreeMap<(String, String), ExecutionView> {
    let rows: Vec<ExecutionRow> = sqlx::query_as(
        "SELECT tenant_id, execution_id, version, last_offset, status, idempotency_key, state
         FROM executions",
    )
    .fetch_all(pool)
    .await
    .expect("executions");
    let approvals: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT tenant_id, execution_id, approval_id, status FROM approvals
         ORDER BY tenant_id, execution_id, approval_id",
    )
    .fetch_all(pool)
    .await
    .expect("approvals");
    let mut views: BTreeMap<_, _> = rows
        .into_iter()
        .map(|(tenant, execution, version, last_offset, status, key, state)| {
            (
                (tenant, execution),
                ExecutionView {
                    version,
                    last_offset,
                    status,
                    idempotency_key: key,
                    state: Execution::decode(state.as_slice()).expect("state decodes"),
                    approvals: Vec::new(),
                },
            )
        })
        .collect();
    for (tenant, execution, approval, status) in approvals {
        if let Some(view) = views.get_mut(&(tenant, execution)) {
            view.approvals.push((approval, status));
        }
    }
    views
}

/// The read model the published events should produce: the state of each execution's last event.
pub(crate) fn expected_executions(published: &[Published]) -> BTreeMap<(String, String), ExecutionView> {
    let mut views: BTreeMap<(String, String), ExecutionView> = BTreeMap::new();
    let mut keys: BTreeMap<(String, String), String> = BTreeMap::new();
    for item in published {
        let Some(State::Execution(state)) = &item.event.state else {
            continue;
        };
        let key = (state.tenant_id.clone(), state.execution_id.clone());
        if let Some(Payload::ExecutionCreated(created)) = &item.event.payload {
            keys.insert(key.clone(), created.idempotency_key.clone());
        }
        let version = i64::try_from(state.version).expect("version");
        if views.get(&key).is_some_and(|view| view.version >= version) {
            continue;
        }
        let mut state = state.clone();
        state.offset = item.offset;
        let approvals = state
            .approvals
            .iter()
            .map(|a| {
                let status = ApprovalStatus::try_from(a.status).expect("status");
                (a.approval_id.clone(), runcast_contract::WireEnum::wire_name(status).to_owned())
            })
            .collect();
        views.insert(
            key,
            ExecutionView {
                version,
                last_offset: i64::try_from(item.offset).expect("offset"),
                status: runcast_contract::WireEnum::wire_name(ExecutionStatus::try_from(state.status).expect("status"))
                    .to_owned(),
                idempotency_key: None,
                state,
                approvals,
            },
        );
    }
    for (key, idempotency_key) in keys {
        if let Some(view) = views.get_mut(&key) {
            view.idempotency_key = Some(idempotency_key);
        }
    }
    views
}

/// Every row of the read model as text, for exact comparisons (rebuild, replicas).
pub(crate) async fn read_model_snapshot(pool: &PgPool) -> Vec<String> {
    let mut rows: Vec<String> = Vec::new();
    for query in [
        "SELECT to_jsonb(x)::text FROM executions x ORDER BY tenant_id, execution_id",
        "SELECT to_jsonb(x)::text FROM approvals x ORDER BY tenant_id, execution_id, approval_id",
        "SELECT to_jsonb(x)::text FROM agents x ORDER BY tenant_id, agent_id",
        "SELECT to_jsonb(x)::text FROM log_lines x ORDER BY tenant_id, execution_id, line_number",
    ] {
        rows.extend(sqlx::query_scalar::<_, String>(query).fetch_all(pool).await.expect("snapshot"));
    }
    rows
}

fn timestamp(seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds, nanos: 0 }
}

fn now_seconds() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The `count` events of one execution (at least 2), in order, each with the whole state after
/// it: created, started, an approval asked for and granted, progress, and completed last.
pub(crate) fn execution_events(tenant: &str, execution: &str, count: u64, at: i64) -> Vec<Event> {
    let mut state = Execution {
        execution_id: execution.into(),
        tenant_id: tenant.into(),
        workflow_id: "wf-1".into(),
        status: ExecutionStatus::Pending.into(),
        // One label: protobuf maps encode in hash order, one entry keeps the bytes comparable.
        labels: [("team".to_owned(), "ops".to_owned())].into(),
        created_at: Some(timestamp(at)),
        ..Default::default()
    };
    let mut events = Vec::new();
    for version in 1..=count {
        state.version = version;
        state.updated_at = Some(timestamp(at + i64::try_from(version).unwrap_or(0)));
        let (kind, payload) = match version {
            1 => (
                EventType::ExecutionCreated,
                Some(Payload::ExecutionCreated(runcast_contract::v1::ExecutionCreated {
                    idempotency_key: format!("key-{execution}"),
                })),
            ),
            2 => {
                state.status = ExecutionStatus::Running.into();
                state.started_at = state.updated_at;
                (EventType::ExecutionStarted, None)
            }
            v if v == count => {
                state.status = ExecutionStatus::Completed.into();
                state.progress = 100;
                state.finished_at = state.updated_at;
                (EventType::ExecutionCompleted, None)
            }
            3 => {
                state.status = ExecutionStatus::Blocked.into();
                state.approvals.push(Approval {
                    approval_id: "deploy".into(),
                    status: ApprovalStatus::Pending.into(),
                    reason: "needs a human".into(),
                    requested_at: state.updated_at,
                    ..Default::default()
                });
                (EventType::ApprovalRequired, None)
            }
            4 => {
                state.status = ExecutionStatus::Running.into();
                if let Some(approval) = state.approvals.first_mut() {
                    approval.status = ApprovalStatus::Granted.into();
                    approval.resolved_at = state.updated_at;
                }
                (EventType::ApprovalGranted, None)
            }
            v => {
                state.progress = u32::try_from(v.min(99)).unwrap_or(99);
                state.current_step = format!("step-{v}");
                (EventType::ExecutionProgress, None)
            }
        };
        events.push(Event {
            event_id: uuid::Uuid::now_v7().to_string(),
            tenant_id: tenant.into(),
            execution_id: execution.into(),
            workflow_id: "wf-1".into(),
            version,
            occurred_at: state.updated_at,
            r#type: kind.into(),
            payload,
            state: Some(State::Execution(state.clone())),
            ..Default::default()
        });
    }
    events
}

/// `executions` executions of `per_execution` events each, interleaved the way concurrent
/// executions interleave on the stream (per-execution order kept).
pub(crate) fn load(world: &World, executions: usize, per_execution: u64) -> Vec<(String, Event)> {
    load_at(world, executions, per_execution, now_seconds() - 3600)
}

/// [`load`] with the events' time (`occurred_at`, Unix seconds).
pub(crate) fn load_at(world: &World, executions: usize, per_execution: u64, at: i64) -> Vec<(String, Event)> {
    let scripts: Vec<(String, Vec<Event>)> = (0..executions)
        .map(|n| {
            let id = format!("exec-{n}");
            (world.subject(StreamKind::Executions, "acme", &id), execution_events("acme", &id, per_execution, at))
        })
        .collect();
    let mut events = Vec::with_capacity(executions * per_execution as usize);
    for version in 0..per_execution as usize {
        for (subject, script) in &scripts {
            events.push((subject.clone(), script[version].clone()));
        }
    }
    events
}

pub(crate) fn log_event(tenant: &str, execution: &str, first_line: u64, lines: u64) -> Event {
    Event {
        occurred_at: Some(timestamp(now_seconds())),
        ..events::log_event(
            tenant,
            execution,
            (first_line..first_line + lines)
                .map(|n| LogLine { line_number: n, text: format!("line {n}"), stream: 1 })
                .collect(),
        )
    }
}

pub(crate) fn agent_event(tenant: &str, agent: &str, version: u64, status: AgentStatus) -> Event {
    let at = timestamp(now_seconds());
    let kind = if version == 1 { EventType::AgentOnline } else { EventType::AgentHeartbeat };
    Event {
        occurred_at: Some(at),
        state: Some(State::Agent(Agent {
            agent_id: agent.into(),
            tenant_id: tenant.into(),
            status: status.into(),
            cpu_percent: 10.0 * version as f64,
            running_execution_ids: vec!["exec-1".into(), "exec-2".into()],
            timeout_seconds: 30,
            version,
            last_heartbeat_at: Some(at),
            online_since: Some(at),
            ..Default::default()
        })),
        ..events::agent_event(tenant, agent, version, kind)
    }
}
