//! Names from the command line: real `kith run` daemons on loopback (TCP only, mDNS off) on a lab
//! network whose bootstrap file lowers the proof of work to 8 bits, driven with `kith name`,
//! `kith resolve`, `kith contacts`, `kith verify` and `kith invite` as a user would.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{Daemon, LAB_NETWORK, json, kith, kith_ok};

use std::{
    path::Path,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(30);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The lab network of `common`, optionally with a short claim lifetime.
struct Lab(common::Lab);

impl Lab {
    /// Network "lab", 8-bit proof of work, and optionally a short claim lifetime.
    fn new(max_ttl_secs: Option<u64>) -> Lab {
        let mut network = LAB_NETWORK.to_owned();
        if let Some(secs) = max_ttl_secs {
            network.push_str(&format!("name_max_ttl_secs = {secs}\n"));
        }
        Lab(common::Lab::new("kith-names-", &network))
    }

    /// Starts a daemon on this lab network, bootstrapping from `bootstrap` (a multiaddr), if any.
    fn start(&self, name: &str, bootstrap: Option<&str>) -> Daemon {
        self.start_with(name, bootstrap, true)
    }

    /// Like [`Lab::start`], but with the default (automatic) DHT mode.
    fn start_auto(&self, name: &str, bootstrap: Option<&str>) -> Daemon {
        self.start_with(name, bootstrap, false)
    }

    fn start_with(&self, name: &str, bootstrap: Option<&str>, dht_server: bool) -> Daemon {
        match bootstrap {
            Some(addr) => self.0.start_mode(name, dht_server, &["--bootstrap", addr]),
            None => self.0.start_mode(name, dht_server, &[]),
        }
    }
}

/// What the name tests ask of a node, on top of `common::Daemon`.
impl Daemon {
    fn home(&self) -> &Path {
        &self.home
    }

    /// Waits (bounded) until the routing table holds at least `n` peers.
    fn wait_for_peers(&self, n: u64) {
        let start = Instant::now();
        loop {
            let status = json(&kith_ok(&self.home, &["status", "--json"]));
            if status["routing_table_peers"].as_u64().unwrap_or(0) >= n {
                return;
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "timed out waiting for {n} DHT peers; last status {status}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits (bounded) until the node answers DHT queries, i.e. a peer confirmed an address of
    /// ours by AutoNAT (in automatic mode).
    fn wait_dht_server(&self) -> Value {
        common::wait_for_status(&self.home, "DHT server mode", |s| s["dht_server"] == true)
    }
}

#[test]
fn names_register_resolve_and_refuse_with_the_documented_exit_codes() {
    let lab = Lab::new(None);
    let a = lab.start("a", None);
    let b = lab.start("b", Some(&a.tcp_addr()));
    b.wait_for_peers(1);
    a.wait_for_peers(1);

    // Register: exit 0 and the claim as JSON.
    let reg = json(&kith_ok(a.home(), &["name", "register", "alice", "--json"]));
    assert_eq!(reg["name"], "alice");
    assert_eq!(reg["peer_id"], a.peer_id().as_str());
    assert_eq!(reg["seq"], 1);
    assert_eq!(reg["renewed"], false);
    assert_eq!(reg["published"], true);
    let created = reg["created_at"].as_u64().unwrap();
    let expires = reg["expires_at"].as_u64().unwrap();
    assert!(created <= now_ms() && expires > now_ms(), "{reg}");
    assert!(!reg["addrs"].as_array().unwrap().is_empty(), "{reg}");
    // Registering again renews, with the same claim time.
    let renewed = json(&kith_ok(a.home(), &["name", "register", "Alice", "--json"]));
    assert_eq!(renewed["renewed"], true);
    assert_eq!(renewed["seq"], 2);
    assert_eq!(renewed["created_at"], created);
    let human = kith_ok(a.home(), &["name", "register", "alice"]);
    assert!(human.contains("renewed 'alice'"), "{human}");
    let list = json(&kith_ok(a.home(), &["name", "list", "--json"]));
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["name"], "alice");

    // Resolve from the other node: pinned the first time, then found pinned.
    let r = json(&kith_ok(b.home(), &["resolve", "alice", "--json"]));
    assert_eq!(r["name"], "alice");
    assert_eq!(r["peer_id"], a.peer_id().as_str());
    assert_eq!(r["pinned"], true);
    assert_eq!(r["newly_pinned"], true);
    assert_eq!(r["created_at"], created);
    assert!(r["expires_at"].as_u64().unwrap() > now_ms());
    assert!(r["holders"].as_u64().unwrap() >= 1, "{r}");
    assert!(r["rivals"].as_array().unwrap().is_empty(), "{r}");
    assert_eq!(r["source"], "network", "{r}");
    // Pinned now: answered by the node itself, with what that lookup found.
    let again = json(&kith_ok(b.home(), &["resolve", "ALICE", "--json"]));
    assert_eq!(again["newly_pinned"], false);
    assert_eq!(again["peer_id"], a.peer_id().as_str());
    assert_eq!(again["source"], "cache", "{again}");
    assert_eq!(again["holders"], r["holders"], "{again}");
    let human = kith_ok(b.home(), &["resolve", "alice"]);
    assert!(human.contains(&a.peer_id()), "{human}");
    assert!(
        human.contains("--fresh"),
        "says how to ask the network: {human}"
    );
    // --fresh asks the DHT again.
    let fresh = json(&kith_ok(
        b.home(),
        &["resolve", "alice", "--fresh", "--json"],
    ));
    assert_eq!(fresh["source"], "network", "{fresh}");
    assert_eq!(fresh["peer_id"], a.peer_id().as_str());

    // Unknown name: exit 3, after a real lookup.
    let (code, out, err) = kith(b.home(), &["resolve", "nobody-here"]);
    assert_eq!(code, 3, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("no one has claimed 'nobody-here'"), "{err}");

    // Invalid names: exit 2 naming the rule, for resolve and for register (before any work).
    for (name, rule) in [
        ("ab", "too short"),
        ("al!ce", "'!'"),
        ("a/b", "'/'"),
        ("p\u{430}ypal", "mixes letters of different scripts"),
    ] {
        for cmd in [&["resolve", name][..], &["name", "register", name][..]] {
            let (code, _, err) = kith(b.home(), cmd);
            assert_eq!(code, 2, "{cmd:?}: {err}");
            assert!(err.contains(rule), "{cmd:?} should say {rule:?}: {err}");
        }
    }

    // Held by someone else: exit 4 naming the holder and since when; nothing is kept.
    let (code, _, err) = kith(b.home(), &["name", "register", "alice"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains(&a.peer_id()), "names the holder: {err}");
    assert!(err.contains("since 20"), "says since when: {err}");
    let b_names = json(&kith_ok(b.home(), &["name", "list", "--json"]));
    assert_eq!(b_names, Value::Array(vec![]));

    // Releasing gives the name up on this node.
    let released = json(&kith_ok(a.home(), &["name", "release", "alice", "--json"]));
    assert_eq!(released["released"], "alice");
    let list = json(&kith_ok(a.home(), &["name", "list", "--json"]));
    assert_eq!(list, Value::Array(vec![]));
    let (code, _, err) = kith(a.home(), &["name", "release", "alice"]);
    assert_eq!(code, 3, "releasing a name we do not own: {err}");

    b.stop();
    a.stop();
}

/// Issue 13: with default flags (no `--dht-mode`), nodes that reach each other directly confirm
/// each other's addresses by AutoNAT (every node serves it), switch their DHT to server, and then
/// names work: a group bootstrapping from its first member, on one machine.
#[test]
fn names_work_with_default_flags_between_nodes_that_reach_each_other() {
    let lab = Lab::new(None);
    let a = lab.start_auto("a", None);
    let b = lab.start_auto("b", Some(&a.tcp_addr()));
    let c = lab.start_auto("c", Some(&b.tcp_addr()));
    for node in [&a, &b, &c] {
        let status = node.wait_dht_server();
        assert_eq!(status["dht_mode"], "auto", "{status}");
        let confirmed = status["external_addrs"].as_array().unwrap();
        assert!(
            confirmed
                .iter()
                .any(|x| x.as_str().unwrap().starts_with("/ip4/127.0.0.1/tcp/")),
            "the loopback address was confirmed: {status}"
        );
        // Loopback says nothing about the internet: reachability is not claimed to be public.
        assert_ne!(status["nat"], "public", "{status}");
    }
    a.wait_for_peers(1);
    b.wait_for_peers(2);
    c.wait_for_peers(1);

    let reg = json(&kith_ok(a.home(), &["name", "register", "alice", "--json"]));
    assert_eq!(reg["published"], true, "{reg}");
    let r = json(&kith_ok(c.home(), &["resolve", "alice", "--json"]));
    assert_eq!(r["peer_id"], a.peer_id().as_str(), "{r}");

    // Send by name from C, and A lists it.
    let text = "hello alice, found by name";
    let sent = json(&kith_ok(c.home(), &["send", "alice", text, "--json"]));
    let id = sent["id"].as_str().unwrap().to_owned();
    let start = Instant::now();
    loop {
        let history = json(&kith_ok(
            a.home(),
            &["history", &c.peer_id(), "--limit", "100", "--json"],
        ));
        if history
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == id.as_str() && m["text"] == text)
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(45),
            "A never listed the message; last history {history}"
        );
        thread::sleep(Duration::from_millis(200));
    }
    c.stop();
    b.stop();
    a.stop();
}

#[test]
fn contacts_safety_numbers_and_invites() {
    let lab = Lab::new(None);
    let a = lab.start("a", None);
    let b = lab.start("b", Some(&a.tcp_addr()));
    b.wait_for_peers(1);
    kith_ok(a.home(), &["name", "register", "alice"]);

    // By name and by peer id.
    let mum = json(&kith_ok(
        b.home(),
        &["contacts", "add", "Mum", "alice", "--json"],
    ));
    assert_eq!(mum["petname"], "mum");
    assert_eq!(mum["peer_id"], a.peer_id().as_str());
    assert_eq!(mum["name"], "alice");
    assert!(mum["added_at"].as_u64().unwrap() > 0);
    let by_id = json(&kith_ok(
        b.home(),
        &["contacts", "add", "work", &a.peer_id(), "--json"],
    ));
    assert_eq!(by_id["peer_id"], a.peer_id().as_str());
    assert_eq!(by_id["name"], "");
    let (code, _, err) = kith(b.home(), &["contacts", "add", "mum", &b.peer_id()]);
    assert_eq!(code, 4, "a petname in use: {err}");
    let (code, _, err) = kith(b.home(), &["contacts", "add", "x", "nobody-here"]);
    assert_eq!(code, 3, "{err}");
    let list = json(&kith_ok(b.home(), &["contacts", "list", "--json"]));
    let mut petnames: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["petname"].as_str().unwrap())
        .collect();
    petnames.sort_unstable();
    assert_eq!(petnames, ["mum", "work"]);

    // The same safety number on both sides.
    let b_side = json(&kith_ok(b.home(), &["verify", "mum", "--json"]));
    let a_side = json(&kith_ok(a.home(), &["verify", &b.peer_id(), "--json"]));
    assert_eq!(b_side["peer_id"], a.peer_id().as_str());
    assert_eq!(b_side["you"], b.peer_id().as_str());
    assert_eq!(a_side["peer_id"], b.peer_id().as_str());
    let number = b_side["safety_number"].as_str().unwrap();
    assert_eq!(a_side["safety_number"], number);
    assert_eq!(number.split(' ').count(), 12, "{number}");
    let human = kith_ok(b.home(), &["verify", "mum"]);
    assert!(human.contains(number.split(' ').next().unwrap()), "{human}");

    // An invite, added on a node that knows nobody: no lookup needed.
    let invite = json(&kith_ok(a.home(), &["invite", "--json"]));
    assert_eq!(invite["peer_id"], a.peer_id().as_str());
    assert_eq!(invite["name"], "alice");
    let url = invite["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("kith://invite/{}", a.peer_id())),
        "{url}"
    );
    assert!(!invite["addrs"].as_array().unwrap().is_empty(), "{invite}");
    let human = kith_ok(a.home(), &["invite", "--no-qr"]);
    assert!(human.contains(url), "{human}");
    let c = lab.start("c", None);
    let added = json(&kith_ok(
        c.home(),
        &["contacts", "add-invite", url, "--json"],
    ));
    assert_eq!(added["petname"], "alice");
    assert_eq!(added["peer_id"], a.peer_id().as_str());
    assert_eq!(added["name"], "alice");
    let c_side = json(&kith_ok(c.home(), &["verify", "alice", "--json"]));
    let a_to_c = json(&kith_ok(a.home(), &["verify", &c.peer_id(), "--json"]));
    assert_eq!(c_side["peer_id"], a.peer_id().as_str());
    assert_eq!(c_side["safety_number"], a_to_c["safety_number"]);
    let (code, _, err) = kith(c.home(), &["contacts", "add-invite", "kith://nonsense"]);
    assert_eq!(code, 2, "a broken invite is a usage error: {err}");

    c.stop();
    b.stop();
    a.stop();
}

#[test]
fn a_name_that_changes_key_is_a_conflict_showing_both_keys() {
    // Claims live four seconds on this network, so a stopped owner loses its name quickly.
    let lab = Lab::new(Some(4));
    let a = lab.start("a", None);
    let b = lab.start("b", Some(&a.tcp_addr()));
    let c = lab.start("c", Some(&a.tcp_addr()));
    b.wait_for_peers(2);
    c.wait_for_peers(2);

    let first = json(&kith_ok(a.home(), &["name", "register", "zed", "--json"]));
    assert_eq!(first["peer_id"], a.peer_id().as_str());
    let pinned = json(&kith_ok(b.home(), &["resolve", "zed", "--json"]));
    assert_eq!(pinned["peer_id"], a.peer_id().as_str());
    let a_id = a.peer_id();
    a.stop();

    // Once nobody renews it, the claim lapses and the name is free again (asked on the DHT: a
    // plain resolve answers from B's pin).
    let start = Instant::now();
    loop {
        let (code, _, err) = kith(b.home(), &["resolve", "zed", "--fresh"]);
        if code == 3 {
            break;
        }
        assert_eq!(code, 0, "{err}");
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the stopped owner's claim did not lapse"
        );
        thread::sleep(Duration::from_millis(250));
    }
    let second = json(&kith_ok(c.home(), &["name", "register", "zed", "--json"]));
    assert_eq!(second["peer_id"], c.peer_id().as_str());

    // B pinned A: exit 4, both keys on stdout, the message on stderr; then the same from what
    // that lookup found, without asking the network again.
    let (code, out, err) = kith(b.home(), &["resolve", "zed", "--fresh"]);
    assert_eq!(code, 4, "{out}{err}");
    assert!(out.contains(&a_id) && out.contains(&c.peer_id()), "{out}");
    assert!(err.contains(&a_id) && err.contains(&c.peer_id()), "{err}");
    assert!(err.contains("--fresh"), "{err}");
    let (code, out, _) = kith(b.home(), &["resolve", "zed", "--json"]);
    assert_eq!(code, 4);
    let conflict = json(&out);
    assert_eq!(conflict["conflict"], true);
    assert_eq!(conflict["name"], "zed");
    assert_eq!(conflict["pinned_peer_id"], a_id.as_str());
    assert_eq!(conflict["found_peer_id"], c.peer_id().as_str());
    // Nothing that reaches people follows the new key either.
    let (code, _, err) = kith(b.home(), &["verify", "zed"]);
    assert_eq!(code, 4, "{err}");

    c.stop();
    b.stop();
}

// The issue: "The owner re-publishes its claims before they expire". With claims that live a few
// seconds (`name_max_ttl_secs`), a running owner must renew them faster than its hourly default.
#[test]
fn a_running_owner_keeps_a_short_lived_claim_alive() {
    let lab = Lab::new(Some(4));
    let a = lab.start("a", None);
    let b = lab.start("b", Some(&a.tcp_addr()));
    b.wait_for_peers(1);
    kith_ok(a.home(), &["name", "register", "zed"]);
    // For three lifetimes the owner, still running, holds its name: every fresh lookup (a DHT
    // walk, never the pin) finds it, not only one look at the end.
    common::holds_for("the running owner's claim", Duration::from_secs(12), || {
        let (code, out, err) = kith(b.home(), &["resolve", "zed", "--fresh", "--json"]);
        if code != 0 {
            return Err(format!("lapsed: {err}"));
        }
        match json(&out)["peer_id"].as_str() {
            Some(id) if id == a.peer_id() => Ok(()),
            other => Err(format!("resolved to {other:?}")),
        }
    });
    b.stop();
    a.stop();
}
