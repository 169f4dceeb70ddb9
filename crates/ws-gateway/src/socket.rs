//! The two halves of an upgraded WebSocket connection's socket: the TCP stream's own halves,
//! taken back from hyper after the 101, which need no lock between them and no dynamic dispatch.
//!
//! hyper hands an upgraded connection over as `Upgraded`, a boxed stream; `tokio::io::split` of it
//! takes a lock on every read and write, and each write goes through hyper's box and its
//! `TokioIo` adapter. The writer writes a frame per wake-up to thousands of connections per event,
//! so those layers were ~3 % of the gateway's CPU in the fan-out bench's (c) (`perf`). Should the
//! upgrade come over another stream than the listener's `TcpStream` (it cannot today: the
//! listener serves `TokioIo<TcpStream>`), the halves are hyper's, as before.

use bytes::Bytes;
use hyper_util::rt::TokioIo;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

/// What the client sends: the bytes hyper read past the upgrade request first, then the socket.
pub(crate) enum ReadSide {
    Tcp {
        /// Released once read: it may be a slice of hyper's whole read buffer, which every idle
        /// connection would otherwise keep (8 KiB: the fan-out bench's (d) at 12.5 KiB per idle
        /// connection against 4.5).
        pending: Bytes,
        read: OwnedReadHalf,
    },
    Upgraded(ReadHalf<Upgraded>),
}

/// Where the writer writes.
pub(crate) enum WriteSide {
    Tcp(OwnedWriteHalf),
    Upgraded(WriteHalf<Upgraded>),
}

/// The halves of an upgraded connection.
pub(crate) fn split(upgraded: hyper::upgrade::Upgraded) -> (ReadSide, WriteSide) {
    match hyper_util::server::conn::auto::upgrade::downcast::<TokioIo<TcpStream>>(upgraded) {
        Ok(parts) => {
            let (read, write) = parts.io.into_inner().into_split();
            (ReadSide::Tcp { pending: unpinned(parts.read_buf), read }, WriteSide::Tcp(write))
        }
        Err(upgraded) => {
            tracing::warn!(
                "an upgraded connection is not the listener's TcpStream: reading and writing it through hyper"
            );
            let (read, write) = tokio::io::split(TokioIo::new(upgraded));
            (ReadSide::Upgraded(read), WriteSide::Upgraded(write))
        }
    }
}

/// `bytes` in an allocation of their own (none when empty): a slice of a larger buffer would keep
/// all of it.
fn unpinned(bytes: Bytes) -> Bytes {
    if bytes.is_empty() { Bytes::new() } else { Bytes::copy_from_slice(&bytes) }
}

impl AsyncRead for ReadSide {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp { pending, read } if pending.is_empty() => Pin::new(read).poll_read(cx, buf),
            Self::Tcp { pending, .. } => {
                let n = pending.len().min(buf.remaining());
                buf.put_slice(&pending.split_to(n));
                if pending.is_empty() {
                    *pending = Bytes::new();
                }
                Poll::Ready(Ok(()))
            }
            Self::Upgraded(read) => Pin::new(read).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteSide {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(write) => Pin::new(write).poll_write(cx, bytes),
            Self::Upgraded(write) => Pin::new(write).poll_write(cx, bytes),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(write) => Pin::new(write).poll_write_vectored(cx, slices),
            Self::Upgraded(write) => Pin::new(write).poll_write_vectored(cx, slices),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Tcp(write) => write.is_write_vectored(),
            Self::Upgraded(write) => write.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(write) => Pin::new(write).poll_flush(cx),
            Self::Upgraded(write) => Pin::new(write).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(write) => Pin::new(write).poll_shutdown(cx),
            Self::Upgraded(write) => Pin::new(write).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[test]
    fn what_hyper_read_ahead_keeps_none_of_its_buffer() {
        let buffer = Bytes::from(vec![7u8; 8192]);
        let (empty, ahead) = (unpinned(buffer.slice(8192..)), unpinned(buffer.slice(..3)));
        assert!(empty.is_empty() && ahead[..] == [7, 7, 7]);
        assert!(buffer.is_unique(), "neither keeps the 8 KiB");
    }

    #[tokio::test]
    async fn the_bytes_read_ahead_come_first_then_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let (read, _write) = server.into_split();
        let mut side = ReadSide::Tcp { pending: unpinned(Bytes::from_static(b"ahead,")), read };
        client.write_all(b"then the socket").await.expect("sent");
        drop(client);
        let mut all = Vec::new();
        side.read_to_end(&mut all).await.expect("read");
        assert_eq!(all, b"ahead,then the socket");
        assert!(matches!(&side, ReadSide::Tcp { pending, .. } if pending.is_empty()));
    }
}
