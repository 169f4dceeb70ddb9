//! The pools against a real PostgreSQL whose server runs with `synchronous_commit = off` (the test
//! server does, for speed): a durable pool's sessions flush their commits, a plain one's do not,
//! and a durable level the database asks for is kept.

use runcast_runtime::postgres::PostgresArgs;
use runcast_testkit::{PostgresServer, unique_name};

async fn level(pool: &sqlx::PgPool) -> String {
    sqlx::query_scalar("SELECT current_setting('synchronous_commit')").fetch_one(pool).await.expect("the setting")
}

#[tokio::test]
async fn a_durable_pool_turns_synchronous_commit_on_where_the_server_has_it_off_and_keeps_other_levels() {
    let server = PostgresServer::start().await.expect("postgres");
    let args = |database_url: String| PostgresArgs { database_url, db_max_connections: 2 };
    let database = server.create_database(&unique_name("d")).await.expect("a database");

    let plain = args(database.clone()).lazy_pool().expect("pool");
    assert_eq!(level(&plain).await, "off", "the test server's own setting");
    let durable = args(database.clone()).lazy_durable_pool().expect("pool");
    assert_eq!(level(&durable).await, "on");
    // Every connection of the pool, not only the first.
    let (mut first, mut second) = (durable.acquire().await.expect("one"), durable.acquire().await.expect("two"));
    for connection in [&mut first, &mut second] {
        let setting: String =
            sqlx::query_scalar("SHOW synchronous_commit").fetch_one(&mut **connection).await.expect("the setting");
        assert_eq!(setting, "on");
    }

    // A database that asks for `local` (flushed locally, no wait for standbys) keeps it.
    let local = server.create_database(&unique_name("d")).await.expect("a database");
    let name = local.rsplit('/').next().expect("a database name");
    sqlx::query(sqlx::AssertSqlSafe(format!("ALTER DATABASE \"{name}\" SET synchronous_commit = local")))
        .execute(&plain)
        .await
        .expect("a database-level setting");
    assert_eq!(level(&args(local).lazy_durable_pool().expect("pool")).await, "local");
}
