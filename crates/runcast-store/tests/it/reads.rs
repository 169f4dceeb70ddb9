//! Typed reads with logic: pages and cursors, `as_of_offset`, per-tenant retention, how far the
//! history reaches.

use chrono::{DateTime, Duration, Utc};
use prost::Message as _;
use runcast_contract::v1::{Event, Execution, ExecutionStatus};
use runcast_contract::{EntityId, StreamKind};
use runcast_store::history::{EntityFilter, EventQuery};
use runcast_store::read_model::ExecutionQuery;
use runcast_store::rows::{Batch, ExecutionRow, HistoryRow};
use runcast_store::{Cursor, PgPool};
use runcast_testkit::PostgresServer;

async fn database(server: &PostgresServer) -> PgPool {
    let url = server.create_database(&runcast_testkit::unique_name("store")).await.expect("database");
    let pool = PgPool::connect(&url).await.expect("connects");
    runcast_store::schema::migrate(&pool).await.expect("migrates");
    runcast_store::schema::ensure_partitions(&pool, 1).await.expect("partitions");
    pool
}

fn id(value: &str) -> EntityId {
    EntityId::parse("id", value).expect("id")
}

fn history(tenant: &str, execution: &str, offset: i64, at: DateTime<Utc>) -> HistoryRow {
    let event = Event { tenant_id: tenant.into(), execution_id: execution.into(), ..Default::default() };
    HistoryRow {
        occurred_at: at,
        event_id: uuid::Uuid::now_v7(),
        stream: StreamKind::Executions.base_name(),
        stream_offset: offset,
        tenant_id: tenant.into(),
        execution_id: execution.into(),
        agent_id: String::new(),
        workflow_id: "wf".into(),
        event_type: "execution.created",
        version: 1,
        body: event.encode_to_vec(),
    }
}

fn execution(tenant: &str, execution_id: &str, offset: i64, created: DateTime<Utc>) -> ExecutionRow {
    let state = Execution { execution_id: execution_id.into(), tenant_id: tenant.into(), ..Default::default() };
    ExecutionRow {
        tenant_id: tenant.into(),
        execution_id: execution_id.into(),
        workflow_id: "wf".into(),
        status: "running",
        version: 1,
        last_offset: offset,
        progress: 0,
        current_step: String::new(),
        approvals: "[]".into(),
        labels: "{}".into(),
        error: String::new(),
        idempotency_key: None,
        state: state.encode_to_vec(),
        created_at: created,
        updated_at: created,
        started_at: None,
        finished_at: None,
        agent_id: String::new(),
        heartbeat_deadline: None,
        approval_rows: Vec::new(),
    }
}

#[tokio::test]
async fn pages_follow_their_cursors_to_the_end_and_carry_as_of_offset() {
    let server = PostgresServer::start().await.expect("postgres");
    let pool = database(&server).await;
    let acme = id("acme");
    let query = ExecutionQuery { statuses: &[ExecutionStatus::Running], page_size: 2, ..Default::default() };
    let empty = runcast_store::read_model::list_executions(&pool, &acme, &query).await.expect("list");
    assert_eq!((empty.items.len(), empty.next_cursor.as_str(), empty.as_of_offset), (0, "", 0));

    let now = Utc::now();
    let rows: Vec<_> = (1..=5).map(|n| execution("acme", &format!("e{n}"), n, now + Duration::seconds(n))).collect();
    let other = [execution("other", "x1", 9, now)];
    let history: Vec<_> = (1..=5).map(|n| history("acme", &format!("e{n}"), n, now)).collect();
    let batch = Batch { history: &history, executions: rows.iter().chain(&other).collect(), ..Default::default() };
    runcast_store::write::write_batch(&pool, &batch, &[], Some(("EXECUTIONS", 5))).await.expect("write");
    assert_eq!(runcast_store::read_model::as_of_offset(&pool, StreamKind::Executions).await.expect("offset"), 5);

    // Newest first, two at a time, the other tenant never.
    let mut seen = Vec::new();
    let mut after: Option<Cursor> = None;
    loop {
        let query = ExecutionQuery { page_size: 2, after: after.as_ref(), ..Default::default() };
        let page = runcast_store::read_model::list_executions(&pool, &acme, &query).await.expect("page");
        assert_eq!(page.as_of_offset, 5);
        seen.extend(page.items.iter().map(|e| (e.execution_id.clone(), e.offset)));
        if page.next_cursor.is_empty() {
            break;
        }
        after = Cursor::decode(&page.next_cursor).expect("our cursor");
    }
    let expected: Vec<_> = (1..=5).rev().map(|n| (format!("e{n}"), n as u64)).collect();
    assert_eq!(seen, expected);

    // The history by time, with an event cursor, and by offset for a resume.
    let first = EventQuery { page_size: 3, ..Default::default() };
    let page = runcast_store::history::list_events(&pool, &acme, &first).await.expect("events");
    assert_eq!(page.items.len(), 3);
    let next =
        EventQuery { page_size: 3, after: Cursor::decode_event(&page.next_cursor).expect("event cursor"), ..first };
    let rest = runcast_store::history::list_events(&pool, &acme, &next).await.expect("events");
    assert_eq!((rest.items.len(), rest.next_cursor.as_str()), (2, ""));
    let stored = runcast_store::history::page_by_offset(
        &pool,
        StreamKind::Executions,
        &acme,
        EntityFilter { execution_id: Some("e3"), ..Default::default() },
        0,
        u64::MAX,
        10,
    )
    .await
    .expect("by offset");
    assert_eq!(stored.iter().map(|s| s.offset).collect::<Vec<_>>(), [3]);
    assert!(runcast_store::history::reaches(&pool, StreamKind::Executions, 0).await.expect("reaches"));
    assert!(!runcast_store::history::reaches(&pool, StreamKind::Agents, 0).await.expect("reaches"));
}

#[tokio::test]
async fn a_tenants_deletion_spares_other_tenants_and_newer_events() {
    let server = PostgresServer::start().await.expect("postgres");
    let pool = database(&server).await;
    let now = Utc::now();
    let old = now - Duration::hours(2);
    let rows = [history("acme", "e1", 1, old), history("acme", "e2", 2, now), history("other", "x1", 3, old)];
    let batch = Batch { history: &rows, ..Default::default() };
    runcast_store::write::write_batch(&pool, &batch, &[], None).await.expect("write");
    let cutoff = now - Duration::hours(1);
    let deleted =
        runcast_store::retention::delete_tenant_events_older_than(&pool, &id("acme"), cutoff).await.expect("delete");
    assert_eq!(deleted, 1);
    let left: Vec<(String, i64)> = sqlx::query_as("SELECT tenant_id, stream_offset FROM events ORDER BY stream_offset")
        .fetch_all(&pool)
        .await
        .expect("rows");
    assert_eq!(left, [("acme".to_owned(), 2), ("other".to_owned(), 3)]);
}

#[tokio::test]
async fn without_a_schema_archived_reads_find_nothing() {
    let server = PostgresServer::start().await.expect("postgres");
    let url = server.create_database(&runcast_testkit::unique_name("store")).await.expect("database");
    let pool = PgPool::connect(&url).await.expect("connects");
    assert_eq!(runcast_store::read_model::execution(&pool, &id("acme"), &id("e1")).await.expect("none"), None);
    assert_eq!(runcast_store::history::log_position(&pool, &id("acme"), &id("e1")).await.expect("none"), (0, 0));
    assert!(!runcast_store::history::reaches(&pool, StreamKind::Executions, 0).await.expect("false"));
    // Lists are not archived reads: no schema is a fault there.
    let err = runcast_store::read_model::as_of_offset(&pool, StreamKind::Executions).await.expect_err("no table");
    assert_eq!(err.kind(), runcast_store::ErrorKind::Internal);
}

/// Scans so far of `index` on every partition of `events`.
async fn scans_of(pool: &PgPool, index: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(sum(s.idx_scan), 0)::bigint FROM pg_stat_user_indexes s
         JOIN pg_inherits i ON i.inhrelid = s.indexrelid WHERE i.inhparent = $1::regclass",
    )
    .bind(index)
    .fetch_one(pool)
    .await
    .expect("index statistics")
}

#[tokio::test]
async fn entity_indexes_leave_out_empty_ids_and_entity_reads_still_use_them() {
    let server = PostgresServer::start().await.expect("postgres");
    let pool = database(&server).await;
    for (index, predicate) in [
        ("events_execution", "WHERE (execution_id <> ''::text)"),
        ("events_workflow", "WHERE (workflow_id <> ''::text)"),
    ] {
        let definition: String = sqlx::query_scalar("SELECT pg_get_indexdef($1::regclass)")
            .bind(index)
            .fetch_one(&pool)
            .await
            .expect("index");
        assert!(definition.ends_with(predicate), "{index} is partial: {definition}");
    }

    // Agent heartbeats (no execution, no workflow), executions outside any workflow, and 40 in
    // workflows: enough rows that the planner picks an index over a scan only where it helps.
    let now = Utc::now();
    let mut rows = Vec::new();
    for n in 0..3_000 {
        let mut row = history("acme", "", n, now);
        (row.stream, row.agent_id, row.workflow_id, row.event_type) =
            (StreamKind::Agents.base_name(), format!("agent-{}", n % 100), String::new(), "agent.heartbeat");
        rows.push(row);
    }
    for n in 0..2_000 {
        let mut row = history("acme", &format!("e{}", n % 80), n, now + Duration::milliseconds(n));
        row.workflow_id = if n % 80 < 40 { format!("wf{}", n % 80) } else { String::new() };
        rows.push(row);
    }
    let batch = Batch { history: &rows, ..Default::default() };
    runcast_store::write::write_batch(&pool, &batch, &[], None).await.expect("write");
    sqlx::query("ANALYZE events").execute(&pool).await.expect("analyze");
    let before = (scans_of(&pool, "events_execution").await, scans_of(&pool, "events_workflow").await);

    let acme = id("acme");
    let (e7, wf3, e50) = (id("e7"), id("wf3"), id("e50"));
    let by_execution = EventQuery { execution_id: Some(&e7), page_size: 100, ..Default::default() };
    let page = runcast_store::history::list_events(&pool, &acme, &by_execution).await.expect("by execution");
    let offsets: Vec<u64> = page.items.iter().map(|event| event.offset).collect();
    assert_eq!(offsets, (0..2_000).filter(|n| n % 80 == 7).collect::<Vec<u64>>());
    let by_workflow = EventQuery { workflow_id: Some(&wf3), page_size: 100, ..Default::default() };
    let page = runcast_store::history::list_events(&pool, &acme, &by_workflow).await.expect("by workflow");
    assert_eq!(page.items.len(), 25);
    assert!(page.items.iter().all(|event| event.execution_id == "e3"));
    let replay = EntityFilter { execution_id: Some(e50.as_str()), ..Default::default() };
    let stored = runcast_store::history::page_by_offset(&pool, StreamKind::Executions, &acme, replay, 0, u64::MAX, 100)
        .await
        .expect("replay of an execution outside any workflow");
    assert_eq!(
        stored.iter().map(|s| s.offset).collect::<Vec<_>>(),
        (0..2_000).filter(|n| n % 80 == 50).collect::<Vec<u64>>()
    );
    // Every agent event is still in the history, found by its type.
    let heartbeats = [runcast_contract::v1::EventType::AgentHeartbeat];
    let by_type = EventQuery { types: &heartbeats, page_size: 5_000, ..Default::default() };
    assert_eq!(runcast_store::history::list_events(&pool, &acme, &by_type).await.expect("by type").items.len(), 3_000);

    // The partial indexes served the reads by execution (list and replay) and by workflow.
    runcast_testkit::eventually("the index scans counted", std::time::Duration::from_secs(15), || async {
        let after = (scans_of(&pool, "events_execution").await, scans_of(&pool, "events_workflow").await);
        (after.0 >= before.0 + 2 && after.1 > before.1).then_some(())
    })
    .await
    .expect("reads by execution and by workflow use the partial indexes");
}
