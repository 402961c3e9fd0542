//! An aliased `Result` whose error does not display is refused as a `Result`, with tchu's
//! message, not accepted as a plain value.

pub struct Opaque;

type Res = Result<(), Opaque>;

#[tchu::subscribe("user.*")]
async fn audit(_event: serde_json::Value) -> Res {
    Ok(())
}

fn main() {}
