//! Names across a real DHT: registering on one node and resolving from the far side of the
//! network, an owner that restarts, first come first served, forged and malformed records pushed
//! straight into holders, holders that lie, a pinned name whose key changes, unknown and invalid
//! names, and contacts, petnames and invites.
//!
//! Every network here is at least ten real nodes where the issue asks for it (resolution,
//! restarts, refusals, forgeries, conflicts); every node uses [`name_options`] (8-bit proof of
//! work, no automatic re-publish unless a test asks for one) and listens on TCP only (see
//! [`Transports::Tcp`]: several tests stop nodes and then time lookups).

// Test code: failing loudly is the point. ServiceError carries both peer ids of a conflict, so it
// is large; kith-service allows that the same way.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::result_large_err
)]

use std::time::Duration;

use kith_net::{Multiaddr, PeerId, RequestError};
use kith_service::{Options, ResolvedFrom, ServiceError};
use libp2p::kad::KBucketKey;

use crate::api::Served;
use crate::harness::{
    LyingHolder, POLL, STEP, TestNode, Transports, chain_with, name_options, now_ms, shutdown_all,
    star_with, wait_for_mesh, wait_until,
};

/// Nodes in each network that stands for "the DHT".
const NETWORK: usize = 10;
/// For ten nodes on a loaded two-core machine to all know each other (seconds in practice).
const MESH: Duration = Duration::from_secs(30);
/// Upper bound on one register or resolve call (a DHT walk over loopback, PoW at 8 bits).
const LOOKUP: Duration = Duration::from_secs(20);
/// Holders' refusal counter.
const PUTS_REJECTED: &str = "kith_dht_puts_rejected_total";

/// A names-test node with the given options, listening on TCP only.
async fn start_node(bootstrap: Vec<Multiaddr>, options: Options) -> anyhow::Result<TestNode> {
    TestNode::start_with(bootstrap, options, Transports::Tcp).await
}

/// Bounded `register_name(name, None)`.
async fn register(node: &TestNode, name: &str) -> Result<kith_service::Registration, ServiceError> {
    tokio::time::timeout(LOOKUP, node.node().register_name(name, None))
        .await
        .unwrap_or_else(|_| panic!("register_name({name}) on {} hung", node.peer_id()))
}

/// Bounded `resolve_name` (a pinned name answers from the node).
async fn resolve(node: &TestNode, name: &str) -> Result<kith_service::Resolution, ServiceError> {
    tokio::time::timeout(LOOKUP, node.node().resolve_name(name))
        .await
        .unwrap_or_else(|_| panic!("resolve_name({name}) on {} hung", node.peer_id()))
}

/// Bounded `resolve_name_fresh` (always the DHT).
async fn resolve_fresh(
    node: &TestNode,
    name: &str,
) -> Result<kith_service::Resolution, ServiceError> {
    tokio::time::timeout(LOOKUP, node.node().resolve_name_fresh(name))
        .await
        .unwrap_or_else(|_| panic!("resolve_name_fresh({name}) on {} hung", node.peer_id()))
}

/// The value `node` holds under `key` in its own DHT store, if any ([`TestNode::local_value`]).
async fn local_value(node: &TestNode, key: &[u8]) -> Option<Vec<u8>> {
    node.local_value(key, LOOKUP).await.unwrap()
}

/// Waits until every node holds exactly `value` under `key` in its own DHT store.
async fn wait_for_copies(nodes: &[TestNode], key: &[u8], value: &[u8], what: &str) {
    let held = wait_until(what, LOOKUP, POLL, async || {
        for node in nodes {
            if local_value(node, key).await.as_deref() != Some(value) {
                return false;
            }
        }
        true
    })
    .await;
    if let Err(e) = held {
        let mut copies = Vec::new();
        for node in nodes {
            copies.push(local_value(node, key).await.map(|v| v == value));
        }
        panic!(
            "{e}; per node, holds the value (Some(true)), another (Some(false)), nothing (None): {copies:?}"
        );
    }
}

/// Every node still answers `status()` (nothing crashed, no event loop is stuck).
async fn all_alive(nodes: &[TestNode]) {
    for node in nodes {
        let status = tokio::time::timeout(STEP, node.node().status())
            .await
            .unwrap_or_else(|_| panic!("{} does not answer status()", node.peer_id()))
            .unwrap_or_else(|e| panic!("{} status() failed: {e}", node.peer_id()));
        assert_eq!(status.net.peer_id, node.peer_id());
    }
}

/// A star of `n` nodes over TCP with `options`, once every node is in the mesh.
async fn meshed_star(n: usize, options: Options) -> Vec<TestNode> {
    let nodes = star_with(n, options, Transports::Tcp).await.unwrap();
    wait_for_mesh(&nodes, &[], MESH).await.unwrap();
    nodes
}

/// Shuts down every node but `keep` and waits until it has no peers left; returns it.
async fn alone(nodes: Vec<TestNode>, keep: PeerId) -> TestNode {
    let (mut kept, others): (Vec<_>, Vec<_>) = nodes.into_iter().partition(|n| n.peer_id() == keep);
    shutdown_all(others).await.unwrap();
    let node = kept.pop().unwrap();
    wait_until("the node to have no peers", MESH, POLL, async || {
        node.connected_peers().await.is_ok_and(|p| p.is_empty())
    })
    .await
    .unwrap();
    node
}

/// The owner of `reg`'s claim goes away for good; once the claim has lapsed, `newcomer` claims
/// the name.
async fn lapse_and_claim(
    owner: TestNode,
    reg: &kith_service::Registration,
    newcomer: &TestNode,
    name: &str,
) {
    owner.shutdown().await.unwrap();
    let expires_at = reg.record.params().expires_at_ms;
    tokio::time::sleep(Duration::from_millis(
        expires_at.saturating_sub(now_ms()) + 500,
    ))
    .await;
    register(newcomer, name).await.unwrap();
}

/// Registers `names` on a node that knows no peers: the claims are signed, with valid proof of
/// work, and stored only there. Returns the node (still isolated) and the record bytes with
/// their DHT keys, in the order of `names`.
async fn isolated_claims(names: &[&str]) -> (TestNode, Vec<(Vec<u8>, Vec<u8>)>) {
    let thief = start_node(Vec::new(), name_options()).await.unwrap();
    let mut claims = Vec::new();
    for name in names {
        let reg = register(&thief, name).await.unwrap();
        assert!(!reg.published, "an isolated node has nobody to publish to");
        assert_eq!(reg.record.peer_id(), thief.peer_id());
        claims.push((reg.record.name().dht_key(), reg.record.to_bytes().to_vec()));
    }
    (thief, claims)
}

/// Flips the last byte of an encoded record: the last byte of its signature.
fn tampered(bytes: &[u8]) -> Vec<u8> {
    let mut bad = bytes.to_vec();
    if let Some(last) = bad.last_mut() {
        *last ^= 0x01;
    }
    bad
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_registered_on_one_node_resolves_from_the_far_end_of_the_network() {
    let nodes = chain_with(NETWORK, name_options(), Transports::Tcp)
        .await
        .unwrap();
    wait_for_mesh(&nodes, &[], MESH).await.unwrap();
    let owner = &nodes[0];

    let reg = register(owner, "alice").await.unwrap();
    assert_eq!(reg.record.peer_id(), owner.peer_id());
    assert_eq!(reg.record.name().as_str(), "alice");
    assert_eq!(reg.record.params().seq, 1);
    assert!(!reg.renewed, "a first claim is not a renewal");
    assert!(reg.published, "ten nodes are there to take the claim");
    assert!(
        !reg.record.params().addrs.is_empty(),
        "the claim carries the owner's addresses"
    );

    // The node whose id is farthest from the owner's in Kademlia's XOR metric.
    let owner_key = KBucketKey::from(owner.peer_id());
    let farthest = nodes[1..]
        .iter()
        .max_by_key(|n| owner_key.distance(&KBucketKey::from(n.peer_id())))
        .unwrap();
    let first = resolve(farthest, "alice").await.unwrap();
    assert_eq!(first.peer_id, owner.peer_id());
    assert_eq!(
        first.record.as_ref().unwrap().to_bytes(),
        reg.record.to_bytes()
    );
    assert!(first.newly_pinned, "the first resolution pins");
    assert_eq!(first.source, ResolvedFrom::Network);
    assert!(first.holders >= 1);
    assert!(first.rivals.is_empty(), "{:?}", first.rivals);
    let again = resolve(farthest, "ALICE").await.unwrap();
    assert_eq!(again.peer_id, owner.peer_id());
    assert!(!again.newly_pinned, "the second resolution finds the pin");
    assert_eq!(again.pinned_at_ms, first.pinned_at_ms);
    assert_eq!(again.source, ResolvedFrom::Cache, "answered from the pin");
    assert_eq!(again.holders, first.holders);
    let asked = resolve_fresh(farthest, "alice").await.unwrap();
    assert_eq!(asked.source, ResolvedFrom::Network);
    assert_eq!(asked.peer_id, owner.peer_id());
    assert!(!asked.newly_pinned);

    // A node that joins at the far end of the chain after the claim went out holds no copy: its
    // answer has to come from a real lookup through the others.
    let late = start_node(vec![nodes[NETWORK - 1].tcp_addr()], name_options())
        .await
        .unwrap();
    wait_until(
        "the late node to know most of the network",
        MESH,
        POLL,
        async || late.routing_table().await.is_ok_and(|t| t.len() >= 5),
    )
    .await
    .unwrap();
    let key = reg.record.name().dht_key();
    assert_eq!(local_value(&late, &key).await, None, "no local copy");
    let from_late = resolve(&late, "alice").await.unwrap();
    assert_eq!(from_late.peer_id, owner.peer_id());
    assert!(from_late.newly_pinned);
    assert!(from_late.holders >= 1);
    let from_late_again = resolve(&late, "alice").await.unwrap();
    assert!(!from_late_again.newly_pinned);
    assert_eq!(from_late_again.peer_id, owner.peer_id());

    let mut all = nodes;
    all.push(late);
    shutdown_all(all).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_owner_keeps_its_name_and_publishes_it_again() {
    let mut nodes = meshed_star(NETWORK, name_options()).await;
    let hub = nodes[0].tcp_addr();
    let owner = nodes.remove(1);
    let owner_id = owner.peer_id();
    let reg = register(&owner, "bob").await.unwrap();
    assert!(reg.published);
    let pinned_early = resolve(&nodes[4], "bob").await.unwrap();
    assert_eq!(pinned_early.peer_id, owner_id);

    // Joins after the claim went out, so it holds nothing until the owner publishes again.
    let joiner = start_node(vec![hub.clone()], name_options()).await.unwrap();
    wait_for_mesh(std::slice::from_ref(&joiner), &[owner_id], MESH)
        .await
        .unwrap();
    let key = reg.record.name().dht_key();
    assert_eq!(local_value(&joiner, &key).await, None, "no local copy");

    // Same home, same key, new ports; this run re-publishes on its own shortly after start.
    let restart_options = Options {
        first_republish_after: Duration::from_secs(2),
        ..name_options()
    };
    let owner = owner
        .restart_with(vec![hub], restart_options)
        .await
        .unwrap();
    assert_eq!(owner.peer_id(), owner_id, "the identity survives a restart");
    let own = owner.node().own_names().unwrap();
    assert_eq!(own.len(), 1, "the claim survives a restart");
    assert_eq!(own[0].name().as_str(), "bob");
    assert_eq!(own[0].to_bytes(), reg.record.to_bytes());

    // The automatic re-publish reaches the node that had no copy.
    let republished = wait_until(
        "the restarted owner's automatic re-publish to reach the late joiner",
        LOOKUP,
        POLL,
        async || local_value(&joiner, &key).await.as_deref() == Some(reg.record.to_bytes()),
    )
    .await;
    if let Err(e) = republished {
        panic!(
            "{e}; owner routing table: {:?}",
            owner.routing_table().await
        );
    }
    let published = tokio::time::timeout(LOOKUP, owner.node().republish_names())
        .await
        .expect("republish_names hung")
        .unwrap();
    assert!(published > 0, "republish_names published {published}");

    // Still the owner, for a node that pinned it before and for one that never asked.
    let again = resolve(&nodes[4], "bob").await.unwrap();
    assert_eq!(again.peer_id, owner_id);
    assert!(!again.newly_pinned);
    let fresh = resolve(&joiner, "bob").await.unwrap();
    assert_eq!(fresh.peer_id, owner_id);
    assert!(fresh.newly_pinned);

    // And the claim outlives its owner going away: the holders keep serving it.
    owner.shutdown().await.unwrap();
    let without_owner = resolve(&nodes[7], "bob").await.unwrap();
    assert_eq!(without_owner.peer_id, owner_id);

    nodes.push(joiner);
    shutdown_all(nodes).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_cannot_claim_a_held_name() {
    let nodes = meshed_star(NETWORK, name_options()).await;
    let (owner, rival) = (&nodes[2], &nodes[7]);
    let reg = register(owner, "carol").await.unwrap();
    let created = reg.record.params().created_at_ms;

    match register(rival, "Carol").await {
        Err(ServiceError::NameTaken {
            name,
            holder,
            since,
        }) => {
            assert_eq!(name, "carol");
            assert_eq!(holder, owner.peer_id());
            assert!(since.starts_with("20") && since.ends_with('Z'), "{since}");
        }
        other => panic!("a second claim should be NameTaken, got {other:?}"),
    }
    let message = register(rival, "carol").await.unwrap_err().to_string();
    assert!(
        message.contains(&owner.peer_id().to_string()),
        "the refusal names the holder: {message}"
    );
    assert!(
        rival.node().own_names().unwrap().is_empty(),
        "a refused claim is not kept"
    );

    // Nothing changed for anyone else, and the owner may still renew.
    let seen = resolve(&nodes[5], "carol").await.unwrap();
    assert_eq!(seen.peer_id, owner.peer_id());
    let renewal = register(owner, "carol").await.unwrap();
    assert!(renewal.renewed);
    assert_eq!(renewal.record.params().seq, 2);
    assert_eq!(
        renewal.record.params().created_at_ms,
        created,
        "a renewal keeps the original claim time and proof of work"
    );

    shutdown_all(nodes).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_hijacking_and_malformed_records_pushed_into_holders_change_nothing() {
    // The thief claims "dave" (and "eve") first, alone: valid signatures and proof of work, and an
    // earlier claim time than the owner's, which would win a tie.
    let (thief, claims) = isolated_claims(&["dave", "eve"]).await;
    let thief_id = thief.peer_id();
    let (dave_key, thief_dave) = claims[0].clone();
    let (eve_key, _) = claims[1].clone();
    thief.shutdown().await.unwrap();

    let nodes = meshed_star(NETWORK, name_options()).await;
    let owner = &nodes[3];
    let reg = register(owner, "dave").await.unwrap();
    let owner_dave = reg.record.to_bytes().to_vec();
    assert_eq!(reg.record.name().dht_key(), dave_key);
    let dave_replica = |i: usize| reg.record.name().replica_key(i);
    let eve_replica = |i: usize| kith_core::Name::parse("eve").unwrap().replica_key(i);
    wait_for_copies(
        &nodes,
        &dave_key,
        &owner_dave,
        "every node to hold the owner's claim",
    )
    .await;

    // The last node plays the attacker and sends straight to every other node.
    let (sender, holders) = nodes.split_last().unwrap();
    let targets: Vec<PeerId> = holders.iter().map(TestNode::peer_id).collect();
    let before: Vec<f64> = holders.iter().map(|h| h.metric(PUTS_REJECTED)).collect();
    let injections: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        (
            "hijack: the thief's valid claim",
            dave_key.clone(),
            thief_dave.clone(),
        ),
        ("bad signature", dave_key.clone(), tampered(&owner_dave)),
        (
            "garbage bytes",
            dave_key.clone(),
            b"definitely not a name record".to_vec(),
        ),
        (
            "over the record size limit (5 KiB)",
            dave_key.clone(),
            vec![0xA5; 5 * 1024],
        ),
        (
            "the owner's valid claim under another name's key",
            eve_key.clone(),
            owner_dave.clone(),
        ),
        // The same at the other replica keys: every replica is guarded the same way.
        ("hijack at replica 2", dave_replica(2), thief_dave.clone()),
        (
            "bad signature at replica 3",
            dave_replica(3),
            tampered(&owner_dave),
        ),
        (
            "over the size limit at replica 4",
            dave_replica(4),
            vec![0xA5; 5 * 1024],
        ),
        (
            "the owner's valid claim under another name's replica key",
            eve_replica(1),
            owner_dave.clone(),
        ),
    ];
    for (what, key, value) in &injections {
        // Holders acknowledge refused records too (Kademlia always answers a PUT).
        tokio::time::timeout(
            LOOKUP,
            sender
                .node()
                .probe()
                .put_record_to(key.clone(), value.clone(), targets.clone()),
        )
        .await
        .unwrap_or_else(|_| panic!("put_record_to ({what}) hung"))
        .unwrap_or_else(|e| panic!("put_record_to ({what}) failed: {e}"));
    }
    let counted = wait_until(
        "every holder to count each refused record",
        STEP,
        POLL,
        async || {
            holders
                .iter()
                .zip(&before)
                .all(|(h, b)| h.metric(PUTS_REJECTED) >= b + injections.len() as f64)
        },
    )
    .await;
    if let Err(e) = counted {
        let after: Vec<f64> = holders.iter().map(|h| h.metric(PUTS_REJECTED)).collect();
        panic!("{e}; {PUTS_REJECTED} before {before:?}, after {after:?}");
    }

    // Every honest resolver, none of which has asked before, still gets the owner's own record,
    // and no holder serves the thief's.
    for node in holders.iter().filter(|n| n.peer_id() != owner.peer_id()) {
        let r = resolve(node, "dave").await.unwrap();
        assert_eq!(r.peer_id, owner.peer_id(), "resolved on {}", node.peer_id());
        assert_ne!(r.peer_id, thief_id);
        assert_eq!(r.record.as_ref().unwrap().to_bytes(), owner_dave.as_slice());
        assert!(r.newly_pinned);
        assert!(r.rivals.is_empty(), "holders served {:?}", r.rivals);
    }
    // The record stored under the wrong key went nowhere either.
    assert!(matches!(
        resolve(&holders[1], "eve").await,
        Err(ServiceError::NameNotFound(_))
    ));

    // A value over Kademlia's 16 KiB packet limit never reaches a holder's store; whatever the
    // sender's side reports, nobody falls over.
    let oversized = tokio::time::timeout(
        LOOKUP,
        sender.node().probe().put_record_to(
            dave_key.clone(),
            vec![0x5A; 20 * 1024],
            targets.clone(),
        ),
    )
    .await;
    tracing::info!(?oversized, "20 KiB put");
    all_alive(&nodes).await;
    let after_big = resolve(sender, "dave").await.unwrap();
    assert_eq!(
        after_big.record.as_ref().unwrap().to_bytes(),
        owner_dave.as_slice()
    );
    // Every holder still holds the owner's claim itself, untouched.
    wait_for_copies(
        holders,
        &dave_key,
        &owner_dave,
        "the holders to still hold the owner's claim",
    )
    .await;
    wait_for_copies(
        holders,
        &dave_replica(2),
        &owner_dave,
        "the holders to still hold the owner's claim at replica 2",
    )
    .await;

    shutdown_all(nodes).await.unwrap();
}

/// Ten honest holders of the owner's "erin", one liar serving the thief's claim for it and one
/// serving junk, and a resolver that asks every holder (quorum above the network size).
struct LyingNetwork {
    honest: Vec<TestNode>,
    liars: Vec<LyingHolder>,
    resolver: TestNode,
    owner_id: PeerId,
    thief_id: PeerId,
    key: Vec<u8>,
    owner_bytes: Vec<u8>,
    thief_bytes: Vec<u8>,
}

async fn lying_network() -> LyingNetwork {
    let (thief, claims) = isolated_claims(&["erin"]).await;
    let thief_id = thief.peer_id();
    let (key, thief_bytes) = claims[0].clone();
    thief.shutdown().await.unwrap();

    let honest = meshed_star(NETWORK, name_options()).await;
    let owner = &honest[4];
    let reg = register(owner, "erin").await.unwrap();
    let owner_bytes = reg.record.to_bytes().to_vec();
    wait_for_copies(
        &honest,
        &key,
        &owner_bytes,
        "every honest node to hold the owner's claim",
    )
    .await;

    let hub = vec![honest[0].tcp_addr()];
    let forger = LyingHolder::start(hub.clone()).await.unwrap();
    forger.hold(key.clone(), thief_bytes.clone()).await.unwrap();
    let junk = LyingHolder::start(hub.clone()).await.unwrap();
    junk.hold(key.clone(), b"junk".to_vec()).await.unwrap();
    let liars = vec![forger, junk];

    let resolver = start_node(
        hub,
        Options {
            resolve_quorum: 64,
            ..name_options()
        },
    )
    .await
    .unwrap();
    let everyone: Vec<PeerId> = honest
        .iter()
        .map(TestNode::peer_id)
        .chain(liars.iter().map(LyingHolder::peer_id))
        .collect();
    wait_for_mesh(std::slice::from_ref(&resolver), &everyone, MESH)
        .await
        .unwrap();
    LyingNetwork {
        owner_id: owner.peer_id(),
        honest,
        liars,
        resolver,
        thief_id,
        key,
        owner_bytes,
        thief_bytes,
    }
}

impl LyingNetwork {
    /// Every answer the resolver's own lookup of the name's first key got (bounded).
    async fn raw_answers(&self) -> kith_net::GetRecordResult {
        tokio::time::timeout(
            LOOKUP,
            self.resolver
                .node()
                .probe()
                .get_record(self.key.clone(), 64),
        )
        .await
        .expect("get_record hung")
        .unwrap()
    }

    async fn shutdown(self) {
        for liar in self.liars {
            liar.shutdown().await.unwrap();
        }
        let mut nodes = self.honest;
        nodes.push(self.resolver);
        shutdown_all(nodes).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_holder_cannot_outvote_the_holders_of_the_real_claim() {
    let net = lying_network().await;

    // The raw answers: the liar's forged claim and junk did arrive; the junk was dropped by the
    // resolver's own validation, the forged claim (valid on its own) was kept as an answer.
    let raw = net.raw_answers().await;
    let forged = raw
        .answers
        .iter()
        .filter(|a| a.value == net.thief_bytes)
        .count();
    let real = raw
        .answers
        .iter()
        .filter(|a| a.value == net.owner_bytes)
        .count();
    assert_eq!(forged, 1, "one liar serves the forged claim");
    assert!(real >= 2, "honest holders answered: {real}");
    assert_eq!(forged + real, raw.answers.len(), "nothing else got through");
    assert!(raw.rejected >= 1, "the junk answer is rejected");

    // The resolution goes to the owner most holders returned, though the thief claimed earlier;
    // the thief shows up only as an ignored rival.
    let r = resolve(&net.resolver, "erin").await.unwrap();
    assert_eq!(r.peer_id, net.owner_id);
    assert_eq!(
        r.record.as_ref().unwrap().to_bytes(),
        net.owner_bytes.as_slice()
    );
    assert!(r.holders > 1, "holders {}", r.holders);
    assert_eq!(r.rivals, vec![(net.thief_id, 1)]);

    net.shutdown().await;
}

// The issue: invalid answers are "rejected by holders and by resolvers, counted in /metrics".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolvers_count_rejected_answers_in_metrics() {
    let net = lying_network().await;
    let raw = net.raw_answers().await;
    assert!(
        raw.rejected >= 1,
        "the junk answer arrived and was rejected"
    );
    let r = resolve(&net.resolver, "erin").await.unwrap();
    assert_eq!(r.peer_id, net.owner_id);
    let text = net.resolver.node().metrics_text();
    let rejected = net.resolver.metric("kith_dht_answers_rejected_total");
    net.shutdown().await;
    assert!(
        rejected >= 1.0,
        "the junk answer should be counted in kith_dht_answers_rejected_total; metrics:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_name_that_changes_key_is_a_conflict() {
    // Claims live five seconds, so an owner that goes away loses its name quickly.
    let mut options = name_options();
    options.name_rules.max_ttl = Duration::from_secs(5);
    let mut nodes = meshed_star(NETWORK, options).await;
    let first_owner = nodes.remove(1);
    let (pinner, newcomer, bystander) = (&nodes[1], &nodes[2], &nodes[3]);

    let reg = register(&first_owner, "zed").await.unwrap();
    let first_id = first_owner.peer_id();
    let expires_at = reg.record.params().expires_at_ms;
    let pinned = resolve(pinner, "zed").await.unwrap();
    assert_eq!(pinned.peer_id, first_id);
    assert!(pinned.newly_pinned);
    // Gone for good: nobody renews its claim.
    first_owner.shutdown().await.unwrap();

    let wait = Duration::from_millis(expires_at.saturating_sub(now_ms()) + 500);
    assert!(wait < Duration::from_secs(7), "waiting {wait:?}");
    tokio::time::sleep(wait).await;

    // The claim has lapsed, so someone else may take the name.
    let second = register(newcomer, "zed").await.unwrap();
    assert_eq!(second.record.peer_id(), newcomer.peer_id());
    assert!(!second.renewed);

    let left_ms = second
        .record
        .params()
        .expires_at_ms
        .saturating_sub(now_ms());
    assert!(
        left_ms > 1000,
        "the new claim is about to lapse already ({left_ms} ms left)"
    );

    // The node that pinned the first owner refuses to follow the new key, in every path: asked
    // on the network now, then from what that lookup found.
    match resolve_fresh(pinner, "zed").await {
        Err(ServiceError::NameConflict {
            name,
            pinned,
            found,
            ..
        }) => {
            assert_eq!(name, "zed");
            assert_eq!(pinned, first_id);
            assert_eq!(found, newcomer.peer_id());
        }
        other => panic!("expected a NameConflict, got {other:?}"),
    }
    let message = resolve(pinner, "zed").await.unwrap_err().to_string();
    assert!(
        message.contains(&first_id.to_string())
            && message.contains(&newcomer.peer_id().to_string()),
        "the conflict names both keys: {message}"
    );
    let recipient = pinner.node().resolve_recipient("zed").await;
    assert!(
        matches!(recipient, Err(ServiceError::NameConflict { .. })),
        "a recipient must not follow the new key: {recipient:?}"
    );
    let verified = pinner.node().verify("zed").await.map(|v| v.peer_id);
    assert!(
        matches!(verified, Err(ServiceError::NameConflict { .. })),
        "verify must not follow the new key: {verified:?}"
    );
    // A node that never pinned the name simply sees the new owner.
    let fresh = resolve(bystander, "zed").await.unwrap();
    assert_eq!(fresh.peer_id, newcomer.peer_id());

    shutdown_all(nodes).await.unwrap();
}

/// Issue 16: a send to a pinned name answers from the pin (no network call, so it is queued
/// while the node has no peers), and a key change that a background check finds later is refused
/// from then on, with no explicit `resolve` in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_name_answers_from_the_pin_and_a_key_change_found_later_is_refused() {
    let mut options = name_options();
    options.name_rules.max_ttl = Duration::from_secs(5);
    // The claim lapses after 5 s; a check a second after the lookup is due by then.
    options.name_recheck_every = Duration::from_secs(1);
    let mut nodes = meshed_star(5, options).await;
    let first_owner = nodes.remove(1);
    let (pinner, lea_owner, newcomer) = (&nodes[1], &nodes[2], &nodes[3]);

    let reg = register(&first_owner, "kim").await.unwrap();
    register(lea_owner, "lea").await.unwrap();
    let first_id = first_owner.peer_id();
    assert_eq!(resolve(pinner, "kim").await.unwrap().peer_id, first_id);
    assert_eq!(
        resolve(pinner, "lea").await.unwrap().peer_id,
        lea_owner.peer_id()
    );

    // The owner goes away for good and someone else claims the lapsed name.
    lapse_and_claim(first_owner, &reg, newcomer, "kim").await;

    // The first use after that answers from the pin and starts a check; the check's finding is
    // refused on a later use.
    let first = pinner.node().resolve_recipient("kim").await;
    assert_eq!(first.unwrap(), first_id, "the pin answers");
    wait_until(
        "the background check to find the new key",
        LOOKUP,
        POLL,
        async || {
            matches!(
                pinner.node().resolve_recipient("kim").await,
                Err(ServiceError::NameConflict { found, .. }) if found == newcomer.peer_id()
            )
        },
    )
    .await
    .unwrap();
    assert!(matches!(
        pinner.node().send_text("kim", "hi").await,
        Err(ServiceError::NameConflict { .. })
    ));

    // Alone, the pinner still sends to a pinned name: the message is queued, not refused.
    let pinner_id = pinner.peer_id();
    let pinner = alone(nodes, pinner_id).await;
    let sent = tokio::time::timeout(LOOKUP, pinner.node().send_text("lea", "are you there?"))
        .await
        .expect("a send to a pinned name hung")
        .expect("a send to a pinned name with no peers is queued, not refused");
    assert_eq!(sent.status, kith_service::MessageStatus::Queued);
    pinner.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_names_are_not_found_and_invalid_names_say_which_rule_they_break() {
    // Alone, a node cannot look anything up, and does not claim that nobody holds the name.
    let alone = start_node(Vec::new(), name_options()).await.unwrap();
    assert!(
        matches!(
            resolve(&alone, "nobody-here").await,
            Err(ServiceError::Request(RequestError::NoKnownPeers))
        ),
        "without peers there was no real lookup, so it is not NameNotFound"
    );
    alone.shutdown().await.unwrap();

    let nodes = meshed_star(4, name_options()).await;
    let (a, b) = (&nodes[1], &nodes[2]);

    match resolve(b, "nobody-here").await {
        Err(e @ ServiceError::NameNotFound(_)) => {
            assert_eq!(e.to_string(), "no one has claimed 'nobody-here'");
        }
        other => panic!("expected NameNotFound, got {other:?}"),
    }

    let long = "x".repeat(33);
    for (input, rule) in [
        ("ab", "too short"),
        (long.as_str(), "too long"),
        ("al!ce", "'!'"),
        ("two words", "' '"),
        // Latin "p" with Cyrillic "а".
        ("p\u{430}ypal", "mixes letters of different scripts"),
    ] {
        for (op, result) in [
            ("resolve", resolve(b, input).await.map(|_| ())),
            ("register", register(a, input).await.map(|_| ())),
        ] {
            match result {
                Err(e @ ServiceError::InvalidName(_)) => {
                    assert!(e.to_string().contains(rule), "{op} {input:?}: {e}");
                }
                other => panic!("{op} {input:?} should be InvalidName, got {other:?}"),
            }
        }
    }
    assert!(a.node().own_names().unwrap().is_empty());

    // Names are normalized: one claim, however it is typed.
    let reg = register(a, "Jürgen").await.unwrap();
    assert_eq!(reg.record.name().as_str(), "jürgen");
    let r = resolve(b, "JÜRGEN").await.unwrap();
    assert_eq!(r.peer_id, a.peer_id());
    assert!(matches!(
        register(b, "jürgen").await,
        Err(ServiceError::NameTaken { holder, .. }) if holder == a.peer_id()
    ));

    shutdown_all(nodes).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_petnames_and_invites() {
    let nodes = meshed_star(4, name_options()).await;
    let (alice, bob, carol) = (&nodes[1], &nodes[2], &nodes[3]);
    register(alice, "alice").await.unwrap();
    register(carol, "carol").await.unwrap();

    // By name: resolved, pinned, remembered with the name.
    let mum = bob.node().add_contact("Mum", "alice").await.unwrap();
    assert_eq!(mum.petname, "mum");
    assert_eq!(mum.peer_id, alice.peer_id().to_bytes());
    assert_eq!(mum.name, "alice");
    // By peer id, under a petname that is someone else's registered name.
    let alias = bob
        .node()
        .add_contact("carol", &alice.peer_id().to_string())
        .await
        .unwrap();
    assert_eq!(alias.peer_id, alice.peer_id().to_bytes());
    assert_eq!(alias.name, "", "added by peer id, not by name");
    assert!(matches!(
        bob.node().add_contact("MUM", &carol.peer_id().to_string()).await,
        Err(ServiceError::PetnameTaken { peer, .. }) if peer == alice.peer_id()
    ));
    let contacts = bob.node().contacts().unwrap();
    assert_eq!(contacts.len(), 2, "{contacts:?}");

    // Precedence: petname, then name, then peer id.
    let recipient = async |target: &str| {
        tokio::time::timeout(LOOKUP, bob.node().resolve_recipient(target))
            .await
            .expect("resolve_recipient hung")
    };
    assert_eq!(
        recipient("carol").await.unwrap(),
        alice.peer_id(),
        "petname first"
    );
    assert_eq!(recipient("CAROL").await.unwrap(), alice.peer_id());
    assert_eq!(recipient("mum").await.unwrap(), alice.peer_id());
    assert_eq!(
        recipient("alice").await.unwrap(),
        alice.peer_id(),
        "then names"
    );
    assert_eq!(
        recipient(&carol.peer_id().to_string()).await.unwrap(),
        carol.peer_id(),
        "then peer ids"
    );
    assert!(matches!(
        recipient("nobody-at-all").await,
        Err(ServiceError::UnknownRecipient(_))
    ));

    // Safety numbers agree on both sides.
    let bob_side = bob.node().verify("mum").await.unwrap();
    let alice_side = alice
        .node()
        .verify(&bob.peer_id().to_string())
        .await
        .unwrap();
    assert_eq!(bob_side.peer_id, alice.peer_id());
    assert_eq!(alice_side.peer_id, bob.peer_id());
    assert_eq!(bob_side.safety_number, alice_side.safety_number);

    // An invite adds a friend with no lookup at all: the new node knows nobody.
    let invite = alice.node().invite().await.unwrap();
    assert_eq!(invite.peer_id, alice.peer_id());
    assert_eq!(invite.name.as_ref().map(|n| n.as_str()), Some("alice"));
    assert!(!invite.addrs.is_empty());
    let url = invite.to_url();
    assert!(
        url.starts_with(&format!("kith://invite/{}", alice.peer_id())),
        "{url}"
    );
    let dana = start_node(Vec::new(), name_options()).await.unwrap();
    let added = dana.node().add_invite(&url, None).await.unwrap();
    assert_eq!(added.petname, "alice");
    assert_eq!(added.peer_id, alice.peer_id().to_bytes());
    assert_eq!(added.name, "alice");
    assert_eq!(dana.node().contacts().unwrap().len(), 1);
    let dana_side = dana.node().verify("alice").await.unwrap();
    let alice_to_dana = alice
        .node()
        .verify(&dana.peer_id().to_string())
        .await
        .unwrap();
    assert_eq!(dana_side.peer_id, alice.peer_id());
    assert_eq!(dana_side.safety_number, alice_to_dana.safety_number);
    assert_ne!(
        dana_side.safety_number, bob_side.safety_number,
        "each pair has its own number"
    );
    // The invite pinned the name, so a later lookup agrees without a new pin. Dana dialed alice
    // from the invite, so it can look names up now.
    wait_until(
        "dana to have alice in its routing table",
        MESH,
        POLL,
        async || {
            dana.routing_table()
                .await
                .is_ok_and(|t| t.contains(&alice.peer_id()))
        },
    )
    .await
    .unwrap();
    let r = resolve(&dana, "alice").await.unwrap();
    assert_eq!(r.peer_id, alice.peer_id());
    assert!(!r.newly_pinned, "the invite pinned it");
    assert_eq!(
        r.source,
        ResolvedFrom::Pin,
        "answered from the invite's pin"
    );
    assert!(r.record.is_none(), "no claim was fetched for it yet");
    let r = resolve_fresh(&dana, "alice").await.unwrap();
    assert_eq!(r.peer_id, alice.peer_id());
    assert!(!r.newly_pinned, "the lookup agrees with the invite's pin");
    assert_eq!(r.source, ResolvedFrom::Network);

    let mut all = nodes;
    all.push(dana);
    shutdown_all(all).await.unwrap();
}

/// Issue 16: a resolution of a pinned name answers from the node (the pin and its last lookup)
/// without asking the network, so it works with no peer at all; `resolve_name_fresh` still asks
/// the network, and says so when it cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_name_resolves_without_the_network_and_fresh_asks_it() {
    let nodes = meshed_star(4, name_options()).await;
    let (owner, pinner) = (&nodes[1], &nodes[2]);
    let reg = register(owner, "mia").await.unwrap();
    let cold = resolve(pinner, "mia").await.unwrap();
    assert_eq!(cold.source, ResolvedFrom::Network);
    assert!(cold.newly_pinned);
    assert!(
        cold.holders > 1,
        "every node of the star holds the claim: {cold:?}"
    );

    // Everyone else goes away.
    let pinner_id = pinner.peer_id();
    let pinner = alone(nodes, pinner_id).await;

    // Alone, the pinned name still resolves, with what the last lookup found.
    let warm = resolve(&pinner, "MIA").await.unwrap();
    assert_eq!(warm.source, ResolvedFrom::Cache);
    assert_eq!(warm.peer_id, reg.record.peer_id());
    assert_eq!(
        warm.record.as_ref().map(|r| r.to_bytes().to_vec()),
        Some(reg.record.to_bytes().to_vec())
    );
    assert_eq!(warm.holders, cold.holders);
    assert_eq!(warm.replicas, cold.replicas);
    assert_eq!(warm.pinned_at_ms, cold.pinned_at_ms);
    assert_eq!(warm.checked_at_ms, cold.checked_at_ms);
    assert!(!warm.newly_pinned);
    // Asking the network now is a real lookup: alone, only the pinner's own DHT store answers
    // (or nothing does), never the four holders the first lookup counted.
    match resolve_fresh(&pinner, "mia").await {
        Ok(fresh) => {
            assert_eq!(fresh.source, ResolvedFrom::Network);
            assert!(fresh.holders < cold.holders, "{fresh:?} after {cold:?}");
            assert!(fresh.checked_at_ms > cold.checked_at_ms);
            // From now on the warm answer repeats that lookup.
            let after = resolve(&pinner, "mia").await.unwrap();
            assert_eq!(after.source, ResolvedFrom::Cache);
            assert_eq!(after.holders, fresh.holders);
            assert_eq!(after.checked_at_ms, fresh.checked_at_ms);
        }
        Err(e) => tracing::info!(error = %e, "a fresh lookup alone failed, as it may"),
    }
    let after = resolve(&pinner, "mia").await.unwrap();
    assert_eq!(after.peer_id, reg.record.peer_id());
    pinner.shutdown().await.unwrap();
}

/// Issue 16: when a background check finds that a pinned name is held by another key, the next
/// resolution (over the API too) is the conflict, with no explicit `--fresh` in between, and API
/// clients are told at once with a `name.conflict` event on `/v1/events`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_change_found_in_the_background_is_the_next_answer_and_an_api_event() {
    use futures::StreamExt as _;
    use tokio_tungstenite::tungstenite::{
        Message as WsMessage, client::IntoClientRequest as _, http::HeaderValue,
    };

    let mut options = name_options();
    options.name_rules.max_ttl = Duration::from_secs(5);
    options.name_recheck_every = Duration::from_secs(1);
    let mut nodes = meshed_star(5, options).await;
    let first_owner = nodes.remove(1);
    let (pinner, newcomer) = (&nodes[1], &nodes[2]);
    let reg = register(&first_owner, "noa").await.unwrap();
    let first_id = first_owner.peer_id();
    assert_eq!(resolve(pinner, "noa").await.unwrap().peer_id, first_id);

    // The pinner's API, and a client listening to its events.
    let served = Served::start(pinner).await.unwrap();
    let (addr, token) = (served.addr, served.token.clone());
    let api = served.client().unwrap();
    let mut request = format!("ws://{addr}/v1/events?token={}", token.as_str())
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "origin",
        HeaderValue::from_str(&format!("http://{addr}")).unwrap(),
    );
    let (mut events, _) = tokio_tungstenite::connect_async(request).await.unwrap();

    // The owner goes away for good and someone else claims the lapsed name.
    lapse_and_claim(first_owner, &reg, newcomer, "noa").await;

    // The pinned name still answers from the pin (its claim has lapsed, so the pin alone) and
    // starts a check; the check's finding is the answer from then on.
    let first = api.resolve("noa").await.unwrap();
    assert_eq!(first.peer_id, first_id.to_string());
    assert_ne!(first.source, "network", "{first:?}");
    let newcomer_id = newcomer.peer_id().to_string();
    wait_until(
        "a resolution over the API to be the conflict the background check found",
        LOOKUP,
        POLL,
        async || {
            matches!(
                api.resolve("noa").await,
                Err(kith_api::ClientError::Api { status: 409, body })
                    if body.found_peer_id.as_deref() == Some(newcomer_id.as_str())
                        && body.pinned_peer_id == Some(first_id.to_string())
            )
        },
    )
    .await
    .unwrap();

    // The event arrived on the WebSocket.
    let event = tokio::time::timeout(LOOKUP, async {
        while let Some(frame) = events.next().await {
            let Ok(WsMessage::Text(text)) = frame else {
                continue;
            };
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            if value["type"] == "name.conflict" {
                return value;
            }
        }
        panic!("the event stream ended without a name.conflict event");
    })
    .await
    .expect("no name.conflict event on /v1/events");
    assert_eq!(event["name"], "noa");
    assert_eq!(event["pinned_peer_id"], first_id.to_string());
    assert_eq!(event["found_peer_id"], newcomer_id);
    assert_eq!(event["contested"], false);

    // Asking the network now says the same.
    assert!(matches!(
        api.resolve_fresh("noa").await,
        Err(kith_api::ClientError::Api { status: 409, .. })
    ));

    drop(events);
    served.stop().await.unwrap();
    shutdown_all(nodes).await.unwrap();
}

/// Issue 14: `kith doctor` shows when a name we own has a rival claim. Two halves of a network
/// that cannot reach each other each take "ivy" for a different key (the owner first); once
/// they meet, the holders of each half keep their claim, and the owner's doctor report names the
/// rival with its holder count and what to do. Before that, the report says no one else claims it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owners_doctor_report_shows_a_rival_claim_with_its_holders() {
    let ours = star_with(4, name_options(), Transports::Tcp).await.unwrap();
    let theirs = star_with(4, name_options(), Transports::Tcp).await.unwrap();
    wait_for_mesh(&ours, &[], MESH).await.unwrap();
    wait_for_mesh(&theirs, &[], MESH).await.unwrap();
    let (owner, rival) = (&ours[1], &theirs[1]);
    register(owner, "ivy").await.unwrap();
    let served = Served::start(owner).await.unwrap();
    let api = served.client().unwrap();

    let check = |report: &kith_api::DoctorReport| {
        report
            .checks
            .iter()
            .find(|c| c.check == "name_rivals")
            .cloned()
            .expect("a name_rivals check for a node that owns a name")
    };
    let alone = check(&api.doctor().await.unwrap());
    assert_eq!(alone.level, "ok", "{alone:?}");
    assert!(alone.detail.contains("'ivy'"), "{alone:?}");

    // The rival claims the same name later, where no holder knows the owner's claim.
    register(rival, "ivy").await.unwrap();
    // The halves meet.
    for node in &ours {
        node.node()
            .probe()
            .dial(theirs[0].tcp_addr())
            .await
            .unwrap();
    }
    for node in &theirs {
        node.node().probe().dial(ours[0].tcp_addr()).await.unwrap();
    }
    let mut everyone = ours;
    everyone.extend(theirs);
    for node in &everyone {
        let _ = node.node().probe().bootstrap().await;
    }
    wait_for_mesh(&everyone, &[], MESH).await.unwrap();
    let (owner, rival_id) = (&everyone[1], everyone[5].peer_id());

    let claims = owner.node().checkup().await.unwrap().name_claims;
    assert_eq!(claims.checked, vec!["ivy".to_owned()], "{claims:?}");
    assert_eq!(claims.rivals.len(), 1, "{claims:?}");
    let found = &claims.rivals[0];
    assert_eq!(found.name, "ivy");
    assert_eq!(found.rival, rival_id);
    assert!(found.holders >= 1, "{found:?}");
    assert!(found.our_holders >= 1, "{found:?}");

    let report = check(&api.doctor().await.unwrap());
    assert_ne!(report.level, "ok", "{report:?}");
    assert!(
        report.detail.contains(&rival_id.to_string())
            && report
                .detail
                .contains(&format!("{} holder(s)", found.holders)),
        "the report names the rival and its holders: {report:?}"
    );
    assert!(
        report
            .fix
            .as_deref()
            .is_some_and(|f| f.contains("kith invite")),
        "the report says what to do: {report:?}"
    );

    served.stop().await.unwrap();
    shutdown_all(everyone).await.unwrap();
}
