//! `runcast simulate`: a fleet of simulated agents that heartbeat with telemetry and drive
//! executions through realistic lifecycles over gRPC — steps, progress, log lines, approvals that
//! are granted, denied or left to expire, some failures and cancellations — printing a one-line
//! summary per second until stopped. Like a real worker pool, the fleet also claims pending
//! executions of its workflows that someone else created, learning of them through the gateway.

use crate::CliError;
use crate::api::{self, Agents, Executions};
use crate::cli::{Global, WatchArgs};
use crate::watch;
use runcast_contract::v1::*;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};

const WORKFLOWS: &[&str] = &["nightly-build", "deploy-prod", "etl-orders", "ml-train"];
const STEPS: &[&str] = &["checkout", "build", "test", "package", "publish", "verify"];
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Stats {
    started: AtomicU64,
    picked_up: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
    calls: AtomicU64,
    errors: AtomicU64,
    running: AtomicU64,
}

impl Stats {
    fn count<T>(&self, result: Result<T, tonic::Status>) -> Option<T> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(value) => Some(value),
            Err(status) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                tracing_error(&status);
                None
            }
        }
    }
}

fn tracing_error(status: &tonic::Status) {
    // Refusals are part of the simulation (a denied approval races a cancel); only show the rest.
    if !matches!(status.code(), tonic::Code::FailedPrecondition | tonic::Code::Aborted) {
        eprintln!("runcast simulate: {:?}: {}", status.code(), status.message());
    }
}

pub async fn run(
    global: &Global,
    agents: u32,
    rate: f64,
    duration: Option<Duration>,
    pick_up: bool,
) -> Result<(), CliError> {
    let executions = api::executions(global).await?;
    let agent_client = api::agents(global).await?;
    let stats = Arc::new(Stats::default());
    let stop = stop_after(duration);
    let run_id = &uuid::Uuid::now_v7().simple().to_string()[20..];
    let agent_ids: Vec<String> = (0..agents).map(|n| format!("sim-{run_id}-{n}")).collect();

    let heartbeats = tokio::spawn(heartbeat_loop(agent_client, agent_ids.clone(), stats.clone()));
    let reporter = tokio::spawn(report_loop(stats.clone(), agents));
    // At most four executions in flight per agent: a slow api slows the fleet, never piles up.
    let slots = Arc::new(Semaphore::new(agents as usize * 4));
    let pickers = pick_up.then(|| spawn_pick_up(global, executions.clone(), slots.clone(), stats.clone()));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut ticker = tokio::time::interval(interval);
    let mut n: u64 = 0;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = ticker.tick() => {}
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let client = executions.clone();
        let stats = stats.clone();
        let workflow = WORKFLOWS[(n as usize) % WORKFLOWS.len()];
        n += 1;
        tokio::spawn(async move {
            lifecycle(client, Work::Create(workflow), &stats).await;
            drop(slot);
        });
    }
    for task in [heartbeats, reporter].into_iter().chain(pickers.into_iter().flatten()) {
        task.abort();
    }
    let total = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "simulation stopped: {} started ({} picked up), {} completed, {} failed, {} cancelled, {} calls, {} refused or failed",
        total(&stats.started),
        total(&stats.picked_up),
        total(&stats.completed),
        total(&stats.failed),
        total(&stats.cancelled),
        total(&stats.calls),
        total(&stats.errors)
    );
    Ok(())
}

/// Executions created elsewhere, as the gateway announces them: (id, version).
struct Announced(mpsc::Sender<(String, u64)>);

impl watch::Sink for Announced {
    fn show(&mut self, frame: &Value) {
        let state = &frame["data"]["state"];
        if state["labels"]["source"] == "simulate" {
            return; // some fleet's own: already driven
        }
        let (Some(id), Some(version)) = (state["execution_id"].as_str(), state["version"].as_u64()) else { return };
        if self.0.try_send((id.to_owned(), version)).is_err() {
            eprintln!("runcast simulate: the fleet is saturated; leaving {id} to other agents");
        }
    }
}

/// Follows `execution.created` of the fleet's workflows on the gateway, and claims each
/// execution announced there once an agent slot is free. Returns the two tasks.
fn spawn_pick_up(
    global: &Global,
    executions: Executions,
    slots: Arc<Semaphore>,
    stats: Arc<Stats>,
) -> [tokio::task::JoinHandle<()>; 2] {
    let (announced, mut pending) = mpsc::channel(64);
    let args = WatchArgs {
        channel: "executions".into(),
        workflow: Some(WORKFLOWS.join(",")),
        execution: None,
        status: None,
        types: Some("execution.created".into()),
        since_offset: None,
        count: None,
    };
    let global = global.clone();
    let follower = tokio::spawn(async move {
        if let Err(err) = watch::follow(&global, &args, &mut Announced(announced)).await {
            eprintln!("runcast simulate: not picking up executions created elsewhere: {}", err.0);
        }
    });
    let claimer = tokio::spawn(async move {
        while let Some((id, version)) = pending.recv().await {
            let Ok(slot) = slots.clone().acquire_owned().await else { return };
            let client = executions.clone();
            let stats = stats.clone();
            tokio::spawn(async move {
                lifecycle(client, Work::Claim { id, version }, &stats).await;
                drop(slot);
            });
        }
    });
    [follower, claimer]
}

/// Resolves after `duration`, or on Ctrl-C.
async fn stop_after(duration: Option<Duration>) {
    match duration {
        Some(duration) => {
            tokio::select! {
                _ = tokio::time::sleep(duration) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn report_loop(stats: Arc<Stats>, agents: u32) {
    let mut previous_calls = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let calls = stats.calls.load(Ordering::Relaxed);
        eprintln!(
            "agents={agents} running={} started={} picked_up={} completed={} failed={} cancelled={} calls/s={}",
            stats.running.load(Ordering::Relaxed),
            stats.started.load(Ordering::Relaxed),
            stats.picked_up.load(Ordering::Relaxed),
            stats.completed.load(Ordering::Relaxed),
            stats.failed.load(Ordering::Relaxed),
            stats.cancelled.load(Ordering::Relaxed),
            calls - previous_calls
        );
        previous_calls = calls;
    }
}

async fn heartbeat_loop(mut client: Agents, agent_ids: Vec<String>, stats: Arc<Stats>) {
    loop {
        let running = stats.running.load(Ordering::Relaxed) as f64;
        for id in &agent_ids {
            let load = (running / agent_ids.len().max(1) as f64 * 20.0).min(80.0);
            let request = HeartbeatRequest {
                agent_id: id.clone(),
                status: if load > 40.0 { AgentStatus::Busy } else { AgentStatus::Online }.into(),
                cpu_percent: (load + fastrand::f64() * 20.0).min(100.0),
                memory_percent: 30.0 + fastrand::f64() * 40.0,
                gpu_percent: if id.ends_with('0') { fastrand::f64() * 100.0 } else { 0.0 },
                timeout_seconds: 10,
                labels: [("pool".to_owned(), "simulated".to_owned())].into(),
                ..Default::default()
            };
            stats.count(client.heartbeat(request).await);
        }
        tokio::time::sleep(HEARTBEAT_EVERY).await;
    }
}

async fn pause() {
    tokio::time::sleep(Duration::from_millis(150 + fastrand::u64(..450))).await;
}

/// How a lifecycle ends: a status still to report, or one the execution reached on its own.
enum Finish {
    Report(ExecutionStatus),
    Failed,
    Cancelled,
}

enum Ending {
    Complete,
    Fail,
    Cancel,
    Approval,
}

/// Where a lifecycle's execution comes from.
enum Work {
    /// Created by this fleet, of this workflow.
    Create(&'static str),
    /// Created elsewhere, seen at `version`.
    Claim { id: String, version: u64 },
}

/// One execution from creation (or claim) to a terminal state.
async fn lifecycle(mut client: Executions, work: Work, stats: &Stats) {
    let (id, expected_version) = match work {
        Work::Create(workflow) => {
            let create = CreateExecutionRequest {
                workflow_id: workflow.to_owned(),
                labels: [("source".to_owned(), "simulate".to_owned())].into(),
                ..Default::default()
            };
            let Some(execution) = stats.count(client.create_execution(create).await) else { return };
            (execution.into_inner().execution_id, 0)
        }
        Work::Claim { id, version } => (id, version),
    };
    let ending = match fastrand::u8(..100) {
        0..=9 => Ending::Fail,
        10..=14 => Ending::Cancel,
        15..=34 => Ending::Approval,
        _ => Ending::Complete,
    };
    let status = |to: ExecutionStatus, error: &str| UpdateExecutionStatusRequest {
        execution_id: id.clone(),
        status: to.into(),
        error: error.to_owned(),
        ..Default::default()
    };
    pause().await;
    // A claim is the move to running at the version that was announced: when several agents
    // claim the same execution, exactly one wins and the others leave it.
    let start = UpdateExecutionStatusRequest { expected_version, ..status(ExecutionStatus::Running, "") };
    if stats.count(client.update_execution_status(start).await).is_none() {
        return;
    }
    stats.started.fetch_add(1, Ordering::Relaxed);
    if expected_version > 0 {
        stats.picked_up.fetch_add(1, Ordering::Relaxed);
    }
    stats.running.fetch_add(1, Ordering::Relaxed);
    let steps = &STEPS[..3 + fastrand::usize(..3)];
    let mut outcome = Finish::Report(ExecutionStatus::Completed);
    for (index, step) in steps.iter().enumerate() {
        let report = |s: StepStatus| ReportStepRequest {
            execution_id: id.clone(),
            step_id: (*step).to_owned(),
            name: step.to_uppercase(),
            status: s.into(),
            ..Default::default()
        };
        stats.count(client.report_step(report(StepStatus::Running)).await);
        let lines: Vec<LogLineInput> = (0..1 + fastrand::usize(..4))
            .map(|n| LogLineInput {
                text: format!("[{step}] line {n}: {}", ["ok", "working", "fetching", "done"][n % 4]),
                stream: LogStream::Stdout.into(),
            })
            .collect();
        stats.count(
            client
                .append_logs(futures::stream::iter(vec![AppendLogsRequest { execution_id: id.clone(), lines }]))
                .await,
        );
        pause().await;
        let percent = ((index + 1) * 100 / steps.len()) as u32;
        stats.count(
            client
                .report_progress(ReportProgressRequest {
                    execution_id: id.clone(),
                    percent: percent.min(99),
                    current_step: (*step).to_owned(),
                    ..Default::default()
                })
                .await,
        );
        let last = index + 1 == steps.len();
        match (&ending, last) {
            (Ending::Fail, true) => {
                stats.count(
                    client
                        .report_step(ReportStepRequest { error: "exit code 1".into(), ..report(StepStatus::Failed) })
                        .await,
                );
                outcome = Finish::Report(ExecutionStatus::Failed);
            }
            (Ending::Cancel, true) => {
                stats.count(
                    client
                        .cancel_execution(CancelExecutionRequest {
                            execution_id: id.clone(),
                            reason: "superseded".into(),
                        })
                        .await,
                );
                outcome = Finish::Cancelled;
            }
            (Ending::Approval, true) => {
                stats.count(client.report_step(report(StepStatus::Completed)).await);
                outcome = approval(&mut client, &id, stats).await;
            }
            _ => {
                stats.count(client.report_step(report(StepStatus::Completed)).await);
            }
        }
    }
    match outcome {
        Finish::Report(ExecutionStatus::Failed) => {
            stats.count(client.update_execution_status(status(ExecutionStatus::Failed, "a step failed")).await);
            stats.failed.fetch_add(1, Ordering::Relaxed);
        }
        Finish::Report(_) => {
            stats.count(client.update_execution_status(status(ExecutionStatus::Completed, "")).await);
            stats.completed.fetch_add(1, Ordering::Relaxed);
        }
        Finish::Failed => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
        }
        Finish::Cancelled => {
            stats.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
    stats.running.fetch_sub(1, Ordering::Relaxed);
}

/// Requests an approval and grants it, denies it, or lets it expire (the api's sweeper fails the
/// execution then). Returns how the execution should end.
async fn approval(client: &mut Executions, id: &str, stats: &Stats) -> Finish {
    let deadline = runcast_contract::json::from_datetime(chrono::Utc::now() + chrono::Duration::seconds(3));
    let request = RequestApprovalRequest {
        execution_id: id.to_owned(),
        approval_id: "release".into(),
        reason: "ship it?".into(),
        deadline: Some(deadline),
    };
    if stats.count(client.request_approval(request).await).is_none() {
        return Finish::Report(ExecutionStatus::Failed);
    }
    pause().await;
    let resolve = |granted: bool| ResolveApprovalRequest {
        execution_id: id.to_owned(),
        approval_id: "release".into(),
        granted,
        comment: "simulated".into(),
    };
    match fastrand::u8(..100) {
        0..=59 => {
            stats.count(client.resolve_approval(resolve(true)).await);
            Finish::Report(ExecutionStatus::Completed)
        }
        60..=79 => {
            stats.count(client.resolve_approval(resolve(false)).await);
            Finish::Failed // a denial fails the execution
        }
        _ => {
            // Left alone: the api's sweeper expires it (and fails the execution) after the deadline.
            tokio::time::sleep(Duration::from_secs(4)).await;
            Finish::Failed
        }
    }
}
