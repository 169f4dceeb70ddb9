//! The schema: migrations from `crates/runcast-store/migrations/` (embedded at build time) and
//! the daily partitions of `events` and `log_lines`, created ahead of time so writes never wait on
//! DDL.

use crate::error::{Error, ErrorKind};
use sqlx::PgPool;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Tables partitioned by day.
pub const PARTITIONED_TABLES: [&str; 2] = ["events", "log_lines"];

/// Applies pending migrations. Safe to run concurrently from several replicas (sqlx takes an
/// advisory lock) and again on an up-to-date database (no-op).
pub async fn migrate(pool: &PgPool) -> Result<(), Error> {
    require_supported_server(pool).await?;
    MIGRATOR.run(pool).await.map_err(|err| match err {
        sqlx::migrate::MigrateError::Execute(inner) => Error::database("cannot apply migrations", inner),
        other => Error::with_source(ErrorKind::Internal, "cannot apply migrations", other),
    })
}

/// The oldest PostgreSQL the writes run on: they read a row's previous values with
/// `RETURNING old.…`, new in PostgreSQL 18.
pub const MINIMUM_SERVER_VERSION: i32 = 180_000;

/// Refuses, with a message that says so, a server older than [`MINIMUM_SERVER_VERSION`], rather
/// than failing every batch later on a syntax error.
async fn require_supported_server(pool: &PgPool) -> Result<(), Error> {
    let found = sqlx::query_scalar!(r#"SELECT current_setting('server_version_num')::int4 AS "version!""#)
        .fetch_one(pool)
        .await
        .map_err(|err| Error::database("cannot read the PostgreSQL server's version", err))?;
    check_server_version(found)
}

fn check_server_version(found: i32) -> Result<(), Error> {
    if found < MINIMUM_SERVER_VERSION {
        return Err(Error::new(
            ErrorKind::Internal,
            format!(
                "PostgreSQL {}.{} is too old: Runcast needs PostgreSQL {} or later",
                found / 10_000,
                found % 10_000,
                MINIMUM_SERVER_VERSION / 10_000
            ),
        ));
    }
    Ok(())
}

/// Creates the partitions from yesterday to `days_ahead` days after today (UTC) that are missing.
/// Returns how many were created.
pub async fn ensure_partitions(pool: &PgPool, days_ahead: u16) -> Result<i32, Error> {
    let mut created = 0;
    for table in PARTITIONED_TABLES {
        let count = sqlx::query_scalar!(
            r#"SELECT runcast_ensure_daily_partitions($1::text::regclass, (now() AT TIME ZONE 'UTC')::date - 1, $2 + 2)
                   AS "created!""#,
            table,
            i32::from(days_ahead),
        )
        .fetch_one(pool)
        .await
        .map_err(|err| Error::database(format!("cannot create partitions of {table}"), err))?;
        created += count;
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_older_than_18_are_refused_with_their_version() {
        let err = check_server_version(170_005).expect_err("17 is too old");
        assert_eq!(err.kind(), ErrorKind::Internal);
        assert!(err.to_string().contains("PostgreSQL 17.5 is too old"), "{err}");
        assert!(check_server_version(180_000).is_ok());
        assert!(check_server_version(180_006).is_ok());
    }
}
