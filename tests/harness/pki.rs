//! Certificates made for one test: a CA, a server certificate for 127.0.0.1 and
//! localhost, and a client certificate, all signed by that CA.

use std::{path::Path, sync::Arc};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    server::WebPkiClientVerifier,
};

/// One issued certificate and its key, as PEM and DER.
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

/// A test CA and what it issued.
pub struct Pki {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The server's certificate (127.0.0.1, localhost).
    pub server: Issued,
    /// A client certificate.
    pub client: Issued,
    ca_der: CertificateDer<'static>,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    /// Makes a CA and issues a server and a client certificate.
    pub fn new() -> Self {
        let ca_key = KeyPair::generate().expect("a key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "switchyard test CA");
        let ca = ca_params.self_signed(&ca_key).expect("a CA");
        let issue = |names: Vec<String>| {
            let key = KeyPair::generate().expect("a key");
            let cert = CertificateParams::new(names)
                .expect("params")
                .signed_by(&key, &ca, &ca_key)
                .expect("a certificate");
            Issued {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
                cert_der: cert.der().clone(),
                key_der: key.serialize_der(),
            }
        };
        Self {
            server: issue(vec!["127.0.0.1".into(), "localhost".into()]),
            client: issue(vec!["switchyard-client".into()]),
            ca_pem: ca.pem(),
            ca_der: ca.der().clone(),
        }
    }

    /// Writes `ca.pem`, `server.pem`, `server.key`, `client.pem` and `client.key`.
    pub fn write(&self, dir: &Path) {
        for (file, text) in [
            ("ca.pem", &self.ca_pem),
            ("server.pem", &self.server.cert_pem),
            ("server.key", &self.server.key_pem),
            ("client.pem", &self.client.cert_pem),
            ("client.key", &self.client.key_pem),
        ] {
            std::fs::write(dir.join(file), text).expect("write a certificate file");
        }
    }

    /// A TLS server configuration with the server certificate that requires every
    /// client to present a certificate issued by this CA, speaking `versions`.
    pub fn server_requiring_client_certificates(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("the CA is a root");
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .build()
            .expect("a client verifier");
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("TLS versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![self.server.cert_der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server.key_der.clone())),
            )
            .expect("the server certificate");
        Arc::new(config)
    }
}
