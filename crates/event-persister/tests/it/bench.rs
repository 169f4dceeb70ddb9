//! Throughput measurement (design target: 20,000 events/s on 2 cores with PostgreSQL on the same
//! machine). Ignored by default: run with `make bench` (release build) and read the printed rate.

use crate::support::{self, World};
use std::time::{Duration, Instant};

#[tokio::test]
#[ignore = "a measurement, not a test"]
async fn bench_drain_throughput() {
    let executions: usize = std::env::var("BENCH_EXECUTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000);
    let per_execution = 20;
    let total = (executions as u64 * per_execution) as i64;
    let world = World::start().await;
    let history_indexes = HistoryIndexes::from_env();
    if history_indexes == HistoryIndexes::KeyOnly {
        drop_history_query_indexes(&world.pool).await;
    }
    let collation = IdentifierCollation::from_env();
    if collation == IdentifierCollation::Database {
        identifiers_in_the_database_collation(&world.pool).await;
    }
    let server_settings = postgres_settings(&world.pool).await;
    let database_locale: String =
        sqlx::query_scalar("SELECT datcollate::text FROM pg_database WHERE datname = current_database()")
            .fetch_one(&world.pool)
            .await
            .expect("the database's locale");
    // The backlog is published first, so the persister's drain rate is measured alone.
    let mut backlog = support::load(&world, executions, per_execution);
    let shape = StateShape::from_env();
    for (_, event) in &mut backlog {
        if let Some(runcast_contract::v1::event::State::Execution(state)) = event.state.as_mut() {
            shape.apply(state);
        }
    }
    let published = world.publish(backlog).await;
    assert_eq!(published.len() as i64, total);

    // Progress is read from `applied_offsets` (one row per stream): counting the history while it
    // grows would take CPU from the persister being measured.
    let applied = || async {
        sqlx::query_scalar::<_, i64>("SELECT coalesce(sum(applied_offset), 0)::bigint FROM applied_offsets")
            .fetch_one(&world.pool)
            .await
            .unwrap_or(0)
    };
    let started = Instant::now();
    // The persister's own defaults, unless BENCH_BATCH_SIZE / BENCH_WRITERS try others.
    let settings: Vec<(&str, String)> =
        [("RUNCAST_BATCH_SIZE", "BENCH_BATCH_SIZE"), ("RUNCAST_WRITERS_PER_STREAM", "BENCH_WRITERS")]
            .into_iter()
            .filter_map(|(name, knob)| std::env::var(knob).ok().map(|value| (name, value)))
            .collect();
    let settings: Vec<(&str, &str)> = settings.iter().map(|(name, value)| (*name, value.as_str())).collect();
    let persister = world.persister(&settings).await;
    let tenth = total / 10;
    runcast_testkit::eventually("a tenth of the backlog applied", Duration::from_secs(600), || async {
        (applied().await >= tenth).then_some(())
    })
    .await
    .expect("draining");
    let steady_from = (Instant::now(), applied().await);
    // CPU over the same stretch: the persister's process, and the database's backends (the
    // persister's connections: this database has no other client meanwhile but the progress
    // query). The rate alone moves with whatever else the 2 cores run; CPU per event does not.
    let cpu_from = (cpu_of(persister.pid()), cpu_of_backends(&world.pool).await);
    let wal_from = WalStats::read(&world.pool).await;
    let profile = runcast_testkit::profile::SystemProfile::start();
    runcast_testkit::eventually("the whole backlog applied", Duration::from_secs(600), || async {
        (applied().await >= total).then_some(())
    })
    .await
    .expect("drained");
    let elapsed = started.elapsed();
    let steady = steady_from.0.elapsed();
    let cpu_to = (cpu_of(persister.pid()), cpu_of_backends(&world.pool).await);
    let wal_to = WalStats::read(&world.pool).await;
    drop(profile);
    assert_eq!(world.history_count().await, total, "every event in the history, once");
    let steady_events = (total - steady_from.1) as f64;
    let sustained = steady_events / steady.as_secs_f64();
    let per_event = |from: Duration, to: Duration| to.saturating_sub(from).as_secs_f64() * 1e6 / steady_events;
    let (persister_us, postgres_us) = (per_event(cpu_from.0, cpu_to.0), per_event(cpu_from.1, cpu_to.1));
    drop(persister);
    for line in inside_postgres(&world.pool).await {
        println!("BENCH-DETAIL | {line}");
    }
    if let (Some(from), Some(to)) = (wal_from, wal_to) {
        println!("BENCH-DETAIL | {}", to.since(&from, steady_events, steady));
    }
    let writers: usize = std::env::var("BENCH_WRITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let raw = raw_ceiling(&world.pool, 1_000, writers).await;
    assert_eq!(world.history_count().await, total, "the raw insert restored every row, once");
    println!(
        "BENCH | event-persister drain, {total} events ({executions} executions x {per_execution}), with the read model{}, \
         database locale {database_locale}{}, PostgreSQL {server_settings} | \
         {sustained:.0} events/s sustained after the first tenth ({:.0}/s over {:.2} s incl. start and migration); \
         CPU per event: persister {persister_us:.1} µs, its PostgreSQL backends {postgres_us:.1} µs | \
         >= 40,000 events/s | raw UNNEST insert of the same rows into the same tables and indexes, {writers} writers, \
         1,000 per transaction + executions update: {raw:.0} events/s | {total} events in the history exactly once (both) |",
        history_indexes.label(),
        collation.label(),
        total as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
    );
}

/// What the backlog's execution states carry besides the load's own fields.
struct StateShape {
    /// `BENCH_HEARTBEAT_TIMEOUT=<seconds>`: executions that must report within a time (DESIGN
    /// §7), so every event of a running one moves its `heartbeat_deadline`.
    heartbeat_timeout: u32,
    /// `BENCH_STEPS=<n>`: every state lists `n` completed steps, as a workflow's would (every
    /// event carries its execution's whole state, so this grows each history row and each
    /// read-model row).
    steps: usize,
}

impl StateShape {
    fn from_env() -> Self {
        fn knob<T: std::str::FromStr + Default>(name: &str) -> T {
            std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or_default()
        }
        Self { heartbeat_timeout: knob("BENCH_HEARTBEAT_TIMEOUT"), steps: knob("BENCH_STEPS") }
    }

    fn apply(&self, state: &mut runcast_contract::v1::Execution) {
        use runcast_contract::v1::{Step, StepStatus};
        state.heartbeat_timeout_seconds = self.heartbeat_timeout;
        state.steps = (0..self.steps)
            .map(|n| Step {
                step_id: format!("step-{n}"),
                name: format!("Step {n}: build and test the component"),
                status: StepStatus::Completed.into(),
                started_at: state.created_at,
                finished_at: state.updated_at,
                ..Default::default()
            })
            .collect();
    }
}

/// The server settings that decide what a commit costs: whether it is durable (`fsync`,
/// `full_page_writes`; the persister's sessions flush their commits in any case) and its memory
/// for pages and WAL. The test server is not durable unless `RUNCAST_TEST_PG_SETTINGS` says so
/// (`make bench` does).
async fn postgres_settings(pool: &sqlx::PgPool) -> String {
    let names = ["fsync", "full_page_writes", "shared_buffers", "wal_buffers", "max_wal_size"];
    let mut settings = Vec::new();
    for name in names {
        let value: String = sqlx::query_scalar("SELECT current_setting($1)")
            .bind(name)
            .fetch_one(pool)
            .await
            .expect("a server setting");
        settings.push(format!("{name}={value}"));
    }
    settings.join(" ")
}

/// Which indexes of `events` the run keeps (`BENCH_HISTORY_INDEXES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HistoryIndexes {
    /// The schema as migrated.
    All,
    /// `key`: the primary key alone, every query index dropped before the drain. Not a
    /// configuration the product offers: it measures what the history's query indexes cost, and
    /// what the drain would do without any of them.
    KeyOnly,
}

impl HistoryIndexes {
    fn from_env() -> Self {
        match std::env::var("BENCH_HISTORY_INDEXES").as_deref() {
            Ok("key") => Self::KeyOnly,
            Ok("all") | Err(_) => Self::All,
            Ok(other) => panic!("BENCH_HISTORY_INDEXES={other}: expected `all` or `key`"),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::All => "",
            Self::KeyOnly => " and the history's primary key alone (every query index dropped: the schema's floor)",
        }
    }
}

/// How identifier columns compare (`BENCH_IDENTIFIER_COLLATION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdentifierCollation {
    /// The schema as migrated: byte by byte (`COLLATE "C"`).
    Bytewise,
    /// `database`: in the database's own collation, as before migration 20261204000001; with
    /// `RUNCAST_TEST_PG_LOCALE=en_US.UTF-8`, what comparing bytewise saves in such a database.
    Database,
}

impl IdentifierCollation {
    fn from_env() -> Self {
        match std::env::var("BENCH_IDENTIFIER_COLLATION").as_deref() {
            Ok("database") => Self::Database,
            Ok("bytewise") | Err(_) => Self::Bytewise,
            Ok(other) => panic!("BENCH_IDENTIFIER_COLLATION={other}: expected `bytewise` or `database`"),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Bytewise => "",
            Self::Database => ", identifiers in the database's collation (not bytewise)",
        }
    }
}

/// Gives every column that compares bytewise the database's collation back (on the parent
/// tables, so on every partition).
async fn identifiers_in_the_database_collation(pool: &sqlx::PgPool) {
    let bytewise = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
             JOIN pg_collation co ON co.oid = a.attcollation
             WHERE c.relnamespace = current_schema()::regnamespace AND co.collname = 'C'",
        )
        .fetch_one(pool)
        .await
        .expect("bytewise columns")
    };
    assert!(bytewise().await > 0, "identifier columns compare bytewise as migrated");
    sqlx::query(
        r#"DO $$ DECLARE col record; BEGIN
             FOR col IN SELECT c.relname AS table_name, a.attname AS column_name,
                               format_type(a.atttypid, a.atttypmod) AS column_type
                        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                        JOIN pg_collation co ON co.oid = a.attcollation
                        WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p')
                          AND NOT c.relispartition AND co.collname = 'C' LOOP
                 EXECUTE format('ALTER TABLE %I ALTER COLUMN %I TYPE %s COLLATE "default"',
                                col.table_name, col.column_name, col.column_type);
             END LOOP;
         END $$"#,
    )
    .execute(pool)
    .await
    .expect("identifiers in the database's collation");
    assert_eq!(bytewise().await, 0, "no column compares bytewise any more");
}

/// Drops every index of `events` but its primary key (on the partitioned table, so from every
/// partition, and partitions created later do not get them).
async fn drop_history_query_indexes(pool: &sqlx::PgPool) {
    let count = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'events' AND indexname <> 'events_pkey'",
        )
        .fetch_one(pool)
        .await
        .expect("the history's indexes")
    };
    assert!(count().await > 0, "the history has query indexes to drop");
    sqlx::query(
        "DO $$ DECLARE index_name text; BEGIN
             FOR index_name IN SELECT indexname FROM pg_indexes
                               WHERE tablename = 'events' AND indexname <> 'events_pkey' LOOP
                 EXECUTE format('DROP INDEX %I', index_name);
             END LOOP;
         END $$",
    )
    .execute(pool)
    .await
    .expect("indexes dropped");
    assert_eq!(count().await, 0, "only the primary key is left");
}

/// CPU time used so far by process `pid` (zero if it cannot be read).
fn cpu_of(pid: Option<u32>) -> Duration {
    pid.and_then(|pid| runcast_loadgen::procfs::cpu_time(pid).ok()).map(|cpu| cpu.total()).unwrap_or_default()
}

/// CPU time used so far by the backends connected to this database, except the asking one.
async fn cpu_of_backends(pool: &sqlx::PgPool) -> Duration {
    let pids: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    pids.into_iter().map(|pid| cpu_of(u32::try_from(pid).ok())).sum()
}

/// Where PostgreSQL spent the drain: the persister's statements by total execution time
/// (`pg_stat_statements`, which the test server preloads), and how many read-model updates were
/// HOT (no index touched). Empty when the extension is not available.
async fn inside_postgres(pool: &sqlx::PgPool) -> Vec<String> {
    if sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements").execute(pool).await.is_err() {
        return Vec::new();
    }
    let statements: Vec<(String, i64, f64)> = sqlx::query_as(
        "SELECT regexp_replace(left(query, 70), '\\s+', ' ', 'g'), calls, total_exec_time
         FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
         ORDER BY total_exec_time DESC LIMIT 8",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    let all: f64 = statements.iter().map(|s| s.2).sum();
    let mut lines: Vec<String> = statements
        .iter()
        .map(|(query, calls, ms)| {
            format!("{:>5.1} % {ms:>8.0} ms {calls:>6} calls | {query}", 100.0 * ms / all.max(1.0))
        })
        .collect();
    let updates: Option<(String, i64, i64)> = sqlx::query_as(
        "SELECT relname::text, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'executions'",
    )
    .fetch_optional(pool)
    .await
    .ok()
    .flatten();
    if let Some((table, updated, hot)) = updates {
        lines.push(format!("{table}: {updated} updates, {hot} of them HOT"));
    }
    // Rows over ~2 KB are compressed or moved out of line (TOAST) at every write.
    let sizes: Option<(f64, f64, f64, f64, f64)> = sqlx::query_as(
        "SELECT (SELECT avg(pg_column_size(e.*)) FROM executions e)::float8,
                (SELECT avg(octet_length(state)) FROM executions)::float8,
                (SELECT avg(pg_column_size(state)) FROM executions)::float8,
                (SELECT avg(octet_length(body)) FROM events)::float8,
                (SELECT avg(pg_column_size(body)) FROM events)::float8",
    )
    .fetch_optional(pool)
    .await
    .ok()
    .flatten();
    if let Some((row, state, state_stored, body, body_stored)) = sizes {
        lines.push(format!(
            "rows: executions {row:.0} bytes stored on average, its state {state:.0} bytes ({state_stored:.0} stored); \
             events' bodies {body:.0} bytes ({body_stored:.0} stored)"
        ));
    }
    lines
}

/// The server's WAL counters (`pg_stat_wal`, the whole server: the bench's database is its only
/// writer meanwhile).
struct WalStats {
    records: i64,
    full_page_images: i64,
    bytes: f64,
}

impl WalStats {
    async fn read(pool: &sqlx::PgPool) -> Option<Self> {
        let (records, full_page_images, bytes): (i64, i64, f64) =
            sqlx::query_as("SELECT wal_records, wal_fpi, wal_bytes::float8 FROM pg_stat_wal")
                .fetch_one(pool)
                .await
                .ok()?;
        Some(Self { records, full_page_images, bytes })
    }

    /// What the drain wrote to the WAL over `elapsed`, per event of `events`.
    fn since(&self, from: &Self, events: f64, elapsed: Duration) -> String {
        let bytes = self.bytes - from.bytes;
        format!(
            "WAL while draining: {:.0} bytes per event ({:.1} MB/s), {:.1} records and {:.3} full-page images per \
             event",
            bytes / events,
            bytes / elapsed.as_secs_f64() / 1e6,
            (self.records - from.records) as f64 / events,
            (self.full_page_images - from.full_page_images) as f64 / events,
        )
    }
}

/// The ceiling the persister is measured against: the rows it wrote, read back, `events` emptied,
/// then inserted again by `writers` concurrent connections (the persister's default: 2 per
/// stream), each taking every `writers`-th batch of `batch` rows: one `INSERT … SELECT FROM UNNEST`
/// and one `UPDATE executions … FROM UNNEST` of the batch's executions (version, offset, state),
/// one transaction per batch. No decoding, no JetStream, no acks. Returns events per second.
async fn raw_ceiling(pool: &sqlx::PgPool, batch: usize, writers: usize) -> f64 {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT occurred_at, event_id, stream, stream_offset, tenant_id, execution_id, agent_id, workflow_id,
                event_type, version, body
         FROM events ORDER BY stream, stream_offset",
    )
    .fetch_all(pool)
    .await
    .expect("history read");
    sqlx::query("TRUNCATE events").execute(pool).await.expect("truncate");
    let total = rows.len();
    let rows = std::sync::Arc::new(rows);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let (rows, pool) = (rows.clone(), pool.clone());
        tasks.push(tokio::spawn(async move {
            for chunk in rows.chunks(batch).skip(writer).step_by(writers) {
                write_batch(&pool, chunk).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

type Row =
    (chrono::DateTime<chrono::Utc>, uuid::Uuid, String, i64, String, String, String, String, String, i64, Vec<u8>);

async fn write_batch(pool: &sqlx::PgPool, chunk: &[Row]) {
    let mut tx = pool.begin().await.expect("transaction");
    // Commits flushed as the persister's are (its sessions raise the level where the server has it off).
    sqlx::query("SET LOCAL synchronous_commit = on").execute(&mut *tx).await.expect("durable commits");
    sqlx::query(
        "INSERT INTO events (occurred_at, event_id, stream, stream_offset, tenant_id, execution_id,
                             agent_id, workflow_id, event_type, version, body)
         SELECT * FROM UNNEST($1::timestamptz[], $2::uuid[], $3::text[], $4::int8[], $5::text[],
                              $6::text[], $7::text[], $8::text[], $9::text[], $10::int8[], $11::bytea[])
         ON CONFLICT DO NOTHING",
    )
    .bind(chunk.iter().map(|r| r.0).collect::<Vec<_>>())
    .bind(chunk.iter().map(|r| r.1).collect::<Vec<_>>())
    .bind(chunk.iter().map(|r| r.2.as_str()).collect::<Vec<_>>())
    .bind(chunk.iter().map(|r| r.3).collect::<Vec<_>>())
    .bind(chunk.iter().map(|r| r.4.as_str()).collect::<Vec<_>>())
    .bind(chunk.iter().map(|r| r.5.as_str()).collect::<Vec<_>>())
    .bind(chunk.iter().map(|r| r.6.as_str()).collect::<Vec<_>>())
    .bind(chunk.iter().map(|r| r.7.as_str()).collect::<Vec<_>>())
    .bind(chunk.iter().map(|r| r.8.as_str()).collect::<Vec<_>>())
    .bind(chunk.iter().map(|r| r.9).collect::<Vec<_>>())
    .bind(chunk.iter().map(|r| r.10.as_slice()).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await
    .expect("events insert");
    // The last event of each execution in the batch, in key order (both writers lock rows in the
    // same order).
    let mut last: std::collections::BTreeMap<(&str, &str), &Row> = std::collections::BTreeMap::new();
    for row in chunk.iter().filter(|r| !r.5.is_empty()) {
        last.insert((row.4.as_str(), row.5.as_str()), row);
    }
    sqlx::query(
        "UPDATE executions e SET version = u.version, last_offset = u.last_offset, state = u.state,
                                 updated_at = u.updated_at
         FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::bytea[], $6::timestamptz[])
              AS u(tenant_id, execution_id, version, last_offset, state, updated_at)
         WHERE e.tenant_id = u.tenant_id AND e.execution_id = u.execution_id",
    )
    .bind(last.keys().map(|k| k.0).collect::<Vec<_>>())
    .bind(last.keys().map(|k| k.1).collect::<Vec<_>>())
    .bind(last.values().map(|r| r.9).collect::<Vec<_>>())
    .bind(last.values().map(|r| r.3).collect::<Vec<_>>())
    .bind(last.values().map(|r| r.10.as_slice()).collect::<Vec<_>>())
    .bind(last.values().map(|r| r.0).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await
    .expect("executions update");
    tx.commit().await.expect("commit");
}
