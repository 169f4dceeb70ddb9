//! # runcast-runtime
//!
//! What every Runcast service does the same way, so each `main.rs` only wires:
//!
//! - [`backoff`]: the capped exponential backoff every retry loop uses;
//! - [`auth`]: JWT and API-key authentication, roles, and the middleware every API wears;
//! - [`config`]: settings from flags and environment variables with defaults, `--help`, and the
//!   exit code 64 for a bad configuration;
//! - [`telemetry`]: `tracing` setup (JSON when stdout is not a terminal);
//! - [`shutdown`]: one cancellation token cancelled by SIGTERM or Ctrl-C;
//! - [`allocator`]: mimalloc's settings (no transparent huge pages; the gateway's purge delay);
//! - [`limits`]: process limits a server raises for itself (open files);
//! - [`ops`]: `/healthz`, `/readyz` (named readiness checks) and `/metrics`, and serving them;
//! - [`postgres`]: a lazily connecting pool and a monitor that keeps the `postgres` check honest;
//! - [`nats`]: a connection that retries in the background, and idempotent stream provisioning;
//! - [`error`]: the error type at this crate's boundary, with a [`error::ErrorKind`].

pub mod allocator;
pub mod auth;
pub mod backoff;
pub mod config;
pub mod error;
pub mod limits;
pub mod nats;
pub mod ops;
pub mod postgres;
pub mod shutdown;
pub mod telemetry;

pub use error::{Error, ErrorKind};
