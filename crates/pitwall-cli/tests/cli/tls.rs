//! `pitwall` against an https API that requires a client certificate: `--cert`, `--key`,
//! `--ca`, and the config file's `cert`, `key`, `ca`.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::pitwall;

/// PEM files of a test CA, a client certificate it signed (CN alice) and the client's key.
struct Pki {
    dir: tempfile::TempDir,
    server: rustls::ServerConfig,
}

impl Pki {
    fn new() -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "pitwall test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let ca = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().unwrap();
        let mut server_params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server_params.signed_by(&server_key, &ca).unwrap();

        let client_key = KeyPair::generate().unwrap();
        let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        client_params
            .distinguished_name
            .push(DnType::CommonName, "alice");
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client_params.signed_by(&client_key, &ca).unwrap();

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("alice.crt"), client_cert.pem()).unwrap();
        std::fs::write(dir.path().join("alice.key"), client_key.serialize_pem()).unwrap();

        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from(server_cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
            )
            .unwrap();
        Self { dir, server }
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// An https `/healthz` on 127.0.0.1 that only answers clients with a certificate of the CA.
    async fn serve(&self) -> String {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(self.server.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return; // no (valid) client certificate
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let body = r#"{"status":"ok","version":"0.1.0","hosts":["host-a"]}"#;
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(reply.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        url
    }
}

#[tokio::test]
async fn a_client_certificate_from_flags_is_presented_to_an_https_api() {
    let pki = Pki::new();
    let url = pki.serve().await;
    let (cert, key, ca) = (
        pki.file("alice.crt"),
        pki.file("alice.key"),
        pki.file("ca.pem"),
    );
    let r = pitwall(
        &[
            "--api", &url, "--cert", &cert, "--key", &key, "--ca", &ca, "health",
        ],
        &[],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("status:  ok\n"), "{}", r.stdout);
}

#[tokio::test]
async fn without_the_client_certificate_the_https_api_refuses() {
    let pki = Pki::new();
    let url = pki.serve().await;
    let r = pitwall(&["--api", &url, "--ca", &pki.file("ca.pem"), "health"], &[]).await;
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(r.stderr.starts_with("error: "), "{}", r.stderr);
}

#[tokio::test]
async fn the_config_file_names_the_tls_files() {
    let pki = Pki::new();
    let url = pki.serve().await;
    let config = pki.dir.path().join("config.toml");
    let key_and_cert = pki.dir.path().join("alice-both.pem");
    // cert and key in one file, without `key`
    std::fs::write(
        &key_and_cert,
        std::fs::read_to_string(pki.file("alice.crt")).unwrap()
            + &std::fs::read_to_string(pki.file("alice.key")).unwrap(),
    )
    .unwrap();
    std::fs::write(
        &config,
        format!(
            "api = \"{url}\"\ncert = \"{}\"\nca = \"{}\"\n",
            key_and_cert.display(),
            pki.file("ca.pem")
        ),
    )
    .unwrap();
    let r = pitwall(&["health"], &[("PITWALL_CONFIG", config.to_str().unwrap())]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("status:  ok\n"), "{}", r.stdout);
}
