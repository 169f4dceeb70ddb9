//! The NATS client protocol as the server speaks it (`INFO`, `MSG`, `HMSG`, `PING`, `PONG`,
//! `+OK`, `-ERR`), parsed in place from a buffer of the bytes carried by WebSocket frames (a
//! message may span frames, and a frame may hold many messages).

use crate::wsframe::find;
use std::fmt;
use std::ops::Range;

/// Larger messages are refused (the server's own default `max_payload` is 1 MiB).
const MAX_PAYLOAD: usize = 8 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `MSG`/`HMSG`: the payload (without headers) is `buf[payload]`.
    Msg {
        payload: Range<usize>,
    },
    Ping,
    Pong,
    Info,
    Ok,
    /// `-ERR`: the server's text.
    Err(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtoError(pub String);

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NATS protocol: {}", self.0)
    }
}

impl std::error::Error for ProtoError {}

/// The operation at the start of `buf` and the bytes it takes, or `None` until all of it arrived.
pub fn parse(buf: &[u8]) -> Result<Option<(Op, usize)>, ProtoError> {
    let Some(eol) = find(buf, b"\r\n") else {
        if buf.len() > 4096 {
            return Err(ProtoError(format!("no line end in {} bytes", buf.len())));
        }
        return Ok(None);
    };
    let line = &buf[..eol];
    let after_line = eol + 2;
    let mut words = line.split(|b| *b == b' ' || *b == b'\t').filter(|w| !w.is_empty());
    let verb = words.next().unwrap_or_default();
    let op = if verb.eq_ignore_ascii_case(b"MSG") || verb.eq_ignore_ascii_case(b"HMSG") {
        let headers = verb.len() == 4;
        let numbers: Vec<&[u8]> = words.collect();
        // MSG <subject> <sid> [reply] <bytes>; HMSG <subject> <sid> [reply] <header bytes> <bytes>
        let (header_len, total) = match (headers, numbers.as_slice()) {
            (false, [_, _, .., total]) if numbers.len() <= 4 => (0, number(total)?),
            (true, [_, _, .., header, total]) if numbers.len() <= 5 => (number(header)?, number(total)?),
            _ => return Err(ProtoError(format!("malformed '{}'", String::from_utf8_lossy(line)))),
        };
        if total > MAX_PAYLOAD || header_len > total {
            return Err(ProtoError(format!("a message of {total} bytes ({header_len} of headers)")));
        }
        if buf.len() < after_line + total + 2 {
            return Ok(None);
        }
        if &buf[after_line + total..after_line + total + 2] != b"\r\n" {
            return Err(ProtoError("a message payload not followed by CRLF".into()));
        }
        return Ok(Some((Op::Msg { payload: after_line + header_len..after_line + total }, after_line + total + 2)));
    } else if verb.eq_ignore_ascii_case(b"PING") {
        Op::Ping
    } else if verb.eq_ignore_ascii_case(b"PONG") {
        Op::Pong
    } else if verb.eq_ignore_ascii_case(b"INFO") {
        Op::Info
    } else if verb.eq_ignore_ascii_case(b"+OK") {
        Op::Ok
    } else if verb.eq_ignore_ascii_case(b"-ERR") {
        Op::Err(String::from_utf8_lossy(&line[verb.len()..]).trim().to_owned())
    } else {
        return Err(ProtoError(format!("unknown operation '{}'", String::from_utf8_lossy(line))));
    };
    Ok(Some((op, after_line)))
}

fn number(text: &[u8]) -> Result<usize, ProtoError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| ProtoError(format!("'{}' is not a byte count", String::from_utf8_lossy(text))))
}

/// What the client says once connected: no echo of `+OK`, then one subscription, then a `PING`
/// whose `PONG` tells that the subscription is in place.
pub fn handshake(subject: &str) -> String {
    format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"headers\":true,\"name\":\"runcast-loadgen\"}}\r\n\
         SUB {subject} 1\r\nPING\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(mut buf: &[u8]) -> Vec<Op> {
        let mut ops = Vec::new();
        while let Some((op, used)) = parse(buf).expect("valid") {
            if let Op::Msg { payload } = &op {
                assert!(payload.end <= used);
            }
            ops.push(op);
            buf = &buf[used..];
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        ops
    }

    #[test]
    fn parses_every_server_operation() {
        let buf = b"INFO {\"server_id\":\"x\"}\r\nPING\r\nMSG exec.acme.e-1 1 5\r\nhello\r\n\
            MSG exec.acme.e-1 1 _INBOX.abc.1 3\r\nabc\r\nHMSG exec.acme.e-2 1 12 15\r\nNATS/1.0\r\n\r\nxyz\r\n\
            +OK\r\npong\r\n-ERR 'Slow Consumer'\r\n";
        let ops = all(buf);
        assert_eq!(ops.len(), 8);
        assert_eq!(ops[0], Op::Info);
        assert_eq!(ops[1], Op::Ping);
        assert_eq!(ops[6], Op::Pong);
        assert_eq!(ops[7], Op::Err("'Slow Consumer'".to_owned()));
        let mut rest: &[u8] = buf;
        let mut payloads = Vec::new();
        while let Some((op, used)) = parse(rest).expect("valid") {
            if let Op::Msg { payload } = op {
                payloads.push(rest[payload].to_vec());
            }
            rest = &rest[used..];
        }
        assert_eq!(payloads, [b"hello".to_vec(), b"abc".to_vec(), b"xyz".to_vec()]);
    }

    #[test]
    fn waits_for_a_whole_message() {
        let buf = b"MSG a.b 1 10\r\n0123456789\r\n";
        for cut in 0..buf.len() {
            assert_eq!(parse(&buf[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(parse(buf), Ok(Some((Op::Msg { payload: 14..24 }, buf.len()))));
    }

    #[test]
    fn refuses_garbage() {
        assert!(parse(b"MSG a.b 1 x\r\n").is_err());
        assert!(parse(b"MSG a.b 1 3\r\nabcde\r\n").is_err());
        assert!(parse(b"HMSG a 1 9 3\r\nabc\r\n").is_err());
        assert!(parse(b"WHAT\r\n").is_err());
        assert!(parse(&[b'x'; 5000]).is_err());
    }

    #[test]
    fn the_handshake_subscribes_then_pings() {
        let text = handshake("exec.acme.*");
        assert!(text.starts_with("CONNECT {"));
        assert!(text.ends_with("\r\nSUB exec.acme.* 1\r\nPING\r\n"));
    }
}
