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
//!
//! The parts, each testable alone:
//! - [`Ledger`]: the state machine. It is told which delivery finished and how, and says what
//!   to send ([`Action`]); it never touches a broker. Its cost per settle is constant however
//!   many deliveries pile up behind a slow one (a ring indexed by sequence number, and a list
//!   of the deliveries waiting to be acked alone: no map lookups, no rescans).
//! - [`AckSink`]: who carries the actions out ([`BrokerSink`] in production, a recorder in the
//!   tests).
//! - [`SettleGuard`]: one per delivery. Settling it reports the verdict; dropping it without
//!   one (a panic, an aborted task, a forgotten path) requeues the delivery, so no code path
//!   can leave a delivery unsettled.

use std::collections::VecDeque;
use std::future::Future;
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

/// One frame to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action<T> {
    /// Ack this delivery (and with `multiple`, every earlier unsettled one).
    Ack { token: T, multiple: bool },
    /// Nack this delivery with requeue.
    Requeue(T),
}

/// Carries out the ledger's actions, in order.
pub(crate) trait AckSink: Send + 'static {
    /// What identifies one delivery to the sink (an [`Acker`] in production).
    type Token: Send + 'static;
    /// Sends one action; returns when it is written (or given up).
    fn send(&mut self, action: Action<Self::Token>) -> impl Future<Output = ()> + Send;
}

/// One slot of the ring: a delivery between the head (the oldest unsettled) and the newest
/// finished one.
#[derive(Debug)]
enum Slot<T> {
    /// Not finished yet.
    Running,
    /// Finished, waiting for the deliveries before it.
    Finished(Settle, T),
    /// Already acked on its own (it finished behind a slow delivery).
    AckedAlone,
}

/// The ack state machine of one consumer: deliveries are numbered 0, 1, 2, ... in arrival
/// order; [`Ledger::finish`] records one verdict and pushes the frames to send.
#[derive(Debug)]
pub(crate) struct Ledger<T> {
    /// The sequence number of `slots[0]`: the oldest delivery not yet settled.
    head: u64,
    slots: VecDeque<Slot<T>>,
    /// Sequence numbers of `Finished(Ack, _)` slots behind an unfinished head, not yet acked.
    waiting: Vec<u64>,
    /// The last delivery of the contiguous finished prefix, not yet acked, and how many
    /// deliveries its `multiple` ack will cover.
    pending: Option<T>,
    pending_n: usize,
    /// Slots touched so far: the unit of work the tests count.
    work: u64,
}

impl<T> Default for Ledger<T> {
    fn default() -> Self {
        Ledger {
            head: 0,
            slots: VecDeque::new(),
            waiting: Vec::new(),
            pending: None,
            pending_n: 0,
            work: 0,
        }
    }
}

impl<T> Ledger<T> {
    /// Records that delivery `seq` finished with `settle`; pushes the frames this makes ready.
    /// `more_coming` says whether other verdicts are already queued (then the batch may grow).
    pub(crate) fn finish(
        &mut self,
        seq: u64,
        settle: Settle,
        token: T,
        more_coming: bool,
        out: &mut Vec<Action<T>>,
    ) {
        let Some(offset) = seq
            .checked_sub(self.head)
            .and_then(|o| usize::try_from(o).ok())
        else {
            // Already settled (cannot happen: each guard reports once); ignore it.
            return;
        };
        while self.slots.len() <= offset {
            self.work += 1;
            self.slots.push_back(Slot::Running);
        }
        self.work += 1;
        let Some(slot) = self.slots.get_mut(offset) else {
            return;
        };
        *slot = Slot::Finished(settle, token);
        if offset > 0 && settle == Settle::Ack {
            self.waiting.push(seq);
        }
        // Advance over the contiguous finished prefix.
        while matches!(
            self.slots.front(),
            Some(Slot::Finished(..) | Slot::AckedAlone)
        ) {
            self.work += 1;
            let Some(front) = self.slots.pop_front() else {
                break;
            };
            self.head += 1;
            match front {
                Slot::Finished(Settle::Ack, token) => {
                    self.pending = Some(token);
                    self.pending_n += 1;
                }
                Slot::Finished(Settle::Requeue, token) => {
                    self.flush(out);
                    out.push(Action::Requeue(token));
                }
                Slot::AckedAlone | Slot::Running => {}
            }
        }
        if self.slots.is_empty() {
            // Nothing is behind the head any more: every waiting one was settled in order.
            self.waiting.clear();
        } else if self.waiting.len() > 2 * HEAD_OF_LINE {
            // Drop the ones settled in order since (amortised: at most `slots.len()` stay, and
            // that is under `HEAD_OF_LINE` here, else `waiting` is drained below).
            self.work += self.waiting.len() as u64;
            let head = self.head;
            self.waiting.retain(|&s| s >= head);
        }
        if self.pending_n >= BATCH || !more_coming {
            self.flush(out);
        }
        if self.slots.len() > HEAD_OF_LINE {
            // A slow delivery blocks the head: ack the finished ones behind it alone, so that
            // the prefetch window keeps moving. Each one enters `waiting` once.
            for seq in self.waiting.drain(..) {
                self.work += 1;
                let Some(slot) = seq
                    .checked_sub(self.head)
                    .and_then(|i| usize::try_from(i).ok())
                    .and_then(|i| self.slots.get_mut(i))
                else {
                    continue;
                };
                if let Slot::Finished(Settle::Ack, _) = slot
                    && let Slot::Finished(_, token) = std::mem::replace(slot, Slot::AckedAlone)
                {
                    out.push(Action::Ack {
                        token,
                        multiple: false,
                    });
                }
            }
        }
    }

    fn flush(&mut self, out: &mut Vec<Action<T>>) {
        if let Some(token) = self.pending.take() {
            out.push(Action::Ack {
                token,
                multiple: self.pending_n > 1,
            });
        }
        self.pending_n = 0;
    }

    /// Every sender is gone (shutdown, or the consumer replaced): settles what is left, each
    /// on its own (the ones still running are not there: their guards requeued them, or their
    /// channel closes and the broker redelivers them).
    pub(crate) fn close(mut self, out: &mut Vec<Action<T>>) {
        self.flush(out);
        for slot in self.slots {
            self.work += 1;
            match slot {
                Slot::Finished(Settle::Ack, token) => out.push(Action::Ack {
                    token,
                    multiple: false,
                }),
                Slot::Finished(Settle::Requeue, token) => out.push(Action::Requeue(token)),
                Slot::AckedAlone | Slot::Running => {}
            }
        }
    }

    /// Deliveries between the head and the newest finished one (tests).
    #[cfg(test)]
    fn behind(&self) -> usize {
        self.slots.len()
    }
}

/// A verdict on its way to the settler.
type Report<T> = (u64, Settle, T);

/// The sending side: one per consumer; deliveries are numbered in arrival order.
#[derive(Debug)]
pub(crate) struct Settler<T = Acker> {
    next_seq: u64,
    tx: mpsc::UnboundedSender<Report<T>>,
}

impl Settler<Acker> {
    /// Starts the settling task on the broker. Both brokers acknowledge with `multiple`;
    /// `batched` false sends every ack on its own.
    pub(crate) fn start(batched: bool) -> (Settler<Acker>, tokio::task::JoinHandle<()>) {
        Settler::start_with(BrokerSink { batched })
    }
}

impl<T: Send + 'static> Settler<T> {
    /// Starts the settling task with its sink.
    pub(crate) fn start_with<S: AckSink<Token = T>>(
        sink: S,
    ) -> (Settler<T>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(rx, sink));
        (Settler { next_seq: 0, tx }, task)
    }

    /// The guard of the next delivery (call once per delivery, in arrival order). Its token
    /// (the acker) comes with the verdict, so it stays with the code that received it.
    pub(crate) fn guard(&mut self, token: T) -> SettleGuard<T> {
        let seq = self.next_seq;
        self.next_seq += 1;
        SettleGuard {
            seq,
            tx: self.tx.clone(),
            token: Some(token),
        }
    }
}

/// The obligation to settle one delivery. [`SettleGuard::settle`] reports the verdict; a
/// guard dropped without one requeues its delivery (tokio's `OwnedSemaphorePermit` pattern).
#[derive(Debug)]
pub(crate) struct SettleGuard<T = Acker> {
    seq: u64,
    tx: mpsc::UnboundedSender<Report<T>>,
    token: Option<T>,
}

impl<T> SettleGuard<T> {
    /// Reports the verdict.
    pub(crate) fn settle(mut self, settle: Settle) {
        self.report(settle);
    }

    fn report(&mut self, settle: Settle) {
        if let Some(token) = self.token.take() {
            // If the settler is gone the consumer was replaced: the broker redelivers.
            let _ = self.tx.send((self.seq, settle, token));
        }
    }
}

impl<T> Drop for SettleGuard<T> {
    fn drop(&mut self) {
        if self.token.is_some() {
            tracing::warn!(
                seq = self.seq,
                "a delivery ended without a verdict (a panic or a cancelled task); requeueing it"
            );
            self.report(Settle::Requeue);
        }
    }
}

async fn run<S: AckSink>(mut rx: mpsc::UnboundedReceiver<Report<S::Token>>, mut sink: S) {
    let mut ledger = Ledger::default();
    let mut out = Vec::new();
    while let Some((seq, settle, token)) = rx.recv().await {
        ledger.finish(seq, settle, token, !rx.is_empty(), &mut out);
        for action in out.drain(..) {
            sink.send(action).await;
        }
    }
    ledger.close(&mut out);
    for action in out.drain(..) {
        sink.send(action).await;
    }
}

/// Settles on the broker, each frame awaited with a deadline.
#[derive(Debug)]
pub(crate) struct BrokerSink {
    batched: bool,
}

impl AckSink for BrokerSink {
    type Token = Acker;

    async fn send(&mut self, action: Action<Acker>) {
        let (what, result) = match action {
            Action::Ack { token, multiple } => (
                "ack",
                tokio::time::timeout(SETTLE_TIMEOUT, token.ack_in_order(multiple && self.batched))
                    .await,
            ),
            Action::Requeue(token) => (
                "nack",
                tokio::time::timeout(SETTLE_TIMEOUT, token.nack(true)).await,
            ),
        };
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "{what} failed; the broker will redeliver"),
            Err(_) => tracing::warn!("no answer to an {what}; the broker will redeliver"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use Action::{Ack, Requeue};
    use Settle::Requeue as R;

    /// Feeds `(seq, settle, more_coming)` and returns the frames, tokens being the seqs.
    fn feed(ledger: &mut Ledger<u64>, steps: &[(u64, Settle, bool)]) -> Vec<Action<u64>> {
        let mut out = Vec::new();
        for &(seq, settle, more) in steps {
            ledger.finish(seq, settle, seq, more, &mut out);
        }
        out
    }

    const A: Settle = Settle::Ack;

    fn ack(token: u64, multiple: bool) -> Action<u64> {
        Ack { token, multiple }
    }

    #[test]
    fn in_order_alone_is_acked_at_once() {
        let mut l = Ledger::default();
        assert_eq!(
            feed(&mut l, &[(0, A, false), (1, A, false)]),
            [ack(0, false), ack(1, false)]
        );
    }

    #[test]
    fn a_burst_is_one_multiple_ack() {
        let mut l = Ledger::default();
        let steps: Vec<_> = (0..10).map(|s| (s, A, s < 9)).collect();
        assert_eq!(feed(&mut l, &steps), [ack(9, true)]);
    }

    #[test]
    fn batches_are_capped() {
        let mut l = Ledger::default();
        let steps: Vec<_> = (0..130).map(|s| (s, A, true)).collect();
        assert_eq!(feed(&mut l, &steps), [ack(63, true), ack(127, true)]);
        let mut out = Vec::new();
        l.close(&mut out);
        assert_eq!(out, [ack(129, true)]);
    }

    #[test]
    fn a_gap_waits_for_the_head() {
        let mut l = Ledger::default();
        // 1 and 2 finish before 0: nothing is sent until 0 does, then one frame covers all.
        assert_eq!(feed(&mut l, &[(1, A, false), (2, A, false)]), []);
        assert_eq!(l.behind(), 3);
        assert_eq!(feed(&mut l, &[(0, A, false)]), [ack(2, true)]);
        assert_eq!(l.behind(), 0);
    }

    #[test]
    fn a_requeue_inside_a_batch_splits_it() {
        let mut l = Ledger::default();
        let out = feed(
            &mut l,
            &[
                (0, A, true),
                (1, A, true),
                (2, R, true),
                (3, A, true),
                (4, A, false),
            ],
        );
        // The acks before the nack are flushed first (a `multiple` ack after the nack must
        // not cover it), then the nack alone, then the rest.
        assert_eq!(out, [ack(1, true), Requeue(2), ack(4, true)]);
    }

    #[test]
    fn a_requeue_behind_a_gap_is_sent_in_order() {
        let mut l = Ledger::default();
        assert_eq!(feed(&mut l, &[(1, R, false), (2, A, false)]), []);
        assert_eq!(
            feed(&mut l, &[(0, A, false)]),
            [ack(0, false), Requeue(1), ack(2, false)]
        );
    }

    #[test]
    fn head_of_line_blocking_acks_the_rest_alone() {
        let mut l = Ledger::default();
        // 0 hangs; 1..=63 wait; the 64th behind it releases them all, one by one.
        let steps: Vec<_> = (1..HEAD_OF_LINE as u64).map(|s| (s, A, false)).collect();
        assert_eq!(feed(&mut l, &steps), []);
        let out = feed(&mut l, &[(HEAD_OF_LINE as u64, A, false)]);
        let want: Vec<_> = (1..=HEAD_OF_LINE as u64).map(|s| ack(s, false)).collect();
        assert_eq!(out, want);
        // Later ones are acked alone at once while the head still blocks.
        assert_eq!(feed(&mut l, &[(65, A, false)]), [ack(65, false)]);
        // A requeue behind the head still waits for its turn (nacks go in order).
        assert_eq!(feed(&mut l, &[(66, R, false)]), []);
        // When 0 finishes, the acked-alone ones are skipped: only 0 and the nack are sent,
        // and no `multiple` ack covers an already acked delivery.
        assert_eq!(feed(&mut l, &[(0, A, false)]), [ack(0, false), Requeue(66)]);
        assert_eq!(l.behind(), 0);
        // Then back to batching.
        assert_eq!(
            feed(&mut l, &[(67, A, true), (68, A, false)]),
            [ack(68, true)]
        );
    }

    #[test]
    fn shutdown_flushes_what_finished() {
        let mut l = Ledger::default();
        let mut out = feed(
            &mut l,
            &[(0, A, true), (1, A, true), (3, A, true), (4, R, true)],
        );
        assert_eq!(out, []);
        l.close(&mut out);
        // 0..=1 in one frame; 2 never finished (its guard requeues it); 3 and 4 alone.
        assert_eq!(out, [ack(1, true), ack(3, false), Requeue(4)]);
    }

    /// Cost per settle, counted in slots touched: 20,000 deliveries finish behind one that
    /// hangs, then it finishes. The work stays a small constant per delivery (no rescans of the
    /// deliveries piled up behind the head; the first release rescanned all of them on every
    /// settle, about n²/2 steps here).
    #[test]
    fn cost_per_settle_is_constant_as_deliveries_pile_up() {
        for n in [1_000u64, 20_000] {
            let mut l = Ledger::default();
            let mut out = Vec::new();
            for seq in 1..=n {
                l.finish(seq, A, seq, false, &mut out);
            }
            l.finish(0, A, 0, false, &mut out);
            assert_eq!(out.len() as u64, n + 1, "every delivery acked exactly once");
            let per_settle = l.work as f64 / (n + 1) as f64;
            eprintln!(
                "n = {n}: {} slot touches, {per_settle:.2} per settle",
                l.work
            );
            assert!(per_settle <= 5.0, "{per_settle} per settle at n = {n}");
        }
        // Deliveries finishing pairwise out of order, the head never far behind: the list of
        // waiting ones is pruned, not left to grow, at a constant cost per settle.
        let mut l = Ledger::default();
        let mut out = Vec::new();
        let n = 100_000u64;
        for pair in 0..n / 2 {
            l.finish(2 * pair + 1, A, 0, true, &mut out);
            l.finish(2 * pair, A, 0, true, &mut out);
        }
        assert!(
            l.waiting.len() <= 2 * HEAD_OF_LINE + 1,
            "{}",
            l.waiting.len()
        );
        let per_settle = l.work as f64 / n as f64;
        eprintln!("pairs: {} slot touches, {per_settle:.2} per settle", l.work);
        assert!(per_settle <= 6.0, "{per_settle} per settle");
    }

    /// The recorder sink: the async path end to end, guards included.
    #[derive(Debug)]
    struct Recorder(mpsc::UnboundedSender<Action<u64>>);

    impl AckSink for Recorder {
        type Token = u64;
        async fn send(&mut self, action: Action<u64>) {
            let _ = self.0.send(action);
        }
    }

    #[tokio::test]
    async fn a_dropped_guard_requeues_and_a_settled_one_does_not() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (mut settler, task) = Settler::start_with(Recorder(tx));
        let g0 = settler.guard(0);
        let g1 = settler.guard(1);
        let g2 = settler.guard(2);
        // A task that panics with its guard: the guard's Drop requeues during the unwind.
        let panicked = tokio::spawn(async move {
            let _g = g1;
            panic!("handler exploded");
        })
        .await;
        assert!(panicked.is_err_and(|e| e.is_panic()));
        g0.settle(Settle::Ack);
        drop(g2); // a forgotten path
        drop(settler);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("settler ends")
            .expect("settler ok");
        let mut got = Vec::new();
        while let Ok(a) = rx.try_recv() {
            got.push(a);
        }
        assert_eq!(got, [ack(0, false), Requeue(1), Requeue(2)]);
    }
}
