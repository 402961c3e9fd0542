//! The service: [`App`] collects handlers (link-time and run-time), declares the topology and
//! runs the dispatcher until SIGINT/SIGTERM.

use crate::error::Error;

/// A service being configured. STUB.
#[derive(Debug, Default)]
pub struct App {}

/// Runs the service with the link-time subscriptions and settings from the environment.
///
/// # Errors
/// Bad settings, no subscriptions, or an unreachable broker.
pub async fn run() -> Result<(), Error> {
    Ok(())
}
