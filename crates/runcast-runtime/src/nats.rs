//! The NATS side every service shares: a client that connects (and reconnects) in the background,
//! so a service started before NATS keeps trying instead of exiting, and idempotent provisioning
//! of the EXECUTIONS, LOGS and AGENTS streams.

use crate::config::{NatsArgs, StreamLimits};
use crate::error::{Error, ErrorKind};
use crate::ops::{Readiness, ReadyFlag};
use async_nats::jetstream::{self, stream};
use runcast_contract::{StreamKind, Topology};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long one JetStream API request may take before it fails with `Unavailable`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A connected (or connecting) NATS client and its JetStream context.
#[derive(Clone, Debug)]
pub struct Nats {
    pub client: async_nats::Client,
    pub jetstream: jetstream::Context,
    pub topology: Topology,
}

impl Nats {
    /// Starts connecting. Returns at once, even while the server is unreachable; the `nats`
    /// readiness check passes while the connection is up.
    pub async fn connect(args: &NatsArgs, service: &'static str, readiness: &Readiness) -> Result<Self, Error> {
        let topology = args.topology()?;
        let client = async_nats::ConnectOptions::new()
            .name(service)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .request_timeout(Some(REQUEST_TIMEOUT))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("connected to NATS"),
                    async_nats::Event::Disconnected => {
                        tracing::warn!("disconnected from NATS; reconnecting")
                    }
                    other => tracing::debug!(event = %other, "nats client event"),
                }
            })
            .connect(args.nats_url.as_str())
            .await
            .map_err(|err| {
                Error::with_source(ErrorKind::Config, format!("NATS_URL={:?} is not usable", args.nats_url), err)
            })?;
        let watched = client.clone();
        readiness.add_check("nats", move || watched.connection_state() == async_nats::connection::State::Connected);
        let mut jetstream = jetstream::new(client.clone());
        jetstream.set_timeout(REQUEST_TIMEOUT);
        Ok(Self { client, jetstream, topology })
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
            let mut delay = Duration::from_millis(100);
            loop {
                match provision_streams(&nats.jetstream, &nats.topology, &limits).await {
                    Ok(streams) => {
                        tracing::info!(streams = ?streams, "streams provisioned");
                        provisioned.set(true);
                        return;
                    }
                    Err(err) => {
                        tracing::warn!(cause = %err, retry_in = ?delay, "cannot provision streams yet")
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        })
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
