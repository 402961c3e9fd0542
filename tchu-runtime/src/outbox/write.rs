//! Writing events to the outbox inside the caller's transaction: [`PublishIn`] for typed
//! events (validated first, like `publish()`) and [`publish_in`] for any payload.

use std::future::Future;

use serde::Serialize;
use sqlx::PgConnection;

use super::OutboxError;
use super::schema::{LOCK_CLASS, SLOTS, key_lock, slot_of};
use crate::client::MessageId;
use crate::error::PublishError;
use crate::event::Event;
use crate::topic::check_topic;

/// One event to write: topic, JSON payload, and optional ordering key.
#[derive(Debug, Clone)]
pub struct OutboxMessage<'a> {
    topic: &'a str,
    json: Vec<u8>,
    key: Option<&'a str>,
}

impl<'a> OutboxMessage<'a> {
    /// A typed event, validated and serialized now.
    ///
    /// # Errors
    /// [`PublishError::Invalid`] or [`PublishError::Encode`].
    pub fn event<E: Event>(event: &E) -> Result<OutboxMessage<'static>, OutboxError> {
        validator::Validate::validate(event).map_err(|errors| PublishError::Invalid {
            topic: E::TOPIC.to_owned(),
            errors,
        })?;
        let json = serde_json::to_vec(event).map_err(|source| PublishError::Encode {
            topic: E::TOPIC.to_owned(),
            source,
        })?;
        OutboxMessage::from_json(E::TOPIC, json)
    }

    /// Any serializable payload under `topic`.
    ///
    /// # Errors
    /// A bad topic, or a payload that does not serialize to a JSON object.
    pub fn untyped<T: Serialize + ?Sized>(
        topic: &'a str,
        payload: &T,
    ) -> Result<OutboxMessage<'a>, OutboxError> {
        check_topic(topic).map_err(PublishError::from)?;
        let json = serde_json::to_vec(payload).map_err(|source| PublishError::Encode {
            topic: topic.to_owned(),
            source,
        })?;
        OutboxMessage::from_json(topic, json)
    }

    fn from_json(topic: &'a str, json: Vec<u8>) -> Result<OutboxMessage<'a>, OutboxError> {
        if json.first() != Some(&b'{') {
            return Err(PublishError::NotAnObject {
                topic: topic.to_owned(),
            }
            .into());
        }
        Ok(OutboxMessage {
            topic,
            json,
            key: None,
        })
    }

    /// Sets the ordering key (e.g. the aggregate id): events with the same key are published
    /// in the order their transactions committed.
    ///
    /// # Errors
    /// An empty key or one over 512 bytes.
    pub fn key(mut self, key: &'a str) -> Result<Self, OutboxError> {
        if key.is_empty() || key.len() > 512 {
            return Err(OutboxError::BadKey { len: key.len() });
        }
        self.key = Some(key);
        Ok(self)
    }

    /// Writes it to `tchu_outbox` on `conn` (the caller's transaction): nothing is sent now.
    /// The relay publishes it after the transaction commits; a rollback discards it.
    ///
    /// With an ordering key, this takes a transaction-scoped advisory lock on the key, so
    /// transactions writing the same key commit one after the other and their rows' ids
    /// follow their commit order (that is how the relay keeps commit order per key).
    ///
    /// # Errors
    /// The database failed.
    pub async fn write(self, conn: &mut PgConnection) -> Result<MessageId, OutboxError> {
        let id = MessageId::new();
        let headers = trace_headers();
        let json = String::from_utf8_lossy(&self.json);
        let (slot, lock) = match self.key {
            Some(k) => (slot_of(k), Some(key_lock(k))),
            None => (random_slot(), None),
        };
        // The lock is taken in the row's SELECT, so before `nextval` gives the row its id.
        sqlx::query(
            "INSERT INTO tchu_outbox (message_id, topic, payload, headers, ordering_key, slot)
             SELECT $1::uuid, $2, $3::jsonb, $4::jsonb, $5, $6
             FROM (SELECT CASE WHEN $8::int IS NULL THEN NULL
                               ELSE pg_advisory_xact_lock($7, $8) END) AS lock",
        )
        .bind(id.as_str())
        .bind(self.topic)
        .bind(json.as_ref())
        .bind(headers)
        .bind(self.key)
        .bind(slot)
        .bind(LOCK_CLASS)
        .bind(lock)
        .execute(conn)
        .await
        .map_err(OutboxError::db("insert into tchu_outbox"))?;
        Ok(id)
    }
}

/// The W3C trace context of the current span as JSON headers, so the relay's publish continues
/// the trace of the code that wrote the event.
fn trace_headers() -> String {
    let mut h = crate::message::Headers::new();
    if let Some((_, child)) = crate::trace::outgoing() {
        child.write_headers(&mut h);
    }
    let map: serde_json::Map<String, serde_json::Value> = h
        .iter()
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.into())))
        .collect();
    serde_json::Value::Object(map).to_string()
}

fn random_slot() -> i16 {
    let b = uuid::Uuid::new_v4().as_u128();
    i16::try_from(b % u128::from(SLOTS.unsigned_abs())).unwrap_or(0)
}

/// `event.publish_in(&mut tx)`: writes a typed event to the outbox in the caller's transaction.
/// Implemented for every `#[tchu::event]` type; bring it into scope with
/// `use tchu::outbox::PublishIn as _;`.
///
/// ```no_run
/// # #[derive(serde::Serialize, serde::Deserialize, validator::Validate)]
/// # struct OrderPlaced { id: i64 }
/// # impl tchu_runtime::Event for OrderPlaced { const TOPIC: &'static str = "orders.placed"; type Response = (); }
/// use tchu_runtime::outbox::PublishIn as _;
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// let mut tx = pool.begin().await?;
/// sqlx::query("INSERT INTO orders (id) VALUES (42)").execute(&mut *tx).await?;
/// OrderPlaced { id: 42 }.publish_in_keyed(&mut tx, "order-42").await?;
/// tx.commit().await?; // published from here on; a rollback publishes nothing
/// # Ok(()) }
/// ```
pub trait PublishIn: Event {
    /// Validates the event, then writes it to the outbox on `conn` (see
    /// [`OutboxMessage::write`]). Returns the id the message will be published with.
    ///
    /// # Errors
    /// [`OutboxError::Refused`] (nothing written) or a database failure.
    fn publish_in(
        &self,
        conn: &mut PgConnection,
    ) -> impl Future<Output = Result<MessageId, OutboxError>> + Send;

    /// [`publish_in`](PublishIn::publish_in) with an ordering key: events with the same key
    /// are published in commit order.
    ///
    /// # Errors
    /// As `publish_in`, and [`OutboxError::BadKey`].
    fn publish_in_keyed(
        &self,
        conn: &mut PgConnection,
        key: &str,
    ) -> impl Future<Output = Result<MessageId, OutboxError>> + Send;
}

impl<E: Event> PublishIn for E {
    fn publish_in(
        &self,
        conn: &mut PgConnection,
    ) -> impl Future<Output = Result<MessageId, OutboxError>> + Send {
        let msg = OutboxMessage::event(self);
        async move { msg?.write(conn).await }
    }

    fn publish_in_keyed(
        &self,
        conn: &mut PgConnection,
        key: &str,
    ) -> impl Future<Output = Result<MessageId, OutboxError>> + Send {
        let msg = OutboxMessage::event(self).and_then(|m| m.key(key));
        async move { msg?.write(conn).await }
    }
}

/// Writes any serializable payload under `topic` to the outbox on `conn`, with an optional
/// ordering key (tchu-tchu's untyped `publish`, in a transaction).
///
/// # Errors
/// A bad topic or payload (nothing written), a bad key, or a database failure.
pub async fn publish_in<T: Serialize + ?Sized>(
    conn: &mut PgConnection,
    topic: &str,
    payload: &T,
    key: Option<&str>,
) -> Result<MessageId, OutboxError> {
    let mut m = OutboxMessage::untyped(topic, payload)?;
    if let Some(k) = key {
        m = m.key(k)?;
    }
    m.write(conn).await
}
