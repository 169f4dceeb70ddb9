//! Identity over both front ends: the role × method matrix, bad tokens, tenant isolation.

use crate::support::{SECRET, Stack, TENANT, admin, agents, executions, http, token_for};
use runcast_contract::v1::*;
use tonic::Code;

const ROLES: [&str; 4] = ["viewer", "submitter", "agent", "admin"];

#[tokio::test]
async fn role_by_method_matrix_over_grpc_and_rest() {
    let stack = Stack::start().await;
    let mut api = stack.api(&[]).await;
    let mut setup = executions(&mut api, Some(&admin())).await;
    let id = crate::support::create(&mut setup, "wf").await;

    for role in ROLES {
        let token = token_for(TENANT, &[role], 600);
        let mut client = executions(&mut api, Some(&token)).await;
        let mut agent_client = agents(&mut api, Some(&token)).await;
        // (method, outcome, roles allowed)
        let calls: Vec<(&str, Result<(), tonic::Status>, &[&str])> = vec![
            (
                "GetExecution",
                client.get_execution(GetExecutionRequest { execution_id: id.clone() }).await.map(drop),
                &ROLES,
            ),
            (
                "CreateExecution",
                client
                    .create_execution(CreateExecutionRequest { workflow_id: "wf".into(), ..Default::default() })
                    .await
                    .map(drop),
                &["submitter", "admin"],
            ),
            (
                "PauseExecution",
                client
                    .pause_execution(PauseExecutionRequest { execution_id: id.clone(), ..Default::default() })
                    .await
                    .map(drop),
                &["submitter", "admin"],
            ),
            (
                "ReportProgress",
                client
                    .report_progress(ReportProgressRequest {
                        execution_id: id.clone(),
                        percent: 5,
                        ..Default::default()
                    })
                    .await
                    .map(drop),
                &["agent", "admin"],
            ),
            (
                "Heartbeat",
                agent_client
                    .heartbeat(HeartbeatRequest { agent_id: format!("agent-{role}"), ..Default::default() })
                    .await
                    .map(drop),
                &["agent", "admin"],
            ),
        ];
        for (method, outcome, allowed) in calls {
            let denied = matches!(&outcome, Err(status) if status.code() == Code::PermissionDenied);
            assert_eq!(denied, !allowed.contains(&role), "{role} calling {method}: {outcome:?}");
            if let Err(status) = &outcome {
                assert_ne!(status.code(), Code::Unauthenticated, "{role} {method}: {}", status.message());
            }
        }

        let base = api.http_url("/api/v1");
        let rest: Vec<(&str, reqwest::RequestBuilder, &[&str])> = vec![
            ("GET /executions/{id}", http().get(format!("{base}/executions/{id}")), &ROLES),
            (
                "POST /executions",
                http().post(format!("{base}/executions")).json(&serde_json::json!({"workflow_id": "wf"})),
                &["submitter", "admin"],
            ),
            (
                "POST /executions/{id}/cancel",
                http().post(format!("{base}/executions/nope/cancel")),
                &["submitter", "admin"],
            ),
            ("DELETE /events", http().delete(format!("{base}/events?older_than=2000-01-01T00:00:00Z")), &["admin"]),
        ];
        for (route, request, allowed) in rest {
            let status = request.bearer_auth(&token).send().await.expect("sent").status().as_u16();
            assert_eq!(status == 403, !allowed.contains(&role), "{role} {route} answered {status}");
            assert_ne!(status, 401, "{role} {route}");
        }
    }
}

#[tokio::test]
async fn expired_garbled_and_wrong_key_tokens_are_unauthenticated() {
    let stack = Stack::start().await;
    let mut api = stack.api(&[]).await;
    let wrong_key = runcast_testkit::token::token("not-the-secret", "x", TENANT, &["admin"], 600);
    assert_ne!(SECRET.as_bytes(), b"not-the-secret");
    let cases = [
        (Some(token_for(TENANT, &["admin"], -60)), "expired"),
        (Some("garbage.token.here".to_owned()), "not a JWT"),
        (Some(wrong_key), "signature"),
        (None, "no credentials"),
    ];
    for (token, reason) in cases {
        let mut client = executions(&mut api, token.as_deref()).await;
        let err = client.get_execution(GetExecutionRequest { execution_id: "e1".into() }).await.expect_err(reason);
        assert_eq!(err.code(), Code::Unauthenticated, "{reason}: {}", err.message());
        assert!(err.message().contains(reason), "{}", err.message());

        let mut request = http().get(api.http_url("/api/v1/executions/e1"));
        if let Some(token) = &token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("sent");
        assert_eq!(response.status().as_u16(), 401, "{reason}");
        let body: serde_json::Value = response.json().await.expect("json error");
        assert_eq!(body["error"]["code"], "UNAUTHENTICATED");
    }
    // The public endpoints stay public.
    assert!(http().get(api.http_url("/healthz")).send().await.expect("sent").status().is_success());
}

#[tokio::test]
async fn another_tenants_executions_are_not_found_on_get_watch_list_and_events() {
    let stack = Stack::start().await;
    let _persister = stack.persister().await;
    let mut api = stack.api(&[]).await;
    let mut acme = executions(&mut api, Some(&admin())).await;
    let execution = acme
        .create_execution(CreateExecutionRequest { workflow_id: "secret-wf".into(), ..Default::default() })
        .await
        .expect("create")
        .into_inner();
    let id = execution.execution_id.clone();

    // acme sees its own execution in the read model first, so the negative checks below are meaningful.
    runcast_testkit::eventually("the execution in acme's list", std::time::Duration::from_secs(20), || {
        let mut acme = acme.clone();
        async move {
            let list = acme.list_executions(ListExecutionsRequest::default()).await.ok()?.into_inner();
            (list.executions.len() == 1).then_some(())
        }
    })
    .await
    .expect("persisted");

    let intruder_token = token_for("globex", &["admin"], 600);
    let mut globex = executions(&mut api, Some(&intruder_token)).await;
    let err = globex.get_execution(GetExecutionRequest { execution_id: id.clone() }).await.expect_err("isolated");
    assert_eq!(err.code(), Code::NotFound);
    let err = globex
        .watch_execution(WatchExecutionRequest { execution_id: id.clone(), from_offset: None })
        .await
        .expect_err("isolated");
    assert_eq!(err.code(), Code::NotFound);
    let err = globex
        .cancel_execution(CancelExecutionRequest { execution_id: id.clone(), ..Default::default() })
        .await
        .expect_err("isolated");
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        globex
            .list_executions(ListExecutionsRequest::default())
            .await
            .expect("list")
            .into_inner()
            .executions
            .is_empty()
    );
    let events =
        globex.list_events(ListEventsRequest { execution_id: id.clone(), ..Default::default() }).await.expect("events");
    assert!(events.into_inner().events.is_empty());

    let response = http()
        .get(api.http_url(&format!("/api/v1/executions/{id}")))
        .bearer_auth(&intruder_token)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 404);
    let body: serde_json::Value = http()
        .get(api.http_url("/api/v1/events"))
        .bearer_auth(&intruder_token)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(body["items"], serde_json::json!([]));
    // acme still sees it all.
    assert_eq!(
        acme.get_execution(GetExecutionRequest { execution_id: id }).await.expect("own").into_inner().workflow_id,
        "secret-wf"
    );
}
