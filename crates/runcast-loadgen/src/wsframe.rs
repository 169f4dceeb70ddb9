//! The client side of WebSocket (RFC 6455) as far as a load client needs it: the upgrade request
//! (offering `permessage-deflate`, RFC 7692, when asked) and the check of its answer, server
//! frames parsed in place from a read buffer (servers never mask), and masked client frames
//! written into a reused buffer. No allocation per frame.

use std::fmt;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Larger server frames are refused: nothing this client receives comes near it.
pub const MAX_FRAME: usize = 16 << 20;

/// A fixed key: servers only echo its digest, which this client does not need to check.
const KEY: &str = "cnVuY2FzdC1sb2FkZ2VuIQ==";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A server frame with the mask bit set (RFC 6455 §5.1 forbids it).
    Masked,
    /// Reserved bits set that no extension gives a meaning (RSV1 on a control frame, RSV2, RSV3).
    Reserved,
    TooLarge(u64),
    /// A compressed message that does not inflate.
    Corrupt,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Masked => f.write_str("the server sent a masked frame"),
            Self::Reserved => f.write_str("the server set reserved bits no extension defines"),
            Self::TooLarge(len) => write!(f, "a {len}-byte frame is larger than {MAX_FRAME} bytes"),
            Self::Corrupt => f.write_str("a compressed message does not inflate"),
        }
    }
}

impl std::error::Error for FrameError {}

/// One complete frame at the start of a buffer: `buf[header..header + len]` is its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    /// RSV1: the first frame of a compressed message (`permessage-deflate`, whose negotiation the
    /// caller checks).
    pub compressed: bool,
    pub header: usize,
    pub len: usize,
}

impl Frame {
    /// Bytes the whole frame takes in the buffer.
    pub fn size(&self) -> usize {
        self.header + self.len
    }

    pub fn payload<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.header..self.size()]
    }
}

/// The frame at the start of `buf`, or `None` until all of it has arrived.
pub fn parse(buf: &[u8]) -> Result<Option<Frame>, FrameError> {
    let [first, second, ..] = *buf else { return Ok(None) };
    let compressed = first & RSV1 != 0;
    if first & 0x30 != 0 || (compressed && first & 0x08 != 0) {
        return Err(FrameError::Reserved);
    }
    if second & 0x80 != 0 {
        return Err(FrameError::Masked);
    }
    let (header, len) = match second & 0x7F {
        126 => match buf.get(2..4) {
            Some(&[a, b]) => (4, u64::from(u16::from_be_bytes([a, b]))),
            _ => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|bytes| <[u8; 8]>::try_from(bytes).ok()) {
            Some(bytes) => (10, u64::from_be_bytes(bytes)),
            None => return Ok(None),
        },
        short => (2, u64::from(short)),
    };
    let len = usize::try_from(len).ok().filter(|len| *len <= MAX_FRAME).ok_or(FrameError::TooLarge(len))?;
    if buf.len() < header + len {
        return Ok(None);
    }
    Ok(Some(Frame { fin: first & 0x80 != 0, opcode: first & 0x0F, compressed, header, len }))
}

/// Set with the opcode of a compressed message's first frame (`permessage-deflate`, RFC 7692).
pub const RSV1: u8 = 0x40;

/// Appends a masked client frame (FIN set) to `out`; `opcode` may carry [`RSV1`].
pub fn encode_masked(opcode: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.push(0x80 | (opcode & (RSV1 | 0x0F)));
    match payload.len() {
        len @ 0..=125 => out.push(0x80 | len as u8),
        len @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(byte, key)| byte ^ key));
}

/// What a client offering compression asks for: each message compressed on its own, both ways,
/// as both servers answer (and the only form [`Inflater`] reads).
const DEFLATE_OFFER: &str =
    "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n";

/// The HTTP/1.1 upgrade request for `path` (with its query) on `host`, offering
/// `permessage-deflate` when `offer_deflate`.
pub fn upgrade_request(host: &str, path: &str, offer_deflate: bool) -> String {
    let offer = if offer_deflate { DEFLATE_OFFER } else { "" };
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
    )
}

/// Whether the head of a 101 answer accepts `permessage-deflate`.
pub fn deflate_accepted(head: &[u8]) -> bool {
    String::from_utf8_lossy(head).lines().any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("sec-websocket-extensions")
                && value.split(';').next().is_some_and(|extension| extension.trim() == "permessage-deflate")
        })
    })
}

/// Inflates the messages of a connection that negotiated `permessage-deflate` without context
/// takeover: each on its own, into a buffer reused from one message to the next.
pub struct Inflater {
    decompress: flate2::Decompress,
    input: Vec<u8>,
    out: Vec<u8>,
}

impl Default for Inflater {
    fn default() -> Self {
        Self { decompress: flate2::Decompress::new(false), input: Vec::new(), out: Vec::with_capacity(16 * 1024) }
    }
}

impl Inflater {
    /// One message's compressed payload, inflated. The sender left off the empty block that ends
    /// its sync flush (RFC 7692 §7.2.1); it goes back after the payload.
    pub fn inflate(&mut self, compressed: &[u8]) -> Result<&[u8], FrameError> {
        self.input.clear();
        self.input.extend_from_slice(compressed);
        self.input.extend_from_slice(&[0x00, 0x00, 0xff, 0xff]);
        self.decompress.reset(false);
        self.out.clear();
        loop {
            if self.out.len() == self.out.capacity() {
                if self.out.len() >= MAX_FRAME {
                    return Err(FrameError::TooLarge(self.out.len() as u64));
                }
                self.out.reserve(self.out.capacity().max(1024));
            }
            let (taken, made) = (self.decompress.total_in(), self.decompress.total_out());
            let consumed = usize::try_from(taken).unwrap_or(usize::MAX).min(self.input.len());
            let status = self
                .decompress
                .decompress_vec(&self.input[consumed..], &mut self.out, flate2::FlushDecompress::Sync)
                .map_err(|_| FrameError::Corrupt)?;
            let all_in = self.decompress.total_in() == self.input.len() as u64;
            if status == flate2::Status::StreamEnd || (all_in && self.out.len() < self.out.capacity()) {
                return Ok(&self.out);
            }
            if self.decompress.total_in() == taken && self.decompress.total_out() == made {
                return Err(FrameError::Corrupt);
            }
        }
    }
}

/// What the answer to an upgrade was, once its head has arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upgrade {
    /// Not all of the head yet.
    Incomplete,
    /// 101: frames start at this index of the buffer.
    Switched(usize),
    /// Any other status: its status line.
    Refused(String),
}

pub fn parse_upgrade_response(buf: &[u8]) -> Upgrade {
    let Some(end) = find(buf, b"\r\n\r\n") else { return Upgrade::Incomplete };
    let status_line = buf[..end].split(|b| *b == b'\n').next().unwrap_or_default();
    let status_line = String::from_utf8_lossy(status_line).trim().to_owned();
    if status_line.split(' ').nth(1) == Some("101") {
        Upgrade::Switched(end + 4)
    } else {
        Upgrade::Refused(status_line)
    }
}

/// The first index of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    let (first, rest) = (needle[0], &needle[1..]);
    let mut from = 0;
    while let Some(at) = haystack[from..=haystack.len() - needle.len()].iter().position(|b| *b == first) {
        let start = from + at;
        if &haystack[start + 1..start + needle.len()] == rest {
            return Some(start);
        }
        from = start + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        match payload.len() {
            len @ 0..=125 => out.push(len as u8),
            len @ 126..=0xFFFF => {
                out.push(126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn parses_the_three_length_forms_in_place() {
        for size in [0, 5, 125, 126, 200, 65_535, 65_536, 70_000] {
            let payload = vec![b'x'; size];
            let mut buf = server_frame(OP_TEXT, &payload);
            buf.extend_from_slice(&server_frame(OP_PING, b"hi"));
            let frame = parse(&buf).expect("valid").expect("complete");
            assert_eq!((frame.fin, frame.opcode, frame.len), (true, OP_TEXT, size));
            assert_eq!(frame.payload(&buf), &payload[..]);
            let next = parse(&buf[frame.size()..]).expect("valid").expect("complete");
            assert_eq!((next.opcode, next.payload(&buf[frame.size()..])), (OP_PING, &b"hi"[..]));
        }
    }

    #[test]
    fn waits_for_every_byte_of_a_frame() {
        for size in [3, 300, 70_000] {
            let buf = server_frame(OP_BINARY, &vec![1; size]);
            for cut in 0..buf.len().min(20) {
                assert_eq!(parse(&buf[..cut]), Ok(None), "{size} bytes cut at {cut}");
            }
            assert_eq!(parse(&buf[..buf.len() - 1]), Ok(None));
            assert!(parse(&buf).expect("valid").is_some());
        }
    }

    #[test]
    fn refuses_what_a_server_may_not_send() {
        assert_eq!(parse(&[0x81, 0x85, 0, 0, 0, 0, 1]), Err(FrameError::Masked));
        assert_eq!(parse(&[0xA1, 0x01, b'x']), Err(FrameError::Reserved), "RSV2");
        assert_eq!(parse(&[0xC9, 0x01, b'x']), Err(FrameError::Reserved), "a compressed ping");
        let compressed = parse(&[0xC1, 0x01, b'x']).expect("valid").expect("complete");
        assert!(compressed.compressed && compressed.opcode == OP_TEXT);
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(parse(&huge), Err(FrameError::TooLarge(u64::MAX)));
    }

    #[test]
    fn a_fragment_says_so() {
        let frame = parse(&[0x01, 0x02, b'a', b'b']).expect("valid").expect("complete");
        assert_eq!((frame.fin, frame.opcode), (false, OP_TEXT));
        let frame = parse(&[0x80, 0x01, b'c']).expect("valid").expect("complete");
        assert_eq!((frame.fin, frame.opcode), (true, OP_CONTINUATION));
    }

    #[test]
    fn masks_client_frames_so_unmasking_gives_the_payload_back() {
        for size in [0, 17, 126, 65_536] {
            let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let mask = [0x12, 0x34, 0x56, 0x78];
            let mut out = Vec::new();
            encode_masked(OP_TEXT, &payload, mask, &mut out);
            assert_eq!(out[0], 0x81);
            assert_ne!(out[1] & 0x80, 0, "mask bit");
            let header = match out[1] & 0x7F {
                126 => 4,
                127 => 10,
                _ => 2,
            };
            assert_eq!(&out[header..header + 4], &mask);
            let unmasked: Vec<u8> =
                out[header + 4..].iter().zip(mask.iter().cycle()).map(|(byte, key)| byte ^ key).collect();
            assert_eq!(unmasked, payload);
        }
    }

    #[test]
    fn reads_the_upgrade_answer() {
        assert_eq!(parse_upgrade_response(b"HTTP/1.1 101 Switching"), Upgrade::Incomplete);
        let answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x00";
        assert_eq!(parse_upgrade_response(answer), Upgrade::Switched(answer.len() - 2));
        assert_eq!(
            parse_upgrade_response(b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 0\r\n\r\n"),
            Upgrade::Refused("HTTP/1.1 429 Too Many Requests".to_owned())
        );
        let request = upgrade_request("127.0.0.1:80", "/ws?token=t", false);
        assert!(request.starts_with("GET /ws?token=t HTTP/1.1\r\nHost: 127.0.0.1:80\r\n"));
        assert!(request.ends_with("\r\n\r\n") && !request.contains("permessage-deflate"));
        assert!(
            upgrade_request("127.0.0.1:80", "/", true).contains("\r\nSec-WebSocket-Extensions: permessage-deflate;")
        );
        let accepted = b"HTTP/1.1 101 Switching Protocols\r\nsec-websocket-extensions: permessage-deflate; \
                         server_no_context_takeover\r\n\r\n";
        assert!(deflate_accepted(accepted));
        assert!(!deflate_accepted(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"));
    }

    #[test]
    fn inflates_each_message_on_its_own() {
        use flate2::{Compress, Compression, FlushCompress};
        let mut inflater = Inflater::default();
        for message in [&b"{\"type\":\"execution.step.started\"}"[..], &[b'a'; 100_000][..]] {
            let mut compressor = Compress::new(Compression::fast(), false);
            let mut compressed = Vec::with_capacity(message.len() + 64);
            compressor.compress_vec(message, &mut compressed, FlushCompress::Sync).expect("compresses");
            compressed.truncate(compressed.len() - 4);
            assert_eq!(inflater.inflate(&compressed).expect("inflates"), message);
        }
        assert_eq!(inflater.inflate(&[0xff, 0xff, 0xff]).map(<[u8]>::len), Err(FrameError::Corrupt));
    }

    #[test]
    fn finds_needles() {
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"ab", b"abc"), None);
        assert_eq!(find(b"aaa", b""), None);
        assert_eq!(find(b"xxseq=", b"seq="), Some(2));
    }
}
