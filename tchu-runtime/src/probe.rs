//! Compile-time probes that generated code uses to classify a type by its traits, never by how
//! its name is spelled: whether an RPC response type has a JSON Schema ([`SchemaProbe`]),
//! whether a handler returns a `Result` or a plain value ([`ReturnsResult`] /
//! [`ReturnsValue`]), and whether it returns its request's response type ([`check_reply`]);
//! plus [`HandlerArg`], the bound each handler argument is checked against.
//!
//! The first two use autoref specialisation (dtolnay's "autoref-based specialization", as
//! anyhow's `kind.rs`): the macro calls a method on a reference, and method resolution picks
//! the impl that needs the fewest autorefs among those that apply. It works in macro output,
//! where the type is concrete: a `type Res = Result<(), E>` alias is a `Result` there.
//!
//! Not public API: reached through `tchu::__private` only.

use std::convert::Infallible;
use std::marker::PhantomData;

use crate::event::Event;
use crate::handler::{Delivery, Failure, FromDelivery, extracted};

/// Autoref specialization for the optional response schema: `(&&SchemaProbe::<T>::new())
/// .response_schema(g)` is `Some` when `T: JsonSchema` ([`ProbeJsonSchema`]) and `None`
/// otherwise ([`ProbeNoSchema`]). Works in the macro's output, where `T` is concrete.
#[derive(Debug)]
pub struct SchemaProbe<T: ?Sized>(PhantomData<T>);

impl<T: ?Sized> SchemaProbe<T> {
    /// A probe for `T`.
    pub const fn new() -> Self {
        SchemaProbe(PhantomData)
    }
}

impl<T: ?Sized> Default for SchemaProbe<T> {
    fn default() -> Self {
        SchemaProbe::new()
    }
}

/// The specialized half of [`SchemaProbe`]: the type has a schema.
pub trait ProbeJsonSchema {
    /// The schema.
    fn response_schema(
        &self,
        generator: &mut schemars::SchemaGenerator,
    ) -> Option<schemars::Schema>;
}

impl<T: schemars::JsonSchema + ?Sized> ProbeJsonSchema for &SchemaProbe<T> {
    fn response_schema(
        &self,
        generator: &mut schemars::SchemaGenerator,
    ) -> Option<schemars::Schema> {
        Some(generator.subschema_for::<T>())
    }
}

/// The fallback half of [`SchemaProbe`]: no schema.
pub trait ProbeNoSchema {
    /// `None`.
    fn response_schema(
        &self,
        generator: &mut schemars::SchemaGenerator,
    ) -> Option<schemars::Schema>;
}

impl<T: ?Sized> ProbeNoSchema for SchemaProbe<T> {
    fn response_schema(&self, _: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
        None
    }
}

/// A handler that returns a `Result` (under any name or alias: `io::Result<T>`,
/// `type Res = Result<(), E>`): its `Err` is a failure. Chosen first, as the impl on the value's
/// own type: `(&ret).__tchu_return_kind()` needs no autoref for it.
pub trait ReturnsResult {
    /// The tag that converts the value.
    fn __tchu_return_kind(&self) -> ResultReturn {
        ResultReturn
    }
}

impl<T, E> ReturnsResult for Result<T, E> {}

/// A handler that returns anything else (`()`, a reply, `Option<T>`, a struct named `Result`):
/// the value is the success. Chosen when [`ReturnsResult`] does not apply, with one autoref.
pub trait ReturnsValue {
    /// The tag that converts the value.
    fn __tchu_return_kind(&self) -> ValueReturn {
        ValueReturn
    }
}

impl<R> ReturnsValue for &R {}

/// The tag of [`ReturnsResult`]: the handler's value is its result as it is.
#[derive(Debug, Clone, Copy)]
pub struct ResultReturn;

impl ResultReturn {
    /// The result as it is.
    #[inline(always)]
    pub fn into_result<T, E>(self, ret: Result<T, E>) -> Result<T, E> {
        ret
    }
}

/// The tag of [`ReturnsValue`]: the handler's value is a success.
#[derive(Debug, Clone, Copy)]
pub struct ValueReturn;

impl ValueReturn {
    /// `Ok(value)`.
    #[inline(always)]
    pub fn into_result<T>(self, value: T) -> Result<T, Infallible> {
        Ok(value)
    }
}

/// The compile-time check that a handler of `Req` returns `Req::Response`: `Self` is the
/// handler's success type and `Resp` the response type it must be.
#[diagnostic::on_unimplemented(
    message = "a handler of `{Req}` must return `{Resp}` or `Result<{Resp}, E>`, not `{Self}`",
    label = "expected `{Resp}` here",
    note = "`{Resp}` is the `response = ...` type of `#[tchu::event]` on `{Req}` (`()` when it has none)"
)]
pub trait ReplyOf<Req, Resp> {}

#[diagnostic::do_not_recommend]
impl<Req, T> ReplyOf<Req, T> for T {}

/// Compiles only when the handler's success type is `Req::Response`.
#[inline(always)]
pub fn check_reply<Req, T, E>(_: &Result<T, E>)
where
    Req: Event,
    T: ReplyOf<Req, <Req as Event>::Response>,
{
}

/// What the generated wrapper calls to build each handler argument: [`FromDelivery`], with a
/// refusal as a [`Failure`]. Its own `on_unimplemented` and the `do_not_recommend` on the one
/// impl make a wrong argument type report tchu's message alone, not a list of every
/// `FromDelivery` impl in the workspace (which changes whenever one is added).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a tchu handler argument",
    label = "not a handler argument",
    note = "handler arguments are a `#[tchu::event]` type, `serde_json::Value`, `tchu::Meta`, \
            `tchu::State<T>`, `tchu::Context<T>`, `tchu::Client`, or a type implementing \
            `tchu::FromDelivery`"
)]
pub trait HandlerArg: Sized {
    /// Builds the argument.
    ///
    /// # Errors
    /// The extractor's refusal, as [`Failure::Rejected`].
    fn extract(delivery: &Delivery) -> Result<Self, Failure>;
}

#[diagnostic::do_not_recommend]
impl<T: FromDelivery> HandlerArg for T {
    #[inline(always)]
    fn extract(delivery: &Delivery) -> Result<Self, Failure> {
        extracted(T::from_delivery(delivery))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Res = Result<u8, String>;

    mod shadow {
        /// Not a `Result`, whatever its name.
        #[derive(Debug, PartialEq)]
        pub(super) struct Result(pub(super) u8);
    }

    // What the macro expands to, on concrete types.
    macro_rules! classify {
        ($e:expr) => {{
            #[allow(unused_imports, reason = "one of the two probes applies")]
            use super::{ReturnsResult as _, ReturnsValue as _};
            let ret = $e;
            (&ret).__tchu_return_kind().into_result(ret)
        }};
    }

    #[test]
    fn results_by_any_name_are_results() {
        let err: Res = Err("no".to_owned());
        assert_eq!(classify!(err), Err("no".to_owned()));
        let ok: std::io::Result<u8> = Ok(1);
        assert_eq!(classify!(ok).ok(), Some(1));
    }

    #[test]
    fn other_values_are_successes() {
        assert_eq!(classify!(()), Ok::<(), Infallible>(()));
        assert_eq!(classify!(7u32), Ok::<u32, Infallible>(7));
        assert_eq!(classify!(None::<u8>), Ok::<_, Infallible>(None));
        assert_eq!(
            classify!(shadow::Result(3)),
            Ok::<_, Infallible>(shadow::Result(3))
        );
    }
}
