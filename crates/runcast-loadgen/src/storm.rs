//! Scenario (e) of issue 11, the subscribe/unsubscribe storm: steady clients receive a steady
//! stream; after a measured stretch, a burst of further clients connects all at once (no pacing),
//! each resuming from an offset in the past (the gateway replays the events after it from
//! JetStream, then says `subscribed`), then unsubscribes and closes. What is measured is how much
//! the storm delays live delivery to the steady clients: their latency to the socket before the
//! storm against during it. NATS has no resume: its storm clients connect, `SUB`, `UNSUB` and close.

use crate::conn::{Plan, Report, Sample, Shared, Target};
use crate::fanout::{self, Run};
use crate::outcome::{Outcome, StormStats, WindowLatency};
use crate::procfs;
use crate::publisher::{self, Load, now_ns};
use anyhow::Context as _;
use hdrhistogram::Histogram;
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Steady clients being set up at once (the storm clients are not paced).
const CONNECTS_IN_FLIGHT: usize = 128;
/// Publishing goes on this long after the storm, so that what it delayed arrives.
const TAIL: Duration = Duration::from_millis(500);

/// The storm of one run.
#[derive(Debug, Clone)]
pub struct StormPlan {
    /// Clients connecting at once.
    pub connections: usize,
    /// How long the steady clients are measured before the storm (after the run's warm-up).
    pub before: Duration,
    /// Storm clients resume this many events before the stream's head.
    pub replay: u64,
    /// The storm is given up after this long.
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Received before the storm started.
    Before,
    /// In flight at some time during the storm `[start, end]`: published before its end and
    /// received after its start — so an event the storm held up counts even if it arrives later.
    During,
    /// Published after the storm.
    After,
}

pub fn window(sample: Sample, start_ns: u64, end_ns: u64) -> Window {
    if sample.received_ns < start_ns {
        Window::Before
    } else if sample.published_ns > end_ns {
        Window::After
    } else {
        Window::During
    }
}

/// The latency of the samples before and during the storm `[start_ns, end_ns]`.
pub fn split(samples: &[Sample], start_ns: u64, end_ns: u64) -> (WindowLatency, WindowLatency) {
    let histogram = || Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds");
    let (mut before, mut during) = (histogram(), histogram());
    for sample in samples {
        let micros = (sample.received_ns.saturating_sub(sample.published_ns) / 1_000).max(1);
        match window(*sample, start_ns, end_ns) {
            Window::Before => before.saturating_record(micros),
            Window::During => during.saturating_record(micros),
            Window::After => {}
        }
    }
    let summary = |h: &Histogram<u64>| WindowLatency {
        deliveries: h.len(),
        p99_us: if h.is_empty() { 0 } else { h.value_at_quantile(0.99) },
        p999_us: if h.is_empty() { 0 } else { h.value_at_quantile(0.999) },
        max_us: h.max(),
    };
    (summary(&before), summary(&during))
}

/// Runs on a `LocalSet` of its own, like [`fanout::run`]. `run.load`'s rate is the steady
/// stream's; its duration is not used (publishing lasts until the storm is over).
pub async fn run(run: &Run, plan: &StormPlan) -> anyhow::Result<Outcome> {
    tokio::task::LocalSet::new().run_until(run_local(run, plan)).await
}

async fn run_local(run: &Run, plan: &StormPlan) -> anyhow::Result<Outcome> {
    let mut outcome = Outcome { server: run.target.name(), connections: run.connections, ..Outcome::default() };
    let load = Load {
        duration: run.warmup + plan.before + plan.timeout + TAIL,
        ..run.load.clone().context("the storm needs a steady load")?
    };
    let cpu = || run.server_pid.and_then(|pid| procfs::cpu_time(pid).ok());

    let steady = Shared::new()?;
    let tasks = fanout::connect(&run.target, 0..run.connections, &steady, Plan::default(), CONNECTS_IN_FLIGHT).await?;
    fanout::wait_subscribed(&steady, run.connections).await;

    let jetstream = async_nats::jetstream::new(async_nats::connect(&run.nats_url).await?);
    let (progress, stop_publishing) = (Rc::new(Cell::new(0)), CancellationToken::new());
    let publishing = {
        let (topology, progress, stop) = (run.topology.clone(), progress.clone(), stop_publishing.clone());
        let load = load.clone();
        tokio::task::spawn_local(
            async move { publisher::run_until(&jetstream, &topology, &load, progress, &stop).await },
        )
    };
    tokio::time::sleep(run.warmup).await;
    steady.keep_samples.set(true);
    steady.recording.set(true);
    tokio::time::sleep(plan.before).await;

    // The storm: every client spawned at once, each connecting as soon as it runs, on a thread of
    // its own (same core): in one event loop, the steady clients' reads would queue behind 10,000
    // connects and a million replayed frames, and the delay would be the client's, not the server's.
    let since_offset = matches!(run.target, Target::Gateway { .. }).then(|| progress.get().saturating_sub(plan.replay));
    let storm_plan = Plan { since_offset, leave_once_subscribed: true, ..Plan::default() };
    let own_cpu = || procfs::cpu_time(std::process::id()).ok();
    let (start_ns, cpu_before, own_before) = (now_ns(), cpu(), own_cpu());
    let storm_indexes = run.connections..run.connections + plan.connections;
    let stop_storm = CancellationToken::new();
    let (resumed_tx, resumed_rx) = tokio::sync::oneshot::channel();
    let storm_thread = {
        let (target, timeout, stop) = (run.target.clone(), plan.timeout, stop_storm.clone());
        std::thread::Builder::new()
            .name("storm-clients".into())
            .spawn(move || storm_clients(target, storm_indexes, storm_plan, timeout, resumed_tx, stop))?
    };
    let resumed = resumed_rx.await.context("the storm's thread ended before the storm did")?;
    let all_resumed = resumed.subscribed == plan.connections;
    let end_ns = if all_resumed { resumed.last_subscribed_ns } else { now_ns() };
    let server_cpu = cpu().zip(cpu_before).map(|(after, before)| after.since(&before));
    // The run's window is the storm's, for the summary line: the client's CPU over it.
    outcome.window = Duration::from_nanos(end_ns.saturating_sub(start_ns));
    outcome.client_cpu_in_window = own_cpu().zip(own_before).map(|(after, before)| after.since(&before));

    tokio::time::sleep(TAIL).await;
    stop_publishing.cancel();
    outcome.published = publishing.await??;
    outcome.drain = fanout::drain(&steady, outcome.published.last_seq).await;
    steady.stop.cancel();
    stop_storm.cancel();
    let reports = fanout::finish(tasks).await?;
    fanout::tally(&mut outcome, &reports, &steady);
    let storm = tokio::task::spawn_blocking(move || storm_thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the storm's thread panicked"))??;
    let storm_reports = storm.reports;

    let (before, during) = split(&steady.samples.borrow(), start_ns, end_ns);
    let resumed: Vec<&Report> = storm_reports.iter().filter(|report| report.subscribed).collect();
    outcome.delivered_in_window = during.deliveries;
    outcome.storm = Some(StormStats {
        before,
        during,
        connections: plan.connections,
        resumed: resumed.len(),
        failed: plan.connections - resumed.len(),
        resynced: storm_reports.iter().filter(|report| report.resyncs > 0).count(),
        duration: outcome.window,
        since_offset,
        delivered: storm.delivered,
        gaps: since_offset.map(|_| resumed.iter().map(|report| report.tracker.gaps).sum()),
        duplicates: resumed.iter().map(|report| report.tracker.duplicates).sum(),
        server_cpu,
        errors: storm.errors,
    });
    Ok(outcome)
}

/// How far the storm got when every client was resumed, or failed, or the timeout passed.
struct Resumed {
    subscribed: usize,
    /// When the last client got its `subscribed` (ns since the epoch).
    last_subscribed_ns: u64,
}

/// What the storm's clients saw, once stopped.
struct StormClients {
    reports: Vec<Report>,
    delivered: u64,
    errors: Vec<String>,
}

/// The storm's clients, on the calling thread (a runtime of its own): all connected at once; says
/// on `resumed` when the storm is over, and stops them on `stop`.
fn storm_clients(
    target: Target,
    indexes: std::ops::Range<usize>,
    plan: Plan,
    timeout: Duration,
    resumed: tokio::sync::oneshot::Sender<Resumed>,
    stop: CancellationToken,
) -> anyhow::Result<StormClients> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    runtime.block_on(local.run_until(async move {
        let storm = Shared::new()?;
        let connections = indexes.len();
        let started = Instant::now();
        let tasks = fanout::connect(&target, indexes, &storm, plan, connections).await?;
        while storm.subscribed.get() + storm.failed.get() < connections && started.elapsed() < timeout {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let last_subscribed_ns = storm.last_subscribed_ns.get();
        // The run may have given up on its side meanwhile; the clients are stopped all the same.
        let _ = resumed.send(Resumed { subscribed: storm.subscribed.get(), last_subscribed_ns });
        stop.cancelled().await;
        storm.stop.cancel();
        let reports = fanout::finish(tasks).await?;
        let errors = storm.errors.borrow().clone();
        Ok(StormClients { reports, delivered: storm.delivered.get(), errors })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::stall_ms;

    const MS: u64 = 1_000_000;

    fn sample(published_ms: u64, received_ms: u64) -> Sample {
        Sample { published_ns: published_ms * MS, received_ns: received_ms * MS }
    }

    #[test]
    fn a_delivery_in_flight_at_any_time_of_the_storm_counts_as_during() {
        let (start, end) = (1_000 * MS, 2_000 * MS);
        assert_eq!(window(sample(900, 999), start, end), Window::Before);
        // Published before the storm, held up into it.
        assert_eq!(window(sample(990, 1_300), start, end), Window::During);
        assert_eq!(window(sample(1_500, 1_501), start, end), Window::During);
        // Published at the storm's end, delivered long after it: still the storm's.
        assert_eq!(window(sample(2_000, 2_900), start, end), Window::During);
        assert_eq!(window(sample(2_001, 2_002), start, end), Window::After);
    }

    #[test]
    fn splits_latencies_into_before_and_during() {
        let mut samples: Vec<Sample> = (0..100).map(|i| sample(i * 10, i * 10 + 2)).collect();
        samples.push(sample(995, 1_040));
        samples.push(sample(1_500, 1_501));
        samples.push(sample(2_500, 2_700));
        // During the storm: 2,000 more deliveries at 1 ms, one in a thousand at 10 ms.
        for i in 0..2_000 {
            let published = 1_100 + i % 800;
            samples.push(sample(published, published + if i % 1_000 == 999 { 10 } else { 1 }));
        }
        let (before, during) = split(&samples, 1_000 * MS, 2_000 * MS);
        assert_eq!((before.deliveries, before.p99_us, before.max_us), (100, 2_000, 2_000));
        assert_eq!(during.deliveries, 2_002);
        assert!((45_000..45_100).contains(&during.max_us), "{during:?}");
        assert!((1_000..1_010).contains(&during.p99_us), "{during:?}");
        assert!((10_000..10_010).contains(&during.p999_us), "{during:?}");
        let stall = stall_ms(&before, &during);
        assert!((42.9..43.1).contains(&stall), "{stall}");
    }

    #[test]
    fn no_deliveries_is_zero_latency_and_a_calm_storm_a_negative_stall() {
        let (before, during) = split(&[], 0, 1);
        assert_eq!((before, during), (WindowLatency::default(), WindowLatency::default()));
        let before = WindowLatency { deliveries: 10, p99_us: 5_000, p999_us: 9_000, max_us: 9_000 };
        let during = WindowLatency { deliveries: 10, p99_us: 3_000, p999_us: 4_000, max_us: 4_000 };
        assert_eq!(stall_ms(&before, &during), -1.0);
    }
}
