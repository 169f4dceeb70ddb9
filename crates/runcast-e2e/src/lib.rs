//! # runcast-e2e
//!
//! Tests only (`tests/it`): the three services as real processes against a 3-node NATS JetStream
//! cluster (R3 streams) and PostgreSQL, checking what issue 15 asks of a production-shaped
//! deployment:
//!
//! - `node_loss`: under steady writes through the api, with 2 persisters and 2 gateways serving
//!   WebSocket and SSE clients, the EXECUTIONS stream leader is killed (-9), restarted, then
//!   another node is killed. Every acknowledged write is in PostgreSQL exactly once, every client
//!   sees every offset once, callers see only `UNAVAILABLE` meanwhile (their commands carry request
//!   ids, each progress report is sent twice at once, and the history holds each change once),
//!   and the unavailability window is printed.
//! - `retries`: two api replicas on R3 streams; a command sent again with its `request_id` is
//!   answered by its first try by each path (last event, duplicate, look back), and hedged pairs
//!   store one change each.
//! - `rolling_restart`: three gateways SIGTERMed one at a time with 1,000 connected clients; all
//!   resume gap-free, and the drain's jittered `retry_after_ms` keeps the reconnect rate under a
//!   bound the test measures and prints.
//!
//! Service binaries must be built first (`cargo build --workspace --bins`; `make test` does).
