#[tchu::event(response = String)]
pub struct GetUser {
    pub id: u64,
}

fn main() {}
