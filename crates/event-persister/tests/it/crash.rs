//! kill -9 in the middle of a load, then a restart: nothing missing, nothing twice.

use crate::support::{self, WAIT, World};
use nix::sys::signal::Signal;
use runcast_testkit::eventually;

/// Small batches, so the crash lands between some of them; a short ack wait, so the batch the
/// crash interrupted comes back in seconds rather than the default 30.
const SETTINGS: &[(&str, &str)] = &[("RUNCAST_BATCH_SIZE", "200"), ("RUNCAST_ACK_WAIT", "5s")];

#[tokio::test]
async fn a_persister_killed_mid_load_resumes_without_losing_or_duplicating_anything() {
    let world = World::start().await;
    let mut persister = world.persister(SETTINGS).await;

    let events = support::load(&world, 400, 20);
    let total = i64::try_from(events.len()).expect("count");
    let publisher = {
        let jetstream = world.jetstream.clone();
        tokio::spawn(async move { support::publish(&jetstream, events).await })
    };

    // Some batches are in, most are not: crash.
    eventually("the first batches to land", WAIT, || async {
        let count = world.history_count().await;
        (count >= 1000).then_some(())
    })
    .await
    .expect("progress before the crash");
    persister.signal(Signal::SIGKILL).expect("kill -9");
    persister.wait_exit(std::time::Duration::from_secs(10)).await.expect("killed");
    let at_crash = world.history_count().await;
    assert!(at_crash < total, "the crash came too late to mean anything");

    let published = publisher.await.expect("publisher");
    let _restarted = world.persister(SETTINGS).await;
    world.wait_for_history(total).await;

    let history = world.history().await;
    let mut offsets: Vec<i64> = history.iter().map(|(_, offset, _)| *offset).collect();
    offsets.dedup();
    assert_eq!(offsets.len(), history.len(), "no offset twice");
    let mut expected: Vec<i64> = published.iter().map(|p| i64::try_from(p.offset).expect("offset")).collect();
    expected.sort_unstable();
    assert_eq!(offsets, expected, "every offset once");
    eventually("the read model equal to the fold", WAIT, || async {
        (world.executions().await == support::expected_executions(&published)).then_some(())
    })
    .await
    .expect("read model");
}
