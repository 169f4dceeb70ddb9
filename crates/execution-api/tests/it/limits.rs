//! Bounded state (DESIGN §7) over the wire: a limit refuses with a message naming it, never
//! `INTERNAL`; the stored state never exceeds 256 KiB; a full execution can still be cancelled.
//! And create-then-watch: `CreateExecution` returns the offset a watch resumes from.

use crate::support::{Stack, admin, events_of, executions};
use futures::StreamExt as _;
use prost::Message as _;
use runcast_contract::v1::*;
use std::collections::HashMap;
use tonic::Code;

const MAX_STATE_BYTES: usize = 256 * 1024;

#[tokio::test]
async fn limits_refuse_with_their_name_and_a_full_execution_still_ends() {
    let stack = Stack::start().await;
    let mut api = stack.api(&[]).await;
    let mut client = executions(&mut api, Some(&admin())).await;

    // Labels: 64 pairs of 256 bytes pass, a 65th pair does not.
    let labels =
        |n: usize| -> HashMap<String, String> { (0..n).map(|i| (format!("{i:0>255}k"), "v".repeat(256))).collect() };
    let create = |labels: HashMap<String, String>| CreateExecutionRequest {
        workflow_id: "limits".into(),
        labels,
        ..Default::default()
    };
    let full = client.create_execution(create(labels(64))).await.expect("64 labels pass").into_inner();
    let err = client.create_execution(create(labels(65))).await.expect_err("65 labels");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("labels has 65 entries; at most 64"), "{}", err.message());

    // Input: 64 KiB encoded passes, one field more does not.
    let input = |bytes: usize| prost_types::Struct {
        fields: [(
            "blob".to_owned(),
            prost_types::Value { kind: Some(prost_types::value::Kind::StringValue("x".repeat(bytes))) },
        )]
        .into(),
    };
    let fits = 64 * 1024 - 64;
    assert!(input(fits).encoded_len() <= 64 * 1024);
    let with_input = |bytes| CreateExecutionRequest { input: Some(input(bytes)), ..create(HashMap::new()) };
    client.create_execution(with_input(fits)).await.expect("64 KiB input passes");
    let err = client.create_execution(with_input(64 * 1024)).await.expect_err("above 64 KiB");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("input is"), "{}", err.message());

    // Steps with 4 KiB errors fill the state until the total limit refuses, by name.
    let id = full.execution_id.clone();
    client
        .update_execution_status(UpdateExecutionStatusRequest {
            execution_id: id.clone(),
            status: ExecutionStatus::Running.into(),
            ..Default::default()
        })
        .await
        .expect("runs");
    let error = "e".repeat(4096);
    let mut refused = None;
    for n in 0..1000 {
        let step = ReportStepRequest {
            execution_id: id.clone(),
            step_id: format!("s{n}"),
            name: "n".repeat(256),
            status: StepStatus::Failed.into(),
            error: error.clone(),
            ..Default::default()
        };
        if let Err(err) = client.report_step(step).await {
            refused = Some(err);
            break;
        }
    }
    let refused = refused.expect("the state limit is reached before 1000 such steps");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{}", refused.message());
    assert!(refused.message().starts_with("state: the execution's state would be"), "{}", refused.message());
    let err = client
        .report_step(ReportStepRequest {
            execution_id: id.clone(),
            step_id: "x".repeat(65),
            status: StepStatus::Running.into(),
            ..Default::default()
        })
        .await
        .expect_err("a 65-character id");
    assert_eq!(err.code(), Code::InvalidArgument);

    // The terminal change always fits, and no stored state ever exceeded the limit.
    let cancelled = client
        .cancel_execution(CancelExecutionRequest {
            execution_id: id.clone(),
            reason: error.clone(),
            ..Default::default()
        })
        .await
        .expect("a full execution can be cancelled")
        .into_inner();
    assert_eq!(cancelled.status, i32::from(ExecutionStatus::Cancelled));
    let events = events_of(&stack, &id).await;
    let largest = events
        .iter()
        .filter_map(|event| match &event.state {
            Some(event::State::Execution(state)) => Some(state.encoded_len()),
            _ => None,
        })
        .max()
        .expect("states");
    assert!(largest <= MAX_STATE_BYTES, "largest state {largest} bytes");
    assert!(largest > MAX_STATE_BYTES - 32 * 1024, "the execution really was full: {largest} bytes");
}

#[tokio::test]
async fn a_client_that_creates_then_watches_from_the_returned_offset_misses_nothing() {
    let stack = Stack::start().await;
    let mut api = stack.api(&[]).await;
    let mut client = executions(&mut api, Some(&admin())).await;
    let created = client
        .create_execution(CreateExecutionRequest { workflow_id: "wf".into(), ..Default::default() })
        .await
        .expect("create")
        .into_inner();
    assert!(created.offset > 0, "gRPC create returns the offset of the created event");
    // Someone else moves it on before the watch starts.
    client
        .update_execution_status(UpdateExecutionStatusRequest {
            execution_id: created.execution_id.clone(),
            status: ExecutionStatus::Running.into(),
            ..Default::default()
        })
        .await
        .expect("starts");
    let mut watch = client
        .watch_execution(WatchExecutionRequest {
            execution_id: created.execution_id.clone(),
            from_offset: Some(created.offset - 1),
        })
        .await
        .expect("watch")
        .into_inner();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let event = tokio::time::timeout(std::time::Duration::from_secs(10), watch.next())
            .await
            .expect("in time")
            .expect("event")
            .expect("ok");
        seen.push((event.r#type, event.offset));
    }
    assert_eq!(seen[0], (i32::from(EventType::ExecutionCreated), created.offset));
    assert_eq!(seen[1].0, i32::from(EventType::ExecutionStarted));
    assert!(seen[1].1 > created.offset);

    // An offset beyond the stream (2^64 - 1 once wrapped around to 0) is refused, naming it.
    let err = client
        .watch_execution(WatchExecutionRequest {
            execution_id: created.execution_id.clone(),
            from_offset: Some(u64::MAX),
        })
        .await
        .expect_err("beyond the stream");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().starts_with("from_offset is 18446744073709551615"), "{}", err.message());
}
