//! The health of a running service: connected, and consuming. A leaf below the app and the
//! metrics exporter, which both read it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::client::Client;
use crate::dispatch::Stats;

/// Whether a service is connected and consuming, from [`Running::health`](crate::Running::health).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// The broker connection is up.
    pub connected: bool,
    /// The consume loop holds a live consumer (false before start, while reconnecting, and
    /// from the moment a shutdown is requested).
    pub consuming: bool,
    /// The broker refused the service's last retry or dead-letter copies several times in a
    /// row (a deleted wait queue that cannot be declared again, a full disk): the deliveries
    /// they were for are requeued with a growing delay until it accepts them again.
    pub degraded: bool,
    has_consumer: bool,
}

impl Health {
    /// Connected, and consuming unless the service is publish-only. `/healthz` and `/readyz`
    /// answer 200 exactly when this is true.
    pub fn is_healthy(&self) -> bool {
        self.connected && (self.consuming || !self.has_consumer)
    }
}

/// Reads the health of a running service from anywhere (a cheap clone, `'static`), e.g. from
/// your own HTTP server's probe handler. From [`Running::health_check`](crate::Running::health_check).
#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub(crate) client: Client,
    pub(crate) consuming: Arc<AtomicBool>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) has_consumer: bool,
}

impl HealthCheck {
    /// The health right now.
    pub fn health(&self) -> Health {
        Health {
            connected: self.client.is_connected(),
            consuming: self.consuming.load(Ordering::Relaxed),
            degraded: self.stats.is_degraded(),
            has_consumer: self.has_consumer,
        }
    }
}
