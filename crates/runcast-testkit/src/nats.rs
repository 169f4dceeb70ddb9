//! A real `nats-server` with JetStream on a loopback port, its store in a temporary folder.

use crate::{HarnessError, Result, eventually, tools};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// A deadline, not a wait: generous, since a loaded machine can take long to recover a JetStream store.
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    binary: PathBuf,
}

impl NatsServer {
    /// Starts a server on a port of its own choosing.
    pub async fn start() -> Result<Self> {
        let binary = tools::nats_server()?;
        let dir = tempfile::Builder::new()
            .prefix("runcast-nats-")
            .tempdir()
            .map_err(|err| HarnessError::io("cannot create a temporary folder for nats-server", err))?;
        let mut server = Self { child: None, port: 0, dir, binary };
        // Port -1: the server picks a free port and writes it to the ports file.
        server.spawn(-1)?;
        let ports_dir = server.dir.path().join("ports");
        let port = eventually("nats-server to write its ports file", START_TIMEOUT, || {
            let found = read_client_port(&ports_dir);
            async move { found }
        })
        .await?;
        server.port = port;
        server.wait_until_accepting().await?;
        Ok(server)
    }

    fn spawn(&mut self, port: i32) -> Result<()> {
        let dir = self.dir.path();
        let ports_dir = dir.join("ports");
        std::fs::create_dir_all(&ports_dir).map_err(|err| HarnessError::io("cannot create the ports folder", err))?;
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(dir.join("nats.log"))
            .map_err(|err| HarnessError::io("cannot open the nats-server log", err))?;
        let stderr = log.try_clone().map_err(|err| HarnessError::io("cannot reuse the nats-server log", err))?;
        let child = Command::new(&self.binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "--ports_file_dir"])
            .arg(&ports_dir)
            .arg("-sd")
            .arg(dir.join("jetstream"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .map_err(|err| HarnessError::io(format!("cannot start {}", self.binary.display()), err))?;
        self.child = Some(child);
        Ok(())
    }

    async fn wait_until_accepting(&self) -> Result<()> {
        wait_for_jetstream(&self.url()).await
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server process, while it runs (a benchmark reads its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// Kills the server (as a crash would). Its store stays for [`Self::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server the way an orchestrator does (SIGTERM: it closes client connections and
    /// flushes its store), and waits until it has exited. Its store stays for [`Self::start_again`].
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
            }
            let _ = child.wait();
        }
    }

    /// Starts a stopped server again on the same port with the same JetStream store, and waits
    /// until JetStream answers.
    pub async fn start_again(&mut self) -> Result<()> {
        self.stop();
        let port = i32::from(self.port);
        self.spawn(port)?;
        self.wait_until_accepting().await
    }

    /// Starts the server again on the same port with the same JetStream store.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop();
        self.start_again().await
    }

    /// The server's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until JetStream answers through `url` (it answers only once its store is ready).
pub(crate) async fn wait_for_jetstream(url: &str) -> Result<()> {
    eventually(&format!("JetStream to answer through {url}"), START_TIMEOUT, || async move {
        let client = async_nats::connect(url).await.ok()?;
        async_nats::jetstream::new(client).query_account().await.ok().map(|_| ())
    })
    .await
}

fn read_client_port(ports_dir: &Path) -> Option<u16> {
    let entry =
        std::fs::read_dir(ports_dir).ok()?.flatten().find(|e| e.file_name().to_string_lossy().ends_with(".ports"))?;
    let ports: serde_json::Value = serde_json::from_slice(&std::fs::read(entry.path()).ok()?).ok()?;
    let url = ports.get("nats")?.get(0)?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}
