//! The api sweeper's candidates, read from the read model. Each is only a candidate: the
//! sweeper decides on the entity's current state in its stream, since the read model may lag.

use crate::error::Error;
use sqlx::PgPool;
use std::time::Duration;

/// An approval past its deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueApproval {
    pub tenant_id: String,
    pub execution_id: String,
    pub approval_id: String,
}

/// An execution to fail, and the agent it is failed for (empty: none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionToFail {
    pub tenant_id: String,
    pub execution_id: String,
    pub agent_id: String,
}

/// Pending approvals whose deadline has passed, the most overdue first.
pub async fn due_approvals(pool: &PgPool, limit: i64) -> Result<Vec<DueApproval>, Error> {
    sqlx::query_as!(
        DueApproval,
        "SELECT tenant_id, execution_id, approval_id FROM approvals
         WHERE status = 'pending' AND deadline IS NOT NULL AND deadline < now()
         ORDER BY deadline LIMIT $1",
        limit,
    )
    .fetch_all(pool)
    .await
    .map_err(|err| Error::database("cannot read due approvals", err))
}

/// The active executions of agents offline for longer than their timeout plus `grace`: those
/// the agent owns, and those its last heartbeat listed as running that nobody owns.
pub async fn executions_of_lost_agents(
    pool: &PgPool,
    grace: Duration,
    limit: i64,
) -> Result<Vec<ExecutionToFail>, Error> {
    sqlx::query_as!(
        ExecutionToFail,
        r#"WITH lost AS (
               SELECT tenant_id, agent_id, running_execution_ids FROM agents
               WHERE status = 'offline'
                 AND last_heartbeat_at + make_interval(secs => timeout_seconds + $1::float8) < now())
           SELECT e.tenant_id AS "tenant_id!", e.execution_id AS "execution_id!", lost.agent_id AS "agent_id!"
           FROM lost
           JOIN executions e ON e.tenant_id = lost.tenant_id AND e.agent_id = lost.agent_id
           WHERE e.agent_id <> '' AND e.status IN ('running', 'paused', 'blocked')
           UNION
           SELECT e.tenant_id, e.execution_id, lost.agent_id FROM lost
           JOIN executions e ON e.tenant_id = lost.tenant_id AND e.execution_id = ANY(lost.running_execution_ids)
           WHERE e.agent_id = '' AND e.status IN ('running', 'paused', 'blocked')
           LIMIT $2"#,
        grace.as_secs_f64(),
        limit,
    )
    .fetch_all(pool)
    .await
    .map_err(|err| Error::database("cannot read the executions of lost agents", err))
}

/// Running executions past their heartbeat deadline, the most overdue first.
pub async fn silent_executions(pool: &PgPool, limit: i64) -> Result<Vec<ExecutionToFail>, Error> {
    sqlx::query_as!(
        ExecutionToFail,
        "SELECT tenant_id, execution_id, agent_id FROM executions
         WHERE status = 'running' AND heartbeat_deadline IS NOT NULL AND heartbeat_deadline < now()
         ORDER BY heartbeat_deadline LIMIT $1",
        limit,
    )
    .fetch_all(pool)
    .await
    .map_err(|err| Error::database("cannot read silent executions", err))
}
