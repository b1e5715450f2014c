use libp2p::identity::Keypair;

use super::*;

/// A peer id from a seed, so tests and properties are reproducible.
fn peer(seed: u64) -> PeerId {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8] = 0x5a;
    Keypair::ed25519_from_bytes(bytes)
        .map(|k| k.public().to_peer_id())
        .unwrap_or_else(|_| PeerId::random())
}

fn key(seed: u64) -> Vec<u8> {
    blake3::hash(&seed.to_le_bytes()).as_bytes().to_vec()
}

/// P(Poisson(mean) > k).
fn tail(mean: f64, k: usize) -> f64 {
    let mut pmf = (-mean).exp();
    let mut cdf = pmf;
    for i in 1..=k {
        pmf *= mean / i as f64;
        cdf += pmf;
    }
    1.0 - cdf
}

#[test]
fn plausible_max_is_the_poisson_quantile_and_never_below_one() {
    for mean in [0.05, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 60.0] {
        let k = plausible_max(mean);
        assert!(tail(mean, k) < IMPLAUSIBLE, "mean {mean}: k {k}");
        if k > 1 {
            assert!(tail(mean, k - 1) >= IMPLAUSIBLE, "mean {mean}: k {k}");
        }
    }
    assert_eq!(plausible_max(1.0), 5);
    assert_eq!(plausible_max(0.0), 1);
    assert_eq!(plausible_max(f64::NAN), 1);
    assert_eq!(plausible_max(1e-9), 1);
    assert_eq!(plausible_max(1e6), usize::MAX);
}

#[test]
fn closeness_is_kademlias_distance_as_a_fraction() {
    let k = key(1);
    let ids: Vec<PeerId> = (0..50).map(peer).collect();
    let target = KBucketKey::new(k.clone());
    let mut by_kad = ids.clone();
    by_kad.sort_by_key(|p| KBucketKey::from(*p).distance(&target));
    let mut by_fraction = ids;
    by_fraction.sort_by(|a, b| closeness(&k, a).total_cmp(&closeness(&k, b)));
    assert_eq!(by_kad, by_fraction);
    assert!(ids_in_unit_range(&k));
}

fn ids_in_unit_range(k: &[u8]) -> bool {
    (0..50)
        .map(peer)
        .all(|p| (0.0..1.0).contains(&closeness(k, &p)))
}

#[test]
fn random_holders_all_count() {
    // 300 nodes with random ids: the 20 closest to each of 20 keys are their holders, and the
    // check should almost never drop one (one in a thousand per distance).
    let nodes: Vec<PeerId> = (0..300).map(|i| peer(1000 + i)).collect();
    let mut dropped = 0;
    for k in 0..20 {
        let k = key(k);
        let mut closest = nodes.clone();
        closest.sort_by(|a, b| closeness(&k, a).total_cmp(&closeness(&k, b)));
        closest.truncate(HOLDERS_PER_KEY);
        let counted = counted_holders(&k, closest.iter().copied(), Some(300.0));
        dropped += HOLDERS_PER_KEY - counted.len();
    }
    assert!(dropped <= 2, "{dropped} honest holders dropped of 400");
}

/// `count` ids closer to `k` than every node of `honest`.
fn ground(k: &[u8], honest: &[PeerId], count: usize) -> Vec<PeerId> {
    let nearest = honest
        .iter()
        .map(|p| closeness(k, p))
        .fold(f64::INFINITY, f64::min);
    let ground: Vec<PeerId> = (0..200_000u64)
        .map(|i| peer(1_000_000 + i))
        .filter(|p| closeness(k, p) < nearest)
        .take(count)
        .collect();
    assert_eq!(ground.len(), count, "grinding ran out");
    ground
}

#[test]
fn ids_ground_next_to_a_key_count_only_as_many_as_the_network_plausibly_puts_there() {
    // The attack: 10 attacker ids closer than every one of 40 honest nodes (20%).
    let k = key(7);
    let honest: Vec<PeerId> = (0..40).map(|i| peer(5000 + i)).collect();
    let sybils = ground(&k, &honest, 10);
    let everyone: Vec<PeerId> = honest.iter().chain(&sybils).copied().collect();
    // Without the check the 20 closest are the 10 ground ids and 10 honest nodes: a tie the
    // older (attacker's) claim wins.
    let plain = counted_holders(&k, everyone.iter().copied(), None);
    let sybils_plain = sybils.iter().filter(|s| plain.contains(s)).count();
    assert_eq!((plain.len(), sybils_plain), (HOLDERS_PER_KEY, 10));
    // With it, the cluster counts as what 50 random ids would put that close.
    let checked = counted_holders(&k, everyone.iter().copied(), Some(50.0));
    let sybils_checked = sybils.iter().filter(|s| checked.contains(s)).count();
    let honest_checked = checked.len() - sybils_checked;
    let nearest_honest = honest
        .iter()
        .map(|p| closeness(&k, p))
        .fold(f64::INFINITY, f64::min);
    assert!(
        sybils_checked <= plausible_max(50.0 * nearest_honest),
        "{sybils_checked} ground ids counted"
    );
    assert!(
        honest_checked > sybils_checked,
        "honest {honest_checked}, ground {sybils_checked}"
    );
}

#[test]
fn only_the_closest_holders_count() {
    let k = key(3);
    let nodes: Vec<PeerId> = (0..60).map(|i| peer(9000 + i)).collect();
    let counted = counted_holders(&k, nodes.iter().copied(), None);
    assert_eq!(counted.len(), HOLDERS_PER_KEY);
    let farthest_counted = counted.iter().map(|p| closeness(&k, p)).fold(0.0, f64::max);
    let uncounted_nearer = nodes
        .iter()
        .filter(|p| !counted.contains(p))
        .filter(|p| closeness(&k, p) < farthest_counted)
        .count();
    assert_eq!(uncounted_nearer, 0);
    // Duplicates count once; no holders, nothing counted.
    let twice = counted_holders(&k, nodes[..3].iter().chain(&nodes[..3]).copied(), None);
    assert_eq!(twice.len(), 3);
    assert!(counted_holders(&k, Vec::new(), Some(10.0)).is_empty());
}

#[test]
fn the_network_size_estimate_is_within_a_factor_of_two() {
    for (n, seed) in [(30u64, 1u64), (100, 2), (1000, 3)] {
        let me = key(seed * 77);
        let others: Vec<f64> = (0..n - 1)
            .map(|i| closeness(&me, &peer(seed * 100_000 + i)))
            .collect();
        let estimate = estimate_network_size(&others).unwrap();
        assert!(
            estimate > n as f64 / 2.0 && estimate < n as f64 * 2.0,
            "{n} nodes estimated as {estimate}"
        );
    }
    assert_eq!(estimate_network_size(&[]), None);
    assert_eq!(estimate_network_size(&[0.0, f64::NAN]), None);
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Within the distance of any counted holder, no more holders count than the network
        /// plausibly puts there (at least one), and never more than a key's holders.
        #[test]
        fn counted_holders_never_exceed_the_plausible_density(
            seeds in proptest::collection::vec(any::<u64>(), 0..40),
            key_seed in any::<u64>(),
            size in 1.0f64..500.0,
        ) {
            let k = key(key_seed);
            let peers: Vec<PeerId> = seeds.iter().map(|s| peer(*s)).collect();
            let counted = counted_holders(&k, peers.iter().copied(), Some(size));
            prop_assert!(counted.len() <= HOLDERS_PER_KEY);
            for p in &counted {
                let c = closeness(&k, p);
                let within = counted.iter().filter(|q| closeness(&k, q) <= c).count();
                prop_assert!(within <= plausible_max(size * c).max(1));
            }
        }

        /// The result depends on the set of holders, not on their order.
        #[test]
        fn counted_holders_ignore_order(
            seeds in proptest::collection::vec(any::<u64>(), 0..40),
            key_seed in any::<u64>(),
            size in 1.0f64..500.0,
        ) {
            let k = key(key_seed);
            let peers: Vec<PeerId> = seeds.iter().map(|s| peer(*s)).collect();
            let mut reversed = peers.clone();
            reversed.reverse();
            prop_assert_eq!(
                counted_holders(&k, peers, Some(size)),
                counted_holders(&k, reversed, Some(size))
            );
        }

        /// Adding holders never takes away the vote of a holder closer than all of them: a
        /// cluster placed beyond the honest holders cannot push them out.
        #[test]
        fn holders_farther_away_never_uncount_closer_ones(
            seeds in proptest::collection::vec(any::<u64>(), 1..30),
            extra in proptest::collection::vec(any::<u64>(), 0..20),
            key_seed in any::<u64>(),
            size in 1.0f64..500.0,
        ) {
            let k = key(key_seed);
            let peers: Vec<PeerId> = seeds.iter().map(|s| peer(*s)).collect();
            let before = counted_holders(&k, peers.iter().copied(), Some(size));
            let nearest_extra = extra
                .iter()
                .map(|s| closeness(&k, &peer(*s)))
                .fold(f64::INFINITY, f64::min);
            let after = counted_holders(
                &k,
                peers.iter().copied().chain(extra.iter().map(|s| peer(*s))),
                Some(size),
            );
            for p in &before {
                if closeness(&k, p) < nearest_extra {
                    prop_assert!(after.contains(p));
                }
            }
        }
    }
}
