//! One test binary for the crate (see `src/lib.rs` for what each module checks).

mod node_loss;
mod retries;
mod rolling_restart;
mod support;
