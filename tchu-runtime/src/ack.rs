//! Settling deliveries in batches. Handlers finish out of order, but an AMQP `basic.ack` with
//! `multiple` acknowledges every delivery up to its tag, so the settler acks only the
//! contiguous prefix of finished deliveries: one frame for many deliveries under load, and at
//! once when nothing else is waiting. A nack (requeue) is always sent on its own. When many
//! deliveries finished behind a slow one, they are acked one by one so that the prefetch
//! window does not stall behind it.
//!
//! Every ack and nack is awaited (written to the socket) before the next is sent: lapin runs
//! each as its own task, and a `multiple` ack overtaken by a single ack of a delivery it
//! covers makes the broker close the channel.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::broker::Acker;

/// What to do with a delivery once processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    Ack,
    Requeue,
}

/// Most deliveries one `multiple` ack covers.
const BATCH: usize = 64;
/// Finished deliveries waiting behind an unfinished one before they are acked singly.
const HEAD_OF_LINE: usize = 64;
/// The longest an ack or nack may take (a channel of a lost connection may never answer).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// The sending side: one per consumer; deliveries are numbered in arrival order.
#[derive(Debug)]
pub(crate) struct Settler {
    next_seq: u64,
    tx: mpsc::UnboundedSender<(u64, Settle, Acker)>,
}

impl Settler {
    /// Starts the settling task. `batched` is false for brokers without multiple-ack.
    pub(crate) fn start(batched: bool) -> (Settler, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(rx, batched));
        (Settler { next_seq: 0, tx }, task)
    }

    /// The number of the next delivery (call once per delivery, in arrival order).
    pub(crate) fn next_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// A handle for a delivery's task.
    pub(crate) fn handle(&self) -> SettleHandle {
        SettleHandle(self.tx.clone())
    }
}

/// Reports one delivery's settlement to the settler.
#[derive(Debug, Clone)]
pub(crate) struct SettleHandle(mpsc::UnboundedSender<(u64, Settle, Acker)>);

impl SettleHandle {
    pub(crate) fn settle(&self, seq: u64, settle: Settle, acker: Acker) {
        // If the settler is gone the consumer was replaced: the broker redelivers.
        let _ = self.0.send((seq, settle, acker));
    }
}

enum Done {
    Finished(Settle, Acker),
    /// Already acked on its own (it finished behind a slow delivery).
    AckedAlone,
}

async fn run(mut rx: mpsc::UnboundedReceiver<(u64, Settle, Acker)>, batched: bool) {
    let mut next: u64 = 0;
    let mut done: BTreeMap<u64, Done> = BTreeMap::new();
    let mut pending: Option<Acker> = None;
    let mut pending_n = 0usize;
    while let Some((seq, settle, acker)) = rx.recv().await {
        done.insert(seq, Done::Finished(settle, acker));
        while let Some(d) = done.remove(&next) {
            next += 1;
            match d {
                Done::Finished(Settle::Ack, acker) if batched => {
                    pending = Some(acker);
                    pending_n += 1;
                }
                Done::Finished(Settle::Ack, acker) => ack(&acker, false).await,
                Done::Finished(Settle::Requeue, acker) => {
                    flush(&mut pending, &mut pending_n).await;
                    nack(&acker).await;
                }
                Done::AckedAlone => {}
            }
        }
        if pending_n >= BATCH || rx.is_empty() {
            flush(&mut pending, &mut pending_n).await;
        }
        if done.len() >= HEAD_OF_LINE {
            for d in done.values_mut() {
                if let Done::Finished(Settle::Ack, acker) = d {
                    ack(acker, false).await;
                    *d = Done::AckedAlone;
                }
            }
        }
    }
    // Every sender is gone (shutdown or consumer replaced): settle what is left.
    flush(&mut pending, &mut pending_n).await;
    for (_, d) in done {
        match d {
            Done::Finished(Settle::Ack, acker) => ack(&acker, false).await,
            Done::Finished(Settle::Requeue, acker) => nack(&acker).await,
            Done::AckedAlone => {}
        }
    }
}

async fn flush(pending: &mut Option<Acker>, n: &mut usize) {
    if let Some(acker) = pending.take() {
        ack(&acker, *n > 1).await;
    }
    *n = 0;
}

async fn ack(acker: &Acker, multiple: bool) {
    match tokio::time::timeout(SETTLE_TIMEOUT, acker.ack_in_order(multiple)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "ack failed; the broker will redeliver"),
        Err(_) => tracing::warn!("no answer to an ack; the broker will redeliver"),
    }
}

async fn nack(acker: &Acker) {
    match tokio::time::timeout(SETTLE_TIMEOUT, acker.nack(true)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "nack failed; the broker will redeliver"),
        Err(_) => tracing::warn!("no answer to a nack; the broker will redeliver"),
    }
}
