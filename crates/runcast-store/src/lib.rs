//! # runcast-store
//!
//! The one home of the PostgreSQL database: the services call these typed functions and hold no
//! SQL of their own. Every query is a checked `sqlx::query!` against the committed `.sqlx/`
//! (offline builds; `scripts/sqlx-prepare.sh` refreshes it), except DDL on tables named at run
//! time.
//!
//! # Layout
//!
//! - [`schema`]: migrations (embedded from `migrations/`) and the daily partitions of the history;
//! - [`rows`], [`write`]: the rows of a batch and their idempotent, version-guarded bulk writes
//!   (the persister's only path into the database, live and rebuild);
//! - [`read_model`]: `as_of_offset`, pages of executions and agents, single entities once the
//!   stream no longer holds them (the api, the gateway's snapshots);
//! - [`history`]: pages of the event history by offset (gateway resumes, rebuild) and by time
//!   (the api), and where an execution's logs left off;
//! - [`cursor`]: the opaque keyset cursors and [`Page`];
//! - [`sweeps`]: the api sweeper's candidates (due approvals, lost agents, silent executions);
//! - [`retention`]: day partitions dropped, old rows deleted, per tenant or for everyone;
//! - [`error`]: the one error type, and the one classifier of `sqlx::Error`.

pub mod cursor;
pub mod error;
pub mod history;
pub mod read_model;
pub mod retention;
pub mod rows;
pub mod schema;
pub mod sweeps;
pub mod write;

pub use cursor::{Cursor, InvalidCursor, Page};
pub use error::{Error, ErrorKind};
pub use sqlx::PgPool;
