//! `kith doctor` as a user runs it: no node, a lone node that can find no one, and two nodes on
//! 127.0.0.1 with default flags that find each other (issue 13).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{Daemon, LAB_NETWORK, Lab, json, kith, poll};

use std::time::Duration;

use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(30);

impl Daemon {
    fn doctor(&self) -> (i32, Value) {
        let (code, out, _) = self.cli(&["doctor", "--json"]);
        (code, json(&out))
    }
}

fn check<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == id)
        .unwrap_or_else(|| panic!("no {id} check in {report}"))
}

#[test]
fn doctor_names_each_problem_with_its_fix_and_exits_0_only_when_healthy() {
    let lab = Lab::new("kith-doctor-", LAB_NETWORK);

    // No node: exit 1, and the fix is `kith run`.
    let (code, out, _) = kith(&lab.home("nobody"), &["doctor", "--json"]);
    assert_eq!(code, 1);
    let report = json(&out);
    assert_eq!(report["healthy"], false);
    let node = check(&report, "node");
    assert_eq!(node["level"], "problem");
    assert!(node["fix"].as_str().unwrap().contains("kith run"), "{node}");

    // A lone node: running, listening, but connected to no one and with an empty routing table.
    // Default DHT mode: the node must confirm an address before serving the DHT.
    let a = lab.start_mode("a", false, &[]);
    let (code, report) = a.doctor();
    assert_eq!(code, 1, "{report}");
    assert_eq!(check(&report, "node")["level"], "ok");
    assert_eq!(check(&report, "listen")["level"], "ok");
    for id in ["peers", "dht"] {
        let c = check(&report, id);
        assert_eq!(c["level"], "problem", "{c}");
        assert!(c["fix"].as_str().unwrap().contains("--bootstrap"), "{c}");
    }
    assert!(
        check(&report, "clock")["detail"]
            .as_str()
            .unwrap()
            .contains("not measured yet"),
        "{report}"
    );
    // The human form says the same, one line per check and a fix line per problem.
    let (code, human, err) = a.cli(&["doctor"]);
    assert_eq!(code, 1);
    assert!(human.contains("PROBLEM peers"), "{human}");
    assert!(human.contains("fix: give the node a peer"), "{human}");
    assert!(err.contains("problem(s)"), "{err}");

    // A friend bootstraps from it: both confirm each other's address, become DHT servers, publish
    // their key bundles, and the doctor is satisfied (exit 0; warnings allowed).
    let b = lab.start_mode("b", false, &["--bootstrap", &a.tcp_addr()]);
    for node in [&a, &b] {
        let report = poll("the doctor to find the node healthy", TIMEOUT, || {
            let (code, report) = node.doctor();
            (code == 0).then_some(report)
        });
        assert_eq!(report["healthy"], true);
        let dht = check(&report, "dht");
        assert_eq!(dht["level"], "ok", "{dht}");
        assert!(
            dht["detail"].as_str().unwrap().contains("a peer confirmed"),
            "the DHT says why it is a server: {dht}"
        );
        assert_eq!(check(&report, "key_bundle")["level"], "ok");
        // No relay configured: a warning with the setting that fixes it.
        let mailboxes = check(&report, "mailboxes");
        assert_eq!(mailboxes["level"], "warning", "{mailboxes}");
        assert!(mailboxes["fix"].as_str().unwrap().contains("relay = true"));
    }

    // A message's ack carries the recipient's clock: the sender's doctor now knows the skew (on
    // one machine, well under a second).
    b.ok(&["send", &a.peer_id(), "what time is it?"]);
    let clock = poll("B's doctor to measure the clock skew", TIMEOUT, || {
        let (_, report) = b.doctor();
        let clock = check(&report, "clock").clone();
        clock["detail"]
            .as_str()?
            .contains("median of 1 peer(s)")
            .then_some(clock)
    });
    assert_eq!(clock["level"], "ok", "{clock}");
    assert!(
        clock["detail"].as_str().unwrap().contains(" ms "),
        "{clock}"
    );
    b.stop();
    a.stop();
}
