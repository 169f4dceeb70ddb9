//! The sweepers: `agent.offline` for agents silent past their timeout, `approval.expired` for
//! pending approvals past their deadline, and `execution.failed` for executions whose owning agent
//! stayed offline past the grace or that had no event within their `heartbeat_timeout_seconds`
//! (DESIGN §7). Candidates come from the read model; every decision is made on the entity's
//! current state (stream, or read model once aged out). Every replica runs this loop; only the holder of a lease
//! in JetStream KV acts, so the work is done once. A lease expires by itself when its holder dies
//! (the bucket's max age), so another replica takes over within [`lease_ttl`].
//!
//! Exactly one event per expiry even across a lease handover: each sweep publishes with
//! compare-and-set on the entity's last sequence, which only one writer can win.

use crate::commands::{Executions, WriteOptions, now};
use crate::domain::state_machine::Command;
use crate::store::{EventStore, Read, StoreErrorKind};
use async_nats::jetstream::kv;
use futures::TryStreamExt as _;
use runcast_contract::v1::{AgentStatus, EventType};
use runcast_contract::{EntityId, StreamKind};
use runcast_store::PgPool;
use runcast_store::sweeps::{self, DueApproval, ExecutionToFail};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const LEASE_KEY: &str = "sweeper";
const APPROVALS_PER_SWEEP: i64 = 200;
const EXECUTIONS_PER_SWEEP: i64 = 200;

/// What the sweepers act on and how often.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub interval: Duration,
    /// How long an agent may stay offline before the executions it owns fail.
    pub agent_lost_grace: Duration,
    /// Replicas of the lease bucket, as of the streams: a lease that lives on one node of a
    /// cluster would stop every sweep while that node is down.
    pub replicas: u8,
}

/// How long a lease outlives its last renewal.
pub(crate) fn lease_ttl(interval: Duration) -> Duration {
    (interval * 3).max(Duration::from_secs(3))
}

pub(crate) fn bucket_name(store: &EventStore) -> String {
    match store.topology().prefix() {
        Some(prefix) => format!("{prefix}_runcast_leases"),
        None => "runcast_leases".to_owned(),
    }
}

/// A lease held by this replica: the KV revision of our last write.
#[derive(Debug, Clone, Copy)]
struct Lease {
    revision: u64,
}

async fn lease_bucket(store: &EventStore, interval: Duration, replicas: u8) -> Result<kv::Store, String> {
    let bucket = bucket_name(store);
    if let Ok(existing) = store.jetstream().get_key_value(&bucket).await {
        return Ok(existing);
    }
    let config = kv::Config {
        bucket: bucket.clone(),
        history: 1,
        max_age: lease_ttl(interval),
        num_replicas: usize::from(replicas.max(1)),
        ..Default::default()
    };
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

pub(crate) async fn run(
    store: EventStore,
    pool: PgPool,
    settings: Settings,
    stream_max_age: Duration,
    shutdown: CancellationToken,
) {
    let Settings { interval, agent_lost_grace, replicas } = settings;
    let replica = uuid::Uuid::now_v7().to_string();
    let executions = Executions::with_read_model(store.clone(), pool.clone(), stream_max_age);
    let mut bucket = None;
    let mut lease: Option<Lease> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
        if bucket.is_none() {
            let opened = tokio::select! {
                _ = shutdown.cancelled() => break,
                opened = lease_bucket(&store, interval, replicas) => opened,
            };
            match opened {
                Ok(opened) => bucket = Some(opened),
                Err(err) => {
                    tracing::debug!(cause = %err, "sweeper waiting for NATS");
                    continue;
                }
            }
        }
        let Some(leases) = bucket.as_ref() else { continue };
        let had_lease = lease.is_some();
        lease = tokio::select! {
            _ = shutdown.cancelled() => break,
            held = hold_lease(leases, &replica, lease) => held,
        };
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
            sweep_lost_agents(&executions, &pool, agent_lost_grace).await;
            sweep_silent_executions(&executions, &pool).await;
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            swept = tokio::time::timeout(budget, sweeps) => if swept.is_err() {
                tracing::debug!(?budget, "sweep cut short; the rest waits for the next tick");
            },
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
        let Some(last) =
            store.last(StreamKind::Agents, &tenant, &agent_id, Read::Leader).await.map_err(|err| err.to_string())?
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

/// A sweep's candidates from the read model; `None` (and a debug line: the sweep waits for the
/// next tick) while PostgreSQL is unreachable.
async fn candidates<T>(
    sweep: &str,
    query: impl std::future::Future<Output = Result<Vec<T>, runcast_store::Error>>,
) -> Option<Vec<T>> {
    query.await.map_err(|err| tracing::debug!(cause = %err, sweep, "sweep skipped: the read model is unreachable")).ok()
}

/// Expires pending approvals past their deadline. Candidates come from the read model; the decision
/// is made on the execution's current state in the stream.
async fn sweep_approvals(executions: &Executions, pool: &PgPool) {
    let query = sweeps::due_approvals(pool, APPROVALS_PER_SWEEP);
    let Some(candidates) = candidates("approval", query).await else { return };
    for DueApproval { tenant_id: tenant, execution_id, approval_id } in candidates {
        let (Ok(tenant), Ok(execution_id)) =
            (EntityId::parse("tenant_id", &tenant), EntityId::parse("execution_id", &execution_id))
        else {
            continue;
        };
        let command = Command::ExpireApproval { approval_id: approval_id.clone() };
        match executions.execute(&tenant, &execution_id, command, WriteOptions::default()).await {
            Ok(_) => tracing::info!(%tenant, %execution_id, %approval_id, "approval expired"),
            // Resolved, already expired or not yet due according to the stream: the read model lagged.
            Err(err) => tracing::debug!(%execution_id, %approval_id, cause = %err, "approval not expired"),
        }
    }
}

/// Candidates of the read model, decided one by one on the execution's current state.
async fn fail_candidates(executions: &Executions, candidates: Vec<ExecutionToFail>, command: impl Fn(&str) -> Command) {
    for ExecutionToFail { tenant_id: tenant, execution_id, agent_id } in candidates {
        let (Ok(tenant), Ok(execution_id)) =
            (EntityId::parse("tenant_id", &tenant), EntityId::parse("execution_id", &execution_id))
        else {
            continue;
        };
        match executions.execute(&tenant, &execution_id, command(&agent_id), WriteOptions::default()).await {
            Ok(failed) => {
                tracing::warn!(%tenant, %execution_id, error = %failed.error, "execution failed by the sweeper")
            }
            // Ended, moved on or taken over meanwhile according to its current state.
            Err(err) => tracing::debug!(%execution_id, cause = %err, "execution not failed"),
        }
    }
}

/// Fails the active executions of agents offline for longer than `grace`: those the agent owns,
/// and those its last heartbeat listed as running that nobody owns.
async fn sweep_lost_agents(executions: &Executions, pool: &PgPool, grace: Duration) {
    let query = sweeps::executions_of_lost_agents(pool, grace, EXECUTIONS_PER_SWEEP);
    let Some(candidates) = candidates("lost-agent", query).await else { return };
    let mut confirmed = Vec::with_capacity(candidates.len());
    for candidate in candidates {
        if agent_still_lost(executions.store(), &candidate.tenant_id, &candidate.agent_id, grace).await {
            confirmed.push(candidate);
        }
    }
    let command = |agent_id: &str| Command::FailForLostAgent { agent_id: agent_id.to_owned() };
    fail_candidates(executions, confirmed, command).await;
}

/// The read model may lag: the agent must still be offline, past the grace, in its own stream.
async fn agent_still_lost(store: &EventStore, tenant: &str, agent_id: &str, grace: Duration) -> bool {
    let (Ok(tenant), Ok(agent_id)) = (EntityId::parse("tenant_id", tenant), EntityId::parse("agent_id", agent_id))
    else {
        return false;
    };
    match store.last(StreamKind::Agents, &tenant, &agent_id, Read::Leader).await {
        Ok(Some(last)) => crate::agents::agent_of(&last).is_some_and(|agent| {
            let silent_since = agent.last_heartbeat_at.map_or(0, |at| at.seconds);
            let lost_at = silent_since
                .saturating_add(i64::from(agent.timeout_seconds))
                .saturating_add(i64::try_from(grace.as_secs()).unwrap_or(i64::MAX));
            agent.status == i32::from(AgentStatus::Offline) && lost_at <= now().seconds
        }),
        // Aged out of the stream: the read model, which said offline, is all there is.
        Ok(None) => true,
        Err(err) => {
            tracing::debug!(cause = %err, %agent_id, "cannot read the agent; retrying next tick");
            false
        }
    }
}

/// Fails running executions that had no event within their `heartbeat_timeout_seconds`.
async fn sweep_silent_executions(executions: &Executions, pool: &PgPool) {
    let query = sweeps::silent_executions(pool, EXECUTIONS_PER_SWEEP);
    let Some(candidates) = candidates("heartbeat-timeout", query).await else { return };
    fail_candidates(executions, candidates, |_| Command::FailForSilence).await;
}
