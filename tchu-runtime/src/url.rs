//! Broker URLs as plain data: parsing (several nodes, host lists), checking and redacting
//! credentials. [`Client::connect`](crate::Client::connect) turns a URL into a connection.

use std::fmt;

use crate::error::ConfigError;

/// Where the broker is. Displays and debugs without credentials.
#[derive(Clone)]
pub enum BrokerUrl {
    /// RabbitMQ (`amqp://` or `amqps://`): one URL per node of a cluster, tried in order. The
    /// client connects to the first that answers and, when the connection is lost and cannot be
    /// recovered, to the next ones (see `docs/cluster.md`).
    Amqp(Vec<String>),
    /// An in-process broker ([`MemoryBroker`](crate::MemoryBroker)): `memory://` makes a new
    /// one when the client connects; a given one is handed over where a client or app is made
    /// ([`Client::connect_memory`](crate::Client::connect_memory),
    /// [`App::broker`](crate::App::broker)), never kept in the settings.
    Memory,
}

impl BrokerUrl {
    /// Parses a URL: `memory://` is an in-process broker. An `amqp://` URL may name
    /// several nodes, either in its host part (`amqp://user:pass@h1:5672,h2:5673/%2f`: the
    /// credentials, virtual host and query apply to every node) or as comma-separated full URLs
    /// (`amqp://u:p@h1/%2f,amqp://u:p@h2/%2f`, as in `TCHU_BROKER_URLS`).
    ///
    /// # Errors
    /// An unknown scheme, an empty host in a list, or a URL lapin cannot read (a bad port or
    /// query parameter).
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let url = url.trim();
        if url.starts_with("memory://") {
            return Ok(BrokerUrl::Memory);
        }
        let mut urls = Vec::new();
        for one in split_full_urls(url) {
            if !(one.starts_with("amqp://") || one.starts_with("amqps://")) {
                return Err(ConfigError::BrokerUrl(format!(
                    "`{}`: expected amqp://, amqps:// or memory://",
                    redact(one)
                )));
            }
            for u in expand_hosts(one)? {
                // Checked now, so that a bad port or query is a configuration error.
                if let Err(e) = u.parse::<lapin::uri::AMQPUri>() {
                    return Err(ConfigError::BrokerUrl(format!(
                        "`{}`: {}",
                        redact(&u),
                        e.replace(&u, &redact(&u))
                    )));
                }
                urls.push(u);
            }
        }
        Ok(BrokerUrl::Amqp(urls))
    }

    /// The `amqp://` URLs of the nodes, in the order they are tried (empty for `memory://`).
    /// They hold credentials: do not log them (use [`redact`]).
    pub fn amqp_urls(&self) -> &[String] {
        match self {
            BrokerUrl::Amqp(urls) => urls,
            BrokerUrl::Memory => &[],
        }
    }
}

/// Splits `a,amqp://b,amqps://c` at the commas that start another URL (a comma elsewhere
/// belongs to a host list or to a password).
fn split_full_urls(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, _) in s.match_indices(',') {
        if starts_with_scheme(s[i + 1..].trim_start()) {
            out.push(s[start..i].trim());
            start = i + 1;
        }
    }
    out.push(s[start..].trim());
    out
}

/// Whether `s` starts with `scheme://`.
fn starts_with_scheme(s: &str) -> bool {
    let Some(end) = s.find("://") else {
        return false;
    };
    let scheme = &s[..end];
    scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// Where the authority of a URL ends (the first `/`, `?` or `#` after the scheme).
fn authority_range(url: &str) -> Option<(usize, usize)> {
    let begin = url.find("://")? + 3;
    let end = url[begin..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| begin + i);
    Some((begin, end))
}

/// `amqp://u:p@h1,h2:5673/v` becomes `amqp://u:p@h1/v` and `amqp://u:p@h2:5673/v`.
fn expand_hosts(url: &str) -> Result<Vec<String>, ConfigError> {
    let Some((begin, end)) = authority_range(url) else {
        return Ok(vec![url.to_owned()]);
    };
    let authority = &url[begin..end];
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    if !hosts.contains(',') {
        return Ok(vec![url.to_owned()]);
    }
    hosts
        .split(',')
        .map(|h| {
            let h = h.trim();
            if h.is_empty() {
                Err(ConfigError::BrokerUrl(format!(
                    "`{}`: empty host in the host list",
                    redact(url)
                )))
            } else {
                Ok(format!("{}{userinfo}{h}{}", &url[..begin], &url[end..]))
            }
        })
        .collect()
}

/// Replaces the password in a URL by `***` (in every URL of a comma-separated list).
pub fn redact(url: &str) -> String {
    split_full_urls(url)
        .into_iter()
        .map(redact_one)
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_one(url: &str) -> String {
    let Some((begin, end)) = authority_range(url) else {
        return url.to_owned();
    };
    let authority = &url[begin..end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..begin], &url[begin + at..])
        }
        None => url.to_owned(),
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerUrl::Amqp(urls) => {
                for (i, u) in urls.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    f.write_str(&redact_one(u))?;
                }
                Ok(())
            }
            BrokerUrl::Memory => f.write_str("memory://"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted() {
        let u = BrokerUrl::parse("amqp://alice:s3cret@host:5672/%2f").unwrap();
        assert_eq!(u.to_string(), "amqp://alice:***@host:5672/%2f");
        assert!(!format!("{u:?}").contains("s3cret"));
        assert_eq!(redact("amqp://host/"), "amqp://host/");
    }

    #[test]
    fn memory_urls_are_data() {
        assert!(matches!(
            BrokerUrl::parse(" memory:// ").unwrap(),
            BrokerUrl::Memory
        ));
        assert_eq!(BrokerUrl::Memory.to_string(), "memory://");
    }

    fn urls(s: &str) -> Vec<String> {
        BrokerUrl::parse(s).unwrap().amqp_urls().to_vec()
    }

    #[test]
    fn a_host_list_expands_to_one_url_per_node() {
        assert_eq!(
            urls("amqp://user:pass@h1:5672,h2:5673,h3:5674/%2f"),
            vec![
                "amqp://user:pass@h1:5672/%2f",
                "amqp://user:pass@h2:5673/%2f",
                "amqp://user:pass@h3:5674/%2f",
            ]
        );
        assert_eq!(
            urls("amqps://h1, h2?heartbeat=10"),
            vec!["amqps://h1?heartbeat=10", "amqps://h2?heartbeat=10"]
        );
        assert_eq!(urls("amqp://u:p@one:5672"), vec!["amqp://u:p@one:5672"]);
        // A comma in a password is not a host separator.
        assert_eq!(urls("amqp://u:a,b@h/%2f"), vec!["amqp://u:a,b@h/%2f"]);
        assert!(BrokerUrl::parse("amqp://u:p@h1,,h2/").is_err());
    }

    #[test]
    fn a_list_of_full_urls_is_split_and_may_mix_host_lists() {
        assert_eq!(
            urls("amqp://a:1@h1:5681/%2f, amqp://b:2@h2:5682/%2f,amqps://c:3@h3,h4/v"),
            vec![
                "amqp://a:1@h1:5681/%2f",
                "amqp://b:2@h2:5682/%2f",
                "amqps://c:3@h3/v",
                "amqps://c:3@h4/v",
            ]
        );
        assert!(BrokerUrl::parse("amqp://h1,http://h2").is_err());
        assert!(BrokerUrl::parse("amqp://h1/,http://h2").is_err());
    }

    #[test]
    fn every_password_is_redacted() {
        let u =
            BrokerUrl::parse("amqp://alice:s1@h1:5672,h2:5673/%2f,amqp://bob:s2@h3/%2f").unwrap();
        let shown = u.to_string();
        assert_eq!(
            shown,
            "amqp://alice:***@h1:5672/%2f,amqp://alice:***@h2:5673/%2f,amqp://bob:***@h3/%2f"
        );
        assert!(!format!("{u:?}").contains("s1") && !shown.contains("s2"));
        assert_eq!(
            redact("amqp://alice:s1@h1,h2/%2f,amqp://bob:s2@h3/%2f"),
            "amqp://alice:***@h1,h2/%2f,amqp://bob:***@h3/%2f"
        );
        let err = BrokerUrl::parse("amqp://a:secret@h/,ftp://b:secret2@h")
            .err()
            .unwrap();
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn a_url_lapin_cannot_read_is_a_config_error_without_the_password() {
        for bad in [
            "amqp://alice:s3cret@host:99999/%2f",
            "amqp://alice:s3cret@host/%2f?heartbeat=soon",
        ] {
            let err = BrokerUrl::parse(bad).err().unwrap();
            let text = err.to_string();
            assert!(text.contains("alice:***@host"), "{text}");
            assert!(!text.contains("s3cret"), "{text}");
        }
    }
}
