//! An SSE subscription whose replay or snapshot fails (`unavailable`: PostgreSQL or JetStream
//! cannot answer right now) ends the stream after the `error`: an SSE client cannot subscribe
//! again on its stream, which would otherwise stay open and silent forever, while `EventSource`
//! reconnects by itself (with `Last-Event-ID`) once the stream ends.

use crate::helpers::*;

#[tokio::test]
async fn an_sse_subscription_that_cannot_be_served_now_ends_its_stream_after_the_error() {
    let mut world = World::start().await;
    let pool = sqlx::PgPool::connect(&world.isolation.database_url).await.expect("database");
    runcast_store::schema::migrate(&pool).await.expect("schema");
    pool.close().await;
    let gateway = world.gateway(&[]).await;
    // PostgreSQL down: the snapshot of an execution the stream does not hold cannot be read.
    world.infra.postgres.stop();
    let token = token("acme", "alice", 600);
    let mut sse = SseClient::connect(
        &gateway.url("/sse?channel=executions:e-unknown&snapshot=true"),
        &[("Authorization", format!("Bearer {token}"))],
    )
    .await;
    let error = sse.until("error").await;
    assert_eq!(error.data["code"], "unavailable", "{:?}", error.data);
    let next = tokio::time::timeout(WAIT, sse.next()).await.expect("the stream ends rather than staying silent");
    assert!(next.is_none(), "the stream ended after the error: {:?}", next.map(|r| r.data));
}
