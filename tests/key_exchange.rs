//! Key exchange: with the default `aws-lc-rs` provider a modern client (rustls on aws-lc-rs,
//! as Chrome, Firefox and Go 1.24+) gets the hybrid post-quantum group X25519MLKEM768,
//! and a classical-only client still connects with X25519. With only the `ring` feature
//! the server has no ML-KEM, and the same modern client falls back to X25519.

mod common;

use std::sync::Arc;

use common::*;
use hyper::{StatusCode, Version};
use tokio_rustls::rustls;
use tokio_rustls::rustls::crypto::{aws_lc_rs, CryptoProvider};
use tokio_rustls::rustls::NamedGroup;

/// A client on rustls' aws-lc-rs provider with `kx_groups` in that order (its default
/// order when `None`: X25519MLKEM768 first), trusting the dev CA, offering `alpn`.
fn client(kx_groups: Option<Vec<NamedGroup>>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut provider: CryptoProvider = aws_lc_rs::default_provider();
    if let Some(names) = kx_groups {
        provider.kx_groups = names
            .iter()
            .map(|name| {
                *aws_lc_rs::ALL_KX_GROUPS
                    .iter()
                    .find(|group| group.name() == *name)
                    .expect("aws-lc-rs has the group")
            })
            .collect();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(root_store())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Connects with `config`, sends one GET over the negotiated protocol, and returns the
/// group the handshake used.
fn negotiated_group(config: Arc<rustls::ClientConfig>, version: Version) -> NamedGroup {
    let handle = spawn_tls(info_handler);
    let addr = addr(&handle);
    let group = block_on(async move {
        let stream = tls_connect_with(addr, config).await.expect("TLS handshake");
        let group = stream
            .get_ref()
            .1
            .negotiated_key_exchange_group()
            .expect("a TLS 1.3 handshake has a key exchange group")
            .name();
        let authority = format!("localhost:{}", addr.port());
        let mut client = if version == Version::HTTP_2 {
            Client::h2(stream, &authority, true).await.expect("h2")
        } else {
            Client::h1(stream, &authority, true).await.expect("h1")
        };
        let reply = client.get("/kx").await.expect("GET");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.version, version);
        group
    });
    stop(handle);
    group
}

/// What a modern client should get from this build's provider.
fn expected_modern_group() -> NamedGroup {
    if cfg!(feature = "aws-lc-rs") {
        NamedGroup::X25519MLKEM768
    } else {
        NamedGroup::X25519
    }
}

#[test]
fn modern_client_gets_post_quantum_key_exchange() {
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let alpn: &[&[u8]] = if version == Version::HTTP_2 {
            ALPN_H2
        } else {
            ALPN_H1
        };
        let group = negotiated_group(client(None, alpn), version);
        assert_eq!(group, expected_modern_group(), "{version:?}");
    }
}

#[test]
fn classical_only_client_still_connects() {
    let group = negotiated_group(
        client(Some(vec![NamedGroup::X25519]), ALPN_H1),
        Version::HTTP_11,
    );
    assert_eq!(group, NamedGroup::X25519);
    let group = negotiated_group(
        client(Some(vec![NamedGroup::secp256r1]), ALPN_H2),
        Version::HTTP_2,
    );
    assert_eq!(group, NamedGroup::secp256r1);
}

#[test]
fn crypto_provider_matches_the_build() {
    let provider = portcullis::crypto_provider();
    let first = provider.kx_groups[0].name();
    assert_eq!(first, expected_modern_group());
}
