//! Integration tests: the api as a real process against real NATS and PostgreSQL servers (and the
//! real event-persister where the read model is involved), driven over gRPC and REST.

mod auth;
mod failures;
mod lifecycle;
mod reads;
mod support;
mod sweepers;
mod trace_context;
mod writes;
