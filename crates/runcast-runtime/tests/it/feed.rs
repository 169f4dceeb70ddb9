//! `OrderedFeed` against a real JetStream: order and filtering across many pull requests, pull
//! requests that expire while nothing happens, a consumer deleted under the feed, and a reader
//! that keeps cancelling its reads.

use async_nats::jetstream::{self, stream};
use runcast_runtime::nats::feed::{FeedOptions, OrderedFeed};
use runcast_testkit::{NatsServer, unique_name};
use std::time::Duration;

/// A fresh stream on `server` taking `{name}.>`; returns the context and the stream's name.
async fn stream(server: &NatsServer) -> (jetstream::Context, String) {
    let js = jetstream::new(async_nats::connect(server.url()).await.expect("connects"));
    let name = unique_name("feed");
    js.create_stream(stream::Config { name: name.clone(), subjects: vec![format!("{name}.>")], ..Default::default() })
        .await
        .expect("stream");
    (js, name)
}

/// Publishes `payload` on `subject`, acked; returns its sequence.
async fn publish(js: &jetstream::Context, subject: String, payload: String) -> u64 {
    js.publish(subject, payload.into()).await.expect("sent").await.expect("acked").sequence
}

/// Reads `count` events, each within 10 s; returns (sequence, payload) pairs.
async fn read(feed: &mut OrderedFeed, count: usize) -> Vec<(u64, String)> {
    let mut read = Vec::with_capacity(count);
    for _ in 0..count {
        let message = tokio::time::timeout(Duration::from_secs(10), feed.next())
            .await
            .unwrap_or_else(|_| panic!("event {} of {count} within 10 s", read.len() + 1))
            .expect("an event");
        let sequence = message.info().expect("info").stream_sequence;
        read.push((sequence, String::from_utf8(message.payload.to_vec()).expect("utf-8")));
    }
    read
}

#[tokio::test]
async fn a_feed_returns_its_subject_from_the_start_in_order_across_many_requests_and_after_idle_expiries() {
    let server = NatsServer::start().await.expect("nats");
    let (js, name) = stream(&server).await;
    let mut published = Vec::new();
    for i in 0..200 {
        let subject = if i % 2 == 0 { format!("{name}.a") } else { format!("{name}.b") };
        let sequence = publish(&js, subject, format!("m{i}")).await;
        if i % 2 == 0 {
            published.push((sequence, format!("m{i}")));
        }
    }
    // Small batches: dozens of requests; short expiries and heartbeats: they lapse while idle.
    let options = FeedOptions { batch: 8, expires: Duration::from_secs(1), heartbeat: Duration::from_millis(500) };
    let start = published[10].0;
    let mut feed = OrderedFeed::start(&js, &name, format!("{name}.a"), start, options).await.expect("feed");
    assert_eq!(feed.last_sequence(), start - 1);
    assert_eq!(read(&mut feed, 90).await, published[10..], "only `a`, from the start sequence, in order");

    // Nothing comes while the stream is quiet, through several expired requests...
    assert!(tokio::time::timeout(Duration::from_secs(3), feed.next()).await.is_err(), "nothing to read");
    // ...and the feed still has a request waiting at the server when something does.
    let sequence = publish(&js, format!("{name}.a"), "late".into()).await;
    assert_eq!(read(&mut feed, 1).await, [(sequence, "late".to_owned())]);
    assert_eq!(feed.last_sequence(), sequence);
    // Expired requests were answered by new ones, not noticed as a silent server.
    assert_eq!(feed.recreated(), 0, "the consumer was never lost");
}

#[tokio::test]
async fn a_feed_whose_consumer_is_deleted_goes_on_right_after_the_last_event_it_returned() {
    let server = NatsServer::start().await.expect("nats");
    let (js, name) = stream(&server).await;
    let mut published = Vec::new();
    for i in 0..10 {
        published.push((publish(&js, format!("{name}.x"), format!("m{i}")).await, format!("m{i}")));
    }
    let options = FeedOptions { batch: 4, heartbeat: Duration::from_millis(500), ..FeedOptions::default() };
    let mut feed = OrderedFeed::start(&js, &name, format!("{name}.>"), 1, options).await.expect("feed");
    assert_eq!(read(&mut feed, 5).await, published[..5]);

    let mut stream = js.get_stream(&name).await.expect("stream");
    let consumers: Vec<String> = {
        use futures::TryStreamExt as _;
        stream.consumer_names().try_collect().await.expect("names")
    };
    assert_eq!(consumers.len(), 1, "the feed's own consumer");
    stream.delete_consumer(&consumers[0]).await.expect("deleted");
    for i in 10..15 {
        published.push((publish(&js, format!("{name}.x"), format!("m{i}")).await, format!("m{i}")));
    }
    assert_eq!(read(&mut feed, 10).await, published[5..], "no gap and no repeat across the new consumer");
    assert_eq!(feed.recreated(), 1);
    let info = stream.info().await.expect("info");
    assert_eq!(info.state.consumer_count, 1, "the feed's new consumer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_cancelled_at_any_point_lose_and_repeat_nothing() {
    let server = NatsServer::start().await.expect("nats");
    let (js, name) = stream(&server).await;
    let publisher = {
        let (js, name) = (js.clone(), name.clone());
        tokio::spawn(async move {
            let mut sequences = Vec::new();
            for i in 0..300 {
                sequences.push(publish(&js, format!("{name}.y"), format!("m{i}")).await);
            }
            sequences
        })
    };
    let options = FeedOptions { batch: 8, ..FeedOptions::default() };
    let mut feed = OrderedFeed::start(&js, &name, format!("{name}.y"), 1, options).await.expect("feed");
    let mut read = Vec::new();
    let mut cancelled = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while read.len() < 300 {
        assert!(tokio::time::Instant::now() < deadline, "300 events within 30 s; got {}", read.len());
        // Most reads are dropped mid-way: while a request is published or an answer awaited.
        match tokio::time::timeout(Duration::from_micros(50), feed.next()).await {
            Ok(message) => read.push(message.expect("an event").info().expect("info").stream_sequence),
            Err(_) => cancelled += 1,
        }
    }
    let published = publisher.await.expect("publisher");
    assert_eq!(read, published, "every event once, in order");
    assert!(cancelled > 0, "some reads were cancelled");
}
