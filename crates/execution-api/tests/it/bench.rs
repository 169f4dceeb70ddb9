//! Ingest measurement (issue 16): `ReportProgress` over gRPC on 1,000 running executions with many
//! concurrent callers, beside a raw JetStream publish of the same events to the same stream (async
//! publishes, a bounded ack window of 1,000) in the same run, and idempotent create. Ignored by
//! default: run with `make bench` (release build) and read the printed `BENCH` rows.
//!
//! Every acked call is checked to be in the history exactly once: each call carries a unique
//! progress message, and the whole stream is read back afterwards.

use crate::support::{Stack, TENANT, admin, executions};
use prost::Message as _;
use runcast_contract::v1::*;
use runcast_contract::{EntityId, StreamKind, Topology};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

const EXECUTIONS: usize = 1_000;
const ACK_WINDOW: usize = 1_000;

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// p50 / p99 in milliseconds of latencies in microseconds.
fn quantiles(latencies: &mut [u64]) -> (f64, f64) {
    latencies.sort_unstable();
    if latencies.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)] as f64 / 1000.0;
    (at(0.5), at(0.99))
}

#[derive(Default)]
struct Phase {
    acked: Vec<String>,
    failed: Vec<String>,
    latencies: Vec<u64>,
    elapsed: Duration,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.acked.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// CPU time of some processes (the api, nats-server, this process: the load driver), to say what
/// a phase cost each of them per call: the rate alone moves with whatever else the 2 cores run.
struct CpuMeter {
    pids: Vec<Option<u32>>,
    from: Vec<Duration>,
}

impl CpuMeter {
    fn start(pids: &[Option<u32>]) -> Self {
        Self { pids: pids.to_vec(), from: Self::now(pids) }
    }

    fn now(pids: &[Option<u32>]) -> Vec<Duration> {
        pids.iter()
            .map(|pid| {
                pid.and_then(|pid| runcast_loadgen::procfs::cpu_time(pid).ok())
                    .map(|cpu| cpu.total())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Microseconds of CPU per call of each process since `start`.
    fn per_call(&self, calls: usize) -> Vec<f64> {
        Self::now(&self.pids)
            .iter()
            .zip(&self.from)
            .map(|(to, from)| to.saturating_sub(*from).as_secs_f64() * 1e6 / calls.max(1) as f64)
            .collect()
    }
}

/// Runs one phase, under `perf record` of the machine when `BENCH_PERF` names a file and
/// `BENCH_PERF_PHASE` names this phase (`ingest`, the default, `create`, `cas` or `raw`).
async fn profiled<T>(phase: &str, run: impl std::future::Future<Output = T>) -> T {
    let wanted = std::env::var("BENCH_PERF_PHASE").unwrap_or_else(|_| "ingest".to_owned());
    let _profile = (wanted == phase).then(runcast_testkit::profile::SystemProfile::start);
    run.await
}

/// One call of a timed phase: what it sent (unique), and the answer if it was acked.
type Call<'a> = futures::future::BoxFuture<'a, (String, Option<String>)>;

/// `callers` tasks over `clients`, one call in flight each, for `seconds`: `call(client, caller, n)`
/// makes a caller's `n`-th call (`None`: that caller has nothing to call). Returns the phase and
/// every acked call's answer.
async fn timed_phase<S, F>(callers: Vec<S>, seconds: u64, call: F) -> (Phase, Vec<String>)
where
    S: Send + 'static,
    F: for<'a> Fn(&'a mut S, usize, usize) -> Option<Call<'a>> + Send + Sync + 'static,
{
    let call = std::sync::Arc::new(call);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (caller, mut client) in callers.into_iter().enumerate() {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let (mut acked, mut failed, mut latencies, mut answers) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let mut n = 0usize;
            while Instant::now() < deadline {
                let sent = Instant::now();
                let Some(next) = call(&mut client, caller, n) else { break };
                n += 1;
                match next.await {
                    (what, Some(answer)) => {
                        latencies.push(sent.elapsed().as_micros() as u64);
                        acked.push(what);
                        answers.push(answer);
                    }
                    (what, None) => failed.push(what),
                }
            }
            (acked, failed, latencies, answers)
        }));
    }
    let mut phase = Phase::default();
    let mut answers = Vec::new();
    for task in tasks {
        let (acked, failed, latencies, answered) = task.await.expect("caller");
        phase.acked.extend(acked);
        phase.failed.extend(failed);
        phase.latencies.extend(latencies);
        answers.extend(answered);
    }
    phase.elapsed = started.elapsed();
    (phase, answers)
}

/// One gRPC client per caller, spread over `clients` (its connections).
fn clients_of(clients: &[crate::support::Executions], callers: usize) -> Vec<crate::support::Executions> {
    (0..callers).map(|caller| clients[caller % clients.len()].clone()).collect()
}

/// `callers` tasks, each owning the executions `i % callers == caller`, calling `ReportProgress`
/// round robin over them for `seconds`, over `channels` gRPC connections.
async fn api_phase(clients: &[crate::support::Executions], ids: &[String], callers: usize, seconds: u64) -> Phase {
    let ids = ids.to_vec();
    let (phase, _) = timed_phase(clients_of(clients, callers), seconds, move |client, caller, n| -> Option<Call<'_>> {
        let mine = ids.len().saturating_sub(caller).div_ceil(callers);
        let id = ids.get(caller + callers * (n % mine.max(1)))?.clone();
        let message = format!("api-{caller}-{n}");
        let request = ReportProgressRequest {
            execution_id: id,
            percent: ((n + 1) % 100) as u32,
            current_step: "load".into(),
            message: message.clone(),
            ..Default::default()
        };
        Some(Box::pin(async move {
            let acked = client.report_progress(request).await.is_ok();
            (message, acked.then(String::new))
        }))
    })
    .await;
    phase
}

/// Idempotent creates for `seconds`, each with a key of its own, from `callers` callers (one call in
/// flight each). Returns the phase and how many distinct executions the acked creates named.
async fn create_phase(clients: &[crate::support::Executions], callers: usize, seconds: u64) -> (Phase, usize) {
    let (phase, ids) = timed_phase(clients_of(clients, callers), seconds, |client, caller, n| -> Option<Call<'_>> {
        let key = format!("load-{caller}-{n}");
        let request =
            CreateExecutionRequest { workflow_id: "bench".into(), idempotency_key: key.clone(), ..Default::default() };
        Some(Box::pin(async move {
            let created = client.create_execution(request).await.ok();
            (key, created.map(|created| created.into_inner().execution_id))
        }))
    })
    .await;
    let distinct: std::collections::HashSet<String> = ids.into_iter().collect();
    (phase, distinct.len())
}

/// An execution's subject, its last stored (progress) event as a template for the raw publishes,
/// and that event's stream sequence.
type Template = (String, Event, u64);

/// `template` as a new event: a fresh event id (the `Nats-Msg-Id`, as the api sets it) and
/// `message` as its progress message.
fn fresh_publish(template: &Event, message: &str) -> async_nats::jetstream::message::PublishMessage {
    let mut event = template.clone();
    event.event_id = uuid::Uuid::now_v7().to_string();
    if let Some(event::Payload::ProgressReported(progress)) = event.payload.as_mut() {
        progress.message = message.to_owned();
    }
    async_nats::jetstream::message::PublishMessage::build()
        .payload(event.encode_to_vec().into())
        .message_id(&event.event_id)
}

/// JetStream alone, asked what the api asks of it per call: `callers` publishers, each owning its
/// share of the executions (as the api's callers do) with one publish in flight, every publish
/// guarded by `Nats-Expected-Last-Subject-Sequence` (the api's per-execution CAS), over one
/// connection. What is left between this and the api is the api's own cost.
async fn cas_phase(js: &async_nats::jetstream::Context, templates: &[Template], callers: usize, seconds: u64) -> Phase {
    /// A publisher's executions, and whether it stopped.
    struct Publisher {
        js: async_nats::jetstream::Context,
        mine: Vec<Template>,
        stopped: bool,
    }
    let publishers = (0..callers)
        .map(|caller| Publisher {
            js: js.clone(),
            mine: templates.iter().skip(caller).step_by(callers).cloned().collect(),
            stopped: false,
        })
        .collect();
    let (phase, _) = timed_phase(publishers, seconds, |publisher, caller, n| -> Option<Call<'_>> {
        if publisher.stopped || publisher.mine.is_empty() {
            return None;
        }
        let index = n % publisher.mine.len();
        Some(Box::pin(async move {
            let message = format!("cas-{caller}-{n}");
            let (subject, template, last) = &mut publisher.mine[index];
            let publish = fresh_publish(template, &message).expected_last_subject_sequence(*last);
            let acked = match publisher.js.send_publish(subject.clone(), publish).await {
                Ok(ack) => ack.await.ok(),
                Err(_) => None,
            };
            match acked {
                Some(ack) => {
                    *last = ack.sequence;
                    (message, Some(String::new()))
                }
                None => {
                    // The subject's last sequence is unknown now: this publisher stops.
                    publisher.stopped = true;
                    (message, None)
                }
            }
        }))
    })
    .await;
    phase
}

/// The same events published straight to JetStream: each execution's template with a fresh event
/// id and message per publish, round robin over the executions' subjects, at most `ACK_WINDOW`
/// acks outstanding, no expected sequence.
async fn raw_phase(js: &async_nats::jetstream::Context, templates: &[Template], seconds: u64) -> Phase {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut window: VecDeque<(Instant, String, async_nats::jetstream::context::PublishAckFuture)> = VecDeque::new();
    let mut phase = Phase::default();
    let settle = |phase: &mut Phase, sent: Instant, message: String, ack: Result<_, _>| match ack {
        Ok(_) => {
            phase.latencies.push(sent.elapsed().as_micros() as u64);
            phase.acked.push(message);
        }
        Err(_) => phase.failed.push(message),
    };
    let mut n = 0usize;
    while Instant::now() < deadline {
        let (subject, template, _) = &templates[n % templates.len()];
        let message = format!("raw-{n}");
        n += 1;
        let publish = fresh_publish(template, &message);
        let sent = Instant::now();
        match js.send_publish(subject.clone(), publish).await {
            Ok(ack) => window.push_back((sent, message, ack)),
            Err(_) => phase.failed.push(message),
        }
        while window.len() >= ACK_WINDOW {
            let Some((sent, message, ack)) = window.pop_front() else { break };
            settle(&mut phase, sent, message, ack.await);
        }
    }
    while let Some((sent, message, ack)) = window.pop_front() {
        settle(&mut phase, sent, message, ack.await);
    }
    phase.elapsed = started.elapsed();
    phase
}

/// How many times each progress message occurs in the executions stream.
async fn progress_messages(js: &async_nats::jetstream::Context, topology: &Topology) -> HashMap<String, usize> {
    let name = topology.stream_name(StreamKind::Executions);
    let last = js.get_stream(&name).await.expect("stream").get_info().await.expect("info").state.last_sequence;
    let subjects = topology.stream_subjects(StreamKind::Executions);
    let options = runcast_runtime::nats::feed::FeedOptions { batch: 512, ..Default::default() };
    let mut messages =
        runcast_runtime::nats::feed::OrderedFeed::start(js, &name, subjects, 1, options).await.expect("feed");
    let mut seen = HashMap::new();
    while let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
        let sequence = message.info().expect("info").stream_sequence;
        let event = Event::decode(message.payload.as_ref()).expect("decodes");
        if let Some(event::Payload::ProgressReported(progress)) = event.payload {
            *seen.entry(progress.message).or_insert(0) += 1;
        }
        if sequence >= last {
            break;
        }
    }
    seen
}

/// Every acked message exactly once; a failed call at most once (its outcome is unknown).
fn check_exactly_once(what: &str, phase: &Phase, seen: &HashMap<String, usize>) -> String {
    let wrong: Vec<(&String, usize)> =
        phase.acked.iter().map(|m| (m, seen.get(m).copied().unwrap_or(0))).filter(|(_, n)| *n != 1).take(10).collect();
    assert!(wrong.is_empty(), "{what}: acked calls not in the history exactly once: {wrong:?}");
    let doubled = phase.failed.iter().filter(|m| seen.get(*m).copied().unwrap_or(0) > 1).count();
    assert_eq!(doubled, 0, "{what}: a failed call stored twice");
    format!("all {} acked exactly once ({} failed)", phase.acked.len(), phase.failed.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test"]
async fn bench_api_ingest_vs_raw_jetstream_publish() {
    let callers = knob("BENCH_CALLERS", 64);
    let channels = knob("BENCH_CHANNELS", 4).max(1);
    let seconds = knob("BENCH_SECONDS", 10) as u64;
    let stack = Stack::start().await;
    // The schema a persister would have made: without it every create's read-model lookup fails
    // (as "nothing archived") after PostgreSQL parsed it anew, an error path no deployment runs.
    let pool = runcast_store::PgPool::connect(&stack.isolation.database_url).await.expect("database");
    runcast_store::schema::migrate(&pool).await.expect("migrates");
    pool.close().await;
    let mut api = stack.api(&[]).await;
    let token = admin();
    let mut clients = Vec::new();
    for _ in 0..channels {
        clients.push(executions(&mut api, Some(&token)).await);
    }

    // Idempotent create, as many callers, every create with its own key: the 1,000 executions.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for caller in 0..callers {
        let mut client = clients[caller % channels].clone();
        tasks.push(tokio::spawn(async move {
            let mut made = Vec::new();
            for i in (caller..EXECUTIONS).step_by(callers) {
                let request = CreateExecutionRequest {
                    workflow_id: "bench".into(),
                    idempotency_key: format!("bench-{i}"),
                    ..Default::default()
                };
                let sent = Instant::now();
                let id = client.create_execution(request).await.expect("create").into_inner().execution_id;
                made.push((i, id, sent.elapsed().as_micros() as u64));
            }
            made
        }));
    }
    let mut ids = vec![String::new(); EXECUTIONS];
    let mut create_latencies = Vec::new();
    for task in tasks {
        for (i, id, latency) in task.await.expect("creator") {
            ids[i] = id;
            create_latencies.push(latency);
        }
    }
    let first_rate = EXECUTIONS as f64 / started.elapsed().as_secs_f64();
    let (first_p50, first_p99) = quantiles(&mut create_latencies);
    // The same keys again (inside the duplicate window): the same executions, nothing new.
    let mut client = clients[0].clone();
    for i in (0..EXECUTIONS).step_by(50) {
        let request = CreateExecutionRequest {
            workflow_id: "bench".into(),
            idempotency_key: format!("bench-{i}"),
            ..Default::default()
        };
        let again = client.create_execution(request).await.expect("create again").into_inner().execution_id;
        assert_eq!(again, ids[i], "an idempotency key made two executions");
    }
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), EXECUTIONS, "every key its own execution");

    for id in &ids {
        let request = UpdateExecutionStatusRequest {
            execution_id: id.clone(),
            status: ExecutionStatus::Running.into(),
            ..Default::default()
        };
        client.update_execution_status(request).await.expect("running");
    }

    // Then creates alone for a while, warm: the 1,000 above ran while connections and caches warmed.
    let (nats_pid, driver_pid) = (stack.infra.nats.pid(), Some(std::process::id()));
    let cpu = CpuMeter::start(&[api.pid(), nats_pid, driver_pid]);
    let idle = runcast_loadgen::procfs::MachineIdle::start();
    let (creates, created) = profiled("create", create_phase(&clients, callers, seconds.div_ceil(2))).await;
    let (create_cpu, create_idle) = (cpu.per_call(creates.acked.len()), idle.percent());
    assert!(creates.failed.is_empty(), "{} creates failed", creates.failed.len());
    assert_eq!(created, creates.acked.len(), "every key its own execution");
    let (create_p50, create_p99) = quantiles(&mut creates.latencies.clone());

    let cpu = CpuMeter::start(&[api.pid(), nats_pid, driver_pid]);
    let idle = runcast_loadgen::procfs::MachineIdle::start();
    let api_phase = profiled("ingest", api_phase(&clients, &ids, callers, seconds)).await;
    let (api_cpu, api_idle) = (cpu.per_call(api_phase.acked.len()), idle.percent());

    // Raw publish of the same events, to the same stream, from the same process.
    let topology = Topology::with_prefix(&stack.isolation.stream_prefix).expect("prefix");
    let js = async_nats::jetstream::new(async_nats::connect(stack.infra.nats.url()).await.expect("nats"));
    let stream = js.get_stream(topology.stream_name(StreamKind::Executions)).await.expect("stream");
    let tenant = EntityId::parse("tenant_id", TENANT).expect("tenant");
    let mut templates = Vec::new();
    for id in &ids {
        let subject = topology.entity_subject(StreamKind::Executions, &tenant, &EntityId::parse("id", id).expect("id"));
        let last = stream.direct_get_last_for_subject(subject.clone()).await.expect("last event");
        let event = Event::decode(last.payload.as_ref()).expect("decodes");
        if matches!(event.payload, Some(event::Payload::ProgressReported(_))) {
            templates.push((subject, event, last.sequence));
        }
    }
    assert!(!templates.is_empty(), "no execution received a progress event");
    // First, while the templates' sequences are the subjects' last.
    let cpu = CpuMeter::start(&[nats_pid, driver_pid]);
    let cas_phase = profiled("cas", cas_phase(&js, &templates, callers, seconds)).await;
    let cas_cpu = cpu.per_call(cas_phase.acked.len());
    let cpu = CpuMeter::start(&[nats_pid, driver_pid]);
    let raw_phase = profiled("raw", raw_phase(&js, &templates, seconds)).await;
    let raw_cpu = cpu.per_call(raw_phase.acked.len());

    let seen = progress_messages(&js, &topology).await;
    let api_check = check_exactly_once("api", &api_phase, &seen);
    let cas_check = check_exactly_once("raw CAS", &cas_phase, &seen);
    let raw_check = check_exactly_once("raw", &raw_phase, &seen);
    assert!(cas_phase.failed.is_empty(), "{} CAS publishes failed", cas_phase.failed.len());

    let (api_p50, api_p99) = quantiles(&mut api_phase.latencies.clone());
    let (raw_p50, raw_p99) = quantiles(&mut raw_phase.latencies.clone());
    let (cas_p50, cas_p99) = quantiles(&mut cas_phase.latencies.clone());
    let ratio = 100.0 * api_phase.rate() / raw_phase.rate();
    let of_cas = 100.0 * api_phase.rate() / cas_phase.rate();
    println!(
        "BENCH | api ingest ReportProgress, {EXECUTIONS} running executions, {callers} callers on {channels} connections, \
         {seconds} s | {:.0} calls/s ({ratio:.0} % of raw), p50 {api_p50:.2} ms, p99 {api_p99:.2} ms; CPU per call: \
         api {:.1} µs, nats-server {:.1} µs, gRPC load driver {:.1} µs; machine idle {api_idle:.0} % | >= 50 % of raw \
         | raw JetStream publish, window {ACK_WINDOW}: {:.0} events/s, publish-to-ack p50 {raw_p50:.2} ms, p99 \
         {raw_p99:.2} ms; CPU per event: nats-server {:.1} µs, publisher {:.1} µs. The api's pattern without the \
         api (per-subject CAS, {callers} publishers, one in flight each): {:.0} events/s (the api is at {of_cas:.0} % of \
         it), p50 {cas_p50:.2} ms, p99 {cas_p99:.2} ms; nats-server {:.1} µs, publisher {:.1} µs per event | api: \
         {api_check}; raw: {raw_check}; raw CAS: {cas_check} |",
        api_phase.rate(),
        api_cpu[0],
        api_cpu[1],
        api_cpu[2],
        raw_phase.rate(),
        raw_cpu[0],
        raw_cpu[1],
        cas_phase.rate(),
        cas_cpu[0],
        cas_cpu[1],
    );
    println!(
        "BENCH | api idempotent create, a new key each, {callers} callers, {:.1} s after {EXECUTIONS} warm-up creates \
         ({first_rate:.0}/s, p50 {first_p50:.2} ms, p99 {first_p99:.2} ms) | {:.0} creates/s, p50 {create_p50:.2} ms, \
         p99 {create_p99:.2} ms; CPU per create: api {:.1} µs, nats-server {:.1} µs, gRPC load driver {:.1} µs; machine \
         idle {create_idle:.0} % | the ingest rate ({:.0}/s) | ReportProgress above | {created} acked creates, as many \
         distinct executions; every 50th warm-up key re-sent returned its execution |",
        creates.elapsed.as_secs_f64(),
        creates.rate(),
        create_cpu[0],
        create_cpu[1],
        create_cpu[2],
        api_phase.rate(),
    );
}
