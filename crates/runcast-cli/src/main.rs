//! `runcast`: the command line client of Runcast.
//!
//! - [`cli`]: subcommands and flags; [`api`]: connections and tokens; [`commands`]: what each
//!   subcommand does; [`output`]: text or JSON, and the human forms of executions, events and
//!   durations; [`state`]: the current state `watch` and `logs tail` start from; [`table`]: the
//!   live table `watch` draws on a terminal; [`watch`]: following gateway channels with reconnect
//!   and resume; [`simulate`]: a fleet of simulated agents.

mod api;
mod cli;
mod commands;
mod output;
mod simulate;
mod state;
mod table;
mod watch;

use std::process::ExitCode;

/// What went wrong, as far as the exit code is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The command was understood but failed: a service refused it or could not be reached (1).
    Failed,
    /// The command line itself is wrong: unknown flag, bad value (2).
    Usage,
}

/// An error for the user: one line, no backtrace.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    message: String,
    kind: ErrorKind,
    /// A failure that may pass if the command is sent again: the api unreachable, or answering
    /// UNAVAILABLE or DEADLINE_EXCEEDED (a replica restarting, a NATS leader election).
    transient: bool,
}

impl CliError {
    pub fn failed(message: impl Into<String>) -> Self {
        Self { message: message.into(), kind: ErrorKind::Failed, transient: false }
    }

    /// A failure that may pass (see [`is_transient`](Self::is_transient)).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self { transient: true, ..Self::failed(message) }
    }

    /// A bad argument: exits 2 like clap's own parse errors.
    pub fn usage(message: impl Into<String>) -> Self {
        Self { message: message.into(), kind: ErrorKind::Usage, transient: false }
    }

    /// Whether sending the command again may succeed (`--retries`).
    pub fn is_transient(&self) -> bool {
        self.transient
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The exit codes README documents: 1 failed, 2 usage.
    pub fn exit_code(&self) -> u8 {
        match self.kind {
            ErrorKind::Failed => 1,
            ErrorKind::Usage => 2,
        }
    }
}

impl From<tonic::Status> for CliError {
    fn from(status: tonic::Status) -> Self {
        let code = format!("{:?}", status.code());
        let message = format!("execution-api answered {code}: {}", status.message());
        if runcast_contract::client::may_pass(&status) { Self::unavailable(message) } else { Self::failed(message) }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match cli::parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => {
            let _ = err.print(); // --help, --version
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            // One line: clap's message without its usage block.
            let rendered = err.to_string();
            let message: Vec<&str> = rendered
                .lines()
                .map(str::trim)
                .take_while(|line| !line.starts_with("Usage:"))
                .filter(|line| !line.is_empty() && !line.starts_with("For more information"))
                .collect();
            eprintln!("runcast: {} (see runcast --help)", message.join(" ").trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    match commands::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("runcast: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}
