//! Integration tests against real NATS and PostgreSQL servers started by runcast-testkit.

mod isolation;
mod lifecycle;
mod schema;
