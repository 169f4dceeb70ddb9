//! One measured run against one server: connect and subscribe N clients (each resuming a backlog
//! published first, if there is one), read the server's resident memory, publish at a rate for a
//! while (or not at all, for idle memory), measure a window after the warm-up, drain, and add up
//! what every connection saw.

use crate::conn::{self, Plan, Report, Shared, Target};
pub use crate::outcome::Outcome;
use crate::procfs;
use crate::publisher::{self, Load};
use runcast_contract::Topology;
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Connections being set up at once.
const CONNECTS_IN_FLIGHT: usize = 128;
/// How long a drain may go on without a single new delivery.
const DRAIN_QUIET: Duration = Duration::from_secs(3);
/// How long a drain may go on at most: overloaded clients catch up after `resync` by replay.
const DRAIN_MAX: Duration = Duration::from_secs(90);

#[derive(Debug, Clone)]
pub struct Run {
    pub target: Target,
    pub connections: usize,
    /// The server whose CPU and memory are read (`None`: not read).
    pub server_pid: Option<u32>,
    pub nats_url: String,
    pub topology: Topology,
    /// `None`: connect, subscribe, read memory, stop.
    pub load: Option<Load>,
    /// Not measured at the start of the publishing.
    pub warmup: Duration,
    /// Published before anyone subscribes; every connection then resumes from the stream's start,
    /// so the server replays all of it to each (memory after a resume, scenario g).
    pub backlog: Option<Load>,
    /// The connections offer `permessage-deflate` (scenario h).
    pub compression: bool,
}

/// Runs on a `LocalSet` of its own (the connections are local tasks of the current thread).
pub async fn run(run: &Run) -> anyhow::Result<Outcome> {
    tokio::task::LocalSet::new().run_until(run_local(run)).await
}

async fn run_local(run: &Run) -> anyhow::Result<Outcome> {
    let mut outcome = Outcome { server: run.target.name(), connections: run.connections, ..Outcome::default() };
    let rss = || run.server_pid.and_then(|pid| procfs::rss_kib(pid).ok());
    let cpu = || run.server_pid.and_then(|pid| procfs::cpu_time(pid).ok());
    let plan = match &run.backlog {
        Some(backlog) => {
            let jetstream = async_nats::jetstream::new(async_nats::connect(&run.nats_url).await?);
            let published = publisher::run(&jetstream, &run.topology, backlog, Rc::new(Cell::new(0))).await?;
            anyhow::ensure!(published.failures == 0, "{} publishes of the backlog failed", published.failures);
            outcome.published = published;
            Plan { since_offset: Some(0), offer_compression: run.compression, ..Plan::default() }
        }
        None => Plan { offer_compression: run.compression, ..Plan::default() },
    };
    // After the backlog: what the server keeps of the stream itself is not the connections'.
    outcome.rss_before_kib = rss();

    let shared = Shared::new()?;
    let tasks = connect(&run.target, 0..run.connections, &shared, plan, CONNECTS_IN_FLIGHT).await?;
    wait_subscribed(&shared, run.connections).await;
    // Let the server settle (allocator, lazily grown buffers) before reading its memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    outcome.rss_subscribed_kib = rss();

    if let Some(load) = &run.load {
        let nats = async_nats::connect(&run.nats_url).await?;
        let jetstream = async_nats::jetstream::new(nats);
        let progress = Rc::new(Cell::new(0));
        let publishing = {
            let (topology, load, progress) = (run.topology.clone(), load.clone(), progress.clone());
            tokio::task::spawn_local(async move { publisher::run(&jetstream, &topology, &load, progress).await })
        };
        let warmup = run.warmup.min(load.duration / 2);
        tokio::time::sleep(warmup).await;
        let own_cpu = || procfs::cpu_time(std::process::id()).ok();
        let (delivered_before, bytes_before, cpu_before, own_before, started) =
            (shared.delivered.get(), shared.bytes_read.get(), cpu(), own_cpu(), Instant::now());
        shared.latency.borrow_mut().reset();
        shared.wire_latency.borrow_mut().reset();
        shared.recording.set(true);
        tokio::time::sleep(load.duration.saturating_sub(warmup)).await;
        outcome.window = started.elapsed();
        outcome.delivered_in_window = shared.delivered.get() - delivered_before;
        outcome.bytes_in_window = shared.bytes_read.get() - bytes_before;
        outcome.cpu_in_window = cpu().zip(cpu_before).map(|(after, before)| after.since(&before));
        outcome.client_cpu_in_window = own_cpu().zip(own_before).map(|(after, before)| after.since(&before));
        outcome.published = publishing.await??;

        outcome.drain = drain(&shared, outcome.published.last_seq).await;
    }

    shared.stop.cancel();
    let reports = finish(tasks).await?;
    tally(&mut outcome, &reports, &shared);
    Ok(outcome)
}

/// Spawns a client of `target` for every index (on the current `LocalSet`), at most `in_flight`
/// of them connecting at once.
pub async fn connect(
    target: &Target,
    indexes: std::ops::Range<usize>,
    shared: &Rc<Shared>,
    plan: Plan,
    in_flight: usize,
) -> anyhow::Result<Vec<JoinHandle<Report>>> {
    let pacing = std::sync::Arc::new(tokio::sync::Semaphore::new(in_flight.max(1)));
    let mut tasks = Vec::with_capacity(indexes.len());
    for index in indexes {
        let permit = pacing.clone().acquire_owned().await?;
        tasks.push(tokio::task::spawn_local(conn::drive_planned(index, target.clone(), shared.clone(), permit, plan)));
    }
    Ok(tasks)
}

/// Until `connections` clients have subscribed or failed (a minute and then some at most).
pub async fn wait_subscribed(shared: &Shared, connections: usize) {
    let deadline = Instant::now() + Duration::from_secs(60) + Duration::from_millis(connections as u64);
    while shared.subscribed.get() + shared.failed.get() < connections && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Once the publisher stopped at `last_seq`: until every subscribed client has every event, or
/// nothing arrives for [`DRAIN_QUIET`], or [`DRAIN_MAX`]. Returns how long it waited.
pub async fn drain(shared: &Shared, last_seq: u64) -> Duration {
    let expected = last_seq * shared.subscribed.get() as u64;
    let (drain_start, mut last_progress, mut last_count) = (Instant::now(), Instant::now(), shared.delivered.get());
    while shared.delivered.get() < expected
        && last_progress.elapsed() < DRAIN_QUIET
        && drain_start.elapsed() < DRAIN_MAX
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if shared.delivered.get() != last_count {
            (last_progress, last_count) = (Instant::now(), shared.delivered.get());
        }
    }
    drain_start.elapsed()
}

/// The reports of clients told to stop.
pub async fn finish(tasks: Vec<JoinHandle<Report>>) -> anyhow::Result<Vec<Report>> {
    let mut reports = Vec::with_capacity(tasks.len());
    for task in tasks {
        reports.push(task.await?);
    }
    Ok(reports)
}

/// Adds up what every client saw (against `outcome.published`) and the run's latencies.
pub fn tally(outcome: &mut Outcome, reports: &[Report], shared: &Shared) {
    let last_seq = outcome.published.last_seq;
    for report in reports.iter().filter(|report| report.subscribed) {
        let tracker = &report.tracker;
        outcome.subscribed += 1;
        outcome.gaps += tracker.gaps;
        outcome.behind_at_end += tracker.behind(last_seq);
        outcome.duplicates += tracker.duplicates;
        outcome.offset_gaps += tracker.offset_gaps;
        outcome.offset_duplicates += tracker.offset_duplicates;
        outcome.resyncs += report.resyncs;
        outcome.complete_connections += usize::from(tracker.gaps_at_end(last_seq) == 0 && tracker.duplicates == 0);
        outcome.ended_early += usize::from(report.ended_early);
    }
    outcome.failed = outcome.connections - outcome.subscribed;
    outcome.delivered = shared.delivered.get();
    let latency = shared.latency.borrow();
    if !latency.is_empty() {
        (outcome.p50_us, outcome.p99_us, outcome.max_us) =
            (latency.value_at_quantile(0.5), latency.value_at_quantile(0.99), latency.max());
    }
    let wire = shared.wire_latency.borrow();
    if !wire.is_empty() {
        (outcome.wire_p50_us, outcome.wire_p99_us, outcome.wire_max_us) =
            (wire.value_at_quantile(0.5), wire.value_at_quantile(0.99), wire.max());
    }
    outcome.errors = shared.errors.borrow().clone();
}
