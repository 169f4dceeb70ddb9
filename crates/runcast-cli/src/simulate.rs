//! `runcast simulate`: a fleet of simulated agents that heartbeat with telemetry and drive
//! executions through realistic lifecycles over gRPC — steps, progress, log lines, approvals that
//! are granted, denied or left to expire, some failures and cancellations — printing a one-line
//! summary per second until stopped.

use crate::CliError;
use crate::api::{self, Agents, Executions};
use crate::cli::Global;
use runcast_contract::v1::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;

const WORKFLOWS: &[&str] = &["nightly-build", "deploy-prod", "etl-orders", "ml-train"];
const STEPS: &[&str] = &["checkout", "build", "test", "package", "publish", "verify"];
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Stats {
    started: AtomicU64,
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

pub async fn run(global: &Global, agents: u32, rate: f64, duration: Option<Duration>) -> Result<(), CliError> {
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
            lifecycle(client, workflow, &stats).await;
            drop(slot);
        });
    }
    heartbeats.abort();
    reporter.abort();
    let total = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "simulation stopped: {} started, {} completed, {} failed, {} cancelled, {} calls, {} refused or failed",
        total(&stats.started),
        total(&stats.completed),
        total(&stats.failed),
        total(&stats.cancelled),
        total(&stats.calls),
        total(&stats.errors)
    );
    Ok(())
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
            "agents={agents} running={} started={} completed={} failed={} cancelled={} calls/s={}",
            stats.running.load(Ordering::Relaxed),
            stats.started.load(Ordering::Relaxed),
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

/// One execution from creation to a terminal state.
async fn lifecycle(mut client: Executions, workflow: &str, stats: &Stats) {
    let create = CreateExecutionRequest {
        workflow_id: workflow.to_owned(),
        labels: [("source".to_owned(), "simulate".to_owned())].into(),
        ..Default::default()
    };
    let Some(execution) = stats.count(client.create_execution(create).await) else { return };
    let id = execution.into_inner().execution_id;
    stats.started.fetch_add(1, Ordering::Relaxed);
    stats.running.fetch_add(1, Ordering::Relaxed);
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
    stats.count(client.update_execution_status(status(ExecutionStatus::Running, "")).await);
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
