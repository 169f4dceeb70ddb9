//! Integration tests against real NATS (and PostgreSQL) servers started by runcast-testkit: the
//! gateway in-process on port 0 (`helpers::World::gateway`) or as a process (drain, memory).

mod abuse;
mod api;
mod auth;
mod bench;
mod dashboard;
mod drain;
mod fanout;
mod filters;
mod helpers;
mod lifecycle;
mod persisted;
mod proto;
mod restart;
mod resume;
mod slow;
mod trace;
