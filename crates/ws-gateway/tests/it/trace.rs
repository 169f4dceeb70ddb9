//! The gateway continues the trace of the command that caused an event (its W3C `traceparent` in
//! the NATS headers) and exports its spans over OTLP when an endpoint is set.

use crate::helpers::*;
use runcast_contract::v1::{EventType, ExecutionStatus};
use runcast_testkit::otlp::TraceCollector;
use std::time::Duration;

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";

#[tokio::test]
async fn dispatch_spans_continue_the_publishers_trace_and_are_exported_over_otlp() {
    let world = World::start().await;
    let mut collector = TraceCollector::start().await.expect("collector");
    let (_process, gateway) = world
        .gateway_process(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ])
        .await;
    let mut client = gateway.connect(&token("acme", "alice", 3600)).await;
    client.subscribe(serde_json::json!({"type": "subscribe", "channel": "executions"})).await;

    let event = execution_event("acme", "e-1", "wf", EventType::StepStarted, ExecutionStatus::Running);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("traceparent", format!("00-{TRACE_ID}-b7ad6b7169203331-01").as_str());
    world.publish_with_headers(&event, headers).await.await.expect("published");
    let delivered = client.events(1).await;
    assert_eq!(delivered[0]["type"], "step.started");

    let trace_id = hex::decode(TRACE_ID).expect("hex");
    let spans = collector
        .wait_for("the gateway's dispatch span in the publisher's trace", Duration::from_secs(30), |spans| {
            spans.iter().any(|(service, span)| service == "ws-gateway" && span.trace_id == trace_id)
        })
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let dispatch = spans
        .iter()
        .find(|(service, span)| service == "ws-gateway" && span.trace_id == trace_id)
        .map(|(_, span)| span)
        .expect("found above");
    assert_eq!(dispatch.name, "dispatch");
    assert_eq!(hex::encode(&dispatch.parent_span_id), "b7ad6b7169203331", "a child of the publisher's span");
}
