//! The store's one error, and the one place a `sqlx::Error` is classified. Callers branch on
//! [`Error::kind`]: the persister retries `Unavailable` and `Internal` and dead-letters what is
//! `Rejected`; the api answers `UNAVAILABLE` or `INTERNAL` (`Corrupt` rows too); the gateway tells the client the
//! history is unavailable.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// PostgreSQL cannot be reached right now (connection, pool, admin shutdown); retrying helps.
    Unavailable,
    /// PostgreSQL refused the data (SQLSTATE class 22 data exception or 23 integrity violation):
    /// retrying the same rows fails the same way.
    Rejected,
    /// A stored row does not decode (state or event bytes): a bug or a schema out of step with
    /// the contract. Retrying will not help, and it is not the database's fault.
    Corrupt,
    /// Anything else: a bug, a schema out of date.
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

    /// Classifies a database error; `context` says what was being done.
    pub fn database(context: impl Into<String>, err: sqlx::Error) -> Self {
        Self::with_source(classify(&err), context, err)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Splits the error into its kind, message and cause (to wrap it in another crate's error).
    pub fn into_parts(self) -> (ErrorKind, String, Option<Box<dyn std::error::Error + Send + Sync>>) {
        (self.kind, self.message, self.source)
    }
}

/// Connection trouble is `Unavailable`, refused data `Rejected`, the rest `Internal`.
pub fn classify(err: &sqlx::Error) -> ErrorKind {
    match err {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) if code.starts_with("22") || code.starts_with("23") => ErrorKind::Rejected,
            // connection exceptions, admin shutdown / crash shutdown / cannot connect now
            Some(code) if code.starts_with("08") || code.starts_with("57P") => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        },
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => ErrorKind::Unavailable,
        _ => ErrorKind::Internal,
    }
}

/// PostgreSQL's `unique_violation`: a row with the same key is already there.
pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error().and_then(|db| db.code()).is_some_and(|code| code == "23505")
}

/// PostgreSQL's `undefined_table`: the schema is not there yet (no persister has migrated it), so
/// readers of the read model and the history find nothing rather than fail.
pub(crate) fn is_undefined_table(err: &sqlx::Error) -> bool {
    err.as_database_error().and_then(|db| db.code()).is_some_and(|code| code == "42P01")
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

/// For services whose boundary error is the runtime's: `Rejected` is `Internal` there.
impl From<Error> for runcast_runtime::Error {
    fn from(err: Error) -> Self {
        let kind = match err.kind {
            ErrorKind::Unavailable => runcast_runtime::ErrorKind::Unavailable,
            ErrorKind::Rejected | ErrorKind::Corrupt | ErrorKind::Internal => runcast_runtime::ErrorKind::Internal,
        };
        match err.source {
            Some(source) => runcast_runtime::Error::with_source(kind, err.message, source),
            None => runcast_runtime::Error::new(kind, err.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_trouble_is_unavailable_and_the_rest_internal() {
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), ErrorKind::Unavailable);
        assert_eq!(classify(&sqlx::Error::Protocol("eof".into())), ErrorKind::Unavailable);
        assert_eq!(classify(&sqlx::Error::RowNotFound), ErrorKind::Internal);
        let err = Error::database("cannot read", sqlx::Error::PoolClosed);
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        let runtime = runcast_runtime::Error::from(err);
        assert_eq!(runtime.kind(), runcast_runtime::ErrorKind::Unavailable);
        assert!(runtime.to_string().starts_with("cannot read: "), "{runtime}");
    }
}
