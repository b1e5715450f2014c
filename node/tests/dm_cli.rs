//! Direct chat between real `kith run` processes on loopback, as a user runs them: a sender killed
//! with SIGKILL in the middle of a burst loses and duplicates nothing it reported as accepted, and
//! a recipient that was offline gets its queued messages when it returns, exactly once.
//!
//! Every node gets a temp home, a bootstrap file for a private test network, and listens on
//! 127.0.0.1 only. Processes are killed when their guard drops; every wait is bounded.
//!
//! Post-mortems: `KITH_TEST_KEEP=1` keeps the temp dir (homes and `<node>.log`), `KITH_TEST_LOG`
//! sets the nodes' `RUST_LOG` (default `info`); a failing test prints each node's last log lines.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{Daemon, LAB_NETWORK, poll};

use std::{
    collections::{HashMap, HashSet},
    fs,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use kith_api::{ApiClient, ClientError, MessageReport, SendReport};
use serde_json::Value;

/// How long two fresh nodes may take to find each other and exchange a first message.
const ACQUAINT_TIMEOUT: Duration = Duration::from_secs(20);
/// The API answers at most this many messages per history page.
const PAGE: usize = 1000;

/// The lab network of `common`, and a runtime for talking to the nodes' APIs. Declare it before
/// the daemons so they die first.
struct Lab {
    lab: common::Lab,
    rt: tokio::runtime::Runtime,
}

impl Lab {
    fn new() -> Lab {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        Lab {
            lab: common::Lab::new("kith-dm-", LAB_NETWORK),
            rt,
        }
    }

    /// Starts (or restarts) node `name` on its home, bootstrapping from `bootstrap` if given.
    fn start(&self, name: &str, bootstrap: Option<&str>) -> Daemon {
        let daemon = match bootstrap {
            Some(addr) => self.lab.start(name, &["--bootstrap", addr]),
            None => self.lab.start(name, &[]),
        };
        let info: Value =
            serde_json::from_str(&fs::read_to_string(daemon.home.join("api.json")).unwrap())
                .unwrap();
        assert_eq!(
            info["pid"],
            daemon.child.id(),
            "api.json names this process"
        );
        daemon
    }
}

/// The whole conversation `node` has with `with`, oldest first (all pages).
fn full_history(lab: &Lab, node: &Daemon, with: &str) -> Vec<MessageReport> {
    let mut all: Vec<MessageReport> = Vec::new();
    let mut before: Option<String> = None;
    for _ in 0..20 {
        let page = lab
            .rt
            .block_on(node.api_client().history(with, PAGE, before.as_deref()))
            .unwrap_or_else(|e| panic!("{}: history failed: {e}", node.name));
        let full = page.messages.len() == PAGE;
        before = page.messages.first().map(|m| m.id.clone());
        let mut older = page.messages;
        older.append(&mut all);
        all = older;
        if !full {
            return all;
        }
    }
    panic!("{}: history with {with} has more than 20 pages", node.name);
}

/// How often each text occurs.
fn text_counts(messages: &[MessageReport]) -> HashMap<&str, usize> {
    let mut counts = HashMap::new();
    for m in messages {
        *counts.entry(m.text.as_str()).or_insert(0) += 1;
    }
    counts
}

/// Asserts no message id occurs twice.
fn assert_unique_ids(who: &str, messages: &[MessageReport]) {
    let mut ids = HashSet::new();
    for m in messages {
        assert!(ids.insert(m.id.as_str()), "{who}: id {} listed twice", m.id);
    }
}

/// Polls both nodes' status until each has the other in its routing table.
fn wait_for_routing(lab: &Lab, nodes: [&Daemon; 2]) {
    for node in nodes {
        poll(
            &format!("{} to have a routing table peer", node.name),
            ACQUAINT_TIMEOUT,
            || {
                let status = lab.rt.block_on(node.api_client().status()).ok()?;
                (status.routing_table_peers >= 1).then_some(())
            },
        );
    }
}

/// Polls `sender`'s history until message `id` to `recipient` is delivered; returns how long.
fn wait_delivered(lab: &Lab, sender: &Daemon, recipient: &Daemon, id: &str, limit: Duration) {
    poll(&format!("message {id} to be delivered"), limit, || {
        full_history(lab, sender, &recipient.peer_id())
            .iter()
            .any(|m| m.id == id && m.status == "delivered")
            .then_some(())
    });
}

/// Waits until both nodes have each other in their routing tables and a warm-up message from
/// `sender` to `recipient` is delivered (which also proves the recipient's key bundle is found).
///
/// Nodes publish their key bundle about 3 s after starting; the warm-up goes out only after the
/// recipient has been up for 4 s, so it normally goes through at the first attempt.
fn acquaint(lab: &Lab, sender: &Daemon, recipient: &Daemon) {
    let start = Instant::now();
    wait_for_routing(lab, [sender, recipient]);
    poll(
        &format!("{} to have been up 4 s", recipient.name),
        ACQUAINT_TIMEOUT,
        || {
            let status = lab.rt.block_on(recipient.api_client().status()).ok()?;
            (status.uptime_secs >= 4).then_some(())
        },
    );
    let warm_up = lab
        .rt
        .block_on(
            sender
                .api_client()
                .send_message(&recipient.peer_id(), "warm-up"),
        )
        .expect("the warm-up message is accepted");
    wait_delivered(lab, sender, recipient, &warm_up.id, ACQUAINT_TIMEOUT);
    eprintln!(
        "{} and {} met and exchanged a warm-up message ({} at first) in {:.1?}",
        sender.name,
        recipient.name,
        warm_up.status,
        start.elapsed()
    );
}

/// A short pseudo-random number, different on every run.
fn jitter(bound: usize) -> usize {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    usize::try_from(nanos).unwrap() % bound
}

/// What a burst saw: texts the API accepted (with their reports) and requests that failed.
#[derive(Default)]
struct Burst {
    accepted: Vec<(String, SendReport)>,
    /// Failed at the transport (the node died under them).
    failed: Vec<(String, String)>,
    /// Answers that are errors from a live node: there must be none.
    refused: Vec<(String, String)>,
    /// Not sent because the node was already dead.
    skipped: usize,
    /// When the kill happened, from the burst's start.
    killed_at: Duration,
}

impl Burst {
    fn queued(&self) -> usize {
        self.accepted
            .iter()
            .filter(|(_, r)| r.status == "queued")
            .count()
    }
}

const BURST: usize = 1000;
const CONCURRENCY: usize = 32;

/// Which node of the pair a burst kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    /// The node whose API takes the burst: the rest of the burst is never sent.
    Sender,
    /// The node the burst goes to: the sender keeps accepting (and queueing) the rest.
    Recipient,
}

/// Fires `BURST` sends ("m-0" … "m-999") at the sender's API (`api`), `CONCURRENCY` at a time,
/// to `to`, and SIGKILLs `victim` (which is the sender or the recipient, as `role` says) once
/// `kill_after` were accepted. When the sender dies, requests in flight fail; those never
/// reported as accepted may or may not arrive later, but nothing may arrive twice.
fn burst_and_kill(
    lab: &Lab,
    api: &ApiClient,
    to: &str,
    kill_after: usize,
    victim: &mut Daemon,
    role: Victim,
) -> Burst {
    let burst = Arc::new(Mutex::new(Burst::default()));
    let accepted_count = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    lab.rt.block_on(async {
        let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
        let mut tasks = Vec::with_capacity(BURST);
        for n in 0..BURST {
            let (api, to, permits) = (api.clone(), to.to_owned(), permits.clone());
            let (burst, accepted_count, killed) =
                (burst.clone(), accepted_count.clone(), killed.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = permits.acquire_owned().await.unwrap();
                let text = format!("m-{n}");
                if killed.load(Ordering::SeqCst) {
                    burst.lock().unwrap().skipped += 1;
                    return;
                }
                let result = api.send_message(&to, &text).await;
                let mut burst = burst.lock().unwrap();
                match result {
                    Ok(report) => {
                        burst.accepted.push((text, report));
                        accepted_count.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e @ (ClientError::NotRunning { .. } | ClientError::Http(_))) => {
                        burst.failed.push((text, e.to_string()));
                    }
                    Err(e) => burst.refused.push((text, e.to_string())),
                }
            }));
        }
        // Kill the victim from here once enough were accepted (bounded: the burst must get there).
        let deadline = Instant::now() + Duration::from_secs(60);
        while accepted_count.load(Ordering::SeqCst) < kill_after {
            assert!(
                Instant::now() < deadline,
                "only {} of {BURST} accepted in 60 s",
                accepted_count.load(Ordering::SeqCst)
            );
            assert!(
                !tasks.iter().all(tokio::task::JoinHandle::is_finished),
                "the burst ended before the kill"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Flag first, so only requests already in flight can meet a dead sender.
        if role == Victim::Sender {
            killed.store(true, Ordering::SeqCst);
        }
        victim.kill9();
        let killed_at = start.elapsed();
        tokio::time::timeout(Duration::from_secs(60), async {
            for task in tasks {
                task.await.unwrap();
            }
        })
        .await
        .expect("the burst's requests end within 60 s of the kill");
        burst.lock().unwrap().killed_at = killed_at;
    });
    let burst = Arc::try_unwrap(burst).ok().unwrap().into_inner().unwrap();

    // Only the kill may fail a request, and it fails at the transport, never with an answer.
    assert!(
        burst.refused.is_empty(),
        "the node refused sends: {:?}",
        &burst.refused[..burst.refused.len().min(5)]
    );
    assert!(
        burst.failed.len() <= CONCURRENCY,
        "{} requests failed, more than were in flight at the kill: {:?}",
        burst.failed.len(),
        &burst.failed[..5]
    );
    assert_eq!(
        burst.accepted.len() + burst.failed.len() + burst.skipped,
        BURST
    );
    let mut reported_ids = HashSet::new();
    for (text, report) in &burst.accepted {
        assert!(
            reported_ids.insert(report.id.clone()),
            "{text}: id {} reported twice",
            report.id
        );
        assert_eq!(report.peer_id, to);
        assert!(
            report.status == "delivered" || report.status == "queued",
            "{text}: status {}",
            report.status
        );
    }
    burst
}

/// After the killed sender `b` was restarted: waits (bounded) until every accepted message of
/// `burst` is at `a` and `b`'s outbox is drained, then checks that nothing is lost or doubled and
/// that both sides hold the same conversation. Returns (burst messages at A, time to drain).
fn assert_burst_arrived_exactly_once(
    lab: &Lab,
    a: &Daemon,
    b: &Daemon,
    burst: &Burst,
    extra: &[&str],
) -> (usize, Duration) {
    let (a_id, b_id) = (a.peer_id(), b.peer_id());
    let accepted: HashMap<&str, &SendReport> = burst
        .accepted
        .iter()
        .map(|(text, report)| (text.as_str(), report))
        .collect();
    let start = Instant::now();
    let on_a = poll(
        "every accepted message to arrive at A",
        Duration::from_secs(90),
        || {
            let on_a = full_history(lab, a, &b_id);
            let present: HashSet<&str> = on_a.iter().map(|m| m.text.as_str()).collect();
            if accepted.keys().all(|text| present.contains(text)) {
                return Some(on_a);
            }
            assert_none_failed(lab, b, &a_id, &on_a);
            None
        },
    );
    let drained_in = start.elapsed();
    // B's outbox drains too: whatever B stored (accepted or not) ends up delivered.
    let on_b = poll(
        "B to see every stored message delivered",
        Duration::from_secs(30),
        || {
            let on_b = full_history(lab, b, &a_id);
            on_b.iter()
                .all(|m| m.status == "delivered" || m.status == "read")
                .then_some(on_b)
        },
    );
    let on_a = {
        // Re-read A after B's last acknowledgement so both sides are compared at rest.
        let again = full_history(lab, a, &b_id);
        assert!(again.len() >= on_a.len());
        again
    };

    assert_unique_ids("A", &on_a);
    assert_unique_ids("B", &on_b);
    for (text, count) in text_counts(&on_a) {
        assert_eq!(count, 1, "A holds {text:?} {count} times");
        assert!(
            extra.contains(&text) || text.strip_prefix("m-").is_some(),
            "A holds a text nobody sent: {text:?}"
        );
    }
    for (text, count) in text_counts(&on_b) {
        assert_eq!(count, 1, "B holds {text:?} {count} times");
    }
    for (text, report) in &accepted {
        let got = on_a.iter().find(|m| m.text == *text).unwrap();
        assert_eq!(
            got.id, report.id,
            "{text}: A has another id than B reported"
        );
        assert_eq!(got.from, b_id);
        assert_eq!(got.to, a_id);
        let mine = on_b
            .iter()
            .find(|m| m.text == *text)
            .unwrap_or_else(|| panic!("B's history lacks accepted {text:?}"));
        assert_eq!(mine.id, report.id, "{text}: B's history has another id");
    }
    // Both sides agree on the whole conversation: same ids in the same order.
    let ids = |ms: &[MessageReport]| ms.iter().map(|m| m.id.clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(&on_a),
        ids(&on_b),
        "A and B disagree on the conversation"
    );
    (on_a.len() - extra.len(), drained_in)
}

/// Fails at once, with the reasons, if `sender` gave up on any message to `to` (a `failed`
/// message is never retried, so waiting longer would only hide the loss).
fn assert_none_failed(lab: &Lab, sender: &Daemon, to: &str, at_recipient: &[MessageReport]) {
    let history = full_history(lab, sender, to);
    let failed: Vec<&MessageReport> = history.iter().filter(|m| m.status == "failed").collect();
    if let Some(first) = failed.first() {
        let mut reasons: HashMap<&str, usize> = HashMap::new();
        for m in &failed {
            *reasons.entry(m.failure.as_str()).or_default() += 1;
        }
        let position = |id: &str| history.iter().position(|m| m.id == id);
        // Where, in the sender's id order, the recipient's messages stand in arrival order.
        let mut arrivals: Vec<&MessageReport> = at_recipient.iter().collect();
        arrivals.sort_by_key(|m| m.received_at);
        let arrival_order: Vec<Option<usize>> =
            arrivals.iter().take(12).map(|m| position(&m.id)).collect();
        panic!(
            "{} gave up on {} of its {} messages (first failed at position {:?} in id order; \
             reasons {reasons:?}); the recipient holds {}, the first arrivals being positions \
             {arrival_order:?}",
            sender.name,
            failed.len(),
            history.len(),
            position(&first.id),
            at_recipient.len(),
        );
    }
}

fn burst_summary(burst: &Burst, kill_after: usize, on_a: usize, at_kill: usize) -> String {
    format!(
        "killed B {:.1?} into the burst after {} accepted (target {kill_after}; {} of them \
         'queued'); {} requests failed at the kill, {} never sent; A held {at_kill} burst \
         messages at the kill and {on_a} in the end ({} accepted + {} stored but unreported), \
         each once",
        burst.killed_at,
        burst.accepted.len(),
        burst.queued(),
        burst.failed.len(),
        burst.skipped,
        burst.accepted.len(),
        on_a - burst.accepted.len(),
    )
}

#[test]
fn a_killed_sender_loses_and_duplicates_nothing() {
    let lab = Lab::new();
    let a = lab.start("a", None);
    let mut b = lab.start("b", Some(&a.tcp_addr()));
    let b_id = b.peer_id();
    acquaint(&lab, &b, &a);

    let kill_after = 150 + jitter(300);
    let api = b.api_client();
    let burst = burst_and_kill(&lab, &api, &a.peer_id(), kill_after, &mut b, Victim::Sender);
    let at_kill = full_history(&lab, &a, &b_id).len() - 1;

    // Restart B on the same home; it must finish the job by itself.
    let b = {
        drop(b);
        lab.start("b", Some(&a.tcp_addr()))
    };
    assert_eq!(b.peer_id(), b_id);
    let (on_a, drained_in) = assert_burst_arrived_exactly_once(&lab, &a, &b, &burst, &["warm-up"]);
    eprintln!(
        "burst to a running recipient: {}; drained {drained_in:.1?} after B's restart",
        burst_summary(&burst, kill_after, on_a, at_kill)
    );
}

/// Issue 16: the recipient is SIGKILLed in the middle of a burst while the sender's API clients
/// keep sending. Frames it had stored but not acknowledged come again after its restart and
/// are answered as duplicates; frames it had acknowledged are on its disk. Every message the
/// sender's API answered with an id ends up at the recipient exactly once.
#[test]
fn a_killed_recipient_loses_and_duplicates_nothing() {
    let lab = Lab::new();
    let mut a = lab.start("a", None);
    let b = lab.start("b", Some(&a.tcp_addr()));
    let (a_id, b_id) = (a.peer_id(), b.peer_id());
    acquaint(&lab, &b, &a);

    let kill_after = 150 + jitter(300);
    let api = b.api_client();
    let burst = burst_and_kill(&lab, &api, &a_id, kill_after, &mut a, Victim::Recipient);
    assert!(
        burst.failed.is_empty(),
        "the sender stayed up: {:?}",
        &burst.failed
    );
    assert_eq!(
        burst.accepted.len(),
        BURST,
        "the sender accepted every send"
    );

    // A comes back on the same home (on a new port) and dials B; B's outbox drains into it.
    let a = {
        drop(a);
        lab.start("a", Some(&b.tcp_addr()))
    };
    assert_eq!(a.peer_id(), a_id);
    let (on_a, drained_in) = assert_burst_arrived_exactly_once(&lab, &a, &b, &burst, &["warm-up"]);
    eprintln!(
        "burst to a recipient killed after {kill_after} accepted: {on_a} at A from {b_id}, \
         drained {drained_in:.1?} after A's restart"
    );
}

/// The same with the recipient offline during the burst, so every accepted message is still in
/// the sender's outbox when the sender dies: they must survive SIGKILL and go out after restart.
/// Delivery after the restart must also survive the outbox's entries being retried in a different
/// order than they were encrypted (the Olm chain order).
#[test]
fn a_sender_killed_with_a_full_outbox_delivers_it_after_restart_exactly_once() {
    let lab = Lab::new();
    let a = lab.start("a", None);
    let mut b = lab.start("b", Some(&a.tcp_addr()));
    let (a_id, b_id) = (a.peer_id(), b.peer_id());
    acquaint(&lab, &b, &a);

    a.stop();
    let kill_after = 150 + jitter(300);
    let api = b.api_client();
    let burst = burst_and_kill(&lab, &api, &a_id, kill_after, &mut b, Victim::Sender);
    assert_eq!(burst.queued(), burst.accepted.len(), "A was offline");

    // B comes back first (A's old address is dead), then A, dialing B.
    let b = {
        drop(b);
        lab.start("b", None)
    };
    assert_eq!(b.peer_id(), b_id);
    let a = lab.start("a", Some(&b.tcp_addr()));
    assert_eq!(a.peer_id(), a_id);
    let (on_a, drained_in) = assert_burst_arrived_exactly_once(&lab, &a, &b, &burst, &["warm-up"]);
    eprintln!(
        "burst to an offline recipient: {}; drained {drained_in:.1?} after both restarted",
        burst_summary(&burst, kill_after, on_a, 0)
    );
}

#[test]
fn an_offline_recipient_gets_queued_messages_when_it_returns_exactly_once() {
    let lab = Lab::new();
    let a = lab.start("a", None);
    let b = lab.start("b", Some(&a.tcp_addr()));
    let (a_id, b_id) = (a.peer_id(), b.peer_id());
    acquaint(&lab, &b, &a);

    a.stop();
    let texts: Vec<String> = (1..=5).map(|n| format!("while you were out {n}")).collect();
    let sending = Instant::now();
    let mut reports = Vec::new();
    for text in &texts {
        let report = lab
            .rt
            .block_on(b.api_client().send_message(&a_id, text))
            .unwrap_or_else(|e: ClientError| panic!("{text}: not accepted: {e}"));
        assert_eq!(report.status, "queued", "{text} with A offline");
        reports.push(report);
    }
    let queued_in = sending.elapsed();

    // A comes back on a new port and dials B; B is not touched until A has everything.
    let a = lab.start("a", Some(&b.tcp_addr()));
    assert_eq!(a.peer_id(), a_id);
    let back = Instant::now();
    let on_a = poll(
        "A to receive the queued messages",
        Duration::from_secs(60),
        || {
            let on_a = full_history(&lab, &a, &b_id);
            texts
                .iter()
                .all(|t| on_a.iter().any(|m| &m.text == t))
                .then_some(on_a)
        },
    );
    let arrived_in = back.elapsed();
    // Give a duplicate a chance to show up before counting.
    thread::sleep(Duration::from_secs(1));
    let on_a = {
        let again = full_history(&lab, &a, &b_id);
        assert!(again.len() >= on_a.len());
        again
    };
    assert_unique_ids("A", &on_a);
    let got: Vec<&MessageReport> = on_a.iter().filter(|m| m.text != "warm-up").collect();
    assert_eq!(
        got.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        texts.iter().map(String::as_str).collect::<Vec<_>>(),
        "each queued text exactly once, in order"
    );
    for (m, report) in got.iter().zip(&reports) {
        assert_eq!(m.id, report.id);
        assert_eq!(m.from, b_id);
    }

    let on_b = poll(
        "B to mark the queued messages delivered",
        Duration::from_secs(15),
        || {
            let on_b = full_history(&lab, &b, &a_id);
            reports
                .iter()
                .all(|r| {
                    on_b.iter()
                        .any(|m| m.id == r.id && (m.status == "delivered" || m.status == "read"))
                })
                .then_some(on_b)
        },
    );
    assert_unique_ids("B", &on_b);
    assert_eq!(
        on_b.len(),
        1 + texts.len(),
        "B's history: warm-up and the five"
    );
    eprintln!(
        "offline: 5 sends answered 'queued' in {queued_in:.1?}; \
         delivered {arrived_in:.1?} after A restarted"
    );
}

/// When `send_text`'s own first delivery attempt fails (here: the recipient's key bundle is not in
/// the DHT yet), the retry must follow the backoff schedule (0.5 s doubling), not the delivery
/// worker's 30 s idle timer.
#[test]
fn a_message_queued_for_lack_of_a_key_bundle_is_retried_within_seconds() {
    let lab = Lab::new();
    let a = lab.start("a", None);
    let b = lab.start("b", Some(&a.tcp_addr()));
    wait_for_routing(&lab, [&a, &b]);
    // A publishes its key bundle ~3 s after starting; this send comes well before that.
    let sent = Instant::now();
    let report = lab
        .rt
        .block_on(b.api_client().send_message(&a.peer_id(), "early bird"))
        .expect("accepted");
    if report.status != "queued" {
        eprintln!("the first attempt already succeeded; nothing to retry on this run");
        return;
    }
    // Bundle at ~3 s; retries 1 s, 2 s, 4 s, 8 s after the failure: delivered by ~8 s.
    wait_delivered(&lab, &b, &a, &report.id, Duration::from_secs(12));
    eprintln!(
        "queued message delivered {:.1?} after the send",
        sent.elapsed()
    );
}

/// While the recipient is offline, retries give the queued entries different retry times; when
/// it returns, they must still go out oldest first (their Olm chain order), or the receiver's
/// skipped-key window (40 in vodozemac) runs out and older entries would not decrypt.
#[test]
fn an_offline_recipient_gets_a_queued_burst_of_300_exactly_once() {
    const MESSAGES: usize = 300;
    let lab = Lab::new();
    let a = lab.start("a", None);
    let b = lab.start("b", Some(&a.tcp_addr()));
    let a_id = a.peer_id();
    acquaint(&lab, &b, &a);
    a.stop();
    let reports: Vec<SendReport> = lab.rt.block_on(async {
        let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
        let mut tasks = Vec::with_capacity(MESSAGES);
        for n in 0..MESSAGES {
            let (api, to, permits) = (b.api_client().clone(), a_id.clone(), permits.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = permits.acquire_owned().await.unwrap();
                api.send_message(&to, &format!("m-{n}")).await
            }));
        }
        let mut out = Vec::with_capacity(MESSAGES);
        for task in tasks {
            out.push(task.await.unwrap().expect("accepted"));
        }
        out
    });
    assert!(reports.iter().all(|r| r.status == "queued"), "A is offline");

    let a = lab.start("a", Some(&b.tcp_addr()));
    let back = Instant::now();
    let burst = Burst {
        accepted: reports
            .into_iter()
            .enumerate()
            .map(|(n, r)| (format!("m-{n}"), r))
            .collect(),
        ..Burst::default()
    };
    let (on_a, drained_in) = assert_burst_arrived_exactly_once(&lab, &a, &b, &burst, &["warm-up"]);
    assert_eq!(on_a, MESSAGES);
    eprintln!(
        "offline burst: {MESSAGES} queued, all delivered once {drained_in:.1?} after A \
         returned ({:.1?} in all)",
        back.elapsed()
    );
}

/// Olm sessions are saved per peer, each in the transaction of the envelope it produced. A sender
/// killed with SIGKILL between encryptions to two different peers restarts with both sessions as
/// they were, and both keep working in both directions: nothing is refused as undecryptable and
/// no side falls back to a new session from a key bundle.
///
/// A process test with the real binary, because only SIGKILL leaves the store as a crash does
/// (no shutdown flush, no destructor); an in-process drop would still run sled's.
#[test]
fn a_sender_killed_between_encryptions_to_two_peers_keeps_both_sessions() {
    let lab = Lab::new();
    let mut a = lab.start("a", None);
    let b = lab.start("b", Some(&a.tcp_addr()));
    let c = lab.start("c", Some(&a.tcp_addr()));
    acquaint(&lab, &a, &b);
    acquaint(&lab, &a, &c);
    let send = |from: &Daemon, to: &Daemon, text: &str| {
        let report = lab
            .rt
            .block_on(from.api_client().send_message(&to.peer_id(), text))
            .unwrap_or_else(|e| panic!("{text}: not accepted: {e}"));
        wait_delivered(&lab, from, to, &report.id, ACQUAINT_TIMEOUT);
    };
    // Replies first, so both of A's sessions have turned from pre-key to normal messages.
    send(&b, &a, "b to a before");
    send(&c, &a, "c to a before");
    for i in 0..3 {
        send(&a, &b, &format!("a to b {i}"));
        send(&a, &c, &format!("a to c {i}"));
    }
    // Answered means encrypted, saved with B's sessions and flushed; kill before the next
    // encryption (to C) starts.
    lab.rt
        .block_on(a.api_client().send_message(&b.peer_id(), "a to b last"))
        .expect("accepted");
    a.kill9();

    let a = {
        drop(a);
        lab.start("a", Some(&b.tcp_addr()))
    };
    send(&a, &c, "a to c after");
    send(&a, &b, "a to b after");
    send(&b, &a, "b to a after");
    send(&c, &a, "c to a after");

    for (node, with, texts) in [
        (
            &b,
            &a,
            [
                "b to a before",
                "a to b last",
                "a to b after",
                "b to a after",
            ],
        ),
        (
            &c,
            &a,
            ["c to a before", "a to c 2", "a to c after", "c to a after"],
        ),
    ] {
        let history = full_history(&lab, node, &with.peer_id());
        assert_unique_ids(&node.name, &history);
        let counts = text_counts(&history);
        for text in texts {
            assert_eq!(
                counts.get(text),
                Some(&1),
                "{}: {text:?} exactly once",
                node.name
            );
        }
    }
    // A's log holds both of its runs (appended), so this covers the time before the kill too.
    for node in [&a, &b, &c] {
        let log = fs::read_to_string(&node.log).unwrap();
        for bad in ["cannot decrypt", "refused a direct message"] {
            assert!(
                !log.contains(bad),
                "{}'s log says {bad:?}: a session was lost or replaced",
                node.name
            );
        }
    }
}
