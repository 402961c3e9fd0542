//! Header names tchu sets on retried and dead-lettered copies: a leaf that imports nothing of
//! the crate, so dispatch, topology and the dead-letter tools all read the same names.

/// Header: the attempt number of a retried copy (2 for the first retry).
pub const ATTEMPT_HEADER: &str = "x-tchu-attempt";
/// Header: comma-separated ids of the handlers a retried copy is for.
pub const HANDLERS_HEADER: &str = "x-tchu-handlers";
/// Header: the original routing key of a retried or dead-lettered copy.
pub const TOPIC_HEADER: &str = "x-tchu-original-routing-key";
/// Header: first failure time, milliseconds since the Unix epoch.
pub const FIRST_FAILURE_HEADER: &str = "x-tchu-first-failure-ms";
/// Header: last failure time, milliseconds since the Unix epoch.
pub const LAST_FAILURE_HEADER: &str = "x-tchu-last-failure-ms";
/// Header: why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-tchu-dead-letter-reason";
/// Header: the handler that failed (absent for decode failures and unmatched deliveries).
pub const HANDLER_HEADER: &str = "x-tchu-handler";
/// Header: attempts made before dead-lettering.
pub const ATTEMPTS_HEADER: &str = "x-tchu-attempts";
