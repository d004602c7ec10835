//! `[brokers.<name>]` and the references to a broker: unknown names, wrong protocols, URLs
//! refused (TLS, credentials, which are never printed), one MQTT client id on one broker.

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
fn refuses_tls_urls_for_now_saying_so() {
    insta::assert_snapshot!(invalid(&valid_but("url = \"mqtt://10.0.0.5:1883\"", "url = \"mqtts://10.0.0.5:8883\"")));
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
