//! SSE bodies in `Content-Encoding: gzip`, at almost no cost per connection.
//!
//! A gzip body holds one deflate stream, and a deflate stream is a sequence of blocks, any of which
//! may stand on its own: a message deflated alone and ended by a sync flush — the compressed form
//! an event already has for `permessage-deflate` (see [`crate::permessage_deflate`]) — is such a
//! sequence and ends on a byte boundary. So an SSE connection writes each event's shared
//! compressed bytes as they are, and its own few bytes (`id:`, `event:`, line ends, heartbeats) as
//! stored blocks, which take no compressor. A connection keeps no compressor and no window, only
//! the CRC-32 of what it sent (the gzip trailer's), to which each shared message adds its own,
//! taken once; every chunk it writes ends on a block boundary, so a browser decodes each event as
//! soon as it arrives.

use crate::outbound::Compressed;
use crate::permessage_deflate::SYNC_TAIL;
use bytes::{BufMut, Bytes, BytesMut};

/// A gzip member's header: deflate, no name, no time, unknown OS (RFC 1952 §2.3).
const HEADER: [u8; 10] = [0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0xff];
/// The most a stored block holds (its length is 16 bits).
const MAX_STORED: usize = u16::MAX as usize;

/// One connection's gzip body, written chunk by chunk.
pub(crate) struct GzipBody {
    /// The CRC-32 and length of every plain byte sent so far.
    crc: flate2::Crc,
    started: bool,
    /// Plain bytes to go out as stored blocks at the next [`flush`](Self::flush) or deflated piece.
    plain: BytesMut,
}

impl GzipBody {
    pub(crate) fn new() -> Self {
        Self { crc: flate2::Crc::new(), started: false, plain: BytesMut::new() }
    }

    /// Where to put bytes that go out as they are (stored).
    pub(crate) fn plain(&mut self) -> &mut BytesMut {
        &mut self.plain
    }

    /// Appends a message compressed once for every connection, after the plain bytes before it;
    /// its CRC-32, taken once too, is added to this body's without reading the message again.
    pub(crate) fn deflated(&mut self, out: &mut BytesMut, compressed: &Compressed) {
        self.flush(out);
        out.put_slice(&compressed.deflated);
        out.put_slice(&SYNC_TAIL);
        self.crc.combine(&compressed.plain_crc);
    }

    /// Writes the plain bytes given so far as stored blocks.
    pub(crate) fn flush(&mut self, out: &mut BytesMut) {
        if !self.started {
            out.put_slice(&HEADER);
            self.started = true;
        }
        self.crc.update(&self.plain);
        for block in self.plain.chunks(MAX_STORED) {
            // BFINAL 0, BTYPE 00 (stored), padded to the byte; then LEN and its complement.
            let len = block.len() as u16;
            out.put_u8(0);
            out.put_u16_le(len);
            out.put_u16_le(!len);
            out.put_slice(block);
        }
        self.plain.clear();
    }

    /// Ends the body: the plain bytes left, an empty final block and the trailer.
    pub(crate) fn finish(&mut self, out: &mut BytesMut) {
        self.flush(out);
        // BFINAL 1, BTYPE 00: an empty final stored block.
        out.put_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
        out.put_u32_le(self.crc.sum());
        out.put_u32_le(self.crc.amount());
    }

    /// `bytes` alone, flushed: for a chunk of one piece (a heartbeat).
    pub(crate) fn stored(&mut self, bytes: &[u8]) -> Bytes {
        self.plain.put_slice(bytes);
        let mut out = BytesMut::with_capacity(bytes.len() + 16);
        self.flush(&mut out);
        out.freeze()
    }
}

/// Whether a request's `Accept-Encoding` takes gzip (RFC 9110 §12.5.3): `gzip` or `x-gzip` listed
/// with a weight above 0, or `*` without gzip refused.
pub(crate) fn accepts_gzip(headers: &axum::http::HeaderMap) -> bool {
    let mut any = false;
    for value in headers.get_all(axum::http::header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for coding in value.split(',') {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let weight = parts
                .find_map(|parameter| parameter.strip_prefix("q=").or_else(|| parameter.strip_prefix("Q=")))
                .map_or(Some(1.0), |q| q.trim().parse::<f32>().ok());
            let wanted = weight.is_some_and(|q| q > 0.0);
            if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
                return wanted;
            }
            any |= name == "*" && wanted;
        }
    }
    any
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn headers(accept: &[&str]) -> axum::http::HeaderMap {
        let mut headers = axum::http::HeaderMap::new();
        for value in accept {
            headers.append(axum::http::header::ACCEPT_ENCODING, value.parse().expect("value"));
        }
        headers
    }

    #[test]
    fn gzip_is_taken_when_accepted_with_weight() {
        for yes in [&["gzip"][..], &["gzip, deflate, br, zstd"], &["br;q=1.0, GZIP;q=0.5"], &["*"], &["br", "x-gzip"]] {
            assert!(accepts_gzip(&headers(yes)), "{yes:?}");
        }
        for no in [&[][..], &["identity"], &["br, deflate"], &["gzip;q=0"], &["*, gzip;q=0"], &["gzip;q=oops"]] {
            assert!(!accepts_gzip(&headers(no)), "{no:?}");
        }
    }

    /// A streaming gzip decoder fed each chunk as it is written.
    struct Reader(flate2::write::GzDecoder<Vec<u8>>);

    impl Reader {
        fn new() -> Self {
            Self(flate2::write::GzDecoder::new(Vec::new()))
        }

        /// What the decoder gives for everything it was fed so far.
        fn feed(&mut self, chunk: &[u8]) -> &[u8] {
            self.0.write_all(chunk).expect("decodes");
            self.0.flush().expect("flushes");
            self.0.get_ref()
        }
    }

    #[test]
    fn shared_deflated_pieces_and_stored_bytes_decode_chunk_by_chunk_and_whole() {
        let event = |n: usize| {
            format!(
                "{{\"type\":\"execution.progress\",\"offset\":{n},\"data\":{{\"steps\":[{}]}}}}",
                "\"s\",".repeat(80)
            )
        };
        let incompressible: Vec<u8> = (0..200_000_u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let mut body = GzipBody::new();
        let mut reader = Reader::new();
        let mut sent = Vec::new();
        for n in 0..5 {
            let mut chunk = BytesMut::new();
            let prefix = format!("id: {n}\nevent: execution.progress\ndata: ");
            body.plain().put_slice(prefix.as_bytes());
            let text = event(n);
            let payload = crate::outbound::Payload::from(text.clone());
            body.deflated(&mut chunk, payload.compressed().expect("compresses"));
            body.plain().put_slice(b"\n\n");
            body.flush(&mut chunk);
            sent.extend_from_slice(prefix.as_bytes());
            sent.extend_from_slice(text.as_bytes());
            sent.extend_from_slice(b"\n\n");
            assert_eq!(reader.feed(&chunk), sent.as_slice(), "event {n} decodes as soon as its chunk arrives");
        }
        // Plain bytes longer than a stored block can hold, then a heartbeat on its own.
        let mut chunk = BytesMut::new();
        body.plain().put_slice(&incompressible);
        body.flush(&mut chunk);
        sent.extend_from_slice(&incompressible);
        assert_eq!(reader.feed(&chunk), sent.as_slice());
        let heartbeat = body.stored(b": heartbeat\n\n");
        sent.extend_from_slice(b": heartbeat\n\n");
        assert_eq!(reader.feed(&heartbeat), sent.as_slice());
        let mut end = BytesMut::new();
        body.finish(&mut end);
        reader.feed(&end);
        // The trailer's CRC and length check out: the whole body decodes in one go.
        let decoded = reader.0.finish().expect("a valid gzip member, trailer included");
        assert_eq!(decoded, sent);
    }

    #[test]
    fn a_body_ended_before_anything_was_sent_is_still_a_valid_member() {
        let mut body = GzipBody::new();
        let mut out = BytesMut::new();
        body.finish(&mut out);
        let mut reader = Reader::new();
        reader.feed(&out);
        assert_eq!(reader.0.finish().expect("valid"), Vec::<u8>::new());
    }
}
