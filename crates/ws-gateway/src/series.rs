//! Every metric the gateway exposes, described and at zero from the first scrape (DESIGN §7: a
//! dashboard or alert must not see a series appear only after the first connection or error).

use crate::gateway::Transport;
use crate::replay::ResumeSource;
use runcast_contract::StreamKind;

/// The `reason` label of `runcast_ws_refused_total`.
pub const REFUSALS: [&str; 4] = ["replica", "tenant", "subject", "auth"];

/// Every series name, for tests that check `/metrics`.
pub const NAMES: [&str; 19] = [
    "runcast_ws_connections",
    "runcast_ws_refused_total",
    "runcast_ws_messages_in_total",
    "runcast_ws_messages_out_total",
    "runcast_ws_resyncs_total",
    "runcast_ws_queue_overflows_total",
    "runcast_ws_coalesced_total",
    "runcast_ws_replays_total",
    "runcast_ws_replayed_events",
    "runcast_ws_resumes_total",
    "runcast_ws_replay_slot_yields_total",
    "runcast_ws_replay_catch_ups_total",
    "runcast_ws_delivery_latency_seconds",
    "runcast_ws_delivery_lag_seconds",
    "runcast_ws_upstream_events_total",
    "runcast_ws_upstream_restarts_total",
    "runcast_ws_undecodable_events_total",
    "runcast_ws_compression_negotiated_total",
    "runcast_ws_compressed_bytes_total",
];

pub fn declare() {
    metrics::describe_gauge!("runcast_ws_connections", "Open connections, by transport");
    metrics::describe_counter!("runcast_ws_refused_total", "Connections refused, by cap or at authentication");
    metrics::describe_counter!("runcast_ws_messages_in_total", "Client messages received");
    metrics::describe_counter!("runcast_ws_messages_out_total", "Events written to clients, by transport");
    metrics::describe_counter!("runcast_ws_resyncs_total", "resync messages sent to clients that fell behind");
    metrics::describe_counter!("runcast_ws_queue_overflows_total", "Outbound queues that overflowed");
    metrics::describe_counter!("runcast_ws_coalesced_total", "Progress and heartbeat events replaced by newer ones");
    metrics::describe_counter!("runcast_ws_replays_total", "Resumes from an offset, by whether they recovered");
    metrics::describe_histogram!("runcast_ws_replayed_events", "Events one resume replayed");
    metrics::describe_counter!(
        "runcast_ws_resumes_total",
        "Resumes from an offset, by where they were served from (jetstream, postgres, unrecoverable)"
    );
    metrics::describe_counter!(
        "runcast_ws_replay_slot_yields_total",
        "Replays that gave their replica slot back while their client was not reading"
    );
    metrics::describe_counter!(
        "runcast_ws_replay_catch_ups_total",
        "Replays that read on because they were slower than the live feed (a slow source, not a slow client)"
    );
    metrics::describe_histogram!(
        "runcast_ws_delivery_latency_seconds",
        "Upstream receipt to write to the client, sampled once per write batch: its oldest event"
    );
    metrics::describe_gauge!(
        "runcast_ws_delivery_lag_seconds",
        "Per stream: time between the newest dispatched event's occurred_at and its dispatch here"
    );
    metrics::describe_counter!("runcast_ws_upstream_events_total", "Events read from the live feed, by stream");
    metrics::describe_counter!("runcast_ws_upstream_restarts_total", "Live feed consumers re-created, by stream");
    metrics::describe_counter!("runcast_ws_undecodable_events_total", "Events on a stream that do not decode");
    metrics::describe_counter!(
        "runcast_ws_compression_negotiated_total",
        "WebSocket connections that negotiated permessage-deflate, and SSE streams sent in gzip"
    );
    metrics::describe_counter!(
        "runcast_ws_compressed_bytes_total",
        "Messages compressed (once each, whatever the connections that send them): their bytes before (form=plain) and after (form=compressed)"
    );
    for form in ["plain", "compressed"] {
        metrics::counter!("runcast_ws_compressed_bytes_total", "form" => form).increment(0);
    }
    for transport in [Transport::WebSocket, Transport::Sse] {
        metrics::gauge!("runcast_ws_connections", "transport" => transport.name()).increment(0.0);
        metrics::counter!("runcast_ws_messages_out_total", "transport" => transport.name()).increment(0);
    }
    for reason in REFUSALS {
        metrics::counter!("runcast_ws_refused_total", "reason" => reason).increment(0);
    }
    for recovered in ["true", "false"] {
        metrics::counter!("runcast_ws_replays_total", "recovered" => recovered).increment(0);
    }
    for source in ResumeSource::ALL {
        metrics::counter!("runcast_ws_resumes_total", "source" => source.as_str()).increment(0);
    }
    for kind in StreamKind::ALL {
        metrics::gauge!("runcast_ws_delivery_lag_seconds", "stream" => kind.base_name()).set(0.0);
        metrics::counter!("runcast_ws_upstream_events_total", "stream" => kind.base_name()).increment(0);
        metrics::counter!("runcast_ws_upstream_restarts_total", "stream" => kind.base_name()).increment(0);
    }
    for counter in [
        "runcast_ws_messages_in_total",
        "runcast_ws_resyncs_total",
        "runcast_ws_queue_overflows_total",
        "runcast_ws_coalesced_total",
        "runcast_ws_replay_slot_yields_total",
        "runcast_ws_replay_catch_ups_total",
        "runcast_ws_undecodable_events_total",
        "runcast_ws_compression_negotiated_total",
    ] {
        metrics::counter!(counter).increment(0);
    }
    // Registered: rendered with count 0 until the first observation.
    let _ = metrics::histogram!("runcast_ws_replayed_events");
    let _ = metrics::histogram!("runcast_ws_delivery_latency_seconds");
}

/// The metric handles a connection's writer uses, resolved once per connection: a registry
/// lookup per frame would cost more than writing the frame.
pub struct WriterMeters {
    /// `runcast_ws_delivery_latency_seconds`, sampled once per write batch (its oldest event).
    latency: metrics::Histogram,
    messages_out: metrics::Counter,
}

impl WriterMeters {
    pub fn new(transport: Transport) -> Self {
        Self {
            latency: metrics::histogram!("runcast_ws_delivery_latency_seconds"),
            messages_out: metrics::counter!("runcast_ws_messages_out_total", "transport" => transport.name()),
        }
    }

    /// One written batch: its events, and when its oldest event was received upstream.
    pub fn written(&self, events: usize, oldest: Option<std::time::Instant>) {
        if let Some(received) = oldest {
            self.latency.record(received.elapsed().as_secs_f64());
        }
        self.messages_out.increment(events as u64);
    }
}
