//! `runcast`: the command line client of Runcast.
//!
//! - [`cli`]: subcommands and flags; [`api`]: connections and tokens; [`commands`]: what each
//!   subcommand does; [`output`]: text or JSON; [`watch`]: following a gateway channel with
//!   reconnect and resume; [`simulate`]: a fleet of simulated agents.

mod api;
mod cli;
mod commands;
mod output;
mod simulate;
mod watch;

use clap::Parser as _;
use std::process::ExitCode;

/// An error for the user: one line, no backtrace.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CliError(pub String);

impl From<tonic::Status> for CliError {
    fn from(status: tonic::Status) -> Self {
        let code = format!("{:?}", status.code());
        Self(format!("execution-api answered {code}: {}", status.message()))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
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
            ExitCode::FAILURE
        }
    }
}
