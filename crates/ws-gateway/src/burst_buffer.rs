//! The write buffer under a WebSocket: it gathers a burst of frames into one `write` and gives its
//! memory back once the burst is out.
//!
//! tungstenite gathers frames in a buffer of its own, but keeps that buffer at its largest size for
//! the connection's life: 16 KiB on every connection that once received a burst (a resume, a
//! snapshot), which was 5× the memory of an idle connection. So tungstenite writes every frame
//! straight through (its `write_buffer_size` is 0, its buffer holds one frame) into this one,
//! which writes to the socket once it holds `limit` bytes or on flush, and then keeps at most
//! [`KEPT_BYTES`]: enough that steady one-frame writes allocate nothing.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the buffer keeps between bursts at most; a larger one is freed once written out.
pub(crate) const KEPT_BYTES: usize = 1024;

pin_project_lite::pin_project! {
    /// Buffers writes up to `limit` bytes, writes them out on flush (or when full), then frees
    /// the buffer if it grew beyond [`KEPT_BYTES`]. Reads pass through.
    #[derive(Debug)]
    pub(crate) struct BurstBuffer<S> {
        #[pin]
        inner: S,
        buffer: Vec<u8>,
        // How much of `buffer` the socket has taken already.
        written: usize,
        limit: usize,
    }
}

impl<S: AsyncWrite> BurstBuffer<S> {
    pub(crate) fn new(inner: S, limit: usize) -> Self {
        Self { inner, buffer: Vec::new(), written: 0, limit }
    }

    /// Bytes held, for tests and metrics: what was accepted and not yet written to the socket.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.buffer.len() - self.written
    }

    #[cfg(test)]
    fn held_capacity(&self) -> usize {
        self.buffer.capacity()
    }

    /// Writes the whole buffer out, then empties it (and frees it if it grew past the kept size).
    fn poll_write_out(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        while *this.written < this.buffer.len() {
            let n = ready!(this.inner.as_mut().poll_write(cx, &this.buffer[*this.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *this.written += n;
        }
        *this.written = 0;
        if this.buffer.capacity() > KEPT_BYTES {
            *this.buffer = Vec::new();
        } else {
            this.buffer.clear();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite> AsyncWrite for BurstBuffer<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        if !self.buffer.is_empty() && self.buffer.len() + bytes.len() > self.limit {
            ready!(self.as_mut().poll_write_out(cx))?;
        }
        let this = self.project();
        if bytes.len() >= *this.limit {
            // Larger than a whole buffer: no point copying it.
            return this.inner.poll_write(cx, bytes);
        }
        this.buffer.extend_from_slice(bytes);
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_write_out(cx))?;
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_write_out(cx))?;
        self.project().inner.poll_shutdown(cx)
    }
}

impl<S: AsyncRead> AsyncRead for BurstBuffer<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test]
    async fn a_burst_reaches_the_socket_in_order_on_flush_and_its_memory_is_freed() {
        let (near, mut far) = duplex(1 << 20);
        let mut buffered = BurstBuffer::new(near, 16 * 1024);
        let frames: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 250]).collect();
        for frame in &frames {
            buffered.write_all(frame).await.expect("accepted");
        }
        // 25,000 bytes against a 16 KiB limit: one full buffer went out, the rest waits for flush.
        assert!(buffered.pending() > 0 && buffered.pending() <= 16 * 1024, "{}", buffered.pending());
        buffered.flush().await.expect("flushed");
        assert_eq!(buffered.pending(), 0);
        assert_eq!(buffered.held_capacity(), 0, "a burst's buffer is given back");
        let mut received = vec![0; 25_000];
        far.read_exact(&mut received).await.expect("all bytes arrive");
        assert_eq!(received, frames.concat());
    }

    #[tokio::test]
    async fn nothing_reaches_the_socket_before_flush_and_a_small_buffer_is_kept() {
        let (near, mut far) = duplex(1 << 20);
        let mut buffered = BurstBuffer::new(near, 16 * 1024);
        buffered.write_all(b"one small frame").await.expect("accepted");
        let mut byte = [0u8; 1];
        assert!(
            futures::FutureExt::now_or_never(far.read(&mut byte)).is_none(),
            "the frame waits for the flush that ends the burst"
        );
        buffered.flush().await.expect("flushed");
        let mut received = [0u8; 15];
        far.read_exact(&mut received).await.expect("arrives");
        assert_eq!(&received, b"one small frame");
        let kept = buffered.held_capacity();
        assert!(kept > 0 && kept <= KEPT_BYTES, "steady small writes reuse the buffer: {kept}");
    }

    #[tokio::test]
    async fn a_full_socket_holds_writes_back_until_the_peer_reads() {
        // The socket takes 1 KiB; the buffer 4 KiB.
        let (near, mut far) = duplex(1024);
        let mut buffered = BurstBuffer::new(near, 4 * 1024);
        let frame = [7u8; 1000];
        let mut accepted = 0;
        loop {
            match futures::FutureExt::now_or_never(buffered.write(&frame)) {
                Some(Ok(n)) => accepted += n,
                Some(Err(err)) => panic!("write failed: {err}"),
                None => break,
            }
            assert!(accepted <= 5 * 1024, "writes are refused once socket and buffer are full");
        }
        assert_eq!(accepted, 4000, "the buffer took four frames, then the fifth waits for the socket");
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            far.read_to_end(&mut all).await.expect("read");
            all
        });
        buffered.write_all(&frame).await.expect("accepted once the peer reads");
        buffered.shutdown().await.expect("written out and shut down");
        let all = reader.await.expect("reader");
        assert_eq!(all.len(), accepted + frame.len());
        assert!(all.iter().all(|&b| b == 7));
    }

    #[tokio::test]
    async fn a_write_larger_than_the_buffer_goes_straight_through_after_what_was_buffered() {
        let (near, mut far) = duplex(1 << 20);
        let mut buffered = BurstBuffer::new(near, 1024);
        buffered.write_all(b"head").await.expect("accepted");
        let big = vec![9u8; 5000];
        buffered.write_all(&big).await.expect("accepted");
        assert_eq!(buffered.pending(), 0, "the large write bypassed the buffer");
        buffered.flush().await.expect("flushed");
        let mut received = vec![0; 5004];
        far.read_exact(&mut received).await.expect("arrives");
        assert_eq!(&received[..4], b"head");
        assert!(received[4..].iter().all(|&b| b == 9));
    }

    #[tokio::test]
    async fn a_closed_socket_fails_the_flush() {
        let (near, far) = duplex(1024);
        drop(far);
        let mut buffered = BurstBuffer::new(near, 1024);
        buffered.write_all(b"lost").await.expect("buffered");
        assert!(buffered.flush().await.is_err(), "the write error reaches the writer");
    }
}
