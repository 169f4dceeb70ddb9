//! A worker with no gRPC (DESIGN §7 "REST for workers"): everything an agent does over gRPC, over
//! REST, with the same names, validation and errors; each call answers the entity after it.

use crate::support::{Stack, events_of, http, token_for};
use serde_json::{Value, json};

#[tokio::test]
async fn an_agent_can_run_an_execution_over_rest_alone() {
    let stack = Stack::start().await;
    let api = stack.api(&[]).await;
    let base = api.http_url("/api/v1");
    let (agent, submitter, viewer) = (
        token_for("acme", &["agent"], 600),
        token_for("acme", &["submitter"], 600),
        token_for("acme", &["viewer"], 600),
    );
    let post = |path: &str, token: &str, body: Value| {
        http().post(format!("{base}{path}")).bearer_auth(token).json(&body).send()
    };
    let ok = |response: reqwest::Response| async move {
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("json");
        assert_eq!(status, 200, "{body}");
        body
    };

    let created: Value =
        post("/executions", &submitter, json!({"workflow_id": "etl"})).await.expect("sent").json().await.expect("json");
    let id = created["execution_id"].as_str().expect("id").to_owned();
    let execution = |suffix: &str| format!("/executions/{id}/{suffix}");

    let running = ok(post(&execution("status"), &agent, json!({"status": "running", "agent_id": "rest-worker"}))
        .await
        .expect("sent"))
    .await;
    assert_eq!((running["status"].as_str(), running["agent_id"].as_str()), (Some("running"), Some("rest-worker")));

    let heartbeat = ok(post(
        "/agents/rest-worker/heartbeat",
        &agent,
        json!({"cpu_percent": 12.5, "running_execution_ids": [id], "timeout_seconds": 30}),
    )
    .await
    .expect("sent"))
    .await;
    assert_eq!((heartbeat["agent_id"].as_str(), heartbeat["status"].as_str()), (Some("rest-worker"), Some("online")));
    assert_eq!(heartbeat["running_execution_ids"][0].as_str(), Some(id.as_str()));

    let step =
        ok(post(&execution("steps"), &agent, json!({"step_id": "extract", "name": "Extract", "status": "running"}))
            .await
            .expect("sent"))
        .await;
    assert_eq!(step["current_step"], "extract");
    let progress =
        ok(post(&execution("progress"), &agent, json!({"percent": 40, "message": "halfway"})).await.expect("sent"))
            .await;
    assert_eq!(progress["progress"], 40);

    let first =
        ok(post(&execution("logs"), &agent, json!({"lines": [{"text": "one"}, {"text": "two", "stream": "stderr"}]}))
            .await
            .expect("sent"))
        .await;
    assert_eq!((first["lines_appended"].as_u64(), first["last_line_number"].as_u64()), (Some(2), Some(2)));
    let second = ok(post(&execution("logs"), &agent, json!({"lines": [{"text": "three"}]})).await.expect("sent")).await;
    assert_eq!(second["last_line_number"].as_u64(), Some(3), "numbering continues across calls");

    let blocked = ok(post(&execution("approvals"), &agent, json!({"approval_id": "ship", "reason": "prod"}))
        .await
        .expect("sent"))
    .await;
    assert_eq!(blocked["status"], "blocked");
    let resumed =
        ok(post(&execution("approvals/ship"), &submitter, json!({"granted": true})).await.expect("sent")).await;
    assert_eq!(resumed["status"], "running");
    let done = ok(post(&execution("steps"), &agent, json!({"step_id": "extract", "status": "completed"}))
        .await
        .expect("sent"))
    .await;
    assert_eq!(done["steps"][0]["status"], "completed");
    let completed = ok(post(&execution("status"), &agent, json!({"status": "completed"})).await.expect("sent")).await;
    assert_eq!(completed["status"], "completed");
    let events_before = events_of(&stack, &id).await.len();

    // Same validation and errors as gRPC, and nothing changes on a refusal.
    let cases = [
        (execution("steps"), &agent, json!({"step_id": "load", "status": "sideways"}), 400, "status"),
        (execution("progress"), &agent, json!({"percent": 140}), 400, "percent is 140"),
        (execution("status"), &agent, json!({"status": "running"}), 409, "completed"),
        (execution("logs"), &agent, json!({"lines": [{"txt": "typo"}]}), 400, "txt"),
        ("/executions/nope/progress".to_owned(), &agent, json!({"percent": 1}), 404, "nope"),
        (execution("progress"), &viewer, json!({"percent": 1}), 403, ""),
        ("/agents/rest-worker/heartbeat".to_owned(), &agent, json!({"cpu_percent": 300}), 400, "cpu_percent"),
    ];
    for (path, token, body, status, mentions) in cases {
        let response = post(&path, token, body).await.expect("sent");
        let got = response.status().as_u16();
        let error: Value = response.json().await.expect("json error");
        assert_eq!(got, status, "{path}: {error}");
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(mentions), "{path}: {message:?} should mention {mentions:?}");
    }
    assert_eq!(events_of(&stack, &id).await.len(), events_before, "refusals publish nothing");
}
