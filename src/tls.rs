//! Certificates and keys from PEM, the rustls `ServerConfig`, and ALPN.
//!
//! PEM parsing uses [`rustls_pki_types::pem::PemObject`], the maintained successor of the
//! archived `rustls-pemfile` crate (RUSTSEC-2025-0134). Private keys may be PKCS#8
//! (`BEGIN PRIVATE KEY`), PKCS#1 RSA (`BEGIN RSA PRIVATE KEY`) or SEC1 EC
//! (`BEGIN EC PRIVATE KEY`). Only TLS 1.3 and TLS 1.2 are offered, with rustls' default
//! cipher suites on the *ring* crypto provider.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::server::Protocols;

/// The TLS side of a server: certificate chain, private key and rustls settings.
///
/// # Examples
///
/// ```
/// use portcullis::TlsConfig;
///
/// let tls = TlsConfig::from_pem_files("certs/localhost.crt", "certs/localhost.key")?;
/// # let _ = tls;
/// # Ok::<(), portcullis::TlsError>(())
/// ```
///
/// A file that is missing or holds no usable certificate or key is an error that names
/// the file:
///
/// ```
/// use portcullis::{TlsConfig, TlsError};
///
/// let err = TlsConfig::from_pem_files("certs/localhost.crt", "no/such.key").unwrap_err();
/// assert!(matches!(err, TlsError::Read { .. }));
/// assert!(err.to_string().contains("no/such.key"));
/// ```
#[derive(Clone)]
pub struct TlsConfig {
    config: Arc<ServerConfig>,
}

impl TlsConfig {
    /// Loads a PEM certificate chain (leaf first) and a PEM private key from files.
    pub fn from_pem_files(
        cert_chain: impl AsRef<Path>,
        private_key: impl AsRef<Path>,
    ) -> Result<TlsConfig, TlsError> {
        let cert_path = cert_chain.as_ref();
        let key_path = private_key.as_ref();
        let cert_pem = read_file(cert_path)?;
        let key_pem = read_file(key_path)?;
        Self::build(&cert_pem, cert_path, &key_pem, key_path)
    }

    /// Loads a PEM certificate chain and private key from memory.
    ///
    /// ```
    /// let cert = std::fs::read("certs/localhost.crt")?;
    /// let key = std::fs::read("certs/localhost.key")?;
    /// let tls = portcullis::TlsConfig::from_pem(&cert, &key)?;
    /// # let _ = tls;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_pem(cert_chain: &[u8], private_key: &[u8]) -> Result<TlsConfig, TlsError> {
        Self::build(
            cert_chain,
            Path::new("<certificate chain>"),
            private_key,
            Path::new("<private key>"),
        )
    }

    /// Uses a caller-built rustls configuration as it is (portcullis re-exports the
    /// `rustls` crate it uses as `portcullis::rustls`). If its `alpn_protocols` list is
    /// empty, portcullis fills it in from the server's [`Protocols`].
    ///
    /// ```
    /// use std::sync::Arc;
    /// use portcullis::rustls;
    /// use portcullis::rustls::pki_types::pem::PemObject;
    /// use portcullis::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    ///
    /// let certs = CertificateDer::pem_file_iter("certs/localhost.crt")?.collect::<Result<Vec<_>, _>>()?;
    /// let key = PrivateKeyDer::from_pem_file("certs/localhost.key")?;
    /// let config = rustls::ServerConfig::builder_with_provider(Arc::new(
    ///     rustls::crypto::ring::default_provider(),
    /// ))
    /// .with_protocol_versions(&[&rustls::version::TLS13])?
    /// .with_no_client_auth()
    /// .with_single_cert(certs, key)?;
    /// let tls = portcullis::TlsConfig::from_rustls(Arc::new(config));
    /// # let _ = tls;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_rustls(config: Arc<ServerConfig>) -> TlsConfig {
        TlsConfig { config }
    }

    /// The rustls configuration in use.
    pub fn rustls_config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    fn build(
        cert_pem: &[u8],
        cert_path: &Path,
        key_pem: &[u8],
        key_path: &Path,
    ) -> Result<TlsConfig, TlsError> {
        let certs = parse_certificates(cert_pem, cert_path)?;
        let key = parse_private_key(key_pem, key_path)?;
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|source| TlsError::Rejected {
                    path: cert_path.to_path_buf(),
                    source,
                })?
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .map_err(|source| TlsError::Rejected {
                    path: key_path.to_path_buf(),
                    source,
                })?;
        Ok(TlsConfig {
            config: Arc::new(config),
        })
    }

    /// The configuration a server uses: ALPN set from `protocols` unless the caller chose.
    pub(crate) fn for_protocols(&self, protocols: Protocols) -> Arc<ServerConfig> {
        if !self.config.alpn_protocols.is_empty() {
            return self.config.clone();
        }
        let mut config = (*self.config).clone();
        config.alpn_protocols = protocols.alpn_ids();
        Arc::new(config)
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("alpn_protocols", &self.config.alpn_protocols)
            .finish_non_exhaustive()
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_certificates(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn parse_private_key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: path.to_path_buf(),
        },
        other => TlsError::Pem {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    })
}

/// Why a certificate or key could not be used. Every variant names the file.
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsError {
    /// The file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The file is not valid PEM.
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The certificate file holds no `CERTIFICATE` section.
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no PKCS#8, PKCS#1 or SEC1 private key.
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// rustls refused the certificate or key (unsupported key type, key does not match the
    /// certificate, ...).
    Rejected {
        /// The file that was refused.
        path: PathBuf,
        /// rustls' reason.
        source: rustls::Error,
    },
}

impl TlsError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            TlsError::Read { path, .. }
            | TlsError::Pem { path, .. }
            | TlsError::NoCertificate { path }
            | TlsError::NoPrivateKey { path }
            | TlsError::Rejected { path, .. } => path,
        }
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Read { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            TlsError::Pem { path, message } => {
                write!(f, "{} is not valid PEM: {message}", path.display())
            }
            TlsError::NoCertificate { path } => {
                write!(f, "{} holds no PEM certificate", path.display())
            }
            TlsError::NoPrivateKey { path } => write!(
                f,
                "{} holds no PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC)",
                path.display()
            ),
            TlsError::Rejected { path, source } => {
                write!(f, "{} was rejected: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsError::Read { source, .. } => Some(source),
            TlsError::Rejected { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<TlsError> for io::Error {
    fn from(error: TlsError) -> io::Error {
        let kind = match &error {
            TlsError::Read { source, .. } => source.kind(),
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, error)
    }
}
