//! One client connection, whatever its transport: its principal, its subscriptions, the protocol
//! state machine (subscribe / unsubscribe / ping / auth), inbound rate limiting, token expiry,
//! resync after an overflow, and drain. WebSocket and SSE differ only in how frames travel: the
//! session pushes into its [`Outbound`] queue and a write-only transport empties it.

use crate::channel::Channel;
use crate::gateway::{Admission, Gateway, Transport};
use crate::hub::{GoLive, Start, Subscriber};
use crate::outbound::{Frame, FrameKind, Outbound};
use crate::protocol::{
    ClientMessage, CloseCode, ErrorCode, Protocol, ProtocolError, ServerMessage, SubscribeRequest, auth_error,
};
use bytes::Bytes;
use chrono::Utc;
use futures::{Stream, StreamExt};
use runcast_runtime::ErrorKind;
use runcast_runtime::auth::Principal;
use runcast_runtime::ops::HandshakePlace;
use serde_json::Value;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// What a transport reads from its peer.
#[derive(Debug)]
pub(crate) enum Inbound {
    Text(Bytes),
    Binary(Bytes),
    /// A frame that only proves the peer is alive (ping, pong).
    Alive,
    /// A frame beyond what the transport reads at all (it stopped reading): close with 1009.
    TooBig,
    /// A frame that breaks the WebSocket protocol (the transport stopped reading): close with 1002.
    Broken,
}

/// A subscription held by this connection.
struct Active {
    subscriber: Arc<Subscriber>,
    /// Where the subscription started: the resync offset if nothing was delivered yet.
    start: u64,
    /// Cancels the replay while it runs.
    replay: Option<CancellationToken>,
}

/// A connection's subscriptions. A connection holds a few (at most
/// `RUNCAST_WS_MAX_SUBSCRIPTIONS`), so a list sized to fit, searched in place, costs every
/// connection less memory than a hash map's table.
#[derive(Default)]
struct Subscriptions(Vec<(Channel, Active)>);

impl Subscriptions {
    fn position(&self, channel: &Channel) -> Option<usize> {
        self.0.iter().position(|(held, _)| held == channel)
    }

    fn contains_key(&self, channel: &Channel) -> bool {
        self.position(channel).is_some()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    /// Adds a subscription of a channel not held yet (the session checks first).
    fn insert(&mut self, channel: Channel, active: Active) {
        self.0.reserve_exact(1);
        self.0.push((channel, active));
    }

    fn get_mut(&mut self, channel: &Channel) -> Option<&mut Active> {
        let index = self.position(channel)?;
        self.0.get_mut(index).map(|(_, active)| active)
    }

    fn remove(&mut self, channel: &Channel) -> Option<Active> {
        let index = self.position(channel)?;
        let (_, active) = self.0.swap_remove(index);
        self.0.shrink_to_fit();
        Some(active)
    }

    fn values(&self) -> impl Iterator<Item = &Active> {
        self.0.iter().map(|(_, active)| active)
    }
}

impl IntoIterator for Subscriptions {
    type Item = (Channel, Active);
    type IntoIter = std::vec::IntoIter<(Channel, Active)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// How long a new connection keeps its place among the replica's handshakes at most, waiting
/// for its first message and for the resumes it asks for: a silent client, or resumes slowed
/// down by JetStream or PostgreSQL, hold back the connections behind them no longer than this.
const HANDSHAKE_SETTLE_MAX: Duration = Duration::from_secs(1);

/// Sent by a replay task when it is over.
struct ReplayDone {
    subscription: u64,
    channel: Channel,
    failed: Option<ProtocolError>,
}

/// Replay outcomes waiting for the session. At most one per subscription, so bounded.
#[derive(Default)]
struct ReplayInbox {
    done: std::sync::Mutex<Vec<ReplayDone>>,
    ready: tokio::sync::Notify,
}

impl ReplayInbox {
    fn push(&self, done: ReplayDone) {
        self.done.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(done);
        self.ready.notify_one();
    }

    fn take(&self) -> Vec<ReplayDone> {
        std::mem::take(&mut *self.done.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

/// A connection's replays: where they report, and its share of the replica's replays.
struct Replays {
    inbox: ReplayInbox,
    /// Replays running at once (`RUNCAST_WS_MAX_REPLAYS_PER_CONNECTION`): taken before a replica
    /// slot, so one connection never holds more than its share of those.
    slots: Arc<tokio::sync::Semaphore>,
}

impl Replays {
    fn new(per_connection: usize) -> Self {
        Self { inbox: ReplayInbox::default(), slots: Arc::new(tokio::sync::Semaphore::new(per_connection.max(1))) }
    }
}

/// Waits for replay outcomes, if the connection ever resumed (otherwise: never).
async fn replays_done(replays: Option<Arc<Replays>>) -> Option<Arc<Replays>> {
    match replays {
        Some(replays) => {
            replays.inbox.ready.notified().await;
            Some(replays)
        }
        None => std::future::pending().await,
    }
}

/// Inbound messages counted per one-second window.
struct RateWindow {
    started: Instant,
    count: u32,
    warned: bool,
}

enum Flow {
    Continue,
    Close(CloseCode),
}

pub(crate) struct Session {
    gw: Arc<Gateway>,
    transport: Transport,
    protocol: Protocol,
    /// The admission's, until an in-band refresh replaces it.
    principal: Arc<Principal>,
    outbound: Arc<Outbound>,
    subscriptions: Subscriptions,
    /// Where replay tasks report; a plain list rather than a channel, which would allocate a
    /// block of slots per connection up front.
    /// Made at the connection's first resume: most connections never resume.
    replays: Option<Arc<Replays>>,
    rate: RateWindow,
    connection: u64,
    /// The connection's place among the replica's handshakes, kept until its first
    /// subscriptions are live (or refused): a reconnect storm is admitted a bounded number of
    /// connections at a time, resumes included, instead of all at once.
    handshake: Option<HandshakePlace>,
}

fn control_frame(control: &ServerMessage, protocol: Protocol) -> Frame {
    Frame { payload: protocol.encode(control), kind: FrameKind::Control { kind: control.kind() } }
}

impl Session {
    /// The transport keeps the [`Admission`] (the connection's place under the caps) until its
    /// socket or response is done, which may be after the session.
    pub(crate) fn new(gw: Arc<Gateway>, protocol: Protocol, admission: &Admission, outbound: Arc<Outbound>) -> Self {
        Self {
            gw,
            transport: admission.transport,
            protocol,
            principal: admission.principal.clone(),
            outbound,
            subscriptions: Subscriptions::default(),
            replays: None,
            rate: RateWindow { started: Instant::now(), count: 0, warned: false },
            connection: admission.connection,
            handshake: None,
        }
    }

    /// Holds `place` until the connection's first subscriptions are settled, at most
    /// [`HANDSHAKE_SETTLE_MAX`].
    pub(crate) fn holding(mut self, place: Option<HandshakePlace>) -> Self {
        self.handshake = place;
        self
    }

    /// Gives the handshake place back once no replay is pending (after the client's first
    /// messages are handled and their replays are over).
    fn settle(&mut self) {
        if self.subscriptions.values().all(|active| active.replay.is_none())
            && let Some(place) = self.handshake.take()
        {
            place.done();
        }
    }

    /// Queues a control reply; a client that lets replies pile up beyond the headroom is closed.
    fn reply(&self, frame: Frame) -> Flow {
        if self.outbound.push_control(frame) { Flow::Continue } else { Flow::Close(CloseCode::PolicyViolation) }
    }

    fn send(&self, control: ServerMessage) -> Flow {
        self.reply(control_frame(&control, self.protocol))
    }

    fn error(&self, err: &ProtocolError) -> Flow {
        self.send(ServerMessage::error(err))
    }

    fn close(&self, code: CloseCode) {
        self.outbound.close(code.code(), code.reason());
    }

    /// When the token expires, if it does.
    fn expiry(&self) -> Option<Instant> {
        let expires_at = self.principal.expires_at?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let left = u64::try_from(expires_at).unwrap_or(0).saturating_sub(now);
        Some(Instant::now() + Duration::from_secs(left))
    }

    /// Runs until the peer goes (`closed`), the session closes it, or the replica drains.
    ///
    /// Not an `async fn`: that would keep the session twice in the connection's future (as the
    /// argument and as the local it is moved into), for as long as the connection lives.
    pub(crate) fn run(
        mut self,
        mut inbound: impl Stream<Item = Inbound> + Unpin,
        closed: CancellationToken,
    ) -> impl Future<Output = ()> {
        // A span for the connection's life: recorded only when traces leave the process. Else a
        // DEBUG span, for logs: at INFO, 0.6 KiB of every idle connection would go to the log
        // layer's record of it, for the session's two INFO lines, which name the connection
        // themselves.
        let span = runcast_runtime::traced_span!(
            "run",
            connection = self.connection,
            transport = self.transport.name(),
            sub = %self.principal.subject,
            tenant = %self.principal.tenant
        );
        async move { self.serve(&mut inbound, &closed).await }.instrument(span)
    }

    async fn serve(&mut self, inbound: &mut (impl Stream<Item = Inbound> + Unpin), closed: &CancellationToken) {
        tracing::debug!("session started");
        let gw = self.gw.clone();
        let outbound = self.outbound.clone();
        let settle_by = Instant::now() + HANDSHAKE_SETTLE_MAX;
        loop {
            let expiry = self.expiry();
            // One timer for both deadlines: every connection carries it, idle or not.
            let wake_at = expiry.into_iter().chain(self.handshake.is_some().then_some(settle_by)).min();
            let far = Instant::now() + Duration::from_secs(86_400 * 365);
            tokio::select! {
                biased;
                _ = closed.cancelled() => break,
                _ = gw.shutdown.cancelled() => {
                    let _ = self.send(ServerMessage::Reconnect {
                        timestamp: Utc::now(),
                        reason: "the replica is draining: reconnect and resume from your last offsets".into(),
                        retry_after_ms: reconnect_delay_ms(gw.limits.drain_reconnect_window, random_u64()),
                    });
                    self.close(CloseCode::GoingAway);
                    break;
                }
                _ = outbound.overflowed() => if let Flow::Close(code) = self.on_overflow() {
                    self.close(code);
                    break;
                },
                Some(replays) = replays_done(self.replays.clone()) => {
                    let mut closing = None;
                    for done in replays.inbox.take() {
                        if let Flow::Close(code) = self.on_replay_done(done) {
                            closing = Some(code);
                        }
                    }
                    if let Some(code) = closing {
                        self.close(code);
                        break;
                    }
                    self.settle();
                }
                _ = tokio::time::sleep_until(wake_at.unwrap_or(far)), if wake_at.is_some() => {
                    let now = Instant::now();
                    if now >= settle_by && let Some(place) = self.handshake.take() {
                        place.done();
                    }
                    if expiry.is_some_and(|expiry| now >= expiry) {
                        let _ = self.error(&ProtocolError::new(ErrorCode::Unauthenticated, "the token expired; reconnect with a fresh one"));
                        self.close(CloseCode::TokenExpired);
                        break;
                    }
                }
                next = inbound.next() => match next {
                    None => break,
                    Some(message) => {
                        if let Flow::Close(code) = self.on_inbound(message) {
                            self.close(code);
                            break;
                        }
                        self.settle();
                    }
                },
            }
        }
        // Whatever ended the session, the transport writes what is queued and stops.
        self.close(CloseCode::GoingAway);
        tracing::debug!("session ended");
    }

    fn on_inbound(&mut self, message: Inbound) -> Flow {
        let (bytes, binary) = match message {
            Inbound::Alive => return Flow::Continue,
            Inbound::TooBig => return Flow::Close(CloseCode::MessageTooBig),
            Inbound::Broken => return Flow::Close(CloseCode::ProtocolError),
            Inbound::Text(bytes) => (bytes, false),
            Inbound::Binary(bytes) => (bytes, true),
        };
        metrics::counter!("runcast_ws_messages_in_total").increment(1);
        if bytes.len() > self.gw.limits.max_frame_bytes {
            return Flow::Close(CloseCode::MessageTooBig);
        }
        if let Some(flow) = self.rate_limit() {
            return flow;
        }
        let parsed = match (self.protocol, binary) {
            (Protocol::Proto, true) => ClientMessage::parse_proto(&bytes),
            (Protocol::Proto, false) => Err(ProtocolError::new(
                ErrorCode::InvalidMessage,
                "this connection speaks runcast.v1.proto: send binary frames",
            )),
            // JSON in a binary frame is still JSON.
            (Protocol::Json, _) => ClientMessage::parse_json(&bytes),
        };
        match parsed {
            Ok(message) => self.handle(message),
            Err(err) => self.error(&err),
        }
    }

    /// `Some` when the message must not be handled: dropped with one `rate_limited` error per
    /// window, or — for a client sending several times its allowance — the connection closed.
    fn rate_limit(&mut self) -> Option<Flow> {
        let now = Instant::now();
        if now.duration_since(self.rate.started) >= Duration::from_secs(1) {
            self.rate = RateWindow { started: now, count: 0, warned: false };
        }
        self.rate.count += 1;
        let allowed = self.gw.limits.max_messages_per_second.max(1);
        if self.rate.count <= allowed {
            return None;
        }
        if self.rate.count > allowed.saturating_mul(4) {
            tracing::info!(
                allowed,
                connection = self.connection,
                tenant = %self.principal.tenant,
                sub = %self.principal.subject,
                "inbound flood; closing"
            );
            return Some(Flow::Close(CloseCode::PolicyViolation));
        }
        if self.rate.warned {
            return Some(Flow::Continue);
        }
        self.rate.warned = true;
        Some(self.error(&ProtocolError::new(
            ErrorCode::RateLimited,
            format!("more than {allowed} messages per second; messages are dropped until the next second"),
        )))
    }

    fn handle(&mut self, message: ClientMessage) -> Flow {
        match message {
            ClientMessage::Ping { id } => self.send(ServerMessage::Pong { timestamp: Utc::now(), id }),
            ClientMessage::Subscribe(request) => match self.subscribe(request) {
                Ok(()) => Flow::Continue,
                Err(err) => self.error(&err),
            },
            ClientMessage::Unsubscribe { channel, id } => match self.subscriptions.remove(&channel) {
                Some(active) => {
                    self.drop_subscription(&active);
                    self.send(ServerMessage::Unsubscribed { timestamp: Utc::now(), channel: channel.to_string(), id })
                }
                None => self.error(&ProtocolError {
                    code: ErrorCode::NotSubscribed,
                    message: format!("{channel} is not subscribed on this connection"),
                    id,
                }),
            },
            ClientMessage::Auth { token, id } => match self.refresh(&token) {
                Ok(()) => Flow::Continue,
                Err(mut err) => {
                    err.id = id;
                    self.error(&err)
                }
            },
        }
    }

    /// In-band token refresh: same tenant and subject, later expiry.
    fn refresh(&mut self, token: &str) -> Result<(), ProtocolError> {
        let principal = self.gw.authenticator.verify_token(token).map_err(auth_error)?;
        if principal.tenant != self.principal.tenant || principal.subject != self.principal.subject {
            return Err(ProtocolError::new(
                ErrorCode::PermissionDenied,
                "the new token must be for the same subject and tenant as the connection",
            ));
        }
        principal.require(runcast_runtime::auth::Action::Read).map_err(auth_error)?;
        self.principal = Arc::new(principal);
        Ok(())
    }

    /// Validates and starts a subscription: live at once, or after a snapshot and/or replay that
    /// runs in its own task while this connection keeps serving other messages.
    pub(crate) fn subscribe(&mut self, request: SubscribeRequest) -> Result<(), ProtocolError> {
        let SubscribeRequest { channel, filters, since_offset, since_epoch, snapshot, id } = request;
        let fail = |code, message: String| ProtocolError { code, message, id: id.clone() };
        if self.subscriptions.contains_key(&channel) {
            return Err(fail(
                ErrorCode::AlreadySubscribed,
                format!("{channel} is already subscribed on this connection; unsubscribe first"),
            ));
        }
        if self.subscriptions.len() >= self.gw.limits.max_subscriptions {
            return Err(fail(
                ErrorCode::TooManySubscriptions,
                format!("a connection may hold at most {} subscriptions", self.gw.limits.max_subscriptions),
            ));
        }
        if !self.gw.hub.is_live(channel.stream()) {
            return Err(fail(
                ErrorCode::Unavailable,
                "the gateway is not connected to NATS yet; retry shortly".to_owned(),
            ));
        }
        let tenant = self.principal.tenant.clone();
        let resume = since_offset.is_some() || (snapshot && channel.snapshot_entity().is_some());
        let start = if resume { Start::Replay { after: since_offset.unwrap_or(0) } } else { Start::Live };
        let (subscriber, head) =
            self.gw.hub.subscribe(tenant, channel.clone(), filters, self.outbound.clone(), self.protocol, start);
        if !resume {
            self.subscriptions.insert(channel.clone(), Active { subscriber, start: head, replay: None });
            if let Flow::Close(_) = self.send(ServerMessage::Subscribed {
                timestamp: Utc::now(),
                channel: channel.to_string(),
                offset: head,
                epoch: self.gw.hub.epoch(channel.stream()).to_string(),
                recovered: None,
                replayed: None,
                reason: None,
                id,
            }) {
                self.outbound.force_overflow();
            }
            return Ok(());
        }
        // Cancelled when the subscription is dropped, or with the session (see `Drop`).
        let cancel = CancellationToken::new();
        self.subscriptions.insert(
            channel.clone(),
            Active {
                subscriber: subscriber.clone(),
                start: since_offset.unwrap_or(head),
                replay: Some(cancel.clone()),
            },
        );
        let gw = self.gw.clone();
        let replays = self
            .replays
            .get_or_insert_with(|| Arc::new(Replays::new(self.gw.limits.max_replays_per_connection)))
            .clone();
        self.gw.tasks.spawn(
            async move {
                let resume = Resume { since_offset, since_epoch, snapshot, head, id };
                let failed = resume_subscription(&gw, &subscriber, resume, &replays.slots, &cancel).await.err();
                // The session may be gone already; then there is nobody to tell.
                replays.inbox.push(ReplayDone { subscription: subscriber.id, channel, failed });
            }
            // The connection's span (when recorded) goes with its replays' logs and traces.
            .in_current_span(),
        );
        Ok(())
    }

    fn on_replay_done(&mut self, done: ReplayDone) -> Flow {
        let Some(active) = self.subscriptions.get_mut(&done.channel) else {
            return Flow::Continue;
        };
        if active.subscriber.id != done.subscription {
            return Flow::Continue; // an older subscription of the same channel
        }
        active.replay = None;
        let Some(err) = done.failed else {
            return Flow::Continue;
        };
        // The subscription is not live: drop it, so the client can retry it.
        if let Some(active) = self.subscriptions.remove(&done.channel) {
            self.drop_subscription(&active);
        }
        if let Flow::Close(code) = self.error(&err) {
            return Flow::Close(code);
        }
        match self.transport {
            // An SSE client cannot subscribe again on its stream, which would stay open and
            // silent: end it, and `EventSource` reconnects with `Last-Event-ID` (like a resync).
            Transport::Sse => Flow::Close(CloseCode::GoingAway),
            Transport::WebSocket => Flow::Continue,
        }
    }

    /// The queue overflowed: every subscription leaves the live feed and the client is told
    /// where to resume each one from.
    ///
    /// An SSE stream is ended after its `resync`: an `EventSource` reconnects by itself with
    /// `Last-Event-ID` = the last event it got, which resumes exactly there.
    fn on_overflow(&mut self) -> Flow {
        let Some(delivered) = self.outbound.take_overflow() else {
            return Flow::Continue;
        };
        let subscriptions = std::mem::take(&mut self.subscriptions);
        for (channel, active) in subscriptions {
            self.drop_subscription(&active);
            self.gw.count_resync();
            let (offset, reason) = if active.subscriber.epoch_lost() {
                (0, "the stream was re-created; subscribe again with since_offset = 0, since_epoch = epoch")
            } else {
                (
                    delivered.get(&active.subscriber.id).copied().unwrap_or(active.start),
                    "the client fell behind; subscribe again with since_offset = offset, since_epoch = epoch",
                )
            };
            let _ = self.send(ServerMessage::Resync {
                timestamp: Utc::now(),
                channel: channel.to_string(),
                offset,
                epoch: self.gw.hub.epoch(channel.stream()).to_string(),
                reason: reason.into(),
            });
        }
        tracing::info!(
            connection = self.connection,
            tenant = %self.principal.tenant,
            sub = %self.principal.subject,
            "outbound queue overflowed; resync sent"
        );
        match self.transport {
            Transport::Sse => Flow::Close(CloseCode::GoingAway),
            Transport::WebSocket => Flow::Continue,
        }
    }

    fn drop_subscription(&self, active: &Active) {
        if let Some(replay) = &active.replay {
            replay.cancel();
        }
        self.gw.hub.unsubscribe(&active.subscriber);
        self.outbound.forget(active.subscriber.id);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for active in self.subscriptions.values() {
            if let Some(replay) = &active.replay {
                replay.cancel();
            }
            self.gw.hub.unsubscribe(&active.subscriber);
        }
    }
}

/// Times a replay may read on because it was slower than the live feed before the client is
/// sent `resync` instead (each round reads what arrived during the previous one).
const MAX_CATCH_UPS: u32 = 8;

/// What a subscription that does not start live asked for.
struct Resume {
    since_offset: Option<u64>,
    since_epoch: Option<String>,
    snapshot: bool,
    /// The head of the stream when the subscription was registered.
    head: u64,
    id: Option<Value>,
}

/// Snapshot, replay, then live. Errors are reported to the client by the session.
async fn resume_subscription(
    gw: &Gateway,
    subscriber: &Subscriber,
    resume: Resume,
    own_slots: &Arc<tokio::sync::Semaphore>,
    cancel: &CancellationToken,
) -> Result<(), ProtocolError> {
    let Resume { since_offset, since_epoch, snapshot, head, id } = resume;
    let unavailable = |err: runcast_runtime::Error| {
        let code = match err.kind() {
            ErrorKind::Unavailable => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        };
        tracing::warn!(tenant = %subscriber.tenant, channel = %subscriber.channel, cause = %err, "resume failed");
        ProtocolError { code, message: err.to_string(), id: id.clone() }
    };
    // The connection's own share first, so it never queues for more replica slots than that.
    let Some(_own) = crate::replay::acquire(own_slots, cancel).await else {
        return Ok(()); // the subscription or the connection is gone
    };
    let Some(mut slot) = gw.sources.slot(&subscriber.tenant, cancel).await else {
        return Ok(());
    };
    // Live events passed this subscription by while it waited; from here they are held. The
    // head read now covers every one that passed (see `Subscriber::hold`).
    subscriber.hold();
    let head = head.max(gw.hub.head(subscriber.channel.stream()));
    let channel = subscriber.channel_name.clone();
    let mut since = since_offset;
    if snapshot && let Some(_) = subscriber.channel.snapshot_entity() {
        let found = gw.sources.snapshot(&subscriber.tenant, &subscriber.channel).await.map_err(unavailable)?;
        let (offset, state) = match &found {
            Some(found) => (found.offset, found.state.clone()),
            None => (0, None),
        };
        let snapshot = ServerMessage::Snapshot {
            timestamp: Utc::now(),
            channel: channel.clone(),
            offset,
            data: state.map(Box::new),
            id: id.clone(),
        };
        let frame = control_frame(&snapshot, subscriber.protocol);
        if !subscriber.outbound.push_control(frame) {
            subscriber.outbound.force_overflow();
            return Ok(());
        }
        // Without `since_offset`, the events after the snapshot follow it with no gap; without
        // a snapshot either, the subscription starts at the head. A snapshot from the read model
        // means the stream holds no event of the entity up to the head: nothing to replay.
        let after_snapshot = match &found {
            Some(found) if !found.from_read_model => offset,
            _ => head,
        };
        since = since.or(Some(after_snapshot));
    }
    let since = since.unwrap_or(head);
    subscriber.set_position(since);
    // The epoch only qualifies the client's own offset.
    let since_epoch = since_offset.and(since_epoch);
    let mut outcome =
        replay(gw, subscriber, since, since_epoch.as_deref(), &mut slot, cancel).await.map_err(unavailable)?;
    if !outcome.recovered {
        // Neither source holds the position: continue live from the head; the client reloads.
        subscriber.set_position(head);
    }
    let epoch = gw.hub.epoch(subscriber.channel.stream()).to_string();
    let mut catch_ups = 0;
    loop {
        if cancel.is_cancelled() {
            // Unsubscribed, overflowed (the client got `resync`) or disconnected meanwhile.
            return Ok(());
        }
        let went = subscriber.go_live(|offset| {
            let reported = since_offset.map(|_| outcome);
            let subscribed = ServerMessage::Subscribed {
                timestamp: Utc::now(),
                channel: channel.clone(),
                offset: offset.max(head),
                epoch: epoch.clone(),
                recovered: reported.map(|o| o.recovered),
                replayed: reported.map(|o| o.replayed),
                reason: reported.and_then(|o| o.reason),
                id: id.clone(),
            };
            control_frame(&subscribed, subscriber.protocol)
        });
        let after = match went {
            GoLive::Live | GoLive::Overflowed => break,
            GoLive::CatchUp { after } => after,
        };
        // The replay was slower than the live feed (held events were dropped): read on.
        catch_ups += 1;
        metrics::counter!("runcast_ws_replay_catch_ups_total").increment(1);
        if catch_ups > MAX_CATCH_UPS {
            subscriber.outbound.force_overflow();
            return Ok(());
        }
        let more = replay(gw, subscriber, after, None, &mut slot, cancel).await.map_err(unavailable)?;
        if !more.recovered {
            // What was dropped is gone from every source too: the client resumes from scratch.
            subscriber.outbound.force_overflow();
            return Ok(());
        }
        outcome.replayed += more.replayed;
        outcome.from_history |= more.from_history;
        outcome.from_memory &= more.from_memory;
    }
    if since_offset.is_some() {
        gw.count_replay(&outcome);
    }
    Ok(())
}

/// Replays after `since` from the replica's recent window when it covers `since`, else from
/// JetStream and the history.
async fn replay(
    gw: &Gateway,
    subscriber: &Subscriber,
    since: u64,
    since_epoch: Option<&str>,
    slot: &mut crate::replay::Slot,
    cancel: &CancellationToken,
) -> Result<crate::replay::Outcome, runcast_runtime::Error> {
    if let Some(outcome) = crate::replay::replay_recent(&gw.hub, subscriber, since, since_epoch, slot, cancel).await {
        return Ok(outcome);
    }
    gw.sources.replay(subscriber, since, since_epoch, slot, cancel).await
}

/// A delay drawn from `[0, window)` by `random` (uniform over the window for a uniform `random`),
/// in whole milliseconds; 0 for an empty window.
fn reconnect_delay_ms(window: Duration, random: u64) -> u64 {
    let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    if window_ms == 0 { 0 } else { random % window_ms }
}

/// A random number without a random-number crate: std's per-instance random hasher keys.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    hasher.finish()
}

#[cfg(test)]
mod tests;
