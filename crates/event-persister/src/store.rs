//! The persister's path into the database: a folded batch handed to the store's idempotent bulk
//! writes (`runcast_store::write`), one transaction per batch.

use crate::error::Error;
use crate::rows::Fold;
pub use runcast_store::write::{DeadLetter, Mode};
use sqlx::PgPool;

/// Writes one batch in one transaction; `applied`: the stream and its low watermark to record.
pub async fn write_batch(
    pool: &PgPool,
    fold: &Fold,
    dead_letters: &[DeadLetter],
    applied: Option<(&str, u64)>,
) -> Result<(), Error> {
    Ok(runcast_store::write::write_batch(pool, &fold.batch(), dead_letters, applied).await?)
}
