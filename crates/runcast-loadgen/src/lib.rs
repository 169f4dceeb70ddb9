//! # runcast-loadgen
//!
//! The fan-out benchmark of issue 11: many WebSocket clients subscribed to ws-gateway, or to
//! nats-server's own WebSocket listener as the peer, events published straight into JetStream,
//! every delivery checked and timed. `runcast-loadgen bench` (what `make bench-fanout` runs)
//! starts the servers pinned to one core and prints one table.
//!
//! # Layout
//!
//! - [`wsframe`], [`natsproto`], [`frames`]: the bytes on the wire — WebSocket client framing, the
//!   NATS protocol, and what a gateway frame or event says — parsed in place. Pure, unit-tested.
//! - [`tracker`]: gaps and duplicates of one connection. Pure.
//! - [`procfs`]: a server's CPU time and resident memory from `/proc`. Pure parsers + reads.
//! - [`publisher`]: the events (with the marker `seq=<n> t=<nanos>`) and the paced publisher.
//! - [`conn`]: one subscribed connection to either server, as a task of the current thread.
//! - [`fanout`]: one measured run against one server: connect, publish, measure, drain, add up.
//! - [`floor`]: the raw floor beside scenario (c): one core writing a frame to every socket.
//! - [`storm`]: scenario (e), steady clients' latency before and during a burst of resuming ones.
//! - [`servers`]: nats-server (JetStream + WebSocket) and ws-gateway as pinned child processes.
//! - [`bench`]: the scenarios, side by side, and the table.

pub mod bench;
pub mod conn;
pub mod fanout;
pub mod floor;
pub mod frames;
pub mod natsproto;
pub mod outcome;
pub mod procfs;
pub mod publisher;
pub mod servers;
pub mod storm;
pub mod tracker;
pub mod wsframe;
