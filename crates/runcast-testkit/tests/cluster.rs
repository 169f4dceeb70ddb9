//! The 3-node JetStream cluster: an R3 stream gets a leader, keeps its messages and elects
//! another leader when the first is crashed, and the crashed node comes back on its ports.

use async_nats::jetstream::{self, stream};
use std::time::{Duration, Instant};

#[tokio::test]
async fn an_r3_stream_survives_the_loss_of_its_leader() {
    let mut cluster = runcast_testkit::NatsCluster::start().await.unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(cluster.len(), 3);
    assert_eq!(cluster.urls().split(',').count(), 3);
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(cluster.node_urls().as_slice())
        .await
        .expect("connects to the cluster");
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: "CLUSTERED".into(),
        subjects: vec!["clustered.>".into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .expect("an R3 stream");
    let leader =
        cluster.wait_for_leader("CLUSTERED", None, Duration::from_secs(20)).await.unwrap_or_else(|err| panic!("{err}"));
    for n in 0..10 {
        js.publish(format!("clustered.{n}"), "x".into()).await.expect("publish").await.expect("acked");
    }

    let index = cluster.index_of(&leader).expect("the leader is one of ours");
    cluster.kill(index).expect("killed");
    let lost = Instant::now();
    let next = cluster
        .wait_for_leader("CLUSTERED", Some(&leader), Duration::from_secs(30))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    eprintln!("stream leader {leader} killed; {next} leads after {:?}", lost.elapsed());
    assert_ne!(next, leader);

    cluster.restart(index).await.unwrap_or_else(|err| panic!("{err}"));
    assert!(cluster.is_running(index));
    let info = runcast_testkit::eventually("the stream to answer after the restart", Duration::from_secs(20), || {
        let js = js.clone();
        async move { js.get_stream("CLUSTERED").await.ok()?.info().await.ok().map(|info| info.state.messages) }
    })
    .await
    .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(info, 10, "every acknowledged message is still there");
}
