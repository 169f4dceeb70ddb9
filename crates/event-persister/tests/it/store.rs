//! The writes against a real PostgreSQL, without NATS: batches committed out of order (as two
//! replicas may commit them) and batches written twice (a redelivery) end in the same rows.

use crate::support;
use event_persister::decode::decode;
use event_persister::rows::Fold;
use event_persister::store;
use prost::Message as _;
use runcast_contract::StreamKind;
use runcast_testkit::PostgresServer;
use sqlx::PgPool;

fn fold(events: &[(u64, runcast_contract::v1::Event)]) -> Fold {
    fold_of(StreamKind::Executions, events)
}

fn fold_of(stream: StreamKind, events: &[(u64, runcast_contract::v1::Event)]) -> Fold {
    let mut fold = Fold::default();
    for (offset, event) in events {
        let decoded = decode(stream, *offset, &event.encode_to_vec()).expect("valid");
        fold.add(&decoded, true);
    }
    fold
}

/// A PostgreSQL of its own with the schema (the server lives as long as the first value).
async fn migrated(name: &str) -> (PostgresServer, PgPool) {
    let server = PostgresServer::start().await.expect("postgres");
    let url = server.create_database(&runcast_testkit::unique_name(name)).await.expect("database");
    let pool = PgPool::connect(&url).await.expect("connects");
    event_persister::schema::migrate(&pool).await.expect("migrates");
    (server, pool)
}

#[tokio::test]
async fn out_of_order_and_repeated_batches_end_in_the_same_rows() {
    let (_server, pool) = migrated("store").await;

    let events: Vec<_> = support::execution_events("acme", "e1", 5, chrono::Utc::now().timestamp())
        .into_iter()
        .enumerate()
        .map(|(n, event)| (n as u64 + 1, event))
        .collect();
    let created = fold(&events[..1]); // carries the idempotency key
    let middle = fold(&events[1..3]); // the approval is asked for
    let latest = fold(&events[3..]); // granted, then completed

    // The newest batch commits first, the created event last; then everything again.
    for batch in [&latest, &middle, &created, &latest, &created, &middle] {
        store::write_batch(&pool, batch, &[], None).await.expect("write");
    }
    let views = support::read_executions(&pool).await;
    let view = views.values().next().expect("one execution");
    assert_eq!(views.len(), 1);
    assert_eq!((view.version, view.last_offset, view.status.as_str()), (5, 5, "completed"));
    assert_eq!(view.idempotency_key.as_deref(), Some("key-e1"), "the late created event still sets the key");
    assert_eq!(view.approvals, [("deploy".to_owned(), "granted".to_owned())]);
    let history: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&pool).await.expect("count");
    assert_eq!(history, 5, "each event once");
}

/// Approval rows mirror the newest state: a row that state no longer lists goes, and a late batch
/// of an older state neither brings it back nor rolls the others back.
#[tokio::test]
async fn approvals_follow_the_newest_state_only() {
    use runcast_contract::v1::{Approval, ApprovalStatus, event::State};
    let (_server, pool) = migrated("approvals").await;

    // v3 asks for "deploy", v4 grants it (and here also lists "audit"), v5 lists "deploy" only.
    let mut events: Vec<_> = support::execution_events("acme", "e2", 5, chrono::Utc::now().timestamp())
        .into_iter()
        .enumerate()
        .map(|(n, event)| (n as u64 + 1, event))
        .collect();
    if let Some(State::Execution(state)) = events[3].1.state.as_mut() {
        state.approvals.push(Approval {
            approval_id: "audit".into(),
            status: ApprovalStatus::Pending.into(),
            requested_at: state.updated_at,
            ..Default::default()
        });
    }
    let approvals = |views: std::collections::BTreeMap<(String, String), support::ExecutionView>| {
        views.into_values().next().map(|view| view.approvals).unwrap_or_default()
    };
    let (older, newest) = (fold(&events[..4]), fold(&events[4..]));

    store::write_batch(&pool, &older, &[], None).await.expect("write");
    assert_eq!(
        approvals(support::read_executions(&pool).await),
        [("audit".to_owned(), "pending".to_owned()), ("deploy".to_owned(), "granted".to_owned())]
    );
    store::write_batch(&pool, &newest, &[], None).await.expect("write");
    let expected = [("deploy".to_owned(), "granted".to_owned())];
    assert_eq!(approvals(support::read_executions(&pool).await), expected, "audit is no longer listed");
    store::write_batch(&pool, &older, &[], None).await.expect("a late redelivery");
    assert_eq!(approvals(support::read_executions(&pool).await), expected, "an older state changes nothing");
}

/// Approval rows are rewritten only when their execution's list changes: a progress event on an
/// execution waiting for an approval leaves the row (its `xmin`, the writing transaction) alone.
#[tokio::test]
async fn approval_rows_are_rewritten_only_when_the_list_changes() {
    use runcast_contract::v1::event::State;
    let (_server, pool) = migrated("approvals_unchanged").await;
    // v3 asks for "deploy" (pending), v4 grants it, v5 is progress with the same list.
    let events: Vec<_> = support::execution_events("acme", "e3", 5, chrono::Utc::now().timestamp())
        .into_iter()
        .enumerate()
        .map(|(n, event)| (n as u64 + 1, event))
        .collect();
    let listed = |n: usize| match events[n].1.state.as_ref() {
        Some(State::Execution(state)) => state.approvals.clone(),
        _ => Vec::new(),
    };
    assert_eq!(listed(3), listed(4), "the load's v5 keeps v4's list");
    assert_ne!(listed(2), listed(3), "the load's v4 changes v3's list");
    let row_writer = || async {
        sqlx::query_scalar::<_, String>("SELECT xmin::text FROM approvals WHERE approval_id = 'deploy'")
            .fetch_one(&pool)
            .await
            .expect("the approval row")
    };
    store::write_batch(&pool, &fold(&events[..3]), &[], None).await.expect("write v1-v3");
    let requested = row_writer().await;
    store::write_batch(&pool, &fold(&events[3..4]), &[], None).await.expect("write v4");
    let granted = row_writer().await;
    assert_ne!(granted, requested, "the grant rewrote the row");
    store::write_batch(&pool, &fold(&events[4..]), &[], None).await.expect("write v5");
    assert_eq!(row_writer().await, granted, "an unchanged list leaves the row alone");
    let version: i64 = sqlx::query_scalar("SELECT version FROM executions WHERE execution_id = 'e3'")
        .fetch_one(&pool)
        .await
        .expect("execution");
    assert_eq!(version, 5, "while the execution itself moved on");
}

/// The history is keyed by position (stream, offset) plus the event's time and id: a redelivery
/// adds nothing, while a stream created anew, whose offsets start over, keeps both events at the
/// same offset.
#[tokio::test]
async fn an_offset_reused_by_a_new_stream_keeps_both_events_and_a_redelivery_neither() {
    let (_server, pool) = migrated("positions").await;
    let at = chrono::Utc::now().timestamp();
    let first_epoch = support::execution_events("acme", "old", 1, at);
    // The same time too: only the event id tells the two apart.
    let second_epoch = support::execution_events("acme", "new", 1, at);
    let at_offset_1 = |event: &runcast_contract::v1::Event| fold(&[(1, event.clone())]);
    store::write_batch(&pool, &at_offset_1(&first_epoch[0]), &[], None).await.expect("first epoch");
    store::write_batch(&pool, &at_offset_1(&first_epoch[0]), &[], None).await.expect("redelivered");
    store::write_batch(&pool, &at_offset_1(&second_epoch[0]), &[], None).await.expect("second epoch");
    let stored: Vec<(i64, String)> =
        sqlx::query_as("SELECT stream_offset, execution_id FROM events ORDER BY execution_id")
            .fetch_all(&pool)
            .await
            .expect("history");
    assert_eq!(stored, [(1, "new".to_owned()), (1, "old".to_owned())]);
}

/// A batch whose first events are new and whose last ones are already stored (a redelivery that
/// overlaps a batch another replica wrote) stores the new ones once, and the rest of the batch
/// (read model, applied offset) still lands: the fast insert that refuses repeats gives way to the
/// one that skips them, in a transaction of its own.
#[tokio::test]
async fn a_batch_partly_stored_already_adds_its_new_events_and_the_rest_of_it() {
    let (_server, pool) = migrated("overlap").await;
    let events: Vec<_> = support::execution_events("acme", "e1", 5, chrono::Utc::now().timestamp())
        .into_iter()
        .enumerate()
        .map(|(n, event)| (n as u64 + 1, event))
        .collect();
    store::write_batch(&pool, &fold(&events[3..]), &[], None).await.expect("the last two");
    store::write_batch(&pool, &fold(&events), &[], Some(("EXECUTIONS", 5))).await.expect("all five");

    let offsets: Vec<i64> = sqlx::query_scalar("SELECT stream_offset FROM events ORDER BY stream_offset")
        .fetch_all(&pool)
        .await
        .expect("history");
    assert_eq!(offsets, [1, 2, 3, 4, 5], "each event once");
    let views = support::read_executions(&pool).await;
    let view = views.values().next().expect("one execution");
    assert_eq!((view.version, view.status.as_str()), (5, "completed"));
    assert_eq!(view.idempotency_key.as_deref(), Some("key-e1"), "the created event of the retried batch counts");
    let applied: i64 = sqlx::query_scalar("SELECT applied_offset FROM applied_offsets WHERE stream = 'EXECUTIONS'")
        .fetch_one(&pool)
        .await
        .expect("applied offset");
    assert_eq!(applied, 5);
}

/// One batch may move stored executions forward, bring new ones and carry a stale state of
/// another (a redelivery): the stored ones are updated, the new ones inserted with their
/// idempotency key, and the stale one is left alone (its row not even rewritten).
#[tokio::test]
async fn a_batch_of_stored_new_and_stale_executions_writes_each_as_its_version_says() {
    let (_server, pool) = migrated("mixed").await;
    let at = chrono::Utc::now().timestamp();
    let numbered = |execution: &str, count: u64, first_offset: u64| -> Vec<_> {
        support::execution_events("acme", execution, count, at)
            .into_iter()
            .enumerate()
            .map(|(n, event)| (first_offset + n as u64, event))
            .collect()
    };
    let (a, b, c) = (numbered("a", 4, 1), numbered("b", 3, 11), numbered("c", 3, 21));
    store::write_batch(&pool, &fold(&[&a[..2], &c[..]].concat()), &[], None).await.expect("a v2, c v3");
    let row_writer = |execution: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT xmin::text FROM executions WHERE execution_id = $1")
                .bind(execution)
                .fetch_one(&pool)
                .await
                .expect("the execution row")
        }
    };
    let c_written = row_writer("c").await;

    store::write_batch(&pool, &fold(&[&a[2..], &b[..], &c[1..2]].concat()), &[], None).await.expect("mixed batch");
    let views = support::read_executions(&pool).await;
    let view = |execution: &str| {
        views
            .get(&("acme".to_owned(), execution.to_owned()))
            .map(|view| (view.version, view.last_offset, view.status.clone(), view.idempotency_key.clone()))
    };
    assert_eq!(view("a"), Some((4, 4, "completed".into(), Some("key-a".into()))), "stored: moved forward");
    assert_eq!(view("b"), Some((3, 13, "completed".into(), Some("key-b".into()))), "new: inserted");
    assert_eq!(view("c"), Some((3, 23, "completed".into(), Some("key-c".into()))), "stale: unchanged");
    assert_eq!(row_writer("c").await, c_written, "the stale state did not rewrite the row");
    let history: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&pool).await.expect("count");
    assert_eq!(history, 10, "each event once");
}

/// Updates that change no indexed column are HOT (in place, no new index entries), which is
/// most of the read model's work: the progress reports of an execution with a heartbeat
/// timeout (its deadline, indexed for the sweeper, moves only once per granule) and an agent's
/// heartbeats (no index reads `last_heartbeat_at`). Each event is its own batch, one update each.
#[tokio::test]
async fn progress_of_a_watched_execution_and_heartbeats_of_an_agent_update_their_rows_in_place() {
    use runcast_contract::v1::{AgentStatus, event::State};
    let (_server, pool) = migrated("hot").await;
    // Timeout 300 s: a granule of 5 s. The events are 1 s apart; v5-v15 are progress reports of
    // a running execution (v3 and v4 block and resume it, v16 would complete it).
    let at = chrono::Utc::now().timestamp() / 5 * 5;
    let mut execution: Vec<_> = support::execution_events("acme", "e1", 16, at)
        .into_iter()
        .enumerate()
        .map(|(n, event)| (n as u64 + 1, event))
        .collect();
    for (_, event) in &mut execution {
        if let Some(State::Execution(state)) = event.state.as_mut() {
            state.heartbeat_timeout_seconds = 300;
        }
    }
    let agent: Vec<_> = (1..=10)
        .map(|version| {
            let mut event = support::agent_event("acme", "a1", version, AgentStatus::Online);
            if let Some(State::Agent(state)) = event.state.as_mut() {
                state.last_heartbeat_at = Some(prost_types::Timestamp { seconds: at + version as i64, nanos: 0 });
            }
            (100 + version, event)
        })
        .collect();
    store::write_batch(&pool, &fold(&execution[..4]), &[], None).await.expect("v1-v4");
    store::write_batch(&pool, &fold_of(StreamKind::Agents, &agent[..1]), &[], None).await.expect("online");
    for event in &execution[4..15] {
        store::write_batch(&pool, &fold(std::slice::from_ref(event)), &[], None).await.expect("progress");
    }
    for event in &agent[1..] {
        let batch = fold_of(StreamKind::Agents, std::slice::from_ref(event));
        store::write_batch(&pool, &batch, &[], None).await.expect("heartbeat");
    }
    let deadlines: i64 = sqlx::query_scalar("SELECT count(*) FROM executions WHERE heartbeat_deadline IS NOT NULL")
        .fetch_one(&pool)
        .await
        .expect("deadline");
    assert_eq!(deadlines, 1, "the running execution has a deadline");
    // (updates, HOT updates) per table, once the writing sessions have reported them.
    let updates = |table: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (i64, i64)>(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = $1",
            )
            .bind(table)
            .fetch_one(&pool)
            .await
            .ok()
        }
    };
    let counted = runcast_testkit::eventually("the updates counted", std::time::Duration::from_secs(30), || async {
        let (executions, agents) = (updates("executions").await?, updates("agents").await?);
        (executions.0 >= 11 && agents.0 >= 9).then_some((executions, agents))
    })
    .await;
    let ((updated, hot), (agent_updated, agent_hot)) = counted.unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(updated, 11, "one update per progress report");
    // Updated at +5 s to +15 s: the deadline (+305 s to +315 s) moves at +310 s and +315 s only.
    assert_eq!(hot, 9, "execution updates HOT");
    assert_eq!((agent_updated, agent_hot), (9, 9), "every heartbeat HOT");
}
