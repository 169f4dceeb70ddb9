//! Safe retries on a 3-node cluster with R3 streams and two api replicas: a command sent again with
//! its `request_id` is answered by its first try however that try is found (the last event, a
//! duplicate refused by the stream leader, or a look back through the window with a consumer on
//! the replicated stream), and two tries sent at once to both replicas store one change.

use crate::support::{SECRET, writer};
use runcast_contract::v1::{
    CreateExecutionRequest, ExecutionStatus, GetExecutionRequest, ReportProgressRequest, ReportStepRequest, StepStatus,
    UpdateExecutionStatusRequest,
};
use runcast_testkit::{NatsCluster, PostgresServer, ServiceEnv, unique_name};

fn progress(id: &str, percent: u32, request_id: &str) -> ReportProgressRequest {
    ReportProgressRequest { execution_id: id.into(), percent, request_id: request_id.into(), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_is_answered_by_its_first_try_on_a_replicated_stream() {
    let (cluster, postgres) = tokio::join!(NatsCluster::start(), PostgresServer::start());
    let cluster = cluster.unwrap_or_else(|err| panic!("{err}"));
    let postgres = postgres.unwrap_or_else(|err| panic!("{err}"));
    let prefix = unique_name("r");
    let env = ServiceEnv {
        nats_url: cluster.urls(),
        database_url: postgres.create_database(&prefix).await.unwrap_or_else(|err| panic!("{err}")),
        stream_prefix: prefix,
        replicas: 3,
        secret: SECRET.into(),
    };
    let (mut first, mut second) = tokio::join!(env.spawn("execution-api", &[]), env.spawn("execution-api", &[]));
    let (mut a, mut b) = (writer(&mut first).await, writer(&mut second).await);
    let create = CreateExecutionRequest { workflow_id: "retries".into(), ..Default::default() };
    let id = a.create_execution(create).await.expect("created").into_inner().execution_id;

    let start = UpdateExecutionStatusRequest {
        execution_id: id.clone(),
        status: ExecutionStatus::Running.into(),
        request_id: "start".into(),
        ..Default::default()
    };
    let started = a.update_execution_status(start.clone()).await.expect("started").into_inner();
    let ten = a.report_progress(progress(&id, 10, "progress-10")).await.expect("10 %").into_inner();
    a.report_progress(progress(&id, 20, "progress-20")).await.expect("20 %");
    // b reads the execution first, so it decides the retries on its newest state (not on what a
    // follower or its memory may hold): refused as running → running, the start is found by
    // looking back; allowed again, 10 % is a duplicate for the leader.
    let get = || GetExecutionRequest { execution_id: id.clone() };
    b.get_execution(get()).await.expect("b reads");
    assert_eq!(b.update_execution_status(start).await.expect("retried start").into_inner(), started);
    assert_eq!(b.report_progress(progress(&id, 10, "progress-10")).await.expect("retried 10 %").into_inner(), ten);
    let step = ReportStepRequest {
        execution_id: id.clone(),
        step_id: "build".into(),
        status: StepStatus::Completed.into(),
        request_id: "build-done".into(),
        ..Default::default()
    };
    let built = a.report_step(step.clone()).await.expect("step").into_inner();
    a.report_progress(progress(&id, 30, "")).await.expect("30 %");
    b.get_execution(get()).await.expect("b reads");
    assert_eq!(b.report_step(step).await.expect("retried step").into_inner(), built);

    // Hedged across the replicas: one change per pair, both answers it.
    for n in 0..10u32 {
        let request = progress(&id, 40 + n, &format!("hedged-{n}"));
        let (left, right) = tokio::join!(a.report_progress(request.clone()), b.report_progress(request));
        let (left, right) = (left.expect("hedged").into_inner(), right.expect("hedged").into_inner());
        assert_eq!(left, right);
        assert_eq!(left.progress, 40 + n);
    }
    let now = a.get_execution(get()).await.expect("get").into_inner();
    // created, started, 10, 20, step, 30, and the 10 hedged: one event each.
    assert_eq!(now.version, 16, "no retry stored anything: {now:?}");

    // Every retry answered by its first try, counted once: b's three, and one side of each pair.
    let mut answered = 0.0;
    let mut look_backs = 0.0;
    for api in [&first, &second] {
        let metrics = reqwest::get(api.http_url("/metrics")).await.expect("metrics").text().await.expect("text");
        for line in metrics.lines() {
            let Some(rest) = line.strip_prefix("runcast_api_retries_answered_total{found=\"") else { continue };
            let (found, value) = rest.split_once("\"} ").expect("a labelled sample");
            let value: f64 = value.trim().parse().expect("a number");
            answered += value;
            if found == "look_back" {
                look_backs += value;
            }
        }
    }
    assert_eq!(answered, 13.0, "3 retries and 10 hedged pairs");
    assert_eq!(look_backs, 2.0, "the start and the step, refused on the newest state, were found by looking back");
}
