//! WebSocket compression, `permessage-deflate` (RFC 7692), without context takeover in either
//! direction: every message is compressed on its own.
//!
//! That is what keeps it cheap here. An event's frame is compressed once, the first time a
//! connection that negotiated compression sends it, and every other such connection sends the
//! same compressed bytes (see [`crate::outbound::Payload`]); a connection keeps no compressor and
//! no window, so an idle one costs what it did. With context takeover each connection would need
//! its own compressor (~300 KiB in zlib) and would compress every event again.
//!
//! Clients compress what they send too (browsers do, once it is negotiated). Their messages are
//! small and rare, and tungstenite, which reads them, knows no extensions: [`Inflating`] sits
//! under it and hands it each compressed message as the plain frame it stands for.

use axum::http::{HeaderMap, HeaderValue, header::SEC_WEBSOCKET_EXTENSIONS};
use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use std::cell::RefCell;
use std::io::{self, Cursor};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

const EXTENSION: &str = "permessage-deflate";

/// What the 101 answers to an acceptable offer: neither side keeps its compression context
/// between messages (RFC 7692 §7.1.1 lets the server ask this of the client even unasked).
const ACCEPTED: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
/// The same, to an offer that bounded the server's window at 15 bits: the bound is echoed back
/// (RFC 7692 §7.1.2.1); 15 is the window this side compresses with.
const ACCEPTED_WINDOW_15: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=15";

/// Messages shorter than this go out plain: a short control reply gains a few bytes at most, and
/// the frame says per message whether it is compressed.
pub(crate) const MIN_COMPRESSED_BYTES: usize = 256;

/// zlib's level 1. Measured on this project's 2-core VM (release build, a compressor reused): a
/// 588-byte progress event in 4.9 µs to 375 bytes, a 6 KiB one with 40 steps in 7.8 µs to 998
/// bytes; level 2 takes twice the time (to 298 and 725 bytes), level 6 about 2.5 times (295 and
/// 628). Big states, where the bytes are, shrink ~6× at level 1 already; Centrifugo's default is
/// level 1 too.
const LEVEL: u32 = 1;

/// RFC 7692 §7.2.1: a compressed message is sent without the empty block that ends a sync flush,
/// and the receiver puts it back before inflating.
pub(crate) const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The `Sec-WebSocket-Extensions` value of the 101 when the client offered `permessage-deflate`
/// with parameters this side can honour, else `None` (no compression, the connection as before).
/// An offer asking the server for a window below 15 bits is declined: this side compresses once
/// for every connection, with a 32 KiB window.
pub(crate) fn negotiate(headers: &HeaderMap) -> Option<HeaderValue> {
    let offers = headers.get_all(SEC_WEBSOCKET_EXTENSIONS).into_iter().filter_map(|value| value.to_str().ok());
    offers.flat_map(|value| value.split(',')).find_map(|offer| {
        let mut parts = offer.split(';').map(str::trim);
        if !parts.next().is_some_and(|name| name.eq_ignore_ascii_case(EXTENSION)) {
            return None;
        }
        accept(parts).map(HeaderValue::from_static)
    })
}

/// The answer to one `permessage-deflate` offer, given its parameters; `None` declines it.
fn accept<'a>(parameters: impl Iterator<Item = &'a str>) -> Option<&'static str> {
    let mut seen = Vec::new();
    let mut server_window = None;
    for parameter in parameters {
        let (name, value) = match parameter.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (parameter, None),
        };
        let name = name.to_ascii_lowercase();
        // RFC 7692 §7: a parameter given twice, an unknown one or a bad value declines the offer.
        if seen.contains(&name) {
            return None;
        }
        let window_bits =
            |value: Option<&str>| value.and_then(|v| v.parse::<u8>().ok()).filter(|bits| (8..=15).contains(bits));
        match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("server_max_window_bits", value) => server_window = Some(window_bits(value)?),
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", value) => {
                window_bits(value)?;
            }
            _ => return None,
        }
        seen.push(name);
    }
    match server_window {
        None => Some(ACCEPTED),
        Some(15) => Some(ACCEPTED_WINDOW_15),
        Some(_) => None,
    }
}

/// One message compressed on its own (no context before or after it), or `None` when that would
/// not make it shorter. Small messages are not tried (see [`MIN_COMPRESSED_BYTES`]).
pub(crate) fn compress(message: &[u8]) -> Option<Bytes> {
    if message.len() < MIN_COMPRESSED_BYTES {
        return None;
    }
    thread_local! {
        // One per thread, reset per message: a new one costs its tables' allocation and
        // clearing, more than compressing a short message.
        static COMPRESSOR: RefCell<Compress> = RefCell::new(Compress::new(Compression::new(LEVEL), false));
    }
    let compressed = COMPRESSOR.with(|compressor| {
        let mut compressor = compressor.borrow_mut();
        compressor.reset();
        compress_with(&mut compressor, message)
    })?;
    let meters = meters();
    meters.plain_bytes.increment(message.len() as u64);
    meters.compressed_bytes.increment(compressed.len() as u64);
    Some(compressed)
}

/// Counts a connection that negotiated compression.
pub(crate) fn negotiated() {
    meters().negotiated.increment(1);
}

/// Resolved once: a registry lookup per message would cost more than counting it.
struct Meters {
    negotiated: metrics::Counter,
    plain_bytes: metrics::Counter,
    compressed_bytes: metrics::Counter,
}

fn meters() -> &'static Meters {
    static METERS: std::sync::OnceLock<Meters> = std::sync::OnceLock::new();
    METERS.get_or_init(|| Meters {
        negotiated: metrics::counter!("runcast_ws_compression_negotiated_total"),
        plain_bytes: metrics::counter!("runcast_ws_compressed_bytes_total", "form" => "plain"),
        compressed_bytes: metrics::counter!("runcast_ws_compressed_bytes_total", "form" => "compressed"),
    })
}

fn compress_with(compressor: &mut Compress, message: &[u8]) -> Option<Bytes> {
    // No more room than the message itself: a compression that fills it gains nothing, and stops.
    let mut compressed = Vec::with_capacity(message.len());
    loop {
        let consumed = usize::try_from(compressor.total_in()).ok()?;
        compressor.compress_vec(&message[consumed..], &mut compressed, FlushCompress::Sync).ok()?;
        let done = compressor.total_in() == message.len() as u64;
        if compressed.len() == compressed.capacity() {
            return None;
        }
        if done {
            break;
        }
    }
    if compressed.ends_with(&SYNC_TAIL) {
        compressed.truncate(compressed.len() - SYNC_TAIL.len());
    }
    // Shrunk to fit: the recent-events window may keep it for replays.
    Some(Bytes::from(compressed.into_boxed_slice()))
}

/// Why a compressed message was not inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InflateError {
    /// It inflates beyond the socket's message limit.
    TooBig,
    /// It is not deflate data.
    Corrupt,
}

/// A client's compressed message, inflated to at most `limit` bytes.
pub(crate) fn inflate(compressed: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    let input = [compressed, &SYNC_TAIL].concat();
    let mut decompressor = Decompress::new(false);
    let mut message = Vec::with_capacity((compressed.len() * 4).clamp(64, limit + 1));
    loop {
        if message.len() == message.capacity() {
            // Doubling, up to one byte beyond the limit: that byte tells a message at the limit
            // from one past it.
            message.reserve(message.capacity().min(limit + 1 - message.len()).max(1));
        }
        let (taken, made) = (decompressor.total_in(), decompressor.total_out());
        let consumed = usize::try_from(taken).map_err(|_| InflateError::Corrupt)?;
        let status = decompressor
            .decompress_vec(&input[consumed..], &mut message, FlushDecompress::Sync)
            .map_err(|_| InflateError::Corrupt)?;
        if message.len() > limit {
            return Err(InflateError::TooBig);
        }
        // A sender may end a message with a final block instead of a flush (RFC 7692 §7.2.3.4).
        let all_in = decompressor.total_in() == input.len() as u64;
        if status == Status::StreamEnd || (all_in && message.len() < message.capacity()) {
            return Ok(message);
        }
        if decompressor.total_in() == taken && decompressor.total_out() == made {
            return Err(InflateError::Corrupt);
        }
    }
}

/// Where the reader is in the client's byte stream.
#[derive(Debug, Clone, Copy)]
enum Position {
    /// Reading a frame header (its bytes gather in `Translation::header`).
    Header,
    /// Inside a plain frame's payload: passed on as it is.
    Passing { left: u64 },
    /// Inside a compressed message's frame: unmasked into `Translation::message`.
    Taking { left: u64, mask: [u8; 4], at: usize, last: bool },
    /// The stream broke the protocol: what follows is not read.
    Failed,
}

/// The client's byte stream with every compressed message replaced by the plain frame it stands
/// for: one final frame, masked with a zero key, the inflated payload. Plain frames, and control
/// frames between a compressed message's fragments, pass as they are, so tungstenite still
/// checks everything it checked before. What breaks the extension's rules becomes a frame
/// tungstenite refuses (reserved bits set: 1002), and a message inflating beyond the limit a
/// frame header beyond its size limit (1009): the client learns why, as for plain frames.
/// Pure (bytes in, bytes out), so it is tested without a socket.
#[derive(Debug)]
struct Translation {
    position: Position,
    header: [u8; 14],
    header_len: usize,
    /// The compressed message being read: its opcode and payload so far (unmasked).
    compressed: Option<OpCode>,
    message: Vec<u8>,
    /// Translated bytes not yet read.
    out: Vec<u8>,
    out_read: usize,
    /// The largest message, inflated or not, that tungstenite accepts.
    limit: usize,
}

impl Translation {
    fn new(limit: usize) -> Self {
        Self {
            position: Position::Header,
            header: [0; 14],
            header_len: 0,
            compressed: None,
            message: Vec::new(),
            out: Vec::new(),
            out_read: 0,
            limit,
        }
    }

    fn pending(&self) -> &[u8] {
        &self.out[self.out_read..]
    }

    fn consume(&mut self, read: usize) {
        self.out_read += read;
        if self.out_read == self.out.len() {
            // Released, not kept: an idle connection holds no buffer.
            self.out = Vec::new();
            self.out_read = 0;
        }
    }

    fn feed(&mut self, mut input: &[u8]) {
        while !input.is_empty() {
            match self.position {
                Position::Failed => return,
                Position::Header => {
                    let take = (self.header.len() - self.header_len).min(input.len());
                    self.header[self.header_len..self.header_len + take].copy_from_slice(&input[..take]);
                    let mut cursor = Cursor::new(&self.header[..self.header_len + take]);
                    match FrameHeader::parse(&mut cursor) {
                        Ok(None) => {
                            self.header_len += take;
                            input = &input[take..];
                        }
                        Ok(Some((header, len))) => {
                            // The header ended inside what was copied: the rest is payload.
                            let used = usize::try_from(cursor.position()).unwrap_or(0) - self.header_len;
                            input = &input[used..];
                            let size = self.header_len + used;
                            self.header_len = 0;
                            self.start_frame(&header, len, size);
                        }
                        Err(_) => self.fail(),
                    }
                }
                Position::Passing { left } => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                    self.out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    let left = left - take as u64;
                    self.position = if left == 0 { Position::Header } else { Position::Passing { left } };
                }
                Position::Taking { left, mask, at, last } => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                    let unmasked = input[..take].iter().enumerate().map(|(i, byte)| byte ^ mask[(at + i) % 4]);
                    self.message.extend(unmasked);
                    input = &input[take..];
                    let left = left - take as u64;
                    if left > 0 {
                        self.position = Position::Taking { left, mask, at: at + take, last };
                    } else if last {
                        self.finish_message();
                    } else {
                        self.position = Position::Header;
                    }
                }
            }
        }
    }

    /// A frame header was read; its payload follows.
    fn start_frame(&mut self, header: &FrameHeader, len: u64, size: usize) {
        let data = matches!(header.opcode, OpCode::Data(Data::Text | Data::Binary));
        let continuation = matches!(header.opcode, OpCode::Data(Data::Continue));
        let starts_compressed = data && header.rsv1;
        let continues_compressed = continuation && self.compressed.is_some();
        if !starts_compressed && !continues_compressed {
            if data && self.compressed.is_some() {
                // A new message before the compressed one ended.
                return self.fail();
            }
            self.out.extend_from_slice(&self.header[..size]);
            self.position = if len == 0 { Position::Header } else { Position::Passing { left: len } };
            return;
        }
        let Some(mask) = header.mask else {
            return self.fail();
        };
        // Only a message's first frame says it is compressed (RFC 7692 §6.1).
        if header.rsv2 || header.rsv3 || (continues_compressed && header.rsv1) {
            return self.fail();
        }
        if starts_compressed {
            self.compressed = Some(header.opcode);
        }
        if self.message.len() as u64 + len > self.limit as u64 {
            return self.too_big();
        }
        self.position = Position::Taking { left: len, mask, at: 0, last: header.is_final };
        if len == 0 && header.is_final {
            self.finish_message();
        }
    }

    fn finish_message(&mut self) {
        let opcode = self.compressed.take().unwrap_or(OpCode::Data(Data::Binary));
        let compressed = std::mem::take(&mut self.message);
        match inflate(&compressed, self.limit) {
            Ok(message) => {
                let header = FrameHeader { is_final: true, opcode, mask: Some([0; 4]), ..FrameHeader::default() };
                self.write_header(&header, message.len() as u64);
                self.out.extend_from_slice(&message);
                self.position = Position::Header;
            }
            Err(InflateError::TooBig) => self.too_big(),
            Err(InflateError::Corrupt) => self.fail(),
        }
    }

    fn write_header(&mut self, header: &FrameHeader, len: u64) {
        // Writing into a `Vec` cannot fail.
        let _ = header.format(len, &mut self.out);
    }

    /// A frame with every reserved bit set: tungstenite fails the connection as a protocol error.
    fn fail(&mut self) {
        let header = FrameHeader {
            rsv1: true,
            rsv2: true,
            rsv3: true,
            opcode: OpCode::Data(Data::Text),
            mask: Some([0; 4]),
            ..FrameHeader::default()
        };
        self.write_header(&header, 0);
        self.stop();
    }

    /// A frame header announcing one byte beyond the limit: tungstenite refuses it as too long.
    fn too_big(&mut self) {
        let header = FrameHeader { opcode: OpCode::Data(Data::Text), mask: Some([0; 4]), ..FrameHeader::default() };
        self.write_header(&header, self.limit as u64 + 1);
        self.stop();
    }

    fn stop(&mut self) {
        self.position = Position::Failed;
        self.message = Vec::new();
        self.compressed = None;
    }
}

pin_project_lite::pin_project! {
    /// The read half of a connection as tungstenite reads it: for a connection that negotiated
    /// `permessage-deflate`, its compressed messages inflated (see [`Translation`]); otherwise
    /// the bytes as they come.
    #[derive(Debug)]
    pub(crate) struct Inflating<R> {
        #[pin]
        inner: R,
        // Boxed: a connection without compression carries a pointer, not the translation.
        translation: Option<Box<Translation>>,
    }
}

impl<R> Inflating<R> {
    /// `limit`: the largest message tungstenite is configured to accept.
    pub(crate) fn new(inner: R, limit: usize) -> Self {
        Self { inner, translation: Some(Box::new(Translation::new(limit))) }
    }

    /// Compression was not negotiated: reads pass through.
    pub(crate) fn off(inner: R) -> Self {
        Self { inner, translation: None }
    }
}

impl<R: AsyncRead> AsyncRead for Inflating<R> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        let Some(translation) = this.translation.as_mut() else {
            return this.inner.poll_read(cx, buf);
        };
        loop {
            let pending = translation.pending();
            if !pending.is_empty() {
                let n = pending.len().min(buf.remaining());
                buf.put_slice(&pending[..n]);
                translation.consume(n);
                return Poll::Ready(Ok(()));
            }
            if matches!(translation.position, Position::Failed) {
                // What the stream was translated to ends the connection before this is read.
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 512];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(this.inner.as_mut().poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            translation.feed(read.filled());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_static(value));
        }
        headers
    }

    fn answer(values: &[&'static str]) -> Option<String> {
        negotiate(&headers(values)).map(|value| value.to_str().expect("ascii").to_owned())
    }

    #[test]
    fn what_browsers_offer_is_accepted_without_context_takeover_either_way() {
        // Chrome's and Firefox's offer, and the bare one.
        assert_eq!(answer(&["permessage-deflate; client_max_window_bits"]).as_deref(), Some(ACCEPTED));
        assert_eq!(answer(&["permessage-deflate"]).as_deref(), Some(ACCEPTED));
        assert_eq!(
            answer(&[
                "permessage-deflate; client_no_context_takeover; server_no_context_takeover; client_max_window_bits=10"
            ])
            .as_deref(),
            Some(ACCEPTED)
        );
        assert_eq!(answer(&["Permessage-Deflate;Client_Max_Window_Bits=\"12\""]).as_deref(), Some(ACCEPTED));
        assert_eq!(answer(&["permessage-deflate; server_max_window_bits=15"]).as_deref(), Some(ACCEPTED_WINDOW_15));
        assert_eq!(answer(&[]), None, "nothing offered: no compression");
        assert_eq!(answer(&["x-webkit-deflate-frame"]), None, "another extension is not ours");
    }

    #[test]
    fn an_offer_this_side_cannot_honour_is_declined_and_the_next_one_taken() {
        assert_eq!(answer(&["permessage-deflate; server_max_window_bits=10"]), None, "a smaller window");
        assert_eq!(answer(&["permessage-deflate; server_max_window_bits"]), None, "a window needs a value");
        assert_eq!(answer(&["permessage-deflate; client_max_window_bits=7"]), None, "out of range");
        assert_eq!(answer(&["permessage-deflate; server_no_context_takeover; server_no_context_takeover"]), None);
        assert_eq!(answer(&["permessage-deflate; mystery"]), None, "an unknown parameter");
        assert_eq!(answer(&["permessage-deflate; server_no_context_takeover=1"]), None, "a value where none belongs");
        assert_eq!(
            answer(&["permessage-deflate; server_max_window_bits=9, permessage-deflate; client_max_window_bits"])
                .as_deref(),
            Some(ACCEPTED),
            "the client's fallback offer"
        );
        assert_eq!(answer(&["x-custom", "permessage-deflate"]).as_deref(), Some(ACCEPTED), "across header lines");
    }

    /// An event frame as the gateway sends it, with a few steps in its state.
    fn event_frame() -> String {
        let steps: Vec<String> = (0..8)
            .map(|i| format!(r#"{{"step_id":"step-{i}","name":"build {i}","status":"completed","started_at":"2026-12-02T09:15:0{i}.498Z"}}"#))
            .collect();
        format!(
            r#"{{"type":"execution.progress","timestamp":"2026-12-02T09:15:04.498Z","channel":"executions","offset":1234,"data":{{"event_id":"0193a6f0-7c1e-7d2a-9b3e-5f0c1d2e3f40","tenant_id":"acme","execution_id":"0193a6ef-12ab-7cde-8f01-23456789abcd","type":"execution.progress","version":5,"state":{{"execution_id":"0193a6ef-12ab-7cde-8f01-23456789abcd","status":"running","progress":40,"steps":[{}]}}}}}}"#,
            steps.join(",")
        )
    }

    #[test]
    fn a_message_compresses_on_its_own_and_inflates_back() {
        let message = event_frame();
        let compressed = compress(message.as_bytes()).expect("JSON compresses");
        assert!(compressed.len() * 2 < message.len(), "{} of {} bytes", compressed.len(), message.len());
        assert!(!compressed.ends_with(&SYNC_TAIL), "the sync flush's empty block is left off");
        assert_eq!(inflate(&compressed, 1 << 20).expect("inflates"), message.as_bytes());
        // Without context, each message inflates alone, whatever came before it.
        let again = compress(message.as_bytes()).expect("compresses");
        assert_eq!(again, compressed, "no state carried from the first");
    }

    #[test]
    fn short_or_incompressible_messages_stay_plain() {
        assert_eq!(compress(&[b'a'; MIN_COMPRESSED_BYTES - 1]), None);
        assert!(compress(&[b'a'; MIN_COMPRESSED_BYTES]).is_some());
        // Bytes that do not compress (an xorshift sequence): the compressed form would be longer.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        assert_eq!(compress(&noise), None);
    }

    #[test]
    fn inflating_stops_at_the_limit_and_refuses_what_is_not_deflate() {
        let bomb = compress(&vec![b'a'; 1 << 20]).expect("compresses");
        assert!(bomb.len() < 16_000, "{} bytes inflate to 1 MiB", bomb.len());
        assert_eq!(inflate(&bomb, 64 * 1024), Err(InflateError::TooBig));
        assert_eq!(inflate(&bomb, 1 << 20).map(|m| m.len()), Ok(1 << 20), "exactly at the limit is fine");
        assert_eq!(inflate(&[0xff, 0xff, 0xff, 0xff, 0x00], 1024), Err(InflateError::Corrupt));
    }

    /// A client frame: masked with `mask`, its reserved bit 1 as given.
    fn client_frame(opcode: OpCode, rsv1: bool, last: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let header = FrameHeader { is_final: last, rsv1, opcode, mask: Some(mask), ..FrameHeader::default() };
        let mut frame = Vec::new();
        header.format(payload.len() as u64, &mut frame).expect("formats");
        frame.extend(payload.iter().enumerate().map(|(i, byte)| byte ^ mask[i % 4]));
        frame
    }

    const TEXT: OpCode = OpCode::Data(Data::Text);
    const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

    /// The frames tungstenite reads from the translated stream, fed `chunk` bytes at a time.
    fn read_translated(stream: &[u8], chunk: usize, limit: usize) -> Vec<Result<tungstenite::Message, String>> {
        use tokio_tungstenite::tungstenite::{self, protocol::Role};
        let mut translation = Translation::new(limit);
        for piece in stream.chunks(chunk) {
            translation.feed(piece);
        }
        let translated = translation.pending().to_vec();
        let config =
            tungstenite::protocol::WebSocketConfig::default().max_frame_size(Some(limit)).max_message_size(Some(limit));
        let mut socket = tungstenite::WebSocket::from_raw_socket(Cursor::new(translated), Role::Server, Some(config));
        let mut messages = Vec::new();
        loop {
            match socket.read() {
                Ok(message) => messages.push(Ok(message)),
                Err(tungstenite::Error::Io(_) | tungstenite::Error::ConnectionClosed) => break,
                Err(tungstenite::Error::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake)) => {
                    break;
                }
                Err(err) => {
                    messages.push(Err(err.to_string()));
                    break;
                }
            }
        }
        messages
    }

    use tokio_tungstenite::tungstenite;

    #[test]
    fn compressed_messages_reach_tungstenite_as_plain_ones_and_plain_frames_pass_as_they_are() {
        let subscribe =
            r#"{"type":"subscribe","channel":"executions","filters":{"statuses":["running","failed"]},"id":"a"}"#
                .repeat(4);
        let compressed = compress(subscribe.as_bytes()).expect("compresses");
        // Fragmented in three, a ping between the fragments.
        let (a, rest) = compressed.split_at(compressed.len() / 3);
        let (b, c) = rest.split_at(rest.len() / 2);
        let mut stream = client_frame(TEXT, false, true, b"plain before", MASK);
        stream.extend(client_frame(TEXT, true, false, a, MASK));
        stream.extend(client_frame(OpCode::Data(Data::Continue), false, false, b, [9, 8, 7, 6]));
        stream.extend(client_frame(
            OpCode::Control(tungstenite::protocol::frame::coding::Control::Ping),
            false,
            true,
            b"hi",
            MASK,
        ));
        stream.extend(client_frame(OpCode::Data(Data::Continue), false, true, c, [1, 2, 3, 4]));
        stream.extend(client_frame(TEXT, false, true, b"plain after", MASK));
        let expected = vec![
            Ok(tungstenite::Message::text("plain before")),
            Ok(tungstenite::Message::Ping(Bytes::from_static(b"hi"))),
            Ok(tungstenite::Message::text(subscribe.clone())),
            Ok(tungstenite::Message::text("plain after")),
        ];
        for chunk in [1, 3, 7, 64, stream.len()] {
            assert_eq!(read_translated(&stream, chunk, 64 * 1024), expected, "fed {chunk} bytes at a time");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// One client message: its text, whether it goes compressed, the fragments it is cut into
        /// (cut points as fractions of its wire payload), and whether a ping follows each fragment.
        #[derive(Debug, Clone)]
        struct Sent {
            text: String,
            compressed: bool,
            cuts: Vec<u8>,
            pings: bool,
        }

        fn sent() -> impl Strategy<Value = Sent> {
            // Repetitive text (compressible) or not, up to a few KiB.
            let text = prop_oneof![
                "[a-z ]{0,40}".prop_map(|word| word.repeat(60)),
                proptest::collection::vec(any::<char>(), 0..600).prop_map(|chars| chars.into_iter().collect()),
            ];
            (text, any::<bool>(), proptest::collection::vec(any::<u8>(), 0..4), any::<bool>())
                .prop_map(|(text, compressed, cuts, pings)| Sent { text, compressed, cuts, pings })
        }

        /// The client's bytes for `messages`, and the messages tungstenite should read from the
        /// translation.
        fn wire(messages: &[Sent]) -> (Vec<u8>, Vec<tungstenite::Message>) {
            use tokio_tungstenite::tungstenite::protocol::frame::coding::Control;
            let (mut bytes, mut expected) = (Vec::new(), Vec::new());
            for (n, message) in messages.iter().enumerate() {
                let body = match message.compressed {
                    true => {
                        let mut compressor = Compress::new(Compression::fast(), false);
                        compress_with(&mut compressor, message.text.as_bytes())
                            .map(|c| c.to_vec())
                            // Incompressible or short: compressed all the same (a client may).
                            .unwrap_or_else(|| deflate_anyway(message.text.as_bytes()))
                    }
                    false => message.text.as_bytes().to_vec(),
                };
                let mut points: Vec<usize> =
                    message.cuts.iter().map(|cut| body.len() * usize::from(*cut) / 256).collect();
                points.sort_unstable();
                points.dedup();
                let mut start = 0;
                let pieces: Vec<&[u8]> = points
                    .iter()
                    .chain(std::iter::once(&body.len()))
                    .map(|&end| {
                        let piece = &body[start..end.max(start)];
                        start = end.max(start);
                        piece
                    })
                    .collect();
                let mask = [n as u8, 0x5a, 0xa5, 0x3c];
                let ping = tungstenite::Message::Ping(Bytes::from(vec![n as u8]));
                for (i, piece) in pieces.iter().enumerate() {
                    let opcode = if i == 0 { TEXT } else { OpCode::Data(Data::Continue) };
                    let last = i + 1 == pieces.len();
                    bytes.extend(client_frame(opcode, i == 0 && message.compressed, last, piece, mask));
                    if last {
                        // The message is whole once its last fragment is read: before that ping.
                        expected.push(tungstenite::Message::text(message.text.clone()));
                    }
                    if message.pings {
                        bytes.extend(client_frame(OpCode::Control(Control::Ping), false, true, &[n as u8], mask));
                        expected.push(ping.clone());
                    }
                }
            }
            (bytes, expected)
        }

        /// Raw deflate of `bytes` whatever its size, without the sync flush's tail.
        fn deflate_anyway(bytes: &[u8]) -> Vec<u8> {
            let mut compressor = Compress::new(Compression::fast(), false);
            let mut out = Vec::with_capacity(bytes.len() * 2 + 64);
            compressor.compress_vec(bytes, &mut out, FlushCompress::Sync).expect("compresses");
            out.truncate(out.len() - SYNC_TAIL.len());
            out
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]
            #[test]
            fn any_mix_of_plain_compressed_fragmented_and_pinged_messages_reads_as_sent(
                messages in proptest::collection::vec(sent(), 1..6),
                chunk in 1usize..300,
            ) {
                let (bytes, expected) = wire(&messages);
                // tungstenite reports a ping as it is read, before the message it interrupts ends.
                let read = read_translated(&bytes, chunk, 1 << 20);
                let read: Vec<tungstenite::Message> = read.into_iter().map(|r| r.expect("no error")).collect();
                prop_assert_eq!(read, expected);
            }
        }
    }

    #[test]
    fn broken_compressed_messages_become_errors_tungstenite_names() {
        let too_long = compress(&vec![b'{'; 200_000]).expect("compresses");
        let read = read_translated(&client_frame(TEXT, true, true, &too_long, MASK), 4096, 64 * 1024);
        assert!(matches!(&read[..], [Err(e)] if e.contains("too long")), "{read:?}");

        let read = read_translated(&client_frame(TEXT, true, true, b"\xff\xff\xff\xff\x00", MASK), 4096, 64 * 1024);
        assert!(matches!(&read[..], [Err(e)] if e.contains("Reserved bits")), "not deflate: {read:?}");

        // A continuation claiming compression, and a new message inside a compressed one.
        let part = compress(&[b'x'; 1000]).expect("compresses");
        let mut stream = client_frame(TEXT, true, false, &part, MASK);
        stream.extend(client_frame(OpCode::Data(Data::Continue), true, true, b"", MASK));
        let read = read_translated(&stream, 4096, 64 * 1024);
        assert!(matches!(&read[..], [Err(e)] if e.contains("Reserved bits")), "{read:?}");
        let mut stream = client_frame(TEXT, true, false, &part, MASK);
        stream.extend(client_frame(TEXT, false, true, b"new", MASK));
        let read = read_translated(&stream, 4096, 64 * 1024);
        assert!(matches!(&read[..], [Err(e)] if e.contains("Reserved bits")), "{read:?}");

        // An unmasked compressed frame.
        let mut unmasked = Vec::new();
        FrameHeader { rsv1: true, opcode: TEXT, mask: None, ..FrameHeader::default() }
            .format(part.len() as u64, &mut unmasked)
            .expect("formats");
        unmasked.extend_from_slice(&part);
        let read = read_translated(&unmasked, 4096, 64 * 1024);
        assert!(matches!(&read[..], [Err(e)] if e.contains("Reserved bits")), "{read:?}");
    }
}
