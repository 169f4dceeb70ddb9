//! The subscriber index of one replica. Subscribers are indexed by tenant and channel, so an event
//! costs a handful of map lookups (one per channel it belongs to) plus work proportional to the
//! subscribers that match it — never a scan of all connections. Each event is encoded once (its
//! JSON `data`), framed once per channel, and the bytes are shared by every recipient.
//!
//! A subscription that resumes from an offset starts in *replay* mode: live events for it are
//! held (bounded) while the replay reads the stream or the history, then released after the
//! replayed ones; every subscriber drops events at or below the last offset it was given, which is
//! what makes the switch from replay to live free of gaps and duplicates.

use crate::channel::{Channel, Routing};
use crate::outbound::{EventMeta, Frame, FrameKind, Outbound, Payload, Pushed};
use crate::protocol::{self, Protocol};
use bytes::Bytes;
use runcast_contract::gateway::Filters;
use runcast_contract::v1::{Event, EventType};
use runcast_contract::{EntityId, StreamKind, WireEnum};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

fn stream_index(kind: StreamKind) -> usize {
    match kind {
        StreamKind::Executions => 0,
        StreamKind::Logs => 1,
        StreamKind::Agents => 2,
    }
}

/// One event as it leaves the upstream: decoded, routed, its JSON encoded once (and its
/// protobuf form once, the first time a protobuf subscriber needs it).
pub struct Dispatch<'a> {
    routing: &'a Routing,
    event: &'a Event,
    offset: u64,
    data: Utf8Bytes,
    proto: OnceLock<Bytes>,
    received: Option<Instant>,
    /// Progress and heartbeats may be replaced by a newer one of the same entity: the entity,
    /// allocated once per event and shared by every recipient's frame.
    coalesce: Option<Arc<str>>,
}

impl<'a> Dispatch<'a> {
    /// `event.offset` must already be `offset`; `data` is the event's JSON.
    pub fn new(
        routing: &'a Routing,
        event: &'a Event,
        offset: u64,
        data: Utf8Bytes,
        received: Option<Instant>,
    ) -> Self {
        let coalesce = matches!(routing.event_type, EventType::ExecutionProgress | EventType::AgentHeartbeat)
            .then(|| Arc::from(routing.entity.as_str()));
        Self { routing, event, offset, data, proto: OnceLock::new(), received, coalesce }
    }

    pub fn routing(&self) -> &Routing {
        self.routing
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn event_type(&self) -> &'static str {
        self.routing.event_type.wire_name()
    }

    fn timestamp(&self) -> String {
        self.event
            .occurred_at
            .as_ref()
            .and_then(|ts| runcast_contract::json::to_rfc3339(ts).ok())
            .unwrap_or_else(protocol::now_rfc3339)
    }

    /// The frame for one subscriber; `payload` is the channel's shared encoding.
    fn frame(&self, subscriber: &Subscriber, payload: Payload) -> Frame {
        Frame {
            payload,
            kind: FrameKind::Event(EventMeta {
                subscription: subscriber.id,
                offset: self.offset,
                event_type: self.event_type(),
                coalesce: self.coalesce.clone(),
                received: self.received,
            }),
        }
    }

    fn encode(&self, channel: &str, protocol: Protocol) -> Payload {
        match protocol {
            Protocol::Json => {
                protocol::event_frame(self.event_type(), &self.timestamp(), channel, self.offset, &self.data)
            }
            Protocol::Proto => {
                use prost::Message as _;
                let event = self.proto.get_or_init(|| Bytes::from(self.event.encode_to_vec()));
                protocol::event_frame_proto(self.event_type(), self.event.occurred_at, channel, self.offset, event)
            }
        }
    }
}

#[derive(Default)]
struct SubState {
    /// The last offset given to the connection (replayed or live); anything at or below is a
    /// duplicate.
    last_offset: u64,
    /// Resuming, but its replay has not started (it waits for a replay slot): live events are
    /// neither delivered nor held — the replay reads them from the stream anyway, since it starts
    /// after [`Subscriber::hold`]. So thousands of clients resuming at once hold nothing while
    /// they wait their turn.
    waiting: bool,
    /// `Some` while replaying: live events held until the replay is done.
    pending: Option<VecDeque<Frame>>,
    /// Bytes of the held events.
    pending_bytes: usize,
    /// Held events were dropped because the replay was slower than the live feed (a source
    /// answering slowly, e.g. during a leader election): the replay must read on before going
    /// live, since the stream still holds what was dropped.
    pending_dropped: bool,
}

/// What [`Subscriber::go_live`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoLive {
    /// `subscribed` and the held live events are queued: the subscription is live.
    Live,
    /// Held events were dropped meanwhile: replay again after this offset, then go live.
    CatchUp { after: u64 },
    /// The connection cannot take `subscribed`: it overflowed (the client gets `resync`).
    Overflowed,
}

/// One subscription of one connection.
pub struct Subscriber {
    pub id: u64,
    pub tenant: EntityId,
    pub channel: Channel,
    pub channel_name: String,
    pub filters: Filters,
    /// No filter: every event of the channel matches (checked without touching `filters`).
    unfiltered: bool,
    pub protocol: Protocol,
    pub outbound: Arc<Outbound>,
    pending_capacity: usize,
    pending_max_bytes: usize,
    state: Mutex<SubState>,
    /// Its stream was re-created under it: its offsets mean nothing in the new epoch.
    epoch_lost: AtomicBool,
}

impl Subscriber {
    /// Whether the subscription's stream was re-created (a new epoch) while it was subscribed:
    /// its `resync` then starts over at offset 0 of the new epoch.
    pub fn epoch_lost(&self) -> bool {
        self.epoch_lost.load(Ordering::Acquire)
    }

    fn lock(&self) -> MutexGuard<'_, SubState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A live event (from the hub).
    fn offer(&self, offset: u64, frame: Frame) {
        let mut state = self.lock();
        if state.waiting {
            return;
        }
        // While replaying, everything is held: the replay may still move `last_offset` (even
        // backwards, when the offset turns out not to be recoverable); go_live deduplicates.
        let held = state.pending_bytes;
        if let Some(pending) = &mut state.pending {
            if pending.len() >= self.pending_capacity
                || held.saturating_add(frame.payload.len()) > self.pending_max_bytes
            {
                // The replay is slower than the live feed. Holding more would be unbounded, and
                // overflowing would blame the client; the stream still holds these events, so
                // they are dropped here and the replay reads on to them (go_live says so).
                pending.clear();
                state.pending_bytes = 0;
                state.pending_dropped = true;
                drop(state);
            } else {
                let len = frame.payload.len();
                pending.push_back(frame);
                state.pending_bytes = held + len;
            }
            return;
        }
        if offset <= state.last_offset {
            return;
        }
        state.last_offset = offset;
        drop(state);
        if self.outbound.push_event(frame) == Pushed::Overflowed {
            metrics::counter!("runcast_ws_queue_overflows_total").increment(1);
        }
    }

    /// The replay is about to read its sources: from now on live events are held for it. Every
    /// event dropped while waiting was dispatched before this, so the replay (which reads the
    /// stream's state after this) or the head read after this covers it.
    pub fn hold(&self) {
        let mut state = self.lock();
        if std::mem::take(&mut state.waiting) {
            state.pending = Some(VecDeque::new());
        }
    }

    /// Sets the position the subscriber continues after (before a replay starts, or to the head
    /// when the requested offset cannot be recovered).
    pub fn set_position(&self, offset: u64) {
        self.lock().last_offset = offset;
    }

    /// A replayed event: waits for room in the queue. `false` when the connection is gone or has
    /// overflowed (the replay stops).
    pub async fn replayed(&self, dispatch: &Dispatch<'_>) -> bool {
        match self.replay_frame(dispatch) {
            Some(frame) => self.outbound.push_event_waiting(frame).await.is_some(),
            None => true,
        }
    }

    /// The frame of a replayed event for this subscriber, moving its position; `None` for an
    /// offset it was given already.
    pub fn replay_frame(&self, dispatch: &Dispatch<'_>) -> Option<Frame> {
        {
            let mut state = self.lock();
            if dispatch.offset <= state.last_offset {
                return None;
            }
            state.last_offset = dispatch.offset;
        }
        Some(dispatch.frame(self, dispatch.encode(&self.channel_name, self.protocol)))
    }

    /// [`replay_frame`](Self::replay_frame) of an event of the recent window, whose encodings it
    /// shares with every other replay of the same channel.
    pub fn replay_recent_frame(&self, recent: &RecentEvent) -> Option<Frame> {
        {
            let mut state = self.lock();
            if recent.offset <= state.last_offset {
                return None;
            }
            state.last_offset = recent.offset;
        }
        let dispatch = Dispatch::new(&recent.routing, &recent.event, recent.offset, recent.data.clone(), None);
        let bytes = recent
            .frames
            .get_or_encode(&self.channel_name, self.protocol, || dispatch.encode(&self.channel_name, self.protocol));
        Some(dispatch.frame(self, bytes))
    }

    /// Ends the replay: queues `subscribed` (built from the offset the subscriber got to), then
    /// the live events that arrived meanwhile and were not replayed, and goes live — unless held
    /// events had to be dropped, in which case the replay must first read on from where the
    /// subscriber got to (it stays in replay mode, holding live events again).
    pub fn go_live(&self, subscribed: impl FnOnce(u64) -> Frame) -> GoLive {
        let mut state = self.lock();
        if std::mem::take(&mut state.waiting) {
            // Never held (a caller that skipped `hold`): read on from here, holding from now.
            state.pending = Some(VecDeque::new());
            return GoLive::CatchUp { after: state.last_offset };
        }
        if std::mem::take(&mut state.pending_dropped) {
            return GoLive::CatchUp { after: state.last_offset };
        }
        let pending = state.pending.take().unwrap_or_default();
        state.pending_bytes = 0;
        if !self.outbound.push_control(subscribed(state.last_offset)) {
            drop(state);
            self.outbound.force_overflow();
            return GoLive::Overflowed;
        }
        for frame in pending {
            let FrameKind::Event(meta) = &frame.kind else {
                continue;
            };
            if meta.offset <= state.last_offset {
                continue;
            }
            state.last_offset = meta.offset;
            if self.outbound.push_event(frame) == Pushed::Overflowed {
                return GoLive::Overflowed;
            }
        }
        GoLive::Live
    }

    /// Whether an event on the subscriber's stream belongs to it (replay uses the same test as
    /// dispatch).
    pub fn wants(&self, routing: &Routing, event: &Event) -> bool {
        routing.tenant == self.tenant && routing.belongs_to(&self.channel) && self.matches(event)
    }

    fn matches(&self, event: &Event) -> bool {
        self.unfiltered || self.filters.matches(event)
    }
}

/// One event of a stream's recent window, as the upstream decoded and encoded it.
pub struct RecentEvent {
    pub offset: u64,
    pub routing: Routing,
    pub event: Event,
    /// The event's JSON `data`.
    pub data: Utf8Bytes,
    /// Its frames for the channels it was replayed on.
    frames: EncodedFrames,
}

impl RecentEvent {
    pub fn new(offset: u64, routing: Routing, event: Event, data: Utf8Bytes) -> Self {
        Self { offset, routing, event, data, frames: EncodedFrames::default() }
    }

    /// What it costs the window: the JSON twice over stands for the decoded event beside it,
    /// plus the frames it may keep.
    fn weight(&self) -> usize {
        (self.data.len() + 256) * (2 + EncodedFrames::MAX)
    }
}

/// The frames of one event encoded for replays, per channel and protocol (a few at most): when
/// thousands of clients resume the same channel at once, each event is encoded once, not once
/// per client.
#[derive(Default)]
struct EncodedFrames(Mutex<Vec<(Box<str>, Protocol, Payload)>>);

impl EncodedFrames {
    const MAX: usize = 4;

    fn get_or_encode(&self, channel: &str, protocol: Protocol, encode: impl FnOnce() -> Payload) -> Payload {
        let mut frames = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, _, bytes)) = frames.iter().find(|(held, p, _)| **held == *channel && *p == protocol) {
            return bytes.clone();
        }
        let bytes = encode();
        if frames.len() < Self::MAX {
            frames.push((channel.into(), protocol, bytes.clone()));
        }
        bytes
    }
}

/// The most recent events of one stream, so that short resumes (a reconnect after a blip, a
/// drained replica's clients) are served from memory instead of a JetStream consumer each.
#[derive(Default)]
struct Recent {
    /// Every deliverable event above this offset is in `events` (undecodable ones, which no
    /// replay delivers either, are skipped).
    covered_after: u64,
    /// The last offset the live feed read, deliverable or not.
    seen: u64,
    events: VecDeque<Arc<RecentEvent>>,
    bytes: usize,
}

type Index = HashMap<EntityId, HashMap<Channel, Vec<Arc<Subscriber>>>>;

/// Subscriber index plus the position of the live feed on each stream.
pub struct Hub {
    index: RwLock<Index>,
    /// The last offset dispatched per stream (the `offset` of `subscribed`).
    heads: [AtomicU64; 3],
    /// Whether the upstream consumer of each stream is running.
    live: [AtomicBool; 3],
    /// The epoch of each stream as the upstream last read it (DESIGN §7): its creation time.
    epochs: [RwLock<Arc<str>>; 3],
    next_id: AtomicU64,
    pending_capacity: usize,
    pending_max_bytes: usize,
    dispatched: AtomicU64,
    /// Per stream: the recent window, at most `recent_max_events` events and
    /// `recent_max_bytes` (0 events: no window, every resume reads JetStream).
    recent: [Mutex<Recent>; 3],
    recent_max_events: usize,
    recent_max_bytes: usize,
}

/// How a new subscription starts.
pub enum Start {
    /// Live from the current head.
    Live,
    /// Replaying from after this offset: live events are dropped until [`Subscriber::hold`], then
    /// held until [`Subscriber::go_live`].
    Replay { after: u64 },
}

impl Hub {
    /// Live events held per replaying subscription: at most `pending_capacity`.
    pub fn new(pending_capacity: usize) -> Self {
        Self::bounded(pending_capacity, usize::MAX)
    }

    /// Live events held per replaying subscription: at most `pending_capacity` and
    /// `pending_max_bytes` bytes (beyond either, the connection gets `resync`).
    pub fn bounded(pending_capacity: usize, pending_max_bytes: usize) -> Self {
        Self {
            index: RwLock::default(),
            heads: Default::default(),
            live: Default::default(),
            epochs: Default::default(),
            next_id: AtomicU64::new(1),
            pending_capacity: pending_capacity.max(1),
            pending_max_bytes: pending_max_bytes.max(1),
            dispatched: AtomicU64::new(0),
            recent: Default::default(),
            recent_max_events: 0,
            recent_max_bytes: 0,
        }
    }

    /// Keeps each stream's most recent events, at most `max_events` and `max_bytes`, to serve
    /// resumes within them from memory.
    pub fn with_recent(mut self, max_events: usize, max_bytes: usize) -> Self {
        self.recent_max_events = max_events;
        self.recent_max_bytes = max_bytes;
        self
    }

    fn recent(&self, stream: StreamKind) -> MutexGuard<'_, Recent> {
        self.recent[stream_index(stream)].lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets the window: it covers the stream from `head` on.
    fn reset_recent(&self, stream: StreamKind, head: u64) {
        *self.recent(stream) = Recent { covered_after: head, seen: head, ..Recent::default() };
    }

    /// The live feed read `offset` (deliverable or not), before [`Self::remember`]. An offset
    /// beyond the next one means the stream dropped events before this replica read them (a
    /// stream at its limits): the window starts over after it, since it cannot serve those.
    pub fn observe(&self, stream: StreamKind, offset: u64) {
        let mut recent = self.recent(stream);
        if offset <= recent.seen {
            return; // read again after the feed was re-created
        }
        if offset != recent.seen + 1 {
            *recent = Recent { covered_after: offset - 1, seen: offset, ..Recent::default() };
            return;
        }
        recent.seen = offset;
    }

    /// Adds a live event to its stream's window, before it is dispatched: a resume that starts
    /// holding live events after the dispatch finds it there (see [`Subscriber::hold`]).
    pub fn remember(&self, stream: StreamKind, event: Arc<RecentEvent>) {
        let mut recent = self.recent(stream);
        // Only the event the feed has just read (see `observe`), once.
        if self.recent_max_events == 0
            || event.offset != recent.seen
            || recent.events.back().is_some_and(|last| last.offset >= event.offset)
        {
            return;
        }
        recent.bytes += event.weight();
        recent.events.push_back(event);
        while recent.events.len() > self.recent_max_events || recent.bytes > self.recent_max_bytes {
            let Some(oldest) = recent.events.pop_front() else {
                break;
            };
            recent.bytes -= oldest.weight();
            recent.covered_after = oldest.offset;
        }
    }

    /// The window's events after `since`, when it covers everything after `since` in the
    /// stream's current epoch (`since_epoch`, when the client named one); `None` otherwise.
    pub fn recent_after(
        &self,
        stream: StreamKind,
        since: u64,
        since_epoch: Option<&str>,
    ) -> Option<Vec<Arc<RecentEvent>>> {
        if self.recent_max_events == 0
            || since_epoch.is_some_and(|epoch| !runcast_eventlog::same_epoch(epoch, &self.epoch(stream)))
        {
            return None;
        }
        let recent = self.recent(stream);
        if since < recent.covered_after || since > recent.seen || !self.is_live(stream) {
            return None;
        }
        let from = recent.events.partition_point(|event| event.offset <= since);
        Some(recent.events.range(from..).cloned().collect())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn head(&self, stream: StreamKind) -> u64 {
        self.heads[stream_index(stream)].load(Ordering::Acquire)
    }

    /// The epoch the offsets of `stream` belong to (empty until the upstream first ran).
    pub fn epoch(&self, stream: StreamKind) -> Arc<str> {
        self.epochs[stream_index(stream)].read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Set by the upstream once it knows where the stream ends and which epoch it is in, before
    /// it dispatches.
    pub fn start_stream(&self, stream: StreamKind, head: u64, epoch: &str) {
        let _index = self.write();
        {
            let mut slot = self.epochs[stream_index(stream)].write().unwrap_or_else(std::sync::PoisonError::into_inner);
            if **slot != *epoch {
                *slot = Arc::from(epoch);
                // The first start (or another epoch): the window begins at the head.
                self.reset_recent(stream, head);
            }
        }
        let slot = &self.heads[stream_index(stream)];
        if head > slot.load(Ordering::Acquire) {
            slot.store(head, Ordering::Release);
        }
        self.live[stream_index(stream)].store(true, Ordering::Release);
    }

    /// The stream was re-created (another epoch, DESIGN §7): the head moves to the new stream's
    /// (even backwards), and every subscription of it leaves the live feed — its connection gets
    /// `resync` from offset 0 of the new epoch, since its offsets belong to the old one.
    pub fn restart_stream(&self, stream: StreamKind, head: u64, epoch: &str) {
        let index = self.write();
        *self.epochs[stream_index(stream)].write().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Arc::from(epoch);
        self.reset_recent(stream, head);
        self.heads[stream_index(stream)].store(head, Ordering::Release);
        for subscriber in index.values().flat_map(HashMap::values).flatten() {
            if subscriber.channel.stream() == stream {
                subscriber.epoch_lost.store(true, Ordering::Release);
                subscriber.outbound.force_overflow();
            }
        }
        self.live[stream_index(stream)].store(true, Ordering::Release);
    }

    pub fn stop_stream(&self, stream: StreamKind) {
        self.live[stream_index(stream)].store(false, Ordering::Release);
    }

    pub fn is_live(&self, stream: StreamKind) -> bool {
        self.live[stream_index(stream)].load(Ordering::Acquire)
    }

    pub fn all_live(&self) -> bool {
        StreamKind::ALL.into_iter().all(|kind| self.is_live(kind))
    }

    /// Adds a subscription. Returns it and the head of its stream at that instant: every event
    /// above the head will reach it live (or, in replay mode, after the replay).
    pub fn subscribe(
        &self,
        tenant: EntityId,
        channel: Channel,
        filters: Filters,
        outbound: Arc<Outbound>,
        protocol: Protocol,
        start: Start,
    ) -> (Arc<Subscriber>, u64) {
        let mut index = self.write();
        // Read under the write lock: dispatch moves the head while holding the read lock, so no
        // event can fall between the head and the registration.
        let head = self.head(channel.stream());
        let state = match start {
            Start::Live => SubState { last_offset: head, ..SubState::default() },
            Start::Replay { after } => SubState { last_offset: after, waiting: true, ..SubState::default() },
        };
        let subscriber = Arc::new(Subscriber {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            tenant: tenant.clone(),
            channel_name: channel.to_string(),
            channel: channel.clone(),
            unfiltered: filters.is_empty(),
            filters,
            protocol,
            outbound,
            pending_capacity: self.pending_capacity,
            pending_max_bytes: self.pending_max_bytes,
            state: Mutex::new(state),
            epoch_lost: AtomicBool::new(false),
        });
        index.entry(tenant).or_default().entry(channel).or_default().push(subscriber.clone());
        (subscriber, head)
    }

    pub fn unsubscribe(&self, subscriber: &Subscriber) {
        let mut index = self.write();
        let Some(channels) = index.get_mut(&subscriber.tenant) else {
            return;
        };
        if let Some(list) = channels.get_mut(&subscriber.channel) {
            list.retain(|s| s.id != subscriber.id);
            if list.is_empty() {
                channels.remove(&subscriber.channel);
            }
        }
        if channels.is_empty() {
            index.remove(&subscriber.tenant);
        }
    }

    /// Delivers one live event to every matching subscriber and advances the stream's head.
    pub fn dispatch(&self, dispatch: &Dispatch<'_>) {
        let index = self.read();
        if let Some(channels) = index.get(&dispatch.routing.tenant) {
            for channel in dispatch.routing.channels() {
                let Some(subscribers) = channels.get(&channel) else {
                    continue;
                };
                // One encoding per protocol per channel, shared by every recipient.
                let mut shared: [Option<Payload>; Protocol::COUNT] = Default::default();
                for subscriber in subscribers {
                    if !subscriber.matches(dispatch.event) {
                        continue;
                    }
                    let bytes = shared[subscriber.protocol.index()]
                        .get_or_insert_with(|| dispatch.encode(&subscriber.channel_name, subscriber.protocol))
                        .clone();
                    subscriber.offer(dispatch.offset, dispatch.frame(subscriber, bytes));
                }
            }
        }
        let slot = &self.heads[stream_index(dispatch.routing.stream)];
        if dispatch.offset > slot.load(Ordering::Acquire) {
            slot.store(dispatch.offset, Ordering::Release);
        }
        drop(index);
        self.dispatched.fetch_add(1, Ordering::Relaxed);
    }

    /// Subscriptions per channel kind, of one tenant or of all, for `/ws/stats`.
    pub fn subscriptions_by_kind(&self, tenant: Option<&EntityId>) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        let index = self.read();
        let tenants: Vec<&HashMap<Channel, Vec<Arc<Subscriber>>>> = match tenant {
            Some(tenant) => index.get(tenant).into_iter().collect(),
            None => index.values().collect(),
        };
        for channels in tenants {
            for (channel, list) in channels {
                *counts.entry(channel.kind_name()).or_insert(0) += list.len();
            }
        }
        counts
    }

    pub fn dispatched(&self) -> u64 {
        self.dispatched.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runcast_contract::gateway::RawFilters;

    fn id(value: &str) -> EntityId {
        EntityId::parse("id", value).expect("valid id")
    }

    struct Published {
        routing: Routing,
        event: Event,
    }

    fn published(tenant: &str, execution: &str, kind: EventType) -> Published {
        let event = Event {
            tenant_id: tenant.into(),
            execution_id: execution.into(),
            workflow_id: "wf".into(),
            r#type: kind.into(),
            ..Default::default()
        };
        let routing = Routing::from_subject(StreamKind::Executions, &format!("exec.{tenant}.{execution}"), &event)
            .expect("routable");
        Published { routing, event }
    }

    fn dispatch(hub: &Hub, p: &Published, offset: u64) {
        hub.dispatch(&Dispatch::new(
            &p.routing,
            &p.event,
            offset,
            protocol::event_data(&p.event).expect("encodes"),
            None,
        ));
    }

    fn drain(outbound: &Outbound) -> Vec<serde_json::Value> {
        let mut frames = Vec::new();
        outbound.pop_batch(usize::MAX, &mut frames);
        frames.iter().map(|f| serde_json::from_slice(&f.payload).expect("json")).collect()
    }

    #[test]
    fn events_reach_exactly_the_matching_subscribers_of_their_tenant() {
        let hub = Hub::new(16);
        let all = Outbound::new(16);
        let one = Outbound::new(16);
        let other_tenant = Outbound::new(16);
        let filtered = Outbound::new(16);
        hub.subscribe(id("acme"), Channel::Executions, Filters::default(), all.clone(), Protocol::Json, Start::Live);
        hub.subscribe(
            id("acme"),
            Channel::Execution(id("e2")),
            Filters::default(),
            one.clone(),
            Protocol::Json,
            Start::Live,
        );
        hub.subscribe(
            id("globex"),
            Channel::Executions,
            Filters::default(),
            other_tenant.clone(),
            Protocol::Json,
            Start::Live,
        );
        let types =
            Filters::parse(RawFilters { types: vec!["execution.failed".into()], ..Default::default() }).expect("valid");
        hub.subscribe(id("acme"), Channel::Executions, types, filtered.clone(), Protocol::Json, Start::Live);

        dispatch(&hub, &published("acme", "e1", EventType::ExecutionStarted), 1);
        dispatch(&hub, &published("acme", "e2", EventType::ExecutionFailed), 2);

        let got = drain(&all);
        assert_eq!(got.iter().map(|v| v["offset"].as_u64()).collect::<Vec<_>>(), [Some(1), Some(2)]);
        assert_eq!(got[0]["channel"], "executions");
        assert_eq!(got[0]["type"], "execution.started");
        let got = drain(&one);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["channel"], "executions:e2");
        assert!(drain(&other_tenant).is_empty());
        assert_eq!(drain(&filtered).len(), 1);
        assert_eq!(hub.head(StreamKind::Executions), 2);
        assert_eq!(hub.subscriptions_by_kind(None).get("executions"), Some(&3));
    }

    #[test]
    fn replay_then_live_has_no_gap_and_no_duplicate() {
        let hub = Hub::new(16);
        let outbound = Outbound::new(64);
        dispatch(&hub, &published("acme", "e1", EventType::ExecutionStarted), 10);
        let (subscriber, head) = hub.subscribe(
            id("acme"),
            Channel::Executions,
            Filters::default(),
            outbound.clone(),
            Protocol::Json,
            Start::Replay { after: 7 },
        );
        assert_eq!(head, 10);
        subscriber.hold();
        // Live events arrive while the replay runs: held, not delivered.
        dispatch(&hub, &published("acme", "e1", EventType::ExecutionProgress), 11);
        dispatch(&hub, &published("acme", "e1", EventType::ExecutionProgress), 12);
        assert!(outbound.is_empty());
        // The replay reads 8..=11 (it overlaps the live feed by one).
        replay(&subscriber, 8..=11);
        assert_eq!(subscriber.go_live(subscribed), GoLive::Live);
        dispatch(&hub, &published("acme", "e1", EventType::ExecutionCompleted), 13);
        let got = drain(&outbound);
        let offsets: Vec<_> = got.iter().map(|v| v["offset"].as_u64().unwrap_or(0)).collect();
        assert_eq!(offsets, [8, 9, 10, 11, 11, 12, 13]);
        assert_eq!(got[4]["type"], "subscribed");
    }

    #[test]
    fn a_resume_waiting_for_its_replay_holds_nothing_and_the_replay_covers_what_passed() {
        let hub = Hub::new(2);
        let outbound = Outbound::new(256);
        let subscriber = resuming(&hub, &outbound);
        // Waiting for a replay slot: far more live events than could be held pass by.
        for offset in 1..=100 {
            dispatch(&hub, &published("acme", "e1", EventType::StepStarted), offset);
        }
        assert!(outbound.is_empty());
        assert!(outbound.take_overflow().is_none());
        subscriber.hold();
        // The replay starts: it reads the stream up to its head (100); 101 arrives meanwhile.
        dispatch(&hub, &published("acme", "e1", EventType::StepStarted), 101);
        replay(&subscriber, 1..=100);
        assert_eq!(subscriber.go_live(subscribed), GoLive::Live, "nothing held was dropped: no catch-up");
        let got = drain(&outbound);
        let offsets: Vec<_> = got.iter().filter_map(|v| v["offset"].as_u64()).collect();
        let expected: Vec<u64> = (1..=100).chain([100, 101]).collect();
        assert_eq!(offsets, expected, "every offset once, `subscribed` at 100, then 101");
    }

    #[test]
    fn the_recent_window_covers_what_it_holds_and_forgets_the_oldest_beyond_its_bounds() {
        let hub = Hub::new(16).with_recent(3, usize::MAX);
        hub.start_stream(StreamKind::Executions, 10, "2026-12-01T00:00:00Z");
        let offsets = |since: u64, epoch: Option<&str>| {
            hub.recent_after(StreamKind::Executions, since, epoch)
                .map(|events| events.iter().map(|event| event.offset).collect::<Vec<_>>())
        };
        assert_eq!(offsets(10, None), Some(vec![]), "from the head on, though empty");
        assert_eq!(offsets(9, None), None, "before the head it started at");
        for offset in 11..=15 {
            live_feed_reads(&hub, offset);
        }
        assert_eq!(offsets(12, None), Some(vec![13, 14, 15]));
        assert_eq!(offsets(11, None), None, "11 and 12 were forgotten: 12 is the first it can resume after");
        assert_eq!(offsets(15, Some("2026-12-01T00:00:00.000Z")), Some(vec![]), "the same epoch, spelt otherwise");
        assert_eq!(offsets(13, Some("2026-11-30T00:00:00Z")), None, "another epoch");
        assert_eq!(offsets(16, None), None, "beyond what it saw");
        hub.observe(StreamKind::Executions, 16); // undecodable: read, not kept
        assert_eq!(offsets(15, None), Some(vec![]), "nothing deliverable after 15");
        live_feed_reads(&hub, 19); // 17 and 18 were dropped by the stream before the feed read them
        assert_eq!(offsets(15, None), None, "the window cannot serve 17 and 18");
        assert_eq!(offsets(18, None), Some(vec![19]));
        hub.restart_stream(StreamKind::Executions, 0, "2026-12-02T00:00:00Z");
        assert_eq!(offsets(13, None), None, "a re-created stream starts a new window");
    }

    #[test]
    fn the_recent_window_is_bounded_in_bytes_too_and_can_be_off() {
        let one = recent_event(1).weight();
        let hub = Hub::new(16).with_recent(100, 2 * one);
        hub.start_stream(StreamKind::Executions, 0, "e");
        for offset in 1..=5 {
            live_feed_reads(&hub, offset);
        }
        let held = hub.recent_after(StreamKind::Executions, 3, None).expect("covered");
        assert_eq!(held.iter().map(|event| event.offset).collect::<Vec<_>>(), [4, 5]);
        let off = Hub::new(16);
        off.start_stream(StreamKind::Executions, 0, "e");
        live_feed_reads(&off, 1);
        assert_eq!(off.recent_after(StreamKind::Executions, 0, None).map(|events| events.len()), None);
        assert_eq!(off.recent_after(StreamKind::Executions, 1, None).map(|events| events.len()), None, "off");
    }

    /// A subscription of `executions` resuming after offset 0.
    fn resuming(hub: &Hub, outbound: &Arc<Outbound>) -> Arc<Subscriber> {
        let (subscriber, _) = hub.subscribe(
            id("acme"),
            Channel::Executions,
            Filters::default(),
            outbound.clone(),
            Protocol::Json,
            Start::Replay { after: 0 },
        );
        subscriber
    }

    /// The replay of `offsets` to `subscriber`, each event queued.
    fn replay(subscriber: &Subscriber, offsets: std::ops::RangeInclusive<u64>) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("rt");
        for offset in offsets {
            let p = published("acme", "e1", EventType::StepStarted);
            let d = Dispatch::new(&p.routing, &p.event, offset, protocol::event_data(&p.event).expect("encodes"), None);
            assert!(runtime.block_on(subscriber.replayed(&d)));
        }
    }

    fn recent_event(offset: u64) -> RecentEvent {
        let p = published("acme", "e1", EventType::StepStarted);
        let data = protocol::event_data(&p.event).expect("encodes");
        RecentEvent::new(offset, p.routing, p.event, data)
    }

    /// What the upstream does with a deliverable event at `offset`, short of dispatching it.
    fn live_feed_reads(hub: &Hub, offset: u64) {
        hub.observe(StreamKind::Executions, offset);
        hub.remember(StreamKind::Executions, Arc::new(recent_event(offset)));
    }

    fn subscribed(offset: u64) -> Frame {
        Frame {
            payload: Protocol::Json.encode(&protocol::ServerMessage::Subscribed {
                timestamp: chrono::Utc::now(),
                channel: "executions".into(),
                offset,
                epoch: String::new(),
                recovered: None,
                replayed: None,
                reason: None,
                id: None,
            }),
            kind: FrameKind::Control { kind: "subscribed" },
        }
    }

    #[test]
    fn resumes_of_one_channel_share_each_recent_event_s_encoding() {
        let hub = Hub::new(16);
        let recent = recent_event(7);
        let (first, second) = (Outbound::new(16), Outbound::new(16));
        let (a, b) = (resuming(&hub, &first), resuming(&hub, &second));
        let frame_a = a.replay_recent_frame(&recent).expect("first delivery");
        let frame_b = b.replay_recent_frame(&recent).expect("first delivery");
        assert_eq!(frame_a.payload.as_ptr(), frame_b.payload.as_ptr(), "encoded once, shared");
        assert!(a.replay_recent_frame(&recent).is_none(), "an offset already given is skipped");
        let frame: serde_json::Value = serde_json::from_slice(&frame_a.payload).expect("json");
        assert_eq!((frame["channel"].as_str(), frame["offset"].as_u64()), (Some("executions"), Some(7)));
        // Another channel or protocol gets its own encoding, never the first one's.
        let (proto, _) = hub.subscribe(
            id("acme"),
            Channel::Executions,
            Filters::default(),
            Outbound::new(16),
            Protocol::Proto,
            Start::Replay { after: 0 },
        );
        let (one_execution, _) = hub.subscribe(
            id("acme"),
            Channel::parse("executions:e1").expect("channel"),
            Filters::default(),
            Outbound::new(16),
            Protocol::Json,
            Start::Replay { after: 0 },
        );
        let proto_frame = proto.replay_recent_frame(&recent).expect("delivered");
        assert_ne!(proto_frame.payload, frame_a.payload);
        let own: serde_json::Value =
            serde_json::from_slice(&one_execution.replay_recent_frame(&recent).expect("delivered").payload)
                .expect("json");
        assert_eq!(own["channel"], "executions:e1");
    }

    #[test]
    fn a_replay_slower_than_the_live_feed_reads_on_instead_of_resyncing_the_client() {
        // At most 2 live events are held while replaying.
        let hub = Hub::new(2);
        let outbound = Outbound::new(64);
        let subscriber = resuming(&hub, &outbound);
        subscriber.hold();
        // The replay source answers late: 1..=3 arrive live first, more than can be held.
        for offset in 1..=4 {
            dispatch(&hub, &published("acme", "e1", EventType::StepStarted), offset);
        }
        assert_eq!(subscriber.go_live(subscribed), GoLive::CatchUp { after: 0 }, "held events were dropped");
        assert!(outbound.is_empty(), "nothing is released before the replay read on");
        assert!(outbound.take_overflow().is_none(), "the client is not resynced");
        // The replay reads on to the stream's head; live events keep being held meanwhile.
        replay(&subscriber, 1..=4);
        dispatch(&hub, &published("acme", "e1", EventType::StepCompleted), 5);
        assert_eq!(subscriber.go_live(subscribed), GoLive::Live);
        let got = drain(&outbound);
        let offsets: Vec<_> = got.iter().map(|v| v["offset"].as_u64().unwrap_or(0)).collect();
        assert_eq!(offsets, [1, 2, 3, 4, 4, 5], "every offset once, in order, `subscribed` at 4");
        assert_eq!(got[4]["type"], "subscribed");
    }

    #[test]
    fn unsubscribing_stops_delivery_and_empties_the_index() {
        let hub = Hub::new(16);
        let outbound = Outbound::new(16);
        let (subscriber, _) = hub.subscribe(
            id("acme"),
            Channel::Approvals,
            Filters::default(),
            outbound.clone(),
            Protocol::Json,
            Start::Live,
        );
        dispatch(&hub, &published("acme", "e1", EventType::ApprovalRequired), 1);
        dispatch(&hub, &published("acme", "e1", EventType::ExecutionStarted), 2);
        assert_eq!(drain(&outbound).len(), 1, "only approval events are on approvals");
        hub.unsubscribe(&subscriber);
        dispatch(&hub, &published("acme", "e1", EventType::ApprovalGranted), 3);
        assert!(outbound.is_empty());
        assert!(hub.subscriptions_by_kind(None).is_empty());
    }

    #[test]
    fn a_re_created_stream_moves_the_head_back_and_takes_its_subscribers_off_the_feed() {
        let hub = Hub::new(16);
        hub.start_stream(StreamKind::Executions, 40, "2026-11-01T00:00:00Z");
        hub.start_stream(StreamKind::Agents, 5, "2026-11-01T00:00:00Z");
        let (executions, _) = hub.subscribe(
            id("acme"),
            Channel::Executions,
            Filters::default(),
            Outbound::new(16),
            Protocol::Json,
            Start::Live,
        );
        let (agents, _) = hub.subscribe(
            id("acme"),
            Channel::Agents,
            Filters::default(),
            Outbound::new(16),
            Protocol::Json,
            Start::Live,
        );
        hub.restart_stream(StreamKind::Executions, 0, "2026-12-01T00:00:00Z");
        assert_eq!(hub.head(StreamKind::Executions), 0, "the new stream's head, even below the old one");
        assert_eq!(&*hub.epoch(StreamKind::Executions), "2026-12-01T00:00:00Z");
        assert!(hub.is_live(StreamKind::Executions));
        assert!(executions.epoch_lost());
        assert!(executions.outbound.take_overflow().is_some(), "its connection resyncs");
        assert!(!agents.epoch_lost(), "other streams are untouched");
        assert!(agents.outbound.take_overflow().is_none());
        assert_eq!(&*hub.epoch(StreamKind::Agents), "2026-11-01T00:00:00Z");
    }
}
