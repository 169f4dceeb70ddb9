//! The gateway's Tokio runtime: multi-threaded, with the global queue checked every other task.
//!
//! One live event wakes the writer of every connection subscribed to it, from the upstream task,
//! on a worker thread. A worker's own queue holds 256 tasks; the rest of the wake-ups overflow into
//! the runtime's global queue. A worker takes from the global queue only when its own queue is
//! empty, or one task every N polls, N tuned by Tokio to ~200 µs of polls (2 to 127). During a
//! reconnect storm the workers' own queues never empty (every new connection's I/O lands there),
//! so the ~750 writers one event woke came out of the global queue one every N polls: in the
//! fan-out bench's storm (10,000 clients resuming at once beside 1,000 steady ones) the steady
//! connections' worst delivery was 170–270 ms late. Checked every other poll, the global queue
//! drains about as fast as the local one, and live writes wait behind a bounded number of storm
//! tasks: 70–120 ms. Every other poll is the most often Tokio allows without taking
//! the global queue first (which starved the local one: a tail of 400–700 ms in the same bench).

/// Polls between two looks at the global queue.
pub const GLOBAL_QUEUE_INTERVAL: u32 = 2;

/// The runtime's builder: I/O and time enabled, the global queue looked at every
/// [`GLOBAL_QUEUE_INTERVAL`] polls. Worker threads: Tokio's default (one per core available).
pub fn builder() -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().global_queue_interval(GLOBAL_QUEUE_INTERVAL);
    builder
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    /// A task that is always ready again: it wakes itself at every poll, so the worker's own
    /// queue never empties while it runs (what a storm of new connections does).
    struct Busy {
        polls: Arc<AtomicU64>,
        stop: Arc<AtomicBool>,
    }

    impl Future for Busy {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.stop.load(Ordering::Relaxed) {
                return Poll::Ready(());
            }
            self.polls.fetch_add(1, Ordering::Relaxed);
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    /// How many polls of the busy tasks it takes until every one of `writers` tasks, all woken
    /// at once from a task on the worker (as the upstream wakes writers), has run.
    fn busy_polls_until_every_writer_ran(builder: &mut tokio::runtime::Builder, writers: usize) -> u64 {
        let runtime = builder.worker_threads(1).build().expect("runtime");
        let on_the_worker = async move {
            let (polls, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
            let (event, waiting) = (Arc::new(tokio::sync::Notify::new()), Arc::new(AtomicUsize::new(0)));
            let woken: Vec<_> = (0..writers)
                .map(|_| {
                    let (event, waiting, polls) = (event.clone(), waiting.clone(), polls.clone());
                    tokio::spawn(async move {
                        let notified = event.notified();
                        tokio::pin!(notified);
                        notified.as_mut().enable();
                        waiting.fetch_add(1, Ordering::Relaxed);
                        notified.await;
                        polls.load(Ordering::Relaxed)
                    })
                })
                .collect();
            while waiting.load(Ordering::Relaxed) < writers {
                tokio::task::yield_now().await;
            }
            let busy: Vec<_> =
                (0..16).map(|_| tokio::spawn(Busy { polls: polls.clone(), stop: stop.clone() })).collect();
            event.notify_waiters();
            let mut last = 0;
            for writer in woken {
                last = last.max(writer.await.expect("writer"));
            }
            stop.store(true, Ordering::Relaxed);
            for task in busy {
                task.await.expect("busy task");
            }
            last
        };
        runtime.block_on(async move { tokio::spawn(on_the_worker).await.expect("test task") })
    }

    #[test]
    fn writers_woken_together_run_soon_while_the_workers_own_queue_never_empties() {
        const WRITERS: usize = 1_000;
        let polls = busy_polls_until_every_writer_ran(&mut builder(), WRITERS);
        // Checked every other poll, the ~750 writers in the global queue cost ~550 busy polls;
        // with Tokio's tuning (every 127 polls, for tasks this short) ~93,000.
        assert!(polls <= WRITERS as u64, "{polls} polls of the busy tasks before the last writer ran");
        let mut tuned = tokio::runtime::Builder::new_multi_thread();
        tuned.enable_all();
        let untuned = busy_polls_until_every_writer_ran(&mut tuned, WRITERS);
        eprintln!("busy polls until the last writer ran: {polls} (every other poll), {untuned} (Tokio's tuning)");
        assert!(untuned > 10 * WRITERS as u64, "the test tells the difference: {untuned} polls with Tokio's default");
    }
}
