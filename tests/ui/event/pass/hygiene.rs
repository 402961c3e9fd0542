//! The expansions never use the user's prelude: shadowing `Result`, `Option`, `Box`, `Arc`,
//! `Duration` and `core` must not break them.
#![deny(warnings)]
#![allow(dead_code, reason = "the items only have to compile")]

mod shadow {
    pub struct Result;
    pub struct Option;
    pub struct Box;
    pub struct Arc;
    pub struct Duration;
    pub struct Ok;
    pub mod core {}
    pub mod tchu_runtime {}
    pub mod serde {}
    pub mod validator {}
    pub mod inventory {}
    pub mod schemars {}
    pub struct JsonSchema;
    pub struct Schema;
}

mod user {
    #[allow(unused_imports, reason = "only the expansions could pick these up, and must not")]
    use crate::shadow::*;

    #[tchu::event(topic = "user.created")]
    pub struct UserCreated {
        #[validate(email)]
        pub email: String,
        #[validate(length(min = 1))]
        pub name: String,
    }

    #[tchu::event(topic = "user.get", response = u64)]
    pub struct GetUser {
        pub id: u64,
    }

    #[tchu::subscribe(UserCreated)]
    async fn on_user(_event: UserCreated) {}

    #[tchu::subscribe(GetUser)]
    async fn get_user(req: GetUser) -> u64 {
        req.id
    }

    #[tchu::subscribe("user.#", retries = 1, delay = "1s")]
    async fn audit(_event: serde_json::Value) -> ::core::result::Result<(), tchu::HandlerError> {
        ::core::result::Result::Ok(())
    }
}

fn main() {}
