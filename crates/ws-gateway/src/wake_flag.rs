//! A wake-up that is a flag and one task's waker: set by whoever has work for the task, taken by
//! the task when it looks. Cheaper than a `Notify` (which wakes a waiter under a lock) where one
//! task waits, and a [`Wake`] itself, so a part of a task can be polled with it to learn whether
//! that part was woken. Set once per frame queued and per connection woken: the fan-out's hot path.

use futures::task::AtomicWaker;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

#[derive(Debug, Default)]
pub(crate) struct WakeFlag {
    set: AtomicBool,
    task: AtomicWaker,
}

impl WakeFlag {
    /// Already set: the first look takes it.
    pub(crate) fn raised() -> Self {
        Self { set: AtomicBool::new(true), task: AtomicWaker::new() }
    }

    /// Sets the flag and wakes the task registered last.
    pub(crate) fn set(&self) {
        self.set.store(true, Ordering::Release);
        self.task.wake();
    }

    /// Whether it was set since the last take; clears it.
    pub(crate) fn take(&self) -> bool {
        self.set.swap(false, Ordering::AcqRel)
    }

    /// The task to wake at the next [`Self::set`].
    pub(crate) fn register(&self, task: &Waker) {
        self.task.register(task);
    }

    /// Ready once set (and clears it); else registers `cx`'s task.
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.take() {
            return Poll::Ready(());
        }
        self.register(cx.waker());
        // Set between the first look and the registration: its wake-up may have missed us.
        if self.take() { Poll::Ready(()) } else { Poll::Pending }
    }
}

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.set();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.set();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its wake-ups.
    struct Counting(AtomicUsize);

    impl Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_set_is_taken_once_and_wakes_the_task_that_waits() {
        let flag = WakeFlag::default();
        let task = Arc::new(Counting(AtomicUsize::new(0)));
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(flag.poll_take(&mut cx).is_pending(), "not set yet: registers");
        flag.set();
        assert_eq!(task.0.load(Ordering::Relaxed), 1, "the waiting task is woken");
        assert!(flag.poll_take(&mut cx).is_ready());
        assert!(!flag.take(), "taken once");
        assert!(WakeFlag::raised().take(), "raised: the first look takes it");
        // As a waker of its own: waking it sets it.
        let own = Arc::new(WakeFlag::default());
        Waker::from(own.clone()).wake_by_ref();
        assert!(own.take());
    }
}
