//! Certificates obtained and renewed by the server itself from an ACME certificate
//! authority (RFC 8555) such as Let's Encrypt. Needs the `acme` feature.
//!
//! [`Acme`] takes the server's domain names, a directory URL (Let's Encrypt's production
//! directory by default), a contact e-mail and a cache directory, and
//! [`start`](Acme::start)s a background thread that:
//!
//! - serves certificates already in the cache at once (a restart makes no new order), and
//!   a self-signed placeholder for names that have none yet;
//! - orders a certificate for each name on its own (each served by SNI; the first name's is
//!   also the default) and proves control of the name with **TLS-ALPN-01** (RFC 8737,
//!   answered by the server's own TLS acceptor on the `acme-tls/1` ALPN protocol, so port
//!   443 alone is enough) or **HTTP-01** (token files served on port 80 by
//!   [`HttpsRedirect`](crate::HttpsRedirect) from [`AcmeHandle::http01_dir`]);
//! - writes the account key and each certificate and key to the cache (private keys
//!   `0600`) and swaps them in through the [`CertReloader`](crate::CertReloader): new
//!   handshakes get the new certificate, open connections keep theirs;
//! - renews each certificate when a third of its lifetime is left (30 days for a 90-day
//!   certificate, 2 days for a 6-day one), and retries a failure with exponential back-off
//!   (1 minute doubling up to 1 hour by default) while the current certificate stays in
//!   service;
//! - logs every step as a `tracing` event (`ACME: ...`), failures with the CA's reason.
//!
//! The HTTPS client is [ureq](https://docs.rs/ureq) (blocking, on portcullis' own rustls
//! and crypto provider); keys, CSRs and the TLS-ALPN-01 certificate come from
//! [rcgen](https://docs.rs/rcgen). No async runtime is involved.
//!
//! ```no_run
//! use portcullis::acme::{Acme, Challenge};
//! use portcullis::{Body, HttpsRedirect, Response, Server};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // Bind first: the CA may validate as soon as `start` returns.
//!     let https = Server::bind("[::]:443")?;
//!     let http = Server::bind("[::]:80")?;
//!     let acme = Acme::new(["example.com", "www.example.com"], "/var/cache/portcullis-acme")
//!         .contact_email("admin@example.com")
//!         .challenge(Challenge::TlsAlpn01)
//!         .start()?;
//!     // Port 80: redirects to HTTPS (and HTTP-01 tokens, if that challenge is chosen).
//!     let redirect =
//!         http.spawn_service(HttpsRedirect::new(443).acme_challenge_dir(acme.http01_dir()))?;
//!     https
//!         .tls(acme.tls_config())
//!         .serve(|_req, _info| Response::new(Body::from("Hello over HTTPS\n")))?;
//!     redirect.shutdown()?;
//!     Ok(())
//! }
//! ```

mod client;
mod der;
mod jws;

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, CustomExtension, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::tls::{CertReloader, TlsConfig, TlsError};
use client::{Client, Issued, Responder};
use jws::{sha256, AccountKey};

/// How a certificate authority is shown that the server controls a name.
///
/// ```
/// use portcullis::acme::Challenge;
/// assert_eq!(Challenge::default(), Challenge::TlsAlpn01);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Challenge {
    /// TLS-ALPN-01 (RFC 8737): the CA connects to port 443 with the `acme-tls/1` ALPN
    /// protocol and the server's own TLS acceptor answers with a challenge certificate.
    #[default]
    TlsAlpn01,
    /// HTTP-01 (RFC 8555, 8.3): the CA fetches `http://NAME/.well-known/acme-challenge/TOKEN`
    /// on port 80, served by [`HttpsRedirect`](crate::HttpsRedirect) from
    /// [`AcmeHandle::http01_dir`].
    Http01,
}

/// The internal name of a challenge kind.
pub(crate) type ChallengeKind = Challenge;

impl Challenge {
    /// Its name in ACME (`tls-alpn-01`, `http-01`).
    ///
    /// ```
    /// assert_eq!(portcullis::acme::Challenge::Http01.name(), "http-01");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Challenge::TlsAlpn01 => "tls-alpn-01",
            Challenge::Http01 => "http-01",
        }
    }
}

/// Settings for certificates from an ACME CA; [`start`](Acme::start) puts them to work.
///
/// ```no_run
/// use portcullis::acme::Acme;
///
/// let acme = Acme::new(["example.com"], "/var/cache/portcullis-acme")
///     .directory(Acme::LETS_ENCRYPT_STAGING) // while trying things out
///     .contact_email("admin@example.com")
///     .start()?;
/// let tls = acme.tls_config(); // give it to Server::tls
/// # let _ = tls;
/// # Ok::<(), portcullis::acme::AcmeError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Acme {
    domains: Vec<String>,
    cache_dir: PathBuf,
    directory: String,
    directory_ca: Option<PathBuf>,
    contact: Vec<String>,
    challenge: Challenge,
    retry_min: Duration,
    retry_max: Duration,
}

impl Acme {
    /// Let's Encrypt's production directory (the default).
    pub const LETS_ENCRYPT: &'static str = "https://acme-v02.api.letsencrypt.org/directory";
    /// Let's Encrypt's staging directory: untrusted certificates, generous rate limits.
    pub const LETS_ENCRYPT_STAGING: &'static str =
        "https://acme-staging-v02.api.letsencrypt.org/directory";

    /// Certificates for `domains` (one each), kept in `cache_dir`. Use one cache directory
    /// per ACME directory.
    ///
    /// ```
    /// let acme = portcullis::acme::Acme::new(["example.com"], "/tmp/acme-cache");
    /// # let _ = acme;
    /// ```
    pub fn new<I, S>(domains: I, cache_dir: impl Into<PathBuf>) -> Acme
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Acme {
            domains: domains.into_iter().map(Into::into).collect(),
            cache_dir: cache_dir.into(),
            directory: Acme::LETS_ENCRYPT.to_string(),
            directory_ca: None,
            contact: Vec::new(),
            challenge: Challenge::default(),
            retry_min: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
        }
    }

    /// The ACME directory URL (`https://`).
    ///
    /// ```
    /// use portcullis::acme::Acme;
    /// let acme = Acme::new(["example.com"], "/tmp/acme").directory(Acme::LETS_ENCRYPT_STAGING);
    /// # let _ = acme;
    /// ```
    pub fn directory(mut self, url: impl Into<String>) -> Acme {
        self.directory = url.into();
        self
    }

    /// Trusts the CA certificates in this PEM file, instead of the built-in Mozilla roots,
    /// for the directory's own HTTPS (for test CAs such as Pebble's).
    ///
    /// ```
    /// let acme = portcullis::acme::Acme::new(["example.com"], "/tmp/acme")
    ///     .directory("https://127.0.0.1:14000/dir")
    ///     .directory_ca("pebble-ca.pem");
    /// # let _ = acme;
    /// ```
    pub fn directory_ca(mut self, pem_file: impl Into<PathBuf>) -> Acme {
        self.directory_ca = Some(pem_file.into());
        self
    }

    /// A contact address for the account (the CA's expiry and policy e-mails). May be
    /// called more than once.
    ///
    /// ```
    /// let acme = portcullis::acme::Acme::new(["example.com"], "/tmp/acme")
    ///     .contact_email("admin@example.com");
    /// # let _ = acme;
    /// ```
    pub fn contact_email(mut self, email: &str) -> Acme {
        self.contact.push(format!("mailto:{email}"));
        self
    }

    /// The challenge to answer ([`Challenge::TlsAlpn01`] by default).
    ///
    /// ```
    /// use portcullis::acme::{Acme, Challenge};
    /// let acme = Acme::new(["example.com"], "/tmp/acme").challenge(Challenge::Http01);
    /// # let _ = acme;
    /// ```
    pub fn challenge(mut self, challenge: Challenge) -> Acme {
        self.challenge = challenge;
        self
    }

    /// Wait `min` after a failed attempt, doubling with each failure up to `max`
    /// (defaults: 1 minute, 1 hour). Let's Encrypt allows 5 failed validations per name
    /// and hour.
    ///
    /// ```
    /// use std::time::Duration;
    /// let acme = portcullis::acme::Acme::new(["example.com"], "/tmp/acme")
    ///     .retry_backoff(Duration::from_secs(30), Duration::from_secs(1800));
    /// # let _ = acme;
    /// ```
    pub fn retry_backoff(mut self, min: Duration, max: Duration) -> Acme {
        self.retry_min = min.max(Duration::from_millis(100));
        self.retry_max = max.max(self.retry_min);
        self
    }

    /// Checks the settings, loads the account key and cached certificates (creating the
    /// cache directory and key if needed), and starts the background thread that obtains
    /// and renews certificates. Returns at once: certificates not in the cache are
    /// obtained in the background, while a self-signed placeholder stands in. The first
    /// order starts at once, so bind the listeners (`Server::bind`) before calling it: a
    /// validation that finds no listener fails and is retried only after the back-off.
    ///
    /// Errors: no or invalid domain names, a cache directory or account key that cannot
    /// be created or read, an unreadable `directory_ca` file.
    ///
    /// ```no_run
    /// let acme = portcullis::acme::Acme::new(["example.com"], "/var/cache/acme").start()?;
    /// # let _ = acme;
    /// # Ok::<(), portcullis::acme::AcmeError>(())
    /// ```
    pub fn start(self) -> Result<AcmeHandle, AcmeError> {
        let mut domains: Vec<String> = Vec::new();
        for domain in &self.domains {
            let name = domain.trim_end_matches('.').to_ascii_lowercase();
            let valid = rustls_pki_types::DnsName::try_from(name.as_str()).is_ok()
                && name.parse::<std::net::IpAddr>().is_err();
            if !valid || name.contains('*') {
                return Err(AcmeError::InvalidDomain(domain.clone()));
            }
            if !domains.contains(&name) {
                domains.push(name);
            }
        }
        if domains.is_empty() {
            return Err(AcmeError::InvalidDomain(String::new()));
        }
        if !self.directory.starts_with("https://") {
            return Err(AcmeError::Protocol {
                url: self.directory.clone(),
                message: "the directory URL must be https://".to_string(),
            });
        }
        let cache = Cache::open(&self.cache_dir)?;
        let roots = match &self.directory_ca {
            Some(path) => Some(read_roots(path)?),
            None => None,
        };
        let key = Arc::new(cache.account_key()?);

        // What the cache has, served at once.
        let mut cached = Vec::new();
        for domain in &domains {
            cached.push(cache.load(domain));
        }
        let default = domains
            .iter()
            .zip(&cached)
            .find_map(|(domain, c)| c.as_ref().map(|_| domain.clone()));
        let mut tls = match &default {
            Some(domain) => {
                let (cert, key) = cache.cert_paths(domain);
                TlsConfig::from_pem_files(cert, key)?
            }
            None => placeholder(&domains[0])?,
        };
        for (domain, c) in domains.iter().zip(&cached) {
            if c.is_some() {
                let (cert, key) = cache.cert_paths(domain);
                tls = tls.with_sni(domain, cert, key)?;
            }
        }
        let tls = tls.answering_acme_tls_alpn();
        let reloader = tls.reloader().ok_or_else(|| AcmeError::Protocol {
            url: self.directory.clone(),
            message: "internal: no reloader".to_string(),
        })?;

        let now = SystemTime::now();
        let states = domains
            .iter()
            .zip(cached)
            .map(|(domain, c)| {
                let next = match c {
                    Some(renew_at) => {
                        tracing::info!(
                            domain = %domain,
                            renew_in_s = renew_at.duration_since(now).unwrap_or_default().as_secs(),
                            "ACME: serving the cached certificate"
                        );
                        renew_at
                    }
                    None => now,
                };
                DomainState {
                    name: domain.clone(),
                    next_attempt: next,
                    failures: 0,
                    is_default: default.as_deref() == Some(domain.as_str())
                        || default.is_none() && domain == &domains[0],
                }
            })
            .collect();

        let control = Arc::new(Control {
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let worker = Worker {
            settings: self,
            cache: cache.clone(),
            key,
            roots,
            tls: tls.clone(),
            reloader,
            states,
            control: control.clone(),
        };
        let thread = thread::Builder::new()
            .name("portcullis-acme".to_string())
            .spawn(move || worker.run())
            .map_err(|source| AcmeError::Io {
                path: cache.dir.clone(),
                source,
            })?;
        Ok(AcmeHandle {
            tls,
            http01_dir: cache.http01_dir(),
            control,
            thread: Some(thread),
        })
    }
}

/// The running certificate manager from [`Acme::start`]. Dropping it stops the
/// background thread (the certificates in service stay).
pub struct AcmeHandle {
    tls: TlsConfig,
    http01_dir: PathBuf,
    control: Arc<Control>,
    thread: Option<JoinHandle<()>>,
}

impl AcmeHandle {
    /// The TLS configuration to give to [`Server::tls`](crate::Server::tls): it serves
    /// the managed certificates by SNI and answers TLS-ALPN-01 validations.
    ///
    /// ```no_run
    /// let acme = portcullis::acme::Acme::new(["example.com"], "/var/cache/acme").start()?;
    /// let server = portcullis::Server::bind("[::]:443")?.tls(acme.tls_config());
    /// # let _ = server;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn tls_config(&self) -> TlsConfig {
        self.tls.clone()
    }

    /// The directory HTTP-01 token files are written to, for
    /// [`HttpsRedirect::acme_challenge_dir`](crate::HttpsRedirect::acme_challenge_dir).
    ///
    /// ```no_run
    /// let acme = portcullis::acme::Acme::new(["example.com"], "/var/cache/acme").start()?;
    /// let redirect = portcullis::HttpsRedirect::new(443).acme_challenge_dir(acme.http01_dir());
    /// # let _ = redirect;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn http01_dir(&self) -> &Path {
        &self.http01_dir
    }
}

impl Drop for AcmeHandle {
    fn drop(&mut self) {
        *self
            .control
            .stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.control.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl fmt::Debug for AcmeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeHandle")
            .field("tls", &self.tls)
            .field("http01_dir", &self.http01_dir)
            .finish_non_exhaustive()
    }
}

struct Control {
    stop: Mutex<bool>,
    wake: Condvar,
}

struct DomainState {
    name: String,
    next_attempt: SystemTime,
    failures: u32,
    is_default: bool,
}

/// The background thread's state.
struct Worker {
    settings: Acme,
    cache: Cache,
    key: Arc<AccountKey>,
    roots: Option<Vec<CertificateDer<'static>>>,
    tls: TlsConfig,
    reloader: CertReloader,
    states: Vec<DomainState>,
    control: Arc<Control>,
}

impl Worker {
    fn run(mut self) {
        let mut client: Option<Client> = None;
        loop {
            let now = SystemTime::now();
            for i in 0..self.states.len() {
                if self.stopped() {
                    return;
                }
                if self.states[i].next_attempt > now {
                    continue;
                }
                let domain = self.states[i].name.clone();
                tracing::info!(domain = %domain, challenge = self.settings.challenge.name(), "ACME: obtaining a certificate");
                let result = self.obtain(&mut client, &domain);
                let state = &mut self.states[i];
                match result {
                    Ok(renew_at) => {
                        state.failures = 0;
                        state.next_attempt = renew_at;
                        tracing::info!(
                            domain = %domain,
                            renew_in_s = renew_at.duration_since(SystemTime::now()).unwrap_or_default().as_secs(),
                            "ACME: new certificate in service"
                        );
                    }
                    Err(error) => {
                        client = None;
                        state.failures = state.failures.saturating_add(1);
                        let backoff = retry_delay(
                            self.settings.retry_min,
                            self.settings.retry_max,
                            state.failures,
                        );
                        state.next_attempt = SystemTime::now() + backoff;
                        tracing::warn!(
                            domain = %domain,
                            %error,
                            failures = state.failures,
                            retry_in_s = backoff.as_secs_f64(),
                            "ACME: could not obtain a certificate; the current one stays in service"
                        );
                    }
                }
            }
            let next = self
                .states
                .iter()
                .map(|s| s.next_attempt)
                .min()
                .unwrap_or(now);
            let wait = next
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                // Wake at least hourly: the wall clock may jump.
                .min(Duration::from_secs(3600));
            let stop = self
                .control
                .stop
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if *stop {
                return;
            }
            let (stop, _) = self
                .control
                .wake
                .wait_timeout(stop, wait)
                .unwrap_or_else(PoisonError::into_inner);
            if *stop {
                return;
            }
        }
    }

    fn stopped(&self) -> bool {
        *self
            .control
            .stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// One attempt for `domain`: order, validate, download, store, swap in. Returns when
    /// to renew.
    fn obtain(&self, client: &mut Option<Client>, domain: &str) -> Result<SystemTime, AcmeError> {
        let session = match client {
            Some(session) => session,
            None => {
                let mut session = Client::connect(
                    &self.settings.directory,
                    self.roots.as_deref(),
                    self.key.clone(),
                )?;
                session.account(&self.settings.contact)?;
                client.insert(session)
            }
        };
        let Issued { chain_pem, key_pem } =
            session.obtain(domain, self.settings.challenge, self)?;
        let renew_at = renew_time(chain_pem.as_bytes()).ok_or_else(|| AcmeError::Protocol {
            url: self.settings.directory.clone(),
            message: "the issued certificate has no readable validity period".to_string(),
        })?;
        let (cert_path, key_path) = self.cache.store(domain, &chain_pem, &key_pem)?;
        tracing::info!(domain, cert = %cert_path.display(), "ACME: certificate saved");
        self.reloader
            .reload_sni_from_pem_files(domain, &cert_path, &key_path)?;
        if self.state(domain).is_some_and(|s| s.is_default) {
            self.reloader.reload_from_pem_files(&cert_path, &key_path)?;
        }
        Ok(renew_at)
    }

    fn state(&self, domain: &str) -> Option<&DomainState> {
        self.states.iter().find(|s| s.name == domain)
    }
}

impl Responder for Worker {
    fn present(
        &self,
        kind: ChallengeKind,
        domain: &str,
        token: &str,
        key_authorization: &str,
    ) -> Result<(), AcmeError> {
        match kind {
            Challenge::TlsAlpn01 => {
                let cert = alpn_challenge_cert(domain, key_authorization)?;
                self.tls.set_acme_challenge(domain, Some(cert));
            }
            Challenge::Http01 => {
                let path = self.cache.http01_dir().join(token);
                fs::write(&path, key_authorization)
                    .map_err(|source| AcmeError::Io { path, source })?;
            }
        }
        Ok(())
    }

    fn clean_up(&self, kind: ChallengeKind, domain: &str, token: &str) {
        match kind {
            Challenge::TlsAlpn01 => self.tls.set_acme_challenge(domain, None),
            Challenge::Http01 => {
                let _ = fs::remove_file(self.cache.http01_dir().join(token));
            }
        }
    }
}

/// The self-signed certificate that answers a TLS-ALPN-01 validation: the name, and the
/// critical acmeIdentifier extension with the SHA-256 of the key authorization.
fn alpn_challenge_cert(
    domain: &str,
    key_authorization: &str,
) -> Result<Arc<CertifiedKey>, AcmeError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(AcmeError::crypto)?;
    let mut params = CertificateParams::new(vec![domain.to_string()]).map_err(AcmeError::crypto)?;
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(&sha256(
        key_authorization.as_bytes(),
    ))];
    let cert = params.self_signed(&key).map_err(AcmeError::crypto)?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    // Not `CertifiedKey::from_der`: its consistency check parses the certificate with
    // webpki, which refuses the critical acmeIdentifier extension it does not know.
    let signing_key = crate::crypto_provider()
        .key_provider
        .load_private_key(der)
        .map_err(AcmeError::crypto)?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing_key,
    )))
}

/// A self-signed stand-in for `domain` until the CA's certificate arrives.
fn placeholder(domain: &str) -> Result<TlsConfig, AcmeError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(AcmeError::crypto)?;
    let params = CertificateParams::new(vec![domain.to_string()]).map_err(AcmeError::crypto)?;
    let cert = params.self_signed(&key).map_err(AcmeError::crypto)?;
    tracing::info!(
        domain,
        "ACME: no cached certificate; serving a self-signed placeholder until one is issued"
    );
    Ok(TlsConfig::from_pem(
        cert.pem().as_bytes(),
        key.serialize_pem().as_bytes(),
    )?)
}

/// The wait after the `failures`-th failure in a row: `min`, doubling, at most `max`.
fn retry_delay(min: Duration, max: Duration, failures: u32) -> Duration {
    min.saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(max)
}

/// When to renew a chain: when a third of its leaf's lifetime is left.
fn renew_time(chain_pem: &[u8]) -> Option<SystemTime> {
    let leaf = CertificateDer::pem_slice_iter(chain_pem).next()?.ok()?;
    let (not_before, not_after) = der::validity(&leaf)?;
    let lifetime = not_after.duration_since(not_before).ok()?;
    Some(not_before + lifetime * 2 / 3)
}

fn read_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, AcmeError> {
    let pem = fs::read(path).map_err(|source| AcmeError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let roots = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .ok()
        .filter(|roots| !roots.is_empty())
        .ok_or_else(|| AcmeError::Io {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidData, "no PEM certificate"),
        })?;
    Ok(roots)
}

/// The cache directory: `account.key`, `NAME.crt` + `NAME.key` per domain, and
/// `http-01/` for tokens.
#[derive(Clone)]
struct Cache {
    dir: PathBuf,
}

impl Cache {
    fn open(dir: &Path) -> Result<Cache, AcmeError> {
        let cache = Cache {
            dir: dir.to_path_buf(),
        };
        for path in [dir.to_path_buf(), cache.http01_dir()] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&path)
                .map_err(|source| AcmeError::Io { path, source })?;
        }
        // The CA reads the tokens through the HTTP server, which may run as another user.
        let _ = fs::set_permissions(
            cache.http01_dir(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        );
        Ok(cache)
    }

    fn http01_dir(&self) -> PathBuf {
        self.dir.join("http-01")
    }

    fn cert_paths(&self, domain: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{domain}.crt")),
            self.dir.join(format!("{domain}.key")),
        )
    }

    /// The account key, created (0600) if there is none.
    fn account_key(&self) -> Result<AccountKey, AcmeError> {
        let path = self.dir.join("account.key");
        match fs::read_to_string(&path) {
            Ok(pem) => {
                let key = AccountKey::from_pem(&pem).map_err(|e| AcmeError::Io {
                    path: path.clone(),
                    source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
                })?;
                tracing::info!(path = %path.display(), "ACME: account key loaded");
                Ok(key)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = AccountKey::generate()?;
                write_private(&path, key.pem().as_bytes())?;
                tracing::info!(path = %path.display(), "ACME: account key created");
                Ok(key)
            }
            Err(source) => Err(AcmeError::Io { path, source }),
        }
    }

    /// The cached certificate for `domain` if it loads and matches its key: when to renew it.
    fn load(&self, domain: &str) -> Option<SystemTime> {
        let (cert, key) = self.cert_paths(domain);
        if !cert.exists() {
            return None;
        }
        let checked = TlsConfig::from_pem_files(&cert, &key)
            .and_then(|tls| tls.with_sni(domain, &cert, &key));
        if let Err(error) = checked {
            tracing::warn!(domain, %error, "ACME: ignoring the cached certificate");
            return None;
        }
        let pem = fs::read(&cert).ok()?;
        let renew_at = renew_time(&pem);
        if renew_at.is_none() {
            tracing::warn!(domain, cert = %cert.display(), "ACME: ignoring the cached certificate: no readable validity period");
        }
        renew_at
    }

    /// Writes a new chain and key (0600) over the old ones, each atomically.
    fn store(
        &self,
        domain: &str,
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<(PathBuf, PathBuf), AcmeError> {
        let (cert, key) = self.cert_paths(domain);
        write_private(&key, key_pem.as_bytes())?;
        write_private(&cert, chain_pem.as_bytes())?;
        Ok((cert, key))
    }
}

/// Writes `path` through a temporary file created 0600, then renamed into place.
fn write_private(path: &Path, contents: &[u8]) -> Result<(), AcmeError> {
    let tmp = path.with_extension("tmp");
    let result = (|| {
        let _ = fs::remove_file(&tmp);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|source| AcmeError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Why a certificate could not be obtained. The server keeps the certificate it has.
///
/// ```
/// let err = portcullis::acme::Acme::new(["not a name"], "/tmp/acme").start().unwrap_err();
/// assert!(err.to_string().contains("not a name"));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum AcmeError {
    /// A domain name that cannot have a certificate (empty, an IP address, a wildcard,
    /// not a DNS name).
    InvalidDomain(String),
    /// A file or directory in the cache could not be used.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The CA could not be reached (DNS, TCP, TLS, timeout).
    Http {
        /// The URL requested.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The CA answered with an error (an RFC 7807 problem document).
    Refused {
        /// The URL requested.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The problem type, such as `urn:ietf:params:acme:error:rateLimited`.
        kind: String,
        /// The CA's explanation.
        detail: String,
    },
    /// A challenge, authorization or order failed: the CA could not validate the name.
    Invalid {
        /// `authorization` or `order`.
        what: &'static str,
        /// The name.
        domain: String,
        /// The CA's reason (for a challenge: what its validation saw).
        detail: String,
    },
    /// The CA's answer did not follow RFC 8555.
    Protocol {
        /// The URL requested.
        url: String,
        /// What was wrong with it.
        message: String,
    },
    /// A key, CSR or certificate could not be made.
    Crypto(String),
    /// An issued or cached certificate could not be put in service.
    Tls(TlsError),
}

impl AcmeError {
    fn crypto(error: impl fmt::Display) -> AcmeError {
        AcmeError::Crypto(error.to_string())
    }

    fn http(url: &str, error: ureq::Error) -> AcmeError {
        AcmeError::Http {
            url: url.to_string(),
            message: error.to_string(),
        }
    }
}

impl fmt::Display for AcmeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcmeError::InvalidDomain(name) => {
                write!(
                    f,
                    "{name:?} is not a domain name a certificate can be issued for"
                )
            }
            AcmeError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            AcmeError::Http { url, message } => write!(f, "cannot reach {url}: {message}"),
            AcmeError::Refused {
                url,
                status,
                kind,
                detail,
            } => write!(f, "{url} answered {status} {kind}: {detail}"),
            AcmeError::Invalid {
                what,
                domain,
                detail,
            } => write!(f, "the CA refused the {what} for {domain}: {detail}"),
            AcmeError::Protocol { url, message } => write!(f, "{url}: {message}"),
            AcmeError::Crypto(message) => write!(f, "cannot make a key or certificate: {message}"),
            AcmeError::Tls(error) => write!(f, "cannot serve the certificate: {error}"),
        }
    }
}

impl std::error::Error for AcmeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AcmeError::Io { source, .. } => Some(source),
            AcmeError::Tls(error) => Some(error),
            _ => None,
        }
    }
}

impl From<TlsError> for AcmeError {
    fn from(error: TlsError) -> AcmeError {
        AcmeError::Tls(error)
    }
}

impl From<AcmeError> for io::Error {
    fn from(error: AcmeError) -> io::Error {
        io::Error::other(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("portcullis-acme-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn bad_domains_are_refused() {
        for bad in ["", "1.2.3.4", "*.example.com", "exa mple.com"] {
            let err = Acme::new([bad], temp_dir("bad")).start().unwrap_err();
            assert!(matches!(err, AcmeError::InvalidDomain(_)), "{bad}: {err}");
        }
        let none: [&str; 0] = [];
        assert!(matches!(
            Acme::new(none, temp_dir("none")).start().unwrap_err(),
            AcmeError::InvalidDomain(_)
        ));
    }

    #[test]
    fn account_key_is_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("key");
        let cache = Cache::open(&dir).expect("open");
        let key = cache.account_key().expect("create");
        let mode = fs::metadata(dir.join("account.key"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = cache.account_key().expect("load");
        assert_eq!(key.key_authorization("t"), again.key_authorization("t"));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn retries_back_off_exponentially_up_to_the_cap() {
        let (min, max) = (Duration::from_secs(60), Duration::from_secs(3600));
        let waits: Vec<u64> = (1..=9)
            .map(|n| retry_delay(min, max, n).as_secs())
            .collect();
        assert_eq!(waits, [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
        assert_eq!(retry_delay(min, max, u32::MAX), max);
    }

    #[test]
    fn renewal_at_two_thirds_of_the_lifetime() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::new(vec!["example.com".to_string()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2030, 1, 1);
        params.not_after = rcgen::date_time_ymd(2030, 1, 7); // 6 days
        let cert = params.self_signed(&key).expect("cert");
        let renew = renew_time(cert.pem().as_bytes()).expect("validity");
        let (before, _) = der::validity(cert.der()).expect("validity");
        assert_eq!(
            renew.duration_since(before).expect("after"),
            Duration::from_secs(4 * 86_400)
        );
    }

    #[test]
    fn tls_alpn_certificate_has_the_critical_acme_identifier() {
        let cert = alpn_challenge_cert("example.com", "token.thumb").expect("cert");
        let der = cert.cert[0].as_ref();
        // id-pe-acmeIdentifier 1.3.6.1.5.5.7.1.31, critical, OCTET STRING of the digest.
        let oid = [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x1f];
        let at = der
            .windows(oid.len())
            .position(|w| w == oid)
            .expect("extension present");
        let digest = sha256(b"token.thumb");
        assert!(der[at..].windows(32).any(|w| w == digest.as_slice()));
        assert_eq!(
            &der[at + oid.len()..at + oid.len() + 3],
            &[0x01, 0x01, 0xff]
        );
    }
}
