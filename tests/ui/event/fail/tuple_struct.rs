#[tchu::event(topic = "user.created")]
pub struct UserCreated(String);

fn main() {}
