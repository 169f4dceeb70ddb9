//! NATS stopped and started again (same store): the persister reconnects, resumes its durable
//! consumer, and everything published before and after arrives once.

use crate::support::{self, WAIT, World};
use runcast_testkit::eventually;

#[tokio::test]
async fn the_persister_resumes_after_nats_restarts() {
    let mut world = World::start().await;
    let persister = world.persister(&[]).await;
    let http = reqwest::Client::new();

    let mut events = support::load(&world, 100, 20);
    let later = events.split_off(1000);
    let mut published = world.publish(events).await;
    world.wait_for_history(1000).await;

    world.infra.nats.stop();
    eventually("/readyz to report NATS down", WAIT, || async {
        let body: serde_json::Value = http.get(persister.http_url("/readyz")).send().await.ok()?.json().await.ok()?;
        (body["checks"]["nats"] == false).then_some(())
    })
    .await
    .expect("nats down noticed");
    world.infra.nats.restart().await.expect("nats back");

    let client = world.jetstream.client();
    eventually("the test client to reconnect", WAIT, || {
        let state = client.connection_state();
        async move { (state == async_nats::connection::State::Connected).then_some(()) }
    })
    .await
    .expect("reconnected");
    published.extend(world.publish(later).await);

    world.wait_for_history(2000).await;
    eventually("the read model equal to the fold", WAIT, || async {
        (world.executions().await == support::expected_executions(&published)).then_some(())
    })
    .await
    .expect("read model");
}
