//! The WebSocket transport at `/ws`: authentication and origin check at upgrade, socket limits,
//! and the write-only half that empties the connection's queue — every frame queued at a wake-up
//! goes out in as few `writev`s as the socket takes ([`crate::ws_wire`]) — plus the ping keepalive
//! that closes dead peers. The session and the writer of a connection share one task
//! ([`Connection`]).

use crate::gateway::{Admission, Gateway, Transport};
use crate::outbound::{Frame, FrameKind, Outbound, Payload};
use crate::permessage_deflate::Inflating;
use crate::protocol::{CloseCode, ErrorCode, JSON_SUBPROTOCOL, PROTO_SUBPROTOCOL, Protocol};
use crate::series::WriterMeters;
use crate::session::{Inbound, Session};
use crate::socket::{ReadSide, WriteSide};
use crate::upgrade::{self, NotAHandshake};
use crate::wake_flag::WakeFlag;
use crate::ws_wire::{Compression, RepliesDropped, write_frames};
use axum::Extension;
use axum::extract::{Query, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use futures::future::Either;
use futures::{FutureExt, StreamExt};
use runcast_runtime::auth::json_error;
use runcast_runtime::ops::HandshakePlace;
use serde::Deserialize;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

/// Frames written per flush at most, so one busy connection does not monopolize its task.
const WRITE_BATCH: usize = 256;
/// Bytes taken from the queue per flush at most (at least one frame): what the writer holds
/// outside the queue's own byte bound while a slow peer's socket is full.
pub(crate) const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// The socket's read buffer, allocated with the connection: client messages are small (a
/// subscribe is ~100 bytes), and a larger one grows it for as long as it needs; every idle
/// connection holds this much.
const READ_BUFFER_BYTES: usize = 256;

/// What clients send, read by tungstenite (their compressed messages inflated first).
type Reader = WebSocketStream<RepliesDropped<Inflating<ReadSide>>>;
/// Where the writer writes frames itself (see [`crate::ws_wire`]).
type Writer = WriteSide;

/// The only query parameter `/ws` accepts (browsers cannot set headers on a WebSocket).
const WS_PARAMETERS: [&str; 1] = ["token"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpgradeQuery {
    token: Option<String>,
}

/// The `?token=` of an upgrade; anything else in the query string is a JSON 400 naming it.
pub(crate) fn parse_query(query: Option<&str>) -> Result<Option<String>, String> {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return Ok(None);
    };
    let uri: axum::http::Uri =
        format!("/ws?{query}").parse().map_err(|_| "the query string is malformed".to_owned())?;
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map_err(|err| format!("the query string is malformed: {}", err.body_text()))?;
    if let Some((name, _)) = pairs.iter().find(|(name, _)| !WS_PARAMETERS.contains(&name.as_str())) {
        return Err(format!("unknown query parameter '{}': the only one accepted is token", name.escape_debug()));
    }
    Query::<UpgradeQuery>::try_from_uri(&uri)
        .map(|Query(query)| query.token)
        .map_err(|err| format!("invalid query: {}", err.body_text()))
}

pub(crate) async fn upgrade(
    State(gw): State<Arc<Gateway>>,
    RawQuery(query): RawQuery,
    handshake_place: Option<Extension<HandshakePlace>>,
    mut request: Request,
) -> Response {
    let token = match parse_query(query.as_deref()) {
        Ok(token) => token,
        Err(message) => return json_error(StatusCode::BAD_REQUEST, ErrorCode::InvalidMessage.as_str(), &message),
    };
    // Not a WebSocket handshake: the same JSON error shape as everything else.
    let subprotocols = [JSON_SUBPROTOCOL, PROTO_SUBPROTOCOL];
    let handshake = match upgrade::check(request.method(), request.headers(), &subprotocols, gw.limits.compression) {
        Ok(handshake) => handshake,
        Err(not) => return not_a_websocket(not),
    };
    let Some(on_upgrade) = request.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return not_a_websocket(NotAHandshake::NotUpgradable);
    };
    let admission = match gw.admit(request.headers(), token.as_deref(), Transport::WebSocket) {
        Ok(admission) => admission,
        Err(refusal) => return refusal.into_response(),
    };
    // The place among the replica's handshakes is given back once the first subscriptions are
    // live, not at the 101.
    let handshake_place = handshake_place.map(|Extension(place)| {
        place.keep();
        place
    });
    let limits = &gw.limits;
    // tungstenite's own limit sits well above ours, so an oversized frame usually reaches the
    // session, which closes with 1009; a frame even beyond tungstenite's limit is not read at all,
    // and closes with 1009 too (see `read_failure`).
    let hard_limit = (limits.max_frame_bytes * 4).max(64 * 1024);
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        // tungstenite writes only its own replies, which are dropped (see `crate::ws_wire`).
        .write_buffer_size(0)
        .max_message_size(Some(hard_limit))
        .max_frame_size(Some(hard_limit));
    let protocol = Protocol::from_subprotocol(handshake.subprotocol);
    let compression = match handshake.deflate {
        Some(_) => {
            crate::permessage_deflate::negotiated();
            Compression::Deflate
        }
        None => Compression::Off,
    };
    let tracker = gw.tasks.clone();
    // Chained rather than an `async` block: each step's captures are dropped once it is done, so
    // the connection's task holds only the session and the writer for its life.
    let connection = on_upgrade
        .then(move |upgraded| match upgraded {
            Ok(upgraded) => {
                let (read, write) = crate::socket::split(upgraded);
                let read = match compression {
                    Compression::Deflate => Inflating::new(read, hard_limit),
                    Compression::Off => Inflating::off(read),
                };
                let reader = WebSocketStream::from_raw_socket(RepliesDropped::new(read), Role::Server, Some(config));
                Either::Left(reader.map(|reader| Some((reader, write))))
            }
            Err(err) => {
                tracing::debug!(error = %err, "the WebSocket upgrade failed");
                Either::Right(std::future::ready(None))
            }
        })
        .then(move |socket| match socket {
            Some((reader, writer)) => {
                let wire = Wire { protocol, compression };
                Either::Left(serve(gw, reader, writer, wire, admission, handshake_place))
            }
            None => Either::Right(std::future::ready(())),
        });
    tokio::spawn(tracker.track_future(connection));
    handshake.switching_protocols()
}

fn not_a_websocket(not: NotAHandshake) -> Response {
    json_error(not.status(), "NOT_A_WEBSOCKET_UPGRADE", &not.to_string())
}

/// The connection, in one task: the session and the writer polled together (see [`Connection`]).
/// Not an `async fn`: that would keep its arguments (the whole socket) in the connection's future
/// for its lifetime besides what was moved out of them; every idle connection would carry them.
fn serve(
    gw: Arc<Gateway>,
    reader: Reader,
    writer: Writer,
    wire: Wire,
    admission: Admission,
    handshake: Option<HandshakePlace>,
) -> impl Future<Output = ()> {
    let outbound = Outbound::bounded(gw.limits.queue_capacity, gw.limits.queue_bytes);
    let closed = CancellationToken::new();
    let times = WriterTimes { write_timeout: gw.limits.write_timeout, ping_interval: gw.limits.ping_interval };
    let writer = write_loop(writer, outbound.clone(), closed.clone(), times, wire.compression);
    // Read errors end the stream, except a frame beyond tungstenite's own limit: that one becomes
    // `TooBig`, so the client learns why (1009) instead of seeing the socket fail.
    let queue = outbound.clone();
    let inbound = reader
        .map(move |message| {
            queue.peer_seen();
            match message {
                Ok(Message::Text(text)) => Ok(Some(Inbound::Text(text.into()))),
                Ok(Message::Binary(bytes)) => Ok(Some(Inbound::Binary(bytes))),
                Ok(Message::Ping(payload)) => {
                    // Not answered when the client lets even control replies pile up.
                    queue.push_control(Frame { payload: Payload::binary(payload), kind: FrameKind::Pong });
                    Ok(Some(Inbound::Alive))
                }
                Ok(Message::Pong(_) | Message::Frame(_)) => Ok(Some(Inbound::Alive)),
                Ok(Message::Close(_)) => Ok(None),
                Err(err) => match read_failure(&err) {
                    Some(inbound) => Ok(Some(inbound)),
                    None => Err(()),
                },
            }
        })
        .take_while(|message| std::future::ready(message.is_ok()))
        .filter_map(|message| std::future::ready(message.ok().flatten()));
    // A peer's close frame ends the stream, which ends the session, which queues our close frame.
    let session = Session::new(gw.clone(), wire.protocol, &admission, outbound)
        .holding(handshake)
        .run(Box::pin(inbound), closed.clone());
    Connection {
        writer,
        writer_done: false,
        phase: Phase::Session { session },
        wakes: Halves::default(),
        write_timeout: times.write_timeout,
        closed,
        admission: Some(admission),
    }
}

/// The two halves' wake-ups, so the task polls only the half that was woken: a live event wakes
/// the writers of thousands of connections at once, and polling each one's session as well (its
/// socket read, its cancellation tokens, its timer, its span) cost about as much as the write
/// (`perf` of the fan-out bench's (c)).
#[derive(Debug)]
struct Halves {
    writer: Arc<WakeFlag>,
    session: Arc<WakeFlag>,
}

impl Default for Halves {
    fn default() -> Self {
        // Both run at the first poll.
        Self { writer: Arc::new(WakeFlag::raised()), session: Arc::new(WakeFlag::raised()) }
    }
}

impl Halves {
    fn register(&self, task: &std::task::Waker) {
        self.writer.register(task);
        self.session.register(task);
    }

    /// Polls `future` with `half`'s waker if `half` was woken; `None` if it was not.
    fn poll<F: Future>(half: &Arc<WakeFlag>, future: std::pin::Pin<&mut F>) -> Option<std::task::Poll<F::Output>> {
        if !half.take() {
            return None;
        }
        let waker = std::task::Waker::from(half.clone());
        Some(future.poll(&mut std::task::Context::from_waker(&waker)))
    }
}

pin_project_lite::pin_project! {
    /// A connection's one task: its session and its writer, polled together. A hand-written
    /// future rather than an `async` block: that would hold the session's future twice (as the
    /// captured value and as the future being awaited), and a second task would cost a task of
    /// its own; every idle connection carries this.
    struct Connection<S, W> {
        #[pin]
        writer: W,
        writer_done: bool,
        #[pin]
        phase: Phase<S>,
        wakes: Halves,
        write_timeout: Duration,
        closed: CancellationToken,
        admission: Option<Admission>,
    }
}

pin_project_lite::pin_project! {
    #[project = PhaseProjection]
    enum Phase<S> {
        Session { #[pin] session: S },
        /// The session ended: the writer delivers what it queued last (reconnect, error, close
        /// frame) until this deadline at most. It takes the session's place in memory.
        Finishing { #[pin] deadline: tokio::time::Sleep },
    }
}

impl<S: Future<Output = ()>, W: Future<Output = ()>> Future for Connection<S, W> {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        use std::task::Poll;
        let mut this = self.project();
        this.wakes.register(cx.waker());
        // A writer that stops (write error or timeout, close frame written) cancels `closed`,
        // which ends the session.
        if !*this.writer_done && Halves::poll(&this.wakes.writer, this.writer.as_mut()).is_some_and(|p| p.is_ready()) {
            *this.writer_done = true;
        }
        loop {
            match this.phase.as_mut().project() {
                PhaseProjection::Session { session } => {
                    if !Halves::poll(&this.wakes.session, session).is_some_and(|p| p.is_ready()) {
                        return Poll::Pending;
                    }
                    if *this.writer_done {
                        break;
                    }
                    let deadline = tokio::time::sleep(*this.write_timeout);
                    this.phase.set(Phase::Finishing { deadline });
                }
                PhaseProjection::Finishing { deadline } => {
                    if *this.writer_done {
                        break;
                    }
                    if deadline.poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    tracing::debug!("writer did not finish in time");
                    break;
                }
            }
        }
        this.closed.cancel();
        // The socket is done: only now does the connection leave the caps.
        this.admission.take();
        Poll::Ready(())
    }
}

/// What the session tells the client about a failed read: a message or frame larger than the
/// socket's limit (1009), or one that breaks the protocol (1002). `None`: the connection failed
/// (reset, closed), and nobody is left to tell.
fn read_failure(err: &tungstenite::Error) -> Option<Inbound> {
    match err {
        tungstenite::Error::Capacity(tungstenite::error::CapacityError::MessageTooLong { .. }) => Some(Inbound::TooBig),
        tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake
            | tungstenite::error::ProtocolError::SendAfterClosing
            | tungstenite::error::ProtocolError::ReceivedAfterClosing,
        ) => None,
        tungstenite::Error::Protocol(_) | tungstenite::Error::Utf8(_) => Some(Inbound::Broken),
        _ => None,
    }
}

/// How a connection's messages are encoded: the subprotocol's encoding, and compression when
/// negotiated.
#[derive(Debug, Clone, Copy)]
struct Wire {
    protocol: Protocol,
    compression: Compression,
}

/// What the writer needs of the limits.
#[derive(Debug, Clone, Copy)]
struct WriterTimes {
    write_timeout: Duration,
    ping_interval: Duration,
}

/// The write-only half: not an `async fn`, for the reason [`serve`] gives. Generic over the
/// socket so that its scheduling can be tested without one.
fn write_loop<W: tokio::io::AsyncWrite + Unpin>(
    mut socket: W,
    outbound: Arc<Outbound>,
    closed: CancellationToken,
    times: WriterTimes,
    compression: Compression,
) -> impl Future<Output = ()> {
    let timeout = times.write_timeout;
    let dead_after = times.ping_interval * 2;
    async move {
        let mut ping = tokio::time::interval(times.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        // Grown on demand and released after each burst: an idle connection holds no batch memory.
        let mut batch = Vec::new();
        let meters = WriterMeters::new(Transport::WebSocket);
        // Made once: a new one at every wake-up would register with the token and unregister
        // again, under its lock.
        let cancelled = closed.cancelled();
        tokio::pin!(cancelled);
        loop {
            // Queued frames first: then a wake-up for them polls neither the token nor the timer.
            // While frames keep coming the ping waits, which a peer that reads them does not need.
            tokio::select! {
                biased;
                _ = outbound.ready() => {}
                _ = &mut cancelled => return,
                _ = ping.tick() => {
                    let idle = outbound.peer_silent_for();
                    if idle > dead_after {
                        tracing::info!(idle_ms = idle.as_millis(), "peer does not answer pings; closing");
                        outbound.close(CloseCode::GoingAway.code(), "ping timeout");
                    } else {
                        let ping = [Frame { payload: Payload::empty(), kind: FrameKind::Ping }];
                        if !matches!(tokio::time::timeout(timeout, write_frames(&mut socket, &ping, compression)).await, Ok(Ok(()))) {
                            closed.cancel();
                            return;
                        }
                    }
                }
            }
            loop {
                let more = outbound.pop_batch_bytes(WRITE_BATCH, WRITE_BATCH_BYTES, &mut batch);
                if batch.is_empty() {
                    batch = Vec::new();
                    break;
                }
                // One timer for the whole batch, and the latency of its oldest event (the one that
                // waited longest) as the batch's sample: per-frame timers and histogram records
                // would cost more than writing the frame.
                let (events, oldest) = crate::outbound::events_and_oldest(&batch);
                let written = tokio::time::timeout(timeout, write_frames(&mut socket, &batch, compression)).await;
                meters.written(events, oldest);
                // The queue ends with the close frame: nothing follows it.
                let closing = batch.last().is_some_and(|frame| matches!(frame.kind, FrameKind::Close { .. }));
                batch.clear();
                match written {
                    // More queued (a replay, a client catching up): the next batch waits its
                    // turn behind the tasks ready meanwhile. Without this, a writer whose socket
                    // takes everything wrote its whole queue in one poll (Tokio's budget is 128
                    // writes), and in a reconnect storm every live write waited behind those of
                    // every replaying client: the steady clients' stall in the fan-out bench's
                    // (e) was 318-905 ms, 171-504 ms with it (four interleaved pairs).
                    Ok(Ok(())) if !closing => {
                        if more {
                            tokio::task::yield_now().await;
                        }
                    }
                    Ok(Ok(())) => {
                        closed.cancel();
                        return;
                    }
                    Ok(Err(_)) | Err(_) => {
                        tracing::debug!("write failed or timed out; dropping the connection");
                        closed.cancel();
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upgrade_query_takes_a_token_and_nothing_else() {
        assert_eq!(parse_query(None), Ok(None));
        assert_eq!(parse_query(Some("")), Ok(None));
        assert_eq!(parse_query(Some("token=abc%2Bd")), Ok(Some("abc+d".to_owned())));
        let err = parse_query(Some("token=a&tokn=b")).expect_err("unknown parameter");
        assert!(err.contains("'tokn'") && err.contains("token"), "{err}");
        assert!(parse_query(Some("token=a&token=b")).is_err(), "a repeated token is refused");
    }

    /// A socket that takes every byte at once, and counts them.
    struct CountingSocket(Arc<std::sync::atomic::AtomicUsize>);

    impl tokio::io::AsyncWrite for CountingSocket {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            bytes: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.0.fetch_add(bytes.len(), std::sync::atomic::Ordering::Relaxed);
            std::task::Poll::Ready(Ok(bytes.len()))
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn a_writer_with_a_long_queue_lets_the_other_tasks_run_between_its_batches() {
        use crate::outbound::EventMeta;
        use std::sync::atomic::{AtomicUsize, Ordering};
        const PAYLOAD: usize = 100;
        // A WebSocket text frame of 100 bytes: 2 bytes of header.
        const FRAME: usize = PAYLOAD + 2;
        const FRAMES: usize = 4 * WRITE_BATCH;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let outbound = Outbound::new(FRAMES);
            for offset in 1..=FRAMES as u64 {
                let meta = EventMeta { subscription: 1, offset, event_type: "x", coalesce: None, received: None };
                let frame = Frame { payload: "p".repeat(PAYLOAD).into(), kind: FrameKind::Event(meta) };
                outbound.push_event(frame);
            }
            let (written, closed) = (Arc::new(AtomicUsize::new(0)), CancellationToken::new());
            let times = WriterTimes { write_timeout: Duration::from_secs(10), ping_interval: Duration::from_secs(60) };
            let socket = CountingSocket(written.clone());
            let writer = tokio::spawn(write_loop(socket, outbound, closed.clone(), times, Compression::Off));
            // Another task, ready from the start: what had been written when it first ran.
            let seen_by_another = tokio::spawn({
                let written = written.clone();
                async move {
                    loop {
                        let so_far = written.load(Ordering::Relaxed);
                        if so_far > 0 {
                            return so_far;
                        }
                        tokio::task::yield_now().await;
                    }
                }
            })
            .await
            .expect("observer");
            assert_eq!(seen_by_another, WRITE_BATCH * FRAME, "one batch, then the others' turn");
            for _ in 0..FRAMES {
                if written.load(Ordering::Relaxed) == FRAMES * FRAME {
                    break;
                }
                tokio::task::yield_now().await;
            }
            assert_eq!(written.load(Ordering::Relaxed), FRAMES * FRAME, "and then the rest of the queue");
            closed.cancel();
            writer.await.expect("writer");
        });
    }

    #[test]
    fn a_read_failure_is_told_to_the_client_only_when_the_client_caused_it() {
        use tungstenite::error::{CapacityError, ProtocolError};
        let too_long = tungstenite::Error::Capacity(CapacityError::MessageTooLong { size: 300_000, max_size: 262_144 });
        assert!(matches!(read_failure(&too_long), Some(Inbound::TooBig)));
        let unmasked = tungstenite::Error::Protocol(ProtocolError::UnmaskedFrameFromClient);
        assert!(matches!(read_failure(&unmasked), Some(Inbound::Broken)));
        assert!(matches!(read_failure(&tungstenite::Error::Utf8(String::new())), Some(Inbound::Broken)));
        assert!(read_failure(&tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)).is_none());
        assert!(read_failure(&tungstenite::Error::ConnectionClosed).is_none());
        assert!(read_failure(&tungstenite::Error::Io(std::io::Error::other("reset"))).is_none());
    }
}
