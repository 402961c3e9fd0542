//! The README's first service as a new user writes it: one event, one handler, `tchu::run()`,
//! no log set-up (tchu installs its default log output). The first-hour tests
//! (`tests/first_hour.rs`) start it with bad settings and broker addresses and read what it
//! prints.
//!
//! ```sh
//! TCHU_SERVICE=hello cargo run --example first_hour
//! ```
//! `FIRST_HOUR_PUBLISH=1` publishes one event before running; `FIRST_HOUR_INVALID=1` publishes
//! an invalid one (refused before any connection is tried). Ctrl-C stops it.

/// Someone was greeted.
#[derive(Debug)]
#[tchu::event(topic = "first_hour.greeted")]
pub struct Greeted {
    /// Who.
    #[validate(length(min = 1))]
    pub name: String,
}

#[tchu::subscribe(Greeted)]
async fn on_greeted(event: Greeted) -> Result<(), std::io::Error> {
    println!("hello, {}", event.name);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), tchu::Error> {
    if std::env::var_os("FIRST_HOUR_INVALID").is_some() {
        Greeted {
            name: String::new(),
        }
        .publish()
        .await?;
    }
    if std::env::var_os("FIRST_HOUR_PUBLISH").is_some() {
        Greeted { name: "ada".into() }.publish().await?;
    }
    tchu::run().await
}
