#[tchu::event(topic = "user.get", response = UserReply)]
pub struct GetUser {
    pub id: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct UserReply {
    pub name: String,
}

#[tchu::subscribe(GetUser)]
async fn get_user(_req: GetUser) -> Result<String, tchu::RpcError> {
    Ok(String::new())
}

#[tchu::subscribe(GetUser, id = "plain")]
async fn get_user_plain(_req: GetUser) -> u32 {
    1
}

type Res = Result<String, tchu::RpcError>;

#[tchu::subscribe(GetUser, id = "aliased")]
async fn get_user_aliased(_req: GetUser) -> Res {
    Ok(String::new())
}

fn main() {}
