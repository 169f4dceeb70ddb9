//! The live table `watch` draws on a terminal: one row per entity (execution or agent), merged by
//! version, active ones first, fitted to the terminal's width (columns shrink, then the least
//! useful ones go) and height (the header stays, the rest is counted in the footer), and bounded
//! in memory however long it runs. Pure: `render` takes the size and the time.

use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::HashMap;

/// Rows kept at most; beyond it the oldest ended ones go first (down to [`PRUNE_TO`]).
pub(crate) const MAX_ROWS: usize = 1000;
const PRUNE_TO: usize = 900;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Executions,
    Agents,
}

#[derive(Debug, Clone, Default)]
struct Row {
    id: String,
    version: u64,
    offset: u64,
    status: String,
    active: bool,
    progress: u64,
    workflow: String,
    step: String,
    agent: String,
    event: String,
    updated: Option<DateTime<Utc>>,
    cpu: f64,
    memory: f64,
    gpu: f64,
    running: usize,
}

pub(crate) struct Table {
    kind: Kind,
    rows: HashMap<String, Row>,
    /// Said first in the footer until cleared, e.g. that the rows are stale while reconnecting.
    notice: Option<String>,
}

fn time(value: &Value) -> Option<DateTime<Utc>> {
    value.as_str().and_then(|text| DateTime::parse_from_rfc3339(text).ok()).map(|t| t.with_timezone(&Utc))
}

/// One column: its header, the width it would like and the least it can do with.
struct Column {
    header: &'static str,
    min: usize,
    max: usize,
    /// Cut from the left ("…f3c2d1"): the end of an id tells ids apart, the start is a timestamp.
    keep_end: bool,
    /// Dropped in this order when even the minimum widths do not fit (0: never).
    drop_rank: u8,
}

const fn column(header: &'static str, min: usize, max: usize, drop_rank: u8) -> Column {
    Column { header, min, max, keep_end: false, drop_rank }
}

const EXECUTION_COLUMNS: [Column; 8] = [
    Column { header: "ID", min: 12, max: 36, keep_end: true, drop_rank: 0 },
    column("STATUS", 9, 9, 0),
    column("PROGRESS", 4, 17, 6),
    column("WORKFLOW", 6, 20, 5),
    column("STEP", 4, 16, 3),
    column("AGENT", 4, 14, 1),
    column("UPDATED", 4, 7, 4),
    column("LAST EVENT", 8, 20, 2),
];

const AGENT_COLUMNS: [Column; 7] = [
    Column { header: "AGENT", min: 8, max: 32, keep_end: true, drop_rank: 0 },
    column("STATUS", 8, 8, 0),
    column("CPU", 4, 4, 5),
    column("MEM", 4, 4, 3),
    column("GPU", 4, 4, 1),
    column("RUNNING", 7, 7, 4),
    column("HEARTBEAT", 4, 9, 2),
];

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

/// "12s", "4m", "3h", "2d": an age in at most four characters.
fn age(at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    let Some(at) = at else { return "-".into() };
    let seconds = (now - at).num_seconds().max(0);
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86_400 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

/// `text` in exactly `width` characters: padded, or cut with "…".
fn fit(text: &str, width: usize, keep_end: bool) -> String {
    let length = text.chars().count();
    if length <= width {
        return format!("{text:<width$}");
    }
    if width == 0 {
        return String::new();
    }
    if keep_end {
        let tail: String = text.chars().skip(length - (width - 1)).collect();
        format!("…{tail}")
    } else {
        let head: String = text.chars().take(width - 1).collect();
        format!("{head}…")
    }
}

fn bar(progress: u64, width: usize) -> String {
    let progress = progress.min(100);
    let percent = format!("{progress:>3}%");
    if width < 10 {
        return percent; // no room for a bar
    }
    let inner = (width - 7).min(10); // "[" + bar + "] " + "100%"
    let filled = (progress as usize * inner) / 100;
    format!("[{}{}] {percent}", "#".repeat(filled), "-".repeat(inner - filled))
}

impl Table {
    pub(crate) fn new(kind: Kind) -> Self {
        Self { kind, rows: HashMap::new(), notice: None }
    }

    pub(crate) fn set_notice(&mut self, notice: Option<String>) {
        self.notice = notice;
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    /// Takes an event frame or a `snapshot`; true when a row changed. Older versions than the
    /// row's are ignored (events replayed after the state they are already part of).
    pub(crate) fn apply(&mut self, frame: &Value) -> bool {
        let snapshot = frame["type"] == "snapshot";
        let state = if snapshot { &frame["data"] } else { &frame["data"]["state"] };
        let id = match self.kind {
            Kind::Executions => state["execution_id"].as_str(),
            Kind::Agents => state["agent_id"].as_str(),
        };
        let Some(id) = id.filter(|id| !id.is_empty()) else { return false };
        let version = state["version"].as_u64().unwrap_or(0);
        if self.rows.get(id).is_some_and(|row| row.version >= version) {
            return false;
        }
        let status = state["status"].as_str().unwrap_or("unspecified").to_owned();
        let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
        let row = Row {
            id: id.to_owned(),
            version,
            offset: frame["offset"].as_u64().unwrap_or(0),
            active: match self.kind {
                Kind::Executions => matches!(status.as_str(), "pending" | "running" | "paused" | "blocked"),
                Kind::Agents => status != "offline",
            },
            status,
            progress: state["progress"].as_u64().unwrap_or(0),
            workflow: text(&state["workflow_id"]),
            step: text(&state["current_step"]),
            agent: text(&state["agent_id"]),
            // "created", "progress", "step.started": the entity is the row's.
            event: if snapshot {
                String::new()
            } else {
                let kind = text(&frame["type"]);
                kind.strip_prefix("execution.").map(str::to_owned).unwrap_or(kind)
            },
            updated: match self.kind {
                Kind::Executions => time(&state["updated_at"]),
                Kind::Agents => time(&state["last_heartbeat_at"]),
            },
            cpu: state["cpu_percent"].as_f64().unwrap_or(0.0),
            memory: state["memory_percent"].as_f64().unwrap_or(0.0),
            gpu: state["gpu_percent"].as_f64().unwrap_or(0.0),
            running: state["running_execution_ids"].as_array().map_or(0, Vec::len),
        };
        self.rows.insert(id.to_owned(), row);
        if self.rows.len() > MAX_ROWS {
            self.prune();
        }
        true
    }

    /// Down to [`PRUNE_TO`] rows: the least interesting (ended, then oldest) go.
    fn prune(&mut self) {
        let mut order: Vec<(bool, u64, String)> =
            self.rows.values().map(|row| (row.active, row.offset, row.id.clone())).collect();
        order.sort();
        let excess = self.rows.len().saturating_sub(PRUNE_TO);
        for (_, _, id) in order.into_iter().take(excess) {
            self.rows.remove(&id);
        }
    }

    /// Rows in display order: active first; executions newest first, agents by name.
    fn ordered(&self) -> Vec<&Row> {
        let mut rows: Vec<&Row> = self.rows.values().collect();
        match self.kind {
            Kind::Executions => rows.sort_by(|a, b| b.active.cmp(&a.active).then(b.offset.cmp(&a.offset))),
            Kind::Agents => rows.sort_by(|a, b| b.active.cmp(&a.active).then(a.id.cmp(&b.id))),
        }
        rows
    }

    fn cells(&self, row: &Row, now: DateTime<Utc>) -> Vec<String> {
        match self.kind {
            Kind::Executions => vec![
                row.id.clone(),
                row.status.clone(),
                String::new(), // the bar, drawn at its final width
                row.workflow.clone(),
                row.step.clone(),
                row.agent.clone(),
                age(row.updated, now),
                row.event.clone(),
            ],
            Kind::Agents => vec![
                row.id.clone(),
                row.status.clone(),
                format!("{:.0}%", row.cpu),
                format!("{:.0}%", row.memory),
                format!("{:.0}%", row.gpu),
                row.running.to_string(),
                format!("{} ago", age(row.updated, now)),
            ],
        }
    }

    /// The screen: a header, as many rows as fit under it in `height - 1` lines, and a footer with
    /// counts. No line is wider than `width` (colour codes aside).
    pub(crate) fn render(&self, width: usize, height: usize, now: DateTime<Utc>, colours: bool) -> Vec<String> {
        let columns: &[Column] = match self.kind {
            Kind::Executions => &EXECUTION_COLUMNS,
            Kind::Agents => &AGENT_COLUMNS,
        };
        let ordered = self.ordered();
        // Header, rows, footer, and one line spare so that the last newline never scrolls.
        let room = height.saturating_sub(3).max(1);
        let shown = &ordered[..ordered.len().min(room)];
        let cells: Vec<Vec<String>> = shown.iter().map(|row| self.cells(row, now)).collect();

        // Widths: what the content needs, within each column's bounds.
        let mut widths: Vec<usize> = columns
            .iter()
            .enumerate()
            .map(|(i, column)| {
                let content = cells.iter().map(|c| c[i].chars().count()).max().unwrap_or(0);
                let content = if column.header == "PROGRESS" { column.max } else { content };
                content.max(column.header.len()).clamp(column.min, column.max)
            })
            .collect();
        let mut visible: Vec<bool> = vec![true; columns.len()];
        let total = |widths: &[usize], visible: &[bool]| -> usize {
            let count = visible.iter().filter(|v| **v).count();
            widths.iter().zip(visible).filter(|(_, v)| **v).map(|(w, _)| *w).sum::<usize>() + count.saturating_sub(1)
        };
        // Shrink the widest first, toward their minimum; then drop columns by rank.
        while total(&widths, &visible) > width {
            let widest = (0..columns.len())
                .filter(|&i| visible[i] && widths[i] > columns[i].min)
                .max_by_key(|&i| widths[i] - columns[i].min);
            match widest {
                Some(i) => widths[i] -= 1,
                None => break,
            }
        }
        let mut ranks: Vec<usize> = (0..columns.len()).filter(|&i| columns[i].drop_rank > 0).collect();
        ranks.sort_by_key(|&i| columns[i].drop_rank);
        for i in ranks {
            if total(&widths, &visible) <= width {
                break;
            }
            visible[i] = false;
            // Give the room back to the columns that stay.
            for j in 0..columns.len() {
                widths[j] = if visible[j] { widths[j].max(columns[j].min) } else { widths[j] };
            }
        }
        // What is left over goes back to the shrunk columns, widest need first.
        loop {
            let spare = width.saturating_sub(total(&widths, &visible));
            let grow = (0..columns.len()).find(|&i| {
                visible[i] && widths[i] < columns[i].max && cells.iter().any(|c| c[i].chars().count() > widths[i])
            });
            match (spare, grow) {
                (1.., Some(i)) => widths[i] += 1,
                _ => break,
            }
        }

        let line = |values: Vec<String>, status: Option<&str>| -> String {
            let mut parts = Vec::new();
            for (i, value) in values.into_iter().enumerate() {
                if !visible[i] {
                    continue;
                }
                let text = fit(&value, widths[i], columns[i].keep_end);
                parts.push(match status {
                    Some(status) if colours && columns[i].header == "STATUS" => {
                        format!("{}{text}\x1b[0m", colour(status))
                    }
                    _ => text,
                });
            }
            let joined = parts.join(" ");
            // Still too wide (a terminal narrower than the minimums): cut, keeping the id.
            if !colours && joined.chars().count() > width {
                fit(&joined, width, false)
            } else {
                joined.trim_end().to_owned()
            }
        };
        let mut lines = Vec::with_capacity(shown.len() + 2);
        let header = line(columns.iter().map(|c| c.header.to_owned()).collect(), None);
        lines.push(if colours { format!("\x1b[1m{header}\x1b[0m") } else { header });
        for (row, mut values) in shown.iter().zip(cells) {
            if self.kind == Kind::Executions
                && let Some(i) = columns.iter().position(|c| c.header == "PROGRESS")
            {
                values[i] = bar(row.progress, widths[i]);
            }
            lines.push(line(values, Some(&row.status)));
        }
        lines.push(fit(&self.footer(shown.len()), width, false).trim_end().to_owned());
        lines
    }

    fn footer(&self, shown: usize) -> String {
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for row in self.rows.values() {
            match counts.iter_mut().find(|(status, _)| *status == row.status) {
                Some((_, count)) => *count += 1,
                None => counts.push((&row.status, 1)),
            }
        }
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let noun = match (self.kind, self.rows.len()) {
            (Kind::Executions, 1) => "execution",
            (Kind::Executions, _) => "executions",
            (Kind::Agents, 1) => "agent",
            (Kind::Agents, _) => "agents",
        };
        let counts: Vec<String> = counts.iter().map(|(status, count)| format!("{count} {status}")).collect();
        let mut footer = self.notice.as_ref().map(|notice| format!("[{notice}] ")).unwrap_or_default();
        footer.push_str(&format!("{} {noun}", self.rows.len()));
        if !counts.is_empty() {
            footer.push_str(&format!(" ({})", counts.join(", ")));
        }
        if shown < self.rows.len() {
            footer.push_str(&format!("; {} more below", self.rows.len() - shown));
        }
        footer.push_str(" · Ctrl-C to stop");
        footer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-01T21:50:00Z").expect("time").with_timezone(&Utc)
    }

    fn execution(id: &str, status: &str, version: u64, offset: u64) -> Value {
        json!({"type": "execution.progress", "offset": offset, "data": {"state": {
            "execution_id": id, "status": status, "version": version, "progress": 40,
            "workflow_id": "nightly-build", "current_step": "compile", "agent_id": "sim-1",
            "updated_at": "2026-12-01T21:49:48Z"}}})
    }

    #[test]
    fn active_and_newest_first_header_kept_and_height_respected() {
        let mut table = Table::new(Kind::Executions);
        for i in 0..30 {
            let status = if i % 3 == 0 { "completed" } else { "running" };
            assert!(table.apply(&execution(&format!("0193ab00-0000-7000-8000-0000000000{i:02}"), status, 1, 100 + i)));
        }
        let lines = table.render(200, 12, now(), false);
        assert_eq!(lines.len(), 11, "header + 9 rows + footer in 12 lines: {lines:#?}");
        assert!(lines[0].starts_with("ID") && lines[0].contains("LAST EVENT"), "{}", lines[0]);
        // Running ones first, newest (highest offset) first among them.
        assert!(lines[1].contains("000000000029") && lines[1].contains("running"), "{}", lines[1]);
        assert!(lines[2].contains("000000000028"), "{}", lines[2]);
        assert!(lines[1..10].iter().all(|l| l.contains("running")));
        assert!(lines[10].starts_with("30 executions (20 running, 10 completed); 21 more below"), "{}", lines[10]);
        assert!(lines[1].contains("[####------]  40%") && lines[1].contains("12s"), "{}", lines[1]);
        assert!(lines[1].ends_with(" progress"), "the last event, without the entity's prefix: {}", lines[1]);
    }

    #[test]
    fn columns_shrink_then_go_as_the_terminal_narrows() {
        let mut table = Table::new(Kind::Executions);
        table.apply(&execution("0193ab00-0000-7000-8000-00000000abcd", "running", 1, 5));
        for width in [200, 120, 100, 80, 60, 40, 30] {
            let lines = table.render(width, 24, now(), false);
            for line in &lines {
                assert!(line.chars().count() <= width, "{width}: {line:?} is {} wide", line.chars().count());
            }
            // The end of the id tells executions apart: it survives every width.
            assert!(lines[1].contains("abcd"), "{width}: {}", lines[1]);
            assert!(lines[1].contains("running"), "{width}: {}", lines[1]);
        }
        let wide = table.render(200, 24, now(), false);
        assert!(wide[1].contains("0193ab00-0000-7000-8000-00000000abcd") && wide[0].contains("AGENT"));
        let narrow = table.render(60, 24, now(), false);
        assert!(!narrow[0].contains("AGENT") && narrow[1].contains('…'), "{narrow:#?}");
    }

    #[test]
    fn versions_merge_and_memory_stays_bounded() {
        let mut table = Table::new(Kind::Executions);
        assert!(table.apply(&execution("e1", "running", 5, 50)));
        assert!(!table.apply(&execution("e1", "pending", 4, 40)), "an older version is ignored");
        let snapshot = json!({"type": "snapshot", "offset": 60, "data": {"execution_id": "e1", "status": "blocked", "version": 6}});
        assert!(table.apply(&snapshot));
        assert!(table.render(100, 10, now(), false)[1].contains("blocked"));
        for i in 0..(MAX_ROWS as u64 + 500) {
            table.apply(&execution(&format!("done-{i}"), "completed", 1, 100 + i));
        }
        assert!(table.len() <= MAX_ROWS, "{} rows kept", table.len());
        assert!(table.rows.contains_key("e1"), "active rows outlive ended ones");
    }

    #[test]
    fn agents_have_their_own_columns() {
        let mut table = Table::new(Kind::Agents);
        let agent = |id: &str, status: &str| {
            json!({"type": "agent.heartbeat", "offset": 3, "data": {"state": {"agent_id": id, "status": status,
                "version": 2, "cpu_percent": 41.6, "memory_percent": 12.0, "gpu_percent": 0.0,
                "running_execution_ids": ["e1", "e2"], "last_heartbeat_at": "2026-12-01T21:49:57Z"}}})
        };
        table.apply(&agent("sim-2", "offline"));
        table.apply(&agent("sim-1", "busy"));
        let lines = table.render(120, 24, now(), false);
        assert_eq!(lines[0], "AGENT    STATUS   CPU  MEM  GPU  RUNNING HEARTBEAT");
        assert_eq!(lines[1], "sim-1    busy     42%  12%  0%   2       3s ago");
        assert!(lines[2].starts_with("sim-2    offline"), "offline last: {}", lines[2]);
        assert!(lines[3].starts_with("2 agents (1 busy, 1 offline)"), "{}", lines[3]);
        table.set_notice(Some("stale: reconnecting".into()));
        assert!(table.render(120, 24, now(), false)[3].starts_with("[stale: reconnecting] 2 agents"));
        let narrow = table.render(30, 24, now(), false);
        assert!(narrow.iter().all(|l| l.chars().count() <= 30), "{narrow:#?}");
        assert!(!narrow[0].contains("GPU"), "{narrow:#?}");
    }
}
