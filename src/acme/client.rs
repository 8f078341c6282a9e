//! The ACME protocol (RFC 8555) over a blocking HTTPS client: directory, nonces, account,
//! order, authorizations and challenges, finalize, certificate download.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::CertificateDer;
use serde_json::{json, Value};

use super::jws::{b64, AccountKey};
use super::{AcmeError, ChallengeKind};

/// Largest response body read from the CA (a certificate chain is a few KiB).
const MAX_BODY: u64 = 1 << 20;
/// `badNonce` answers retried in a row before giving up.
const NONCE_RETRIES: usize = 5;
/// How long one authorization or order may stay pending.
const PENDING_LIMIT: Duration = Duration::from_secs(120);

/// One answer from the CA.
pub(crate) struct Reply {
    status: u16,
    location: Option<String>,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self, url: &str) -> Result<Value, AcmeError> {
        serde_json::from_slice(&self.body).map_err(|e| AcmeError::Protocol {
            url: url.to_string(),
            message: format!("response is not JSON: {e}"),
        })
    }
}

/// Something that shows the CA a challenge response while it validates.
pub(crate) trait Responder {
    /// Starts answering `token` for `domain` with `key_authorization`.
    fn present(
        &self,
        kind: ChallengeKind,
        domain: &str,
        token: &str,
        key_authorization: &str,
    ) -> Result<(), AcmeError>;
    /// Stops answering it.
    fn clean_up(&self, kind: ChallengeKind, domain: &str, token: &str);
}

/// A session with one ACME directory under one account.
pub(crate) struct Client {
    agent: ureq::Agent,
    new_nonce: String,
    new_account: String,
    new_order: String,
    key: Arc<AccountKey>,
    kid: Option<String>,
    nonce: Option<String>,
}

/// A certificate the CA issued, with its key.
pub(crate) struct Issued {
    pub(crate) chain_pem: String,
    pub(crate) key_pem: String,
}

impl Client {
    /// Reads the directory at `url`. `roots`: the CAs trusted for the directory's own
    /// HTTPS (`None`: the Mozilla roots built in).
    pub(crate) fn connect(
        url: &str,
        roots: Option<&[CertificateDer<'static>]>,
        key: Arc<AccountKey>,
    ) -> Result<Client, AcmeError> {
        let root_certs = match roots {
            Some(roots) => ureq::tls::RootCerts::new_with_certs(
                &roots
                    .iter()
                    .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
                    .collect::<Vec<_>>(),
            ),
            None => ureq::tls::RootCerts::WebPki,
        };
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .root_certs(root_certs)
            .unversioned_rustls_crypto_provider(crate::crypto_provider())
            .build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .https_only(true)
            .timeout_global(Some(Duration::from_secs(30)))
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION"), " (acme)"))
            .build()
            .into();
        let directory = get(&agent, url)?;
        if directory.status != 200 {
            return Err(problem(url, &directory));
        }
        let directory = directory.json(url)?;
        let field = |name: &str| -> Result<String, AcmeError> {
            directory[name]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| AcmeError::Protocol {
                    url: url.to_string(),
                    message: format!("the directory has no {name:?}"),
                })
        };
        tracing::info!(directory = url, "ACME: read the directory");
        Ok(Client {
            new_nonce: field("newNonce")?,
            new_account: field("newAccount")?,
            new_order: field("newOrder")?,
            agent,
            key,
            kid: None,
            nonce: None,
        })
    }

    /// Registers the account key (or finds its existing account) and agrees to the
    /// terms of service.
    pub(crate) fn account(&mut self, contact: &[String]) -> Result<(), AcmeError> {
        let url = self.new_account.clone();
        let payload = json!({"termsOfServiceAgreed": true, "contact": contact});
        let reply = self.post(&url, Some(&payload))?;
        if reply.status != 200 && reply.status != 201 {
            return Err(problem(&url, &reply));
        }
        let kid = reply.location.clone().ok_or_else(|| AcmeError::Protocol {
            url: url.clone(),
            message: "newAccount answer has no Location".to_string(),
        })?;
        tracing::info!(
            account = %kid,
            created = reply.status == 201,
            "ACME: account ready"
        );
        self.kid = Some(kid);
        Ok(())
    }

    /// Orders a certificate for `domain`, proves control with a challenge of `kind`
    /// through `responder`, and downloads the certificate.
    pub(crate) fn obtain(
        &mut self,
        domain: &str,
        kind: ChallengeKind,
        responder: &dyn Responder,
    ) -> Result<Issued, AcmeError> {
        let new_order = self.new_order.clone();
        let payload = json!({"identifiers": [{"type": "dns", "value": domain}]});
        let reply = self.post(&new_order, Some(&payload))?;
        if reply.status != 201 {
            return Err(problem(&new_order, &reply));
        }
        let order_url = reply.location.clone().ok_or_else(|| AcmeError::Protocol {
            url: new_order.clone(),
            message: "newOrder answer has no Location".to_string(),
        })?;
        let order = reply.json(&new_order)?;
        tracing::info!(domain, order = %order_url, "ACME: order created");
        let authorizations: Vec<String> = order["authorizations"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|a| a.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        for authz in &authorizations {
            self.authorize(domain, authz, kind, responder)?;
        }
        let finalize = order["finalize"]
            .as_str()
            .ok_or_else(|| AcmeError::Protocol {
                url: order_url.clone(),
                message: "the order has no finalize URL".to_string(),
            })?
            .to_string();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(AcmeError::crypto)?;
        let mut params =
            CertificateParams::new(vec![domain.to_string()]).map_err(AcmeError::crypto)?;
        params.distinguished_name = DistinguishedName::new();
        let csr = params.serialize_request(&key).map_err(AcmeError::crypto)?;
        let reply = self.post(&finalize, Some(&json!({"csr": b64(csr.der())})))?;
        if reply.status != 200 {
            return Err(problem(&finalize, &reply));
        }
        tracing::info!(domain, "ACME: order finalized (CSR sent)");
        let order = self.poll(
            &order_url,
            "order",
            domain,
            &["valid"],
            &["processing", "pending", "ready"],
        )?;
        let cert_url = order["certificate"]
            .as_str()
            .ok_or_else(|| AcmeError::Protocol {
                url: order_url.clone(),
                message: "a valid order has no certificate URL".to_string(),
            })?
            .to_string();
        let reply = self.post(&cert_url, None)?;
        if reply.status != 200 {
            return Err(problem(&cert_url, &reply));
        }
        let chain_pem = String::from_utf8(reply.body).map_err(|_| AcmeError::Protocol {
            url: cert_url.clone(),
            message: "the certificate is not PEM text".to_string(),
        })?;
        tracing::info!(domain, certificate = %cert_url, "ACME: certificate downloaded");
        Ok(Issued {
            chain_pem,
            key_pem: key.serialize_pem(),
        })
    }

    /// Answers one authorization's challenge of `kind` and waits for it to be valid.
    fn authorize(
        &mut self,
        domain: &str,
        authz_url: &str,
        kind: ChallengeKind,
        responder: &dyn Responder,
    ) -> Result<(), AcmeError> {
        let reply = self.post(authz_url, None)?;
        if reply.status != 200 {
            return Err(problem(authz_url, &reply));
        }
        let authz = reply.json(authz_url)?;
        if authz["status"] == "valid" {
            tracing::info!(domain, "ACME: authorization already valid");
            return Ok(());
        }
        let challenge = authz["challenges"]
            .as_array()
            .and_then(|list| list.iter().find(|c| c["type"] == kind.name()))
            .ok_or_else(|| AcmeError::Protocol {
                url: authz_url.to_string(),
                message: format!("the CA offers no {} challenge", kind.name()),
            })?;
        let (Some(token), Some(url)) = (challenge["token"].as_str(), challenge["url"].as_str())
        else {
            return Err(AcmeError::Protocol {
                url: authz_url.to_string(),
                message: "challenge without token or url".to_string(),
            });
        };
        if token.is_empty()
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(AcmeError::Protocol {
                url: authz_url.to_string(),
                message: "challenge token is not base64url".to_string(),
            });
        }
        let (token, url) = (token.to_string(), url.to_string());
        let key_authorization = self.key.key_authorization(&token);
        responder.present(kind, domain, &token, &key_authorization)?;
        tracing::info!(
            domain,
            challenge = kind.name(),
            "ACME: challenge ready, asking the CA to validate"
        );
        let result = (|| {
            let reply = self.post(&url, Some(&json!({})))?;
            if reply.status != 200 {
                return Err(problem(&url, &reply));
            }
            self.poll(authz_url, "authorization", domain, &["valid"], &["pending"])
        })();
        responder.clean_up(kind, domain, &token);
        match result {
            Ok(_) => {
                tracing::info!(domain, challenge = kind.name(), "ACME: authorization valid");
                Ok(())
            }
            Err(AcmeError::Invalid { what, detail, .. }) => {
                // The challenge object says why the CA refused.
                let detail = self
                    .post(&url, None)
                    .ok()
                    .and_then(|r| r.json(&url).ok())
                    .and_then(|c| c["error"]["detail"].as_str().map(str::to_string))
                    .unwrap_or(detail);
                Err(AcmeError::Invalid {
                    what,
                    domain: domain.to_string(),
                    detail,
                })
            }
            Err(other) => Err(other),
        }
    }

    /// POST-as-GET `url` until its `status` is one of `done` (returns the object), stays
    /// in `waiting` (waits, as long as the CA's Retry-After says or a second), or is
    /// anything else (an [`AcmeError::Invalid`] with the CA's reason).
    fn poll(
        &mut self,
        url: &str,
        what: &'static str,
        domain: &str,
        done: &[&str],
        waiting: &[&str],
    ) -> Result<Value, AcmeError> {
        let started = Instant::now();
        loop {
            let reply = self.post(url, None)?;
            if reply.status != 200 {
                return Err(problem(url, &reply));
            }
            let object = reply.json(url)?;
            let status = object["status"].as_str().unwrap_or("");
            if done.contains(&status) {
                return Ok(object);
            }
            if !waiting.contains(&status) {
                let detail = object["error"]["detail"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("the {what} is {status:?}"));
                return Err(AcmeError::Invalid {
                    what,
                    domain: domain.to_string(),
                    detail,
                });
            }
            if started.elapsed() > PENDING_LIMIT {
                return Err(AcmeError::Protocol {
                    url: url.to_string(),
                    message: format!(
                        "the {what} stayed {status:?} for {} s",
                        PENDING_LIMIT.as_secs()
                    ),
                });
            }
            let wait = reply
                .retry_after
                .unwrap_or(Duration::from_secs(1))
                .clamp(Duration::from_millis(250), Duration::from_secs(10));
            thread::sleep(wait);
        }
    }

    /// A signed POST; retries `badNonce` answers with the fresh nonce they carry.
    fn post(&mut self, url: &str, payload: Option<&Value>) -> Result<Reply, AcmeError> {
        for _ in 0..NONCE_RETRIES {
            let nonce = match self.nonce.take() {
                Some(nonce) => nonce,
                None => self.fresh_nonce()?,
            };
            let body = self.key.sign(url, &nonce, self.kid.as_deref(), payload)?;
            let response = self
                .agent
                .post(url)
                .header("content-type", "application/jose+json")
                .send(&body[..])
                .map_err(|e| AcmeError::http(url, e))?;
            let (reply, nonce) = read(url, response)?;
            self.nonce = nonce;
            if reply.status == 400
                && problem_type(&reply).as_deref() == Some("urn:ietf:params:acme:error:badNonce")
            {
                tracing::debug!(url, "ACME: bad nonce, retrying");
                continue;
            }
            return Ok(reply);
        }
        Err(AcmeError::Protocol {
            url: url.to_string(),
            message: format!("the CA refused {NONCE_RETRIES} nonces in a row"),
        })
    }

    fn fresh_nonce(&self) -> Result<String, AcmeError> {
        let url = &self.new_nonce;
        let response = self
            .agent
            .head(url)
            .call()
            .map_err(|e| AcmeError::http(url, e))?;
        let (_, nonce) = read(url, response)?;
        nonce.ok_or_else(|| AcmeError::Protocol {
            url: url.to_string(),
            message: "no Replay-Nonce".to_string(),
        })
    }
}

fn get(agent: &ureq::Agent, url: &str) -> Result<Reply, AcmeError> {
    let response = agent.get(url).call().map_err(|e| AcmeError::http(url, e))?;
    Ok(read(url, response)?.0)
}

/// The reply and the nonce it carries.
fn read(
    url: &str,
    mut response: http::Response<ureq::Body>,
) -> Result<(Reply, Option<String>), AcmeError> {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let nonce = header("replay-nonce");
    let location = header("location");
    let retry_after = header("retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_vec()
        .map_err(|e| AcmeError::http(url, e))?;
    Ok((
        Reply {
            status,
            location,
            retry_after,
            body,
        },
        nonce,
    ))
}

fn problem_type(reply: &Reply) -> Option<String> {
    let value: Value = serde_json::from_slice(&reply.body).ok()?;
    value["type"].as_str().map(str::to_string)
}

/// The CA's problem document (RFC 7807) as an error.
fn problem(url: &str, reply: &Reply) -> AcmeError {
    let value: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    AcmeError::Refused {
        url: url.to_string(),
        status: reply.status,
        kind: value["type"].as_str().unwrap_or("").to_string(),
        detail: value["detail"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| {
                String::from_utf8_lossy(&reply.body)
                    .chars()
                    .take(200)
                    .collect()
            }),
    }
}
