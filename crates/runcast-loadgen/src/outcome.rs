//! What one run measured: [`Outcome`] (deliveries, latency, CPU, memory, faults), with the storm's
//! own figures ([`StormStats`]) for scenario (e). Shared by the runs ([`crate::fanout`],
//! [`crate::storm`]) and the table ([`crate::bench`]).

use crate::procfs::CpuTime;
use crate::publisher::Published;
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub server: &'static str,
    pub connections: usize,
    pub subscribed: usize,
    pub failed: usize,
    pub errors: Vec<String>,
    pub rss_before_kib: Option<u64>,
    pub rss_subscribed_kib: Option<u64>,
    pub published: Published,
    /// The measured window (publishing, after the warm-up).
    pub window: Duration,
    pub delivered_in_window: u64,
    /// Bytes the connections read from their sockets over the window.
    pub bytes_in_window: u64,
    pub cpu_in_window: Option<CpuTime>,
    /// This process's own CPU over the window: near 100 % the client may be the limit.
    pub client_cpu_in_window: Option<CpuTime>,
    pub delivered: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// The same, to the client's socket (kernel receive timestamps).
    pub wire_p50_us: u64,
    pub wire_p99_us: u64,
    pub wire_max_us: u64,
    /// Events a connection skipped: a later one arrived, this one never did.
    pub gaps: u64,
    /// Events that had not reached their connection when the run stopped waiting (a client
    /// catching up by replay after `resync`): late, not skipped.
    pub behind_at_end: u64,
    /// How long the run waited for deliveries after the publisher stopped.
    pub drain: Duration,
    pub duplicates: u64,
    pub offset_gaps: u64,
    pub offset_duplicates: u64,
    pub resyncs: u64,
    /// Connections that got every published event.
    pub complete_connections: usize,
    pub ended_early: usize,
    /// Scenario (e): the storm, and the steady clients' latency around it.
    pub storm: Option<StormStats>,
}

impl Outcome {
    pub fn deliveries_per_second(&self) -> f64 {
        self.delivered_in_window as f64 / self.window.as_secs_f64().max(1e-9)
    }

    /// Server CPU in % of one core over the window.
    pub fn cpu_percent(&self) -> Option<f64> {
        self.cpu_in_window.map(|cpu| cpu.total().as_secs_f64() * 100.0 / self.window.as_secs_f64().max(1e-9))
    }

    pub fn client_cpu_percent(&self) -> Option<f64> {
        self.client_cpu_in_window.map(|cpu| cpu.total().as_secs_f64() * 100.0 / self.window.as_secs_f64().max(1e-9))
    }

    /// Bytes on the wire per delivery (frames as sent, compressed or not, and everything else
    /// the server sent meanwhile).
    pub fn wire_bytes_per_delivery(&self) -> Option<f64> {
        (self.delivered_in_window > 0).then(|| self.bytes_in_window as f64 / self.delivered_in_window as f64)
    }

    pub fn cpu_us_per_delivery(&self) -> Option<f64> {
        let cpu = self.cpu_in_window?;
        (self.delivered_in_window > 0).then(|| cpu.total().as_secs_f64() * 1e6 / self.delivered_in_window as f64)
    }

    /// Deliveries that went wrong, of every kind: events skipped, duplicated, or still on their way.
    pub fn faults(&self) -> u64 {
        self.gaps + self.duplicates + self.behind_at_end
    }

    /// (RSS with every connection subscribed − RSS before) / connections, in KiB.
    pub fn idle_kib_per_connection(&self) -> Option<f64> {
        let (before, after) = (self.rss_before_kib?, self.rss_subscribed_kib?);
        (self.subscribed > 0).then(|| after.saturating_sub(before) as f64 / self.subscribed as f64)
    }
}

/// The steady clients' latency to the socket over one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowLatency {
    pub deliveries: u64,
    pub p99_us: u64,
    /// Beside the max: one late delivery in a thousand, so a single outlier (a retransmission,
    /// a preempted client) does not decide alone how a storm reads.
    pub p999_us: u64,
    pub max_us: u64,
}

#[derive(Debug, Clone, Default)]
pub struct StormStats {
    pub before: WindowLatency,
    pub during: WindowLatency,
    pub connections: usize,
    /// Storm clients that got their `subscribed` (after their replay).
    pub resumed: usize,
    pub failed: usize,
    /// Storm clients that got a `resync`.
    pub resynced: usize,
    /// From the first storm connect until the last storm client was resumed (or failed, or the
    /// timeout).
    pub duration: Duration,
    /// Where the storm clients resumed from (the gateway only).
    pub since_offset: Option<u64>,
    /// Events delivered to storm clients: replayed, and live ones before they left.
    pub delivered: u64,
    /// Sequences a storm client skipped or got twice between its resume offset and leaving
    /// (the gateway only: NATS storm clients do not resume).
    pub gaps: Option<u64>,
    pub duplicates: u64,
    /// The measured server's CPU over the storm.
    pub server_cpu: Option<CpuTime>,
    pub errors: Vec<String>,
}

impl StormStats {
    /// How much longer the worst steady delivery took during the storm than the p99 before it.
    pub fn stall_ms(&self) -> f64 {
        stall_ms(&self.before, &self.during)
    }

    pub fn server_cpu_percent(&self) -> Option<f64> {
        self.server_cpu.map(|cpu| cpu.total().as_secs_f64() * 100.0 / self.duration.as_secs_f64().max(1e-9))
    }
}

/// max during − p99 before, in ms (negative: the storm's worst was better than the usual).
pub fn stall_ms(before: &WindowLatency, during: &WindowLatency) -> f64 {
    (during.max_us as f64 - before.p99_us as f64) / 1000.0
}
