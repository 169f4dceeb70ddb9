//! Dependencies failing: NATS gone → `UNAVAILABLE` fast and recovery without a restart;
//! PostgreSQL gone → writes keep working, lists are `UNAVAILABLE`.

use crate::support::{Stack, admin, executions, http};
use runcast_contract::v1::*;
use std::time::{Duration, Instant};
use tonic::Code;

#[tokio::test]
async fn nats_down_is_unavailable_quickly_and_the_api_recovers_when_it_returns() {
    let mut stack = Stack::start().await;
    let mut api = stack.api(&[]).await;
    let mut client = executions(&mut api, Some(&admin())).await;
    let create = || CreateExecutionRequest { workflow_id: "wf".into(), ..Default::default() };
    client.create_execution(create()).await.expect("works while NATS is up");

    stack.infra.nats.stop();
    let started = Instant::now();
    let err = client.create_execution(create()).await.expect_err("NATS is down");
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    assert!(started.elapsed() < Duration::from_secs(10), "bounded: took {:?}", started.elapsed());
    assert!(err.message().contains("NATS"), "says what is wrong: {}", err.message());

    stack.infra.nats.restart().await.expect("NATS back");
    let created = runcast_testkit::eventually("a create after NATS returned", Duration::from_secs(30), || {
        let mut client = client.clone();
        async move { client.create_execution(create()).await.ok() }
    })
    .await
    .expect("the same api process recovers");
    assert_eq!(created.into_inner().version, 1);
    assert!(api.is_running());
}

#[tokio::test]
async fn postgres_down_keeps_writes_and_gets_working_and_makes_lists_unavailable() {
    let mut stack = Stack::start().await;
    let mut api = stack.api(&[]).await;
    let mut client = executions(&mut api, Some(&admin())).await;
    stack.infra.postgres.stop();

    let created = client
        .create_execution(CreateExecutionRequest { workflow_id: "wf".into(), ..Default::default() })
        .await
        .expect("writes do not need PostgreSQL")
        .into_inner();
    let got = client
        .get_execution(GetExecutionRequest { execution_id: created.execution_id.clone() })
        .await
        .expect("get reads the stream");
    assert_eq!(got.into_inner().version, 1);

    let err = client.list_executions(ListExecutionsRequest::default()).await.expect_err("lists need PostgreSQL");
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    assert!(err.message().contains("PostgreSQL"), "{}", err.message());
    let response = http().get(api.http_url("/api/v1/executions")).bearer_auth(admin()).send().await.expect("sent");
    assert_eq!(response.status().as_u16(), 503);
    // Readiness does not depend on PostgreSQL: writes are still served.
    assert!(http().get(api.http_url("/readyz")).send().await.expect("sent").status().is_success());
}
