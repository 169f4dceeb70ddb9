//! Text for people, JSON for scripts (`--json`: one object per line, the contract's JSON form).
//! The human forms live here as pure functions of their input (and of `now`), so they are
//! unit-tested: one line per event with a summary of what changed, an execution in full, agents,
//! durations and relative times.

use chrono::{DateTime, Utc};
use runcast_contract::json::parse_wire_name;
use runcast_contract::v1::{
    Agent, AgentStatus, ApprovalStatus, Event, EventType, Execution, ExecutionStatus, StepStatus,
};
use runcast_contract::{WireEnum, json as wire_json};
use serde::Serialize;
use serde_json::Value;
use std::fmt::Write as _;

pub(crate) fn json<T: Serialize>(value: &T) {
    match serde_json::to_string(value) {
        Ok(line) => println!("{line}"),
        Err(err) => eprintln!("runcast: cannot print as JSON: {err}"),
    }
}

fn wire<E: WireEnum>(raw: i32) -> &'static str {
    E::try_from(raw).map_or("unspecified", |value| value.wire_name())
}

pub(crate) fn execution_line(execution: &Execution) -> String {
    format!(
        "{}  {:<10} {:>3}%  v{}  workflow={}{}{}",
        execution.execution_id,
        wire::<ExecutionStatus>(execution.status),
        execution.progress,
        execution.version,
        execution.workflow_id,
        if execution.current_step.is_empty() { String::new() } else { format!("  step={}", execution.current_step) },
        if execution.agent_id.is_empty() { String::new() } else { format!("  agent={}", execution.agent_id) },
    )
}

pub(crate) fn execution(execution: &Execution, as_json: bool) {
    if as_json { json(execution) } else { println!("{}", execution_line(execution)) }
}

pub(crate) fn agent(agent: &Agent, as_json: bool) {
    if as_json {
        json(agent)
    } else {
        let heartbeat = agent
            .last_heartbeat_at
            .as_ref()
            .and_then(|ts| wire_json::to_datetime(ts).ok())
            .map(|at| format!("  heartbeat {}", ago(at, Utc::now())))
            .unwrap_or_default();
        println!(
            "{}  {:<8} cpu={:>5.1}% mem={:>5.1}% gpu={:>5.1}%  running={}{heartbeat}",
            agent.agent_id,
            wire::<AgentStatus>(agent.status),
            agent.cpu_percent,
            agent.memory_percent,
            agent.gpu_percent,
            agent.running_execution_ids.len()
        )
    }
}

pub(crate) fn event(event: &Event, as_json: bool) {
    if as_json {
        json(event)
    } else {
        match serde_json::to_value(event) {
            Ok(value) => println!("{}", event_line(&value)),
            Err(err) => eprintln!("runcast: cannot show event {}: {err}", event.event_id),
        }
    }
}

/// The stream an event type lives on (EXECUTIONS, LOGS, AGENTS): offsets are per stream.
pub(crate) fn stream_of(event_type: &str) -> &'static str {
    parse_wire_name::<EventType>(event_type)
        .ok()
        .and_then(|raw| EventType::try_from(raw).ok())
        .map_or("?", |kind| kind.stream().base_name())
}

/// One line per event, for `events` and piped `watch`:
/// `offset stream time type entity version summary`. `event` is the contract's JSON form.
pub(crate) fn event_line(event: &Value) -> String {
    let kind = event["type"].as_str().unwrap_or("unspecified");
    let entity = event["execution_id"]
        .as_str()
        .filter(|id| !id.is_empty())
        .or_else(|| event["agent_id"].as_str())
        .unwrap_or_default();
    let time = event["occurred_at"].as_str().map(short_time).unwrap_or_default();
    let mut line =
        format!("{:>8} {:<10} {time:<19}  {kind:<20} {entity}", event["offset"].as_u64().unwrap_or(0), stream_of(kind));
    if let Some(version) = event["version"].as_u64().filter(|v| *v > 0) {
        let _ = write!(line, " v{version}");
    }
    let summary = summary(event);
    if !summary.is_empty() {
        let _ = write!(line, "  {summary}");
    }
    line
}

/// One line for an entity of the current state (a `snapshot` frame), in the columns of
/// [`event_line`]: `offset stream time state entity version` then its status.
pub(crate) fn state_line(frame: &Value) -> String {
    let state = &frame["data"];
    let agent = state.get("agent_id").is_some() && state.get("execution_id").is_none();
    let (stream, time_field) = if agent { ("AGENTS", "last_heartbeat_at") } else { ("EXECUTIONS", "updated_at") };
    let entity = if agent { state["agent_id"].as_str() } else { state["execution_id"].as_str() }.unwrap_or_default();
    let time = state[time_field].as_str().map(short_time).unwrap_or_default();
    let mut line = format!(
        "{:>8} {stream:<10} {time:<19}  {:<20} {entity} v{}  {}",
        frame["offset"].as_u64().unwrap_or(0),
        "state",
        state["version"].as_u64().unwrap_or(0),
        state["status"].as_str().unwrap_or("unspecified")
    );
    if agent {
        let _ = write!(
            line,
            " cpu {:.0}% mem {:.0}% gpu {:.0}% running {}",
            state["cpu_percent"].as_f64().unwrap_or(0.0),
            state["memory_percent"].as_f64().unwrap_or(0.0),
            state["gpu_percent"].as_f64().unwrap_or(0.0),
            state["running_execution_ids"].as_array().map_or(0, Vec::len)
        );
    } else {
        let _ = write!(
            line,
            " {}% ({})",
            state["progress"].as_u64().unwrap_or(0),
            state["workflow_id"].as_str().unwrap_or_default()
        );
        if let Some(step) = state["current_step"].as_str().filter(|s| !s.is_empty()) {
            let _ = write!(line, " step {step}");
        }
    }
    line
}

/// What an event changed, in a few words: "step build completed", "progress 40%",
/// "running → paused: lunch", "2 lines: first line…".
pub(crate) fn summary(event: &Value) -> String {
    let payload = &event["payload"];
    let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
    let kind = event["type"].as_str().unwrap_or_default();
    let with = |mut head: String, tail: &[(&str, String)]| {
        for (separator, value) in tail {
            if !value.is_empty() {
                let _ = write!(head, "{separator}{}", one_line(value, 120));
            }
        }
        head
    };
    if let Some(change) = payload.get("status_changed") {
        let (from, to) = (text(&change["from"]), text(&change["to"]));
        let head = if from.is_empty() { to } else { format!("{from} → {to}") };
        return with(
            head,
            &[(": ", text(&change["error"])), (": ", text(&change["message"])), (": ", text(&change["reason"]))],
        );
    }
    if let Some(progress) = payload.get("progress_reported") {
        let head = format!("progress {}%", progress["percent"].as_u64().unwrap_or(0));
        return with(head, &[(" in step ", text(&progress["current_step"])), (": ", text(&progress["message"]))]);
    }
    if let Some(step) = payload.get("step_changed") {
        let id = text(&step["step_id"]);
        let name = text(&step["name"]);
        let label = if name.is_empty() || name == id { id } else { format!("{id} ({name})") };
        return with(format!("step {label} {}", text(&step["status"])), &[(": ", text(&step["error"]))]);
    }
    if let Some(approval) = payload.get("approval_changed") {
        let mut head = format!("approval {} {}", text(&approval["approval_id"]), text(&approval["status"]));
        if let Some(deadline) = approval["deadline"].as_str() {
            let _ = write!(head, " (deadline {})", short_time(deadline));
        }
        return with(head, &[(": ", text(&approval["reason"])), (": ", text(&approval["comment"]))]);
    }
    if let Some(logs) = payload.get("logs_appended") {
        let lines = logs["lines"].as_array().map(Vec::as_slice).unwrap_or_default();
        let numbers = match (lines.first(), lines.last()) {
            (Some(first), Some(last)) if lines.len() > 1 => {
                format!(
                    " #{}-{}",
                    first["line_number"].as_u64().unwrap_or(0),
                    last["line_number"].as_u64().unwrap_or(0)
                )
            }
            (Some(first), _) => format!(" #{}", first["line_number"].as_u64().unwrap_or(0)),
            _ => String::new(),
        };
        let noun = if lines.len() == 1 { "line" } else { "lines" };
        let first = lines.first().map(|line| text(&line["text"])).unwrap_or_default();
        return with(format!("{} {noun}{numbers}", lines.len()), &[(": ", first)]);
    }
    if let Some(agent) = payload.get("agent_reported") {
        return format!(
            "{} cpu {:.0}% mem {:.0}% gpu {:.0}% running {}",
            text(&agent["status"]),
            agent["cpu_percent"].as_f64().unwrap_or(0.0),
            agent["memory_percent"].as_f64().unwrap_or(0.0),
            agent["gpu_percent"].as_f64().unwrap_or(0.0),
            agent["running_execution_ids"].as_array().map_or(0, Vec::len)
        );
    }
    if kind == "execution.created" {
        let state = &event["state"];
        let mut head = format!("created ({})", text(&state["workflow_id"]));
        if let Some(labels) = state["labels"].as_object().filter(|labels| !labels.is_empty()) {
            let _ =
                write!(head, " {}", labels_text(labels.iter().map(|(k, v)| (k.as_str(), v.as_str().unwrap_or("")))));
        }
        return head;
    }
    String::new()
}

fn labels_text<'a>(labels: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut pairs: Vec<String> = labels.map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    pairs.join(" ")
}

/// The first line of `text`, at most `max` characters (with "…" when cut).
pub(crate) fn one_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    let cut = text.lines().nth(1).is_some();
    if line.chars().count() > max {
        let mut short: String = line.chars().take(max.saturating_sub(1)).collect();
        short.push('…');
        short
    } else if cut {
        format!("{line} …")
    } else {
        line.to_owned()
    }
}

/// "2026-12-01 21:50:03" from an RFC 3339 time (as given when it does not parse).
fn short_time(rfc3339: &str) -> String {
    DateTime::parse_from_rfc3339(rfc3339)
        .map(|time| time.with_timezone(&Utc).format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|_| rfc3339.to_owned())
}

/// "850ms", "12.3s", "2m 03s", "1h 02m", "3d 04h".
pub(crate) fn duration(duration: chrono::Duration) -> String {
    let millis = duration.num_milliseconds().max(0);
    let seconds = millis / 1000;
    match seconds {
        _ if millis < 1000 => format!("{millis}ms"),
        0..60 => format!("{:.1}s", millis as f64 / 1000.0),
        60..3600 => format!("{}m {:02}s", seconds / 60, seconds % 60),
        3600..86_400 => format!("{}h {:02}m", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{}d {:02}h", seconds / 86_400, seconds % 86_400 / 3600),
    }
}

/// "3s ago", "in 4m 10s" (whole seconds).
pub(crate) fn ago(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let whole = |seconds: i64| {
        if seconds < 60 { format!("{seconds}s") } else { duration(chrono::Duration::seconds(seconds)) }
    };
    let seconds = (now - at).num_seconds();
    if seconds >= 0 { format!("{} ago", whole(seconds)) } else { format!("in {}", whole(-seconds)) }
}

fn time(ts: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    ts.and_then(|ts| wire_json::to_datetime(ts).ok())
}

/// An execution in full, for `exec get`: one field a line, then its steps and approvals.
pub(crate) fn execution_detail(execution: &Execution, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    let mut field = |name: &str, value: String| {
        if !value.is_empty() {
            let _ = writeln!(out, "{name:<10} {value}");
        }
    };
    let status = wire::<ExecutionStatus>(execution.status);
    field(
        "execution",
        format!("{}  (version {}, offset {})", execution.execution_id, execution.version, execution.offset),
    );
    field("workflow", execution.workflow_id.clone());
    let mut state = format!("{status}  {}%", execution.progress);
    if !execution.current_step.is_empty() {
        let _ = write!(state, "  step {}", execution.current_step);
    }
    if !execution.status_message.is_empty() {
        let _ = write!(state, "  — {}", one_line(&execution.status_message, 200));
    }
    field("status", state);
    field("error", execution.error.clone());
    field("agent", execution.agent_id.clone());
    field("labels", labels_text(execution.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()))));
    if let Some(input) = execution.input.as_ref().filter(|input| !input.fields.is_empty()) {
        field("input", one_line(&wire_json::struct_to_json(input).to_string(), 200));
    }
    let at = |ts: Option<&prost_types::Timestamp>| {
        time(ts).map(|t| format!("{} ({})", t.format("%Y-%m-%d %H:%M:%S UTC"), ago(t, now))).unwrap_or_default()
    };
    field("created", at(execution.created_at.as_ref()));
    field("started", at(execution.started_at.as_ref()));
    field("finished", at(execution.finished_at.as_ref()));
    field("updated", at(execution.updated_at.as_ref()));
    if let Some(started) = time(execution.started_at.as_ref()) {
        match time(execution.finished_at.as_ref()) {
            Some(finished) => field("duration", duration(finished - started)),
            None => field("duration", format!("{} so far", duration(now - started))),
        }
    }
    if execution.heartbeat_timeout_seconds > 0 {
        field("heartbeat", format!("fails after {}s without an event", execution.heartbeat_timeout_seconds));
    }
    if !execution.steps.is_empty() {
        let _ = writeln!(out, "steps ({})", execution.steps.len());
        let width = execution.steps.iter().map(|s| step_label(&s.step_id, &s.name).chars().count()).max().unwrap_or(4);
        for step in &execution.steps {
            let started = time(step.started_at.as_ref());
            let finished = time(step.finished_at.as_ref());
            let took = match (started, finished) {
                (Some(s), Some(f)) => duration(f - s),
                (Some(s), None) => format!("{} so far", duration(now - s)),
                _ => String::new(),
            };
            let since = started.map(|s| s.format("%H:%M:%S").to_string()).unwrap_or_default();
            let mut line = format!(
                "  {:<width$}  {:<9}  {since:<8}  {took}",
                step_label(&step.step_id, &step.name),
                wire::<StepStatus>(step.status)
            );
            if !step.error.is_empty() {
                let _ = write!(line, "  error: {}", one_line(&step.error, 200));
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
    }
    if !execution.approvals.is_empty() {
        let _ = writeln!(out, "approvals ({})", execution.approvals.len());
        for approval in &execution.approvals {
            let status = wire::<ApprovalStatus>(approval.status);
            let mut line = format!("  {}  {status}", approval.approval_id);
            if let Some(deadline) = time(approval.deadline.as_ref()) {
                let _ =
                    write!(line, "  deadline {} ({})", deadline.format("%Y-%m-%d %H:%M:%S UTC"), ago(deadline, now));
            }
            if let Some(resolved) = time(approval.resolved_at.as_ref()) {
                let by = if approval.resolved_by.is_empty() {
                    String::new()
                } else {
                    format!(" by {}", approval.resolved_by)
                };
                let _ = write!(line, "  resolved{by} {}", ago(resolved, now));
            }
            for (name, value) in [("reason", &approval.reason), ("comment", &approval.comment)] {
                if !value.is_empty() {
                    let _ = write!(line, "  {name}: {}", one_line(value, 200));
                }
            }
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

fn step_label(id: &str, name: &str) -> String {
    if name.is_empty() || name == id { id.to_owned() } else { format!("{id} ({name})") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runcast_contract::v1::{Approval, Step};
    use serde_json::json;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).expect("time").with_timezone(&Utc)
    }

    fn ts(text: &str) -> Option<prost_types::Timestamp> {
        Some(wire_json::from_datetime(at(text)))
    }

    #[test]
    fn durations_and_relative_times_read_like_a_person_would_say_them() {
        let d = chrono::Duration::milliseconds;
        assert_eq!(duration(d(850)), "850ms");
        assert_eq!(duration(d(12_340)), "12.3s");
        assert_eq!(duration(d(123_000)), "2m 03s");
        assert_eq!(duration(d(3_720_000)), "1h 02m");
        assert_eq!(duration(d(273_600_000)), "3d 04h");
        assert_eq!(duration(d(-5)), "0ms");
        let now = at("2026-12-01T21:50:00Z");
        assert_eq!(ago(at("2026-12-01T21:49:57Z"), now), "3s ago");
        assert_eq!(ago(at("2026-12-01T21:47:00Z"), now), "3m 00s ago");
        assert_eq!(ago(at("2026-12-01T21:54:10Z"), now), "in 4m 10s");
        assert_eq!(ago(now, now), "0s ago");
    }

    #[test]
    fn events_are_summarised_and_name_their_stream() {
        let step = json!({"type": "step.completed", "offset": 17, "execution_id": "e1", "version": 4,
            "occurred_at": "2026-12-01T21:50:03.5Z",
            "payload": {"step_changed": {"step_id": "build", "status": "completed"}}});
        assert_eq!(summary(&step), "step build completed");
        let line = event_line(&step);
        assert!(line.contains(" EXECUTIONS ") && line.contains("2026-12-01 21:50:03"), "{line}");
        assert!(line.ends_with("e1 v4  step build completed"), "{line}");

        let progress = json!({"type": "execution.progress",
            "payload": {"progress_reported": {"percent": 40, "current_step": "test", "message": "halfway"}}});
        assert_eq!(summary(&progress), "progress 40% in step test: halfway");
        let failed = json!({"type": "execution.failed",
            "payload": {"status_changed": {"from": "running", "to": "failed", "error": "exit 3\nstack…"}}});
        assert_eq!(summary(&failed), "running → failed: exit 3 …");
        let approval = json!({"type": "approval.required", "payload": {"approval_changed":
            {"approval_id": "release", "status": "pending", "reason": "prod", "deadline": "2026-12-01T22:00:00Z"}}});
        assert_eq!(summary(&approval), "approval release pending (deadline 2026-12-01 22:00:00): prod");
        let logs = json!({"type": "log.appended", "offset": 9, "execution_id": "e1", "payload": {"logs_appended":
            {"lines": [{"line_number": 3, "text": "hello"}, {"line_number": 4, "text": "world"}]}}});
        assert_eq!(summary(&logs), "2 lines #3-4: hello");
        assert!(event_line(&logs).contains(" LOGS "), "{}", event_line(&logs));
        let heartbeat = json!({"type": "agent.heartbeat", "agent_id": "a1", "payload": {"agent_reported":
            {"status": "busy", "cpu_percent": 41.6, "memory_percent": 10.0, "running_execution_ids": ["e1"]}}});
        assert_eq!(summary(&heartbeat), "busy cpu 42% mem 10% gpu 0% running 1");
        assert!(event_line(&heartbeat).contains(" AGENTS ") && event_line(&heartbeat).contains(" a1"));
        let created =
            json!({"type": "execution.created", "state": {"workflow_id": "deploy", "labels": {"team": "infra"}}});
        assert_eq!(summary(&created), "created (deploy) team=infra");
        assert_eq!(stream_of("nope"), "?");
        let state = json!({"type": "snapshot", "offset": 12, "data": {"execution_id": "e9", "version": 3,
            "status": "running", "progress": 40, "workflow_id": "deploy", "current_step": "build",
            "updated_at": "2026-12-01T21:50:03Z"}});
        assert_eq!(
            state_line(&state),
            "      12 EXECUTIONS 2026-12-01 21:50:03  state                e9 v3  running 40% (deploy) step build"
        );
    }

    #[test]
    fn an_execution_in_full_shows_steps_approvals_error_and_times() {
        let now = at("2026-12-01T21:50:00Z");
        let execution = Execution {
            execution_id: "e1".into(),
            workflow_id: "deploy".into(),
            status: ExecutionStatus::Blocked.into(),
            version: 7,
            offset: 42,
            progress: 60,
            current_step: "test".into(),
            agent_id: "sim-1".into(),
            labels: [("team".to_owned(), "infra".to_owned())].into(),
            created_at: ts("2026-12-01T21:40:00Z"),
            started_at: ts("2026-12-01T21:41:00Z"),
            steps: vec![
                Step {
                    step_id: "build".into(),
                    name: "Build".into(),
                    status: StepStatus::Completed.into(),
                    started_at: ts("2026-12-01T21:41:00Z"),
                    finished_at: ts("2026-12-01T21:41:12.3Z"),
                    ..Default::default()
                },
                Step {
                    step_id: "test".into(),
                    status: StepStatus::Failed.into(),
                    started_at: ts("2026-12-01T21:41:12.3Z"),
                    error: "3 tests failed".into(),
                    ..Default::default()
                },
            ],
            approvals: vec![Approval {
                approval_id: "release".into(),
                status: ApprovalStatus::Pending.into(),
                reason: "prod".into(),
                deadline: ts("2026-12-01T21:55:00Z"),
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = execution_detail(&execution, now);
        for expected in [
            "execution  e1  (version 7, offset 42)",
            "status     blocked  60%  step test",
            "agent      sim-1",
            "labels     team=infra",
            "created    2026-12-01 21:40:00 UTC (10m 00s ago)",
            "duration   9m 00s so far",
            "steps (2)",
            "  build (Build)  completed  21:41:00  12.3s",
            "  test           failed     21:41:12  8m 47s so far  error: 3 tests failed",
            "approvals (1)",
            "  release  pending  deadline 2026-12-01 21:55:00 UTC (in 5m 00s)  reason: prod",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert!(!text.contains("finished"), "unset times are left out:\n{text}");
    }
}
