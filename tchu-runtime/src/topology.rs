//! Declares a service's topology from its subscriptions: the durable topic exchange, the
//! service's durable queue, its dead-letter queue, and exactly one binding per distinct
//! pattern. Bindings the service no longer wants are removed at start-up.
//!
//! AMQP cannot list bindings (that needs the management plugin), so the last declared set is
//! kept as one persistent message in a small durable queue `<service>.tchu.bindings`. Start-up
//! drains it, unbinds what is no longer subscribed, and writes the new set back.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::broker::{Broker, Confirm, QueueSpec, QueueType};
use crate::error::BrokerError;
use crate::message::{Message, Properties};
use crate::topic::Pattern;

/// The names and bindings of one service.
#[derive(Debug, Clone)]
pub(crate) struct Topology {
    pub(crate) exchange: String,
    pub(crate) queue: String,
    pub(crate) queue_type: QueueType,
    pub(crate) patterns: Vec<Pattern>,
}

/// What start-up changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Declared {
    pub(crate) bound: Vec<String>,
    pub(crate) unbound: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct BindingRecord {
    exchange: String,
    patterns: Vec<String>,
}

impl Topology {
    pub(crate) fn dlq(&self) -> String {
        dlq_name(&self.queue)
    }

    pub(crate) fn record_queue(&self) -> String {
        format!("{}.tchu.bindings", self.queue)
    }

    /// Declares everything; idempotent.
    pub(crate) async fn declare(&self, broker: &Broker) -> Result<Declared, BrokerError> {
        broker.declare_exchange(&self.exchange).await?;
        let record_queue = self.record_queue();
        for q in [self.queue.clone(), self.dlq(), record_queue.clone()] {
            broker
                .declare_queue(&QueueSpec::durable(q, self.queue_type))
                .await
                .map_err(|e| e.for_service(&self.queue))?;
        }
        let wanted: BTreeSet<&str> = self.patterns.iter().map(Pattern::as_str).collect();
        for p in &wanted {
            broker.bind(&self.queue, &self.exchange, p).await?;
        }
        // Everything previously recorded, in case several records piled up.
        let mut previous: BTreeSet<(String, String)> = BTreeSet::new();
        while let Some(m) = broker.get(&record_queue).await? {
            match serde_json::from_slice::<BindingRecord>(&m.body) {
                Ok(r) => previous.extend(r.patterns.into_iter().map(|p| (r.exchange.clone(), p))),
                Err(e) => tracing::warn!(error = %e, "ignoring an unreadable binding record"),
            }
        }
        let mut unbound = Vec::new();
        for (exchange, p) in &previous {
            if exchange != &self.exchange || !wanted.contains(p.as_str()) {
                broker.unbind(&self.queue, exchange, p).await?;
                tracing::info!(queue = %self.queue, exchange = %exchange, pattern = %p, "removed stale binding");
                unbound.push(p.clone());
            }
        }
        let record = BindingRecord {
            exchange: self.exchange.clone(),
            patterns: wanted.iter().map(|p| (*p).to_owned()).collect(),
        };
        let body = serde_json::to_vec(&record)
            .map_err(|e| BrokerError::with_source("cannot encode the binding record", e))?;
        let msg = Message {
            routing_key: record_queue.clone(),
            properties: Properties {
                content_type: Some("application/json".to_owned()),
                persistent: true,
                ..Properties::default()
            },
            body,
        };
        if broker.publish("", &msg, true).await? != Confirm::Ack {
            return Err(BrokerError::new(format!(
                "the broker did not store the binding record in `{record_queue}`"
            )));
        }
        Ok(Declared {
            bound: wanted.iter().map(|p| (*p).to_owned()).collect(),
            unbound,
        })
    }
}

/// The dead-letter queue of a service queue.
pub(crate) fn dlq_name(queue: &str) -> String {
    format!("{queue}.dlq")
}
