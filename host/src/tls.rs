//! TLS to brokers: the rustls client configuration a broker's `[brokers.<name>.tls]` settings
//! make — the roots a server's chain must lead to (a CA file, or the system's), the client
//! certificate and key for mutual TLS, and the name the server's certificate must carry. The
//! MQTT and NATS clients take the same configuration; `weir check` builds it too, so a bad file
//! is refused before anything connects.
//!
//! **Invariant:** a server is always verified — chain, validity period and name. Nothing here
//! turns verification off; `server_name` changes which name is checked, never whether. Every
//! refusal is logged with the broker and the reason, whichever client made the connection.

use std::fmt;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::{PemFile, TlsConfig};

/// Which setting of `[brokers.<name>.tls]` a [`TlsProblem`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsField {
    /// `ca_file`, or the system's roots when it is not set.
    Ca,
    /// `cert_file`
    Certificate,
    /// `key_file`
    Key,
    /// `server_name`
    ServerName,
}

/// Why a TLS configuration cannot be made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsProblem {
    /// The setting at fault.
    pub field: TlsField,
    /// What is wrong with it, naming the file (never a key's contents).
    pub message: String,
}

impl fmt::Display for TlsProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TlsProblem {}

impl TlsProblem {
    fn new(field: TlsField, message: impl Into<String>) -> Self {
        Self { field, message: message.into() }
    }
}

/// The client configuration for `tls` — TLS 1.2 and 1.3 with ring's safe defaults — used to
/// reach `broker` (a name for the log).
pub fn client_config(tls: &TlsConfig, broker: &str) -> Result<Arc<ClientConfig>, TlsProblem> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = Arc::new(roots(tls.ca.as_ref())?);
    let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsProblem::new(TlsField::Ca, format!("cannot verify servers with these roots: {e}")))?;
    let name = match &tls.server_name {
        None => None,
        Some(name) => Some(ServerName::try_from(name.clone()).map_err(|_| {
            TlsProblem::new(TlsField::ServerName, format!("{name:?} is neither a DNS name nor an IP address"))
        })?),
    };
    let verifier = Verifier { name, webpki, broker: broker.to_owned() };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring's default provider supports the safe default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let config = match &tls.client_identity {
        None => builder.with_no_client_auth(),
        Some(identity) => {
            let chain = certificates(&identity.certificates, TlsField::Certificate)?;
            let key = PrivateKeyDer::from_pem_slice(identity.key.expose()).map_err(|e| {
                TlsProblem::new(TlsField::Key, format!("no usable private key in {}: {e}", identity.key_path.display()))
            })?;
            let (key_path, certificate_path) = (identity.key_path.display(), identity.certificates.path.display());
            builder.with_client_auth_cert(chain, key).map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => TlsProblem::new(
                    TlsField::Key,
                    format!("the key in {key_path} does not fit the certificate in {certificate_path}"),
                ),
                // An X.509 v1 certificate (`openssl x509 -req` without extensions makes one),
                // a key type rustls does not sign with, …
                other => TlsProblem::new(
                    TlsField::Certificate,
                    format!("cannot use the certificate in {certificate_path} with the key in {key_path}: {other}"),
                ),
            })?
        }
    };
    Ok(Arc::new(config))
}

/// The trust anchors: every certificate of `ca`, or the system's roots.
fn roots(ca: Option<&PemFile>) -> Result<RootCertStore, TlsProblem> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(file) => {
            for (index, certificate) in certificates(file, TlsField::Ca)?.into_iter().enumerate() {
                roots.add(certificate).map_err(|e| {
                    TlsProblem::new(
                        TlsField::Ca,
                        format!(
                            "certificate {} in {} is not a usable CA certificate: {e}",
                            index + 1,
                            file.path.display()
                        ),
                    )
                })?;
            }
        }
        None => {
            let system = rustls_native_certs::load_native_certs();
            let (added, _unusable) = roots.add_parsable_certificates(system.certs);
            if added == 0 {
                let errors: Vec<String> = system.errors.iter().map(ToString::to_string).collect();
                return Err(TlsProblem::new(
                    TlsField::Ca,
                    format!(
                        "no CA certificates found on this system{}: install the ca-certificates package or \
                         set `ca_file`",
                        if errors.is_empty() { String::new() } else { format!(" ({})", errors.join("; ")) }
                    ),
                ));
            }
        }
    }
    Ok(roots)
}

/// Every certificate in a PEM file; at least one.
fn certificates(file: &PemFile, field: TlsField) -> Result<Vec<CertificateDer<'static>>, TlsProblem> {
    let certificates = CertificateDer::pem_slice_iter(&file.pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsProblem::new(field, format!("cannot read the certificates in {}: {e}", file.path.display())))?;
    if certificates.is_empty() {
        return Err(TlsProblem::new(field, format!("{} holds no PEM certificate", file.path.display())));
    }
    Ok(certificates)
}

/// webpki's verification of a server's certificate, for `server_name` instead of the name the
/// client connected to when one is set; a refusal is logged before the client sees it.
#[derive(Debug)]
struct Verifier {
    name: Option<ServerName<'static>>,
    webpki: Arc<WebPkiServerVerifier>,
    broker: String,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        connected_to: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = self.name.as_ref().unwrap_or(connected_to);
        self.webpki.verify_server_cert(end_entity, intermediates, name, ocsp_response, now).inspect_err(|e| {
            tracing::warn!(
                stage = "tls",
                broker = self.broker,
                server_name = %name.to_str(),
                error = %e,
                "TLS: the broker's certificate is refused, not connecting"
            );
        })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, signature)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, signature)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
