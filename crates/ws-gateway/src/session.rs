//! One client connection, whatever its transport: its principal, its subscriptions, the protocol
//! state machine (subscribe / unsubscribe / ping / auth), inbound rate limiting, token expiry,
//! resync after an overflow, and drain. WebSocket and SSE differ only in how frames travel: the
//! session pushes into its [`Outbound`] queue and a write-only transport empties it.

use crate::channel::Channel;
use crate::gateway::{Gateway, Transport};
use crate::hub::{Start, Subscriber};
use crate::outbound::{Frame, FrameKind, Outbound};
use crate::protocol::{ClientMessage, CloseCode, Control, ErrorCode, Protocol, ProtocolError, SubscribeRequest};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use runcast_runtime::ErrorKind;
use runcast_runtime::auth::{AuthErrorKind, Principal};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What a transport reads from its peer.
#[derive(Debug)]
pub enum Inbound {
    Text(Bytes),
    Binary(Bytes),
    /// A frame that only proves the peer is alive (ping, pong).
    Alive,
}

/// A subscription held by this connection.
struct Active {
    subscriber: Arc<Subscriber>,
    /// Where the subscription started: the resync offset if nothing was delivered yet.
    start: u64,
    /// Cancels the replay while it runs.
    replay: Option<CancellationToken>,
}

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

pub struct Session {
    gw: Arc<Gateway>,
    transport: Transport,
    protocol: Protocol,
    principal: Principal,
    outbound: Arc<Outbound>,
    subscriptions: HashMap<Channel, Active>,
    /// Where replay tasks report; a plain list rather than a channel, which would allocate a
    /// block of slots per connection up front.
    replays: Arc<ReplayInbox>,
    rate: RateWindow,
    connection: u64,
    /// Cancelled when the session ends: stops its replays.
    ended: CancellationToken,
}

fn control_frame(control: &Control, protocol: Protocol) -> Frame {
    Frame { bytes: control.encode(protocol), kind: FrameKind::Control { kind: control.kind } }
}

impl Session {
    pub fn new(
        gw: Arc<Gateway>,
        transport: Transport,
        protocol: Protocol,
        principal: Principal,
        outbound: Arc<Outbound>,
    ) -> Self {
        let connection = gw.connected(transport, &principal.subject);
        Self {
            gw,
            transport,
            protocol,
            principal,
            outbound,
            subscriptions: HashMap::new(),
            replays: Arc::default(),
            rate: RateWindow { started: Instant::now(), count: 0, warned: false },
            connection,
            ended: CancellationToken::new(),
        }
    }

    /// Queues a control reply; a client that lets replies pile up beyond the headroom is closed.
    fn reply(&self, frame: Frame) -> Flow {
        if self.outbound.push_control(frame) { Flow::Continue } else { Flow::Close(CloseCode::PolicyViolation) }
    }

    fn send(&self, control: Control) -> Flow {
        self.reply(control_frame(&control, self.protocol))
    }

    fn error(&self, err: &ProtocolError) -> Flow {
        self.send(Control::error(err))
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
    #[tracing::instrument(skip_all, fields(connection = self.connection, transport = self.transport.name(), sub = %self.principal.subject, tenant = %self.principal.tenant))]
    pub async fn run(mut self, mut inbound: impl Stream<Item = Inbound> + Unpin, closed: CancellationToken) {
        tracing::debug!("session started");
        let gw = self.gw.clone();
        let outbound = self.outbound.clone();
        let replays = self.replays.clone();
        loop {
            let expiry = self.expiry();
            let far = Instant::now() + Duration::from_secs(86_400 * 365);
            tokio::select! {
                biased;
                _ = closed.cancelled() => break,
                _ = gw.shutdown.cancelled() => {
                    let _ = self.send(Control {
                        reason: Some("the replica is draining: reconnect and resume from your last offsets".into()),
                        ..Control::new("reconnect")
                    });
                    self.close(CloseCode::GoingAway);
                    break;
                }
                _ = outbound.overflowed() => if let Flow::Close(code) = self.on_overflow() {
                    self.close(code);
                    break;
                },
                _ = replays.ready.notified() => {
                    for done in replays.take() {
                        self.on_replay_done(done);
                    }
                }
                _ = tokio::time::sleep_until(expiry.unwrap_or(far)), if expiry.is_some() => {
                    let _ = self.error(&ProtocolError::new(ErrorCode::Unauthenticated, "the token expired; reconnect with a fresh one"));
                    self.close(CloseCode::TokenExpired);
                    break;
                }
                next = inbound.next() => match next {
                    None => break,
                    Some(message) => if let Flow::Close(code) = self.on_inbound(message) {
                        self.close(code);
                        break;
                    },
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
            tracing::info!(allowed, "inbound flood; closing");
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
            ClientMessage::Ping { id } => self.send(Control { id, ..Control::new("pong") }),
            ClientMessage::Subscribe(request) => match self.subscribe(request) {
                Ok(()) => Flow::Continue,
                Err(err) => self.error(&err),
            },
            ClientMessage::Unsubscribe { channel, id } => match self.subscriptions.remove(&channel) {
                Some(active) => {
                    self.drop_subscription(&active);
                    self.send(Control { channel: Some(channel.to_string()), id, ..Control::new("unsubscribed") })
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
        let principal = self.gw.authenticator.verify_token(token).map_err(|err| match err.kind() {
            AuthErrorKind::Unauthenticated => ProtocolError::new(ErrorCode::Unauthenticated, err.to_string()),
            AuthErrorKind::PermissionDenied => ProtocolError::new(ErrorCode::PermissionDenied, err.to_string()),
        })?;
        if principal.tenant != self.principal.tenant || principal.subject != self.principal.subject {
            return Err(ProtocolError::new(
                ErrorCode::PermissionDenied,
                "the new token must be for the same subject and tenant as the connection",
            ));
        }
        principal
            .require(runcast_runtime::auth::Action::Read)
            .map_err(|err| ProtocolError::new(ErrorCode::PermissionDenied, err.to_string()))?;
        self.principal = principal;
        Ok(())
    }

    /// Validates and starts a subscription: live at once, or after a snapshot and/or replay that
    /// runs in its own task while this connection keeps serving other messages.
    pub fn subscribe(&mut self, request: SubscribeRequest) -> Result<(), ProtocolError> {
        let SubscribeRequest { channel, filters, since_offset, snapshot, id } = request;
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
            if let Flow::Close(_) = self.send(Control {
                channel: Some(channel.to_string()),
                offset: Some(head),
                id,
                ..Control::new("subscribed")
            }) {
                self.outbound.force_overflow();
            }
            return Ok(());
        }
        let cancel = self.ended.child_token();
        self.subscriptions.insert(
            channel.clone(),
            Active {
                subscriber: subscriber.clone(),
                start: since_offset.unwrap_or(head),
                replay: Some(cancel.clone()),
            },
        );
        let gw = self.gw.clone();
        let done = self.replays.clone();
        self.gw.tasks.spawn(async move {
            let failed = resume_subscription(&gw, &subscriber, since_offset, snapshot, head, id, &cancel).await.err();
            // The session may be gone already; then there is nobody to tell.
            done.push(ReplayDone { subscription: subscriber.id, channel, failed });
        });
        Ok(())
    }

    fn on_replay_done(&mut self, done: ReplayDone) {
        let Some(active) = self.subscriptions.get_mut(&done.channel) else {
            return;
        };
        if active.subscriber.id != done.subscription {
            return; // an older subscription of the same channel
        }
        active.replay = None;
        if let Some(err) = done.failed {
            // The subscription is not live: drop it, so the client can retry it.
            if let Some(active) = self.subscriptions.remove(&done.channel) {
                self.drop_subscription(&active);
            }
            if let Flow::Close(code) = self.error(&err) {
                self.close(code);
            }
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
            let offset = delivered.get(&active.subscriber.id).copied().unwrap_or(active.start);
            self.gw.count_resync();
            let _ = self.send(Control {
                channel: Some(channel.to_string()),
                offset: Some(offset),
                reason: Some("the client fell behind; subscribe again with since_offset = offset".into()),
                ..Control::new("resync")
            });
        }
        tracing::info!("outbound queue overflowed; resync sent");
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
        self.ended.cancel();
        for active in self.subscriptions.values() {
            self.gw.hub.unsubscribe(&active.subscriber);
        }
        self.gw.disconnected(self.transport, &self.principal.subject);
    }
}

/// Snapshot, replay, then live. Errors are reported to the client by the session.
async fn resume_subscription(
    gw: &Gateway,
    subscriber: &Subscriber,
    since_offset: Option<u64>,
    snapshot: bool,
    head: u64,
    id: Option<Value>,
    cancel: &CancellationToken,
) -> Result<(), ProtocolError> {
    let unavailable = |err: runcast_runtime::Error| {
        let code = match err.kind() {
            ErrorKind::Unavailable => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        };
        tracing::warn!(channel = %subscriber.channel, cause = %err, "resume failed");
        ProtocolError { code, message: err.to_string(), id: id.clone() }
    };
    let Some(_slot) = gw.sources.slot(cancel).await else {
        return Ok(()); // the subscription or the connection is gone
    };
    let channel = subscriber.channel_name.clone();
    let mut since = since_offset;
    if snapshot && let Some(_) = subscriber.channel.snapshot_entity() {
        let found = gw.sources.snapshot(&subscriber.tenant, &subscriber.channel).await.map_err(unavailable)?;
        let (offset, state) = match &found {
            Some((_, event)) => (event.offset, event.state.clone()),
            None => (0, None),
        };
        let snapshot = Control {
            channel: Some(channel.clone()),
            offset: Some(offset),
            state: Some(state),
            id: id.clone(),
            ..Control::new("snapshot")
        };
        let frame = control_frame(&snapshot, subscriber.protocol);
        if !subscriber.outbound.push_control(frame) {
            subscriber.outbound.force_overflow();
            return Ok(());
        }
        // Without `since_offset`, the events after the snapshot follow it with no gap; without
        // a snapshot either, the subscription starts at the head.
        since = since.or(Some(if found.is_some() { offset } else { head }));
    }
    let since = since.unwrap_or(head);
    subscriber.set_position(since);
    let outcome = gw.sources.replay(subscriber, since, cancel).await.map_err(unavailable)?;
    if cancel.is_cancelled() {
        // Unsubscribed, overflowed (the client got `resync`) or disconnected meanwhile.
        return Ok(());
    }
    if !outcome.recovered {
        // Neither source holds the position: continue live from the head; the client reloads.
        subscriber.set_position(head);
    }
    let outcome = since_offset.map(|_| {
        gw.count_replay(outcome.recovered, outcome.replayed);
        outcome
    });
    subscriber.go_live(|offset| {
        let offset = offset.max(head);
        let subscribed = Control {
            channel: Some(channel),
            offset: Some(offset),
            recovered: outcome.map(|o| o.recovered),
            replayed: outcome.map(|o| o.replayed),
            id,
            ..Control::new("subscribed")
        };
        control_frame(&subscribed, subscriber.protocol)
    });
    Ok(())
}
