//! The schema: migrations from `crates/runcast-store/migrations/` (embedded at build time) and
//! the daily partitions of `events` and `log_lines`, created ahead of time so writes never wait on
//! DDL.

use crate::error::{Error, ErrorKind};
use sqlx::PgPool;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Tables partitioned by day.
pub const PARTITIONED_TABLES: [&str; 2] = ["events", "log_lines"];

/// What [`migrate`] found beside what it applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Migrated {
    /// Migrations applied to the database that this build does not know, all newer than its own
    /// newest: a later release migrated the database (a rolling upgrade in progress, or a rollback).
    /// This build runs on that schema, which each release keeps working for the one before it.
    pub ahead: Vec<i64>,
}

/// Applies pending migrations. Safe to run concurrently from several replicas (sqlx takes an
/// advisory lock) and again on an up-to-date database (no-op).
///
/// A database a later release has migrated further is not an error: during a rolling upgrade the
/// previous release's replicas restart too, and a rollback must be able to start at all. Every
/// migration keeps the previous release working (columns and tables are dropped a release after
/// the code stops using them), so this build runs on it, with a warning. An applied migration this
/// build does not know that is *older* than its newest is refused: that database was migrated by
/// some other build, not a later release.
pub async fn migrate(pool: &PgPool) -> Result<Migrated, Error> {
    require_supported_server(pool).await?;
    let applied = applied_versions(pool).await?;
    let known: Vec<i64> = MIGRATOR.iter().map(|migration| migration.version).collect();
    let ahead = versions_ahead(&known, &applied)?;
    let outcome = if ahead.is_empty() {
        MIGRATOR.run(pool).await
    } else {
        tracing::warn!(
            ?ahead,
            newest_known = known.iter().max().copied().unwrap_or_default(),
            "the database has migrations of a later release: running on its schema (upgrade this replica soon)"
        );
        let mut lenient = sqlx::migrate::Migrator::with_migrations(MIGRATOR.iter().cloned().collect());
        lenient.set_ignore_missing(true);
        lenient.run(pool).await
    };
    outcome.map_err(|err| match err {
        sqlx::migrate::MigrateError::Execute(inner) => Error::database("cannot apply migrations", inner),
        other => Error::with_source(ErrorKind::Internal, "cannot apply migrations", other),
    })?;
    Ok(Migrated { ahead })
}

/// The versions recorded as applied (none on a database never migrated). sqlx's own table, not
/// part of the schema the checked queries know: unchecked.
async fn applied_versions(pool: &PgPool) -> Result<Vec<i64>, Error> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await
        .map_err(|err| Error::database("cannot read which migrations are applied", err))?;
    if !exists {
        return Ok(Vec::new());
    }
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
        .fetch_all(pool)
        .await
        .map_err(|err| Error::database("cannot read which migrations are applied", err))
}

/// The applied versions this build does not know, if all are newer than the newest it knows; an
/// unknown one below that is an error naming it.
fn versions_ahead(known: &[i64], applied: &[i64]) -> Result<Vec<i64>, Error> {
    let newest_known = known.iter().max().copied().unwrap_or(i64::MIN);
    let mut unknown: Vec<i64> = applied.iter().copied().filter(|version| !known.contains(version)).collect();
    unknown.sort_unstable();
    if let Some(stray) = unknown.iter().find(|version| **version <= newest_known) {
        return Err(Error::new(
            ErrorKind::Internal,
            format!(
                "migration {stray} is applied to the database but unknown to this build, and older than its newest \
                 ({newest_known}): the database was migrated by a different build of Runcast, not a later release"
            ),
        ));
    }
    Ok(unknown)
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
    fn only_migrations_newer_than_every_known_one_are_tolerated() {
        let known = [1, 2, 5];
        assert_eq!(versions_ahead(&known, &[]).expect("a fresh database"), Vec::<i64>::new());
        assert_eq!(versions_ahead(&known, &[1, 2]).expect("behind: pending ones apply"), Vec::<i64>::new());
        assert_eq!(versions_ahead(&known, &[1, 2, 5, 9, 7]).expect("a later release's"), vec![7, 9]);
        let err = versions_ahead(&known, &[1, 2, 3, 5]).expect_err("3 is no later release's");
        assert_eq!(err.kind(), ErrorKind::Internal);
        assert!(err.to_string().contains("migration 3 is applied"), "{err}");
        assert!(versions_ahead(&known, &[1, 2, 4, 9]).is_err(), "one stray among newer ones still refuses");
    }

    #[test]
    fn servers_older_than_18_are_refused_with_their_version() {
        let err = check_server_version(170_005).expect_err("17 is too old");
        assert_eq!(err.kind(), ErrorKind::Internal);
        assert!(err.to_string().contains("PostgreSQL 17.5 is too old"), "{err}");
        assert!(check_server_version(180_000).is_ok());
        assert!(check_server_version(180_006).is_ok());
    }
}
