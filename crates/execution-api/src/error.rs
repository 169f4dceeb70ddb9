//! The one error type of the api's handlers, and the one place it becomes a gRPC status or an HTTP
//! response (DESIGN §3 status codes). Messages say what to fix.

use crate::domain::state_machine::Refusal;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use runcast_runtime::auth::{AuthError, AuthErrorKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiErrorKind {
    InvalidArgument,
    NotFound,
    FailedPrecondition,
    Aborted,
    Unauthenticated,
    PermissionDenied,
    /// The change would make the execution's state larger than its limit (DESIGN §7).
    ResourceExhausted,
    Unavailable,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    kind: ApiErrorKind,
    message: String,
}

impl ApiError {
    pub fn new(kind: ApiErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }

    pub fn invalid(field: &str, problem: impl std::fmt::Display) -> Self {
        Self::new(ApiErrorKind::InvalidArgument, format!("{field} {problem}"))
    }

    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(ApiErrorKind::NotFound, format!("{what} not found"))
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ApiErrorKind::Unavailable, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ApiErrorKind::Internal, message)
    }

    pub fn kind(&self) -> ApiErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The gRPC code name, also used as the `code` of REST error bodies.
    pub fn code_name(&self) -> &'static str {
        match self.kind {
            ApiErrorKind::InvalidArgument => "INVALID_ARGUMENT",
            ApiErrorKind::NotFound => "NOT_FOUND",
            ApiErrorKind::FailedPrecondition => "FAILED_PRECONDITION",
            ApiErrorKind::Aborted => "ABORTED",
            ApiErrorKind::Unauthenticated => "UNAUTHENTICATED",
            ApiErrorKind::PermissionDenied => "PERMISSION_DENIED",
            ApiErrorKind::ResourceExhausted => "RESOURCE_EXHAUSTED",
            ApiErrorKind::Unavailable => "UNAVAILABLE",
            ApiErrorKind::Internal => "INTERNAL",
        }
    }

    fn grpc_code(&self) -> tonic::Code {
        match self.kind {
            ApiErrorKind::InvalidArgument => tonic::Code::InvalidArgument,
            ApiErrorKind::NotFound => tonic::Code::NotFound,
            ApiErrorKind::FailedPrecondition => tonic::Code::FailedPrecondition,
            ApiErrorKind::Aborted => tonic::Code::Aborted,
            ApiErrorKind::Unauthenticated => tonic::Code::Unauthenticated,
            ApiErrorKind::PermissionDenied => tonic::Code::PermissionDenied,
            ApiErrorKind::ResourceExhausted => tonic::Code::ResourceExhausted,
            ApiErrorKind::Unavailable => tonic::Code::Unavailable,
            ApiErrorKind::Internal => tonic::Code::Internal,
        }
    }

    fn http_status(&self) -> StatusCode {
        match self.kind {
            ApiErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
            ApiErrorKind::NotFound => StatusCode::NOT_FOUND,
            ApiErrorKind::FailedPrecondition | ApiErrorKind::Aborted => StatusCode::CONFLICT,
            ApiErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
            ApiErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
            // Not 429: waiting does not help; the request must change.
            ApiErrorKind::ResourceExhausted => StatusCode::PAYLOAD_TOO_LARGE,
            ApiErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(err: ApiError) -> Self {
        tonic::Status::new(err.grpc_code(), err.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        runcast_runtime::auth::json_error(self.http_status(), self.code_name(), &self.message)
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        let kind = match refusal {
            Refusal::IllegalTransition { .. } | Refusal::Conflict(_) | Refusal::AlreadyExists => {
                ApiErrorKind::FailedPrecondition
            }
            Refusal::NotFound => ApiErrorKind::NotFound,
            Refusal::InvalidArgument(_) => ApiErrorKind::InvalidArgument,
            Refusal::TooLarge(_) => ApiErrorKind::ResourceExhausted,
        };
        Self::new(kind, refusal.to_string())
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        let kind = match err.kind() {
            AuthErrorKind::Unauthenticated => ApiErrorKind::Unauthenticated,
            AuthErrorKind::PermissionDenied => ApiErrorKind::PermissionDenied,
        };
        Self::new(kind, err.to_string())
    }
}

impl From<runcast_runtime::Error> for ApiError {
    fn from(err: runcast_runtime::Error) -> Self {
        match err.kind() {
            runcast_runtime::ErrorKind::Unavailable => Self::unavailable(err.to_string()),
            _ => Self::internal(err.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_maps_to_the_designed_grpc_code_and_http_status() {
        let table = [
            (ApiErrorKind::InvalidArgument, tonic::Code::InvalidArgument, 400),
            (ApiErrorKind::NotFound, tonic::Code::NotFound, 404),
            (ApiErrorKind::FailedPrecondition, tonic::Code::FailedPrecondition, 409),
            (ApiErrorKind::Aborted, tonic::Code::Aborted, 409),
            (ApiErrorKind::Unauthenticated, tonic::Code::Unauthenticated, 401),
            (ApiErrorKind::PermissionDenied, tonic::Code::PermissionDenied, 403),
            (ApiErrorKind::ResourceExhausted, tonic::Code::ResourceExhausted, 413),
            (ApiErrorKind::Unavailable, tonic::Code::Unavailable, 503),
            (ApiErrorKind::Internal, tonic::Code::Internal, 500),
        ];
        for (kind, code, status) in table {
            let err = ApiError::new(kind, "why");
            assert_eq!(err.clone().into_response().status().as_u16(), status);
            let grpc = tonic::Status::from(err);
            assert_eq!((grpc.code(), grpc.message()), (code, "why"));
        }
    }
}
