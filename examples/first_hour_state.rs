//! A service whose handler takes a `State<Greeter>` the app forgets to provide: `tchu::run()`
//! refuses to start, naming the handler and the type (`tests/first_hour.rs`).

/// What greets.
#[derive(Debug)]
pub struct Greeter;

#[tchu::subscribe("first_hour.greeted")]
async fn greet(event: serde_json::Value, greeter: tchu::State<Greeter>) {
    println!("{greeter:?} greets {event}");
}

#[tokio::main]
async fn main() -> Result<(), tchu::Error> {
    // Forgot: `tchu::App::from_env()?.state(Greeter).run().await`
    tchu::run().await
}
