//! One durable pull consumer per stream, shared by every replica (same durable name).
//!
//! Each round fetches at most `batch_size` messages, waiting at most `batch_wait` for them, writes
//! them in one transaction ([`store::write_batch`]) and acks them only after the commit. So a
//! crash anywhere before the commit loses nothing (the messages are redelivered) and a crash
//! after it duplicates nothing (the writes are idempotent). While a batch is written, the writer
//! fetches its next one (one batch ahead, no more).
//!
//! - PostgreSQL unreachable: the batch is held, un-acked, and retried with capped exponential
//!   backoff; `+WPI` (in progress) acks keep JetStream from redelivering it, and the batch fetched
//!   ahead, meanwhile.
//! - NATS unreachable: the fetch fails, the loop backs off and fetches again (the client
//!   reconnects by itself); the consumer is looked up again in case the server lost it.
//! - A message that does not decode or breaks the contract goes to `dead_letters` in the same
//!   transaction and is terminated (`AckKind::Term`). A batch PostgreSQL rejects is written again
//!   one message at a time, so only the message at fault ends in the dead letters.

use crate::decode::{self, Decoded};
use crate::error::{Error, ErrorKind};
use crate::rows::Fold;
use crate::store::{self, DeadLetter};
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use runcast_contract::StreamKind;
use runcast_runtime::backoff::Backoff;
use runcast_runtime::nats::Nats;
use runcast_runtime::ops::ReadyFlag;
use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Extra time a fetch gets beyond its `expires` before it counts as failed.
const FETCH_SLACK: Duration = Duration::from_secs(5);

/// How the consumers fetch and retry.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Durable consumer name, the same on every replica.
    pub name: String,
    pub batch_size: usize,
    pub batch_wait: Duration,
    /// Most payload bytes per batch (raised to the server's largest message if smaller, or a
    /// bigger message could never be fetched).
    pub batch_max_bytes: usize,
    /// Longest pause between two attempts to write a batch.
    pub retry_max: Duration,
    /// How long JetStream waits for an ack before it redelivers.
    pub ack_wait: Duration,
}

/// The consumer's ack floor, shared between the consumer loop (which records it with each batch)
/// and the lag monitor (which reads it from JetStream).
#[derive(Debug, Clone, Default)]
pub(crate) struct AckFloor(Arc<AtomicU64>);

impl AckFloor {
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn raise(&self, value: u64) {
        self.0.fetch_max(value, Ordering::Relaxed);
    }
}

/// The durable consumer's configuration. Explicit acks (several replicas share it, so no
/// ack-all); unlimited deliveries, so nothing is dropped while PostgreSQL is down.
pub(crate) fn consumer_config(settings: &ConsumerSettings, kind: StreamKind) -> pull::Config {
    pull::Config {
        durable_name: Some(settings.name.clone()),
        description: Some(format!("event-persister: {} into PostgreSQL", kind.base_name())),
        ack_policy: AckPolicy::Explicit,
        ack_wait: settings.ack_wait,
        max_deliver: -1,
        // Room for a batch in flight on each of several replicas.
        max_ack_pending: i64::try_from(settings.batch_size.saturating_mul(16)).unwrap_or(i64::MAX),
        max_batch: i64::try_from(settings.batch_size).unwrap_or(i64::MAX),
        ..Default::default()
    }
}

/// Gets (or creates) the durable consumer of `kind`.
pub(crate) async fn durable_consumer(
    nats: &Nats,
    settings: &ConsumerSettings,
    kind: StreamKind,
) -> Result<PullConsumer, Error> {
    let stream_name = nats.topology.stream_name(kind);
    let unavailable = |what: &str, err: &dyn std::fmt::Display| {
        Error::new(ErrorKind::Unavailable, format!("cannot {what} {stream_name}: {err}"))
    };
    let stream = nats.jetstream.get_stream(&stream_name).await.map_err(|err| unavailable("look up stream", &err))?;
    // Create-or-update, so a changed batch size or ack wait reaches an existing consumer; if the
    // server refuses the update, keep consuming with the consumer as it is.
    match stream.create_consumer(consumer_config(settings, kind)).await {
        Ok(consumer) => Ok(consumer),
        Err(err) => {
            tracing::warn!(cause = %err, "cannot create or update the durable consumer; using it as it is");
            stream.get_consumer(&settings.name).await.map_err(|err| unavailable("get the durable consumer on", &err))
        }
    }
}

/// One message of a batch: decoded, or why it is poison.
struct Item {
    message: jetstream::Message,
    offset: u64,
    decoded: Result<Decoded, String>,
}

pub(crate) struct StreamConsumer {
    kind: StreamKind,
    nats: Nats,
    pool: PgPool,
    settings: ConsumerSettings,
    floor: AckFloor,
    recorded_floor: u64,
}

impl StreamConsumer {
    pub(crate) fn new(kind: StreamKind, nats: Nats, pool: PgPool, settings: ConsumerSettings, floor: AckFloor) -> Self {
        Self { kind, nats, pool, settings, floor, recorded_floor: 0 }
    }

    /// Consumes until `shutdown`. Starts once the streams exist and the schema is up to date.
    pub(crate) async fn run(mut self, streams_ready: ReadyFlag, schema_ready: ReadyFlag, shutdown: CancellationToken) {
        let span = tracing::info_span!("consumer", stream = self.kind.base_name());
        async move {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = async { streams_ready.wait().await; schema_ready.wait().await } => {}
            }
            let mut backoff = retry_backoff(self.settings.retry_max);
            'connect: loop {
                let consumer = match durable_consumer(&self.nats, &self.settings, self.kind).await {
                    Ok(consumer) => consumer,
                    Err(err) => {
                        tracing::warn!(cause = %err, "cannot get the durable consumer yet");
                        if !runcast_runtime::backoff::wait(&mut backoff, &shutdown).await {
                            return;
                        }
                        continue;
                    }
                };
                tracing::info!(consumer = %self.settings.name, "consuming");
                backoff.reset();
                let fetcher = Fetcher { kind: self.kind, nats: self.nats.clone(), settings: self.settings.clone() };
                // The next batch, fetched while the last one was written.
                let mut fetched_ahead: Option<Result<Vec<Item>, Error>> = None;
                loop {
                    // A fetch is not cancelled by shutdown: it ends within `batch_wait`, and what
                    // it brought is written and acked before the loop stops (no message waits
                    // out `ack_wait` for redelivery after a graceful stop).
                    let fetched = match fetched_ahead.take() {
                        Some(fetched) => fetched,
                        None if shutdown.is_cancelled() => return,
                        None => fetcher.fetch(&consumer).await,
                    };
                    let items = match fetched {
                        Ok(items) if items.is_empty() => continue,
                        Ok(items) => items,
                        Err(err) => {
                            tracing::warn!(cause = %err, "fetch failed; fetching again");
                            if !runcast_runtime::backoff::wait(&mut backoff, &shutdown).await {
                                return;
                            }
                            continue 'connect;
                        }
                    };
                    backoff.reset();
                    // The next batch is fetched while this one is written, so neither PostgreSQL
                    // nor NATS waits for the other between two batches. (Order per execution is
                    // kept: this writer writes the next batch only after this one.)
                    let fetch_next =
                        async { if shutdown.is_cancelled() { None } else { Some(fetcher.fetch(&consumer).await) } };
                    let keep_alive = self.settings.ack_wait / 3;
                    let (persisted, next) =
                        write_while_fetching(self.persist(items, &shutdown), fetch_next, keep_alive).await;
                    if persisted.is_err() {
                        // Shutdown while the batch was retried (it was nak'ed): hand the next one
                        // back too.
                        tell_each(next.and_then(Result::ok).iter().flatten(), AckKind::Nak(None)).await;
                        return;
                    }
                    fetched_ahead = next;
                }
            }
        }
        .instrument(span)
        .await
    }
}

/// Sends `kind` (in progress, or handed back) for each message. Best effort: a message whose
/// reply is lost is redelivered after `ack_wait`, never lost.
async fn tell_each(items: impl IntoIterator<Item = &Item>, kind: AckKind) {
    for item in items {
        let _ = item.message.ack_with(kind).await;
    }
}

/// Runs the write of a batch and the fetch of the next one side by side. While the write lasts
/// (PostgreSQL slow or down: it is retried), the batch fetched ahead gets an in-progress ack every
/// `keep_alive`, as the batch being written does, so JetStream does not hand it to another writer.
async fn write_while_fetching<W, F>(
    write: W,
    fetch: F,
    keep_alive: Duration,
) -> (Result<(), Cancelled>, Option<Result<Vec<Item>, Error>>)
where
    W: std::future::Future<Output = Result<(), Cancelled>>,
    F: std::future::Future<Output = Option<Result<Vec<Item>, Error>>>,
{
    tokio::pin!(write, fetch);
    let mut fetched = None;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + keep_alive, keep_alive);
    let written = loop {
        tokio::select! {
            written = &mut write => break written,
            next = &mut fetch, if fetched.is_none() => fetched = Some(next),
            _ = ticks.tick() => {
                tell_each(fetched.iter().flatten().flatten().flatten(), AckKind::Progress).await;
            }
        }
    };
    let next = match fetched {
        Some(next) => next,
        None => fetch.await,
    };
    (written, next)
}

/// What a writer needs to fetch batches, apart from what it needs to write them: it fetches the
/// next batch while it writes the current one.
struct Fetcher {
    kind: StreamKind,
    nats: Nats,
    settings: ConsumerSettings,
}

impl Fetcher {
    async fn fetch(&self, consumer: &PullConsumer) -> Result<Vec<Item>, Error> {
        // The client ends a batch a little after `expires` even when the server goes silent;
        // this bound holds even if it did not.
        let limit = self.settings.batch_wait + FETCH_SLACK;
        tokio::time::timeout(limit, self.fetch_batch(consumer)).await.unwrap_or_else(|_| {
            Err(Error::new(ErrorKind::Unavailable, format!("no answer to a fetch within {limit:?}")))
        })
    }

    async fn fetch_batch(&self, consumer: &PullConsumer) -> Result<Vec<Item>, Error> {
        let mut messages = consumer
            .batch()
            .max_messages(self.settings.batch_size)
            .max_bytes(self.settings.batch_max_bytes.max(self.nats.client.server_info().max_payload))
            .expires(self.settings.batch_wait)
            .messages()
            .await
            .map_err(|err| Error::with_source(ErrorKind::Unavailable, "cannot request a batch", err))?;
        let mut items = Vec::with_capacity(self.settings.batch_size);
        while let Some(message) = messages.next().await {
            match message {
                Ok(message) => {
                    let (offset, decoded) = match message.info() {
                        Ok(info) => (
                            info.stream_sequence,
                            decode::decode(self.kind, info.stream_sequence, &message.payload)
                                .and_then(|decoded| decode::check_subject(&decoded, &message.subject).map(|()| decoded))
                                .map_err(|v| v.0),
                        ),
                        // Cannot happen for a pull consumer's message; never store offset 0.
                        Err(err) => (0, Err(format!("no JetStream metadata: {err}"))),
                    };
                    items.push(Item { message, offset, decoded });
                }
                // What arrived before the error is still worth writing.
                Err(err) if !items.is_empty() => {
                    tracing::debug!(cause = %err, "batch ended early");
                    break;
                }
                Err(err) => {
                    return Err(Error::with_source(ErrorKind::Unavailable, "batch failed", err));
                }
            }
        }
        Ok(items)
    }
}

impl StreamConsumer {
    /// Writes the batch (retrying until it is written or `shutdown`), then acks it.
    #[tracing::instrument(skip_all, fields(messages = items.len(), first_offset = items.first().map(|i| i.offset)))]
    async fn persist(&mut self, mut items: Vec<Item>, shutdown: &CancellationToken) -> Result<(), Cancelled> {
        let started = Instant::now();
        // A batch serves many traces: link it to each command that caused one of its events.
        let span = tracing::Span::current();
        for item in &items {
            runcast_runtime::telemetry::trace_context::link_nats(&span, item.message.headers.as_ref());
        }
        if let Err(err) = self.write_retrying(&items, shutdown).await? {
            tracing::warn!(cause = %err, "PostgreSQL rejected the batch; writing its messages one by one");
            for item in &mut items {
                if let Err(err) = self.write_retrying(std::slice::from_ref(item), shutdown).await? {
                    item.decoded = Err(format!("PostgreSQL rejected the event: {err}"));
                    if let Err(err) = self.write_retrying(std::slice::from_ref(item), shutdown).await? {
                        // Cannot even be kept as a dead letter: terminate it rather than block
                        // the stream forever.
                        tracing::error!(cause = %err, offset = item.offset, "cannot store a dead letter");
                    }
                }
            }
        }
        let stream = self.kind.base_name();
        let (mut written, mut dead) = (0u64, 0u64);
        for item in &items {
            let acked = if item.decoded.is_ok() {
                written += 1;
                item.message.ack().await
            } else {
                dead += 1;
                tracing::warn!(offset = item.offset, subject = %item.message.subject, cause = item.decoded.as_ref().err().map(String::as_str).unwrap_or_default(), "message moved to dead letters");
                item.message.ack_with(AckKind::Term).await
            };
            if let Err(err) = acked {
                // Harmless: the message comes back and is written again as a no-op.
                tracing::debug!(cause = %err, offset = item.offset, "ack failed");
            }
        }
        metrics::counter!("runcast_persister_events_written_total", "stream" => stream).increment(written);
        if dead > 0 {
            metrics::counter!("runcast_persister_dead_letters_total", "stream" => stream).increment(dead);
        }
        metrics::histogram!("runcast_persister_batch_duration_seconds", "stream" => stream)
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// One transaction for `items`, retried with backoff while PostgreSQL is unavailable.
    /// The inner error is a rejection of the data itself.
    async fn write_retrying(
        &mut self,
        items: &[Item],
        shutdown: &CancellationToken,
    ) -> Result<Result<(), Error>, Cancelled> {
        let stream = self.kind.base_name();
        let mut fold = Fold::default();
        let mut dead_letters = Vec::new();
        for item in items {
            match &item.decoded {
                Ok(decoded) => fold.add(decoded, true),
                Err(reason) => dead_letters.push(dead_letter(stream, item, reason)),
            }
        }
        let mut backoff = retry_backoff(self.settings.retry_max);
        loop {
            let floor = self.floor.get();
            let applied = (floor > self.recorded_floor).then_some((stream, floor));
            // A write that hangs (a half-open connection) must not hold the batch past its ack
            // wait: give up on it, roll back (by dropping it) and try again.
            let limit = self.settings.ack_wait / 2;
            let written = tokio::time::timeout(limit, store::write_batch(&self.pool, &fold, &dead_letters, applied))
                .await
                .unwrap_or_else(|_| {
                    Err(Error::new(ErrorKind::Unavailable, format!("the write took longer than {limit:?}")))
                });
            match written {
                Ok(()) => {
                    self.recorded_floor = self.recorded_floor.max(floor);
                    return Ok(Ok(()));
                }
                Err(err) if err.kind() == ErrorKind::Rejected => return Ok(Err(err)),
                Err(err) => {
                    metrics::counter!("runcast_persister_write_retries_total", "stream" => stream).increment(1);
                    tracing::warn!(cause = %err, retry_in = ?backoff.peek(), "cannot write the batch; holding it");
                    // Keep JetStream from redelivering what we still hold.
                    tell_each(items, AckKind::Progress).await;
                    if !runcast_runtime::backoff::wait(&mut backoff, shutdown).await {
                        // Hand the batch back at once rather than after `ack_wait`.
                        tell_each(items, AckKind::Nak(None)).await;
                        return Err(Cancelled);
                    }
                }
            }
        }
    }
}

/// Shutdown came while a batch was still un-acked.
#[derive(Debug)]
pub(crate) struct Cancelled;

fn dead_letter(stream: &'static str, item: &Item, reason: &str) -> DeadLetter {
    let headers = item
        .message
        .headers
        .as_ref()
        .map(|headers| {
            headers
                .iter()
                .map(|(name, values)| {
                    let values: Vec<&str> = values.iter().map(|v| v.as_str()).collect();
                    (name.to_string(), serde_json::json!(values))
                })
                .collect::<serde_json::Map<_, _>>()
        })
        .unwrap_or_default();
    DeadLetter {
        stream,
        subject: item.message.subject.to_string(),
        stream_offset: i64::try_from(item.offset).unwrap_or(i64::MAX),
        raw: item.message.payload.to_vec(),
        headers: serde_json::Value::Object(headers),
        error: reason.to_owned(),
    }
}

/// The persister's retries: from 100 ms (never above `max`), doubling up to `max`.
pub(crate) fn retry_backoff(max: Duration) -> Backoff {
    Backoff::new(Duration::from_millis(100), max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_up_to_its_cap_and_stops_on_shutdown() {
        let mut backoff = retry_backoff(Duration::from_millis(500));
        let shutdown = CancellationToken::new();
        let mut delays = Vec::new();
        for _ in 0..5 {
            delays.push(backoff.peek());
            assert!(runcast_runtime::backoff::wait(&mut backoff, &shutdown).await);
        }
        assert_eq!(delays, [100, 200, 400, 500, 500].map(Duration::from_millis));
        backoff.reset();
        assert_eq!(backoff.peek(), Duration::from_millis(100));
        shutdown.cancel();
        assert!(!runcast_runtime::backoff::wait(&mut backoff, &shutdown).await);
    }

    #[test]
    fn the_consumer_never_drops_and_never_acks_for_others() {
        let settings = ConsumerSettings {
            name: "event-persister".into(),
            batch_size: 500,
            batch_wait: Duration::from_millis(100),
            batch_max_bytes: 16 << 20,
            retry_max: Duration::from_secs(5),
            ack_wait: Duration::from_secs(30),
        };
        let config = consumer_config(&settings, StreamKind::Logs);
        assert_eq!(config.ack_policy, AckPolicy::Explicit);
        assert_eq!(config.max_deliver, -1);
        assert_eq!(config.durable_name.as_deref(), Some("event-persister"));
        assert!(config.max_ack_pending >= 2 * 500);
    }
}
