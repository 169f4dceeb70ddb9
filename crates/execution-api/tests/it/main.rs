//! Integration tests: the api as a real process against real NATS and PostgreSQL servers (and the
//! real event-persister where the read model is involved), driven over gRPC and REST.

mod auth;
mod bench;
mod error_contract;
mod failures;
mod lifecycle;
mod limits;
mod long_lived;
mod ownership;
mod reads;
mod request_ids;
mod rest_workers;
mod retention;
mod support;
mod sweepers;
mod trace_context;
mod writes;
