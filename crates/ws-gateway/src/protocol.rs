//! The wire protocol of DESIGN §4: client messages (`subscribe`, `unsubscribe`, `ping`, `auth`)
//! parsed and validated into typed requests, the server's control messages (`subscribed`,
//! `unsubscribed`, `pong`, `snapshot`, `error`, `resync`, `reconnect`) and event frames, and the one
//! table of error codes and close codes (documented in the README, "WebSocket and SSE").

use crate::channel::{Channel, InvalidChannel};
use crate::filter::{Filters, InvalidFilter, RawFilters};
use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use runcast_contract::v1::{GatewayClientMessage, GatewayServerMessage};
use serde::Deserialize;
use serde_json::Value;

/// The JSON subprotocol (the default when a client names none).
pub const JSON_SUBPROTOCOL: &str = "runcast.v1.json";
/// The protobuf subprotocol: binary frames of `GatewayClientMessage` / `GatewayServerMessage`.
pub const PROTO_SUBPROTOCOL: &str = "runcast.v1.proto";

/// How one connection's messages are encoded. SSE is always JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Json,
    Proto,
}

impl Protocol {
    pub const COUNT: usize = 2;

    pub fn index(self) -> usize {
        match self {
            Self::Json => 0,
            Self::Proto => 1,
        }
    }

    pub fn from_subprotocol(name: Option<&str>) -> Self {
        match name {
            Some(PROTO_SUBPROTOCOL) => Self::Proto,
            _ => Self::Json,
        }
    }
}

/// Every `code` an `error` message can carry. The connection stays open after each of them; the
/// abusive cases additionally close it with a [`CloseCode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The frame is not JSON (or not UTF-8 text).
    InvalidJson,
    /// JSON, but a field is missing or has the wrong type.
    InvalidMessage,
    /// `type` is not one of `subscribe`, `unsubscribe`, `ping`, `auth`.
    UnknownType,
    /// The channel name is not one of the designed forms, or its id is malformed.
    UnknownChannel,
    /// A filter value is unknown or a list is too long.
    InvalidFilter,
    /// The connection already holds the maximum number of subscriptions.
    TooManySubscriptions,
    /// The channel is already subscribed on this connection.
    AlreadySubscribed,
    /// `unsubscribe` for a channel that is not subscribed.
    NotSubscribed,
    /// More inbound messages per second than allowed; the message was dropped.
    RateLimited,
    /// The `auth` token does not verify.
    Unauthenticated,
    /// The `auth` token belongs to another tenant or subject than the connection.
    PermissionDenied,
    /// NATS (or the history) cannot answer right now; retry the subscription.
    Unavailable,
    /// A bug; the message says what failed.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidMessage => "invalid_message",
            Self::UnknownType => "unknown_type",
            Self::UnknownChannel => "unknown_channel",
            Self::InvalidFilter => "invalid_filter",
            Self::TooManySubscriptions => "too_many_subscriptions",
            Self::AlreadySubscribed => "already_subscribed",
            Self::NotSubscribed => "not_subscribed",
            Self::RateLimited => "rate_limited",
            Self::Unauthenticated => "unauthenticated",
            Self::PermissionDenied => "permission_denied",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}

/// WebSocket close codes the gateway uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1001: the replica is draining (after `reconnect`), or the peer stopped answering pings.
    GoingAway,
    /// 1008: abusive client: inbound flood beyond the rate limit, or it does not read its control
    /// replies.
    PolicyViolation,
    /// 1009: a frame larger than `RUNCAST_WS_MAX_FRAME_BYTES`.
    MessageTooBig,
    /// 1011: unexpected server error.
    InternalError,
    /// 4001: the token expired and no `auth` refreshed it in time.
    TokenExpired,
}

impl CloseCode {
    pub fn code(self) -> u16 {
        match self {
            Self::GoingAway => 1001,
            Self::PolicyViolation => 1008,
            Self::MessageTooBig => 1009,
            Self::InternalError => 1011,
            Self::TokenExpired => 4001,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Self::GoingAway => "going away",
            Self::PolicyViolation => "policy violation",
            Self::MessageTooBig => "frame too large",
            Self::InternalError => "internal error",
            Self::TokenExpired => "token expired",
        }
    }
}

/// A protocol error answered with an `error` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
    /// The `id` of the request, echoed back when the request had one.
    pub id: Option<Value>,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), id: None }
    }

    fn with_id(mut self, id: Option<Value>) -> Self {
        self.id = id;
        self
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SubscribeRequest {
    pub channel: Channel,
    pub filters: Filters,
    pub since_offset: Option<u64>,
    pub snapshot: bool,
    pub id: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    Subscribe(SubscribeRequest),
    Unsubscribe { channel: Channel, id: Option<Value> },
    Ping { id: Option<Value> },
    Auth { token: String, id: Option<Value> },
}

/// Every field any client message may carry; which ones are required depends on `type`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMessage {
    #[serde(rename = "type")]
    kind: String,
    channel: Option<String>,
    filters: Option<RawFilters>,
    since_offset: Option<u64>,
    snapshot: Option<bool>,
    id: Option<Value>,
    token: Option<String>,
}

impl ClientMessage {
    /// Parses and validates one JSON text frame.
    pub fn parse_json(text: &[u8]) -> Result<Self, ProtocolError> {
        // Two passes so that the error says which problem it is: not JSON at all, no/unknown
        // `type`, or a bad field of a known type.
        let value: Value = serde_json::from_slice(text)
            .map_err(|err| ProtocolError::new(ErrorCode::InvalidJson, format!("not valid JSON: {err}")))?;
        let Some(object) = value.as_object() else {
            return Err(ProtocolError::new(ErrorCode::InvalidMessage, "a message is a JSON object with a \"type\""));
        };
        let id = object.get("id").cloned();
        if let Some(id) = &id
            && !(id.is_string() || id.is_number())
        {
            return Err(ProtocolError::new(ErrorCode::InvalidMessage, "\"id\" must be a string or a number"));
        }
        check_type(object.get("type").and_then(Value::as_str)).map_err(|err| err.with_id(id.clone()))?;
        let raw: RawMessage = serde_json::from_value(value)
            .map_err(|err| ProtocolError::new(ErrorCode::InvalidMessage, err.to_string()).with_id(id.clone()))?;
        raw.validate().map_err(|err| err.with_id(id))
    }

    /// Parses and validates one binary frame of the protobuf subprotocol: the same fields as the
    /// JSON form, so the same validation.
    pub fn parse_proto(frame: &[u8]) -> Result<Self, ProtocolError> {
        use prost::Message as _;
        let message = GatewayClientMessage::decode(frame).map_err(|err| {
            ProtocolError::new(ErrorCode::InvalidMessage, format!("not a runcast.v1.GatewayClientMessage: {err}"))
        })?;
        let non_empty = |text: String| (!text.is_empty()).then_some(text);
        let id = non_empty(message.id).map(Value::String);
        check_type(Some(message.r#type.as_str()).filter(|t| !t.is_empty())).map_err(|err| err.with_id(id.clone()))?;
        let raw = RawMessage {
            kind: message.r#type,
            channel: non_empty(message.channel),
            filters: message.filters.map(|f| RawFilters {
                workflow_ids: f.workflow_ids,
                execution_ids: f.execution_ids,
                statuses: f.statuses,
                types: f.types,
            }),
            since_offset: message.since_offset,
            snapshot: Some(message.snapshot),
            id: id.clone(),
            token: non_empty(message.token),
        };
        raw.validate().map_err(|err| err.with_id(id))
    }
}

fn check_type(kind: Option<&str>) -> Result<(), ProtocolError> {
    match kind {
        Some("subscribe" | "unsubscribe" | "ping" | "auth") => Ok(()),
        Some(other) => Err(ProtocolError::new(
            ErrorCode::UnknownType,
            format!("unknown message type '{}': expected subscribe, unsubscribe, ping or auth", other.escape_debug()),
        )),
        None => Err(ProtocolError::new(ErrorCode::InvalidMessage, "a message needs a string \"type\"")),
    }
}

impl RawMessage {
    fn validate(self) -> Result<ClientMessage, ProtocolError> {
        let channel = |name: Option<String>| -> Result<Channel, ProtocolError> {
            let name = name.ok_or_else(|| ProtocolError::new(ErrorCode::InvalidMessage, "\"channel\" is required"))?;
            Channel::parse(&name)
                .map_err(|InvalidChannel(message)| ProtocolError::new(ErrorCode::UnknownChannel, message))
        };
        match self.kind.as_str() {
            "subscribe" => Ok(ClientMessage::Subscribe(SubscribeRequest {
                channel: channel(self.channel)?,
                filters: Filters::parse(self.filters.unwrap_or_default())
                    .map_err(|InvalidFilter(message)| ProtocolError::new(ErrorCode::InvalidFilter, message))?,
                since_offset: self.since_offset,
                snapshot: self.snapshot.unwrap_or(false),
                id: self.id,
            })),
            "unsubscribe" => Ok(ClientMessage::Unsubscribe { channel: channel(self.channel)?, id: self.id }),
            "ping" => Ok(ClientMessage::Ping { id: self.id }),
            "auth" => match self.token.filter(|t| !t.is_empty()) {
                Some(token) => Ok(ClientMessage::Auth { token, id: self.id }),
                None => Err(ProtocolError::new(ErrorCode::InvalidMessage, "\"token\" is required")),
            },
            _ => Err(ProtocolError::new(ErrorCode::UnknownType, "unknown type")),
        }
    }
}

pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A control message (`subscribed`, `unsubscribed`, `pong`, `snapshot`, `error`, `resync`,
/// `reconnect`), encodable in either protocol. Unset fields are left out.
#[derive(Debug, Clone, Default)]
pub struct Control {
    pub kind: &'static str,
    pub channel: Option<String>,
    pub offset: Option<u64>,
    pub id: Option<Value>,
    pub recovered: Option<bool>,
    pub replayed: Option<u64>,
    pub code: Option<&'static str>,
    pub message: Option<String>,
    pub reason: Option<String>,
    /// `snapshot` only: the entity's state (`Some(None)`: the entity has no events yet).
    pub state: Option<Option<runcast_contract::v1::event::State>>,
}

impl Control {
    pub fn new(kind: &'static str) -> Self {
        Self { kind, ..Self::default() }
    }

    pub fn error(err: &ProtocolError) -> Self {
        Self {
            code: Some(err.code.as_str()),
            message: Some(err.message.clone()),
            id: err.id.clone(),
            ..Self::new("error")
        }
    }

    pub fn encode(&self, protocol: Protocol) -> Bytes {
        match protocol {
            Protocol::Json => self.json(),
            Protocol::Proto => self.proto(),
        }
    }

    fn json(&self) -> Bytes {
        let mut object = serde_json::Map::with_capacity(8);
        object.insert("type".into(), self.kind.into());
        object.insert("timestamp".into(), now_rfc3339().into());
        let mut put = |key: &str, value: Option<Value>| {
            if let Some(value) = value {
                object.insert(key.into(), value);
            }
        };
        put("channel", self.channel.clone().map(Value::from));
        put("offset", self.offset.map(Value::from));
        put("recovered", self.recovered.map(Value::from));
        put("replayed", self.replayed.map(Value::from));
        put("code", self.code.map(Value::from));
        put("message", self.message.clone().map(Value::from));
        put("reason", self.reason.clone().map(Value::from));
        put("data", self.state.as_ref().map(|state| serde_json::to_value(state).unwrap_or(Value::Null)));
        put("id", self.id.clone());
        Bytes::from(Value::Object(object).to_string())
    }

    fn proto(&self) -> Bytes {
        use prost::Message as _;
        use runcast_contract::v1::event::State;
        let (execution, agent) = match self.state.clone().flatten() {
            Some(State::Execution(execution)) => (Some(execution), None),
            Some(State::Agent(agent)) => (None, Some(agent)),
            None => (None, None),
        };
        GatewayServerMessage {
            r#type: self.kind.to_owned(),
            timestamp: Some(runcast_contract::json::from_datetime(Utc::now())),
            channel: self.channel.clone().unwrap_or_default(),
            offset: self.offset.unwrap_or_default(),
            id: self.id.as_ref().map(id_text).unwrap_or_default(),
            recovered: self.recovered,
            replayed: self.replayed,
            execution,
            agent,
            code: self.code.unwrap_or_default().to_owned(),
            message: self.message.clone().unwrap_or_default(),
            reason: self.reason.clone().unwrap_or_default(),
            event: None,
        }
        .encode_to_vec()
        .into()
    }
}

/// A JSON `id` (string or number) as the protobuf string field.
fn id_text(id: &Value) -> String {
    match id {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// The JSON of one event, encoded once per event and shared by every channel and recipient.
pub fn event_data(event: &runcast_contract::v1::Event) -> Result<Bytes, serde_json::Error> {
    serde_json::to_vec(event).map(Bytes::from)
}

/// `{"type", "timestamp", "channel", "offset", "data"}` around already encoded event JSON:
/// string assembly, so the event itself is not serialized again per channel.
pub fn event_frame(event_type: &str, timestamp: &str, channel: &str, offset: u64, data: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(data.len() + channel.len() + 96);
    frame.extend_from_slice(b"{\"type\":\"");
    frame.extend_from_slice(event_type.as_bytes());
    frame.extend_from_slice(b"\",\"timestamp\":\"");
    frame.extend_from_slice(timestamp.as_bytes());
    // Channel names are validated ids (no quote or backslash), so no escaping is needed.
    frame.extend_from_slice(b"\",\"channel\":\"");
    frame.extend_from_slice(channel.as_bytes());
    frame.extend_from_slice(b"\",\"offset\":");
    frame.extend_from_slice(offset.to_string().as_bytes());
    frame.extend_from_slice(b",\"data\":");
    frame.extend_from_slice(data);
    frame.push(b'}');
    Bytes::from(frame)
}

/// The protobuf event frame: the envelope fields, then the already encoded `Event` appended as
/// field 6 — the bytes a full `GatewayServerMessage` encoding would produce, without re-encoding
/// the event per channel.
pub fn event_frame_proto(
    event_type: &str,
    timestamp: Option<prost_types::Timestamp>,
    channel: &str,
    offset: u64,
    event: &[u8],
) -> Bytes {
    use prost::Message as _;
    use prost::encoding::{WireType, encode_key, encode_varint};
    let envelope = GatewayServerMessage {
        r#type: event_type.to_owned(),
        timestamp,
        channel: channel.to_owned(),
        offset,
        ..Default::default()
    };
    let mut frame = Vec::with_capacity(envelope.encoded_len() + event.len() + 8);
    envelope.encode_raw(&mut frame);
    encode_key(6, WireType::LengthDelimited, &mut frame);
    encode_varint(event.len() as u64, &mut frame);
    frame.extend_from_slice(event);
    Bytes::from(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;
    use runcast_contract::v1::{Event, GatewayFilters};
    use serde_json::json;

    #[test]
    fn the_protobuf_form_is_validated_like_the_json_form() {
        let frame = GatewayClientMessage {
            r#type: "subscribe".into(),
            id: "r1".into(),
            channel: "workflows:wf".into(),
            filters: Some(GatewayFilters { statuses: vec!["running".into()], ..Default::default() }),
            since_offset: Some(0),
            ..Default::default()
        };
        let Ok(ClientMessage::Subscribe(request)) = ClientMessage::parse_proto(&frame.encode_to_vec()) else {
            panic!("a valid subscribe")
        };
        assert_eq!(request.since_offset, Some(0), "zero is an offset, not absent");
        assert_eq!(request.id, Some(json!("r1")));
        let bad = GatewayClientMessage { r#type: "subscribe".into(), channel: "jobs".into(), ..Default::default() };
        let err = ClientMessage::parse_proto(&bad.encode_to_vec()).expect_err("unknown channel");
        assert_eq!(err.code, ErrorCode::UnknownChannel);
        let err = ClientMessage::parse_proto(b"\xff\xff").expect_err("garbage");
        assert_eq!(err.code, ErrorCode::InvalidMessage);
        let err = ClientMessage::parse_proto(&GatewayClientMessage::default().encode_to_vec()).expect_err("no type");
        assert_eq!(err.code, ErrorCode::InvalidMessage);
    }

    #[test]
    fn protobuf_frames_decode_to_the_server_message() {
        let event = Event { event_id: "e".into(), offset: 7, ..Default::default() };
        let frame = event_frame_proto("execution.started", None, "executions", 7, &event.encode_to_vec());
        let decoded = GatewayServerMessage::decode(frame).expect("decodes");
        assert_eq!(decoded.r#type, "execution.started");
        assert_eq!(decoded.channel, "executions");
        assert_eq!(decoded.offset, 7);
        assert_eq!(decoded.event, Some(event));
        let control = Control { offset: Some(3), recovered: Some(false), ..Control::new("subscribed") };
        let decoded = GatewayServerMessage::decode(control.encode(Protocol::Proto)).expect("decodes");
        assert_eq!((decoded.r#type.as_str(), decoded.offset, decoded.recovered), ("subscribed", 3, Some(false)));
    }

    fn parse(json: &str) -> Result<ClientMessage, ProtocolError> {
        ClientMessage::parse_json(json.as_bytes())
    }

    #[test]
    fn a_full_subscribe_parses() {
        let message = parse(
            r#"{"type":"subscribe","channel":"executions:e1","filters":{"statuses":["running"]},"since_offset":41,"snapshot":true,"id":"r1"}"#,
        )
        .expect("valid");
        let ClientMessage::Subscribe(request) = message else { panic!("subscribe expected") };
        assert_eq!(request.channel.to_string(), "executions:e1");
        assert_eq!(request.since_offset, Some(41));
        assert!(request.snapshot);
        assert_eq!(request.id, Some(json!("r1")));
        assert!(matches!(parse(r#"{"type":"ping"}"#), Ok(ClientMessage::Ping { id: None })));
        assert!(matches!(parse(r#"{"type":"unsubscribe","channel":"agents"}"#), Ok(ClientMessage::Unsubscribe { .. })));
        assert!(matches!(parse(r#"{"type":"auth","token":"abc","id":7}"#), Ok(ClientMessage::Auth { .. })));
    }

    #[test]
    fn each_problem_has_its_code_and_echoes_the_id() {
        for (json, code) in [
            ("not json", ErrorCode::InvalidJson),
            ("[1,2]", ErrorCode::InvalidMessage),
            (r#"{"channel":"executions"}"#, ErrorCode::InvalidMessage),
            (r#"{"type":"publish","id":"x"}"#, ErrorCode::UnknownType),
            (r#"{"type":"subscribe","id":"x"}"#, ErrorCode::InvalidMessage),
            (r#"{"type":"subscribe","channel":"jobs","id":"x"}"#, ErrorCode::UnknownChannel),
            (
                r#"{"type":"subscribe","channel":"executions","filters":{"types":["nope"]},"id":"x"}"#,
                ErrorCode::InvalidFilter,
            ),
            (r#"{"type":"subscribe","channel":"executions","since_offset":-1,"id":"x"}"#, ErrorCode::InvalidMessage),
            (r#"{"type":"subscribe","channel":"executions","extra":1,"id":"x"}"#, ErrorCode::InvalidMessage),
            (r#"{"type":"auth","id":"x"}"#, ErrorCode::InvalidMessage),
            (r#"{"type":"ping","id":{"a":1}}"#, ErrorCode::InvalidMessage),
        ] {
            let err = parse(json).expect_err(json);
            assert_eq!(err.code, code, "{json}: {}", err.message);
            if json.contains(r#""id":"x""#) {
                assert_eq!(err.id, Some(json!("x")), "{json}");
            }
        }
    }

    #[test]
    fn frames_are_valid_json_of_the_designed_shape() {
        let data = br#"{"event_id":"e"}"#;
        let frame = event_frame("execution.started", "2026-01-01T00:00:00Z", "executions", 12, data);
        let value: Value = serde_json::from_slice(&frame).expect("json");
        assert_eq!(value["type"], "execution.started");
        assert_eq!(value["channel"], "executions");
        assert_eq!(value["offset"], 12);
        assert_eq!(value["data"]["event_id"], "e");
        let error = Control::error(&ProtocolError::new(ErrorCode::RateLimited, "slow down")).encode(Protocol::Json);
        let value: Value = serde_json::from_slice(&error).expect("json");
        assert_eq!(value["type"], "error");
        assert_eq!(value["code"], "rate_limited");
        assert!(value.get("id").is_none());
        assert!(value["timestamp"].is_string());
    }
}
