//! Reading after an offset, against the in-memory log: which source serves which part, and why a
//! position is not recovered.

use futures::StreamExt as _;
use runcast_contract::gateway::NotRecovered;
use runcast_contract::v1::{EventType, ExecutionStatus};
use runcast_contract::{EntityId, StreamKind, Topology};
use runcast_eventlog::{EventLog, MemoryLog, Plan, Scope, plan, read_after};
use runcast_testkit::events::execution_event;

const KIND: StreamKind = StreamKind::Executions;

fn tenant() -> EntityId {
    EntityId::parse("tenant_id", "acme").expect("tenant")
}

/// Ten events alternating between executions e1 and e2 (e1 at odd offsets), plus one of another
/// tenant at offset 11.
fn log() -> MemoryLog {
    let log = MemoryLog::new(Topology::with_prefix("t").expect("prefix"));
    for version in 1..=10 {
        let execution = if version % 2 == 1 { "e1" } else { "e2" };
        let event = execution_event(
            "acme",
            execution,
            "nightly",
            version,
            EventType::ExecutionProgress,
            ExecutionStatus::Running,
        );
        log.append(KIND, &event);
    }
    let other = execution_event("other", "e1", "nightly", 1, EventType::ExecutionCreated, ExecutionStatus::Pending);
    log.append(KIND, &other);
    log
}

fn execution_scope(id: &str) -> Scope {
    let topology = Topology::with_prefix("t").expect("prefix");
    let id = EntityId::parse("execution_id", id).expect("id");
    Scope {
        subject: topology.entity_subject(KIND, &tenant(), &id),
        execution_id: Some(id.to_string()),
        ..Scope::default()
    }
}

async fn planned(log: &MemoryLog, since: u64, epoch: Option<&str>) -> Result<Plan, NotRecovered> {
    plan(log, KIND, since, epoch).await.expect("the log answers")
}

async fn offsets(log: &MemoryLog, scope: &Scope, since: u64, plan: &Plan, batch: usize) -> Vec<u64> {
    let tenant = tenant();
    read_after(log, KIND, &tenant, scope, since, plan, batch).map(|read| read.expect("no error").offset).collect().await
}

#[tokio::test]
async fn a_position_the_stream_holds_is_read_from_the_stream_alone() {
    let log = log();
    log.set_history_available(false); // not needed: must not be asked
    let plan = planned(&log, 4, None).await.expect("held");
    assert!(!plan.from_history);
    assert_eq!(plan.bounds.last, 11);
    assert_eq!(offsets(&log, &execution_scope("e1"), 4, &plan, 2).await, [5, 7, 9]);
    assert_eq!(
        offsets(&log, &execution_scope("e1"), 11, &planned(&log, 11, None).await.expect("head"), 2).await,
        [0u64; 0]
    );
}

#[tokio::test]
async fn what_the_stream_aged_out_comes_from_the_history_in_pages_then_the_stream() {
    let log = log();
    log.age_out(KIND, 6);
    let plan = planned(&log, 0, None).await.expect("the history reaches back");
    assert!(plan.from_history);
    // Pages of one and of many give the same events, each once, in order across the seam.
    for batch in [1, 2, 100] {
        assert_eq!(offsets(&log, &execution_scope("e1"), 0, &plan, batch).await, [1, 3, 5, 7, 9], "batch {batch}");
    }
    // A page that ends exactly at the seam (offset 5 is the last one before the stream's first).
    assert_eq!(offsets(&log, &execution_scope("e2"), 2, &plan, 1).await, [4, 6, 8, 10]);
    // The tenant is part of the scope in the history too.
    let whole_tenant = Scope { subject: "t.exec.acme.*".into(), ..Scope::default() };
    assert_eq!(offsets(&log, &whole_tenant, 0, &plan, 3).await, (1..=10).collect::<Vec<_>>());
}

#[tokio::test]
async fn positions_nobody_holds_are_not_recovered_and_say_why() {
    let log = log();
    log.age_out(KIND, 6);
    log.drop_history_before(KIND, 3);
    assert_eq!(planned(&log, 1, None).await, Err(NotRecovered::TooOld));
    assert!(planned(&log, 2, None).await.is_ok(), "offset 3 onwards is in the history");
    assert_eq!(planned(&log, 12, None).await, Err(NotRecovered::EpochChanged), "beyond the stream's end");
    let epoch = log.bounds(KIND).await.expect("bounds").epoch;
    assert!(planned(&log, 8, Some(&epoch)).await.is_ok());
    log.set_epoch(KIND, "2026-12-02T00:00:00Z");
    assert_eq!(planned(&log, 8, Some(&epoch)).await, Err(NotRecovered::EpochChanged));
    log.set_history_available(false);
    assert_eq!(planned(&log, 2, None).await, Err(NotRecovered::Unavailable));
    assert!(planned(&log, 6, None).await.is_ok(), "the stream alone needs no history");
}

#[tokio::test]
async fn a_history_that_fails_mid_read_ends_the_read_with_an_error_after_what_it_gave() {
    let log = log();
    log.age_out(KIND, 6);
    let plan = planned(&log, 0, None).await.expect("held");
    let tenant = tenant();
    let scope = execution_scope("e1");
    let mut read = read_after(&log, KIND, &tenant, &scope, 0, &plan, 1);
    assert_eq!(read.next().await.map(|r| r.expect("first page").offset), Some(1));
    log.set_history_available(false);
    let failed = read.next().await.expect("an item").expect_err("the history is down");
    assert!(failed.from_history);
    assert_eq!(failed.error.kind(), runcast_runtime::ErrorKind::Unavailable);
    assert!(read.next().await.is_none(), "nothing after the error");
}
