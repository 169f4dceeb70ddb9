//! Dependencies failing: NATS gone → `UNAVAILABLE` fast and recovery without a restart;
//! PostgreSQL gone → writes keep working, lists are `UNAVAILABLE`.

use crate::support::{Executions, Stack, admin, executions, http, token_for};
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

/// A log upload that stays open until its sender is dropped: it holds a request slot for as long
/// (uploads have no deadline).
type Upload = (
    tokio::sync::mpsc::Sender<AppendLogsRequest>,
    tokio::task::JoinHandle<Result<tonic::Response<AppendLogsResponse>, tonic::Status>>,
);

fn open_upload(client: &Executions, execution_id: &str) -> Upload {
    use futures::StreamExt as _;
    let (lines, receiver) = tokio::sync::mpsc::channel(1);
    let first = AppendLogsRequest {
        execution_id: execution_id.into(),
        lines: vec![LogLineInput { text: "working".into(), ..Default::default() }],
        ..Default::default()
    };
    let mut uploader = client.clone();
    let task = tokio::spawn(async move {
        let stream = futures::stream::iter([first]).chain(tokio_stream::wrappers::ReceiverStream::new(receiver));
        uploader.append_logs(stream).await
    });
    (lines, task)
}

/// A REST create whose body never finishes: it holds a request slot until the request timeout.
async fn stalled_request(addr: std::net::SocketAddr, token: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt as _;
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connects");
    let head = format!(
        "POST /api/v1/executions HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    );
    socket.write_all(head.as_bytes()).await.expect("half a request");
    socket
}

/// Whether a stalled request was answered (refused) or closed: then it holds no slot.
fn answered(socket: &tokio::net::TcpStream) -> bool {
    !matches!(socket.try_read(&mut [0_u8; 1]), Err(err) if err.kind() == std::io::ErrorKind::WouldBlock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_concurrency_limit_requests_are_refused_at_once_and_slow_ones_time_out() {
    use tokio::io::AsyncReadExt as _;
    let stack = Stack::start().await;
    let limits = [
        ("RUNCAST_MAX_CONCURRENT_REQUESTS", "3"),
        ("RUNCAST_MAX_CONCURRENT_REQUESTS_PER_TENANT", "3"),
        ("RUNCAST_REQUEST_TIMEOUT", "12s"),
    ];
    let mut api = stack.api(&limits).await;
    let token = admin();
    let mut client = executions(&mut api, Some(&token)).await;
    let id = crate::support::create(&mut client, "wf").await;
    let get = || GetExecutionRequest { execution_id: id.clone() };

    // gRPC: three log uploads that stay open hold the three slots. An upload that arrives while a
    // probe holds a slot is itself refused: start it again.
    let uploads_client = client.clone();
    let upload = || open_upload(&uploads_client, &id);
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
    let stall = || stalled_request(addr, &token);
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(stall().await);
    }
    let url = format!("{}/{id}", api.http_url("/api/v1/executions"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let shed = loop {
        for socket in stalled.iter_mut() {
            if answered(socket) {
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

/// A tenant with its share of the slots in flight is refused at once, on each listener, while
/// another tenant's requests still get in; its requests get in again once its own finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_at_its_share_of_the_slots_is_refused_while_other_tenants_get_in() {
    let stack = Stack::start().await;
    let limits = [
        ("RUNCAST_MAX_CONCURRENT_REQUESTS", "8"),
        ("RUNCAST_MAX_CONCURRENT_REQUESTS_PER_TENANT", "2"),
        ("RUNCAST_REQUEST_TIMEOUT", "12s"),
    ];
    let mut api = stack.api(&limits).await;
    let (flood_token, quiet_token) = (admin(), token_for("quiet-tenant", &["admin"], 3600));
    let mut flood = executions(&mut api, Some(&flood_token)).await;
    let mut quiet = executions(&mut api, Some(&quiet_token)).await;
    let flood_id = crate::support::create(&mut flood, "wf").await;
    let quiet_id = crate::support::create(&mut quiet, "wf").await;
    let get = |id: &str| GetExecutionRequest { execution_id: id.into() };

    // gRPC: two open uploads hold the flooding tenant's two slots (one refused while a probe held
    // a slot is started again).
    let mut uploads: Vec<Upload> = (0..2).map(|_| open_upload(&flood, &flood_id)).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = loop {
        for slot in uploads.iter_mut() {
            if slot.1.is_finished() {
                *slot = open_upload(&flood, &flood_id);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Err(status) = flood.get_execution(get(&flood_id)).await {
            break status;
        }
        assert!(Instant::now() < deadline, "never refused with two uploads holding the tenant's two slots");
    };
    assert_eq!(refused.code(), Code::ResourceExhausted, "{}", refused.message());
    assert!(refused.message().contains("RUNCAST_MAX_CONCURRENT_REQUESTS_PER_TENANT"), "{}", refused.message());
    let pushback = refused.metadata().get(runcast_contract::client::RETRY_PUSHBACK).and_then(|v| v.to_str().ok());
    assert_eq!(pushback, Some("1000"), "says when to try again");
    assert!(runcast_contract::client::may_pass(&refused), "a refusal the CLI's --retries tries again");
    let theirs = quiet.get_execution(get(&quiet_id)).await.expect("another tenant gets in").into_inner();
    assert_eq!(theirs.execution_id, quiet_id);
    for (lines, upload) in uploads {
        drop(lines);
        upload.await.expect("task").expect("the uploads finish fine");
    }
    flood.get_execution(get(&flood_id)).await.expect("its slots are free again");

    // REST: two stalled requests hold its two slots there: 429 with Retry-After, the other
    // tenant 200.
    let addr = api.addr("http_addr").await.expect("http");
    let mut stalled = vec![stalled_request(addr, &flood_token).await, stalled_request(addr, &flood_token).await];
    let url = |id: &str| format!("{}/{id}", api.http_url("/api/v1/executions"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let shed = loop {
        for socket in stalled.iter_mut() {
            if answered(socket) {
                *socket = stalled_request(addr, &flood_token).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let response = http().get(url(&flood_id)).bearer_auth(&flood_token).send().await.expect("sent");
        if response.status().as_u16() == 429 {
            break response;
        }
        assert_eq!(response.status().as_u16(), 200, "only ever served or refused at the tenant's limit");
        assert!(Instant::now() < deadline, "never refused with two stalled requests holding the tenant's slots");
    };
    assert_eq!(shed.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let body: serde_json::Value = shed.json().await.expect("json");
    assert_eq!(body["error"]["code"], "RESOURCE_EXHAUSTED", "{body}");
    let other = http().get(url(&quiet_id)).bearer_auth(&quiet_token).send().await.expect("sent");
    assert_eq!(other.status().as_u16(), 200, "the other tenant is served");
    drop(stalled);

    let metrics = http().get(api.http_url("/metrics")).send().await.expect("sent").text().await.expect("text");
    for listener in ["grpc", "rest"] {
        let prefix = format!("runcast_api_tenant_requests_shed_total{{listener=\"{listener}\"}} ");
        let shed = metrics.lines().find_map(|line| line.strip_prefix(prefix.as_str())?.trim().parse::<f64>().ok());
        assert!(shed.is_some_and(|shed| shed >= 1.0), "{listener}: {metrics}");
    }
    let replica_shed = metrics
        .lines()
        .filter_map(|line| line.strip_prefix("runcast_api_requests_shed_total{"))
        .map(|rest| rest.rsplit(' ').next().and_then(|n| n.trim().parse::<f64>().ok()))
        .collect::<Vec<_>>();
    assert_eq!(replica_shed, [Some(0.0), Some(0.0)], "the replica itself never ran out of slots");
    // Operators learn which tenant: one warning per listener, however many refusals.
    let log = api.recent_log();
    let warnings: Vec<&str> = log.lines().filter(|line| line.contains("WARN") && line.contains("PER_TENANT")).collect();
    assert_eq!(warnings.len(), 2, "{log}");
    assert!(warnings.iter().all(|line| line.contains(crate::support::TENANT)), "{warnings:?}");
}
