//! A client that stops reading gets `resync`; a normal client on the same replica receives every
//! event; the replica's memory stays bounded.

use crate::helpers::*;
use runcast_contract::v1::{EventType, ExecutionStatus};
use serde_json::json;

/// The `offset` of an event frame, from its envelope (`…"channel":"…","offset":N,"data":…`).
fn envelope_offset(text: &str) -> Option<u64> {
    let start = text.find("\",\"offset\":")? + "\",\"offset\":".len();
    let end = start + text[start..].find(',')?;
    text[start..end].parse().ok()
}

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_gets_resync_while_a_normal_one_gets_every_event() {
    const EVENTS: usize = 50_000;
    let world = World::start().await;
    let (process, gateway) = world
        .gateway_process(&[
            ("RUNCAST_WS_QUEUE_CAPACITY", "4096"),
            // The stalled client does not read until every event is published: on a loaded
            // machine that can take longer than the default write timeout, which would drop it.
            ("RUNCAST_WS_WRITE_TIMEOUT", "300s"),
        ])
        .await;
    let pid = process.pid().expect("running");
    let token = token("acme", "alice", 600);

    let mut stalled = gateway.connect(&token).await;
    stalled.subscribe(json!({"type": "subscribe", "channel": "executions"})).await;
    let mut stalled_sse = gateway.sse("executions", &token).await;
    let mut normal = gateway.connect(&token).await;
    normal.subscribe(json!({"type": "subscribe", "channel": "executions"})).await;
    let baseline = resident_kib(pid);

    let reader = tokio::spawn(async move {
        let mut last = 0u64;
        let mut count = 0usize;
        while count < EVENTS {
            // Only the envelope is read (a full JSON parse per event would make the test client
            // itself the slow one in a debug build).
            let text = normal.next_text().await;
            assert!(!text.contains("\"type\":\"resync\""), "the normal client keeps up");
            if let Some(offset) = envelope_offset(&text) {
                assert!(offset > last, "in order, no duplicate");
                last = offset;
                count += 1;
            }
        }
        count
    });
    let payload = "x".repeat(200);
    let published = world
        .publish_many((0..EVENTS).map(|i| {
            let mut event = execution_event(
                "acme",
                &format!("e-{}", i % 100),
                "wf",
                EventType::StepStarted,
                ExecutionStatus::Running,
            );
            if let Some(runcast_contract::v1::event::State::Execution(state)) = &mut event.state {
                state.current_step = payload.clone();
            }
            event
        }))
        .await;
    assert_eq!(published.len(), EVENTS);
    let peak = resident_kib(pid);
    assert_eq!(reader.await.expect("reader"), EVENTS);

    // The stalled client reads again: what the kernel buffered, then the resync.
    let resync = stalled.until("resync").await;
    assert_eq!(resync["channel"], "executions");
    let offset = resync["offset"].as_u64().expect("offset");
    assert!(offset < published[EVENTS - 1], "{resync}");
    // Everything it could not take was dropped: the queue is bounded, so memory is too.
    assert!(peak.saturating_sub(baseline) < 200 * 1024, "resident memory grew from {baseline} KiB to {peak} KiB");
    // The stalled SSE client: events, then `resync`, then the end of the stream; reconnecting
    // with the last id it got resumes right after it.
    let mut last_id = None;
    let resync = loop {
        let record = stalled_sse.next().await.expect("the stream carries a resync before it ends");
        match record.event.as_deref() {
            Some("resync") => break record,
            _ => last_id = record.id.or(last_id),
        }
    };
    assert_eq!(resync.data["channel"], "executions");
    assert!(stalled_sse.next().await.is_none(), "the stream ends after resync");
    let last_id: u64 = last_id.expect("some events before the resync").parse().expect("numeric id");
    let mut resumed = SseClient::connect(
        &gateway.url("/sse?channel=executions"),
        &[("Authorization", format!("Bearer {token}")), ("Last-Event-ID", last_id.to_string())],
    )
    .await;
    let first = resumed.events(1).await.remove(0);
    assert_eq!(first.id, Some((last_id + 1).to_string()), "resumed right after the last event it got");

    let stats = gateway.stats().await;
    assert!(stats["resyncs"].as_u64().unwrap_or(0) >= 1, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_for_a_stalled_client_is_coalesced_newest_wins_instead_of_resync() {
    const EVENTS: usize = 20_000;
    let world = World::start().await;
    // A tiny queue: without coalescing, the first burst would overflow it.
    let gateway = world.gateway(&[("queue-capacity", "8"), ("write-timeout", "300s")]).await;
    let mut stalled = gateway.connect(&token("acme", "alice", 600)).await;
    stalled.subscribe(json!({"type": "subscribe", "channel": "executions:e-1"})).await;
    let payload = "p".repeat(300);
    let published = world
        .publish_many((0..EVENTS).map(|i| {
            let mut event =
                execution_event("acme", "e-1", "wf", EventType::ExecutionProgress, ExecutionStatus::Running);
            if let Some(runcast_contract::v1::event::State::Execution(state)) = &mut event.state {
                state.progress = (i % 100) as u32;
                state.current_step = payload.clone();
            }
            event
        }))
        .await;
    let last = *published.last().expect("published");
    let mut received = 0usize;
    let mut previous = 0u64;
    loop {
        let text = stalled.next_text().await;
        assert!(!text.contains("\"type\":\"resync\""), "coalescing keeps the queue from overflowing");
        let Some(offset) = envelope_offset(&text) else { continue };
        assert!(offset > previous, "still in offset order");
        previous = offset;
        received += 1;
        if offset == last {
            break;
        }
    }
    assert!(received < EVENTS, "older undelivered progress was replaced ({received} of {EVENTS} delivered)");
}
