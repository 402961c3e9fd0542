//! Procedural macros of [tchu](https://docs.rs/tchu): `#[tchu::event]` and `#[tchu::subscribe]`.
//!
//! Use them through the `tchu` crate, which re-exports them; the generated code refers only to
//! `::tchu::__private` (or the path given with `crate = "..."`).
#![cfg_attr(not(test), warn(clippy::print_stdout))]

use proc_macro::TokenStream;

mod args;
mod event;
mod subscribe;

/// Runs an expansion and, on error, emits the original item followed by the errors, so the
/// item still exists for the rest of the crate (and for rust-analyzer) while the user fixes it.
/// (`#[tchu::event]` has its own fallback, which also stands in for the derives it adds.)
fn expand(
    item: TokenStream,
    f: impl FnOnce(proc_macro2::TokenStream) -> syn::Result<proc_macro2::TokenStream>,
) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    match f(item.clone()) {
        Ok(out) => out.into(),
        Err(e) => {
            let mut out = item;
            out.extend(e.into_compile_error());
            out.into()
        }
    }
}

/// Makes a struct a typed event: serializable, validated, with a topic, and publishable.
///
/// ```no_run
/// #[tchu::event(topic = "user.created")]
/// pub struct UserCreated {
///     #[validate(email)]
///     pub email: String,
///     #[validate(length(min = 1, max = 100))]
///     pub name: String,
/// }
///
/// #[tchu::event(topic = "user.get", response = UserReply)]
/// pub struct GetUser {
///     pub id: u64,
/// }
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// pub struct UserReply {
///     pub name: String,
/// }
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let id = UserCreated { email: "ada@example.com".into(), name: "Ada".into() }
///     .publish()
///     .await?;
/// let reply: UserReply = GetUser { id: 7 }.call().await?;
/// # Ok(())
/// # }
/// ```
///
/// # Arguments
/// - `topic = "a.b"` (required): the routing key. It is checked at compile time with the rules
///   the runtime uses (`tchu::Topic`): dot-separated non-empty words, no `*` or `#`, at most
///   255 bytes.
/// - `response = Type`: makes the event an RPC request answered with `Type` and adds the
///   `call*` methods. Without it the response type is `()`.
/// - `schema = false`: do not derive `JsonSchema` (for payloads with field types that have no
///   schema); the catalog then describes the payload as any JSON object.
/// - `crate = "path"`: where `tchu` is, when it is re-exported (default `::tchu`).
///
/// # Schemas and the catalog
/// The macro also derives `tchu::JsonSchema` (schemars) and registers the type at link time,
/// so `tchu::catalog()` lists it with its payload's JSON Schema (validation attributes such as
/// `email`, `length` and `range` become schema keywords, doc comments become descriptions).
/// Types nested in an event therefore need a schema too:
/// `#[derive(tchu::JsonSchema)]` with `#[schemars(crate = "tchu::schemars")]` (or
/// `schemars::JsonSchema` from your own `schemars = "1"` dependency, whose features cover
/// `uuid`, `chrono`, ...); a field whose type has none can take
/// `#[schemars(with = "String")]`, or opt the whole event out with `schema = false`. The
/// `response = ...` type is not required to have a schema: it is recorded when it has one.
///
/// Field attributes of [`validator`](https://docs.rs/validator) (`#[validate(email)]`,
/// `#[validate(length(..))]`, `#[validate(range(..))]`, `#[validate(nested)]`, ...) and of serde
/// (`#[serde(rename = "..")]`, ...) work as usual. Nested structs derive
/// `tchu::validator::Validate` with `#[validate(crate = "tchu::validator")]`.
///
/// # Equivalent code not using `#[tchu::event]`
/// ```ignore
/// #[derive(serde::Serialize, serde::Deserialize, validator::Validate)]
/// pub struct GetUser { pub id: u64 }
///
/// // the compile-time topic check, with the runtime's own `const fn`:
/// const _: () = if let Err(e) = tchu::__private::check_topic("user.get") { panic!("{}", e.message()) };
///
/// // the catalog entry (plus `#[derive(schemars::JsonSchema)]` on the struct):
/// inventory::submit! {
///     tchu::__private::EventInfo::new("user.get", concat!(module_path!(), "::GetUser"),
///                                     tchu::__private::schema_of::<GetUser>)
///         .with_response("UserReply", /* its schema when it implements `JsonSchema` */)
/// }
///
/// impl tchu::Event for GetUser {
///     const TOPIC: &'static str = "user.get";
///     type Response = UserReply;
/// }
/// impl tchu::FromDelivery for GetUser { /* decode and validate the payload */ }
/// impl GetUser {
///     pub async fn publish(&self) -> Result<tchu::MessageId, tchu::PublishError>;
///     pub async fn publish_with(&self, client: &tchu::Client) -> Result<tchu::MessageId, tchu::PublishError>;
///     // with `response = ...` only:
///     pub async fn call(&self) -> Result<UserReply, tchu::CallError>;
///     pub async fn call_with_timeout(&self, timeout: Duration) -> Result<UserReply, tchu::CallError>;
///     pub async fn call_with(&self, client: &tchu::Client, timeout: Option<Duration>) -> Result<UserReply, tchu::CallError>;
/// }
/// ```
///
/// # Misuse
/// A wildcard in an event topic is a compile error pointing at the literal:
/// ```compile_fail
/// #[tchu::event(topic = "user.*")]
/// pub struct UserAny {}
/// ```
///
/// A field type that does not serialize is a compile error at the field (the message is
/// serde's, so it is not snapshotted in tchu's UI tests):
/// ```compile_fail
/// pub struct Opaque;
///
/// #[tchu::event(topic = "user.created")]
/// pub struct UserCreated {
///     pub opaque: Opaque,
/// }
/// ```
#[proc_macro_attribute]
pub fn event(attr: TokenStream, item: TokenStream) -> TokenStream {
    event::expand(attr.into(), item.into()).into()
}

/// Registers an `async fn` as the handler of a topic pattern or of a typed event.
///
/// ```no_run
/// # #[tchu::event(topic = "user.created")]
/// # pub struct UserCreated { pub email: String }
/// # #[tchu::event(topic = "user.get", response = UserReply)]
/// # pub struct GetUser { pub id: u64 }
/// # #[derive(serde::Serialize, serde::Deserialize)]
/// # pub struct UserReply { pub name: String }
/// // Every `user.*` event, retried 5 times from 1 s with exponential backoff.
/// #[tchu::subscribe("user.*", retries = 5, delay = "1s", max_delay = "1m")]
/// async fn audit(event: serde_json::Value, meta: tchu::Meta) -> Result<(), tchu::HandlerError> {
///     println!("{} {event}", meta.topic);
///     Ok(())
/// }
///
/// // The typed form: the pattern is `UserCreated::TOPIC`.
/// #[tchu::subscribe(UserCreated, name = "welcome-mail")]
/// async fn welcome(event: UserCreated) {
///     println!("welcome {}", event.email);
/// }
///
/// // An RPC handler: it must return the request's `response` type (or a `Result` of it).
/// #[tchu::subscribe(GetUser)]
/// async fn get_user(req: GetUser) -> Result<UserReply, tchu::RpcError> {
///     Ok(UserReply { name: format!("user {}", req.id) })
/// }
///
/// # async fn demo() -> Result<(), tchu::Error> {
/// tchu::run().await
/// # }
/// ```
///
/// # Arguments
/// - First, the pattern: a string literal (`"user.*"`, `"#"`), checked at compile time with the
///   runtime's rules (`*` and `#` only as whole words), or an event type (its topic).
/// - `name = "..."` (default: the function name) and `id = "..."` (default: module path and
///   function name; ids must be unique in a service).
/// - Retry settings; any of them gives the handler its own policy, the others taking
///   `tchu::RetryPolicy::DEFAULT`'s values: `retries = 5`, `backoff = "exponential"` or
///   `"fixed"`, `delay = "1s"`, `max_delay = "10m"` (units `ms`, `s`, `m`, `h`), `jitter`
///   (or `jitter = false`).
/// - `timeout = "30s"`: the longest one run may take (default: the service's
///   `Config::handler_timeout`, 5 min); a run stopped at it is a failure that is retried.
/// - `crate = "path"`: where `tchu` is, when it is re-exported (default `::tchu`).
///
/// Each argument's type implements `tchu::FromDelivery`: an event type, `serde_json::Value`,
/// `tchu::Meta`, `tchu::State<T>`, or your own extractor. The function returns `()`, a
/// serializable value, or `Result<T, E>` with `E: Display`; `tchu::HandlerError::permanent`
/// skips retries and `tchu::RpcError` goes back to an RPC caller. What counts as a `Result` is
/// decided by the type, not its spelling: `io::Result<T>` and `type Res = Result<(), E>` fail
/// with their `Err`, and a struct of your own named `Result` is a plain reply.
///
/// Registration happens at link time: a handler in a library crate that nothing references is
/// not linked. Reference the crate with `use my_handlers as _;`.
///
/// # Equivalent code not using `#[tchu::subscribe]`
/// The function is left unchanged; beside it the macro adds:
/// ```ignore
/// fn __tchu_get_user(d: Arc<tchu::Delivery>) -> BoxFuture {
///     Box::pin(async move {
///         let arg0 = <GetUser as tchu::FromDelivery>::from_delivery(&d)
///             .map_err(tchu::Failure::Rejected)?;
///         let value = get_user(arg0).await;
///         // `Result<T, E>` (by any name) as it is, any other value as `Ok::<_, Infallible>`:
///         // chosen by the value's type (autoref specialisation), not by the written syntax
///         let ret = (&value).__tchu_return_kind().into_result(value);
///         // (typed form) compile-time check: `ret` is `Result<UserReply, _>`
///         tchu::IntoOutcome::into_outcome(ret)
///     })
/// }
/// inventory::submit! {
///     tchu::Subscription::new(concat!(module_path!(), "::get_user"), "get_user",
///                              <GetUser as tchu::Event>::TOPIC, __tchu_get_user)
/// }
/// ```
///
/// # Misuse
/// Handlers must be `async`:
/// ```compile_fail
/// #[tchu::subscribe("user.*")]
/// fn audit(event: serde_json::Value) {}
/// ```
#[proc_macro_attribute]
pub fn subscribe(attr: TokenStream, item: TokenStream) -> TokenStream {
    let attr = proc_macro2::TokenStream::from(attr);
    expand(item, |item| subscribe::expand(attr, item))
}
