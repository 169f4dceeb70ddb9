//! One subscribed WebSocket connection to either server, driven on the caller's `LocalSet`: every
//! connection is a local task on one thread, its frames parsed in place from its own read buffer,
//! its deliveries checked by its [`Tracker`] and timed into the run's shared histogram.

use crate::frames::{GatewayFrame, Marker, classify, find_marker};
use crate::tracker::Tracker;
use crate::wsframe::{
    self, FrameError, Inflater, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT, Upgrade,
};
use crate::{natsproto, publisher};
use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Bytes read at most per read: about 40 gateway frames.
const READ_CHUNK: usize = 16 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections opened from one loopback source address: one address has ~28,000 ephemeral ports
/// (`ip_local_port_range`), and scenario f opens 100,000.
const CONNECTIONS_PER_SOURCE: usize = 20_000;

/// The source address of connection `index` to a loopback `server`: the kernel's choice for the
/// first [`CONNECTIONS_PER_SOURCE`] (its `connect` reuses ports across destinations and from
/// `TIME_WAIT`, which back-to-back runs need), then 127.0.0.2, .3, … one per
/// [`CONNECTIONS_PER_SOURCE`] (all of 127.0.0.0/8 is loopback on Linux). `None`: the kernel's.
fn source_address(index: usize, server: SocketAddr) -> Option<std::net::IpAddr> {
    let SocketAddr::V4(server) = server else {
        return None;
    };
    if !server.ip().is_loopback() || index < CONNECTIONS_PER_SOURCE {
        return None;
    }
    let host = u8::try_from(1 + index / CONNECTIONS_PER_SOURCE).ok().filter(|host| *host < 255)?;
    Some(std::net::Ipv4Addr::new(127, 0, 0, host).into())
}

async fn connect_from(source: Option<std::net::IpAddr>, server: SocketAddr) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(server).await;
    };
    let socket = tokio::net::TcpSocket::new_v4()?;
    // Ports of an earlier run's connections in `TIME_WAIT` may be bound again.
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(server).await
}

/// Which server a connection subscribes to, and how.
#[derive(Debug, Clone)]
pub enum Target {
    /// ws-gateway: `/ws?token=…`, then `subscribe` to `executions`; every connection with a token
    /// of its own subject.
    Gateway { addr: SocketAddr, jwt_secret: String, tenant: String },
    /// nats-server's WebSocket listener: the NATS protocol, one subscription to `subject`.
    Nats { addr: SocketAddr, subject: String },
}

impl Target {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Gateway { .. } => "ws-gateway",
            Self::Nats { .. } => "NATS WS",
        }
    }
}

/// What the connections of a run share (one thread: cells, no atomics).
pub struct Shared {
    pub stop: CancellationToken,
    pub subscribed: Cell<usize>,
    pub failed: Cell<usize>,
    /// Events delivered once, over every connection.
    pub delivered: Cell<u64>,
    pub resyncs: Cell<u64>,
    /// Whether deliveries are timed now (not during the warm-up).
    pub recording: Cell<bool>,
    /// Publish-to-read latency in µs: until the client read the frame (includes the client's own
    /// delay when thousands of sockets become readable at once).
    pub latency: RefCell<Histogram<u64>>,
    /// Publish-to-socket latency in µs: until the frame reached the client's socket (the kernel's
    /// receive timestamp), which is what the server is responsible for.
    pub wire_latency: RefCell<Histogram<u64>>,
    /// The first few errors, for the report.
    pub errors: RefCell<Vec<String>>,
    /// Whether every timed delivery is also kept in `samples` (for windows chosen afterwards).
    pub keep_samples: Cell<bool>,
    pub samples: RefCell<Vec<Sample>>,
    /// When the last connection got its `subscribed` (ns since the epoch; 0: none yet).
    pub last_subscribed_ns: Cell<u64>,
    /// Bytes read from the servers' sockets, over every connection (frames as sent: compressed
    /// ones compressed).
    pub bytes_read: Cell<u64>,
}

/// One timed delivery: published, and received by the client's socket (or read, without a
/// kernel timestamp), in ns since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub published_ns: u64,
    pub received_ns: u64,
}

impl Shared {
    pub fn new() -> anyhow::Result<Rc<Self>> {
        Ok(Rc::new(Self {
            stop: CancellationToken::new(),
            subscribed: Cell::new(0),
            failed: Cell::new(0),
            delivered: Cell::new(0),
            resyncs: Cell::new(0),
            recording: Cell::new(false),
            latency: RefCell::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
            wire_latency: RefCell::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
            errors: RefCell::new(Vec::new()),
            keep_samples: Cell::new(false),
            samples: RefCell::new(Vec::new()),
            last_subscribed_ns: Cell::new(0),
            bytes_read: Cell::new(0),
        }))
    }

    fn error(&self, error: String) {
        let mut errors = self.errors.borrow_mut();
        if errors.len() < 5 {
            errors.push(error);
        }
    }

    fn deliver(&self, tracker: &mut Tracker, marker: Marker, at: ReadAt) {
        if tracker.seq(marker.seq) {
            self.delivered.set(self.delivered.get() + 1);
            if self.recording.get() {
                let micros = |ns: u64| (ns.saturating_sub(marker.published_ns) / 1_000).max(1);
                self.latency.borrow_mut().saturating_record(micros(at.read_ns));
                if let Some(wire_ns) = at.wire_ns {
                    self.wire_latency.borrow_mut().saturating_record(micros(wire_ns));
                }
                if self.keep_samples.get() {
                    let received_ns = at.wire_ns.unwrap_or(at.read_ns);
                    self.samples.borrow_mut().push(Sample { published_ns: marker.published_ns, received_ns });
                }
            }
        }
    }
}

/// When a read's bytes arrived: read by the client, and received by the kernel (its timestamp of
/// the read's last segment, when the socket reports one).
#[derive(Debug, Clone, Copy)]
pub struct ReadAt {
    pub read_ns: u64,
    pub wire_ns: Option<u64>,
}

/// One `recvmsg` into `into`: the bytes read and the kernel's receive timestamp (SO_TIMESTAMPNS,
/// CLOCK_REALTIME like the publisher's marker).
fn recv_timestamped(stream: &TcpStream, into: &mut [u8]) -> std::io::Result<(usize, Option<u64>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::AsRawFd as _;
    let mut iov = [std::io::IoSliceMut::new(into)];
    let mut space = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let message = recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty())?;
    let mut wire_ns = None;
    for control in message.cmsgs()? {
        if let ControlMessageOwned::ScmTimestampns(at) = control {
            let (seconds, nanos) = (u64::try_from(at.tv_sec()).unwrap_or(0), u64::try_from(at.tv_nsec()).unwrap_or(0));
            wire_ns = Some(seconds * 1_000_000_000 + nanos);
        }
    }
    Ok((message.bytes, wire_ns))
}

/// How one connection ended.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub subscribed: bool,
    pub tracker: Tracker,
    pub resyncs: u64,
    /// Closed by the server or failed before the run stopped it.
    pub ended_early: bool,
    pub other_frames: u64,
}

/// What a connection does besides subscribing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Plan {
    /// Resume: subscribe with `since_offset` (the gateway replays the events after it, then sends
    /// `subscribed`); the connection then expects sequences from this offset + 1 on (the bench's
    /// stream holds only the publisher's events, so offset = sequence). NATS has no resume: ignored.
    pub since_offset: Option<u64>,
    /// Once subscribed: unsubscribe, wait for the answer, close and end (a storm client).
    pub leave_once_subscribed: bool,
    /// Offer `permessage-deflate` at the upgrade (and fail if the server does not accept it).
    pub offer_compression: bool,
}

/// Connects, subscribes (holding `permit` until then, so connects are paced) and counts
/// deliveries until `shared.stop`.
pub async fn drive(
    index: usize,
    target: Target,
    shared: Rc<Shared>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Report {
    drive_planned(index, target, shared, permit, Plan::default()).await
}

/// [`drive`], doing what `plan` says.
pub async fn drive_planned(
    index: usize,
    target: Target,
    shared: Rc<Shared>,
    permit: tokio::sync::OwnedSemaphorePermit,
    plan: Plan,
) -> Report {
    let first_seq = match (&target, plan.since_offset) {
        (Target::Gateway { .. }, Some(offset)) => offset + 1,
        _ => 1,
    };
    let mut report = Report { tracker: Tracker::new(first_seq), ..Report::default() };
    let result = match &target {
        Target::Gateway { addr, jwt_secret, tenant } => {
            let gateway = GatewayClient { addr: *addr, secret: jwt_secret, tenant, plan };
            gateway.run(index, &shared, &mut report, permit).await
        }
        Target::Nats { addr, subject } => nats(index, *addr, subject, plan, &shared, &mut report, permit).await,
    };
    if let Err(err) = result {
        shared.error(format!("connection {index} ({}): {err:#}", target.name()));
        report.ended_early = true;
    }
    if !report.subscribed {
        shared.failed.set(shared.failed.get() + 1);
    }
    report
}

/// True the first time (the connection was not subscribed before).
fn mark_subscribed(
    shared: &Shared,
    report: &mut Report,
    permit: &mut Option<tokio::sync::OwnedSemaphorePermit>,
) -> bool {
    if report.subscribed {
        return false;
    }
    report.subscribed = true;
    shared.subscribed.set(shared.subscribed.get() + 1);
    shared.last_subscribed_ns.set(publisher::now_ns());
    permit.take();
    true
}

/// An HS256 token as the gateway expects it, valid for an hour.
pub fn token(secret: &str, tenant: &str, subject: &str) -> anyhow::Result<String> {
    let exp = publisher::now_ns() / 1_000_000_000 + 3600;
    let claims = serde_json::json!({ "sub": subject, "tenant": tenant, "roles": ["viewer"], "exp": exp });
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// One gateway connection's settings.
struct GatewayClient<'a> {
    addr: SocketAddr,
    secret: &'a str,
    tenant: &'a str,
    plan: Plan,
}

impl GatewayClient<'_> {
    async fn run(
        &self,
        index: usize,
        shared: &Shared,
        report: &mut Report,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> anyhow::Result<()> {
        let mut permit = Some(permit);
        let token = token(self.secret, self.tenant, &format!("bench-{index}"))?;
        let path = format!("/ws?token={token}");
        let mut ws = WsConn::connect(index, self.addr, &path, self.plan.offer_compression).await?;
        ws.send(OP_TEXT, subscribe_message(self.plan.since_offset).as_bytes()).await?;
        loop {
            let (mut subscribed, mut unsubscribed) = (false, false);
            let mut resync_from = None;
            let read = ws.read_messages(shared, |message, at| match classify(message) {
                GatewayFrame::Event { offset, marker } => {
                    if let Some(offset) = offset {
                        report.tracker.offset(offset);
                    }
                    match marker {
                        Some(marker) => shared.deliver(&mut report.tracker, marker, at),
                        None => report.other_frames += 1,
                    }
                }
                GatewayFrame::Subscribed => subscribed = true,
                GatewayFrame::Resync { offset } => {
                    report.resyncs += 1;
                    shared.resyncs.set(shared.resyncs.get() + 1);
                    // Like a real client: resume after the last event it has.
                    resync_from = report.tracker.last_offset().or(offset).or(Some(0));
                }
                GatewayFrame::Control(kind) => {
                    report.other_frames += 1;
                    unsubscribed |= kind == b"unsubscribed";
                    if kind == b"error" {
                        shared.error(format!("connection {index}: {}", String::from_utf8_lossy(message)));
                    }
                }
            });
            let open = tokio::select! {
                () = shared.stop.cancelled() => return Ok(()),
                open = read => open?,
            };
            if subscribed && mark_subscribed(shared, report, &mut permit) && self.plan.leave_once_subscribed {
                ws.send(OP_TEXT, br#"{"type":"unsubscribe","channel":"executions"}"#).await?;
            }
            if unsubscribed && self.plan.leave_once_subscribed {
                ws.close().await;
                return Ok(());
            }
            if let Some(offset) = resync_from {
                ws.send(OP_TEXT, subscribe_message(Some(offset)).as_bytes()).await?;
            }
            if !open {
                report.ended_early = true;
                return Ok(());
            }
        }
    }
}

/// `subscribe` to `executions`, resuming after `since_offset` when there is one.
fn subscribe_message(since_offset: Option<u64>) -> String {
    match since_offset {
        Some(offset) => format!(r#"{{"type":"subscribe","channel":"executions","since_offset":{offset}}}"#),
        None => r#"{"type":"subscribe","channel":"executions"}"#.to_owned(),
    }
}

async fn nats(
    index: usize,
    addr: SocketAddr,
    subject: &str,
    plan: Plan,
    shared: &Shared,
    report: &mut Report,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> anyhow::Result<()> {
    let mut permit = Some(permit);
    let mut ws = WsConn::connect(index, addr, "/", plan.offer_compression).await?;
    ws.send(OP_BINARY, natsproto::handshake(subject).as_bytes()).await?;
    // The NATS byte stream the WebSocket messages carry; a message may span several.
    let mut stream: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    loop {
        let mut pongs = 0;
        let mut subscribed = false;
        let mut failure = None;
        let read = ws.read_messages(shared, |message, read_at| {
            stream.extend_from_slice(message);
            let mut at = 0;
            loop {
                match natsproto::parse(&stream[at..]) {
                    Ok(Some((op, used))) => {
                        match op {
                            natsproto::Op::Msg { payload } => match find_marker(&stream[at..][payload]) {
                                Some(marker) => shared.deliver(&mut report.tracker, marker, read_at),
                                None => report.other_frames += 1,
                            },
                            natsproto::Op::Ping => pongs += 1,
                            // The answer to the handshake's PING: the subscription is in place.
                            natsproto::Op::Pong => subscribed = true,
                            natsproto::Op::Err(text) => shared.error(format!("connection {index}: -ERR {text}")),
                            natsproto::Op::Info | natsproto::Op::Ok => {}
                        }
                        at += used;
                    }
                    Ok(None) => break,
                    Err(err) => {
                        failure = Some(err);
                        break;
                    }
                }
            }
            stream.drain(..at);
        });
        let open = tokio::select! {
            () = shared.stop.cancelled() => return Ok(()),
            open = read => open?,
        };
        if let Some(err) = failure {
            return Err(err.into());
        }
        if subscribed && plan.leave_once_subscribed {
            if mark_subscribed(shared, report, &mut permit) {
                // The answer to this PING says the UNSUB was processed.
                ws.send(OP_BINARY, b"UNSUB 1\r\nPING\r\n").await?;
            } else {
                ws.close().await;
                return Ok(());
            }
        } else if subscribed {
            mark_subscribed(shared, report, &mut permit);
        }
        for _ in 0..pongs {
            ws.send(OP_BINARY, b"PONG\r\n").await?;
        }
        if !open {
            report.ended_early = true;
            return Ok(());
        }
    }
}

/// The client end of one WebSocket: a read buffer frames are parsed from in place, a write
/// buffer reused for every frame sent, the pieces of a fragmented message, and the inflater of
/// a connection that negotiated compression.
struct WsConn {
    stream: TcpStream,
    /// Read buffer: `buf[..filled]` holds what was read and not parsed yet.
    buf: Vec<u8>,
    filled: usize,
    out: Vec<u8>,
    fragments: Vec<u8>,
    fragmented: bool,
    /// The message being read came compressed (its first frame's RSV1).
    compressed_message: bool,
    inflater: Option<Box<Inflater>>,
    mask: [u8; 4],
}

impl WsConn {
    async fn connect(index: usize, addr: SocketAddr, path: &str, offer_compression: bool) -> anyhow::Result<Self> {
        let connect = async {
            let mut stream = connect_from(source_address(index, addr), addr)
                .await
                .with_context(|| format!("cannot connect to {addr}"))?;
            stream.set_nodelay(true)?;
            stream.write_all(wsframe::upgrade_request(&addr.to_string(), path, offer_compression).as_bytes()).await?;
            let mut buf = Vec::with_capacity(READ_CHUNK);
            let mut inflater = None;
            loop {
                if stream.read_buf(&mut buf).await? == 0 {
                    bail!("{addr} closed the connection during the upgrade");
                }
                match wsframe::parse_upgrade_response(&buf) {
                    Upgrade::Incomplete if buf.len() > READ_CHUNK => bail!("{addr}: upgrade answer too long"),
                    Upgrade::Incomplete => continue,
                    Upgrade::Refused(status) => bail!("{addr} refused the upgrade: {status}"),
                    Upgrade::Switched(frames_at) => {
                        if offer_compression {
                            anyhow::ensure!(
                                wsframe::deflate_accepted(&buf[..frames_at]),
                                "{addr} did not accept permessage-deflate"
                            );
                            inflater = Some(Box::default());
                        }
                        buf.drain(..frames_at);
                        break;
                    }
                }
            }
            let seed = (index as u32).wrapping_mul(0x9E37_79B9) | 1;
            nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::ReceiveTimestampns, &true)?;
            let filled = buf.len();
            buf.resize(filled.max(READ_CHUNK), 0);
            Ok(Self {
                stream,
                buf,
                filled,
                out: Vec::new(),
                fragments: Vec::new(),
                fragmented: false,
                compressed_message: false,
                inflater,
                mask: seed.to_be_bytes(),
            })
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect).await.context("connect and upgrade timed out")?
    }

    /// Sends a close frame (1000, normal) and ends; the socket is dropped without waiting for
    /// the server's answer.
    async fn close(mut self) {
        let _ = self.send(OP_CLOSE, &1000u16.to_be_bytes()).await;
    }

    async fn send(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        self.out.clear();
        wsframe::encode_masked(opcode, payload, self.mask, &mut self.out);
        self.stream.write_all(&self.out).await
    }

    /// Reads what has arrived and hands each complete data message to `on_message` with the
    /// receive time (one clock read per read); answers pings. False once the server has closed.
    async fn read_messages(
        &mut self,
        shared: &Shared,
        mut on_message: impl FnMut(&[u8], ReadAt),
    ) -> anyhow::Result<bool> {
        if self.buf.len() - self.filled < READ_CHUNK / 4 {
            // Zeroed once when it grows, never per read.
            self.buf.resize(self.buf.len() + READ_CHUNK, 0);
        }
        let (read, wire_ns) = loop {
            self.stream.readable().await?;
            let spare = &mut self.buf[self.filled..];
            match self.stream.try_io(tokio::io::Interest::READABLE, || recv_timestamped(&self.stream, spare)) {
                Ok(read) => break read,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(err) => return Err(err.into()),
            }
        };
        self.filled += read;
        shared.bytes_read.set(shared.bytes_read.get() + read as u64);
        let now = ReadAt { read_ns: publisher::now_ns(), wire_ns };
        let mut open = read > 0;
        let mut at = 0;
        self.out.clear();
        while let Some(frame) = wsframe::parse(&self.buf[at..self.filled])? {
            let payload = frame.payload(&self.buf[at..self.filled]);
            match frame.opcode {
                OP_TEXT | OP_BINARY | OP_CONTINUATION => {
                    if frame.opcode != OP_CONTINUATION {
                        anyhow::ensure!(!frame.compressed || self.inflater.is_some(), FrameError::Reserved);
                        self.compressed_message = frame.compressed;
                    }
                    let inflater = self.inflater.as_deref_mut().filter(|_| self.compressed_message);
                    if frame.fin && !self.fragmented {
                        deliver(inflater, payload, now, &mut on_message)?;
                    } else {
                        self.fragments.extend_from_slice(payload);
                        self.fragmented = !frame.fin;
                        if frame.fin {
                            deliver(inflater, &self.fragments, now, &mut on_message)?;
                            self.fragments.clear();
                        }
                    }
                }
                OP_PING => wsframe::encode_masked(OP_PONG, payload, self.mask, &mut self.out),
                OP_CLOSE => {
                    wsframe::encode_masked(OP_CLOSE, payload.get(..2).unwrap_or_default(), self.mask, &mut self.out);
                    open = false;
                }
                _ => {}
            }
            at += frame.size();
        }
        self.buf.copy_within(at..self.filled, 0);
        self.filled -= at;
        if !self.out.is_empty() {
            // A close answer may meet a socket the server has already closed.
            let written = self.stream.write_all(&self.out).await;
            if open {
                written?;
            }
        }
        Ok(open)
    }
}

/// Hands one whole message to `on_message`, inflated first when it came compressed (`inflater`).
fn deliver(
    inflater: Option<&mut Inflater>,
    message: &[u8],
    at: ReadAt,
    on_message: &mut impl FnMut(&[u8], ReadAt),
) -> Result<(), FrameError> {
    match inflater {
        Some(inflater) => on_message(inflater.inflate(message)?, at),
        None => on_message(message, at),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_beyond_one_source_s_ports_come_from_further_loopback_addresses() {
        let server: SocketAddr = ([127, 0, 0, 1], 4000).into();
        assert_eq!(source_address(0, server), None, "the kernel's choice first");
        assert_eq!(source_address(CONNECTIONS_PER_SOURCE - 1, server), None);
        let second = source_address(CONNECTIONS_PER_SOURCE, server);
        assert_eq!(second, Some(std::net::Ipv4Addr::new(127, 0, 0, 2).into()));
        let sixth = source_address(5 * CONNECTIONS_PER_SOURCE + 7, server);
        assert_eq!(sixth, Some(std::net::Ipv4Addr::new(127, 0, 0, 6).into()));
        assert_eq!(source_address(CONNECTIONS_PER_SOURCE, ([10, 0, 0, 1], 4000).into()), None, "not loopback");
    }
}
