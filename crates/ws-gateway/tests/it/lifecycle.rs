#[tokio::test]
async fn starts_without_nats_becomes_ready_follows_nats_and_stops_on_sigterm() {
    runcast_testkit::lifecycle::check("ws-gateway", false, &ws_gateway::series::NAMES)
        .await
        .expect("lifecycle contract holds");
}
