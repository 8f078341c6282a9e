//! Certificates and keys from PEM, the rustls `ServerConfig`, ALPN, SNI, certificate
//! reload, session resumption and client certificates.
//!
//! PEM parsing uses [`rustls_pki_types::pem::PemObject`], the maintained successor of the
//! archived `rustls-pemfile` crate (RUSTSEC-2025-0134). Private keys may be PKCS#8
//! (`BEGIN PRIVATE KEY`), PKCS#1 RSA (`BEGIN RSA PRIVATE KEY`) or SEC1 EC
//! (`BEGIN EC PRIVATE KEY`).
//!
//! Security defaults of a [`TlsConfig`] built from PEM: only TLS 1.3 and TLS 1.2, rustls'
//! default cipher suites and key exchange groups on the [`crypto_provider`] (aws-lc-rs with
//! the post-quantum `X25519MLKEM768` preferred, or *ring*), the server's cipher order preferred
//! (`ignore_client_order`), TLS 1.3 stateless session tickets under keys that rotate every
//! 6 hours, and a session cache of [`SESSION_CACHE_SIZE`] sessions for TLS 1.2 clients
//! without ticket support.
//!
//! The certificates live in a `CertStore` that rustls asks on every handshake (it
//! implements `ResolvesServerCert`): it picks the certificate by the client's server name
//! (SNI), and a [`CertReloader`] swaps certificates in it while the server runs.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{
    ClientHello, ResolvesServerCert, ResolvesServerCertUsingSni, ServerSessionMemoryCache,
    WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::server::Protocols;

/// TLS 1.2 sessions kept for resumption by session ID (clients without ticket support),
/// about what nginx's commonly recommended `ssl_session_cache shared:SSL:10m` holds (4000
/// sessions per MB). The cache forgets the oldest sessions beyond this; each costs a few
/// hundred bytes, so a full cache is about 10 MB.
///
/// ```
/// // A caller-built configuration can use the same size.
/// use portcullis::rustls::server::ServerSessionMemoryCache;
/// let cache = ServerSessionMemoryCache::new(portcullis::SESSION_CACHE_SIZE);
/// # let _ = cache;
/// ```
pub const SESSION_CACHE_SIZE: usize = 40_000;

/// The TLS side of a server: certificates and keys (one per server name, plus a default),
/// optional client-certificate checking, and the rustls settings.
///
/// Certificates can be replaced while the server runs through a [`CertReloader`]
/// ([`TlsConfig::reloader`]). Clones of a `TlsConfig` share its certificates.
///
/// # Examples
///
/// ```
/// use portcullis::TlsConfig;
///
/// let tls = TlsConfig::from_pem_files("certs/localhost.crt", "certs/localhost.key")?
///     // Clients asking for example.com (SNI) get this certificate; every other client,
///     // and clients that send no server name, get the default (localhost) one.
///     .with_sni("example.com", "certs/example.com.crt", "certs/example.com.key")?;
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
    /// `None` for a caller-built rustls configuration.
    store: Option<Arc<CertStore>>,
    /// Also offer the `acme-tls/1` ALPN protocol (TLS-ALPN-01 validation, RFC 8737).
    acme_tls_alpn: bool,
}

impl TlsConfig {
    /// Loads a PEM certificate chain (leaf first) and a PEM private key from files. This
    /// certificate is the default: it is served to every client whose server name (SNI)
    /// has no certificate of its own from [`with_sni`](TlsConfig::with_sni).
    ///
    /// ```
    /// let tls = portcullis::TlsConfig::from_pem_files("certs/localhost.crt", "certs/localhost.key")?;
    /// # let _ = tls;
    /// # Ok::<(), portcullis::TlsError>(())
    /// ```
    pub fn from_pem_files(
        cert_chain: impl AsRef<Path>,
        private_key: impl AsRef<Path>,
    ) -> Result<TlsConfig, TlsError> {
        let default = Entry::load_files(cert_chain.as_ref(), private_key.as_ref())?;
        Self::with_store(default)
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
        let default = Entry::from_pem(
            cert_chain,
            Path::new(MEMORY_CHAIN),
            private_key,
            Path::new(MEMORY_KEY),
            Source::Memory,
        )?;
        Self::with_store(default)
    }

    /// Uses a caller-built rustls configuration as it is (portcullis re-exports the
    /// `rustls` crate it uses as `portcullis::rustls`). If its `alpn_protocols` list is
    /// empty, portcullis fills it in from the server's [`Protocols`]. Such a configuration
    /// has no [`reloader`](TlsConfig::reloader), and [`with_sni`](TlsConfig::with_sni) and
    /// the client-certificate methods refuse it ([`TlsError::CustomConfig`]): set its
    /// `cert_resolver` and client verifier yourself.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use portcullis::rustls;
    /// use portcullis::rustls::pki_types::pem::PemObject;
    /// use portcullis::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    ///
    /// let certs = CertificateDer::pem_file_iter("certs/localhost.crt")?.collect::<Result<Vec<_>, _>>()?;
    /// let key = PrivateKeyDer::from_pem_file("certs/localhost.key")?;
    /// let config = rustls::ServerConfig::builder_with_provider(portcullis::crypto_provider())
    ///     .with_protocol_versions(&[&rustls::version::TLS13])?
    ///     .with_no_client_auth()
    ///     .with_single_cert(certs, key)?;
    /// let tls = portcullis::TlsConfig::from_rustls(Arc::new(config));
    /// assert!(tls.reloader().is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_rustls(config: Arc<ServerConfig>) -> TlsConfig {
        TlsConfig {
            config,
            store: None,
            acme_tls_alpn: false,
        }
    }

    /// Adds a certificate chain and key (PEM files) served to clients that ask for
    /// `server_name` by SNI (compared without regard to ASCII case). Call it once per name;
    /// one certificate may be added under several names. The certificate must be valid
    /// for the name, or this fails with [`TlsError::NameMismatch`]. Clients that send no
    /// server name, or one without a certificate of its own, get the default certificate.
    ///
    /// ```
    /// use portcullis::TlsConfig;
    ///
    /// let tls = TlsConfig::from_pem_files("certs/localhost.crt", "certs/localhost.key")?
    ///     .with_sni("example.com", "certs/example.com.crt", "certs/example.com.key")?
    ///     .with_sni("www.example.com", "certs/example.com.crt", "certs/example.com.key")?;
    /// # let _ = tls;
    ///
    /// // The localhost certificate does not cover example.com:
    /// let err = TlsConfig::from_pem_files("certs/localhost.crt", "certs/localhost.key")?
    ///     .with_sni("example.com", "certs/localhost.crt", "certs/localhost.key")
    ///     .unwrap_err();
    /// assert!(matches!(err, portcullis::TlsError::NameMismatch { .. }));
    /// # Ok::<(), portcullis::TlsError>(())
    /// ```
    pub fn with_sni(
        self,
        server_name: &str,
        cert_chain: impl AsRef<Path>,
        private_key: impl AsRef<Path>,
    ) -> Result<TlsConfig, TlsError> {
        let cert_path = cert_chain.as_ref();
        let Some(store) = &self.store else {
            return Err(TlsError::CustomConfig {
                path: cert_path.to_path_buf(),
            });
        };
        let entry = Entry::load_files(cert_path, private_key.as_ref())?;
        store.set_named(server_name, entry)?;
        Ok(self)
    }

    /// Requires every client to present a certificate signed by one of the CA certificates
    /// in `ca_pem_file` (mutual TLS); a client without one fails the handshake. Handlers
    /// see the verified chain in
    /// [`ConnectionInfo::peer_certificates`](crate::ConnectionInfo::peer_certificates).
    ///
    /// ```
    /// let tls = portcullis::TlsConfig::from_pem_files("certs/localhost.crt", "certs/localhost.key")?
    ///     .require_client_cert("certs/ca.crt")?;
    /// # let _ = tls;
    /// # Ok::<(), portcullis::TlsError>(())
    /// ```
    pub fn require_client_cert(self, ca_pem_file: impl AsRef<Path>) -> Result<TlsConfig, TlsError> {
        self.client_auth(ca_pem_file.as_ref(), true)
    }

    /// Asks clients for a certificate signed by one of the CA certificates in
    /// `ca_pem_file`, but also accepts clients that send none. A client that sends a
    /// certificate the CA did not sign still fails the handshake. The handler tells the two
    /// apart with
    /// [`ConnectionInfo::peer_certificates`](crate::ConnectionInfo::peer_certificates).
    ///
    /// ```
    /// let tls = portcullis::TlsConfig::from_pem_files("certs/localhost.crt", "certs/localhost.key")?
    ///     .request_client_cert("certs/ca.crt")?;
    /// # let _ = tls;
    /// # Ok::<(), portcullis::TlsError>(())
    /// ```
    pub fn request_client_cert(self, ca_pem_file: impl AsRef<Path>) -> Result<TlsConfig, TlsError> {
        self.client_auth(ca_pem_file.as_ref(), false)
    }

    /// A handle that replaces certificates while servers using this configuration run;
    /// `None` for a configuration from [`from_rustls`](TlsConfig::from_rustls).
    ///
    /// ```
    /// let tls = portcullis::TlsConfig::from_pem_files("certs/localhost.crt", "certs/localhost.key")?;
    /// let reloader = tls.reloader().expect("built from PEM files");
    /// // Later, for example on SIGHUP after a renewal wrote new files in place:
    /// reloader.reload()?;
    /// # Ok::<(), portcullis::TlsError>(())
    /// ```
    pub fn reloader(&self) -> Option<CertReloader> {
        self.store.as_ref().map(|store| CertReloader {
            store: store.clone(),
        })
    }

    /// The rustls configuration in use.
    ///
    /// ```
    /// let tls = portcullis::TlsConfig::from_pem_files("certs/localhost.crt", "certs/localhost.key")?;
    /// assert!(tls.rustls_config().ignore_client_order);
    /// # Ok::<(), portcullis::TlsError>(())
    /// ```
    pub fn rustls_config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    fn with_store(default: Entry) -> Result<TlsConfig, TlsError> {
        let cert_path = match &default.source {
            Source::Files { chain, .. } => chain.clone(),
            Source::Memory => PathBuf::from(MEMORY_CHAIN),
        };
        let store = Arc::new(CertStore::new(default));
        let config = build_config(store.clone(), None).map_err(|source| TlsError::Rejected {
            path: cert_path,
            source,
        })?;
        Ok(TlsConfig {
            config: Arc::new(config),
            store: Some(store),
            acme_tls_alpn: false,
        })
    }

    fn client_auth(self, ca_path: &Path, required: bool) -> Result<TlsConfig, TlsError> {
        let Some(store) = self.store else {
            return Err(TlsError::CustomConfig {
                path: ca_path.to_path_buf(),
            });
        };
        let pem = read_file(ca_path)?;
        let mut roots = RootCertStore::empty();
        for cert in parse_certificates(&pem, ca_path)? {
            roots.add(cert).map_err(|source| TlsError::Rejected {
                path: ca_path.to_path_buf(),
                source,
            })?;
        }
        let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
        let builder = if required {
            builder
        } else {
            builder.allow_unauthenticated()
        };
        let verifier = builder.build().map_err(|e| TlsError::ClientCa {
            path: ca_path.to_path_buf(),
            message: e.to_string(),
        })?;
        let config =
            build_config(store.clone(), Some(verifier)).map_err(|source| TlsError::Rejected {
                path: ca_path.to_path_buf(),
                source,
            })?;
        Ok(TlsConfig {
            config: Arc::new(config),
            store: Some(store),
            acme_tls_alpn: self.acme_tls_alpn,
        })
    }

    /// Answers TLS-ALPN-01 validations: offers the `acme-tls/1` ALPN protocol and serves
    /// the challenge certificates given to [`set_acme_challenge`](Self::set_acme_challenge).
    #[cfg(feature = "acme")]
    pub(crate) fn answering_acme_tls_alpn(mut self) -> TlsConfig {
        self.acme_tls_alpn = true;
        self
    }

    /// Serves `cert` to TLS-ALPN-01 validations of `name` (`None`: stop).
    #[cfg(feature = "acme")]
    pub(crate) fn set_acme_challenge(&self, name: &str, cert: Option<Arc<CertifiedKey>>) {
        if let Some(store) = &self.store {
            let mut challenges = store
                .acme_challenges
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let name = name.to_ascii_lowercase();
            match cert {
                Some(cert) => challenges.insert(name, cert),
                None => challenges.remove(&name),
            };
        }
    }

    /// The configuration a server uses: ALPN set from `protocols` unless the caller chose.
    pub(crate) fn for_protocols(&self, protocols: Protocols) -> Arc<ServerConfig> {
        if !self.config.alpn_protocols.is_empty() {
            return self.config.clone();
        }
        let mut config = (*self.config).clone();
        config.alpn_protocols = protocols.alpn_ids();
        if self.acme_tls_alpn {
            config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
        }
        Arc::new(config)
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("TlsConfig");
        s.field("alpn_protocols", &self.config.alpn_protocols);
        if let Some(store) = &self.store {
            s.field("server_names", &store.current().names());
        }
        s.finish_non_exhaustive()
    }
}

#[cfg(not(any(feature = "aws-lc-rs", feature = "ring")))]
compile_error!(
    "portcullis needs a TLS crypto provider: enable the `aws-lc-rs` (default) or `ring` feature"
);

/// The rustls crypto provider portcullis builds its TLS configurations on: rustls'
/// `aws_lc_rs` provider with the `aws-lc-rs` feature (the default), which prefers the
/// hybrid post-quantum key exchange `X25519MLKEM768` and falls back to `X25519`, P-256 and
/// P-384 for clients without it; rustls' `ring` provider (classical key exchange only)
/// when only the `ring` feature is on. Use it to build a
/// [`TlsConfig::from_rustls`] configuration or a client that matches the server.
///
/// ```
/// let provider = portcullis::crypto_provider();
/// let groups: Vec<_> = provider.kx_groups.iter().map(|g| g.name()).collect();
/// # #[cfg(feature = "aws-lc-rs")]
/// assert_eq!(groups[0], portcullis::rustls::NamedGroup::X25519MLKEM768);
/// assert!(groups.contains(&portcullis::rustls::NamedGroup::X25519));
/// ```
pub fn crypto_provider() -> Arc<CryptoProvider> {
    #[cfg(feature = "aws-lc-rs")]
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    #[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
    let provider = rustls::crypto::ring::default_provider();
    Arc::new(provider)
}

fn provider() -> Arc<CryptoProvider> {
    crypto_provider()
}

/// Stateless session tickets from the same provider as the handshakes.
fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, rustls::Error> {
    #[cfg(feature = "aws-lc-rs")]
    return rustls::crypto::aws_lc_rs::Ticketer::new();
    #[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
    return rustls::crypto::ring::Ticketer::new();
}

/// The portcullis defaults: TLS 1.3 and 1.2 only, rustls' default suites, the server's
/// cipher order, rotating TLS 1.3 tickets, a TLS 1.2 session cache.
fn build_config(
    store: Arc<CertStore>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<ServerConfig, rustls::Error> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(store);
    config.ignore_client_order = true;
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    // Stateless TLS 1.3 tickets (and TLS 1.2 tickets for clients that support them),
    // encrypted under a key that rotates every 6 hours; a ticket stays valid for 6 to 12.
    config.ticketer = ticketer()?;
    Ok(config)
}

/// Replaces the certificates of a running server: new handshakes use the new ones at once,
/// connections already open keep theirs. A reload that fails (missing file, bad PEM, key
/// not matching the certificate, certificate not valid for its server name) changes
/// nothing and names the file in its [`TlsError`]. Cheap to clone; `Send + Sync`.
///
/// ```no_run
/// use portcullis::{Body, Response, Server, TlsConfig};
///
/// let tls = TlsConfig::from_pem_files("/etc/ssl/site.crt", "/etc/ssl/site.key")?;
/// let reloader = tls.reloader().expect("built from PEM files");
/// let server = Server::bind("[::]:443")?
///     .tls(tls)
///     .spawn(|_req, _info| Response::new(Body::from("hi\n")))?;
/// // After the renewal client wrote new files (same paths):
/// if let Err(error) = reloader.reload() {
///     eprintln!("keeping the old certificate: {error}");
/// }
/// # server.shutdown()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct CertReloader {
    store: Arc<CertStore>,
}

impl CertReloader {
    /// Reads again every certificate and key file the configuration was built from (the
    /// default and each SNI name), and swaps them all in at once — or, if any file fails,
    /// none of them. Certificates given from memory ([`TlsConfig::from_pem`]) are kept as
    /// they are.
    ///
    /// ```
    /// let tls = portcullis::TlsConfig::from_pem_files("certs/localhost.crt", "certs/localhost.key")?;
    /// tls.reloader().expect("from PEM").reload()?;
    /// # Ok::<(), portcullis::TlsError>(())
    /// ```
    pub fn reload(&self) -> Result<(), TlsError> {
        self.store.update(|set| {
            let mut next = CertSet {
                default: set.default.reloaded()?,
                by_name: HashMap::with_capacity(set.by_name.len()),
            };
            for (name, entry) in &set.by_name {
                let entry = entry.reloaded()?;
                check_name(name, &entry)?;
                next.by_name.insert(name.clone(), entry);
            }
            Ok(next)
        })?;
        tracing::info!("reloaded TLS certificates");
        Ok(())
    }

    /// Replaces the default certificate with the chain and key in these PEM files, which
    /// [`reload`](CertReloader::reload) reads from then on.
    ///
    /// ```
    /// use portcullis::{TlsConfig, TlsError};
    ///
    /// let tls = TlsConfig::from_pem_files("certs/localhost.crt", "certs/localhost.key")?;
    /// let reloader = tls.reloader().expect("from PEM");
    /// reloader.reload_from_pem_files("certs/ec-sec1.crt", "certs/ec-sec1.key")?;
    ///
    /// // A key that does not belong to the certificate is refused; the old pair stays.
    /// let err = reloader
    ///     .reload_from_pem_files("certs/localhost.crt", "certs/example.com.key")
    ///     .unwrap_err();
    /// assert!(matches!(err, TlsError::KeyMismatch { .. }));
    /// assert!(err.to_string().contains("example.com.key"));
    /// # Ok::<(), TlsError>(())
    /// ```
    pub fn reload_from_pem_files(
        &self,
        cert_chain: impl AsRef<Path>,
        private_key: impl AsRef<Path>,
    ) -> Result<(), TlsError> {
        let entry = Entry::load_files(cert_chain.as_ref(), private_key.as_ref())?;
        self.store.update(|set| {
            Ok(CertSet {
                default: entry,
                by_name: set.by_name.clone(),
            })
        })?;
        tracing::info!(cert = %cert_chain.as_ref().display(), "replaced the default TLS certificate");
        Ok(())
    }

    /// Replaces (or adds) the certificate served to clients that ask for `server_name`,
    /// like [`TlsConfig::with_sni`] on a running server.
    ///
    /// ```
    /// let tls = portcullis::TlsConfig::from_pem_files("certs/localhost.crt", "certs/localhost.key")?;
    /// tls.reloader()
    ///     .expect("from PEM")
    ///     .reload_sni_from_pem_files("example.com", "certs/example.com.crt", "certs/example.com.key")?;
    /// # Ok::<(), portcullis::TlsError>(())
    /// ```
    pub fn reload_sni_from_pem_files(
        &self,
        server_name: &str,
        cert_chain: impl AsRef<Path>,
        private_key: impl AsRef<Path>,
    ) -> Result<(), TlsError> {
        let entry = Entry::load_files(cert_chain.as_ref(), private_key.as_ref())?;
        self.store.set_named(server_name, entry)?;
        tracing::info!(server_name, cert = %cert_chain.as_ref().display(), "replaced a TLS certificate");
        Ok(())
    }
}

impl fmt::Debug for CertReloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertReloader")
            .field("server_names", &self.store.current().names())
            .finish()
    }
}

/// The ALPN protocol of ACME TLS-ALPN-01 validation (RFC 8737).
const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Whether a handshake negotiated `acme-tls/1`: a TLS-ALPN-01 validation, which ends
/// with the handshake (RFC 8737, section 3); the connection carries no HTTP.
pub(crate) fn is_acme_validation(alpn: Option<&[u8]>) -> bool {
    alpn == Some(ACME_TLS_ALPN)
}

const MEMORY_CHAIN: &str = "<certificate chain>";
const MEMORY_KEY: &str = "<private key>";

/// Where a certificate came from, to read it again.
#[derive(Clone, Debug)]
enum Source {
    Files { chain: PathBuf, key: PathBuf },
    Memory,
}

/// One certificate chain with its key.
#[derive(Clone)]
struct Entry {
    key: Arc<CertifiedKey>,
    source: Source,
}

impl Entry {
    fn load_files(cert_path: &Path, key_path: &Path) -> Result<Entry, TlsError> {
        let cert_pem = read_file(cert_path)?;
        let key_pem = read_file(key_path)?;
        let source = Source::Files {
            chain: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
        };
        Entry::from_pem(&cert_pem, cert_path, &key_pem, key_path, source)
    }

    fn from_pem(
        cert_pem: &[u8],
        cert_path: &Path,
        key_pem: &[u8],
        key_path: &Path,
        source: Source,
    ) -> Result<Entry, TlsError> {
        let certs = parse_certificates(cert_pem, cert_path)?;
        let key = parse_private_key(key_pem, key_path)?;
        let certified = CertifiedKey::from_der(certs, key, &provider()).map_err(|source| {
            match source {
                rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                    TlsError::KeyMismatch {
                        cert: cert_path.to_path_buf(),
                        key: key_path.to_path_buf(),
                    }
                }
                // The leaf certificate could not be parsed.
                rustls::Error::InvalidCertificate(_) => TlsError::Rejected {
                    path: cert_path.to_path_buf(),
                    source,
                },
                // Unsupported key type and the like.
                source => TlsError::Rejected {
                    path: key_path.to_path_buf(),
                    source,
                },
            }
        })?;
        Ok(Entry {
            key: Arc::new(certified),
            source,
        })
    }

    /// This entry read again from its files (itself when it came from memory).
    fn reloaded(&self) -> Result<Entry, TlsError> {
        match &self.source {
            Source::Files { chain, key } => Entry::load_files(chain, key),
            Source::Memory => Ok(self.clone()),
        }
    }

    fn cert_path(&self) -> &Path {
        match &self.source {
            Source::Files { chain, .. } => chain,
            Source::Memory => Path::new(MEMORY_CHAIN),
        }
    }
}

/// The certificates in force: a default and one per server name (lower case).
#[derive(Clone)]
struct CertSet {
    default: Entry,
    by_name: HashMap<String, Entry>,
}

impl CertSet {
    fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

/// The certificate store rustls asks on every handshake. Readers take a read lock just
/// long enough to clone an `Arc`; writers build the new set outside it and swap it in.
struct CertStore {
    current: RwLock<Arc<CertSet>>,
    /// Serialises writers, so two reloads cannot lose each other's change.
    writer: Mutex<()>,
    /// TLS-ALPN-01 challenge certificates by server name (RFC 8737), served only to
    /// clients that offer nothing but the `acme-tls/1` ALPN protocol.
    acme_challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl CertStore {
    fn new(default: Entry) -> CertStore {
        CertStore {
            current: RwLock::new(Arc::new(CertSet {
                default,
                by_name: HashMap::new(),
            })),
            writer: Mutex::new(()),
            acme_challenges: RwLock::new(HashMap::new()),
        }
    }

    fn current(&self) -> Arc<CertSet> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Builds a new set from the current one and swaps it in, unless `change` fails.
    fn update(
        &self,
        change: impl FnOnce(&CertSet) -> Result<CertSet, TlsError>,
    ) -> Result<(), TlsError> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let next = change(&self.current())?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
        Ok(())
    }

    fn set_named(&self, server_name: &str, entry: Entry) -> Result<(), TlsError> {
        let name = server_name.to_ascii_lowercase();
        check_name(&name, &entry)?;
        self.update(|set| {
            let mut next = set.clone();
            next.by_name.insert(name, entry);
            Ok(next)
        })
    }
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("server_names", &self.current().names())
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(mut alpn) = client_hello.alpn() {
            if alpn.any(|protocol| protocol == ACME_TLS_ALPN) {
                // A TLS-ALPN-01 validation: the challenge certificate for that name, or
                // no certificate at all (the handshake fails).
                let name = client_hello.server_name()?;
                let challenges = self
                    .acme_challenges
                    .read()
                    .unwrap_or_else(PoisonError::into_inner);
                return challenges.get(name).cloned();
            }
        }
        let set = self.current();
        // rustls hands over the SNI name already in lower case.
        let entry = client_hello
            .server_name()
            .and_then(|name| set.by_name.get(name))
            .unwrap_or(&set.default);
        Some(entry.key.clone())
    }
}

/// Checks that `entry`'s leaf certificate is valid for the DNS name `name` (rustls' own
/// SNI resolver does this check when a certificate is added).
fn check_name(name: &str, entry: &Entry) -> Result<(), TlsError> {
    let mut probe = ResolvesServerCertUsingSni::new();
    probe
        .add(name, (*entry.key).clone())
        .map_err(|e| TlsError::NameMismatch {
            path: entry.cert_path().to_path_buf(),
            name: name.to_string(),
            message: e.to_string(),
        })
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

/// Why a certificate, key or CA file could not be used. Every variant names the file
/// ([`TlsError::path`]).
///
/// ```
/// use portcullis::{TlsConfig, TlsError};
///
/// match TlsConfig::from_pem_files("certs/localhost.crt", "certs/example.com.key") {
///     Err(TlsError::KeyMismatch { cert, key }) => {
///         assert!(key.ends_with("example.com.key"));
///         assert!(cert.ends_with("localhost.crt"));
///     }
///     other => panic!("expected a key mismatch, got {other:?}"),
/// }
/// ```
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
    /// The private key is not the one for the certificate's public key.
    KeyMismatch {
        /// The certificate chain file.
        cert: PathBuf,
        /// The private key file (the one [`TlsError::path`] names).
        key: PathBuf,
    },
    /// The certificate is not valid for the server name it was given for (SNI).
    NameMismatch {
        /// The certificate chain file.
        path: PathBuf,
        /// The server name.
        name: String,
        /// rustls' reason.
        message: String,
    },
    /// The client-certificate CA file could not be used.
    ClientCa {
        /// The CA file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused the certificate or key (unsupported key type, unparsable
    /// certificate, ...).
    Rejected {
        /// The file that was refused.
        path: PathBuf,
        /// rustls' reason.
        source: rustls::Error,
    },
    /// The [`TlsConfig`] came from [`TlsConfig::from_rustls`], whose certificates and
    /// client verifier portcullis does not manage.
    CustomConfig {
        /// The file that could not be added.
        path: PathBuf,
    },
}

impl TlsError {
    /// The file the error is about.
    ///
    /// ```
    /// let err = portcullis::TlsConfig::from_pem_files("no/such.crt", "certs/localhost.key").unwrap_err();
    /// assert_eq!(err.path(), std::path::Path::new("no/such.crt"));
    /// ```
    pub fn path(&self) -> &Path {
        match self {
            TlsError::Read { path, .. }
            | TlsError::Pem { path, .. }
            | TlsError::NoCertificate { path }
            | TlsError::NoPrivateKey { path }
            | TlsError::KeyMismatch { key: path, .. }
            | TlsError::NameMismatch { path, .. }
            | TlsError::ClientCa { path, .. }
            | TlsError::Rejected { path, .. }
            | TlsError::CustomConfig { path } => path,
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
            TlsError::KeyMismatch { cert, key } => write!(
                f,
                "the private key in {} does not match the certificate in {}",
                key.display(),
                cert.display()
            ),
            TlsError::NameMismatch {
                path,
                name,
                message,
            } => write!(
                f,
                "the certificate in {} is not valid for {name:?}: {message}",
                path.display()
            ),
            TlsError::ClientCa { path, message } => write!(
                f,
                "{} cannot be used to check client certificates: {message}",
                path.display()
            ),
            TlsError::Rejected { path, source } => {
                write!(f, "{} was rejected: {source}", path.display())
            }
            TlsError::CustomConfig { path } => write!(
                f,
                "cannot add {}: this TlsConfig is a caller-built rustls ServerConfig; \
                 set its cert_resolver or client verifier instead",
                path.display()
            ),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("certs")
            .join(name)
    }

    #[test]
    fn defaults_prefer_server_order_and_resume() {
        let tls =
            TlsConfig::from_pem_files(cert("localhost.crt"), cert("localhost.key")).expect("load");
        let config = tls.rustls_config();
        assert!(config.ignore_client_order);
        assert!(config.ticketer.enabled());
        assert!(config.send_tls13_tickets > 0);
    }

    #[test]
    fn failed_reload_keeps_the_old_set() {
        let tls =
            TlsConfig::from_pem_files(cert("localhost.crt"), cert("localhost.key")).expect("load");
        let store = tls.store.clone().expect("store");
        let before = store.current().default.key.clone();
        let reloader = tls.reloader().expect("reloader");
        let err = reloader
            .reload_from_pem_files(cert("localhost.crt"), cert("missing.key"))
            .unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err}");
        assert!(Arc::ptr_eq(&before, &store.current().default.key));
        reloader.reload().expect("reload the same files");
        assert!(!Arc::ptr_eq(&before, &store.current().default.key));
        assert_eq!(before.cert, store.current().default.key.cert);
    }

    #[test]
    fn sni_names_are_case_insensitive() {
        let tls = TlsConfig::from_pem_files(cert("localhost.crt"), cert("localhost.key"))
            .expect("load")
            .with_sni(
                "WWW.Example.COM",
                cert("example.com.crt"),
                cert("example.com.key"),
            )
            .expect("sni");
        let store = tls.store.expect("store");
        assert_eq!(store.current().names(), ["www.example.com"]);
    }
}
