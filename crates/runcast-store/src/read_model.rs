//! Reads of the read model (`executions`, `agents`, `applied_offsets`): lists with keyset
//! pagination and `as_of_offset`, and single entities once the stream no longer holds them.

use crate::cursor::{Cursor, Page, paginate};
use crate::error::{Error, ErrorKind, is_undefined_table};
use chrono::{DateTime, Utc};
use prost::Message as _;
use runcast_contract::v1::{Agent, AgentStatus, Execution, ExecutionStatus};
use runcast_contract::{EntityId, StreamKind, WireEnum};
use sqlx::PgPool;
use std::collections::HashMap;

/// The low watermark of `stream` (DESIGN §3, `as_of_offset`): every event at or below this offset
/// is reflected in the history and read model. 0 when nothing is applied yet.
///
/// It is the persister's durable consumer's ack floor as last recorded by a replica: correct with
/// any number of replicas, because a message is acked only after the transaction that stored it
/// committed. It may trail the newest row by up to a second or a batch; that is the safe direction
/// (a client replays a few events and merges them by `version`). Lists of executions and the
/// history use `StreamKind::Executions`. Read it before the rows, so the rows are at least that
/// fresh.
pub async fn as_of_offset(pool: &PgPool, stream: StreamKind) -> Result<u64, Error> {
    let offset =
        sqlx::query_scalar!("SELECT applied_offset FROM applied_offsets WHERE stream = $1", stream.base_name())
            .fetch_optional(pool)
            .await
            .map_err(|err| Error::database("cannot read the applied offset", err))?;
    Ok(offset.map_or(0, |offset| u64::try_from(offset).unwrap_or(0)))
}

/// Which executions a list shows, and from where.
#[derive(Debug, Clone, Default)]
pub struct ExecutionQuery<'a> {
    pub workflow_id: Option<&'a EntityId>,
    /// Any of these (all when empty).
    pub statuses: &'a [ExecutionStatus],
    pub page_size: u32,
    pub after: Option<&'a Cursor>,
}

/// The tenant's executions, newest first.
pub async fn list_executions(
    pool: &PgPool,
    tenant: &EntityId,
    query: &ExecutionQuery<'_>,
) -> Result<Page<Execution>, Error> {
    let as_of_offset = as_of_offset(pool, StreamKind::Executions).await?;
    let statuses: Vec<String> = query.statuses.iter().map(|s| s.wire_name().to_owned()).collect();
    let rows = sqlx::query!(
        "SELECT state, last_offset, created_at, execution_id FROM executions
         WHERE tenant_id = $1
           AND ($2::text IS NULL OR workflow_id = $2)
           AND (cardinality($3::text[]) = 0 OR status = ANY($3))
           AND ($4::timestamptz IS NULL OR (created_at, execution_id) < ($4, $5))
         ORDER BY created_at DESC, execution_id DESC
         LIMIT $6",
        tenant.as_str(),
        query.workflow_id.map(EntityId::as_str),
        &statuses,
        query.after.map(|c| c.at),
        query.after.map(|c| c.id.as_str()),
        i64::from(query.page_size) + 1,
    )
    .fetch_all(pool)
    .await
    .map_err(|err| Error::database("cannot list executions", err))?;
    paginate(rows, query.page_size, as_of_offset, |row| {
        let execution = decode_execution(&row.execution_id, &row.state, row.last_offset)?;
        Ok((execution, Cursor::new(row.created_at, row.execution_id)))
    })
}

/// The tenant's agents, by id.
pub async fn list_agents(
    pool: &PgPool,
    tenant: &EntityId,
    statuses: &[AgentStatus],
    page_size: u32,
    after: Option<&Cursor>,
) -> Result<Page<Agent>, Error> {
    let as_of_offset = as_of_offset(pool, StreamKind::Agents).await?;
    let statuses: Vec<String> = statuses.iter().map(|s| s.wire_name().to_owned()).collect();
    let rows = sqlx::query!(
        "SELECT state, last_offset, agent_id FROM agents
         WHERE tenant_id = $1
           AND (cardinality($2::text[]) = 0 OR status = ANY($2))
           AND ($3::text IS NULL OR agent_id > $3)
         ORDER BY agent_id
         LIMIT $4",
        tenant.as_str(),
        &statuses,
        after.map(|c| c.id.as_str()),
        i64::from(page_size) + 1,
    )
    .fetch_all(pool)
    .await
    .map_err(|err| Error::database("cannot list agents", err))?;
    paginate(rows, page_size, as_of_offset, |row| {
        let agent = decode_agent(&row.agent_id, &row.state, row.last_offset)?;
        // Agents are sorted by id alone; the time in their cursor is unused.
        Ok((agent, Cursor::new(DateTime::<Utc>::UNIX_EPOCH, row.agent_id)))
    })
}

/// The execution as the read model last saw it (`offset` = its last applied event); `None` when
/// it is not there, or when there is no schema yet (no persister has run: nothing is archived).
pub async fn execution(pool: &PgPool, tenant: &EntityId, execution_id: &EntityId) -> Result<Option<Execution>, Error> {
    let row = sqlx::query!(
        "SELECT state, last_offset FROM executions WHERE tenant_id = $1 AND execution_id = $2",
        tenant.as_str(),
        execution_id.as_str(),
    )
    .fetch_optional(pool)
    .await;
    match row {
        Ok(Some(row)) => decode_execution(execution_id.as_str(), &row.state, row.last_offset).map(Some),
        Ok(None) => Ok(None),
        Err(err) if is_undefined_table(&err) => Ok(None),
        Err(err) => Err(Error::database("cannot read the entity from the read model", err)),
    }
}

/// Many executions as the read model last saw them, in one query: those it holds, by `(tenant,
/// execution id)`, each decoded or `Corrupt`. None when there is no schema yet, as [`execution`].
pub async fn executions(
    pool: &PgPool,
    keys: &[(&str, &str)],
) -> Result<HashMap<(String, String), Result<Execution, Error>>, Error> {
    let (tenants, ids): (Vec<&str>, Vec<&str>) = keys.iter().copied().unzip();
    let rows = sqlx::query!(
        "SELECT e.tenant_id, e.execution_id, e.state, e.last_offset
           FROM UNNEST($1::text[], $2::text[]) AS wanted (tenant_id, execution_id)
           JOIN executions e USING (tenant_id, execution_id)",
        &tenants as _,
        &ids as _,
    )
    .fetch_all(pool)
    .await;
    match rows {
        Ok(rows) => Ok(rows
            .into_iter()
            .map(|row| {
                let execution = decode_execution(&row.execution_id, &row.state, row.last_offset);
                ((row.tenant_id, row.execution_id), execution)
            })
            .collect()),
        Err(err) if is_undefined_table(&err) => Ok(HashMap::new()),
        Err(err) => Err(Error::database("cannot read entities from the read model", err)),
    }
}

/// The agent as the read model last saw it, like [`execution`].
pub async fn agent(pool: &PgPool, tenant: &EntityId, agent_id: &EntityId) -> Result<Option<Agent>, Error> {
    let row = sqlx::query!(
        "SELECT state, last_offset FROM agents WHERE tenant_id = $1 AND agent_id = $2",
        tenant.as_str(),
        agent_id.as_str(),
    )
    .fetch_optional(pool)
    .await;
    match row {
        Ok(Some(row)) => decode_agent(agent_id.as_str(), &row.state, row.last_offset).map(Some),
        Ok(None) => Ok(None),
        Err(err) if is_undefined_table(&err) => Ok(None),
        Err(err) => Err(Error::database("cannot read the entity from the read model", err)),
    }
}

fn offset(last_offset: i64) -> u64 {
    u64::try_from(last_offset).unwrap_or(0)
}

fn decode_execution(id: &str, state: &[u8], last_offset: i64) -> Result<Execution, Error> {
    let mut execution = Execution::decode(state).map_err(|err| {
        Error::new(ErrorKind::Corrupt, format!("the stored state of execution {id} does not decode: {err}"))
    })?;
    execution.offset = offset(last_offset);
    Ok(execution)
}

fn decode_agent(id: &str, state: &[u8], last_offset: i64) -> Result<Agent, Error> {
    let mut agent = Agent::decode(state).map_err(|err| {
        Error::new(ErrorKind::Corrupt, format!("the stored state of agent {id} does not decode: {err}"))
    })?;
    agent.offset = offset(last_offset);
    Ok(agent)
}
