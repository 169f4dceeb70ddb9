//! Integration tests against real NATS and PostgreSQL servers started by runcast-testkit.

mod bench;
mod crash;
mod isolation;
mod lifecycle;
mod load;
mod nats_outage;
mod poison;
mod postgres_outage;
mod prefetch;
mod rebuild;
mod replicas;
mod retention;
mod schema;
mod store;
mod support;
