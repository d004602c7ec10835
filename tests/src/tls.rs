//! TLS for the tests: certificates made for one test ([`Pki`]: a CA with the server and client
//! certificates it issues, and the faulty ones TLS must refuse — issued by another CA, expired,
//! or for another name), and brokers that speak TLS with them and require client certificates.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::{Mosquitto, NatsServer, free_port};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// The names the server certificates are issued for (`server`, `foreign-server`, `expired-server`).
pub const SERVER_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];
/// The one name `wrong-name-server` is issued for.
pub const OTHER_SERVER_NAME: &str = "central.example";

/// A test's certificates:
/// - `ca`, `other-ca` — two unrelated CAs (certificate only: `ca.pem`, `other-ca.pem`);
/// - `server`, `client` — issued by `ca`, valid now, the server's for [`SERVER_NAMES`];
/// - `foreign-server`, `foreign-client` — the same, issued by `other-ca`;
/// - `expired-server` — issued by `ca` for [`SERVER_NAMES`], expired yesterday;
/// - `wrong-name-server` — issued by `ca` for [`OTHER_SERVER_NAME`] only.
#[derive(Debug)]
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// Makes every certificate above.
    pub fn new() -> Result<Self> {
        let pki = Self { dir: tempfile::tempdir()? };
        let now = OffsetDateTime::now_utc();
        let valid = (now - Duration::days(1), now + Duration::days(30));
        let expired = (now - Duration::days(30), now - Duration::days(1));
        let servers = SERVER_NAMES.map(str::to_owned).to_vec();
        let ca = pki.authority("ca", "weir test CA")?;
        let other_ca = pki.authority("other-ca", "unrelated test CA")?;
        pki.issue(&ca, "server", servers.clone(), valid, ExtendedKeyUsagePurpose::ServerAuth)?;
        pki.issue(&ca, "client", vec![], valid, ExtendedKeyUsagePurpose::ClientAuth)?;
        pki.issue(&other_ca, "foreign-server", servers.clone(), valid, ExtendedKeyUsagePurpose::ServerAuth)?;
        pki.issue(&other_ca, "foreign-client", vec![], valid, ExtendedKeyUsagePurpose::ClientAuth)?;
        pki.issue(&ca, "expired-server", servers, expired, ExtendedKeyUsagePurpose::ServerAuth)?;
        let other_name = vec![OTHER_SERVER_NAME.to_owned()];
        pki.issue(&ca, "wrong-name-server", other_name, valid, ExtendedKeyUsagePurpose::ServerAuth)?;
        Ok(pki)
    }

    /// `<name>.pem`: a certificate.
    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.pem"))
    }

    /// `<name>.key`: its private key.
    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.key"))
    }

    /// The directory holding them all.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn authority(&self, name: &str, common_name: &str) -> Result<Issuer<'static, KeyPair>> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        std::fs::write(self.cert(name), params.self_signed(&key)?.pem())?;
        Ok(Issuer::new(params, key))
    }

    fn issue(
        &self,
        issuer: &Issuer<'static, KeyPair>,
        name: &str,
        subject_alt_names: Vec<String>,
        (not_before, not_after): (OffsetDateTime, OffsetDateTime),
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<()> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(subject_alt_names)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.not_before = not_before;
        params.not_after = not_after;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        std::fs::write(self.cert(name), params.signed_by(&key, issuer)?.pem())?;
        std::fs::write(self.key(name), key.serialize_pem())?;
        Ok(())
    }
}

/// A mosquitto broker with two listeners: the plain one of [`Mosquitto`] for the test's own
/// clients, and a TLS one that presents `server`'s certificate and requires a client certificate
/// issued by the test's CA.
#[derive(Debug)]
pub struct TlsMosquitto {
    /// The broker (its `port` is the plain listener).
    pub broker: Mosquitto,
    /// The TLS listener's port.
    pub tls_port: u16,
}

impl TlsMosquitto {
    /// Starts one presenting the certificate `server` of `pki`.
    pub fn start(pki: &Pki, server: &str) -> Result<Self> {
        let tls_port = free_port();
        let broker = Mosquitto::start_with(&format!(
            "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            pki.cert("ca").display(),
            pki.cert(server).display(),
            pki.key(server).display()
        ))?;
        // Both listeners open before mosquitto serves either, but a certificate it cannot load
        // stops it after the plain one opened.
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_err() {
            anyhow::ensure!(started.elapsed() < crate::PATIENCE, "mosquitto did not open its TLS listener");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(Self { broker, tls_port })
    }

    /// `mqtts://127.0.0.1:<tls port>`.
    pub fn url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.tls_port)
    }
}

/// The `nats-server` configuration for TLS presenting `server`'s certificate and verifying
/// client certificates against the test's CA.
pub fn nats_tls_config(pki: &Pki, server: &str) -> String {
    format!(
        "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: true\n  timeout: 5\n}}\n",
        pki.cert(server).display().to_string(),
        pki.key(server).display().to_string(),
        pki.cert("ca").display().to_string()
    )
}

impl NatsServer {
    /// `tls://127.0.0.1:<port>`.
    pub fn tls_url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }

    /// A client connected over TLS with the certificate `client` of `pki`.
    pub async fn tls_client(&self, pki: &Pki, client: &str) -> Result<async_nats::Client> {
        Ok(async_nats::ConnectOptions::new()
            .add_root_certificates(pki.cert("ca"))
            .add_client_certificate(pki.cert(client), pki.key(client))
            .require_tls(true)
            .connect(format!("127.0.0.1:{}", self.port))
            .await?)
    }
}

/// The TOML lines of a broker table that make it verify the server against the test's CA and
/// present the certificate `client`.
pub fn broker_tls_lines(pki: &Pki, client: &str) -> String {
    format!(
        "tls.ca_file = {:?}\ntls.cert_file = {:?}\ntls.key_file = {:?}\n",
        pki.cert("ca").display().to_string(),
        pki.cert(client).display().to_string(),
        pki.key(client).display().to_string()
    )
}

/// A NATS operator with one account (JetStream allowed), one user of it and the system account, for a server in
/// operator mode (JWT authentication): the server's configuration and the user's credentials
/// file, made as `nsc` would.
#[derive(Debug)]
pub struct NatsOperator {
    /// Lines of `nats-server`'s configuration: the operator, and the account preloaded.
    pub server_config: String,
    /// The user's credentials file: its JWT and nkey seed.
    pub user_creds: String,
}

impl NatsOperator {
    /// A new operator, account and user.
    pub fn new() -> Result<Self> {
        let operator = nkeys::KeyPair::new_operator();
        let account = nkeys::KeyPair::new_account();
        let user = nkeys::KeyPair::new_user();
        let operator_jwt = nats_jwt(
            &operator,
            &operator.public_key(),
            "operator",
            &serde_json::json!({"type": "operator", "version": 2}),
        )?;
        let unlimited = serde_json::json!({
            "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true,
            "conn": -1, "leaf": -1, "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
        });
        let account_jwt = nats_jwt(
            &operator,
            &account.public_key(),
            "account",
            &serde_json::json!({"limits": unlimited, "type": "account", "version": 2}),
        )?;
        // JetStream needs a system account in operator mode.
        let system = nkeys::KeyPair::new_account();
        let system_jwt =
            nats_jwt(&operator, &system.public_key(), "SYS", &serde_json::json!({"type": "account", "version": 2}))?;
        let user_jwt = nats_jwt(
            &account,
            &user.public_key(),
            "gateway",
            &serde_json::json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2}),
        )?;
        Ok(Self {
            server_config: format!(
                "operator: {operator_jwt}\nsystem_account: {system}\nresolver: MEMORY\n\
                 resolver_preload: {{\n  {account}: {account_jwt}\n  {system}: {system_jwt}\n}}\n",
                account = account.public_key(),
                system = system.public_key(),
            ),
            user_creds: format!(
                "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
                 ************************* IMPORTANT *************************\n\
                 NKEY Seed printed below can be used to sign and prove identity.\n\n\
                 -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
                user.seed()?
            ),
        })
    }
}

/// A NATS JWT (`ed25519-nkey`) for `subject`, signed by `issuer`, with `nats` as its claims.
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: &serde_json::Value) -> Result<String> {
    use data_encoding::{BASE32_NOPAD, BASE64URL_NOPAD};
    use sha2::Digest;
    let issued_at = OffsetDateTime::now_utc().unix_timestamp();
    let mut claims = serde_json::json!({"iat": issued_at, "iss": issuer.public_key(), "name": name, "sub": subject, "nats": nats.clone()});
    let jti = BASE32_NOPAD.encode(&sha2::Sha256::digest(claims.to_string().as_bytes()));
    claims["jti"] = jti.into();
    let header = BASE64URL_NOPAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = BASE64URL_NOPAD.encode(claims.to_string().as_bytes());
    let signed = format!("{header}.{body}");
    let signature = issuer.sign(signed.as_bytes())?;
    Ok(format!("{signed}.{}", BASE64URL_NOPAD.encode(&signature)))
}
