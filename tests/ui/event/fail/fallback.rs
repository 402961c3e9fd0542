//! An invalid `#[tchu::event]` reports its own errors and nothing else: no "cannot find
//! attribute `validate`" on the fields, no "no method named `publish`" or "not a tchu event"
//! where the type is used.

#[tchu::event(topic = "user.created", respnse = String)]
#[derive(Debug, Clone)]
pub struct UserCreated {
    #[validate(email)]
    #[serde(rename = "mail")]
    pub email: String,
    #[validate(length(min = 1))]
    #[schemars(description = "the name")]
    pub name: String,
}

#[tchu::event(response = Reply)]
#[validate(schema(function = "check"))]
pub struct GetUser {
    #[validate(range(min = 1))]
    pub id: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Reply {
    pub name: String,
}

#[tchu::event(topic = "user.kind")]
pub enum Kind {
    #[serde(rename = "a")]
    A,
}

#[tchu::subscribe(UserCreated)]
async fn on_user(event: UserCreated) -> Result<(), tchu::HandlerError> {
    let _ = event.clone().publish().await;
    Ok(())
}

#[tchu::subscribe(GetUser)]
async fn get_user(req: GetUser) -> Reply {
    Reply {
        name: req.id.to_string(),
    }
}

pub async fn uses() -> Result<(), Box<dyn std::error::Error>> {
    use tchu::validator::Validate;
    let e = UserCreated {
        email: "ada@example.com".into(),
        name: "Ada".into(),
    };
    e.validate()?;
    e.publish().await?;
    let _: Reply = GetUser { id: 1 }.call().await?;
    let _ = <UserCreated as tchu::Event>::TOPIC;
    let _ = serde_json::to_value(&e)?;
    let _ = Kind::A.publish().await;
    Ok(())
}

fn main() {}
