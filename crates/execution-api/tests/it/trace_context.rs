//! The W3C trace context of a request travels with the event it causes, in the NATS headers, so
//! the persister and the gateways continue the caller's trace; and the spans really leave the
//! processes over OTLP/gRPC when an endpoint is set.

use crate::support::{Stack, TENANT, admin, executions, http};
use runcast_contract::v1::CreateExecutionRequest;
use runcast_contract::{EntityId, StreamKind, Topology};
use runcast_testkit::otlp::TraceCollector;
use std::time::Duration;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

async fn traceparent_of_last_event(stack: &Stack, execution_id: &str) -> String {
    let topology = Topology::with_prefix(&stack.isolation.stream_prefix).expect("prefix");
    let subject = topology.entity_subject(
        StreamKind::Executions,
        &EntityId::parse("tenant_id", TENANT).expect("id"),
        &EntityId::parse("execution_id", execution_id).expect("id"),
    );
    let js = async_nats::jetstream::new(async_nats::connect(stack.infra.nats.url()).await.expect("nats"));
    let stream = js.get_stream(topology.stream_name(StreamKind::Executions)).await.expect("stream");
    let message = stream.direct_get_last_for_subject(subject).await.expect("event");
    message
        .headers
        .get("traceparent")
        .map(|value| value.as_str().to_owned())
        .unwrap_or_else(|| panic!("no traceparent in {:?}", message.headers))
}

#[tokio::test]
async fn the_callers_trace_continues_in_the_event_headers_over_grpc_and_rest() {
    let stack = Stack::start().await;
    let mut api = stack.api(&[]).await;
    let mut client = executions(&mut api, Some(&admin())).await;

    let mut request = tonic::Request::new(CreateExecutionRequest { workflow_id: "wf".into(), ..Default::default() });
    let caller = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    request.metadata_mut().insert("traceparent", caller.parse().expect("ascii"));
    let id = client.create_execution(request).await.expect("created").into_inner().execution_id;
    let traceparent = traceparent_of_last_event(&stack, &id).await;
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[1], TRACE_ID, "same trace as the caller");
    assert_ne!(parts[2], "00f067aa0ba902b7", "a span of the api, child of the caller's");

    let response: serde_json::Value = http()
        .post(api.http_url("/api/v1/executions"))
        .bearer_auth(admin())
        .header("traceparent", caller)
        .json(&serde_json::json!({"workflow_id": "wf"}))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    let id = response["execution_id"].as_str().expect("id");
    assert_eq!(traceparent_of_last_event(&stack, id).await.split('-').nth(1), Some(TRACE_ID));

    // Without a caller's trace, the api starts one.
    let id = crate::support::create(&mut client, "wf").await;
    let fresh = traceparent_of_last_event(&stack, &id).await;
    let trace_id = fresh.split('-').nth(1).expect("trace id");
    assert_ne!(trace_id, TRACE_ID);
    assert_ne!(trace_id, "0".repeat(32), "a valid new trace");
}

#[tokio::test]
async fn spans_are_exported_over_otlp_by_the_api_and_the_persister() {
    let stack = Stack::start().await;
    let mut collector = TraceCollector::start().await.expect("collector");
    let otel = [("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "200")];
    let mut api = stack.api(&otel).await;
    let _persister = stack.persister_with(&otel).await;
    let mut client = executions(&mut api, Some(&admin())).await;
    let mut request = tonic::Request::new(CreateExecutionRequest { workflow_id: "wf".into(), ..Default::default() });
    request.metadata_mut().insert("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01").parse().expect("ascii"));
    client.create_execution(request).await.expect("created");

    // The api's span of the call is in the caller's trace; the persister's batch span links to it.
    let trace_id = hex::decode(TRACE_ID).expect("hex");
    collector
        .wait_for("the api's span in the trace and the persister's link to it", Duration::from_secs(30), |spans| {
            let in_api = spans.iter().any(|(service, span)| service == "execution-api" && span.trace_id == trace_id);
            let linked = spans.iter().any(|(service, span)| {
                service == "event-persister" && span.links.iter().any(|link| link.trace_id == trace_id)
            });
            in_api && linked
        })
        .await
        .unwrap_or_else(|err| panic!("{err}"));
}
