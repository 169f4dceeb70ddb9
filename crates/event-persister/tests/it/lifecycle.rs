#[tokio::test]
async fn starts_without_dependencies_becomes_ready_follows_them_and_stops_on_sigterm() {
    runcast_testkit::lifecycle::check("event-persister", true).await.expect("lifecycle contract holds");
}
