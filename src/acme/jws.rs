//! The account key and JSON Web Signatures (RFC 7515) as ACME uses them: ES256 over a
//! P-256 key, `jwk` in the account's first request and `kid` after (RFC 8555, 6.2), and
//! the key's thumbprint (RFC 7638) for key authorizations.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rcgen::{KeyPair, SigningKey, PKCS_ECDSA_P256_SHA256};
use serde_json::{json, Value};

use super::AcmeError;

/// base64url without padding, the encoding of every JWS part.
pub(crate) fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// SHA-256 from the TLS crypto provider in use (aws-lc-rs or ring), so ACME adds no
/// crypto of its own.
pub(crate) fn sha256(data: &[u8]) -> Vec<u8> {
    let provider = crate::crypto_provider();
    for suite in &provider.cipher_suites {
        if let Some(tls13) = suite.tls13() {
            let hash = tls13.common.hash_provider;
            if hash.algorithm() == rustls::crypto::hash::HashAlgorithm::SHA256 {
                return hash.hash(data).as_ref().to_vec();
            }
        }
    }
    // Every provider portcullis builds on has TLS13_AES_128_GCM_SHA256.
    unreachable!("the crypto provider has no TLS 1.3 suite with SHA-256")
}

/// A P-256 key that signs JWS (the account key).
pub(crate) struct AccountKey {
    pair: KeyPair,
    jwk: Value,
    thumbprint: String,
}

impl AccountKey {
    /// A fresh key.
    pub(crate) fn generate() -> Result<AccountKey, AcmeError> {
        let pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(AcmeError::crypto)?;
        AccountKey::from_pair(pair)
    }

    /// The key in a PKCS#8 PEM document, as [`pem`](AccountKey::pem) wrote it.
    pub(crate) fn from_pem(pem: &str) -> Result<AccountKey, AcmeError> {
        let pair = KeyPair::from_pem(pem).map_err(AcmeError::crypto)?;
        if pair.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(AcmeError::crypto(
                "the account key is not a P-256 ECDSA key",
            ));
        }
        AccountKey::from_pair(pair)
    }

    fn from_pair(pair: KeyPair) -> Result<AccountKey, AcmeError> {
        // Uncompressed SEC1 point: 0x04 || x || y.
        let point = pair.public_key_raw();
        if point.len() != 65 || point[0] != 4 {
            return Err(AcmeError::crypto("unexpected P-256 public key encoding"));
        }
        let (x, y) = (b64(&point[1..33]), b64(&point[33..65]));
        // RFC 7638: the required members in lexicographic order, no white space.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let thumbprint = b64(&sha256(canonical.as_bytes()));
        let jwk = json!({"crv": "P-256", "kty": "EC", "x": x, "y": y});
        Ok(AccountKey {
            pair,
            jwk,
            thumbprint,
        })
    }

    /// PKCS#8 PEM.
    pub(crate) fn pem(&self) -> String {
        self.pair.serialize_pem()
    }

    /// `token.thumbprint`, what a challenge must show (RFC 8555, 8.1).
    pub(crate) fn key_authorization(&self, token: &str) -> String {
        format!("{token}.{}", self.thumbprint)
    }

    /// A flattened JWS of `payload` (`None`: the empty payload of POST-as-GET) for `url`,
    /// identified by `kid` or, without one, by the public key itself.
    pub(crate) fn sign(
        &self,
        url: &str,
        nonce: &str,
        kid: Option<&str>,
        payload: Option<&Value>,
    ) -> Result<Vec<u8>, AcmeError> {
        let mut protected = json!({"alg": "ES256", "nonce": nonce, "url": url});
        match kid {
            Some(kid) => protected["kid"] = Value::from(kid),
            None => protected["jwk"] = self.jwk.clone(),
        }
        let protected = b64(protected.to_string().as_bytes());
        let payload = match payload {
            Some(payload) => b64(payload.to_string().as_bytes()),
            None => String::new(),
        };
        let der = self
            .pair
            .sign(format!("{protected}.{payload}").as_bytes())
            .map_err(AcmeError::crypto)?;
        let signature = ecdsa_der_to_fixed(&der)
            .ok_or_else(|| AcmeError::crypto("unexpected ECDSA signature encoding"))?;
        let body =
            json!({"protected": protected, "payload": payload, "signature": b64(&signature)});
        Ok(body.to_string().into_bytes())
    }
}

/// An ECDSA P-256 signature from its DER form (`SEQUENCE { INTEGER r, INTEGER s }`) to
/// the fixed 64-byte `r || s` that JWS wants.
fn ecdsa_der_to_fixed(der: &[u8]) -> Option<[u8; 64]> {
    let mut reader = super::der::Reader::new(der);
    let mut seq = reader.take(0x30)?;
    let mut out = [0u8; 64];
    for half in out.chunks_mut(32) {
        let int = seq.take(0x02)?.rest();
        let int = match int.iter().position(|&b| b != 0) {
            Some(start) => &int[start..],
            None => &[],
        };
        if int.len() > 32 {
            return None;
        }
        half[32 - int.len()..].copy_from_slice(int);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_conversion_pads_and_strips() {
        // r = 0x00ff.. (33 bytes with the sign byte), s = 0x01 (1 byte).
        let mut der = vec![0x30, 0x26, 0x02, 0x21, 0x00];
        der.extend([0xff; 32]);
        der.extend([0x02, 0x01, 0x01]);
        let fixed = ecdsa_der_to_fixed(&der).expect("valid");
        assert_eq!(&fixed[..32], &[0xff; 32]);
        assert_eq!(&fixed[32..63], &[0u8; 31]);
        assert_eq!(fixed[63], 1);
        assert!(ecdsa_der_to_fixed(&der[..10]).is_none());
    }

    #[test]
    fn key_round_trips_through_pem_with_the_same_thumbprint() {
        let key = AccountKey::generate().expect("generate");
        let again = AccountKey::from_pem(&key.pem()).expect("parse");
        assert_eq!(key.thumbprint, again.thumbprint);
        assert_eq!(key.thumbprint.len(), 43);
        assert!(key.key_authorization("tok").starts_with("tok."));
    }

    #[test]
    fn thumbprint_matches_rfc_7638_example_shape() {
        // The SHA-256 of "abc", as a check that the provider hash is wired right.
        assert_eq!(
            b64(&sha256(b"abc")),
            "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0"
        );
    }
}
