//! The sweepers: `agent.offline` for agents silent past their timeout, `approval.expired` for
//! pending approvals past their deadline. Every replica runs this loop; only the holder of a lease
//! in JetStream KV acts, so the work is done once. A lease expires by itself when its holder dies
//! (the bucket's max age), so another replica takes over within [`lease_ttl`].
//!
//! Exactly one event per expiry even across a lease handover: each sweep publishes with
//! compare-and-set on the entity's last sequence, which only one writer can win.

use crate::commands::{Executions, now};
use crate::domain::state_machine::Command;
use crate::store::{EventStore, StoreErrorKind};
use async_nats::jetstream::kv;
use futures::TryStreamExt as _;
use runcast_contract::v1::{AgentStatus, EventType};
use runcast_contract::{EntityId, StreamKind};
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const LEASE_KEY: &str = "sweeper";
const APPROVALS_PER_SWEEP: i64 = 200;

/// How long a lease outlives its last renewal.
pub fn lease_ttl(interval: Duration) -> Duration {
    (interval * 3).max(Duration::from_secs(3))
}

pub fn bucket_name(store: &EventStore) -> String {
    match store.topology().prefix() {
        Some(prefix) => format!("{prefix}_runcast_leases"),
        None => "runcast_leases".to_owned(),
    }
}

/// A lease held by this replica: the KV revision of our last write.
struct Lease {
    revision: u64,
}

async fn lease_bucket(store: &EventStore, interval: Duration) -> Result<kv::Store, String> {
    let bucket = bucket_name(store);
    if let Ok(existing) = store.jetstream().get_key_value(&bucket).await {
        return Ok(existing);
    }
    let config = kv::Config { bucket: bucket.clone(), history: 1, max_age: lease_ttl(interval), ..Default::default() };
    match store.jetstream().create_key_value(config).await {
        Ok(created) => Ok(created),
        // Another replica created it in between.
        Err(_) => store
            .jetstream()
            .get_key_value(&bucket)
            .await
            .map_err(|err| format!("cannot open the lease bucket {bucket}: {err}")),
    }
}

/// Takes the lease if free, renews it if ours; `None` when someone else holds it.
async fn hold_lease(bucket: &kv::Store, replica: &str, lease: Option<Lease>) -> Option<Lease> {
    let outcome = match lease {
        Some(Lease { revision }) => bucket.update(LEASE_KEY, replica.to_owned().into(), revision).await.ok(),
        None => bucket.create(LEASE_KEY, replica.to_owned().into()).await.ok(),
    };
    outcome.map(|revision| Lease { revision })
}

pub async fn run(store: EventStore, pool: PgPool, interval: Duration, shutdown: CancellationToken) {
    let replica = uuid::Uuid::now_v7().to_string();
    let executions = Executions::new(store.clone());
    let mut bucket = None;
    let mut lease: Option<Lease> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
        if bucket.is_none() {
            match lease_bucket(&store, interval).await {
                Ok(opened) => bucket = Some(opened),
                Err(err) => {
                    tracing::debug!(cause = %err, "sweeper waiting for NATS");
                    continue;
                }
            }
        }
        let Some(leases) = bucket.as_ref() else { continue };
        let had_lease = lease.is_some();
        lease = hold_lease(leases, &replica, lease).await;
        match (had_lease, lease.is_some()) {
            (false, true) => tracing::info!(%replica, "this replica now runs the sweepers"),
            (true, false) => tracing::warn!(%replica, "lost the sweeper lease"),
            _ => {}
        }
        if lease.is_none() {
            continue;
        }
        // A sweep must end well within the lease, or the lease lapses while we work (PostgreSQL
        // down makes the approval query wait for a connection, for instance).
        let budget = lease_ttl(interval) / 3;
        let sweeps = async {
            if let Err(err) = sweep_agents(&store).await {
                tracing::warn!(cause = %err, "agent sweep failed; retrying next tick");
            }
            sweep_approvals(&executions, &pool).await;
        };
        if tokio::time::timeout(budget, sweeps).await.is_err() {
            tracing::debug!(?budget, "sweep cut short; the rest waits for the next tick");
        }
    }
    // Hand the lease over at once instead of letting it expire.
    if let (Some(leases), Some(_)) = (bucket, lease) {
        let _ = leases.delete(LEASE_KEY).await;
    }
}

/// Publishes `agent.offline` for every agent whose last heartbeat is older than its timeout.
async fn sweep_agents(store: &EventStore) -> Result<(), String> {
    let stream_name = store.topology().stream_name(StreamKind::Agents);
    let stream = store.jetstream().get_stream(&stream_name).await.map_err(|err| err.to_string())?;
    let filter = store.topology().stream_subjects(StreamKind::Agents);
    let subjects: Vec<(String, usize)> = stream
        .info_with_subjects(filter)
        .await
        .map_err(|err| err.to_string())?
        .try_collect()
        .await
        .map_err(|err| err.to_string())?;
    let now = now();
    for (subject, _) in subjects {
        let mut tokens = subject.rsplit('.');
        let (Some(agent), Some(tenant)) = (tokens.next(), tokens.next()) else { continue };
        let (Ok(tenant), Ok(agent_id)) = (EntityId::parse("tenant_id", tenant), EntityId::parse("agent_id", agent))
        else {
            continue;
        };
        let Some(last) = store.last(StreamKind::Agents, &tenant, &agent_id).await.map_err(|err| err.to_string())?
        else {
            continue;
        };
        let Some(agent) = crate::agents::agent_of(&last) else { continue };
        let silent_since = agent.last_heartbeat_at.map_or(0, |ts| ts.seconds);
        if agent.status == i32::from(AgentStatus::Offline)
            || silent_since + i64::from(agent.timeout_seconds) > now.seconds
        {
            continue;
        }
        let mut offline = agent.clone();
        offline.status = AgentStatus::Offline.into();
        offline.version += 1;
        offline.offset = 0;
        match crate::agents::publish(store, &tenant, &agent_id, EventType::AgentOffline, offline, last.sequence).await {
            Ok(_) => tracing::info!(%tenant, %agent_id, "agent offline: heartbeats stopped"),
            // A heartbeat or another sweeper got there first: nothing to do.
            Err(err) if err.kind() == StoreErrorKind::Conflict => {}
            Err(err) => return Err(err.to_string()),
        }
    }
    Ok(())
}

/// Expires pending approvals past their deadline. Candidates come from the read model; the decision
/// is made on the execution's current state in the stream.
async fn sweep_approvals(executions: &Executions, pool: &PgPool) {
    let candidates: Vec<(String, String, String)> = match sqlx::query_as(
        "SELECT tenant_id, execution_id, approval_id FROM approvals
         WHERE status = 'pending' AND deadline IS NOT NULL AND deadline < now()
         ORDER BY deadline LIMIT $1",
    )
    .bind(APPROVALS_PER_SWEEP)
    .fetch_all(pool)
    .await
    {
        Ok(rows) => rows,
        Err(err) => {
            tracing::debug!(cause = %err, "approval sweep skipped: the read model is unreachable");
            return;
        }
    };
    for (tenant, execution_id, approval_id) in candidates {
        let (Ok(tenant), Ok(execution_id)) =
            (EntityId::parse("tenant_id", &tenant), EntityId::parse("execution_id", &execution_id))
        else {
            continue;
        };
        let command = Command::ExpireApproval { approval_id: approval_id.clone() };
        match executions.execute(&tenant, &execution_id, command, None).await {
            Ok(_) => tracing::info!(%tenant, %execution_id, %approval_id, "approval expired"),
            // Resolved, already expired or not yet due according to the stream: the read model lagged.
            Err(err) => tracing::debug!(%execution_id, %approval_id, cause = %err, "approval not expired"),
        }
    }
}
