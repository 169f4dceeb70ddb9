//! The replica's replay slots, handed out fairly between tenants.
//!
//! A reconnect storm (a drain, a network blip, one tenant's deploy) queues thousands of resumes
//! for the replica's few replay slots. With one queue in arrival order, a tenant whose 10,000
//! clients came back first would make another tenant's one resume wait for all of them (seconds).
//! Here each tenant waits in its own queue and a freed slot goes to the next tenant in turn
//! (round robin), so that resume waits for one replay per tenant ahead of it at most; a tenant alone
//! still uses every slot.

use runcast_contract::EntityId;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::oneshot;

#[derive(Debug)]
pub struct FairSlots {
    queue: Arc<Mutex<Queue>>,
}

#[derive(Debug, Default)]
struct Queue {
    free: usize,
    /// Tenants with someone waiting, in the order their turn comes.
    turns: VecDeque<EntityId>,
    waiting: HashMap<EntityId, VecDeque<oneshot::Sender<Handover>>>,
}

fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    queue.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FairSlots {
    pub fn new(slots: usize) -> Self {
        Self { queue: Arc::new(Mutex::new(Queue { free: slots, ..Queue::default() })) }
    }

    /// Waits for a slot in `tenant`'s turn; it is given back when the permit is dropped. Dropping
    /// the future while it waits gives up its place (and the slot, if it was just handed over).
    pub async fn acquire(&self, tenant: &EntityId) -> Permit {
        let handed = {
            let mut queue = lock(&self.queue);
            if queue.free > 0 && queue.turns.is_empty() {
                queue.free -= 1;
                return Permit { queue: Some(self.queue.clone()) };
            }
            let (sender, receiver) = oneshot::channel();
            match queue.waiting.get_mut(tenant) {
                Some(waiters) => waiters.push_back(sender),
                None => {
                    queue.waiting.insert(tenant.clone(), VecDeque::from([sender]));
                    queue.turns.push_back(tenant.clone());
                }
            }
            receiver
        };
        match handed.await {
            Ok(mut handover) => Permit { queue: handover.0.take() },
            // The sender is only dropped unsent with the whole queue, which this holds.
            Err(_) => unreachable!("a waiter's sender is sent or dropped with the queue"),
        }
    }

    /// Slots free now.
    #[cfg(test)]
    fn free(&self) -> usize {
        lock(&self.queue).free
    }

    /// One more slot, to the next waiter in turn (a test's way of letting a held-back resume go).
    #[cfg(test)]
    pub(crate) fn add_slot(&self) {
        give_back(&self.queue);
    }
}

/// A slot held; given back (to the next tenant in turn) on drop.
#[derive(Debug)]
pub struct Permit {
    queue: Option<Arc<Mutex<Queue>>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(queue) = self.queue.take() {
            give_back(&queue);
        }
    }
}

/// A slot on its way to a waiter: given back if the waiter is gone before it takes it.
#[derive(Debug)]
struct Handover(Option<Arc<Mutex<Queue>>>);

impl Drop for Handover {
    fn drop(&mut self) {
        if let Some(queue) = self.0.take() {
            give_back(&queue);
        }
    }
}

/// Hands a freed slot to the first waiter of the tenant whose turn it is, else frees it.
fn give_back(shared: &Arc<Mutex<Queue>>) {
    let mut queue = lock(shared);
    while let Some(tenant) = queue.turns.pop_front() {
        let Some(waiters) = queue.waiting.get_mut(&tenant) else { continue };
        let next = waiters.pop_front();
        if waiters.is_empty() {
            queue.waiting.remove(&tenant);
        } else {
            // Its next waiter comes after every other tenant's.
            queue.turns.push_back(tenant);
        }
        let Some(next) = next else { continue };
        match next.send(Handover(Some(shared.clone()))) {
            Ok(()) => return,
            // That waiter gave up: the slot stays in hand for the next one.
            Err(mut unsent) => drop(unsent.0.take()),
        }
    }
    queue.free += 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn tenant(name: &str) -> EntityId {
        EntityId::parse("tenant", name).expect("id")
    }

    /// Starts `acquire` for `tenant` and lets it queue.
    async fn waiter(slots: &Arc<FairSlots>, tenant_name: &str) -> tokio::task::JoinHandle<Permit> {
        let (slots, tenant) = (slots.clone(), tenant(tenant_name));
        let task = tokio::spawn(async move { slots.acquire(&tenant).await });
        tokio::task::yield_now().await;
        task
    }

    async fn within(task: tokio::task::JoinHandle<Permit>) -> Permit {
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("handed a slot").expect("task")
    }

    #[tokio::test]
    async fn a_tenant_alone_uses_every_slot() {
        let slots = Arc::new(FairSlots::new(3));
        let solo = tenant("solo");
        let held: Vec<Permit> = futures::future::join_all((0..3).map(|_| slots.acquire(&solo))).await;
        assert_eq!(slots.free(), 0);
        drop(held);
        assert_eq!(slots.free(), 3, "given back");
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_next_tenant_in_turn_not_to_the_storms_next_waiter() {
        let slots = Arc::new(FairSlots::new(1));
        let held = slots.acquire(&tenant("storm")).await;
        let mut storm = Vec::new();
        for _ in 0..5 {
            storm.push(waiter(&slots, "storm").await);
        }
        let quiet = waiter(&slots, "quiet").await;
        // The storm waited first: its turn comes first, for one of its waiters.
        drop(held);
        let first = within(storm.remove(0)).await;
        drop(first);
        // Then the quiet tenant's, ahead of the storm's four others.
        let quiet = within(quiet).await;
        tokio::task::yield_now().await;
        assert!(storm.iter().all(|task| !task.is_finished()), "the storm's other waiters still wait");
        drop(quiet);
        for task in storm {
            drop(within(task).await);
        }
        assert_eq!(slots.free(), 1);
    }

    #[tokio::test]
    async fn tenants_take_turns() {
        let slots = Arc::new(FairSlots::new(1));
        let held = slots.acquire(&tenant("a")).await;
        let (order_sender, mut order) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for name in ["a", "a", "a", "b", "b", "c"] {
            let (slots, order_sender) = (slots.clone(), order_sender.clone());
            tasks.push(tokio::spawn(async move {
                let permit = slots.acquire(&tenant(name)).await;
                order_sender.send(name).expect("recorded");
                tokio::task::yield_now().await;
                drop(permit);
            }));
            tokio::task::yield_now().await;
        }
        drop(held);
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(5), task).await.expect("done").expect("task");
        }
        let mut served = Vec::new();
        while let Ok(name) = order.try_recv() {
            served.push(name);
        }
        assert_eq!(served, ["a", "b", "c", "a", "b", "a"]);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_keeps_no_slot() {
        let slots = Arc::new(FairSlots::new(1));
        let held = slots.acquire(&tenant("a")).await;
        let gone = waiter(&slots, "b").await;
        let next = waiter(&slots, "c").await;
        gone.abort();
        let _ = gone.await;
        drop(held);
        drop(within(next).await);
        assert_eq!(slots.free(), 1, "no slot lost to the waiter that left");
        // A waiter dropped just after being handed the slot gives it back too.
        let held = slots.acquire(&tenant("a")).await;
        let b = tenant("b");
        let mut handed = Box::pin(slots.acquire(&b));
        assert!(futures::poll!(handed.as_mut()).is_pending());
        drop(held);
        drop(handed);
        assert_eq!(slots.free(), 1);
    }
}
