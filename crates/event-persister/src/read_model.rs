//! What the api reads about the read model's position (DESIGN §3, `as_of_offset`).

use crate::error::Error;
use runcast_contract::StreamKind;
use sqlx::PgPool;

/// The low watermark of `stream`: every event at or below this offset is reflected in the
/// history and read model. 0 when nothing is applied yet.
///
/// It is the durable consumer's ack floor as last recorded by a persister replica (see
/// [`crate::lag`]): correct with any number of replicas, because a message is acked only after
/// the transaction that stored it committed. It may trail the newest row by up to a second or a
/// batch; that is the safe direction (a client replays a few events and merges them by
/// `version`). Lists of executions use `StreamKind::Executions`.
pub async fn as_of_offset(pool: &PgPool, stream: StreamKind) -> Result<u64, Error> {
    let offset: Option<i64> = sqlx::query_scalar("SELECT applied_offset FROM applied_offsets WHERE stream = $1")
        .bind(stream.base_name())
        .fetch_optional(pool)
        .await
        .map_err(|err| Error::database("cannot read the applied offset", err))?;
    Ok(offset.map_or(0, |offset| u64::try_from(offset).unwrap_or(0)))
}
