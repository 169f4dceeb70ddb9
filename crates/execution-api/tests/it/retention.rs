//! Retention on demand is per tenant (DESIGN §7): one tenant's admin deletes its own history and
//! nothing of another tenant's; `GET /events` answers with the history's `as_of_offset`; a crafted
//! cursor is a 400 naming it, never a database error.

use crate::support::{Stack, http, token_for};
use std::time::Duration;

async fn history_rows(pool: &sqlx::PgPool, tenant: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(pool)
        .await
        .expect("count")
}

#[tokio::test]
async fn an_admin_deletes_only_its_own_tenants_history() {
    let stack = Stack::start().await;
    let _persister = stack.persister().await;
    let api = stack.api(&[]).await;
    let base = api.http_url("/api/v1");
    let pool = sqlx::PgPool::connect(&stack.isolation.database_url).await.expect("database");
    let (alpha, beta) = (token_for("alpha", &["admin"], 600), token_for("beta", &["admin"], 600));
    for token in [&alpha, &beta] {
        for _ in 0..3 {
            let created = http()
                .post(format!("{base}/executions"))
                .bearer_auth(token)
                .json(&serde_json::json!({"workflow_id": "wf"}))
                .send()
                .await
                .expect("sent");
            assert_eq!(created.status().as_u16(), 201);
        }
    }
    runcast_testkit::eventually("both tenants' history", Duration::from_secs(20), || async {
        (history_rows(&pool, "alpha").await == 3 && history_rows(&pool, "beta").await == 3).then_some(())
    })
    .await
    .expect("persisted");

    // The watermark is refreshed on its own interval: wait until it covers the listed events.
    runcast_testkit::eventually("GET /events to carry the history's as_of_offset", Duration::from_secs(20), || async {
        let page: serde_json::Value =
            http().get(format!("{base}/events")).bearer_auth(&alpha).send().await.ok()?.json().await.ok()?;
        let offsets: Vec<u64> = page["items"].as_array()?.iter().filter_map(|e| e["offset"].as_u64()).collect();
        let newest = offsets.iter().max()?;
        (offsets.len() == 3 && page["as_of_offset"].as_u64()? >= *newest).then_some(())
    })
    .await
    .expect("as_of_offset covers the listed events");

    let cutoff = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let deleted: serde_json::Value = http()
        .delete(format!("{base}/events"))
        .query(&[("older_than", cutoff.as_str())])
        .bearer_auth(&beta)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(deleted["rows_deleted"], 3, "{deleted}");
    assert_eq!(history_rows(&pool, "beta").await, 0);
    assert_eq!(history_rows(&pool, "alpha").await, 3, "another tenant's history is untouched");

    // A cursor of the right shape but the wrong kind of key: 400 naming it, no SQL in sight.
    let crafted = hex::encode(br#"{"at":"2026-01-01T00:00:00Z","id":"not-a-uuid"}"#);
    let response = http()
        .get(format!("{base}/events"))
        .query(&[("cursor", crafted.as_str())])
        .bearer_auth(&alpha)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 400);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "INVALID_ARGUMENT");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("not a cursor")), "{body}");
}
