//! Hostile peers for listener tests: connections that never finish a request (a slowloris), and
//! a wait until the server has closed every one of them.

use crate::{HarnessError, Result};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Opens `count` connections to `addr` that never complete a request: even ones send nothing,
/// odd ones half of a request's headers.
pub async fn open(addr: SocketAddr, count: usize) -> Result<Vec<TcpStream>> {
    let mut peers = Vec::with_capacity(count);
    for n in 0..count {
        let mut peer =
            TcpStream::connect(addr).await.map_err(|err| HarnessError::io(format!("cannot connect to {addr}"), err))?;
        if n % 2 == 1 {
            peer.write_all(b"GET /healthz HTTP/1.1\r\nHost: slow\r\nX-Slow: ")
                .await
                .map_err(|err| HarnessError::io("cannot send half a request", err))?;
        }
        peers.push(peer);
    }
    Ok(peers)
}

/// Waits until the server has closed every peer (end of stream or reset); returns how long that
/// took, or fails naming how many were still open after `within`.
pub async fn wait_all_closed(peers: Vec<TcpStream>, within: Duration) -> Result<Duration> {
    let started = Instant::now();
    let count = peers.len();
    let closes = peers.into_iter().map(|mut peer| async move {
        let mut buffer = [0_u8; 512];
        loop {
            match peer.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    let all = futures::future::join_all(closes);
    tokio::time::timeout(within, all)
        .await
        .map_err(|_| HarnessError(format!("not all of {count} slow peers were disconnected within {within:?}")))?;
    Ok(started.elapsed())
}
