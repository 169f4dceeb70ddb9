//! `runcast watch` (and `logs tail`): follows a gateway channel over WebSocket. Reconnects with
//! exponential backoff and resumes from the last offset it showed (the gateway replays what was
//! missed), drops duplicates by offset, resubscribes after a `resync`, reconnects at once on
//! `reconnect` — and says each of these on stderr.

use crate::cli::{Global, WatchArgs};
use crate::{CliError, api};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const MAX_BACKOFF: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Error codes after which retrying the same subscription cannot help.
const FATAL_CODES: &[&str] =
    &["unknown_channel", "invalid_filter", "invalid_message", "unauthenticated", "permission_denied"];

enum Ended {
    /// `--count` events shown.
    Done,
    /// The replica asked us to reconnect (draining).
    Reconnect,
    /// The connection went away.
    Lost(String),
}

/// Where followed frames go: the terminal for `watch`, a work queue for `simulate`.
pub trait Sink: Send {
    /// An event frame (or a snapshot), each offset once.
    fn show(&mut self, frame: &Value);
}

pub async fn run(global: &Global, args: &WatchArgs) -> Result<(), CliError> {
    let mut view = View::new(&args.channel, global.json || !std::io::stdout().is_terminal());
    follow(global, args, &mut view).await
}

/// Follows `args.channel` until `--count` events were shown, or until something retrying cannot
/// fix (bad subscription, refused credentials, a gateway unreachable on the first try).
pub async fn follow(global: &Global, args: &WatchArgs, sink: &mut dyn Sink) -> Result<(), CliError> {
    let credentials = api::Credentials::new(global)?;
    let mut state = State { last_offset: args.since_offset, shown: 0, sink };
    let mut backoff = Duration::from_secs(1);
    let mut attempt = 0u32;
    loop {
        let outcome = session(&credentials, global, args, &mut state, attempt > 0).await?;
        match outcome {
            Ended::Done => return Ok(()),
            Ended::Reconnect => {
                eprintln!("runcast: the gateway replica is draining; reconnecting");
                backoff = Duration::from_secs(1);
                attempt = 1;
            }
            Ended::Lost(reason) => {
                attempt += 1;
                eprintln!(
                    "runcast: lost the gateway ({reason}); reconnecting in {}s (attempt {attempt})",
                    backoff.as_secs()
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

struct State<'a> {
    last_offset: Option<u64>,
    shown: u64,
    sink: &'a mut dyn Sink,
}

/// Resolves at `at`, or never.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn subscribe_message(args: &WatchArgs, since_offset: Option<u64>) -> Value {
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
    let mut message = json!({"type": "subscribe", "channel": args.channel, "id": "runcast-cli"});
    if !filters.is_empty() {
        message["filters"] = Value::Object(filters);
    }
    if let Some(offset) = since_offset {
        message["since_offset"] = json!(offset);
    }
    message
}

/// One connection. `Err` only for what retrying cannot fix.
async fn session(
    credentials: &api::Credentials,
    global: &Global,
    args: &WatchArgs,
    state: &mut State<'_>,
    resuming: bool,
) -> Result<Ended, CliError> {
    let url = format!("{}/ws?token={}", global.gateway_url.trim_end_matches('/'), credentials.token()?);
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(&url)).await;
    let mut socket = match connected {
        Ok(Ok((socket, _))) => socket,
        Ok(Err(err)) if !resuming => {
            return Err(CliError(format!(
                "cannot reach ws-gateway at {}: {}",
                global.gateway_url,
                api::source_chain(&err)
            )));
        }
        Err(_) if !resuming => {
            return Err(CliError(format!(
                "ws-gateway at {} did not answer within {CONNECT_TIMEOUT:?}",
                global.gateway_url
            )));
        }
        Ok(Err(err)) => return Ok(Ended::Lost(err.to_string())),
        Err(_) => return Ok(Ended::Lost("connect timed out".into())),
    };
    let subscribe = subscribe_message(args, state.last_offset);
    if let Err(err) = socket.send(Message::text(subscribe.to_string())).await {
        return Ok(Ended::Lost(err.to_string()));
    }
    loop {
        let frame = tokio::select! {
            frame = socket.next() => frame,
            // Minted tokens are renewed in-band before they expire: no reconnect, no lost offset.
            () = until(credentials.renew_at()) => {
                let auth = json!({"type": "auth", "token": credentials.token()?});
                if let Err(err) = socket.send(Message::text(auth.to_string())).await {
                    return Ok(Ended::Lost(err.to_string()));
                }
                continue;
            }
        };
        let Some(frame) = frame else { break };
        let text = match frame {
            Ok(Message::Text(text)) => text,
            Ok(Message::Close(close)) => {
                let reason = close
                    .map(|c| format!("closed with {}: {}", u16::from(c.code), c.reason))
                    .unwrap_or_else(|| "closed".into());
                if reason.contains("4001") {
                    return Err(CliError(format!("the gateway {reason}: the token expired")));
                }
                return Ok(Ended::Lost(reason));
            }
            Ok(_) => continue,
            Err(err) => return Ok(Ended::Lost(err.to_string())),
        };
        let Ok(message) = serde_json::from_str::<Value>(&text) else { continue };
        match message["type"].as_str().unwrap_or_default() {
            "subscribed" => {
                if resuming || args.since_offset.is_some() {
                    eprintln!(
                        "runcast: subscribed to {} from offset {} (recovered: {}, replayed: {})",
                        args.channel,
                        state.last_offset.map_or_else(|| "now".to_owned(), |o| o.to_string()),
                        message["recovered"],
                        message["replayed"]
                    );
                }
                if message["recovered"] == false {
                    eprintln!("runcast: the gateway no longer holds that offset: showing live events only");
                }
            }
            "error" => {
                let code = message["code"].as_str().unwrap_or("unknown");
                let detail = message["message"].as_str().unwrap_or_default();
                if FATAL_CODES.contains(&code) {
                    return Err(CliError(format!("the gateway refused the subscription ({code}): {detail}")));
                }
                eprintln!("runcast: gateway error {code}: {detail}");
            }
            "resync" => {
                let offset = message["offset"].as_u64().or(state.last_offset);
                eprintln!("runcast: fell behind; resubscribing from offset {}", offset.unwrap_or(0));
                state.last_offset = offset;
                let unsubscribe = json!({"type": "unsubscribe", "channel": args.channel});
                let resubscribe = subscribe_message(args, offset);
                for message in [unsubscribe, resubscribe] {
                    if let Err(err) = socket.send(Message::text(message.to_string())).await {
                        return Ok(Ended::Lost(err.to_string()));
                    }
                }
            }
            "reconnect" => return Ok(Ended::Reconnect),
            "pong" | "unsubscribed" => {}
            "snapshot" => state.sink.show(&message),
            _ => {
                let Some(offset) = message["offset"].as_u64() else { continue };
                if state.last_offset.is_some_and(|last| offset <= last) {
                    continue; // already shown before a reconnect
                }
                state.last_offset = Some(offset);
                state.sink.show(&message);
                state.shown += 1;
                if args.count.is_some_and(|count| state.shown >= count) {
                    let _ = socket.close(None).await;
                    return Ok(Ended::Done);
                }
            }
        }
    }
    Ok(Ended::Lost("connection ended".into()))
}

/// How events are shown: JSON lines, log lines, or a live table of entities.
enum View {
    Lines,
    Logs,
    Table { rows: BTreeMap<String, Row>, drawn: Option<Instant> },
}

struct Row {
    offset: u64,
    columns: [String; 4],
    status: String,
    progress: u64,
}

impl View {
    fn new(channel: &str, plain: bool) -> Self {
        if plain {
            Self::Lines
        } else if channel.starts_with("logs:") {
            Self::Logs
        } else {
            Self::Table { rows: BTreeMap::new(), drawn: None }
        }
    }
}

impl Sink for View {
    fn show(&mut self, frame: &Value) {
        match self {
            Self::Lines => println!("{frame}"),
            Self::Logs => {
                for line in frame["data"]["payload"]["logs_appended"]["lines"].as_array().into_iter().flatten() {
                    let marker = if line["stream"] == "stderr" { "!" } else { " " };
                    println!("{:>6}{marker} {}", line["line_number"], line["text"].as_str().unwrap_or_default());
                }
            }
            Self::Table { rows, drawn } => {
                let state = &frame["data"]["state"];
                let id = state["execution_id"]
                    .as_str()
                    .or_else(|| state["agent_id"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                if id.is_empty() {
                    return;
                }
                let is_agent = state.get("agent_id").is_some();
                let row = Row {
                    offset: frame["offset"].as_u64().unwrap_or(0),
                    status: state["status"].as_str().unwrap_or("unspecified").to_owned(),
                    progress: if is_agent {
                        state["cpu_percent"].as_f64().unwrap_or(0.0) as u64
                    } else {
                        state["progress"].as_u64().unwrap_or(0)
                    },
                    columns: [
                        id.clone(),
                        state["workflow_id"].as_str().unwrap_or_default().to_owned(),
                        state["current_step"].as_str().unwrap_or_default().to_owned(),
                        frame["type"].as_str().unwrap_or_default().to_owned(),
                    ],
                };
                rows.insert(id, row);
                // Redraw at most ten times a second: a busy channel must not flood the terminal.
                if drawn.is_none_or(|at| at.elapsed() > Duration::from_millis(100)) {
                    draw(rows);
                    *drawn = Some(Instant::now());
                }
            }
        }
    }
}

fn colour(status: &str) -> &'static str {
    match status {
        "running" | "online" => "\x1b[34m",
        "completed" => "\x1b[32m",
        "failed" | "offline" => "\x1b[31m",
        "paused" | "busy" => "\x1b[33m",
        "blocked" | "draining" => "\x1b[35m",
        "cancelled" => "\x1b[90m",
        _ => "\x1b[37m",
    }
}

fn draw(rows: &BTreeMap<String, Row>) {
    let mut recent: Vec<&Row> = rows.values().collect();
    recent.sort_by_key(|row| std::cmp::Reverse(row.offset));
    let mut out = String::from("\x1b[2J\x1b[H");
    out.push_str(&format!(
        "\x1b[1m{:<40} {:<10} {:<22} {:<16} {:<14} {}\x1b[0m\n",
        "ID", "STATUS", "PROGRESS", "WORKFLOW", "STEP", "LAST EVENT"
    ));
    for row in recent.iter().take(40) {
        let filled = (row.progress.min(100) / 5) as usize;
        let bar = format!("[{}{}] {:>3}%", "#".repeat(filled), "-".repeat(20 - filled), row.progress.min(100));
        out.push_str(&format!(
            "{:<40} {}{:<10}\x1b[0m {:<22} {:<16} {:<14} {}\n",
            row.columns[0],
            colour(&row.status),
            row.status,
            bar,
            row.columns[1],
            row.columns[2],
            row.columns[3]
        ));
    }
    out.push_str(&format!("\n{} entities; Ctrl-C to stop\n", rows.len()));
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}
