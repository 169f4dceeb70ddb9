//! One error shape (DESIGN §7): every REST error — bad JSON, unknown body fields, unknown or
//! malformed query parameters, unknown routes and methods — is `{"error": {"code", "message"}}`
//! naming what is wrong and what is accepted, and changes nothing.

use crate::support::{Stack, admin, events_of, http};

#[tokio::test]
async fn every_rest_error_has_one_json_shape_and_names_the_field() {
    let stack = Stack::start().await;
    let api = stack.api(&[]).await;
    let base = api.http_url("/api/v1");
    let token = admin();
    let created: serde_json::Value = http()
        .post(format!("{base}/executions"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"workflow_id": "wf"}))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    let id = created["execution_id"].as_str().expect("id").to_owned();
    let before = events_of(&stack, &id).await.len();

    let cases = [
        (http().get(format!("{base}/executions?status=pending")), 400, "INVALID_ARGUMENT", "status"),
        (http().get(format!("{base}/executions?limit=many")), 400, "INVALID_ARGUMENT", "limit"),
        (http().get(format!("{base}/events?types=execution.created")), 400, "INVALID_ARGUMENT", "`type`"),
        (http().get(format!("{base}/nowhere")), 404, "NOT_FOUND", "/api/v1/nowhere"),
        (http().get(format!("{base}/executions/{id}?fields=status")), 400, "INVALID_ARGUMENT", "`fields`"),
        (
            http().post(format!("{base}/executions/{id}/cancel?force=true")).json(&serde_json::json!({})),
            400,
            "INVALID_ARGUMENT",
            "`force`",
        ),
        (http().put(format!("{base}/executions")), 405, "INVALID_ARGUMENT", "PUT"),
        (
            http().post(format!("{base}/executions")).json(&serde_json::json!({"workflow": "wf"})),
            400,
            "INVALID_ARGUMENT",
            "workflow is not a field of this request: the fields are workflow_id",
        ),
        (
            http().post(format!("{base}/executions/{id}/cancel")).json(&serde_json::json!({"reasn": "typo"})),
            400,
            "INVALID_ARGUMENT",
            "reasn is not a field",
        ),
        (
            http().post(format!("{base}/executions")).header("content-type", "application/json").body("{not json"),
            400,
            "INVALID_ARGUMENT",
            "request body",
        ),
    ];
    for (request, status, code, mentions) in cases {
        let response = request.bearer_auth(&token).send().await.expect("sent");
        let (got, url) = (response.status().as_u16(), response.url().to_string());
        let content_type =
            response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let body: serde_json::Value = response.json().await.unwrap_or_else(|err| panic!("{url}: not JSON ({err})"));
        assert_eq!(got, status, "{url}: {body}");
        assert!(content_type.starts_with("application/json"), "{url}: {content_type}");
        assert_eq!(body["error"]["code"], code, "{url}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(mentions), "{url}: {message:?} should mention {mentions:?}");
    }
    // The accepted names are listed for an unknown parameter.
    let response = http().get(format!("{base}/executions?status=pending")).bearer_auth(&token).send().await;
    let body: serde_json::Value = response.expect("sent").json().await.expect("json");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("statuses")), "{body}");
    assert_eq!(events_of(&stack, &id).await.len(), before, "no error changed anything");
}
