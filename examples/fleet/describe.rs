//! The example services' `--catalog` / `--asyncapi` flags.

/// If the first argument is `--catalog` or `--asyncapi`, prints the service's catalog (its
/// linked events and subscriptions) or its AsyncAPI 3.0 document and returns `true`.
///
/// # Errors
/// An unknown flag, or JSON that does not serialize.
pub(crate) fn describe_if_asked(service: &str) -> Result<bool, Box<dyn std::error::Error>> {
    let Some(flag) = std::env::args().nth(1) else {
        return Ok(false);
    };
    let catalog = tchu::catalog();
    let doc = match flag.as_str() {
        "--catalog" => serde_json::to_value(&catalog)?,
        "--asyncapi" => catalog.asyncapi(service),
        other => {
            return Err(
                format!("unknown flag `{other}`; expected `--catalog` or `--asyncapi`").into(),
            );
        }
    };
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(true)
}
