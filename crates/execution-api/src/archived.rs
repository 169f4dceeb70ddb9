//! Lookups of executions in the read model, batched: while one query runs, the lookups that
//! arrive wait, and the next query answers all of them.
//!
//! Every idempotent create asks the read model whether its key's execution aged out of the stream
//! (DESIGN §7), and the answer is almost always "no". Alone, each such lookup costs a pooled
//! connection, a statement and the ping sqlx sends when the connection goes back to the pool: a
//! third of the api's CPU per create under load. Batched, a burst of creates costs one of each.
//! No timer: a lookup that finds the task idle goes out at once, so an idle api answers as fast as
//! before, and a busy one batches by itself.

use runcast_contract::EntityId;
use runcast_contract::v1::Execution;
use runcast_store::{Error, ErrorKind, PgPool};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Most lookups in one query.
const MAX_BATCH: usize = 256;
/// Lookups waiting for a query; a caller waits for room beyond that.
const QUEUE: usize = 4 * MAX_BATCH;

type Answer = Result<Option<Execution>, Error>;
/// What one query found: by `(tenant, execution id)`, decoded or not.
type Found = std::collections::HashMap<(String, String), Result<Execution, Error>>;

struct Lookup {
    tenant: EntityId,
    execution_id: EntityId,
    answer: oneshot::Sender<Answer>,
}

/// A handle on the task that runs the batched lookups; clones share it. The task ends when the
/// last handle is dropped.
#[derive(Clone, Debug)]
pub(crate) struct ArchivedExecutions {
    lookups: mpsc::Sender<Lookup>,
}

impl ArchivedExecutions {
    /// Starts the task (on the current Tokio runtime). `timeout` bounds each query.
    pub(crate) fn spawn(pool: PgPool, timeout: Duration) -> Self {
        let (lookups, queued) = mpsc::channel(QUEUE);
        tokio::spawn(serve(pool, queued, timeout));
        Self { lookups }
    }

    /// The execution as the read model last saw it, `None` when it is not there.
    pub(crate) async fn get(&self, tenant: &EntityId, execution_id: &EntityId) -> Answer {
        let gone = || Error::new(ErrorKind::Unavailable, "the read model's lookup task has stopped");
        let (answer, answered) = oneshot::channel();
        let lookup = Lookup { tenant: tenant.clone(), execution_id: execution_id.clone(), answer };
        self.lookups.send(lookup).await.map_err(|_| gone())?;
        answered.await.map_err(|_| gone())?
    }
}

async fn serve(pool: PgPool, mut queued: mpsc::Receiver<Lookup>, timeout: Duration) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queued.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // A caller that gave up (its own deadline) needs no answer.
        batch.retain(|lookup: &Lookup| !lookup.answer.is_closed());
        if batch.is_empty() {
            continue;
        }
        let keys: Vec<(&str, &str)> =
            batch.iter().map(|lookup| (lookup.tenant.as_str(), lookup.execution_id.as_str())).collect();
        let found = match tokio::time::timeout(timeout, runcast_store::read_model::executions(&pool, &keys)).await {
            Ok(found) => found,
            Err(_) => Err(Error::new(ErrorKind::Unavailable, format!("no answer within {timeout:?}"))),
        };
        drop(keys);
        answer(batch.drain(..), found);
    }
}

/// Hands each lookup its execution (or `None`), or the query's error.
fn answer(lookups: impl Iterator<Item = Lookup>, found: Result<Found, Error>) {
    match found {
        Ok(mut found) => {
            for lookup in lookups {
                let key = (lookup.tenant.as_str().to_owned(), lookup.execution_id.as_str().to_owned());
                let _ = lookup.answer.send(found.remove(&key).transpose());
            }
        }
        Err(err) => {
            for lookup in lookups {
                let _ = lookup.answer.send(Err(Error::new(err.kind(), err.to_string())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(tenant: &str, id: &str) -> (Lookup, oneshot::Receiver<Answer>) {
        let (answer, answered) = oneshot::channel();
        let parse = |value: &str| EntityId::parse("id", value).expect("valid id");
        (Lookup { tenant: parse(tenant), execution_id: parse(id), answer }, answered)
    }

    fn execution(id: &str) -> Execution {
        Execution { execution_id: id.into(), version: 3, ..Default::default() }
    }

    #[test]
    fn each_lookup_gets_its_own_execution_none_or_its_decoding_error() {
        let (a, mut a_answer) = lookup("acme", "e1");
        let (b, mut b_answer) = lookup("acme", "e2");
        let (c, mut c_answer) = lookup("other", "e1");
        let (d, mut d_answer) = lookup("acme", "broken");
        let found = HashMap::from([
            (("acme".to_owned(), "e1".to_owned()), Ok(execution("e1"))),
            (("other".to_owned(), "e1".to_owned()), Ok(Execution { version: 7, ..execution("e1") })),
            (("acme".to_owned(), "broken".to_owned()), Err(Error::new(ErrorKind::Corrupt, "does not decode"))),
        ]);
        answer([a, b, c, d].into_iter(), Ok(found));
        assert_eq!(a_answer.try_recv().expect("answered").expect("found").map(|e| e.version), Some(3));
        assert_eq!(b_answer.try_recv().expect("answered").expect("not there"), None);
        assert_eq!(c_answer.try_recv().expect("answered").expect("found").map(|e| e.version), Some(7));
        let broken = d_answer.try_recv().expect("answered").expect_err("corrupt");
        assert_eq!(broken.kind(), ErrorKind::Corrupt);
    }

    #[test]
    fn a_failed_query_fails_every_lookup_of_its_batch_with_its_kind() {
        let (a, mut a_answer) = lookup("acme", "e1");
        let (b, mut b_answer) = lookup("acme", "e2");
        answer([a, b].into_iter(), Err(Error::new(ErrorKind::Unavailable, "connection refused")));
        for answered in [&mut a_answer, &mut b_answer] {
            let err = answered.try_recv().expect("answered").expect_err("failed");
            assert_eq!(err.kind(), ErrorKind::Unavailable);
            assert!(err.to_string().contains("connection refused"), "{err}");
        }
    }
}
