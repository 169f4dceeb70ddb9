//! Log lines into the LOGS stream: one `log.appended` event per chunk, numbered per execution
//! (1, 2, 3 … with no gap), ordered by the same compare-and-set on the subject's sequence as
//! execution events, so several replicas and several writers never interleave numbers.

use crate::commands::now;
use crate::error::{ApiError, ApiErrorKind};
use crate::store::{EventStore, StoreErrorKind};
use crate::validate;
use runcast_contract::v1::{AppendLogsRequest, Event, EventType, LogLine, LogStream, LogsAppended, event};
use runcast_contract::{EntityId, StreamKind, WireEnum};

pub const MAX_LINE_BYTES: usize = 16 * 1024;
pub const MAX_LINES_PER_CHUNK: usize = 1000;
/// Kept well below NATS's default 1 MiB payload limit, encoding overhead included.
pub const MAX_CHUNK_BYTES: usize = 512 * 1024;

/// Checks one chunk of a log stream; returns the lines as they will be stored (numbers not yet set).
pub fn validate_chunk(request: &AppendLogsRequest) -> Result<Vec<LogLine>, ApiError> {
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

/// Appends one validated chunk; returns the number of the last line written.
pub async fn append(
    store: &EventStore,
    tenant: &EntityId,
    execution_id: &EntityId,
    workflow_id: &str,
    lines: Vec<LogLine>,
) -> Result<u64, ApiError> {
    for _ in 0..crate::commands::MAX_ATTEMPTS {
        let last = store.last(StreamKind::Logs, tenant, execution_id).await?;
        let (last_line, version, expected) = match &last {
            Some(stored) => {
                let last_line = match &stored.event.payload {
                    Some(event::Payload::LogsAppended(logs)) => logs.lines.last().map_or(0, |line| line.line_number),
                    _ => 0,
                };
                (last_line, stored.event.version, stored.sequence)
            }
            None => (0, 0, 0),
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
            ..Default::default()
        };
        match store.append(StreamKind::Logs, tenant, execution_id, &event, expected).await {
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
        AppendLogsRequest { execution_id: "e".into(), lines }
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
