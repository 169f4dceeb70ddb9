//! Integration tests against real NATS (and PostgreSQL) servers started by runcast-testkit.

mod lifecycle;
