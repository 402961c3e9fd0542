//! The events the example services share (in a real fleet: a small shared crate).

/// A user signed up.
#[tchu::event(topic = "user.created")]
#[derive(Debug)]
pub(crate) struct UserCreated {
    /// The user's id.
    pub(crate) user_id: u64,
    /// Where to send the welcome email.
    #[validate(email)]
    pub(crate) email: String,
}

/// A user left.
#[tchu::event(topic = "user.deleted")]
#[derive(Debug)]
pub(crate) struct UserDeleted {
    /// The user's id.
    pub(crate) user_id: u64,
}
