//! The service binaries (`execution-api`, `event-persister`, `ws-gateway`) as real processes.
//!
//! Every service binds its listeners on port 0 here and logs the bound address in a JSON field
//! ending in `_addr` (`http_addr`, `grpc_addr`); the harness reads them from the log instead of
//! guessing free ports. Warnings, errors and anything that is not a JSON log line (a panic) are
//! echoed to the test's stderr (shown when a test fails); `RUNCAST_TEST_LOG=all` echoes every line.
//! Only that much, so a failing test's own message is not buried under the services' INFO lines.
//! The last lines are kept for error messages.

use crate::{HarnessError, Result, tools};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

const KEPT_LOG_LINES: usize = 200;
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct ServiceProcess {
    name: String,
    child: Child,
    addrs: watch::Receiver<HashMap<String, SocketAddr>>,
    log: Arc<Mutex<VecDeque<String>>>,
    log_readers: Vec<tokio::task::JoinHandle<()>>,
}

impl ServiceProcess {
    /// Starts `binary` with `env` on top of test defaults (listeners on 127.0.0.1:0, JSON logs)
    /// and waits until its HTTP listener is bound.
    pub async fn spawn(binary: &str, env: &[(&str, &str)]) -> Result<Self> {
        let mut service = Self::run(binary, &[], env).await?;
        service.addr("http_addr").await?;
        Ok(service)
    }

    /// Starts `binary args…` without waiting for anything: for one-shot subcommands such as
    /// `event-persister migrate`, followed by [`Self::wait_exit`].
    pub async fn run(binary: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let path = tools::binary(binary)?;
        let mut command = Command::new(&path);
        command
            .args(args)
            .env("RUNCAST_HTTP_ADDR", "127.0.0.1:0")
            .env("RUNCAST_GRPC_ADDR", "127.0.0.1:0")
            .env("RUNCAST_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child =
            command.spawn().map_err(|err| HarnessError::io(format!("cannot start {}", path.display()), err))?;

        let (addrs_tx, addrs) = watch::channel(HashMap::new());
        let log = Arc::new(Mutex::new(VecDeque::with_capacity(KEPT_LOG_LINES)));
        let mut log_readers = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            log_readers.push(tokio::spawn(read_log(
                binary.to_owned(),
                BufReader::new(stdout),
                log.clone(),
                Some(addrs_tx),
            )));
        }
        if let Some(stderr) = child.stderr.take() {
            log_readers.push(tokio::spawn(read_log(binary.to_owned(), BufReader::new(stderr), log.clone(), None)));
        }
        Ok(Self { name: binary.to_owned(), child, addrs, log, log_readers })
    }

    /// The address the service logged under `field`, waiting for it up to the start timeout.
    pub async fn addr(&mut self, field: &str) -> Result<SocketAddr> {
        let waited = tokio::time::timeout(START_TIMEOUT, self.addrs.wait_for(|addrs| addrs.contains_key(field)))
            .await
            .map(|found| found.map(|addrs| addrs.get(field).copied()));
        match waited {
            Ok(Ok(Some(addr))) => Ok(addr),
            Ok(Ok(None)) => Err(self.failure(&format!("lost {field}"))),
            Ok(Err(_)) => Err(self.failure(&format!("exited before logging {field}"))),
            Err(_) => Err(self.failure(&format!("did not log {field} within {START_TIMEOUT:?}"))),
        }
    }

    /// `http://<http_addr><path>`.
    pub fn http_url(&self, path: &str) -> String {
        let addr = self.addrs.borrow().get("http_addr").copied();
        addr.map_or_else(String::new, |addr| format!("http://{addr}{path}"))
    }

    /// The sum of a metric's samples on the service's `/metrics` page (0 when absent or when
    /// the page cannot be read).
    pub async fn metric(&self, name: &str) -> f64 {
        let Ok(response) = reqwest::get(self.http_url("/metrics")).await else {
            return 0.0;
        };
        let text = response.text().await.unwrap_or_default();
        text.lines()
            .filter(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{')))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends a signal (SIGTERM to ask for a graceful stop, SIGKILL to crash it).
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> Result<()> {
        let pid = self.pid().ok_or_else(|| self.failure("has already exited"))?;
        let pid = i32::try_from(pid).map_err(|_| self.failure("has a pid out of range"))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
            .map_err(|err| self.failure(&format!("cannot be signalled: {err}")))
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit, at most `timeout`; once it has, [`Self::recent_log`] holds
    /// everything it wrote.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => {
                for reader in self.log_readers.drain(..) {
                    let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
                }
                Ok(status)
            }
            Ok(Err(err)) => Err(HarnessError::io(format!("cannot wait for {}", self.name), err)),
            Err(_) => Err(self.failure(&format!("did not exit within {timeout:?}"))),
        }
    }

    /// The last lines the service logged.
    pub fn recent_log(&self) -> String {
        let log = self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        log.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    fn failure(&self, what: &str) -> HarnessError {
        HarnessError(format!("{} {what}\n--- last log lines ---\n{}", self.name, self.recent_log()))
    }
}

async fn read_log<R: tokio::io::AsyncRead + Unpin>(
    name: String,
    reader: BufReader<R>,
    log: Arc<Mutex<VecDeque<String>>>,
    addrs: Option<watch::Sender<HashMap<String, SocketAddr>>>,
) {
    let echo_all = std::env::var("RUNCAST_TEST_LOG").is_ok_and(|value| value == "all");
    let mut lines = reader.lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if echo_all || worth_echoing(&line) {
            eprintln!("[{name}] {line}");
        }
        if let Some(addrs) = &addrs {
            for (field, addr) in bound_addrs(&line) {
                addrs.send_modify(|known| {
                    known.insert(field, addr);
                });
            }
        }
        let mut log = log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if log.len() == KEPT_LOG_LINES {
            log.pop_front();
        }
        log.push_back(line);
    }
}

/// A warning, an error, or a line that is not a JSON log line at all (a panic, a crash).
fn worth_echoing(line: &str) -> bool {
    match serde_json::from_str::<serde_json::Value>(line) {
        Ok(serde_json::Value::Object(fields)) => {
            !matches!(fields.get("level").and_then(serde_json::Value::as_str), Some("INFO" | "DEBUG" | "TRACE"))
        }
        _ => true,
    }
}

/// `*_addr` fields of a JSON log line that parse as socket addresses.
fn bound_addrs(line: &str) -> Vec<(String, SocketAddr)> {
    let Ok(serde_json::Value::Object(fields)) = serde_json::from_str::<serde_json::Value>(line) else {
        return Vec::new();
    };
    fields
        .iter()
        .filter(|(key, _)| key.ends_with("_addr"))
        .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.parse().ok()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bound_addresses_from_json_log_lines() {
        let line = r#"{"level":"INFO","message":"http listener bound","http_addr":"127.0.0.1:4321","other":"x"}"#;
        assert_eq!(bound_addrs(line), [("http_addr".to_owned(), "127.0.0.1:4321".parse().expect("addr"))]);
        assert!(bound_addrs("not json").is_empty());
        assert!(bound_addrs(r#"{"http_addr":"nowhere"}"#).is_empty());
    }

    #[test]
    fn only_warnings_errors_and_non_json_lines_are_echoed() {
        assert!(!worth_echoing(r#"{"level":"INFO","message":"http listener bound"}"#));
        assert!(worth_echoing(r#"{"level":"WARN","message":"fetch failed"}"#));
        assert!(worth_echoing(r#"{"level":"ERROR","message":"gave up"}"#));
        assert!(worth_echoing("thread 'main' panicked at src/main.rs:1:1"));
    }
}

/// How long a service may take to say `/readyz` 200 once its listener is bound.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Where one test's services find NATS, PostgreSQL, their stream prefix and the token secret:
/// the fixture every crate's integration tests start their services with.
#[derive(Debug, Clone)]
pub struct ServiceEnv {
    /// One URL, or a cluster's comma-separated URLs.
    pub nats_url: String,
    pub database_url: String,
    pub stream_prefix: String,
    /// `RUNCAST_STREAM_REPLICAS`: 1 on one server, 3 on a cluster.
    pub replicas: u8,
    /// The HS256 secret of the test's tokens (`RUNCAST_JWT_SECRET`).
    pub secret: String,
}

impl ServiceEnv {
    /// The environment of every service of this test, then `extra` (later entries win).
    pub fn vars(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut vars = vec![
            ("NATS_URL".to_owned(), self.nats_url.clone()),
            ("DATABASE_URL".to_owned(), self.database_url.clone()),
            ("RUNCAST_STREAM_PREFIX".to_owned(), self.stream_prefix.clone()),
            ("RUNCAST_STREAM_REPLICAS".to_owned(), self.replicas.to_string()),
            ("RUNCAST_JWT_SECRET".to_owned(), self.secret.clone()),
        ];
        vars.extend(extra.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())));
        vars
    }

    /// Starts `binary` with this environment plus `extra`; its HTTP listener is bound, it may
    /// not be ready yet.
    pub async fn start(&self, binary: &str, extra: &[(&str, &str)]) -> ServiceProcess {
        let vars = self.vars(extra);
        let env: Vec<(&str, &str)> = vars.iter().map(|(key, value)| (key.as_str(), value.as_str())).collect();
        ServiceProcess::spawn(binary, &env).await.unwrap_or_else(|err| panic!("{binary}: {err}"))
    }

    /// [`start`](Self::start), then waits until it is ready.
    pub async fn spawn(&self, binary: &str, extra: &[(&str, &str)]) -> ServiceProcess {
        let service = self.start(binary, extra).await;
        wait_ready(&service).await;
        service
    }
}

/// Waits until `service` answers `/readyz` with 200; panics with its recent log otherwise.
pub async fn wait_ready(service: &ServiceProcess) {
    let url = service.http_url("/readyz");
    crate::eventually(&format!("{url} to be ready"), READY_TIMEOUT, || {
        let url = url.clone();
        async move { reqwest::get(&url).await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
    })
    .await
    .unwrap_or_else(|err| panic!("{err}\n{}", service.recent_log()));
}
