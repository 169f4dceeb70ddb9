//! The writes: one transaction per batch, one bulk `INSERT … SELECT FROM UNNEST(…)` per table
//! (unlike COPY it takes `ON CONFLICT`, which is what makes every write idempotent; a binary COPY
//! of the history costs PostgreSQL less CPU per row but drained no faster, docs/benchmarks.md):
//!
//! - `events`: a plain `INSERT` first, and only when it meets a row already there (a redelivery) the
//!   whole batch again with `ON CONFLICT DO NOTHING`: the conflict check costs every row a second
//!   descent of the key and a speculative insertion, and almost no batch holds a repeat;
//! - `log_lines`, `dead_letters`: `ON CONFLICT DO NOTHING` (a redelivery adds nothing);
//! - `executions`, `agents`: upserts that only move forward by version; `approvals`: rewritten
//!   with their execution, only when its list of approvals changed;
//! - `applied_offsets`: `GREATEST(old, new)`, so it never moves back either.
//!
//! Arrays of borrowed values are bound with `as _`: the macros still check the SQL and the
//! result, but would want owned `Vec<String>`s, one allocation per value, for the parameters.

use crate::error::{Error, is_unique_violation};
use crate::rows::{Batch, ExecutionRow};
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use std::collections::HashMap;

/// A message that broke the contract, kept with everything needed to look at it again.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub stream: &'static str,
    pub subject: String,
    pub stream_offset: i64,
    pub raw: Vec<u8>,
    pub headers: serde_json::Value,
    pub error: String,
}

/// How read-model rows meet existing ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only a higher version replaces a row.
    Live,
    /// A rebuild also rewrites rows at the same version (repairing them), never older ones.
    Rebuild,
}

impl Mode {
    fn rewrite_equal(self) -> bool {
        self == Self::Rebuild
    }
}

/// Writes one batch in one transaction; `applied`: the stream and its low watermark to record.
pub async fn write_batch(
    pool: &PgPool,
    batch: &Batch<'_>,
    dead_letters: &[DeadLetter],
    applied: Option<(&str, u64)>,
) -> Result<(), Error> {
    let begin = || async { pool.begin().await.map_err(|err| Error::database("cannot begin a transaction", err)) };
    let mut tx = begin().await?;
    if let HistoryInsert::MetStoredEvent = insert_history(&mut tx, batch, Repeats::Refused).await? {
        tx.rollback().await.map_err(|err| Error::database("cannot roll back a transaction", err))?;
        tx = begin().await?;
        insert_history(&mut tx, batch, Repeats::Skipped).await?;
    }
    write_read_model(&mut tx, batch, Mode::Live).await?;
    insert_log_lines(&mut tx, batch).await?;
    insert_dead_letters(&mut tx, dead_letters).await?;
    if let Some((stream, offset)) = applied {
        advance_applied_offset(&mut *tx, stream, offset).await?;
    }
    tx.commit().await.map_err(|err| Error::database("cannot commit the batch", err))
}

/// One page of a rebuild: the read model and the log lines of `batch` (whose history is already
/// stored), rows at the same version rewritten.
pub async fn write_rebuild_page(pool: &PgPool, batch: &Batch<'_>) -> Result<(), Error> {
    let mut tx = pool.begin().await.map_err(|err| Error::database("cannot begin a transaction", err))?;
    write_read_model(&mut tx, batch, Mode::Rebuild).await?;
    insert_log_lines(&mut tx, batch).await?;
    tx.commit().await.map_err(|err| Error::database("cannot commit a rebuild page", err))
}

/// Deletes the whole read model (executions, approvals, agents), before a rebuild from scratch.
pub async fn reset_read_model(pool: &PgPool) -> Result<(), Error> {
    sqlx::query!("TRUNCATE executions, approvals, agents")
        .execute(pool)
        .await
        .map_err(|err| Error::database("cannot reset the read model", err))?;
    Ok(())
}

/// What an insert into the history does with an event it already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeats {
    /// Fails the statement (and its transaction): the fast path, no conflict check per row.
    Refused,
    /// Skips it (`ON CONFLICT DO NOTHING`).
    Skipped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HistoryInsert {
    Inserted,
    /// `Repeats::Refused` met an event already stored: the transaction is aborted.
    MetStoredEvent,
}

async fn insert_history(
    tx: &mut Transaction<'_, Postgres>,
    batch: &Batch<'_>,
    repeats: Repeats,
) -> Result<HistoryInsert, Error> {
    let rows = batch.history;
    if rows.is_empty() {
        return Ok(HistoryInsert::Inserted);
    }
    let mut occurred_at = Vec::with_capacity(rows.len());
    let mut event_id = Vec::with_capacity(rows.len());
    let mut stream = Vec::with_capacity(rows.len());
    let mut offset = Vec::with_capacity(rows.len());
    let mut tenant = Vec::with_capacity(rows.len());
    let mut execution = Vec::with_capacity(rows.len());
    let mut agent = Vec::with_capacity(rows.len());
    let mut workflow = Vec::with_capacity(rows.len());
    let mut event_type = Vec::with_capacity(rows.len());
    let mut version = Vec::with_capacity(rows.len());
    let mut body = Vec::with_capacity(rows.len());
    for row in rows {
        occurred_at.push(row.occurred_at);
        event_id.push(row.event_id);
        stream.push(row.stream);
        offset.push(row.stream_offset);
        tenant.push(row.tenant_id.as_str());
        execution.push(row.execution_id.as_str());
        agent.push(row.agent_id.as_str());
        workflow.push(row.workflow_id.as_str());
        event_type.push(row.event_type);
        version.push(row.version);
        body.push(row.body.as_slice());
    }
    // One statement text per variant, both checked at compile time.
    macro_rules! insert_events {
        ($on_conflict:literal) => {
            sqlx::query!(
                "INSERT INTO events (occurred_at, event_id, stream, stream_offset, tenant_id, execution_id,
                                     agent_id, workflow_id, event_type, version, body)
                 SELECT * FROM UNNEST($1::timestamptz[], $2::uuid[], $3::text[], $4::int8[], $5::text[],
                                      $6::text[], $7::text[], $8::text[], $9::text[], $10::int8[], $11::bytea[])"
                    + $on_conflict,
                &occurred_at,
                &event_id,
                &stream as _,
                &offset,
                &tenant as _,
                &execution as _,
                &agent as _,
                &workflow as _,
                &event_type as _,
                &version,
                &body as _,
            )
        };
    }
    let inserted = match repeats {
        Repeats::Refused => insert_events!("").execute(&mut **tx).await,
        Repeats::Skipped => insert_events!(" ON CONFLICT DO NOTHING").execute(&mut **tx).await,
    };
    match inserted {
        Ok(_) => Ok(HistoryInsert::Inserted),
        Err(err) if repeats == Repeats::Refused && is_unique_violation(&err) => Ok(HistoryInsert::MetStoredEvent),
        Err(err) => Err(Error::database("cannot insert history rows", err)),
    }
}

/// Upserts executions (with their approvals) and agents.
async fn write_read_model(tx: &mut Transaction<'_, Postgres>, batch: &Batch<'_>, mode: Mode) -> Result<(), Error> {
    let approvals_changed = upsert_executions(tx, &batch.executions, mode).await?;
    record_idempotency_keys(tx, batch).await?;
    write_approvals(tx, &approvals_changed).await?;
    upsert_agents(tx, batch, mode).await
}

/// Upserts executions; returns those whose approval rows must be written: the executions this
/// batch moved forward whose approvals changed (or, in a rebuild, every one it wrote).
///
/// `RETURNING old.…` (PostgreSQL 18) says what the row held before, at no extra lookup. Approval
/// rows are written in the same transaction, under the execution row's lock, so writers of the
/// same execution (replicas, redeliveries) apply them in version order without a version of
/// their own.
async fn upsert_executions<'r>(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[&'r ExecutionRow],
    mode: Mode,
) -> Result<Vec<&'r ExecutionRow>, Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let n = rows.len();
    let (mut tenant, mut execution, mut workflow, mut status) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut version, mut offset, mut progress, mut current_step) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut approvals, mut labels) = (JsonArray::new(), JsonArray::new());
    let mut error = Vec::with_capacity(n);
    let (mut key, mut state, mut created, mut updated) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut started, mut finished) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut agent, mut heartbeat_deadline) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for row in rows {
        tenant.push(row.tenant_id.as_str());
        execution.push(row.execution_id.as_str());
        workflow.push(row.workflow_id.as_str());
        status.push(row.status);
        version.push(row.version);
        offset.push(row.last_offset);
        progress.push(row.progress);
        current_step.push(row.current_step.as_str());
        approvals.push(&row.approvals);
        labels.push(&row.labels);
        error.push(row.error.as_str());
        key.push(row.idempotency_key.as_deref());
        state.push(row.state.as_slice());
        created.push(row.created_at);
        updated.push(row.updated_at);
        started.push(row.started_at);
        finished.push(row.finished_at);
        agent.push(row.agent_id.as_str());
        heartbeat_deadline.push(row.heartbeat_deadline);
    }
    let (approvals, labels) = (approvals.finish(), labels.finish());
    let written = sqlx::query!(
        r#"INSERT INTO executions (tenant_id, execution_id, workflow_id, status, version, last_offset,
                                 progress, current_step, approvals, labels, error,
                                 idempotency_key, state, created_at, updated_at, started_at, finished_at,
                                 agent_id, heartbeat_deadline)
         SELECT * FROM ROWS FROM (
             unnest($1::text[]), unnest($2::text[]), unnest($3::text[]), unnest($4::text[]),
             unnest($5::int8[]), unnest($6::int8[]), unnest($7::int2[]), unnest($8::text[]),
             jsonb_array_elements($9::text::jsonb), jsonb_array_elements($10::text::jsonb),
             unnest($11::text[]),
             unnest($12::text[]), unnest($13::bytea[]), unnest($14::timestamptz[]), unnest($15::timestamptz[]),
             unnest($16::timestamptz[]), unnest($17::timestamptz[]), unnest($19::text[]),
             unnest($20::timestamptz[]))
         ON CONFLICT (tenant_id, execution_id) DO UPDATE SET
             workflow_id = EXCLUDED.workflow_id, status = EXCLUDED.status, version = EXCLUDED.version,
             last_offset = EXCLUDED.last_offset, progress = EXCLUDED.progress,
             current_step = EXCLUDED.current_step,
             approvals = EXCLUDED.approvals, labels = EXCLUDED.labels, error = EXCLUDED.error,
             idempotency_key = COALESCE(executions.idempotency_key, EXCLUDED.idempotency_key),
             state = EXCLUDED.state, created_at = EXCLUDED.created_at,
             updated_at = EXCLUDED.updated_at, started_at = EXCLUDED.started_at,
             finished_at = EXCLUDED.finished_at, agent_id = EXCLUDED.agent_id,
             heartbeat_deadline = EXCLUDED.heartbeat_deadline
         WHERE executions.version < EXCLUDED.version
            OR ($18 AND executions.version = EXCLUDED.version)
         RETURNING tenant_id, execution_id,
                   old.approvals IS DISTINCT FROM new.approvals AS "approvals_changed!""#,
        &tenant as _,
        &execution as _,
        &workflow as _,
        &status as _,
        &version,
        &offset,
        &progress,
        &current_step as _,
        approvals,
        labels,
        &error as _,
        &key as _,
        &state as _,
        &created,
        &updated,
        &started as _,
        &finished as _,
        mode.rewrite_equal(),
        &agent as _,
        &heartbeat_deadline as _,
    )
    .fetch_all(&mut **tx)
    .await
    .map_err(|err| Error::database("cannot upsert executions", err))?;
    let by_key: HashMap<(&str, &str), &'r ExecutionRow> =
        rows.iter().map(|&row| ((row.tenant_id.as_str(), row.execution_id.as_str()), row)).collect();
    // A rebuild repairs approval rows even where the execution's own copy did not change.
    Ok(written
        .iter()
        .filter(|row| row.approvals_changed || mode == Mode::Rebuild)
        .filter_map(|row| by_key.get(&(row.tenant_id.as_str(), row.execution_id.as_str())).copied())
        .collect())
}

/// The JSON documents of one column of a batch, as one JSON array: PostgreSQL parses one document
/// per batch and hands out its elements, instead of parsing a thousand small ones (per document,
/// `jsonb_in`'s setup outweighs the parsing: it was a tenth of PostgreSQL's CPU in the drain).
struct JsonArray(String);

impl JsonArray {
    fn new() -> Self {
        Self(String::from("["))
    }

    /// Appends one document: one JSON value, as the fold serialized it (anything else would shift
    /// the elements against the other columns; PostgreSQL then fails the batch on a missing one).
    fn push(&mut self, document: &str) {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        self.0.push_str(document);
    }

    fn finish(mut self) -> String {
        self.0.push(']');
        self.0
    }
}

/// The created event may arrive after a later version of its execution (redelivery, another
/// replica): the version guard then skipped the row, but the key still belongs on it.
async fn record_idempotency_keys(tx: &mut Transaction<'_, Postgres>, batch: &Batch<'_>) -> Result<(), Error> {
    let (mut tenant, mut execution, mut key) = (Vec::new(), Vec::new(), Vec::new());
    for &(t, e, k) in &batch.idempotency_keys {
        tenant.push(t);
        execution.push(e);
        key.push(k);
    }
    if key.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        "UPDATE executions e SET idempotency_key = u.key
         FROM UNNEST($1::text[], $2::text[], $3::text[]) AS u(tenant_id, execution_id, key)
         WHERE e.tenant_id = u.tenant_id AND e.execution_id = u.execution_id
           AND e.idempotency_key IS NULL",
        &tenant as _,
        &execution as _,
        &key as _,
    )
    .execute(&mut **tx)
    .await
    .map_err(|err| Error::database("cannot record idempotency keys", err))?;
    Ok(())
}

/// Makes the approval rows of `executions` (whose state this transaction just wrote) those their
/// state lists: upserts the listed ones, deletes the others.
async fn write_approvals(tx: &mut Transaction<'_, Postgres>, executions: &[&ExecutionRow]) -> Result<(), Error> {
    if executions.is_empty() {
        return Ok(());
    }
    let (mut tenant, mut execution, mut approval, mut status, mut reason) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut deadline, mut requested, mut resolved, mut comment) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for row in executions {
        for a in &row.approval_rows {
            tenant.push(row.tenant_id.as_str());
            execution.push(row.execution_id.as_str());
            approval.push(a.approval_id.as_str());
            status.push(a.status);
            reason.push(a.reason.as_str());
            deadline.push(a.deadline);
            requested.push(a.requested_at);
            resolved.push(a.resolved_at);
            comment.push(a.comment.as_str());
        }
    }
    let tenants: Vec<&str> = executions.iter().map(|r| r.tenant_id.as_str()).collect();
    let ids: Vec<&str> = executions.iter().map(|r| r.execution_id.as_str()).collect();
    sqlx::query!(
        "DELETE FROM approvals a
         USING UNNEST($1::text[], $2::text[]) AS u(tenant_id, execution_id)
         WHERE a.tenant_id = u.tenant_id AND a.execution_id = u.execution_id
           AND (a.tenant_id, a.execution_id, a.approval_id) NOT IN
               (SELECT * FROM UNNEST($3::text[], $4::text[], $5::text[]))",
        &tenants as _,
        &ids as _,
        &tenant as _,
        &execution as _,
        &approval as _,
    )
    .execute(&mut **tx)
    .await
    .map_err(|err| Error::database("cannot delete approvals no longer listed", err))?;
    if approval.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        "INSERT INTO approvals (tenant_id, execution_id, approval_id, status, reason, deadline,
                                requested_at, resolved_at, comment)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                              $6::timestamptz[], $7::timestamptz[], $8::timestamptz[], $9::text[])
         ON CONFLICT (tenant_id, execution_id, approval_id) DO UPDATE SET
             status = EXCLUDED.status, reason = EXCLUDED.reason, deadline = EXCLUDED.deadline,
             requested_at = EXCLUDED.requested_at, resolved_at = EXCLUDED.resolved_at,
             comment = EXCLUDED.comment",
        &tenant as _,
        &execution as _,
        &approval as _,
        &status as _,
        &reason as _,
        &deadline as _,
        &requested,
        &resolved as _,
        &comment as _,
    )
    .execute(&mut **tx)
    .await
    .map_err(|err| Error::database("cannot upsert approvals", err))?;
    Ok(())
}

async fn upsert_agents(tx: &mut Transaction<'_, Postgres>, batch: &Batch<'_>, mode: Mode) -> Result<(), Error> {
    let rows = &batch.agents;
    if rows.is_empty() {
        return Ok(());
    }
    let (mut tenant, mut agent, mut status, mut cpu, mut memory, mut gpu, mut running) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut labels, mut timeout, mut version, mut offset, mut state, mut heartbeat, mut since) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for row in rows {
        tenant.push(row.tenant_id.as_str());
        agent.push(row.agent_id.as_str());
        status.push(row.status);
        cpu.push(row.cpu_percent);
        memory.push(row.memory_percent);
        gpu.push(row.gpu_percent);
        // text[][] cannot hold rows of different lengths: ship each list as JSON.
        running.push(row.running_execution_ids.as_str());
        labels.push(row.labels.as_str());
        timeout.push(row.timeout_seconds);
        version.push(row.version);
        offset.push(row.last_offset);
        state.push(row.state.as_slice());
        heartbeat.push(row.last_heartbeat_at);
        since.push(row.online_since);
    }
    sqlx::query!(
        "INSERT INTO agents (tenant_id, agent_id, status, cpu_percent, memory_percent, gpu_percent,
                             running_execution_ids, labels, timeout_seconds, version, last_offset,
                             state, last_heartbeat_at, online_since)
         SELECT t, a, s, c, m, g, ARRAY(SELECT jsonb_array_elements_text(r)), l, ts, v, o, st, h, os
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::float8[], $5::float8[], $6::float8[],
                     $7::text[]::jsonb[], $8::text[]::jsonb[], $9::int4[], $10::int8[], $11::int8[], $12::bytea[],
                     $13::timestamptz[], $14::timestamptz[])
              AS u(t, a, s, c, m, g, r, l, ts, v, o, st, h, os)
         ON CONFLICT (tenant_id, agent_id) DO UPDATE SET
             status = EXCLUDED.status, cpu_percent = EXCLUDED.cpu_percent,
             memory_percent = EXCLUDED.memory_percent, gpu_percent = EXCLUDED.gpu_percent,
             running_execution_ids = EXCLUDED.running_execution_ids, labels = EXCLUDED.labels,
             timeout_seconds = EXCLUDED.timeout_seconds, version = EXCLUDED.version,
             last_offset = EXCLUDED.last_offset, state = EXCLUDED.state,
             last_heartbeat_at = EXCLUDED.last_heartbeat_at, online_since = EXCLUDED.online_since
         WHERE agents.version < EXCLUDED.version
            OR ($15 AND agents.version = EXCLUDED.version)",
        &tenant as _,
        &agent as _,
        &status as _,
        &cpu,
        &memory,
        &gpu,
        &running as _,
        &labels as _,
        &timeout,
        &version,
        &offset,
        &state as _,
        &heartbeat,
        &since as _,
        mode.rewrite_equal(),
    )
    .execute(&mut **tx)
    .await
    .map_err(|err| Error::database("cannot upsert agents", err))?;
    Ok(())
}

async fn insert_log_lines(tx: &mut Transaction<'_, Postgres>, batch: &Batch<'_>) -> Result<(), Error> {
    let rows = batch.log_lines;
    if rows.is_empty() {
        return Ok(());
    }
    let mut occurred_at: Vec<DateTime<Utc>> = Vec::with_capacity(rows.len());
    let (mut tenant, mut execution, mut line, mut offset, mut stream, mut text) = (
        Vec::with_capacity(rows.len()),
        Vec::with_capacity(rows.len()),
        Vec::with_capacity(rows.len()),
        Vec::with_capacity(rows.len()),
        Vec::with_capacity(rows.len()),
        Vec::with_capacity(rows.len()),
    );
    for row in rows {
        occurred_at.push(row.occurred_at);
        tenant.push(row.tenant_id.as_str());
        execution.push(row.execution_id.as_str());
        line.push(row.line_number);
        offset.push(row.stream_offset);
        stream.push(row.log_stream);
        text.push(row.text.as_str());
    }
    sqlx::query!(
        "INSERT INTO log_lines (occurred_at, tenant_id, execution_id, line_number, stream_offset,
                                log_stream, text)
         SELECT * FROM UNNEST($1::timestamptz[], $2::text[], $3::text[], $4::int8[], $5::int8[],
                              $6::text[], $7::text[])
         ON CONFLICT DO NOTHING",
        &occurred_at,
        &tenant as _,
        &execution as _,
        &line,
        &offset,
        &stream as _,
        &text as _,
    )
    .execute(&mut **tx)
    .await
    .map_err(|err| Error::database("cannot insert log lines", err))?;
    Ok(())
}

async fn insert_dead_letters(tx: &mut Transaction<'_, Postgres>, rows: &[DeadLetter]) -> Result<(), Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let stream: Vec<&str> = rows.iter().map(|r| r.stream).collect();
    let subject: Vec<&str> = rows.iter().map(|r| r.subject.as_str()).collect();
    let offset: Vec<i64> = rows.iter().map(|r| r.stream_offset).collect();
    let raw: Vec<&[u8]> = rows.iter().map(|r| r.raw.as_slice()).collect();
    let headers: Vec<&serde_json::Value> = rows.iter().map(|r| &r.headers).collect();
    // The reason goes into a text column: NUL bytes would make PostgreSQL refuse it.
    let error: Vec<String> = rows.iter().map(|r| r.error.replace('\0', "\\0")).collect();
    sqlx::query!(
        "INSERT INTO dead_letters (stream, subject, stream_offset, raw, headers, error)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::bytea[], $5::jsonb[], $6::text[])
         ON CONFLICT (stream, stream_offset) DO NOTHING",
        &stream as _,
        &subject as _,
        &offset,
        &raw as _,
        &headers as _,
        &error,
    )
    .execute(&mut **tx)
    .await
    .map_err(|err| Error::database("cannot insert dead letters", err))?;
    Ok(())
}

/// Moves the stream's low watermark forward (never back).
pub async fn advance_applied_offset<'c, E>(executor: E, stream: &str, offset: u64) -> Result<(), Error>
where
    E: sqlx::Executor<'c, Database = Postgres>,
{
    let offset = i64::try_from(offset).unwrap_or(i64::MAX);
    sqlx::query!(
        "INSERT INTO applied_offsets (stream, applied_offset, updated_at) VALUES ($1, $2, now())
         ON CONFLICT (stream) DO UPDATE
         SET applied_offset = GREATEST(applied_offsets.applied_offset, EXCLUDED.applied_offset),
             updated_at = now()
         WHERE applied_offsets.applied_offset < EXCLUDED.applied_offset",
        stream,
        offset,
    )
    .execute(executor)
    .await
    .map_err(|err| Error::database("cannot record the applied offset", err))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::JsonArray;

    #[test]
    fn a_json_array_holds_each_document_as_one_element_in_order() {
        let documents = [r#"{"a":[1,2],"b":"x,y"}"#, "[]", r#""text""#, "{}"];
        let mut array = JsonArray::new();
        for document in documents {
            array.push(document);
        }
        let parsed: Vec<serde_json::Value> = serde_json::from_str(&array.finish()).expect("a JSON array");
        let expected: Vec<serde_json::Value> =
            documents.iter().map(|document| serde_json::from_str(document).expect("a JSON value")).collect();
        assert_eq!(parsed, expected);
    }

    #[test]
    fn a_json_array_of_no_documents_is_empty() {
        assert_eq!(JsonArray::new().finish(), "[]");
    }
}
