//! Lookups of executions in the read model, batched: while one query runs, the lookups that
//! arrive wait, and the next query answers all of them.
//!
//! Every idempotent create asks the read model whether its key's execution aged out of the stream
//! (DESIGN §7), and the answer is almost always "no". Alone, each such lookup costs a pooled
//! connection, a statement and the ping sqlx sends when the connection goes back to the pool: a
//! third of the api's CPU per create under load. Batched, a burst of creates costs one of each.
//! No timer: a lookup that finds the task idle goes out at once, so an idle api answers as fast as
//! before, and a busy one batches by itself.
//!
//! Up to [`MAX_IN_FLIGHT`] queries run at once, each with the lookups that arrived while the others
//! ran: one slow query (a cold page, a lock, a stalled connection) does not make every lookup after
//! it wait out its timeout, and a stalled database holds no more than that many pooled connections.

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use runcast_contract::EntityId;
use runcast_contract::v1::Execution;
use runcast_store::{Error, ErrorKind, PgPool};
use std::future::Future;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Most lookups in one query.
const MAX_BATCH: usize = 256;
/// Queries running at once.
const MAX_IN_FLIGHT: usize = 4;
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
        Self::spawn_on(ReadModel { pool, timeout })
    }

    fn spawn_on(source: impl Source + 'static) -> Self {
        let (lookups, queued) = mpsc::channel(QUEUE);
        tokio::spawn(serve(source, queued));
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

/// Where the executions are looked up: the read model, or a stand-in in the tests of the batching.
trait Source: Send + Sync {
    fn find<'a>(&'a self, keys: &'a [(&'a str, &'a str)]) -> impl Future<Output = Result<Found, Error>> + Send + 'a;
}

struct ReadModel {
    pool: PgPool,
    /// Bounds each query.
    timeout: Duration,
}

impl Source for ReadModel {
    async fn find<'a>(&'a self, keys: &'a [(&'a str, &'a str)]) -> Result<Found, Error> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, runcast_store::read_model::executions(&self.pool, keys)).await {
            Ok(found) => found,
            Err(_) => Err(Error::new(ErrorKind::Unavailable, format!("no answer within {timeout:?}"))),
        }
    }
}

/// Takes the lookups queued whenever fewer than [`MAX_IN_FLIGHT`] queries run, and answers each
/// batch when its query ends. Ends once every handle is dropped and the last query answered.
async fn serve(source: impl Source, mut queued: mpsc::Receiver<Lookup>) {
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    loop {
        let mut batch = Vec::new();
        tokio::select! {
            received = queued.recv_many(&mut batch, MAX_BATCH), if open && in_flight.len() < MAX_IN_FLIGHT => {
                if received == 0 {
                    open = false;
                    continue;
                }
                // A caller that gave up (its own deadline) needs no answer.
                batch.retain(|lookup: &Lookup| !lookup.answer.is_closed());
                if !batch.is_empty() {
                    in_flight.push(look_up(&source, batch));
                }
            }
            Some(()) = in_flight.next() => {}
            else => return,
        }
    }
}

async fn look_up(source: &impl Source, batch: Vec<Lookup>) {
    let keys: Vec<(&str, &str)> =
        batch.iter().map(|lookup| (lookup.tenant.as_str(), lookup.execution_id.as_str())).collect();
    let found = source.find(&keys).await;
    drop(keys);
    answer(batch.into_iter(), found);
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

    /// Finds every key; a batch holding a key that starts with `slow` waits for a permit first.
    /// Counts the queries started and the ones running.
    struct Stalling {
        started: tokio::sync::watch::Sender<usize>,
        running: std::sync::atomic::AtomicUsize,
        most_running: std::sync::atomic::AtomicUsize,
        permits: tokio::sync::Semaphore,
    }

    impl Stalling {
        fn new() -> std::sync::Arc<Self> {
            std::sync::Arc::new(Self {
                started: tokio::sync::watch::channel(0).0,
                running: Default::default(),
                most_running: Default::default(),
                permits: tokio::sync::Semaphore::new(0),
            })
        }

        async fn until_started(&self, queries: usize) {
            let mut started = self.started.subscribe();
            tokio::time::timeout(Duration::from_secs(10), started.wait_for(|n| *n >= queries))
                .await
                .expect("the queries start")
                .expect("the source is alive");
        }
    }

    impl Source for std::sync::Arc<Stalling> {
        async fn find<'a>(&'a self, keys: &'a [(&'a str, &'a str)]) -> Result<Found, Error> {
            use std::sync::atomic::Ordering::SeqCst;
            let running = self.running.fetch_add(1, SeqCst) + 1;
            self.most_running.fetch_max(running, SeqCst);
            self.started.send_modify(|n| *n += 1);
            if keys.iter().any(|(_, id)| id.starts_with("slow")) {
                self.permits.acquire().await.expect("open").forget();
            }
            self.running.fetch_sub(1, SeqCst);
            Ok(keys.iter().map(|&(t, id)| ((t.to_owned(), id.to_owned()), Ok(execution(id)))).collect())
        }
    }

    fn id(value: &str) -> EntityId {
        EntityId::parse("id", value).expect("valid id")
    }

    /// Looks `execution` up in a task of its own.
    fn get(lookups: &ArchivedExecutions, execution: &str) -> tokio::task::JoinHandle<Answer> {
        let (lookups, execution) = (lookups.clone(), id(execution));
        tokio::spawn(async move { lookups.get(&id("acme"), &execution).await })
    }

    async fn found(lookup: tokio::task::JoinHandle<Answer>) -> String {
        let answer = tokio::time::timeout(Duration::from_secs(10), lookup).await.expect("answered in time");
        answer.expect("joined").expect("found").expect("there").execution_id
    }

    // Paused time: a timer fires only once every task is idle, so "not answered yet" is exact.
    #[tokio::test(start_paused = true)]
    async fn a_slow_query_does_not_hold_up_the_lookups_that_arrive_after_it() {
        let source = Stalling::new();
        let lookups = ArchivedExecutions::spawn_on(source.clone());
        let slow = get(&lookups, "slow1");
        source.until_started(1).await;
        assert_eq!(found(get(&lookups, "e2")).await, "e2", "answered while the slow query runs");
        assert!(!slow.is_finished());
        source.permits.add_permits(1);
        assert_eq!(found(slow).await, "slow1");
    }

    #[tokio::test(start_paused = true)]
    async fn no_more_than_max_in_flight_queries_run_at_once() {
        let source = Stalling::new();
        let lookups = ArchivedExecutions::spawn_on(source.clone());
        let mut slow = Vec::new();
        for n in 0..MAX_IN_FLIGHT {
            slow.push(get(&lookups, &format!("slow{n}")));
            source.until_started(n + 1).await;
        }
        // Queued, not queried, until one of the running queries ends.
        let waiting = get(&lookups, "e-last");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(*source.started.borrow(), MAX_IN_FLIGHT);
        assert!(!waiting.is_finished());
        source.permits.add_permits(1);
        assert_eq!(found(waiting).await, "e-last");
        source.permits.add_permits(MAX_IN_FLIGHT);
        let mut answered = Vec::new();
        for lookup in slow {
            answered.push(found(lookup).await);
        }
        assert_eq!(answered, (0..MAX_IN_FLIGHT).map(|n| format!("slow{n}")).collect::<Vec<_>>());
        assert_eq!(source.most_running.load(std::sync::atomic::Ordering::SeqCst), MAX_IN_FLIGHT);
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
