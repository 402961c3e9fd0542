//! `#[tchu::subscribe("pattern" | Type, ...)]`.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, LitStr, ReturnType, Type};

use crate::args::{
    Arg, CratePath, Errors, Seen, lit_str, parse_duration, parse_value, split_args, unknown,
};

const KEYS: &[&str] = &[
    "name",
    "id",
    "retries",
    "backoff",
    "delay",
    "max_delay",
    "jitter",
    "timeout",
    "crate",
];

enum Source {
    /// `"user.*"`.
    Pattern(LitStr),
    /// `UserCreated`: the pattern is its topic, and the handler must return its response.
    Event(syn::Path),
}

#[derive(Default)]
struct Retry {
    retries: Option<u32>,
    /// `true` for exponential.
    exponential: Option<bool>,
    delay: Option<u64>,
    max_delay: Option<u64>,
    jitter: Option<bool>,
}

impl Retry {
    fn any(&self) -> bool {
        self.retries.is_some()
            || self.exponential.is_some()
            || self.delay.is_some()
            || self.max_delay.is_some()
            || self.jitter.is_some()
    }
}

#[derive(Default)]
struct SubscribeArgs {
    source: Option<Source>,
    name: Option<LitStr>,
    id: Option<LitStr>,
    retry: Retry,
    /// `timeout = "30s"`, in milliseconds.
    timeout: Option<u64>,
    krate: CratePath,
}

fn parse_args(attr: TokenStream, errors: &mut Errors) -> SubscribeArgs {
    let mut args = SubscribeArgs::default();
    let list = match split_args(attr) {
        Ok(list) => list,
        Err(e) => {
            errors.push(e);
            return args;
        }
    };
    let mut seen = Seen::default();
    let mut delay_lit = None;
    for (i, arg) in list.into_iter().enumerate() {
        match arg {
            Arg::Lit(lit) if i == 0 => args.source = Some(Source::Pattern(lit)),
            Arg::Path(path) if i == 0 && !path.is_ident("jitter") => {
                args.source = Some(Source::Event(path));
            }
            Arg::Lit(lit) => errors.error(
                &lit,
                "the pattern comes first, e.g. `#[tchu::subscribe(\"user.*\", name = \"...\")]`",
            ),
            Arg::Path(path) if path.is_ident("jitter") => {
                if let Some(key) = path.get_ident()
                    && seen.first(key, errors)
                {
                    args.retry.jitter = Some(true);
                }
            }
            Arg::Path(path) => {
                let known = path
                    .get_ident()
                    .is_some_and(|i| KEYS.contains(&i.to_string().as_str()));
                if known {
                    let k = path.to_token_stream();
                    errors.error(
                        &path,
                        format_args!("`{k}` expects a value, e.g. `{k} = ...`"),
                    );
                } else {
                    errors.push(unknown("subscribe", &path, KEYS));
                }
            }
            Arg::KeyValue { key, value } => {
                let name = key.to_string();
                if !KEYS.contains(&name.as_str()) {
                    errors.push(unknown("subscribe", &key, KEYS));
                    continue;
                }
                if !seen.first(&key, errors) {
                    continue;
                }
                let result = match name.as_str() {
                    "name" => lit_str(&key, value).map(|l| args.name = Some(l)),
                    "id" => lit_str(&key, value).map(|l| args.id = Some(l)),
                    "crate" => lit_str(&key, value)
                        .and_then(|l| CratePath::parse(&l))
                        .map(|k| args.krate = k),
                    "retries" => parse_value::<syn::LitInt>(&key, value)
                        .and_then(|l| l.base10_parse::<u32>())
                        .map(|n| args.retry.retries = Some(n)),
                    "backoff" => lit_str(&key, value).and_then(|l| match l.value().as_str() {
                        "exponential" => {
                            args.retry.exponential = Some(true);
                            Ok(())
                        }
                        "fixed" => {
                            args.retry.exponential = Some(false);
                            Ok(())
                        }
                        other => Err(syn::Error::new(
                            l.span(),
                            format_args!(
                                "unknown backoff `{other}`; expected `\"exponential\"` or `\"fixed\"`"
                            ),
                        )),
                    }),
                    "delay" => lit_str(&key, value).and_then(|l| {
                        let ms = parse_duration(&l)?;
                        args.retry.delay = Some(ms);
                        delay_lit = Some(l);
                        Ok(())
                    }),
                    "timeout" => lit_str(&key, value).and_then(|l| {
                        let ms = parse_duration(&l)?;
                        if ms == 0 {
                            return Err(syn::Error::new(l.span(), "`timeout` must be positive"));
                        }
                        args.timeout = Some(ms);
                        Ok(())
                    }),
                    "max_delay" => lit_str(&key, value).and_then(|l| {
                        let ms = parse_duration(&l)?;
                        args.retry.max_delay = Some(ms);
                        Ok(())
                    }),
                    _ => parse_value::<syn::LitBool>(&key, value)
                        .map(|b| args.retry.jitter = Some(b.value)),
                };
                if let Err(e) = result {
                    errors.push(e);
                }
            }
        }
    }
    if let (Some(d), Some(m), Some(lit)) = (args.retry.delay, args.retry.max_delay, &delay_lit)
        && d > m
    {
        errors.error(lit, "`delay` is longer than `max_delay`");
    }
    if args.source.is_none() {
        errors.push(syn::Error::new(
            Span::call_site(),
            "missing pattern: write `#[tchu::subscribe(\"user.*\")]` or \
             `#[tchu::subscribe(UserCreated)]` (an event type)",
        ));
    }
    args
}

fn check_fn(f: &ItemFn, errors: &mut Errors) {
    let sig = &f.sig;
    if sig.asyncness.is_none() {
        errors.error(
            sig.fn_token,
            "`#[tchu::subscribe]` handlers must be `async fn`",
        );
    }
    if let Some(c) = &sig.constness {
        errors.error(c, "`#[tchu::subscribe]` handlers cannot be `const fn`");
    }
    if let Some(u) = &sig.unsafety {
        errors.error(u, "`#[tchu::subscribe]` handlers cannot be `unsafe fn`");
    }
    if let Some(abi) = &sig.abi {
        errors.error(
            abi,
            "`#[tchu::subscribe]` handlers cannot have an `extern` ABI",
        );
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.error(
            &sig.generics,
            "`#[tchu::subscribe]` handlers cannot be generic: each argument's type must be known",
        );
    }
    if let Some(v) = &sig.variadic {
        errors.error(v, "`#[tchu::subscribe]` handlers cannot be variadic");
    }
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => errors.error(
                r,
                "`#[tchu::subscribe]` handlers are free functions; methods taking `self` are not supported",
            ),
            FnArg::Typed(pt) => {
                if let Type::ImplTrait(t) = &*pt.ty {
                    errors.error(
                        t,
                        "`impl Trait` arguments are not supported; name the argument's type",
                    );
                }
            }
        }
    }
}

pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    let args = parse_args(attr, &mut errors);
    let f: ItemFn = syn::parse2(item)?;
    check_fn(&f, &mut errors);
    errors.finish()?;
    let Some(source) = &args.source else {
        // Unreachable: a missing pattern is an error above.
        return Err(syn::Error::new(Span::call_site(), "missing pattern"));
    };

    let p = args.krate.private();
    let fn_name = &f.sig.ident;
    let wrapper = format_ident!("__tchu_{}", fn_name.to_string().trim_start_matches("r#"));
    let fn_name_str = fn_name.to_string().trim_start_matches("r#").to_owned();
    let name = match &args.name {
        Some(n) => n.to_token_stream(),
        None => quote!(#fn_name_str),
    };
    let id = match &args.id {
        Some(i) => i.to_token_stream(),
        None => quote!(::core::concat!(::core::module_path!(), "::", #fn_name_str)),
    };

    let (pattern, pattern_check) = match source {
        Source::Pattern(lit) => (
            lit.to_token_stream(),
            quote_spanned! {lit.span()=>
                const _: () = {
                    if let #p::Result::Err(e) = #p::check_pattern(#lit) {
                        ::core::panic!("{}", e.message())
                    }
                };
            },
        ),
        Source::Event(path) => (
            quote_spanned! {path.span()=> <#path as #p::Event>::TOPIC},
            TokenStream::new(),
        ),
    };

    // One binding per argument, each extracted at its type's span.
    let mut bindings = Vec::new();
    let mut extracts = Vec::new();
    let mut needs = Vec::new();
    for (i, input) in f.sig.inputs.iter().enumerate() {
        if let FnArg::Typed(pt) = input {
            let ty = &pt.ty;
            // What the argument needs from the app (`State<T>`, `Context<T>`), checked at start.
            needs.push(quote! {
                {
                    #[allow(unused_imports)]
                    use #p::{ViaNeed as _, ViaNoNeed as _};
                    (&#p::NeedProbe::<#ty>::new()).need()
                }
            });
            let var = format_ident!("__tchu_arg{}", i);
            extracts.push(quote_spanned! {ty.span()=>
                let #var = match <#ty as #p::HandlerArg>::extract(&*__tchu_delivery) {
                    #p::Result::Ok(v) => v,
                    #p::Result::Err(e) => return #p::Result::Err(e),
                };
            });
            bindings.push(var);
        }
    }

    // The handler's return kind is decided by its type's traits, not by how it is spelled
    // (`tchu::__private::ReturnsResult`/`ReturnsValue`, autoref specialisation): a `Result`
    // under any alias fails with its `Err`, anything else is a success. The syntax only picks
    // the span where type errors land: the success type of a written `Result<T, ..>`, else the
    // whole return type.
    let ret_span = match &f.sig.output {
        ReturnType::Default => fn_name.span(),
        ReturnType::Type(_, ty) if is_result(ty) => {
            ok_type(ty).map_or_else(|| ty.span(), Spanned::span)
        }
        ReturnType::Type(_, ty) => ty.span(),
    };
    let result = quote_spanned! {ret_span=>
        {
            #[allow(unused_imports, reason = "one of the two probes applies")]
            use #p::{ReturnsResult as _, ReturnsValue as _};
            let __tchu_value = #fn_name(#(#bindings),*).await;
            (&__tchu_value).__tchu_return_kind().into_result(__tchu_value)
        }
    };
    let reply_check = match source {
        Source::Event(path) => quote_spanned! {ret_span=>
            #p::check_reply::<#path, _, _>(&__tchu_ret);
        },
        Source::Pattern(_) => TokenStream::new(),
    };
    // The catalog's link from a typed handler to its event type (contracts).
    let with_event = match source {
        Source::Event(path) => quote!(.with_event(::core::any::type_name::<#path>)),
        Source::Pattern(_) => TokenStream::new(),
    };
    let into_outcome = quote_spanned! {ret_span=>
        #p::IntoOutcome::into_outcome(__tchu_ret)
    };

    let n_needs = needs.len();
    let retry = args.retry.any().then(|| {
        let r = &args.retry;
        let mut fields = Vec::new();
        if let Some(n) = r.retries {
            fields.push(quote!(retries: #n));
        }
        if let Some(exp) = r.exponential {
            let v = if exp {
                quote!(Exponential)
            } else {
                quote!(Fixed)
            };
            fields.push(quote!(backoff: #p::Backoff::#v));
        }
        if let Some(ms) = r.delay {
            fields.push(quote!(delay: #p::Duration::from_millis(#ms)));
        }
        if let Some(ms) = r.max_delay {
            fields.push(quote!(max_delay: #p::Duration::from_millis(#ms)));
        }
        if let Some(j) = r.jitter {
            fields.push(quote!(jitter: #j));
        }
        quote! {
            .with_retry(#p::RetryPolicy { #(#fields,)* ..#p::RetryPolicy::DEFAULT })
        }
    });

    let timeout = args
        .timeout
        .map(|ms| quote!(.with_timeout(#p::Duration::from_millis(#ms))));

    Ok(quote! {
        #f

        #pattern_check

        const _: () = {
            #[doc(hidden)]
            fn #wrapper(
                __tchu_delivery: #p::Arc<#p::Delivery>,
            ) -> #p::BoxFuture {
                #p::Box::pin(async move {
                    #(#extracts)*
                    let __tchu_ret = #result;
                    #reply_check
                    #into_outcome
                })
            }

            #[doc(hidden)]
            fn __tchu_needs() -> #p::Vec<#p::Need> {
                let needs: [#p::Option<#p::Need>; #n_needs] = [#(#needs),*];
                needs.into_iter().flatten().collect()
            }

            #p::inventory::submit! {
                #p::Subscription::new(#id, #name, #pattern, #wrapper) #retry #timeout #with_event
                    .with_needs(__tchu_needs)
            }
        };
    })
}

/// The first type argument of a `Result<T, ..>`, if written.
fn ok_type(ty: &Type) -> Option<&Type> {
    match ty {
        Type::Path(tp) => match &tp.path.segments.last()?.arguments {
            syn::PathArguments::AngleBracketed(a) => a.args.iter().find_map(|arg| match arg {
                syn::GenericArgument::Type(t) => Some(t),
                _ => None,
            }),
            _ => None,
        },
        Type::Paren(p) => ok_type(&p.elem),
        Type::Group(g) => ok_type(&g.elem),
        _ => None,
    }
}

/// Whether a return type is spelled `Result<..>` (`io::Result<..>`, ...). Only picks where
/// errors point; whether the handler returns a `Result` is decided by its type (see `expand`).
fn is_result(ty: &Type) -> bool {
    match ty {
        Type::Path(tp) if tp.qself.is_none() => {
            tp.path.segments.last().is_some_and(|s| s.ident == "Result")
        }
        Type::Paren(p) => is_result(&p.elem),
        Type::Group(g) => is_result(&g.elem),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_result() {
        for (ty, want) in [
            (quote!(Result<(), E>), true),
            (quote!(std::io::Result<()>), true),
            (quote!(anyhow::Result<u8>), true),
            (quote!(u8), false),
            (quote!(()), false),
            (quote!(Option<u8>), false),
        ] {
            let ty: Type = syn::parse2(ty).unwrap_or(Type::Verbatim(TokenStream::new()));
            assert_eq!(is_result(&ty), want, "{}", ty.to_token_stream());
        }
    }

    #[test]
    fn reports_all_errors() {
        let mut errors = Errors::default();
        let _ = parse_args(
            quote!(
                "a.*",
                quue = "x",
                retries = "5",
                delay = "1d",
                name = "a",
                name = "b"
            ),
            &mut errors,
        );
        let Err(e) = errors.finish() else {
            unreachable!("expected errors")
        };
        let msgs: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
        assert_eq!(msgs.len(), 4, "{msgs:?}");
        assert!(msgs[0].starts_with("unknown `subscribe` argument `quue`; expected one of `name`"));
        assert!(msgs[3].contains("duplicate argument `name`"));
    }
}
