//! The session on paused time, against the in-memory event log: no NATS, no PostgreSQL, no
//! socket. A test drives the session's inbound stream, publishes live events into the hub (and the
//! log, as upstream and JetStream would), and reads the frames the transport would write.

use super::*;
use crate::channel::Routing;
use crate::gateway::Limits;
use crate::hub::{Dispatch, Hub};
use crate::replay::Sources;
use runcast_contract::v1::{Event, EventType, ExecutionStatus};
use runcast_contract::{StreamKind, Topology};
use runcast_eventlog::{EventLog as _, MemoryLog};
use runcast_runtime::auth::{AuthArgs, Authenticator};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

const SECRET: &str = "session-tests";
const KIND: StreamKind = StreamKind::Executions;

fn limits() -> Limits {
    Limits {
        max_subscriptions: 8,
        max_messages_per_second: 5,
        max_frame_bytes: 64 * 1024,
        queue_capacity: 64,
        ping_interval: Duration::from_secs(30),
        write_timeout: Duration::from_secs(10),
        sse_heartbeat: Duration::from_secs(15),
        allowed_origins: Vec::new(),
        queue_bytes: 1 << 20,
        max_connections: 100,
        max_connections_per_tenant: 100,
        max_connections_per_subject: 100,
        max_replays_per_connection: 4,
        drain_reconnect_window: Duration::ZERO,
        compression: true,
    }
}

struct World {
    gw: Arc<Gateway>,
    log: Arc<MemoryLog>,
    /// Replica replay slots: a test may start with none to hold a resume back.
    slots: Arc<crate::fair_slots::FairSlots>,
}

impl World {
    fn new(limits: Limits, replay_slots: usize) -> Self {
        let log = Arc::new(MemoryLog::new(Topology::with_prefix("t").expect("prefix")));
        let hub = Arc::new(Hub::new(16));
        for kind in StreamKind::ALL {
            hub.start_stream(kind, 0, "2026-12-01T00:00:00Z");
        }
        let slots = Arc::new(crate::fair_slots::FairSlots::new(replay_slots));
        let sources = Sources {
            log: log.clone(),
            topology: Topology::with_prefix("t").expect("prefix"),
            batch: 2,
            slots: slots.clone(),
        };
        let authenticator = Authenticator::from_args(&AuthArgs::shared_secret(SECRET)).expect("authenticator");
        let gw =
            Arc::new(Gateway::new(hub, sources, authenticator, limits, CancellationToken::new(), TaskTracker::new()));
        Self { gw, log, slots }
    }

    /// Appends an event of execution `execution` to the log and dispatches it live, as upstream
    /// does with what JetStream delivers. Returns its offset.
    fn publish(&self, execution: &str, version: u64) -> u64 {
        let (event, subject, offset) = self.append_only(execution, version);
        self.dispatch(&event, &subject, offset);
        offset
    }

    /// Appends to the log only: an event JetStream holds that this replica has not received yet.
    fn append_only(&self, execution: &str, version: u64) -> (Event, String, u64) {
        let event = runcast_testkit::events::execution_event(
            "acme",
            execution,
            "nightly",
            version,
            EventType::ExecutionStarted,
            ExecutionStatus::Running,
        );
        let logged = self.log.append(KIND, &event);
        (event, logged.subject, logged.offset)
    }

    fn dispatch(&self, event: &Event, subject: &str, offset: u64) {
        let routing = Routing::from_subject(KIND, subject, event).expect("routable");
        let hub = &self.gw.hub;
        hub.observe(KIND, offset);
        let data = crate::protocol::event_data(event).expect("encodes");
        hub.dispatch(&Dispatch::new(&routing, event, offset, data, None));
    }

    fn connect(&self, expires_in: i64) -> Client {
        let token = runcast_testkit::token::token(SECRET, "ada", "acme", &["viewer"], expires_in);
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(axum::http::header::AUTHORIZATION, format!("Bearer {token}").parse().expect("header"));
        let admission = self.gw.admit(&headers, None, Transport::WebSocket).unwrap_or_else(|_| panic!("admitted"));
        let outbound = Outbound::bounded(self.gw.limits.queue_capacity, self.gw.limits.queue_bytes);
        let session = Session::new(self.gw.clone(), Protocol::Json, &admission, outbound.clone());
        let (inbound, messages) = mpsc::channel(256);
        let closed = CancellationToken::new();
        let task = tokio::spawn(session.run(tokio_stream_of(messages), closed.clone()));
        Client { inbound, outbound, task, _admission: admission, _closed: closed }
    }
}

fn tokio_stream_of(mut receiver: mpsc::Receiver<Inbound>) -> impl Stream<Item = Inbound> + Unpin {
    Box::pin(futures::stream::poll_fn(move |cx| receiver.poll_recv(cx)))
}

struct Client {
    inbound: mpsc::Sender<Inbound>,
    outbound: Arc<Outbound>,
    task: tokio::task::JoinHandle<()>,
    _admission: Admission,
    _closed: CancellationToken,
}

/// What the transport would write, decoded.
#[derive(Debug, PartialEq)]
enum Written {
    Json(Value),
    Close(u16),
}

impl Client {
    async fn send(&self, message: Value) {
        let bytes = Bytes::from(serde_json::to_vec(&message).expect("json"));
        self.inbound.send(Inbound::Text(bytes)).await.expect("the session reads");
    }

    /// Lets the session and its replays run until nothing is left to do (time is paused: only
    /// timers due by then fire).
    async fn settle(&self) {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    /// Everything queued so far.
    async fn written(&self) -> Vec<Written> {
        self.settle().await;
        let mut frames = Vec::new();
        self.outbound.pop_batch(usize::MAX, &mut frames);
        frames
            .into_iter()
            .map(|frame| match frame.kind {
                FrameKind::Close { code, .. } => Written::Close(code),
                _ => Written::Json(serde_json::from_slice(&frame.payload).expect("a JSON frame")),
            })
            .collect()
    }
}

fn types(written: &[Written]) -> Vec<String> {
    written
        .iter()
        .map(|w| match w {
            Written::Json(value) => value["type"].as_str().unwrap_or("?").to_owned(),
            Written::Close(code) => format!("close {code}"),
        })
        .collect()
}

fn offsets(written: &[Written]) -> Vec<u64> {
    written
        .iter()
        .filter_map(|w| match w {
            Written::Json(value) if !matches!(value["type"].as_str(), Some("subscribed" | "resync")) => {
                value["offset"].as_u64()
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn inbound_messages_beyond_the_rate_are_dropped_with_one_error_per_window_and_a_flood_closes() {
    let world = World::new(limits(), 4);
    let client = world.connect(3600);
    for id in 0..6 {
        client.send(json!({"type": "ping", "id": id})).await;
    }
    let written = client.written().await;
    assert_eq!(types(&written), ["pong", "pong", "pong", "pong", "pong", "error"]);
    let Written::Json(error) = &written[5] else { panic!("an error") };
    assert_eq!(error["code"], "rate_limited");

    // Within the same second, more is dropped silently.
    client.send(json!({"type": "ping"})).await;
    assert!(client.written().await.is_empty());

    // The next second has a fresh allowance.
    tokio::time::advance(Duration::from_secs(1)).await;
    for _ in 0..5 {
        client.send(json!({"type": "ping"})).await;
    }
    assert_eq!(types(&client.written().await), ["pong"; 5]);

    // Several times the allowance within one second: closed as a policy violation.
    tokio::time::advance(Duration::from_secs(1)).await;
    for _ in 0..21 {
        client.send(json!({"type": "ping"})).await;
    }
    let written = client.written().await;
    assert_eq!(written.last(), Some(&Written::Close(CloseCode::PolicyViolation.code())));
    assert_eq!(written.iter().filter(|w| matches!(w, Written::Json(v) if v["type"] == "pong")).count(), 5);
}

#[tokio::test(start_paused = true)]
async fn an_expiring_token_closes_the_connection_unless_renewed_in_band() {
    let world = World::new(limits(), 4);
    let expiring = world.connect(3);
    let renewed = world.connect(3);
    expiring.settle().await; // both sessions started: their expiry is set from now
    tokio::time::advance(Duration::from_secs(1)).await;
    let fresh = runcast_testkit::token::token(SECRET, "ada", "acme", &["viewer"], 600);
    renewed.send(json!({"type": "auth", "token": fresh, "id": 1})).await;
    let other_subject = runcast_testkit::token::token(SECRET, "eve", "acme", &["viewer"], 600);
    renewed.send(json!({"type": "auth", "token": other_subject, "id": 2})).await;
    let refused = renewed.written().await;
    assert_eq!(types(&refused), ["error"], "a renewal is silent; another subject's token is refused");
    let Written::Json(refused) = &refused[0] else { panic!("an error") };
    assert_eq!((refused["code"].as_str(), refused["id"].as_i64()), (Some("permission_denied"), Some(2)));

    assert!(expiring.written().await.is_empty(), "nothing before the expiry");
    tokio::time::advance(Duration::from_millis(2100)).await;
    let written = expiring.written().await;
    assert_eq!(types(&written), ["error", &format!("close {}", CloseCode::TokenExpired.code())]);
    let Written::Json(error) = &written[0] else { panic!("an error") };
    assert_eq!(error["code"], "unauthenticated");
    assert!(expiring.task.is_finished(), "the session ended");

    assert!(renewed.written().await.is_empty(), "the renewed connection stays open");
    assert!(!renewed.task.is_finished());
}

#[tokio::test(start_paused = true)]
async fn a_client_whose_queue_overflows_gets_resync_from_its_last_delivered_offset() {
    let world = World::new(Limits { queue_capacity: 4, ..limits() }, 4);
    let client = world.connect(3600);
    client.send(json!({"type": "subscribe", "channel": "executions"})).await;
    assert_eq!(types(&client.written().await), ["subscribed"]);
    let first = world.publish("e1", 1);
    let second = world.publish("e2", 1);
    assert_eq!(offsets(&client.written().await), [first, second], "delivered while the client reads");
    // The client stops reading; distinct executions cannot be coalesced.
    for n in 0..10 {
        world.publish(&format!("x{n}"), 1);
    }
    let written = client.written().await;
    let resync = written
        .iter()
        .find_map(|w| match w {
            Written::Json(value) if value["type"] == "resync" => Some(value.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("a resync in {written:?}"));
    assert_eq!(resync["channel"], "executions");
    assert_eq!(resync["offset"].as_u64(), Some(second), "resume from the last offset the client received");
    assert_eq!(resync["epoch"], "2026-12-01T00:00:00Z");
    // The subscription is gone: later events are not queued.
    world.publish("e3", 1);
    assert!(client.written().await.is_empty());
    assert!(!client.task.is_finished(), "a WebSocket stays open to subscribe again");
}

#[tokio::test(start_paused = true)]
async fn a_resume_replays_from_the_log_holds_live_events_meanwhile_and_goes_live_without_gap_or_duplicate() {
    // A queue of three events: the replay has to wait for the client, and a live event arrives
    // while it waits.
    let world = World::new(Limits { queue_capacity: 3, ..limits() }, 0);
    for version in 1..=5 {
        world.publish("e1", version);
    }
    let client = world.connect(3600);
    client.send(json!({"type": "subscribe", "channel": "executions:e1", "since_offset": 2})).await;
    client.settle().await;
    // Waiting for a replica slot: an event passing by now is in the log the replay reads.
    let (event, subject, sixth) = world.append_only("e1", 6);
    world.dispatch(&event, &subject, sixth);
    assert!(client.written().await.is_empty(), "nothing before a slot is free");
    world.slots.add_slot();

    let mut seen = Vec::new();
    let mut kinds = Vec::new();
    let mut published_live = false;
    for _ in 0..20 {
        let written = client.written().await;
        seen.extend(offsets(&written));
        kinds.extend(types(&written));
        if !published_live && !seen.is_empty() {
            // The replay is under way (it waits for room): this one is held, then released.
            world.publish("e1", 7);
            published_live = true;
        }
        if kinds.iter().any(|kind| kind == "subscribed") && seen.contains(&7) {
            break;
        }
    }
    world.publish("e1", 8);
    let written = client.written().await;
    seen.extend(offsets(&written));
    kinds.extend(types(&written));
    assert_eq!(seen, [3, 4, 5, 6, 7, 8], "replayed, then held, then live: each once, in order ({kinds:?})");
    let subscribed = kinds.iter().position(|kind| kind == "subscribed").expect("subscribed");
    assert!(subscribed >= 4, "subscribed comes after the replayed events: {kinds:?}");
    assert_eq!(world.log.bounds(KIND).await.expect("bounds").last, 8);
}

#[tokio::test(start_paused = true)]
async fn a_resume_older_than_the_stream_is_filled_from_the_history_and_an_unreachable_one_says_why() {
    let world = World::new(limits(), 4);
    for version in 1..=6 {
        world.publish("e1", version);
    }
    world.log.age_out(KIND, 5);
    let client = world.connect(3600);
    client.send(json!({"type": "subscribe", "channel": "executions:e1", "since_offset": 1})).await;
    let written = client.written().await;
    assert_eq!(offsets(&written), [2, 3, 4, 5, 6]);
    let Some(Written::Json(subscribed)) = written.last() else { panic!("subscribed last") };
    assert_eq!((subscribed["recovered"].as_bool(), subscribed["replayed"].as_u64()), (Some(true), Some(5)));

    world.log.drop_history_before(KIND, 3);
    client.send(json!({"type": "subscribe", "channel": "executions", "since_offset": 1})).await;
    let written = client.written().await;
    assert!(offsets(&written).is_empty(), "nothing replayed: {written:?}");
    let Some(Written::Json(subscribed)) = written.last() else { panic!("subscribed") };
    assert_eq!(subscribed["recovered"], false);
    assert_eq!(subscribed["reason"], "too_old");
    assert_eq!(subscribed["offset"].as_u64(), Some(6), "live from the head");
}

#[test]
fn reconnect_delays_spread_over_the_drain_window() {
    let window = Duration::from_secs(2);
    assert_eq!(reconnect_delay_ms(Duration::ZERO, 12345), 0, "no window: at once");
    assert_eq!(reconnect_delay_ms(window, 2_000), 0);
    assert_eq!(reconnect_delay_ms(window, 3_999), 1_999);
    // Many draws land in every quarter of the window, none beyond it.
    let mut quarters = [0u32; 4];
    for _ in 0..4_000 {
        let delay = reconnect_delay_ms(window, random_u64());
        assert!(delay < 2_000, "{delay}");
        quarters[(delay / 500) as usize] += 1;
    }
    assert!(quarters.iter().all(|&n| (700..=1_300).contains(&n)), "not uniform: {quarters:?}");
}
