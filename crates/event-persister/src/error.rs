//! The error at this crate's boundary. The consumer branches on [`Error::kind`]: `Unavailable`
//! and `Internal` are retried with backoff (nothing is acked, nothing is lost), `Rejected` means
//! the data itself cannot be stored and the message responsible ends in the dead letters.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// PostgreSQL or NATS cannot be reached right now; retrying will help.
    Unavailable,
    /// PostgreSQL refused the data (SQLSTATE class 22 data exception or 23 integrity violation):
    /// retrying the same rows fails the same way.
    Rejected,
    /// Anything else: a bug, a schema out of date. Retried, since dropping events is worse.
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), source: None }
    }

    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self { kind, message: message.into(), source: Some(source.into()) }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

/// The store classified the database error (`runcast_store::error::classify`): same kinds.
impl From<runcast_store::Error> for Error {
    fn from(err: runcast_store::Error) -> Self {
        let (kind, message, source) = err.into_parts();
        let kind = match kind {
            runcast_store::ErrorKind::Unavailable => ErrorKind::Unavailable,
            runcast_store::ErrorKind::Rejected => ErrorKind::Rejected,
            runcast_store::ErrorKind::Corrupt | runcast_store::ErrorKind::Internal => ErrorKind::Internal,
        };
        Self { kind, message, source }
    }
}

impl From<Error> for runcast_runtime::Error {
    fn from(err: Error) -> Self {
        let kind = match err.kind {
            ErrorKind::Unavailable => runcast_runtime::ErrorKind::Unavailable,
            ErrorKind::Rejected | ErrorKind::Internal => runcast_runtime::ErrorKind::Internal,
        };
        runcast_runtime::Error::with_source(kind, "event-persister", err)
    }
}
