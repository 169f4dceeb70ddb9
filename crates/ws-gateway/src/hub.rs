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
use crate::filter::Filters;
use crate::outbound::{EventMeta, Frame, FrameKind, Outbound, Pushed};
use crate::protocol::{self, Protocol};
use bytes::Bytes;
use runcast_contract::v1::{Event, EventType};
use runcast_contract::{EntityId, StreamKind, WireEnum};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::Instant;

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
    data: Bytes,
    proto: OnceLock<Bytes>,
    received: Option<Instant>,
}

impl<'a> Dispatch<'a> {
    /// `event.offset` must already be `offset`; `data` is the event's JSON.
    pub fn new(routing: &'a Routing, event: &'a Event, offset: u64, data: Bytes, received: Option<Instant>) -> Self {
        Self { routing, event, offset, data, proto: OnceLock::new(), received }
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

    /// Progress and heartbeats may be replaced by a newer one of the same entity.
    fn coalesce_key(&self) -> Option<Arc<str>> {
        matches!(self.routing.event_type, EventType::ExecutionProgress | EventType::AgentHeartbeat)
            .then(|| Arc::from(self.routing.entity.as_str()))
    }

    /// The frame for one subscriber; `bytes` is the channel's shared encoding.
    fn frame(&self, subscriber: &Subscriber, bytes: Bytes) -> Frame {
        Frame {
            bytes,
            kind: FrameKind::Event(EventMeta {
                subscription: subscriber.id,
                offset: self.offset,
                event_type: self.event_type(),
                coalesce: self.coalesce_key(),
                received: self.received,
            }),
        }
    }

    fn encode(&self, channel: &str, protocol: Protocol) -> Bytes {
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
    /// `Some` while replaying: live events held until the replay is done.
    pending: Option<VecDeque<Frame>>,
}

/// One subscription of one connection.
pub struct Subscriber {
    pub id: u64,
    pub tenant: EntityId,
    pub channel: Channel,
    pub channel_name: String,
    pub filters: Filters,
    pub protocol: Protocol,
    pub outbound: Arc<Outbound>,
    pending_capacity: usize,
    state: Mutex<SubState>,
}

impl Subscriber {
    fn lock(&self) -> MutexGuard<'_, SubState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A live event (from the hub).
    fn offer(&self, offset: u64, frame: Frame) {
        let mut state = self.lock();
        // While replaying, everything is held: the replay may still move `last_offset` (even
        // backwards, when the offset turns out not to be recoverable); go_live deduplicates.
        if let Some(pending) = &mut state.pending {
            if pending.len() >= self.pending_capacity {
                // The client cannot even keep up with its replay: same outcome as a full queue.
                drop(state);
                self.outbound.force_overflow();
            } else {
                pending.push_back(frame);
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

    /// Sets the position the subscriber continues after (before a replay starts, or to the head
    /// when the requested offset cannot be recovered).
    pub fn set_position(&self, offset: u64) {
        self.lock().last_offset = offset;
    }

    /// A replayed event: waits for room in the queue. `false` when the connection is gone or has
    /// overflowed (the replay stops).
    pub async fn replayed(&self, dispatch: &Dispatch<'_>) -> bool {
        {
            let mut state = self.lock();
            if dispatch.offset <= state.last_offset {
                return true;
            }
            state.last_offset = dispatch.offset;
        }
        let frame = dispatch.frame(self, dispatch.encode(&self.channel_name, self.protocol));
        self.outbound.push_event_waiting(frame).await.is_some()
    }

    /// Ends the replay: queues `subscribed` (built from the offset the subscriber got to), then
    /// the live events that arrived meanwhile and were not replayed, and goes live.
    pub fn go_live(&self, subscribed: impl FnOnce(u64) -> Frame) {
        let mut state = self.lock();
        let pending = state.pending.take().unwrap_or_default();
        if !self.outbound.push_control(subscribed(state.last_offset)) {
            drop(state);
            self.outbound.force_overflow();
            return;
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
                break;
            }
        }
    }

    /// Whether an event on the subscriber's stream belongs to it (replay uses the same test as
    /// dispatch).
    pub fn wants(&self, routing: &Routing, event: &Event) -> bool {
        routing.tenant == self.tenant && routing.belongs_to(&self.channel) && self.filters.matches(event)
    }
}

type Index = HashMap<EntityId, HashMap<Channel, Vec<Arc<Subscriber>>>>;

/// Subscriber index plus the position of the live feed on each stream.
pub struct Hub {
    index: RwLock<Index>,
    /// The last offset dispatched per stream (the `offset` of `subscribed`).
    heads: [AtomicU64; 3],
    /// Whether the upstream consumer of each stream is running.
    live: [AtomicBool; 3],
    next_id: AtomicU64,
    pending_capacity: usize,
    dispatched: AtomicU64,
}

/// How a new subscription starts.
pub enum Start {
    /// Live from the current head.
    Live,
    /// Replaying from after this offset; live events are held until [`Subscriber::go_live`].
    Replay { after: u64 },
}

impl Hub {
    pub fn new(pending_capacity: usize) -> Self {
        Self {
            index: RwLock::default(),
            heads: Default::default(),
            live: Default::default(),
            next_id: AtomicU64::new(1),
            pending_capacity: pending_capacity.max(1),
            dispatched: AtomicU64::new(0),
        }
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

    /// Set by the upstream once it knows where the stream ends, before it dispatches.
    pub fn start_stream(&self, stream: StreamKind, head: u64) {
        let _index = self.write();
        let slot = &self.heads[stream_index(stream)];
        if head > slot.load(Ordering::Acquire) {
            slot.store(head, Ordering::Release);
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
            Start::Live => SubState { last_offset: head, pending: None },
            Start::Replay { after } => SubState { last_offset: after, pending: Some(VecDeque::new()) },
        };
        let subscriber = Arc::new(Subscriber {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            tenant: tenant.clone(),
            channel_name: channel.to_string(),
            channel: channel.clone(),
            filters,
            protocol,
            outbound,
            pending_capacity: self.pending_capacity,
            state: Mutex::new(state),
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
                let mut shared: [Option<Bytes>; Protocol::COUNT] = Default::default();
                for subscriber in subscribers {
                    if !subscriber.filters.matches(dispatch.event) {
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

    /// Subscriptions per channel kind, for `/ws/stats`.
    pub fn subscriptions_by_kind(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for channels in self.read().values() {
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
    use crate::filter::RawFilters;

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
        frames.iter().map(|f| serde_json::from_slice(&f.bytes).expect("json")).collect()
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
        assert_eq!(hub.subscriptions_by_kind().get("executions"), Some(&3));
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
        // Live events arrive while the replay runs: held, not delivered.
        dispatch(&hub, &published("acme", "e1", EventType::ExecutionProgress), 11);
        dispatch(&hub, &published("acme", "e1", EventType::ExecutionProgress), 12);
        assert!(outbound.is_empty());
        // The replay reads 8..=11 (it overlaps the live feed by one).
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("rt");
        for offset in 8..=11 {
            let p = published("acme", "e1", EventType::StepStarted);
            let d = Dispatch::new(&p.routing, &p.event, offset, protocol::event_data(&p.event).expect("encodes"), None);
            assert!(runtime.block_on(subscriber.replayed(&d)));
        }
        subscriber.go_live(|offset| Frame {
            bytes: protocol::Control { offset: Some(offset), ..protocol::Control::new("subscribed") }
                .encode(Protocol::Json),
            kind: FrameKind::Control { kind: "subscribed" },
        });
        dispatch(&hub, &published("acme", "e1", EventType::ExecutionCompleted), 13);
        let got = drain(&outbound);
        let offsets: Vec<_> = got.iter().map(|v| v["offset"].as_u64().unwrap_or(0)).collect();
        assert_eq!(offsets, [8, 9, 10, 11, 11, 12, 13]);
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
        assert!(hub.subscriptions_by_kind().is_empty());
    }
}
