//! The SSE transport at `/sse`: one subscription per request, given by query parameters, resumed
//! by `Last-Event-ID` (header, or `last_event_id` query) and, optionally, `since_epoch` (the
//! `epoch` of the `subscribed` event the stream started with: the same JSON object as on the
//! WebSocket, sent as `event: subscribed`). The write-only half turns queued frames
//! into `id:` (offset) / `event:` (type) / `data:` records, one chunk per wake-up, with a comment
//! line heartbeat; gzip-compressed for a client that accepts it (see [`crate::sse_gzip`]).
//! Everything else is the same [`Session`] the WebSocket uses.

use crate::channel::Channel;
use crate::gateway::{Admission, Gateway, Transport};
use crate::outbound::{FrameKind, Outbound, Payload};
use crate::protocol::{ErrorCode, Protocol, SubscribeRequest, parse_epoch};
use crate::series::WriterMeters;
use crate::session::{Inbound, Session};
use crate::sse_gzip::GzipBody;
use axum::body::Body;
use axum::extract::{Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use runcast_contract::gateway::Filters;
use runcast_runtime::auth::json_error;
use serde::Deserialize;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use tokio_util::sync::{CancellationToken, DropGuard};

const WRITE_BATCH: usize = 256;

/// Every query parameter `/sse` accepts; anything else is a 400 naming it and these.
pub(crate) const SSE_PARAMETERS: [&str; 9] = [
    "channel",
    "workflow_ids",
    "execution_ids",
    "statuses",
    "types",
    "last_event_id",
    "since_epoch",
    "snapshot",
    "token",
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SseQuery {
    channel: Option<String>,
    workflow_ids: Option<String>,
    execution_ids: Option<String>,
    statuses: Option<String>,
    types: Option<String>,
    last_event_id: Option<String>,
    since_epoch: Option<String>,
    snapshot: Option<bool>,
    token: Option<String>,
}

fn bad_request(code: ErrorCode, message: &str) -> Response {
    json_error(StatusCode::BAD_REQUEST, code.as_str(), message)
}

/// What `/sse` was asked for, validated before anything is subscribed.
#[derive(Debug)]
pub(crate) struct SseRequest {
    pub channel: Channel,
    pub filters: Filters,
    pub since_offset: Option<u64>,
    pub since_epoch: Option<String>,
    pub snapshot: bool,
    pub token: Option<String>,
}

/// A refused `/sse` request: always a 400 with the gateway's error codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadRequest {
    pub code: ErrorCode,
    pub message: String,
}

impl BadRequest {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// Parses and validates the query string and the `Last-Event-ID` header of an `/sse` request:
/// every input is either a request or a coded error, never ignored.
pub(crate) fn parse_request(
    query: Option<&str>,
    last_event_id: Option<&HeaderValue>,
) -> Result<SseRequest, BadRequest> {
    let invalid = |message: String| BadRequest::new(ErrorCode::InvalidMessage, message);
    let accepted = SSE_PARAMETERS.join(", ");
    let uri: axum::http::Uri = format!("/sse?{}", query.unwrap_or(""))
        .parse()
        .map_err(|_| invalid(format!("the query string is malformed (accepted parameters: {accepted})")))?;
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map_err(|err| invalid(format!("the query string is malformed: {}", err.body_text())))?;
    for (name, _) in &pairs {
        if !SSE_PARAMETERS.contains(&name.as_str()) {
            return Err(invalid(format!("unknown query parameter '{}': accepted are {accepted}", name.escape_debug())));
        }
    }
    let Query(query) = Query::<SseQuery>::try_from_uri(&uri)
        .map_err(|err| invalid(format!("invalid query: {} (accepted parameters: {accepted})", err.body_text())))?;
    let Some(channel) = query.channel.as_deref() else {
        return Err(invalid("the `channel` query parameter is required".to_owned()));
    };
    let channel = Channel::parse(channel).map_err(|err| BadRequest::new(ErrorCode::UnknownChannel, err.0))?;
    let filters = Filters::from_query(
        query.workflow_ids.as_deref(),
        query.execution_ids.as_deref(),
        query.statuses.as_deref(),
        query.types.as_deref(),
    )
    .map_err(|err| BadRequest::new(ErrorCode::InvalidFilter, err.0))?;
    let header = match last_event_id {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| invalid("Last-Event-ID must be an offset (ASCII digits)".to_owned()))?
                .to_owned(),
        ),
    };
    let since_offset = match header.or(query.last_event_id).as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => Some(
            text.parse::<u64>()
                .map_err(|_| invalid("Last-Event-ID must be an offset (a non-negative integer)".to_owned()))?,
        ),
    };
    let since_epoch = parse_epoch(query.since_epoch).map_err(|err| BadRequest::new(err.code, err.message))?;
    Ok(SseRequest {
        channel,
        filters,
        since_offset,
        since_epoch,
        snapshot: query.snapshot.unwrap_or(false),
        token: query.token,
    })
}

pub(crate) async fn stream(State(gw): State<Arc<Gateway>>, RawQuery(query): RawQuery, headers: HeaderMap) -> Response {
    let request = match parse_request(query.as_deref(), headers.get("last-event-id")) {
        Ok(request) => request,
        Err(err) => return bad_request(err.code, &err.message),
    };
    let admission = match gw.admit(&headers, request.token.as_deref(), Transport::Sse) {
        Ok(admission) => admission,
        Err(refusal) => return refusal.into_response(),
    };
    let SseRequest { channel, filters, since_offset, since_epoch, snapshot, token: _ } = request;

    let outbound = Outbound::bounded(gw.limits.queue_capacity, gw.limits.queue_bytes);
    let mut session = Session::new(gw.clone(), Protocol::Json, &admission, outbound.clone());
    if let Err(err) =
        session.subscribe(SubscribeRequest { channel, filters, since_offset, since_epoch, snapshot, id: None })
    {
        let status = match err.code {
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        return json_error(status, err.code.as_str(), &err.message);
    }
    let closed = CancellationToken::new();
    gw.tasks.spawn(session.run(Box::pin(futures::stream::pending::<Inbound>()), closed.clone()));
    let compressed = gw.limits.compression && crate::sse_gzip::accepts_gzip(&headers);
    if compressed {
        crate::permessage_deflate::negotiated();
    }
    let gzip = compressed.then(GzipBody::new);
    let body = Body::from_stream(records(outbound, closed.drop_guard(), admission, gw.limits.sse_heartbeat, gzip));
    let mut response = body.into_response();
    let headers = response.headers_mut();
    if compressed {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    // A cache or proxy must not hand the compressed body to a client that did not ask for it.
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Reverse proxies (nginx) must not buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

struct Writer {
    outbound: Arc<Outbound>,
    /// Ends the session when the client goes away (the body is dropped).
    _closed: DropGuard,
    /// The connection's place under the caps, held as long as the response.
    _admission: Admission,
    heartbeat: tokio::time::Interval,
    meters: WriterMeters,
    /// `Some` when the body is gzip-compressed.
    gzip: Option<GzipBody>,
    done: bool,
}

/// The body: everything queued at each wake-up as one chunk, or a heartbeat comment when idle.
fn records(
    outbound: Arc<Outbound>,
    closed: DropGuard,
    admission: Admission,
    heartbeat: std::time::Duration,
    gzip: Option<GzipBody>,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> {
    let mut interval = tokio::time::interval(heartbeat);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.reset();
    let writer = Writer {
        outbound,
        _closed: closed,
        _admission: admission,
        heartbeat: interval,
        meters: WriterMeters::new(Transport::Sse),
        gzip,
        done: false,
    };
    futures::stream::unfold(writer, |mut writer| async move {
        if writer.done {
            return None;
        }
        loop {
            if writer.outbound.has_frames() {
                let chunk = writer.drain();
                return Some((Ok(chunk), writer));
            }
            tokio::select! {
                _ = writer.outbound.ready() => {}
                _ = writer.heartbeat.tick() => {
                    const HEARTBEAT: &[u8] = b": heartbeat\n\n";
                    let chunk = match writer.gzip.as_mut() {
                        Some(gzip) => gzip.stored(HEARTBEAT),
                        None => Bytes::from_static(HEARTBEAT),
                    };
                    return Some((Ok(chunk), writer));
                }
            }
        }
    })
}

impl Writer {
    fn drain(&mut self) -> Bytes {
        let mut frames = Vec::with_capacity(WRITE_BATCH);
        self.outbound.pop_batch_bytes(WRITE_BATCH, crate::ws::WRITE_BATCH_BYTES, &mut frames);
        let size: usize = frames.iter().map(|f| f.payload.len() + 64).sum();
        let mut chunk = BytesMut::with_capacity(size);
        let (events, oldest) = crate::outbound::events_and_oldest(&frames);
        for frame in frames {
            let text = self.text(&mut chunk);
            match &frame.kind {
                FrameKind::Event(meta) => {
                    let _ = write!(text, "id: {}\nevent: {}\ndata: ", meta.offset, meta.event_type);
                }
                FrameKind::Control { kind } => {
                    // A draining replica's delay also becomes the EventSource's own retry time.
                    if *kind == "reconnect"
                        && let Some(delay) = retry_after_ms(&frame.payload)
                    {
                        let _ = writeln!(text, "retry: {delay}");
                    }
                    let _ = write!(text, "event: {kind}\ndata: ");
                }
                FrameKind::Close { .. } => {
                    self.done = true;
                    break;
                }
                // WebSocket control frames: never queued for an SSE stream.
                FrameKind::Ping | FrameKind::Pong => continue,
            }
            // Frames are single-line JSON, so one `data:` line carries each.
            self.payload(&mut chunk, &frame.payload);
            self.text(&mut chunk).put_slice(b"\n\n");
        }
        if let Some(gzip) = self.gzip.as_mut() {
            if self.done { gzip.finish(&mut chunk) } else { gzip.flush(&mut chunk) }
        }
        self.meters.written(events, oldest);
        self.heartbeat.reset();
        chunk.freeze()
    }

    /// Where the record's own text goes: into the chunk, or (gzip) out as stored bytes.
    fn text<'a>(&'a mut self, chunk: &'a mut BytesMut) -> &'a mut BytesMut {
        match self.gzip.as_mut() {
            Some(gzip) => gzip.plain(),
            None => chunk,
        }
    }

    /// A frame's payload: its bytes, or (gzip) the compressed form every connection shares.
    fn payload(&mut self, chunk: &mut BytesMut, payload: &Payload) {
        match self.gzip.as_mut() {
            Some(gzip) => match payload.compressed() {
                Some(compressed) => gzip.deflated(chunk, compressed),
                None => gzip.plain().put_slice(payload),
            },
            None => chunk.put_slice(payload),
        }
    }
}

/// `retry_after_ms` of a JSON `reconnect` frame.
fn retry_after_ms(frame: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(frame).ok()?.get("retry_after_ms")?.as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_reconnect_delay_is_read_from_the_frame() {
        assert_eq!(retry_after_ms(br#"{"type":"reconnect","retry_after_ms":1234}"#), Some(1234));
        assert_eq!(retry_after_ms(br#"{"type":"reconnect"}"#), None);
        assert_eq!(retry_after_ms(b"not json"), None);
    }

    fn parse(query: &str) -> Result<SseRequest, BadRequest> {
        parse_request(Some(query), None)
    }

    #[test]
    fn unknown_parameters_and_values_are_named_with_what_is_accepted() {
        let err = parse("channel=executions&status=runing").expect_err("status is not a parameter");
        assert_eq!(err.code, ErrorCode::InvalidMessage);
        assert!(err.message.contains("'status'") && err.message.contains("statuses"), "{}", err.message);
        let err = parse("channel=executions&statuses=runing").expect_err("runing is not a status");
        assert_eq!(err.code, ErrorCode::InvalidFilter);
        assert!(err.message.contains("'runing'") && err.message.contains("running"), "{}", err.message);
        assert_eq!(parse("statuses=running").expect_err("no channel").code, ErrorCode::InvalidMessage);
        assert_eq!(parse("channel=jobs").expect_err("no such channel").code, ErrorCode::UnknownChannel);
        assert_eq!(parse("channel=executions&snapshot=maybe").expect_err("not a bool").code, ErrorCode::InvalidMessage);
        let request = parse("channel=executions:e1&statuses=running,failed&last_event_id=41&snapshot=true&token=t")
            .expect("valid");
        assert_eq!((request.since_offset, request.snapshot, request.token.as_deref()), (Some(41), true, Some("t")));
    }

    #[test]
    fn last_event_id_must_be_an_ascii_offset() {
        let header = |bytes: &[u8]| HeaderValue::from_bytes(bytes).expect("valid header bytes");
        let parse = |value: &HeaderValue| parse_request(Some("channel=executions"), Some(value));
        assert_eq!(parse(&header(b"12")).expect("an offset").since_offset, Some(12));
        assert_eq!(parse(&header("1\u{e9}".as_bytes())).expect_err("non-ASCII").code, ErrorCode::InvalidMessage);
        assert_eq!(parse(&header(b"-1")).expect_err("negative").code, ErrorCode::InvalidMessage);
        // The header wins over the query parameter.
        let request = parse_request(Some("channel=executions&last_event_id=1"), Some(&header(b"7"))).expect("valid");
        assert_eq!(request.since_offset, Some(7));
    }

    fn part() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("channel".to_owned()),
            Just("statuses".to_owned()),
            Just("types".to_owned()),
            Just("last_event_id".to_owned()),
            Just("since_epoch".to_owned()),
            Just("snapshot".to_owned()),
            Just("executions".to_owned()),
            Just("running".to_owned()),
            Just("%ZZ".to_owned()),
            Just("%C3%A9".to_owned()),
            "[a-z0-9:._%,+-]{0,10}",
            any::<String>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_queries_and_headers_are_answered(
            query in any::<String>(), header in prop::collection::vec(any::<u8>(), 0..24),
        ) {
            let header = HeaderValue::from_bytes(&header).ok();
            match parse_request(Some(&query), header.as_ref()) {
                Ok(request) => prop_assert!(!request.channel.to_string().is_empty()),
                Err(err) => prop_assert!(!err.message.is_empty()),
            }
        }

        #[test]
        fn plausible_queries_are_answered(pairs in prop::collection::vec((part(), part()), 0..6)) {
            let query = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
            match parse(&query) {
                Ok(request) => {
                    // Accepted only with a valid channel and nothing unknown.
                    prop_assert!(pairs.iter().all(|(k, _)| SSE_PARAMETERS.contains(&k.as_str())));
                    prop_assert!(Channel::parse(&request.channel.to_string()).is_ok());
                }
                Err(err) => prop_assert!(!err.message.is_empty()),
            }
        }
    }
}
