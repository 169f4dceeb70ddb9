//! Reading a scope after an offset: from the history for the part the stream aged out, then from
//! the stream up to its last offset at the start of the read.

use crate::{Bounds, EventLog, Logged, Scope, same_epoch};
use futures::StreamExt as _;
use futures::stream::BoxStream;
use runcast_contract::gateway::NotRecovered;
use runcast_contract::{EntityId, StreamKind};
use runcast_runtime::{Error, ErrorKind};

/// Where a read after an offset finds its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The stream as the read started: events after `bounds.last` are the live feed's.
    pub bounds: Bounds,
    /// The history fills the part the stream no longer holds.
    pub from_history: bool,
}

/// A read that failed part-way; what it yielded before is right.
#[derive(Debug)]
pub struct ReadError {
    /// The history failed (the stream part was not reached).
    pub from_history: bool,
    pub error: Error,
}

/// Decides where the events after `since` (a position of epoch `since_epoch`, when the reader
/// named one) are held. `Ok(Err(reason))` when nobody holds them: another incarnation of the
/// stream or beyond its end (`epoch_changed`), older than the history (`too_old`), or a gap only
/// the history could fill while PostgreSQL is down (`unavailable`).
pub async fn plan(
    log: &dyn EventLog,
    kind: StreamKind,
    since: u64,
    since_epoch: Option<&str>,
) -> Result<Result<Plan, NotRecovered>, Error> {
    let bounds = log.bounds(kind).await?;
    if since_epoch.is_some_and(|epoch| !same_epoch(epoch, &bounds.epoch)) || since > bounds.last {
        return Ok(Err(NotRecovered::EpochChanged));
    }
    let from_history = since.saturating_add(1) < bounds.first;
    if from_history {
        match log.history_reaches(kind, since).await {
            Ok(true) => {}
            Ok(false) => return Ok(Err(NotRecovered::TooOld)),
            Err(err) if err.kind() == ErrorKind::Unavailable => {
                tracing::warn!(cause = %err, "the history is unavailable; the offset cannot be read now");
                return Ok(Err(NotRecovered::Unavailable));
            }
            Err(err) => return Err(err),
        }
    }
    Ok(Ok(Plan { bounds, from_history }))
}

enum Step<'a> {
    History { cursor: u64 },
    StreamFrom(u64),
    Stream(BoxStream<'a, Result<Logged, Error>>),
}

/// A page of the history, or one event of the stream (without allocating for it).
enum Chunk {
    Page(std::vec::IntoIter<Logged>),
    One(Option<Result<Logged, ReadError>>),
}

impl Iterator for Chunk {
    type Item = Result<Logged, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Self::Page(page) => page.next().map(Ok),
            Self::One(one) => one.take(),
        }
    }
}

/// The events of `tenant` in `scope` after `since` up to `plan.bounds.last`, in offset order:
/// history pages first when the plan needs them, then the stream, `batch` at a time. Ends after
/// the first error.
pub fn read_after<'a>(
    log: &'a dyn EventLog,
    kind: StreamKind,
    tenant: &'a EntityId,
    scope: &'a Scope,
    since: u64,
    plan: &Plan,
    batch: usize,
) -> BoxStream<'a, Result<Logged, ReadError>> {
    let (first, last) = (plan.bounds.first, plan.bounds.last);
    let batch = batch.max(1);
    let start = if plan.from_history { Step::History { cursor: since } } else { Step::StreamFrom(since + 1) };
    futures::stream::unfold(Some(start), move |step| async move {
        let mut step = step?;
        loop {
            match step {
                Step::History { cursor } => {
                    return match log.history_page(kind, tenant, scope, cursor, first, batch).await {
                        Ok(page) => {
                            let reached = page.last().map_or(cursor, |logged| logged.offset);
                            let next = if page.len() >= batch {
                                Step::History { cursor: reached }
                            } else {
                                Step::StreamFrom(reached.max(first.saturating_sub(1)) + 1)
                            };
                            Some((Chunk::Page(page.into_iter()), Some(next)))
                        }
                        Err(error) => Some((Chunk::One(Some(Err(ReadError { from_history: true, error }))), None)),
                    };
                }
                Step::StreamFrom(start) if start > last => return None,
                Step::StreamFrom(start) => step = Step::Stream(log.stream_from(kind, scope, start, last, batch)),
                Step::Stream(mut events) => {
                    return match events.next().await {
                        None => None,
                        Some(Ok(logged)) => Some((Chunk::One(Some(Ok(logged))), Some(Step::Stream(events)))),
                        Some(Err(error)) => {
                            Some((Chunk::One(Some(Err(ReadError { from_history: false, error }))), None))
                        }
                    };
                }
            }
        }
    })
    .flat_map(futures::stream::iter)
    .boxed()
}
