#[tchu::event(topic = "user.created")]
pub enum UserCreated {
    A,
}

fn main() {}
