//! The api and the gateway together, in-process (moved from ws-gateway's tests, which may not
//! depend on another service): light enough to run beside other tests, outside the
//! `whole-stack` group of .config/nextest.toml.

mod api;
// The gateway's own test fixture (World, clients, tokens), shared rather than copied; this binary
// uses only part of it.
#[allow(dead_code)]
#[path = "../../../ws-gateway/tests/it/helpers.rs"]
mod helpers;
