//! A 3-node NATS JetStream cluster on loopback: three `nats-server` processes with routes to each
//! other, a store folder each, client and route ports picked free. Nodes can be crashed
//! (`kill -9`), stopped gracefully (SIGTERM) and started again on the same ports with the same
//! store; the leader of a stream's RAFT group (JetStream stream info `cluster.leader`) names the
//! node to kill. Services connect with [`NatsCluster::urls`] (every node, comma separated) and
//! `RUNCAST_STREAM_REPLICAS=3`.

use crate::{HarnessError, Result, eventually, free_port, tools};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// The cluster's name (`--cluster_name`); nodes are `n1`, `n2`, `n3`.
pub const CLUSTER_NAME: &str = "runcast-test";

struct Node {
    name: String,
    client_port: u16,
    route_port: u16,
    child: Option<Child>,
    dir: TempDir,
}

pub struct NatsCluster {
    nodes: Vec<Node>,
    binary: PathBuf,
}

impl NatsCluster {
    /// Starts three nodes and waits until JetStream answers through each of them (which needs a
    /// meta leader, so a quorum of routed nodes).
    pub async fn start() -> Result<Self> {
        Self::start_with(3).await
    }

    /// Starts `size` nodes (at least 1; 3 or 5 give a JetStream quorum that survives one loss).
    pub async fn start_with(size: usize) -> Result<Self> {
        let binary = tools::nats_server()?;
        // Ports another process takes in between make a node fail to bind: pick again.
        let mut last_error = None;
        for _ in 0..3 {
            let mut nodes = Vec::with_capacity(size);
            for index in 1..=size.max(1) {
                let dir = tempfile::Builder::new()
                    .prefix("runcast-nats-cluster-")
                    .tempdir()
                    .map_err(|err| HarnessError::io("cannot create a temporary folder for nats-server", err))?;
                nodes.push(Node {
                    name: format!("n{index}"),
                    client_port: free_port()?,
                    route_port: free_port()?,
                    child: None,
                    dir,
                });
            }
            let mut cluster = Self { nodes, binary: binary.clone() };
            for index in 0..cluster.nodes.len() {
                cluster.spawn(index)?;
            }
            match cluster.wait_all_accepting().await {
                Ok(()) => return Ok(cluster),
                Err(err) => last_error = Some(HarnessError(format!("{err}\n{}", cluster.logs()))),
            }
        }
        Err(last_error.unwrap_or_else(|| HarnessError("the NATS cluster did not start".into())))
    }

    fn spawn(&mut self, index: usize) -> Result<()> {
        let routes: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(other, _)| *other != index)
            .map(|(_, node)| format!("nats://127.0.0.1:{}", node.route_port))
            .collect();
        let node = self.node(index)?;
        let dir = node.dir.path().to_path_buf();
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(dir.join("nats.log"))
            .map_err(|err| HarnessError::io("cannot open the nats-server log", err))?;
        let stderr = log.try_clone().map_err(|err| HarnessError::io("cannot reuse the nats-server log", err))?;
        let mut command = Command::new(&self.binary);
        command
            .args(["-a", "127.0.0.1", "-p", &node.client_port.to_string(), "-js", "--server_name", &node.name])
            .arg("-sd")
            .arg(dir.join("jetstream"))
            .args(["--cluster_name", CLUSTER_NAME, "--cluster", &format!("nats://127.0.0.1:{}", node.route_port)]);
        if !routes.is_empty() {
            command.args(["--routes", &routes.join(",")]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .map_err(|err| HarnessError::io(format!("cannot start {}", self.binary.display()), err))?;
        let node = self.node_mut(index)?;
        node.child = Some(child);
        Ok(())
    }

    fn node(&self, index: usize) -> Result<&Node> {
        self.nodes.get(index).ok_or_else(|| HarnessError(format!("the cluster has no node {index}")))
    }

    fn node_mut(&mut self, index: usize) -> Result<&mut Node> {
        self.nodes.get_mut(index).ok_or_else(|| HarnessError(format!("the cluster has no node {index}")))
    }

    async fn wait_all_accepting(&self) -> Result<()> {
        for index in 0..self.nodes.len() {
            self.wait_accepting(index).await?;
        }
        Ok(())
    }

    /// Waits until JetStream answers through node `index`.
    pub async fn wait_accepting(&self, index: usize) -> Result<()> {
        crate::nats::wait_for_jetstream(&self.node_url(index)?).await
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node's client URL, comma separated: what `NATS_URL` takes.
    pub fn urls(&self) -> String {
        self.node_urls().join(",")
    }

    /// Every node's client URL, for clients that take a list (async-nats does not split a string).
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes.iter().map(|node| format!("nats://127.0.0.1:{}", node.client_port)).collect()
    }

    pub fn node_url(&self, index: usize) -> Result<String> {
        Ok(format!("nats://127.0.0.1:{}", self.node(index)?.client_port))
    }

    /// The server name of node `index` (`n1`…), as stream info names leaders and replicas.
    pub fn name(&self, index: usize) -> Result<&str> {
        Ok(self.node(index)?.name.as_str())
    }

    /// The index of the node called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|node| node.name == name)
    }

    pub fn is_running(&mut self, index: usize) -> bool {
        self.nodes
            .get_mut(index)
            .and_then(|node| node.child.as_mut())
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Crashes node `index` (SIGKILL: no flush, no goodbye to its routes). Its store stays for
    /// [`Self::restart`].
    pub fn kill(&mut self, index: usize) -> Result<()> {
        let node = self.node_mut(index)?;
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(())
    }

    /// Stops node `index` the way an orchestrator does (SIGTERM) and waits until it has exited.
    pub fn terminate(&mut self, index: usize) -> Result<()> {
        let node = self.node_mut(index)?;
        if let Some(mut child) = node.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
            }
            let _ = child.wait();
        }
        Ok(())
    }

    /// Starts a stopped node again on the same ports with the same store (killing it first if it
    /// still runs), and waits until JetStream answers through it.
    pub async fn restart(&mut self, index: usize) -> Result<()> {
        self.kill(index)?;
        self.spawn(index)?;
        self.wait_accepting(index).await
    }

    /// The server name of the current leader of `stream`, asked through any node that answers;
    /// `None` while there is none (an election) or no node answers.
    pub async fn stream_leader(&self, stream: &str) -> Option<String> {
        for index in 0..self.nodes.len() {
            let Ok(url) = self.node_url(index) else { continue };
            let connect = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(1)).connect(url);
            let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(2), connect).await else {
                continue;
            };
            let mut jetstream = async_nats::jetstream::new(client);
            jetstream.set_timeout(Duration::from_secs(2));
            let Ok(mut handle) = jetstream.get_stream(stream).await else { continue };
            let Ok(info) = handle.info().await else { continue };
            if let Some(leader) = info.cluster.as_ref().and_then(|cluster| cluster.leader.clone()) {
                return Some(leader);
            }
        }
        None
    }

    /// Waits until `stream` has a leader other than `not` (the node just killed) and returns its
    /// name.
    pub async fn wait_for_leader(&self, stream: &str, not: Option<&str>, timeout: Duration) -> Result<String> {
        let what = match not {
            Some(old) => format!("a leader of stream {stream} other than {old}"),
            None => format!("a leader of stream {stream}"),
        };
        eventually(&what, timeout, || async move {
            self.stream_leader(stream).await.filter(|leader| Some(leader.as_str()) != not)
        })
        .await
        .map_err(|err| HarnessError(format!("{err}\n{}", self.logs())))
    }

    /// The last lines of every node's log, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|node| {
                let log = std::fs::read_to_string(node.dir.path().join("nats.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                format!(
                    "--- {} log (last lines) ---\n{}",
                    node.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
