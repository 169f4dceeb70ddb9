//! The gateway in-process on port 0 against real NATS and PostgreSQL, a token maker, an event
//! publisher that writes into NATS as the api would, and WebSocket / SSE clients.

use bytes::Bytes;
use clap::Parser;
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use runcast_contract::v1::{Event, EventType, ExecutionStatus};
use runcast_contract::{EntityId, StreamKind, Topology};
use runcast_testkit::{Infra, Isolation, ServiceProcess, events, eventually};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};
use tokio_util::sync::CancellationToken;
use ws_gateway::{Application, Config};

pub(crate) const SECRET: &str = "gateway-test-secret";
pub(crate) const WAIT: Duration = Duration::from_secs(20);

pub(crate) fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

pub(crate) fn token(tenant: &str, subject: &str, expires_in: i64) -> String {
    token_with_roles(tenant, subject, &["viewer"], expires_in)
}

pub(crate) fn token_with_roles(tenant: &str, subject: &str, roles: &[&str], expires_in: i64) -> String {
    runcast_testkit::token::token(SECRET, subject, tenant, roles, expires_in)
}

/// Servers plus one test's stream prefix and database.
pub(crate) struct World {
    pub infra: Infra,
    pub isolation: Isolation,
    pub jetstream: async_nats::jetstream::Context,
    pub topology: Topology,
}

impl World {
    pub(crate) async fn start() -> Self {
        let infra = Infra::start().await.expect("NATS and PostgreSQL start");
        let isolation = infra.isolate().await.expect("isolation");
        let nats = async_nats::connect(infra.nats.url()).await.expect("test client connects");
        let jetstream = async_nats::jetstream::new(nats.clone());
        let topology = Topology::with_prefix(&isolation.stream_prefix).expect("prefix");
        Self { infra, isolation, jetstream, topology }
    }

    /// The arguments every gateway of this world runs with, plus `extra`.
    pub(crate) fn args(&self, extra: &[(&str, &str)]) -> Vec<String> {
        let mut args = vec![
            "ws-gateway".to_owned(),
            "--http-addr=127.0.0.1:0".to_owned(),
            format!("--nats-url={}", self.infra.nats.url()),
            format!("--stream-prefix={}", self.isolation.stream_prefix),
            format!("--database-url={}", self.isolation.database_url),
            format!("--jwt-secret={SECRET}"),
            "--jwt-leeway-seconds=0".to_owned(),
            "--shutdown-grace=5s".to_owned(),
        ];
        // Without the window of recent events, resumes take the JetStream and PostgreSQL paths
        // these tests were written for; the tests of the window turn it on.
        if !extra.iter().any(|(k, _)| *k == "recent-events") {
            args.push("--recent-events=0".to_owned());
        }
        args.extend(extra.iter().map(|(k, v)| format!("--{k}={v}")));
        args
    }

    /// A gateway replica in this process.
    pub(crate) async fn gateway(&self, extra: &[(&str, &str)]) -> Gateway {
        let config = Config::try_parse_from(self.args(extra)).expect("configuration parses");
        let app = Application::build(config).await.expect("gateway builds");
        let addr = app.http_addr();
        let shutdown = CancellationToken::new();
        tokio::spawn(app.run_until_stopped(shutdown.clone()));
        let gateway = Gateway { addr, shutdown };
        gateway.wait_ready().await;
        gateway
    }

    /// A gateway replica as a process (for signals and resident memory), ready.
    pub(crate) async fn gateway_process(&self, extra: &[(&str, &str)]) -> (ServiceProcess, Gateway) {
        // As in `args` (a later RUNCAST_WS_RECENT_EVENTS in `extra` wins).
        let mut env = vec![("RUNCAST_WS_RECENT_EVENTS", "0")];
        env.extend_from_slice(extra);
        let mut process = self.infra.services(&self.isolation, SECRET).start("ws-gateway", &env).await;
        let gateway = Gateway { addr: process.addr("http_addr").await.expect("address"), shutdown: Default::default() };
        gateway.wait_ready().await;
        (process, gateway)
    }

    /// Publishes like the api: protobuf `Event`, `Nats-Msg-Id` = event id. Returns the offset.
    pub(crate) async fn publish(&self, event: &Event) -> u64 {
        self.publish_nowait(event).await.await.expect("publish acknowledged").sequence
    }

    pub(crate) async fn publish_nowait(&self, event: &Event) -> async_nats::jetstream::context::PublishAckFuture {
        self.publish_with_headers(event, async_nats::HeaderMap::new()).await
    }

    /// Publishes with `headers` (e.g. `traceparent`) besides `Nats-Msg-Id`.
    pub(crate) async fn publish_with_headers(
        &self,
        event: &Event,
        mut headers: async_nats::HeaderMap,
    ) -> async_nats::jetstream::context::PublishAckFuture {
        let (kind, entity) = match EventType::try_from(event.r#type).expect("type").stream() {
            StreamKind::Agents => (StreamKind::Agents, &event.agent_id),
            kind => (kind, &event.execution_id),
        };
        let subject = self.topology.entity_subject(
            kind,
            &EntityId::parse("tenant", &event.tenant_id).expect("tenant"),
            &EntityId::parse("entity", entity).expect("entity"),
        );
        headers.insert("Nats-Msg-Id", event.event_id.as_str());
        self.jetstream
            .publish_with_headers(subject, headers, Bytes::from(event.encode_to_vec()))
            .await
            .expect("publish sent")
    }

    /// Publishes many events with a bounded window of unacknowledged publishes.
    pub(crate) async fn publish_many(&self, events: impl IntoIterator<Item = Event>) -> Vec<u64> {
        let mut window = std::collections::VecDeque::new();
        let mut offsets = Vec::new();
        for event in events {
            window.push_back(self.publish_nowait(&event).await);
            if window.len() >= 500
                && let Some(ack) = window.pop_front()
            {
                offsets.push(ack.await.expect("ack").sequence);
            }
        }
        for ack in window {
            offsets.push(ack.await.expect("ack").sequence);
        }
        offsets
    }
}

pub(crate) struct Gateway {
    pub addr: SocketAddr,
    /// Stops an in-process gateway when dropped (unused for a process).
    pub shutdown: CancellationToken,
}

impl Gateway {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws{query}", self.addr)
    }

    /// An SSE stream of `channel` with a bearer token, past its `subscribed` event.
    pub(crate) async fn sse(&self, channel: &str, token: &str) -> SseClient {
        self.sse_accepting(channel, token, None).await
    }

    /// [`sse`](Self::sse) with `Accept-Encoding` as given.
    pub(crate) async fn sse_accepting(&self, channel: &str, token: &str, accept: Option<&str>) -> SseClient {
        let url = self.url(&format!("/sse?channel={channel}"));
        let mut headers = vec![("Authorization", format!("Bearer {token}"))];
        if let Some(accept) = accept {
            headers.push(("Accept-Encoding", accept.to_owned()));
        }
        let mut sse = SseClient::connect(&url, &headers).await;
        sse.until("subscribed").await;
        sse
    }

    async fn wait_ready(&self) {
        let url = self.url("/readyz");
        eventually("the gateway to be ready", WAIT, || {
            let url = url.clone();
            async move {
                let response = reqwest::get(&url).await.ok()?;
                (response.status() == 200).then_some(())
            }
        })
        .await
        .expect("gateway ready");
    }

    /// `/ws/stats` as an admin sees it (everything on the replica).
    pub(crate) async fn stats(&self) -> Value {
        self.stats_as(&token_with_roles("ops", "operator", &["admin"], 600)).await
    }

    /// `/ws/stats` with `token`.
    pub(crate) async fn stats_as(&self, token: &str) -> Value {
        let response =
            reqwest::Client::new().get(self.url("/ws/stats")).bearer_auth(token).send().await.expect("stats answer");
        assert_eq!(response.status(), 200, "stats with credentials");
        response.json().await.expect("stats are JSON")
    }

    pub(crate) async fn connect(&self, token: &str) -> WsClient {
        WsClient::connect(&self.ws_url(""), Some(("Authorization", format!("Bearer {token}")))).await
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

static EVENT_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// An execution event carrying the whole state, as the api publishes it.
pub(crate) fn execution_event(
    tenant: &str,
    execution: &str,
    workflow: &str,
    kind: EventType,
    status: ExecutionStatus,
) -> Event {
    let version = EVENT_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    Event {
        occurred_at: Some(prost_types::Timestamp { seconds: now(), nanos: 0 }),
        ..events::execution_event(tenant, execution, workflow, version, kind, status)
    }
}

pub(crate) fn agent_event(tenant: &str, agent: &str, kind: EventType) -> Event {
    events::agent_event(tenant, agent, 1, kind)
}

pub(crate) type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub(crate) struct WsClient {
    pub socket: Socket,
}

/// What the next frame was.
#[derive(Debug)]
pub(crate) enum Received {
    Json(Value),
    Closed(Option<u16>),
}

impl WsClient {
    pub(crate) async fn connect(url: &str, header: Option<(&str, String)>) -> Self {
        Self::try_connect(url, header).await.expect("upgrade accepted")
    }

    pub(crate) async fn try_connect(url: &str, header: Option<(&str, String)>) -> Result<Self, tungstenite::Error> {
        let mut request = url.into_client_request().expect("request");
        if let Some((name, value)) = header {
            request.headers_mut().insert(
                tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                value.parse().expect("value"),
            );
        }
        let (socket, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(Self { socket })
    }

    pub(crate) async fn send(&mut self, message: Value) {
        self.socket.send(tungstenite::Message::text(message.to_string())).await.expect("sent");
    }

    pub(crate) async fn send_raw(&mut self, text: String) {
        self.socket.send(tungstenite::Message::text(text)).await.expect("sent");
    }

    /// The next text frame or the close, skipping pings; fails the test after `WAIT`.
    pub(crate) async fn next(&mut self) -> Received {
        loop {
            let next = tokio::time::timeout(WAIT, self.socket.next()).await.expect("a frame arrives in time");
            match next {
                Some(Ok(tungstenite::Message::Text(text))) => {
                    return Received::Json(serde_json::from_str(&text).expect("JSON frame"));
                }
                Some(Ok(tungstenite::Message::Close(frame))) => {
                    return Received::Closed(frame.map(|f| u16::from(f.code)));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Received::Closed(None),
            }
        }
    }

    /// The next text frame as it came.
    pub(crate) async fn next_text(&mut self) -> String {
        loop {
            let next = tokio::time::timeout(WAIT, self.socket.next()).await.expect("a frame arrives in time");
            match next {
                Some(Ok(tungstenite::Message::Text(text))) => return text.as_str().to_owned(),
                Some(Ok(tungstenite::Message::Close(frame))) => panic!("closed: {frame:?}"),
                Some(Ok(_)) => continue,
                Some(Err(err)) => panic!("connection failed: {err}"),
                None => panic!("connection ended"),
            }
        }
    }

    pub(crate) async fn next_json(&mut self) -> Value {
        match self.next().await {
            Received::Json(value) => value,
            Received::Closed(code) => panic!("connection closed ({code:?}) while a message was expected"),
        }
    }

    /// Skips everything until a message of `kind`.
    pub(crate) async fn until(&mut self, kind: &str) -> Value {
        loop {
            let value = self.next_json().await;
            if value["type"] == kind {
                return value;
            }
        }
    }

    /// Subscribes and returns the `subscribed` reply (events before it are collected).
    pub(crate) async fn subscribe(&mut self, request: Value) -> (Value, Vec<Value>) {
        self.send(request).await;
        let mut before = Vec::new();
        loop {
            let value = self.next_json().await;
            match value["type"].as_str() {
                Some("subscribed") => return (value, before),
                Some("error") => panic!("subscription refused: {value}"),
                _ => before.push(value),
            }
        }
    }

    /// The next `n` event frames (anything with an `offset` and `data`).
    pub(crate) async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut events = Vec::with_capacity(n);
        while events.len() < n {
            let value = self.next_json().await;
            if value.get("data").is_some() && value["type"] != "snapshot" {
                events.push(value);
            }
        }
        events
    }

    pub(crate) async fn expect_close(&mut self) -> Option<u16> {
        loop {
            if let Received::Closed(code) = self.next().await {
                return code;
            }
        }
    }
}

/// One SSE record.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Value,
}

pub(crate) struct SseClient {
    stream: futures::stream::BoxStream<'static, reqwest::Result<Bytes>>,
    buffer: String,
    pub comments: usize,
    /// Inflates the body when it came gzip-compressed (`Content-Encoding: gzip`), chunk by chunk.
    gzip: Option<flate2::write::GzDecoder<Vec<u8>>>,
    /// Bytes received as sent (compressed or not).
    pub wire_bytes: usize,
}

impl SseClient {
    pub(crate) async fn connect(url: &str, headers: &[(&str, String)]) -> Self {
        let mut request = reqwest::Client::new().get(url);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.expect("SSE request");
        assert_eq!(response.status(), 200, "SSE accepted");
        let gzip = response.headers().get("content-encoding").is_some_and(|encoding| encoding == "gzip");
        let gzip = gzip.then(|| flate2::write::GzDecoder::new(Vec::new()));
        Self { stream: response.bytes_stream().boxed(), buffer: String::new(), comments: 0, gzip, wire_bytes: 0 }
    }

    pub(crate) fn is_gzip(&self) -> bool {
        self.gzip.is_some()
    }

    /// Once the stream ended: whether its gzip body ended whole (final block, trailer, CRC).
    pub(crate) fn gzip_ended_whole(&mut self) -> bool {
        self.gzip.as_mut().is_some_and(|gzip| gzip.try_finish().is_ok())
    }

    /// The next record; `None` when the stream ended.
    pub(crate) async fn next(&mut self) -> Option<Record> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut record = Record { id: None, event: None, data: Value::Null };
                let mut is_comment = true;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        record.id = Some(v.to_owned());
                        is_comment = false;
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        record.event = Some(v.to_owned());
                        is_comment = false;
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        record.data = serde_json::from_str(v).expect("JSON data");
                        is_comment = false;
                    }
                }
                if is_comment {
                    self.comments += 1;
                    continue;
                }
                return Some(record);
            }
            let chunk =
                tokio::time::timeout(WAIT, self.stream.next()).await.expect("SSE data arrives in time")?.ok()?;
            self.wire_bytes += chunk.len();
            let chunk = match self.gzip.as_mut() {
                Some(gzip) => {
                    use std::io::Write as _;
                    // Each chunk must inflate whole on its own: the next one may be long in coming.
                    gzip.write_all(&chunk).expect("a gzip chunk");
                    gzip.flush().expect("inflates");
                    Bytes::from(std::mem::take(gzip.get_mut()))
                }
                None => chunk,
            };
            self.buffer.push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
    }

    pub(crate) async fn until(&mut self, event: &str) -> Record {
        loop {
            let record = self.next().await.expect("stream open");
            if record.event.as_deref() == Some(event) {
                return record;
            }
        }
    }

    /// The next `n` records that carry an id (events).
    pub(crate) async fn events(&mut self, n: usize) -> Vec<Record> {
        let mut events = Vec::with_capacity(n);
        while events.len() < n {
            let record = self.next().await.expect("stream open");
            if record.id.is_some() {
                events.push(record);
            }
        }
        events
    }
}

pub(crate) fn offsets(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["offset"].as_u64().expect("offset")).collect()
}

pub(crate) fn assert_strictly_increasing(offsets: &[u64]) {
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "offsets must strictly increase: {offsets:?}");
}
