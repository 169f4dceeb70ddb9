//! The servers of a benchmark as child processes, each optionally pinned to one core with
//! `taskset` and killed on `Drop`: a `nats-server` with JetStream and its own WebSocket listener,
//! and a `ws-gateway` binary in front of it.

use anyhow::{Context as _, bail};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, Command};

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// `binary args…`, under `taskset -c <cpu>` when pinned, its output appended to `log`.
fn command(binary: &Path, cpu: Option<usize>, log: &Path) -> anyhow::Result<Command> {
    let mut command = match cpu {
        Some(cpu) => {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(cpu.to_string()).arg(binary);
            command
        }
        None => Command::new(binary),
    };
    let out = std::fs::File::options().create(true).append(true).open(log).context("cannot open a server log")?;
    command.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out).kill_on_drop(true);
    Ok(command)
}

/// A free loopback port (another process could take it before the server binds it; the start
/// then fails and says so).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

pub struct NatsServer {
    child: Child,
    pub client_port: u16,
    pub ws_port: u16,
    log: PathBuf,
    _dir: TempDir,
}

impl NatsServer {
    /// Starts `binary` with JetStream (store in a temporary folder) and a plain-text WebSocket
    /// listener, both on loopback, and waits until JetStream answers.
    pub async fn start(binary: &Path, cpu: Option<usize>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("runcast-loadgen-nats-").tempdir()?;
        let (client_port, ws_port) = (free_port()?, free_port()?);
        let config = dir.path().join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "listen: \"127.0.0.1:{client_port}\"\njetstream {{ store_dir: \"{}\" }}\n\
                 websocket {{ listen: \"127.0.0.1:{ws_port}\", no_tls: true, compression: true }}\n",
                dir.path().join("jetstream").display()
            ),
        )?;
        let log = dir.path().join("nats.log");
        let child = command(binary, cpu, &log)?
            .arg("-c")
            .arg(&config)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let server = Self { child, client_port, ws_port, log, _dir: dir };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(client) = async_nats::connect(server.url()).await
                && async_nats::jetstream::new(client).query_account().await.is_ok()
            {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!("nats-server did not answer within {START_TIMEOUT:?}:\n{}", log_tail(&server.log));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    pub fn ws_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ws_port))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

pub struct GatewayServer {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
    _dir: TempDir,
}

impl GatewayServer {
    /// Starts the gateway `binary` against `nats_url` and waits until `/readyz` answers 200 (its
    /// streams exist and its consumers run). It reads PostgreSQL only to resume from before the
    /// stream's first event, which never happens here, so `DATABASE_URL` points nowhere.
    pub async fn start(binary: &Path, cpu: Option<usize>, nats_url: &str, jwt_secret: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("runcast-loadgen-gateway-").tempdir()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let log = dir.path().join("ws-gateway.log");
        let child = command(binary, cpu, &log)?
            .env("RUNCAST_HTTP_ADDR", addr.to_string())
            .env("NATS_URL", nats_url)
            .env("DATABASE_URL", "postgres://bench@127.0.0.1:1/unused")
            .env("RUNCAST_JWT_SECRET", jwt_secret)
            .env("RUNCAST_LOG_FORMAT", "json")
            // The default level, as deployed: a span's cost per connection shows at `info` only.
            .env("RUST_LOG", "info")
            // The caps are policy, not what is measured.
            .env("RUNCAST_WS_MAX_CONNECTIONS", "1000000")
            .env("RUNCAST_WS_MAX_CONNECTIONS_PER_TENANT", "1000000")
            .env("RUNCAST_WS_MAX_CONNECTIONS_PER_SUBJECT", "1000000")
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut server = Self { child, addr, log, _dir: dir };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if ready(addr).await {
                return Ok(server);
            }
            if Instant::now() > deadline || !matches!(server.child.try_wait(), Ok(None)) {
                bail!("ws-gateway was not ready within {START_TIMEOUT:?}:\n{}", log_tail(&server.log));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// `GET /readyz` answers 200.
pub async fn ready(addr: SocketAddr) -> bool {
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
            .await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer.starts_with(b"HTTP/1.1 200"))
    };
    matches!(tokio::time::timeout(Duration::from_secs(2), probe).await, Ok(Ok(true)))
}
