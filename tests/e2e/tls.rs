//! TLS and credentials to real brokers, with certificates made inside each test: mutual TLS to
//! mosquitto and nats-server carries readings end to end and keeps working after both brokers
//! restart; a server that cannot be verified — another CA's certificate, an expired one, one for
//! another name — is refused with the reason, and a TLS URL never falls back to plaintext;
//! `server_name` verifies a broker reached by an address its certificate does not name;
//! `weir check` refuses unusable TLS files naming the field; NATS nkeys authenticate.

use anyhow::Result;
use weir_e2e::tls::{Pki, TlsMosquitto, broker_tls_lines, nats_tls_config};
use weir_e2e::*;
use weir_host::config::{ClientIdentity, PemFile, Secret, TlsConfig};

/// A gateway reading `plant/readings` (JSON) from broker `plant` and writing to JetStream
/// subject `central.tls` on broker `central`; `plant_extra` and `central_extra` are more lines
/// of each broker's table (TLS settings, credentials).
fn gateway(plant_url: &str, plant_extra: &str, central_url: &str, central_extra: &str) -> String {
    format!(
        "[gateway]\nid = \"gw-e2e\"\ndata_dir = \"{{data_dir}}\"\n\n\
         [brokers.plant]\nurl = \"{plant_url}\"\nreconnect_min = \"20ms\"\nreconnect_max = \"500ms\"\n{plant_extra}\n\
         [brokers.central]\nurl = \"{central_url}\"\nreconnect_min = \"20ms\"\nreconnect_max = \"500ms\"\n{central_extra}\n\
         {READINGS_PIPELINE}\n[pipelines.readings.sink.jetstream]\nbroker = \"central\"\nsubject = \"central.tls\"\n"
    )
}

fn reading(i: u32) -> String {
    format!(r#"{{"sensor": "tank", "ts": {i}, "value": {i}}}"#)
}

/// Publishes readings `values` to the plant broker's plain listener.
async fn publish(plant: &Mosquitto, client_id: &str, values: std::ops::RangeInclusive<u32>) -> Result<()> {
    let publisher = MqttClient::connect(plant, client_id).await?;
    let count = values.clone().count();
    for i in values {
        publisher.publish("plant/readings", reading(i)).await?;
    }
    publisher.wait_for_pubacks(count).await
}

/// The values of every reading in the central stream, once there are `count`.
async fn central_values(stream: &async_nats::jetstream::stream::Stream, count: usize) -> Result<Vec<f64>> {
    let records = collect_stream(stream, |records| all_readings(records).len() >= count).await?;
    Ok(all_readings(&records).into_iter().map(|r| r.value).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_cross_mutual_tls_to_both_brokers_and_survive_their_restarts() -> Result<()> {
    let pki = Pki::new()?;
    let mut plant = TlsMosquitto::start(&pki, "server")?;
    let mut central = NatsServer::start_with(&nats_tls_config(&pki, "server"))?;
    let client_tls = broker_tls_lines(&pki, "client");
    let weir = Weir::start(&gateway(&plant.url(), &client_tls, &central.tls_url(), &client_tls))?;
    let stream = create_stream(&central.tls_client(&pki, "client").await?, "TLS", &["central.tls"]).await?;
    weir.wait_for_log("subscribed", 1).await?;
    publish(&plant.broker, "sensor", 1..=3).await?;
    assert_eq!(central_values(&stream, 3).await?, [1.0, 2.0, 3.0]);

    // Both brokers go away and come back: weir reconnects over TLS by itself.
    plant.broker.restart()?;
    central.stop(false)?;
    central.start_again()?;
    weir.wait_for_log("subscribed", 2).await?;
    publish(&plant.broker, "sensor-again", 4..=6).await?;
    let stream = create_stream(&central.tls_client(&pki, "client").await?, "TLS", &["central.tls"]).await?;
    assert_eq!(central_values(&stream, 6).await?, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert!(weir.log().contains("MQTT connection lost"), "the MQTT outage was noticed");
    assert_eq!(weir.stop()?.0, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_that_cannot_be_verified_are_refused_with_the_reason() -> Result<()> {
    let pki = Pki::new()?;
    let client_tls = broker_tls_lines(&pki, "client");
    for (server, reason) in [
        ("foreign-server", "UnknownIssuer"),
        ("expired-server", "certificate expired"),
        ("wrong-name-server", "not valid for name"),
    ] {
        let plant = TlsMosquitto::start(&pki, server)?;
        let central = NatsServer::start_with(&nats_tls_config(&pki, server))?;
        let weir = Weir::start(&gateway(&plant.url(), &client_tls, &central.tls_url(), &client_tls))?;
        // A refusal from the MQTT source and one from the NATS sink, each naming its broker.
        for url in [plant.url(), central.tls_url()] {
            let started = std::time::Instant::now();
            while !weir.log().lines().any(|line| {
                line.contains("the broker's certificate is refused") && line.contains(reason) && line.contains(&url)
            }) {
                assert!(
                    started.elapsed() < PATIENCE,
                    "{server}: no refusal naming {url} and {reason}:\n{}",
                    weir.log()
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        let log = weir.log();
        assert!(!log.contains("MQTT connected"), "{server}: connected anyway:\n{log}");
        assert_eq!(weir.stop()?.0, 0);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_url_never_falls_back_to_plaintext() -> Result<()> {
    // Both brokers speak plaintext only, on the ports the TLS URLs name.
    let plant = Mosquitto::start()?;
    let central = NatsServer::start()?;
    let pki = Pki::new()?;
    let ca_only = format!("tls.ca_file = {:?}\n", pki.cert("ca").display().to_string());
    let tls_urls = (format!("mqtts://127.0.0.1:{}", plant.port), central.tls_url());
    let weir = Weir::start(&gateway(&tls_urls.0, &ca_only, &tls_urls.1, &ca_only))?;
    weir.wait_for_log("MQTT connection lost", 2).await?;
    weir.wait_for_log("NATS connection failed", 2).await?;
    let log = weir.log();
    assert!(!log.contains("MQTT connected") && !log.contains("subscribed"), "{log}");
    assert_eq!(weir.stop()?.0, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_name_verifies_a_broker_reached_by_an_address_its_certificate_does_not_name() -> Result<()> {
    let pki = Pki::new()?;
    let plant = TlsMosquitto::start(&pki, "wrong-name-server")?;
    let central = NatsServer::start_with(&nats_tls_config(&pki, "wrong-name-server"))?;
    let named = format!("{}tls.server_name = {:?}\n", broker_tls_lines(&pki, "client"), tls::OTHER_SERVER_NAME);
    let weir = Weir::start(&gateway(&plant.url(), &named, &central.tls_url(), &named))?;
    // The test's own reader needs the override as much as weir does.
    let reader_tls = TlsConfig {
        ca: Some(PemFile { path: pki.cert("ca"), pem: std::fs::read(pki.cert("ca"))? }),
        client_identity: Some(ClientIdentity {
            certificates: PemFile { path: pki.cert("client"), pem: std::fs::read(pki.cert("client"))? },
            key_path: pki.key("client"),
            key: Secret::new(std::fs::read(pki.key("client"))?),
        }),
        server_name: Some(tls::OTHER_SERVER_NAME.to_owned()),
    };
    let reader = async_nats::ConnectOptions::new()
        .tls_client_config(weir_host::tls::client_config(&reader_tls, "reader")?.as_ref().clone())
        .require_tls(true)
        .connect(format!("127.0.0.1:{}", central.port))
        .await?;
    let stream = create_stream(&reader, "TLS", &["central.tls"]).await?;
    weir.wait_for_log("subscribed", 1).await?;
    publish(&plant.broker, "sensor", 1..=2).await?;
    assert_eq!(central_values(&stream, 2).await?, [1.0, 2.0]);
    assert!(!weir.log().contains("refused"), "{}", weir.log());
    assert_eq!(weir.stop()?.0, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_requiring_client_certificates_refuses_one_from_another_ca() -> Result<()> {
    let pki = Pki::new()?;
    let plant = TlsMosquitto::start(&pki, "server")?;
    let central = NatsServer::start_with(&nats_tls_config(&pki, "server"))?;
    // The gateway trusts the servers but presents a certificate their CA did not issue.
    let foreign = format!(
        "tls.ca_file = {:?}\ntls.cert_file = {:?}\ntls.key_file = {:?}\n",
        pki.cert("ca").display().to_string(),
        pki.cert("foreign-client").display().to_string(),
        pki.key("foreign-client").display().to_string()
    );
    let weir = Weir::start(&gateway(&plant.url(), &foreign, &central.tls_url(), &foreign))?;
    weir.wait_for_log("MQTT connection lost", 2).await?;
    weir.wait_for_log("NATS connection failed", 2).await?;
    let log = weir.log();
    assert!(!log.contains("subscribed"), "{log}");
    assert!(!log.contains("the broker's certificate is refused"), "the servers were fine:\n{log}");
    assert_eq!(weir.stop()?.0, 0);
    Ok(())
}

#[test]
fn check_refuses_unusable_tls_and_credential_files_naming_the_field_and_never_a_secret() -> Result<()> {
    let pki = Pki::new()?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("weir.toml");
    let path_text = path.to_str().expect("UTF-8 path");
    let shown = |p: std::path::PathBuf| format!("{:?}", p.display().to_string());
    let seed = dir.path().join("gw.nk");
    std::fs::write(&seed, "SUNOTAREALSEEDBUTSECRETANYWAY\n")?;
    // (the plant broker's extra lines, the central broker's, what the refusal says)
    let cases = [
        // A key that belongs to another certificate.
        (
            format!(
                "tls.ca_file = {}\ntls.cert_file = {}\ntls.key_file = {}\n",
                shown(pki.cert("ca")),
                shown(pki.cert("client")),
                shown(pki.key("foreign-client"))
            ),
            String::new(),
            "field `brokers.plant.tls.key_file`: the key in",
        ),
        // A CA file holding no certificate (a key, by mistake).
        (format!("tls.ca_file = {}\n", shown(pki.key("client"))), String::new(), "field `brokers.plant.tls.ca_file`"),
        // A certificate file that is not there.
        (
            format!(
                "tls.cert_file = {}\ntls.key_file = {}\n",
                shown(pki.dir().join("nope.pem")),
                shown(pki.key("client"))
            ),
            String::new(),
            "field `brokers.plant.tls.cert_file`: cannot read",
        ),
        // A server name that is no name.
        ("tls.server_name = \"not a name!\"\n".to_owned(), String::new(), "field `brokers.plant.tls.server_name`"),
        // An nkey seed that is not one.
        (
            String::new(),
            format!("nkey_file = {}\n", shown(seed.clone())),
            "field `brokers.central.nkey_file`: not an nkey seed",
        ),
    ];
    for (plant_lines, central_lines, expected) in cases {
        let config = gateway("mqtts://127.0.0.1:8883", &plant_lines, "nats://127.0.0.1:4222", &central_lines)
            .replace("{data_dir}", dir.path().join("data").to_str().expect("UTF-8 path"));
        std::fs::write(&path, config)?;
        let output = weir(&["check", "--config", path_text])?;
        let stderr = String::from_utf8(output.stderr)?;
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(&format!("{path_text}:")) && stderr.contains(expected), "{expected}:\n{stderr}");
        assert!(!stderr.contains("PRIVATE KEY") && !stderr.contains("SECRET"), "a secret was printed:\n{stderr}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nkey_authenticates_to_nats_and_a_wrong_one_is_refused() -> Result<()> {
    let gateway_key = nkeys::KeyPair::new_user();
    let central = NatsServer::start_with(&format!(
        "authorization {{\n  users = [ {{ nkey: {} }} ]\n}}\n",
        gateway_key.public_key()
    ))?;
    let plant = Mosquitto::start()?;
    let seeds = tempfile::tempdir()?;
    let nkey_file = |name: &str, key: &nkeys::KeyPair| -> Result<String> {
        let path = seeds.path().join(name);
        std::fs::write(&path, format!("{}\n", key.seed()?))?;
        Ok(format!("nkey_file = {:?}\n", path.display().to_string()))
    };
    let weir = Weir::start(&gateway(&plant.url(), "", &central.url(), &nkey_file("gw.nk", &gateway_key)?))?;
    let reader = async_nats::ConnectOptions::with_nkey(gateway_key.seed()?)
        .connect(format!("127.0.0.1:{}", central.port))
        .await?;
    let stream = create_stream(&reader, "NKEY", &["central.tls"]).await?;
    weir.wait_for_log("subscribed", 1).await?;
    publish(&plant, "sensor", 1..=2).await?;
    assert_eq!(central_values(&stream, 2).await?, [1.0, 2.0]);
    assert_eq!(weir.stop()?.0, 0);

    let stranger = nkeys::KeyPair::new_user();
    let refused = Weir::start(&gateway(&plant.url(), "", &central.url(), &nkey_file("stranger.nk", &stranger)?))?;
    refused.wait_for_log("authorization violation", 1).await?;
    assert!(!refused.log().contains(&stranger.seed()?), "the seed was logged");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credentials_file_authenticates_to_a_nats_server_in_operator_mode() -> Result<()> {
    let operator = tls::NatsOperator::new()?;
    let central = NatsServer::start_with(&operator.server_config)?;
    let plant = Mosquitto::start()?;
    let files = tempfile::tempdir()?;
    let creds = files.path().join("gw.creds");
    std::fs::write(&creds, &operator.user_creds)?;
    let creds_line = format!("credentials_file = {:?}\n", creds.display().to_string());
    let weir = Weir::start(&gateway(&plant.url(), "", &central.url(), &creds_line))?;
    let reader = async_nats::ConnectOptions::with_credentials(&operator.user_creds)?
        .connect(format!("127.0.0.1:{}", central.port))
        .await?;
    let stream = create_stream(&reader, "CREDS", &["central.tls"]).await?;
    weir.wait_for_log("subscribed", 1).await?;
    publish(&plant, "sensor", 1..=2).await?;
    assert_eq!(central_values(&stream, 2).await?, [1.0, 2.0]);
    assert_eq!(weir.stop()?.0, 0);

    // Without credentials the same server refuses the gateway.
    let refused = Weir::start(&gateway(&plant.url(), "", &central.url(), ""))?;
    refused.wait_for_log("authorization violation", 1).await?;
    Ok(())
}
