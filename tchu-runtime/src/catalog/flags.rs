//! `--catalog` and `--asyncapi` for any service, with one line: [`catalog_flags!`].

use std::io::Write;

use super::file::ServiceInfo;

/// Gives a service `--catalog` and `--asyncapi`: put `tchu::catalog_flags!();` first in
/// `main`. When the process was started with either flag, it writes the service's catalog
/// file (see `tchu lint`) or its AsyncAPI 3.0 document and exits; otherwise it does nothing.
///
/// ```sh
/// my-service --catalog              # the catalog file on stdout
/// my-service --catalog=users.json   # or into a file
/// my-service --asyncapi=users.yaml  # (JSON, which is YAML too)
/// ```
///
/// The service name is `TCHU_SERVICE`, else the executable's name (as `tchu::run()` does);
/// the version is the calling crate's. By default every linked broadcast event that no
/// typed handler of the binary receives counts as published; name them when the service
/// also receives what it publishes:
///
/// ```ignore
/// tchu::catalog_flags!(publishes = [UserCreated, UserDeleted]);
/// ```
#[macro_export]
macro_rules! catalog_flags {
    () => {
        $crate::handle_catalog_flags(
            ::core::env!("CARGO_PKG_NAME"),
            ::core::env!("CARGO_PKG_VERSION"),
            ::core::option::Option::None,
        )
    };
    (publishes = [$($t:ty),* $(,)?]) => {
        $crate::handle_catalog_flags(
            ::core::env!("CARGO_PKG_NAME"),
            ::core::env!("CARGO_PKG_VERSION"),
            ::core::option::Option::Some(&[$(::core::any::type_name::<$t>()),*]),
        )
    };
}

/// What [`catalog_flags!`] expands to: when the arguments have `--catalog[=FILE]` or
/// `--asyncapi[=FILE]`, writes it and exits (status 0, or 2 with the reason on stderr).
pub fn handle_catalog_flags(crate_name: &str, version: &str, publishes: Option<&[&str]>) {
    let Some((flag, out)) = std::env::args().skip(1).find_map(|a| parse_flag(&a)) else {
        return;
    };
    let code = match describe(flag, crate_name, version, publishes) {
        Ok(text) => match write_out(out.as_deref(), &text) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!(
                    "{flag}: cannot write {}: {e}",
                    out.as_deref().unwrap_or("stdout")
                );
                2
            }
        },
        Err(e) => {
            eprintln!("{flag}: {e}");
            2
        }
    };
    std::process::exit(code);
}

/// `--catalog`, `--catalog=FILE`, `--asyncapi`, `--asyncapi=FILE`.
fn parse_flag(arg: &str) -> Option<(&'static str, Option<String>)> {
    for flag in ["--catalog", "--asyncapi"] {
        if arg == flag {
            return Some((flag, None));
        }
        if let Some(path) = arg.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            return Some((flag, Some(path.to_owned())));
        }
    }
    None
}

/// The service as this process would run it: name and exchange from the environment.
pub fn service_info(crate_name: &str, version: &str, publishes: Option<&[&str]>) -> ServiceInfo {
    let config = crate::Config::from_env().ok();
    let service = std::env::var("TCHU_SERVICE").ok().or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
    });
    let mut info = ServiceInfo::new(service.unwrap_or_else(|| crate_name.to_owned()));
    info.crate_name = Some(crate_name.to_owned());
    info.version = Some(version.to_owned());
    info.exchange = config.map(|c| c.exchange);
    info.publishes = publishes.map(|p| p.iter().map(|s| (*s).to_owned()).collect());
    info
}

fn describe(
    flag: &str,
    crate_name: &str,
    version: &str,
    publishes: Option<&[&str]>,
) -> Result<String, String> {
    let info = service_info(crate_name, version, publishes);
    let catalog = super::catalog();
    let file = catalog.file(&info);
    let mut text = if flag == "--catalog" {
        serde_json::to_string_pretty(&file)
    } else {
        let config = crate::Config::from_env().map_err(|e| e.to_string())?;
        let doc = super::asyncapi::document(&file, &super::asyncapi::Deployment::of(&config));
        serde_json::to_string_pretty(&doc)
    }
    .map_err(|e| e.to_string())?;
    text.push('\n');
    Ok(text)
}

fn write_out(path: Option<&str>, text: &str) -> std::io::Result<()> {
    match path {
        Some(p) => std::fs::write(p, text),
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()
        }
    }
}
