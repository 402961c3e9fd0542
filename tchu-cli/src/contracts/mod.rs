//! Contracts across a fleet, from catalog files (`my-service --catalog`): `tchu lint`,
//! `tchu diff` and `tchu map`. Nothing here touches a broker.

pub(crate) mod diff;
pub(crate) mod lint;
pub(crate) mod map;
pub(crate) mod schema;

use std::path::{Path, PathBuf};

use serde::Serialize;
use tchu::CatalogFile;

use crate::BoxError;

/// Reads catalog files; a directory stands for its `*.json` files.
pub(crate) fn load(paths: &[PathBuf]) -> Result<Vec<CatalogFile>, BoxError> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| format!("{}: {e}", p.display()))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|x| x.extension().is_some_and(|e| e == "json"))
                .collect();
            inside.sort();
            for x in inside {
                files.push(load_one(&x)?);
            }
        } else {
            files.push(load_one(p)?);
        }
    }
    if files.is_empty() {
        return Err("no catalog files given".into());
    }
    Ok(files)
}

/// Reads one catalog file.
pub(crate) fn load_one(path: &Path) -> Result<CatalogFile, BoxError> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    CatalogFile::from_json(&text).map_err(|e| format!("{}: {e}", path.display()).into())
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Severity {
    /// Fails the check.
    Error,
    /// Reported; fails only with `--deny-warnings`.
    Warning,
}

/// One finding of `lint` or `diff`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Finding {
    /// Error or warning (`lint`).
    pub(crate) severity: Severity,
    /// The check's name (`unmatched-subscription`, ...).
    pub(crate) check: &'static str,
    /// One sentence naming services, topic or pattern.
    pub(crate) message: String,
    /// The services involved.
    pub(crate) services: Vec<String>,
    /// The topic, when one is involved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) topic: Option<String>,
    /// The pattern, when one is involved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pattern: Option<String>,
    /// The fields involved, each with what is wrong.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) fields: Vec<String>,
    /// More lines for the reader (suggestions, what exists).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) notes: Vec<String>,
}

impl Finding {
    pub(crate) fn new(severity: Severity, check: &'static str, message: String) -> Self {
        Finding {
            severity,
            check,
            message,
            services: Vec::new(),
            topic: None,
            pattern: None,
            fields: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub(crate) fn services<I: IntoIterator<Item = S>, S: Into<String>>(mut self, s: I) -> Self {
        self.services = s.into_iter().map(Into::into).collect();
        self.services.sort();
        self.services.dedup();
        self
    }

    pub(crate) fn topic(mut self, t: &str) -> Self {
        self.topic = Some(t.to_owned());
        self
    }

    pub(crate) fn pattern(mut self, p: &str) -> Self {
        self.pattern = Some(p.to_owned());
        self
    }

    pub(crate) fn fields(mut self, f: Vec<String>) -> Self {
        self.fields = f;
        self
    }

    pub(crate) fn note(mut self, n: String) -> Self {
        self.notes.push(n);
        self
    }

    /// The readable form: `error[check]: message` and indented details.
    pub(crate) fn render(&self, label: &str) -> String {
        let mut s = format!("{label}[{}]: {}\n", self.check, self.message);
        for f in &self.fields {
            s.push_str(&format!("    - {f}\n"));
        }
        for n in &self.notes {
            s.push_str(&format!("    = {n}\n"));
        }
        s
    }
}

/// Runs `lint`, `diff` or `map`; `None` for the broker commands.
pub(crate) fn command(cmd: &crate::Command) -> Result<Option<std::process::ExitCode>, BoxError> {
    use std::process::ExitCode;
    Ok(Some(match cmd {
        crate::Command::Lint {
            catalogs,
            json,
            deny_warnings,
        } => {
            let files = load(catalogs)?;
            let findings = lint::lint(&files);
            let errors = findings
                .iter()
                .filter(|f| f.severity == Severity::Error)
                .count();
            let warnings = findings.len() - errors;
            let services: Vec<&str> = files.iter().map(|f| f.service.as_str()).collect();
            if *json {
                let report = serde_json::json!({
                    "services": services,
                    "errors": errors,
                    "warnings": warnings,
                    "findings": findings,
                });
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for f in &findings {
                    let label = match f.severity {
                        Severity::Error => "error",
                        Severity::Warning => "warning",
                    };
                    print!("{}", f.render(label));
                }
                println!(
                    "tchu lint: {errors} error(s), {warnings} warning(s) in {} catalog(s): {}",
                    files.len(),
                    services.join(", ")
                );
            }
            if errors > 0 || (*deny_warnings && warnings > 0) {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        crate::Command::Diff {
            old,
            new,
            json,
            allow_breaking,
        } => {
            let (o, n) = (load_one(old)?, load_one(new)?);
            if o.service != n.service {
                return Err(format!(
                    "{} describes `{}` and {} describes `{}`: diff compares two versions of one service",
                    old.display(),
                    o.service,
                    new.display(),
                    n.service
                )
                .into());
            }
            let changes = diff::diff(&o, &n);
            let breaking = changes
                .iter()
                .filter(|c| c.verdict == diff::Verdict::Breaking)
                .count();
            let version = |f: &CatalogFile| f.version.clone().unwrap_or_else(|| "?".to_owned());
            if *json {
                let report = serde_json::json!({
                    "service": o.service,
                    "old_version": o.version,
                    "new_version": n.version,
                    "breaking": breaking,
                    "compatible": changes.len() - breaking,
                    "changes": changes,
                });
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for c in &changes {
                    let label = match c.verdict {
                        diff::Verdict::Breaking => "breaking",
                        diff::Verdict::Compatible => "compatible",
                    };
                    println!("{label}[{}]: {}", c.kind, c.message);
                    for f in &c.fields {
                        println!("    - {f}");
                    }
                }
                println!(
                    "tchu diff {} {} → {}: {breaking} breaking, {} compatible change(s){}",
                    o.service,
                    version(&o),
                    version(&n),
                    changes.len() - breaking,
                    if breaking > 0 && *allow_breaking {
                        " (allowed)"
                    } else {
                        ""
                    }
                );
            }
            if breaking > 0 && !*allow_breaking {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        crate::Command::Map { catalogs, output } => {
            let files = load(catalogs)?;
            let page = map::render(&files);
            match output {
                Some(p) => std::fs::write(p, page).map_err(|e| format!("{}: {e}", p.display()))?,
                None => print!("{page}"),
            }
            ExitCode::SUCCESS
        }
        _ => return Ok(None),
    }))
}
