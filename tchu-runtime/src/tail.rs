//! Watching live traffic: [`Client::tail`] binds a temporary queue to the exchange and streams
//! a copy of every matching message, decoded whatever its wire format (`tchu tail`).

use futures_util::Stream;

use crate::broker::QueueSpec;
use crate::client::Client;
use crate::error::BrokerError;
use crate::message::Message;
use crate::topic::Pattern;
use crate::wire::{self, DecodeError, Decoded};

/// How many copies the broker sends ahead of the reader.
const TAIL_PREFETCH: u16 = 64;

/// One message seen by [`Client::tail`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TailedEvent {
    /// The routing key it was published with.
    pub routing_key: String,
    /// The message as received.
    pub message: Message,
    /// The decoded event (Celery or native format), or why it could not be decoded.
    pub decoded: Result<Decoded, DecodeError>,
}

impl Client {
    /// Watches the exchange: declares a new exclusive, auto-delete queue
    /// (`tchu.tail.<uuid>`), binds it with `pattern`, and streams a copy of every message
    /// published after this returns that matches (events and RPC requests alike). Services'
    /// queues are not touched: they get their messages as usual. Each copy is acknowledged as
    /// it is read. The queue goes away when the stream is dropped or the connection closes.
    ///
    /// The stream ends when the connection closes; a broker error is an `Err` item.
    ///
    /// # Errors
    /// The queue cannot be declared, bound or consumed.
    pub async fn tail(
        &self,
        pattern: &Pattern,
    ) -> Result<impl Stream<Item = Result<TailedEvent, BrokerError>> + Send + 'static, BrokerError>
    {
        let queue = format!("tchu.tail.{}", uuid::Uuid::new_v4());
        let broker = self.broker();
        broker.declare_queue(&QueueSpec::temporary(&queue)).await?;
        broker
            .bind(&queue, &self.config().exchange, pattern.as_str())
            .await?;
        let consumer = broker.consume(&queue, TAIL_PREFETCH).await?;
        let limits = wire::Limits::new(self.config().max_body, self.config().max_headers);
        Ok(futures_util::stream::unfold(
            consumer,
            move |mut consumer| async move {
                let item = match consumer.next().await? {
                    Ok(d) => match d.acker.ack().await {
                        Ok(()) => Ok(TailedEvent {
                            routing_key: d.message.routing_key.clone(),
                            decoded: wire::decode(&d.message, limits),
                            message: d.message,
                        }),
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                };
                Some((item, consumer))
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::broker::memory::MemoryBroker;
    use crate::config::Config;
    use crate::wire::Kind;

    #[tokio::test]
    async fn tail_sees_matching_events_in_both_formats() {
        let broker = MemoryBroker::new();
        let client = Client::connect_memory(Config::memory(), &broker)
            .await
            .unwrap();
        let mut native = Config::memory();
        native.format = crate::wire::WireFormat::Native;
        let native = Client::connect_memory(native, &broker).await.unwrap();
        let mut full = Config::memory();
        full.celery_encoding = crate::wire::CeleryEncoding::Full;
        let full = Client::connect_memory(full, &broker).await.unwrap();

        let pattern = Pattern::new("user.*").unwrap();
        let tail = client.tail(&pattern).await.unwrap();
        let mut tail = Box::pin(tail);
        client
            .publish("user.created", &serde_json::json!({ "id": 1 }))
            .await
            .unwrap();
        client
            .publish("order.placed", &serde_json::json!({ "id": 2 }))
            .await
            .unwrap();
        native
            .publish("user.deleted", &serde_json::json!({ "id": 3 }))
            .await
            .unwrap();
        full.publish("user.renamed", &serde_json::json!({ "id": 4 }))
            .await
            .unwrap();

        let a = tail.next().await.unwrap().unwrap();
        assert_eq!(a.routing_key, "user.created");
        let d = a.decoded.unwrap();
        assert_eq!(d.event["id"], 1);
        assert_eq!(d.kind, Kind::Event);
        assert_eq!(d.format, crate::wire::WireFormat::Celery);
        let b = tail.next().await.unwrap().unwrap();
        let d = b.decoded.unwrap();
        assert_eq!(
            (d.topic.as_str(), d.format),
            ("user.deleted", crate::wire::WireFormat::Native)
        );
        // Lean (the default, `a`) and full Celery messages read alike.
        let h = &a.message.properties.headers;
        assert!(h.contains_key("task") && h.contains_key("id"), "{h:?}");
        assert!(!h.contains_key("argsrepr"), "{h:?}");
        let c = tail.next().await.unwrap().unwrap();
        assert!(c.message.properties.headers.contains_key("argsrepr"));
        let d = c.decoded.unwrap();
        assert_eq!(
            (d.topic.as_str(), d.format, &d.event),
            (
                "user.renamed",
                crate::wire::WireFormat::Celery,
                &serde_json::json!({ "id": 4 })
            )
        );
        drop(tail);
        // The queue was auto-deleted with its consumer: nothing routes `user.x` any more.
        let msg = wire::encode(
            crate::wire::WireFormat::Native,
            "user.x",
            b"{}",
            "id",
            false,
        );
        let confirm = client.send("user.x", msg, true).await.unwrap();
        assert_eq!(confirm, crate::broker::Confirm::Returned);
    }
}
