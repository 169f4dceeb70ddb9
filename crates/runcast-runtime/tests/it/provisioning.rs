//! Stream provisioning against a real JetStream: idempotent, limits applied and updated, and
//! prefixes that keep deployments (and tests) out of each other's way.

use async_nats::jetstream::{self, stream};
use runcast_contract::{EntityId, StreamKind, Topology};
use runcast_runtime::config::StreamLimits;
use runcast_runtime::nats::provision_streams;
use runcast_testkit::{NatsServer, unique_name};
use std::time::Duration;

async fn jetstream(server: &NatsServer) -> jetstream::Context {
    jetstream::new(async_nats::connect(server.url()).await.expect("connects"))
}

fn limits() -> StreamLimits {
    StreamLimits {
        replicas: 1,
        max_age: Duration::from_secs(3600),
        max_bytes: 10 * 1024 * 1024,
        max_messages: 5,
        duplicate_window: Duration::from_secs(30),
    }
}

async fn config_of(js: &jetstream::Context, name: &str) -> stream::Config {
    js.get_stream(name).await.expect("stream exists").info().await.expect("info").config.clone()
}

#[tokio::test]
async fn provisioning_twice_is_idempotent_and_applies_the_limits() {
    let server = NatsServer::start().await.expect("nats");
    let js = jetstream(&server).await;
    let topology = Topology::with_prefix(&unique_name("p")).expect("prefix");

    let first = provision_streams(&js, &topology, &limits()).await.expect("creates");
    let second = provision_streams(&js, &topology, &limits()).await.expect("second run succeeds");
    assert_eq!(first, second);
    assert_eq!(first.len(), 3);

    for kind in StreamKind::ALL {
        let config = config_of(&js, &topology.stream_name(kind)).await;
        assert_eq!(config.subjects, [topology.stream_subjects(kind)]);
        assert_eq!(config.max_age, Duration::from_secs(3600));
        assert_eq!(config.max_bytes, 10 * 1024 * 1024);
        assert_eq!(config.max_messages, 5);
        assert_eq!(config.duplicate_window, Duration::from_secs(30));
        assert_eq!(config.num_replicas, 1);
        assert!(config.allow_direct, "direct get is how the api reads the last event of a subject");
        assert_eq!(config.discard, stream::DiscardPolicy::Old);
    }
}

#[tokio::test]
async fn changed_limits_are_applied_to_existing_streams_without_losing_events() {
    let server = NatsServer::start().await.expect("nats");
    let js = jetstream(&server).await;
    let topology = Topology::with_prefix(&unique_name("p")).expect("prefix");
    provision_streams(&js, &topology, &limits()).await.expect("creates");

    let tenant = EntityId::parse("tenant_id", "acme").expect("id");
    let execution = EntityId::parse("execution_id", "e1").expect("id");
    let subject = topology.entity_subject(StreamKind::Executions, &tenant, &execution);
    js.publish(subject, "kept".into()).await.expect("publish").await.expect("ack");

    let wider = StreamLimits { max_messages: 1000, max_age: Duration::from_secs(7200), ..limits() };
    provision_streams(&js, &topology, &wider).await.expect("updates");
    let name = topology.stream_name(StreamKind::Executions);
    let config = config_of(&js, &name).await;
    assert_eq!((config.max_messages, config.max_age), (1000, Duration::from_secs(7200)));
    let mut stream = js.get_stream(&name).await.expect("stream");
    assert_eq!(stream.info().await.expect("info").state.messages, 1, "the update kept the event");
}

#[tokio::test]
async fn the_stream_message_limit_drops_the_oldest_events() {
    let server = NatsServer::start().await.expect("nats");
    let js = jetstream(&server).await;
    let topology = Topology::with_prefix(&unique_name("p")).expect("prefix");
    provision_streams(&js, &topology, &limits()).await.expect("creates");
    let tenant = EntityId::parse("tenant_id", "acme").expect("id");
    for n in 0..8 {
        let execution = EntityId::parse("execution_id", &format!("e{n}")).expect("id");
        js.publish(topology.entity_subject(StreamKind::Logs, &tenant, &execution), "x".into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    let mut stream = js.get_stream(topology.stream_name(StreamKind::Logs)).await.expect("stream");
    let state = stream.info().await.expect("info").state.clone();
    assert_eq!((state.messages, state.first_sequence, state.last_sequence), (5, 4, 8));
}

#[tokio::test]
async fn prefixes_isolate_streams_and_subjects_on_one_server() {
    let server = NatsServer::start().await.expect("nats");
    let js = jetstream(&server).await;
    let a = Topology::with_prefix(&unique_name("a")).expect("prefix");
    let b = Topology::with_prefix(&unique_name("b")).expect("prefix");
    provision_streams(&js, &a, &limits()).await.expect("a");
    provision_streams(&js, &b, &limits()).await.expect("b: no subject overlap with a");

    let tenant = EntityId::parse("tenant_id", "acme").expect("id");
    let execution = EntityId::parse("execution_id", "e1").expect("id");
    let ack = js
        .publish(a.entity_subject(StreamKind::Executions, &tenant, &execution), "for a".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    assert_eq!(ack.stream, a.stream_name(StreamKind::Executions));

    let mut a_stream = js.get_stream(a.stream_name(StreamKind::Executions)).await.expect("a stream");
    let mut b_stream = js.get_stream(b.stream_name(StreamKind::Executions)).await.expect("b stream");
    assert_eq!(a_stream.info().await.expect("info").state.messages, 1);
    assert_eq!(b_stream.info().await.expect("info").state.messages, 0);
}

#[tokio::test]
async fn provisioning_against_an_unreachable_server_fails_with_unavailable_in_bounded_time() {
    let mut server = NatsServer::start().await.expect("nats");
    let client =
        async_nats::ConnectOptions::new().retry_on_initial_connect().connect(server.url()).await.expect("client");
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_secs(1));
    server.stop();
    let topology = Topology::with_prefix(&unique_name("p")).expect("prefix");
    let started = std::time::Instant::now();
    let err = provision_streams(&js, &topology, &limits()).await.expect_err("server is down");
    assert_eq!(err.kind(), runcast_runtime::ErrorKind::Unavailable, "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "bounded by the request timeout");
}
