//! The lifecycle every service binary promises (foundation issue, DESIGN §6), checked the same way
//! for each of them against real servers:
//!
//! 1. started while its dependencies are down, it keeps retrying: `/healthz` 200, `/readyz` 503;
//! 2. `/readyz` turns 200 once NATS (and PostgreSQL, for services that use it) are reachable;
//! 3. it turns 503 when one of them goes away and 200 again when it is back, without a restart;
//! 4. SIGTERM makes it exit with status 0 within 5 seconds.
//!
//! And from its first moment, before any traffic, `/metrics` passes `promtool check metrics` and
//! lists `runcast_build_info` for it, the process metrics and every series it names.

use crate::{HarnessError, Infra, Result, ServiceProcess, eventually};
use std::time::Duration;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the whole check for `binary`. `uses_postgres`: whether its readiness depends on PostgreSQL;
/// `series`: metric names its `/metrics` must list from the start.
pub async fn check(binary: &str, uses_postgres: bool, series: &[&str]) -> Result<()> {
    let mut infra = Infra::start().await?;
    let isolation = infra.isolate().await?;
    infra.nats.stop();
    if uses_postgres {
        infra.postgres.stop();
    }

    let nats_url = infra.nats.url();
    let mut service = ServiceProcess::spawn(
        binary,
        &[
            ("NATS_URL", nats_url.as_str()),
            ("DATABASE_URL", isolation.database_url.as_str()),
            ("RUNCAST_STREAM_PREFIX", isolation.stream_prefix.as_str()),
            ("RUNCAST_JWT_SECRET", "lifecycle-test-secret"),
        ],
    )
    .await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|err| HarnessError(format!("cannot build an HTTP client: {err}")))?;

    // 1. Dependencies down: alive, not ready, retrying rather than exiting.
    expect_status(&http, &service.http_url("/healthz"), 200).await?;
    expect_status(&http, &service.http_url("/readyz"), 503).await?;
    metrics_from_start(&http, &service, binary, series).await?;
    let log_shows_retry = |service: &ServiceProcess| service.recent_log().contains("cannot provision streams yet");
    eventually("a logged retry of stream provisioning", READY_TIMEOUT, || {
        let retried = log_shows_retry(&service);
        async move { retried.then_some(()) }
    })
    .await?;
    if !service.is_running() {
        return Err(HarnessError(format!("{binary} exited while NATS was down:\n{}", service.recent_log())));
    }

    // 2. Dependencies up: ready.
    infra.nats.restart().await?;
    if uses_postgres {
        infra.postgres.restart().await?;
    }
    wait_for_readiness(&http, &service, 200, None).await?;

    // 3. Each dependency lost and regained.
    infra.nats.stop();
    wait_for_readiness(&http, &service, 503, Some("nats")).await?;
    infra.nats.restart().await?;
    wait_for_readiness(&http, &service, 200, None).await?;
    if uses_postgres {
        infra.postgres.stop();
        wait_for_readiness(&http, &service, 503, Some("postgres")).await?;
        infra.postgres.restart().await?;
        wait_for_readiness(&http, &service, 200, None).await?;
    }

    // 4. Graceful stop.
    service.signal(nix::sys::signal::Signal::SIGTERM)?;
    let status = service.wait_exit(EXIT_TIMEOUT).await?;
    if !status.success() {
        return Err(HarnessError(format!("{binary} exited with {status} after SIGTERM:\n{}", service.recent_log())));
    }
    Ok(())
}

async fn expect_status(http: &reqwest::Client, url: &str, expected: u16) -> Result<()> {
    let status =
        http.get(url).send().await.map_err(|err| HarnessError(format!("GET {url} failed: {err}")))?.status().as_u16();
    if status == expected {
        Ok(())
    } else {
        Err(HarnessError(format!("GET {url} answered {status}, expected {expected}")))
    }
}

/// Waits until `/readyz` answers `expected`; with `failing_check`, also until that check is the
/// one reported false.
async fn wait_for_readiness(
    http: &reqwest::Client,
    service: &ServiceProcess,
    expected: u16,
    failing_check: Option<&str>,
) -> Result<()> {
    let url = service.http_url("/readyz");
    let what = format!(
        "{url} to answer {expected}{}",
        failing_check.map(|c| format!(" with {c} failing")).unwrap_or_default()
    );
    eventually(&what, READY_TIMEOUT, || {
        let request = http.get(&url).send();
        async move {
            let response = request.await.ok()?;
            if response.status().as_u16() != expected {
                return None;
            }
            let body: serde_json::Value = response.json().await.ok()?;
            match failing_check {
                Some(check) => (body["checks"][check] == false).then_some(()),
                None => Some(()),
            }
        }
    })
    .await
    .map_err(|err| HarnessError(format!("{err}\n--- service log ---\n{}", service.recent_log())))
}

async fn metrics_from_start(
    http: &reqwest::Client,
    service: &ServiceProcess,
    binary: &str,
    series: &[&str],
) -> Result<()> {
    let url = service.http_url("/metrics");
    let page = http
        .get(&url)
        .send()
        .await
        .map_err(|err| HarnessError(format!("GET {url}: {err}")))?
        .text()
        .await
        .map_err(|err| HarnessError(format!("GET {url}: {err}")))?;
    crate::promtool::check_metrics(&page)?;
    let build_info = format!("runcast_build_info{{service=\"{binary}\"");
    let required = [
        build_info.as_str(),
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "runcast_nats_reconnects_total",
    ];
    let missing: Vec<&str> = required
        .iter()
        .copied()
        .chain(series.iter().copied())
        .filter(|name| !page.lines().any(|line| line.starts_with(name)))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(HarnessError(format!("{binary}'s /metrics lacks {missing:?} before any traffic:\n{page}")))
    }
}
