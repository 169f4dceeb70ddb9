//! `permessage-deflate` (RFC 7692) with a client that speaks it on the wire, as browsers do: the
//! handshake's answer, events and snapshots compressed once and inflating to the very bytes an
//! uncompressed connection gets, the client's compressed messages understood, and what breaks the
//! extension closed with the code that says why.

use crate::helpers::*;
use flate2::{Compress, Compression, FlushCompress};
use runcast_contract::v1::{EventType, ExecutionStatus, Step, StepStatus, event};
use runcast_loadgen::wsframe;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const OFFER: &str = "permessage-deflate; client_max_window_bits";
const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// One frame from the server: whether it was compressed, its opcode and its payload as sent.
struct ServerFrame {
    compressed: bool,
    opcode: u8,
    payload: Vec<u8>,
}

/// A WebSocket client written for this test: it offers compression and reads frames as bytes.
struct DeflateClient {
    socket: BufReader<TcpStream>,
    /// The 101's `Sec-WebSocket-Extensions`, if any.
    extensions: Option<String>,
}

impl DeflateClient {
    async fn connect(gateway: &Gateway, token: &str, offer: Option<&str>) -> Self {
        Self::connect_with(gateway, token, offer, None).await
    }

    async fn connect_with(gateway: &Gateway, token: &str, offer: Option<&str>, subprotocol: Option<&str>) -> Self {
        let stream = TcpStream::connect(gateway.addr).await.expect("connects");
        let mut socket = BufReader::new(stream);
        let offer = offer.map(|offer| format!("Sec-WebSocket-Extensions: {offer}\r\n")).unwrap_or_default();
        let offer = match subprotocol {
            Some(name) => format!("{offer}Sec-WebSocket-Protocol: {name}\r\n"),
            None => offer,
        };
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Authorization: Bearer {token}\r\n{offer}\r\n",
            gateway.addr
        );
        socket.get_mut().write_all(request.as_bytes()).await.expect("request sent");
        let mut status = String::new();
        socket.read_line(&mut status).await.expect("status line");
        assert!(status.starts_with("HTTP/1.1 101"), "{status}");
        let mut extensions = None;
        loop {
            let mut line = String::new();
            socket.read_line(&mut line).await.expect("header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("sec-websocket-extensions")
            {
                extensions = Some(value.trim().to_owned());
            }
        }
        Self { socket, extensions }
    }

    /// Sends one message as a single masked text frame, compressed when `compressed`.
    async fn send(&mut self, payload: &[u8], compressed: bool) {
        self.send_frame(wsframe::OP_TEXT, payload, compressed).await;
    }

    async fn send_frame(&mut self, opcode: u8, payload: &[u8], compressed: bool) {
        let (opcode, body) = match compressed {
            true => (wsframe::RSV1 | opcode, deflate(payload)),
            false => (opcode, payload.to_vec()),
        };
        let mut frame = Vec::new();
        wsframe::encode_masked(opcode, &body, [0x37, 0xfa, 0x21, 0x3d], &mut frame);
        self.socket.get_mut().write_all(&frame).await.expect("frame sent");
    }

    async fn send_json(&mut self, message: Value, compressed: bool) {
        self.send(message.to_string().as_bytes(), compressed).await;
    }

    async fn next_frame(&mut self) -> ServerFrame {
        tokio::time::timeout(WAIT, async {
            let mut head = [0u8; 2];
            self.socket.read_exact(&mut head).await.expect("frame header");
            assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
            let len = match head[1] & 0x7f {
                126 => u64::from(self.socket.read_u16().await.expect("length")),
                127 => self.socket.read_u64().await.expect("length"),
                short => u64::from(short),
            };
            let mut payload = vec![0; usize::try_from(len).expect("length")];
            self.socket.read_exact(&mut payload).await.expect("payload");
            assert_eq!(head[0] & 0x80, 0x80, "the gateway sends whole messages");
            ServerFrame { compressed: head[0] & 0x40 != 0, opcode: head[0] & 0x0f, payload }
        })
        .await
        .expect("a frame in time")
    }

    /// The next text message, inflated if it came compressed, skipping pings.
    async fn next_text(&mut self) -> (bool, String) {
        let (compressed, opcode, bytes) = self.next_message().await;
        assert_eq!(opcode, wsframe::OP_TEXT, "a JSON connection gets text messages");
        (compressed, String::from_utf8(bytes).expect("UTF-8"))
    }

    /// The next data message (whether it came compressed, its opcode, its bytes inflated),
    /// skipping pings.
    async fn next_message(&mut self) -> (bool, u8, Vec<u8>) {
        loop {
            let frame = self.next_frame().await;
            match frame.opcode {
                wsframe::OP_TEXT | wsframe::OP_BINARY => {
                    let bytes = match frame.compressed {
                        true => wsframe::Inflater::default().inflate(&frame.payload).expect("inflates").to_vec(),
                        false => frame.payload,
                    };
                    return (frame.compressed, frame.opcode, bytes);
                }
                wsframe::OP_CLOSE => panic!("closed: {:?}", close_code(&frame.payload)),
                _ => continue,
            }
        }
    }

    async fn until(&mut self, kind: &str) -> (bool, String) {
        loop {
            let (compressed, text) = self.next_text().await;
            let value: Value = serde_json::from_str(&text).expect("JSON");
            if value["type"] == kind {
                return (compressed, text);
            }
        }
    }

    /// The close code the gateway ends with.
    async fn close_code(&mut self) -> Option<u16> {
        loop {
            let frame = self.next_frame().await;
            if frame.opcode == 0x8 {
                return close_code(&frame.payload);
            }
        }
    }
}

fn close_code(payload: &[u8]) -> Option<u16> {
    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))
}

/// As a client compresses with no context takeover: a sync flush, its empty block left off.
fn deflate(message: &[u8]) -> Vec<u8> {
    let mut compressor = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(message.len() + 64);
    compressor.compress_vec(message, &mut out, FlushCompress::Sync).expect("compresses");
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// An execution event whose state lists `steps` steps: the kind of frame compression is for.
pub(crate) fn event_with_steps(execution: &str, steps: usize) -> runcast_contract::v1::Event {
    let mut event = execution_event("acme", execution, "nightly", EventType::StepCompleted, ExecutionStatus::Running);
    if let Some(event::State::Execution(state)) = event.state.as_mut() {
        state.steps = (0..steps)
            .map(|i| Step {
                step_id: format!("step-{i}"),
                name: format!("build the {i}th artifact"),
                status: StepStatus::Completed.into(),
                ..Default::default()
            })
            .collect();
    }
    event
}

#[tokio::test]
async fn a_client_offering_compression_gets_compressed_events_that_inflate_to_the_plain_frames() {
    let world = World::start().await;
    let gateway = world.gateway(&[]).await;
    let token = token("acme", "viewer", 600);

    let mut compressed = DeflateClient::connect(&gateway, &token, Some(OFFER)).await;
    assert_eq!(compressed.extensions.as_deref(), Some(ANSWER));
    let mut plain = gateway.connect(&token).await;

    // Its subscribe goes compressed, as a browser's would.
    let subscribe = json!({"type": "subscribe", "channel": "executions:e-big", "snapshot": true, "id": "s1"});
    compressed.send_json(subscribe.clone(), true).await;
    let (_, subscribed) = compressed.until("subscribed").await;
    assert_eq!(
        serde_json::from_str::<Value>(&subscribed).expect("JSON")["id"],
        "s1",
        "the inflated subscribe was read"
    );
    plain.subscribe(subscribe).await;

    let mut offsets = Vec::new();
    for steps in [40, 41, 42] {
        offsets.push(world.publish(&event_with_steps("e-big", steps)).await);
    }
    for (steps, offset) in [40, 41, 42].into_iter().zip(offsets) {
        let (was_compressed, text) = compressed.until("step.completed").await;
        let expected = plain.next_text().await;
        assert!(was_compressed, "a frame with {steps} steps goes compressed");
        assert_eq!(text, expected, "inflated, the very frame a plain connection gets");
        let value: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(value["offset"], offset);
        assert_eq!(value["data"]["state"]["steps"].as_array().map(Vec::len), Some(steps));
    }

    // A snapshot of the entity is compressed too; a short reply (pong) is not.
    compressed.send_json(json!({"type": "unsubscribe", "channel": "executions:e-big"}), true).await;
    compressed.until("unsubscribed").await;
    compressed.send_json(json!({"type": "subscribe", "channel": "executions:e-big", "snapshot": true}), false).await;
    let (snapshot_compressed, snapshot) = compressed.until("snapshot").await;
    assert!(snapshot_compressed, "{} bytes of snapshot", snapshot.len());
    compressed.send_json(json!({"type": "ping"}), true).await;
    let (pong_compressed, _) = compressed.until("pong").await;
    assert!(!pong_compressed, "too short to be worth compressing");

    // What operators see: one connection negotiated it, and what the compressed messages saved.
    let metrics = reqwest::get(gateway.url("/metrics")).await.expect("metrics").text().await.expect("text");
    let value = |series: &str| -> f64 {
        let line =
            metrics.lines().find(|line| line.starts_with(series)).unwrap_or_else(|| panic!("{series} in {metrics}"));
        line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("a number")
    };
    assert_eq!(value("runcast_ws_compression_negotiated_total"), 1.0);
    let plain = value("runcast_ws_compressed_bytes_total{form=\"plain\"}");
    let compressed_bytes = value("runcast_ws_compressed_bytes_total{form=\"compressed\"}");
    assert!(plain > 3.0 * compressed_bytes && compressed_bytes > 0.0, "{plain} bytes compressed to {compressed_bytes}");
}

#[tokio::test]
async fn protobuf_connections_get_compressed_binary_messages_too() {
    use prost::Message as _;
    use runcast_contract::v1::{GatewayClientMessage, GatewayServerMessage};
    let world = World::start().await;
    let gateway = world.gateway(&[]).await;
    let token = token("acme", "viewer", 600);
    let mut client = DeflateClient::connect_with(&gateway, &token, Some(OFFER), Some("runcast.v1.proto")).await;
    assert_eq!(client.extensions.as_deref(), Some(ANSWER));
    let subscribe = GatewayClientMessage {
        r#type: "subscribe".into(),
        id: "p".into(),
        channel: "executions:e-proto".into(),
        ..Default::default()
    };
    client.send_frame(wsframe::OP_BINARY, &subscribe.encode_to_vec(), true).await;
    let (_, opcode, bytes) = client.next_message().await;
    let subscribed = GatewayServerMessage::decode(bytes.as_slice()).expect("a GatewayServerMessage");
    assert_eq!((opcode, subscribed.r#type.as_str(), subscribed.id.as_str()), (wsframe::OP_BINARY, "subscribed", "p"));

    let offset = world.publish(&event_with_steps("e-proto", 40)).await;
    let (compressed, opcode, bytes) = client.next_message().await;
    assert!(compressed && opcode == wsframe::OP_BINARY, "a binary message, compressed");
    let frame = GatewayServerMessage::decode(bytes.as_slice()).expect("inflates to a GatewayServerMessage");
    assert_eq!((frame.r#type.as_str(), frame.offset), ("step.completed", offset));
    let state = frame.event.and_then(|event| event.state);
    assert!(matches!(state, Some(event::State::Execution(e)) if e.steps.len() == 40));
}

#[tokio::test]
async fn compressed_messages_that_break_the_rules_close_with_the_code_that_says_why() {
    let world = World::start().await;
    let gateway = world.gateway(&[("max-frame-bytes", "4096")]).await;
    let token = token("acme", "viewer", 600);

    // Inflating far beyond the frame limit (a few hundred bytes on the wire): 1009, too big.
    let mut bomb = DeflateClient::connect(&gateway, &token, Some(OFFER)).await;
    let padding = "x".repeat(2_000_000);
    bomb.send(json!({"type": "ping", "padding": padding}).to_string().as_bytes(), true).await;
    assert_eq!(bomb.close_code().await, Some(1009));

    // Not deflate data: 1002, a protocol error.
    let mut corrupt = DeflateClient::connect(&gateway, &token, Some(OFFER)).await;
    let mut frame = Vec::new();
    wsframe::encode_masked(wsframe::RSV1 | wsframe::OP_TEXT, &[0xff, 0xff, 0xff, 0xff, 0x00], [1, 2, 3, 4], &mut frame);
    corrupt.socket.get_mut().write_all(&frame).await.expect("sent");
    assert_eq!(corrupt.close_code().await, Some(1002));

    // A compressed frame on a connection that did not negotiate compression: 1002 as well.
    let mut unnegotiated = DeflateClient::connect(&gateway, &token, None).await;
    assert_eq!(unnegotiated.extensions, None);
    unnegotiated.send_json(json!({"type": "ping"}), true).await;
    assert_eq!(unnegotiated.close_code().await, Some(1002));
}

#[tokio::test]
async fn with_compression_turned_off_an_offer_is_declined_and_everything_goes_plain() {
    let world = World::start().await;
    let gateway = world.gateway(&[("compression", "false")]).await;
    let token = token("acme", "viewer", 600);
    let mut client = DeflateClient::connect(&gateway, &token, Some(OFFER)).await;
    assert_eq!(client.extensions, None, "no Sec-WebSocket-Extensions in the 101");
    client.send_json(json!({"type": "subscribe", "channel": "executions:e-off"}), false).await;
    client.until("subscribed").await;
    let offset = world.publish(&event_with_steps("e-off", 40)).await;
    let (compressed, text) = client.until("step.completed").await;
    assert!(!compressed);
    assert_eq!(serde_json::from_str::<Value>(&text).expect("JSON")["offset"], offset);
}

/// SSE for a client that accepts gzip (browsers' `EventSource` does): each event arrives in a
/// chunk that inflates at once — not held until more follow — to the records a plain stream gets,
/// and the long ones are the bytes compressed once for every connection.
#[tokio::test]
async fn sse_accepting_gzip_gets_each_event_compressed_and_decodable_as_it_arrives() {
    let world = World::start().await;
    let gateway = world.gateway(&[]).await;
    let token = token("acme", "viewer", 600);
    let mut gzip = gateway.sse_accepting("executions:e-sse", &token, Some("gzip, deflate, br, zstd")).await;
    let mut plain = gateway.sse_accepting("executions:e-sse", &token, None).await;
    assert!(gzip.is_gzip(), "Content-Encoding: gzip");
    assert!(!plain.is_gzip(), "no Accept-Encoding: plain");

    let mut published = Vec::new();
    for steps in [40, 1, 41] {
        let offset = world.publish(&event_with_steps("e-sse", steps)).await;
        published.push(offset);
        // Read before the next is published: the chunk it came in inflates on its own.
        let compressed = gzip.events(1).await.remove(0);
        let expected = plain.events(1).await.remove(0);
        assert_eq!(compressed.id, Some(offset.to_string()));
        assert_eq!((compressed.id, compressed.event, compressed.data), (expected.id, expected.event, expected.data));
    }
    assert_eq!(published.len(), 3);
    assert!(
        gzip.wire_bytes * 3 < plain.wire_bytes,
        "{} bytes on the wire compressed against {} plain",
        gzip.wire_bytes,
        plain.wire_bytes
    );
    let metrics = reqwest::get(gateway.url("/metrics")).await.expect("metrics").text().await.expect("text");
    let negotiated = metrics
        .lines()
        .find_map(|line| line.strip_prefix("runcast_ws_compression_negotiated_total "))
        .and_then(|value| value.trim().parse::<f64>().ok());
    assert_eq!(negotiated, Some(1.0), "{metrics}");
}

/// gzip refused by weight, or compression turned off: the stream goes plain.
#[tokio::test]
async fn sse_goes_plain_when_gzip_is_refused_or_compression_is_off() {
    let world = World::start().await;
    let token = token("acme", "viewer", 600);
    let on = world.gateway(&[]).await;
    let off = world.gateway(&[("compression", "false")]).await;
    for (gateway, accept) in [(&on, "br, gzip;q=0"), (&on, "identity"), (&off, "gzip")] {
        let mut sse = gateway.sse_accepting("executions:e-plain", &token, Some(accept)).await;
        assert!(!sse.is_gzip(), "{accept}");
        let offset = world.publish(&event_with_steps("e-plain", 40)).await;
        let event = sse.events(1).await.remove(0);
        assert_eq!(event.id, Some(offset.to_string()), "{accept}");
    }
}
