#[tokio::test]
async fn starts_without_nats_becomes_ready_follows_nats_and_stops_on_sigterm() {
    let series = [
        "runcast_api_commands_total",
        "runcast_api_command_seconds",
        "runcast_api_write_conflicts_total",
        "runcast_api_requests_shed_total",
        "runcast_api_tenant_requests_shed_total",
        "runcast_api_request_ids_reused_total",
        "runcast_api_requests_timed_out_total",
        "runcast_api_retries_answered_total",
    ];
    runcast_testkit::lifecycle::check("execution-api", false, &series).await.expect("lifecycle contract holds");
}
