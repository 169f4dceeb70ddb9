//! The NATS side every service shares: a client that connects (and reconnects) in the background,
//! so a service started before NATS keeps trying instead of exiting, and idempotent provisioning
//! of the EXECUTIONS, LOGS and AGENTS streams.

pub mod feed;

use crate::backoff::Backoff;
use crate::config::{NatsArgs, StreamLimits};
use crate::error::{Error, ErrorKind};
use crate::ops::{Readiness, ReadyFlag};
use async_nats::jetstream::{self, stream};
use runcast_contract::{StreamKind, Topology};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long one JetStream API request may take before it fails with `Unavailable`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest wait between two reconnection attempts. async-nats' default grows to 4 s, so a
/// service could notice a restarted server seconds after everyone else; events acked after NATS
/// is back must reach clients within 2 s (DESIGN §1, §4).
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// The connection as the client's events report it. `connects` counts every successful
/// (re)connection, so a change of it means "the server may have lost whatever this client had
/// there" (ephemeral consumers, subscriptions' server-side state): watch [`Nats::link`] to act on
/// a reconnect at once instead of waiting for a missed heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Link {
    pub connected: bool,
    pub connects: u64,
}

/// How often a NATS that stays unreachable is reported again.
const FAILURE_REPORT_INTERVAL: Duration = Duration::from_secs(30);

/// Connection failures, reported as people need them: the first at WARN with the URL and the
/// cause, then one line per [`FAILURE_REPORT_INTERVAL`] with the count since — not one line per
/// reconnect attempt (async-nats' own event log is turned down to WARN in telemetry).
struct FailureLog {
    url: String,
    state: std::sync::Mutex<FailureState>,
}

#[derive(Default)]
struct FailureState {
    last_report: Option<std::time::Instant>,
    unreported: u64,
}

impl FailureState {
    /// Counts a failure; `Some(n)` when it is time to report (n failures since the last report).
    fn failed(&mut self, now: std::time::Instant, interval: Duration) -> Option<u64> {
        self.unreported += 1;
        let due = self.last_report.is_none_or(|last| now.duration_since(last) >= interval);
        due.then(|| {
            self.last_report = Some(now);
            std::mem::take(&mut self.unreported)
        })
    }
}

impl FailureLog {
    fn new(url: String) -> Self {
        Self { url, state: std::sync::Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FailureState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn record(&self, cause: &dyn std::fmt::Display) {
        let report = self.lock().failed(std::time::Instant::now(), FAILURE_REPORT_INTERVAL);
        if let Some(failures) = report {
            tracing::warn!(url = %self.url, %cause, failures, "cannot reach NATS; retrying");
        }
    }

    fn reset(&self) {
        *self.lock() = FailureState::default();
    }
}

/// A connected (or connecting) NATS client and its JetStream context.
#[derive(Clone, Debug)]
pub struct Nats {
    pub client: async_nats::Client,
    pub jetstream: jetstream::Context,
    pub topology: Topology,
    /// Connection state and reconnect count, updated from the client's events.
    pub link: watch::Receiver<Link>,
}

impl Nats {
    /// Starts connecting. Returns at once, even while the server is unreachable; the `nats`
    /// readiness check passes while the connection is up.
    pub async fn connect(args: &NatsArgs, service: &'static str, readiness: &Readiness) -> Result<Self, Error> {
        let topology = args.topology()?;
        let (link_tx, link) = watch::channel(Link::default());
        let link_tx = Arc::new(link_tx);
        let failures = Arc::new(FailureLog::new(args.nats_url.clone()));
        let client = async_nats::ConnectOptions::new()
            .name(service)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .request_timeout(Some(REQUEST_TIMEOUT))
            .reconnect_delay_callback(reconnect_delay)
            .event_callback(move |event| {
                let link = link_tx.clone();
                let failures = failures.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            failures.reset();
                            tracing::info!(url = %failures.url, "connected to NATS");
                            link.send_modify(|link| {
                                link.connected = true;
                                link.connects += 1;
                                if link.connects > 1 {
                                    metrics::counter!("runcast_nats_reconnects_total").increment(1);
                                }
                            });
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!(url = %failures.url, "disconnected from NATS; reconnecting");
                            link.send_modify(|link| link.connected = false);
                        }
                        async_nats::Event::ClientError(err) => failures.record(&err),
                        other => tracing::debug!(event = %other, "nats client event"),
                    }
                }
            })
            .connect(server_urls(&args.nats_url).as_slice())
            .await
            .map_err(|err| {
                Error::with_source(ErrorKind::Config, format!("NATS_URL={:?} is not usable", args.nats_url), err)
            })?;
        let watched = client.clone();
        readiness.add_check("nats", move || watched.connection_state() == async_nats::connection::State::Connected);
        let mut jetstream = jetstream::new(client.clone());
        jetstream.set_timeout(REQUEST_TIMEOUT);
        Ok(Self { client, jetstream, topology, link })
    }

    /// Provisions the streams, retrying with capped backoff until it works or `shutdown` fires.
    /// Raises `provisioned` once done; services wait on it before they consume or publish.
    pub fn spawn_provisioning(
        &self,
        limits: StreamLimits,
        provisioned: ReadyFlag,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let nats = self.clone();
        tokio::spawn(async move {
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
            loop {
                // Each request may wait its timeout while NATS is away: a stop must not.
                let attempt = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    attempt = provision_streams(&nats.jetstream, &nats.topology, &limits) => attempt,
                };
                match attempt {
                    Ok(streams) => {
                        tracing::info!(streams = ?streams, "streams provisioned");
                        provisioned.set(true);
                        return;
                    }
                    Err(err) => {
                        tracing::warn!(cause = %err, retry_in = ?backoff.peek(), "cannot provision streams yet")
                    }
                }
                if !crate::backoff::wait(&mut backoff, &shutdown).await {
                    return;
                }
            }
        })
    }
}

/// The servers of `NATS_URL`: comma separated, blanks around each ignored. async-nats parses a
/// single string as one URL, so a cluster's list must be split here.
fn server_urls(nats_url: &str) -> Vec<&str> {
    nats_url.split(',').map(str::trim).filter(|url| !url.is_empty()).collect()
}

/// Immediately after the first failure, then doubling from 10 ms up to [`MAX_RECONNECT_DELAY`].
fn reconnect_delay(attempts: usize) -> Duration {
    match attempts {
        0 | 1 => Duration::ZERO,
        n => Duration::from_millis(10u64.saturating_mul(1 << (n - 2).min(16))).min(MAX_RECONNECT_DELAY),
    }
}

/// The configuration of one stream: its limits, deduplication window, direct get for reads of
/// the last event of a subject.
pub fn stream_config(topology: &Topology, kind: StreamKind, limits: &StreamLimits) -> stream::Config {
    stream::Config {
        name: topology.stream_name(kind),
        subjects: vec![topology.stream_subjects(kind)],
        description: Some(format!("Runcast {} events", kind.subject_root())),
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        storage: stream::StorageType::File,
        num_replicas: usize::from(limits.replicas),
        max_age: limits.max_age,
        max_bytes: limits.max_bytes,
        max_messages: limits.max_messages,
        duplicate_window: limits.duplicate_window,
        allow_direct: true,
        ..Default::default()
    }
}

/// Creates the three streams, or updates them to the configured limits. Safe to run any number of
/// times from any number of replicas.
pub async fn provision_streams(
    jetstream: &jetstream::Context,
    topology: &Topology,
    limits: &StreamLimits,
) -> Result<Vec<String>, Error> {
    let mut names = Vec::with_capacity(StreamKind::ALL.len());
    for kind in StreamKind::ALL {
        let config = stream_config(topology, kind, limits);
        let name = config.name.clone();
        jetstream.create_or_update_stream(config).await.map_err(|err| {
            let kind = match err.kind() {
                jetstream::context::CreateStreamErrorKind::TimedOut => ErrorKind::Unavailable,
                jetstream::context::CreateStreamErrorKind::JetStreamUnavailable => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            };
            Error::with_source(kind, format!("cannot create or update stream {name}"), err)
        })?;
        names.push(name);
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_nats_is_reported_once_then_once_per_interval() {
        let start = std::time::Instant::now();
        let interval = Duration::from_secs(30);
        let mut state = FailureState::default();
        assert_eq!(state.failed(start, interval), Some(1), "the first failure is reported at once");
        for n in 1..=12 {
            assert_eq!(state.failed(start + Duration::from_millis(500 * n), interval), None, "attempt {n} is quiet");
        }
        assert_eq!(state.failed(start + interval, interval), Some(13), "then one line with the count");
        assert_eq!(state.failed(start + interval + Duration::from_secs(1), interval), None);
    }

    #[test]
    fn nats_url_lists_every_server_of_a_cluster() {
        assert_eq!(server_urls("nats://127.0.0.1:4222"), ["nats://127.0.0.1:4222"]);
        assert_eq!(server_urls("nats://a:1, nats://b:2,nats://c:3,"), ["nats://a:1", "nats://b:2", "nats://c:3"]);
        use async_nats::ToServerAddrs as _;
        let parsed = server_urls("nats://a:1,nats://b:2").as_slice().to_server_addrs().expect("every URL parses");
        assert_eq!(parsed.count(), 2);
    }

    #[test]
    fn reconnect_attempts_back_off_but_never_beyond_the_cap() {
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), Duration::from_millis(10));
        assert_eq!(reconnect_delay(3), Duration::from_millis(20));
        assert_eq!(reconnect_delay(60), MAX_RECONNECT_DELAY);
        assert_eq!(reconnect_delay(usize::MAX), MAX_RECONNECT_DELAY);
    }
}
