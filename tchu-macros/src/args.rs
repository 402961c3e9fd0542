//! Attribute-argument parsing shared by both macros: the error collector, `key = value` lists,
//! duplicate detection, the `crate = "..."` override and durations.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{ToTokens, quote};
use syn::parse::{ParseStream, Parser};
use syn::spanned::Spanned;
use syn::{Ident, LitStr, Token};

/// Collects every error instead of stopping at the first (serde's `Ctxt`).
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }

    pub(crate) fn error(&mut self, span: impl ToTokens, message: impl std::fmt::Display) {
        self.push(syn::Error::new_spanned(span, message));
    }

    /// `Err` with every collected error, if any.
    pub(crate) fn finish(self) -> syn::Result<()> {
        match self.0 {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// One attribute argument: `key`, `key = value`, or (first position only) a positional value.
pub(crate) enum Arg {
    /// `key = <tokens>`: the value is kept raw and parsed per key.
    KeyValue { key: Ident, value: TokenStream },
    /// A bare word (`jitter`) or path (`UserCreated`).
    Path(syn::Path),
    /// A string literal (`"user.*"`).
    Lit(LitStr),
}

/// Splits `a = 1, b, "c", d = Vec<(u8, u8)>` into arguments. A value runs until the next comma
/// outside `<...>` (groups are single token trees already).
pub(crate) fn split_args(tokens: TokenStream) -> syn::Result<Vec<Arg>> {
    let parser = |input: ParseStream<'_>| {
        let mut out = Vec::new();
        while !input.is_empty() {
            if input.peek(LitStr) {
                out.push(Arg::Lit(input.parse()?));
            } else {
                let path: syn::Path = input.call(syn::Path::parse_mod_style)?;
                if input.peek(Token![=]) {
                    input.parse::<Token![=]>()?;
                    let key = match path.get_ident() {
                        Some(key) => key.clone(),
                        None => return Err(syn::Error::new_spanned(&path, "expected a key")),
                    };
                    let value = take_value(input)?;
                    if value.is_empty() {
                        return Err(syn::Error::new(
                            key.span(),
                            format_args!("expected a value after `{key} =`"),
                        ));
                    }
                    out.push(Arg::KeyValue { key, value });
                } else {
                    out.push(Arg::Path(path));
                }
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        Ok(out)
    };
    parser.parse2(tokens)
}

fn take_value(input: ParseStream<'_>) -> syn::Result<TokenStream> {
    input.step(|cursor| {
        let mut rest = *cursor;
        let mut out = TokenStream::new();
        let mut depth = 0usize;
        while let Some((tt, next)) = rest.token_tree() {
            if let TokenTree::Punct(p) = &tt {
                match p.as_char() {
                    ',' if depth == 0 => break,
                    '<' => depth += 1,
                    '>' => depth = depth.saturating_sub(1),
                    _ => {}
                }
            }
            out.extend([tt]);
            rest = next;
        }
        Ok((out, rest))
    })
}

/// Remembers which keys were seen, to report duplicates at the second occurrence.
#[derive(Default)]
pub(crate) struct Seen(Vec<String>);

impl Seen {
    /// `true` the first time; records an error on later ones.
    pub(crate) fn first(&mut self, key: &Ident, errors: &mut Errors) -> bool {
        let name = key.to_string();
        if self.0.contains(&name) {
            errors.error(key, format_args!("duplicate argument `{name}`"));
            false
        } else {
            self.0.push(name);
            true
        }
    }
}

/// "unknown `event` argument `x`; expected one of `a`, `b`".
pub(crate) fn unknown(macro_name: &str, key: &dyn ToTokens, valid: &[&str]) -> syn::Error {
    let name = key.to_token_stream().to_string().replace(' ', "");
    let list = valid
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    syn::Error::new_spanned(
        key,
        format_args!("unknown `{macro_name}` argument `{name}`; expected one of {list}"),
    )
}

pub(crate) fn parse_value<T: syn::parse::Parse>(key: &Ident, value: TokenStream) -> syn::Result<T> {
    syn::parse2::<T>(value.clone()).map_err(|e| {
        let span = if value.is_empty() {
            key.span()
        } else {
            value.span()
        };
        syn::Error::new(span, format_args!("invalid value for `{key}`: {e}"))
    })
}

pub(crate) fn lit_str(key: &Ident, value: TokenStream) -> syn::Result<LitStr> {
    syn::parse2::<LitStr>(value.clone()).map_err(|_| {
        syn::Error::new_spanned(
            &value,
            format_args!("`{key}` expects a string literal, e.g. `{key} = \"...\"`"),
        )
    })
}

/// The runtime path (`::tchu` unless `crate = "..."` says otherwise).
#[derive(Clone)]
pub(crate) struct CratePath(pub(crate) syn::Path);

impl Default for CratePath {
    fn default() -> Self {
        let mut segments = syn::punctuated::Punctuated::new();
        segments.push(syn::PathSegment::from(Ident::new(
            "tchu",
            Span::call_site(),
        )));
        CratePath(syn::Path {
            leading_colon: Some(Default::default()),
            segments,
        })
    }
}

impl CratePath {
    pub(crate) fn parse(lit: &LitStr) -> syn::Result<CratePath> {
        let path: syn::Path = lit.parse().map_err(|_| {
            syn::Error::new(
                lit.span(),
                format_args!(
                    "`crate` expects a path such as `\"::tchu\"`, got `{}`",
                    lit.value()
                ),
            )
        })?;
        if path
            .segments
            .iter()
            .any(|s| !matches!(s.arguments, syn::PathArguments::None))
        {
            return Err(syn::Error::new(lit.span(), "`crate` expects a plain path"));
        }
        // Re-span so generated paths resolve at the call site, not inside the literal.
        let path = respan_path(path, Span::call_site());
        Ok(CratePath(path))
    }

    /// `<crate>::__private`.
    pub(crate) fn private(&self) -> TokenStream {
        let p = &self.0;
        quote!(#p::__private)
    }

    /// `"<crate>::__private::<name>"` as a string, for `#[serde(crate = "...")]` and friends.
    pub(crate) fn private_str(&self, name: &str) -> String {
        let mut s = String::new();
        if self.0.leading_colon.is_some() {
            s.push_str("::");
        }
        let segs: Vec<String> = self
            .0
            .segments
            .iter()
            .map(|s| s.ident.to_string())
            .collect();
        s.push_str(&segs.join("::"));
        s.push_str("::__private::");
        s.push_str(name);
        s
    }
}

fn respan_path(mut path: syn::Path, span: Span) -> syn::Path {
    if let Some(c) = &mut path.leading_colon {
        c.spans = [span, span];
    }
    for seg in &mut path.segments {
        seg.ident.set_span(span);
    }
    for mut pair in path.segments.pairs_mut() {
        if let Some(p) = pair.punct_mut() {
            p.spans = [span, span];
        }
    }
    path
}

/// Parses `500ms`, `10s`, `5m`, `2h` into milliseconds.
pub(crate) fn parse_duration(lit: &LitStr) -> syn::Result<u64> {
    let text = lit.value();
    let err = || {
        syn::Error::new(
            lit.span(),
            format_args!(
                "invalid duration `{text}`; expected a whole number and a unit `ms`, `s`, `m` \
                 or `h`, e.g. `500ms`, `10s`"
            ),
        )
    };
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(digits_end);
    if num.is_empty() {
        return Err(err());
    }
    let n: u64 = num.parse().map_err(|_| err())?;
    let factor: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(err()),
    };
    n.checked_mul(factor)
        .ok_or_else(|| syn::Error::new(lit.span(), format_args!("duration `{text}` is too large")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(s: &str) -> LitStr {
        LitStr::new(s, Span::call_site())
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration(&lit("500ms")).ok(), Some(500));
        assert_eq!(parse_duration(&lit("1s")).ok(), Some(1_000));
        assert_eq!(parse_duration(&lit("10m")).ok(), Some(600_000));
        assert_eq!(parse_duration(&lit("2h")).ok(), Some(7_200_000));
        for bad in [
            "",
            "s",
            "1",
            "1.5s",
            "1 s",
            "-1s",
            "1d",
            "99999999999999999999ms",
        ] {
            assert!(parse_duration(&lit(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn splits_generic_values() {
        let args = split_args(quote!(topic = "a.b", response = Vec<(u8, u8)>, jitter, "x"))
            .unwrap_or_default();
        assert_eq!(args.len(), 4);
        match &args[1] {
            Arg::KeyValue { key, value } => {
                assert_eq!(key.to_string(), "response");
                assert_eq!(value.to_string(), quote!(Vec<(u8, u8)>).to_string());
            }
            _ => unreachable!("not a key-value"),
        }
    }

    #[test]
    fn crate_strings() {
        let c = CratePath::default();
        assert_eq!(c.private_str("serde"), "::tchu::__private::serde");
        let c = CratePath::parse(&lit("my::tchu")).unwrap_or_default();
        assert_eq!(c.private_str("serde"), "my::tchu::__private::serde");
    }
}
