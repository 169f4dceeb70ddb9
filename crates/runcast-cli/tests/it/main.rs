//! The `runcast` binary against the real stack (NATS, PostgreSQL, execution-api, event-persister,
//! ws-gateway as processes).

mod cli;
