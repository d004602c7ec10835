//! `[pipelines.<name>.source.<kind>]`: QoS, topic filters, client ids MQTT cannot carry.

use super::*;

#[test]
fn refuses_qos_2() {
    insta::assert_snapshot!(invalid(&valid_but("qos = 1", "qos = 2")));
}

#[test]
fn refuses_bad_topic_filters() {
    insta::assert_snapshot!(invalid(&valid_but("\"plant1/boiler/#\"", "\"plant1/#/boiler\"")));
}

#[test]
fn refuses_client_ids_mqtt_cannot_carry() {
    let too_long = "x".repeat(MqttClientId::MAX_BYTES + 1);
    insta::assert_snapshot!(invalid(&valid_but("qos = 1", &format!("qos = 1\nclient_id = \"{too_long}\""))));
    insta::assert_snapshot!(invalid(&valid_but("qos = 1", "qos = 1\nclient_id = \"gw07\\u0000boiler\"")));
    insta::assert_snapshot!(invalid(&valid_but("qos = 1", "qos = 1\nclient_id = \"\"")));
}
