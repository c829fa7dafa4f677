//! Pitwall's message bus: the [`Bus`] trait, shaped after AMQP 0-9-1 topic exchanges
//! (ARCHITECTURE §3), and its transports.
//!
//! All messages go through the one topic exchange [`EXCHANGE`]. Queues are declared with
//! binding patterns (`*` = exactly one word, `#` = zero or more words, words separated by
//! `.`); a published message is copied into every queue with a matching binding. Consumers
//! receive [`Delivery`]s and must [`Delivery::ack`] them after the effect is durable;
//! a delivery that is nacked with requeue, or whose consumer goes away before acking, is
//! delivered again with `redelivered = true`. Handlers are therefore written to be
//! idempotent.
//!
//! This crate knows nothing of protobuf or of Pitwall's messages: payloads are bytes.
//! Transports: [`memory::InProcessBus`] (the embedded default). RabbitMQ comes with the
//! distributed shape and implements the same trait; every transport must pass the suite in
//! `conformance` (feature `testing`). Matching rules and key validation: [`topic`].
#![forbid(unsafe_code)]

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

#[cfg(any(test, feature = "testing"))]
pub mod conformance;
pub mod memory;
pub mod topic;

pub use memory::InProcessBus;

/// The one exchange of Pitwall, type topic, durable.
pub const EXCHANGE: &str = "pitwall.orchestration";

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("queue {0:?} does not exist: declare it before consuming")]
    NoSuchQueue(String),
    #[error("binding pattern {pattern:?} is invalid: {why}")]
    BadPattern { pattern: String, why: String },
    #[error("routing key {key:?} is invalid: {why}")]
    BadRoutingKey { key: String, why: String },
    #[error("the bus is closed")]
    Closed,
    #[error("bus transport error: {0}")]
    Transport(String),
}

/// How a consumer gives a delivery back.
#[async_trait]
pub trait Acker: Send + Sync {
    async fn ack(&self) -> Result<(), BusError>;
    async fn nack(&self, requeue: bool) -> Result<(), BusError>;
}

/// One message handed to a consumer.
pub struct Delivery {
    pub routing_key: String,
    pub payload: Bytes,
    /// True when this message was delivered before and not acked.
    pub redelivered: bool,
    pub acker: Box<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("routing_key", &self.routing_key)
            .field("len", &self.payload.len())
            .field("redelivered", &self.redelivered)
            .finish()
    }
}

impl Delivery {
    /// The effect of this message is durable: never deliver it again.
    pub async fn ack(self) -> Result<(), BusError> {
        self.acker.ack().await
    }

    /// Settle the delivery by the outcome of handling it: ack on success; on failure (the
    /// effect could not be made durable yet) log `what`, wait `pause` so a persistent fault
    /// does not spin, and requeue it for another try.
    pub async fn settle<E: std::fmt::Display>(
        self,
        outcome: Result<(), E>,
        what: &str,
        pause: Duration,
    ) {
        match outcome {
            Ok(()) => {
                let _ = self.ack().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, routing_key = %self.routing_key, "{what}; it will be redelivered");
                tokio::time::sleep(pause).await;
                let _ = self.nack(true).await;
            }
        }
    }

    /// Give the message back; with `requeue` it is delivered again (to any consumer of the
    /// queue), otherwise it is dropped (dead-lettered where the transport has a DLX).
    pub async fn nack(self, requeue: bool) -> Result<(), BusError> {
        self.acker.nack(requeue).await
    }
}

/// A stream of deliveries from one queue. Dropping it returns every unacked delivery to the
/// queue for redelivery.
#[async_trait]
pub trait Consumer: Send {
    /// The next delivery; `None` once the bus is closed. Cancel-safe: dropping the future
    /// (e.g. in `tokio::select!` or a timeout) loses no message.
    async fn next(&mut self) -> Option<Delivery>;
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Declare a durable queue and bind it to [`EXCHANGE`] with each pattern. Idempotent:
    /// declaring an existing queue adds any new bindings and keeps its messages.
    async fn declare_queue(&self, queue: &str, bindings: &[String]) -> Result<(), BusError>;

    /// Publish to [`EXCHANGE`]; returns once the bus has taken the message (publisher
    /// confirm). A message that matches no binding is dropped, as AMQP does.
    async fn publish(&self, routing_key: &str, payload: Bytes) -> Result<(), BusError>;

    /// Start consuming a declared queue with at most `prefetch` unacked deliveries in flight.
    async fn consume(&self, queue: &str, prefetch: u16) -> Result<Box<dyn Consumer>, BusError>;

    /// Messages ready (not in flight) in a queue, for tests and metrics.
    async fn queue_depth(&self, queue: &str) -> Result<usize, BusError>;

    /// Shut the bus down: every consumer's `next()` returns `None`, and later declares,
    /// publishes and consumes fail with [`BusError::Closed`]. Unacked deliveries go back to
    /// their queues. Idempotent.
    async fn close(&self);
}

/// Back-off used by consumers after a transport error before trying again.
pub const RETRY_BACKOFF: Duration = Duration::from_millis(200);
