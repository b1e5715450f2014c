//! Group chat from the command line: three real `kith run` daemons on loopback, each with its own
//! temp home, driven with `kith group ...` as a user would. They create a group, invite and join,
//! all see every message exactly once and in the same order, get the documented exit codes for
//! what they may not do, and an admin removes one member (who can no longer send, nor read what
//! follows) before another leaves. Two smaller scenarios: a member who leaves is listed as `left`;
//! and a message written by a member whose member list is out of date because everyone else was
//! offline still reaching the member it did not know about (its key is shared from that message's
//! index once it learns of them).
//!
//! Every node gets a temp home, a bootstrap file for a private test network, and listens on
//! 127.0.0.1 only. Processes are killed when their guard drops; every wait is bounded.
//!
//! Post-mortems: `KITH_TEST_KEEP=1` keeps the temp dir (homes and `<node>.log`), `KITH_TEST_LOG`
//! sets the nodes' `RUST_LOG` (default `info`); a failing test prints each node's last log lines.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{Daemon, LAB_NETWORK, kith, poll};

use std::{
    collections::{BTreeSet, HashMap},
    fs,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// How long fresh nodes may take to have each other in their routing tables.
const MESH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an invitation, a member-list change or a group message may take to arrive (over Olm
/// with its retries, gossip, or catch-up).
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a message that must never arrive is given to show up anyway.
const QUIET: Duration = Duration::from_secs(3);
/// `--limit` for history reads: far more than any test sends.
const ALL: &str = "1000";

/// The lab network of `common`, with a home no daemon runs for.
struct Lab(common::Lab);

impl Lab {
    fn new() -> Lab {
        Lab(common::Lab::new("kith-groups-", LAB_NETWORK))
    }

    /// Starts (or restarts) node `name` on its home, bootstrapping from `bootstrap` (multiaddrs).
    fn start(&self, name: &str, bootstrap: &[String]) -> Daemon {
        let mut extra = Vec::new();
        for addr in bootstrap {
            extra.extend(["--bootstrap", addr.as_str()]);
        }
        self.0.start(name, &extra)
    }

    /// A home no daemon runs for.
    fn idle_home(&self) -> PathBuf {
        let home = self.0.home("idle");
        fs::create_dir_all(&home).unwrap();
        home
    }
}

/// What the group tests ask of a node, on top of `common::Daemon`.
impl Daemon {
    /// The whole history of `group`, oldest first (`kith group history --json`).
    fn history(&self, group: &str) -> Vec<Message> {
        let value = self.json(&["group", "history", group, "--limit", ALL]);
        value
            .as_array()
            .unwrap_or_else(|| panic!("{}: history is not an array: {value}", self.name))
            .iter()
            .map(Message::from_json)
            .collect()
    }

    /// The state (`joined`, `invited`, `left`, `removed`) of group `id` in `kith group list`.
    fn state_of(&self, id: &str) -> Option<String> {
        self.json(&["group", "list"])
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["group_id"] == id)
            .map(|g| g["state"].as_str().unwrap().to_owned())
    }

    /// `kith group members --json`: (peer id, admin) in the order listed.
    fn members(&self, group: &str) -> Vec<(String, bool)> {
        self.json(&["group", "members", group])
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["peer_id"].as_str().unwrap().to_owned(),
                    m["admin"].as_bool().unwrap(),
                )
            })
            .collect()
    }

    /// Polls until the member list, as a set, is `want`.
    fn wait_for_members(&self, group: &str, want: &[&Daemon]) -> Vec<(String, bool)> {
        let want: BTreeSet<String> = want.iter().map(|d| d.peer_id()).collect();
        poll(
            &format!("{} to list the members {want:?}", self.name),
            ARRIVAL_TIMEOUT,
            || {
                let members = self.members(group);
                let got: BTreeSet<String> = members.iter().map(|(p, _)| p.clone()).collect();
                (got == want).then_some(members)
            },
        )
    }

    /// Polls until the history holds every id in `ids`; returns it.
    fn wait_for_ids(&self, group: &str, ids: &[&str]) -> Vec<Message> {
        poll(
            &format!("{} to hold messages {ids:?}", self.name),
            ARRIVAL_TIMEOUT,
            || {
                let history = self.history(group);
                ids.iter()
                    .all(|id| history.iter().any(|m| m.id == *id))
                    .then_some(history)
            },
        )
    }

    fn status(&self) -> Value {
        self.json(&["status"])
    }

    /// Polls until at least `n` peers are in the routing table.
    fn wait_for_routing(&self, n: u64) {
        poll(
            &format!("{} to have {n} peers in its routing table", self.name),
            MESH_TIMEOUT,
            || (self.status()["routing_table_peers"].as_u64()? >= n).then_some(()),
        );
    }
}

/// One entry of `kith group history --json`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Message {
    id: String,
    from: String,
    seq: u64,
    text: String,
    outgoing: bool,
}

impl Message {
    fn from_json(v: &Value) -> Message {
        let field = |name: &str| {
            v[name]
                .as_str()
                .unwrap_or_else(|| panic!("history entry without {name}: {v}"))
                .to_owned()
        };
        assert!(v["sent_at"].as_u64().is_some(), "no sent_at: {v}");
        assert!(v["received_at"].as_u64().is_some(), "no received_at: {v}");
        Message {
            id: field("id"),
            from: field("from"),
            seq: v["seq"].as_u64().unwrap(),
            text: field("text"),
            outgoing: v["outgoing"].as_bool().unwrap(),
        }
    }
}

/// A message as its sender's `kith group send` reported it.
#[derive(Debug, Clone)]
struct Sent {
    id: String,
    from: String,
    seq: u64,
    text: String,
}

/// Asserts `history` (as `node` holds it) is exactly `sent`: same ids, senders, sequence numbers
/// and texts, in the same order, each once, `outgoing` only for `node`'s own.
fn assert_history_is(node: &Daemon, history: &[Message], sent: &[Sent]) {
    let got: Vec<(&str, &str)> = history
        .iter()
        .map(|m| (m.id.as_str(), m.text.as_str()))
        .collect();
    let want: Vec<(&str, &str)> = sent
        .iter()
        .map(|s| (s.id.as_str(), s.text.as_str()))
        .collect();
    assert_eq!(
        got, want,
        "{}: the history differs from what was sent",
        node.name
    );
    let me = node.peer_id();
    for (m, s) in history.iter().zip(sent) {
        assert_eq!(m.from, s.from, "{}: sender of {:?}", node.name, s.text);
        assert_eq!(m.seq, s.seq, "{}: seq of {:?}", node.name, s.text);
        assert_eq!(
            m.outgoing,
            s.from == me,
            "{}: outgoing of {:?}",
            node.name,
            s.text
        );
    }
}

/// Watches `node`'s history for [`QUIET`]: none of `ids` may show up.
fn assert_never_arrives(node: &Daemon, group: &str, ids: &[&str]) {
    let start = Instant::now();
    while start.elapsed() < QUIET {
        let history = node.history(group);
        if let Some(m) = history.iter().find(|m| ids.contains(&m.id.as_str())) {
            panic!("{} got {:?}, sent after it was out", node.name, m.text);
        }
        thread::sleep(Duration::from_millis(300));
    }
}

/// Prints how long each phase took (shown with `--nocapture` or when the test fails).
struct Phases(Instant);

impl Phases {
    fn mark(&self, what: &str) {
        eprintln!("{:>6.1} s  {what}", self.0.elapsed().as_secs_f64());
    }
}

#[test]
fn three_members_chat_then_one_is_removed_and_one_leaves() {
    let lab = Lab::new();
    let phases = Phases(Instant::now());
    let a = lab.start("a", &[]);
    let b = lab.start("b", &[a.tcp_addr()]);
    let c = lab.start("c", &[a.tcp_addr(), b.tcp_addr()]);
    let (a_id, b_id, c_id) = (a.peer_id(), b.peer_id(), c.peer_id());
    for node in [&a, &b, &c] {
        node.wait_for_routing(2);
    }
    phases.mark("three nodes see each other");

    // --- create (JSON and human), invite, join -------------------------------------------------
    let created = a.json(&["group", "create", "climbing"]);
    let gid = created["group_id"].as_str().unwrap().to_owned();
    assert_eq!(gid.len(), 32, "a group id is 32 hex characters: {created}");
    assert!(gid.chars().all(|ch| ch.is_ascii_hexdigit()), "{created}");
    assert_eq!(created["title"], "climbing");
    assert_eq!(created["state"], "joined");
    assert_eq!(created["admin"], true);
    assert_eq!(created["version"], 1);
    assert_eq!(created["unread"], 0);
    assert_eq!(created["members"].as_array().unwrap().len(), 1, "{created}");
    assert_eq!(created["members"][0]["peer_id"], a_id.as_str());
    assert_eq!(created["members"][0]["admin"], true);

    let human = a.ok(&["group", "create", "bouldering"]);
    assert!(
        human.contains("created 'bouldering' (") && human.contains("kith group invite bouldering"),
        "human create output: {human}"
    );
    let listed = a.json(&["group", "list"]);
    let bouldering = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["title"] == "bouldering")
        .unwrap_or_else(|| panic!("the second group is not listed: {listed}"));
    assert!(
        human.contains(bouldering["group_id"].as_str().unwrap()),
        "the human create output names the id: {human}"
    );
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");

    for (who, members) in [(&b, 2), (&c, 3)] {
        let report = a.json(&["group", "invite", "climbing", &who.peer_id()]);
        assert_eq!(report["group_id"], gid.as_str());
        let listed = report["members"].as_array().unwrap();
        assert_eq!(
            listed.len(),
            members,
            "after inviting {}: {report}",
            who.name
        );
        assert!(
            listed
                .iter()
                .any(|m| m["peer_id"] == who.peer_id().as_str() && m["admin"] == false),
            "{} is listed as a plain member: {report}",
            who.name
        );
    }
    // Inviting a member again is a usage error (400 → 2).
    let err = a.fails(&["group", "invite", "climbing", &b_id], 2);
    assert!(err.contains("already a member"), "{err}");

    for node in [&b, &c] {
        let invitation = poll(
            &format!("{} to be invited to {gid}", node.name),
            ARRIVAL_TIMEOUT,
            || {
                node.json(&["group", "invitations"])
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|g| g["group_id"] == gid.as_str())
                    .cloned()
            },
        );
        assert_eq!(invitation["title"], "climbing", "{invitation}");
        assert_eq!(invitation["state"], "invited", "{invitation}");
        assert_eq!(invitation["invited_by"], a_id.as_str(), "{invitation}");
        assert_eq!(invitation["admin"], false, "{invitation}");
    }
    phases.mark("B and C are invited");
    // Not yet a participant: sending is refused (409 → 4) with a hint.
    let err = b.fails(&["group", "send", &gid, "too early"], 4);
    assert!(err.contains("join"), "{err}");
    let joined = b.ok(&["group", "join", &gid]);
    assert!(
        joined.contains("joined 'climbing'"),
        "human join output: {joined}"
    );
    let joined = c.json(&["group", "join", &gid]);
    assert_eq!(joined["state"], "joined", "{joined}");
    assert_eq!(joined["group_id"], gid.as_str(), "{joined}");
    for node in [&b, &c] {
        assert_eq!(
            node.state_of(&gid).as_deref(),
            Some("joined"),
            "{}",
            node.name
        );
        assert!(
            node.json(&["group", "invitations"])
                .as_array()
                .unwrap()
                .is_empty(),
            "{}: an answered invitation is no longer listed",
            node.name
        );
    }

    // --- everyone sends; everyone ends up with the same history --------------------------------
    let plan: [(&Daemon, &str); 6] = [
        (&a, "welcome to climbing"),
        (&b, "hi from b"),
        (&c, "c here, with 'quotes' & ünïcødé ✓"),
        (&a, "saturday at the crag?"),
        (&b, "b is in"),
        (&c, "so is c"),
    ];
    let mut sent: Vec<Sent> = Vec::new();
    let mut seqs: HashMap<String, u64> = HashMap::new();
    for (i, (node, text)) in plan.iter().enumerate() {
        let seq = seqs.entry(node.peer_id()).or_insert(0);
        *seq += 1;
        let id = if i == 4 {
            // Once in the human form: "<id> sent" (or "<id> stored; ..." if no peer was in the mesh).
            let out = node.ok(&["group", "send", "climbing", text]);
            assert!(
                out.contains(" sent") || out.contains(" stored;"),
                "human send output: {out}"
            );
            out.split_whitespace().next().unwrap().to_owned()
        } else {
            let report = node.json(&["group", "send", "climbing", text]);
            assert_eq!(report["group_id"], gid.as_str(), "{report}");
            assert_eq!(report["seq"], *seq, "{}'s sequence: {report}", node.name);
            assert!(report["published"].is_boolean(), "{report}");
            report["id"].as_str().unwrap().to_owned()
        };
        assert_eq!(id.len(), 32, "a message id: {id}");
        sent.push(Sent {
            id,
            from: node.peer_id(),
            seq: *seq,
            text: (*text).to_owned(),
        });
    }
    let ids: Vec<&str> = sent.iter().map(|s| s.id.as_str()).collect();
    // B may still hold the list without C here (the update adding C can overtake B's invitation
    // and is then dropped) until its catch-up with A on joining; what B writes meanwhile is the
    // case of `a_message_written_with_an_outdated_member_list_reaches_the_member_it_lacked`.
    for node in [&a, &b, &c] {
        let history = node.wait_for_ids(&gid, &ids);
        assert_history_is(node, &history, &sent);
    }
    phases.mark("all six messages are on all three nodes");
    // The human history: one line per message, own ones as "you".
    let human = c.ok(&["group", "history", "climbing"]);
    assert_eq!(human.lines().count(), sent.len(), "{human}");
    for s in &sent {
        assert!(
            human.contains(&s.text),
            "human history lacks {:?}: {human}",
            s.text
        );
    }
    assert!(human.contains("you: so is c"), "{human}");
    assert!(!human.contains("you: b is in"), "{human}");

    // --- members and what a plain member may not do --------------------------------------------
    for node in [&a, &b, &c] {
        let members = node.wait_for_members("climbing", &[&a, &b, &c]);
        for (peer, admin) in &members {
            assert_eq!(*admin, *peer == a_id, "{}: admin flag of {peer}", node.name);
        }
    }
    let human = b.ok(&["group", "members", "climbing"]);
    assert!(
        human.contains("'climbing'") && human.contains("[admin]"),
        "{human}"
    );
    let stranger = libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id()
        .to_string();
    // 403 → exit 1, with a message that says why.
    let err = b.fails(&["group", "invite", "climbing", &stranger], 1);
    assert!(err.contains("admin"), "the refusal names the reason: {err}");
    let err = b.fails(&["group", "remove", "climbing", &c_id], 1);
    assert!(err.contains("admin"), "the refusal names the reason: {err}");
    a.fails(&["group", "history", "nosuchgroup"], 3);
    a.fails(&["group", "send", "nosuchgroup", "hello?"], 3);
    let err = a.fails(&["group", "send", "climbing", ""], 2);
    assert!(err.contains("empty"), "{err}");
    a.fails(&["group", "create", ""], 2);
    let (code, _, err) = kith(&lab.idle_home(), &["group", "list"]);
    assert_eq!(code, 5, "no node running: {err}");
    // None of the refused commands left a trace.
    assert_eq!(a.members("climbing").len(), 3);
    assert_history_is(&b, &b.history(&gid), &sent);
    phases.mark("exit codes checked");

    // --- A removes C ---------------------------------------------------------------------------
    let report = a.json(&["group", "remove", "climbing", &c_id]);
    let left: BTreeSet<&str> = report["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["peer_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        left,
        BTreeSet::from([a_id.as_str(), b_id.as_str()]),
        "{report}"
    );
    poll("C to learn it was removed", ARRIVAL_TIMEOUT, || {
        (c.state_of(&gid)? == "removed").then_some(())
    });
    b.wait_for_members("climbing", &[&a, &b]);
    phases.mark("C is removed and B knows it");
    let err = c.fails(&["group", "send", "climbing", "x"], 4);
    assert!(err.contains("climbing"), "{err}");
    // C keeps what it had and still finds the group by title.
    assert_history_is(&c, &c.history("climbing"), &sent);

    let mut after_removal = Vec::new();
    for (node, text) in [(&a, "c is gone, this is for b"), (&b, "b answers a")] {
        let report = node.json(&["group", "send", "climbing", text]);
        let seq = seqs.get_mut(&node.peer_id()).unwrap();
        *seq += 1;
        assert_eq!(report["seq"], *seq, "{report}");
        after_removal.push(Sent {
            id: report["id"].as_str().unwrap().to_owned(),
            from: node.peer_id(),
            seq: *seq,
            text: text.to_owned(),
        });
    }
    let new_ids: Vec<&str> = after_removal.iter().map(|s| s.id.as_str()).collect();
    let everything: Vec<Sent> = sent.iter().chain(&after_removal).cloned().collect();
    for node in [&a, &b] {
        let history = node.wait_for_ids(&gid, &new_ids);
        assert_history_is(node, &history, &everything);
    }
    phases.mark("A and B exchanged messages after the removal");
    assert_never_arrives(&c, &gid, &new_ids);
    assert_history_is(&c, &c.history(&gid), &sent);
    phases.mark("C saw none of them");

    // --- B leaves ------------------------------------------------------------------------------
    // (That B is then listed as `left` rather than `removed` is checked on its own, by
    // `a_member_who_leaves_is_listed_as_left`.)
    let report = b.json(&["group", "leave", "climbing"]);
    assert_ne!(report["state"], "joined", "{report}");
    let members = a.wait_for_members("climbing", &[&a]);
    assert_eq!(members, vec![(a_id.clone(), true)], "A stays, as admin");
    phases.mark("A sees B gone");
    assert_ne!(b.state_of(&gid).as_deref(), Some("joined"));
    assert_eq!(a.state_of(&gid).as_deref(), Some("joined"));
    b.fails(&["group", "send", "climbing", "still here?"], 4);
    // A alone can still write (it is stored for nobody but A).
    let out = a.ok(&["group", "send", "climbing", "just me now"]);
    assert!(out.contains(" sent") || out.contains(" stored;"), "{out}");
    let on_a = a.history(&gid);
    assert_eq!(on_a.len(), everything.len() + 1);
    assert_eq!(on_a.last().unwrap().text, "just me now");
    assert_history_is(&a, &on_a[..everything.len()], &everything);
    // Nothing doubled on the way.
    assert_history_is(&b, &b.history(&gid), &everything);
    assert_history_is(&c, &c.history(&gid), &sent);
    phases.mark("done");
}

/// `kith group leave` marks the group `left` (README: state `joined`, `invited`, `left`,
/// `removed`), not `removed`, which says an admin put us out.
#[test]
fn a_member_who_leaves_is_listed_as_left() {
    let lab = Lab::new();
    let a = lab.start("a", &[]);
    let b = lab.start("b", &[a.tcp_addr()]);
    for node in [&a, &b] {
        node.wait_for_routing(1);
    }
    let gid = a.json(&["group", "create", "hiking"])["group_id"]
        .as_str()
        .unwrap()
        .to_owned();
    a.ok(&["group", "invite", "hiking", &b.peer_id()]);
    poll("B to be invited", ARRIVAL_TIMEOUT, || {
        b.state_of(&gid).filter(|s| s == "invited")
    });
    b.ok(&["group", "join", "hiking"]);

    let human = b.ok(&["group", "leave", "hiking"]);
    assert!(human.contains("left 'hiking'"), "{human}");
    let listed = b.json(&["group", "list"]);
    let state = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group_id"] == gid.as_str())
        .map(|g| g["state"].clone());
    assert_eq!(
        state,
        Some(Value::from("left")),
        "B left by itself, nobody removed it: {listed}"
    );
    let members = a.wait_for_members("hiking", &[&a]);
    assert_eq!(members, vec![(a.peer_id(), true)]);
    // Leaving again is harmless and still says `left`.
    assert_eq!(b.json(&["group", "leave", &gid])["state"], "left");
}

/// A member whose member list is out of date when it writes (it was away when the admin added
/// someone, and nobody who knows better is reachable now) must not leave the newcomer unable to
/// read that message: every member sees every message.
///
/// B is stopped while A adds C; then A and C stop and B returns alone, still knowing only A and
/// itself, and writes. A and C return; once B has learnt of C it writes once more. C must end up
/// with both messages.
#[test]
fn a_message_written_with_an_outdated_member_list_reaches_the_member_it_lacked() {
    let lab = Lab::new();
    let a = lab.start("a", &[]);
    let b = lab.start("b", &[a.tcp_addr()]);
    let c = lab.start("c", &[a.tcp_addr(), b.tcp_addr()]);
    for node in [&a, &b, &c] {
        node.wait_for_routing(2);
    }
    let gid = a.json(&["group", "create", "climbing"])["group_id"]
        .as_str()
        .unwrap()
        .to_owned();
    a.ok(&["group", "invite", "climbing", &b.peer_id()]);
    poll("B to be invited", ARRIVAL_TIMEOUT, || {
        b.state_of(&gid).filter(|s| s == "invited")
    });
    b.ok(&["group", "join", &gid]);
    b.wait_for_members(&gid, &[&a, &b]);
    b.stop();

    // A adds C while B is away; then A and C go away and B returns alone.
    a.ok(&["group", "invite", "climbing", &c.peer_id()]);
    poll("C to be invited", ARRIVAL_TIMEOUT, || {
        c.state_of(&gid).filter(|s| s == "invited")
    });
    c.ok(&["group", "join", &gid]);
    let a_id = a.peer_id();
    a.stop();
    c.stop();
    let b = lab.start("b", &[]);
    let b_members: BTreeSet<String> = b.members(&gid).into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        b_members,
        BTreeSet::from([a_id, b.peer_id()]),
        "B, alone, still holds the list from before C was added"
    );
    let stale = b.json(&["group", "send", &gid, "written while b did not know c"]);

    // A and C return; B learns of C (from either) and writes again.
    let c = lab.start("c", &[b.tcp_addr()]);
    let a = lab.start("a", &[b.tcp_addr(), c.tcp_addr()]);
    b.wait_for_members(&gid, &[&a, &b, &c]);
    let later = b.json(&["group", "send", &gid, "written once b knew c"]);
    let later_id = later["id"].as_str().unwrap();
    let stale_id = stale["id"].as_str().unwrap();
    a.wait_for_ids(&gid, &[stale_id, later_id]);
    c.wait_for_ids(&gid, &[later_id]);
    // C has B's key for the later message; it must be able to read the earlier one too.
    c.wait_for_ids(&gid, &[stale_id, later_id]);
}
