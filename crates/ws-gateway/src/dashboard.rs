//! The live dashboard at `/`: static files embedded at build time (see build.rs). The page talks to
//! this gateway (its own origin) and to the REST API, like any other client.

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

include!(concat!(env!("OUT_DIR"), "/dashboard_assets.rs"));

/// The dashboard's files, and `/config.json`: where it finds the REST API (`api_url`, empty for
/// "guess"), which only the deployment knows.
pub fn router<S: Clone + Send + Sync + 'static>(api_url: &str) -> Router<S> {
    let config = serde_json::json!({ "api": (!api_url.is_empty()).then_some(api_url) });
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
        None => StatusCode::NOT_FOUND.into_response(),
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

    async fn config_of(api_url: &str) -> serde_json::Value {
        use tower::ServiceExt as _;
        let request = axum::http::Request::get("/config.json").body(axum::body::Body::empty()).expect("request");
        let response = router::<()>(api_url).oneshot(request).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.expect("body");
        serde_json::from_slice(&body).expect("json")
    }

    #[tokio::test]
    async fn the_config_names_the_api_only_when_one_is_set() {
        assert_eq!(config_of("/api/v1").await, serde_json::json!({"api": "/api/v1"}));
        assert_eq!(config_of("").await, serde_json::json!({"api": null}));
    }

    #[test]
    fn unknown_files_are_not_found() {
        assert_eq!(file("../../etc/passwd").status(), StatusCode::NOT_FOUND);
        assert_eq!(file("nope.js").status(), StatusCode::NOT_FOUND);
    }
}
