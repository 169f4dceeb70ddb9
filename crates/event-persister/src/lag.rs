//! Lag and the low watermark, read from the durable consumer every `interval`.
//!
//! The consumer's **ack floor** is the stream sequence at or below which every message has been
//! acked (or terminated). The persister acks only after the commit that stored a message, so every
//! event at or below the ack floor is in PostgreSQL, whichever replica wrote it: it is exactly the
//! low watermark DESIGN §3 asks `as_of_offset` to be. This monitor records it in
//! `applied_offsets` (never moving back, `runcast_store::write::advance_applied_offset`), shares it with the consumer loop (which records it with
//! each batch), and exports `runcast_persister_lag` = stream head − ack floor.

use crate::consumer::AckFloor;
use runcast_contract::StreamKind;
use runcast_runtime::nats::Nats;
use runcast_runtime::ops::ReadyFlag;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The latest lag of each stream, for `/readyz` details.
#[derive(Debug, Clone, Default)]
pub(crate) struct LagBoard(Arc<Mutex<BTreeMap<&'static str, u64>>>);

impl LagBoard {
    pub(crate) fn set(&self, stream: &'static str, lag: u64) {
        self.lock().insert(stream, lag);
    }

    pub(crate) fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, u64>> {
        // An insert cannot leave the map half-written: a poisoned lock is still consistent.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Everything one stream's monitor needs.
pub(crate) struct LagMonitor {
    pub kind: StreamKind,
    pub nats: Nats,
    pub pool: PgPool,
    pub consumer_name: String,
    pub floor: AckFloor,
    pub board: LagBoard,
    pub interval: Duration,
}

impl LagMonitor {
    /// Reads the consumer state every `interval` until `shutdown`.
    pub(crate) async fn run(self, streams_ready: ReadyFlag, shutdown: CancellationToken) {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = streams_ready.wait() => {}
        }
        let stream = self.kind.base_name();
        let stream_name = self.nats.topology.stream_name(self.kind);
        let mut recorded = 0;
        loop {
            match self.observe(&stream_name).await {
                Ok((floor, lag)) => {
                    self.floor.raise(floor);
                    self.board.set(stream, lag);
                    metrics::gauge!("runcast_persister_lag", "stream" => stream).set(lag as f64);
                    metrics::gauge!("runcast_persister_applied_offset", "stream" => stream).set(floor as f64);
                    if floor > recorded {
                        match runcast_store::write::advance_applied_offset(&self.pool, stream, floor).await {
                            Ok(()) => recorded = floor,
                            Err(err) => {
                                tracing::debug!(stream, cause = %err, "cannot record the applied offset yet")
                            }
                        }
                    }
                }
                Err(err) => tracing::debug!(stream, cause = %err, "cannot read the consumer state"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    /// (ack floor, lag) of the durable consumer.
    async fn observe(&self, stream_name: &str) -> Result<(u64, u64), Box<dyn std::error::Error + Send + Sync>> {
        let mut stream = self.nats.jetstream.get_stream(stream_name).await?;
        let head = stream.info().await?.state.last_sequence;
        let info = stream.consumer_info(&self.consumer_name).await?;
        let floor = info.ack_floor.stream_sequence;
        Ok((floor, head.saturating_sub(floor)))
    }
}
