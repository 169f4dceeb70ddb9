//! Every metric the persister exposes, described and at zero from the first scrape.

use runcast_contract::StreamKind;

/// The tables retention works on (the `table` label).
pub(crate) const RETAINED_TABLES: [&str; 2] = ["events", "log_lines"];

pub(crate) fn declare() {
    metrics::describe_counter!("runcast_persister_events_written_total", "Events written to the history, by stream");
    metrics::describe_counter!("runcast_persister_dead_letters_total", "Poison messages set aside, by stream");
    metrics::describe_counter!("runcast_persister_write_retries_total", "Batch writes retried, by stream");
    metrics::describe_histogram!("runcast_persister_batch_duration_seconds", "Time to write one batch");
    metrics::describe_gauge!("runcast_persister_lag", "Messages of the stream not yet acknowledged");
    metrics::describe_gauge!("runcast_persister_applied_offset", "The stream's low watermark in the read model");
    metrics::describe_counter!("runcast_persister_retention_partitions_dropped_total", "Day partitions dropped");
    metrics::describe_counter!("runcast_persister_retention_rows_deleted_total", "Rows deleted by retention");
    for kind in StreamKind::ALL {
        let stream = kind.base_name();
        metrics::counter!("runcast_persister_events_written_total", "stream" => stream).increment(0);
        metrics::counter!("runcast_persister_dead_letters_total", "stream" => stream).increment(0);
        metrics::counter!("runcast_persister_write_retries_total", "stream" => stream).increment(0);
        // Registered: rendered with count 0 until the first batch.
        let _ = metrics::histogram!("runcast_persister_batch_duration_seconds", "stream" => stream);
        metrics::gauge!("runcast_persister_lag", "stream" => stream).set(0.0);
        metrics::gauge!("runcast_persister_applied_offset", "stream" => stream).set(0.0);
    }
    for table in RETAINED_TABLES {
        metrics::counter!("runcast_persister_retention_partitions_dropped_total", "table" => table).increment(0);
        metrics::counter!("runcast_persister_retention_rows_deleted_total", "table" => table).increment(0);
    }
}
