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
    MIGRATOR.run(pool).await.map_err(|err| match err {
        sqlx::migrate::MigrateError::Execute(inner) => Error::database("cannot apply migrations", inner),
        other => Error::with_source(ErrorKind::Internal, "cannot apply migrations", other),
    })
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
