//! Log lines into the LOGS stream: one `log.appended` event per chunk, numbered per execution
//! (1, 2, 3 … with no gap), ordered by the same compare-and-set on the subject's sequence as
//! execution events, so several replicas and several writers never interleave numbers.

use crate::commands::{answered_by, now};
use crate::error::{ApiError, ApiErrorKind};
use crate::series::FirstTry;
use crate::store::{EventStore, Read, StoreErrorKind};
use crate::validate;
use runcast_contract::v1::{AppendLogsRequest, Event, EventType, LogLine, LogStream, LogsAppended, event};
use runcast_contract::{EntityId, StreamKind, WireEnum};
use runcast_store::PgPool;

pub(crate) const MAX_LINE_BYTES: usize = 16 * 1024;
pub(crate) const MAX_LINES_PER_CHUNK: usize = 1000;
/// Kept well below NATS's default 1 MiB payload limit, encoding overhead included.
pub(crate) const MAX_CHUNK_BYTES: usize = 512 * 1024;

/// Checks one chunk of a log stream; returns the lines as they will be stored (numbers not yet set).
pub(crate) fn validate_chunk(request: &AppendLogsRequest) -> Result<Vec<LogLine>, ApiError> {
    if request.lines.is_empty() {
        return Err(ApiError::invalid("lines", "is empty: send at least one line per message"));
    }
    if request.lines.len() > MAX_LINES_PER_CHUNK {
        return Err(ApiError::invalid(
            "lines",
            format!("has {} lines; at most {MAX_LINES_PER_CHUNK} per message", request.lines.len()),
        ));
    }
    let total: usize = request.lines.iter().map(|line| line.text.len()).sum();
    if total > MAX_CHUNK_BYTES {
        return Err(ApiError::invalid(
            "lines",
            format!("hold {total} bytes; at most {MAX_CHUNK_BYTES} per message: split them"),
        ));
    }
    request
        .lines
        .iter()
        .enumerate()
        .map(|(index, line)| {
            validate::text(&format!("lines[{index}].text"), &line.text, MAX_LINE_BYTES)?;
            let stream = match LogStream::try_from(line.stream) {
                Ok(LogStream::Unspecified) => LogStream::Stdout,
                Ok(stream) => stream,
                Err(_) => {
                    return Err(ApiError::invalid(
                        &format!("lines[{index}].stream"),
                        format!("must be one of {}", LogStream::expected()),
                    ));
                }
            };
            Ok(LogLine { line_number: 0, text: line.text.clone(), stream: stream.into() })
        })
        .collect()
}

/// The execution a log upload writes to, resolved once per upload.
#[derive(Debug, Clone)]
pub(crate) struct LogTarget {
    pub execution_id: EntityId,
    workflow_id: String,
    /// The history, when some of the execution's log events may have aged out of the stream.
    history: Option<PgPool>,
}

impl LogTarget {
    /// The execution must exist (stream or read model).
    pub(crate) async fn resolve(
        executions: &crate::commands::Executions,
        tenant: &EntityId,
        execution_id: EntityId,
    ) -> Result<Self, ApiError> {
        let execution = executions.get(tenant, &execution_id).await?;
        // Younger than the stream's age: all its log events are still in the stream.
        let history = executions.read_model().filter(|_| executions.older_than_the_stream(&execution)).cloned();
        Ok(Self { execution_id, workflow_id: execution.workflow_id, history })
    }

    /// Appends one chunk of the upload; returns the number of the last line written.
    pub(crate) async fn append(
        &self,
        store: &EventStore,
        tenant: &EntityId,
        chunk: &AppendLogsRequest,
    ) -> Result<u64, ApiError> {
        let lines = validate_chunk(chunk)?;
        let request_id = validate::optional_id("request_id", &chunk.request_id)?;
        let chunk = Chunk { lines, request_id };
        append(store, self.history.as_ref(), tenant, &self.execution_id, &self.workflow_id, chunk).await
    }
}

/// Where line numbers continue once the stream has aged an execution's log events out: the last
/// line number and log-event version the history holds (both 0 when it holds none).
async fn archived_position(pool: &PgPool, tenant: &EntityId, execution_id: &EntityId) -> Result<(u64, u64), ApiError> {
    // No schema yet (no persister has run) reads as (0, 0).
    let query = runcast_store::history::log_position(pool, tenant, execution_id);
    let unavailable = |cause: &dyn std::fmt::Display| {
        ApiError::unavailable(format!(
            "the stream no longer holds the logs of execution {execution_id} and the history (PostgreSQL) cannot \
             be read to continue their numbering ({cause}): retry when PostgreSQL is back"
        ))
    };
    match tokio::time::timeout(std::time::Duration::from_secs(2), query).await {
        Ok(Ok(position)) => Ok(position),
        Ok(Err(err)) => Err(unavailable(&err)),
        Err(_) => Err(unavailable(&"no answer within 2s")),
    }
}

/// One validated message of an upload.
pub(crate) struct Chunk {
    pub lines: Vec<LogLine>,
    /// The caller's id for these lines: a retry within the duplicate window appends them once.
    pub request_id: Option<EntityId>,
}

/// The number of the last line a `log.appended` event holds (0: none).
fn last_line_of(event: &Event) -> u64 {
    match &event.payload {
        Some(event::Payload::LogsAppended(logs)) => logs.lines.last().map_or(0, |line| line.line_number),
        _ => 0,
    }
}

/// Appends one validated chunk; returns the number of the last line written. `history`: the
/// PostgreSQL history, consulted when the execution is older than the stream's age and its log
/// subject is empty (its earlier lines aged out), so numbering continues instead of restarting.
pub(crate) async fn append(
    store: &EventStore,
    history: Option<&PgPool>,
    tenant: &EntityId,
    execution_id: &EntityId,
    workflow_id: &str,
    chunk: Chunk,
) -> Result<u64, ApiError> {
    let Chunk { lines, request_id } = chunk;
    let request_id = request_id.map(|id| id.to_string()).unwrap_or_default();
    let fingerprint = (!request_id.is_empty()).then(|| crate::domain::fingerprint::of_log_lines(&lines));
    for attempt in 0..crate::commands::MAX_ATTEMPTS {
        // A stale first read fails the guarded append; retries read the leader.
        let read = if attempt == 0 { Read::Remembered } else { Read::Leader };
        let last = store.last(StreamKind::Logs, tenant, execution_id, read).await?;
        // A retry whose first try is the last chunk: already appended.
        if let Some(stored) = &last
            && let Some(fingerprint) = &fingerprint
            && stored.event.request_id == request_id
        {
            answered_by(&stored.event, stored.fingerprint.as_deref(), &request_id, fingerprint)?;
            FirstTry::Last.count();
            return Ok(last_line_of(&stored.event));
        }
        let (last_line, version, expected) = match (&last, history) {
            (Some(stored), _) => (last_line_of(&stored.event), stored.event.version, stored.sequence),
            (None, Some(pool)) => {
                let (line, version) = archived_position(pool, tenant, execution_id).await?;
                (line, version, 0)
            }
            (None, None) => (0, 0, 0),
        };
        let numbered: Vec<LogLine> = lines
            .iter()
            .zip(last_line + 1..)
            .map(|(line, number)| LogLine { line_number: number, ..line.clone() })
            .collect();
        let last_number = last_line + numbered.len() as u64;
        let event = Event {
            event_id: uuid::Uuid::now_v7().to_string(),
            tenant_id: tenant.to_string(),
            execution_id: execution_id.to_string(),
            workflow_id: workflow_id.to_owned(),
            version: version + 1,
            occurred_at: Some(now()),
            r#type: EventType::LogAppended.into(),
            payload: Some(event::Payload::LogsAppended(LogsAppended { lines: numbered })),
            request_id: request_id.clone(),
            ..Default::default()
        };
        match store.append(StreamKind::Logs, tenant, execution_id, event, expected, fingerprint.clone()).await {
            // A retry whose first try was followed by other lines: JetStream stored it once.
            Ok(appended) if appended.duplicate => {
                let first = store.earlier_try(StreamKind::Logs, appended.sequence).await?;
                if let Some(fingerprint) = &fingerprint {
                    answered_by(&first.event, first.fingerprint.as_deref(), &request_id, fingerprint)?;
                }
                FirstTry::Duplicate.count();
                return Ok(last_line_of(&first.event));
            }
            Ok(_) => return Ok(last_number),
            Err(err) if err.kind() == StoreErrorKind::Conflict => continue,
            Err(err) => return Err(err.into()),
        }
    }
    Err(ApiError::new(
        ApiErrorKind::Aborted,
        format!("too many concurrent log writers on execution {execution_id}: retry"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use runcast_contract::v1::LogLineInput;

    fn chunk(lines: Vec<LogLineInput>) -> AppendLogsRequest {
        AppendLogsRequest { execution_id: "e".into(), lines, ..Default::default() }
    }

    fn line(text: &str) -> LogLineInput {
        LogLineInput { text: text.into(), stream: 0 }
    }

    #[test]
    fn chunks_are_bounded_and_errors_name_the_line() {
        assert!(validate_chunk(&chunk(vec![])).expect_err("empty").to_string().starts_with("lines is empty"));
        let long = "x".repeat(MAX_LINE_BYTES + 1);
        let err = validate_chunk(&chunk(vec![line("ok"), line(&long)])).expect_err("long line");
        assert!(err.to_string().starts_with("lines[1].text is 16385 bytes"), "{err}");
        let many = vec![line("x"); MAX_LINES_PER_CHUNK + 1];
        assert!(validate_chunk(&chunk(many)).expect_err("too many").to_string().contains("at most 1000"));
        let bad_stream = LogLineInput { text: "x".into(), stream: 9 };
        assert!(validate_chunk(&chunk(vec![bad_stream])).expect_err("stream").to_string().contains("stdout, stderr"));
    }

    #[test]
    fn unspecified_streams_default_to_stdout() {
        let lines = validate_chunk(&chunk(vec![line("hello")])).expect("valid");
        assert_eq!(lines[0].stream, i32::from(LogStream::Stdout));
    }
}
