//! `runcast watch` and `logs tail`: follow gateway channels over one WebSocket. Reconnects with
//! exponential backoff and resumes each channel from the last offset it showed (the gateway
//! replays what was missed), drops duplicates by offset, resubscribes after a `resync`,
//! reconnects at once on `reconnect` — and says each of these on stderr.
//!
//! `watch` starts from the current state ([`crate::state`]): the list as of `as_of_offset`, then
//! the events after that offset, merged by version per entity so nothing is missed or shown
//! twice. `logs tail` follows `logs:{id}` from its first line and `executions:{id}` beside it,
//! and ends once the execution has ended and the log lines before its end are shown.

use crate::cli::{Global, WatchArgs};
use crate::table::{Kind, Table};
use crate::{CliError, api, output, state};
use futures::{SinkExt as _, StreamExt as _};
use runcast_contract::backoff::Backoff;
use runcast_contract::gateway::{CloseCode, ErrorCode, NotRecovered, ServerMessage};
use runcast_contract::v1::ExecutionStatus;
use runcast_contract::v1::GetExecutionRequest;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const MAX_BACKOFF: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Error codes after which retrying the same subscription cannot help.
const FATAL_CODES: [ErrorCode; 5] = [
    ErrorCode::UnknownChannel,
    ErrorCode::InvalidFilter,
    ErrorCode::InvalidMessage,
    ErrorCode::Unauthenticated,
    ErrorCode::PermissionDenied,
];

enum Ended {
    /// The sink has what it wanted.
    Done,
    /// The replica asked us to reconnect (draining).
    Reconnect,
    /// The connection went away.
    Lost(String),
}

/// What the follower does after handing a frame to a [`Sink`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    Continue,
    /// Subscribe to this channel again from its last offset, and say `subscribed` again once the
    /// gateway has replayed everything up to its head.
    Refresh(String),
    /// Close the connection and return.
    Stop,
}

/// Where followed frames go: the terminal for `watch`, a work queue for `simulate`.
pub(crate) trait Sink: Send {
    /// An event frame (or a snapshot), each offset of each channel once.
    fn show(&mut self, frame: &Value) -> Next;
    /// The gateway has replayed `channel` up to its head and is live on it.
    fn subscribed(&mut self, _channel: &str) -> Next {
        Next::Continue
    }
    /// Called a few times a second, whether or not anything arrived.
    fn tick(&mut self) {}
    /// The connection is down (`Some`: why, and what happens next) or back (`None`).
    fn connection(&mut self, _trouble: Option<String>) {}
}

/// One channel to follow, with its filters and the last offset shown on it.
#[derive(Debug, Clone)]
pub(crate) struct Subscription {
    pub channel: String,
    filters: serde_json::Map<String, Value>,
    pub last_offset: Option<u64>,
}

impl Subscription {
    pub(crate) fn channel(channel: impl Into<String>, since_offset: Option<u64>) -> Self {
        Self { channel: channel.into(), filters: serde_json::Map::new(), last_offset: since_offset }
    }

    pub(crate) fn from_args(args: &WatchArgs, since_offset: Option<u64>) -> Self {
        let list = |value: &Option<String>| -> Option<Vec<String>> {
            value.as_ref().map(|v| v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
        };
        let mut filters = serde_json::Map::new();
        for (name, value) in [
            ("workflow_ids", &args.workflow),
            ("execution_ids", &args.execution),
            ("statuses", &args.status),
            ("types", &args.types),
        ] {
            if let Some(values) = list(value) {
                filters.insert(name.to_owned(), json!(values));
            }
        }
        Self { channel: args.channel.clone(), filters, last_offset: since_offset }
    }

    fn subscribe_message(&self) -> Value {
        let mut message = json!({"type": "subscribe", "channel": self.channel, "id": "runcast-cli"});
        if !self.filters.is_empty() {
            message["filters"] = Value::Object(self.filters.clone());
        }
        if let Some(offset) = self.last_offset {
            message["since_offset"] = json!(offset);
        }
        message
    }
}

/// `runcast watch`: the current state, then every change after it.
pub(crate) async fn run(global: &Global, args: &WatchArgs) -> Result<(), CliError> {
    let mode = Mode::of(global);
    // Filters are checked before anything is called: a bad --status is a usage error even when
    // nothing is up. The gateway is reached before the state is read, so that the events after
    // the state's offset can be asked for at once.
    let plan = state::plan(args)?;
    let credentials = api::Credentials::new(global)?;
    let socket = connect(&credentials, global, false).await?.map_err(CliError::failed)?;
    let start = match state::load(global, args, plan).await {
        Ok(start) => start,
        Err(state::LoadError::Fatal(err)) => return Err(err),
        Err(state::LoadError::Unavailable(err)) => {
            // The live path does not need the api or PostgreSQL: follow what happens from now.
            eprintln!("runcast: cannot load the current state ({err}); showing live events only");
            let mut start = state::Start::empty(args.since_offset);
            start.unavailable = true;
            start
        }
    };
    let mut view = View::new(&args.channel, mode, args.count);
    if start.unavailable {
        view.notice = Some("current state unavailable: live events only".into());
        view.connection(None);
    }
    if start.truncated {
        eprintln!("runcast: the current state is larger than {} entities; showing the newest", state::MAX_ENTITIES);
    }
    for frame in &start.frames {
        view.show(frame);
    }
    view.tick();
    let subscriptions = vec![Subscription::from_args(args, start.since_offset)];
    follow_on(global, &credentials, Some(socket), subscriptions, &mut view).await
}

/// `runcast logs tail`: every log line from the first (or after `since_offset`), then new ones,
/// until the execution has ended and every line before its end is shown (or `count` events).
pub(crate) async fn tail(
    global: &Global,
    id: &str,
    since_offset: Option<u64>,
    count: Option<u64>,
) -> Result<(), CliError> {
    let execution = api::executions(global)
        .await?
        .get_execution(GetExecutionRequest { execution_id: id.to_owned() })
        .await?
        .into_inner();
    let ended = ExecutionStatus::try_from(execution.status).is_ok_and(ExecutionStatus::is_terminal);
    let mode = Mode::of(global);
    let logs = format!("logs:{id}");
    let mut subscriptions = vec![Subscription::channel(logs.clone(), Some(since_offset.unwrap_or(0)))];
    if !ended {
        subscriptions.push(Subscription::channel(format!("executions:{id}"), Some(execution.offset)));
    }
    let mut sink = Tail { logs, mode, count, shown: 0, ended };
    follow(global, subscriptions, &mut sink).await
}

/// Follows `subscriptions` until the sink stops, or until something retrying cannot fix (bad
/// subscription, refused credentials, a gateway unreachable on the first try).
pub(crate) async fn follow(
    global: &Global,
    subscriptions: Vec<Subscription>,
    sink: &mut dyn Sink,
) -> Result<(), CliError> {
    let credentials = api::Credentials::new(global)?;
    follow_on(global, &credentials, None, subscriptions, sink).await
}

/// [`follow`] on a connection already open (or not).
async fn follow_on(
    global: &Global,
    credentials: &api::Credentials,
    mut connected: Option<Socket>,
    subscriptions: Vec<Subscription>,
    sink: &mut dyn Sink,
) -> Result<(), CliError> {
    let mut state = State { subscriptions, refreshing: HashSet::new(), live: false, sink };
    let mut backoff = Backoff::new(Duration::from_secs(1), MAX_BACKOFF);
    let mut attempt = 0u32;
    loop {
        state.live = false;
        let outcome = session(credentials, global, &mut state, attempt > 0, connected.take()).await?;
        state.refreshing.clear();
        if state.live {
            backoff.reset(); // that connection worked: start over
        }
        match outcome {
            Ended::Done => return Ok(()),
            Ended::Reconnect => {
                eprintln!("runcast: the gateway replica is draining; reconnecting");
                state.sink.connection(Some("the gateway replica is draining; reconnecting".into()));
                backoff.reset();
                attempt = 1;
            }
            Ended::Lost(reason) => {
                attempt += 1;
                let delay = backoff.next();
                eprintln!(
                    "runcast: lost the gateway ({reason}); reconnecting in {}s (attempt {attempt})",
                    delay.as_secs()
                );
                state.sink.connection(Some(format!("stale: lost the gateway, reconnecting (attempt {attempt})")));
                let deadline = tokio::time::Instant::now() + delay;
                let mut ticks = tokio::time::interval(TICK);
                loop {
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline) => break,
                        _ = ticks.tick() => state.sink.tick(),
                    }
                }
            }
        }
    }
}

const TICK: Duration = Duration::from_millis(250);
/// The `id` of the `unsubscribe` of a refresh, followed by the channel (echoed by an `error`).
const REFRESH_ID: &str = "refresh:";

struct State<'a> {
    subscriptions: Vec<Subscription>,
    /// Channels unsubscribed to be subscribed again: their `subscribed` answers before the
    /// `unsubscribed` belong to the old subscription.
    refreshing: HashSet<String>,
    /// This connection got at least one `subscribed`.
    live: bool,
    sink: &'a mut dyn Sink,
}

impl State<'_> {
    fn subscription(&mut self, channel: &str) -> Option<&mut Subscription> {
        self.subscriptions.iter_mut().find(|s| s.channel == channel)
    }
}

/// Resolves at `at`, or never.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

async fn send(
    socket: &mut (impl futures::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin),
    message: &Value,
) -> Result<(), String> {
    socket.send(Message::text(message.to_string())).await.map_err(|err| err.to_string())
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a connection to the gateway. `Err`: the first attempt failed (nothing to resume);
/// `Ok(Err)`: a reconnect failed, to be retried.
async fn connect(
    credentials: &api::Credentials,
    global: &Global,
    resuming: bool,
) -> Result<Result<Socket, String>, CliError> {
    let url = format!("{}/ws?token={}", global.gateway_url.trim_end_matches('/'), credentials.token()?);
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(&url)).await;
    match connected {
        Ok(Ok((socket, _))) => Ok(Ok(socket)),
        Ok(Err(err)) if !resuming => Err(CliError::failed(format!(
            "cannot reach ws-gateway at {}: {}",
            global.gateway_url,
            api::source_chain(&err)
        ))),
        Err(_) if !resuming => Err(CliError::failed(format!(
            "ws-gateway at {} did not answer within {CONNECT_TIMEOUT:?}",
            global.gateway_url
        ))),
        Ok(Err(err)) => Ok(Err(err.to_string())),
        Err(_) => Ok(Err("connect timed out".into())),
    }
}

/// One connection (`connected`: already open). `Err` only for what retrying cannot fix.
async fn session(
    credentials: &api::Credentials,
    global: &Global,
    state: &mut State<'_>,
    resuming: bool,
    connected: Option<Socket>,
) -> Result<Ended, CliError> {
    let mut socket = match connected {
        Some(socket) => socket,
        None => match connect(credentials, global, resuming).await? {
            Ok(socket) => socket,
            Err(lost) => return Ok(Ended::Lost(lost)),
        },
    };
    for subscription in &state.subscriptions {
        if let Err(err) = send(&mut socket, &subscription.subscribe_message()).await {
            return Ok(Ended::Lost(err));
        }
    }
    let mut ticks = tokio::time::interval(TICK);
    loop {
        let frame = tokio::select! {
            frame = socket.next() => frame,
            // Minted tokens are renewed in-band before they expire: no reconnect, no lost offset.
            () = until(credentials.renew_at()) => {
                let auth = json!({"type": "auth", "token": credentials.token()?});
                if let Err(err) = send(&mut socket, &auth).await {
                    return Ok(Ended::Lost(err));
                }
                continue;
            }
            _ = ticks.tick() => {
                state.sink.tick();
                continue;
            }
        };
        let Some(frame) = frame else { break };
        let text = match frame {
            Ok(Message::Text(text)) => text,
            Ok(Message::Close(close)) => {
                let expired = close.as_ref().is_some_and(|c| u16::from(c.code) == CloseCode::TokenExpired.code());
                let reason = close
                    .map(|c| format!("closed with {}: {}", u16::from(c.code), c.reason))
                    .unwrap_or_else(|| "closed".into());
                if expired {
                    return Err(CliError::failed(format!("the gateway {reason}: the token expired")));
                }
                return Ok(Ended::Lost(reason));
            }
            Ok(_) => continue,
            Err(err) => return Ok(Ended::Lost(err.to_string())),
        };
        let Ok(message) = serde_json::from_str::<Value>(&text) else { continue };
        let channel = message["channel"].as_str().unwrap_or_default().to_owned();
        // Control messages are the contract's typed `ServerMessage`; any other `type` is an event.
        let kind = message["type"].as_str().unwrap_or_default();
        let control = if ServerMessage::TYPES.contains(&kind) {
            match serde_json::from_value::<ServerMessage>(message.clone()) {
                Ok(control) => Some(control),
                Err(err) => {
                    eprintln!("runcast: a {kind} message from the gateway is not understood ({err}): {text}");
                    continue;
                }
            }
        } else {
            None
        };
        let next = match control {
            Some(ServerMessage::Subscribed { recovered, replayed, reason, .. }) => {
                let from = state.subscription(&channel).and_then(|s| s.last_offset);
                if resuming {
                    let shown = |value: Option<String>| value.unwrap_or_else(|| "null".into());
                    eprintln!(
                        "runcast: subscribed to {channel} from offset {} (recovered: {}, replayed: {})",
                        from.map_or_else(|| "now".to_owned(), |o| o.to_string()),
                        shown(recovered.map(|r| r.to_string())),
                        shown(replayed.map(|r| r.to_string())),
                    );
                }
                if recovered == Some(false) {
                    let reason = reason.map_or("not held", NotRecovered::as_str);
                    eprintln!(
                        "runcast: the gateway cannot replay {channel} from that offset ({reason}): showing live events only"
                    );
                }
                state.live = true;
                if resuming {
                    state.sink.connection(None);
                }
                if state.refreshing.contains(&channel) {
                    Next::Continue // the answer to the subscription being replaced
                } else {
                    state.sink.subscribed(&channel)
                }
            }
            Some(ServerMessage::Unsubscribed { .. }) => {
                if state.refreshing.remove(&channel) {
                    let message = state.subscription(&channel).map(|s| s.subscribe_message());
                    if let Some(message) = message
                        && let Err(err) = send(&mut socket, &message).await
                    {
                        return Ok(Ended::Lost(err));
                    }
                }
                Next::Continue
            }
            Some(ServerMessage::Error { code, message: detail, id, .. }) => {
                // A refresh whose subscription the gateway had already dropped: subscribe now.
                let refreshed = id.as_ref().and_then(Value::as_str).and_then(|id| id.strip_prefix(REFRESH_ID));
                if code == ErrorCode::NotSubscribed
                    && let Some(channel) = refreshed
                {
                    if state.refreshing.remove(channel) {
                        let message = state.subscription(channel).map(|s| s.subscribe_message());
                        if let Some(message) = message
                            && let Err(err) = send(&mut socket, &message).await
                        {
                            return Ok(Ended::Lost(err));
                        }
                    }
                    continue;
                }
                let name = code.as_str();
                if FATAL_CODES.contains(&code) {
                    return Err(CliError::failed(format!("the gateway refused the subscription ({name}): {detail}")));
                }
                eprintln!("runcast: gateway error {name}: {detail}");
                Next::Continue
            }
            Some(ServerMessage::Resync { offset, .. }) => {
                // The gateway has dropped the subscription: subscribe again from where it says.
                eprintln!("runcast: fell behind on {channel}; resubscribing from offset {offset}");
                state.refreshing.remove(&channel);
                let Some(subscription) = state.subscription(&channel) else { continue };
                subscription.last_offset = Some(offset);
                let message = subscription.subscribe_message();
                if let Err(err) = send(&mut socket, &message).await {
                    return Ok(Ended::Lost(err));
                }
                Next::Continue
            }
            Some(ServerMessage::Reconnect { .. }) => return Ok(Ended::Reconnect),
            Some(ServerMessage::Pong { .. }) => Next::Continue,
            Some(ServerMessage::Snapshot { .. }) => state.sink.show(&message),
            None => {
                let Some(offset) = message["offset"].as_u64() else { continue };
                let Some(subscription) = state.subscription(&channel) else { continue };
                if subscription.last_offset.is_some_and(|last| offset <= last) {
                    continue; // already shown before a reconnect or a refresh
                }
                subscription.last_offset = Some(offset);
                state.sink.show(&message)
            }
        };
        match next {
            Next::Continue => {}
            Next::Refresh(channel) => {
                // Unsubscribe first (the gateway allows one subscription per channel); the new
                // subscribe goes out when `unsubscribed` comes back.
                let unsubscribe =
                    json!({"type": "unsubscribe", "channel": channel, "id": format!("{REFRESH_ID}{channel}")});
                if state.refreshing.insert(channel.clone())
                    && let Err(err) = send(&mut socket, &unsubscribe).await
                {
                    return Ok(Ended::Lost(err));
                }
            }
            Next::Stop => {
                state.sink.tick();
                let _ = socket.close(None).await;
                return Ok(Ended::Done);
            }
        }
    }
    Ok(Ended::Lost("connection ended".into()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `--json`: the gateway's frames as they are, one a line (and `snapshot` frames for the
    /// current state).
    Json,
    /// Piped: one text line per event (and per entity of the current state).
    Plain,
    /// A terminal: a table redrawn in place, or numbered log lines.
    Terminal,
}

impl Mode {
    fn of(global: &Global) -> Self {
        if global.json {
            Self::Json
        } else if std::io::stdout().is_terminal() {
            Self::Terminal
        } else {
            Self::Plain
        }
    }
}

/// How `watch` shows what arrives.
struct View {
    mode: Mode,
    count: Option<u64>,
    shown: u64,
    /// Versions of the entities shown from the current state, until an event passes them:
    /// older events of them are not shown again.
    known: HashMap<String, u64>,
    table: Option<Drawn>,
    /// A `logs:{id}` channel: its lines are shown as such.
    logs: bool,
    /// Shown in the table's footer while nothing else is (the state could not be loaded).
    notice: Option<String>,
}

struct Drawn {
    table: Table,
    dirty: bool,
    drawn: Option<Instant>,
}

impl View {
    fn new(channel: &str, mode: Mode, count: Option<u64>) -> Self {
        let table = (mode == Mode::Terminal && !channel.starts_with("logs:")).then(|| Drawn {
            table: Table::new(if channel.starts_with("agents") { Kind::Agents } else { Kind::Executions }),
            dirty: true,
            drawn: None,
        });
        Self { mode, count, shown: 0, known: HashMap::new(), table, logs: channel.starts_with("logs:"), notice: None }
    }

    /// False for an event of an entity whose state at this version or later was already shown.
    fn is_new(&mut self, frame: &Value) -> bool {
        let data = &frame["data"];
        if frame["type"] == "snapshot" {
            if let (Some(id), Some(version)) = (entity_id(data), data["version"].as_u64()) {
                self.known.insert(id.to_owned(), version);
            }
            return true;
        }
        let Some(id) = entity_id(data) else { return true };
        let Some(known) = self.known.get(id).copied() else { return true };
        let version = data["version"].as_u64().unwrap_or(0);
        if version <= known {
            return false;
        }
        self.known.remove(id); // later events of it are newer still
        true
    }
}

fn entity_id(data: &Value) -> Option<&str> {
    data["execution_id"]
        .as_str()
        .filter(|id| !id.is_empty())
        .or_else(|| data["agent_id"].as_str().filter(|id| !id.is_empty()))
}

impl Sink for View {
    fn show(&mut self, frame: &Value) -> Next {
        if !self.is_new(frame) {
            return Next::Continue;
        }
        let snapshot = frame["type"] == "snapshot";
        match (&mut self.table, self.mode) {
            (Some(drawn), _) => {
                drawn.dirty |= drawn.table.apply(frame);
                // Redraw at most ten times a second: a busy channel must not flood the terminal.
                if drawn.drawn.is_none_or(|at| at.elapsed() > Duration::from_millis(100)) {
                    drawn.draw();
                }
            }
            (None, Mode::Json) => println!("{frame}"),
            (None, Mode::Terminal) => print_log_lines(frame, true),
            (None, Mode::Plain) if self.logs => print_log_lines(frame, false),
            (None, Mode::Plain) if snapshot => println!("{}", output::state_line(frame)),
            (None, Mode::Plain) => {
                let mut event = frame["data"].clone();
                event["offset"] = frame["offset"].clone();
                println!("{}", output::event_line(&event));
            }
        }
        if !snapshot {
            self.shown += 1;
            if self.count.is_some_and(|count| self.shown >= count) {
                return Next::Stop;
            }
        }
        Next::Continue
    }

    fn connection(&mut self, trouble: Option<String>) {
        if let Some(drawn) = &mut self.table {
            drawn.table.set_notice(trouble.or_else(|| self.notice.clone()));
            drawn.dirty = true;
        }
    }

    fn tick(&mut self) {
        if let Some(drawn) = &mut self.table
            && (drawn.dirty || drawn.drawn.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)))
        {
            drawn.draw();
        }
    }
}

impl Drawn {
    fn draw(&mut self) {
        let (width, height) = screen_size();
        let lines = self.table.render(width, height, chrono::Utc::now(), true);
        // In place: home, each line cleared to its end, the rest of the screen cleared. The
        // header is always the first line; nothing scrolls.
        let mut out = String::from(if self.drawn.is_none() { "\x1b[2J\x1b[H" } else { "\x1b[H" });
        for line in &lines {
            out.push_str(line);
            out.push_str("\x1b[K\n");
        }
        out.push_str("\x1b[J");
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(out.as_bytes());
        let _ = stdout.flush();
        self.dirty = false;
        self.drawn = Some(Instant::now());
    }
}

/// The terminal's columns and lines; `COLUMNS` / `LINES`, then 80×24, when it does not say (a
/// pseudo-terminal nobody sized answers 0×0).
fn screen_size() -> (usize, usize) {
    let from_env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<usize>().ok()).filter(|v| *v > 0);
    match terminal_size::terminal_size() {
        Some((terminal_size::Width(w), terminal_size::Height(h))) if w > 0 && h > 0 => (usize::from(w), usize::from(h)),
        _ => (from_env("COLUMNS").unwrap_or(80), from_env("LINES").unwrap_or(24)),
    }
}

/// The lines of a `log.appended` frame: numbered with a `!` for stderr on a terminal, the bare
/// text when piped.
fn print_log_lines(frame: &Value, numbered: bool) {
    let mut stdout = std::io::stdout().lock();
    for line in frame["data"]["payload"]["logs_appended"]["lines"].as_array().into_iter().flatten() {
        let text = line["text"].as_str().unwrap_or_default();
        let _ = if numbered {
            let marker = if line["stream"] == "stderr" { "!" } else { " " };
            writeln!(stdout, "{:>6}{marker} {text}", line["line_number"])
        } else {
            writeln!(stdout, "{text}")
        };
    }
}

/// `logs tail`: log lines, and the end of the execution.
struct Tail {
    logs: String,
    mode: Mode,
    count: Option<u64>,
    shown: u64,
    /// The execution has ended: stop once the log channel is replayed up to its head.
    ended: bool,
}

impl Sink for Tail {
    fn show(&mut self, frame: &Value) -> Next {
        if frame["channel"].as_str() != Some(self.logs.as_str()) {
            // executions:{id}. Log lines appended before the end may still be on their way on the
            // other stream: subscribe to the logs again, and stop when that replay is done.
            let status = frame["data"]["state"]["status"].as_str().unwrap_or_default();
            if !self.ended && matches!(status, "completed" | "failed" | "cancelled") {
                self.ended = true;
                return Next::Refresh(self.logs.clone());
            }
            return Next::Continue;
        }
        match self.mode {
            Mode::Json => println!("{frame}"),
            Mode::Terminal => print_log_lines(frame, true),
            Mode::Plain => print_log_lines(frame, false),
        }
        self.shown += 1;
        if self.count.is_some_and(|count| self.shown >= count) { Next::Stop } else { Next::Continue }
    }

    fn subscribed(&mut self, channel: &str) -> Next {
        if self.ended && channel == self.logs { Next::Stop } else { Next::Continue }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn execution_event(channel: &str, offset: u64, version: u64, status: &str) -> Value {
        json!({"type": "execution.progress", "channel": channel, "offset": offset,
            "data": {"execution_id": "e1", "version": version, "state": {"execution_id": "e1", "status": status, "version": version}}})
    }

    #[test]
    fn logs_tail_stops_only_after_the_logs_are_replayed_past_the_end() {
        let log = json!({"type": "log.appended", "channel": "logs:e1", "offset": 5,
            "data": {"payload": {"logs_appended": {"lines": [{"line_number": 1, "text": "hi"}]}}}});
        let mut tail = Tail { logs: "logs:e1".into(), mode: Mode::Plain, count: None, shown: 0, ended: false };
        assert_eq!(tail.subscribed("logs:e1"), Next::Continue, "running: follow");
        assert_eq!(tail.show(&log), Next::Continue);
        assert_eq!(tail.show(&execution_event("executions:e1", 9, 4, "running")), Next::Continue);
        // The end: the logs are asked for again, and the answer to that ends it.
        assert_eq!(tail.show(&execution_event("executions:e1", 10, 5, "failed")), Next::Refresh("logs:e1".into()));
        assert_eq!(tail.show(&execution_event("executions:e1", 11, 5, "failed")), Next::Continue, "one refresh");
        assert_eq!(tail.subscribed("executions:e1"), Next::Continue);
        assert_eq!(tail.subscribed("logs:e1"), Next::Stop);

        let mut ended = Tail { logs: "logs:e1".into(), mode: Mode::Plain, count: Some(2), shown: 0, ended: true };
        assert_eq!(ended.show(&log), Next::Continue);
        assert_eq!(ended.show(&log), Next::Stop, "--count log events");
        assert_eq!(ended.subscribed("logs:e1"), Next::Stop, "already ended: the replay is everything");
    }

    #[test]
    fn events_the_current_state_already_holds_are_not_shown_again() {
        let mut view = View::new("executions", Mode::Json, Some(2));
        let snapshot = json!({"type": "snapshot", "channel": "executions", "offset": 8,
            "data": {"execution_id": "e1", "version": 4}});
        assert!(view.is_new(&snapshot));
        assert!(!view.is_new(&execution_event("executions", 7, 3, "running")), "older");
        assert!(!view.is_new(&execution_event("executions", 8, 4, "running")), "the same version");
        assert!(view.is_new(&execution_event("executions", 9, 5, "running")));
        assert!(view.known.is_empty(), "forgotten once passed: bounded");
        let other = json!({"type": "execution.created", "channel": "executions", "offset": 6,
            "data": {"execution_id": "e2", "version": 1}});
        assert!(view.is_new(&other), "entities outside the state are all new");
    }

    #[test]
    fn subscriptions_carry_filters_and_their_offset() {
        let args = WatchArgs {
            channel: "executions".into(),
            workflow: Some("a, b".into()),
            execution: None,
            status: Some("running".into()),
            types: None,
            since_offset: None,
            count: None,
        };
        let message = Subscription::from_args(&args, Some(41)).subscribe_message();
        assert_eq!(message["since_offset"], 41);
        assert_eq!(message["filters"], json!({"workflow_ids": ["a", "b"], "statuses": ["running"]}));
        assert!(Subscription::channel("logs:e1", None).subscribe_message().get("since_offset").is_none());
    }
}
