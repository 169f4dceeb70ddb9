//! What a gRPC client of the api needs besides the generated stubs: credentials on every call.

use tonic::metadata::{Ascii, MetadataValue};

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
