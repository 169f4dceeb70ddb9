//! The gateway's side of the wire protocol (docs/protocol.md). The messages, codes, channels and
//! filters are the contract's ([`runcast_contract::gateway`], re-exported here); this module keeps
//! the subprotocols, the encoding of a [`ServerMessage`] for a connection, and the fast framing of
//! events: the event's JSON or protobuf encoded once and wrapped per channel without re-encoding.

use crate::outbound::Payload;
use chrono::{SecondsFormat, Utc};
pub(crate) use runcast_contract::gateway::{
    ClientMessage, CloseCode, ErrorCode, NotRecovered, ProtocolError, ServerMessage, SubscribeRequest, parse_epoch,
};
use runcast_contract::v1::GatewayServerMessage;
use runcast_runtime::auth::{AuthError, AuthErrorKind};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// The JSON subprotocol (the default when a client names none).
pub(crate) const JSON_SUBPROTOCOL: &str = "runcast.v1.json";
/// The protobuf subprotocol: binary frames of `GatewayClientMessage` / `GatewayServerMessage`.
pub(crate) const PROTO_SUBPROTOCOL: &str = "runcast.v1.proto";

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

    /// One control message as this protocol's frame.
    pub fn encode(self, message: &ServerMessage) -> Payload {
        use prost::Message as _;
        match self {
            Self::Json => message.to_json().into(),
            Self::Proto => GatewayServerMessage::from(message).encode_to_vec().into(),
        }
    }
}

/// The one place an authentication failure becomes an in-band error code.
pub(crate) fn auth_error(err: AuthError) -> ProtocolError {
    let code = match err.kind() {
        AuthErrorKind::Unauthenticated => ErrorCode::Unauthenticated,
        AuthErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
    };
    ProtocolError::new(code, err.to_string())
}

pub(crate) fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The JSON of one event, encoded once per event and shared by every channel and recipient.
pub(crate) fn event_data(event: &runcast_contract::v1::Event) -> Result<Utf8Bytes, serde_json::Error> {
    serde_json::to_string(event).map(Utf8Bytes::from)
}

/// `{"type", "timestamp", "channel", "offset", "data"}` around already encoded event JSON:
/// string assembly, so the event itself is not serialized again per channel.
pub(crate) fn event_frame(event_type: &str, timestamp: &str, channel: &str, offset: u64, data: &str) -> Payload {
    use std::fmt::Write as _;
    // The fixed parts are 57 bytes and an offset at most 20: sized once, never grown.
    let mut frame = String::with_capacity(event_type.len() + timestamp.len() + channel.len() + data.len() + 80);
    frame.push_str("{\"type\":\"");
    frame.push_str(event_type);
    frame.push_str("\",\"timestamp\":\"");
    frame.push_str(timestamp);
    // Channel names are validated ids (no quote or backslash), so no escaping is needed.
    frame.push_str("\",\"channel\":\"");
    frame.push_str(channel);
    frame.push_str("\",\"offset\":");
    let _ = write!(frame, "{offset}");
    frame.push_str(",\"data\":");
    frame.push_str(data);
    frame.push('}');
    frame.into()
}

/// The protobuf event frame: the envelope fields, then the already encoded `Event` appended as
/// field 6 — the bytes a full `GatewayServerMessage` encoding would produce, without re-encoding
/// the event per channel.
pub(crate) fn event_frame_proto(
    event_type: &str,
    timestamp: Option<prost_types::Timestamp>,
    channel: &str,
    offset: u64,
    event: &[u8],
) -> Payload {
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
    frame.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;
    use runcast_contract::v1::Event;
    use serde_json::{Value, json};

    #[test]
    fn auth_errors_become_their_in_band_codes() {
        let unauthenticated = auth_error(AuthError::unauthenticated("expired"));
        assert_eq!((unauthenticated.code, unauthenticated.message.as_str()), (ErrorCode::Unauthenticated, "expired"));
        let denied = auth_error(AuthError::permission_denied("read only"));
        assert_eq!((denied.code, denied.message.as_str()), (ErrorCode::PermissionDenied, "read only"));
    }

    #[test]
    fn a_reconnect_carries_its_delay_in_both_protocols() {
        let reconnect =
            ServerMessage::Reconnect { timestamp: Utc::now(), reason: "drain".into(), retry_after_ms: 1234 };
        let proto = GatewayServerMessage::decode(&*Protocol::Proto.encode(&reconnect)).expect("decodes");
        assert_eq!((proto.r#type.as_str(), proto.retry_after_ms), ("reconnect", Some(1234)));
        let json: serde_json::Value = serde_json::from_slice(&Protocol::Json.encode(&reconnect)).expect("json");
        assert_eq!(json["retry_after_ms"], 1234);
    }

    #[test]
    fn protobuf_frames_decode_to_the_server_message() {
        let event = Event { event_id: "e".into(), offset: 7, ..Default::default() };
        let frame = event_frame_proto("execution.started", None, "executions", 7, &event.encode_to_vec());
        assert!(!frame.is_text(), "protobuf goes out as binary messages");
        let decoded = GatewayServerMessage::decode(&*frame).expect("decodes");
        assert_eq!(decoded.r#type, "execution.started");
        assert_eq!(decoded.channel, "executions");
        assert_eq!(decoded.offset, 7);
        assert_eq!(decoded.event, Some(event));
        let control = ServerMessage::Subscribed {
            timestamp: Utc::now(),
            channel: "executions".into(),
            offset: 3,
            epoch: "2026-12-01T21:00:00.123456789Z".into(),
            recovered: Some(false),
            replayed: None,
            reason: Some(NotRecovered::EpochChanged),
            id: None,
        };
        let decoded = GatewayServerMessage::decode(&*Protocol::Proto.encode(&control)).expect("decodes");
        assert_eq!((decoded.r#type.as_str(), decoded.offset, decoded.recovered), ("subscribed", 3, Some(false)));
        assert_eq!(
            (decoded.reason.as_str(), decoded.epoch.as_str()),
            ("epoch_changed", "2026-12-01T21:00:00.123456789Z")
        );
        let value: Value = serde_json::from_slice(&Protocol::Json.encode(&control)).expect("json");
        assert_eq!(
            (&value["reason"], &value["epoch"]),
            (&json!("epoch_changed"), &json!("2026-12-01T21:00:00.123456789Z"))
        );
    }

    #[test]
    fn frames_are_valid_json_of_the_designed_shape() {
        let data = r#"{"event_id":"e"}"#;
        let frame = event_frame("execution.started", "2026-01-01T00:00:00Z", "executions", 12, data);
        assert!(frame.is_text(), "JSON goes out as text messages");
        let value: Value = serde_json::from_slice(&frame).expect("json");
        assert_eq!(value["type"], "execution.started");
        assert_eq!(value["channel"], "executions");
        assert_eq!(value["offset"], 12);
        assert_eq!(value["data"]["event_id"], "e");
        let error =
            Protocol::Json.encode(&ServerMessage::error(&ProtocolError::new(ErrorCode::RateLimited, "slow down")));
        assert!(error.is_text());
        let value: Value = serde_json::from_slice(&error).expect("json");
        assert_eq!(value["type"], "error");
        assert_eq!(value["code"], "rate_limited");
        assert!(value.get("id").is_none());
        assert!(value["timestamp"].is_string());
    }
}
