//! Direct chat between real nodes on loopback, in process: sending by peer id, name and petname
//! with both histories matching and receipts coming back; three nodes keeping their conversations
//! apart; requests, accepting and blocking; tampered, replayed, oversized and garbage frames on
//! `/kith/dm/1.0.0`; what crosses the wire (no plaintext); a flood against a rate limit; and the
//! errors a user gets for messages that cannot be sent.
//!
//! The process-level cases (a sender killed with SIGKILL in a burst, a recipient that comes online
//! later) are in `node/tests/dm_cli.rs`.
//!
//! Every node listens on TCP only (see [`Transports::Tcp`]: some tests stop nodes), uses
//! [`name_options`] and publishes its key bundle 200 ms after start ([`dm_options`]), so a first
//! message never waits for a missing bundle.
//!
//! Two tests put a bare libp2p swarm ([`kith_testkit::RawPeer`]) in front of a node: one that holds a
//! stopped recipient's identity, so the sender's genuine frames reach the test instead of the
//! recipient (a wire capture), and one that writes frames no kith node would write (over the cap,
//! truncated, an endless length prefix).

// Test code: failing loudly is the point. ServiceError carries both peer ids of a name conflict,
// so it is large; kith-service allows that the same way.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::result_large_err
)]

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use kith_crypto::{Curve25519Key, Olm, OlmAccount, PeerSessions};
use kith_net::{Keypair, PeerId};
use kith_proto::v1 as pb;
use kith_service::{
    MAX_TEXT_BYTES, Message, MessageEvent, MessageId, MessageStatus, Options, Sent, ServiceError,
    Trust,
};
use kith_store::OlmSave;
use prost::Message as _;

use kith_testkit::{RawAnswer, RawPeer};

use crate::harness::{
    POLL, STEP, StoppedNode, TestNode, Transports, name_options, poll_until, shutdown_all,
    star_with, wait_for_mesh, wait_until,
};

/// For a few nodes on loopback to know each other.
const MESH: Duration = Duration::from_secs(20);
/// Upper bound on one `send_text` (it answers after the first attempt or 5 s) or raw request.
const SEND: Duration = Duration::from_secs(30);
/// For a message to reach a status after a retry, a reconnect or a receipt.
const DELIVERY: Duration = Duration::from_secs(20);
/// For the whole flood to get through the recipient's rate limit.
const FLOOD_DELIVERY: Duration = Duration::from_secs(30);
/// The recipient's count of refused direct messages.
const DM_REJECTED: &str = "kith_dm_rejected_total";
/// The recipient's count of frames refused before decoding.
const FRAMES_REJECTED: &str = "kith_dm_frames_rejected_total";

/// [`name_options`] with the key bundle published 200 ms after start instead of never.
fn dm_options() -> Options {
    Options {
        first_republish_after: Duration::from_millis(200),
        ..name_options()
    }
}

/// `n` nodes with [`dm_options`] on TCP, bootstrapped from the first, all in each other's
/// routing tables and able to fetch each other's key bundles.
async fn network(n: usize) -> Vec<TestNode> {
    let nodes = star_with(n, dm_options(), Transports::Tcp).await.unwrap();
    ready(&nodes).await;
    nodes
}

/// Waits until every node knows every other one and can fetch its key bundle from the DHT, so
/// that no first message waits for a bundle that is not published yet (and then for a retry).
async fn ready(nodes: &[TestNode]) {
    wait_for_mesh(nodes, &[], MESH).await.unwrap();
    for from in nodes {
        for of in nodes.iter().filter(|n| n.peer_id() != from.peer_id()) {
            wait_until(
                &format!("{} to find {}'s key bundle", from.peer_id(), of.peer_id()),
                MESH,
                POLL,
                async || {
                    let lookup = from
                        .node()
                        .probe()
                        .get_record(kith_core::dht::bundle_key(&of.peer_id()), 1);
                    matches!(
                        tokio::time::timeout(STEP, lookup).await,
                        Ok(Ok(found)) if !found.answers.is_empty()
                    )
                },
            )
            .await
            .unwrap();
        }
    }
}

/// Bounded `send_text` that must succeed.
async fn send(node: &TestNode, target: &str, text: &str) -> Sent {
    tokio::time::timeout(SEND, node.node().send_text(target, text))
        .await
        .unwrap_or_else(|_| panic!("send_text({target}) on {} hung", node.peer_id()))
        .unwrap_or_else(|e| {
            panic!(
                "send_text({target}, {text:?}) on {} failed: {e}",
                node.peer_id()
            )
        })
}

/// Bounded `send_text` that must fail.
async fn send_err(node: &TestNode, target: &str, text: &str) -> ServiceError {
    match tokio::time::timeout(SEND, node.node().send_text(target, text))
        .await
        .unwrap_or_else(|_| panic!("send_text({target}) on {} hung", node.peer_id()))
    {
        Ok(sent) => panic!(
            "send_text({target}, {} bytes) was accepted: {sent:?}",
            text.len()
        ),
        Err(e) => e,
    }
}

/// One message as the node's store holds it.
fn stored(node: &TestNode, id: &MessageId) -> Option<Message> {
    node.node().message(id).unwrap()
}

/// Whether the node has ever stored this message id (either direction).
fn known(node: &TestNode, id: &[u8]) -> bool {
    let id: MessageId = id.try_into().unwrap();
    node.node().probe().is_known(&id).unwrap()
}

/// Waits until the message has `want` as its status on `node`.
async fn wait_status(node: &TestNode, id: MessageId, want: MessageStatus) -> Message {
    let got = poll_until(
        &format!("message {} on {} to be {want:?}", hex(&id), node.peer_id()),
        DELIVERY,
        POLL,
        async || stored(node, &id).filter(|m| m.status == want),
    )
    .await;
    got.unwrap_or_else(|e| panic!("{e}; it is {:?}", stored(node, &id)))
}

/// The whole conversation `node` holds with `peer`, oldest first.
fn conversation(node: &TestNode, peer: PeerId) -> Vec<Message> {
    node.node().probe().conversation(peer).unwrap()
}

/// Asserts that `a` and `b` hold the same conversation: the same ids in the same order with the
/// same texts and send times, each message outgoing on exactly one side. Returns `a`'s copy.
fn assert_same_conversation(a: &TestNode, b: &TestNode) -> Vec<Message> {
    let on_a = conversation(a, b.peer_id());
    let on_b = conversation(b, a.peer_id());
    let view = |ms: &[Message]| {
        ms.iter()
            .map(|m| (hex(&m.id), m.text.clone(), m.sent_at_ms))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        view(&on_a),
        view(&on_b),
        "{} and {} hold different conversations",
        a.peer_id(),
        b.peer_id()
    );
    for (x, y) in on_a.iter().zip(&on_b) {
        assert_ne!(x.outgoing, y.outgoing, "{:?} vs {:?}", x, y);
        assert_eq!(x.peer_id, b.peer_id().to_bytes());
        assert_eq!(y.peer_id, a.peer_id().to_bytes());
    }
    on_a
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Sends raw bytes on `/kith/dm/1.0.0` from a kith node (its own identity, its own connection)
/// and decodes the ack.
///
/// Connects first: libp2p's request-response fails every request waiting for a peer when any
/// dial to that peer fails, including a concurrent one to an address the peer had before a
/// restart. A request that failed that way never left, so it is sent again (at most three times).
async fn send_raw(from: &TestNode, to: &TestNode, bytes: Vec<u8>) -> pb::Ack {
    let mut attempts = 0;
    let answer = loop {
        attempts += 1;
        connect(from, to).await;
        let sent = tokio::time::timeout(
            SEND,
            from.node()
                .probe()
                .send_dm(to.peer_id(), bytes.clone(), vec![to.tcp_addr()]),
        )
        .await
        .unwrap_or_else(|_| panic!("send_dm from {} hung", from.peer_id()));
        match sent {
            Ok(answer) => break answer,
            Err(e) if attempts < 3 && e.to_string().contains("Failed to dial") => {
                eprintln!("send_dm from {}: {e}; again", from.peer_id());
            }
            Err(e) => panic!("{} did not answer {}: {e}", to.peer_id(), from.peer_id()),
        }
    };
    pb::Ack::decode(answer.as_slice()).unwrap_or_else(|e| panic!("undecodable ack {answer:?}: {e}"))
}

/// Dials `to` from `from` (at its current address) until they are connected.
async fn connect(from: &TestNode, to: &TestNode) {
    let peer = to.peer_id();
    wait_until(
        &format!("{} to connect to {peer}", from.peer_id()),
        STEP,
        POLL,
        async || {
            if from
                .connected_peers()
                .await
                .is_ok_and(|p| p.contains(&peer))
            {
                return true;
            }
            let _ = from.node().probe().dial(to.tcp_addr()).await;
            false
        },
    )
    .await
    .unwrap();
}

fn ack_status(ack: &pb::Ack) -> pb::AckStatus {
    pb::AckStatus::try_from(ack.status).unwrap_or_else(|_| panic!("unknown ack status in {ack:?}"))
}

fn envelope(id: &[u8], ciphertext: Vec<u8>) -> Vec<u8> {
    pb::Envelope {
        id: id.to_vec(),
        ciphertext,
    }
    .encode_to_vec()
}

/// An impostor's answer: the given status for the frame's message id.
fn answer_with(status: pb::AckStatus) -> RawAnswer {
    Arc::new(move |frame: &[u8]| {
        let id = pb::Envelope::decode(frame)
            .map(|e| e.id)
            .unwrap_or_default();
        Some(
            pb::Ack {
                id,
                status: status as i32,
                reason: "test impostor".into(),
                now_ms: 0,
            }
            .encode_to_vec(),
        )
    })
}

/// A hub, a sender and a stopped recipient with an impostor in its place.
struct ImpostorStage {
    hub: TestNode,
    sender: TestNode,
    recipient: StoppedNode,
    impostor: RawPeer,
}

/// Three nodes (hub, sender, recipient). The sender's first message is delivered, so it holds an
/// Olm session with the recipient and the recipient has bound the sender's key. Then the recipient
/// stops and a bare swarm holding its identity connects to the sender in its place, answering
/// every direct message with `answer`: what the sender sends next reaches the test, byte for byte,
/// and never the recipient's Olm state.
/// Waits (at most [`STEP`]) until `node` is connected to `peer`, or no longer is.
async fn wait_link(node: &TestNode, peer: PeerId, connected: bool, what: &str) {
    wait_until(what, STEP, POLL, async || {
        node.connected_peers()
            .await
            .is_ok_and(|p| p.contains(&peer) == connected)
    })
    .await
    .unwrap();
}

/// Stops the impostor and starts the real recipient again (through `hub`).
async fn back_from_impostor(impostor: RawPeer, recipient: StoppedNode, hub: &TestNode) -> TestNode {
    impostor.stop().await;
    recipient.start(vec![hub.tcp_addr()]).await.unwrap()
}

async fn impostor_stage(answer: pb::AckStatus) -> ImpostorStage {
    let mut nodes = network(3).await.into_iter();
    let (hub, sender, recipient) = (
        nodes.next().unwrap(),
        nodes.next().unwrap(),
        nodes.next().unwrap(),
    );
    let warm = send(&sender, &recipient.peer_id().to_string(), "warm-up").await;
    wait_status(&sender, warm.id, MessageStatus::Delivered).await;

    let recipient = recipient.stop_keeping_home().await.unwrap();
    let rid = recipient.peer_id();
    wait_link(
        &sender,
        rid,
        false,
        "the sender to see the stopped recipient disconnect",
    )
    .await;
    let impostor = RawPeer::start(recipient.keypair(), answer_with(answer)).unwrap();
    impostor.dial(sender.tcp_addr()).await.unwrap();
    wait_link(
        &sender,
        rid,
        true,
        "the sender to be connected to the impostor",
    )
    .await;
    ImpostorStage {
        hub,
        sender,
        recipient,
        impostor,
    }
}

/// The sender's envelope for one message, captured by an impostor that answered BLOCKED (so the
/// sender gave it up and will never send it again), with the real recipient running again and
/// connected to the network: a genuine envelope that no recipient has seen.
struct HeldEnvelope {
    hub: TestNode,
    sender: TestNode,
    recipient: TestNode,
    /// The frame body exactly as the sender wrote it.
    wire: Vec<u8>,
    envelope: pb::Envelope,
    text: &'static str,
}

impl HeldEnvelope {
    /// (hub, sender, recipient, wire, envelope, text), for the tests that use them all.
    fn into_parts(
        self,
    ) -> (
        TestNode,
        TestNode,
        TestNode,
        Vec<u8>,
        pb::Envelope,
        &'static str,
    ) {
        let Self {
            hub,
            sender,
            recipient,
            wire,
            envelope,
            text,
        } = self;
        (hub, sender, recipient, wire, envelope, text)
    }
}

async fn held_envelope() -> HeldEnvelope {
    let text = "held back by the impostor";
    let mut stage = impostor_stage(pb::AckStatus::AckBlocked).await;
    let rid = stage.recipient.peer_id();
    let held = send(&stage.sender, &rid.to_string(), text).await;
    assert_eq!(
        held.status,
        MessageStatus::Failed,
        "the impostor said BLOCKED"
    );
    let wire = stage
        .impostor
        .next_frame(STEP)
        .await
        .expect("the impostor received no frame");
    let envelope = pb::Envelope::decode(wire.as_slice()).unwrap();
    assert_eq!(envelope.id, held.id);
    assert!(
        stage
            .sender
            .node()
            .probe()
            .outbox()
            .unwrap()
            .iter()
            .all(|i| i.id != held.id),
        "the sender gave the message up"
    );
    let recipient = back_from_impostor(stage.impostor, stage.recipient, &stage.hub).await;
    HeldEnvelope {
        hub: stage.hub,
        sender: stage.sender,
        recipient,
        wire,
        envelope,
        text,
    }
}

/// A genuine envelope changed in one place inside its ciphertext, each a different way.
fn tampered_variants(genuine: &pb::Envelope) -> Vec<(&'static str, Vec<u8>)> {
    let olm = pb::OlmMessage::decode(genuine.ciphertext.as_slice()).unwrap();
    assert!(olm.body.len() > 64, "an Olm message: {olm:?}");
    let with = |change: &dyn Fn(&mut pb::OlmMessage)| {
        let mut m = olm.clone();
        change(&mut m);
        envelope(&genuine.id, m.encode_to_vec())
    };
    // The Olm body with the byte at `at(its length)` xor-ed with `bits`.
    let flip = |at: fn(usize) -> usize, bits: u8| {
        with(&|m| {
            let i = at(m.body.len());
            m.body[i] ^= bits;
        })
    };
    let raw_flip = {
        let mut c = genuine.ciphertext.clone();
        let at = c.len() * 2 / 3;
        c[at] ^= 0x04;
        envelope(&genuine.id, c)
    };
    vec![
        (
            "last byte of the Olm message (its MAC) flipped",
            flip(|len| len - 1, 0x01),
        ),
        (
            "a byte in the middle of the Olm message flipped",
            flip(|len| len / 2, 0x80),
        ),
        (
            "a byte of the encrypted text flipped",
            flip(|len| len - 20, 0x10),
        ),
        (
            "the Olm message truncated",
            with(&|m| {
                let half = m.body.len() / 2;
                m.body.truncate(half);
            }),
        ),
        (
            "pre-key and normal message type swapped",
            with(&|m| m.r#type = u32::from(m.r#type == 0)),
        ),
        (
            "the sender's identity key changed",
            with(&|m| m.sender_identity_key[0] ^= 0x01),
        ),
        ("a byte of the encoded ciphertext flipped", raw_flip),
    ]
}

/// Asserts that no six consecutive bytes of `text` occur in `bytes`.
fn assert_no_plaintext(what: &str, bytes: &[u8], text: &str) {
    const WINDOW: usize = 6;
    for piece in text.as_bytes().windows(WINDOW) {
        assert!(
            !bytes.windows(WINDOW).any(|w| w == piece),
            "{what} contains {:?} from the message text",
            String::from_utf8_lossy(piece)
        );
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_chat_by_peer_id_name_and_petname() {
    let mut nodes = network(2).await.into_iter();
    let (a, b) = (nodes.next().unwrap(), nodes.next().unwrap());
    let (a_id, b_id) = (a.peer_id(), b.peer_id());

    let reg = tokio::time::timeout(SEND, a.node().register_name("alice", None))
        .await
        .expect("register_name hung")
        .unwrap();
    assert_eq!(reg.record.peer_id(), a_id);
    b.node()
        .add_contact("ally", &a_id.to_string())
        .await
        .unwrap();
    let mut events = b.node().subscribe();

    // B writes by peer id, by name and by petname; every way reaches A.
    let mut from_b = Vec::new();
    for (target, text) in [
        (a_id.to_string(), "hi, by peer id"),
        ("alice".to_owned(), "hi again, by name"),
        ("ally".to_owned(), "and once more, by petname"),
    ] {
        let sent = send(&b, &target, text).await;
        assert_eq!(sent.peer, a_id, "{target} is A");
        from_b.push(sent.id);
    }
    // Ids order by their millisecond, and two nodes' ids within one millisecond in an order of
    // their own (the same on both sides): the reply starts in a later millisecond than B's last
    // message, so "send order" below is one order.
    tokio::time::sleep(Duration::from_millis(2)).await;
    let reply = send(&a, &b_id.to_string(), "hello B, all three arrived").await;
    assert_eq!(reply.peer, b_id);

    for id in &from_b {
        wait_status(&b, *id, MessageStatus::Delivered).await;
    }
    wait_status(&a, reply.id, MessageStatus::Delivered).await;
    wait_status(&b, reply.id, MessageStatus::Received).await;

    // Both sides hold the same four messages, in send order.
    let on_a = assert_same_conversation(&a, &b);
    let mut expected: Vec<MessageId> = from_b.clone();
    expected.push(reply.id);
    assert_eq!(
        on_a.iter().map(|m| m.id).collect::<Vec<_>>(),
        expected,
        "ids in send order"
    );
    assert_eq!(
        on_a.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        [
            "hi, by peer id",
            "hi again, by name",
            "and once more, by petname",
            "hello B, all three arrived"
        ]
    );
    // The API's history (by name and by petname on B) is the same conversation.
    let (peer, by_name) = b.node().history("alice", 100, None).await.unwrap();
    assert_eq!(peer, a_id);
    let (_, by_petname) = b.node().history("ally", 100, None).await.unwrap();
    let ids = |ms: &[Message]| ms.iter().map(|m| m.id).collect::<Vec<_>>();
    assert_eq!(ids(&by_name), expected);
    assert_eq!(ids(&by_petname), expected);
    let (_, last_two) = b.node().history("ally", 2, Some(reply.id)).await.unwrap();
    assert_eq!(ids(&last_two), from_b[1..3], "two before the reply");

    // A reads: B's messages become Read on B (a read receipt, delivered like a message).
    assert_eq!(a.node().mark_read(b_id).await.unwrap(), 3);
    for id in &from_b {
        wait_status(&b, *id, MessageStatus::Read).await;
        assert_eq!(stored(&a, id).unwrap().status, MessageStatus::Seen);
    }
    assert_eq!(
        stored(&a, &reply.id).unwrap().status,
        MessageStatus::Delivered
    );
    assert!(
        a.node().inbox().unwrap().iter().all(|c| c.unread == 0),
        "A read everything: {:?}",
        a.node().inbox().unwrap()
    );

    // B's subscriber saw every status change of its messages and A's reply arrive.
    let mut delivered = HashSet::new();
    let mut read = HashSet::new();
    let mut received = Vec::new();
    let seen_all = tokio::time::timeout(DELIVERY, async {
        while delivered.len() < 3 || read.len() < 3 || received.is_empty() {
            match events.recv().await.expect("event stream ended") {
                MessageEvent::Status { id, peer, status } => {
                    assert_eq!(peer, a_id);
                    assert!(from_b.contains(&id), "a status for {}", hex(&id));
                    match status {
                        MessageStatus::Delivered => {
                            delivered.insert(id);
                        }
                        MessageStatus::Read => {
                            read.insert(id);
                        }
                        other => panic!("unexpected status {other:?}"),
                    }
                }
                MessageEvent::Received(m) => received.push(m.id),
                _ => {}
            }
        }
    })
    .await;
    assert!(
        seen_all.is_ok(),
        "B's subscriber saw delivered {delivered:?}, read {read:?}, received {received:?}"
    );
    assert_eq!(received, [reply.id]);

    shutdown_all(vec![a, b]).await.unwrap();
}

/// Our sessions with `with`, as `node` saved them in its store.
fn saved_sessions(node: &TestNode, with: &TestNode) -> PeerSessions {
    let db = node.node().probe();
    let key = db
        .identity_key_of(with.peer_id())
        .unwrap()
        .expect("bound on first use");
    let pickle_key = node.pickle_key().unwrap();
    let (account, _) =
        OlmAccount::from_pickle(&db.olm_account().unwrap().unwrap(), pickle_key).unwrap();
    PeerSessions::from_pickle(
        account.identity_key(),
        Curve25519Key::from_bytes(key),
        &db.olm_sessions(&key).unwrap().expect("saved per peer"),
        pickle_key,
    )
    .unwrap()
}

/// A store written before sessions were saved per peer holds the whole Olm state (account and
/// every session) under one key. It opens, is split once into the account and per-peer entries,
/// and the sessions it held keep working in both directions: no new session is started (which
/// would show as a second session on the other side) and nothing is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_with_the_old_whole_state_olm_pickle_opens_and_decrypts_both_ways() {
    let mut nodes = network(2).await.into_iter();
    let (a, b) = (nodes.next().unwrap(), nodes.next().unwrap());
    let (a_id, b_id) = (a.peer_id(), b.peer_id());
    let first = send(&a, &b_id.to_string(), "before the upgrade").await;
    wait_status(&a, first.id, MessageStatus::Delivered).await;
    let reply = send(&b, &a_id.to_string(), "reply before the upgrade").await;
    wait_status(&b, reply.id, MessageStatus::Delivered).await;
    assert_eq!(saved_sessions(&b, &a).len(), 1);

    // Rewrite A's store into the old layout: one whole-state pickle, no per-peer entry.
    let b_addr = b.tcp_addr();
    let stopped = a.stop_keeping_home().await.unwrap();
    let b_key = stopped
        .with_store(|store, key| {
            let db = store.messages();
            let b_key = db
                .correspondent(&b_id.to_bytes())
                .unwrap()
                .unwrap()
                .identity_key
                .unwrap();
            let (account, none) =
                OlmAccount::from_pickle(&db.olm_account().unwrap().unwrap(), key).unwrap();
            assert!(none.is_empty(), "the account pickle holds no sessions");
            let sessions = PeerSessions::from_pickle(
                account.identity_key(),
                Curve25519Key::from_bytes(b_key),
                &db.olm_sessions(&b_key).unwrap().unwrap(),
                key,
            )
            .unwrap();
            let whole = Olm::from_parts(account, vec![sessions])
                .to_pickle(key)
                .unwrap();
            db.save_olm(OlmSave {
                sessions: None,
                account: Some(&whole),
            })
            .unwrap();
            db.remove_olm_sessions(&b_key).unwrap();
            b_key
        })
        .await
        .unwrap();

    let a = stopped.start(vec![b_addr]).await.unwrap();
    let db = a.node().probe();
    assert!(db.olm_sessions(&b_key).unwrap().is_some(), "split on open");
    let (_, left) =
        OlmAccount::from_pickle(&db.olm_account().unwrap().unwrap(), a.pickle_key().unwrap())
            .unwrap();
    assert!(
        left.is_empty(),
        "the account is saved alone after the split"
    );

    let rejected = (a.metric(DM_REJECTED), b.metric(DM_REJECTED));
    let after = send(&a, &b_id.to_string(), "after the upgrade").await;
    wait_status(&a, after.id, MessageStatus::Delivered).await;
    let back = send(&b, &a_id.to_string(), "reply after the upgrade").await;
    wait_status(&b, back.id, MessageStatus::Delivered).await;
    wait_status(&a, back.id, MessageStatus::Received).await;
    assert_eq!(
        (a.metric(DM_REJECTED), b.metric(DM_REJECTED)),
        rejected,
        "nothing refused"
    );
    assert_eq!(
        saved_sessions(&b, &a).len(),
        1,
        "A kept using the session from the old pickle"
    );
    assert_eq!(saved_sessions(&a, &b).len(), 1);
    shutdown_all(vec![a, b]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_keep_separate_conversations() {
    let nodes = network(3).await;
    let label = ["A", "B", "C"];

    // Every node writes twice to each of the other two, all six conversations at once.
    let mut jobs = Vec::new();
    for (i, from) in nodes.iter().enumerate() {
        for (j, to) in nodes.iter().enumerate() {
            if i == j {
                continue;
            }
            jobs.push(async move {
                let target = to.peer_id().to_string();
                let mut sent = Vec::new();
                for k in 0..2 {
                    let text = format!("{} to {} #{k}", label[i], label[j]);
                    sent.push((send(from, &target, &text).await.id, text));
                }
                (i, j, sent)
            });
        }
    }
    let all = futures::future::join_all(jobs).await;
    for (i, _, sent) in &all {
        for (id, _) in sent {
            wait_status(&nodes[*i], *id, MessageStatus::Delivered).await;
        }
    }

    for (i, a) in nodes.iter().enumerate() {
        let inbox: HashSet<PeerId> = a.node().inbox().unwrap().iter().map(|c| c.peer).collect();
        let others: HashSet<PeerId> = nodes
            .iter()
            .filter(|n| n.peer_id() != a.peer_id())
            .map(TestNode::peer_id)
            .collect();
        assert_eq!(inbox, others, "{}'s conversations", label[i]);
        for (j, b) in nodes.iter().enumerate().skip(i + 1) {
            let conv = assert_same_conversation(a, b);
            let mut texts: Vec<String> = conv.iter().map(|m| m.text.clone()).collect();
            texts.sort();
            let mut expected: Vec<String> = all
                .iter()
                .filter(|(f, t, _)| (*f, *t) == (i, j) || (*f, *t) == (j, i))
                .flat_map(|(_, _, sent)| sent.iter().map(|(_, text)| text.clone()))
                .collect();
            expected.sort();
            assert_eq!(
                texts, expected,
                "{}-{} holds exactly its own four",
                label[i], label[j]
            );
            for m in &conv {
                let from_a = m.text.starts_with(label[i]);
                assert_eq!(
                    m.outgoing, from_a,
                    "direction of {:?} on {}",
                    m.text, label[i]
                );
            }
            // Per sender, in the order sent.
            let order: Vec<&str> = conv
                .iter()
                .filter(|m| m.outgoing)
                .map(|m| m.text.as_str())
                .collect();
            let a_to_b = [0, 1].map(|k| format!("{} to {} #{k}", label[i], label[j]));
            assert_eq!(order, a_to_b.iter().map(String::as_str).collect::<Vec<_>>());
        }
    }

    // Every ack carried the recipient's clock: each sender has a skew sample from both others,
    // and on one machine the clocks agree (to within the round trip).
    for (i, a) in nodes.iter().enumerate() {
        let skew = a.node().checkup().await.unwrap().clock_skew;
        let skew = skew.unwrap_or_else(|| panic!("{} measured no clock skew", label[i]));
        assert_eq!(skew.peers, 2, "{}: {skew:?}", label[i]);
        assert!(skew.median_ms.abs() < 2_000, "{}: {skew:?}", label[i]);
    }

    shutdown_all(nodes).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_senders_land_in_requests_and_blocked_ones_are_refused() {
    let mut nodes = network(2).await.into_iter();
    let (a, b) = (nodes.next().unwrap(), nodes.next().unwrap());
    let (a_id, b_id) = (a.peer_id().to_string(), b.peer_id().to_string());
    let trust_of_b = |a: &TestNode| {
        let inbox = a.node().inbox().unwrap();
        assert_eq!(inbox.len(), 1, "{inbox:?}");
        assert_eq!(inbox[0].peer, b.peer_id());
        (inbox[0].trust, inbox[0].unread)
    };

    // A first message from a stranger is stored, as a request.
    let first = send(&b, &a_id, "hello, we have not met").await;
    wait_status(&b, first.id, MessageStatus::Delivered).await;
    assert_eq!(trust_of_b(&a), (Trust::Unknown, 1));
    assert_eq!(
        stored(&a, &first.id).unwrap().text,
        "hello, we have not met"
    );
    // The sender, who started the conversation, trusts its recipient.
    assert_eq!(b.node().inbox().unwrap()[0].trust, Trust::Accepted);

    assert_eq!(a.node().accept(&b_id).await.unwrap(), b.peer_id());
    assert_eq!(trust_of_b(&a).0, Trust::Accepted);
    let second = send(&b, &a_id, "thanks for accepting").await;
    wait_status(&b, second.id, MessageStatus::Delivered).await;

    // Blocked: the next message is refused (BLOCKED), fails on B for good and is not stored.
    assert_eq!(a.node().block(&b_id).await.unwrap(), b.peer_id());
    assert_eq!(trust_of_b(&a).0, Trust::Blocked);
    let rejected = a.metric(DM_REJECTED);
    let third = send(&b, &a_id, "are you still there?").await;
    let failed = wait_status(&b, third.id, MessageStatus::Failed).await;
    assert!(
        failed.failure.contains("does not accept"),
        "failure reason: {:?}",
        failed.failure
    );
    assert!(!known(&a, &third.id), "a blocked peer's message was stored");
    assert_eq!(
        conversation(&a, b.peer_id())
            .iter()
            .map(|m| m.id)
            .collect::<Vec<_>>(),
        [first.id, second.id]
    );
    assert_eq!(a.metric(DM_REJECTED), rejected + 1.0);
    assert!(
        b.node().probe().outbox().unwrap().is_empty(),
        "a refused message is not retried"
    );
    // Nor can A write to a peer it blocked.
    let err = send_err(&a, &b_id, "one last word").await;
    assert!(matches!(err, ServiceError::InvalidMessage(_)), "{err:?}");

    // Accepting again unblocks.
    a.node().accept(&b_id).await.unwrap();
    let fourth = send(&b, &a_id, "back again").await;
    wait_status(&b, fourth.id, MessageStatus::Delivered).await;
    assert_eq!(stored(&a, &fourth.id).unwrap().text, "back again");

    shutdown_all(vec![a, b]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_replayed_oversized_and_garbage_frames_are_refused() {
    let (hub, sender, recipient, wire, genuine, text) = held_envelope().await.into_parts();
    let rejected_before = recipient.metric(DM_REJECTED);
    let frames_before = recipient.metric(FRAMES_REJECTED);
    let mut refusals = 0.0;
    let history_len = || conversation(&recipient, sender.peer_id()).len();
    let len_before = history_len();

    // (d) Garbage, from the sender and from a third node: answered REJECTED.
    let mut bad_id = genuine.clone();
    bad_id.id.truncate(3);
    let garbage: [(&str, Vec<u8>); 4] = [
        (
            "bytes that are no protobuf",
            b"\x07\xffnot an envelope at all".to_vec(),
        ),
        ("an empty frame", Vec::new()),
        ("a 3-byte message id", bad_id.encode_to_vec()),
        (
            "a ciphertext that is no Olm message",
            envelope(&[7; 16], b"\x0a\x03abc".to_vec()),
        ),
    ];
    for from in [&sender, &hub] {
        for (what, bytes) in &garbage {
            let ack = send_raw(from, &recipient, bytes.clone()).await;
            assert_eq!(
                ack_status(&ack),
                pb::AckStatus::AckRejected,
                "{what}: {ack:?}"
            );
            refusals += 1.0;
        }
    }

    // (a) The genuine envelope tampered with, from its own sender: refused, nothing stored.
    for (what, bytes) in tampered_variants(&genuine) {
        let ack = send_raw(&sender, &recipient, bytes).await;
        assert!(
            matches!(
                ack_status(&ack),
                pb::AckStatus::AckRejected | pb::AckStatus::AckUndecryptable
            ),
            "{what}: {ack:?}"
        );
        assert_eq!(ack.id, genuine.id, "{what}");
        assert!(!known(&recipient, &genuine.id), "{what}: stored");
        refusals += 1.0;
    }
    assert_eq!(history_len(), len_before);

    // None of that spoiled the genuine envelope: it is stored.
    let ack = send_raw(&sender, &recipient, wire.clone()).await;
    assert_eq!(ack_status(&ack), pb::AckStatus::AckStored, "{ack:?}");
    let id: MessageId = genuine.id.as_slice().try_into().unwrap();
    assert_eq!(stored(&recipient, &id).unwrap().text, text);

    // (b) Replayed verbatim by its sender: DUPLICATE. Forwarded by anyone else: refused before
    // decrypting (the key belongs to the sender). Either way still one copy.
    let ack = send_raw(&sender, &recipient, wire.clone()).await;
    assert_eq!(ack_status(&ack), pb::AckStatus::AckDuplicate, "{ack:?}");
    let ack = send_raw(&hub, &recipient, wire.clone()).await;
    assert_eq!(ack_status(&ack), pb::AckStatus::AckRejected, "{ack:?}");
    refusals += 1.0;
    let copies = conversation(&recipient, sender.peer_id())
        .iter()
        .filter(|m| m.text == text)
        .count();
    assert_eq!(copies, 1);
    assert_eq!(history_len(), len_before + 1);

    // (c) The same ciphertext under a fresh message id: refused.
    for (from, fresh) in [(&sender, [0x5a; 16]), (&hub, [0xa5; 16])] {
        let ack = send_raw(
            from,
            &recipient,
            envelope(&fresh, genuine.ciphertext.clone()),
        )
        .await;
        assert!(
            matches!(
                ack_status(&ack),
                pb::AckStatus::AckRejected | pb::AckStatus::AckUndecryptable
            ),
            "replayed ciphertext under a fresh id: {ack:?}"
        );
        assert!(!known(&recipient, &fresh));
        refusals += 1.0;
    }
    assert_eq!(history_len(), len_before + 1);

    // (e) Frames no kith node writes, from a bare swarm: no answer, counted before decoding.
    let mut oversized = Vec::new();
    kith_testkit::frame::write_varint((kith_net::dm::MAX_REQUEST + 1) as u64, &mut oversized);
    oversized.resize(oversized.len() + kith_net::dm::MAX_REQUEST + 1, 0xab);
    let mut truncated = Vec::new();
    kith_testkit::frame::write_varint(100, &mut truncated);
    truncated.extend_from_slice(&[1; 10]);
    let endless = vec![0xff; 16];
    let raw = RawPeer::start(&Keypair::generate_ed25519(), Arc::new(|_: &[u8]| None)).unwrap();
    for (what, bytes) in [
        ("over the cap", oversized),
        ("truncated", truncated),
        ("with an endless length prefix", endless),
    ] {
        let answer = raw
            .send(recipient.peer_id(), recipient.tcp_addr(), bytes)
            .await;
        assert!(answer.is_err(), "a frame {what} was answered: {answer:?}");
    }
    wait_until(
        "the recipient to count three refused frames",
        STEP,
        POLL,
        async || recipient.metric(FRAMES_REJECTED) >= frames_before + 3.0,
    )
    .await
    .unwrap();
    assert_eq!(recipient.metric(FRAMES_REJECTED), frames_before + 3.0);
    // A frame exactly at the cap is read and judged: an envelope whose ciphertext is too long.
    let mut at_cap = pb::Envelope {
        id: vec![9; 16],
        ciphertext: Vec::new(),
    };
    let mut fill = kith_net::dm::MAX_REQUEST;
    while {
        at_cap.ciphertext = vec![0x42; fill];
        at_cap.encoded_len() > kith_net::dm::MAX_REQUEST
    } {
        fill -= 1;
    }
    assert_eq!(at_cap.encoded_len(), kith_net::dm::MAX_REQUEST);
    let answer = raw
        .send(
            recipient.peer_id(),
            recipient.tcp_addr(),
            kith_testkit::frame::encode_frame(&at_cap.encode_to_vec()),
        )
        .await
        .expect("a frame at the cap gets an answer");
    let ack = pb::Ack::decode(answer.as_slice()).unwrap();
    assert_eq!(ack_status(&ack), pb::AckStatus::AckRejected, "{ack:?}");
    refusals += 1.0;
    raw.stop().await;
    assert_eq!(recipient.metric(FRAMES_REJECTED), frames_before + 3.0);

    // After all of it the recipient still serves, and counted every refusal.
    let after = send(
        &sender,
        &recipient.peer_id().to_string(),
        "still here after all that",
    )
    .await;
    wait_status(&sender, after.id, MessageStatus::Delivered).await;
    assert_eq!(
        stored(&recipient, &after.id).unwrap().text,
        "still here after all that"
    );
    assert_eq!(recipient.metric(DM_REJECTED) - rejected_before, refusals);

    shutdown_all(vec![hub, sender, recipient]).await.unwrap();
}

/// A relay (or anyone) that got hold of an envelope in transit forwards it to its recipient
/// before the sender gets through. The recipient refuses it (it is not from that peer), and the
/// message still arrives, once, from its real sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_genuine_envelope_forwarded_by_another_peer_is_refused_and_the_message_still_arrives() {
    let text = "forwarded by somebody else first";
    let mut stage = impostor_stage(pb::AckStatus::AckRateLimited).await;
    let rid = stage.recipient.peer_id();
    let sent = send(&stage.sender, &rid.to_string(), text).await;
    assert_eq!(sent.status, MessageStatus::Queued);
    let wire = stage.impostor.next_frame(STEP).await.expect("no frame");
    // The sender is down while the third peer forwards, so it cannot get there first.
    let sender = stage.sender.stop_keeping_home().await.unwrap();
    let recipient = back_from_impostor(stage.impostor, stage.recipient, &stage.hub).await;

    let ack = send_raw(&stage.hub, &recipient, wire).await;
    assert_eq!(ack_status(&ack), pb::AckStatus::AckRejected, "{ack:?}");
    assert!(!known(&recipient, &sent.id));

    let sender = sender.start(vec![stage.hub.tcp_addr()]).await.unwrap();
    wait_status(&sender, sent.id, MessageStatus::Delivered).await;
    let copies = conversation(&recipient, sender.peer_id())
        .iter()
        .filter(|m| m.text == text)
        .count();
    assert_eq!(copies, 1);

    shutdown_all(vec![stage.hub, sender, recipient])
        .await
        .unwrap();
}

/// The same, stricter: a refused frame must leave the recipient's Olm state as it was, so the
/// real sender's byte-identical envelope is still stored (no re-keying forced by a third peer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_envelope_does_not_consume_the_recipients_olm_state() {
    let (hub, sender, recipient, wire, genuine, text) = held_envelope().await.into_parts();

    let ack = send_raw(&hub, &recipient, wire.clone()).await;
    assert_eq!(ack_status(&ack), pb::AckStatus::AckRejected, "{ack:?}");
    assert!(!known(&recipient, &genuine.id));

    let ack = send_raw(&sender, &recipient, wire).await;
    assert_eq!(
        ack_status(&ack),
        pb::AckStatus::AckStored,
        "the real sender's envelope after a third peer forwarded it: {ack:?}"
    );
    let id: MessageId = genuine.id.as_slice().try_into().unwrap();
    assert_eq!(stored(&recipient, &id).unwrap().text, text);

    shutdown_all(vec![hub, sender, recipient]).await.unwrap();
}

/// Message ids travel in clear (so retries can be deduplicated before decrypting), so whoever
/// holds an envelope in transit (a mailbox relay) knows its id before the recipient does. Such a
/// peer sends the recipient a message of its own under that id first. The real message must still
/// be stored when it arrives, not be taken for a duplicate of another peer's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_peers_message_under_the_same_id_does_not_suppress_the_real_one() {
    let (squatter, sender, recipient, wire, genuine, text) = held_envelope().await.into_parts();
    let id: MessageId = genuine.id.as_slice().try_into().unwrap();
    let rid = recipient.peer_id();

    // The squatter queues a message of its own under that id (any client can pick its ids) and
    // gets it delivered.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let squat = "I was here first";
    let payload = pb::DirectPayload {
        id: id.to_vec(),
        sender: squatter.peer_id().to_bytes(),
        recipient: rid.to_bytes(),
        sent_at_ms: now,
        body: Some(pb::direct_payload::Body::Text(squat.into())),
    };
    let message = Message {
        id,
        peer_id: rid.to_bytes(),
        outgoing: true,
        text: squat.into(),
        sent_at_ms: now,
        received_at_ms: 0,
        status: MessageStatus::Queued,
        failure: String::new(),
    };
    let item = kith_store::OutboxItem {
        id,
        peer_id: rid.to_bytes(),
        payload: payload.encode_to_vec(),
        envelope: None,
        attempts: 0,
        next_attempt_ms: 0,
        created_ms: now,
        receipt: false,
        deposited: false,
        control: false,
        expires_ms: 0,
    };
    squatter
        .node()
        .probe()
        .plant_outbox(Some(&message), &item)
        .unwrap();
    // Sending anything to the recipient delivers the whole outbox for it, oldest first.
    let nudge = send(&squatter, &rid.to_string(), "hello").await;
    wait_status(&squatter, nudge.id, MessageStatus::Delivered).await;
    wait_status(&squatter, id, MessageStatus::Delivered).await;
    let squatted = stored(&recipient, &id).unwrap();
    assert_eq!(squatted.peer_id, squatter.peer_id().to_bytes());

    // The real message arrives.
    let ack = send_raw(&sender, &recipient, wire).await;
    assert_eq!(
        ack_status(&ack),
        pb::AckStatus::AckStored,
        "the real message after another peer used its id: {ack:?}"
    );
    let from_sender = conversation(&recipient, sender.peer_id());
    assert!(
        from_sender.iter().any(|m| m.text == text),
        "the real message is not in the recipient's conversation with its sender: {from_sender:?}"
    );

    shutdown_all(vec![squatter, sender, recipient])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_carry_no_plaintext() {
    let text = "violet-kestrel-4471: meet at the north gate at 06:15 and bring the blue umbrella";
    // The impostor answers RATE_LIMITED, so the sender keeps the message and retries.
    let mut stage = impostor_stage(pb::AckStatus::AckRateLimited).await;
    let rid = stage.recipient.peer_id();
    let sid = stage.sender.peer_id();
    let sent = send(&stage.sender, &rid.to_string(), text).await;
    assert_eq!(sent.status, MessageStatus::Queued);

    // What crossed the wire: the envelope, and nothing of the text or of who it is for.
    let first = stage.impostor.next_frame(STEP).await.expect("no frame");
    assert_no_plaintext("the frame on the wire", &first, text);
    for (who, id) in [("sender", sid), ("recipient", rid)] {
        assert!(
            !contains(&first, &id.to_bytes()),
            "the {who}'s peer id is on the wire"
        );
    }
    let env = pb::Envelope::decode(first.as_slice()).unwrap();
    assert_eq!(env.id, sent.id);
    assert_eq!(
        env.encode_to_vec(),
        first,
        "an envelope has nothing but an id and a ciphertext"
    );
    let olm = pb::OlmMessage::decode(env.ciphertext.as_slice()).unwrap();
    assert_eq!(olm.encode_to_vec(), env.ciphertext);

    // The sender's outbox entry holds the same bytes.
    let entry = stage
        .sender
        .node()
        .probe()
        .outbox()
        .unwrap()
        .into_iter()
        .find(|i| i.id == sent.id)
        .expect("the message waits in the outbox");
    let stored_envelope = entry
        .envelope
        .clone()
        .expect("encrypted before it was sent");
    assert_eq!(stored_envelope, first);
    assert_no_plaintext("the stored envelope", &stored_envelope, text);

    // A retry sends the very same bytes.
    let second = stage
        .impostor
        .next_frame(Duration::from_secs(10))
        .await
        .expect("no retry");
    assert_eq!(second, first, "a retry re-sends the same envelope");

    // The real recipient comes back and gets it; both histories hold the text.
    let recipient = back_from_impostor(stage.impostor, stage.recipient, &stage.hub).await;
    wait_status(&stage.sender, sent.id, MessageStatus::Delivered).await;
    assert_eq!(stored(&recipient, &sent.id).unwrap().text, text);
    assert_eq!(stored(&stage.sender, &sent.id).unwrap().text, text);
    let copies = conversation(&recipient, sid)
        .iter()
        .filter(|m| m.text == text)
        .count();
    assert_eq!(copies, 1);

    shutdown_all(vec![stage.hub, stage.sender, recipient])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_rate_limited_and_nothing_is_lost() {
    const FLOOD: usize = 60;
    let limited = Options {
        dm_rate: (20.0, 10.0),
        ..dm_options()
    };
    let recipient = TestNode::start_with(Vec::new(), limited, Transports::Tcp)
        .await
        .unwrap();
    let sender = TestNode::start_with(vec![recipient.tcp_addr()], dm_options(), Transports::Tcp)
        .await
        .unwrap();
    let nodes = vec![recipient, sender];
    ready(&nodes).await;
    let (recipient, sender) = (&nodes[0], &nodes[1]);
    let target = recipient.peer_id().to_string();

    let texts: Vec<String> = (0..FLOOD)
        .map(|i| format!("flood message {i:02}"))
        .collect();
    let started = Instant::now();
    let sent = futures::future::join_all(texts.iter().map(|t| send(sender, &target, t))).await;
    let ids: HashSet<MessageId> = sent.iter().map(|s| s.id).collect();
    assert_eq!(ids.len(), FLOOD, "every message has its own id");

    let arrived = wait_until(
        "every flood message to be delivered",
        FLOOD_DELIVERY,
        POLL,
        async || {
            sender.node().outbox_len() == 0
                && conversation(recipient, sender.peer_id()).len() >= FLOOD
        },
    )
    .await;
    if let Err(e) = arrived {
        panic!(
            "{e}: {} of {FLOOD} arrived, {} still in the outbox",
            conversation(recipient, sender.peer_id()).len(),
            sender.node().outbox_len()
        );
    }
    eprintln!(
        "{FLOOD} messages through the rate limit in {:?}",
        started.elapsed()
    );

    // Exactly once each, the same on both sides, all delivered.
    let conv = assert_same_conversation(sender, recipient);
    assert_eq!(conv.len(), FLOOD);
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for m in &conv {
        *counts.entry(m.text.as_str()).or_default() += 1;
        assert!(ids.contains(&m.id));
        assert_eq!(m.status, MessageStatus::Delivered, "{m:?}");
    }
    assert!(
        texts.iter().all(|t| counts.get(t.as_str()) == Some(&1)),
        "{counts:?}"
    );
    // Some were refused for rate (nothing else is refused here) and the sender retried them.
    let refused = recipient.metric(DM_REJECTED);
    assert!(refused > 0.0, "the rate limit never refused anything");
    eprintln!("the recipient refused {refused} attempts for rate");

    shutdown_all(nodes).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_oversized_and_unknown_recipients_are_clear_errors() {
    let mut nodes = network(2).await.into_iter();
    let (a, b) = (nodes.next().unwrap(), nodes.next().unwrap());
    let b_id = b.peer_id().to_string();

    for text in ["", " ", " \n\t  \r\n"] {
        let err = send_err(&a, &b_id, text).await;
        assert!(
            matches!(err, ServiceError::InvalidMessage(_)),
            "{text:?}: {err:?}"
        );
    }
    let too_long = "x".repeat(MAX_TEXT_BYTES + 1);
    let err = send_err(&a, &b_id, &too_long).await;
    assert!(matches!(err, ServiceError::InvalidMessage(_)), "{err:?}");
    assert!(
        err.to_string().contains(&MAX_TEXT_BYTES.to_string()),
        "{err}"
    );
    // The limit is in bytes, not characters.
    let wide = format!("{}x", "é".repeat(MAX_TEXT_BYTES / 2));
    assert_eq!(wide.len(), MAX_TEXT_BYTES + 1);
    let err = send_err(&a, &b_id, &wide).await;
    assert!(matches!(err, ServiceError::InvalidMessage(_)), "{err:?}");
    for target in [
        "nobody-has-this-name",
        "not a name, not a peer id!",
        "12D3KooWnotreallyapeerid",
    ] {
        let err = send_err(&a, target, "hello?").await;
        assert!(
            matches!(err, ServiceError::UnknownRecipient(_)),
            "{target}: {err:?}"
        );
        assert!(err.to_string().contains(target), "{err}");
    }
    let err = send_err(&a, &a.peer_id().to_string(), "note to self").await;
    assert!(matches!(err, ServiceError::InvalidMessage(_)), "{err:?}");

    // Nothing of it was stored, on either side.
    for node in [&a, &b] {
        assert_eq!(node.node().outbox_len(), 0);
        assert!(node.node().inbox().unwrap().is_empty());
    }
    assert!(conversation(&a, b.peer_id()).is_empty());

    // Exactly at the limit is fine, and arrives whole.
    let longest = "y".repeat(MAX_TEXT_BYTES);
    let sent = send(&a, &b_id, &longest).await;
    wait_status(&a, sent.id, MessageStatus::Delivered).await;
    assert_eq!(stored(&b, &sent.id).unwrap().text, longest);

    shutdown_all(vec![a, b]).await.unwrap();
}

/// Issue 16: a send to a pinned name, or a petname, while the node has no peer at all is queued
/// (not refused: the pin answers without the network), and it is delivered once the recipient
/// is back, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_to_a_pinned_name_with_no_network_is_queued_and_delivered_when_it_returns() {
    let mut nodes = network(3).await.into_iter();
    let (hub, owner, sender) = (
        nodes.next().unwrap(),
        nodes.next().unwrap(),
        nodes.next().unwrap(),
    );
    let owner_id = owner.peer_id();
    tokio::time::timeout(SEND, owner.node().register_name("lea", None))
        .await
        .expect("register_name hung")
        .unwrap();
    sender
        .node()
        .add_contact("cousin", &owner_id.to_string())
        .await
        .unwrap();
    // The first send resolves and pins the name.
    let first = send(&sender, "lea", "before the network went away").await;
    assert_eq!(first.peer, owner_id);
    wait_status(&sender, first.id, MessageStatus::Delivered).await;

    // Everyone but the sender goes away; the owner keeps its home to come back.
    let owner = owner.stop_keeping_home().await.unwrap();
    shutdown_all(vec![hub]).await.unwrap();
    wait_until("the sender to have no peers", MESH, POLL, async || {
        sender.connected_peers().await.is_ok_and(|p| p.is_empty())
    })
    .await
    .unwrap();

    let by_name = send(&sender, "lea", "sent with no network, by name").await;
    let by_petname = send(&sender, "cousin", "sent with no network, by petname").await;
    for sent in [&by_name, &by_petname] {
        assert_eq!(sent.peer, owner_id);
        assert_eq!(sent.status, MessageStatus::Queued, "nobody to deliver to");
    }

    // The owner comes back and dials the sender: the queue drains, exactly once each.
    let owner = owner.start(vec![sender.tcp_addr()]).await.unwrap();
    for sent in [&by_name, &by_petname] {
        wait_status(&sender, sent.id, MessageStatus::Delivered).await;
        wait_status(&owner, sent.id, MessageStatus::Received).await;
    }
    let on_owner = assert_same_conversation(&owner, &sender);
    assert_eq!(
        on_owner.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        [
            "before the network went away",
            "sent with no network, by name",
            "sent with no network, by petname"
        ]
    );
    shutdown_all(vec![owner, sender]).await.unwrap();
}

/// Messages on a direct-message link when their recipient stops are neither lost nor stored
/// twice: the link breaks with envelopes unanswered, the sender sends them again (as requests,
/// then on a new link once the recipient is back), and the recipient answers those it had
/// stored as duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_on_a_link_survives_the_recipients_restart_exactly_once() {
    let mut nodes = network(3).await.into_iter();
    let (hub, sender, recipient) = (
        nodes.next().unwrap(),
        nodes.next().unwrap(),
        nodes.next().unwrap(),
    );
    let target = recipient.peer_id().to_string();
    let warm = send(&sender, &target, "warm-up").await;
    wait_status(&sender, warm.id, MessageStatus::Delivered).await;
    // After a first message the sender opens a link, and the next ones go on it.
    wait_until("the sender to open a link", MESH, POLL, async || {
        sender
            .node()
            .status()
            .await
            .is_ok_and(|s| s.net.dm_link_peers == 1)
    })
    .await
    .unwrap();

    // Four senders of 20 messages each; the recipient stops once some have arrived.
    const TASKS: usize = 4;
    const EACH: usize = 20;
    let sender = Arc::new(sender);
    let sends: Vec<_> = (0..TASKS)
        .map(|t| {
            let (sender, target) = (Arc::clone(&sender), target.clone());
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..EACH {
                    ids.push(send(&sender, &target, &format!("burst {t}-{i}")).await.id);
                }
                ids
            })
        })
        .collect();
    let sender_id = sender.peer_id();
    wait_until(
        "part of the burst to arrive",
        DELIVERY,
        Duration::from_millis(5),
        async || conversation(&recipient, sender_id).len() > 10,
    )
    .await
    .unwrap();
    let recipient = recipient.stop_keeping_home().await.unwrap();
    let mut ids = Vec::new();
    for task in sends {
        ids.extend(task.await.unwrap());
    }
    // The stop came in the middle of the burst: part of it had arrived, part had not.
    let arrived = recipient
        .with_store(|store, _| {
            ids.iter()
                .filter(|id| {
                    store
                        .messages()
                        .is_known_from(&sender_id.to_bytes(), id)
                        .unwrap()
                })
                .count()
        })
        .await
        .unwrap();
    assert!(
        arrived > 0 && arrived < ids.len(),
        "{arrived} of {} had arrived when the recipient stopped",
        ids.len()
    );
    let recipient = recipient.start(vec![hub.tcp_addr()]).await.unwrap();
    for id in &ids {
        wait_status(&sender, *id, MessageStatus::Delivered).await;
    }

    // Every message once, on both sides.
    let on_recipient = assert_same_conversation(&recipient, &sender);
    assert_eq!(on_recipient.len(), 1 + TASKS * EACH);
    let texts: HashSet<&str> = on_recipient.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts.len(), 1 + TASKS * EACH, "a text stored twice");
    let sender = Arc::into_inner(sender).unwrap();
    shutdown_all(vec![hub, sender, recipient]).await.unwrap();
}
