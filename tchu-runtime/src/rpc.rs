//! RPC over direct reply-to: one reply consumer per client multiplexes every in-flight call by
//! correlation id. Replies are decoded and routed on the connection's reply consumer task (no
//! channel hop, no task of their own), and so are returned requests (see
//! [`Broker::publish_request`]). A reply whose call is gone (timed out, or a second responder)
//! is dropped, and the pending table only holds calls that are still waiting.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::oneshot;

use crate::broker::{Broker, ReplyEvent, ReplySink};
use crate::error::BrokerError;
use crate::wire::{DecodeError, Reply};

/// A call's answer, decoded by the reply consumer.
#[derive(Debug)]
pub(crate) enum Answer {
    /// The reply, or why it could not be read.
    Reply(Result<Reply, DecodeError>),
    /// The broker returned the request: nobody consumes its topic.
    NoRoute,
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Answer>>>>;

/// The reply side of a client.
#[derive(Debug)]
pub(crate) struct Rpc {
    reply_to: String,
    pending: Pending,
}

/// Removes its call from the pending table when dropped (reply, timeout or cancellation).
#[derive(Debug)]
pub(crate) struct PendingCall {
    id: String,
    pending: Pending,
    pub(crate) reply: oneshot::Receiver<Answer>,
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&self.id);
        }
    }
}

impl Rpc {
    /// Starts the reply consumer.
    pub(crate) async fn start(broker: &Broker) -> Result<Rpc, BrokerError> {
        let pending: Pending = Arc::default();
        let table = Arc::downgrade(&pending);
        let reply_to = broker
            .reply_consumer(ReplySink::new(move |e| route(&table, e)))
            .await?;
        Ok(Rpc { reply_to, pending })
    }

    /// The `reply_to` address of this client.
    pub(crate) fn reply_to(&self) -> &str {
        &self.reply_to
    }

    /// Registers a call; the returned guard receives the reply.
    pub(crate) fn register(&self, id: &str) -> PendingCall {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(id.to_owned(), tx);
        }
        PendingCall {
            id: id.to_owned(),
            pending: Arc::clone(&self.pending),
            reply: rx,
        }
    }

    /// Number of calls waiting for a reply.
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.lock().map(|p| p.len()).unwrap_or_default()
    }
}

/// Hands one reply or returned request to its pending call; `false` once the client is gone.
fn route(pending: &Weak<Mutex<HashMap<String, oneshot::Sender<Answer>>>>, e: ReplyEvent) -> bool {
    let Some(pending) = pending.upgrade() else {
        return false;
    };
    let (id, answer) = match e {
        ReplyEvent::Reply(mut msg) => {
            let Some(id) = msg.properties.correlation_id.take() else {
                tracing::debug!("reply without correlation id dropped");
                return true;
            };
            // Decoded here, the body parsed once. A Celery worker with `task_track_started` (or
            // a retrying task) sends STARTED/RETRY states before the result: not the answer,
            // keep waiting.
            let Some(answer) = crate::wire::decode_final_reply(&msg) else {
                tracing::debug!(correlation_id = %id, "interim Celery reply skipped");
                return true;
            };
            (id, Answer::Reply(answer))
        }
        ReplyEvent::Returned { correlation_id } => (correlation_id, Answer::NoRoute),
    };
    let tx = pending.lock().ok().and_then(|mut p| p.remove(&id));
    match tx {
        Some(tx) => {
            let _ = tx.send(answer);
        }
        None => tracing::debug!(correlation_id = %id, "late or duplicate reply dropped"),
    }
    true
}
