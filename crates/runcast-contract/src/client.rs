//! What a gRPC client of the api needs besides the generated stubs: credentials on every call,
//! and which refusals say to try again.

use tonic::metadata::{Ascii, MetadataValue};

/// The metadata of a refusal that says when to try again, in milliseconds (gRPC's retry
/// pushback, proposal A6). The api sets it on `RESOURCE_EXHAUSTED` when its request slots, or the
/// tenant's share of them, are in use; a `RESOURCE_EXHAUSTED` without it (a state over its size
/// limit) will not pass by waiting.
pub const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

/// Whether a refusal says it may pass: `UNAVAILABLE`, `DEADLINE_EXCEEDED`, or a refusal carrying
/// [`RETRY_PUSHBACK`].
pub fn may_pass(status: &tonic::Status) -> bool {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => true,
        _ => status.metadata().contains_key(RETRY_PUSHBACK),
    }
}

/// Adds `authorization: Bearer <token>` to every request (none when built without a token).
#[derive(Clone, Debug, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// Fails when the token holds characters that cannot go into a header.
    pub fn new(token: Option<&str>) -> Result<Self, String> {
        token
            .map(|token| {
                format!("Bearer {token}")
                    .parse()
                    .map_err(|_| "the token holds characters not allowed in a header".to_owned())
            })
            .transpose()
            .map(Self)
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}
