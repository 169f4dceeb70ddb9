//! What a received message says, found by byte search in place (no JSON or protobuf decoding per
//! delivery): the marker `seq=<n> t=<nanos>` the publisher puts in a string field of every event,
//! which appears byte for byte in the gateway's JSON frame and in the protobuf NATS delivers, and
//! the gateway's frame type and `offset`.

use crate::wsframe::find;

/// The marker of one published event: its sequence (1, 2, …) and publish time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub seq: u64,
    pub published_ns: u64,
}

impl Marker {
    /// The text the publisher embeds.
    pub fn text(&self) -> String {
        format!("seq={} t={}", self.seq, self.published_ns)
    }
}

pub fn find_marker(bytes: &[u8]) -> Option<Marker> {
    let start = find(bytes, b"seq=")? + 4;
    let (seq, used) = digits(&bytes[start..])?;
    let rest = bytes[start + used..].strip_prefix(b" t=")?;
    let (published_ns, _) = digits(rest)?;
    Some(Marker { seq, published_ns })
}

/// The unsigned number at the start of `bytes` and how many bytes it took.
fn digits(bytes: &[u8]) -> Option<(u64, usize)> {
    let len = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if len == 0 || len > 19 {
        return None;
    }
    let value = bytes[..len].iter().fold(0u64, |acc, b| acc * 10 + u64::from(b - b'0'));
    Some((value, len))
}

/// A text frame of the gateway's JSON protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayFrame<'a> {
    /// An event: its stream offset and the marker, when the publisher's.
    Event {
        offset: Option<u64>,
        marker: Option<Marker>,
    },
    Subscribed,
    /// The client fell behind: resubscribe from `offset`.
    Resync {
        offset: Option<u64>,
    },
    /// An `error` or any other control message, by its type.
    Control(&'a [u8]),
}

const TYPE_KEY: &[u8] = b"\"type\":\"";
const OFFSET_KEY: &[u8] = b"\"offset\":";

/// Events carry a dotted type (`execution.step.started`); control messages do not.
pub fn classify(frame: &[u8]) -> GatewayFrame<'_> {
    let kind = find(frame, TYPE_KEY)
        .map(|at| &frame[at + TYPE_KEY.len()..])
        .and_then(|rest| rest.iter().position(|b| *b == b'"').map(|end| &rest[..end]))
        .unwrap_or_default();
    // The frame's own `offset` comes before `data` (whose state has an `offset` of its own).
    let offset = || find(frame, OFFSET_KEY).and_then(|at| digits(&frame[at + OFFSET_KEY.len()..])).map(|(n, _)| n);
    match kind {
        b"subscribed" => GatewayFrame::Subscribed,
        b"resync" => GatewayFrame::Resync { offset: offset() },
        kind if kind.contains(&b'.') => GatewayFrame::Event { offset: offset(), marker: find_marker(frame) },
        kind => GatewayFrame::Control(kind),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_marker_in_json_and_in_protobuf_bytes() {
        let marker = Marker { seq: 42, published_ns: 1_790_000_000_123_456_789 };
        let json = format!(r#"{{"data":{{"step_changed":{{"name":"{}","status":"running"}}}}}}"#, marker.text());
        assert_eq!(find_marker(json.as_bytes()), Some(marker));
        let mut proto = vec![0x0a, 0x03, b'a', b'b', b'c', 0x6a, 0x20, 0x12];
        proto.push(marker.text().len() as u8);
        proto.extend_from_slice(marker.text().as_bytes());
        proto.extend_from_slice(&[0x18, 0x02]);
        assert_eq!(find_marker(&proto), Some(marker));
    }

    #[test]
    fn a_broken_marker_is_none() {
        for text in ["", "seq=", "seq=x t=1", "seq=1 t=", "seq=1t=2", "seq=99999999999999999999 t=1"] {
            assert_eq!(find_marker(text.as_bytes()), None, "{text}");
        }
    }

    #[test]
    fn classifies_gateway_frames() {
        let event = br#"{"type":"execution.step.started","timestamp":"2026-01-01T00:00:00Z","channel":"executions","offset":123,"data":{"offset":0,"step_changed":{"name":"seq=7 t=99"}}}"#;
        assert_eq!(
            classify(event),
            GatewayFrame::Event { offset: Some(123), marker: Some(Marker { seq: 7, published_ns: 99 }) }
        );
        assert_eq!(classify(br#"{"type":"subscribed","channel":"executions","offset":0}"#), GatewayFrame::Subscribed);
        assert_eq!(
            classify(br#"{"type":"resync","timestamp":"x","channel":"executions","offset":55,"reason":"behind"}"#),
            GatewayFrame::Resync { offset: Some(55) }
        );
        assert_eq!(classify(br#"{"type":"error","code":"rate_limited"}"#), GatewayFrame::Control(b"error".as_slice()));
        assert_eq!(classify(b"not json"), GatewayFrame::Control(b"".as_slice()));
    }
}
