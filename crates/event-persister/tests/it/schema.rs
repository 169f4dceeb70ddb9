//! Migrations and partitions against a real PostgreSQL.

use event_persister::schema;
use runcast_testkit::PostgresServer;
use sqlx::PgPool;

async fn fresh_database(server: &PostgresServer) -> PgPool {
    let url = server.create_database(&runcast_testkit::unique_name("schema")).await.expect("database");
    PgPool::connect(&url).await.expect("connects")
}

async fn applied_migrations(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
        .fetch_all(pool)
        .await
        .expect("migration table")
}

/// Partition names of `table`, e.g. `events_p20261122`, sorted.
async fn partitions(pool: &PgPool, table: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = $1::regclass ORDER BY 1",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .expect("partitions")
}

#[tokio::test]
async fn migrations_apply_to_an_empty_database_and_again_as_a_no_op() {
    let server = PostgresServer::start().await.expect("postgres");
    let pool = fresh_database(&server).await;

    schema::migrate(&pool).await.expect("first run applies");
    let applied = applied_migrations(&pool).await;
    assert_eq!(applied.len(), schema::MIGRATOR.iter().count(), "every migration applied");
    for table in ["events", "log_lines", "executions", "approvals", "agents", "applied_offsets", "dead_letters"] {
        let exists: Option<String> =
            sqlx::query_scalar("SELECT to_regclass($1)::text").bind(table).fetch_one(&pool).await.expect("query");
        assert_eq!(exists.as_deref(), Some(table), "table {table} exists");
    }

    schema::migrate(&pool).await.expect("second run is a no-op");
    assert_eq!(applied_migrations(&pool).await, applied);
}

#[tokio::test]
async fn partitions_exist_for_today_and_the_days_ahead_and_topping_up_is_idempotent() {
    let server = PostgresServer::start().await.expect("postgres");
    let pool = fresh_database(&server).await;
    schema::migrate(&pool).await.expect("migrates");

    let days_ahead = 10;
    schema::ensure_partitions(&pool, days_ahead).await.expect("creates partitions");
    let today = chrono::Utc::now().date_naive();
    for table in schema::PARTITIONED_TABLES {
        let existing = partitions(&pool, table).await;
        for offset in 0..=i64::from(days_ahead) {
            let day = today + chrono::Duration::days(offset);
            let name = format!("{table}_p{}", day.format("%Y%m%d"));
            assert!(existing.contains(&name), "{name} missing from {existing:?}");
        }
    }
    assert_eq!(schema::ensure_partitions(&pool, days_ahead).await.expect("again"), 0, "nothing left to create");

    // A row for today lands in today's partition, not in the default one.
    sqlx::query(
        "INSERT INTO events (occurred_at, event_id, stream, stream_offset, tenant_id, event_type, version, body)
         VALUES (now(), gen_random_uuid(), 'EXECUTIONS', 1, 'acme', 'execution.created', 1, '\\x00')",
    )
    .execute(&pool)
    .await
    .expect("insert");
    let partition: String =
        sqlx::query_scalar("SELECT tableoid::regclass::text FROM events").fetch_one(&pool).await.expect("row");
    assert_eq!(partition, format!("events_p{}", today.format("%Y%m%d")));
}

#[tokio::test]
async fn the_migrate_subcommand_prepares_the_schema_and_exits_zero() {
    let server = PostgresServer::start().await.expect("postgres");
    let url = server.create_database(&runcast_testkit::unique_name("cli")).await.expect("database");
    let mut migrate = runcast_testkit::ServiceProcess::run("event-persister", &["migrate"], &[("DATABASE_URL", &url)])
        .await
        .expect("runs");
    let status = migrate.wait_exit(std::time::Duration::from_secs(30)).await.expect("exits");
    assert!(status.success(), "migrate failed:\n{}", migrate.recent_log());
    let pool = PgPool::connect(&url).await.expect("connects");
    assert_eq!(applied_migrations(&pool).await.len(), schema::MIGRATOR.iter().count());
    assert!(!partitions(&pool, "events").await.is_empty());
}

#[tokio::test]
async fn a_bad_database_url_is_a_configuration_error_naming_the_variable() {
    let mut migrate =
        runcast_testkit::ServiceProcess::run("event-persister", &["migrate"], &[("DATABASE_URL", "mysql://nope")])
            .await
            .expect("runs");
    let status = migrate.wait_exit(std::time::Duration::from_secs(10)).await.expect("exits");
    assert_eq!(status.code(), Some(64));
    assert!(migrate.recent_log().contains("DATABASE_URL"), "{}", migrate.recent_log());
}

#[tokio::test]
async fn rows_waiting_in_the_default_partition_move_into_their_day_when_it_is_created() {
    let server = PostgresServer::start().await.expect("postgres");
    let pool = fresh_database(&server).await;
    schema::migrate(&pool).await.expect("migrates");
    // An event 20 days ahead arrives before its partition exists (the migration makes 8).
    schema::ensure_partitions(&pool, 1).await.expect("partitions");
    sqlx::query(
        "INSERT INTO events (occurred_at, event_id, stream, stream_offset, tenant_id, event_type, version, body)
         VALUES (now() + interval '20 days', gen_random_uuid(), 'EXECUTIONS', 1, 'acme', 'execution.created', 1, '\\x00')",
    )
    .execute(&pool)
    .await
    .expect("insert");
    let where_it_is = || async {
        sqlx::query_scalar::<_, String>("SELECT tableoid::regclass::text FROM events")
            .fetch_one(&pool)
            .await
            .expect("row")
    };
    assert_eq!(where_it_is().await, "events_default");

    schema::ensure_partitions(&pool, 21).await.expect("creating the day of a stray row works");
    let day = chrono::Utc::now().date_naive() + chrono::Duration::days(20);
    assert_eq!(where_it_is().await, format!("events_p{}", day.format("%Y%m%d")));
}

/// The last release's schema: the migrations up to this version.
const PREVIOUS_RELEASE: i64 = 20261202000001;

/// A release's migrations in a directory: this build's files up to `up_to` (same checksums as
/// the embedded ones), and `added` ones (file name, SQL) that only that release has.
fn release_migrations(up_to: i64, added: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let sources = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../runcast-store/migrations");
    for entry in std::fs::read_dir(&sources).expect("migrations") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default().to_owned();
        let version: i64 = name.split('_').next().and_then(|v| v.parse().ok()).expect("versioned file");
        if version <= up_to {
            std::fs::copy(&path, dir.path().join(&name)).expect("copied");
        }
    }
    for (name, sql) in added {
        std::fs::write(dir.path().join(name), sql).expect("written");
    }
    dir
}

/// A rollback, or a replica of this release restarting during a rolling upgrade to the next: the
/// next release has applied a migration this build does not know. This build's persister still
/// starts, says why in its log, and persists events (before, it retried the migrations forever and
/// never became ready).
#[tokio::test]
async fn this_release_runs_on_a_database_the_next_release_migrated_further() {
    let world = crate::support::World::start().await;
    const NEXT: i64 = 99991231000001;
    let next = release_migrations(
        i64::MAX,
        &[(&format!("{NEXT}_next_release.sql"), "ALTER TABLE executions ADD COLUMN next_release_note text;")],
    );
    sqlx::migrate::Migrator::new(next.path()).await.expect("reads").run(&world.pool).await.expect("next schema");

    let migrated = schema::migrate(&world.pool).await.expect("this release accepts the next one's schema");
    assert_eq!(migrated.ahead, vec![NEXT]);
    assert_eq!(applied_migrations(&world.pool).await.last(), Some(&NEXT), "nothing undone");

    let persister = world.persister(&[]).await;
    let subject = world.subject(runcast_contract::StreamKind::Executions, "acme", "e1");
    let events = crate::support::execution_events("acme", "e1", 5, chrono::Utc::now().timestamp());
    world.publish(events.into_iter().map(|event| (subject.clone(), event)).collect()).await;
    world.wait_for_history(5).await;
    assert!(persister.recent_log().contains("migrations of a later release"), "{}", persister.recent_log());
}

/// An applied migration this build does not know but older than its newest is no later release's:
/// refused, by version, and nothing is applied.
#[tokio::test]
async fn an_unknown_migration_older_than_this_builds_newest_is_refused() {
    let server = PostgresServer::start().await.expect("postgres");
    let pool = fresh_database(&server).await;
    let stray = PREVIOUS_RELEASE + 1;
    let dir = release_migrations(PREVIOUS_RELEASE, &[(&format!("{stray}_another_build.sql"), "SELECT 1;")]);
    sqlx::migrate::Migrator::new(dir.path()).await.expect("reads").run(&pool).await.expect("another build's");
    let before = applied_migrations(&pool).await;

    let err = schema::migrate(&pool).await.expect_err("refused");
    assert!(err.to_string().contains(&format!("migration {stray} is applied")), "{err}");
    assert_eq!(applied_migrations(&pool).await, before, "nothing applied");
}

/// An upgrade: a database migrated by the previous release and holding its rows (history in a day
/// partition and in the default one, an execution with an approval) takes this release's
/// migrations, which rebuild the history's key and drop `approvals.version`, and loses nothing.
#[tokio::test]
async fn an_upgrade_keeps_every_row_of_a_populated_database() {
    let server = PostgresServer::start().await.expect("postgres");
    let pool = fresh_database(&server).await;
    let previous = release_migrations(PREVIOUS_RELEASE, &[]);
    sqlx::migrate::Migrator::new(previous.path()).await.expect("reads").run(&pool).await.expect("previous schema");
    schema::ensure_partitions(&pool, 1).await.expect("partitions");
    sqlx::raw_sql(
        "INSERT INTO events (occurred_at, event_id, stream, stream_offset, tenant_id, execution_id, event_type, version, body)
         SELECT now() - make_interval(secs => n), gen_random_uuid(), 'EXECUTIONS', n, 'acme', 'e1', 'execution.progress', n, '\\x00'
         FROM generate_series(1, 500) n;
         INSERT INTO events (occurred_at, event_id, stream, stream_offset, tenant_id, execution_id, event_type, version, body)
         VALUES ('2001-01-01', gen_random_uuid(), 'EXECUTIONS', 501, 'acme', 'e1', 'execution.progress', 501, '\\x00');
         INSERT INTO executions (tenant_id, execution_id, workflow_id, status, version, last_offset, state, created_at, updated_at)
         VALUES ('acme', 'e1', 'wf', 'blocked', 501, 501, '\\x00', now(), now());
         INSERT INTO approvals (tenant_id, execution_id, approval_id, status, requested_at, version)
         VALUES ('acme', 'e1', 'deploy', 'pending', now(), 501);",
    )
    .execute(&pool)
    .await
    .expect("the previous release's rows");

    schema::migrate(&pool).await.expect("this release's migrations");
    assert_eq!(applied_migrations(&pool).await.len(), schema::MIGRATOR.iter().count());
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await.expect("count") }
    };
    assert_eq!(count("SELECT count(*) FROM events").await, 501, "every history row kept");
    assert_eq!(count("SELECT count(*) FROM events_default").await, 1, "the default partition's too");
    assert_eq!(count("SELECT count(*) FROM approvals WHERE status = 'pending'").await, 1, "the approval kept");
    let key: String =
        sqlx::query_scalar("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'events_pkey'")
            .fetch_one(&pool)
            .await
            .expect("key");
    assert_eq!(key, "PRIMARY KEY (stream, stream_offset, occurred_at, event_id)");
    // A redelivery of a stored event still adds nothing under the new key.
    sqlx::query("INSERT INTO events SELECT * FROM events WHERE stream_offset = 7 ON CONFLICT DO NOTHING")
        .execute(&pool)
        .await
        .expect("redelivered");
    assert_eq!(count("SELECT count(*) FROM events").await, 501);
}

/// Identifier columns, by table; they compare bytewise (`COLLATE "C"`) whatever the database's
/// locale (migration 20261204000001).
const IDENTIFIERS: &[(&str, &[&str])] = &[
    ("events", &["stream", "tenant_id", "execution_id", "agent_id", "workflow_id", "event_type"]),
    ("log_lines", &["tenant_id", "execution_id"]),
    ("executions", &["tenant_id", "execution_id", "workflow_id", "status", "idempotency_key", "agent_id"]),
    ("approvals", &["tenant_id", "execution_id", "approval_id", "status"]),
    ("agents", &["tenant_id", "agent_id", "status", "running_execution_ids"]),
    ("applied_offsets", &["stream"]),
    ("dead_letters", &["stream", "subject"]),
];

async fn collation(pool: &PgPool, table: &str, column: &str) -> String {
    sqlx::query_scalar(
        "SELECT co.collname::text FROM pg_attribute a JOIN pg_collation co ON co.oid = a.attcollation
         WHERE a.attrelid = $1::regclass AND a.attname = $2 AND NOT a.attisdropped",
    )
    .bind(table)
    .bind(column)
    .fetch_one(pool)
    .await
    .unwrap_or_else(|err| panic!("collation of {table}.{column}: {err}"))
}

#[tokio::test]
async fn identifiers_compare_bytewise_in_every_table_and_partition_while_prose_keeps_the_database_collation() {
    let server = PostgresServer::start().await.expect("postgres");
    let pool = fresh_database(&server).await;
    schema::migrate(&pool).await.expect("migrates");
    // Partitions created after the migration, as the persister's upkeep creates them.
    schema::ensure_partitions(&pool, 12).await.expect("creates partitions");

    for (table, columns) in IDENTIFIERS {
        let mut tables = vec![(*table).to_owned()];
        tables.extend(partitions(&pool, table).await);
        for table in &tables {
            for column in *columns {
                assert_eq!(collation(&pool, table, column).await, "C", "{table}.{column} compares bytewise");
            }
        }
    }
    // Free text is for people: it keeps whatever the database sorts text by.
    for (table, column) in
        [("log_lines", "text"), ("executions", "error"), ("executions", "current_step"), ("approvals", "comment")]
    {
        assert_eq!(collation(&pool, table, column).await, "default", "{table}.{column} keeps the database's collation");
    }
}
