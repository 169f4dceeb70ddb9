//! Resume from rows the real event-persister wrote: the stream keeps only its last few events,
//! everything older comes from the history, and both speak the same offsets. Progress events on
//! purpose: a resuming client that keeps up gets every one of them (no coalescing).

use crate::helpers::{World, execution_event, offsets, token};
use runcast_contract::v1::{EventType, ExecutionStatus};
use runcast_testkit::{ServiceProcess, eventually};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn a_resume_older_than_the_stream_is_served_from_what_the_persister_wrote() {
    let world = World::start().await;
    let nats = world.infra.nats.url();
    let persister = ServiceProcess::spawn(
        "event-persister",
        &[
            ("NATS_URL", nats.as_str()),
            ("DATABASE_URL", world.isolation.database_url.as_str()),
            ("RUNCAST_STREAM_PREFIX", world.isolation.stream_prefix.as_str()),
        ],
    )
    .await
    .expect("persister starts");

    // While the stream still holds everything, the persister stores all of it.
    let events: Vec<_> = (0..20)
        .map(|i| {
            execution_event(
                "acme",
                &format!("e-{}", i % 4),
                "wf",
                EventType::ExecutionProgress,
                ExecutionStatus::Running,
            )
        })
        .collect();
    runcast_testkit::eventually("the persister to provision its consumer", Duration::from_secs(30), || {
        let url = persister.http_url("/readyz");
        async move { reqwest::get(&url).await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
    })
    .await
    .expect("persister ready");
    let published = world.publish_many(events).await;
    let pool = sqlx::PgPool::connect(&world.isolation.database_url).await.expect("database");
    eventually("all 20 events in the history", Duration::from_secs(30), || {
        let pool = pool.clone();
        async move {
            let count: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&pool).await.ok()?;
            (count == 20).then_some(())
        }
    })
    .await
    .unwrap_or_else(|err| panic!("{err}\n{}", persister.recent_log()));

    // A gateway configured to keep only five events per stream trims the stream on start.
    let gateway = world.gateway(&[("max-messages", "5")]).await;
    let mut ws = gateway.connect(&token("acme", "alice", 600)).await;
    let (subscribed, replayed) =
        ws.subscribe(json!({"type": "subscribe", "channel": "executions", "since_offset": published[1]})).await;
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    assert_eq!(offsets(&replayed), published[2..], "history rows, then the stream, without gap or duplicate");
    assert_eq!(replayed[0]["type"], "execution.progress");
}
