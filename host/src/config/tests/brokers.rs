//! `[brokers.<name>]` and the references to a broker: unknown names, wrong protocols, URLs
//! refused (credentials, which are never printed), TLS settings and NATS credentials where
//! they do not apply, one MQTT client id on one broker. TLS files themselves (certificates made
//! for the test) are checked end to end, in `tests/e2e/tls.rs`.

use super::*;

#[test]
fn refuses_unknown_brokers_naming_the_defined_ones() {
    insta::assert_snapshot!(invalid(&valid_but("broker = \"plant\"\ntopics", "broker = \"plnat\"\ntopics")));
}

#[test]
fn refuses_a_broker_of_the_wrong_protocol() {
    insta::assert_snapshot!(invalid(
        &valid_but("subject = \"weir.plant1.boiler\"", "subject = \"weir.plant1.boiler\"\n").replace(
            "[pipelines.boiler.sink.jetstream]\nbroker = \"central\"",
            "[pipelines.boiler.sink.jetstream]\nbroker = \"plant\""
        )
    ));
}

#[test]
fn tls_urls_take_their_protocols_default_ports() {
    let functions = functions_dir();
    let text = valid_but("url = \"mqtt://10.0.0.5:1883\"", "url = \"mqtts://10.0.0.5\"")
        .replace("url = \"nats://central.example:4222\"", "url = \"tls://central.example\"");
    let config = parse_with(&text, functions.path()).expect("valid");
    let (plant, central) = boiler_brokers(&config);
    assert_eq!(
        (plant.url.to_string(), central.url.to_string()),
        ("mqtts://10.0.0.5:8883".into(), "tls://central.example:4222".into())
    );
    assert!(plant.tls.is_some() && central.tls.is_some(), "a TLS url always gets TLS settings");
}

/// The brokers of the `boiler` pipeline: its source's and its sink's.
fn boiler_brokers(config: &Config) -> (&BrokerConfig, &BrokerConfig) {
    let boiler = config.pipelines.iter().find(|p| p.name.as_str() == "boiler").expect("boiler pipeline");
    let SourceConfig::Mqtt { broker: plant, .. } = &boiler.source else { panic!("boiler reads MQTT") };
    let SinkConfig::JetStream { broker: central, .. } = &boiler.sink else { panic!("boiler writes to JetStream") };
    (plant, central)
}

#[test]
fn refuses_tls_settings_on_a_plain_url_naming_the_tls_url() {
    insta::assert_snapshot!(invalid(&valid_but(
        "keep_alive = \"20s\"\n",
        "keep_alive = \"20s\"\ntls.ca_file = \"/etc/weir/ca.pem\"\n"
    )));
}

#[test]
fn refuses_a_client_certificate_without_its_key() {
    insta::assert_snapshot!(invalid(&valid_but(
        "url = \"mqtt://10.0.0.5:1883\"",
        "url = \"mqtts://10.0.0.5:8883\"\ntls.cert_file = \"gw07.pem\""
    )));
}

#[test]
fn refuses_nats_credentials_on_mqtt_brokers_and_two_kinds_at_once() {
    let on_mqtt = invalid(&valid_but("keep_alive = \"20s\"\n", "keep_alive = \"20s\"\nnkey_file = \"gw07.nk\"\n"));
    let both = invalid(&valid_but(
        "reconnect_max = \"1m\"\n",
        "reconnect_max = \"1m\"\ncredentials_file = \"gw07.creds\"\nnkey_file = \"gw07.nk\"\n",
    ));
    insta::assert_snapshot!(format!("{on_mqtt}\n{both}"));
}

#[test]
fn refuses_a_tls_file_that_never_ends_instead_of_reading_it() {
    let refusal = invalid(&valid_but(
        "url = \"mqtt://10.0.0.5:1883\"",
        "url = \"mqtts://10.0.0.5:8883\"\ntls.ca_file = \"/dev/zero\"",
    ));
    assert!(refusal.contains("field `brokers.plant.tls.ca_file`: /dev/zero is larger than 16 MiB"), "{refusal}");
}

#[test]
fn a_configuration_printed_shows_no_secret() {
    let dir = tempfile::tempdir().expect("temp dir");
    let password = dir.path().join("plant.pass");
    std::fs::write(&password, "hunter2\n").expect("write password");
    let functions = functions_dir();
    let text = valid_but(
        "keep_alive = \"20s\"\n",
        &format!("keep_alive = \"20s\"\nusername = \"gw07\"\npassword_file = {:?}\n", password.display().to_string()),
    );
    let config = parse_with(&text, functions.path()).expect("valid");
    let (plant, _) = boiler_brokers(&config);
    assert_eq!(plant.password.as_ref().map(|p| p.expose().as_str()), Some("hunter2"));
    let printed = format!("{config:?}");
    assert!(!printed.contains("hunter2") && printed.contains("Secret(***)"), "{printed}");
}

#[test]
fn refuses_credentials_in_broker_urls_without_printing_the_password() {
    let with_password =
        invalid(&valid_but("url = \"mqtt://10.0.0.5:1883\"", "url = \"mqtt://gw07:s3cr%t@p4ss@10.0.0.5:1883\""));
    assert!(!with_password.contains("s3cr") && !with_password.contains("p4ss"), "{with_password}");
    let with_token =
        invalid(&valid_but("url = \"nats://central.example:4222\"", "url = \"nats://T0KEN@central.example:4222\""));
    assert!(!with_token.contains("T0KEN"), "{with_token}");
    insta::assert_snapshot!(format!("{with_password}\n{with_token}"));
}

#[test]
fn a_refusal_inside_a_urls_credentials_does_not_print_them() {
    // An invalid escape in the password: TOML refuses the string at a position inside it.
    let refusal =
        invalid(&valid_but("url = \"mqtt://10.0.0.5:1883\"", "url = \"mqtt://user:pa\\ssword@10.0.0.5:1883\""));
    assert!(!refusal.contains("ssword"), "{refusal}");
    assert!(refusal.contains("mqtt://user:***@10.0.0.5:1883"), "{refusal}");
}

#[test]
fn refuses_two_mqtt_connections_with_one_client_id_on_one_broker() {
    // A source's id written out equals the default of a later sink on the same broker.
    insta::assert_snapshot!(invalid(&valid_but("qos = 1", "qos = 1\nclient_id = \"weir-plant1-gw07-press-out\"")));
    // A sink's id written out equals the default of an earlier source.
    insta::assert_snapshot!(invalid(&valid_but(
        "topic = \"weir/press\"",
        "topic = \"weir/press\"\nclient_id = \"weir-plant1-gw07-boiler\""
    )));
    // Two broker names for one broker (the port defaults to 1883) are one broker.
    let same_broker =
        valid_but("[brokers.central]", "[brokers.plant-again]\nurl = \"mqtt://10.0.0.5\"\n\n[brokers.central]")
            .replacen(
                "broker = \"plant\"\ntopic = \"weir/press\"",
                "broker = \"plant-again\"\ntopic = \"weir/press\"\nclient_id = \"weir-plant1-gw07-boiler\"",
                1,
            );
    insta::assert_snapshot!(invalid(&same_broker));
}

#[test]
fn one_client_id_on_two_brokers_is_accepted() {
    let functions = functions_dir();
    let text = valid_but("[brokers.central]", "[brokers.other-plant]\nurl = \"mqtt://10.0.0.6\"\n\n[brokers.central]")
        .replacen(
            "broker = \"plant\"\ntopic = \"weir/press\"",
            "broker = \"other-plant\"\ntopic = \"weir/press\"\nclient_id = \"weir-plant1-gw07-boiler\"",
            1,
        );
    let config = parse_with(&text, functions.path()).expect("valid");
    let press = config.pipelines.iter().find(|p| p.name.as_str() == "press").expect("press pipeline");
    assert!(
        matches!(&press.sink, SinkConfig::Mqtt { client_id, .. } if client_id.as_str() == "weir-plant1-gw07-boiler")
    );
}
