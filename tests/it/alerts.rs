//! Alerts, black box: a gateway with a serial terminal pressed through `votegate simulate`, an
//! alert rule with a 1 s hold-down, and the MQTT uplink through the fault proxy to a mutual-TLS
//! Mosquitto. An alert shows on the live events, `GET /api/v1/alerts` and the `…/alerts` topic
//! as it opens and closes; one raised while the broker cannot be reached, with a SIGKILL in
//! between, arrives once the link is back, under the same id.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use crate::display::{start_gateway, stdin_simulator};
use crate::harness::http::{self, EventStream};
use crate::harness::proxy::Mode;
use crate::harness::RunningChild;
use crate::uplink::{wait_for, Cloud};

const RULE: &str = r#"
[[alert]]
kind = "negative-share"
threshold = 50
window = "15m"
min-votes = 4
terminal = "*"
hold-down = "1s"
"#;
const ALERTS_TOPIC: &str = "votegate/store-7/gw-uplink/alerts";

fn simulator(cloud: &Cloud) -> RunningChild {
    stdin_simulator(&cloud.line.terminal_path, "entrance")
}

fn press(simulator: &mut RunningChild, buttons: &[u8]) {
    let stdin = simulator.stdin().expect("piped stdin");
    for button in buttons {
        writeln!(stdin, "{button}").expect("press");
    }
    stdin.flush().expect("flush");
}

/// The next live event named `name`, skipping the others.
fn next_event(events: &mut EventStream, name: &str) -> serde_json::Value {
    for _ in 0..200 {
        let Some(event) = events.next() else { break };
        if event.event == name {
            return serde_json::from_str(&event.data).expect("event data is JSON");
        }
    }
    panic!("no {name} event");
}

fn alerts(addr: SocketAddr) -> serde_json::Value {
    http::get(addr, "/api/v1/alerts").json()
}

/// The alert messages the subscriber received: (event, alert id).
fn alert_messages(cloud: &Cloud) -> Vec<(String, u64)> {
    cloud
        .subscriber
        .messages()
        .into_iter()
        .filter(|(topic, _)| topic == ALERTS_TOPIC)
        .map(|(_, payload)| {
            let json: serde_json::Value = serde_json::from_slice(&payload).expect("JSON alert");
            assert_eq!(json["gateway_id"], "gw-uplink");
            assert_eq!(json["site"], "store-7");
            (
                json["event"].as_str().unwrap_or_default().to_string(),
                json["alert"]["id"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

/// Message files waiting in the outbox folder.
fn outbox_messages(outbox: &std::path::Path) -> usize {
    std::fs::read_dir(outbox)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.ends_with(".json") && name != "state.json"
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn an_alert_opens_and_closes_on_screens_the_api_and_mqtt_and_one_raised_offline_arrives_later() {
    let cloud = Cloud::start("");
    let config = cloud.good_config(RULE);
    let (gateway, addr) = start_gateway(&config);
    let mut events = EventStream::open(addr, "/api/v1/events", None);
    let mut terminal = simulator(&cloud);

    // Four very unhappy presses: 100 % negative over 15 minutes, 4 votes.
    press(&mut terminal, &[1, 1, 1, 2]);
    let opened = next_event(&mut events, "alert-opened");
    assert_eq!(opened["scope"], "entrance");
    assert_eq!(opened["kind"], "negative-share");
    assert_eq!(
        (opened["value"].as_f64(), opened["votes"].as_u64()),
        (Some(100.0), Some(4))
    );
    let id = opened["id"].as_u64().expect("id");
    let open = alerts(addr);
    assert_eq!(open["open"][0]["id"], id, "{open}");
    assert_eq!(open["open"][0]["state"], "open");
    wait_for("the alert on MQTT", Duration::from_secs(20), || {
        alert_messages(&cloud).contains(&("opened".to_string(), id))
    });
    let metrics = http::get(addr, "/metrics").body;
    assert!(metrics.contains("votegate_alerts_open 1"), "{metrics}");

    // Five happy presses: 4 of 9 negative, under 50 %. Closed one hold-down later.
    press(&mut terminal, &[4, 4, 4, 3, 3]);
    let closed = next_event(&mut events, "alert-closed");
    assert_eq!(closed["id"], id);
    assert_eq!(closed["state"], "closed");
    let after = alerts(addr);
    assert_eq!(after["open"].as_array().map(Vec::len), Some(0), "{after}");
    assert_eq!(after["recent"][0]["id"], id);
    wait_for("the close on MQTT", Duration::from_secs(20), || {
        alert_messages(&cloud).contains(&("closed".to_string(), id))
    });

    // The broker out of reach: a new alert is raised, the gateway killed and restarted.
    cloud.proxy.set_mode(Mode::Stall);
    cloud.proxy.cut();
    press(&mut terminal, &[1, 1, 1, 1, 1, 1]);
    let offline = next_event(&mut events, "alert-opened");
    let offline_id = offline["id"].as_u64().expect("id");
    assert!(offline_id > id);
    let outbox = cloud.data_dir().join("alerts");
    wait_for("the alert in the outbox", Duration::from_secs(10), || {
        outbox_messages(&outbox) > 0
    });
    drop(events);
    gateway.kill();
    let (gateway, addr) = start_gateway(&config);
    let restored = alerts(addr);
    assert_eq!(restored["open"][0]["id"], offline_id, "{restored}");
    assert!(!alert_messages(&cloud).contains(&("opened".to_string(), offline_id)));

    cloud.proxy.set_mode(Mode::Pass);
    wait_for("the offline alert on MQTT", Duration::from_secs(40), || {
        alert_messages(&cloud).contains(&("opened".to_string(), offline_id))
    });
    wait_for("the outbox to empty", Duration::from_secs(10), || {
        outbox_messages(&outbox) == 0
    });
    let opened_twice = alert_messages(&cloud)
        .iter()
        .filter(|m| **m == ("opened".to_string(), offline_id))
        .count();
    eprintln!("alert {offline_id} opened message received {opened_twice} time(s)");
    drop(gateway);
}
