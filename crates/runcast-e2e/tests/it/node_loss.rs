//! Node loss under steady load, against a 3-node cluster with R3 streams: four callers write
//! through the api, two persisters consume, two gateways serve WebSocket and SSE clients. The
//! EXECUTIONS stream leader is killed (-9) and every client drops its connection at that moment
//! (resuming from its offset while the cluster elects); once another node leads, the killed one
//! is restarted and caught up, then another node is killed.
//!
//! Checked: every write the api acknowledged is in PostgreSQL exactly once (by event id, by
//! offset) and each execution's versions are contiguous; the history holds every offset of the
//! stream once; every client received every offset once, in order (a progress event may be
//! missing only where a later progress of its execution replaced it while the client was behind:
//! coalescing, DESIGN §4); callers got only
//! `UNAVAILABLE` while the cluster elected (printed: how long), and each command they retried after
//! it (with its `request_id`) is in the history once, whether or not its first try had landed; an
//! event published again with the same `Nats-Msg-Id` after the failover is acknowledged as a
//! duplicate of the same offset and stored once.

use crate::support::*;
use prost::Message as _;
use runcast_contract::v1::{
    CreateExecutionRequest, Event, EventType, Execution, ExecutionStatus, ReportProgressRequest,
    UpdateExecutionStatusRequest,
};
use runcast_contract::{EntityId, StreamKind, Topology};
use runcast_testkit::{NatsCluster, PostgresServer, ServiceEnv, eventually, unique_name};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tonic::Code;

const CALLERS: usize = 4;
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(60);
/// WebSocket clients per gateway, beside one SSE client.
const WS_CLIENTS_PER_GATEWAY: usize = 2;

/// What the callers saw.
#[derive(Default)]
struct Outcomes {
    /// (execution, version, offset) of every acknowledged write.
    acked: Mutex<Vec<(String, u64, u64)>>,
    successes: Mutex<Vec<Instant>>,
    unavailable: Mutex<Vec<Instant>>,
    /// Anything but success or UNAVAILABLE.
    wrong: Mutex<Vec<String>>,
    count: AtomicU64,
}

impl Outcomes {
    fn acked(&self, execution: &Execution) {
        lock(&self.acked).push((execution.execution_id.clone(), execution.version, execution.offset));
        lock(&self.successes).push(Instant::now());
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    /// The longest time without an acknowledged write, from `from` to `until`: how long the
    /// callers were kept waiting by the fault.
    fn longest_silence(&self, from: Instant, until: Instant) -> Duration {
        let mut times: Vec<Instant> =
            lock(&self.successes).iter().copied().filter(|t| *t >= from && *t <= until).collect();
        times.sort();
        let mut previous = from;
        let mut longest = Duration::ZERO;
        for at in times.into_iter().chain([until]) {
            longest = longest.max(at.duration_since(previous));
            previous = at;
        }
        longest
    }

    /// The span of UNAVAILABLE answers after `from` and before `until`.
    fn unavailable_between(&self, from: Instant, until: Instant) -> (usize, Option<Duration>) {
        let times: Vec<Instant> =
            lock(&self.unavailable).iter().copied().filter(|t| *t >= from && *t <= until).collect();
        let span = times.iter().max().map(|last| last.duration_since(from));
        (times.len(), span)
    }

    async fn wait_for_more(&self, more: u64, what: &str) {
        let target = self.count.load(Ordering::Acquire) + more;
        eventually(what, FAILOVER_TIMEOUT, || {
            let done = self.count.load(Ordering::Acquire) >= target;
            async move { done.then_some(()) }
        })
        .await
        .unwrap_or_else(|err| panic!("{err}; wrong answers so far: {:?}", lock(&self.wrong)));
    }
}

/// Sends one request until it is answered with anything but UNAVAILABLE: the requests carry an
/// idempotency key or a request id, so a retry whose first try was stored answers that first try.
async fn call<F, Fut>(outcomes: &Outcomes, what: &str, mut send: F) -> Option<Execution>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<Execution>, tonic::Status>>,
{
    loop {
        match send().await {
            Ok(response) => {
                let execution = response.into_inner();
                outcomes.acked(&execution);
                return Some(execution);
            }
            Err(status) if status.code() == Code::Unavailable => {
                lock(&outcomes.unavailable).push(Instant::now());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => {
                lock(&outcomes.wrong).push(format!("{what}: {:?} {}", status.code(), status.message()));
                return None;
            }
        }
    }
}

/// One caller: executions created (with an idempotency key), started and advanced by progress
/// reports (each with a request id, each try sent twice at once), until `stop`: every retry is safe.
async fn caller(client: Client, number: usize, outcomes: Arc<Outcomes>, stop: CancellationToken) {
    let mut round = 0;
    while !stop.is_cancelled() {
        round += 1;
        let key = format!("caller{number}-round{round}");
        let create = CreateExecutionRequest {
            workflow_id: format!("wf-{number}"),
            idempotency_key: key.clone(),
            ..Default::default()
        };
        let Some(created) = call(&outcomes, &format!("create {key}"), || {
            let (mut client, request) = (client.clone(), create.clone());
            async move { client.create_execution(request).await }
        })
        .await
        else {
            continue;
        };
        let id = created.execution_id.clone();
        let start = UpdateExecutionStatusRequest {
            execution_id: id.clone(),
            status: ExecutionStatus::Running.into(),
            request_id: "start".into(),
            ..Default::default()
        };
        call(&outcomes, &format!("start {id}"), || {
            let (mut client, request) = (client.clone(), start.clone());
            async move { client.update_execution_status(request).await }
        })
        .await;
        for percent in (10..=90).step_by(10) {
            if stop.is_cancelled() {
                return;
            }
            let progress = ReportProgressRequest {
                execution_id: id.clone(),
                percent,
                request_id: format!("progress-{percent}"),
                ..Default::default()
            };
            // Hedged: each try sent twice at once, so two tries of one request race on the
            // clustered stream (the api must answer both with the one change).
            call(&outcomes, &format!("progress {id}"), || {
                let (mut first, mut second, request) = (client.clone(), client.clone(), progress.clone());
                async move {
                    let (a, b) = tokio::join!(first.report_progress(request.clone()), second.report_progress(request));
                    match (a, b) {
                        (Ok(a), Ok(b)) if a.get_ref() != b.get_ref() => Err(tonic::Status::internal(format!(
                            "hedged answers differ: {:?} and {:?}",
                            a.get_ref(),
                            b.get_ref()
                        ))),
                        (Err(err), _) | (_, Err(err)) if err.code() != Code::Unavailable => Err(err),
                        (Ok(answer), _) | (_, Ok(answer)) => Ok(answer),
                        (Err(err), Err(_)) => Err(err),
                    }
                }
            })
            .await;
        }
    }
}

/// An `execution.created` event as the api would publish it, for the duplicate check.
fn created_event(execution: &str) -> Event {
    runcast_testkit::events::execution_event(
        TENANT,
        execution,
        "wf-dedupe",
        1,
        EventType::ExecutionCreated,
        ExecutionStatus::Pending,
    )
}

async fn publish(
    js: &async_nats::jetstream::Context,
    subject: &str,
    event: &Event,
) -> async_nats::jetstream::publish::PublishAck {
    let message = async_nats::jetstream::message::PublishMessage::build()
        .payload(event.encode_to_vec().into())
        .message_id(&event.event_id);
    let deadline = Instant::now() + FAILOVER_TIMEOUT;
    loop {
        let attempt = async { js.send_publish(subject.to_owned(), message.clone()).await?.await.map_err(Into::into) };
        let result: Result<_, Box<dyn std::error::Error + Send + Sync>> = attempt.await;
        match result {
            Ok(ack) => return ack,
            Err(err) if Instant::now() < deadline => {
                eprintln!("publish of the dedupe event retried: {err}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("cannot publish the dedupe event: {err}"),
        }
    }
}

/// Waits until every replica of `stream` is current and online (a restarted node caught up).
async fn wait_replicas_current(cluster: &NatsCluster, js: &async_nats::jetstream::Context, stream: &str) {
    eventually(&format!("every replica of {stream} to be current"), FAILOVER_TIMEOUT, || async move {
        let mut handle = js.get_stream(stream).await.ok()?;
        let info = handle.info().await.ok()?;
        let cluster_info = info.cluster.as_ref()?;
        let current = cluster_info.leader.is_some()
            && cluster_info.replicas.len() == 2
            && cluster_info.replicas.iter().all(|peer| peer.current && !peer.offline);
        current.then_some(())
    })
    .await
    .unwrap_or_else(|err| panic!("{err}\n{}", cluster.logs()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_the_loss_of_stream_leaders_exactly_once() {
    let began = Instant::now();
    let (cluster, postgres) = tokio::join!(NatsCluster::start(), PostgresServer::start());
    let mut cluster = cluster.unwrap_or_else(|err| panic!("{err}"));
    let postgres = postgres.unwrap_or_else(|err| panic!("{err}"));
    let prefix = unique_name("e");
    let database_url = postgres.create_database(&prefix).await.unwrap_or_else(|err| panic!("{err}"));
    let env = ServiceEnv {
        nats_url: cluster.urls(),
        database_url: database_url.clone(),
        stream_prefix: prefix.clone(),
        replicas: 3,
        secret: SECRET.into(),
    };
    let topology = Topology::with_prefix(&prefix).expect("prefix");
    let stream = topology.stream_name(StreamKind::Executions);

    let _persisters = [env.spawn("event-persister", &[]).await, env.spawn("event-persister", &[]).await];
    let mut api = env.spawn("execution-api", &[]).await;
    let mut gateways = [env.spawn("ws-gateway", &[]).await, env.spawn("ws-gateway", &[]).await];
    let balancer = Arc::new(Balancer::default());
    for (index, gateway) in gateways.iter_mut().enumerate() {
        balancer.set(index, Some(gateway.addr("http_addr").await.expect("gateway address")));
    }
    eprintln!("cluster, PostgreSQL and 5 services ready after {:?}", began.elapsed());

    // Clients: per gateway two WebSocket and one SSE, all on `executions`.
    let stop_clients = CancellationToken::new();
    let reconnects = Arc::new(Reconnects::default());
    let viewer = token("viewer", &["viewer"]);
    let mut trackers = Vec::new();
    let mut client_tasks = Vec::new();
    for index in 0..gateways.len() {
        let pinned = Arc::new(Balancer::default());
        pinned.set(0, balancer.get(index));
        for n in 0..WS_CLIENTS_PER_GATEWAY {
            let tracker = Arc::new(Tracker::default());
            trackers.push((format!("ws{index}.{n}"), tracker.clone()));
            client_tasks.push(tokio::spawn(ws_client(
                pinned.clone(),
                "executions".into(),
                viewer.clone(),
                tracker,
                reconnects.clone(),
                stop_clients.clone(),
            )));
        }
        let tracker = Arc::new(Tracker::default());
        trackers.push((format!("sse{index}"), tracker.clone()));
        client_tasks.push(tokio::spawn(sse_client(
            pinned,
            "executions".into(),
            viewer.clone(),
            tracker,
            stop_clients.clone(),
        )));
    }
    eventually("every client to subscribe", READY_TIMEOUT, || {
        let all = trackers.iter().all(|(_, tracker)| lock(&tracker.start).is_some());
        async move { all.then_some(()) }
    })
    .await
    .expect("clients subscribed");

    // Callers.
    let client = writer(&mut api).await;
    let outcomes = Arc::new(Outcomes::default());
    let stop_callers = CancellationToken::new();
    let callers: Vec<_> = (0..CALLERS)
        .map(|number| tokio::spawn(caller(client.clone(), number, outcomes.clone(), stop_callers.clone())))
        .collect();
    outcomes.wait_for_more(40, "writes before any fault").await;

    // An event published directly, to be published again with the same Nats-Msg-Id later.
    let nats = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(cluster.node_urls().as_slice())
        .await
        .expect("test client connects");
    let js = async_nats::jetstream::new(nats);
    let dedupe = created_event("dedupe-1");
    let tenant = EntityId::parse("tenant_id", TENANT).expect("tenant");
    let entity = EntityId::parse("execution_id", "dedupe-1").expect("id");
    let subject = topology.entity_subject(StreamKind::Executions, &tenant, &entity);
    let first_ack = publish(&js, &subject, &dedupe).await;
    assert!(!first_ack.duplicate);

    // Fault 1: the stream leader is killed.
    let leader = cluster.wait_for_leader(&stream, None, FAILOVER_TIMEOUT).await.unwrap_or_else(|err| panic!("{err}"));
    let first_victim = cluster.index_of(&leader).expect("leader is a node");
    let killed_at = Instant::now();
    cluster.kill(first_victim).expect("killed");
    // Every client loses its connection while the cluster elects, and resumes from its offset.
    for (_, tracker) in &trackers {
        tracker.kick.notify_one();
    }
    let next =
        cluster.wait_for_leader(&stream, Some(&leader), FAILOVER_TIMEOUT).await.unwrap_or_else(|err| panic!("{err}"));
    let elected = killed_at.elapsed();
    outcomes.wait_for_more(20, "writes after the first leader was killed").await;

    let again = publish(&js, &subject, &dedupe).await;
    assert!(again.duplicate, "the same Nats-Msg-Id after the failover is a duplicate: {again:?}");
    assert_eq!(again.sequence, first_ack.sequence, "a duplicate names the original offset");

    // The node comes back and catches up; then another node is killed.
    let restarted_at = Instant::now();
    cluster.restart(first_victim).await.unwrap_or_else(|err| panic!("{err}"));
    wait_replicas_current(&cluster, &js, &stream).await;
    outcomes.wait_for_more(20, "writes after the restart").await;
    let leader_now =
        cluster.wait_for_leader(&stream, None, FAILOVER_TIMEOUT).await.unwrap_or_else(|err| panic!("{err}"));
    let second_victim = match cluster.index_of(&leader_now) {
        Some(index) if index != first_victim => index,
        _ => (0..cluster.len()).find(|index| *index != first_victim).expect("another node"),
    };
    let second_name = cluster.name(second_victim).expect("name").to_owned();
    let killed_again_at = Instant::now();
    cluster.kill(second_victim).expect("killed");
    let after = cluster
        .wait_for_leader(&stream, Some(&second_name), FAILOVER_TIMEOUT)
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let reelected = killed_again_at.elapsed();
    outcomes.wait_for_more(40, "writes after the second node was killed").await;
    let recovered_at = Instant::now();

    stop_callers.cancel();
    for task in callers {
        task.await.expect("caller finished");
    }
    let (unavailable_1, span_1) = outcomes.unavailable_between(killed_at, killed_again_at);
    let (unavailable_2, span_2) = outcomes.unavailable_between(killed_again_at, recovered_at);
    let silence_1 = outcomes.longest_silence(killed_at, restarted_at);
    let silence_2 = outcomes.longest_silence(killed_again_at, recovered_at);
    eprintln!(
        "fault 1: leader {leader} killed, {next} leads after {elected:?} (polled); writes unavailable for {silence_1:?} \
         (longest time without an acknowledged write); {unavailable_1} UNAVAILABLE answers, the last {span_1:?} after the kill"
    );
    eprintln!(
        "fault 2: {second_name} killed (leader before: {leader_now}), {after} leads after {reelected:?}; writes unavailable \
         for {silence_2:?}; {unavailable_2} UNAVAILABLE answers, the last {span_2:?} after the kill"
    );
    for (fault, silence) in [(1, silence_1), (2, silence_2)] {
        assert!(silence < Duration::from_secs(30), "fault {fault}: writes unavailable for {silence:?}");
    }
    let wrong = lock(&outcomes.wrong).clone();
    assert!(wrong.is_empty(), "callers saw answers other than UNAVAILABLE: {wrong:?}");

    // Everything the stream holds reaches PostgreSQL, once.
    let messages = eventually("the stream's state", FAILOVER_TIMEOUT, || {
        let js = js.clone();
        let stream = stream.clone();
        async move {
            let mut handle = js.get_stream(&stream).await.ok()?;
            let info = handle.info().await.ok()?;
            Some((info.state.messages, info.state.last_sequence))
        }
    })
    .await
    .expect("stream info");
    assert_eq!(
        messages.0, messages.1,
        "the stream lost nothing ({} messages, last sequence {})",
        messages.0, messages.1
    );
    let last = messages.1;
    let pool = sqlx::PgPool::connect(&database_url).await.expect("database");
    eventually("the persisters to write every offset", FAILOVER_TIMEOUT, || {
        let pool = pool.clone();
        async move {
            let written: i64 =
                sqlx::query_scalar("SELECT count(DISTINCT stream_offset) FROM events WHERE stream = 'EXECUTIONS'")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            (u64::try_from(written).ok()? >= last).then_some(())
        }
    })
    .await
    .unwrap_or_else(|err| panic!("{err}"));
    let rows: Vec<(String, String, i64, i64, String)> = sqlx::query_as(
        "SELECT event_id::text, execution_id, version, stream_offset, event_type FROM events WHERE stream = 'EXECUTIONS' \
         ORDER BY stream_offset",
    )
    .fetch_all(&pool)
    .await
    .expect("history");
    let mut by_offset: HashMap<u64, Vec<(String, u64)>> = HashMap::new();
    let mut by_event: HashMap<String, usize> = HashMap::new();
    let mut versions: HashMap<String, Vec<u64>> = HashMap::new();
    // Progress a client that fell behind may get coalesced (newest per execution wins).
    let mut coalescable: HashMap<u64, String> = HashMap::new();
    for (event_id, execution, version, offset, event_type) in &rows {
        let (version, offset) = (u64::try_from(*version).unwrap_or(0), u64::try_from(*offset).unwrap_or(0));
        if event_type == "execution.progress" {
            coalescable.insert(offset, execution.clone());
        }
        by_offset.entry(offset).or_default().push((execution.clone(), version));
        *by_event.entry(event_id.clone()).or_default() += 1;
        versions.entry(execution.clone()).or_default().push(version);
    }
    let duplicated_events: Vec<_> = by_event.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicated_events.is_empty(), "event ids stored more than once: {duplicated_events:?}");
    let duplicated_offsets: Vec<_> = by_offset.iter().filter(|(_, rows)| rows.len() > 1).collect();
    assert!(duplicated_offsets.is_empty(), "offsets stored more than once: {duplicated_offsets:?}");
    let missing: Vec<u64> = (1..=last).filter(|offset| !by_offset.contains_key(offset)).collect();
    assert!(missing.is_empty(), "offsets of the stream missing from the history: {missing:?}");
    for (execution, mut seen) in versions {
        seen.sort_unstable();
        let expected: Vec<u64> = (1..=seen.len() as u64).collect();
        assert_eq!(seen, expected, "versions of {execution} are not contiguous from 1, each once");
    }
    let acked = lock(&outcomes.acked).clone();
    for (execution, version, offset) in &acked {
        let stored = by_offset.get(offset).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(
            stored,
            [(execution.clone(), *version)],
            "the acknowledged write {execution} v{version} at offset {offset} is not in the history exactly once"
        );
    }
    let dedupe_rows = rows.iter().filter(|(event_id, ..)| *event_id == dedupe.event_id).count();
    assert_eq!(dedupe_rows, 1, "the event published twice with one Nats-Msg-Id is stored once");
    // Each intended change once, retried or not: its request id on one event of its execution.
    let bodies: Vec<Vec<u8>> = sqlx::query_scalar("SELECT body FROM events WHERE stream = 'EXECUTIONS'")
        .fetch_all(&pool)
        .await
        .expect("bodies");
    let mut by_request: HashMap<(String, String), usize> = HashMap::new();
    for body in &bodies {
        let event = Event::decode(body.as_slice()).expect("a stored event decodes");
        if !event.request_id.is_empty() {
            *by_request.entry((event.execution_id, event.request_id)).or_default() += 1;
        }
    }
    let repeated: Vec<_> = by_request.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "commands stored more than once: {repeated:?}");
    let acked_commands = acked.iter().filter(|(_, version, _)| *version > 1).count();
    assert!(by_request.len() >= acked_commands, "{acked_commands} acknowledged commands, {} stored", by_request.len());

    // Every client saw every offset once, in order, but for coalesced progress.
    let due: BTreeSet<u64> = (1..=last).collect();
    wait_caught_up(&trackers, |_| last, FAILOVER_TIMEOUT).await;
    stop_clients.cancel();
    for task in client_tasks {
        let _ = task.await;
    }
    let mut failures = Vec::new();
    let mut coalesced_by_gateway = vec![0; gateways.len()];
    for (index, (name, tracker)) in trackers.iter().enumerate() {
        match tracker.verify(name, &due, &coalescable) {
            Ok(delivered) => {
                coalesced_by_gateway[index / (WS_CLIENTS_PER_GATEWAY + 1)] += delivered.coalesced;
                eprintln!(
                    "{name}: {} events ({} progress events coalesced), {} connection(s) ({} subscription(s) answered \
                 unavailable and retried), gap-free and duplicate-free",
                    delivered.received,
                    delivered.coalesced,
                    tracker.connections.load(Ordering::Relaxed),
                    tracker.unavailable.load(Ordering::Relaxed)
                )
            }
            Err(err) => failures.push(err),
        }
    }
    assert!(failures.is_empty(), "clients: {failures:#?}");
    // What the clients took for coalescing, their gateway did coalesce.
    for (index, gateway) in gateways.iter().enumerate() {
        let counted = gateway.metric("runcast_ws_coalesced_total").await;
        assert!(
            counted >= coalesced_by_gateway[index] as f64,
            "gateway {index} coalesced {counted} events, its clients miss {} progress events a newer one replaced",
            coalesced_by_gateway[index]
        );
    }
    eprintln!(
        "{} acknowledged writes, {last} offsets in PostgreSQL exactly once, {} clients gap-free; test took {:?}",
        acked.len(),
        trackers.len(),
        began.elapsed()
    );
}
