//! # runcast-contract
//!
//! The names external clients depend on (DESIGN §2–§4), in one place:
//!
//! - [`client`]: credentials for gRPC clients of the api;
//! - [`v1`]: the generated `runcast.v1` protobuf types and gRPC services;
//! - [`wire`]: the strings of enums in JSON, REST and WebSocket (`"execution.started"`, `"running"`);
//! - [`json`]: the serde glue that gives the generated types that JSON form; [`openapi`]: the
//!   schemas of the wire enums in the OpenAPI document;
//! - [`id`]: validation of every id that becomes part of a NATS subject;
//! - [`topology`]: stream names and subjects, with the optional prefix tests isolate themselves with;
//! - [`gateway`]: the gateway's wire protocol: channels, filters, client and server messages, error
//!   and close codes.
//!
//! Pure code: no I/O, so everything here is unit-tested.

pub mod backoff;
pub mod client;
pub mod gateway;
pub mod id;
pub mod json;
pub mod openapi;
pub mod topology;
pub mod wire;

/// Generated from `proto/runcast/v1`.
#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/runcast.v1.rs"));
}

/// The encoded `FileDescriptorSet` of every runcast proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/runcast_descriptor.bin"));

pub use id::{EntityId, InvalidId};
pub use topology::{StreamKind, Topology};
pub use wire::WireEnum;
