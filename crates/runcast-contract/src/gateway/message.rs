//! The gateway's messages (docs/protocol.md): client messages parsed and validated into typed
//! requests, the server's control messages as one [`ServerMessage`] enum, and the one table of
//! error codes and close codes. Event frames are not here: the gateway assembles them from the
//! event's JSON, encoded once per event (`ws-gateway`'s `protocol::event_frame`).

use super::channel::{Channel, InvalidChannel};
use super::filter::{Filters, InvalidFilter, RawFilters};
use crate::v1::{GatewayClientMessage, GatewayServerMessage, event};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// Every `code` an `error` message can carry. The connection stays open after each of them; the
/// abusive cases additionally close it with a [`CloseCode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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
    /// Every code, in the order of docs/protocol.md.
    pub const ALL: [Self; 13] = [
        Self::InvalidJson,
        Self::InvalidMessage,
        Self::UnknownType,
        Self::UnknownChannel,
        Self::InvalidFilter,
        Self::TooManySubscriptions,
        Self::AlreadySubscribed,
        Self::NotSubscribed,
        Self::RateLimited,
        Self::Unauthenticated,
        Self::PermissionDenied,
        Self::Unavailable,
        Self::Internal,
    ];

    /// The wire name (`"invalid_json"`, …); the same as its serde form.
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
    /// 1002: a frame that breaks the WebSocket protocol (unmasked, reserved bits, a fragmented
    /// control frame, text that is not UTF-8, …).
    ProtocolError,
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
    pub const ALL: [Self; 6] = [
        Self::GoingAway,
        Self::ProtocolError,
        Self::PolicyViolation,
        Self::MessageTooBig,
        Self::InternalError,
        Self::TokenExpired,
    ];

    pub fn code(self) -> u16 {
        match self {
            Self::GoingAway => 1001,
            Self::ProtocolError => 1002,
            Self::PolicyViolation => 1008,
            Self::MessageTooBig => 1009,
            Self::InternalError => 1011,
            Self::TokenExpired => 4001,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Self::GoingAway => "going away",
            Self::ProtocolError => "protocol error",
            Self::PolicyViolation => "policy violation",
            Self::MessageTooBig => "frame too large",
            Self::InternalError => "internal error",
            Self::TokenExpired => "token expired",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ErrorCode {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|code| code.as_str() == name).ok_or_else(|| format!("unknown error code '{name}'"))
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

    pub fn with_id(mut self, id: Option<Value>) -> Self {
        self.id = id;
        self
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SubscribeRequest {
    pub channel: Channel,
    pub filters: Filters,
    pub since_offset: Option<u64>,
    /// The epoch `since_offset` belongs to (validated RFC 3339); `None`: not checked.
    pub since_epoch: Option<String>,
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
    since_epoch: Option<String>,
    snapshot: Option<bool>,
    id: Option<Value>,
    token: Option<String>,
}

impl ClientMessage {
    /// Every `type` a client may send.
    pub const TYPES: [&'static str; 4] = ["subscribe", "unsubscribe", "ping", "auth"];

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
            since_epoch: non_empty(message.since_epoch),
            snapshot: Some(message.snapshot),
            id: id.clone(),
            token: non_empty(message.token),
        };
        raw.validate().map_err(|err| err.with_id(id))
    }
}

fn check_type(kind: Option<&str>) -> Result<(), ProtocolError> {
    match kind {
        Some(kind) if ClientMessage::TYPES.contains(&kind) => Ok(()),
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
                since_epoch: parse_epoch(self.since_epoch)?,
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

/// Checks a client's `since_epoch`: an RFC 3339 time, as `subscribed` gave it. Empty = absent.
pub fn parse_epoch(epoch: Option<String>) -> Result<Option<String>, ProtocolError> {
    match epoch.filter(|e| !e.is_empty()) {
        None => Ok(None),
        Some(epoch) if chrono::DateTime::parse_from_rfc3339(&epoch).is_ok() => Ok(Some(epoch)),
        Some(_) => Err(ProtocolError::new(
            ErrorCode::InvalidMessage,
            "\"since_epoch\" must be the RFC 3339 `epoch` of a `subscribed` or `resync` message",
        )),
    }
}

/// Why a resume was not recovered (`reason` of `subscribed` with `recovered: false`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotRecovered {
    /// The position belongs to another incarnation of the stream (`since_epoch` differs, or the
    /// offset is beyond anything the stream ever held).
    EpochChanged,
    /// Neither the stream nor the history holds the offset any more.
    TooOld,
    /// The history (PostgreSQL) could not be read, so the gap cannot be filled right now.
    Unavailable,
}

impl NotRecovered {
    pub const ALL: [Self; 3] = [Self::EpochChanged, Self::TooOld, Self::Unavailable];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::EpochChanged => "epoch_changed",
            Self::TooOld => "too_old",
            Self::Unavailable => "unavailable",
        }
    }
}

/// A control message from the gateway: `{"type": …, "timestamp": …, …}` with the fields of its
/// variant; `None` fields are left out (`snapshot`'s `data` is always there, `null` for an entity
/// nobody knows yet). Event frames are the other server messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerMessage {
    /// The subscription is live from `offset`; after a resume, whether it `recovered`.
    Subscribed {
        #[serde(with = "timestamp")]
        timestamp: DateTime<Utc>,
        channel: String,
        offset: u64,
        /// The epoch of the stream the offsets belong to.
        epoch: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replayed: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<NotRecovered>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
    },
    Unsubscribed {
        #[serde(with = "timestamp")]
        timestamp: DateTime<Utc>,
        channel: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
    },
    Pong {
        #[serde(with = "timestamp")]
        timestamp: DateTime<Utc>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
    },
    /// The entity's state (`None`: no events yet) and its last event's offset.
    Snapshot {
        #[serde(with = "timestamp")]
        timestamp: DateTime<Utc>,
        channel: String,
        offset: u64,
        data: Option<Box<event::State>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
    },
    Error {
        #[serde(with = "timestamp")]
        timestamp: DateTime<Utc>,
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
    },
    /// The subscription left the live feed: subscribe again from `offset` in `epoch`.
    Resync {
        #[serde(with = "timestamp")]
        timestamp: DateTime<Utc>,
        channel: String,
        offset: u64,
        epoch: String,
        reason: String,
    },
    /// The replica is draining: reconnect after `retry_after_ms`.
    Reconnect {
        #[serde(with = "timestamp")]
        timestamp: DateTime<Utc>,
        reason: String,
        retry_after_ms: u64,
    },
}

impl ServerMessage {
    /// Every `type` of a control message.
    pub const TYPES: [&'static str; 7] =
        ["subscribed", "unsubscribed", "pong", "snapshot", "error", "resync", "reconnect"];

    /// The `error` message of a refused request, sent now.
    pub fn error(err: &ProtocolError) -> Self {
        Self::Error { timestamp: Utc::now(), code: err.code, message: err.message.clone(), id: err.id.clone() }
    }

    /// Its `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Subscribed { .. } => "subscribed",
            Self::Unsubscribed { .. } => "unsubscribed",
            Self::Pong { .. } => "pong",
            Self::Snapshot { .. } => "snapshot",
            Self::Error { .. } => "error",
            Self::Resync { .. } => "resync",
            Self::Reconnect { .. } => "reconnect",
        }
    }

    pub fn timestamp(&self) -> DateTime<Utc> {
        match self {
            Self::Subscribed { timestamp, .. }
            | Self::Unsubscribed { timestamp, .. }
            | Self::Pong { timestamp, .. }
            | Self::Snapshot { timestamp, .. }
            | Self::Error { timestamp, .. }
            | Self::Resync { timestamp, .. }
            | Self::Reconnect { timestamp, .. } => *timestamp,
        }
    }

    /// The JSON text frame. Keys in sorted order (the gateway's frames have always been built
    /// through `serde_json::Value`, whose objects sort their keys).
    pub fn to_json(&self) -> String {
        serde_json::to_value(self).map(|value| value.to_string()).unwrap_or_default()
    }
}

/// The protobuf form: the same fields, unset ones at their defaults, the state in `execution` or
/// `agent`.
impl From<&ServerMessage> for GatewayServerMessage {
    fn from(message: &ServerMessage) -> Self {
        let mut proto = GatewayServerMessage {
            r#type: message.kind().to_owned(),
            timestamp: Some(crate::json::from_datetime(message.timestamp())),
            ..Default::default()
        };
        let id_text = |id: &Option<Value>| id.as_ref().map(id_text).unwrap_or_default();
        match message {
            ServerMessage::Subscribed { channel, offset, epoch, recovered, replayed, reason, id, .. } => {
                proto.channel = channel.clone();
                proto.offset = *offset;
                proto.epoch = epoch.clone();
                proto.recovered = *recovered;
                proto.replayed = *replayed;
                proto.reason = reason.map(|reason| reason.as_str().to_owned()).unwrap_or_default();
                proto.id = id_text(id);
            }
            ServerMessage::Unsubscribed { channel, id, .. } => {
                proto.channel = channel.clone();
                proto.id = id_text(id);
            }
            ServerMessage::Pong { id, .. } => proto.id = id_text(id),
            ServerMessage::Snapshot { channel, offset, data, id, .. } => {
                proto.channel = channel.clone();
                proto.offset = *offset;
                match data.as_deref() {
                    Some(event::State::Execution(execution)) => proto.execution = Some(execution.clone()),
                    Some(event::State::Agent(agent)) => proto.agent = Some(agent.clone()),
                    None => {}
                }
                proto.id = id_text(id);
            }
            ServerMessage::Error { code, message, id, .. } => {
                proto.code = code.as_str().to_owned();
                proto.message = message.clone();
                proto.id = id_text(id);
            }
            ServerMessage::Resync { channel, offset, epoch, reason, .. } => {
                proto.channel = channel.clone();
                proto.offset = *offset;
                proto.epoch = epoch.clone();
                proto.reason = reason.clone();
            }
            ServerMessage::Reconnect { reason, retry_after_ms, .. } => {
                proto.reason = reason.clone();
                proto.retry_after_ms = Some(*retry_after_ms);
            }
        }
        proto
    }
}

/// A JSON `id` (string or number) as the protobuf string field.
fn id_text(id: &Value) -> String {
    match id {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// `timestamp` of a control message: RFC 3339 UTC with milliseconds.
mod timestamp {
    use super::*;

    pub(super) fn serialize<S: Serializer>(time: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&time.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(deserializer)?;
        DateTime::parse_from_rfc3339(&text).map(|time| time.with_timezone(&Utc)).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::GatewayFilters;
    use prost::Message as _;
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
        assert_eq!(request.since_epoch, None);
        assert!(request.snapshot);
        let Ok(ClientMessage::Subscribe(with_epoch)) = parse(
            r#"{"type":"subscribe","channel":"executions","since_offset":4,"since_epoch":"2026-12-01T21:00:00.5Z"}"#,
        ) else {
            panic!("a subscribe with an epoch")
        };
        assert_eq!(with_epoch.since_epoch.as_deref(), Some("2026-12-01T21:00:00.5Z"));
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
            (
                r#"{"type":"subscribe","channel":"executions","since_epoch":"yesterday","id":"x"}"#,
                ErrorCode::InvalidMessage,
            ),
            (r#"{"type":"ping","id":{"a":1}}"#, ErrorCode::InvalidMessage),
        ] {
            let err = parse(json).expect_err(json);
            assert_eq!(err.code, code, "{json}: {}", err.message);
            if json.contains(r#""id":"x""#) {
                assert_eq!(err.id, Some(json!("x")), "{json}");
            }
        }
    }
}

/// The examples of docs/protocol.md are what the types read and write, and the TypeScript client
/// (clients/js/src/types.ts) names the same messages and codes: adding one on one side only fails
/// here.
#[cfg(test)]
mod documented {
    use super::*;
    use std::collections::BTreeSet;

    const PROTOCOL_MD: &str = include_str!("../../../../docs/protocol.md");
    const TYPES_TS: &str = include_str!("../../../../clients/js/src/types.ts");

    /// Every JSON object of the document: the ```json blocks and the SSE records' `data:` lines.
    fn documented_messages() -> Vec<Value> {
        let mut messages = Vec::new();
        let mut block: Option<String> = None;
        for line in PROTOCOL_MD.lines() {
            match (&mut block, line.trim()) {
                (None, "```json") => block = Some(String::new()),
                (Some(text), "```") => {
                    messages.push(serde_json::from_str(text).unwrap_or_else(|err| panic!("{err}: {text}")));
                    block = None;
                }
                (Some(text), _) => text.push_str(line),
                (None, _) => {
                    if let Some(data) = line.strip_prefix("data: ")
                        && let Ok(value) = serde_json::from_str::<Value>(data)
                    {
                        messages.push(value);
                    }
                }
            }
        }
        messages
    }

    /// `written` says everything `documented` does. The documentation abbreviates entity states,
    /// which the gateway writes whole (every field of the entity).
    fn covers(written: &Value, documented: &Value) -> bool {
        match (written, documented) {
            (Value::Object(written), Value::Object(documented)) => {
                documented.iter().all(|(key, value)| written.get(key).is_some_and(|written| covers(written, value)))
            }
            _ => written == documented,
        }
    }

    fn type_of(value: &Value) -> &str {
        value["type"].as_str().unwrap_or_default()
    }

    #[test]
    fn every_documented_server_message_round_trips() {
        let mut seen = BTreeSet::new();
        for example in documented_messages().into_iter().filter(|m| ServerMessage::TYPES.contains(&type_of(m))) {
            let message: ServerMessage =
                serde_json::from_value(example.clone()).unwrap_or_else(|err| panic!("{err}: {example}"));
            assert_eq!(message.kind(), type_of(&example));
            let written: Value = serde_json::from_str(&message.to_json()).expect("json");
            let keys = |value: &Value| value.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>());
            assert_eq!(keys(&written), keys(&example), "the documented fields, no more");
            assert!(covers(&written, &example), "written back as documented:\n{written}\n{example}");
            assert_eq!(serde_json::from_value::<ServerMessage>(written).ok(), Some(message.clone()), "read back");
            let proto = GatewayServerMessage::from(&message);
            assert_eq!(proto.r#type, message.kind());
            seen.insert(message.kind());
        }
        assert_eq!(seen, ServerMessage::TYPES.into_iter().collect(), "an example of every server message");
    }

    #[test]
    fn every_documented_client_message_parses() {
        let mut seen = BTreeSet::new();
        for example in documented_messages().into_iter().filter(|m| ClientMessage::TYPES.contains(&type_of(m))) {
            let text = example.to_string();
            ClientMessage::parse_json(text.as_bytes()).unwrap_or_else(|err| panic!("{}: {text}", err.message));
            seen.insert(type_of(&example).to_owned());
        }
        assert_eq!(seen, ClientMessage::TYPES.into_iter().map(str::to_owned).collect());
    }

    #[test]
    fn every_error_code_and_close_code_is_documented() {
        for code in ErrorCode::ALL {
            assert!(PROTOCOL_MD.contains(&format!("| `{code}` |")), "{code} in the error code table");
            assert_eq!(serde_json::to_value(code).expect("json"), code.as_str());
            assert_eq!(code.as_str().parse::<ErrorCode>(), Ok(code));
        }
        for code in CloseCode::ALL {
            let row = format!("| {} | `{}` ", code.code(), code.reason());
            assert!(PROTOCOL_MD.contains(&row) || PROTOCOL_MD.contains(&format!("`{}`", code.reason())), "{row}");
        }
    }

    /// The text of `export <kind> {name} …` up to the end of its declaration.
    fn declaration(name: &str) -> &'static str {
        let start = TYPES_TS.find(name).unwrap_or_else(|| panic!("types.ts declares {name}"));
        let rest = &TYPES_TS[start..];
        let end = rest.find(';').unwrap_or(rest.len());
        &rest[..end]
    }

    fn quoted(text: &str) -> BTreeSet<String> {
        text.split('"').skip(1).step_by(2).map(str::to_owned).collect()
    }

    fn names(names: impl IntoIterator<Item = &'static str>) -> BTreeSet<String> {
        names.into_iter().map(str::to_owned).collect()
    }

    /// The `type: "…"` of every interface extending `base` in types.ts.
    fn discriminants(base: &str) -> BTreeSet<String> {
        TYPES_TS
            .split("export interface ")
            .skip(1)
            .filter(|declaration| declaration.lines().next().is_some_and(|line| line.contains(base)))
            .filter_map(|declaration| {
                let after = declaration.split("type: \"").nth(1)?;
                Some(after[..after.find('"')?].to_owned())
            })
            .collect()
    }

    #[test]
    fn the_typescript_client_names_the_same_messages_and_codes() {
        let control = names(ServerMessage::TYPES);
        assert_eq!(quoted(declaration("export const CONTROL_TYPES")), control, "CONTROL_TYPES");
        assert_eq!(discriminants("extends ServerMessageBase"), control, "the ControlMessage interfaces");
        let requests: BTreeSet<String> = ["SubscribeRequest", "UnsubscribeRequest", "PingRequest", "AuthRequest"]
            .into_iter()
            .map(|name| quoted(declaration(&format!("export interface {name} {{\n  type: "))).into_iter().collect())
            .collect();
        assert_eq!(requests, names(ClientMessage::TYPES), "the client messages");
        assert_eq!(
            quoted(declaration("export type ErrorCode =")),
            names(ErrorCode::ALL.map(ErrorCode::as_str)),
            "ErrorCode"
        );
        let close: BTreeSet<u16> = declaration("export type CloseCode =")
            .trim_start_matches("export type CloseCode =")
            .split('|')
            .map(|code| code.trim().parse().unwrap_or_else(|_| panic!("a close code: {code}")))
            .collect();
        assert_eq!(close, CloseCode::ALL.map(CloseCode::code).into_iter().collect(), "CloseCode");
        assert_eq!(
            quoted(declaration("export type NotRecoveredReason =")),
            names(NotRecovered::ALL.map(NotRecovered::as_str)),
            "NotRecoveredReason"
        );
    }
}

/// Property tests: whatever a client sends, the parser answers a typed message or a coded error
/// with a message, and never panics. Bounded (a few thousand cases) so the unit tests stay fast.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::v1::GatewayFilters;
    use proptest::prelude::*;

    fn answered(result: &Result<ClientMessage, ProtocolError>) -> bool {
        match result {
            Ok(_) => true,
            Err(err) => !err.message.is_empty() && !err.code.as_str().is_empty(),
        }
    }

    /// Mostly plausible pieces, so the cases reach validation rather than stop at the JSON syntax.
    fn word() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("subscribe".to_owned()),
            Just("unsubscribe".to_owned()),
            Just("ping".to_owned()),
            Just("auth".to_owned()),
            Just("executions".to_owned()),
            Just("logs:e-1".to_owned()),
            Just("agents:a.b".to_owned()),
            Just("running".to_owned()),
            Just("runing".to_owned()),
            Just("execution.started".to_owned()),
            Just("2026-12-01T21:00:00Z".to_owned()),
            "[a-z:._*>-]{0,12}",
            any::<String>(),
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            word().prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::btree_map(word(), inner, 0..6)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    fn message_object() -> impl Strategy<Value = Value> {
        let field = prop_oneof![
            Just("type"),
            Just("channel"),
            Just("filters"),
            Just("since_offset"),
            Just("since_epoch"),
            Just("snapshot"),
            Just("id"),
            Just("token"),
            Just("statuses"),
        ];
        (word(), prop::collection::vec((field, json_value()), 0..6)).prop_map(|(kind, fields)| {
            let mut object = serde_json::Map::new();
            object.insert("type".into(), Value::from(kind));
            for (name, value) in fields {
                object.insert(name.into(), value);
            }
            Value::Object(object)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_as_json_are_answered(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            prop_assert!(answered(&ClientMessage::parse_json(&bytes)));
        }

        #[test]
        fn arbitrary_json_messages_are_answered(value in message_object()) {
            let result = ClientMessage::parse_json(value.to_string().as_bytes());
            prop_assert!(answered(&result));
            // Whatever was accepted is valid: a subscribe names a channel that prints back.
            if let Ok(ClientMessage::Subscribe(request)) = &result {
                prop_assert_eq!(Channel::parse(&request.channel.to_string()).ok(), Some(request.channel.clone()));
            }
        }

        #[test]
        fn arbitrary_bytes_as_protobuf_are_answered(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            prop_assert!(answered(&ClientMessage::parse_proto(&bytes)));
        }

        #[test]
        fn arbitrary_protobuf_messages_are_answered(
            kind in word(), id in word(), channel in word(), token in word(), since_epoch in word(),
            since_offset in any::<Option<u64>>(), snapshot in any::<bool>(),
            statuses in prop::collection::vec(word(), 0..4), types in prop::collection::vec(word(), 0..4),
            ids in prop::collection::vec(word(), 0..4),
        ) {
            use prost::Message as _;
            let message = GatewayClientMessage {
                r#type: kind, id, channel, token, since_epoch, since_offset, snapshot,
                filters: Some(GatewayFilters { workflow_ids: ids.clone(), execution_ids: ids, statuses, types }),
            };
            let result = ClientMessage::parse_proto(&message.encode_to_vec());
            prop_assert!(answered(&result));
            // The same fields in JSON get the same verdict.
            let mut object = serde_json::json!({"type": message.r#type});
            if !message.channel.is_empty() { object["channel"] = message.channel.clone().into(); }
            if !message.id.is_empty() { object["id"] = message.id.clone().into(); }
            prop_assert!(answered(&ClientMessage::parse_json(object.to_string().as_bytes())));
        }
    }
}
