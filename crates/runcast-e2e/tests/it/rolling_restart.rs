//! A rolling restart of three gateways under 1,000 connected WebSocket clients while events flow:
//! each gateway is taken out of the load balancer, SIGTERMed, restarted and ready before the next.
//! Every client resumes with `since_offset` after the `reconnect` hint's `retry_after_ms` and ends
//! with every offset of its execution once, in order. The drain's delays are drawn uniformly from
//! `RUNCAST_WS_DRAIN_RECONNECT_WINDOW`, so the reconnect rate stays under a bound the test
//! measures (peak reconnects within any second) and prints.

use crate::support::*;
use prost::Message as _;
use runcast_contract::v1::{Event, EventType, ExecutionStatus};
use runcast_contract::{EntityId, StreamKind, Topology};
use runcast_testkit::{Infra, eventually};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const CLIENTS: usize = 1_000;
const GATEWAYS: usize = 3;
const EXECUTIONS: usize = 10;
/// The gateways' drain window.
const RECONNECT_WINDOW: Duration = Duration::from_secs(3);
/// The bound: even if every client were on the draining gateway, spread over the window they
/// arrive at `CLIENTS / window` per second; 20% above it for the randomness of the draws. All at
/// once (no jitter) would put the clients of one gateway (over 300) within well under a second.
const MAX_RECONNECTS_PER_SECOND: usize = CLIENTS * 12 / 10 / RECONNECT_WINDOW.as_secs() as usize;
/// Events per second published while the gateways restart.
const EVENT_INTERVAL: Duration = Duration::from_millis(50);

fn step_event(execution: &str, version: u64, kind: EventType) -> Event {
    runcast_testkit::events::execution_event(TENANT, execution, "wf-rolling", version, kind, ExecutionStatus::Running)
}

/// Offsets published per execution.
type Published = Arc<Mutex<HashMap<String, BTreeSet<u64>>>>;

async fn publish(
    js: &async_nats::jetstream::Context,
    topology: &Topology,
    execution: &str,
    event: &Event,
    published: &Published,
) {
    let tenant = EntityId::parse("tenant_id", TENANT).expect("tenant");
    let entity = EntityId::parse("execution_id", execution).expect("id");
    let subject = topology.entity_subject(StreamKind::Executions, &tenant, &entity);
    let ack = js.publish(subject, event.encode_to_vec().into()).await.expect("published").await.expect("acknowledged");
    lock(published).entry(execution.to_owned()).or_default().insert(ack.sequence);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_three_gateways_loses_no_event_of_1000_clients_and_spreads_reconnects() {
    let began = Instant::now();
    let infra = Infra::start().await.unwrap_or_else(|err| panic!("{err}"));
    let isolation = infra.isolate().await.unwrap_or_else(|err| panic!("{err}"));
    let env = infra.services(&isolation, SECRET);
    let window = format!("{}s", RECONNECT_WINDOW.as_secs());
    let gateway_env = [("RUNCAST_WS_DRAIN_RECONNECT_WINDOW", window.as_str()), ("RUNCAST_SHUTDOWN_GRACE", "5s")];
    let balancer = Arc::new(Balancer::default());
    let mut gateways = Vec::new();
    for index in 0..GATEWAYS {
        let mut gateway = env.spawn("ws-gateway", &gateway_env).await;
        balancer.set(index, Some(gateway.addr("http_addr").await.expect("address")));
        gateways.push(gateway);
    }
    let topology = Topology::with_prefix(&isolation.stream_prefix).expect("prefix");
    let js = async_nats::jetstream::new(async_nats::connect(infra.nats.url()).await.expect("test client"));
    let published: Published = Arc::default();
    let executions: Vec<String> = (0..EXECUTIONS).map(|n| format!("roll-{n}")).collect();
    for execution in &executions {
        publish(&js, &topology, execution, &step_event(execution, 1, EventType::ExecutionCreated), &published).await;
    }

    // 1,000 clients, ten subjects, each on one execution's channel.
    let stop_clients = CancellationToken::new();
    let reconnects = Arc::new(Reconnects::default());
    let tokens: Vec<String> = (0..10).map(|n| token(&format!("viewer-{n}"), &["viewer"])).collect();
    let mut trackers = Vec::with_capacity(CLIENTS);
    let mut tasks = Vec::with_capacity(CLIENTS);
    for n in 0..CLIENTS {
        let tracker = Arc::new(Tracker::default());
        let execution = &executions[n % EXECUTIONS];
        trackers.push((format!("client{n}:{execution}"), tracker.clone()));
        tasks.push(tokio::spawn(ws_client(
            balancer.clone(),
            format!("executions:{execution}"),
            tokens[n % tokens.len()].clone(),
            tracker,
            reconnects.clone(),
            stop_clients.clone(),
        )));
    }
    let all_live = |trackers: &[(String, Arc<Tracker>)]| {
        trackers.iter().filter(|(_, tracker)| tracker.live.load(Ordering::Acquire)).count()
    };
    eventually(&format!("{CLIENTS} clients to subscribe"), Duration::from_secs(90), || {
        let live = all_live(&trackers);
        async move { (live == CLIENTS).then_some(()) }
    })
    .await
    .unwrap_or_else(|err| panic!("{err}: {} live", all_live(&trackers)));
    let initial_connects = reconnects.count();
    eprintln!("{CLIENTS} clients subscribed after {:?}", began.elapsed());

    // Events flow throughout.
    let stop_publisher = CancellationToken::new();
    let publisher = {
        let (js, topology, published, executions, stop) =
            (js.clone(), topology.clone(), published.clone(), executions.clone(), stop_publisher.clone());
        tokio::spawn(async move {
            let mut version = 1;
            let mut tick = tokio::time::interval(EVENT_INTERVAL);
            while !stop.is_cancelled() {
                tokio::select! { _ = stop.cancelled() => break, _ = tick.tick() => {} }
                version += 1;
                for (n, execution) in executions.iter().enumerate() {
                    if (version as usize + n).is_multiple_of(5) {
                        let kind = if version % 2 == 0 { EventType::StepStarted } else { EventType::StepCompleted };
                        publish(&js, &topology, execution, &step_event(execution, version, kind), &published).await;
                    }
                }
            }
        })
    };

    for (index, gateway) in gateways.iter_mut().enumerate() {
        let restart_began = Instant::now();
        // The load balancer stops routing to it (its readiness turns 503 on SIGTERM anyway).
        balancer.set(index, None);
        let held = gateway.pid();
        gateway.signal(nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let status = gateway.wait_exit(Duration::from_secs(10)).await.expect("drains and exits");
        assert!(status.success(), "gateway {index} ({held:?}) exited with {status}");
        let mut restarted = env.spawn("ws-gateway", &gateway_env).await;
        balancer.set(index, Some(restarted.addr("http_addr").await.expect("address")));
        *gateway = restarted;
        eventually(
            &format!("every client to be back after gateway {index} restarted"),
            Duration::from_secs(60),
            || {
                let live = all_live(&trackers);
                async move { (live == CLIENTS).then_some(()) }
            },
        )
        .await
        .unwrap_or_else(|err| panic!("{err}: {} live", all_live(&trackers)));
        eprintln!("gateway {index} drained, restarted and every client resumed in {:?}", restart_began.elapsed());
    }
    stop_publisher.cancel();
    publisher.await.expect("publisher");

    let published = lock(&published).clone();
    let last_of = |name: &str| {
        let execution = name.rsplit(':').next().unwrap_or_default();
        published.get(execution).and_then(|offsets| offsets.last().copied()).unwrap_or(0)
    };
    wait_caught_up(&trackers, last_of, Duration::from_secs(60)).await;
    stop_clients.cancel();
    for task in tasks {
        let _ = task.await;
    }
    let mut failures = Vec::new();
    let mut delivered = 0;
    for (name, tracker) in &trackers {
        let execution = name.rsplit(':').next().unwrap_or_default();
        let due = published.get(execution).cloned().unwrap_or_default();
        // Step events only: none may be coalesced.
        match tracker.verify(name, &due, &HashMap::new()) {
            Ok(received) => delivered += received.received,
            Err(err) => failures.push(err),
        }
    }
    assert!(
        failures.is_empty(),
        "{} clients with gaps or duplicates, e.g. {:#?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let resumed = reconnects.count();
    let peak = reconnects.peak(Duration::from_secs(1));
    eprintln!(
        "rolling restart: {resumed} reconnects ({initial_connects} before it), peak {peak} per second \
         (bound {MAX_RECONNECTS_PER_SECOND}/s with a {RECONNECT_WINDOW:?} drain window); {delivered} events delivered \
         gap-free to {CLIENTS} clients; test took {:?}",
        began.elapsed()
    );
    assert!(resumed >= CLIENTS, "every client reconnected at least once ({resumed})");
    assert!(
        peak <= MAX_RECONNECTS_PER_SECOND,
        "peak reconnect rate {peak}/s over the bound {MAX_RECONNECTS_PER_SECOND}/s"
    );
}
