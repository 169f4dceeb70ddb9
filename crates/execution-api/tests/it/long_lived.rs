//! Executions outlive the stream (DESIGN §7): once JetStream has aged an execution's events out,
//! the read model is its latest state for reads and writes, a write publishes against an empty
//! subject (two racing writers: one wins), deadlines far beyond the stream's age still expire once,
//! and PostgreSQL down at that moment is `UNAVAILABLE`, never `NOT_FOUND`.

use crate::support::{Executions, Stack, TENANT, admin, executions};
use futures::StreamExt as _;
use runcast_contract::v1::*;
use runcast_contract::{EntityId, StreamKind, Topology};
use std::time::Duration;
use tonic::Code;

/// A stream that forgets quickly; the duplicate window must not outlast it.
const SHORT_RETENTION: [(&str, &str); 2] =
    [("RUNCAST_STREAM_MAX_AGE", "3s"), ("RUNCAST_STREAM_DUPLICATE_WINDOW", "1s")];

fn set(id: &str, to: ExecutionStatus) -> UpdateExecutionStatusRequest {
    UpdateExecutionStatusRequest { execution_id: id.into(), status: to.into(), ..Default::default() }
}

async fn running(client: &mut Executions) -> Execution {
    let id = crate::support::create(client, "nightly").await;
    client.update_execution_status(set(&id, ExecutionStatus::Running)).await.expect("runs").into_inner()
}

/// Waits until the stream holds no event of `id` and the read model has it at `version`.
async fn wait_aged_out(stack: &Stack, pool: &sqlx::PgPool, id: &str, version: u64) {
    let topology = Topology::with_prefix(&stack.isolation.stream_prefix).expect("prefix");
    let tenant = EntityId::parse("tenant_id", TENANT).expect("tenant");
    let entity = EntityId::parse("execution_id", id).expect("id");
    let subject = topology.entity_subject(StreamKind::Executions, &tenant, &entity);
    let js = async_nats::jetstream::new(async_nats::connect(stack.infra.nats.url()).await.expect("nats"));
    let stream = js.get_stream(topology.stream_name(StreamKind::Executions)).await.expect("stream");
    runcast_testkit::eventually(&format!("{id} aged out at version {version}"), Duration::from_secs(30), || async {
        let in_stream = stream.direct_get_last_for_subject(subject.clone()).await.is_ok();
        let persisted: Option<i64> =
            sqlx::query_scalar("SELECT version FROM executions WHERE tenant_id = $1 AND execution_id = $2")
                .bind(TENANT)
                .bind(id)
                .fetch_optional(pool)
                .await
                .ok()
                .flatten();
        (!in_stream && persisted == Some(version as i64)).then_some(())
    })
    .await
    .expect("aged out of the stream, kept by the read model");
}

async fn history_types(pool: &sqlx::PgPool, id: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT event_type FROM events WHERE tenant_id = $1 AND execution_id = $2 ORDER BY stream_offset",
    )
    .bind(TENANT)
    .bind(id)
    .fetch_all(pool)
    .await
    .expect("history")
}

#[tokio::test]
async fn executions_idle_past_the_stream_max_age_keep_working() {
    let stack = Stack::start().await;
    let _persister = stack.persister_with(&SHORT_RETENTION).await;
    let (mut first, mut second) = tokio::join!(stack.api(&SHORT_RETENTION), stack.api(&SHORT_RETENTION));
    let token = admin();
    let (mut client, mut other) =
        (executions(&mut first, Some(&token)).await, executions(&mut second, Some(&token)).await);
    let pool = sqlx::PgPool::connect(&stack.isolation.database_url).await.expect("database");

    // A paused one, a blocked one, a running one, two for a race, and one whose approval deadline
    // lies far beyond the stream's age.
    let paused = running(&mut client).await;
    let logged = paused.execution_id.clone();
    let lines = |texts: &[&str]| AppendLogsRequest {
        execution_id: logged.clone(),
        lines: texts.iter().map(|text| LogLineInput { text: (*text).into(), ..Default::default() }).collect(),
        ..Default::default()
    };
    let appended = client.append_logs(futures::stream::iter(vec![lines(&["one", "two"])])).await.expect("logs");
    assert_eq!(appended.into_inner().last_line_number, 2);
    let paused = client
        .pause_execution(PauseExecutionRequest {
            execution_id: paused.execution_id,
            reason: "lunch".into(),
            ..Default::default()
        })
        .await
        .expect("pauses")
        .into_inner();
    let blocked = running(&mut client).await;
    let blocked = client
        .request_approval(RequestApprovalRequest {
            execution_id: blocked.execution_id,
            approval_id: "deploy".into(),
            ..Default::default()
        })
        .await
        .expect("blocks")
        .into_inner();
    let silent = running(&mut client).await;
    let raced = running(&mut client).await;
    let watched = running(&mut client).await;
    let deadline = chrono::Utc::now() + chrono::Duration::seconds(12);
    let due = running(&mut client).await;
    let due = client
        .request_approval(RequestApprovalRequest {
            execution_id: due.execution_id,
            approval_id: "sign-off".into(),
            deadline: Some(runcast_contract::json::from_datetime(deadline)),
            ..Default::default()
        })
        .await
        .expect("blocks")
        .into_inner();
    for execution in [&paused, &blocked, &silent, &raced, &watched, &due] {
        wait_aged_out(&stack, &pool, &execution.execution_id, execution.version).await;
    }
    runcast_testkit::eventually("the log lines in the history", Duration::from_secs(20), || async {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM log_lines WHERE execution_id = $1")
            .bind(&paused.execution_id)
            .fetch_one(&pool)
            .await
            .ok()?;
        (count == 2).then_some(())
    })
    .await
    .expect("persisted");

    // Log numbering continues from the history once the stream has forgotten the lines.
    let appended = client.append_logs(futures::stream::iter(vec![lines(&["three"])])).await.expect("logs");
    assert_eq!(appended.into_inner().last_line_number, 3, "numbering continues after the stream forgot");

    // Reads: the read model's state, with its version and offset.
    let got = client
        .get_execution(GetExecutionRequest { execution_id: paused.execution_id.clone() })
        .await
        .expect("get an aged-out execution")
        .into_inner();
    assert_eq!((got.status, got.version, got.offset), (paused.status, paused.version, paused.offset));

    // Writes: each continues the version sequence.
    let resumed = client
        .resume_execution(ResumeExecutionRequest { execution_id: paused.execution_id.clone(), ..Default::default() })
        .await
        .expect("resume an aged-out execution")
        .into_inner();
    assert_eq!((resumed.status, resumed.version), (i32::from(ExecutionStatus::Running), paused.version + 1));
    assert!(resumed.offset > paused.offset);
    let cancelled = other
        .cancel_execution(CancelExecutionRequest { execution_id: paused.execution_id.clone(), ..Default::default() })
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(cancelled.version, paused.version + 2);

    let approved = client
        .resolve_approval(ResolveApprovalRequest {
            execution_id: blocked.execution_id.clone(),
            approval_id: "deploy".into(),
            granted: true,
            comment: "go".into(),
            ..Default::default()
        })
        .await
        .expect("approve an aged-out execution")
        .into_inner();
    assert_eq!((approved.status, approved.version), (i32::from(ExecutionStatus::Running), blocked.version + 1));

    let failed = client
        .update_execution_status(UpdateExecutionStatusRequest {
            error: "disk full".into(),
            ..set(&silent.execution_id, ExecutionStatus::Failed)
        })
        .await
        .expect("fail an aged-out execution")
        .into_inner();
    assert_eq!((failed.status, failed.error.as_str()), (i32::from(ExecutionStatus::Failed), "disk full"));

    // Two writers racing on an aged-out execution, both at the version they read: one wins.
    let race = |mut client: Executions| {
        let request = UpdateExecutionStatusRequest {
            expected_version: raced.version,
            ..set(&raced.execution_id, ExecutionStatus::Paused)
        };
        tokio::spawn(async move { client.update_execution_status(request).await })
    };
    let (a, b) = tokio::join!(race(client.clone()), race(other.clone()));
    let outcomes = [a.expect("task"), b.expect("task")];
    let wins = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    assert_eq!(wins, 1, "exactly one racing writer wins: {outcomes:?}");
    let loser = outcomes.iter().find_map(|outcome| outcome.as_ref().err()).expect("a loser");
    assert_eq!(loser.code(), Code::Aborted, "{}", loser.message());

    // Watch: the current state first (from the read model), then the next event.
    let mut watch = client
        .watch_execution(WatchExecutionRequest { execution_id: watched.execution_id.clone(), from_offset: None })
        .await
        .expect("watch an aged-out execution")
        .into_inner();
    let first_event = watch.next().await.expect("current state").expect("event");
    let Some(event::State::Execution(state)) = first_event.state else { panic!("state") };
    assert_eq!((state.version, state.offset), (watched.version, watched.offset));
    other
        .report_progress(ReportProgressRequest {
            execution_id: watched.execution_id.clone(),
            percent: 40,
            ..Default::default()
        })
        .await
        .expect("progress");
    let next = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("the watcher sees the write in time")
        .expect("event")
        .expect("ok");
    assert_eq!((next.r#type, next.version), (i32::from(EventType::ExecutionProgress), watched.version + 1));

    // Watch from an offset the stream no longer holds: the missed events come from the history
    // (the stream part and then live follow), none skipped.
    let created_at: i64 =
        sqlx::query_scalar("SELECT min(stream_offset) FROM events WHERE tenant_id = $1 AND execution_id = $2")
            .bind(TENANT)
            .bind(&watched.execution_id)
            .fetch_one(&pool)
            .await
            .expect("the created event's offset");
    let mut replay = client
        .watch_execution(WatchExecutionRequest {
            execution_id: watched.execution_id.clone(),
            from_offset: Some(created_at as u64),
        })
        .await
        .expect("watch from an aged-out offset")
        .into_inner();
    let mut versions = Vec::new();
    while versions.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(10), replay.next())
            .await
            .expect("the missed events in time")
            .expect("event")
            .expect("ok");
        versions.push((event.version, event.offset));
    }
    assert_eq!(
        versions,
        [(watched.version, watched.offset), (next.version, next.offset)],
        "running (from the history), then progress (from the stream)"
    );

    // The deadline, far beyond the stream's age, expires exactly once.
    let id = due.execution_id.clone();
    runcast_testkit::eventually("the approval to expire", Duration::from_secs(40), || async {
        let types = history_types(&pool, &id).await;
        types.contains(&"approval.expired".to_owned()).then_some(())
    })
    .await
    .expect("expired");
    let expired =
        client.get_execution(GetExecutionRequest { execution_id: id.clone() }).await.expect("get").into_inner();
    assert_eq!(expired.status, i32::from(ExecutionStatus::Failed));
    assert_eq!(expired.version, due.version + 1, "one expiry event after the approval request");
    let types = history_types(&pool, &id).await;
    assert_eq!(types.iter().filter(|t| *t == "approval.expired").count(), 1, "{types:?}");
}

#[tokio::test]
async fn postgres_down_while_writing_to_an_aged_out_execution_is_unavailable_then_works() {
    let mut stack = Stack::start().await;
    let _persister = stack.persister_with(&SHORT_RETENTION).await;
    let mut api = stack.api(&SHORT_RETENTION).await;
    let mut client = executions(&mut api, Some(&admin())).await;
    let pool = sqlx::PgPool::connect(&stack.isolation.database_url).await.expect("database");
    let execution = running(&mut client).await;
    let id = execution.execution_id.clone();
    wait_aged_out(&stack, &pool, &id, execution.version).await;
    pool.close().await;

    stack.infra.postgres.stop();
    let pause = || PauseExecutionRequest { execution_id: id.clone(), ..Default::default() };
    let err = client.pause_execution(pause()).await.expect_err("no read model");
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    assert!(err.message().contains("PostgreSQL"), "says what is down: {}", err.message());
    let err = client.get_execution(GetExecutionRequest { execution_id: id.clone() }).await.expect_err("no read model");
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());

    stack.infra.postgres.restart().await.expect("postgres back");
    let paused = runcast_testkit::eventually("the pause to go through", Duration::from_secs(30), || {
        let mut client = client.clone();
        let request = pause();
        async move { client.pause_execution(request).await.ok() }
    })
    .await
    .expect("works once PostgreSQL is back")
    .into_inner();
    assert_eq!((paused.status, paused.version), (i32::from(ExecutionStatus::Paused), execution.version + 1));
}
