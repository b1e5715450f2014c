//! Issue 14: a Sybil minority whose peer ids were generated to be the closest to a name's key.
//!
//! The attack, as filed: the attacker generates identities and keeps those whose ids are closest
//! (Kademlia's XOR metric over the SHA-256 of the id) to the name's first DHT key, runs them as
//! ordinary kith nodes that hold the attacker's own valid claim for the name, and offers one of
//! them as a bootstrap entry. Before replica keys, a fresh resolver asked the closest holders
//! first, stopped at four agreeing ones, and got the attacker.
//!
//! Here the honest owner registers first; the attacker's claim is older (it was signed earlier,
//! alone, so it would win every tie) and its nodes store it under every replica key of the name,
//! bypassing first-come-first-served the way a modified node could. Fresh nodes that never saw
//! the name then resolve it, each bootstrapping from an attacker node and an honest one. Every
//! one must get the honest owner, or a conflict naming both; never the attacker alone.

// Test code: failing loudly is the point. ServiceError carries both peer ids of a conflict, so it
// is large; kith-service allows that the same way.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::result_large_err
)]

use std::time::{Duration, Instant};

use kith_core::{NAME_REPLICAS, Name, select};
use kith_net::{Keypair, Multiaddr, PeerId};
use kith_service::ServiceError;
use libp2p::kad::KBucketKey;

use crate::harness::{
    POLL, TestNode, Transports, name_options, now_ms, shutdown_all, star_with, wait_for_mesh,
    wait_until,
};

/// The contested name.
const NAME: &str = "alice";
/// For twenty nodes on a loaded two-core machine to all know each other.
const MESH: Duration = Duration::from_secs(40);
/// Upper bound on one register or resolve call (five replica walks, maybe twice).
const LOOKUP: Duration = Duration::from_secs(30);
/// Upper bound on identities generated while grinding (the expected count is a few dozen).
const MAX_GRIND: usize = 20_000;

/// What the fresh resolvers got.
#[derive(Debug, Default)]
struct Outcomes {
    /// Resolved to the honest owner.
    honest: usize,
    /// Of those, how many listed the attacker among the rivals.
    attacker_seen: usize,
    /// A conflict naming both owners (nothing pinned).
    conflict: usize,
    /// Of the raw first-key lookups that stop at four agreeing holders (the rule before replica
    /// keys), how many the attacker won: evidence that the ids really were ground.
    old_rule_hijacked: usize,
}

/// Generates identities until `count` of them are closer to `key` (in Kademlia's metric) than
/// every peer in `honest`; returns them, closest first.
fn grind(key: &[u8], honest: &[PeerId], count: usize) -> Vec<Keypair> {
    grind_where(key, honest, count, MAX_GRIND, |_| true)
}

/// [`grind`] keeping only ids that `keep` accepts, within `tries` generated identities.
pub(crate) fn grind_where(
    key: &[u8],
    honest: &[PeerId],
    count: usize,
    tries: usize,
    keep: impl Fn(&PeerId) -> bool,
) -> Vec<Keypair> {
    let target = KBucketKey::new(key.to_vec());
    let closest_honest = honest
        .iter()
        .map(|p| KBucketKey::from(*p).distance(&target))
        .min()
        .expect("an honest network");
    let mut ground = Vec::new();
    for _ in 0..tries {
        let keypair = Keypair::generate_ed25519();
        let id = keypair.public().to_peer_id();
        if keep(&id) && KBucketKey::from(id).distance(&target) < closest_honest {
            ground.push(keypair);
            if ground.len() == count {
                break;
            }
        }
    }
    assert_eq!(
        ground.len(),
        count,
        "{tries} identities did not give {count} ids closer than every honest one"
    );
    ground.sort_by_key(|k| KBucketKey::from(k.public().to_peer_id()).distance(&target));
    ground
}

/// The value `node` holds under `key` in its own DHT store, if any ([`TestNode::local_value`]).
async fn local_value(node: &TestNode, key: &[u8]) -> Option<Vec<u8>> {
    node.local_value(key, LOOKUP).await.unwrap()
}

/// An attacker's claim to `name`, signed by a node with no peers (so published nowhere) and
/// before any honest claim: its peer id and the record's bytes, to be planted later.
pub(crate) async fn claim_alone(name: &str) -> (PeerId, Vec<u8>) {
    let thief = TestNode::start_with(Vec::new(), name_options(), Transports::Tcp)
        .await
        .unwrap();
    let stolen = tokio::time::timeout(LOOKUP, thief.node().register_name(name, None))
        .await
        .expect("isolated register hung")
        .unwrap();
    assert!(!stolen.published);
    let claim = (thief.peer_id(), stolen.record.to_bytes().to_vec());
    thief.shutdown().await.unwrap();
    claim
}

/// Runs the attack with `honest_n` honest nodes and `sybil_n` ground attacker nodes, then
/// `resolvers` fresh nodes resolve the name. Panics on any resolution that follows the attacker
/// or fails otherwise.
async fn attack(honest_n: usize, sybil_n: usize, resolvers: usize) -> Outcomes {
    let name = Name::parse(NAME).unwrap();
    let first_key = name.dht_key();

    // The attacker's claim, signed alone and before the honest owner's: valid signature and
    // proof of work, and the earlier claim time.
    let (attacker_id, attacker_bytes) = claim_alone(NAME).await;

    // The honest network, then attacker nodes with ids closer to the first key than any of it.
    let honest = star_with(honest_n, name_options(), Transports::Tcp)
        .await
        .unwrap();
    let honest_ids: Vec<PeerId> = honest.iter().map(TestNode::peer_id).collect();
    let hub = honest[0].tcp_addr();
    let keys = grind(&first_key, &honest_ids, sybil_n);
    let sybils: Vec<TestNode> = futures::future::try_join_all(keys.into_iter().map(|k| {
        TestNode::start_with_keypair(k, vec![hub.clone()], name_options(), Transports::Tcp)
    }))
    .await
    .unwrap();
    let mut network: Vec<TestNode> = honest;
    network.extend(sybils);
    wait_for_mesh(&network, &[], MESH).await.unwrap();
    let sybil_ids: Vec<PeerId> = network[honest_n..].iter().map(TestNode::peer_id).collect();

    // The honest owner registers first; every node (the attacker's too, running honest code)
    // takes the claim.
    let owner = &network[1];
    let reg = tokio::time::timeout(LOOKUP, owner.node().register_name(NAME, None))
        .await
        .expect("register hung")
        .unwrap();
    assert!(reg.published);
    let owner_id = owner.peer_id();

    // The attacker's nodes replace it with the attacker's claim under every replica key, in
    // their own stores (a local put is never checked) and towards the closest peers (honest
    // holders refuse it).
    for sybil in &network[honest_n..] {
        for key in name.replica_keys() {
            let _ = tokio::time::timeout(
                LOOKUP,
                sybil.node().probe().put_record(key, attacker_bytes.clone()),
            )
            .await
            .expect("attacker put hung");
        }
    }
    for key in name.replica_keys() {
        let sybils = &network[honest_n..];
        wait_until(
            "every attacker node to serve the attacker's claim",
            LOOKUP,
            POLL,
            async || {
                for sybil in sybils {
                    if local_value(sybil, &key).await.as_deref() != Some(&attacker_bytes[..]) {
                        return false;
                    }
                }
                true
            },
        )
        .await
        .unwrap();
    }
    // Honest holders kept the owner's claim at the first key.
    for node in &network[..honest_n] {
        assert_eq!(
            local_value(node, &first_key).await.as_deref(),
            Some(reg.record.to_bytes()),
            "honest holder {} lost the owner's claim",
            node.peer_id()
        );
    }

    // Fresh resolvers, each bootstrapping from the attacker node closest to the key and from
    // the honest hub.
    let closest_sybil = network[honest_n].tcp_addr();
    let bootstrap: Vec<Multiaddr> = vec![closest_sybil, hub.clone()];
    let fresh: Vec<TestNode> = futures::future::try_join_all(
        (0..resolvers)
            .map(|_| TestNode::start_with(bootstrap.clone(), name_options(), Transports::Tcp)),
    )
    .await
    .unwrap();
    let everyone = network.len();
    for resolver in &fresh {
        wait_until(
            "a fresh resolver to know most of the network",
            MESH,
            POLL,
            async || {
                resolver
                    .routing_table()
                    .await
                    .is_ok_and(|t| t.len() >= everyone / 2)
            },
        )
        .await
        .unwrap();
    }

    let mut outcomes = Outcomes::default();
    for resolver in &fresh {
        // The old rule, for the record: one key, stop at four agreeing holders.
        let raw = tokio::time::timeout(
            LOOKUP,
            resolver.node().probe().get_record(first_key.clone(), 4),
        )
        .await
        .expect("raw get hung")
        .unwrap();
        let rules = resolver.node().name_rules().clone();
        let now = now_ms();
        let answers: Vec<select::Answer> = raw
            .answers
            .iter()
            .filter_map(|a| {
                kith_core::NameRecord::verify(&a.value, &rules, now)
                    .ok()
                    .map(|record| select::Answer {
                        holder: a.holder,
                        record,
                    })
            })
            .collect();
        if select::select(&answers).is_some_and(|s| s.record.peer_id() == attacker_id) {
            outcomes.old_rule_hijacked += 1;
        }

        let started = Instant::now();
        let resolved = tokio::time::timeout(LOOKUP, resolver.node().resolve_name(NAME))
            .await
            .unwrap_or_else(|_| panic!("resolve on {} hung", resolver.peer_id()));
        tracing::info!(elapsed = ?started.elapsed(), ?resolved, "fresh resolution");
        match resolved {
            Ok(r) => {
                assert_eq!(
                    r.peer_id, owner_id,
                    "a fresh resolver followed someone other than the honest owner (attacker {attacker_id}): {r:?}"
                );
                assert!(r.newly_pinned);
                assert!(r.replicas * 2 > NAME_REPLICAS || r.rivals.is_empty());
                if r.rivals.iter().any(|(p, _)| *p == attacker_id) {
                    outcomes.attacker_seen += 1;
                }
                outcomes.honest += 1;
            }
            Err(ServiceError::NameConflict {
                pinned,
                found,
                contested,
                ..
            }) => {
                assert!(
                    contested,
                    "nothing was pinned, so the conflict is a contest"
                );
                let mut both = [pinned, found];
                both.sort();
                let mut expected = [owner_id, attacker_id];
                expected.sort();
                assert_eq!(both, expected, "the conflict names both owners");
                assert!(
                    resolver.node().probe().pinned(NAME).unwrap().is_none(),
                    "a contested name is not pinned"
                );
                outcomes.conflict += 1;
            }
            Err(e) => panic!("fresh resolution on {} failed: {e}", resolver.peer_id()),
        }
    }
    tracing::warn!(
        honest_n,
        sybil_n,
        ?outcomes,
        ?sybil_ids,
        "sybil attack outcome"
    );
    assert_eq!(outcomes.honest + outcomes.conflict, resolvers);

    network.extend(fresh);
    shutdown_all(network).await.unwrap();
    outcomes
}

/// 16 honest nodes, 4 attacker nodes (20%) ground to be the closest to the name's first key,
/// one of them a bootstrap entry of every resolver: every fresh resolution gets the honest
/// owner or a conflict. Here it is the honest owner every time: the attacker's ground nodes are
/// outnumbered at the first key too (in a network this small every node holds every key, and
/// the density check counts a cluster ground next to a key only as far as the network
/// plausibly puts nodes there), so it wins no key and is only listed as a rival (a key it won
/// would make the name contested).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifth_of_the_network_with_ground_ids_cannot_take_a_first_resolution() {
    let outcomes = attack(16, 4, 5).await;
    assert_eq!(outcomes.conflict, 0, "{outcomes:?}");
    // The attack is real (`attack` checks that the ground ids are the closest to the first key).
    // How often the rule before replica keys (one key, stop at four agreeing holders) would have
    // been hijacked depends on which holders answer first, which varies with the machine's load,
    // so it is reported, not asserted.
    eprintln!(
        "the rule before replica keys gave the attacker {} of the fresh resolutions",
        outcomes.old_rule_hijacked
    );
}

/// The same at 30% (14 honest, 6 ground): what still holds is the same guarantee, every fresh
/// resolution is the honest owner or a conflict, never the attacker alone. To be followed the
/// attacker must win every replica key the honest owner is seen at (see ARCHITECTURE.md, "Names
/// and Sybils" for how many ground nodes that takes); six nodes next to one key win none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_tenths_of_the_network_with_ground_ids_still_cannot_take_a_first_resolution() {
    attack(14, 6, 5).await;
}
