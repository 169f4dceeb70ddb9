//! Integration tests against a real NATS JetStream server and PostgreSQL started by runcast-testkit.

mod feed;
mod postgres;
mod provisioning;
