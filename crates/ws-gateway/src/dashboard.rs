//! The live dashboard at `/`: static files embedded at build time (see build.rs). The page talks to
//! this gateway (its own origin) and to the REST API, like any other client.

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

include!(concat!(env!("OUT_DIR"), "/dashboard_assets.rs"));

/// The dashboard's files, and `/config.json`: where it finds the REST API (`api_url`, empty for
/// "guess") and which further origins it may send its token to (`allowed_origins`), which only
/// the deployment knows.
pub fn router<S: Clone + Send + Sync + 'static>(api_url: &str, allowed_origins: &[String]) -> Router<S> {
    let mut config = serde_json::json!({ "api": (!api_url.is_empty()).then_some(api_url) });
    // Left out when empty: the dashboard then trusts only its own origin and the API's.
    if !allowed_origins.is_empty()
        && let Some(object) = config.as_object_mut()
    {
        object.insert("allowed_origins".into(), allowed_origins.into());
    }
    Router::new()
        .route("/", get(|| async { file("index.html") }))
        .route(
            "/config.json",
            get(move || std::future::ready(([(header::CACHE_CONTROL, "no-cache")], axum::Json(config)))),
        )
        .route("/{file}", get(|Path(name): Path<String>| async move { file(&name) }))
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("map" | "json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

fn file(name: &str) -> Response {
    match ASSETS.iter().find(|(asset, _)| *asset == name) {
        Some((_, bytes)) => ([(header::CONTENT_TYPE, content_type(name)), (header::CACHE_CONTROL, "no-cache")], *bytes).into_response(),
        None if ASSETS.is_empty() && name == "index.html" => (
            StatusCode::NOT_FOUND,
            Html("<!doctype html><title>Runcast</title><p>This gateway was built without the dashboard: run <code>make dashboard</code>, then rebuild.</p>"),
        )
            .into_response(),
        None => runcast_runtime::auth::json_error(StatusCode::NOT_FOUND, "NOT_FOUND", &format!("no file {}", name.escape_debug())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_by_extension() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("app.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("app.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("README"), "application/octet-stream");
    }

    async fn config_of(api_url: &str, allowed: &[&str]) -> serde_json::Value {
        use tower::ServiceExt as _;
        let request = axum::http::Request::get("/config.json").body(axum::body::Body::empty()).expect("request");
        let allowed: Vec<String> = allowed.iter().map(|s| (*s).to_owned()).collect();
        let response = router::<()>(api_url, &allowed).oneshot(request).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.expect("body");
        serde_json::from_slice(&body).expect("json")
    }

    #[tokio::test]
    async fn the_config_names_the_api_only_when_one_is_set() {
        assert_eq!(config_of("/api/v1", &[]).await, serde_json::json!({"api": "/api/v1"}));
        assert_eq!(config_of("", &[]).await, serde_json::json!({"api": null}));
    }

    #[tokio::test]
    async fn the_config_lists_the_allowed_origins() {
        assert_eq!(
            config_of("", &["https://a.example", "https://b.example"]).await["allowed_origins"],
            serde_json::json!(["https://a.example", "https://b.example"])
        );
    }

    #[test]
    fn unknown_files_are_not_found() {
        assert_eq!(file("../../etc/passwd").status(), StatusCode::NOT_FOUND);
        assert_eq!(file("nope.js").status(), StatusCode::NOT_FOUND);
    }
}
