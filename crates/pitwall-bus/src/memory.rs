//! The in-process transport: the embedded default of `pitwalld all`, and the bus of unit
//! tests. It keeps the AMQP 0-9-1 semantics the RabbitMQ transport has, so code tested on it
//! behaves the same in the distributed shape:
//!
//! - named queues with topic bindings on the one exchange; declaring is idempotent and adds
//!   bindings, keeping the queue's messages;
//! - a publish puts one copy into every queue with at least one matching binding (once per
//!   queue), and none anywhere if nothing matches;
//! - FIFO per queue; competing consumers on one queue each get distinct messages;
//! - per-consumer prefetch: at most `prefetch` unacked deliveries in flight (0 = unlimited,
//!   as `basic.qos` has it);
//! - ack removes; nack with requeue puts the message back at the head, `redelivered`;
//!   nack without requeue drops it into the queue's dead letters ([`InProcessBus::dead_letters`]);
//! - dropping a [`Consumer`] requeues its unacked deliveries (at the head, in their original
//!   order, `redelivered`); acking or nacking one of them afterwards does nothing;
//! - a delivery that is neither acked nor nacked stays in flight until its consumer is
//!   dropped, as on a RabbitMQ channel.
//!
//! "Durable" here means: for the life of the process (the embedded shape has one process).
//!
//! State lives behind one `std::sync::Mutex`, never held across an `.await` (it must also be
//! taken in `Drop`); consumers wait on a per-queue `tokio::sync::Notify`, woken by publishes,
//! requeues, acks that free a prefetch slot, and [`InProcessBus::close`]. No polling.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Notify;

use crate::topic::{validate_routing_key, Pattern};
use crate::{Acker, Bus, BusError, Consumer, Delivery};

/// The in-process [`Bus`]. Cheap to clone; clones share the same queues.
#[derive(Clone, Default)]
pub struct InProcessBus {
    inner: Arc<Inner>,
}

/// A message dropped by `nack(requeue = false)`, kept for inspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub routing_key: String,
    pub payload: Bytes,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    closed: bool,
    queues: HashMap<String, Queue>,
    /// Source of consumer ids and delivery tags; increasing, never reused.
    next_id: u64,
}

#[derive(Default)]
struct Queue {
    bindings: Vec<Pattern>,
    ready: VecDeque<Message>,
    /// Delivery tag → the delivery in flight.
    unacked: HashMap<u64, InFlight>,
    /// Consumer id → its prefetch and number of deliveries in flight.
    consumers: HashMap<u64, ConsumerSlot>,
    dead_letters: Vec<DeadLetter>,
    notify: Arc<Notify>,
}

#[derive(Clone)]
struct Message {
    routing_key: String,
    payload: Bytes,
    redelivered: bool,
}

struct InFlight {
    consumer: u64,
    message: Message,
}

struct ConsumerSlot {
    prefetch: u16,
    in_flight: usize,
}

impl ConsumerSlot {
    fn has_room(&self) -> bool {
        self.prefetch == 0 || self.in_flight < usize::from(self.prefetch)
    }
}

impl State {
    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn queue(&mut self, name: &str) -> Result<&mut Queue, BusError> {
        self.queues
            .get_mut(name)
            .ok_or_else(|| BusError::NoSuchQueue(name.to_owned()))
    }
}

impl Queue {
    /// Puts messages back at the head, keeping their relative order, marked redelivered.
    fn requeue_front(&mut self, messages: impl DoubleEndedIterator<Item = Message>) {
        for mut message in messages.rev() {
            message.redelivered = true;
            self.ready.push_front(message);
        }
        self.notify.notify_waiters();
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves no half-done update behind (every update is
        // a single push/pop/insert), so the state is usable after poisoning.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for InProcessBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.inner.lock();
        f.debug_struct("InProcessBus")
            .field("closed", &state.closed)
            .field("queues", &state.queues.len())
            .finish()
    }
}

impl InProcessBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Closes the bus: every consumer's `next()` returns `None` (waiting ones wake up), and
    /// declare, publish and consume fail with [`BusError::Closed`]. Idempotent.
    pub fn close(&self) {
        let mut state = self.inner.lock();
        if !state.closed {
            tracing::debug!("in-process bus closed");
        }
        state.closed = true;
        for queue in state.queues.values() {
            queue.notify.notify_waiters();
        }
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.lock().closed
    }

    /// Messages of `queue` dropped by `nack(requeue = false)`, oldest first.
    pub fn dead_letters(&self, queue: &str) -> Result<Vec<DeadLetter>, BusError> {
        Ok(self.inner.lock().queue(queue)?.dead_letters.clone())
    }

    /// Deliveries of `queue` handed to consumers and not yet acked or nacked.
    pub fn unacked_count(&self, queue: &str) -> Result<usize, BusError> {
        Ok(self.inner.lock().queue(queue)?.unacked.len())
    }

    /// Consumers currently attached to `queue`.
    pub fn consumer_count(&self, queue: &str) -> Result<usize, BusError> {
        Ok(self.inner.lock().queue(queue)?.consumers.len())
    }
}

#[async_trait]
impl Bus for InProcessBus {
    async fn declare_queue(&self, queue: &str, bindings: &[String]) -> Result<(), BusError> {
        let patterns = bindings
            .iter()
            .map(|b| Pattern::parse(b))
            .collect::<Result<Vec<_>, _>>()?;
        let mut state = self.inner.lock();
        if state.closed {
            return Err(BusError::Closed);
        }
        let q = state.queues.entry(queue.to_owned()).or_default();
        for pattern in patterns {
            if !q.bindings.contains(&pattern) {
                tracing::debug!(queue, binding = %pattern, "queue bound");
                q.bindings.push(pattern);
            }
        }
        Ok(())
    }

    async fn publish(&self, routing_key: &str, payload: Bytes) -> Result<(), BusError> {
        validate_routing_key(routing_key)?;
        let mut state = self.inner.lock();
        if state.closed {
            return Err(BusError::Closed);
        }
        let mut routed = 0usize;
        for q in state.queues.values_mut() {
            if q.bindings.iter().any(|p| p.matches(routing_key)) {
                q.ready.push_back(Message {
                    routing_key: routing_key.to_owned(),
                    payload: payload.clone(),
                    redelivered: false,
                });
                q.notify.notify_waiters();
                routed += 1;
            }
        }
        if routed == 0 {
            tracing::debug!(routing_key, "message matched no binding and was dropped");
        }
        Ok(())
    }

    async fn consume(&self, queue: &str, prefetch: u16) -> Result<Box<dyn Consumer>, BusError> {
        let mut state = self.inner.lock();
        if state.closed {
            return Err(BusError::Closed);
        }
        let id = state.next_id();
        let q = state.queue(queue)?;
        q.consumers.insert(
            id,
            ConsumerSlot {
                prefetch,
                in_flight: 0,
            },
        );
        Ok(Box::new(MemoryConsumer {
            inner: Arc::clone(&self.inner),
            queue: queue.to_owned(),
            id,
            notify: Arc::clone(&q.notify),
        }))
    }

    async fn queue_depth(&self, queue: &str) -> Result<usize, BusError> {
        Ok(self.inner.lock().queue(queue)?.ready.len())
    }

    async fn close(&self) {
        InProcessBus::close(self);
    }
}

struct MemoryConsumer {
    inner: Arc<Inner>,
    queue: String,
    id: u64,
    notify: Arc<Notify>,
}

impl MemoryConsumer {
    /// Takes the head of the queue if this consumer has room for it. `Err(())` when the bus
    /// is closed.
    fn try_take(&self) -> Result<Option<Delivery>, ()> {
        let mut guard = self.inner.lock();
        let state = &mut *guard;
        if state.closed {
            return Err(());
        }
        // Queues are never deleted, and this consumer's slot lives until it is dropped.
        let Some(q) = state.queues.get_mut(&self.queue) else {
            return Err(());
        };
        let Some(slot) = q.consumers.get_mut(&self.id) else {
            return Err(());
        };
        if !slot.has_room() {
            return Ok(None);
        }
        let Some(message) = q.ready.pop_front() else {
            return Ok(None);
        };
        slot.in_flight += 1;
        state.next_id += 1;
        let tag = state.next_id;
        q.unacked.insert(
            tag,
            InFlight {
                consumer: self.id,
                message: message.clone(),
            },
        );
        Ok(Some(Delivery {
            routing_key: message.routing_key,
            payload: message.payload,
            redelivered: message.redelivered,
            acker: Box::new(MemoryAcker {
                inner: Arc::clone(&self.inner),
                queue: self.queue.clone(),
                tag,
            }),
        }))
    }
}

#[async_trait]
impl Consumer for MemoryConsumer {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            // Register for a wake-up before looking, so a publish between the look and the
            // wait is not missed.
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.try_take() {
                Err(()) => return None,
                Ok(Some(delivery)) => return Some(delivery),
                Ok(None) => notified.await,
            }
        }
    }
}

impl Drop for MemoryConsumer {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        let Some(q) = state.queues.get_mut(&self.queue) else {
            return;
        };
        q.consumers.remove(&self.id);
        let mut tags: Vec<u64> = q
            .unacked
            .iter()
            .filter(|(_, f)| f.consumer == self.id)
            .map(|(tag, _)| *tag)
            .collect();
        if tags.is_empty() {
            return;
        }
        tags.sort_unstable();
        let messages: Vec<Message> = tags
            .iter()
            .filter_map(|tag| q.unacked.remove(tag))
            .map(|f| f.message)
            .collect();
        tracing::debug!(
            queue = %self.queue,
            count = messages.len(),
            "consumer dropped, unacked deliveries requeued"
        );
        q.requeue_front(messages.into_iter());
    }
}

struct MemoryAcker {
    inner: Arc<Inner>,
    queue: String,
    tag: u64,
}

impl MemoryAcker {
    /// Removes the delivery from flight; `None` when it was already settled (its consumer
    /// was dropped and it went back to the queue).
    fn settle(&self, state: &mut State) -> Option<(Message, Arc<Notify>)> {
        let q = state.queues.get_mut(&self.queue)?;
        let InFlight { consumer, message } = q.unacked.remove(&self.tag)?;
        if let Some(slot) = q.consumers.get_mut(&consumer) {
            slot.in_flight = slot.in_flight.saturating_sub(1);
        }
        Some((message, Arc::clone(&q.notify)))
    }
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(&self) -> Result<(), BusError> {
        let mut state = self.inner.lock();
        if let Some((_, notify)) = self.settle(&mut state) {
            // A prefetch slot is free.
            notify.notify_waiters();
        }
        Ok(())
    }

    async fn nack(&self, requeue: bool) -> Result<(), BusError> {
        let mut state = self.inner.lock();
        let Some((message, notify)) = self.settle(&mut state) else {
            return Ok(());
        };
        let Some(q) = state.queues.get_mut(&self.queue) else {
            return Ok(());
        };
        if requeue {
            q.requeue_front(std::iter::once(message));
        } else {
            tracing::debug!(
                queue = %self.queue,
                routing_key = %message.routing_key,
                "message nacked without requeue, dead-lettered"
            );
            q.dead_letters.push(DeadLetter {
                routing_key: message.routing_key,
                payload: message.payload,
            });
            notify.notify_waiters();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::conformance;

    fn bus() -> InProcessBus {
        InProcessBus::new()
    }

    // The transport-independent suite, run against this transport.

    #[tokio::test]
    async fn conformance_publish_reaches_every_matching_queue() {
        conformance::publish_reaches_every_matching_queue(&bus(), "t").await;
    }

    #[tokio::test]
    async fn conformance_unroutable_message_is_dropped() {
        conformance::unroutable_message_is_dropped(&bus(), "t").await;
    }

    #[tokio::test]
    async fn conformance_overlapping_bindings_deliver_once_per_queue() {
        conformance::overlapping_bindings_deliver_once_per_queue(&bus(), "t").await;
    }

    #[tokio::test]
    async fn conformance_queue_is_fifo() {
        conformance::queue_is_fifo(&bus(), "t").await;
    }

    #[tokio::test]
    async fn conformance_competing_consumers_get_distinct_messages() {
        conformance::competing_consumers_get_distinct_messages(&bus(), "t").await;
    }

    #[tokio::test]
    async fn conformance_prefetch_limits_unacked_deliveries() {
        conformance::prefetch_limits_unacked_deliveries(&bus(), "t").await;
    }

    #[tokio::test]
    async fn conformance_waiting_consumer_wakes_on_publish() {
        conformance::waiting_consumer_wakes_on_publish(&bus(), "t").await;
    }

    #[tokio::test]
    async fn conformance_nack_with_requeue_redelivers_first() {
        conformance::nack_with_requeue_redelivers_first(&bus(), "t").await;
    }

    #[tokio::test]
    async fn conformance_nack_without_requeue_drops() {
        conformance::nack_without_requeue_drops(&bus(), "t").await;
    }

    #[tokio::test]
    async fn conformance_dropped_consumer_redelivers_unacked() {
        conformance::dropped_consumer_redelivers_unacked(&bus(), "t").await;
    }

    #[tokio::test]
    async fn conformance_ack_after_consumer_drop_does_not_settle_the_redelivery() {
        conformance::ack_after_consumer_drop_does_not_settle_the_redelivery(&bus(), "t").await;
    }

    #[tokio::test]
    async fn conformance_declare_is_idempotent_and_keeps_messages() {
        conformance::declare_is_idempotent_and_keeps_messages(&bus(), "t").await;
    }

    #[tokio::test]
    async fn conformance_undeclared_queue_is_an_error() {
        conformance::undeclared_queue_is_an_error(&bus(), "t").await;
    }

    #[tokio::test]
    async fn conformance_invalid_patterns_and_keys_are_refused() {
        conformance::invalid_patterns_and_keys_are_refused(&bus(), "t").await;
    }

    #[tokio::test]
    async fn conformance_pitwall_topology_routes_as_specified() {
        conformance::pitwall_topology_routes_as_specified(&bus(), "t").await;
    }

    #[tokio::test]
    async fn conformance_close_ends_consumers() {
        conformance::close_ends_consumers(&bus(), "t").await;
    }

    #[tokio::test]
    async fn conformance_run_all_passes_on_one_bus() {
        conformance::run_all(&bus(), "all").await;
    }

    // Behaviour particular to this transport.

    async fn declared(queue: &str, binding: &str) -> InProcessBus {
        let bus = bus();
        bus.declare_queue(queue, &[binding.to_owned()])
            .await
            .expect("declare");
        bus
    }

    async fn take(consumer: &mut Box<dyn Consumer>) -> Delivery {
        tokio::time::timeout(Duration::from_secs(5), consumer.next())
            .await
            .expect("a delivery in time")
            .expect("bus open")
    }

    #[tokio::test]
    async fn nack_without_requeue_keeps_a_dead_letter() {
        let bus = declared("q", "k.#").await;
        bus.publish("k.1", Bytes::from_static(b"one"))
            .await
            .expect("publish");
        let mut c = bus.consume("q", 1).await.expect("consume");
        take(&mut c).await.nack(false).await.expect("nack");
        assert_eq!(
            bus.dead_letters("q").expect("queue"),
            [DeadLetter {
                routing_key: "k.1".into(),
                payload: Bytes::from_static(b"one"),
            }]
        );
        assert_eq!(bus.queue_depth("q").await.expect("depth"), 0);
        assert_eq!(bus.unacked_count("q").expect("queue"), 0);
    }

    #[tokio::test]
    async fn depth_counts_ready_messages_only() {
        let bus = declared("q", "k").await;
        for _ in 0..3 {
            bus.publish("k", Bytes::new()).await.expect("publish");
        }
        let mut c = bus.consume("q", 0).await.expect("consume");
        let d = take(&mut c).await;
        assert_eq!(bus.queue_depth("q").await.expect("depth"), 2);
        assert_eq!(bus.unacked_count("q").expect("queue"), 1);
        d.ack().await.expect("ack");
        assert_eq!(bus.unacked_count("q").expect("queue"), 0);
    }

    #[tokio::test]
    async fn prefetch_zero_means_unlimited() {
        let bus = declared("q", "k").await;
        for _ in 0..100 {
            bus.publish("k", Bytes::new()).await.expect("publish");
        }
        let mut c = bus.consume("q", 0).await.expect("consume");
        let mut held = Vec::new();
        for _ in 0..100 {
            held.push(take(&mut c).await);
        }
        assert_eq!(bus.unacked_count("q").expect("queue"), 100);
    }

    #[tokio::test]
    async fn dropped_consumer_requeues_in_original_order_ahead_of_the_rest() {
        let bus = declared("q", "k").await;
        for i in 0..4u8 {
            bus.publish("k", Bytes::from(vec![i]))
                .await
                .expect("publish");
        }
        let mut c1 = bus.consume("q", 0).await.expect("consume");
        let d0 = take(&mut c1).await;
        let _d1 = take(&mut c1).await;
        let _d2 = take(&mut c1).await;
        d0.ack().await.expect("ack");
        drop(c1);
        assert_eq!(bus.consumer_count("q").expect("queue"), 0);
        assert_eq!(bus.queue_depth("q").await.expect("depth"), 3);
        let mut c2 = bus.consume("q", 0).await.expect("consume");
        let mut got = Vec::new();
        for _ in 0..3 {
            let d = take(&mut c2).await;
            got.push((d.payload[0], d.redelivered));
        }
        assert_eq!(got, [(1, true), (2, true), (3, false)]);
    }

    #[tokio::test]
    async fn ack_and_nack_after_consumer_drop_return_ok_and_change_nothing() {
        let bus = declared("q", "k").await;
        bus.publish("k", Bytes::new()).await.expect("publish");
        bus.publish("k", Bytes::new()).await.expect("publish");
        let mut c = bus.consume("q", 0).await.expect("consume");
        let a = take(&mut c).await;
        let b = take(&mut c).await;
        drop(c);
        a.ack().await.expect("harmless ack");
        b.nack(false).await.expect("harmless nack");
        assert_eq!(bus.queue_depth("q").await.expect("depth"), 2);
        assert!(bus.dead_letters("q").expect("queue").is_empty());
    }

    #[tokio::test]
    async fn delivery_outliving_a_closed_bus_can_still_be_acked() {
        let bus = declared("q", "k").await;
        bus.publish("k", Bytes::new()).await.expect("publish");
        let mut c = bus.consume("q", 1).await.expect("consume");
        let d = take(&mut c).await;
        bus.close();
        assert!(c.next().await.is_none());
        d.ack().await.expect("ack");
    }

    #[tokio::test]
    async fn close_wakes_a_waiting_consumer_and_refuses_further_use() {
        let bus = declared("q", "k").await;
        let mut c = bus.consume("q", 1).await.expect("consume");
        let waiter = tokio::spawn(async move { c.next().await.is_none() });
        tokio::task::yield_now().await;
        bus.close();
        assert!(bus.is_closed());
        assert!(tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken in time")
            .expect("task"));
        assert!(matches!(
            bus.publish("k", Bytes::new()).await,
            Err(BusError::Closed)
        ));
        assert!(matches!(
            bus.declare_queue("q2", &[]).await,
            Err(BusError::Closed)
        ));
        assert!(matches!(bus.consume("q", 1).await, Err(BusError::Closed)));
        bus.close(); // idempotent
    }

    #[tokio::test]
    async fn clones_share_queues() {
        let bus = declared("q", "k").await;
        let other = bus.clone();
        other.publish("k", Bytes::new()).await.expect("publish");
        assert_eq!(bus.queue_depth("q").await.expect("depth"), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_consumers_and_publishers_lose_and_duplicate_nothing() {
        const PUBLISHERS: u32 = 4;
        const PER_PUBLISHER: u32 = 250;
        const CONSUMERS: usize = 4;
        let bus = declared("q", "k.#").await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut consumers = Vec::new();
        for _ in 0..CONSUMERS {
            let mut c = bus.consume("q", 3).await.expect("consume");
            let tx = tx.clone();
            consumers.push(tokio::spawn(async move {
                while let Some(d) = c.next().await {
                    let n = u32::from_be_bytes(d.payload[..].try_into().expect("4 bytes"));
                    d.ack().await.expect("ack");
                    if tx.send(n).is_err() {
                        break;
                    }
                }
            }));
        }
        drop(tx);
        let mut publishers = Vec::new();
        for p in 0..PUBLISHERS {
            let bus = bus.clone();
            publishers.push(tokio::spawn(async move {
                for i in 0..PER_PUBLISHER {
                    let n = p * PER_PUBLISHER + i;
                    bus.publish("k.x", Bytes::copy_from_slice(&n.to_be_bytes()))
                        .await
                        .expect("publish");
                    tokio::task::yield_now().await;
                }
            }));
        }
        for p in publishers {
            p.await.expect("publisher");
        }
        let total = (PUBLISHERS * PER_PUBLISHER) as usize;
        let mut seen = vec![false; total];
        for _ in 0..total {
            let n = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("all delivered in time")
                .expect("consumers alive");
            let slot = &mut seen[n as usize];
            assert!(!*slot, "message {n} delivered twice");
            *slot = true;
        }
        bus.close();
        for c in consumers {
            c.await.expect("consumer");
        }
        assert_eq!(bus.queue_depth("q").await.expect("depth"), 0);
    }
}
