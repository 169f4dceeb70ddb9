//! Two tests sharing one NATS and one PostgreSQL server, running at the same time, each with its
//! own stream prefix and database, never see each other's streams or rows.

use runcast_contract::{EntityId, StreamKind};
use runcast_runtime::config::StreamLimits;
use runcast_testkit::{Infra, Isolation};

/// What one "test" does: provision its streams, migrate its database, write one event and one row.
async fn occupy(infra: &Infra, isolation: &Isolation, marker: &str) {
    let topology = runcast_contract::Topology::with_prefix(&isolation.stream_prefix).expect("prefix");
    let client = async_nats::connect(infra.nats.url()).await.expect("nats");
    let jetstream = async_nats::jetstream::new(client);
    runcast_runtime::nats::provision_streams(&jetstream, &topology, &StreamLimits::default())
        .await
        .expect("provisions");
    let tenant = EntityId::parse("tenant_id", "acme").expect("id");
    let execution = EntityId::parse("execution_id", marker).expect("id");
    jetstream
        .publish(topology.entity_subject(StreamKind::Executions, &tenant, &execution), marker.to_owned().into())
        .await
        .expect("publish")
        .await
        .expect("ack");

    let pool = sqlx::PgPool::connect(&isolation.database_url).await.expect("postgres");
    event_persister::schema::migrate(&pool).await.expect("migrates");
    sqlx::query("INSERT INTO dead_letters (stream, subject, stream_offset, raw, error) VALUES ('EXECUTIONS', $1, 1, '', 'marker')")
        .bind(marker)
        .execute(&pool)
        .await
        .expect("insert");
}

/// What one "test" sees: the payloads in its EXECUTIONS stream and the subjects in its table.
async fn observe(infra: &Infra, isolation: &Isolation) -> (Vec<String>, Vec<String>) {
    let topology = runcast_contract::Topology::with_prefix(&isolation.stream_prefix).expect("prefix");
    let client = async_nats::connect(infra.nats.url()).await.expect("nats");
    let stream = async_nats::jetstream::new(client)
        .get_stream(topology.stream_name(StreamKind::Executions))
        .await
        .expect("own stream exists");
    let mut payloads = Vec::new();
    let last = stream.get_info().await.map(|info| info.state.last_sequence).unwrap_or(0);
    for sequence in 1..=last {
        let message = stream.get_raw_message(sequence).await.expect("message");
        payloads.push(String::from_utf8_lossy(&message.payload).into_owned());
    }
    let pool = sqlx::PgPool::connect(&isolation.database_url).await.expect("postgres");
    let rows = sqlx::query_scalar("SELECT subject FROM dead_letters ORDER BY id").fetch_all(&pool).await.expect("rows");
    (payloads, rows)
}

#[tokio::test]
async fn parallel_tests_on_shared_servers_do_not_see_each_others_streams_or_rows() {
    let infra = Infra::start().await.expect("servers");
    let (first, second) = tokio::try_join!(infra.isolate(), infra.isolate()).expect("isolations");
    assert_ne!(first.stream_prefix, second.stream_prefix);
    assert_ne!(first.database_url, second.database_url);

    tokio::join!(occupy(&infra, &first, "first"), occupy(&infra, &second, "second"));

    assert_eq!(observe(&infra, &first).await, (vec!["first".to_owned()], vec!["first".to_owned()]));
    assert_eq!(observe(&infra, &second).await, (vec!["second".to_owned()], vec!["second".to_owned()]));
}
