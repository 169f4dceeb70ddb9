//! The server's half of the WebSocket wire (RFC 6455 §5.2), written by the gateway itself: each
//! frame's few header bytes beside its payload, many frames per `writev`, the payload bytes shared
//! with every other recipient and never copied, and no write buffer kept per connection.
//!
//! tungstenite copied every frame into a write buffer of its own and kept that buffer at its
//! largest size for the connection's life: 16 KiB on every connection that once received a burst
//! (a resume), 5× an idle connection's memory. tungstenite still reads what clients send; what it
//! would write back on its own (pongs, the close reply) is dropped by [`RepliesDropped`]: the
//! writer answers pings from the queue and ends every connection with its own close frame.

use crate::outbound::{Frame, FrameKind};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const FIN: u8 = 0x80;
/// Set on the first frame of a compressed message (RFC 7692 §6).
const RSV1: u8 = 0x40;
const OPCODE_TEXT: u8 = 0x1;
const OPCODE_BINARY: u8 = 0x2;
const OPCODE_CLOSE: u8 = 0x8;
const OPCODE_PING: u8 = 0x9;
const OPCODE_PONG: u8 = 0xA;

/// A header (at most 10 bytes for a server's unmasked frame) and a close frame's 2-byte code.
const MAX_PREFIX: usize = 12;
/// Frames per `writev` at most: two slices each, well under Linux's 1,024.
const FRAMES_PER_WRITE: usize = 64;

/// Whether a connection's messages may go out compressed: `permessage-deflate` negotiated at the
/// upgrade (see [`crate::permessage_deflate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    Off,
    Deflate,
}

/// One frame as bytes: a prefix encoded here, then a body borrowed from the frame.
#[derive(Clone, Copy)]
struct Encoded<'a> {
    prefix: [u8; MAX_PREFIX],
    prefix_len: usize,
    body: &'a [u8],
}

impl<'a> Encoded<'a> {
    const NONE: Encoded<'static> = Encoded { prefix: [0; MAX_PREFIX], prefix_len: 0, body: &[] };

    fn new(frame: &'a Frame, compression: Compression) -> Self {
        let (opcode, code, body): (u8, Option<u16>, &[u8]) = match &frame.kind {
            FrameKind::Event(_) | FrameKind::Control { .. } => {
                let opcode = if frame.payload.is_text() { OPCODE_TEXT } else { OPCODE_BINARY };
                // Control frames (RFC 6455's ping, pong, close) are never compressed.
                let compressed = match compression {
                    Compression::Deflate => frame.payload.compressed().map(|compressed| &compressed.deflated),
                    Compression::Off => None,
                };
                match compressed {
                    Some(compressed) => (RSV1 | opcode, None, compressed),
                    None => (opcode, None, &frame.payload),
                }
            }
            FrameKind::Close { code, reason } => (OPCODE_CLOSE, Some(*code), reason.as_bytes()),
            FrameKind::Ping => (OPCODE_PING, None, &frame.payload),
            FrameKind::Pong => (OPCODE_PONG, None, &frame.payload),
        };
        let mut prefix = [0; MAX_PREFIX];
        let len = body.len() + if code.is_some() { 2 } else { 0 };
        // RFC 6455 §5.5: control frames carry at most 125 bytes. Close reasons are short constants,
        // and tungstenite refuses a client's ping beyond that before its pong is queued.
        debug_assert!(opcode & 0x0f < OPCODE_CLOSE || len <= 125, "a control frame of {len} bytes");
        prefix[0] = FIN | opcode;
        let mut prefix_len = match (u8::try_from(len), u16::try_from(len)) {
            (Ok(short), _) if short < 126 => {
                prefix[1] = short;
                2
            }
            (_, Ok(medium)) => {
                prefix[1] = 126;
                prefix[2..4].copy_from_slice(&medium.to_be_bytes());
                4
            }
            _ => {
                prefix[1] = 127;
                prefix[2..10].copy_from_slice(&(len as u64).to_be_bytes());
                10
            }
        };
        if let Some(code) = code {
            prefix[prefix_len..prefix_len + 2].copy_from_slice(&code.to_be_bytes());
            prefix_len += 2;
        }
        Self { prefix, prefix_len, body }
    }

    fn prefix(&self) -> &[u8] {
        &self.prefix[..self.prefix_len]
    }

    fn len(&self) -> usize {
        self.prefix_len + self.body.len()
    }
}

/// A write of at most this many bytes (a frame or a few, as at low rates) is copied into one
/// buffer and sent as one (`send`): the kernel's vectored path (importing the iovecs, the file
/// lookup of `writev`) cost more than the copy, ~10 % of the gateway's CPU at one frame per write.
const COPY_UP_TO: usize = 2048;

/// How far the writing of a batch has come: the frame, and how many of its bytes are written.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    frame: usize,
    offset: usize,
}

/// Writes `frames` in order, in as few writes as the socket takes them in. Resumable: `progress`
/// carries a partial write over to the next poll. Everything it needs lives on the stack for the
/// poll's duration, so a connection's future holds no buffer.
pub(crate) fn poll_write_frames<W: AsyncWrite + ?Sized>(
    mut socket: Pin<&mut W>,
    cx: &mut Context<'_>,
    frames: &[Frame],
    compression: Compression,
    progress: &mut Progress,
) -> Poll<io::Result<()>> {
    while progress.frame < frames.len() {
        let mut encoded = [Encoded::NONE; FRAMES_PER_WRITE];
        let count = (frames.len() - progress.frame).min(FRAMES_PER_WRITE);
        for (slot, frame) in encoded.iter_mut().zip(&frames[progress.frame..progress.frame + count]) {
            *slot = Encoded::new(frame, compression);
        }
        let encoded = &encoded[..count];
        let mut slices = [IoSlice::new(&[]); 2 * FRAMES_PER_WRITE];
        let mut used = 0;
        for (i, frame) in encoded.iter().enumerate() {
            let skip = if i == 0 { progress.offset } else { 0 };
            let prefix = frame.prefix();
            let (head, body) = match prefix.get(skip..) {
                Some(rest) => (rest, frame.body),
                None => (&[][..], &frame.body[skip - prefix.len()..]),
            };
            for part in [head, body] {
                if !part.is_empty() {
                    slices[used] = IoSlice::new(part);
                    used += 1;
                }
            }
        }
        let slices = &slices[..used];
        let total: usize = slices.iter().map(|slice| slice.len()).sum();
        let mut written = if total <= COPY_UP_TO {
            let mut buffer = [0u8; COPY_UP_TO];
            let mut filled = 0;
            for slice in slices {
                buffer[filled..filled + slice.len()].copy_from_slice(slice);
                filled += slice.len();
            }
            ready!(socket.as_mut().poll_write(cx, &buffer[..filled]))?
        } else {
            ready!(socket.as_mut().poll_write_vectored(cx, slices))?
        };
        if written == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        for frame in encoded {
            let left = frame.len() - progress.offset;
            if written < left {
                progress.offset += written;
                break;
            }
            written -= left;
            progress.frame += 1;
            progress.offset = 0;
        }
    }
    Poll::Ready(Ok(()))
}

/// Writes `frames` in order, then flushes.
pub(crate) async fn write_frames<W: AsyncWrite + Unpin + ?Sized>(
    socket: &mut W,
    frames: &[Frame],
    compression: Compression,
) -> io::Result<()> {
    let mut progress = Progress::default();
    std::future::poll_fn(|cx| poll_write_frames(Pin::new(&mut *socket), cx, frames, compression, &mut progress))
        .await?;
    tokio::io::AsyncWriteExt::flush(socket).await
}

pin_project_lite::pin_project! {
    /// The read half of a connection, as tungstenite needs a socket: reads pass through, and what
    /// tungstenite writes on its own (the pong to a ping, the reply to a close) is dropped, because
    /// the writer owns the other half (see the module's documentation).
    #[derive(Debug)]
    pub(crate) struct RepliesDropped<R> {
        #[pin]
        inner: R,
    }
}

impl<R> RepliesDropped<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self { inner }
    }
}

impl<R: AsyncRead> AsyncRead for RepliesDropped<R> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<R> AsyncWrite for RepliesDropped<R> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::{EventMeta, Payload};
    use bytes::Bytes;
    use std::io::Read;
    use tokio::io::{AsyncReadExt, duplex};
    use tokio_tungstenite::tungstenite::error::{Error, ProtocolError};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket};
    use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

    fn event_text(text: &str) -> Frame {
        event(text.to_owned())
    }

    async fn written_bytes(frames: &[Frame], compression: Compression) -> Vec<u8> {
        let (mut near, mut far) = duplex(1 << 20);
        write_frames(&mut near, frames, compression).await.expect("written");
        drop(near);
        let mut bytes = Vec::new();
        far.read_to_end(&mut bytes).await.expect("read");
        bytes
    }

    fn event(text: String) -> Frame {
        let meta = EventMeta { subscription: 1, offset: 1, event_type: "progress", coalesce: None, received: None };
        Frame { payload: Payload::text(Utf8Bytes::from(text)), kind: FrameKind::Event(meta) }
    }

    /// Bytes to read; what the client writes back (its pongs) goes nowhere.
    struct Received(io::Cursor<Vec<u8>>);

    impl io::Read for Received {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            Read::read(&mut self.0, buf)
        }
    }

    impl io::Write for Received {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// What a client reads from `bytes`, parsed by tungstenite as a client.
    fn parse(bytes: Vec<u8>) -> Vec<Message> {
        let mut client = WebSocket::from_raw_socket(Received(io::Cursor::new(bytes)), Role::Client, None);
        let mut messages = Vec::new();
        loop {
            match client.read() {
                Ok(message) => messages.push(message),
                // The end of the bytes; a cut frame would be missing from what the tests compare.
                Err(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) | Error::ConnectionClosed) => {
                    return messages;
                }
                Err(err) => panic!("not a valid frame sequence: {err}"),
            }
        }
    }

    async fn written(frames: &[Frame], socket_capacity: usize) -> Vec<u8> {
        let (mut near, mut far) = duplex(socket_capacity);
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            far.read_to_end(&mut all).await.expect("read");
            all
        });
        write_frames(&mut near, frames, Compression::Off).await.expect("written");
        drop(near);
        reader.await.expect("reader")
    }

    #[tokio::test]
    async fn every_kind_and_size_of_frame_reads_back_as_the_same_message() {
        let sizes = [0, 1, 125, 126, 127, 65_535, 65_536, 200_000];
        let mut frames: Vec<Frame> = sizes.iter().map(|&n| event("x".repeat(n))).collect();
        frames.push(Frame {
            payload: Payload::binary(Bytes::from_static(b"\x00\x01binary")),
            kind: FrameKind::Control { kind: "snapshot" },
        });
        frames.push(Frame { payload: Payload::binary(Bytes::from_static(b"hi")), kind: FrameKind::Pong });
        frames.push(Frame { payload: Payload::empty(), kind: FrameKind::Ping });
        frames.push(Frame { payload: Payload::empty(), kind: FrameKind::Close { code: 1001, reason: "going away" } });
        let messages = parse(written(&frames, 1 << 22).await);
        assert_eq!(messages.len(), frames.len(), "{messages:?}");
        for (message, n) in messages.iter().zip(sizes) {
            assert_eq!(message, &Message::Text("x".repeat(n).into()));
        }
        assert_eq!(messages[sizes.len()], Message::Binary(Bytes::from_static(b"\x00\x01binary")));
        assert_eq!(messages[sizes.len() + 1], Message::Pong(Bytes::from_static(b"hi")));
        assert_eq!(messages[sizes.len() + 2], Message::Ping(Bytes::new()));
        match &messages[sizes.len() + 3] {
            Message::Close(Some(close)) => {
                assert_eq!(close.code, CloseCode::Away);
                assert_eq!(close.reason.as_str(), "going away");
            }
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_socket_that_takes_a_few_bytes_at_a_time_still_gets_every_frame_whole_and_in_order() {
        // 300 frames of varying size through a 7-byte pipe: partial writes land inside headers,
        // inside payloads and across the 64-frame chunks.
        let frames: Vec<Frame> = (0..300).map(|i| event(format!("{i}:{}", "y".repeat(i % 150)))).collect();
        let messages = parse(written(&frames, 7).await);
        let expected: Vec<Message> =
            (0..300).map(|i| Message::Text(format!("{i}:{}", "y".repeat(i % 150)).into())).collect();
        assert_eq!(messages, expected);
    }

    #[tokio::test]
    async fn a_small_batch_copied_into_one_write_survives_partial_writes_too() {
        // Under COPY_UP_TO in all: one buffer per write, resumed mid-header and mid-payload.
        let frames: Vec<Frame> = (0..5).map(|i| event(format!("{i}:{}", "z".repeat(40 * i)))).collect();
        let total: usize = frames.iter().map(|frame| Encoded::new(frame, Compression::Off).len()).sum();
        assert!(total <= COPY_UP_TO, "{total}");
        for pipe in [3, 1 << 16] {
            let messages = parse(written(&frames, pipe).await);
            let expected: Vec<Message> =
                (0..5).map(|i| Message::Text(format!("{i}:{}", "z".repeat(40 * i)).into())).collect();
            assert_eq!(messages, expected, "through a {pipe}-byte pipe");
        }
    }

    /// The frames in `bytes` as (first header byte, payload), unmasked server frames.
    fn raw_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            let (len, start) = match bytes[1] & 0x7f {
                126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
                127 => (u64::from_be_bytes(bytes[2..10].try_into().expect("8 bytes")) as usize, 10),
                short => (short as usize, 2),
            };
            frames.push((bytes[0], bytes[start..start + len].to_vec()));
            bytes = &bytes[start + len..];
        }
        frames
    }

    #[tokio::test]
    async fn with_compression_long_messages_go_out_compressed_once_for_every_connection_and_the_rest_plain() {
        let long = format!("{{\"steps\":[{}]}}", r#"{"step_id":"build","status":"completed"},"#.repeat(40));
        let event = event(long.clone());
        let short = event_text("short");
        let snapshot = Frame { payload: long.clone().into(), kind: FrameKind::Control { kind: "snapshot" } };
        let pong = Frame { payload: Payload::binary(Bytes::from_static(b"hi")), kind: FrameKind::Pong };
        let close = Frame { payload: Payload::empty(), kind: FrameKind::Close { code: 1001, reason: "going away" } };
        let frames = [event.clone(), short, snapshot, pong, close];
        // A connection without compression never compresses (it would cost every plain one).
        let plain = raw_frames(&written_bytes(&frames, Compression::Off).await);
        assert_eq!(plain[0], (0x80 | OPCODE_TEXT, long.clone().into_bytes()));
        assert!(!event.payload.compression_tried(), "no compression for a plain connection");
        let written = raw_frames(&written_bytes(&frames, Compression::Deflate).await);
        assert_eq!(written.len(), 5);
        for (first, payload) in [&written[0], &written[2]] {
            assert_eq!(*first, 0x80 | 0x40 | OPCODE_TEXT, "final, compressed, text");
            assert!(payload.len() * 4 < long.len(), "{} of {} bytes", payload.len(), long.len());
            let inflated = crate::permessage_deflate::inflate(payload, 1 << 20).expect("inflates");
            assert_eq!(inflated, long.as_bytes());
        }
        assert_eq!(written[1], (0x80 | OPCODE_TEXT, b"short".to_vec()), "too short to compress");
        assert_eq!(written[3].0, 0x80 | OPCODE_PONG);
        assert_eq!(written[4].0, 0x80 | OPCODE_CLOSE);
        // The compressed bytes are the payload's, shared: another connection sends the same ones.
        let shared = &event.payload.compressed().expect("compressed once").deflated;
        assert_eq!(&written[0].1[..], &shared[..]);
        assert_eq!(event.clone().payload.compressed().map(|c| c.deflated.as_ptr()), Some(shared.as_ptr()));
        // After it, a connection without compression still sends the frame plain.
        let plain = raw_frames(&written_bytes(&frames, Compression::Off).await);
        assert_eq!(plain[0], (0x80 | OPCODE_TEXT, long.clone().into_bytes()));
    }

    #[tokio::test]
    async fn a_closed_socket_fails_the_write() {
        let (mut near, far) = duplex(64);
        drop(far);
        let frames = [event("lost".into())];
        assert!(
            write_frames(&mut near, &frames, Compression::Off).await.is_err(),
            "the write error reaches the writer"
        );
    }

    #[tokio::test]
    async fn tungstenites_own_replies_are_dropped_and_reads_pass_through() {
        let (mut client, server) = duplex(1024);
        let mut replies = RepliesDropped::new(server);
        tokio::io::AsyncWriteExt::write_all(&mut replies, b"a pong nobody should see").await.expect("accepted");
        tokio::io::AsyncWriteExt::write_all(&mut client, b"from the client").await.expect("sent");
        let mut read = [0u8; 15];
        replies.read_exact(&mut read).await.expect("read");
        assert_eq!(&read, b"from the client");
        drop(replies);
        let mut leaked = Vec::new();
        client.read_to_end(&mut leaked).await.expect("read");
        assert!(leaked.is_empty(), "nothing tungstenite wrote reached the client");
    }
}
