#[tchu::event(topic = "user.created", respnse = String, topic = "user.x")]
pub struct UserCreated {
    pub email: String,
}

fn main() {}
