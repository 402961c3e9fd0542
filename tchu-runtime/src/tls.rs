//! TLS settings for `amqps://` connections, as plain data (files are read and checked when
//! set; the `tls` feature turns them into rustls settings in `broker/amqp.rs`).

use std::fmt;
use std::path::Path;

use crate::error::ConfigError;

/// TLS settings for `amqps://` connections (rustls; needs the `tls` feature).
///
/// The server's certificate is checked against the system's root certificates plus
/// [`ca_pem`](Self::ca_pem), and its name against the host of the URL (there is no override:
/// use the name the certificate was issued for, e.g. `amqps://rabbit.internal:5671`). A client
/// certificate is presented when set, for brokers with `ssl_options.verify = verify_peer` and
/// `fail_if_no_peer_cert = true`.
///
/// `Debug` shows neither the private key nor the PKCS#12 password.
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsConfig {
    /// Extra trusted CA certificates (PEM, one or more), e.g. a private CA.
    pub ca_pem: Option<Vec<u8>>,
    /// The client certificate to present, if any.
    pub client_cert: Option<ClientCert>,
}

/// A client certificate with its private key.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientCert {
    /// A PEM certificate chain (the client's certificate first) and its unencrypted PEM private
    /// key (PKCS#8, PKCS#1 or SEC1).
    Pem {
        /// The certificate chain, PEM.
        cert_chain: Vec<u8>,
        /// The private key, PEM.
        key: Vec<u8>,
    },
    /// A PKCS#12 (`.p12`/`.pfx`) archive, DER, with its password.
    Pkcs12 {
        /// The archive.
        der: Vec<u8>,
        /// Its password.
        password: String,
    },
}

impl fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientCert::Pem { cert_chain, .. } => f
                .debug_struct("Pem")
                .field("cert_chain", &format_args!("<{} bytes>", cert_chain.len()))
                .field("key", &format_args!("<redacted>"))
                .finish(),
            ClientCert::Pkcs12 { der, .. } => f
                .debug_struct("Pkcs12")
                .field("der", &format_args!("<{} bytes, redacted>", der.len()))
                .field("password", &format_args!("<redacted>"))
                .finish(),
        }
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field(
                "ca_pem",
                &self.ca_pem.as_ref().map(|p| format!("<{} bytes>", p.len())),
            )
            .field("client_cert", &self.client_cert)
            .finish()
    }
}

/// What a PEM file must contain.
#[derive(Clone, Copy)]
enum PemKind {
    Certificate,
    PrivateKey,
}

fn read_pem(what: &'static str, path: &Path, kind: PemKind) -> Result<Vec<u8>, ConfigError> {
    let bad = |reason: String| ConfigError::TlsFile {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let text = String::from_utf8_lossy(&bytes);
    let ok = match kind {
        PemKind::Certificate => text.contains("-----BEGIN CERTIFICATE-----"),
        PemKind::PrivateKey => text.contains("-----BEGIN ") && text.contains("PRIVATE KEY-----"),
    };
    if !ok {
        return Err(bad(match kind {
            PemKind::Certificate => "no PEM certificate (`-----BEGIN CERTIFICATE-----`) in it",
            PemKind::PrivateKey => "no PEM private key (`-----BEGIN PRIVATE KEY-----`) in it",
        }
        .to_owned()));
    }
    if text.contains("ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(bad(
            "the private key is encrypted: decrypt it (`openssl pkey -in k.pem -out k2.pem`) or \
             use a PKCS#12 archive with its password"
                .to_owned(),
        ));
    }
    Ok(bytes)
}

impl TlsConfig {
    /// No custom CA and no client certificate: the server must have a certificate signed by a
    /// root the system trusts.
    pub fn new() -> Self {
        TlsConfig::default()
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.ca_pem.is_none() && self.client_cert.is_none()
    }

    /// Also trusts the CA certificates of this PEM text.
    #[must_use]
    pub fn with_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Also trusts the CA certificates of this PEM file.
    ///
    /// # Errors
    /// The file cannot be read or holds no PEM certificate.
    pub fn with_ca_file(self, path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let pem = read_pem("CA certificate file", path.as_ref(), PemKind::Certificate)?;
        Ok(self.with_ca_pem(pem))
    }

    /// Presents this client certificate chain (PEM) with its unencrypted private key (PEM).
    #[must_use]
    pub fn with_client_cert_pem(
        mut self,
        cert_chain: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        self.client_cert = Some(ClientCert::Pem {
            cert_chain: cert_chain.into(),
            key: key.into(),
        });
        self
    }

    /// Presents the client certificate of these PEM files (certificate chain, private key).
    ///
    /// # Errors
    /// A file cannot be read, holds no PEM certificate or key, or the key is encrypted.
    pub fn with_client_cert_files(
        self,
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, ConfigError> {
        let cert = read_pem(
            "client certificate file",
            cert_chain.as_ref(),
            PemKind::Certificate,
        )?;
        let key = read_pem("client key file", key.as_ref(), PemKind::PrivateKey)?;
        Ok(self.with_client_cert_pem(cert, key))
    }

    /// Presents the client certificate and key of a PKCS#12 archive (DER).
    #[must_use]
    pub fn with_client_pkcs12(
        mut self,
        der: impl Into<Vec<u8>>,
        password: impl Into<String>,
    ) -> Self {
        self.client_cert = Some(ClientCert::Pkcs12 {
            der: der.into(),
            password: password.into(),
        });
        self
    }

    /// Reads `TCHU_TLS_CA_FILE` (PEM CA certificates to trust besides the system's roots),
    /// `TCHU_TLS_CERT_FILE` and `TCHU_TLS_KEY_FILE` (a PEM client certificate chain and its
    /// unencrypted PEM private key; both or neither). Unset or empty variables are ignored.
    ///
    /// # Errors
    /// A file cannot be read or is not PEM, or only one of the certificate and key is set.
    pub fn from_env() -> Result<Self, ConfigError> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let mut tls = TlsConfig::new();
        if let Some(ca) = var("TCHU_TLS_CA_FILE") {
            tls = tls.with_ca_file(ca)?;
        }
        match (var("TCHU_TLS_CERT_FILE"), var("TCHU_TLS_KEY_FILE")) {
            (Some(cert), Some(key)) => tls = tls.with_client_cert_files(cert, key)?,
            (None, None) => {}
            (Some(_), None) => {
                return Err(ConfigError::Tls(
                    "TCHU_TLS_CERT_FILE is set without TCHU_TLS_KEY_FILE".to_owned(),
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::Tls(
                    "TCHU_TLS_KEY_FILE is set without TCHU_TLS_CERT_FILE".to_owned(),
                ));
            }
        }
        Ok(tls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_debug_hides_keys_and_passwords() {
        let tls = TlsConfig::new()
            .with_ca_pem("-----BEGIN CERTIFICATE-----")
            .with_client_cert_pem("-----BEGIN CERTIFICATE-----", "KEY-SECRET");
        let shown = format!("{tls:?} {tls:#?}");
        assert!(!shown.contains("KEY-SECRET"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        let p12 = TlsConfig::new().with_client_pkcs12(b"P12-SECRET".to_vec(), "PW-SECRET");
        let shown = format!("{p12:?}");
        assert!(
            !shown.contains("PW-SECRET") && !shown.contains("80, 49, 50"),
            "{shown}"
        );
        assert!(TlsConfig::new().is_empty() && !tls.is_empty());
    }

    #[test]
    fn tls_files_are_checked_when_read() {
        let dir = std::env::temp_dir().join(format!("tchu-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = TlsConfig::new()
            .with_ca_file(dir.join("missing.pem"))
            .unwrap_err();
        assert!(
            matches!(
                &missing,
                ConfigError::TlsFile {
                    what: "CA certificate file",
                    ..
                }
            ),
            "{missing}"
        );
        assert!(missing.to_string().contains("missing.pem"), "{missing}");

        std::fs::write(dir.join("cert.pem"), "-----BEGIN CERTIFICATE-----\nAA==\n").unwrap();
        std::fs::write(dir.join("not.pem"), "hello").unwrap();
        std::fs::write(
            dir.join("enc.key"),
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAA==\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = TlsConfig::new()
            .with_ca_file(dir.join("not.pem"))
            .unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        let err = TlsConfig::new()
            .with_client_cert_files(dir.join("cert.pem"), dir.join("not.pem"))
            .unwrap_err();
        assert!(err.to_string().contains("no PEM private key"), "{err}");
        let err = TlsConfig::new()
            .with_client_cert_files(dir.join("cert.pem"), dir.join("enc.key"))
            .unwrap_err();
        assert!(err.to_string().contains("encrypted"), "{err}");
        let ok = TlsConfig::new().with_ca_file(dir.join("cert.pem")).unwrap();
        assert!(ok.ca_pem.is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
