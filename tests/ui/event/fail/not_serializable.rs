pub struct Opaque;

#[tchu::event(topic = "user.created")]
pub struct UserCreated {
    pub email: String,
    pub opaque: Opaque,
}

fn main() {}
