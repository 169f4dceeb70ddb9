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

#[tokio::test]
async fn slow_and_silent_peers_are_disconnected_after_the_header_timeout_while_clients_are_served() {
    let stack = Stack::start().await;
    let mut api = stack.api(&[("RUNCAST_HEADER_TIMEOUT", "1s")]).await;
    let rest = api.addr("http_addr").await.expect("http");
    let grpc = api.addr("grpc_addr").await.expect("grpc");
    let mut peers = runcast_testkit::slow_peers::open(rest, 400).await.expect("slow REST peers");
    peers.extend(runcast_testkit::slow_peers::open(grpc, 100).await.expect("slow gRPC peers"));

    // Meanwhile, well-behaved clients of both listeners are served.
    let mut client = executions(&mut api, Some(&admin())).await;
    let create = CreateExecutionRequest { workflow_id: "wf".into(), ..Default::default() };
    client.create_execution(create).await.expect("gRPC works beside 100 slow peers");
    let ready = http().get(api.http_url("/readyz")).send().await.expect("REST works beside 400 slow peers");
    assert_eq!(ready.status().as_u16(), 200);

    let took = runcast_testkit::slow_peers::wait_all_closed(peers, Duration::from_secs(15))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    eprintln!("500 slow peers disconnected after {took:?} (header timeout 1 s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_concurrency_limit_requests_are_refused_at_once_and_slow_ones_time_out() {
    use futures::StreamExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let stack = Stack::start().await;
    let limits = [("RUNCAST_MAX_CONCURRENT_REQUESTS", "3"), ("RUNCAST_REQUEST_TIMEOUT", "12s")];
    let mut api = stack.api(&limits).await;
    let token = admin();
    let mut client = executions(&mut api, Some(&token)).await;
    let id = crate::support::create(&mut client, "wf").await;
    let get = || GetExecutionRequest { execution_id: id.clone() };

    // gRPC: three log uploads that stay open hold the three slots (uploads have no deadline). An
    // upload that arrives while a probe holds a slot is itself refused: start it again.
    type Upload = (
        tokio::sync::mpsc::Sender<AppendLogsRequest>,
        tokio::task::JoinHandle<Result<tonic::Response<AppendLogsResponse>, tonic::Status>>,
    );
    let uploads_client = client.clone();
    let upload = || {
        let (lines, receiver) = tokio::sync::mpsc::channel(1);
        let first = AppendLogsRequest {
            execution_id: id.clone(),
            lines: vec![LogLineInput { text: "working".into(), ..Default::default() }],
            ..Default::default()
        };
        let mut uploader = uploads_client.clone();
        let task = tokio::spawn(async move {
            let stream = futures::stream::iter([first]).chain(tokio_stream::wrappers::ReceiverStream::new(receiver));
            uploader.append_logs(stream).await
        });
        (lines, task)
    };
    let mut uploads: Vec<Upload> = (0..3).map(|_| upload()).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = loop {
        for slot in uploads.iter_mut() {
            if slot.1.is_finished() {
                *slot = upload();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Err(status) = client.get_execution(get()).await {
            break status;
        }
        assert!(Instant::now() < deadline, "never refused with three uploads holding the three slots");
    };
    assert_eq!(refused.code(), Code::ResourceExhausted, "{}", refused.message());
    let started = Instant::now();
    let again = client.get_execution(get()).await.expect_err("still full");
    assert_eq!(again.code(), Code::ResourceExhausted);
    assert!(started.elapsed() < Duration::from_secs(1), "refused at once, not queued: {:?}", started.elapsed());
    for (lines, upload) in uploads {
        drop(lines);
        let appended = upload.await.expect("task").expect("the upload finishes fine").into_inner();
        assert_eq!(appended.lines_appended, 1);
    }
    client.get_execution(get()).await.expect("a slot is free again");

    // REST: three requests whose bodies never finish hold the slots until the request timeout. A
    // stalled request that arrives while a probe holds a slot is itself refused: send it again.
    let addr = api.addr("http_addr").await.expect("http");
    let stall = || async {
        let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connects");
        let head = format!(
            "POST /api/v1/executions HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
        );
        socket.write_all(head.as_bytes()).await.expect("half a request");
        socket
    };
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(stall().await);
    }
    let url = format!("{}/{id}", api.http_url("/api/v1/executions"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let shed = loop {
        for socket in stalled.iter_mut() {
            // Answered (refused) or closed: it holds no slot.
            if !matches!(socket.try_read(&mut [0_u8; 1]), Err(err) if err.kind() == std::io::ErrorKind::WouldBlock) {
                *socket = stall().await;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let response = http().get(&url).bearer_auth(&token).send().await.expect("sent");
        if response.status().as_u16() == 503 {
            break response;
        }
        assert!(Instant::now() < deadline, "never refused with three stalled requests holding the three slots");
    };
    assert_eq!(shed.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let body: serde_json::Value = shed.json().await.expect("json");
    assert_eq!(body["error"]["code"], "RESOURCE_EXHAUSTED");
    for mut socket in stalled {
        let mut answer = vec![0_u8; 512];
        let read = tokio::time::timeout(Duration::from_secs(20), socket.read(&mut answer))
            .await
            .expect("answered within the request timeout")
            .expect("read");
        let answer = String::from_utf8_lossy(&answer[..read]);
        assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    }
    let ok = http().get(url).bearer_auth(&token).send().await.expect("sent");
    assert_eq!(ok.status().as_u16(), 200);
}
