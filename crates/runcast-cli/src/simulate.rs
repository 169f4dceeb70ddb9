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

/// How the fleet handles approvals.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Approvals {
    /// Share of runs (0-100) that ask for one.
    pub percent: u8,
    /// Its deadline: time for a person to decide.
    pub wait: Duration,
    /// Share of approvals (0-100) the fleet decides itself within the wait.
    pub self_decide_percent: u8,
}

impl Default for Approvals {
    fn default() -> Self {
        Self { percent: 20, wait: Duration::from_secs(30), self_decide_percent: 60 }
    }
}

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
    /// The fleet's agents, and the executions each runs (reported in its heartbeats, and named as
    /// `agent_id` when it starts one: a fleet that stops has its executions failed by the api).
    agent_ids: Vec<String>,
    approvals: Approvals,
    owned: std::sync::Mutex<std::collections::HashMap<String, std::collections::BTreeSet<String>>>,
}

impl Stats {
    fn new(agent_ids: Vec<String>, approvals: Approvals) -> Self {
        Self { agent_ids, approvals, ..Default::default() }
    }

    fn pick_agent(&self) -> String {
        self.agent_ids.get(fastrand::usize(..self.agent_ids.len().max(1))).cloned().unwrap_or_default()
    }

    fn owned(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, std::collections::BTreeSet<String>>> {
        self.owned.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn running_on(&self, agent_id: &str) -> Vec<String> {
        self.owned().get(agent_id).map(|ids| ids.iter().cloned().collect()).unwrap_or_default()
    }

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

pub(crate) async fn run(
    global: &Global,
    agents: u32,
    rate: f64,
    duration: Option<Duration>,
    pick_up: bool,
    approvals: Approvals,
) -> Result<(), CliError> {
    let executions = api::executions(global).await?;
    let agent_client = api::agents(global).await?;
    let stop = stop_after(duration);
    let run_id = &uuid::Uuid::now_v7().simple().to_string()[20..];
    let agent_ids: Vec<String> = (0..agents).map(|n| format!("sim-{run_id}-{n}")).collect();
    let stats = Arc::new(Stats::new(agent_ids.clone(), approvals));

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
    fn show(&mut self, frame: &Value) -> watch::Next {
        let state = &frame["data"]["state"];
        if state["labels"]["source"] == "simulate" {
            return watch::Next::Continue; // some fleet's own: already driven
        }
        let (Some(id), Some(version)) = (state["execution_id"].as_str(), state["version"].as_u64()) else {
            return watch::Next::Continue;
        };
        if self.0.try_send((id.to_owned(), version)).is_err() {
            eprintln!("runcast simulate: the fleet is saturated; leaving {id} to other agents");
        }
        watch::Next::Continue
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
        if let Err(err) =
            watch::follow(&global, vec![watch::Subscription::from_args(&args, None)], &mut Announced(announced)).await
        {
            eprintln!("runcast simulate: not picking up executions created elsewhere: {}", err.message());
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
                running_execution_ids: stats.running_on(id),
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
    let ending = if fastrand::u8(..100) < stats.approvals.percent {
        Ending::Approval
    } else {
        match fastrand::u8(..100) {
            0..=11 => Ending::Fail,
            12..=17 => Ending::Cancel,
            _ => Ending::Complete,
        }
    };
    let agent_id = stats.pick_agent();
    let status = |to: ExecutionStatus, error: &str| UpdateExecutionStatusRequest {
        execution_id: id.clone(),
        status: to.into(),
        error: error.to_owned(),
        agent_id: agent_id.clone(),
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
    stats.owned().entry(agent_id.clone()).or_default().insert(id.clone());
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
                .append_logs(futures::stream::iter(vec![AppendLogsRequest {
                    execution_id: id.clone(),
                    lines,
                    ..Default::default()
                }]))
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
                            ..Default::default()
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
    if let Some(ids) = stats.owned().get_mut(&agent_id) {
        ids.remove(&id);
    }
}

/// Requests an approval, then follows the execution until it is decided: by a person (the
/// dashboard, `runcast exec approve`), by the fleet itself for a share of them (some time within
/// the wait), or by the deadline (the api's sweeper expires it and fails the execution). Whatever
/// decided, the run goes on from there. Returns how the execution should end.
async fn approval(client: &mut Executions, id: &str, stats: &Stats) -> Finish {
    let wait = stats.approvals.wait;
    let deadline = chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::seconds(30));
    let request = RequestApprovalRequest {
        execution_id: id.to_owned(),
        approval_id: APPROVAL_ID.into(),
        reason: "ship it?".into(),
        deadline: Some(runcast_contract::json::from_datetime(chrono::Utc::now() + deadline)),
        ..Default::default()
    };
    let Some(blocked) = stats.count(client.request_approval(request).await) else {
        return Finish::Report(ExecutionStatus::Failed);
    };
    let blocked = blocked.into_inner();
    // The fleet's own decision, if it takes one: grant (3 in 4) or deny, a while into the wait.
    let mut own = (fastrand::u8(..100) < stats.approvals.self_decide_percent).then(|| {
        let at = tokio::time::Instant::now() + wait.mul_f64(0.1 + fastrand::f64() * 0.5);
        (at, fastrand::u8(..4) != 0)
    });
    let watch = WatchExecutionRequest { execution_id: id.to_owned(), from_offset: Some(blocked.offset) };
    let Some(events) = stats.count(client.watch_execution(watch).await) else { return Finish::Failed };
    let mut events = events.into_inner();
    loop {
        let own_at = own.map(|(at, _)| at);
        tokio::select! {
            _ = tokio::time::sleep_until(own_at.unwrap_or_else(tokio::time::Instant::now)), if own_at.is_some() => {
                if let Some((_, granted)) = own.take() {
                    let resolve = ResolveApprovalRequest {
                        execution_id: id.to_owned(),
                        approval_id: APPROVAL_ID.into(),
                        granted,
                        comment: "decided by the simulated fleet".into(),
                        ..Default::default()
                    };
                    // A person may have decided first: then this is refused, and the watch says how.
                    let _ = client.resolve_approval(resolve).await;
                }
            }
            next = events.message() => {
                let Ok(Some(event)) = next else { return Finish::Failed };
                let Some(event::State::Execution(execution)) = event.state else { continue };
                if let Some(finish) = decided(&execution) {
                    return finish;
                }
            }
        }
    }
}

const APPROVAL_ID: &str = "release";

/// How the run goes on once its approval is no longer pending (`None` while it is).
fn decided(execution: &Execution) -> Option<Finish> {
    let status = ExecutionStatus::try_from(execution.status).unwrap_or(ExecutionStatus::Unspecified);
    if status == ExecutionStatus::Cancelled {
        return Some(Finish::Cancelled);
    }
    let approval = execution.approvals.iter().find(|approval| approval.approval_id == APPROVAL_ID)?;
    match ApprovalStatus::try_from(approval.status) {
        Ok(ApprovalStatus::Pending) => None,
        Ok(ApprovalStatus::Granted) => Some(Finish::Report(ExecutionStatus::Completed)),
        // Denied or expired: the api has failed the execution.
        _ => Some(Finish::Failed),
    }
}
