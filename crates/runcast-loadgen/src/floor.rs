//! The raw floor beside scenario (c): how long one core takes to write one small frame to every
//! one of N loopback TCP sockets, with nothing else to do — no WebSocket, no queue, no runtime.
//! On loopback the sender's `send` also runs the receiver's TCP input, so when the last `send`
//! returns, the last socket has the frame (its kernel receive timestamp, which is what the
//! latency "to the socket" is measured to). No server fanning one event out to N sockets on one
//! core gets it to all of them sooner than this pass takes.

use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Passes over every socket, one per event, spaced like scenario (c)'s events.
pub const PASSES: usize = 30;

#[derive(Debug, Clone, Copy)]
pub struct Floor {
    pub connections: usize,
    /// The median pass: one frame written to every socket in turn.
    pub median_pass: Duration,
    pub slowest_pass: Duration,
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
    let (accepted_tx, accepted_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || -> anyhow::Result<usize> {
        pin(client_cpu)?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
        runtime.block_on(async {
            let mut readers = Vec::with_capacity(connections);
            for _ in 0..connections {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                readers.push(tokio::spawn(drain(stream)));
            }
            accepted_tx.send(()).ok();
            let mut received = 0;
            for reader in readers {
                received += reader.await?;
            }
            Ok(received)
        })
    });
    let mut sockets = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        sockets.push(stream);
    }
    accepted_rx.recv_timeout(Duration::from_secs(60))?;
    let passes = write_passes(&mut sockets, frame_bytes, interval, server_cpu)?;
    drop(sockets); // the readers see end of stream and stop
    let received = reader.join().map_err(|_| anyhow::anyhow!("the floor's reading thread panicked"))??;
    let written = connections * PASSES * frame_bytes;
    anyhow::ensure!(received == written, "the floor's sockets received {received} bytes of {written} written");
    let mut sorted = passes;
    sorted.sort();
    Ok(Floor { connections, median_pass: sorted[sorted.len() / 2], slowest_pass: sorted[sorted.len() - 1] })
}

/// The passes, on a thread of their own pinned to `cpu`.
fn write_passes(
    sockets: &mut [TcpStream],
    frame_bytes: usize,
    interval: Duration,
    cpu: Option<usize>,
) -> anyhow::Result<Vec<Duration>> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<Vec<Duration>> {
                pin(cpu)?;
                let frame = vec![b'x'; frame_bytes];
                let mut passes = Vec::with_capacity(PASSES);
                for _ in 0..PASSES {
                    std::thread::sleep(interval);
                    let started = Instant::now();
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

/// Reads until the end of the stream; the bytes read.
async fn drain(mut stream: tokio::net::TcpStream) -> usize {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0_u8; 4096];
    let mut received = 0;
    while let Ok(read @ 1..) = stream.read(&mut buf).await {
        received += read;
    }
    received
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
}
