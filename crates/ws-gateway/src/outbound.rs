//! The bounded outbound queue of one connection, shared by the hub (which pushes events from the
//! upstream task), the session (control replies) and the write-only transport (WebSocket or SSE),
//! which pops everything queued at each wake-up and writes it with one flush.
//!
//! The queue is bounded twice: by events (`RUNCAST_WS_QUEUE_CAPACITY`) and by their bytes
//! (`RUNCAST_WS_QUEUE_BYTES`); whichever is reached first counts as full. One event larger than
//! the byte bound is still queued when nothing else is, so a client can always make progress.
//! Control replies have a budget of their own (count and bytes), so `resync` always fits.
//!
//! Delivery classes (DESIGN §4): `execution.progress` and `agent.heartbeat` frames carry a
//! coalescing key; once the client is behind (its queue at least half full, by count or bytes), a
//! newer one replaces an undelivered older one of the same entity and subscription (newest wins,
//! moved to the back so offsets stay increasing). A client that keeps up — a resuming one
//! included — gets every progress event. Any other event that finds the queue full overflows it:
//! queued events are dropped, the queue refuses further events, and the session is woken to send
//! `resync` with the offset each subscription got to.
//!
//! Coalescing is O(1) per event, so an overloaded gateway does not get slower per event: every
//! queued frame has a sequence number (its position since the queue began), the pending
//! coalescable frame of each entity is found by key, and a replaced frame leaves a hole in its
//! slot instead of being removed from the middle of the queue. Holes are skipped when popped and
//! squeezed out once they outnumber the frames (amortised O(1)).

use crate::wake_flag::WakeFlag;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Control replies that may queue beyond the event capacity, so a full queue can still carry
/// `resync`, `error` and `reconnect`; a client that lets even these pile up is closed.
pub const CONTROL_HEADROOM: usize = 256;

/// The smallest byte budget of queued control replies (snapshots may be 256 KiB each).
pub const CONTROL_BYTES_MIN: usize = 1024 * 1024;

/// Resolved once: a registry lookup per coalesced event would cost more than the coalescing.
fn coalesced_counter() -> &'static metrics::Counter {
    static COUNTER: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
    COUNTER.get_or_init(|| metrics::counter!("runcast_ws_coalesced_total"))
}

#[derive(Debug, Clone)]
pub struct EventMeta {
    /// The subscription that receives it.
    pub subscription: u64,
    pub offset: u64,
    pub event_type: &'static str,
    /// Present for progress and heartbeat events: the entity they describe.
    pub coalesce: Option<Arc<str>>,
    /// When the upstream received it, for the event-to-client latency histogram.
    pub received: Option<Instant>,
}

#[derive(Debug, Clone)]
pub enum FrameKind {
    Event(EventMeta),
    Control {
        kind: &'static str,
    },
    /// Ends the connection: a WebSocket close frame with this code, or the end of an SSE stream.
    Close {
        code: u16,
        reason: &'static str,
    },
    /// WebSocket only: the keepalive ping the writer sends.
    Ping,
    /// WebSocket only: the answer to a client's ping, its payload echoed.
    Pong,
}

/// One message, already encoded for the connection's protocol. The bytes are shared with every
/// other recipient of the same event on the same channel.
#[derive(Debug, Clone)]
pub struct Frame {
    pub payload: Payload,
    pub kind: FrameKind,
}

/// A frame's bytes as its transport sends them, shared with every other recipient of the same
/// message. JSON is text, UTF-8 by construction and kept as such, so a WebSocket text message
/// needs no UTF-8 check per delivery (that check was ~6 % of the gateway's CPU at a million
/// deliveries a second); protobuf is binary. Its `permessage-deflate` form is made once, by the
/// first connection that negotiated compression and sends it, and shared by the others.
#[derive(Debug, Clone)]
pub struct Payload(Arc<SharedPayload>);

#[derive(Debug)]
struct SharedPayload {
    bytes: Bytes,
    text: bool,
    compressed: OnceLock<Option<Compressed>>,
}

/// A message compressed once for every connection that sends it compressed.
#[derive(Debug)]
pub struct Compressed {
    /// Deflated on its own and sync-flushed, its tail stripped (RFC 7692's form).
    pub deflated: Bytes,
    /// The CRC-32 of the plain message, which a gzip body's trailer sums (see `sse_gzip`): taken
    /// here once rather than by every connection.
    pub plain_crc: flate2::Crc,
}

impl Payload {
    fn new(bytes: Bytes, text: bool) -> Self {
        Self(Arc::new(SharedPayload { bytes, text, compressed: OnceLock::new() }))
    }

    pub fn text(text: Utf8Bytes) -> Self {
        Self::new(text.into(), true)
    }

    pub fn binary(bytes: Bytes) -> Self {
        Self::new(bytes, false)
    }

    /// No bytes (a close frame's, a ping's).
    pub fn empty() -> Self {
        static EMPTY: std::sync::LazyLock<Payload> = std::sync::LazyLock::new(|| Payload::binary(Bytes::new()));
        EMPTY.clone()
    }

    /// A text message (JSON) rather than a binary one (protobuf, a ping's payload).
    pub fn is_text(&self) -> bool {
        self.0.text
    }

    /// The message compressed for `permessage-deflate` (and SSE's gzip), or `None` when it goes
    /// out plain (short, or no shorter compressed). Compressed at the first call, for every clone.
    pub fn compressed(&self) -> Option<&Compressed> {
        self.0
            .compressed
            .get_or_init(|| {
                let deflated = crate::permessage_deflate::compress(&self.0.bytes)?;
                let mut plain_crc = flate2::Crc::new();
                plain_crc.update(&self.0.bytes);
                Some(Compressed { deflated, plain_crc })
            })
            .as_ref()
    }

    /// Whether [`compressed`](Self::compressed) ran for this payload (or a clone of it).
    #[cfg(test)]
    pub(crate) fn compression_tried(&self) -> bool {
        self.0.compressed.get().is_some()
    }
}

impl std::ops::Deref for Payload {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0.bytes
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.is_text() == other.is_text() && **self == **other
    }
}

impl From<String> for Payload {
    fn from(text: String) -> Self {
        Self::text(text.into())
    }
}

impl From<Vec<u8>> for Payload {
    fn from(bytes: Vec<u8>) -> Self {
        Self::binary(bytes.into())
    }
}

/// The events of a batch, and when its oldest one was received upstream.
pub fn events_and_oldest(batch: &[Frame]) -> (usize, Option<Instant>) {
    let mut events = 0;
    let mut oldest = None;
    for frame in batch {
        if let FrameKind::Event(meta) = &frame.kind {
            events += 1;
            oldest = oldest.or(meta.received);
        }
    }
    (events, oldest)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Replaced an undelivered frame of the same entity.
    Coalesced,
    /// The queue was full: events were dropped and the session must send `resync`.
    Overflowed,
    /// The queue is closing or already overflowed; the frame was not queued.
    Dropped,
}

/// The outcome of [`Outbound::try_push_event`].
#[derive(Debug)]
pub enum TryPush {
    Queued,
    /// No room now: the frame is handed back.
    Full(Frame),
    /// The queue is closing or overflowed.
    Closed,
}

/// `(subscription, entity)` of a coalescable frame.
type CoalesceKey = (u64, Arc<str>);

#[derive(Default)]
struct State {
    /// Queued frames in order; `None` is the hole a coalesced frame left.
    frames: VecDeque<Option<Frame>>,
    /// The sequence number of `frames[0]`: a frame's sequence number minus this is its index.
    first_seq: u64,
    /// Holes in `frames`.
    holes: usize,
    /// Event frames in `frames` (the capacity counts these).
    events: usize,
    /// Bytes of the event frames in `frames` (the byte bound counts these).
    event_bytes: usize,
    /// Bytes of the control frames in `frames`.
    control_bytes: usize,
    /// The sequence number of the queued coalescable frame of each key.
    coalescable: HashMap<CoalesceKey, u64>,
    overflowed: bool,
    closing: bool,
    /// Last offset handed to the transport, per subscription: where a resync resumes from. A
    /// list: a connection holds a few subscriptions, and this is updated for every frame written.
    delivered: Vec<(u64, u64)>,
    /// A replay waits for room (`push_event_waiting`): the next pop wakes it. Without a waiter a
    /// pop does not touch `room`, whose wake-up takes a lock for every frame written.
    wants_room: bool,
}

impl State {
    /// Frames queued, holes not counted.
    fn queued(&self) -> usize {
        self.frames.len() - self.holes
    }

    fn push_back(&mut self, frame: Frame) -> u64 {
        let seq = self.first_seq + self.frames.len() as u64;
        self.frames.push_back(Some(frame));
        seq
    }

    fn record_delivered(&mut self, subscription: u64, offset: u64) {
        match self.delivered.iter_mut().find(|(known, _)| *known == subscription) {
            Some((_, last)) => *last = offset,
            None => self.delivered.push((subscription, offset)),
        }
    }

    /// The first frame and its sequence number.
    fn pop_front(&mut self) -> Option<(u64, Frame)> {
        while let Some(slot) = self.frames.pop_front() {
            let seq = self.first_seq;
            self.first_seq += 1;
            match slot {
                Some(frame) => return Some((seq, frame)),
                None => self.holes -= 1,
            }
        }
        None
    }

    /// Takes the frame at `seq` out of the queue, leaving a hole.
    fn punch(&mut self, seq: u64) -> Option<Frame> {
        let index = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        let frame = self.frames.get_mut(index)?.take()?;
        self.holes += 1;
        Some(frame)
    }

    /// Squeezes the holes out once they outnumber the frames: O(n) after at least n/2
    /// coalescings, so O(1) per event on average.
    fn squeeze(&mut self) {
        if self.holes <= 64 || self.holes <= self.queued() {
            return;
        }
        self.frames.retain(Option::is_some);
        self.holes = 0;
        let first_seq = self.first_seq;
        for (index, frame) in self.frames.iter().enumerate() {
            if let Some(Frame {
                kind: FrameKind::Event(EventMeta { subscription, coalesce: Some(entity), .. }), ..
            }) = frame
                && let Some(seq) = self.coalescable.get_mut(&(*subscription, entity.clone()))
            {
                *seq = first_seq + index as u64;
            }
        }
    }
}

pub struct Outbound {
    state: Mutex<State>,
    capacity: usize,
    max_bytes: usize,
    /// Wakes the transport (the queue's one waiter): frames are queued, or the queue is closing.
    ready: WakeFlag,
    /// Wakes the session: the queue overflowed.
    overflow: Notify,
    /// Wakes a replay waiting for room.
    room: Notify,
    /// When the peer was last heard from, in milliseconds since the queue was made: the
    /// transport's reader sets it, its keepalive reads it (the queue is what both share).
    peer_seen_ms: AtomicU64,
    made: Instant,
}

impl Outbound {
    /// A queue bounded by event count only (tests, and callers without a byte bound).
    pub fn new(capacity: usize) -> Arc<Self> {
        Self::bounded(capacity, usize::MAX)
    }

    /// A queue of at most `capacity` events and `max_bytes` bytes of events.
    pub fn bounded(capacity: usize, max_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
            max_bytes: max_bytes.max(1),
            ready: WakeFlag::default(),
            overflow: Notify::new(),
            room: Notify::new(),
            peer_seen_ms: AtomicU64::new(0),
            made: Instant::now(),
        })
    }

    /// The peer sent something.
    pub fn peer_seen(&self) {
        self.peer_seen_ms.store(self.millis(), std::sync::atomic::Ordering::Relaxed);
    }

    /// How long ago the peer last sent something (since the queue was made, if never).
    pub fn peer_silent_for(&self) -> Duration {
        let seen = self.peer_seen_ms.load(std::sync::atomic::Ordering::Relaxed);
        Duration::from_millis(self.millis().saturating_sub(seen))
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.made.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent before anything can panic.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Behind: at least half full, by count or by bytes.
    fn is_behind(&self, state: &State) -> bool {
        state.events >= self.capacity / 2 || state.event_bytes >= self.max_bytes / 2
    }

    /// Whether an event of `len` bytes fits (one always fits into a queue holding no event).
    fn has_room(&self, state: &State, len: usize) -> bool {
        state.events < self.capacity && (state.events == 0 || state.event_bytes.saturating_add(len) <= self.max_bytes)
    }

    fn control_budget(&self) -> usize {
        self.max_bytes.max(CONTROL_BYTES_MIN)
    }

    /// Queues an event frame without waiting (the live path: never blocks the hub).
    pub fn push_event(&self, frame: Frame) -> Pushed {
        let FrameKind::Event(meta) = &frame.kind else {
            return if self.push_control(frame) { Pushed::Queued } else { Pushed::Dropped };
        };
        let mut state = self.lock();
        if state.overflowed || state.closing {
            return Pushed::Dropped;
        }
        let key = meta.coalesce.as_ref().map(|entity| (meta.subscription, entity.clone()));
        if let Some(key) = &key
            && self.is_behind(&state)
            && let Some(&seq) = state.coalescable.get(key)
            && let Some(replaced) = state.punch(seq)
        {
            state.event_bytes = state.event_bytes - replaced.payload.len() + frame.payload.len();
            let seq = state.push_back(frame);
            state.coalescable.insert(key.clone(), seq);
            state.squeeze();
            drop(state);
            coalesced_counter().increment(1);
            return Pushed::Coalesced;
        }
        if !self.has_room(&state, frame.payload.len()) {
            drop(state);
            self.force_overflow();
            return Pushed::Overflowed;
        }
        state.events += 1;
        state.event_bytes += frame.payload.len();
        let seq = state.push_back(frame);
        if let Some(key) = key {
            state.coalescable.insert(key, seq);
        }
        drop(state);
        self.ready.set();
        Pushed::Queued
    }

    /// Queues an event frame, waiting for room instead of overflowing (replay: the source is a
    /// bounded read, so it can wait for the client). `None` once the queue closes or overflows.
    pub async fn push_event_waiting(&self, frame: Frame) -> Option<()> {
        loop {
            // Registered before the check, so a pop between the check and the wait is not missed.
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut state = self.lock();
                if state.overflowed || state.closing {
                    return None;
                }
                if self.has_room(&state, frame.payload.len()) {
                    drop(state);
                    return match self.push_event(frame) {
                        Pushed::Queued | Pushed::Coalesced => Some(()),
                        Pushed::Overflowed | Pushed::Dropped => None,
                    };
                }
                state.wants_room = true;
            }
            room.await;
        }
    }

    /// Queues an event frame if it fits now, without overflowing the queue when it does not.
    pub fn try_push_event(&self, frame: Frame) -> TryPush {
        let state = self.lock();
        if state.overflowed || state.closing {
            return TryPush::Closed;
        }
        if !self.has_room(&state, frame.payload.len()) {
            return TryPush::Full(frame);
        }
        drop(state);
        match self.push_event(frame) {
            Pushed::Queued | Pushed::Coalesced => TryPush::Queued,
            Pushed::Overflowed | Pushed::Dropped => TryPush::Closed,
        }
    }

    /// Queues a control message. `false` when the client has let even control replies pile up.
    pub fn push_control(&self, frame: Frame) -> bool {
        let mut state = self.lock();
        if state.closing {
            return true; // the connection is ending anyway; nothing to report
        }
        let controls = state.queued().saturating_sub(state.events);
        if state.queued() >= self.capacity + CONTROL_HEADROOM
            || (controls > 0 && state.control_bytes.saturating_add(frame.payload.len()) > self.control_budget())
        {
            return false;
        }
        state.control_bytes += frame.payload.len();
        state.push_back(frame);
        drop(state);
        self.ready.set();
        true
    }

    /// Queues the final frame; everything after it is dropped.
    pub fn close(&self, code: u16, reason: &'static str) {
        let mut state = self.lock();
        if state.closing {
            return;
        }
        state.closing = true;
        state.push_back(Frame { payload: Payload::empty(), kind: FrameKind::Close { code, reason } });
        drop(state);
        self.ready.set();
        self.room.notify_waiters();
    }

    /// Takes up to `max` queued frames in order, recording delivered offsets.
    pub fn pop_batch(&self, max: usize, into: &mut Vec<Frame>) {
        let _left = self.pop_batch_bytes(max, usize::MAX, into);
    }

    /// Takes up to `max` queued frames in order, and no more once `max_bytes` are taken (at least
    /// one frame), recording delivered offsets. The byte bound is what keeps a transport's batch
    /// from holding outside the queue what the queue's own bound keeps out of it. Returns whether
    /// frames are left.
    pub fn pop_batch_bytes(&self, max: usize, max_bytes: usize, into: &mut Vec<Frame>) -> bool {
        let mut state = self.lock();
        let mut taken = 0usize;
        let mut taken_bytes = 0usize;
        while taken < max && taken_bytes < max_bytes {
            let Some((seq, frame)) = state.pop_front() else {
                break;
            };
            taken += 1;
            taken_bytes = taken_bytes.saturating_add(frame.payload.len());
            if let FrameKind::Event(meta) = &frame.kind {
                state.events -= 1;
                state.event_bytes -= frame.payload.len();
                if let Some(entity) = &meta.coalesce {
                    // A client that keeps up may have newer frames of the key queued behind this
                    // one: the key stays theirs.
                    let key = (meta.subscription, entity.clone());
                    if state.coalescable.get(&key) == Some(&seq) {
                        state.coalescable.remove(&key);
                    }
                }
                state.record_delivered(meta.subscription, meta.offset);
            } else {
                state.control_bytes -= frame.payload.len();
            }
            into.push(frame);
        }
        let left = state.queued() > 0;
        let room_made = taken > 0 && std::mem::take(&mut state.wants_room);
        if !left {
            // Drained: an idle connection keeps no queue memory (one allocation per burst).
            state.frames = VecDeque::new();
            state.holes = 0;
            state.coalescable = HashMap::new();
        }
        drop(state);
        if room_made {
            self.room.notify_waiters();
        }
        if left && taken < max && taken_bytes >= max_bytes {
            // Frames are left: the transport comes back for them without another wake-up.
            self.ready.set();
        }
        left
    }

    /// Resolves when frames may be waiting (a stored flag makes a missed wake-up impossible).
    /// One transport waits on a queue: a second waiter would take the first one's place.
    pub async fn ready(&self) {
        std::future::poll_fn(|cx| self.ready.poll_take(cx)).await;
    }

    pub fn has_frames(&self) -> bool {
        self.lock().queued() > 0
    }

    /// Resolves when the queue overflowed.
    pub async fn overflowed(&self) {
        self.overflow.notified().await;
    }

    /// After an overflow: the offset every subscription got to, and the queue accepts events again.
    pub fn take_overflow(&self) -> Option<HashMap<u64, u64>> {
        let mut state = self.lock();
        if !state.overflowed {
            return None;
        }
        state.overflowed = false;
        Some(state.delivered.iter().copied().collect())
    }

    /// Overflows on behalf of a subscription whose replay buffer filled up: same outcome (resync).
    pub fn force_overflow(&self) {
        let mut state = self.lock();
        if state.overflowed || state.closing {
            return;
        }
        state.overflowed = true;
        state.frames.retain(|queued| matches!(queued, Some(frame) if !matches!(frame.kind, FrameKind::Event(_))));
        state.holes = 0;
        state.events = 0;
        state.event_bytes = 0;
        state.coalescable.clear();
        drop(state);
        self.overflow.notify_one();
        self.room.notify_waiters();
    }

    /// Forgets a subscription's delivered offset (it was unsubscribed).
    pub fn forget(&self, subscription: u64) {
        self.lock().delivered.retain(|(known, _)| *known != subscription);
    }

    pub fn len(&self) -> usize {
        self.lock().queued()
    }

    /// Bytes of the queued events.
    pub fn event_bytes(&self) -> usize {
        self.lock().event_bytes
    }

    /// Whether the queue is closing (the connection is ending).
    pub fn is_closing(&self) -> bool {
        self.lock().closing
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots in use, holes included (what the queue's memory is proportional to).
    #[cfg(test)]
    fn slots(&self) -> usize {
        self.lock().frames.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(subscription: u64, offset: u64, coalesce: Option<&str>) -> Frame {
        Frame {
            payload: offset.to_string().into(),
            kind: FrameKind::Event(EventMeta {
                subscription,
                offset,
                event_type: "execution.progress",
                coalesce: coalesce.map(Arc::from),
                received: None,
            }),
        }
    }

    fn control(kind: &'static str) -> Frame {
        Frame { payload: String::from("{}").into(), kind: FrameKind::Control { kind } }
    }

    fn offsets(frames: &[Frame]) -> Vec<u64> {
        frames
            .iter()
            .filter_map(|f| match &f.kind {
                FrameKind::Event(m) => Some(m.offset),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_client_that_keeps_up_gets_every_progress_event() {
        let queue = Outbound::new(10);
        for offset in 1..=4 {
            assert_eq!(queue.push_event(event(1, offset, Some("e1"))), Pushed::Queued);
        }
        let mut frames = Vec::new();
        queue.pop_batch(100, &mut frames);
        assert_eq!(offsets(&frames), [1, 2, 3, 4]);
    }

    #[test]
    fn progress_is_coalesced_per_entity_newest_last_once_the_client_is_behind() {
        // Capacity 4: from two queued events on, the client counts as behind.
        let queue = Outbound::new(4);
        assert_eq!(queue.push_event(event(1, 1, Some("e1"))), Pushed::Queued);
        assert_eq!(queue.push_event(event(1, 2, None)), Pushed::Queued);
        assert_eq!(queue.push_event(event(1, 3, Some("e2"))), Pushed::Queued);
        assert_eq!(queue.push_event(event(1, 4, Some("e1"))), Pushed::Coalesced);
        assert_eq!(queue.push_event(event(2, 5, Some("e1"))), Pushed::Queued);
        let mut frames = Vec::new();
        queue.pop_batch(100, &mut frames);
        assert_eq!(offsets(&frames), [2, 3, 4, 5]);
        // Delivered: nothing pending to coalesce with any more.
        assert_eq!(queue.push_event(event(1, 6, Some("e1"))), Pushed::Queued);
    }

    #[test]
    fn a_full_queue_overflows_once_keeps_control_frames_and_reports_offsets() {
        let queue = Outbound::new(3);
        queue.push_event(event(1, 1, None));
        let mut frames = Vec::new();
        queue.pop_batch(1, &mut frames);
        assert!(queue.push_control(control("pong")));
        for offset in 2..=4 {
            assert_eq!(queue.push_event(event(1, offset, None)), Pushed::Queued);
        }
        assert_eq!(queue.push_event(event(1, 5, None)), Pushed::Overflowed);
        assert_eq!(queue.push_event(event(1, 6, None)), Pushed::Dropped);
        assert_eq!(queue.len(), 1, "only the control frame is left");
        let delivered = queue.take_overflow().expect("overflowed");
        assert_eq!(delivered.get(&1), Some(&1));
        assert!(queue.take_overflow().is_none());
        assert_eq!(queue.push_event(event(1, 7, None)), Pushed::Queued);
    }

    fn sized(subscription: u64, offset: u64, len: usize, coalesce: Option<&str>) -> Frame {
        Frame { payload: vec![b'x'; len].into(), ..event(subscription, offset, coalesce) }
    }

    #[test]
    fn crossing_the_byte_bound_overflows_like_crossing_the_count() {
        let queue = Outbound::bounded(1000, 1000);
        assert_eq!(queue.push_event(sized(1, 1, 400, None)), Pushed::Queued);
        assert_eq!(queue.push_event(sized(1, 2, 400, None)), Pushed::Queued);
        assert_eq!(queue.event_bytes(), 800);
        assert_eq!(queue.push_event(sized(1, 3, 400, None)), Pushed::Overflowed);
        assert_eq!(queue.event_bytes(), 0, "the queued events were dropped");
        assert_eq!(queue.take_overflow().expect("overflowed").get(&1), None, "nothing was delivered");
        // One event larger than the bound still goes through an empty queue.
        assert_eq!(queue.push_event(sized(1, 4, 5000, None)), Pushed::Queued);
        assert_eq!(queue.push_event(sized(1, 5, 1, None)), Pushed::Overflowed);
    }

    #[test]
    fn progress_is_coalesced_once_half_the_bytes_are_queued() {
        let queue = Outbound::bounded(1000, 1000);
        assert_eq!(queue.push_event(sized(1, 1, 600, Some("e1"))), Pushed::Queued);
        assert_eq!(queue.push_event(sized(1, 2, 300, Some("e1"))), Pushed::Coalesced);
        assert_eq!(queue.event_bytes(), 300, "the replaced frame's bytes are given back");
        let mut frames = Vec::new();
        queue.pop_batch(10, &mut frames);
        assert_eq!(offsets(&frames), [2]);
        assert_eq!(queue.event_bytes(), 0);
    }

    #[tokio::test]
    async fn a_waiting_push_waits_for_bytes_too() {
        let queue = Outbound::bounded(1000, 1000);
        queue.push_event(sized(1, 1, 900, None));
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { queue.push_event_waiting(sized(1, 2, 900, None)).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let mut frames = Vec::new();
        queue.pop_batch(10, &mut frames);
        let pushed =
            tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.expect("resumes").expect("no panic");
        assert_eq!(pushed, Some(()));
    }

    #[test]
    fn control_replies_are_bounded_in_bytes() {
        let queue = Outbound::bounded(10, 1024);
        let big = || Frame {
            payload: vec![b'x'; CONTROL_BYTES_MIN / 2].into(),
            kind: FrameKind::Control { kind: "snapshot" },
        };
        assert!(queue.push_control(big()));
        assert!(queue.push_control(big()));
        assert!(!queue.push_control(big()));
    }

    #[test]
    fn a_batch_stops_at_its_byte_bound_but_takes_at_least_one_frame() {
        let queue = Outbound::bounded(100, 1 << 20);
        for offset in 1..=4 {
            queue.push_event(sized(1, offset, 1000, None));
        }
        let mut frames = Vec::new();
        queue.pop_batch_bytes(100, 1500, &mut frames);
        assert_eq!(offsets(&frames), [1, 2]);
        frames.clear();
        queue.pop_batch_bytes(100, 10, &mut frames);
        assert_eq!(offsets(&frames), [3]);
        assert_eq!(queue.event_bytes(), 1000);
    }

    #[test]
    fn control_replies_are_bounded_too() {
        let queue = Outbound::new(1);
        for _ in 0..(1 + CONTROL_HEADROOM) {
            assert!(queue.push_control(control("pong")));
        }
        assert!(!queue.push_control(control("pong")));
    }

    #[tokio::test]
    async fn a_waiting_push_resumes_when_the_transport_makes_room() {
        let queue = Outbound::new(1);
        queue.push_event(event(1, 1, None));
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { queue.push_event_waiting(event(1, 2, None)).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let mut frames = Vec::new();
        queue.pop_batch(10, &mut frames);
        let pushed =
            tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.expect("resumes").expect("no panic");
        assert_eq!(pushed, Some(()));
        queue.close(1001, "bye");
        assert_eq!(queue.push_event_waiting(event(1, 3, None)).await, None);
    }

    #[test]
    fn a_stalled_client_flooded_with_progress_holds_one_frame_per_entity_in_bounded_memory() {
        let queue = Outbound::new(8);
        queue.push_event(event(1, 1, None));
        for offset in 2..=20_000 {
            let entity = ["e1", "e2", "e3"][(offset % 3) as usize];
            let pushed = queue.push_event(event(1, offset, Some(entity)));
            assert!(matches!(pushed, Pushed::Queued | Pushed::Coalesced), "{pushed:?} at {offset}");
        }
        assert_eq!(queue.len(), 4, "the first event and the newest progress of each entity");
        assert!(queue.slots() <= 2 * 4 + 65, "holes are squeezed out: {} slots", queue.slots());
        let mut frames = Vec::new();
        queue.pop_batch(100, &mut frames);
        assert_eq!(offsets(&frames), [1, 19_998, 19_999, 20_000]);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// The queue as it was specified before coalescing was O(1): a scan for the newest frame
        /// of the same key, removed, the new frame appended.
        #[derive(Default)]
        struct Model {
            frames: VecDeque<(u64, u64, Option<&'static str>)>,
            overflowed: bool,
        }

        impl Model {
            fn push(
                &mut self,
                capacity: usize,
                subscription: u64,
                offset: u64,
                entity: Option<&'static str>,
            ) -> Pushed {
                if self.overflowed {
                    return Pushed::Dropped;
                }
                if let Some(entity) = entity
                    && self.frames.len() >= capacity / 2
                    && let Some(position) = self.frames.iter().rposition(|f| f.0 == subscription && f.2 == Some(entity))
                {
                    self.frames.remove(position);
                    self.frames.push_back((subscription, offset, Some(entity)));
                    return Pushed::Coalesced;
                }
                if self.frames.len() >= capacity {
                    self.frames.clear();
                    self.overflowed = true;
                    return Pushed::Overflowed;
                }
                self.frames.push_back((subscription, offset, entity));
                Pushed::Queued
            }

            fn pop(&mut self, max: usize) -> Vec<u64> {
                let take = self.frames.len().min(max);
                self.frames.drain(..take).map(|f| f.1).collect()
            }
        }

        #[derive(Debug, Clone)]
        enum Op {
            Push { subscription: u64, entity: Option<&'static str> },
            Pop(usize),
            Resync,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                8 => (1u64..3, prop_oneof![Just(None), Just(Some("a")), Just(Some("b")), Just(Some("c"))])
                    .prop_map(|(subscription, entity)| Op::Push { subscription, entity }),
                2 => (0usize..6).prop_map(Op::Pop),
                1 => Just(Op::Resync),
            ]
        }

        proptest! {
            #[test]
            fn o1_coalescing_behaves_like_the_scan_it_replaced(capacity in 1usize..12, ops in proptest::collection::vec(op(), 1..400)) {
                let queue = Outbound::new(capacity);
                let mut model = Model::default();
                let mut offset = 0;
                for op in ops {
                    match op {
                        Op::Push { subscription, entity } => {
                            offset += 1;
                            let got = queue.push_event(event(subscription, offset, entity));
                            prop_assert_eq!(got, model.push(capacity, subscription, offset, entity));
                        }
                        Op::Pop(max) => {
                            let mut frames = Vec::new();
                            queue.pop_batch(max, &mut frames);
                            prop_assert_eq!(offsets(&frames), model.pop(max));
                        }
                        Op::Resync => {
                            prop_assert_eq!(queue.take_overflow().is_some(), model.overflowed);
                            model.overflowed = false;
                        }
                    }
                    prop_assert_eq!(queue.len(), model.frames.len());
                    prop_assert!(queue.slots() <= 2 * queue.len() + 65);
                }
            }
        }
    }
}
