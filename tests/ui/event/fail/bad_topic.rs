#[tchu::event(topic = "user..created")]
pub struct UserCreated {
    pub email: String,
}

#[tchu::event(topic = "user.*")]
pub struct UserAny {}

fn main() {}
