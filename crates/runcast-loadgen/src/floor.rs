//! The raw floor beside scenario (c): how long one core takes to write one small frame to every
//! one of N loopback TCP sockets, with nothing else to do — no WebSocket, no queue, no runtime.
//! On loopback the sender's `send` also runs the receiver's TCP input, so when the last `send`
//! returns, the last socket has the frame (its kernel receive timestamp, which is what the
//! latency "to the socket" is measured to). No server fanning one event out to N sockets on one
//! core gets it to all of them sooner than this pass takes.
//!
//! Each frame carries the time its pass began (the moment the "event" exists), so the reading side
//! also gives the floor's latency as a client on the other core sees it: what the bench's p99 for
//! (c) compares with, since the bench's client, too, reads every socket on one core.

use hdrhistogram::Histogram;
use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Passes over every socket, one per event, spaced like scenario (c)'s events.
pub const PASSES: usize = 30;

#[derive(Debug, Clone)]
pub struct Floor {
    pub connections: usize,
    /// The median pass: one frame written to every socket in turn.
    pub median_pass: Duration,
    pub slowest_pass: Duration,
    /// From the start of a pass to a reader having that pass's frame, over every frame read.
    pub client_latency: Histogram<u64>,
}

impl Floor {
    /// CPU time per write in the median pass.
    pub fn micros_per_write(&self) -> f64 {
        self.median_pass.as_secs_f64() * 1e6 / self.connections.max(1) as f64
    }
}

/// Measures the floor: the writing thread pinned to `server_cpu`, the reading one (a Tokio
/// runtime, one task per socket, like the bench's client) to `client_cpu`, when given.
pub fn measure(
    connections: usize,
    frame_bytes: usize,
    interval: Duration,
    server_cpu: Option<usize>,
    client_cpu: Option<usize>,
) -> anyhow::Result<Floor> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    anyhow::ensure!(frame_bytes >= STAMP_BYTES, "a floor frame must hold its {STAMP_BYTES}-byte timestamp");
    let (accepted_tx, accepted_rx) = std::sync::mpsc::channel();
    // The clock both threads read: a frame's stamp is nanoseconds since it.
    let epoch = Instant::now();
    let reader = std::thread::spawn(move || -> anyhow::Result<(usize, Histogram<u64>)> {
        pin(client_cpu)?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
        runtime.block_on(async {
            let mut readers = Vec::with_capacity(connections);
            for _ in 0..connections {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                readers.push(tokio::spawn(drain(stream, frame_bytes, epoch)));
            }
            accepted_tx.send(()).ok();
            let (mut received, mut latency) = (0, Histogram::new(3)?);
            for reader in readers {
                let (bytes, latencies) = reader.await?;
                received += bytes;
                for micros in latencies {
                    latency.record(micros)?;
                }
            }
            Ok((received, latency))
        })
    });
    let mut sockets = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        sockets.push(stream);
    }
    accepted_rx.recv_timeout(Duration::from_secs(60))?;
    let passes = write_passes(&mut sockets, frame_bytes, interval, server_cpu, epoch)?;
    drop(sockets); // the readers see end of stream and stop
    let (received, client_latency) =
        reader.join().map_err(|_| anyhow::anyhow!("the floor's reading thread panicked"))??;
    let written = connections * PASSES * frame_bytes;
    anyhow::ensure!(received == written, "the floor's sockets received {received} bytes of {written} written");
    let mut sorted = passes;
    sorted.sort();
    Ok(Floor {
        connections,
        median_pass: sorted[sorted.len() / 2],
        slowest_pass: sorted[sorted.len() - 1],
        client_latency,
    })
}

/// The passes, on a thread of their own pinned to `cpu`.
fn write_passes(
    sockets: &mut [TcpStream],
    frame_bytes: usize,
    interval: Duration,
    cpu: Option<usize>,
    epoch: Instant,
) -> anyhow::Result<Vec<Duration>> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<Vec<Duration>> {
                pin(cpu)?;
                let mut frame = vec![b'x'; frame_bytes];
                let mut passes = Vec::with_capacity(PASSES);
                for _ in 0..PASSES {
                    std::thread::sleep(interval);
                    let started = Instant::now();
                    let stamp = u64::try_from(started.duration_since(epoch).as_nanos()).unwrap_or(u64::MAX);
                    frame[..STAMP_BYTES].copy_from_slice(&stamp.to_le_bytes());
                    for socket in sockets.iter_mut() {
                        socket.write_all(&frame)?;
                    }
                    passes.push(started.elapsed());
                }
                Ok(passes)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the floor's writing thread panicked"))?
    })
}

/// Bytes at the start of each frame: its pass's start, in nanoseconds since the shared epoch.
const STAMP_BYTES: usize = 8;

/// Reads until the end of the stream: the bytes read, and each frame's latency in µs from its
/// pass's start to the read that completed it.
async fn drain(mut stream: tokio::net::TcpStream, frame_bytes: usize, epoch: Instant) -> (usize, Vec<u64>) {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0_u8; 4096];
    let (mut received, mut latencies) = (0, Vec::with_capacity(PASSES));
    // The current frame's stamp bytes, which a read may split.
    let mut stamp = [0_u8; STAMP_BYTES];
    while let Ok(read @ 1..) = stream.read(&mut buf).await {
        let now = epoch.elapsed();
        // Frame by frame, not byte by byte: the reading core is the one being compared.
        let mut chunk = &buf[..read];
        while !chunk.is_empty() {
            let at = received % frame_bytes;
            if at < STAMP_BYTES {
                let n = (STAMP_BYTES - at).min(chunk.len());
                stamp[at..at + n].copy_from_slice(&chunk[..n]);
            }
            let n = (frame_bytes - at).min(chunk.len());
            chunk = &chunk[n..];
            received += n;
            if received % frame_bytes == 0 {
                let sent = Duration::from_nanos(u64::from_le_bytes(stamp));
                latencies.push(u64::try_from(now.saturating_sub(sent).as_micros()).unwrap_or(u64::MAX));
            }
        }
    }
    (received, latencies)
}

/// Pins the calling thread to `cpu` (`taskset -p` on this thread's id).
fn pin(cpu: Option<usize>) -> anyhow::Result<()> {
    let Some(cpu) = cpu else {
        return Ok(());
    };
    let thread = nix::unistd::gettid();
    let status = std::process::Command::new("taskset")
        .args(["-pc", &cpu.to_string(), &thread.to_string()])
        .stdout(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "taskset could not pin a thread to core {cpu}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pass_reaches_every_socket() {
        let few = measure(4, 200, Duration::from_millis(1), None, None).expect("measured");
        assert_eq!(few.connections, 4);
        assert!(few.median_pass > Duration::ZERO && few.slowest_pass >= few.median_pass);
        assert!(few.micros_per_write() > 0.0);
    }

    #[test]
    fn every_frame_is_timed_from_its_pass_by_the_reading_side() {
        let started = Instant::now();
        let floor = measure(20, 64, Duration::from_millis(2), None, None).expect("the floor measured");
        let took = started.elapsed();
        assert_eq!(floor.client_latency.len(), 20 * PASSES as u64, "one latency per frame");
        // A stamp read wrongly would be far from its pass: in the future (latency 0), or in the
        // past (latencies spread over the whole run of 30 passes, 2 ms apart).
        let run = u64::try_from(took.as_micros()).expect("µs");
        let (median, max) = (floor.client_latency.value_at_quantile(0.5), floor.client_latency.max());
        assert!(median > 0 && median < run / 4 && max <= run, "median {median} µs, max {max} µs, run {run} µs");
        assert!(measure(2, STAMP_BYTES - 1, Duration::ZERO, None, None).is_err(), "a frame too short for its stamp");
    }
}
