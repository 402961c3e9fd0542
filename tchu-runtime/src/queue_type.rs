//! The type of a service's queues (a leaf: it depends on nothing in the crate).

/// The type of a service's queues: its main queue, its dead-letter queue, its retry wait
/// queues and its binding record (`TCHU_QUEUE_TYPE`, [`App::queue_type`](crate::App::queue_type);
/// see `docs/cluster.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    /// Classic durable queue (the default): lives on one node of a cluster.
    #[default]
    Classic,
    /// Quorum queue: replicated on the cluster's nodes (Raft), survives the loss of a minority
    /// of them. Works on a single node too.
    Quorum,
}

impl QueueType {
    /// The name used by RabbitMQ's `x-queue-type` and by `TCHU_QUEUE_TYPE`.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }

    /// The other type (the one to keep when a migration is not wanted).
    pub(crate) fn other(self) -> Self {
        match self {
            QueueType::Classic => QueueType::Quorum,
            QueueType::Quorum => QueueType::Classic,
        }
    }
}

impl std::fmt::Display for QueueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`QueueType`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown queue type `{0}`: expected `classic` or `quorum`")]
pub struct UnknownQueueType(pub String);

impl std::str::FromStr for QueueType {
    type Err = UnknownQueueType;

    /// `classic` or `quorum` (any case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "classic" => Ok(QueueType::Classic),
            "quorum" => Ok(QueueType::Quorum),
            _ => Err(UnknownQueueType(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_types_parse() {
        assert_eq!("quorum".parse::<QueueType>().unwrap(), QueueType::Quorum);
        assert_eq!("Classic".parse::<QueueType>().unwrap(), QueueType::Classic);
        assert!("stream".parse::<QueueType>().is_err());
        assert_eq!(QueueType::Quorum.to_string(), "quorum");
    }
}
