//! `event-persister rebuild`: recomputes the read model (executions, approvals, agents, and the
//! log lines) from the history in PostgreSQL, with the same [`Fold`] and the same upserts as the
//! live path, so it yields the same rows.
//!
//! The history is read in offset order, page by page, one transaction per page. Rows only move
//! forward (a rebuild also rewrites rows at the same version, which repairs them), so a rebuild
//! may run beside live persisters. `reset` first deletes the read model: use it when rows may be
//! wrong at a version the history cannot reach; entities whose whole history has passed its
//! retention are then gone from the read model as well.

use crate::decode;
use crate::error::Error;
use crate::rows::Fold;
use runcast_contract::StreamKind;
use sqlx::PgPool;

/// What a rebuild went through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RebuildReport {
    pub events: u64,
    /// History rows whose body no longer decodes (should be none: they were validated on write).
    pub skipped: u64,
}

fn stream_kind(name: &str) -> Option<StreamKind> {
    StreamKind::ALL.into_iter().find(|kind| kind.base_name() == name)
}

#[tracing::instrument(skip(pool), err)]
pub(crate) async fn rebuild(pool: &PgPool, page_size: i64, reset: bool) -> Result<RebuildReport, Error> {
    if reset {
        runcast_store::write::reset_read_model(pool).await?;
    }
    let mut report = RebuildReport::default();
    let mut after: (String, i64) = (String::new(), 0);
    loop {
        let page = runcast_store::history::page_all(pool, (&after.0, after.1), page_size).await?;
        let Some(last) = page.last() else {
            break;
        };
        after = (last.stream.clone(), last.offset);
        let mut fold = Fold::default();
        for runcast_store::history::StreamEvent { stream, offset, body } in &page {
            report.events += 1;
            let decoded = stream_kind(stream)
                .zip(u64::try_from(*offset).ok())
                .ok_or_else(|| decode::ContractViolation(format!("unknown stream {stream}")))
                .and_then(|(kind, offset)| decode::decode(kind, offset, body));
            match decoded {
                Ok(decoded) => fold.add(&decoded, false),
                Err(err) => {
                    report.skipped += 1;
                    tracing::warn!(stream, offset, cause = %err, "history row does not decode; skipped");
                }
            }
        }
        runcast_store::write::write_rebuild_page(pool, &fold.batch()).await?;
    }
    tracing::info!(events = report.events, skipped = report.skipped, "read model rebuilt");
    Ok(report)
}
