//! Retry pacing: the project's one backoff ([`Backoff`], shared with the CLI through the
//! contract crate) and [`wait`], its cancellable sleep.

pub use runcast_contract::backoff::Backoff;
use tokio_util::sync::CancellationToken;

/// Sleeps for the backoff's next delay; false when `shutdown` came first.
pub async fn wait(backoff: &mut Backoff, shutdown: &CancellationToken) -> bool {
    let delay = backoff.next();
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}
