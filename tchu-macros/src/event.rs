//! `#[tchu::event(topic = "...")]`.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Fields, Item, ItemStruct, LitStr};

use crate::args::{Arg, CratePath, Errors, Seen, lit_str, parse_value, split_args, unknown};

const KEYS: &[&str] = &["topic", "response", "schema", "crate"];

struct EventArgs {
    topic: Option<LitStr>,
    response: Option<syn::Type>,
    /// `schema = false`: no `JsonSchema` derive (the catalog shows any object).
    schema: bool,
    krate: CratePath,
}

fn parse_args(attr: TokenStream, errors: &mut Errors) -> EventArgs {
    let mut args = EventArgs {
        topic: None,
        response: None,
        schema: true,
        krate: CratePath::default(),
    };
    let list = match split_args(attr.clone()) {
        Ok(list) => list,
        Err(e) => {
            errors.push(e);
            return args;
        }
    };
    let mut seen = Seen::default();
    for arg in list {
        match arg {
            Arg::KeyValue { key, value } => {
                let name = key.to_string();
                if !KEYS.contains(&name.as_str()) {
                    errors.push(unknown("event", &key, KEYS));
                    continue;
                }
                if !seen.first(&key, errors) {
                    continue;
                }
                match name.as_str() {
                    "topic" => match lit_str(&key, value) {
                        Ok(lit) => args.topic = Some(lit),
                        Err(e) => errors.push(e),
                    },
                    "response" => match parse_value::<syn::Type>(&key, value) {
                        Ok(ty) => args.response = Some(ty),
                        Err(e) => errors.push(e),
                    },
                    "schema" => match parse_value::<syn::LitBool>(&key, value) {
                        Ok(b) => args.schema = b.value,
                        Err(e) => errors.push(e),
                    },
                    _ => match lit_str(&key, value).and_then(|l| CratePath::parse(&l)) {
                        Ok(k) => args.krate = k,
                        Err(e) => errors.push(e),
                    },
                }
            }
            Arg::Path(path) => {
                let is_known = path
                    .get_ident()
                    .is_some_and(|i| KEYS.contains(&i.to_string().as_str()));
                if is_known {
                    errors.error(
                        &path,
                        format_args!(
                            "`{}` expects a value, e.g. `{} = ...`",
                            path.to_token_stream(),
                            path.to_token_stream()
                        ),
                    );
                } else {
                    errors.push(unknown("event", &path, KEYS));
                }
            }
            Arg::Lit(lit) => errors.error(
                &lit,
                format_args!("write the topic as `topic = {}`", lit.to_token_stream()),
            ),
        }
    }
    if args.topic.is_none() && !attr.is_empty() {
        errors.error(
            &attr,
            "missing `topic`, e.g. `#[tchu::event(topic = \"user.created\")]`",
        );
    } else if args.topic.is_none() {
        errors.push(syn::Error::new(
            proc_macro2::Span::call_site(),
            "missing `topic`, e.g. `#[tchu::event(topic = \"user.created\")]`",
        ));
    }
    args
}

/// Structural checks on the item: a non-generic struct with named fields and no derive of its
/// own for what the macro derives.
fn check_item(item: &Item, errors: &mut Errors) -> Option<ItemStruct> {
    let s = match item {
        Item::Struct(s) => s,
        Item::Enum(e) => {
            errors.error(
                e.enum_token,
                "`#[tchu::event]` supports structs with named fields, not enums",
            );
            return None;
        }
        Item::Union(u) => {
            errors.error(
                u.union_token,
                "`#[tchu::event]` supports structs with named fields, not unions",
            );
            return None;
        }
        other => {
            errors.error(other, "`#[tchu::event]` goes on a struct with named fields");
            return None;
        }
    };
    match &s.fields {
        Fields::Named(_) => {}
        Fields::Unnamed(f) => errors.error(
            f,
            "`#[tchu::event]` needs named fields; tuple structs are not supported",
        ),
        Fields::Unit => errors.error(
            s,
            "`#[tchu::event]` needs named fields; unit structs are not supported (use `struct Name {}`)",
        ),
    }
    if !s.generics.params.is_empty() || s.generics.where_clause.is_some() {
        errors.error(
            &s.generics,
            "generic events are not supported: an event's topic and payload type are fixed",
        );
    }
    for attr in &s.attrs {
        if !attr.path().is_ident("derive") {
            continue;
        }
        let _ = attr.parse_nested_meta(|meta| {
            if let Some(last) = meta.path.segments.last() {
                let name = last.ident.to_string();
                if matches!(
                    name.as_str(),
                    "Serialize" | "Deserialize" | "Validate" | "JsonSchema"
                ) {
                    errors.error(
                        &meta.path,
                        format_args!("`#[tchu::event]` already derives `{name}`; remove it"),
                    );
                }
            }
            Ok(())
        });
    }
    Some(s.clone())
}

/// Expands `#[tchu::event]`. On an error it emits, beside the errors, a fallback of the item
/// (see [`fallback`]) so that only the real error shows, not a cascade at every use of the type.
pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = parse_args(attr, &mut errors);
    let parsed: Item = match syn::parse2(item.clone()) {
        Ok(parsed) => parsed,
        Err(e) => {
            let mut out = item;
            out.extend(e.into_compile_error());
            return out;
        }
    };
    let s = check_item(&parsed, &mut errors);
    if let Err(e) = errors.finish() {
        let mut out = fallback(parsed, &args);
        out.extend(e.into_compile_error());
        return out;
    }
    match (s, &args.topic) {
        (Some(s), Some(topic)) => expand_valid(&s, topic, &args),
        // Unreachable: `finish` returned the errors that made either `None`.
        _ => syn::Error::new(parsed.span(), "invalid `#[tchu::event]`").into_compile_error(),
    }
}

/// The full expansion of a valid event.
fn expand_valid(s: &ItemStruct, topic: &LitStr, args: &EventArgs) -> TokenStream {
    let p = args.krate.private();
    let serde_path = args.krate.private_str("serde");
    let validator_path = args.krate.private_str("validator");
    let schemars_path = args.krate.private_str("schemars");
    let ident = &s.ident;

    // Emitted once: the runtime's own `const fn` rules, reported at the literal.
    let topic_check = quote_spanned! {topic.span()=>
        const _: () = {
            if let #p::Result::Err(e) = #p::check_topic(#topic) {
                ::core::panic!("{}", e.message())
            }
        };
    };

    let (schema_derive, schema_fn) = if args.schema {
        (
            quote! {
                #[derive(#p::schemars::JsonSchema)]
                #[schemars(crate = #schemars_path)]
            },
            quote!(#p::schema_of::<#ident>),
        )
    } else {
        (quote!(), quote!(#p::object_schema))
    };
    let ident_str = ident.to_string();
    let with_response = args.response.as_ref().map(|resp| {
        // `Vec < Reply >` as `Vec<Reply>`: response types are owned, so there are no
        // `dyn`/`impl` words to keep apart.
        let resp_str = resp.to_token_stream().to_string().replace(' ', "");
        quote! {
            .with_response(#resp_str, {
                fn __tchu_response_schema(
                    generator: &mut #p::schemars::SchemaGenerator,
                ) -> #p::Option<#p::schemars::Schema> {
                    #[allow(unused_imports, reason = "one of the two probes applies")]
                    use #p::{ProbeJsonSchema as _, ProbeNoSchema as _};
                    (&&#p::SchemaProbe::<#resp>::new()).response_schema(generator)
                }
                __tchu_response_schema
            })
        }
    });
    let registration = quote! {
        const _: () = {
            #p::inventory::submit! {
                #p::EventInfo::new(
                    #topic,
                    ::core::concat!(::core::module_path!(), "::", #ident_str),
                    #schema_fn,
                )
                #with_response
            }
        };
    };
    let event_impls = event_impls(ident, &topic.to_token_stream(), args);
    let methods = methods(ident, &s.vis, args);

    quote! {
        #[derive(#p::serde::Serialize, #p::serde::Deserialize, #p::validator::Validate)]
        #schema_derive
        #[serde(crate = #serde_path)]
        #[validate(crate = #validator_path)]
        #s

        #topic_check

        #registration

        #event_impls

        #methods
    }
}

/// `impl Event` and `impl FromDelivery`, shared by the expansion and its fallback.
fn event_impls(ident: &syn::Ident, topic: &TokenStream, args: &EventArgs) -> TokenStream {
    let p = args.krate.private();
    let response = match &args.response {
        Some(ty) => ty.to_token_stream(),
        None => quote!(()),
    };
    quote! {
        #[automatically_derived]
        impl #p::Event for #ident {
            const TOPIC: &'static str = #topic;
            type Response = #response;
        }

        #[automatically_derived]
        impl #p::FromDelivery for #ident {
            fn from_delivery(
                delivery: &#p::Delivery,
            ) -> #p::Result<Self, #p::Rejection> {
                #p::extract_event::<Self>(delivery)
            }
        }
    }
}

/// The inherent `publish*` (and, with `response = ...`, `call*`) methods.
fn methods(ident: &syn::Ident, vis: &syn::Visibility, args: &EventArgs) -> TokenStream {
    let p = args.krate.private();
    let call_methods = args.response.as_ref().map(|resp| {
        quote! {
            /// Sends this request with the default client and waits for its reply, for at
            /// most the configured call timeout.
            ///
            /// # Errors
            /// A `tchu::CallError`: invalid request, publish failure, timeout, an error
            /// returned by the remote handler, or an undecodable reply.
            #vis async fn call(&self) -> #p::Result<#resp, #p::CallError> {
                #p::call_event(self, #p::Option::None).await
            }

            /// Sends this request with the default client and waits at most `timeout` for
            /// its reply.
            ///
            /// # Errors
            /// See [`call`](Self::call).
            #vis async fn call_with_timeout(
                &self,
                timeout: #p::Duration,
            ) -> #p::Result<#resp, #p::CallError> {
                #p::call_event(self, #p::Option::Some(timeout)).await
            }

            /// Sends this request with `client` and waits for its reply (`timeout`, or the
            /// client's configured call timeout when `None`).
            ///
            /// # Errors
            /// See [`call`](Self::call).
            #vis async fn call_with(
                &self,
                client: &#p::Client,
                timeout: #p::Option<#p::Duration>,
            ) -> #p::Result<#resp, #p::CallError> {
                client.call_event(self, timeout).await
            }
        }
    });
    quote! {
        #[allow(dead_code, reason = "generated methods the crate may not call")]
        impl #ident {
            /// Validates and publishes this event with the default client, and returns once the
            /// broker confirmed it.
            ///
            /// # Errors
            /// A `tchu::PublishError`: invalid event, no client, encode or broker failure.
            #vis async fn publish(&self) -> #p::Result<#p::MessageId, #p::PublishError> {
                #p::publish_event(self).await
            }

            /// Validates and publishes this event with `client`.
            ///
            /// # Errors
            /// See [`publish`](Self::publish).
            #vis async fn publish_with(
                &self,
                client: &#p::Client,
            ) -> #p::Result<#p::MessageId, #p::PublishError> {
                client.publish_event(self).await
            }

            #call_methods
        }
    }
}

/// What `#[tchu::event]` emits next to its errors (thiserror's `fallback.rs`): the item without
/// the field attributes of derives it did not apply (else "cannot find attribute `validate`"),
/// and stand-in impls of everything the expansion would have provided (`Serialize`,
/// `Deserialize`, `Validate`, `JsonSchema`, `Event`, `FromDelivery`, `publish*`/`call*`), so
/// uses of the type elsewhere type-check and the user sees the real error alone. The stand-ins
/// never run: the crate does not compile while the error is there.
fn fallback(mut item: Item, args: &EventArgs) -> TokenStream {
    let derived = user_derives(&item);
    let keep = |name: &str| match name {
        "serde" => derived
            .iter()
            .any(|d| d == "Serialize" || d == "Deserialize"),
        "validate" => derived.iter().any(|d| d == "Validate"),
        "schemars" => derived.iter().any(|d| d == "JsonSchema"),
        _ => true,
    };
    let (ident, vis, generic) = match &mut item {
        Item::Struct(s) => {
            strip_attrs(&mut s.attrs, keep);
            for f in s.fields.iter_mut() {
                strip_attrs(&mut f.attrs, keep);
            }
            (
                s.ident.clone(),
                s.vis.clone(),
                !s.generics.params.is_empty(),
            )
        }
        Item::Enum(e) => {
            strip_attrs(&mut e.attrs, keep);
            for v in &mut e.variants {
                strip_attrs(&mut v.attrs, keep);
                for f in v.fields.iter_mut() {
                    strip_attrs(&mut f.attrs, keep);
                }
            }
            (
                e.ident.clone(),
                e.vis.clone(),
                !e.generics.params.is_empty(),
            )
        }
        Item::Union(u) => {
            strip_attrs(&mut u.attrs, keep);
            for f in &mut u.fields.named {
                strip_attrs(&mut f.attrs, keep);
            }
            (
                u.ident.clone(),
                u.vis.clone(),
                !u.generics.params.is_empty(),
            )
        }
        // Not a type: nothing could use it as an event.
        other => return other.to_token_stream(),
    };
    if generic {
        // Stand-ins for a generic item would need bounds the user never wrote, and bring
        // errors of their own; the item alone is enough.
        return item.to_token_stream();
    }

    let p = args.krate.private();
    let ident_str = ident.to_string();
    let has = |name: &str| derived.iter().any(|d| d == name);
    let serialize = (!has("Serialize")).then(|| {
        quote! {
            #[automatically_derived]
            impl #p::serde::Serialize for #ident {
                fn serialize<S: #p::serde::Serializer>(
                    &self,
                    _: S,
                ) -> #p::Result<S::Ok, S::Error> {
                    #p::Result::Err(<S::Error as #p::serde::ser::Error>::custom(
                        "invalid `#[tchu::event]`",
                    ))
                }
            }
        }
    });
    let deserialize = (!has("Deserialize")).then(|| {
        quote! {
            #[automatically_derived]
            impl<'de> #p::serde::Deserialize<'de> for #ident {
                fn deserialize<D: #p::serde::Deserializer<'de>>(
                    _: D,
                ) -> #p::Result<Self, D::Error> {
                    #p::Result::Err(<D::Error as #p::serde::de::Error>::custom(
                        "invalid `#[tchu::event]`",
                    ))
                }
            }
        }
    });
    let validate = (!has("Validate")).then(|| {
        quote! {
            #[automatically_derived]
            impl #p::validator::Validate for #ident {
                fn validate(&self) -> #p::Result<(), #p::validator::ValidationErrors> {
                    #p::Result::Ok(())
                }
            }
        }
    });
    let schema = (args.schema && !has("JsonSchema")).then(|| {
        quote! {
            #[automatically_derived]
            impl #p::schemars::JsonSchema for #ident {
                fn schema_name() -> #p::Cow<'static, str> {
                    #p::Cow::Borrowed(#ident_str)
                }
                fn json_schema(_: &mut #p::schemars::SchemaGenerator) -> #p::schemars::Schema {
                    #p::schemars::Schema::default()
                }
            }
        }
    });
    // A placeholder topic when it is missing or invalid: the error says so already.
    let topic = match &args.topic {
        Some(lit) => lit.to_token_stream(),
        None => quote!(""),
    };
    let event_impls = event_impls(&ident, &topic, args);
    let methods = methods(&ident, &vis, args);
    quote! {
        #item

        const _: () = {
            #serialize
            #deserialize
            #validate
            #schema
        };

        #event_impls

        #methods
    }
}

/// The last path segments of the item's own `#[derive(...)]`s.
fn user_derives(item: &Item) -> Vec<String> {
    let attrs: &[syn::Attribute] = match item {
        Item::Struct(s) => &s.attrs,
        Item::Enum(e) => &e.attrs,
        Item::Union(u) => &u.attrs,
        _ => &[],
    };
    let mut out = Vec::new();
    for attr in attrs.iter().filter(|a| a.path().is_ident("derive")) {
        let _ = attr.parse_nested_meta(|meta| {
            if let Some(last) = meta.path.segments.last() {
                out.push(last.ident.to_string());
            }
            Ok(())
        });
    }
    out
}

/// Removes the helper attributes (`#[serde]`, `#[validate]`, `#[schemars]`) that `keep` says no
/// derive will read.
fn strip_attrs(attrs: &mut Vec<syn::Attribute>, keep: impl Fn(&str) -> bool) {
    attrs.retain(|a| a.path().get_ident().is_none_or(|i| keep(&i.to_string())));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(haystack: &str, needle: &str) -> usize {
        haystack.matches(needle).count()
    }

    #[test]
    fn topic_check_once() {
        let out = expand(
            quote!(topic = "user.created"),
            quote!(
                pub struct UserCreated {
                    pub email: String,
                }
            ),
        )
        .to_string();
        assert_eq!(count(&out, "check_topic"), 1, "{out}");
        assert_eq!(count(&out, "compile_error"), 0, "{out}");
    }

    #[test]
    fn fallback_stands_in_for_the_derives() {
        let out = expand(
            quote!(topic = "user.created", respnse = String),
            quote!(
                #[derive(Debug)]
                pub struct UserCreated {
                    #[validate(email)]
                    #[serde(rename = "mail")]
                    #[doc = "kept"]
                    pub email: String,
                }
            ),
        )
        .to_string();
        assert_eq!(count(&out, "compile_error"), 1, "{out}");
        // The helper attributes no derive reads are gone; the user's own attributes stay.
        assert_eq!(count(&out, "# [validate"), 0, "{out}");
        assert_eq!(count(&out, "# [serde"), 0, "{out}");
        assert_eq!(count(&out, "# [doc = \"kept\"]"), 1, "{out}");
        assert_eq!(count(&out, "# [derive (Debug)]"), 1, "{out}");
        for stand_in in [
            "serde :: Serialize for UserCreated",
            "serde :: Deserialize < 'de > for UserCreated",
            "validator :: Validate for UserCreated",
            "schemars :: JsonSchema for UserCreated",
            "Event for UserCreated",
            "FromDelivery for UserCreated",
            "async fn publish (",
        ] {
            assert_eq!(count(&out, stand_in), 1, "{stand_in}: {out}");
        }
        // Nothing is registered and no topic is checked for an invalid event.
        assert_eq!(count(&out, "inventory"), 0, "{out}");
        assert_eq!(count(&out, "check_topic"), 0, "{out}");
    }

    #[test]
    fn fallback_keeps_what_the_user_derives() {
        let out = expand(
            quote!(topic = "user.created"),
            quote!(
                #[derive(serde::Serialize)]
                pub struct UserCreated {
                    #[serde(rename = "mail")]
                    #[validate(email)]
                    pub email: String,
                }
            ),
        )
        .to_string();
        assert_eq!(count(&out, "compile_error"), 1, "{out}");
        assert_eq!(count(&out, "# [serde (rename"), 1, "{out}");
        assert_eq!(count(&out, "# [validate"), 0, "{out}");
        assert_eq!(
            count(&out, "serde :: Serialize for UserCreated"),
            0,
            "{out}"
        );
        assert_eq!(
            count(&out, "Deserialize < 'de > for UserCreated"),
            1,
            "{out}"
        );
    }
}
