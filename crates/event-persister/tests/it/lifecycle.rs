#[tokio::test]
async fn starts_without_dependencies_becomes_ready_follows_them_and_stops_on_sigterm() {
    let series = [
        "runcast_persister_events_written_total",
        "runcast_persister_dead_letters_total",
        "runcast_persister_write_retries_total",
        "runcast_persister_batch_duration_seconds",
        "runcast_persister_lag",
        "runcast_persister_applied_offset",
        "runcast_persister_retention_partitions_dropped_total",
        "runcast_persister_retention_rows_deleted_total",
    ];
    runcast_testkit::lifecycle::check("event-persister", true, &series).await.expect("lifecycle contract holds");
}
