//! Reads: lists and history from the read model (with the real persister), pagination,
//! `as_of_offset`, REST shapes, and `WatchExecution` with resume.

use crate::support::{Stack, admin, executions, http};
use futures::StreamExt as _;
use runcast_contract::v1::*;
use std::collections::HashSet;
use std::time::Duration;

fn set(execution_id: &str, status: ExecutionStatus) -> UpdateExecutionStatusRequest {
    UpdateExecutionStatusRequest { execution_id: execution_id.into(), status: status.into(), ..Default::default() }
}

#[tokio::test]
async fn lists_page_through_the_read_model_with_filters_and_a_low_watermark() {
    let stack = Stack::start().await;
    let _persister = stack.persister().await;
    let mut api = stack.api(&[]).await;
    let mut client = executions(&mut api, Some(&admin())).await;
    let mut created = Vec::new();
    for n in 0..7 {
        let workflow = if n % 2 == 0 { "even" } else { "odd" };
        let execution = client
            .create_execution(CreateExecutionRequest { workflow_id: workflow.into(), ..Default::default() })
            .await
            .expect("create")
            .into_inner();
        created.push(execution);
    }
    let running = client
        .update_execution_status(set(&created[0].execution_id, ExecutionStatus::Running))
        .await
        .expect("run")
        .into_inner();

    let everything = runcast_testkit::eventually("the read model to catch up", Duration::from_secs(20), || {
        let mut client = client.clone();
        let wanted = running.offset;
        async move {
            let page = client
                .list_executions(ListExecutionsRequest { page_size: 100, ..Default::default() })
                .await
                .ok()?
                .into_inner();
            (page.as_of_offset >= wanted).then_some(page)
        }
    })
    .await
    .expect("caught up");
    assert_eq!(everything.executions.len(), 7, "as_of_offset covers every write");

    // Pages of 3: every execution exactly once, newest first.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_executions(ListExecutionsRequest { page_size: 3, page_token: token.clone(), ..Default::default() })
            .await
            .expect("page")
            .into_inner();
        assert!(page.executions.len() <= 3);
        seen.extend(page.executions.into_iter().map(|e| e.execution_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 7);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 7, "no duplicates across pages");
    let expected: Vec<_> = created.iter().rev().map(|e| e.execution_id.clone()).collect();
    assert_eq!(seen, expected, "newest first");

    let odd = client
        .list_executions(ListExecutionsRequest { workflow_id: "odd".into(), ..Default::default() })
        .await
        .expect("filter")
        .into_inner();
    assert_eq!(odd.executions.len(), 3);
    let running_only = client
        .list_executions(ListExecutionsRequest {
            statuses: vec![ExecutionStatus::Running.into()],
            ..Default::default()
        })
        .await
        .expect("filter")
        .into_inner();
    assert_eq!(
        running_only.executions.iter().map(|e| e.execution_id.as_str()).collect::<Vec<_>>(),
        [created[0].execution_id.as_str()]
    );

    // REST: the same list shape and names.
    let body: serde_json::Value = http()
        .get(api.http_url("/api/v1/executions?statuses=running&limit=5"))
        .bearer_auth(admin())
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(body["items"][0]["status"], "running");
    assert_eq!(body["items"][0]["execution_id"], created[0].execution_id);
    assert!(body["as_of_offset"].as_u64().expect("number") >= running.offset);
    assert_eq!(body["next_cursor"], "");

    // A client that accepts gzip (browsers, HTTP libraries) gets the same list compressed.
    let all = api.http_url("/api/v1/executions?limit=100");
    let plain = http().get(&all).bearer_auth(admin()).send().await.expect("sent");
    assert_eq!(plain.headers().get("content-encoding"), None, "not asked: plain");
    let plain: serde_json::Value = plain.json().await.expect("json");
    let gzipped = http().get(&all).bearer_auth(admin()).header("Accept-Encoding", "gzip").send().await.expect("sent");
    assert_eq!(gzipped.headers().get("content-encoding").and_then(|v| v.to_str().ok()), Some("gzip"));
    let bytes = gzipped.bytes().await.expect("body");
    let mut inflated = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes.as_ref()), &mut inflated).expect("gzip");
    let unzipped: serde_json::Value = serde_json::from_slice(&inflated).expect("json");
    assert_eq!(unzipped, plain);
    assert!(bytes.len() * 2 < inflated.len(), "{} bytes for {}", bytes.len(), inflated.len());

    // History of one execution, oldest first, with offsets.
    let events = client
        .list_events(ListEventsRequest { execution_id: created[0].execution_id.clone(), ..Default::default() })
        .await
        .expect("events")
        .into_inner()
        .events;
    let types: Vec<_> = events.iter().map(|e| e.r#type).collect();
    assert_eq!(types, [i32::from(EventType::ExecutionCreated), i32::from(EventType::ExecutionStarted)]);
    assert!(events[0].offset < events[1].offset);
    let rest: serde_json::Value = http()
        .get(api.http_url(&format!("/api/v1/events?execution_id={}&type=execution.started", created[0].execution_id)))
        .bearer_auth(admin())
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(rest["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(rest["items"][0]["type"], "execution.started");
    let bad = http()
        .get(api.http_url("/api/v1/events?type=execution.exploded"))
        .bearer_auth(admin())
        .send()
        .await
        .expect("sent");
    assert_eq!(bad.status().as_u16(), 400);
}

#[tokio::test]
async fn watch_streams_the_state_then_events_and_resumes_from_an_offset_without_gap_or_duplicate() {
    let stack = Stack::start().await;
    let mut api = stack.api(&[]).await;
    let mut client = executions(&mut api, Some(&admin())).await;
    let id = crate::support::create(&mut client, "wf").await;
    let mut watch = client
        .watch_execution(WatchExecutionRequest { execution_id: id.clone(), from_offset: None })
        .await
        .expect("watch")
        .into_inner();
    let first =
        tokio::time::timeout(Duration::from_secs(10), watch.next()).await.expect("state").expect("item").expect("ok");
    assert_eq!(first.r#type, i32::from(EventType::ExecutionCreated), "the current state first");

    client.update_execution_status(set(&id, ExecutionStatus::Running)).await.expect("run");
    let started =
        tokio::time::timeout(Duration::from_secs(10), watch.next()).await.expect("live").expect("item").expect("ok");
    assert_eq!(started.r#type, i32::from(EventType::ExecutionStarted));
    drop(watch);

    // While nobody watches: five more events.
    for percent in [10, 20, 30, 40, 50] {
        client
            .report_progress(ReportProgressRequest { execution_id: id.clone(), percent, ..Default::default() })
            .await
            .expect("progress");
    }
    let mut resumed = client
        .watch_execution(WatchExecutionRequest { execution_id: id.clone(), from_offset: Some(started.offset) })
        .await
        .expect("resume")
        .into_inner();
    let mut missed = Vec::new();
    for _ in 0..5 {
        let event = tokio::time::timeout(Duration::from_secs(10), resumed.next())
            .await
            .expect("replayed")
            .expect("item")
            .expect("ok");
        missed.push(event);
    }
    let percents: Vec<_> = missed
        .iter()
        .map(|e| match &e.payload {
            Some(event::Payload::ProgressReported(p)) => p.percent,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(percents, [10, 20, 30, 40, 50], "exactly the missing events, in order");
    assert!(missed.windows(2).all(|w| w[0].offset < w[1].offset));
    assert!(missed[0].offset > started.offset, "nothing at or before the resume offset");

    client.update_execution_status(set(&id, ExecutionStatus::Completed)).await.expect("complete");
    let last =
        tokio::time::timeout(Duration::from_secs(10), resumed.next()).await.expect("live").expect("item").expect("ok");
    assert_eq!(last.r#type, i32::from(EventType::ExecutionCompleted));
    let end = tokio::time::timeout(Duration::from_secs(10), resumed.next()).await.expect("ends");
    assert!(end.is_none(), "the stream ends after a terminal event");
}

#[tokio::test]
async fn the_openapi_document_is_public_and_describes_the_rest_api_with_the_contract_names() {
    let stack = Stack::start().await;
    let api = stack.api(&[]).await;
    let response = http().get(api.http_url("/api/v1/openapi.json")).send().await.expect("sent");
    assert!(response.status().is_success(), "no credentials needed");
    let document: serde_json::Value = response.json().await.expect("json");
    assert!(document["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    for (path, method) in [
        ("/api/v1/executions", "post"),
        ("/api/v1/executions", "get"),
        ("/api/v1/executions/{id}", "get"),
        ("/api/v1/executions/{id}/cancel", "post"),
        ("/api/v1/events", "get"),
        ("/api/v1/events", "delete"),
        ("/api/v1/agents", "get"),
    ] {
        assert!(document["paths"][path][method].is_object(), "{method} {path} is documented");
    }
    let execution = &document["components"]["schemas"]["Execution"]["properties"];
    assert_eq!(execution["status"]["type"], "string", "enums are strings in JSON");
    assert_eq!(execution["created_at"]["format"], "date-time");
    assert!(execution["execution_id"].is_object() && execution["as_of_offset"].is_null());
    let list_params: Vec<_> = document["paths"]["/api/v1/events"]["get"]["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(list_params.contains(&"type") && list_params.contains(&"cursor"), "{list_params:?}");
    assert!(document["components"]["securitySchemes"]["bearer"].is_object());
    let statuses = execution["status"]["enum"].as_array().expect("enum names listed");
    assert!(statuses.iter().any(|name| name == "running") && !statuses.iter().any(|name| name == "unspecified"));
    let create = &document["components"]["schemas"]["CreateExecutionRequest"];
    assert_eq!(create["required"], serde_json::json!(["workflow_id"]), "{create}");
    for worker_path in ["steps", "progress", "logs", "approvals", "status"] {
        let path = format!("/api/v1/executions/{{id}}/{worker_path}");
        assert!(document["paths"][&path]["post"].is_object(), "POST {path} is documented");
    }
    // Every write takes its request id (a create its key) from the Idempotency-Key header too.
    let writes = ["", "/{id}/status", "/{id}/steps", "/{id}/progress", "/{id}/approvals", "/{id}/logs", "/{id}/cancel"]
        .into_iter()
        .chain(["/{id}/pause", "/{id}/resume", "/{id}/approvals/{approval_id}"]);
    for write in writes {
        let path = format!("/api/v1/executions{write}");
        let header = document["paths"][&path]["post"]["parameters"]
            .as_array()
            .and_then(|parameters| parameters.iter().find(|p| p["name"] == "Idempotency-Key"));
        assert!(header.is_some_and(|h| h["in"] == "header" && h["required"] != true), "POST {path}: {header:?}");
    }

    // The whole document passes an independent validator of the OpenAPI specification.
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), serde_json::to_vec(&document).expect("json")).expect("written");
    let validator = runcast_testkit::tools::openapi_spec_validator().expect("installed by make tools");
    let output = std::process::Command::new(validator).arg(file.path()).output().expect("runs");
    assert!(
        output.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn grpc_reflection_answers_in_v1_and_v1alpha() {
    use futures::StreamExt as _;
    use tonic_reflection::pb::{v1, v1alpha};
    let stack = Stack::start().await;
    let mut api = stack.api(&[]).await;
    let addr = api.addr("grpc_addr").await.expect("grpc");
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connects");

    let mut current = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = v1::ServerReflectionRequest {
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
        ..Default::default()
    };
    let mut answers = current.server_reflection_info(futures::stream::iter([request])).await.expect("v1").into_inner();
    let Some(Ok(answer)) = answers.next().await else { panic!("a v1 answer") };
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) = answer.message_response
    else {
        panic!("a v1 service list")
    };
    assert!(list.service.iter().any(|s| s.name == "runcast.v1.ExecutionService"), "{list:?}");

    let mut older = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1alpha::ServerReflectionRequest {
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(String::new())),
        ..Default::default()
    };
    let mut answers =
        older.server_reflection_info(futures::stream::iter([request])).await.expect("v1alpha").into_inner();
    let Some(Ok(answer)) = answers.next().await else { panic!("a v1alpha answer") };
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer.message_response
    else {
        panic!("a v1alpha service list")
    };
    assert!(list.service.iter().any(|s| s.name == "runcast.v1.AgentService"), "{list:?}");
}

/// gRPC clients that ask for gzip (`grpc-accept-encoding`) get compressed answers and may send
/// compressed requests; the others are answered as before.
#[tokio::test]
async fn grpc_clients_that_ask_for_gzip_get_it_both_ways() {
    use tonic::codec::CompressionEncoding::Gzip;
    let stack = Stack::start().await;
    let mut api = stack.api(&[]).await;
    let plain = executions(&mut api, Some(&admin())).await;
    let mut gzip = plain.clone().accept_compressed(Gzip).send_compressed(Gzip);
    // An input of ~6 KB: what makes an answer worth compressing.
    let artifacts: Vec<String> = (0..60).map(|i| format!("artifact-{i}.tar.gz")).collect();
    let serde_json::Value::Object(fields) = serde_json::json!({ "artifacts": artifacts }) else { unreachable!() };
    let input = runcast_contract::json::object_to_struct(fields);
    let request =
        CreateExecutionRequest { workflow_id: "gzip".into(), input: Some(input.clone()), ..Default::default() };
    let created = gzip.create_execution(request).await.expect("a compressed request is read");
    assert_eq!(created.metadata().get("grpc-encoding").and_then(|v| v.to_str().ok()), Some("gzip"));
    let created = created.into_inner();
    assert_eq!(created.input.as_ref(), Some(&input));
    let get = GetExecutionRequest { execution_id: created.execution_id.clone() };
    let answer = plain.clone().get_execution(get).await.expect("get");
    assert_eq!(answer.metadata().get("grpc-encoding"), None, "not asked: plain");
    assert_eq!(answer.into_inner(), created);
}
