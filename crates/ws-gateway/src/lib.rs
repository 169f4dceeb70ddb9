//! # ws-gateway
//!
//! Pushes Runcast events to frontends over WebSocket and SSE. Stateless: any replica serves any
//! client.
//!
//! - [`Application`]: wiring — the HTTP listener (ops endpoints), the NATS connection and stream
//!   provisioning, graceful shutdown.

pub mod channel;
pub mod filter;
pub mod hub;
pub mod outbound;
pub mod protocol;

use clap::Parser;
use runcast_runtime::Error;
use runcast_runtime::config::{LifecycleArgs, NatsArgs, TelemetryArgs};
use runcast_runtime::nats::Nats;
use runcast_runtime::ops::{self, Readiness};
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub const SERVICE: &str = "ws-gateway";

#[derive(Debug, Clone, Parser)]
#[command(name = SERVICE, version, about = "Runcast live fan-out over WebSocket and SSE.")]
pub struct Config {
    /// Address of the HTTP listener (/ws, /sse, /healthz, /readyz, /metrics).
    #[arg(long, env = "RUNCAST_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub lifecycle: LifecycleArgs,
}

pub struct Application {
    config: Config,
    http: TcpListener,
    readiness: Readiness,
    nats: Nats,
}

impl Application {
    pub async fn build(config: Config) -> Result<Self, Error> {
        let readiness = Readiness::default();
        let nats = Nats::connect(&config.nats, SERVICE, &readiness).await?;
        let http = ops::bind_http(config.http_addr).await?;
        Ok(Self {
            config,
            http,
            readiness,
            nats,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr().unwrap_or(self.config.http_addr)
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), Error> {
        let Self {
            config,
            http,
            readiness,
            nats,
        } = self;
        let tasks = TaskTracker::new();
        let provisioned = readiness.add_flag("streams");
        tasks.spawn(nats.spawn_provisioning(
            config.nats.streams.clone(),
            provisioned,
            shutdown.clone(),
        ));
        ops::serve_until_stopped(
            http,
            ops::router(readiness),
            tasks,
            shutdown,
            config.lifecycle.shutdown_grace,
        )
        .await
    }
}
