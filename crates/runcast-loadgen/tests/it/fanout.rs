//! 20 connections, a few hundred non-coalescable events: through the debug ws-gateway and through
//! nats-server's WebSocket listener, every connection gets every event once, in order.

use runcast_contract::{EntityId, StreamKind, Topology};
use runcast_loadgen::conn::Target;
use runcast_loadgen::fanout::{self, Outcome, Run};
use runcast_loadgen::publisher::Load;
use runcast_loadgen::servers::{self, NatsServer};
use runcast_loadgen::storm::{self, StormPlan};
use runcast_testkit::{ServiceProcess, eventually};
use std::net::SocketAddr;
use std::time::Duration;

const SECRET: &str = "loadgen-test-secret";
const CONNECTIONS: usize = 20;

fn load() -> Load {
    Load {
        tenant: "acme".to_owned(),
        executions: 7,
        events_per_second: 150,
        duration: Duration::from_secs(2),
        steps: 0,
    }
}

fn assert_every_connection_got_every_event(outcome: &Outcome) {
    let summary = format!("{outcome:#?}");
    assert_eq!(outcome.subscribed, CONNECTIONS, "{summary}");
    assert_eq!(outcome.published.last_seq, 300, "{summary}");
    assert_eq!((outcome.gaps, outcome.duplicates, outcome.behind_at_end), (0, 0, 0), "{summary}");
    assert_eq!((outcome.offset_gaps, outcome.offset_duplicates, outcome.resyncs), (0, 0, 0), "{summary}");
    assert_eq!(outcome.complete_connections, CONNECTIONS, "{summary}");
    assert_eq!(outcome.delivered, 300 * CONNECTIONS as u64, "{summary}");
    assert!(outcome.errors.is_empty(), "{summary}");
    assert!(outcome.p99_us > 0 && outcome.delivered_in_window > 0, "{summary}");
}

/// ws-gateway (debug build) in front of `nats_url`, ready.
async fn start_gateway(nats_url: &str) -> (ServiceProcess, SocketAddr) {
    let mut gateway = ServiceProcess::spawn(
        "ws-gateway",
        &[
            ("NATS_URL", nats_url),
            ("DATABASE_URL", "postgres://bench@127.0.0.1:1/unused"),
            ("RUNCAST_JWT_SECRET", SECRET),
        ],
    )
    .await
    .expect("gateway starts");
    let addr = gateway.addr("http_addr").await.expect("gateway address");
    eventually("the gateway to be ready", Duration::from_secs(30), || async move {
        servers::ready(addr).await.then_some(())
    })
    .await
    .expect("gateway ready");
    (gateway, addr)
}

#[tokio::test]
async fn every_connection_gets_every_event_from_the_gateway_and_from_nats() {
    let nats_binary = runcast_testkit::tools::nats_server().expect("nats-server installed");
    let topology = Topology::unprefixed();

    // ws-gateway (debug build) in front of its own nats-server.
    let nats = NatsServer::start(&nats_binary, None).await.expect("nats-server starts");
    let url = nats.url();
    let (gateway, addr) = start_gateway(&url).await;
    let outcome = fanout::run(&Run {
        target: Target::Gateway { addr, jwt_secret: SECRET.to_owned(), tenant: "acme".to_owned() },
        connections: CONNECTIONS,
        server_pid: gateway.pid(),
        nats_url: url,
        topology: topology.clone(),
        load: Some(load()),
        warmup: Duration::from_millis(200),
        backlog: None,
        compression: false,
    })
    .await
    .expect("run against the gateway");
    assert_every_connection_got_every_event(&outcome);
    assert!(outcome.cpu_in_window.is_some() && outcome.rss_subscribed_kib.is_some(), "{outcome:#?}");
    drop((gateway, nats));

    // nats-server's own WebSocket listener.
    let nats = NatsServer::start(&nats_binary, None).await.expect("nats-server starts");
    runcast_loadgen::bench::create_stream(&nats.url(), &topology).await.expect("stream");
    let tenant = EntityId::parse("tenant", "acme").expect("tenant");
    let outcome = fanout::run(&Run {
        target: Target::Nats {
            addr: nats.ws_addr(),
            subject: topology.tenant_subjects(StreamKind::Executions, &tenant),
        },
        connections: CONNECTIONS,
        server_pid: nats.pid(),
        nats_url: nats.url(),
        topology,
        load: Some(load()),
        warmup: Duration::from_millis(200),
        backlog: None,
        compression: false,
    })
    .await
    .expect("run against nats-server");
    assert_every_connection_got_every_event(&outcome);
}

/// Scenario (e), small: storm clients resume (replaying every event after their offset once, in
/// order), leave, and the steady clients still get every event.
#[tokio::test]
async fn storm_clients_resume_and_leave_while_the_steady_ones_get_every_event() {
    let nats_binary = runcast_testkit::tools::nats_server().expect("nats-server installed");
    let nats = NatsServer::start(&nats_binary, None).await.expect("nats-server starts");
    let (gateway, addr) = start_gateway(&nats.url()).await;
    let outcome = storm::run(
        &Run {
            target: Target::Gateway { addr, jwt_secret: SECRET.to_owned(), tenant: "acme".to_owned() },
            connections: 10,
            server_pid: gateway.pid(),
            nats_url: nats.url(),
            topology: Topology::unprefixed(),
            load: Some(Load { events_per_second: 50, ..load() }),
            warmup: Duration::from_millis(200),
            backlog: None,
            compression: false,
        },
        &StormPlan {
            connections: 50,
            before: Duration::from_millis(500),
            replay: 10,
            timeout: Duration::from_secs(30),
        },
    )
    .await
    .expect("storm against the gateway");
    let summary = format!("{outcome:#?}");
    let storm = outcome.storm.as_ref().expect("storm stats");
    assert_eq!((storm.resumed, storm.failed, storm.resynced), (50, 0, 0), "{summary}");
    assert_eq!((storm.gaps, storm.duplicates), (Some(0), 0), "{summary}");
    // Every storm client got at least the 10 events after its offset.
    assert!(storm.delivered >= 50 * 10 && storm.since_offset.is_some(), "{summary}");
    assert!(storm.errors.is_empty() && outcome.errors.is_empty(), "{summary}");
    assert_eq!(
        (outcome.subscribed, outcome.gaps, outcome.duplicates, outcome.behind_at_end),
        (10, 0, 0, 0),
        "{summary}"
    );
    assert!(outcome.published.last_seq > 0 && storm.before.deliveries > 0, "{summary}");
}

/// Scenario (g), small: every connection resumes from the stream's start and gets the whole
/// backlog once, in order, then idles; the server's memory is read with all of them subscribed.
#[tokio::test]
async fn connections_resuming_a_backlog_get_all_of_it_once_and_are_measured_idle() {
    let nats_binary = runcast_testkit::tools::nats_server().expect("nats-server installed");
    let nats = NatsServer::start(&nats_binary, None).await.expect("nats-server starts");
    let (gateway, addr) = start_gateway(&nats.url()).await;
    let outcome = fanout::run(&Run {
        target: Target::Gateway { addr, jwt_secret: SECRET.to_owned(), tenant: "acme".to_owned() },
        connections: CONNECTIONS,
        server_pid: gateway.pid(),
        nats_url: nats.url(),
        topology: Topology::unprefixed(),
        load: None,
        warmup: Duration::from_millis(200),
        backlog: Some(Load { events_per_second: 40, duration: Duration::from_secs(1), ..load() }),
        compression: false,
    })
    .await
    .expect("run against the gateway");
    let summary = format!("{outcome:#?}");
    assert_eq!((outcome.subscribed, outcome.published.last_seq), (CONNECTIONS, 40), "{summary}");
    assert_eq!((outcome.gaps, outcome.duplicates, outcome.behind_at_end), (0, 0, 0), "{summary}");
    assert_eq!((outcome.complete_connections, outcome.delivered), (CONNECTIONS, 40 * CONNECTIONS as u64), "{summary}");
    assert!(outcome.idle_kib_per_connection().is_some() && outcome.errors.is_empty(), "{summary}");
}

/// Scenario (h), small: events with 20 steps to clients offering `permessage-deflate`, through
/// the gateway and through nats-server: every event reaches every connection once, inflated, and
/// the bytes on the wire per delivery are a fraction of the same run's without compression.
#[tokio::test]
async fn compressed_connections_get_every_event_in_a_fraction_of_the_bytes() {
    let nats_binary = runcast_testkit::tools::nats_server().expect("nats-server installed");
    let topology = Topology::unprefixed();
    let load = Load { steps: 20, ..load() };
    for server in ["ws-gateway", "NATS WS"] {
        let mut bytes_per_delivery = Vec::new();
        for compression in [false, true] {
            let nats = NatsServer::start(&nats_binary, None).await.expect("nats-server starts");
            let gateway = match server {
                "ws-gateway" => Some(start_gateway(&nats.url()).await),
                _ => None,
            };
            let target = match &gateway {
                Some((_, addr)) => {
                    Target::Gateway { addr: *addr, jwt_secret: SECRET.to_owned(), tenant: "acme".to_owned() }
                }
                None => {
                    runcast_loadgen::bench::create_stream(&nats.url(), &topology).await.expect("stream");
                    let tenant = EntityId::parse("tenant", "acme").expect("tenant");
                    Target::Nats {
                        addr: nats.ws_addr(),
                        subject: topology.tenant_subjects(StreamKind::Executions, &tenant),
                    }
                }
            };
            let outcome = fanout::run(&Run {
                target,
                connections: CONNECTIONS,
                server_pid: None,
                nats_url: nats.url(),
                topology: topology.clone(),
                load: Some(load.clone()),
                warmup: Duration::from_millis(200),
                backlog: None,
                compression,
            })
            .await
            .expect("run");
            assert_every_connection_got_every_event(&outcome);
            bytes_per_delivery.push(outcome.wire_bytes_per_delivery().expect("deliveries in the window"));
        }
        let [plain, compressed] = bytes_per_delivery[..] else { unreachable!() };
        assert!(compressed * 3.0 < plain, "{server}: {compressed:.0} bytes per delivery compressed, {plain:.0} plain");
    }
}
