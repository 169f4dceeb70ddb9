//! Measurements for the design targets (DESIGN/issue: ≤ 16 KiB per idle connection). Ignored by
//! default and never asserted: run with
//! `cargo test -p ws-gateway --test it bench -- --ignored --nocapture`.

use crate::helpers::*;
use runcast_testkit::ServiceProcess;
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
    const CONNECTIONS: usize = 2_000;
    let world = World::start().await;
    let nats_url = world.infra.nats.url();
    let mut process = ServiceProcess::spawn(
        "ws-gateway",
        &[
            ("NATS_URL", nats_url.as_str()),
            ("RUNCAST_STREAM_PREFIX", world.isolation.stream_prefix.as_str()),
            ("DATABASE_URL", world.isolation.database_url.as_str()),
            ("RUNCAST_JWT_SECRET", SECRET),
        ],
    )
    .await
    .expect("gateway process");
    let gateway = Gateway { addr: process.addr("http_addr").await.expect("address"), shutdown: Default::default() };
    runcast_testkit::eventually("ready", WAIT, || {
        let url = gateway.url("/readyz");
        async move { (reqwest::get(url).await.ok()?.status() == 200).then_some(()) }
    })
    .await
    .expect("ready");
    let pid = process.pid().expect("pid");
    let token = token("acme", "alice", 3600);
    // Warm up allocator arenas and lazy statics with a first batch.
    let mut clients = Vec::with_capacity(CONNECTIONS + 100);
    for _ in 0..100 {
        let mut ws = gateway.connect(&token).await;
        ws.subscribe(json!({"type": "subscribe", "channel": "executions"})).await;
        clients.push(ws);
    }
    let before = resident_kib(pid);
    for _ in 0..CONNECTIONS {
        let mut ws = gateway.connect(&token).await;
        ws.subscribe(json!({"type": "subscribe", "channel": "executions"})).await;
        clients.push(ws);
    }
    let after = resident_kib(pid);
    println!(
        "resident memory: {before} KiB with 100 connections, {after} KiB with {} → {:.1} KiB per idle subscribed connection",
        CONNECTIONS + 100,
        (after.saturating_sub(before)) as f64 / CONNECTIONS as f64
    );
}
