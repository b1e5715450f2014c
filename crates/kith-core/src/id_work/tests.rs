use std::ops::ControlFlow;

use libp2p::{PeerId, identity::Keypair};
use proptest::prelude::*;

use super::*;
use crate::density::{HOLDERS_PER_KEY, closeness};

/// A keypair from a seed, so tests and properties are reproducible.
fn keypair(seed: u64) -> Keypair {
    let bytes = *blake3::hash(&seed.to_le_bytes()).as_bytes();
    Keypair::ed25519_from_bytes(bytes).unwrap()
}

fn peer(seed: u64) -> PeerId {
    keypair(seed).public().to_peer_id()
}

/// Seeded key generations: each call returns the next keypair of the stream.
fn generator(stream: u64) -> impl FnMut() -> Keypair {
    let mut i = 0u64;
    move || {
        i += 1;
        keypair(stream.wrapping_mul(1_000_003).wrapping_add(i) ^ 0xa5a5_0000_0000_0000)
    }
}

#[test]
fn difficulty_zero_admits_every_id() {
    for seed in 0..50 {
        assert!(is_worked(&peer(seed), 0));
    }
    assert!(is_worked(&PeerId::random(), 0));
}

#[test]
fn about_one_id_in_two_to_the_d_is_worked() {
    let total = 4096u64;
    for d in [1u8, 2, 3] {
        let worked = (0..total).filter(|s| is_worked(&peer(*s), d)).count() as f64;
        let expected = total as f64 / expected_generations(d);
        assert!(
            (worked - expected).abs() < 0.2 * expected,
            "d={d}: {worked} worked of {total}, expected about {expected}"
        );
    }
}

#[test]
fn a_ground_id_is_worked_and_grinding_can_be_cancelled() {
    let found = grind(8, generator(1), |_| ControlFlow::Continue(())).unwrap();
    assert!(is_worked(&found.public().to_peer_id(), 8));
    assert!(work_bits(&found.public().to_peer_id()) >= 8);

    let mut calls = 0;
    let none = grind(MAX_DIFFICULTY, generator(2), |_| {
        calls += 1;
        if calls == 2 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    assert!(none.is_none());
    assert_eq!(calls, 2);
}

#[test]
fn the_rule_is_bound_to_its_domain() {
    // Same peer id, hashed without the domain string: a different hash (so work done for some
    // other rule over peer ids is not reusable here).
    let p = peer(7);
    let mut h = blake3::Hasher::new();
    h.update(DOMAIN);
    h.update(&p.to_bytes());
    assert_eq!(
        work_bits(&p),
        crate::pow::leading_zero_bits(h.finalize().as_bytes())
    );
    assert_ne!(
        *blake3::hash(&p.to_bytes()).as_bytes(),
        *h.finalize().as_bytes()
    );
}

/// The cost an attacker pays: key generations until one id is both worked at `d` and among the
/// 20 closest of an `n`-node network to a key, averaged over many keys, is about
/// `(n / 20) · 2^d` (`expected_generations_near_key`). Seeded, so the figure is reproducible.
#[test]
fn placing_a_worked_id_next_to_a_key_costs_n_over_20_times_two_to_the_d() {
    let n = 200u64;
    let honest: Vec<PeerId> = (0..n).map(|i| peer(1_000_000 + i)).collect();
    for (d, trials) in [(0u8, 400u64), (4, 200)] {
        let mut next = generator(u64::from(d) + 77);
        let mut total = 0u64;
        for trial in 0..trials {
            let key = blake3::hash(&(trial ^ 0x5eed).to_le_bytes())
                .as_bytes()
                .to_vec();
            let mut close: Vec<f64> = honest.iter().map(|p| closeness(&key, p)).collect();
            close.sort_by(f64::total_cmp);
            let bar = close[HOLDERS_PER_KEY - 1];
            let mut generations = 0u64;
            loop {
                generations += 1;
                assert!(generations < 1_000_000, "bounded");
                let id = next().public().to_peer_id();
                if is_worked(&id, d) && closeness(&key, &id) < bar {
                    break;
                }
            }
            total += generations;
        }
        let mean = total as f64 / trials as f64;
        let expected = expected_generations_near_key(n, d);
        assert!(
            (mean - expected).abs() < 0.25 * expected,
            "d={d}: {mean} generations on average, expected about {expected}"
        );
    }
}

#[test]
fn the_cost_formula_at_the_documented_figures() {
    // ARCHITECTURE.md "Names and Sybils": one honest id at d=16 is 65,536 generations; one
    // placed id at n=1,000 is 50 times that; 55 placed ids 2,750 times.
    assert_eq!(expected_generations(16), 65_536.0);
    assert_eq!(expected_generations_near_key(1_000, 16), 3_276_800.0);
    assert_eq!(expected_generations_near_key(20, 0), 1.0);
}

proptest! {
    #[test]
    fn worked_at_d_means_worked_below_d(seed in any::<u64>(), d in 1u8..=12) {
        let p = peer(seed);
        prop_assert_eq!(is_worked(&p, d), work_bits(&p) >= u32::from(d));
        if is_worked(&p, d) {
            prop_assert!(is_worked(&p, d - 1));
        }
        prop_assert!(is_worked(&p, 0));
    }

    #[test]
    fn grind_returns_a_worked_id(stream in any::<u64>(), d in 0u8..=6) {
        let found = grind(d, generator(stream), |_| ControlFlow::Continue(()));
        prop_assert!(found.is_some_and(|k| is_worked(&k.public().to_peer_id(), d)));
    }
}
