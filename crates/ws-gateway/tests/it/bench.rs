//! Measurements for the design targets of a replica (10,000 connections, ≤ 16 KiB per idle
//! connection, p99 < 10 ms at 5,000 events/s). Ignored by default and never asserted: run with
//! `cargo test -p ws-gateway --test it bench -- --ignored --nocapture`.

use crate::helpers::*;
use futures::StreamExt;
use serde_json::json;

fn resident_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:")).map(str::to_owned))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test"]
async fn bench_resident_memory_per_idle_subscribed_connection() {
    // The design load of a replica; BENCH_CONNECTIONS overrides it.
    let connections: usize = std::env::var("BENCH_CONNECTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    // This process holds the client side of every connection.
    runcast_runtime::limits::raise_open_files_limit().expect("open files limit");
    let world = World::start().await;
    let (process, gateway) = world.gateway_process(&[]).await;
    let pid = process.pid().expect("pid");
    let token = token("acme", "alice", 3600);
    // Warm up allocator arenas and lazy statics with a first batch.
    let mut clients = Vec::with_capacity(connections + 100);
    for _ in 0..100 {
        let mut ws = gateway.connect(&token).await;
        ws.subscribe(json!({"type": "subscribe", "channel": "executions"})).await;
        clients.push(ws);
    }
    let before = resident_kib(pid);
    for _ in 0..connections {
        let mut ws = gateway.connect(&token).await;
        ws.subscribe(json!({"type": "subscribe", "channel": "executions"})).await;
        clients.push(ws);
    }
    let after = resident_kib(pid);
    println!(
        "BENCH ws-gateway resident memory: {before} KiB with 100 connections, {after} KiB with {} → {:.1} KiB per idle subscribed connection",
        connections + 100,
        (after.saturating_sub(before)) as f64 / connections as f64
    );

    // And they are live: one event reaches every one of them.
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let frame = tokio::time::timeout(std::time::Duration::from_secs(30), ws.socket.next()).await;
                matches!(frame, Ok(Some(Ok(_)))).then(std::time::Instant::now)
            })
        })
        .collect();
    tokio::task::yield_now().await;
    let published = std::time::Instant::now();
    world
        .publish(&execution_event(
            "acme",
            "e-1",
            "wf",
            runcast_contract::v1::EventType::StepStarted,
            runcast_contract::v1::ExecutionStatus::Running,
        ))
        .await;
    let mut reached = Vec::new();
    for reader in readers {
        reached.extend(reader.await.expect("reader"));
    }
    println!(
        "BENCH ws-gateway one event fanned out to {} of {} connections; the last received it {:.1} ms after the publish",
        reached.len(),
        connections + 100,
        reached.iter().max().map_or(f64::NAN, |at| at.duration_since(published).as_secs_f64() * 1000.0)
    );
}

/// The first `"version":N` of a frame: the event's own version field (serialized before the
/// state), which this measurement uses to carry the publish time.
fn first_number_after(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let end = start + text[start..].find(|c: char| !c.is_ascii_digit())?;
    text[start..end].parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test"]
async fn bench_event_to_client_latency_at_5000_events_per_second() {
    // BENCH_CLIENTS overrides the number of subscribed clients.
    let clients: usize = std::env::var("BENCH_CLIENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    const RATE: u64 = 5_000;
    const SECONDS: u64 = 3;
    let world = World::start().await;
    let (_process, gateway) = world.gateway_process(&[]).await;
    let epoch = std::time::Instant::now();
    let total = (RATE * SECONDS) as usize;
    let mut readers = Vec::new();
    for _ in 0..clients {
        let mut ws = gateway.connect(&token("acme", "alice", 3600)).await;
        ws.subscribe(json!({"type": "subscribe", "channel": "executions"})).await;
        readers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(total);
            while latencies.len() < total {
                // A client that fell behind gets `resync` and nothing more: stop after a pause.
                let Ok(Some(Ok(frame))) =
                    tokio::time::timeout(std::time::Duration::from_secs(5), ws.socket.next()).await
                else {
                    break;
                };
                let Ok(text) = frame.into_text() else { continue };
                if let Some(sent) = first_number_after(&text, "\"version\":") {
                    let now = epoch.elapsed().as_micros() as u64;
                    latencies.push(now.saturating_sub(sent));
                }
            }
            latencies
        }));
    }
    let mut ticker = tokio::time::interval(std::time::Duration::from_millis(10));
    let per_tick = RATE / 100;
    let mut acks = std::collections::VecDeque::new();
    for _ in 0..(SECONDS * 100) {
        ticker.tick().await;
        for _ in 0..per_tick {
            let mut event = execution_event(
                "acme",
                "e-1",
                "wf",
                // Not a progress event: those may be coalesced, and every delivery is measured.
                runcast_contract::v1::EventType::StepStarted,
                runcast_contract::v1::ExecutionStatus::Running,
            );
            event.version = epoch.elapsed().as_micros() as u64;
            acks.push_back(world.publish_nowait(&event).await);
            if acks.len() > 1_000
                && let Some(ack) = acks.pop_front()
            {
                ack.await.expect("ack");
            }
        }
    }
    for ack in acks {
        ack.await.expect("ack");
    }
    let mut all = Vec::new();
    for reader in readers {
        all.extend(reader.await.expect("reader"));
    }
    all.sort_unstable();
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)] as f64 / 1000.0;
    assert!(!all.is_empty(), "nothing delivered");
    println!(
        "BENCH ws-gateway {} of {} deliveries to {clients} clients at {RATE} events/s: publish-to-client latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        all.len(),
        total * clients,
        at(0.5),
        at(0.99),
        at(1.0)
    );
}
