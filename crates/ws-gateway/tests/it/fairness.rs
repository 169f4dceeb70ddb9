//! Replays are fair per connection: a client that does not read, with many replaying
//! subscriptions, holds at most its own share of replays and gives the replica's slots back while
//! it stalls, so another client's resume completes promptly.

use crate::helpers::*;
use runcast_contract::v1::{EventType, ExecutionStatus, event};
use serde_json::json;
use std::time::{Duration, Instant};

/// A counter of the gateway's `/metrics` (0 until it is first used).
async fn counter(gateway: &Gateway, name: &str) -> u64 {
    let text = reqwest::get(gateway.url("/metrics")).await.expect("metrics").text().await.expect("text");
    text.lines()
        .filter(|line| line.starts_with(name))
        .filter_map(|line| line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_with_many_replays_does_not_delay_another_clients_resume() {
    const CHANNELS: usize = 65;
    const EVENTS_PER_CHANNEL: usize = 30;
    let world = World::start().await;
    let gateway = world
        .gateway(&[
            // Few replica slots, so holding them would starve everyone else at once.
            ("replay-concurrency", "4"),
            ("max-messages-per-second", "1000"),
            ("queue-capacity", "16"),
            ("queue-bytes", "65536"),
            // The stalled client is never dropped for its slowness during the test.
            ("write-timeout", "120s"),
        ])
        .await;
    // Enough bytes per channel that the stalled client's socket buffers fill up long before its
    // replays are done.
    let payload = "s".repeat(16 * 1024);
    world
        .publish_many((0..CHANNELS * EVENTS_PER_CHANNEL).map(|i| {
            let mut event = execution_event(
                "acme",
                &format!("e-{}", i % CHANNELS),
                "wf",
                EventType::StepStarted,
                ExecutionStatus::Running,
            );
            if let Some(event::State::Execution(state)) = &mut event.state {
                state.current_step = payload.clone();
            }
            event
        }))
        .await;
    let other = world
        .publish_many(
            (0..5).map(|_| execution_event("acme", "other", "wf", EventType::StepStarted, ExecutionStatus::Running)),
        )
        .await;

    // The live feed has passed every event, so none of them is held for the replays (held live
    // events beyond the queue's bound would resync the stalled client instead of stalling it).
    let last = *other.last().expect("published");
    runcast_testkit::eventually("the live feed to pass every published event", WAIT, || async {
        (gateway.stats().await["streams"]["EXECUTIONS"]["head"].as_u64() >= Some(last)).then_some(())
    })
    .await
    .expect("caught up");

    let mut stalled = gateway.connect(&token("acme", "mallory", 600)).await;
    for i in 0..CHANNELS {
        stalled.send(json!({"type": "subscribe", "channel": format!("executions:e-{i}"), "since_offset": 0})).await;
    }
    // From here on it reads nothing; wait until its replays are blocked on its full queue.
    runcast_testkit::eventually("the stalled client's replays to wait for it", WAIT, || async {
        (counter(&gateway, "runcast_ws_replay_slot_yields_total").await > 0).then_some(())
    })
    .await
    .expect("the stalled client's queue fills up");

    let mut alice = gateway.connect(&token("acme", "alice", 600)).await;
    let started = Instant::now();
    let since = other[0] - 1;
    // Alone it takes well under 100 ms; starved, it took 10 s. The bound leaves room for a loaded CI.
    let (subscribed, replayed) = tokio::time::timeout(
        Duration::from_secs(6),
        alice.subscribe(json!({"type": "subscribe", "channel": "executions:other", "since_offset": since})),
    )
    .await
    .expect("another client's resume completes within 6 s while the stalled client stalls");
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    assert_eq!(offsets(&replayed), other, "exactly the missed events");
    eprintln!("resume completed in {:?}", started.elapsed());
    drop(stalled);
}

/// Replays are fair per tenant too: one tenant's clients resuming at once (its deploy, its
/// network) do not queue another tenant's resume behind all of theirs — a freed replica slot goes
/// to the next tenant in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_resume_storm_does_not_queue_another_tenants_resume_behind_it() {
    const STORM: usize = 16;
    let world = World::start().await;
    // One replica slot: resumes run one at a time, so the order they are served in shows.
    let gateway = world.gateway(&[("replay-concurrency", "1")]).await;
    let storm_events = world
        .publish_many((0..2_000).map(|i| {
            execution_event("storm", &format!("s-{}", i % 50), "wf", EventType::StepStarted, ExecutionStatus::Running)
        }))
        .await;
    let quiet_events = world
        .publish_many(
            (0..5).map(|_| execution_event("quiet", "q-1", "wf", EventType::StepStarted, ExecutionStatus::Running)),
        )
        .await;
    let last = *quiet_events.last().expect("published");
    runcast_testkit::eventually("the live feed to pass every published event", WAIT, || async {
        (gateway.stats().await["streams"]["EXECUTIONS"]["head"].as_u64() >= Some(last)).then_some(())
    })
    .await
    .expect("caught up");

    // The storm: each client resumes all 2,000 of its tenant's events and reads them as they come.
    let storm_token = token("storm", "ops", 600);
    let mut storm = Vec::with_capacity(STORM);
    for _ in 0..STORM {
        let mut ws = gateway.connect(&storm_token).await;
        let since = storm_events[0] - 1;
        storm.push(tokio::spawn(async move {
            let (subscribed, replayed) =
                ws.subscribe(json!({"type": "subscribe", "channel": "executions", "since_offset": since})).await;
            assert_eq!(subscribed["recovered"], true, "{subscribed}");
            (Instant::now(), replayed.len())
        }));
    }
    runcast_testkit::eventually("the storm's resumes to be queued", WAIT, || async {
        (gateway.stats_as(&storm_token).await["subscriptions_total"].as_u64() >= Some(STORM as u64)).then_some(())
    })
    .await
    .expect("every storm client subscribed");

    let mut quiet = gateway.connect(&token("quiet", "alice", 600)).await;
    let since = quiet_events[0] - 1;
    let (subscribed, replayed) =
        quiet.subscribe(json!({"type": "subscribe", "channel": "executions:q-1", "since_offset": since})).await;
    let quiet_done = Instant::now();
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    assert_eq!(offsets(&replayed), quiet_events, "exactly the missed events");

    let mut served_before = 0;
    for resume in storm {
        let (done, replayed) = resume.await.expect("a storm client");
        assert_eq!(replayed, storm_events.len(), "every storm client got its events");
        served_before += usize::from(done < quiet_done);
    }
    // In one queue, the quiet tenant's resume came after all 16; in turns, after one or two.
    assert!(served_before < STORM / 2, "{served_before} of the storm's {STORM} resumes were served before it");
}
