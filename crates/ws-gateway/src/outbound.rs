//! The bounded outbound queue of one connection, shared by the hub (which pushes events from the
//! upstream task), the session (control replies) and the write-only transport (WebSocket or SSE),
//! which pops everything queued at each wake-up and writes it with one flush.
//!
//! Delivery classes (DESIGN §4): `execution.progress` and `agent.heartbeat` frames carry a
//! coalescing key; once the client is behind (its queue at least half full), a newer one replaces
//! an undelivered older one of the same entity and subscription (newest wins, moved to the back so
//! offsets stay increasing). A client that keeps up — a resuming one included — gets every
//! progress event. Any other event that
//! finds the queue full overflows it: queued events are dropped, the queue refuses further events,
//! and the session is woken to send `resync` with the offset each subscription got to.

use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::Notify;

/// Control replies that may queue beyond the event capacity, so a full queue can still carry
/// `resync`, `error` and `reconnect`; a client that lets even these pile up is closed.
pub const CONTROL_HEADROOM: usize = 256;

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
}

/// One message, already encoded for the connection's protocol. The bytes are shared with every
/// other recipient of the same event on the same channel.
#[derive(Debug, Clone)]
pub struct Frame {
    pub bytes: Bytes,
    pub kind: FrameKind,
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

#[derive(Default)]
struct State {
    frames: VecDeque<Frame>,
    /// Event frames in `frames` (the capacity counts these).
    events: usize,
    /// Coalescing keys present in `frames`.
    coalescable: HashMap<(u64, Arc<str>), ()>,
    overflowed: bool,
    closing: bool,
    /// Last offset handed to the transport, per subscription: where a resync resumes from.
    delivered: HashMap<u64, u64>,
}

pub struct Outbound {
    state: Mutex<State>,
    capacity: usize,
    /// Wakes the transport: frames are queued, or the queue is closing.
    ready: Notify,
    /// Wakes the session: the queue overflowed.
    overflow: Notify,
    /// Wakes a replay waiting for room.
    room: Notify,
}

impl Outbound {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
            ready: Notify::new(),
            overflow: Notify::new(),
            room: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent before anything can panic.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
        if let Some(entity) = &meta.coalesce
            && state.events >= self.capacity / 2
        {
            let key = (meta.subscription, entity.clone());
            if state.coalescable.contains_key(&key) {
                let position = state.frames.iter().rposition(|queued| {
                    matches!(&queued.kind, FrameKind::Event(m)
                        if m.subscription == meta.subscription && m.coalesce.as_ref() == Some(entity))
                });
                if let Some(position) = position {
                    state.frames.remove(position);
                    state.frames.push_back(frame);
                    drop(state);
                    metrics::counter!("runcast_ws_coalesced_total").increment(1);
                    return Pushed::Coalesced;
                }
            }
        }
        if state.events >= self.capacity {
            drop(state);
            self.force_overflow();
            return Pushed::Overflowed;
        }
        if let Some(entity) = &meta.coalesce {
            state.coalescable.insert((meta.subscription, entity.clone()), ());
        }
        state.events += 1;
        state.frames.push_back(frame);
        drop(state);
        self.ready.notify_one();
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
                let state = self.lock();
                if state.overflowed || state.closing {
                    return None;
                }
                if state.events < self.capacity {
                    drop(state);
                    return match self.push_event(frame) {
                        Pushed::Queued | Pushed::Coalesced => Some(()),
                        Pushed::Overflowed | Pushed::Dropped => None,
                    };
                }
            }
            room.await;
        }
    }

    /// Queues a control message. `false` when the client has let even control replies pile up.
    pub fn push_control(&self, frame: Frame) -> bool {
        let mut state = self.lock();
        if state.closing {
            return true; // the connection is ending anyway; nothing to report
        }
        if state.frames.len() >= self.capacity + CONTROL_HEADROOM {
            return false;
        }
        state.frames.push_back(frame);
        drop(state);
        self.ready.notify_one();
        true
    }

    /// Queues the final frame; everything after it is dropped.
    pub fn close(&self, code: u16, reason: &'static str) {
        let mut state = self.lock();
        if state.closing {
            return;
        }
        state.closing = true;
        state.frames.push_back(Frame { bytes: Bytes::new(), kind: FrameKind::Close { code, reason } });
        drop(state);
        self.ready.notify_one();
        self.room.notify_waiters();
    }

    /// Takes up to `max` queued frames in order, recording delivered offsets.
    pub fn pop_batch(&self, max: usize, into: &mut Vec<Frame>) {
        let mut state = self.lock();
        let take = state.frames.len().min(max);
        for _ in 0..take {
            let Some(frame) = state.frames.pop_front() else {
                break;
            };
            if let FrameKind::Event(meta) = &frame.kind {
                state.events = state.events.saturating_sub(1);
                if let Some(entity) = &meta.coalesce {
                    state.coalescable.remove(&(meta.subscription, entity.clone()));
                }
                state.delivered.insert(meta.subscription, meta.offset);
            }
            into.push(frame);
        }
        drop(state);
        if take > 0 {
            self.room.notify_waiters();
        }
    }

    /// Resolves when frames may be waiting (a stored permit makes a missed wake-up impossible).
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    pub fn has_frames(&self) -> bool {
        !self.lock().frames.is_empty()
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
        Some(state.delivered.clone())
    }

    /// Overflows on behalf of a subscription whose replay buffer filled up: same outcome (resync).
    pub fn force_overflow(&self) {
        let mut state = self.lock();
        if state.overflowed || state.closing {
            return;
        }
        state.overflowed = true;
        state.frames.retain(|queued| !matches!(queued.kind, FrameKind::Event(_)));
        state.events = 0;
        state.coalescable.clear();
        drop(state);
        self.overflow.notify_one();
        self.room.notify_waiters();
    }

    /// Forgets a subscription's delivered offset (it was unsubscribed).
    pub fn forget(&self, subscription: u64) {
        self.lock().delivered.remove(&subscription);
    }

    pub fn len(&self) -> usize {
        self.lock().frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(subscription: u64, offset: u64, coalesce: Option<&str>) -> Frame {
        Frame {
            bytes: Bytes::from(offset.to_string()),
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
        Frame { bytes: Bytes::from_static(b"{}"), kind: FrameKind::Control { kind } }
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
}
