//! # execution-api
//!
//! The command and query API of Runcast and the only writer of execution events.
//!
//! - [`Application`]: wiring — the gRPC listener (`grpc.health.v1.Health`, server reflection),
//!   the HTTP listener (ops endpoints), the NATS connection and stream provisioning, shutdown.

use clap::Parser;
use runcast_runtime::config::{LifecycleArgs, NatsArgs, TelemetryArgs};
use runcast_runtime::nats::Nats;
use runcast_runtime::ops::{self, Readiness};
use runcast_runtime::{Error, ErrorKind};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

pub const SERVICE: &str = "execution-api";

#[derive(Debug, Clone, Parser)]
#[command(name = SERVICE, version, about = "Runcast command and query API (gRPC + REST).")]
pub struct Config {
    /// Address of the gRPC listener.
    #[arg(long, env = "RUNCAST_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: SocketAddr,

    /// Address of the HTTP listener (REST under /api/v1, /healthz, /readyz, /metrics).
    #[arg(long, env = "RUNCAST_HTTP_ADDR", default_value = "0.0.0.0:8081")]
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
    grpc: TcpListener,
    readiness: Readiness,
    nats: Nats,
}

impl Application {
    /// Binds both listeners (port 0 picks free ports) and starts connecting to NATS.
    pub async fn build(config: Config) -> Result<Self, Error> {
        let readiness = Readiness::default();
        let nats = Nats::connect(&config.nats, SERVICE, &readiness).await?;
        let http = ops::bind_http(config.http_addr).await?;
        let grpc = TcpListener::bind(config.grpc_addr).await.map_err(|err| {
            Error::with_source(
                ErrorKind::Config,
                format!("cannot listen on RUNCAST_GRPC_ADDR={}", config.grpc_addr),
                err,
            )
        })?;
        if let Ok(bound) = grpc.local_addr() {
            tracing::info!(grpc_addr = %bound, "grpc listener bound");
        }
        Ok(Self {
            config,
            http,
            grpc,
            readiness,
            nats,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr().unwrap_or(self.config.http_addr)
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().unwrap_or(self.config.grpc_addr)
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), Error> {
        let Self {
            config,
            http,
            grpc,
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

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        tasks.spawn(mirror_readiness_to_grpc_health(
            readiness.clone(),
            health_reporter,
            shutdown.clone(),
        ));
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(runcast_contract::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|err| {
                Error::with_source(
                    ErrorKind::Internal,
                    "cannot build the reflection service",
                    err,
                )
            })?;
        let grpc_server = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .serve_with_incoming_shutdown(
                TcpIncoming::from(grpc),
                shutdown.clone().cancelled_owned(),
            );
        tasks.spawn(async move {
            if let Err(err) = grpc_server.await {
                tracing::error!(cause = %err, "grpc server failed");
            }
        });

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

/// `grpc.health.v1.Health` answers SERVING exactly when `/readyz` would answer 200.
async fn mirror_readiness_to_grpc_health(
    readiness: Readiness,
    reporter: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
) {
    let mut last = None;
    loop {
        let status = if readiness.report().0 {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if last != Some(status) {
            reporter.set_service_status("", status).await;
            last = Some(status);
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                reporter.set_service_status("", ServingStatus::NotServing).await;
                return;
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}
