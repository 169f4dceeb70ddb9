//! The command line: every subcommand, flag and environment variable, with `--help` everywhere.
//! The global options are declared once (on [`Global`]); `runcast --help` lists them under their
//! own heading and each subcommand's help names them in one line instead of repeating them.

use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use std::time::Duration;

const GLOBAL_HEADING: &str = "Global options (any subcommand)";

#[derive(Debug, Parser)]
#[command(
    name = "runcast",
    version,
    about = "Runcast from the command line: executions, logs, history, agents, live watch.",
    after_help = "Exit codes: 0 success; 1 the command failed (a service refused it or could not be reached); \
                  2 bad arguments (unknown flag, bad value such as an unknown --status)."
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct Global {
    /// execution-api gRPC endpoint.
    #[arg(long, env = "RUNCAST_API_URL", default_value = "http://127.0.0.1:50051", global = true, help_heading = GLOBAL_HEADING)]
    pub api_url: String,

    /// ws-gateway base URL (ws:// or wss://).
    #[arg(long, env = "RUNCAST_GATEWAY_URL", default_value = "ws://127.0.0.1:8080", global = true, help_heading = GLOBAL_HEADING)]
    pub gateway_url: String,

    /// Bearer token. Without one, a development token is minted from RUNCAST_JWT_SECRET.
    #[arg(long, env = "RUNCAST_TOKEN", hide_env_values = true, global = true, help_heading = GLOBAL_HEADING)]
    pub token: Option<String>,

    /// Secret for development tokens (HS256), as configured on the services.
    #[arg(long, env = "RUNCAST_JWT_SECRET", hide_env_values = true, global = true, help_heading = GLOBAL_HEADING)]
    pub jwt_secret: Option<String>,

    /// Lifetime of minted tokens; long-running commands mint a new one when half of it is gone.
    #[arg(long, env = "RUNCAST_TOKEN_TTL", default_value = "1h", value_parser = humantime::parse_duration, global = true, help_heading = GLOBAL_HEADING)]
    pub token_ttl: Duration,

    /// Tenant of minted tokens.
    #[arg(long, env = "RUNCAST_TENANT", default_value = "dev", global = true, help_heading = GLOBAL_HEADING)]
    pub tenant: String,

    /// Print JSON (one object per line) instead of text.
    #[arg(long, global = true, help_heading = GLOBAL_HEADING)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
    /// The event history, oldest first: offset, stream, time, type, entity, version and what changed.
    Events {
        /// Only the events of this execution.
        #[arg(long)]
        execution: Option<String>,
        /// Only the events of this workflow's executions.
        #[arg(long)]
        workflow: Option<String>,
        /// Comma list of event types, e.g. execution.started,step.failed.
        #[arg(long = "type")]
        types: Option<String>,
        /// Only events from this time on (RFC 3339, e.g. 2026-12-01T21:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Only events before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// At most this many events.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Agents and their telemetry.
    Agents {
        /// Comma list of statuses: online, busy, draining, offline.
        #[arg(long)]
        status: Option<String>,
    },
    /// Show the current state of a channel, then follow it through the gateway: a live table on a
    /// terminal, one line per event when piped (JSON with --json).
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
        /// Share of runs (0-100) that ask for an approval.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u8).range(0..=100))]
        approval_percent: u8,
        /// How long an approval waits before it expires (time for a person to decide).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        approval_wait: Duration,
        /// Share of approvals (0-100) the fleet decides itself, some time within the wait; the
        /// others wait for a person (dashboard, `runcast exec approve`) or expire.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u8).range(0..=100))]
        self_decide_percent: u8,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum Exec {
    /// Create an execution.
    Create {
        /// The workflow it is a run of.
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
        /// Fail the execution when it is running and has no event for this many seconds.
        #[arg(long, default_value_t = 0)]
        heartbeat_timeout: u32,
        /// On a failure that may pass (execution-api unreachable, answering UNAVAILABLE or
        /// DEADLINE_EXCEEDED, or refusing for want of request slots), create again up to this many times, 1, 2, 4 … s apart (30 s at
        /// most), with one idempotency key: --key, or one made up for this run, so that one
        /// execution is created.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=20))]
        retries: u32,
    },
    /// Show one execution: status, steps with durations, approvals with deadlines, error, agent,
    /// labels and times.
    Get {
        /// Execution id.
        id: String,
    },
    /// List executions, newest first.
    List {
        /// Only this workflow's executions.
        #[arg(long)]
        workflow: Option<String>,
        /// Comma list of statuses: pending, running, paused, blocked, completed, failed, cancelled.
        #[arg(long)]
        status: Option<String>,
        /// At most this many executions.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Cancel an execution.
    Cancel {
        /// Execution id.
        id: String,
        /// Why, kept in the history.
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        retry: Retry,
    },
    /// Pause a running execution.
    Pause {
        /// Execution id.
        id: String,
        /// Why, kept in the history.
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        retry: Retry,
    },
    /// Resume a paused execution.
    Resume {
        /// Execution id.
        id: String,
        /// Why, kept in the history.
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        retry: Retry,
    },
    /// Set the status (running, paused, blocked, completed, failed, cancelled).
    Status {
        /// Execution id.
        id: String,
        /// The new status: running, paused, blocked, completed, failed or cancelled.
        status: String,
        /// A message for people, kept in the history.
        #[arg(long, default_value = "")]
        message: String,
        /// The error, when failing it.
        #[arg(long, default_value = "")]
        error: String,
        /// Apply only if the execution is at this version.
        #[arg(long)]
        expected_version: Option<u64>,
        /// The agent reporting; moving to running makes it the execution's owner.
        #[arg(long, default_value = "")]
        agent: String,
        #[command(flatten)]
        retry: Retry,
    },
    /// Report a step (pending, running, completed, failed, skipped).
    Step {
        /// Execution id.
        id: String,
        /// Step id, unique within the execution.
        step_id: String,
        /// The step's status: pending, running, completed, failed or skipped.
        status: String,
        /// A display name for the step.
        #[arg(long, default_value = "")]
        name: String,
        /// The error, when the step failed.
        #[arg(long, default_value = "")]
        error: String,
        #[command(flatten)]
        retry: Retry,
    },
    /// Report progress (0-100).
    Progress {
        /// Execution id.
        id: String,
        /// Percent done, 0 to 100.
        percent: u32,
        /// The step it is in.
        #[arg(long, default_value = "")]
        step: String,
        /// A message for people.
        #[arg(long, default_value = "")]
        message: String,
        #[command(flatten)]
        retry: Retry,
    },
    /// Ask for an approval (blocks the execution until it is resolved).
    RequestApproval {
        /// Execution id.
        id: String,
        /// Approval id, unique within the execution.
        approval_id: String,
        /// What is to be approved, for the approver.
        #[arg(long, default_value = "")]
        reason: String,
        /// Expire it after this long, e.g. 10m.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
        #[command(flatten)]
        retry: Retry,
    },
    /// Grant an approval.
    Approve {
        /// Execution id.
        id: String,
        /// The approval to grant.
        approval_id: String,
        /// A comment, kept in the history.
        #[arg(long, default_value = "")]
        comment: String,
        #[command(flatten)]
        retry: Retry,
    },
    /// Deny an approval (fails the execution).
    Deny {
        /// Execution id.
        id: String,
        /// The approval to deny.
        approval_id: String,
        /// A comment, kept in the history.
        #[arg(long, default_value = "")]
        comment: String,
        #[command(flatten)]
        retry: Retry,
    },
}

/// `--request-id` and `--retries`, on every command that changes an execution.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct Retry {
    /// Your id for this change (1 to 64 of A-Z a-z 0-9 _ -): the same command run again with the
    /// same id, after a timeout or in a retried script step, applies it once and prints the
    /// execution as the first run left it (another change under an id already used is refused).
    #[arg(long, default_value = "")]
    pub request_id: String,
    /// On a failure that may pass (execution-api unreachable, answering UNAVAILABLE or
    /// DEADLINE_EXCEEDED: a replica restarting, a NATS leader election; or refusing with
    /// RESOURCE_EXHAUSTED and a retry pushback: its request slots or the tenant's share in use), send the command again up
    /// to this many times, 1, 2, 4 … s apart (30 s at most), under one request id: --request-id,
    /// or one made up for this run, so that it is applied once.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=20))]
    pub retries: u32,
}

impl Retry {
    /// The request id to send: the caller's, else, when the command may be sent more than once,
    /// one made up for this run (empty otherwise: a command sent once needs none).
    pub(crate) fn request_id(&self) -> String {
        given_or_made_up(&self.request_id, self.retries)
    }
}

/// The id a command goes with (a request id, a create's key): the caller's, else, when the
/// command may be sent more than once (`retries` > 0), one made up for this run, so that it is
/// applied once; empty otherwise.
pub(crate) fn given_or_made_up(given: &str, retries: u32) -> String {
    if given.is_empty() && retries > 0 { uuid::Uuid::now_v7().to_string() } else { given.to_owned() }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Logs {
    /// Append lines (arguments, or standard input one line each).
    Append {
        /// Execution id.
        id: String,
        /// Mark the lines as stderr.
        #[arg(long)]
        stderr: bool,
        /// The lines; without any, standard input is read.
        lines: Vec<String>,
        /// Your id for these lines: running the same append again with the same id appends them
        /// once (each message of 500 lines gets `<id>-<n>`, so keep the id to 60 characters).
        #[arg(long, default_value = "")]
        request_id: String,
        /// As for `exec` commands: send the lines again after a failure that may pass, under one
        /// request id (--request-id, or one made up for this run), so that they are appended once.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=20))]
        retries: u32,
    },
    /// Print an execution's log lines from the first, follow new ones, and exit once the
    /// execution has ended and every line before its end is printed. Piped: the text of each
    /// line; on a terminal: numbered, stderr lines marked `!`; --json: the gateway's event frames.
    Tail {
        /// Execution id.
        id: String,
        /// Start after this LOGS offset instead of the first line.
        #[arg(long)]
        since_offset: Option<u64>,
        /// Exit after this many log events (each holds one or more lines).
        #[arg(long)]
        count: Option<u64>,
    },
}

#[derive(Debug, Clone, Args)]
pub(crate) struct WatchArgs {
    /// executions, executions:{id}, workflows:{id}, approvals, logs:{id}, agents, agents:{id}.
    #[arg(default_value = "executions")]
    pub channel: String,
    /// Only these workflows (comma list).
    #[arg(long)]
    pub workflow: Option<String>,
    /// Only these executions (comma list).
    #[arg(long)]
    pub execution: Option<String>,
    /// Only these statuses (comma list; execution statuses, or agent statuses for agents).
    #[arg(long)]
    pub status: Option<String>,
    /// Only these event types (comma list).
    #[arg(long = "type")]
    pub types: Option<String>,
    /// Skip the current state and replay what happened after this offset instead.
    #[arg(long)]
    pub since_offset: Option<u64>,
    /// Exit after this many events.
    #[arg(long)]
    pub count: Option<u64>,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("'{text}' is not key=value"))
}

/// The command line as clap sees it: the global options are shown in full by `runcast --help`
/// only; each subcommand carries them hidden (so they are accepted after it, e.g.
/// `runcast exec list --json`) and names them in one line at the end of its help.
pub(crate) fn command() -> clap::Command {
    let command = Cli::command();
    let globals: Vec<clap::Arg> = command.get_arguments().filter(|arg| arg.is_global_set()).cloned().collect();
    let names: Vec<String> = globals.iter().filter_map(|arg| arg.get_long().map(|long| format!("--{long}"))).collect();
    let note = format!("Global options: {} (see runcast --help).", names.join(", "));
    hide_globals(command, &globals, &note, true)
}

fn hide_globals(mut command: clap::Command, globals: &[clap::Arg], note: &str, top: bool) -> clap::Command {
    if !top {
        // Present before clap propagates the globals, so clap keeps these hidden copies.
        for arg in globals {
            command = command.arg(arg.clone().hide(true));
        }
        command = command.after_help(note.to_owned());
    }
    let names: Vec<String> = command.get_subcommands().map(|sub| sub.get_name().to_owned()).collect();
    for name in names {
        command = command.mut_subcommand(name, |sub| hide_globals(sub, globals, note, false));
    }
    command
}

/// Parses the process's arguments.
pub(crate) fn parse() -> Result<Cli, clap::Error> {
    parse_from(std::env::args_os())
}

pub(crate) fn parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let mut command = command();
    let matches = command.try_get_matches_from_mut(args)?;
    Cli::from_arg_matches(&matches).map_err(|err| err.format(&mut command))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn help(args: &[&str]) -> String {
        let mut full = vec!["runcast"];
        full.extend_from_slice(args);
        full.push("--help");
        match parse_from(full) {
            Err(err) if !err.use_stderr() => err.render().to_string(),
            other => panic!("{args:?} --help did not print help: {other:?}"),
        }
    }

    /// Every flag, argument and subcommand of every command says what it is.
    #[test]
    fn every_option_is_described() {
        fn check(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments().filter(|arg| !arg.is_hide_set()) {
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {} (no about)", sub.get_name()));
                }
                check(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        check(&command(), "runcast", &mut missing);
        assert!(missing.is_empty(), "undescribed: {missing:?}");
    }

    #[test]
    fn global_options_are_listed_once_at_the_top_and_named_in_one_line_below() {
        let top = help(&[]);
        assert!(top.contains(GLOBAL_HEADING) && top.contains("--api-url") && top.contains("--json"), "{top}");
        for sub in [&["exec", "get"][..], &["events"], &["watch"], &["logs", "tail"], &["exec"]] {
            let text = help(sub);
            assert!(!text.contains("--api-url <"), "{sub:?} repeats the globals:\n{text}");
            assert!(!text.contains("--token-ttl <"), "{sub:?} repeats the globals:\n{text}");
            assert!(text.contains("Global options: --api-url"), "{sub:?} names them:\n{text}");
        }
    }

    #[test]
    fn global_options_are_accepted_after_the_subcommand() {
        let cli = parse_from(["runcast", "exec", "list", "--json", "--tenant", "t9"]).expect("parses");
        assert!(cli.global.json);
        assert_eq!(cli.global.tenant, "t9");
        let cli = parse_from(["runcast", "--json", "events", "--limit", "3"]).expect("parses");
        assert!(cli.global.json);
    }
}
