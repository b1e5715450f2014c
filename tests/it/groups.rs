//! Groups between real nodes on loopback, in process: five members who all see every message
//! exactly once and in per-sender order; a member that was offline for 100 messages catching up
//! to the same history; a removed member left without the keys to what follows; a non-member's
//! publish, a forged sender and a replayed envelope rejected by every member; one node in 150
//! groups.
//!
//! Nodes listen on TCP only (some are stopped), publish their key bundles 200 ms after start so
//! the Olm channel that carries invitations and Megolm keys works at once, and catch groups up
//! every 2 s instead of every 30 s.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::result_large_err
)]

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use futures::StreamExt as _;
use kith_net::PeerId;
use kith_proto::v1 as pb;
use kith_service::{GroupId, GroupMessage, Node, Options, group_topic};
use prost::Message as _;

use crate::harness::{
    POLL, TestNode, Transports, holds_for, name_options, shutdown_all, star_with, wait_for_mesh,
    wait_until,
};

/// For a few nodes on loopback to know each other.
const MESH: Duration = Duration::from_secs(30);
/// For group messages, invitations and keys to arrive (gossip, sync, Olm retries).
const ARRIVAL: Duration = Duration::from_secs(60);
const GROUP_REJECTED: &str = "kith_group_rejected_total";

fn group_options() -> Options {
    Options {
        first_republish_after: Duration::from_millis(200),
        group_sync_every: Duration::from_secs(2),
        ..name_options()
    }
}

async fn network(n: usize) -> Vec<TestNode> {
    let nodes = star_with(n, group_options(), Transports::Tcp)
        .await
        .unwrap();
    wait_for_mesh(&nodes, &[], MESH).await.unwrap();
    nodes
}

fn gid(hex_id: &str) -> GroupId {
    hex::decode(hex_id).unwrap().try_into().unwrap()
}

/// `admin` creates a group and invites every other node, which joins once the invitation arrived.
pub(crate) async fn group_of(title: &str, admin: &TestNode, others: &[&TestNode]) -> String {
    let info = admin.node().create_group(title).await.unwrap();
    let id = hex::encode(info.id);
    for other in others {
        admin
            .node()
            .invite_to_group(&id, &other.peer_id().to_string())
            .await
            .unwrap();
    }
    for other in others {
        join_when_invited(other.node(), &id, ARRIVAL).await;
    }
    // Member-list updates travel as direct messages; a member sending before it knows of another
    // member does not share its key with it (that member reads it from its next message on).
    let size = others.len() + 1;
    for node in std::iter::once(admin).chain(others.iter().copied()) {
        wait_until(
            &format!("{} to know all {size} members", node.peer_id()),
            ARRIVAL,
            POLL,
            async || node.node().group(&id).unwrap().members.len() == size,
        )
        .await
        .unwrap();
    }
    id
}

/// Waits (up to `within`) until `node` holds the invitation to group `id`, then joins it.
pub(crate) async fn join_when_invited(node: &Node, id: &str, within: Duration) {
    wait_until(
        &format!("{} to receive the invitation to {id}", node.peer_id()),
        within,
        POLL,
        async || {
            node.group_invitations()
                .unwrap()
                .iter()
                .any(|g| hex::encode(g.id) == id)
        },
    )
    .await
    .unwrap();
    node.join_group(id).await.unwrap();
}

fn history(node: &Node, id: &str) -> Vec<GroupMessage> {
    node.group_history(id, 10_000, None).unwrap().1
}

async fn wait_for_count(node: &Node, id: &str, count: usize) {
    let result = wait_until(
        &format!("{} to hold {count} messages in {id}", node.peer_id()),
        ARRIVAL,
        POLL,
        async || history(node, id).len() >= count,
    )
    .await;
    if let Err(e) = result {
        panic!("{e}; it holds {}", history(node, id).len());
    }
}

/// Every message once, and each sender's messages in sequence order 1, 2, 3, ...
fn assert_complete(messages: &[GroupMessage], senders: &[PeerId], per_sender: u64) {
    let ids: HashSet<_> = messages.iter().map(|m| m.id).collect();
    assert_eq!(ids.len(), messages.len(), "a message is listed twice");
    for sender in senders {
        let seqs: Vec<u64> = messages
            .iter()
            .filter(|m| m.sender == sender.to_bytes())
            .map(|m| m.seq)
            .collect();
        assert_eq!(
            seqs,
            (1..=per_sender).collect::<Vec<_>>(),
            "{sender}'s messages are missing or out of order"
        );
    }
}

fn summary(messages: &[GroupMessage]) -> Vec<(Vec<u8>, u64, String)> {
    messages
        .iter()
        .map(|m| (m.sender.clone(), m.seq, m.text.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_members_get_every_message_once_in_order() {
    let nodes = network(5).await;
    let others: Vec<&TestNode> = nodes[1..].iter().collect();
    let id = group_of("climbing", &nodes[0], &others).await;
    for node in &nodes {
        assert_eq!(node.node().group(&id).unwrap().members.len(), 5);
    }
    const EACH: u64 = 8;
    for round in 1..=EACH {
        for node in &nodes {
            node.node()
                .send_group_text(&id, &format!("{} says {round}", node.peer_id()))
                .await
                .unwrap();
        }
    }
    let senders: Vec<PeerId> = nodes.iter().map(TestNode::peer_id).collect();
    let total = nodes.len() * EACH as usize;
    for node in &nodes {
        wait_for_count(node.node(), &id, total).await;
    }
    // Late duplicates (gossip after sync, sync after gossip) have no event that says they are
    // over: watch for one for a while instead of sleeping before one look.
    holds_for(
        "every member holding exactly the messages sent",
        Duration::from_secs(3),
        POLL,
        async || match nodes
            .iter()
            .map(|n| (n.peer_id(), history(n.node(), &id).len()))
            .find(|(_, held)| *held != total)
        {
            Some((peer, held)) => Err(format!("{peer} holds {held} of {total}")),
            None => Ok(()),
        },
    )
    .await
    .unwrap();
    let reference = summary(&history(nodes[0].node(), &id));
    for node in &nodes {
        let h = history(node.node(), &id);
        assert_eq!(h.len(), total, "{} holds extra messages", node.peer_id());
        assert_complete(&h, &senders, EACH);
        assert_eq!(summary(&h), reference, "histories differ");
        assert_eq!(node.metric(GROUP_REJECTED), 0.0);
        // Members only exchanged group keys over Olm, never a direct message: nobody is a
        // message request (or a conversation) because of that.
        let requests: Vec<_> = node
            .node()
            .inbox()
            .unwrap()
            .into_iter()
            .filter(|c| c.trust == kith_service::Trust::Unknown)
            .map(|c| c.peer)
            .collect();
        assert!(
            requests.is_empty(),
            "{} lists requests {requests:?}",
            node.peer_id()
        );
    }
    shutdown_all(nodes).await.unwrap();
}

/// An admin, a member A and a member B whose key bundle no DHT peer holds (never published
/// here; at scale, a lookup that misses), all meshed. B has written to the admin, so the admin
/// has a session with B and can invite it; A has none and cannot be given one by the DHT.
async fn trio_with_a_member_without_a_bundle() -> Vec<TestNode> {
    let admin = TestNode::start_with(Vec::new(), group_options(), Transports::Tcp)
        .await
        .unwrap();
    let bootstrap = vec![admin.tcp_addr()];
    let a = TestNode::start_with(bootstrap.clone(), group_options(), Transports::Tcp)
        .await
        .unwrap();
    let silent = Options {
        first_republish_after: Duration::from_secs(86_400),
        ..group_options()
    };
    let b = TestNode::start_with(bootstrap, silent, Transports::Tcp)
        .await
        .unwrap();
    let nodes = vec![admin, a, b];
    wait_for_mesh(&nodes, &[], MESH).await.unwrap();
    let (admin, b) = (&nodes[0], &nodes[2]);
    b.node()
        .send_text(&admin.peer_id().to_string(), "add me please")
        .await
        .unwrap();
    wait_until("the admin to hold B's message", ARRIVAL, POLL, async || {
        !admin
            .node()
            .probe()
            .conversation(b.peer_id())
            .unwrap()
            .is_empty()
    })
    .await
    .unwrap();
    nodes
}

/// A's Megolm key cannot be sent to B (the share waits in A's outbox for a bundle that never
/// comes), so B holds A's message without being able to read it. B asks A for the key (an Olm
/// message of its own, which gives A a session to answer on) and reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_without_a_key_bundle_asks_for_the_group_key_and_reads_the_messages() {
    let nodes = trio_with_a_member_without_a_bundle().await;
    let (admin, a, b) = (&nodes[0], &nodes[1], &nodes[2]);
    let id = group_of("no bundle", admin, &[a, b]).await;
    let sent = a.node().send_group_text(&id, "hello B").await.unwrap();
    assert!(
        a.node()
            .group_key_state(&gid(&id))
            .unwrap()
            .shared_with
            .unwrap()
            .contains(&b.peer_id()),
        "A's key was not even queued for B"
    );
    wait_for_count(b.node(), &id, 1).await;
    let held = history(b.node(), &id);
    assert_eq!(held[0].id, sent.id);
    assert_eq!(held[0].text, "hello B");
    assert!(b.metric("kith_group_key_requests_sent_total") >= 1.0);
    assert!(a.metric("kith_group_key_requests_answered_total") >= 1.0);
    // The admin got A's key the usual way and never needed to ask.
    wait_for_count(admin.node(), &id, 1).await;
    assert_eq!(admin.metric("kith_group_key_requests_sent_total"), 0.0);
    shutdown_all(nodes).await.unwrap();
}

/// As above, but B joins only after A wrote: it holds neither A's key nor A's message, and so
/// no head for A to catch up from. The admin's catch-up answer says A has written; B asks A for
/// its current key, which starts its head, and the next catch-up brings the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_that_missed_both_a_key_and_its_messages_learns_of_them_and_reads_them() {
    let nodes = trio_with_a_member_without_a_bundle().await;
    let (admin, a, b) = (&nodes[0], &nodes[1], &nodes[2]);
    let id = hex::encode(admin.node().create_group("joined late").await.unwrap().id);
    for member in [a, b] {
        admin
            .node()
            .invite_to_group(&id, &member.peer_id().to_string())
            .await
            .unwrap();
    }
    join_when_invited(a.node(), &id, ARRIVAL).await;
    wait_until("A to know all 3 members", ARRIVAL, POLL, async || {
        a.node().group(&id).unwrap().members.len() == 3
    })
    .await
    .unwrap();
    let sent = a
        .node()
        .send_group_text(&id, "before you came")
        .await
        .unwrap();
    wait_for_count(admin.node(), &id, 1).await;
    // B was invited before A wrote, so it may read the message; it joins only now.
    join_when_invited(b.node(), &id, ARRIVAL).await;
    wait_for_count(b.node(), &id, 1).await;
    let held = history(b.node(), &id);
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].id, sent.id);
    assert_eq!(held[0].text, "before you came");
    assert!(b.metric("kith_group_key_requests_sent_total") >= 1.0);
    assert!(a.metric("kith_group_key_requests_answered_total") >= 1.0);
    shutdown_all(nodes).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_offline_member_catches_up_on_100_messages() {
    let mut nodes = network(3).await;
    let others: Vec<&TestNode> = nodes[1..].iter().collect();
    let id = group_of("family", &nodes[0], &others).await;
    // Everyone has spoken once, so every member holds every other's key.
    for node in &nodes {
        node.node().send_group_text(&id, "hello").await.unwrap();
    }
    for node in &nodes {
        wait_for_count(node.node(), &id, 3).await;
    }
    let first_session = latest_envelope(nodes[1].node(), &id, nodes[0].peer_id()).session_id;
    let away = nodes.pop().unwrap().stop_keeping_home().await.unwrap();
    // The first member's 100 messages cross its session's rotation (after 100 messages), so the
    // member that is away also needs a key that was made while it was away.
    for i in 0..100 {
        nodes[0]
            .node()
            .send_group_text(&id, &format!("while you were away {i}"))
            .await
            .unwrap();
    }
    for i in 0..10 {
        nodes[1]
            .node()
            .send_group_text(&id, &format!("me too {i}"))
            .await
            .unwrap();
    }
    let rotated = latest_envelope(nodes[0].node(), &id, nodes[0].peer_id()).session_id;
    assert_ne!(rotated, first_session, "no new session after 100 messages");
    let back = away.start(vec![nodes[0].tcp_addr()]).await.unwrap();
    wait_for_count(back.node(), &id, 113).await;
    let expected = summary(&history(nodes[0].node(), &id));
    assert_eq!(expected.len(), 113);
    assert_eq!(summary(&history(back.node(), &id)), expected);
    assert_eq!(summary(&history(nodes[1].node(), &id)), expected);
    nodes.push(back);
    shutdown_all(nodes).await.unwrap();
}

/// The newest envelope `sender` published in `id`, as another member holds it.
fn latest_envelope(holder: &Node, id: &str, sender: PeerId) -> pb::GroupEnvelope {
    let group = gid(id);
    let all = holder
        .probe()
        .group_envelopes(&group, sender, 10_000)
        .unwrap();
    pb::GroupEnvelope::decode(all.last().unwrap().as_slice()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removed_members_and_outsiders_cannot_read_or_post() {
    let nodes = network(4).await;
    let (admin, bob, carol, mallory) = (&nodes[0], &nodes[1], &nodes[2], &nodes[3]);
    let id = group_of("book club", admin, &[bob, carol]).await;
    admin
        .node()
        .send_group_text(&id, "chapter one")
        .await
        .unwrap();
    for node in [bob, carol] {
        wait_for_count(node.node(), &id, 1).await;
    }
    let before = latest_envelope(bob.node(), &id, admin.peer_id());

    // An outsider subscribes and publishes a well-formed, signed envelope of its own.
    let topic = group_topic(&gid(&id));
    mallory
        .node()
        .probe()
        .subscribe(topic.clone())
        .await
        .unwrap();
    let mut forged = pb::GroupEnvelope {
        group_id: gid(&id).to_vec(),
        sender: mallory.peer_id().to_bytes(),
        seq: 1,
        session_id: before.session_id.clone(),
        ciphertext: before.ciphertext.clone(),
        list_version: 1,
        public_key: mallory.keypair().public().encode_protobuf(),
        signature: Vec::new(),
    };
    forged.signature = mallory.keypair().sign(&forged.encode_to_vec()).unwrap();
    // Gossipsub says whether it had a subscribed peer to hand it to; until it has, try again
    // (nothing went out, so nothing is counted twice).
    wait_until(
        "the outsider's envelope to go out",
        MESH,
        POLL,
        async || {
            mallory
                .node()
                .probe()
                .publish(topic.clone(), forged.encode_to_vec())
                .await
                .unwrap()
        },
    )
    .await
    .unwrap();
    // And re-publishes a member's genuine envelope under its own gossip signature.
    let mut replay = before.clone();
    replay.list_version += 1; // different bytes, so gossip does not drop it as a duplicate
    mallory
        .node()
        .probe()
        .publish(topic.clone(), replay.encode_to_vec())
        .await
        .unwrap();
    for node in [admin, bob, carol] {
        wait_until(
            &format!("{} to reject the outsider's messages", node.peer_id()),
            ARRIVAL,
            POLL,
            async || node.metric(GROUP_REJECTED) >= 2.0,
        )
        .await
        .unwrap();
        assert_eq!(
            history(node.node(), &id).len(),
            1,
            "an outsider's message was stored"
        );
    }

    // Carol is removed; everyone learns it.
    admin
        .node()
        .remove_from_group(&id, &carol.peer_id().to_string())
        .await
        .unwrap();
    wait_until("bob to apply the removal", ARRIVAL, POLL, async || {
        bob.node().group(&id).unwrap().members.len() == 2
    })
    .await
    .unwrap();
    wait_until(
        "carol to learn she was removed",
        ARRIVAL,
        POLL,
        async || carol.node().group(&id).unwrap().removed,
    )
    .await
    .unwrap();
    admin
        .node()
        .send_group_text(&id, "chapter two")
        .await
        .unwrap();
    bob.node()
        .send_group_text(&id, "no spoilers")
        .await
        .unwrap();
    wait_for_count(bob.node(), &id, 3).await;
    wait_for_count(admin.node(), &id, 3).await;
    let after = latest_envelope(bob.node(), &id, admin.peer_id());
    assert_ne!(
        after.session_id, before.session_id,
        "no new session after a removal"
    );
    let group = gid(&id);
    let new_session: [u8; 32] = after.session_id.as_slice().try_into().unwrap();
    assert!(
        bob.node()
            .group_key_state(&group)
            .unwrap()
            .sessions_held
            .contains(&new_session)
    );
    // The new session's key was never queued for carol by either sender (each records whom it
    // shared its key with in the transaction that queues it), so it cannot be on its way.
    for sender in [admin, bob] {
        let shared_with = sender
            .node()
            .group_key_state(&group)
            .unwrap()
            .shared_with
            .unwrap();
        assert!(
            !shared_with.contains(&carol.peer_id()),
            "{} queued its new key for the removed member",
            sender.peer_id()
        );
    }
    assert!(
        !carol
            .node()
            .group_key_state(&group)
            .unwrap()
            .sessions_held
            .contains(&new_session),
        "the removed member got the new session key"
    );
    let carol_texts: Vec<String> = history(carol.node(), &id)
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(carol_texts, vec!["chapter one".to_owned()]);
    // Carol's posts are refused now.
    assert!(
        carol
            .node()
            .send_group_text(&id, "still here?")
            .await
            .is_err()
    );
    shutdown_all(nodes).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_in_150_groups_sends_and_receives_in_all() {
    let nodes = network(2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    const GROUPS: usize = 150;
    // Sixteen operations at a time, as a busy user's node would see them.
    let b_id = b.peer_id().to_string();
    let ids: Vec<String> = futures::stream::iter(0..GROUPS)
        .map(|i| {
            let b_id = b_id.clone();
            async move {
                let info = a.node().create_group(&format!("group {i}")).await.unwrap();
                let id = hex::encode(info.id);
                a.node().invite_to_group(&id, &b_id).await.unwrap();
                id
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    wait_until("all invitations to arrive", ARRIVAL, POLL, async || {
        b.node().group_invitations().unwrap().len() == GROUPS
    })
    .await
    .unwrap();
    futures::stream::iter(&ids)
        .for_each_concurrent(16, |id| async move {
            b.node().join_group(id).await.unwrap();
        })
        .await;
    futures::stream::iter(&ids)
        .for_each_concurrent(16, |id| async move {
            a.node().send_group_text(id, "from a").await.unwrap();
            b.node().send_group_text(id, "from b").await.unwrap();
        })
        .await;
    let mut missing = BTreeMap::new();
    let complete = wait_until(
        "every group to hold both messages",
        ARRIVAL * 2,
        POLL * 5,
        async || {
            missing.clear();
            for id in &ids {
                for node in [a, b] {
                    let n = history(node.node(), id).len();
                    if n != 2 {
                        missing.insert(id.clone(), n);
                    }
                }
            }
            missing.is_empty()
        },
    )
    .await;
    if let Err(e) = complete {
        panic!(
            "{e}: {} groups incomplete, e.g. {:?}",
            missing.len(),
            missing.iter().next()
        );
    }
    shutdown_all(nodes).await.unwrap();
}
