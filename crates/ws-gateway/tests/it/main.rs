//! Integration tests against real NATS (and PostgreSQL) servers started by runcast-testkit: the
//! gateway in-process on port 0 (`helpers::World::gateway`) or as a process (drain, memory).

mod abuse;
mod auth;
mod bench;
mod caps;
mod compression;
mod contract;
mod dashboard;
mod drain;
mod epochs;
mod fairness;
mod fanout;
mod filters;
mod helpers;
mod lifecycle;
mod memory;
mod persisted;
mod proto;
mod recovery;
mod restart;
mod resume;
mod resume_metrics;
mod slow;
mod slow_peers;
mod snapshots;
mod sse_unavailable;
mod trace;
