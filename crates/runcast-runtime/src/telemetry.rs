//! Logging with `tracing`: JSON lines when stdout is not a terminal (collectors, tests), readable
//! text on a terminal.

use crate::config::TelemetryArgs;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. A second call (several services in one test process) is a no-op.
pub fn init(args: &TelemetryArgs) {
    let filter = EnvFilter::try_new(&args.log_filter).unwrap_or_else(|err| {
        eprintln!("RUST_LOG={:?} is not a valid filter ({err}); using \"info\"", args.log_filter);
        EnvFilter::new("info")
    });
    let json = match args.log_format.as_str() {
        "json" => true,
        "text" => false,
        _ => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(true);
    let _ =
        if json { builder.json().flatten_event(true).with_current_span(false).try_init() } else { builder.try_init() };
}
