//! The dashboard at `/`, from the files embedded at build time (`make dashboard` builds them).

use crate::helpers::World;

#[tokio::test]
async fn the_dashboard_is_served_at_the_root_from_the_binary() {
    let world = World::start().await;
    let gateway = world.gateway(&[]).await;
    let index = reqwest::get(gateway.url("/")).await.expect("answers");
    if ws_gateway::dashboard::ASSETS.is_empty() {
        // Built without `make dashboard`: the page says how to get it.
        assert_eq!(index.status(), 404);
        assert!(index.text().await.expect("body").contains("make dashboard"));
        return;
    }
    assert_eq!(index.status(), 200);
    assert_eq!(index.headers()["content-type"], "text/html; charset=utf-8");
    let html = index.text().await.expect("body");
    assert!(html.contains("app.js"), "{html}");
    assert!(!html.contains("https://"), "no CDN: everything comes from this gateway");

    let script = reqwest::get(gateway.url("/app.js")).await.expect("answers");
    assert_eq!(script.status(), 200);
    assert_eq!(script.headers()["content-type"], "text/javascript; charset=utf-8");
    assert!(script.bytes().await.expect("body").len() > 1000);
    assert_eq!(reqwest::get(gateway.url("/missing.js")).await.expect("answers").status(), 404);
    // The protocol routes are not shadowed by the files.
    assert_eq!(reqwest::get(gateway.url("/healthz")).await.expect("answers").status(), 200);
}
