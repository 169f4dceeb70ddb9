//! What both tests share: tokens, the services as ready processes, a "load balancer" over the
//! live gateways, and light WebSocket / SSE clients that resume from their last offset and record
//! every offset they receive.

use futures::{SinkExt, StreamExt};
use runcast_testkit::eventually;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::{Message, protocol::WebSocketConfig};
use tokio_util::sync::CancellationToken;

pub(crate) const SECRET: &str = "e2e-test-secret";
pub(crate) const TENANT: &str = "acme";
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) fn token(subject: &str, roles: &[&str]) -> String {
    runcast_testkit::token::token(SECRET, subject, TENANT, roles, 3_600)
}

/// A client of the api's `ExecutionService`.
pub(crate) type Client = runcast_contract::v1::execution_service_client::ExecutionServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, runcast_contract::client::Bearer>,
>;

/// A client of `api` with an admin ("writer") token; its requests time out after 20 s.
pub(crate) async fn writer(api: &mut runcast_testkit::ServiceProcess) -> Client {
    let grpc = api.addr("grpc_addr").await.expect("grpc address");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .expect("endpoint")
        .timeout(Duration::from_secs(20))
        .connect()
        .await
        .expect("api reachable");
    let bearer = runcast_contract::client::Bearer::new(Some(&token("writer", &["admin"]))).expect("bearer");
    runcast_contract::v1::execution_service_client::ExecutionServiceClient::with_interceptor(channel, bearer)
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A plain load balancer: round robin over the gateways that are up (a draining one is taken out
/// before its SIGTERM, as a readiness probe would).
#[derive(Default)]
pub(crate) struct Balancer {
    gateways: Mutex<Vec<Option<SocketAddr>>>,
    next: AtomicUsize,
}

impl Balancer {
    pub(crate) fn set(&self, index: usize, addr: Option<SocketAddr>) {
        let mut gateways = lock(&self.gateways);
        if gateways.len() <= index {
            gateways.resize(index + 1, None);
        }
        gateways[index] = addr;
    }

    pub(crate) fn pick(&self) -> Option<SocketAddr> {
        let live: Vec<SocketAddr> = lock(&self.gateways).iter().flatten().copied().collect();
        if live.is_empty() {
            return None;
        }
        Some(live[self.next.fetch_add(1, Ordering::Relaxed) % live.len()])
    }

    /// The gateway at `index` of the current list.
    pub(crate) fn get(&self, index: usize) -> Option<SocketAddr> {
        lock(&self.gateways).get(index).copied().flatten()
    }
}

/// What one client saw.
#[derive(Default)]
pub(crate) struct Tracker {
    /// Offsets of the events received, in arrival order.
    pub offsets: Mutex<Vec<u64>>,
    /// The head at the first `subscribed`: every event above it is due.
    pub start: Mutex<Option<u64>>,
    pub last: AtomicU64,
    /// Subscribed and not told to go away since.
    pub live: AtomicBool,
    pub connections: AtomicU64,
    /// Subscriptions the gateway answered `unavailable` (retried): JetStream was electing.
    pub unavailable: AtomicU64,
    pub problems: Mutex<Vec<String>>,
    /// Drops the connection once, as a network blip would: the client resumes from its offset.
    pub kick: tokio::sync::Notify,
}

impl Tracker {
    fn problem(&self, what: String) {
        lock(&self.problems).push(what);
    }

    fn event(&self, offset: u64) {
        let last = self.last.load(Ordering::Acquire);
        if offset <= last {
            self.problem(format!("offset {offset} after {last} (duplicate or out of order)"));
            return;
        }
        self.last.store(offset, Ordering::Release);
        lock(&self.offsets).push(offset);
    }

    fn subscribed(&self, head: u64, resuming: bool, message: &Value) {
        if resuming {
            if message["recovered"] != true {
                self.problem(format!("resume not recovered: {message}"));
            }
        } else {
            let mut start = lock(&self.start);
            if start.is_none() {
                *start = Some(head);
                self.last.store(head, Ordering::Release);
            }
        }
        self.live.store(true, Ordering::Release);
    }

    /// Checks the client saw exactly the offsets of `due` above its start, each once, in order,
    /// except coalesced ones: an offset of `coalescable` (a progress or heartbeat event, mapped to
    /// its entity) may be missing when the client received a later one of the same entity, which
    /// replaced it while the client was behind (newest wins, DESIGN §4). Returns the offsets
    /// received and how many were coalesced.
    pub(crate) fn verify(
        &self,
        name: &str,
        due: &BTreeSet<u64>,
        coalescable: &HashMap<u64, String>,
    ) -> Result<Delivered, String> {
        let problems = lock(&self.problems).clone();
        if !problems.is_empty() {
            return Err(format!("{name}: {problems:?}"));
        }
        let start = lock(&self.start).ok_or_else(|| format!("{name} never subscribed"))?;
        let offsets = lock(&self.offsets).clone();
        if offsets.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err(format!("{name}: offsets not strictly increasing"));
        }
        let seen: BTreeSet<u64> = offsets.iter().copied().collect();
        let expected: BTreeSet<u64> = due.range(start + 1..).copied().collect();
        // The newest offset received of each coalescable entity.
        let mut newest: HashMap<&str, u64> = HashMap::new();
        for offset in &seen {
            if let Some(entity) = coalescable.get(offset) {
                newest.insert(entity, *offset);
            }
        }
        let superseded = |offset: &u64| {
            coalescable
                .get(offset)
                .is_some_and(|entity| newest.get(entity.as_str()).is_some_and(|newer| newer > offset))
        };
        let (coalesced, missing): (Vec<u64>, Vec<u64>) =
            expected.difference(&seen).partition(|offset| superseded(offset));
        let unexpected: Vec<u64> = seen.difference(&expected).copied().take(20).collect();
        if missing.is_empty() && unexpected.is_empty() {
            Ok(Delivered { received: offsets.len(), coalesced: coalesced.len() })
        } else {
            let missing: Vec<u64> = missing.into_iter().take(20).collect();
            Err(format!(
                "{name} (from offset {start}): missing {missing:?}, unexpected {unexpected:?} ({} coalesced)",
                coalesced.len()
            ))
        }
    }
}

/// What [`Tracker::verify`] found a client received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delivered {
    pub received: usize,
    /// Progress events replaced by a newer one of their execution while the client was behind.
    pub coalesced: usize,
}

/// When clients reconnected, to measure the rate.
#[derive(Default)]
pub(crate) struct Reconnects {
    pub at: Mutex<Vec<Instant>>,
}

impl Reconnects {
    fn record(&self) {
        lock(&self.at).push(Instant::now());
    }

    /// The most reconnects within any `window`.
    pub(crate) fn peak(&self, window: Duration) -> usize {
        let mut at = lock(&self.at).clone();
        at.sort();
        let mut peak = 0;
        let mut first = 0;
        for last in 0..at.len() {
            while at[last].duration_since(at[first]) >= window {
                first += 1;
            }
            peak = peak.max(last - first + 1);
        }
        peak
    }

    pub(crate) fn count(&self) -> usize {
        lock(&self.at).len()
    }
}

/// The parts of a server frame the clients look at.
#[derive(serde::Deserialize)]
struct Frame {
    r#type: String,
    offset: Option<u64>,
    retry_after_ms: Option<u64>,
    code: Option<String>,
}

fn small_buffers() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0).max_write_buffer_size(64 * 1024)
}

/// A WebSocket client on `channel`: connects through `balancer`, resumes with `since_offset` after
/// any disconnect (after `retry_after_ms` when the gateway sent `reconnect`), until `stop`.
pub(crate) async fn ws_client(
    balancer: Arc<Balancer>,
    channel: String,
    token: String,
    tracker: Arc<Tracker>,
    reconnects: Arc<Reconnects>,
    stop: CancellationToken,
) {
    let mut first = true;
    let mut backoff = Duration::from_millis(50);
    while !stop.is_cancelled() {
        let Some(addr) = balancer.pick() else {
            tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(backoff) => {} }
            continue;
        };
        if !first {
            reconnects.record();
        }
        let url = format!("ws://{addr}/ws?token={token}");
        let connected = tokio::select! {
            _ = stop.cancelled() => return,
            connected = tokio_tungstenite::connect_async_with_config(url, Some(small_buffers()), true) => connected,
        };
        let mut socket = match connected {
            Ok((socket, _)) => socket,
            Err(_) => {
                tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(backoff) => {} }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        tracker.connections.fetch_add(1, Ordering::Relaxed);
        let resuming = !first;
        let mut subscribe = json!({"type": "subscribe", "channel": channel});
        if resuming {
            subscribe["since_offset"] = tracker.last.load(Ordering::Acquire).into();
        }
        first = false;
        if socket.send(Message::text(subscribe.to_string())).await.is_err() {
            continue;
        }
        let mut wait = Duration::ZERO;
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => {
                    let _ = socket.close(None).await;
                    return;
                }
                _ = tracker.kick.notified() => break,
                message = socket.next() => message,
            };
            let text = match message {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => continue,
            };
            let Ok(frame) = serde_json::from_str::<Frame>(&text) else {
                tracker.problem(format!("unparsable frame {text}"));
                continue;
            };
            match frame.r#type.as_str() {
                kind if kind.contains('.') => tracker.event(frame.offset.unwrap_or(0)),
                "subscribed" => {
                    let message: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    tracker.subscribed(frame.offset.unwrap_or(0), resuming, &message);
                }
                "reconnect" => {
                    wait = Duration::from_millis(frame.retry_after_ms.unwrap_or(0));
                    tracker.live.store(false, Ordering::Release);
                    break;
                }
                "pong" => {}
                // The stream cannot be read right now (a leader election): subscribe again.
                "error" if frame.code.as_deref() == Some("unavailable") => {
                    tracker.unavailable.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let mut again = json!({"type": "subscribe", "channel": channel});
                    if lock(&tracker.start).is_some() {
                        again["since_offset"] = tracker.last.load(Ordering::Acquire).into();
                    }
                    if socket.send(Message::text(again.to_string())).await.is_err() {
                        break;
                    }
                }
                other => tracker.problem(format!("unexpected {other}: {text}")),
            }
        }
        tracker.live.store(false, Ordering::Release);
        drop(socket);
        let wait = if wait.is_zero() { Duration::from_millis(50) } else { wait };
        tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(wait) => {} }
    }
}

/// An SSE client on `channel` through `balancer`, resuming with `Last-Event-ID`.
pub(crate) async fn sse_client(
    balancer: Arc<Balancer>,
    channel: String,
    token: String,
    tracker: Arc<Tracker>,
    stop: CancellationToken,
) {
    let http = reqwest::Client::new();
    let mut first = true;
    while !stop.is_cancelled() {
        let Some(addr) = balancer.pick() else {
            tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(Duration::from_millis(100)) => {} }
            continue;
        };
        let mut request =
            http.get(format!("http://{addr}/sse?channel={channel}")).header("authorization", format!("Bearer {token}"));
        let resuming = !first;
        if resuming {
            request = request.header("last-event-id", tracker.last.load(Ordering::Acquire).to_string());
        }
        let response = tokio::select! {
            _ = stop.cancelled() => return,
            response = request.send() => response,
        };
        if response.as_ref().is_ok_and(|r| r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE) {
            tracker.unavailable.fetch_add(1, Ordering::Relaxed);
        }
        let Ok(response) = response.and_then(reqwest::Response::error_for_status) else {
            tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(Duration::from_millis(200)) => {} }
            continue;
        };
        first = false;
        tracker.connections.fetch_add(1, Ordering::Relaxed);
        let mut body = response.bytes_stream();
        let mut pending = String::new();
        let (mut event, mut retry) = (String::new(), Duration::from_millis(100));
        'stream: loop {
            let chunk = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tracker.kick.notified() => break,
                chunk = body.next() => chunk,
            };
            let Some(Ok(chunk)) = chunk else { break };
            pending.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = pending.find('\n') {
                let line: String = pending.drain(..=end).collect();
                let line = line.trim_end_matches('\n');
                if let Some(kind) = line.strip_prefix("event: ") {
                    event = kind.to_owned();
                } else if let Some(ms) = line.strip_prefix("retry: ") {
                    retry = Duration::from_millis(ms.parse().unwrap_or(100));
                } else if let Some(data) = line.strip_prefix("data: ") {
                    let message: Value = serde_json::from_str(data).unwrap_or(Value::Null);
                    match event.as_str() {
                        kind if kind.contains('.') => tracker.event(message["offset"].as_u64().unwrap_or(0)),
                        "subscribed" => tracker.subscribed(message["offset"].as_u64().unwrap_or(0), resuming, &message),
                        "reconnect" => {
                            tracker.live.store(false, Ordering::Release);
                            break 'stream;
                        }
                        // Not served right now (a leader election): the gateway ends the stream
                        // and the client comes back with Last-Event-ID.
                        "error" if message["code"] == "unavailable" => {
                            tracker.unavailable.fetch_add(1, Ordering::Relaxed);
                        }
                        other => tracker.problem(format!("unexpected SSE {other}: {data}")),
                    }
                }
            }
        }
        tracker.live.store(false, Ordering::Release);
        tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(retry) => {} }
    }
}

/// Waits until every tracker has seen `offset` (or more), at most `timeout`.
pub(crate) async fn wait_caught_up(
    trackers: &[(String, Arc<Tracker>)],
    offset: impl Fn(&str) -> u64,
    timeout: Duration,
) {
    let result = eventually("every client to receive the last event", timeout, || {
        let behind: Vec<String> = trackers
            .iter()
            .filter(|(name, tracker)| tracker.last.load(Ordering::Acquire) < offset(name))
            .map(|(name, tracker)| format!("{name} at {} < {}", tracker.last.load(Ordering::Acquire), offset(name)))
            .take(10)
            .collect();
        async move { behind.is_empty().then_some(()) }
    })
    .await;
    if let Err(err) = result {
        let behind: Vec<String> = trackers
            .iter()
            .filter(|(name, tracker)| tracker.last.load(Ordering::Acquire) < offset(name))
            .map(|(name, tracker)| {
                format!(
                    "{name} at {} < {} problems {:?}",
                    tracker.last.load(Ordering::Acquire),
                    offset(name),
                    lock(&tracker.problems)
                )
            })
            .take(10)
            .collect();
        panic!("{err}: {behind:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tracker that subscribed at `start` and then received `offsets`.
    fn received(start: u64, offsets: &[u64]) -> Tracker {
        let tracker = Tracker::default();
        tracker.subscribed(start, false, &Value::Null);
        for offset in offsets {
            tracker.event(*offset);
        }
        tracker
    }

    #[test]
    fn a_progress_event_may_be_missing_only_where_a_later_one_of_its_execution_arrived() {
        let due: BTreeSet<u64> = (1..=6).collect();
        // 2, 3 and 5 are progress of "a"; 4 progress of "b"; 1 and 6 other events.
        let coalescable: HashMap<u64, String> = [(2, "a"), (3, "a"), (4, "b"), (5, "a")]
            .into_iter()
            .map(|(offset, entity)| (offset, entity.to_owned()))
            .collect();

        let all = received(0, &[1, 2, 3, 4, 5, 6]);
        assert_eq!(all.verify("all", &due, &coalescable), Ok(Delivered { received: 6, coalesced: 0 }));
        // 2 and 3 replaced by 5 (newest of "a").
        let behind = received(0, &[1, 4, 5, 6]);
        assert_eq!(behind.verify("behind", &due, &coalescable), Ok(Delivered { received: 4, coalesced: 2 }));
        // The newest progress of "a" itself missing: a gap, not coalescing.
        let lost_newest = received(0, &[1, 2, 3, 4, 6]);
        assert!(lost_newest.verify("lost_newest", &due, &coalescable).is_err_and(|err| err.contains("missing [5]")));
        // "b" has no later progress to replace 4.
        let lost_other = received(0, &[1, 2, 3, 5, 6]);
        assert!(lost_other.verify("lost_other", &due, &coalescable).is_err_and(|err| err.contains("missing [4]")));
        // A missing event that is not progress is a gap whatever follows.
        let lost_step = received(0, &[2, 3, 4, 5, 6]);
        assert!(lost_step.verify("lost_step", &due, &coalescable).is_err_and(|err| err.contains("missing [1]")));
        // Nothing before the start is due.
        let late = received(3, &[4, 5, 6]);
        assert_eq!(late.verify("late", &due, &coalescable), Ok(Delivered { received: 3, coalesced: 0 }));
    }
}
