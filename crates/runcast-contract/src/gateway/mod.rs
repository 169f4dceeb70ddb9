//! The gateway's wire protocol (docs/protocol.md): what a `ws-gateway` client sends and receives,
//! over WebSocket and SSE.
//!
//! - [`channel`]: channel names and the stream whose offsets each speaks;
//! - [`filter`]: subscription filters, their raw JSON form and the validated form that matches
//!   events (per event per subscriber: allocation-free);
//! - [`message`]: client messages parsed into typed requests, the server's control messages
//!   ([`ServerMessage`]), error and close codes.
//!
//! The gateway keeps only the framing of events, which it encodes once per event for every
//! subscriber. The TypeScript client's `clients/js/src/types.ts` names the same messages and codes
//! (a test here keeps them in step).

pub mod channel;
pub mod filter;
pub mod message;

pub use channel::{Channel, InvalidChannel};
pub use filter::{Filters, InvalidFilter, MAX_FILTER_VALUES, RawFilters};
pub use message::{
    ClientMessage, CloseCode, ErrorCode, NotRecovered, ProtocolError, ServerMessage, SubscribeRequest, parse_epoch,
};
