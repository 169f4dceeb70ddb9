//! The outbound queue is bounded in bytes too: clients that do not read, subscribed to logs of
//! ~500 KB events, never push the gateway's resident memory past roughly the byte bound per
//! connection plus a baseline; they get `resync` instead.

use crate::helpers::*;
use runcast_contract::v1::{Event, LogLine};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The process's resident memory; `None` once it is gone.
fn resident_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn big_log_event(tenant: &str, execution: &str, line: u64, text: &str) -> Event {
    Event {
        workflow_id: "wf".into(),
        ..runcast_testkit::events::log_event(
            tenant,
            execution,
            vec![LogLine { line_number: line, text: text.to_owned(), ..Default::default() }],
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_readers_of_large_log_events_get_resync_and_memory_stays_within_the_byte_bound() {
    const CLIENTS: u64 = 4;
    const QUEUE_BYTES: u64 = 1024 * 1024;
    const EVENTS: u64 = 400;
    const EVENT_BYTES: usize = 500 * 1024;
    let world = World::start().await;
    let queue_bytes = QUEUE_BYTES.to_string();
    let (process, gateway) = world
        .gateway_process(&[
            ("RUNCAST_WS_QUEUE_BYTES", queue_bytes.as_str()),
            // Only the byte bound may stop them: the count bound (1,024 events) would hold all.
            ("RUNCAST_WS_WRITE_TIMEOUT", "300s"),
            // The replica's recent window (up to 32 MiB of these events) is not what is measured.
            ("RUNCAST_WS_RECENT_EVENTS", "0"),
            // What is measured is what the gateway holds, not what its allocator has yet to give
            // back: mimalloc returns a freed page to the OS once its purge delay has passed (the
            // gateway's 10 ms; mimalloc 3's 1 s before it set one), and at the pace of a release
            // build 1 s was 15-25 MiB of these events already dropped (grown 39-53 MiB against
            // 25-28 MiB with the delay at 0).
            ("MIMALLOC_PURGE_DELAY", "0"),
        ])
        .await;
    let pid = process.pid().expect("running");
    let token = token("acme", "alice", 600);
    let mut stalled = Vec::new();
    for _ in 0..CLIENTS {
        let mut client = gateway.connect(&token).await;
        client.subscribe(json!({"type": "subscribe", "channel": "logs:e-big"})).await;
        stalled.push(client);
    }
    let baseline = resident_kib(pid).expect("VmRSS");

    let peak = Arc::new(AtomicU64::new(baseline));
    let sampling = tokio_util::sync::CancellationToken::new();
    let sampler = tokio::spawn({
        let (peak, sampling) = (peak.clone(), sampling.clone());
        async move {
            while !sampling.is_cancelled() {
                let Some(resident) = resident_kib(pid) else { break };
                peak.fetch_max(resident, Ordering::Relaxed);
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    });
    let text = "l".repeat(EVENT_BYTES);
    let offsets = world.publish_many((1..=EVENTS).map(|line| big_log_event("acme", "e-big", line, &text))).await;
    let last = *offsets.last().expect("published");
    // Every event has reached the gateway's live feed (the head moved to the last one).
    // Encoding 200 MB in a debug build beside other tests takes a while: a generous deadline.
    runcast_testkit::eventually("the gateway to dispatch every event", WAIT * 6, || async {
        (gateway.stats().await["streams"]["LOGS"]["head"].as_u64() >= Some(last)).then_some(())
    })
    .await
    .expect("dispatched");
    sampling.cancel();
    sampler.await.expect("sampler");
    let peak = peak.load(Ordering::Relaxed);

    // Per connection: its queue's bytes, the writer's batch (256 KiB) and the socket's write
    // buffer (1 MiB); per replica: the live feed's pull in flight (32 events) and slack for the
    // event being decoded and encoded and the allocator. Without the byte bound the queues hold
    // everything published (~200 MB).
    let published_kib = EVENTS * EVENT_BYTES as u64 / 1024;
    let per_connection_kib = (QUEUE_BYTES + 256 * 1024 + 1024 * 1024) / 1024;
    let allowed_kib = CLIENTS * per_connection_kib + 32 * EVENT_BYTES as u64 / 1024 + 24 * 1024;
    let grown = peak.saturating_sub(baseline);
    eprintln!(
        "baseline {baseline} KiB, peak {peak} KiB, grown {grown} KiB, allowed {allowed_kib} KiB of {published_kib} KiB published"
    );
    assert!(grown < allowed_kib, "resident memory grew by {grown} KiB (allowed {allowed_kib} KiB)");

    // Each non-reader, reading again, finds what fitted and then `resync`.
    for client in &mut stalled {
        let resync = client.until("resync").await;
        assert_eq!(resync["channel"], "logs:e-big", "{resync}");
        assert!(resync["offset"].as_u64().expect("offset") < last, "{resync}");
    }
    assert!(gateway.stats().await["resyncs"].as_u64() >= Some(CLIENTS));
}
