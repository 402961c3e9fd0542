//! A handler's return kind comes from its type, not its spelling: aliases of `Result` are
//! results (typed RPC handlers included), and a type of one's own named `Result` is a value.
#![deny(warnings)]

#[tchu::event(topic = "user.get", response = UserReply)]
struct GetUser {
    id: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct UserReply {
    name: String,
}

type Res = Result<(), tchu::HandlerError>;
type Reply<T> = Result<T, tchu::RpcError>;

mod my {
    pub(crate) type Result<T> = core::result::Result<T, tchu::HandlerError>;

    #[derive(serde::Serialize)]
    pub(crate) struct Outcome {
        pub(crate) n: u32,
    }
}

mod shadow {
    #[derive(serde::Serialize)]
    pub(crate) struct Result;
}

#[tchu::subscribe("user.*")]
async fn alias(_event: serde_json::Value) -> Res {
    Ok(())
}

#[tchu::subscribe("user.io")]
async fn io(_event: serde_json::Value) -> std::io::Result<u8> {
    Ok(1)
}

#[tchu::subscribe("user.module")]
async fn module_alias(_event: serde_json::Value) -> my::Result<my::Outcome> {
    Ok(my::Outcome { n: 1 })
}

#[tchu::subscribe("user.shadow")]
async fn named_result(_event: serde_json::Value) -> shadow::Result {
    shadow::Result
}

#[tchu::subscribe(GetUser)]
async fn get_user(req: GetUser) -> Reply<UserReply> {
    Ok(UserReply {
        name: req.id.to_string(),
    })
}

#[tchu::subscribe(GetUser, id = "get_user_plain")]
async fn get_user_plain(req: GetUser) -> UserReply {
    UserReply {
        name: req.id.to_string(),
    }
}

fn main() {}
