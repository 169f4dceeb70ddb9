//! Connection caps: per replica (503 + `Retry-After`, none accepted beyond the cap however many
//! try), per tenant and per subject (429 + `Retry-After`); `/ws/stats` needs credentials and is
//! scoped to the caller's tenant unless the caller is an admin.

use crate::helpers::*;
use futures::StreamExt;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio_tungstenite::tungstenite;

/// The HTTP refusal of an upgrade: status, `Retry-After`, JSON body.
fn refusal(result: Result<WsClient, tungstenite::Error>) -> (u16, Option<String>, Value) {
    match result {
        Err(tungstenite::Error::Http(response)) => {
            let retry = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
            let body =
                response.body().as_deref().map(serde_json::from_slice).and_then(Result::ok).unwrap_or(Value::Null);
            (response.status().as_u16(), retry, body)
        }
        Err(err) => panic!("expected an HTTP refusal, got {err}"),
        Ok(_) => panic!("expected an HTTP refusal, the upgrade was accepted"),
    }
}

async fn sse_status(gateway: &Gateway, token: &str) -> (u16, Option<String>, Value) {
    let response = reqwest::Client::new()
        .get(gateway.url("/sse?channel=executions"))
        .bearer_auth(token)
        .send()
        .await
        .expect("answers");
    let status = response.status().as_u16();
    let retry = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = if status == 200 { Value::Null } else { response.json().await.expect("JSON error") };
    (status, retry, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_beyond_the_replica_cap_are_refused_with_503_and_none_is_ever_accepted() {
    const CAP: u64 = 20;
    const ATTEMPTS: usize = 10_000;
    const CONCURRENCY: usize = 64;
    let world = World::start().await;
    let gateway = world.gateway(&[("max-connections", "20")]).await;
    // The cap is reached with both transports and several tenants and subjects.
    let mut held = Vec::new();
    for i in 0..15 {
        held.push(gateway.connect(&token(&format!("t{}", i % 3), &format!("user-{i}"), 600)).await);
    }
    let mut streams = Vec::new();
    for i in 0..5 {
        streams.push(gateway.sse("executions", &token("acme", &format!("sse-{i}"), 600)).await);
    }
    assert_eq!(gateway.stats().await["connections"]["total"], CAP);

    // Watch the live count the whole time the storm lasts.
    let peak = Arc::new(AtomicU64::new(0));
    let watching = tokio_util::sync::CancellationToken::new();
    let watcher = tokio::spawn({
        let (peak, watching, url) = (peak.clone(), watching.clone(), gateway.url("/ws/stats"));
        let admin = token_with_roles("ops", "operator", &["admin"], 600);
        async move {
            let client = reqwest::Client::new();
            let mut samples = 0u64;
            while !watching.is_cancelled() {
                let stats: Value =
                    client.get(&url).bearer_auth(&admin).send().await.expect("stats").json().await.expect("JSON");
                peak.fetch_max(stats["connections"]["total"].as_u64().expect("total"), Ordering::Relaxed);
                samples += 1;
            }
            samples
        }
    });

    let url = gateway.ws_url("");
    let started = std::time::Instant::now();
    let outcomes: Vec<(u16, Option<String>)> = futures::stream::iter(0..ATTEMPTS)
        .map(|i| {
            let url = url.clone();
            async move {
                // Valid credentials: only the cap stands in the way.
                let bearer = format!("Bearer {}", token("storm", &format!("s-{}", i % 50), 600));
                let (status, retry, _) = refusal(WsClient::try_connect(&url, Some(("Authorization", bearer))).await);
                (status, retry)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let elapsed = started.elapsed();
    watching.cancel();
    let samples = watcher.await.expect("watcher");
    assert_eq!(outcomes.len(), ATTEMPTS);
    assert!(
        outcomes.iter().all(|(status, retry)| *status == 503 && retry.is_some()),
        "every attempt above the cap is a 503 with Retry-After"
    );
    assert!(samples > 0);
    assert!(peak.load(Ordering::Relaxed) <= CAP, "the live count exceeded the cap: {}", peak.load(Ordering::Relaxed));
    eprintln!("{ATTEMPTS} refused attempts in {elapsed:?}, {samples} stats samples");

    // One refusal in detail, for SSE too.
    let bearer = format!("Bearer {}", token("acme", "late", 600));
    let (status, retry, body) = refusal(WsClient::try_connect(&url, Some(("Authorization", bearer))).await);
    assert_eq!((status, retry.as_deref()), (503, Some("5")));
    assert_eq!(body["error"]["code"], "RESOURCE_EXHAUSTED", "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("RUNCAST_WS_MAX_CONNECTIONS")), "{body}");
    let (status, retry, body) = sse_status(&gateway, &token("acme", "late", 600)).await;
    assert_eq!((status, retry.is_some(), &body["error"]["code"]), (503, true, &json!("RESOURCE_EXHAUSTED")));

    // The held connections were never disturbed, and a place freed is a place taken.
    let first = held.first_mut().expect("held");
    first.send(json!({"type": "ping", "id": 1})).await;
    assert_eq!(first.until("pong").await["id"], 1);
    drop(held.pop());
    runcast_testkit::eventually("the closed connection to give its place back", WAIT, || async {
        (gateway.stats().await["connections"]["total"] == CAP - 1).then_some(())
    })
    .await
    .expect("place given back");
    held.push(gateway.connect(&token("acme", "late", 600)).await);
    assert_eq!(gateway.stats().await["connections"]["total"], CAP);
}

#[tokio::test]
async fn tenants_and_subjects_beyond_their_caps_get_429_with_retry_after() {
    let world = World::start().await;
    let gateway = world.gateway(&[("max-connections-per-tenant", "3"), ("max-connections-per-subject", "2")]).await;
    let url = gateway.ws_url("");
    let bearer =
        |tenant: &str, subject: &str| Some(("Authorization", format!("Bearer {}", token(tenant, subject, 600))));

    let mut alice = vec![gateway.connect(&token("acme", "alice", 600)).await];
    alice.push(gateway.connect(&token("acme", "alice", 600)).await);
    let (status, retry, body) = refusal(WsClient::try_connect(&url, bearer("acme", "alice")).await);
    assert_eq!((status, retry.as_deref()), (429, Some("5")), "{body}");
    assert_eq!(body["error"]["code"], "RESOURCE_EXHAUSTED");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("PER_SUBJECT")), "{body}");
    let (status, _, _) = sse_status(&gateway, &token("acme", "alice", 600)).await;
    assert_eq!(status, 429, "SSE counts too");
    // The same subject name in another tenant is another subject.
    let _other_alice = gateway.connect(&token("globex", "alice", 600)).await;

    let _bob = gateway.connect(&token("acme", "bob", 600)).await;
    let (status, retry, body) = refusal(WsClient::try_connect(&url, bearer("acme", "carol")).await);
    assert_eq!((status, retry.is_some()), (429, true), "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("PER_TENANT")), "{body}");
    // Another tenant is not affected.
    let _globex = gateway.connect(&token("globex", "carol", 600)).await;

    // A closed connection gives its places back.
    drop(alice.pop());
    runcast_testkit::eventually("alice's closed connection to be released", WAIT, || async {
        WsClient::try_connect(&url, bearer("acme", "alice")).await.ok()
    })
    .await
    .expect("alice connects again");
}

#[tokio::test]
async fn stats_need_credentials_and_show_the_callers_tenant_only_unless_admin() {
    let world = World::start().await;
    let gateway = world.gateway(&[]).await;
    let mut acme = gateway.connect(&token("acme", "alice", 600)).await;
    acme.subscribe(json!({"type": "subscribe", "channel": "executions"})).await;
    let mut globex = gateway.connect(&token("globex", "gina", 600)).await;
    globex.subscribe(json!({"type": "subscribe", "channel": "agents"})).await;
    let _globex_sse = gateway.sse("executions", &token("globex", "gus", 600)).await;

    let anonymous = reqwest::get(gateway.url("/ws/stats")).await.expect("answers");
    assert_eq!(anonymous.status(), 401);
    let body: Value = anonymous.json().await.expect("JSON error");
    assert_eq!(body["error"]["code"], "UNAUTHENTICATED", "{body}");
    let forged = reqwest::Client::new().get(gateway.url("/ws/stats")).bearer_auth("garbage").send().await;
    assert_eq!(forged.expect("answers").status(), 401);

    let own = gateway.stats_as(&token("acme", "someone", 600)).await;
    assert_eq!(own["scope"], "tenant", "{own}");
    assert_eq!(own["connections"], json!({"websocket": 1, "sse": 0, "total": 1}), "{own}");
    assert_eq!(own["users"], 1, "{own}");
    assert_eq!(own["subscriptions"], json!({"executions": 1}), "{own}");
    for replica_wide in ["tenants", "events_dispatched", "resyncs", "replays", "limits"] {
        assert!(own.get(replica_wide).is_none(), "{replica_wide} is not a tenant's to see: {own}");
    }
    let other = gateway.stats_as(&token("globex", "someone", 600)).await;
    assert_eq!(other["connections"], json!({"websocket": 1, "sse": 1, "total": 2}), "{other}");
    assert_eq!(other["subscriptions"], json!({"agents": 1, "executions": 1}), "{other}");
    let nobody = gateway.stats_as(&token("initech", "someone", 600)).await;
    assert_eq!(nobody["connections"]["total"], 0, "{nobody}");
    assert_eq!(nobody["subscriptions_total"], 0, "{nobody}");

    let all = gateway.stats().await;
    assert_eq!(all["scope"], "replica", "{all}");
    assert_eq!(all["connections"]["total"], 3, "{all}");
    assert_eq!(all["tenants"], 2, "{all}");
    assert_eq!(all["subscriptions_total"], 3, "{all}");
    assert!(all["limits"]["max_connections"].as_u64().is_some(), "{all}");
}
