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

pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    let args = parse_args(attr, &mut errors);
    let parsed: Item = syn::parse2(item)?;
    let s = check_item(&parsed, &mut errors);
    errors.finish()?;
    let (Some(s), Some(topic)) = (s, args.topic) else {
        // Unreachable: `finish` returned the errors that made either `None`.
        return Err(syn::Error::new(parsed.span(), "invalid `#[tchu::event]`"));
    };

    let p = args.krate.private();
    let serde_path = args.krate.private_str("serde");
    let validator_path = args.krate.private_str("validator");
    let schemars_path = args.krate.private_str("schemars");
    let ident = &s.ident;
    let vis = &s.vis;
    let response = match &args.response {
        Some(ty) => ty.to_token_stream(),
        None => quote!(()),
    };

    let topic_check = quote_spanned! {topic.span()=>
        const _: () = {
            if let #p::Result::Err(e) = #p::check_topic(#topic) {
                ::core::panic!("{}", e.message())
            }
        };
    };

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

    Ok(quote! {
        #[derive(#p::serde::Serialize, #p::serde::Deserialize, #p::validator::Validate)]
        #schema_derive
        #[serde(crate = #serde_path)]
        #[validate(crate = #validator_path)]
        #s

        #topic_check

        #registration

        #topic_check

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
    })
}
