//! TLS to PostgreSQL and Redis (rustls with ring): the root certificates trusted, and the
//! check each mode makes of the server's certificate.
//!
//! PostgreSQL follows libpq's `sslmode` ([`PgTlsMode`]); the URL may carry `sslmode` and
//! `sslrootcert` as a managed PostgreSQL's connection string does, which tokio-postgres's
//! parser does not know (it stops at `require`): they are taken out of the URL here. Redis uses
//! TLS for a `rediss://` URL and checks the certificate fully.

use std::path::Path;
#[cfg(feature = "postgres")]
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

#[cfg(feature = "postgres")]
use crate::PgTlsMode;
use crate::{StorageConfigError, StorageError};

/// What is checked of the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "postgres"), allow(dead_code, reason = "only PostgreSQL's modes check less"))]
pub(crate) enum Check {
    /// Nothing (the connection is encrypted, the peer not authenticated).
    Nothing,
    /// The chain up to a trusted CA, whatever host name it is for.
    Chain,
    /// The chain and the host name.
    Full,
}

/// The process's crypto: ring, passed explicitly (no process-wide default is installed or
/// needed).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The trusted roots: the certificates of `ca_file` (PEM), or Mozilla's when it is `None`.
/// `key` names the setting in errors.
fn roots(ca_file: Option<&Path>, key: &str) -> Result<RootCertStore, StorageError> {
    let Some(path) = ca_file else {
        return Ok(RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() });
    };
    let invalid = |reason: String| StorageConfigError::Invalid { key: key.into(), reason };
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    let mut store = RootCertStore::empty();
    let (added, ignored) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(invalid(format!(
            "{} holds no usable CA certificate ({ignored} refused)",
            path.display()
        ))
        .into());
    }
    Ok(store)
}

/// A rustls client configuration that checks `check` of the server's certificate against the
/// roots of `ca_file` (or Mozilla's).
pub(crate) fn client_config(
    check: Check,
    ca_file: Option<&Path>,
    key: &str,
) -> Result<ClientConfig, StorageError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StorageError::failed("tls", e))?;
    let config = match check {
        Check::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unchecked(provider)))
            .with_no_client_auth(),
        Check::Chain | Check::Full => {
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca_file, key)?), provider)
                    .build()
                    .map_err(|e| StorageError::failed("tls", e))?;
            if check == Check::Full {
                builder.with_webpki_verifier(webpki).with_no_client_auth()
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
                    .with_no_client_auth()
            }
        }
    };
    Ok(config)
}

/// Accepts any certificate (`prefer` and `require` without a CA file, as libpq does); the
/// handshake's signatures are still checked, so the connection is encrypted with the holder of
/// the certificate shown.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the full check but for the host name. rustls checks the chain (trust, expiry,
/// usage) before the name, so a name error means the chain passed.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A PostgreSQL URL with libpq's TLS parameters taken out, and what they and the settings
/// ask for.
#[cfg(feature = "postgres")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PgTls {
    /// The URL without `sslmode` and `sslrootcert`, for tokio-postgres's parser.
    pub url: String,
    /// The stricter of the URL's `sslmode` and the `tls` setting.
    pub mode: PgTlsMode,
    /// `sslrootcert` or the `tls_ca_file` setting (`None`: Mozilla's roots).
    pub ca_file: Option<PathBuf>,
}

#[cfg(feature = "postgres")]
impl PgTls {
    /// Reads `sslmode` and `sslrootcert` out of `cfg.url` (a `postgres://` or `postgresql://`
    /// URL; a key-value string is left to tokio-postgres) and merges them with the settings.
    ///
    /// # Errors
    /// [`StorageConfigError::Invalid`] for an unknown `sslmode`, or a `sslrootcert` other than
    /// the `tls_ca_file` setting.
    pub fn from_config(cfg: &crate::PostgresConfig) -> Result<Self, StorageConfigError> {
        let invalid = |key: &str, reason: String| StorageConfigError::Invalid { key: key.into(), reason };
        let mut mode = cfg.tls;
        let setting = (!cfg.tls_ca_file.as_os_str().is_empty()).then(|| cfg.tls_ca_file.clone());
        let mut ca_file = setting.clone();
        let mut url = cfg.url.clone();
        let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
        if let (true, Some((base, query))) = (is_url, cfg.url.split_once('?')) {
            let mut kept = Vec::new();
            for pair in query.split('&') {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
                match name {
                    "sslmode" => {
                        let m = PgTlsMode::parse(&value).ok_or_else(|| {
                            invalid(
                                "storage.postgres.url",
                                format!(
                                    "sslmode={value:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                                ),
                            )
                        })?;
                        mode = mode.max(m);
                    }
                    "sslrootcert" => {
                        // libpq's `system`: the usual roots (here Mozilla's, compiled in).
                        let file = (value != "system").then(|| PathBuf::from(value.as_ref()));
                        if setting.is_some() && file != setting {
                            return Err(invalid(
                                "storage.postgres.tls_ca_file",
                                "differs from the URL's sslrootcert (give one, or the same file)".into(),
                            ));
                        }
                        ca_file = file;
                    }
                    _ => kept.push(pair),
                }
            }
            url = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
        }
        Ok(Self { url, mode, ca_file })
    }

    /// tokio-postgres's mode: it knows disable, prefer and require; the checks of the
    /// stricter modes are the connector's.
    pub fn driver_mode(&self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode;
        match self.mode {
            PgTlsMode::Disable => SslMode::Disable,
            PgTlsMode::Prefer => SslMode::Prefer,
            PgTlsMode::Require | PgTlsMode::VerifyCa | PgTlsMode::VerifyFull => SslMode::Require,
        }
    }

    /// What is checked of the certificate: as libpq, a CA file makes `prefer` and `require`
    /// check the chain.
    pub fn check(&self) -> Check {
        match self.mode {
            PgTlsMode::VerifyFull => Check::Full,
            PgTlsMode::VerifyCa => Check::Chain,
            _ if self.ca_file.is_some() => Check::Chain,
            _ => Check::Nothing,
        }
    }

    /// The connector for tokio-postgres (never used with `disable`).
    ///
    /// # Errors
    /// [`StorageConfigError::Invalid`] for a CA file that can't be read or holds no certificate.
    pub fn connector(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StorageError> {
        let config = client_config(self.check(), self.ca_file.as_deref(), "storage.postgres.tls_ca_file")?;
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
    }
}

/// The TLS configuration of a Redis URL: `Some` for `rediss://` (full check against the roots
/// of `tls_ca_file`, or Mozilla's), `None` otherwise.
///
/// # Errors
/// [`StorageConfigError::Invalid`] for a CA file that can't be read or holds no certificate.
#[cfg(feature = "redis")]
pub(crate) fn redis_client_config(cfg: &crate::RedisConfig) -> Result<Option<ClientConfig>, StorageError> {
    if !cfg.url.starts_with("rediss://") {
        return Ok(None);
    }
    let ca_file = (!cfg.tls_ca_file.as_os_str().is_empty()).then_some(cfg.tls_ca_file.as_path());
    client_config(Check::Full, ca_file, "storage.redis.tls_ca_file").map(Some)
}

/// The driver's error and its causes, joined with `: ` (what a TLS failure says is in the
/// causes: "server does not support TLS", "invalid peer certificate: UnknownIssuer").
#[cfg(feature = "postgres")]
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !text.ends_with(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cause = c.source();
    }
    text
}

#[cfg(all(test, feature = "postgres"))]
mod tests {
    use super::*;
    use crate::PostgresConfig;

    fn pg(url: &str) -> PostgresConfig {
        PostgresConfig { url: url.into(), ..PostgresConfig::default() }
    }

    #[test]
    fn libpq_parameters_leave_the_url_and_the_stricter_mode_wins() {
        let t = PgTls::from_config(&pg(
            "postgres://u:p@db.example:5432/w?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        ))
        .unwrap();
        assert_eq!(t.url, "postgres://u:p@db.example:5432/w?application_name=x");
        assert_eq!((t.mode, t.check()), (PgTlsMode::VerifyFull, Check::Full));
        assert_eq!(t.ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
        // The setting is stricter than the URL: the setting.
        let cfg = PostgresConfig { tls: PgTlsMode::VerifyCa, ..pg("postgres://h/w?sslmode=require") };
        let t = PgTls::from_config(&cfg).unwrap();
        assert_eq!(
            (t.url.as_str(), t.mode, t.check()),
            ("postgres://h/w", PgTlsMode::VerifyCa, Check::Chain)
        );
        // Default: prefer, nothing checked; a CA file makes require check the chain.
        assert_eq!(PgTls::from_config(&pg("postgres://h/w")).unwrap().check(), Check::Nothing);
        let cfg = PostgresConfig { tls_ca_file: "/ca.pem".into(), ..pg("postgres://h/w?sslmode=require") };
        assert_eq!(PgTls::from_config(&cfg).unwrap().check(), Check::Chain);
        assert_eq!(
            PgTls::from_config(&pg("postgres://h/w?sslmode=require")).unwrap().driver_mode(),
            tokio_postgres::config::SslMode::Require
        );
    }

    #[test]
    fn bad_tls_parameters_are_config_errors() {
        let e = PgTls::from_config(&pg("postgres://h/w?sslmode=verify-everything")).unwrap_err();
        assert!(e.to_string().contains("storage.postgres.url") && e.to_string().contains("sslmode"), "{e}");
        let cfg = PostgresConfig { tls_ca_file: "/a.pem".into(), ..pg("postgres://h/w?sslrootcert=/b.pem") };
        let e = PgTls::from_config(&cfg).unwrap_err();
        assert!(e.to_string().contains("storage.postgres.tls_ca_file"), "{e}");
        let missing =
            PgTls::from_config(&pg("postgres://h/w?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"))
                .unwrap()
                .connector()
                .err()
                .expect("a missing CA file is an error");
        assert!(matches!(missing, StorageError::Config(_)), "{missing:?}");
    }
}
