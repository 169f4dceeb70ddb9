//! End to end: changes made through the execution-api's gRPC interface reach WebSocket and SSE
//! clients on two gateway replicas, with strictly increasing offsets.

use crate::helpers::*;
use clap::Parser;
use runcast_contract::client::Bearer;
use runcast_contract::v1::execution_service_client::ExecutionServiceClient;
use runcast_contract::v1::{
    CreateExecutionRequest, ExecutionStatus, ReportProgressRequest, UpdateExecutionStatusRequest,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn api_token() -> String {
    runcast_testkit::token::token(SECRET, "ops", "acme", &["admin"], 600)
}

#[tokio::test]
async fn changes_made_through_the_api_reach_websocket_and_sse_clients_on_two_replicas() {
    let world = World::start().await;
    let config = execution_api::Config::try_parse_from([
        "execution-api".to_owned(),
        "--grpc-addr=127.0.0.1:0".to_owned(),
        "--http-addr=127.0.0.1:0".to_owned(),
        format!("--nats-url={}", world.infra.nats.url()),
        format!("--stream-prefix={}", world.isolation.stream_prefix),
        format!("--database-url={}", world.isolation.database_url),
        format!("--jwt-secret={SECRET}"),
    ])
    .expect("api configuration");
    let api = execution_api::Application::build(config).await.expect("api builds");
    let grpc = api.grpc_addr();
    let api_stop = CancellationToken::new();
    let _stop_api = api_stop.clone().drop_guard();
    tokio::spawn(api.run_until_stopped(api_stop));

    let replicas = [world.gateway(&[]).await, world.gateway(&[]).await];
    let token = token("acme", "alice", 600);
    let mut sockets = Vec::new();
    let mut streams = Vec::new();
    for replica in &replicas {
        let mut ws = replica.connect(&token).await;
        ws.subscribe(json!({"type": "subscribe", "channel": "executions"})).await;
        sockets.push(ws);
        streams.push(replica.sse("executions", &token).await);
    }

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("api reachable");
    let mut client =
        ExecutionServiceClient::with_interceptor(channel, Bearer::new(Some(&api_token())).expect("bearer"));
    let created = client
        .create_execution(CreateExecutionRequest { workflow_id: "wf-e2e".into(), ..Default::default() })
        .await
        .expect("created")
        .into_inner();
    let id = created.execution_id.clone();
    client
        .update_execution_status(UpdateExecutionStatusRequest {
            execution_id: id.clone(),
            status: ExecutionStatus::Running.into(),
            ..Default::default()
        })
        .await
        .expect("started");
    client
        .report_progress(ReportProgressRequest { execution_id: id.clone(), percent: 40, ..Default::default() })
        .await
        .expect("progress");

    for ws in &mut sockets {
        let events = ws.events(3).await;
        let types: Vec<_> = events.iter().map(|e| e["type"].as_str().unwrap_or_default().to_owned()).collect();
        assert_eq!(types, ["execution.created", "execution.started", "execution.progress"]);
        assert!(events.iter().all(|e| e["data"]["execution_id"] == id.as_str()));
        assert_strictly_increasing(&offsets(&events));
        assert_eq!(events[2]["data"]["state"]["progress"], 40);
    }
    for sse in &mut streams {
        let records = sse.events(3).await;
        let ids: Vec<u64> = records.iter().map(|r| r.id.as_deref().and_then(|v| v.parse().ok()).expect("id")).collect();
        assert_strictly_increasing(&ids);
        assert_eq!(records[0].event.as_deref(), Some("execution.created"));
        assert_eq!(records[2].data["data"]["state"]["status"], "running");
    }
}
