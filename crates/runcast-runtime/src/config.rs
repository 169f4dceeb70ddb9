//! Settings shared by the services. Every setting is a flag with an environment variable and a
//! default, so `--help` is the configuration reference. A bad configuration exits with code 64
//! (EX_USAGE) and a message naming the variable.

use crate::error::{Error, ErrorKind};
use crate::ops::{ConnectionOptions, DEFAULT_HANDSHAKES, ServeOptions};
use clap::Parser;
use runcast_contract::Topology;
use std::net::SocketAddr;
use std::time::Duration;

/// Exit code for a bad configuration (sysexits `EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;

/// Parses flags and environment, printing help or exiting 64 with clap's message on error.
pub fn parse_or_exit<T: Parser>() -> T {
    T::try_parse().unwrap_or_else(|err| {
        if err.use_stderr() {
            let _ = err.print();
            std::process::exit(i32::from(EXIT_CONFIG));
        }
        err.exit() // --help and --version
    })
}

/// Prints a configuration error and exits 64.
pub fn exit_config_error(err: &Error) -> ! {
    eprintln!("configuration error: {err}");
    std::process::exit(i32::from(EXIT_CONFIG))
}

/// How a service's `main` ends: 0 when it stopped cleanly, 64 with the message for a bad
/// configuration, 1 (logged) for anything else.
pub fn exit_code(service: &str, result: Result<(), Error>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) if err.kind() == ErrorKind::Config => exit_config_error(&err),
        Err(err) => {
            tracing::error!(cause = %err, "{service} failed");
            std::process::ExitCode::FAILURE
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// Log filter, in `tracing-subscriber` EnvFilter syntax.
    #[arg(long = "log", env = "RUST_LOG", default_value = "info")]
    pub log_filter: String,

    /// `json`, `text`, or `auto` (JSON unless stdout is a terminal).
    #[arg(long, env = "RUNCAST_LOG_FORMAT", default_value = "auto", value_parser = ["auto", "json", "text"])]
    pub log_format: String,

    /// OTLP/gRPC endpoint traces are exported to (e.g. http://otel-collector:4317); none: not exported.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LifecycleArgs {
    /// Seconds a stopping service gives in-flight work before it exits.
    #[arg(long, env = "RUNCAST_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// How long an HTTP connection may take to send a request's headers, and stay idle between
    /// requests, before it is closed (slow or silent peers cannot pin connections).
    #[arg(long, env = "RUNCAST_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,

    /// New HTTP connections read and answered at once, up to their first response (at most
    /// 50 ms each, unless a WebSocket waits for its first subscriptions); the others wait in the
    /// listen backlog. Paces a reconnect storm so it does not delay the connections already open.
    #[arg(long, env = "RUNCAST_HANDSHAKE_CONCURRENCY", default_value_t = DEFAULT_HANDSHAKES)]
    pub handshake_concurrency: usize,
}

impl From<&LifecycleArgs> for ConnectionOptions {
    fn from(args: &LifecycleArgs) -> Self {
        Self { header_timeout: args.header_timeout, handshakes: args.handshake_concurrency.max(1) }
    }
}

impl From<&LifecycleArgs> for ServeOptions {
    fn from(args: &LifecycleArgs) -> Self {
        Self { shutdown_grace: args.shutdown_grace, connections: args.into() }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma separated.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// Prefix for stream names and subjects, to isolate several deployments (or tests) on one
    /// NATS server. Empty in production: streams are then EXECUTIONS, LOGS and AGENTS.
    #[arg(long, env = "RUNCAST_STREAM_PREFIX", default_value = "")]
    pub stream_prefix: String,

    #[command(flatten)]
    pub streams: StreamLimits,
}

impl NatsArgs {
    pub fn topology(&self) -> Result<Topology, Error> {
        Topology::with_prefix(&self.stream_prefix)
            .map_err(|err| Error::with_source(ErrorKind::Config, "RUNCAST_STREAM_PREFIX is invalid", err))
    }
}

/// Limits applied to the EXECUTIONS, LOGS and AGENTS streams when they are created or updated.
/// The stream is the live log and short-term replay; the long history is in PostgreSQL.
#[derive(Debug, Clone, clap::Args)]
pub struct StreamLimits {
    /// Stream replicas: 1 for a single server, 3 for a cluster.
    #[arg(long, env = "RUNCAST_STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: u8,

    /// How long a stream keeps an event.
    #[arg(long, env = "RUNCAST_STREAM_MAX_AGE", default_value = "7d", value_parser = humantime::parse_duration)]
    pub max_age: Duration,

    /// Bytes a stream keeps at most (-1: unlimited). The oldest events go first.
    #[arg(long, env = "RUNCAST_STREAM_MAX_BYTES", default_value_t = -1, allow_negative_numbers = true)]
    pub max_bytes: i64,

    /// Events a stream keeps at most (-1: unlimited). The oldest events go first.
    #[arg(long, env = "RUNCAST_STREAM_MAX_MESSAGES", default_value_t = -1, allow_negative_numbers = true)]
    pub max_messages: i64,

    /// Window in which a repeated event id (`Nats-Msg-Id`) is dropped as a duplicate.
    #[arg(long, env = "RUNCAST_STREAM_DUPLICATE_WINDOW", default_value = "2m", value_parser = humantime::parse_duration)]
    pub duplicate_window: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            replicas: 1,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: -1,
            max_messages: -1,
            duplicate_window: Duration::from_secs(120),
        }
    }
}

/// Parses a listen address, naming the variable when it is wrong.
pub fn listen_addr(variable: &'static str, value: &str) -> Result<SocketAddr, Error> {
    value.parse().map_err(|err| {
        Error::with_source(ErrorKind::Config, format!("{variable}={value:?} is not a host:port address"), err)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        nats: NatsArgs,
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let cli = Cli::try_parse_from(["svc"]).expect("defaults parse");
        assert_eq!(cli.nats.nats_url, "nats://127.0.0.1:4222");
        let defaults = StreamLimits::default();
        assert_eq!(cli.nats.streams.max_age, defaults.max_age);
        assert_eq!(cli.nats.streams.duplicate_window, defaults.duplicate_window);
        assert_eq!(cli.nats.streams.max_bytes, -1);
        assert_eq!(cli.nats.topology().expect("no prefix"), Topology::unprefixed());
    }

    #[test]
    fn malformed_values_are_refused_with_the_setting_named() {
        let err = Cli::try_parse_from(["svc", "--max-age", "forever"]).expect_err("bad duration");
        assert!(err.to_string().contains("--max-age"), "{err}");
        let err = Cli::try_parse_from(["svc", "--replicas", "0"]).expect_err("replicas >= 1");
        assert!(err.to_string().contains("--replicas"), "{err}");

        let cli = Cli::try_parse_from(["svc", "--stream-prefix", "a.b"]).expect("parses");
        let err = cli.nats.topology().expect_err("dots would break subjects");
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("RUNCAST_STREAM_PREFIX"), "{err}");

        let err = listen_addr("RUNCAST_HTTP_ADDR", "localhost").expect_err("needs a port");
        assert!(err.to_string().contains("RUNCAST_HTTP_ADDR"), "{err}");
    }
}
