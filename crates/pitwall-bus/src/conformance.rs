//! The behaviour every [`Bus`] transport must have, as a suite of async checks that panic on
//! failure. Each transport runs it in its own tests: [`InProcessBus`](crate::memory) in
//! `memory.rs`, the RabbitMQ transport against a real broker.
//!
//! Every check takes the bus and a namespace `ns` (one word: letters, digits, `-`, `_`) that
//! prefixes all its queue names and routing keys, so checks can share one broker and one
//! exchange without seeing each other's messages. Use a fresh namespace per run on a
//! persistent broker (queues are durable).
//!
//! Compiled for this crate's tests and with the `testing` feature.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;

use crate::{Bus, BusError, Consumer, Delivery};

/// How long a check waits for something that must happen.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a check waits to be convinced that something does not happen.
pub const QUIET: Duration = Duration::from_millis(100);

type BoxConsumer = Box<dyn Consumer>;

fn name(ns: &str, rest: &str) -> String {
    assert!(
        !ns.is_empty() && !ns.contains(['.', '*', '#']),
        "namespace {ns:?} must be one word"
    );
    format!("{ns}.{rest}")
}

async fn declare(bus: &dyn Bus, queue: &str, bindings: &[String]) {
    bus.declare_queue(queue, bindings)
        .await
        .unwrap_or_else(|e| panic!("declaring {queue}: {e}"));
}

async fn publish(bus: &dyn Bus, key: &str, body: &str) {
    bus.publish(key, Bytes::copy_from_slice(body.as_bytes()))
        .await
        .unwrap_or_else(|e| panic!("publishing to {key}: {e}"));
}

async fn consume(bus: &dyn Bus, queue: &str, prefetch: u16) -> BoxConsumer {
    bus.consume(queue, prefetch)
        .await
        .unwrap_or_else(|e| panic!("consuming {queue}: {e}"))
}

/// The next delivery, within [`WAIT`].
pub async fn expect_delivery(consumer: &mut BoxConsumer, what: &str) -> Delivery {
    match tokio::time::timeout(WAIT, consumer.next()).await {
        Ok(Some(d)) => d,
        Ok(None) => panic!("{what}: the consumer ended (bus closed)"),
        Err(_) => panic!("{what}: no delivery within {WAIT:?}"),
    }
}

/// No delivery within [`QUIET`].
pub async fn expect_quiet(consumer: &mut BoxConsumer, what: &str) {
    match tokio::time::timeout(QUIET, consumer.next()).await {
        Ok(Some(d)) => panic!("{what}: unexpected delivery {d:?} ({:?})", body(&d)),
        Ok(None) => panic!("{what}: the consumer ended (bus closed)"),
        Err(_) => {}
    }
}

/// Waits until `queue` holds exactly `depth` ready messages (transports may settle
/// asynchronously, e.g. a broker requeueing a closed channel's deliveries).
pub async fn wait_for_depth(bus: &dyn Bus, queue: &str, depth: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = bus
            .queue_depth(queue)
            .await
            .unwrap_or_else(|e| panic!("depth of {queue}: {e}"));
        if now == depth {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue {queue} has {now} ready messages, expected {depth}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn body(d: &Delivery) -> String {
    String::from_utf8_lossy(&d.payload).into_owned()
}

async fn ack(d: Delivery) {
    d.ack().await.unwrap_or_else(|e| panic!("ack: {e}"));
}

/// A message goes to every queue with a matching binding, and to no other.
pub async fn publish_reaches_every_matching_queue(bus: &dyn Bus, ns: &str) {
    let (qa, qb, qc) = (name(ns, "qa"), name(ns, "qb"), name(ns, "qc"));
    declare(bus, &qa, &[name(ns, "a.#")]).await;
    declare(bus, &qb, &[name(ns, "*.x")]).await;
    declare(bus, &qc, &[name(ns, "c")]).await;
    let key = name(ns, "a.x");
    publish(bus, &key, "m").await;
    wait_for_depth(bus, &qa, 1).await;
    wait_for_depth(bus, &qb, 1).await;
    wait_for_depth(bus, &qc, 0).await;
    for q in [&qa, &qb] {
        let mut c = consume(bus, q, 1).await;
        let d = expect_delivery(&mut c, q).await;
        assert_eq!(d.routing_key, key);
        assert_eq!(body(&d), "m");
        assert!(!d.redelivered);
        ack(d).await;
    }
}

/// A message no binding matches is accepted and dropped.
pub async fn unroutable_message_is_dropped(bus: &dyn Bus, ns: &str) {
    let q = name(ns, "q");
    declare(bus, &q, &[name(ns, "a")]).await;
    publish(bus, &name(ns, "b"), "unroutable").await;
    publish(bus, &name(ns, "a"), "routed").await;
    let mut c = consume(bus, &q, 10).await;
    let d = expect_delivery(&mut c, "routed message").await;
    assert_eq!(body(&d), "routed");
    ack(d).await;
    expect_quiet(&mut c, "after the routed message").await;
}

/// A queue with several matching bindings gets one copy.
pub async fn overlapping_bindings_deliver_once_per_queue(bus: &dyn Bus, ns: &str) {
    let q = name(ns, "q");
    declare(bus, &q, &[name(ns, "#"), name(ns, "a"), name(ns, "*")]).await;
    publish(bus, &name(ns, "a"), "once").await;
    let mut c = consume(bus, &q, 10).await;
    ack(expect_delivery(&mut c, "the copy").await).await;
    expect_quiet(&mut c, "a second copy").await;
}

/// One consumer receives a queue's messages in publish order.
pub async fn queue_is_fifo(bus: &dyn Bus, ns: &str) {
    let q = name(ns, "q");
    declare(bus, &q, &[name(ns, "k.*")]).await;
    for i in 0..20 {
        publish(bus, &name(ns, &format!("k.m{i}")), &i.to_string()).await;
    }
    let mut c = consume(bus, &q, 5).await;
    for i in 0..20 {
        let d = expect_delivery(&mut c, "fifo").await;
        assert_eq!(body(&d), i.to_string());
        assert_eq!(d.routing_key, name(ns, &format!("k.m{i}")));
        ack(d).await;
    }
}

/// Consumers of one queue share its messages: each message goes to exactly one of them,
/// and a consumer at its prefetch limit does not hold the others up.
pub async fn competing_consumers_get_distinct_messages(bus: &dyn Bus, ns: &str) {
    const N: usize = 10;
    let q = name(ns, "q");
    declare(bus, &q, &[name(ns, "k")]).await;
    for i in 0..N {
        publish(bus, &name(ns, "k"), &i.to_string()).await;
    }
    let mut c1 = consume(bus, &q, 1).await;
    let mut c2 = consume(bus, &q, 1).await;
    let mut seen = HashSet::new();
    // Both hold one unacked delivery at the same time.
    let d1 = expect_delivery(&mut c1, "first consumer").await;
    let d2 = expect_delivery(&mut c2, "second consumer").await;
    assert_ne!(body(&d1), body(&d2));
    for d in [d1, d2] {
        assert!(seen.insert(body(&d)));
        ack(d).await;
    }
    while seen.len() < N {
        for c in [&mut c1, &mut c2] {
            if seen.len() < N {
                let d = expect_delivery(c, "remaining messages").await;
                assert!(seen.insert(body(&d)), "{} delivered twice", body(&d));
                ack(d).await;
            }
        }
    }
    expect_quiet(&mut c1, "first consumer after all").await;
    expect_quiet(&mut c2, "second consumer after all").await;
}

/// A consumer never has more than `prefetch` unacked deliveries; an ack makes room.
pub async fn prefetch_limits_unacked_deliveries(bus: &dyn Bus, ns: &str) {
    let q = name(ns, "q");
    declare(bus, &q, &[name(ns, "k")]).await;
    for i in 0..3 {
        publish(bus, &name(ns, "k"), &i.to_string()).await;
    }
    let mut c = consume(bus, &q, 2).await;
    let d0 = expect_delivery(&mut c, "first").await;
    let d1 = expect_delivery(&mut c, "second").await;
    expect_quiet(&mut c, "a third delivery beyond prefetch 2").await;
    wait_for_depth(bus, &q, 1).await;
    assert_eq!((body(&d0), body(&d1)), ("0".into(), "1".into()));
    ack(d0).await;
    let d2 = expect_delivery(&mut c, "third, after an ack").await;
    assert_eq!(body(&d2), "2");
    ack(d1).await;
    ack(d2).await;
}

/// A consumer waiting on an empty queue gets a message published later.
pub async fn waiting_consumer_wakes_on_publish(bus: &dyn Bus, ns: &str) {
    let q = name(ns, "q");
    declare(bus, &q, &[name(ns, "k")]).await;
    let mut c = consume(bus, &q, 1).await;
    let waiter = tokio::spawn(async move {
        let d = expect_delivery(&mut c, "late message").await;
        let got = body(&d);
        ack(d).await;
        got
    });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    publish(bus, &name(ns, "k"), "late").await;
    let got = tokio::time::timeout(WAIT, waiter)
        .await
        .expect("the waiting consumer wakes")
        .expect("consumer task");
    assert_eq!(got, "late");
}

/// nack(requeue) gives the message back at the head of the queue, marked redelivered.
pub async fn nack_with_requeue_redelivers_first(bus: &dyn Bus, ns: &str) {
    let q = name(ns, "q");
    declare(bus, &q, &[name(ns, "k")]).await;
    publish(bus, &name(ns, "k"), "a").await;
    publish(bus, &name(ns, "k"), "b").await;
    let mut c = consume(bus, &q, 1).await;
    let d = expect_delivery(&mut c, "a").await;
    assert_eq!(body(&d), "a");
    assert!(!d.redelivered);
    d.nack(true).await.expect("nack");
    let d = expect_delivery(&mut c, "a again").await;
    assert_eq!(body(&d), "a");
    assert!(d.redelivered, "a requeued message is marked redelivered");
    ack(d).await;
    let d = expect_delivery(&mut c, "b").await;
    assert_eq!(body(&d), "b");
    assert!(!d.redelivered);
    ack(d).await;
}

/// nack without requeue removes the message for good.
pub async fn nack_without_requeue_drops(bus: &dyn Bus, ns: &str) {
    let q = name(ns, "q");
    declare(bus, &q, &[name(ns, "k")]).await;
    publish(bus, &name(ns, "k"), "a").await;
    publish(bus, &name(ns, "k"), "b").await;
    let mut c = consume(bus, &q, 1).await;
    let d = expect_delivery(&mut c, "a").await;
    assert_eq!(body(&d), "a");
    d.nack(false).await.expect("nack");
    let d = expect_delivery(&mut c, "b").await;
    assert_eq!(body(&d), "b");
    ack(d).await;
    expect_quiet(&mut c, "a after nack without requeue").await;
    wait_for_depth(bus, &q, 0).await;
}

/// Deliveries a consumer did not ack go to the next consumer, marked redelivered.
pub async fn dropped_consumer_redelivers_unacked(bus: &dyn Bus, ns: &str) {
    let q = name(ns, "q");
    declare(bus, &q, &[name(ns, "k")]).await;
    publish(bus, &name(ns, "k"), "a").await;
    publish(bus, &name(ns, "k"), "b").await;
    let mut c1 = consume(bus, &q, 1).await;
    let d = expect_delivery(&mut c1, "a").await;
    assert_eq!(body(&d), "a");
    drop(d);
    drop(c1);
    let mut c2 = consume(bus, &q, 1).await;
    let d = expect_delivery(&mut c2, "a after the drop").await;
    assert_eq!(body(&d), "a");
    assert!(d.redelivered, "an unacked delivery comes back redelivered");
    ack(d).await;
    let d = expect_delivery(&mut c2, "b").await;
    assert_eq!(body(&d), "b");
    assert!(!d.redelivered);
    ack(d).await;
}

/// Acking a delivery whose consumer is gone (whatever the transport returns) does not
/// settle the message's redelivery to another consumer.
pub async fn ack_after_consumer_drop_does_not_settle_the_redelivery(bus: &dyn Bus, ns: &str) {
    let q = name(ns, "q");
    declare(bus, &q, &[name(ns, "k")]).await;
    publish(bus, &name(ns, "k"), "a").await;
    let mut c1 = consume(bus, &q, 1).await;
    let stale = expect_delivery(&mut c1, "a").await;
    drop(c1);
    let mut c2 = consume(bus, &q, 1).await;
    let again = expect_delivery(&mut c2, "a redelivered").await;
    // The transport may report an error (a closed channel); it must not panic or settle.
    let _ = stale.ack().await;
    drop(again);
    drop(c2);
    let mut c3 = consume(bus, &q, 1).await;
    let d = expect_delivery(&mut c3, "a once more: the stale ack settled nothing").await;
    assert_eq!(body(&d), "a");
    assert!(d.redelivered);
    ack(d).await;
}

/// Declaring again keeps the queue's messages and bindings and adds new bindings.
pub async fn declare_is_idempotent_and_keeps_messages(bus: &dyn Bus, ns: &str) {
    let q = name(ns, "q");
    declare(bus, &q, &[name(ns, "one")]).await;
    publish(bus, &name(ns, "one"), "1").await;
    wait_for_depth(bus, &q, 1).await;
    declare(bus, &q, &[name(ns, "one"), name(ns, "two")]).await;
    wait_for_depth(bus, &q, 1).await;
    publish(bus, &name(ns, "two"), "2").await;
    declare(bus, &q, &[]).await;
    publish(bus, &name(ns, "one"), "3").await;
    wait_for_depth(bus, &q, 3).await;
    let mut c = consume(bus, &q, 0).await;
    for expected in ["1", "2", "3"] {
        let d = expect_delivery(&mut c, expected).await;
        assert_eq!(body(&d), expected);
        ack(d).await;
    }
}

/// Consuming or measuring a queue that was never declared fails with `NoSuchQueue`.
pub async fn undeclared_queue_is_an_error(bus: &dyn Bus, ns: &str) {
    let q = name(ns, "never-declared");
    assert!(matches!(
        bus.consume(&q, 1).await,
        Err(BusError::NoSuchQueue(ref n)) if *n == q
    ));
    assert!(matches!(
        bus.queue_depth(&q).await,
        Err(BusError::NoSuchQueue(ref n)) if *n == q
    ));
}

/// Malformed binding patterns and routing keys are refused before anything happens.
pub async fn invalid_patterns_and_keys_are_refused(bus: &dyn Bus, ns: &str) {
    let q = name(ns, "q");
    for bad in [name(ns, "a*"), name(ns, "a..b"), String::new()] {
        assert!(
            matches!(
                bus.declare_queue(&q, std::slice::from_ref(&bad)).await,
                Err(BusError::BadPattern { .. })
            ),
            "pattern {bad:?}"
        );
    }
    for bad in [name(ns, "#"), name(ns, "a.*"), String::new(), name(ns, "")] {
        assert!(
            matches!(
                bus.publish(&bad, Bytes::new()).await,
                Err(BusError::BadRoutingKey { .. })
            ),
            "key {bad:?}"
        );
    }
}

/// The queues and bindings of ARCHITECTURE §3 (prefixed by `ns`) route each key where the
/// contract says.
pub async fn pitwall_topology_routes_as_specified(bus: &dyn Bus, ns: &str) {
    let o = |rest: &str| name(ns, &format!("orchestrator.{rest}"));
    let queues: [(String, Vec<String>); 6] = [
        (o("commands.h1"), vec![o("h1.#")]),
        (o("commands.h2"), vec![o("h2.#")]),
        (o("vm.status.web"), vec![o("vm.status.#")]),
        (
            o("vm.status.terminator.running.h1"),
            vec![o("vm.status.RUNNING.h1")],
        ),
        (
            o("vm.status.terminator.stopped.h1"),
            vec![o("vm.status.STOPPED.h1")],
        ),
        (
            o("control.hosts"),
            vec![o("image.status.#"), o("host.heartbeat.#")],
        ),
    ];
    for (q, bindings) in &queues {
        declare(bus, q, bindings).await;
    }
    let keys = [
        "h1.vm.create",
        "h2.vm.stop",
        "h1.image.import",
        "vm.status.RUNNING.h1",
        "vm.status.STOPPED.h2",
        "vm.status.CREATING.h1",
        "image.status.h1",
        "host.heartbeat.h2",
    ];
    for key in keys {
        publish(bus, &o(key), key).await;
    }
    let expected: [&[&str]; 6] = [
        &["h1.vm.create", "h1.image.import"],
        &["h2.vm.stop"],
        &[
            "vm.status.RUNNING.h1",
            "vm.status.STOPPED.h2",
            "vm.status.CREATING.h1",
        ],
        &["vm.status.RUNNING.h1"],
        &[],
        &["image.status.h1", "host.heartbeat.h2"],
    ];
    for ((q, _), want) in queues.iter().zip(expected) {
        wait_for_depth(bus, q, want.len()).await;
        let mut c = consume(bus, q, 0).await;
        for key in want {
            let d = expect_delivery(&mut c, q).await;
            assert_eq!((q.as_str(), body(&d).as_str()), (q.as_str(), *key));
            assert_eq!(d.routing_key, o(key));
            ack(d).await;
        }
        wait_for_depth(bus, q, 0).await;
    }
}

/// Closing the bus ends every consumer (a waiting one too) and refuses publishing.
/// Closes `bus`: run it last, or on a bus of its own.
pub async fn close_ends_consumers(bus: &dyn Bus, ns: &str) {
    let q = name(ns, "q");
    declare(bus, &q, &[name(ns, "k")]).await;
    let mut c = consume(bus, &q, 1).await;
    let waiter = tokio::spawn(async move { c.next().await.map(|d| d.routing_key) });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    bus.close().await;
    let ended = tokio::time::timeout(WAIT, waiter)
        .await
        .expect("a waiting consumer ends when the bus closes")
        .expect("consumer task");
    assert_eq!(ended, None);
    assert!(matches!(
        bus.publish(&name(ns, "k"), Bytes::new()).await,
        Err(BusError::Closed)
    ));
}

/// Every check above except [`close_ends_consumers`], each in its own sub-namespace of `ns`.
pub async fn run_all(bus: &dyn Bus, ns: &str) {
    let sub = |check: &str| format!("{ns}_{check}");
    publish_reaches_every_matching_queue(bus, &sub("routing")).await;
    unroutable_message_is_dropped(bus, &sub("unroutable")).await;
    overlapping_bindings_deliver_once_per_queue(bus, &sub("overlap")).await;
    queue_is_fifo(bus, &sub("fifo")).await;
    competing_consumers_get_distinct_messages(bus, &sub("competing")).await;
    prefetch_limits_unacked_deliveries(bus, &sub("prefetch")).await;
    waiting_consumer_wakes_on_publish(bus, &sub("wake")).await;
    nack_with_requeue_redelivers_first(bus, &sub("requeue")).await;
    nack_without_requeue_drops(bus, &sub("drop")).await;
    dropped_consumer_redelivers_unacked(bus, &sub("redeliver")).await;
    ack_after_consumer_drop_does_not_settle_the_redelivery(bus, &sub("stale")).await;
    declare_is_idempotent_and_keeps_messages(bus, &sub("declare")).await;
    undeclared_queue_is_an_error(bus, &sub("undeclared")).await;
    invalid_patterns_and_keys_are_refused(bus, &sub("invalid")).await;
    pitwall_topology_routes_as_specified(bus, &sub("topology")).await;
}
