//! Integration tests against a real NATS JetStream server started by runcast-testkit.

mod feed;
mod provisioning;
