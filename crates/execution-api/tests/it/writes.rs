//! Writes through JetStream: concurrency, idempotency, illegal transitions, bad input.

use crate::support::{Stack, admin, events_of, executions};
use runcast_contract::WireEnum;
use runcast_contract::v1::*;
use std::collections::HashSet;
use tonic::Code;

fn set(execution_id: &str, status: ExecutionStatus) -> UpdateExecutionStatusRequest {
    UpdateExecutionStatusRequest { execution_id: execution_id.into(), status: status.into(), ..Default::default() }
}

/// Status pairs a single event may connect (same status: progress, steps, approvals granted while
/// others are pending).
fn legal_status_step(from: ExecutionStatus, to: ExecutionStatus) -> bool {
    use ExecutionStatus as S;
    from == to && !from.is_terminal()
        || matches!(
            (from, to),
            (S::Pending, S::Running)
                | (S::Running, S::Paused | S::Blocked | S::Completed | S::Failed)
                | (S::Paused | S::Blocked, S::Running)
                | (S::Blocked, S::Failed)
                | (S::Pending | S::Running | S::Paused | S::Blocked, S::Cancelled)
        )
}

fn status_of(event: &Event) -> ExecutionStatus {
    match &event.state {
        Some(event::State::Execution(e)) => ExecutionStatus::try_from(e.status).expect("known status"),
        _ => panic!("execution event without state"),
    }
}

#[tokio::test]
async fn sixteen_concurrent_writers_land_contiguous_legal_events() {
    let stack = Stack::start().await;
    let mut api = stack.api(&[]).await;
    let token = admin();
    let mut client = executions(&mut api, Some(&token)).await;
    let created = client
        .create_execution(CreateExecutionRequest { workflow_id: "race".into(), ..Default::default() })
        .await
        .expect("created")
        .into_inner();
    let id = created.execution_id.clone();

    let mut writers = Vec::new();
    for writer in 0..16u32 {
        let mut client = client.clone();
        let id = id.clone();
        writers.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for round in 0..12u32 {
                let result = match (writer + round) % 6 {
                    0 => client.update_execution_status(set(&id, ExecutionStatus::Running)).await.map(drop),
                    1 => client
                        .pause_execution(PauseExecutionRequest { execution_id: id.clone(), ..Default::default() })
                        .await
                        .map(drop),
                    2 => client
                        .resume_execution(ResumeExecutionRequest { execution_id: id.clone(), ..Default::default() })
                        .await
                        .map(drop),
                    3 => client
                        .report_progress(ReportProgressRequest {
                            execution_id: id.clone(),
                            percent: round * 8,
                            ..Default::default()
                        })
                        .await
                        .map(drop),
                    4 => client
                        .report_step(ReportStepRequest {
                            execution_id: id.clone(),
                            step_id: format!("w{writer}r{round}"),
                            status: StepStatus::Running.into(),
                            ..Default::default()
                        })
                        .await
                        .map(drop),
                    _ if writer == 15 && round == 11 => client
                        .cancel_execution(CancelExecutionRequest { execution_id: id.clone(), ..Default::default() })
                        .await
                        .map(drop),
                    _ => client.get_execution(GetExecutionRequest { execution_id: id.clone() }).await.map(drop),
                };
                outcomes.push(result.map_err(|status| (status.code(), status.message().to_owned())));
            }
            outcomes
        }));
    }
    let mut successes = 0;
    for writer in writers {
        for outcome in writer.await.expect("writer task") {
            match outcome {
                Ok(()) => successes += 1,
                Err((code, message)) => {
                    assert!(matches!(code, Code::Aborted | Code::FailedPrecondition), "unexpected {code:?}: {message}");
                    assert!(!message.is_empty());
                }
            }
        }
    }
    assert!(successes > 16, "most commands should land, {successes} did");

    let events = events_of(&stack, &id).await;
    assert!(events.len() > 2, "events landed");
    for (index, event) in events.iter().enumerate() {
        assert_eq!(event.version, index as u64 + 1, "versions are contiguous from 1");
    }
    for pair in events.windows(2) {
        let (from, to) = (status_of(&pair[0]), status_of(&pair[1]));
        assert!(legal_status_step(from, to), "illegal {} → {} by {}", from.wire_name(), to.wire_name(), pair[1].r#type);
    }
    let final_state =
        client.get_execution(GetExecutionRequest { execution_id: id.clone() }).await.expect("get").into_inner();
    assert_eq!(final_state.version, events.len() as u64, "get reads its writes");
}

#[tokio::test]
async fn one_idempotency_key_on_two_replicas_is_one_execution_even_after_the_duplicate_window() {
    let stack = Stack::start().await;
    // A one-second broker duplicate window: idempotency must not depend on it.
    let window = [("RUNCAST_STREAM_DUPLICATE_WINDOW", "1s")];
    let (mut first, mut second) = tokio::join!(stack.api(&window), stack.api(&window));
    let token = admin();
    let (mut a, mut b) = (executions(&mut first, Some(&token)).await, executions(&mut second, Some(&token)).await);
    let request = || CreateExecutionRequest {
        workflow_id: "deploy".into(),
        idempotency_key: "order-1234".into(),
        ..Default::default()
    };

    let mut creates = Vec::new();
    for n in 0..8 {
        let mut client = if n % 2 == 0 { a.clone() } else { b.clone() };
        creates.push(tokio::spawn(async move { client.create_execution(request()).await.map(|r| r.into_inner()) }));
    }
    let mut ids = HashSet::new();
    for create in creates {
        let execution = create.await.expect("task").expect("every create succeeds");
        ids.insert(execution.execution_id);
    }
    assert_eq!(ids.len(), 1, "one execution for one key: {ids:?}");
    let id = ids.into_iter().next().expect("one id");
    assert_eq!(events_of(&stack, &id).await.len(), 1, "one execution.created event");

    // Move it on, wait out the duplicate window, create again: the same execution, as it is now.
    a.update_execution_status(set(&id, ExecutionStatus::Running)).await.expect("starts");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await; // the window is a fixed 1 s
    let again = b.create_execution(request()).await.expect("create again").into_inner();
    assert_eq!((again.execution_id.as_str(), again.status), (id.as_str(), i32::from(ExecutionStatus::Running)));
    assert_eq!(events_of(&stack, &id).await.len(), 2);

    let other = a
        .create_execution(CreateExecutionRequest { idempotency_key: "order-1235".into(), ..request() })
        .await
        .expect("another key")
        .into_inner();
    assert_ne!(other.execution_id, id);
}

/// Each replica remembers its own last write and decides its next one on it without reading NATS;
/// what another replica wrote in between must still win: a stale allowance is caught by the
/// append's sequence check, a stale refusal is confirmed against the stream before it is given.
#[tokio::test]
async fn a_replica_deciding_on_what_it_remembers_never_overrules_another_replicas_write() {
    let stack = Stack::start().await;
    let (mut first, mut second) = tokio::join!(stack.api(&[]), stack.api(&[]));
    let token = admin();
    let (mut a, mut b) = (executions(&mut first, Some(&token)).await, executions(&mut second, Some(&token)).await);
    let id = crate::support::create(&mut a, "wf").await;
    let pause = || PauseExecutionRequest { execution_id: id.clone(), ..Default::default() };
    let resume = || ResumeExecutionRequest { execution_id: id.clone(), ..Default::default() };
    a.update_execution_status(set(&id, ExecutionStatus::Running)).await.expect("a: running");

    // a remembers "running"; b pauses. a's resume would be refused on what it remembers: it is not.
    b.pause_execution(pause()).await.expect("b: pause");
    let resumed = a.resume_execution(resume()).await.expect("a: resume of b's pause").into_inner();
    assert_eq!((resumed.status, resumed.version), (i32::from(ExecutionStatus::Running), 4));

    // b remembers "paused" (its own write); a's resume made it running. b's resume would be allowed
    // on what it remembers: it is refused, and nothing is written.
    let refused = b.resume_execution(resume()).await.expect_err("b: resume of a running execution");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    b.cancel_execution(CancelExecutionRequest { execution_id: id.clone(), ..Default::default() })
        .await
        .expect("b: cancel");
    let refused = a.pause_execution(pause()).await.expect_err("a: pause of a cancelled execution");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");

    let history = events_of(&stack, &id).await;
    let versions: Vec<u64> = history.iter().map(|event| event.version).collect();
    assert_eq!(versions, [1, 2, 3, 4, 5], "one event per accepted command, in order");
    assert_eq!(status_of(&history[4]), ExecutionStatus::Cancelled);
    // The stale decisions did happen (and were caught): each replica lost a race to its memory.
    for api in [&first, &second] {
        let metrics = crate::support::http()
            .get(api.http_url("/metrics"))
            .send()
            .await
            .expect("sent")
            .text()
            .await
            .expect("text");
        let conflicts = metrics
            .lines()
            .find_map(|line| line.strip_prefix("runcast_api_write_conflicts_total "))
            .and_then(|value| value.trim().parse::<f64>().ok());
        assert!(conflicts.is_some_and(|n| n >= 1.0), "a stale memory was caught by the sequence check: {metrics}");
    }
}

#[tokio::test]
async fn illegal_transitions_are_refused_and_publish_nothing() {
    let stack = Stack::start().await;
    let mut api = stack.api(&[]).await;
    let mut client = executions(&mut api, Some(&admin())).await;
    let create = |workflow: &str| CreateExecutionRequest { workflow_id: workflow.into(), ..Default::default() };

    let done = client.create_execution(create("wf")).await.expect("create").into_inner().execution_id;
    client.update_execution_status(set(&done, ExecutionStatus::Running)).await.expect("run");
    client.update_execution_status(set(&done, ExecutionStatus::Completed)).await.expect("complete");
    let cancelled = client.create_execution(create("wf")).await.expect("create").into_inner().execution_id;
    client
        .cancel_execution(CancelExecutionRequest { execution_id: cancelled.clone(), ..Default::default() })
        .await
        .expect("cancel");
    let pending = client.create_execution(create("wf")).await.expect("create").into_inner().execution_id;

    let cases = [
        (done.clone(), ExecutionStatus::Running, "completed"),
        (cancelled.clone(), ExecutionStatus::Completed, "cancelled"),
        (pending.clone(), ExecutionStatus::Completed, "pending"),
        (pending.clone(), ExecutionStatus::Paused, "pending"),
    ];
    for (id, to, current) in cases {
        let before = events_of(&stack, &id).await.len();
        let err = client.update_execution_status(set(&id, to)).await.expect_err("illegal");
        assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
        assert!(err.message().contains(current), "names the current state: {}", err.message());
        assert_eq!(events_of(&stack, &id).await.len(), before, "nothing published");
    }
    let err = client
        .resume_execution(ResumeExecutionRequest { execution_id: pending.clone(), ..Default::default() })
        .await
        .expect_err("not paused");
    assert_eq!(err.code(), Code::FailedPrecondition);

    // expected_version is honoured.
    let stale = UpdateExecutionStatusRequest { expected_version: 7, ..set(&pending, ExecutionStatus::Running) };
    let err = client.update_execution_status(stale).await.expect_err("stale version");
    assert_eq!(err.code(), Code::Aborted);
    assert!(err.message().contains("version 1"), "{}", err.message());
    let fresh = UpdateExecutionStatusRequest { expected_version: 1, ..set(&pending, ExecutionStatus::Running) };
    assert_eq!(client.update_execution_status(fresh).await.expect("fresh").into_inner().version, 2);
}

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_the_field_and_changes_nothing() {
    let stack = Stack::start().await;
    let mut api = stack.api(&[]).await;
    let mut client = executions(&mut api, Some(&admin())).await;
    let id = crate::support::create(&mut client, "wf").await;
    client.update_execution_status(set(&id, ExecutionStatus::Running)).await.expect("run");
    let before = events_of(&stack, &id).await.len();

    let labels = (0..65).map(|n| (format!("k{n}"), "v".to_owned())).collect(); // at most 64 (DESIGN §7)
    let failures = vec![
        (client.get_execution(GetExecutionRequest { execution_id: "a.b".into() }).await.map(drop), "execution_id"),
        (client.get_execution(GetExecutionRequest { execution_id: "x".repeat(65) }).await.map(drop), "execution_id"),
        (client.create_execution(CreateExecutionRequest::default()).await.map(drop), "workflow_id"),
        (
            client
                .create_execution(CreateExecutionRequest { workflow_id: "w>".into(), ..Default::default() })
                .await
                .map(drop),
            "workflow_id",
        ),
        (
            client
                .create_execution(CreateExecutionRequest { workflow_id: "w".into(), labels, ..Default::default() })
                .await
                .map(drop),
            "labels",
        ),
        (
            client
                .update_execution_status(UpdateExecutionStatusRequest {
                    execution_id: id.clone(),
                    status: 42,
                    ..Default::default()
                })
                .await
                .map(drop),
            "status",
        ),
        (
            client
                .report_progress(ReportProgressRequest { execution_id: id.clone(), percent: 101, ..Default::default() })
                .await
                .map(drop),
            "percent",
        ),
        (
            client
                .report_step(ReportStepRequest {
                    execution_id: id.clone(),
                    step_id: "s p".into(),
                    status: 2,
                    ..Default::default()
                })
                .await
                .map(drop),
            "step_id",
        ),
    ];
    for (outcome, field) in failures {
        let err = outcome.expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {}", err.message());
        assert!(err.message().starts_with(field), "names {field}: {}", err.message());
    }

    let oversized = AppendLogsRequest {
        execution_id: id.clone(),
        lines: vec![LogLineInput { text: "x".repeat(20_000), stream: 0 }],
        ..Default::default()
    };
    let err = client.append_logs(futures::stream::iter(vec![oversized])).await.expect_err("line too long");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("lines[0].text"), "{}", err.message());
    assert_eq!(events_of(&stack, &id).await.len(), before, "nothing published");

    let ok = AppendLogsRequest {
        execution_id: id.clone(),
        lines: vec![LogLineInput { text: "hello".into(), stream: 1 }; 3],
        ..Default::default()
    };
    let appended = client.append_logs(futures::stream::iter(vec![ok.clone(), ok])).await.expect("logs").into_inner();
    assert_eq!((appended.lines_appended, appended.last_line_number), (6, 6), "lines are numbered per execution");
}

#[tokio::test]
async fn commands_are_counted_in_metrics_and_browsers_from_allowed_origins_may_call() {
    let stack = Stack::start().await;
    let mut api = stack.api(&[("RUNCAST_CORS_ORIGINS", "http://dashboard.test")]).await;
    let mut client = executions(&mut api, Some(&admin())).await;
    let id = crate::support::create(&mut client, "wf").await;
    client.update_execution_status(set(&id, ExecutionStatus::Completed)).await.expect_err("pending cannot complete");

    let metrics =
        crate::support::http().get(api.http_url("/metrics")).send().await.expect("sent").text().await.expect("text");
    assert!(metrics.contains(r#"runcast_api_commands_total{command="create",outcome="ok"} 1"#), "{metrics}");
    assert!(
        metrics.contains(r#"runcast_api_commands_total{command="set status",outcome="FAILED_PRECONDITION"} 1"#),
        "{metrics}"
    );

    let preflight = |origin: &'static str| {
        crate::support::http()
            .request(reqwest::Method::OPTIONS, api.http_url("/api/v1/executions"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "authorization,content-type")
            .send()
    };
    let allowed = preflight("http://dashboard.test").await.expect("sent");
    assert_eq!(
        allowed.headers().get("access-control-allow-origin").and_then(|v| v.to_str().ok()),
        Some("http://dashboard.test")
    );
    let refused = preflight("http://evil.test").await.expect("sent");
    assert!(refused.headers().get("access-control-allow-origin").is_none());
}

/// What the stream's max age does in production, at once: every execution event is gone from it.
async fn drop_executions_from_the_stream(stack: &Stack) {
    let topology = runcast_contract::Topology::with_prefix(&stack.isolation.stream_prefix).expect("prefix");
    let js = async_nats::jetstream::new(async_nats::connect(stack.infra.nats.url()).await.expect("nats"));
    let stream = js.get_stream(topology.stream_name(runcast_contract::StreamKind::Executions)).await.expect("stream");
    stream.purge().await.expect("purged");
}

#[tokio::test]
async fn creates_at_once_each_find_their_own_archived_execution_or_make_a_new_one() {
    let stack = Stack::start().await;
    let _persister = stack.persister().await;
    let mut api = stack.api(&[]).await;
    let client = executions(&mut api, Some(&admin())).await;
    let create = |key: String| {
        let mut client = client.clone();
        async move {
            let request =
                CreateExecutionRequest { workflow_id: "batch".into(), idempotency_key: key, ..Default::default() };
            client.create_execution(request).await.expect("create").into_inner()
        }
    };
    // Twelve executions, every third one moved on to version 2, persisted, then gone from the stream.
    let mut archived = Vec::new();
    for n in 0..12 {
        let mut execution = create(format!("old-{n}")).await;
        if n % 3 == 0 {
            let mut client = client.clone();
            execution = client
                .update_execution_status(set(&execution.execution_id, ExecutionStatus::Running))
                .await
                .expect("running")
                .into_inner();
        }
        archived.push(execution);
    }
    runcast_testkit::eventually("the read model to hold all twelve", std::time::Duration::from_secs(20), || {
        let mut client = client.clone();
        let archived = &archived;
        async move {
            let list = client
                .list_executions(ListExecutionsRequest { page_size: 100, ..Default::default() })
                .await
                .ok()?
                .into_inner();
            let stored: HashSet<(String, u64)> =
                list.executions.iter().map(|e| (e.execution_id.clone(), e.version)).collect();
            archived.iter().all(|e| stored.contains(&(e.execution_id.clone(), e.version))).then_some(())
        }
    })
    .await
    .expect("persisted");
    drop_executions_from_the_stream(&stack).await;

    // All at once: the twelve keys again, and twelve new ones; their lookups share queries.
    let again = futures::future::join_all((0..12).map(|n| create(format!("old-{n}"))));
    let fresh = futures::future::join_all((0..12).map(|n| create(format!("new-{n}"))));
    let (again, fresh) = tokio::join!(again, fresh);
    for (was, is) in archived.iter().zip(&again) {
        assert_eq!((&is.execution_id, is.version), (&was.execution_id, was.version), "as the read model has it");
        assert!(events_of(&stack, &is.execution_id).await.is_empty(), "nothing new for {}", is.execution_id);
    }
    let fresh_ids: HashSet<&str> = fresh.iter().map(|e| e.execution_id.as_str()).collect();
    assert_eq!(fresh_ids.len(), 12, "a new execution per new key");
    assert!(fresh.iter().all(|e| e.version == 1));
    assert!(archived.iter().all(|e| !fresh_ids.contains(e.execution_id.as_str())));
}

#[tokio::test]
async fn an_idempotency_key_finds_its_execution_after_the_stream_dropped_its_events() {
    let stack = Stack::start().await;
    let _persister = stack.persister().await;
    let mut api = stack.api(&[]).await;
    let mut client = executions(&mut api, Some(&admin())).await;
    let request = || CreateExecutionRequest {
        workflow_id: "nightly".into(),
        idempotency_key: "run-2026-11-22".into(),
        ..Default::default()
    };
    let id = client.create_execution(request()).await.expect("created").into_inner().execution_id;
    client.update_execution_status(set(&id, ExecutionStatus::Running)).await.expect("running");
    runcast_testkit::eventually(
        "the read model to hold the running execution",
        std::time::Duration::from_secs(20),
        || {
            let mut client = client.clone();
            async move {
                let list = client.list_executions(ListExecutionsRequest::default()).await.ok()?.into_inner();
                list.executions.iter().any(|e| e.version == 2).then_some(())
            }
        },
    )
    .await
    .expect("persisted");

    // The stream ages the execution's events out (purged here; max_age in production).
    drop_executions_from_the_stream(&stack).await;
    assert!(events_of(&stack, &id).await.is_empty());

    let again = client.create_execution(request()).await.expect("create again").into_inner();
    assert_eq!(
        (again.execution_id.as_str(), again.version),
        (id.as_str(), 2),
        "the same execution, as the read model has it"
    );
    assert_eq!(again.status, i32::from(ExecutionStatus::Running));
    assert!(events_of(&stack, &id).await.is_empty(), "nothing new was created");
}
