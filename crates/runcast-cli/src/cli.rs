//! The command line: every subcommand, flag and environment variable, with `--help` everywhere.

use clap::{Args, Parser, Subcommand};
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "runcast",
    version,
    about = "Runcast from the command line: executions, logs, history, agents, live watch."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct Global {
    /// execution-api gRPC endpoint.
    #[arg(long, env = "RUNCAST_API_URL", default_value = "http://127.0.0.1:50051", global = true)]
    pub api_url: String,

    /// ws-gateway base URL (ws:// or wss://).
    #[arg(long, env = "RUNCAST_GATEWAY_URL", default_value = "ws://127.0.0.1:8080", global = true)]
    pub gateway_url: String,

    /// Bearer token. Without one, a development token is minted from RUNCAST_JWT_SECRET.
    #[arg(long, env = "RUNCAST_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,

    /// Secret for development tokens (HS256), as configured on the services.
    #[arg(long, env = "RUNCAST_JWT_SECRET", hide_env_values = true, global = true)]
    pub jwt_secret: Option<String>,

    /// Lifetime of minted tokens; long-running commands mint a new one when half of it is gone.
    #[arg(long, env = "RUNCAST_TOKEN_TTL", default_value = "1h", value_parser = humantime::parse_duration, global = true)]
    pub token_ttl: Duration,

    /// Tenant of minted tokens.
    #[arg(long, env = "RUNCAST_TENANT", default_value = "dev", global = true)]
    pub tenant: String,

    /// Print JSON (one object per line) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mint a development JWT from RUNCAST_JWT_SECRET.
    Token {
        /// Comma list of roles: viewer, submitter, agent, admin.
        #[arg(long, default_value = "admin")]
        roles: String,
        /// Lifetime, e.g. 1h, 30m.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Subject (`sub` claim).
        #[arg(long, default_value = "runcast-cli")]
        sub: String,
    },
    /// Create, inspect and drive executions.
    #[command(subcommand)]
    Exec(Exec),
    /// Append and follow log lines.
    #[command(subcommand)]
    Logs(Logs),
    /// The event history, oldest first.
    Events {
        #[arg(long)]
        execution: Option<String>,
        #[arg(long)]
        workflow: Option<String>,
        /// Comma list of event types, e.g. execution.started,step.failed.
        #[arg(long = "type")]
        types: Option<String>,
        /// RFC 3339 timestamp.
        #[arg(long)]
        since: Option<String>,
        /// RFC 3339 timestamp.
        #[arg(long)]
        until: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Agents and their telemetry.
    Agents {
        /// Comma list of statuses: online, busy, draining, offline.
        #[arg(long)]
        status: Option<String>,
    },
    /// Follow a channel through the gateway: a live table on a terminal, JSON lines otherwise.
    Watch(WatchArgs),
    /// Run a fleet of simulated agents driving executions through realistic lifecycles.
    Simulate {
        /// Simulated agents.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
        agents: u32,
        /// New executions per second across the fleet.
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// Stop after this long (default: until Ctrl-C).
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Drive only the executions this fleet creates. By default it also claims pending
        /// executions of its workflows created elsewhere (the dashboard's form, `exec create`),
        /// which it learns of through the gateway.
        #[arg(long)]
        no_pick_up: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum Exec {
    /// Create an execution.
    Create {
        #[arg(long)]
        workflow: String,
        /// Idempotency key: the same key returns the same execution.
        #[arg(long)]
        key: Option<String>,
        /// Label as key=value (repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Input as a JSON object.
        #[arg(long)]
        input: Option<String>,
    },
    /// Show one execution.
    Get { id: String },
    /// List executions, newest first.
    List {
        #[arg(long)]
        workflow: Option<String>,
        /// Comma list of statuses.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Cancel an execution.
    Cancel {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Pause a running execution.
    Pause {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Resume a paused execution.
    Resume {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Set the status (running, paused, blocked, completed, failed, cancelled).
    Status {
        id: String,
        status: String,
        #[arg(long, default_value = "")]
        message: String,
        #[arg(long, default_value = "")]
        error: String,
        /// Apply only if the execution is at this version.
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// Report a step (pending, running, completed, failed, skipped).
    Step {
        id: String,
        step_id: String,
        status: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, default_value = "")]
        error: String,
    },
    /// Report progress (0-100).
    Progress {
        id: String,
        percent: u32,
        #[arg(long, default_value = "")]
        step: String,
        #[arg(long, default_value = "")]
        message: String,
    },
    /// Ask for an approval (blocks the execution until it is resolved).
    RequestApproval {
        id: String,
        approval_id: String,
        #[arg(long, default_value = "")]
        reason: String,
        /// Expire it after this long, e.g. 10m.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
    },
    /// Grant an approval.
    Approve {
        id: String,
        approval_id: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Deny an approval (fails the execution).
    Deny {
        id: String,
        approval_id: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum Logs {
    /// Append lines (arguments, or standard input one line each).
    Append {
        id: String,
        /// Mark the lines as stderr.
        #[arg(long)]
        stderr: bool,
        lines: Vec<String>,
    },
    /// Follow an execution's log lines.
    Tail {
        id: String,
        /// Resume after this LOGS offset.
        #[arg(long)]
        since_offset: Option<u64>,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// executions, executions:{id}, workflows:{id}, approvals, logs:{id}, agents, agents:{id}.
    #[arg(default_value = "executions")]
    pub channel: String,
    /// Only these workflows (comma list).
    #[arg(long)]
    pub workflow: Option<String>,
    /// Only these executions (comma list).
    #[arg(long)]
    pub execution: Option<String>,
    /// Only these statuses (comma list).
    #[arg(long)]
    pub status: Option<String>,
    /// Only these event types (comma list).
    #[arg(long = "type")]
    pub types: Option<String>,
    /// Start after this offset (replays what happened since).
    #[arg(long)]
    pub since_offset: Option<u64>,
    /// Exit after this many events.
    #[arg(long)]
    pub count: Option<u64>,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("'{text}' is not key=value"))
}
