//! Safe retries: a command sent again with the same `request_id` (its first answer was lost) is
//! applied once, on any replica, and answers the execution as the first try left it — whether the
//! first try's event is still the last, was followed by others, or left the execution in a state
//! that refuses the same command.

use crate::support::{Executions, Stack, admin, create, events_of, events_on, executions, http};
use runcast_contract::StreamKind;
use runcast_contract::v1::*;
use serde_json::{Value, json};
use tonic::Code;

fn progress(id: &str, percent: u32, request_id: &str) -> ReportProgressRequest {
    ReportProgressRequest { execution_id: id.into(), percent, request_id: request_id.into(), ..Default::default() }
}

fn complete_step(id: &str, request_id: &str) -> ReportStepRequest {
    ReportStepRequest {
        execution_id: id.into(),
        step_id: "build".into(),
        status: StepStatus::Completed.into(),
        request_id: request_id.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_retried_request_is_applied_once_on_any_replica_and_answers_as_its_first_try() {
    let stack = Stack::start().await;
    let (mut first, mut second) = tokio::join!(stack.api(&[]), stack.api(&[]));
    let token = admin();
    let (mut a, mut b) = (executions(&mut first, Some(&token)).await, executions(&mut second, Some(&token)).await);
    let id = create(&mut a, "retries").await;
    let start = UpdateExecutionStatusRequest {
        execution_id: id.clone(),
        status: ExecutionStatus::Running.into(),
        request_id: "start-1".into(),
        ..Default::default()
    };
    let started = a.update_execution_status(start.clone()).await.expect("starts").into_inner();

    // The first try is the last event: the retry, on the other replica, answers it unchanged.
    let again = b.update_execution_status(start.clone()).await.expect("the retry succeeds").into_inner();
    assert_eq!(again, started);
    assert_eq!(events_of(&stack, &id).await.len(), 2, "created + started, once");

    // The first try was followed by another change: a retry the state machine would allow is
    // refused as a duplicate by JetStream; one it would refuse (running → running) is found by
    // looking back. Either way the answer is the first try's, and nothing is written.
    let forty = a.report_progress(progress(&id, 40, "progress-40")).await.expect("40 %").into_inner();
    let sixty = a.report_progress(progress(&id, 60, "progress-60")).await.expect("60 %").into_inner();
    let retried_forty = b.report_progress(progress(&id, 40, "progress-40")).await.expect("retry of 40 %").into_inner();
    assert_eq!(retried_forty, forty, "the execution as the first try left it");
    assert_eq!((retried_forty.progress, sixty.progress), (40, 60));
    let retried_start = b.update_execution_status(start.clone()).await.expect("retry of the start").into_inner();
    assert_eq!(retried_start, started);
    let stored = events_of(&stack, &id).await;
    assert_eq!(stored.len(), 4, "created, started, 40 %, 60 %: no retry wrote anything");
    let request_ids: Vec<&str> = stored.iter().map(|event| event.request_id.as_str()).collect();
    assert_eq!(request_ids, ["", "start-1", "progress-40", "progress-60"], "events carry their request ids");

    // The same command without a request id is a new command: refused, or applied again.
    let refused = b
        .update_execution_status(UpdateExecutionStatusRequest { request_id: String::new(), ..start })
        .await
        .expect_err("running → running without a request id");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let repeated = b.report_progress(progress(&id, 40, "")).await.expect("a new 40 %").into_inner();
    assert_eq!(repeated.version, sixty.version + 1);

    // A step completed once refuses completing again: the retry finds its first try, with a
    // consumer on the executions stream that it deletes when done.
    let done = a.report_step(complete_step(&id, "step-done")).await.expect("step done").into_inner();
    a.report_progress(progress(&id, 90, "")).await.expect("90 %");
    let consumers_before = consumers_of_executions(&stack).await;
    let retried = b.report_step(complete_step(&id, "step-done")).await.expect("retry of the step").into_inner();
    assert_eq!(retried, done);
    assert_eq!(consumers_of_executions(&stack).await, consumers_before, "the look-back's consumer is gone");
    let other = b.report_step(complete_step(&id, "step-done-elsewhere")).await.expect_err("another request");
    assert_eq!(other.code(), Code::FailedPrecondition, "{other:?}");
    assert_eq!(events_of(&stack, &id).await.len(), 7);

    // A guarded change (expected_version) retried after another change: the version no longer
    // matches, and the first try is found instead of answering ABORTED.
    let at = a.get_execution(GetExecutionRequest { execution_id: id.clone() }).await.expect("get").into_inner();
    let guarded_pause = UpdateExecutionStatusRequest {
        execution_id: id.clone(),
        status: ExecutionStatus::Paused.into(),
        expected_version: at.version,
        request_id: "pause-at-version".into(),
        ..Default::default()
    };
    let paused = a.update_execution_status(guarded_pause.clone()).await.expect("pauses").into_inner();
    a.resume_execution(ResumeExecutionRequest { execution_id: id.clone(), ..Default::default() })
        .await
        .expect("resumes");
    assert_eq!(
        b.update_execution_status(guarded_pause.clone()).await.expect("retry of the pause").into_inner(),
        paused
    );
    let stale = b
        .update_execution_status(UpdateExecutionStatusRequest { request_id: String::new(), ..guarded_pause })
        .await
        .expect_err("the same guard without the request id");
    assert_eq!(stale.code(), Code::Aborted, "{stale:?}");
    assert_eq!(events_of(&stack, &id).await.len(), 9);

    // How each retry found its first try, counted on the replica that answered them.
    let metrics = http().get(second.http_url("/metrics")).send().await.expect("sent").text().await.expect("text");
    let answered = |found: &str| {
        let prefix = format!("runcast_api_retries_answered_total{{found=\"{found}\"}} ");
        metrics.lines().find_map(|line| line.strip_prefix(prefix.as_str())?.trim().parse::<f64>().ok())
    };
    assert_eq!(answered("last"), Some(1.0), "the start retried while it was the last event: {metrics}");
    assert_eq!(answered("duplicate"), Some(1.0), "40 % retried after 60 %");
    assert_eq!(answered("look_back"), Some(3.0), "the start, the step and the guarded pause");

    // Hedged: the same request sent to both replicas at once, eight times over. Each pair lands
    // once and both answers are that one change, whichever replica stored it.
    for n in 0..8u32 {
        let request = progress(&id, 50 + n, &format!("hedged-{n}"));
        let (left, right) = tokio::join!(a.report_progress(request.clone()), b.report_progress(request));
        let (left, right) = (left.expect("hedged, one side").into_inner(), right.expect("the other").into_inner());
        assert_eq!(left, right, "both sides answer the one change");
        assert_eq!(left.progress, 50 + n);
    }
    assert_eq!(events_of(&stack, &id).await.len(), 17, "each hedged pair stored once");

    // Request ids are per execution: the same id on another execution is its own request.
    let other_id = create(&mut a, "retries").await;
    a.update_execution_status(start_of(&other_id)).await.expect("starts the other");
    let theirs = b.report_progress(progress(&other_id, 40, "progress-40")).await.expect("same id, other execution");
    assert_eq!((theirs.get_ref().execution_id.as_str(), theirs.get_ref().progress), (other_id.as_str(), 40));
    assert_eq!(events_of(&stack, &other_id).await.len(), 3);
}

/// The consumers on this stack's executions stream.
async fn consumers_of_executions(stack: &Stack) -> Vec<String> {
    use futures::TryStreamExt as _;
    let topology = runcast_contract::Topology::with_prefix(&stack.isolation.stream_prefix).expect("prefix");
    let js = async_nats::jetstream::new(async_nats::connect(stack.infra.nats.url()).await.expect("nats"));
    let stream = js.get_stream(topology.stream_name(runcast_contract::StreamKind::Executions)).await.expect("stream");
    let mut names: Vec<String> = stream.consumer_names().try_collect().await.expect("consumer names");
    names.sort();
    names
}

fn start_of(id: &str) -> UpdateExecutionStatusRequest {
    UpdateExecutionStatusRequest {
        execution_id: id.into(),
        status: ExecutionStatus::Running.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn retried_log_lines_are_appended_once_and_answer_their_first_numbers() {
    let stack = Stack::start().await;
    let (mut first, mut second) = tokio::join!(stack.api(&[]), stack.api(&[]));
    let token = admin();
    let (mut a, mut b) = (executions(&mut first, Some(&token)).await, executions(&mut second, Some(&token)).await);
    let id = create(&mut a, "retries").await;
    let chunk = |texts: &[&str], request_id: &str| AppendLogsRequest {
        execution_id: id.clone(),
        lines: texts.iter().map(|text| LogLineInput { text: (*text).into(), ..Default::default() }).collect(),
        request_id: request_id.into(),
    };
    let upload = |client: &mut Executions, chunks: Vec<AppendLogsRequest>| {
        let mut client = client.clone();
        async move { client.append_logs(futures::stream::iter(chunks)).await.expect("appended").into_inner() }
    };

    let answered = upload(&mut a, vec![chunk(&["one", "two"], "lines-1")]).await;
    assert_eq!((answered.lines_appended, answered.last_line_number), (2, 2));
    // Sent again: on the other replica (its first try is the last chunk), after other lines on the
    // replica that wrote them (a duplicate for JetStream), and twice in one call: the same answer,
    // nothing appended.
    assert_eq!(upload(&mut b, vec![chunk(&["one", "two"], "lines-1")]).await, answered);
    let other = upload(&mut a, vec![chunk(&["three", "four", "five"], "")]).await;
    assert_eq!(other.last_line_number, 5);
    assert_eq!(upload(&mut a, vec![chunk(&["one", "two"], "lines-1")]).await, answered);
    let twice = upload(&mut b, vec![chunk(&["six"], "lines-6"), chunk(&["six"], "lines-6")]).await;
    assert_eq!((twice.lines_appended, twice.last_line_number), (2, 6), "each message answered, once appended");

    let stored = events_on(&stack, StreamKind::Logs, &id).await;
    let numbers: Vec<Vec<u64>> = stored
        .iter()
        .map(|event| match &event.payload {
            Some(event::Payload::LogsAppended(logs)) => logs.lines.iter().map(|line| line.line_number).collect(),
            other => panic!("not a log event: {other:?}"),
        })
        .collect();
    assert_eq!(numbers, [vec![1, 2], vec![3, 4, 5], vec![6]]);
    let request_ids: Vec<&str> = stored.iter().map(|event| event.request_id.as_str()).collect();
    assert_eq!(request_ids, ["lines-1", "", "lines-6"]);
}

#[tokio::test]
async fn a_bad_request_id_is_refused_naming_it_and_writes_nothing() {
    let stack = Stack::start().await;
    let mut api = stack.api(&[]).await;
    let token = admin();
    let mut client = executions(&mut api, Some(&token)).await;
    let id = create(&mut client, "retries").await;
    client.update_execution_status(start_of(&id)).await.expect("starts");
    for bad in ["has space", "dotted.id", &"r".repeat(65)] {
        let err = client.report_progress(progress(&id, 10, bad)).await.expect_err(bad);
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}: {err:?}");
        assert!(err.message().starts_with("request_id "), "{}", err.message());
    }
    assert_eq!(events_of(&stack, &id).await.len(), 2);
}

#[tokio::test]
async fn rest_commands_take_the_request_id_in_their_body() {
    let stack = Stack::start().await;
    let mut api = stack.api(&[]).await;
    let token = admin();
    let id = create(&mut executions(&mut api, Some(&token)).await, "retries").await;
    let base = api.http_url("/api/v1");
    let post = |path: String, body: Value| {
        let request = http().post(format!("{base}{path}")).bearer_auth(&token).json(&body);
        async move {
            let response = request.send().await.expect("sent");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("json"))
        }
    };

    let start = json!({"status": "running", "request_id": "rest-start"});
    let (status, started) = post(format!("/executions/{id}/status"), start.clone()).await;
    assert_eq!(status, 200, "{started}");
    let progress = json!({"percent": 30, "request_id": "rest-30"});
    let (_, thirty) = post(format!("/executions/{id}/progress"), progress.clone()).await;
    assert_eq!(post(format!("/executions/{id}/status"), start).await, (200, started));
    assert_eq!(post(format!("/executions/{id}/progress"), progress).await, (200, thirty));

    // Cancel takes an optional body; with a request id a retried cancel answers the cancel.
    let cancel = json!({"reason": "superseded", "request_id": "rest-cancel"});
    let (status, cancelled) = post(format!("/executions/{id}/cancel"), cancel.clone()).await;
    assert_eq!((status, cancelled["status"].as_str()), (200, Some("cancelled")), "{cancelled}");
    assert_eq!(post(format!("/executions/{id}/cancel"), cancel).await, (200, cancelled));
    let (status, refused) = post(format!("/executions/{id}/cancel"), json!({"reason": "again"})).await;
    assert_eq!(status, 409, "a cancel without the request id is a new one: {refused}");

    let lines = json!({"lines": [{"text": "rest line"}], "request_id": "rest-lines"});
    let (status, appended) = post(format!("/executions/{id}/logs"), lines.clone()).await;
    assert_eq!((status, appended["last_line_number"].as_u64()), (200, Some(1)), "{appended}");
    assert_eq!(post(format!("/executions/{id}/logs"), lines).await, (200, appended));
    assert_eq!(events_on(&stack, StreamKind::Logs, &id).await.len(), 1, "the lines once");

    let (status, bad) = post(format!("/executions/{id}/progress"), json!({"percent": 1, "request_id": "a b"})).await;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(events_of(&stack, &id).await.len(), 4, "created, running, 30 %, cancelled");
}

#[tokio::test]
async fn rest_takes_the_idempotency_key_header_for_the_request_id_and_the_create_key() {
    let stack = Stack::start().await;
    let api = stack.api(&[]).await;
    let token = admin();
    let base = api.http_url("/api/v1");
    let post = |path: String, key: Option<&str>, body: Value| {
        let mut request = http().post(format!("{base}{path}")).bearer_auth(&token).json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        async move {
            let response = request.send().await.expect("sent");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("json"))
        }
    };

    // A create keyed by the header alone is the same execution when sent again.
    let create = json!({"workflow_id": "header-keys"});
    let (status, created) = post("/executions".into(), Some("nightly-2026-12-05"), create.clone()).await;
    assert_eq!(status, 201, "{created}");
    let id = created["execution_id"].as_str().expect("id").to_owned();
    let (_, again) = post("/executions".into(), Some("nightly-2026-12-05"), create.clone()).await;
    assert_eq!(again["execution_id"], id.as_str(), "the header is the key");
    let (_, unkeyed) = post("/executions".into(), None, create.clone()).await;
    assert_ne!(unkeyed["execution_id"], id.as_str(), "without it, a new execution");
    let keyed_in_body = json!({"workflow_id": "header-keys", "idempotency_key": "nightly-2026-12-05"});
    let (_, body_keyed) = post("/executions".into(), None, keyed_in_body).await;
    assert_eq!(body_keyed["execution_id"], id.as_str(), "the same key as the body's");

    // Commands: the header is the request id (quoted, as the IETF draft writes it, or not).
    let (status, started) =
        post(format!("/executions/{id}/status"), Some("\"h-start\""), json!({"status": "running"})).await;
    assert_eq!(status, 200, "{started}");
    let (_, thirty) = post(format!("/executions/{id}/progress"), Some("h-30"), json!({"percent": 30})).await;
    assert_eq!(
        post(format!("/executions/{id}/status"), Some("h-start"), json!({"status": "running"})).await,
        (200, started)
    );
    assert_eq!(
        post(format!("/executions/{id}/progress"), Some("h-30"), json!({"percent": 30})).await,
        (200, thirty.clone())
    );
    // The same id in the body and the header is one id; different ones are refused, writing nothing.
    let same = json!({"percent": 30, "request_id": "h-30"});
    assert_eq!(post(format!("/executions/{id}/progress"), Some("h-30"), same).await, (200, thirty));
    let (status, differ) =
        post(format!("/executions/{id}/progress"), Some("h-31"), json!({"percent": 31, "request_id": "b-31"})).await;
    assert_eq!(status, 400, "{differ}");
    let message = differ["error"]["message"].as_str().expect("message");
    assert!(message.contains("'b-31'") && message.contains("'h-31'"), "{message}");
    let (status, bad) = post(format!("/executions/{id}/progress"), Some("a b"), json!({"percent": 32})).await;
    assert_eq!(status, 400, "{bad}");
    assert!(bad["error"]["message"].as_str().is_some_and(|m| m.starts_with("Idempotency-Key header ")), "{bad}");
    let (status, cancelled) = post(format!("/executions/{id}/cancel"), Some("h-cancel"), json!({})).await;
    assert_eq!((status, cancelled["status"].as_str()), (200, Some("cancelled")), "{cancelled}");
    assert_eq!(post(format!("/executions/{id}/cancel"), Some("h-cancel"), json!({})).await, (200, cancelled));

    let history = events_of(&stack, &id).await;
    assert_eq!(history.len(), 4, "created, running, 30 %, cancelled");
    let ids: Vec<&str> = history.iter().map(|event| event.request_id.as_str()).collect();
    assert_eq!(ids, ["", "h-start", "h-30", "h-cancel"], "each change once, under the header's id");
}

/// A `request_id` (or create key) reused for another change is refused — answered by the first
/// try, that change would be lost without a word — however the first try is found, and nothing is
/// written; the same change with other conditions (`expected_version`) is still a retry.
#[tokio::test]
async fn a_request_id_reused_for_another_change_is_refused_and_writes_nothing() {
    let stack = Stack::start().await;
    let (mut first, mut second) = tokio::join!(stack.api(&[]), stack.api(&[]));
    let token = admin();
    let (mut a, mut b) = (executions(&mut first, Some(&token)).await, executions(&mut second, Some(&token)).await);
    let id = create(&mut a, "reuse").await;
    let start = UpdateExecutionStatusRequest { request_id: "r-start".into(), ..start_of(&id) };
    let started = a.update_execution_status(start.clone()).await.expect("starts").into_inner();
    let refused = |outcome: Result<tonic::Response<Execution>, tonic::Status>, what: &str| {
        let err = outcome.expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(err.message().starts_with("request_id "), "{what}: {}", err.message());
        err.message().to_owned()
    };

    // The first try is the last event (on the other replica: read from NATS, with its fingerprint).
    let message = refused(b.report_progress(progress(&id, 40, "r-start")).await, "progress under the start's id");
    assert!(message.contains("execution.started") && message.contains("new request_id"), "{message}");
    // The first try was followed by others: JetStream refuses the publish as a duplicate.
    a.report_progress(progress(&id, 40, "p-40")).await.expect("40 %");
    a.report_progress(progress(&id, 60, "p-60")).await.expect("60 %");
    refused(b.report_progress(progress(&id, 41, "p-40")).await, "41 % under the 40 %'s id");
    // The state machine refuses it (running → running): found by looking back.
    let restart = UpdateExecutionStatusRequest { message: "once more".into(), ..start.clone() };
    refused(b.update_execution_status(restart).await, "the start with another message");
    // The same change, guarded by the version it now expects, is still its retry.
    let at = b.get_execution(GetExecutionRequest { execution_id: id.clone() }).await.expect("get").into_inner();
    let guarded = UpdateExecutionStatusRequest { expected_version: at.version, ..start };
    assert_eq!(b.update_execution_status(guarded).await.expect("retry").into_inner(), started);
    assert_eq!(events_of(&stack, &id).await.len(), 4, "created, started, 40 %, 60 %: no reuse wrote anything");

    // Log lines: other lines under an id are refused, the last chunk or not.
    let chunk = |text: &str, request_id: &str| AppendLogsRequest {
        execution_id: id.clone(),
        lines: vec![LogLineInput { text: text.into(), ..Default::default() }],
        request_id: request_id.into(),
    };
    a.append_logs(futures::stream::iter([chunk("one", "l-1")])).await.expect("appended");
    for (mut client, what) in [(b.clone(), "the last chunk"), (a.clone(), "after another chunk")] {
        let err = client.append_logs(futures::stream::iter([chunk("uno", "l-1")])).await.expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(err.message().contains("log.appended"), "{what}: {}", err.message());
        a.append_logs(futures::stream::iter([chunk("between", "")])).await.expect("other lines");
    }
    let texts: Vec<String> = events_on(&stack, StreamKind::Logs, &id)
        .await
        .iter()
        .flat_map(|event| match &event.payload {
            Some(event::Payload::LogsAppended(logs)) => logs.lines.iter().map(|line| line.text.clone()).collect(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(texts, ["one", "between", "between"]);

    // A create key names one execution: asked for another, it is refused; asked again, it answers.
    let keyed = |workflow: &str, labels: &[(&str, &str)]| CreateExecutionRequest {
        workflow_id: workflow.into(),
        idempotency_key: "order-42".into(),
        labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        ..Default::default()
    };
    let order = a.create_execution(keyed("orders", &[("region", "eu")])).await.expect("created").into_inner();
    for (other, field) in [(keyed("refunds", &[("region", "eu")]), "workflow_id"), (keyed("orders", &[]), "labels")] {
        let err = b.create_execution(other).await.expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(field) && err.message().contains(&order.execution_id), "{}", err.message());
    }
    let again = b.create_execution(keyed("orders", &[("region", "eu")])).await.expect("the same create").into_inner();
    assert_eq!(again, order);
    assert_eq!(events_of(&stack, &order.execution_id).await.len(), 1);

    // Over REST: 400 with the gRPC code, nothing written.
    let response = http()
        .post(second.http_url(&format!("/api/v1/executions/{id}/progress")))
        .bearer_auth(&token)
        .header("Idempotency-Key", "p-60")
        .json(&json!({"percent": 61}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "INVALID_ARGUMENT", "{body}");
    assert_eq!(events_of(&stack, &id).await.len(), 4);

    let metrics = http().get(second.http_url("/metrics")).send().await.expect("sent").text().await.expect("text");
    let reused = metrics
        .lines()
        .find_map(|line| line.strip_prefix("runcast_api_request_ids_reused_total ")?.trim().parse::<f64>().ok());
    assert_eq!(reused, Some(5.0), "3 commands, 1 upload and the REST one on this replica: {metrics}");
}
