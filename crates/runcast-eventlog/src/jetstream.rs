//! The real log: JetStream streams and the PostgreSQL history and read model.

use crate::{Bounds, EventLog, Logged, Scope};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use futures::StreamExt as _;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use prost::Message as _;
use runcast_contract::v1::Event;
use runcast_contract::v1::event::State;
use runcast_contract::{EntityId, StreamKind};
use runcast_runtime::nats::Nats;
use runcast_runtime::{Error, ErrorKind};
use runcast_store::PgPool;
use std::time::Duration;

/// JetStream for what the streams hold, PostgreSQL for the history and read model before that.
#[derive(Clone)]
pub struct JetStreamLog {
    nats: Nats,
    history: PgPool,
}

fn unavailable(what: &str, err: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Unavailable, format!("{what}: {err}"))
}

/// A stream's epoch: the instant it was created, RFC 3339.
pub fn epoch(info: &async_nats::jetstream::stream::Info) -> String {
    let created = info.created;
    chrono::DateTime::from_timestamp(created.unix_timestamp(), created.nanosecond())
        .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_default()
}

impl JetStreamLog {
    pub fn new(nats: Nats, history: PgPool) -> Self {
        Self { nats, history }
    }

    /// The stream with its state (one JetStream request).
    async fn stream(&self, kind: StreamKind) -> Result<Stream, Error> {
        let name = self.nats.topology.stream_name(kind);
        self.nats
            .jetstream
            .get_stream(&name)
            .await
            .map_err(|err| unavailable(&format!("cannot open stream {name}"), err))
    }

    /// A handle on the stream, without asking for its state (no request).
    async fn handle(&self, kind: StreamKind) -> Result<Stream<()>, Error> {
        let name = self.nats.topology.stream_name(kind);
        self.nats
            .jetstream
            .get_stream_no_info(&name)
            .await
            .map_err(|err| unavailable(&format!("cannot open stream {name}"), err))
    }

    /// History rows hold the event bytes, not the subject: rebuilt from the event's ids.
    fn history_subject(&self, kind: StreamKind, body: &[u8]) -> Option<String> {
        let event = Event::decode(body).ok()?;
        let tenant = EntityId::parse("tenant_id", &event.tenant_id).ok()?;
        let entity = match kind {
            StreamKind::Agents => &event.agent_id,
            _ => &event.execution_id,
        };
        let entity = EntityId::parse("entity", entity).ok()?;
        Some(self.nats.topology.entity_subject(kind, &tenant, &entity))
    }
}

/// A replay consumer being read: one batch fetched at a time.
struct Reading {
    stream: Stream<()>,
    consumer: async_nats::jetstream::consumer::Consumer<pull::Config>,
    batch: Option<async_nats::jetstream::consumer::pull::Batch>,
    received: usize,
    last: u64,
    size: usize,
    /// The last wanted message was read: the next call deletes the consumer and ends.
    done: bool,
}

impl Reading {
    /// The next message up to `last`; `None` at the end (the consumer is deleted then).
    async fn next(&mut self) -> Option<Result<Logged, Error>> {
        loop {
            let batch = match self.batch.as_mut() {
                Some(batch) => batch,
                None => match self.consumer.fetch().max_messages(self.size).messages().await {
                    Ok(batch) => {
                        self.received = 0;
                        self.batch.insert(batch)
                    }
                    Err(err) => return Some(Err(unavailable("cannot fetch from the stream", err))),
                },
            };
            let message = match batch.next().await {
                None if self.received == 0 => return self.finish().await,
                None => {
                    self.batch = None;
                    continue;
                }
                Some(Err(err)) => return Some(Err(unavailable("cannot fetch from the stream", err))),
                Some(Ok(message)) => message,
            };
            self.received += 1;
            let info = match message.info() {
                Ok(info) => info,
                Err(err) => return Some(Err(Error::new(ErrorKind::Internal, err.to_string()))),
            };
            let (offset, pending) = (info.stream_sequence, info.pending);
            self.done = pending == 0 || offset >= self.last;
            return Some(Ok(Logged { subject: message.subject.to_string(), offset, payload: message.payload.clone() }));
        }
    }

    async fn finish(&mut self) -> Option<Result<Logged, Error>> {
        // Best effort: the consumer also expires on its own after its inactivity threshold.
        let name = self.consumer.cached_info().name.clone();
        if let Err(err) = self.stream.delete_consumer(&name).await {
            tracing::debug!(cause = %err, "replay consumer not deleted; it will expire");
        }
        None
    }
}

impl EventLog for JetStreamLog {
    fn bounds(&self, kind: StreamKind) -> BoxFuture<'_, Result<Bounds, Error>> {
        Box::pin(async move {
            // Opening the stream reads its state: one JetStream request per read, which is one
            // timeout less while a leader is being elected.
            let stream = self.stream(kind).await?;
            let info = stream.cached_info();
            Ok(Bounds { first: info.state.first_sequence, last: info.state.last_sequence, epoch: epoch(info) })
        })
    }

    fn last<'a>(&'a self, kind: StreamKind, subject: &'a str) -> BoxFuture<'a, Result<Option<Logged>, Error>> {
        Box::pin(async move {
            let stream = self.handle(kind).await?;
            match stream.direct_get_last_for_subject(subject).await {
                Ok(message) => Ok(Some(Logged {
                    subject: message.subject.to_string(),
                    offset: message.sequence,
                    payload: message.payload,
                })),
                Err(err) if matches!(err.kind(), DirectGetErrorKind::NotFound) => Ok(None),
                Err(err) => Err(unavailable("cannot read the last event", err)),
            }
        })
    }

    fn archived<'a>(
        &'a self,
        kind: StreamKind,
        tenant: &'a EntityId,
        entity: &'a EntityId,
    ) -> BoxFuture<'a, Result<Option<State>, Error>> {
        Box::pin(async move {
            Ok(match kind {
                StreamKind::Agents => {
                    runcast_store::read_model::agent(&self.history, tenant, entity).await?.map(State::Agent)
                }
                _ => runcast_store::read_model::execution(&self.history, tenant, entity).await?.map(State::Execution),
            })
        })
    }

    fn history_reaches(&self, kind: StreamKind, since: u64) -> BoxFuture<'_, Result<bool, Error>> {
        Box::pin(async move { Ok(runcast_store::history::reaches(&self.history, kind, since).await?) })
    }

    fn history_page<'a>(
        &'a self,
        kind: StreamKind,
        tenant: &'a EntityId,
        scope: &'a Scope,
        after: u64,
        before: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Logged>, Error>> {
        Box::pin(async move {
            let rows = runcast_store::history::page_by_offset(
                &self.history,
                kind,
                tenant,
                scope.history_filter(),
                after,
                before,
                limit,
            )
            .await?;
            Ok(rows
                .into_iter()
                .map(|row| Logged {
                    // An undecodable row keeps an empty subject: the reader skips it as it would
                    // skip an undecodable stream message, and the read goes on past its offset.
                    subject: self.history_subject(kind, &row.body).unwrap_or_default(),
                    offset: row.offset,
                    payload: row.body.into(),
                })
                .collect())
        })
    }

    fn stream_from<'a>(
        &'a self,
        kind: StreamKind,
        scope: &'a Scope,
        start: u64,
        last: u64,
        batch: usize,
    ) -> BoxStream<'a, Result<Logged, Error>> {
        let open = async move {
            let stream = self.handle(kind).await?;
            let consumer = stream
                .create_consumer(pull::Config {
                    deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: start },
                    ack_policy: AckPolicy::None,
                    filter_subject: scope.subject.clone(),
                    inactive_threshold: Duration::from_secs(30),
                    memory_storage: true,
                    ..Default::default()
                })
                .await
                .map_err(|err| unavailable("cannot create a replay consumer", err))?;
            let done = consumer.cached_info().num_pending == 0;
            Ok::<_, Error>(Reading { stream, consumer, batch: None, received: 0, last, size: batch.max(1), done })
        };
        futures::stream::once(open)
            .flat_map(|opened| {
                futures::stream::unfold(Some(opened), |state| async move {
                    match state? {
                        Err(err) => Some((Err(err), None)),
                        Ok(mut reading) if reading.done => reading.finish().await.map(|item| (item, None)),
                        Ok(mut reading) => {
                            let item = reading.next().await?;
                            let failed = item.is_err();
                            Some((item, (!failed).then_some(Ok(reading))))
                        }
                    }
                })
            })
            .boxed()
    }
}
