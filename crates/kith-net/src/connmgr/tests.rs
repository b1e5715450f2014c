use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

fn budget(low: usize, high: usize) -> ConnectionBudget {
    ConnectionBudget {
        low,
        high,
        grace: Duration::from_secs(20),
        idle_timeout: Duration::from_secs(120),
    }
}

/// A connection opened `age` seconds before `now` and last used `unused` seconds before it.
fn conn(key: u32, now: Instant, age: u64, unused: u64) -> Candidate<u32> {
    let opened = now - Duration::from_secs(age);
    Candidate {
        key,
        protected: false,
        shares_topic: false,
        in_routing_table: false,
        welcomed: false,
        opened,
        last_used: (now - Duration::from_secs(unused)).max(opened),
    }
}

#[track_caller]
fn check_trims(conns: &[Candidate<u32>], budget: &ConnectionBudget, now: Instant, expect: &[u32]) {
    let mut got = select_trims(conns, budget, now, false);
    got.sort_unstable();
    let mut expect = expect.to_vec();
    expect.sort_unstable();
    assert_eq!(got, expect);
}

#[test]
fn nothing_is_trimmed_at_or_below_the_high_mark() {
    let now = Instant::now() + Duration::from_secs(1000);
    let conns: Vec<_> = (0..6).map(|k| conn(k, now, 100, 100)).collect();
    check_trims(&conns, &budget(4, 6), now, &[]);
}

#[test]
fn at_the_high_mark_a_refusal_since_the_last_round_makes_room_down_to_the_low_mark() {
    let now = Instant::now() + Duration::from_secs(1000);
    let conns: Vec<_> = (0..6).map(|k| conn(k, now, 100, u64::from(k))).collect();
    let b = budget(4, 6);
    let mut trims = select_trims(&conns, &b, now, true);
    trims.sort_unstable();
    assert_eq!(trims, vec![4, 5]);
    // Below the mark a refusal (counted a moment before a connection closed) changes nothing.
    assert!(select_trims(&conns[..5], &b, now, true).is_empty());
    // At the mark without a refusal: nothing, as before.
    assert!(select_trims(&conns, &b, now, false).is_empty());
}

#[test]
fn above_the_high_mark_the_least_recently_used_go_down_to_the_low_mark() {
    let now = Instant::now() + Duration::from_secs(1000);
    // Key k was last used k seconds ago: the highest keys are the stalest.
    let conns: Vec<_> = (0..7).map(|k| conn(k, now, 100, u64::from(k))).collect();
    check_trims(&conns, &budget(4, 6), now, &[4, 5, 6]);
}

#[test]
fn a_shared_topic_outweighs_a_welcome_which_outweighs_the_routing_table_which_outweighs_nothing() {
    let now = Instant::now() + Duration::from_secs(1000);
    let mut conns: Vec<_> = (0..5).map(|k| conn(k, now, 100, 0)).collect();
    conns[0].shares_topic = true;
    conns[1].in_routing_table = true;
    // A group member in our routing table: still below a peer sharing a topic.
    conns[4].welcomed = true;
    conns[4].in_routing_table = true;
    // 2 and 3 are worth nothing; of them 3 was used longer ago.
    conns[3].last_used = now - Duration::from_secs(50);
    check_trims(&conns, &budget(3, 4), now, &[2, 3]);
    check_trims(&conns, &budget(2, 4), now, &[1, 2, 3]);
    check_trims(&conns, &budget(1, 4), now, &[1, 2, 3, 4]);
}

#[test]
fn protected_and_young_busy_connections_are_never_trimmed_even_if_the_low_mark_is_missed() {
    let now = Instant::now() + Duration::from_secs(1000);
    let mut conns: Vec<_> = (0..8).map(|k| conn(k, now, 100, 100)).collect();
    for c in &mut conns[..4] {
        c.protected = true;
    }
    // Young (5 s of a 20 s grace) and used a second ago.
    conns[4].opened = now - Duration::from_secs(5);
    conns[4].last_used = now - Duration::from_secs(1);
    // 8 > 6: the low mark (2) would need 6 trims, only 5, 6 and 7 may go.
    check_trims(&conns, &budget(2, 6), now, &[5, 6, 7]);
}

#[test]
fn above_the_high_mark_a_young_connection_gone_quiet_may_be_trimmed() {
    let now = Instant::now() + Duration::from_secs(1000);
    // All inside the 20 s grace: 0 just opened, 1 opened 2 s ago and unused since, 2 and 3
    // answered a query 1 s and 4 s ago, 4 and 5 opened 10 s ago and never used.
    let conns = vec![
        conn(0, now, 0, 0),
        conn(1, now, 2, 2),
        conn(2, now, 10, 1),
        conn(3, now, 10, 4),
        conn(4, now, 10, 10),
        conn(5, now, 10, 10),
    ];
    // Above the high mark (4) down to 1: only those quiet for YOUNG_QUIET (3 s) qualify.
    check_trims(&conns, &budget(1, 4), now, &[3, 4, 5]);
    // At the high mark nothing goes, quiet or not.
    check_trims(&conns[..4], &budget(1, 4), now, &[]);
}

#[test]
fn idle_means_unprotected_no_topic_and_unused_for_the_timeout() {
    let now = Instant::now() + Duration::from_secs(1000);
    let mut conns = vec![
        conn(0, now, 500, 500),
        conn(1, now, 500, 119),
        conn(2, now, 500, 500),
        conn(3, now, 500, 500),
        conn(4, now, 120, 120),
    ];
    conns[2].protected = true;
    conns[3].shares_topic = true;
    // The routing table does not keep a connection open: Kademlia dials again when it needs to.
    conns[4].in_routing_table = true;
    let mut idle = select_idle(&conns, &budget(64, 96), now);
    idle.sort_unstable();
    assert_eq!(idle, vec![0, 4]);
}

#[test]
fn default_budgets_leave_room_between_the_marks() {
    for b in [ConnectionBudget::personal(), ConnectionBudget::relay()] {
        assert!(b.low < b.high, "{b:?}");
        assert!(b.grace < b.idle_timeout, "{b:?}");
    }
    assert!(ConnectionBudget::relay().high > ConnectionBudget::personal().high * 10);
}

fn arb_conns() -> impl Strategy<Value = Vec<Candidate<u32>>> {
    let now = Instant::now() + Duration::from_secs(10_000);
    prop::collection::vec(
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            0u64..200,
            0u64..200,
        ),
        0..60,
    )
    .prop_map(move |specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (protected, shares_topic, in_rt, age, unused))| {
                let mut c = conn(u32::try_from(i).unwrap_or(u32::MAX), now, age, unused);
                c.protected = protected;
                c.shares_topic = shares_topic;
                c.in_routing_table = in_rt;
                c
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn trimming_respects_protection_marks_grace_and_recent_use(
        conns in arb_conns(),
        low in 0usize..40,
        gap in 0usize..20,
    ) {
        let now = Instant::now() + Duration::from_secs(10_000);
        let b = budget(low, low + gap);
        let trims = select_trims(&conns, &b, now, false);
        let eligible: Vec<&Candidate<u32>> = conns
            .iter()
            .filter(|c| {
                !c.protected
                    && (now.saturating_duration_since(c.opened) >= b.grace
                        || now.saturating_duration_since(c.last_used) >= YOUNG_QUIET)
            })
            .collect();

        // Never a protected connection nor a young one used in the last few seconds, never one
        // twice.
        let mut unique = trims.clone();
        unique.sort_unstable();
        unique.dedup();
        prop_assert_eq!(unique.len(), trims.len());
        for key in &trims {
            prop_assert!(eligible.iter().any(|c| c.key == *key), "picked {} which is not eligible", key);
        }
        if conns.len() <= b.high {
            prop_assert!(trims.is_empty());
        } else {
            // Never below the low mark; exactly the low mark when enough may go.
            let left = conns.len() - trims.len();
            prop_assert!(left >= b.low);
            prop_assert_eq!(left, b.low.max(conns.len() - eligible.len()));
            // Least valuable first: nothing kept is worth less than something closed.
            let worst_closed = trims
                .iter()
                .filter_map(|k| conns.iter().find(|c| c.key == *k))
                .map(|c| c.value())
                .max();
            if let Some(worst_closed) = worst_closed {
                for kept in eligible.iter().filter(|c| !trims.contains(&c.key)) {
                    prop_assert!(kept.value() >= worst_closed);
                }
            }
        }
    }

    #[test]
    fn idle_closing_never_touches_protected_or_topic_peers(conns in arb_conns()) {
        let now = Instant::now() + Duration::from_secs(10_000);
        let b = ConnectionBudget { idle_timeout: Duration::from_secs(100), ..budget(0, 0) };
        for key in select_idle(&conns, &b, now) {
            let c = conns.iter().find(|c| c.key == key);
            prop_assert!(c.is_some_and(|c| !c.protected && !c.shares_topic
                && now.saturating_duration_since(c.last_used) >= b.idle_timeout));
        }
    }
}

/// A connection between peers 1 and 2 as `local` sees it: dialed by `dialer`, opened `age`
/// seconds before `now`.
fn link(local: u8, key: u32, dialer: u8, relayed: bool, now: Instant, age: u64) -> Link<u8, u32> {
    Link {
        peer: 3 - local,
        key,
        outbound: dialer == local,
        relayed,
        opened: now - Duration::from_secs(age),
        pinned: false,
    }
}

#[track_caller]
fn check_duplicates(local: u8, links: &[Link<u8, u32>], now: Instant, expect: &[u32]) {
    let mut got = select_duplicates(&local, links, now, Duration::ZERO);
    got.sort_unstable();
    assert_eq!(got, expect);
}

#[test]
fn of_a_simultaneous_dial_the_connection_dialed_by_the_lower_id_is_kept_by_both_ends() {
    let now = Instant::now() + Duration::from_secs(1000);
    // Connection 10 dialed by peer 1, connection 20 by peer 2, 20 the older one.
    let at_1 = [
        link(1, 10, 1, false, now, 50),
        link(1, 20, 2, false, now, 60),
    ];
    let at_2 = [
        link(2, 10, 1, false, now, 50),
        link(2, 20, 2, false, now, 60),
    ];
    check_duplicates(1, &at_1, now, &[]);
    check_duplicates(2, &at_2, now, &[20]);
}

#[test]
fn a_direct_connection_wins_over_a_relayed_one_and_the_oldest_of_one_dialer_is_kept() {
    let now = Instant::now() + Duration::from_secs(1000);
    // Peer 1 dialed a circuit (10) and two direct connections (11 older than 12).
    let at_1 = [
        link(1, 10, 1, true, now, 90),
        link(1, 11, 1, false, now, 50),
        link(1, 12, 1, false, now, 40),
    ];
    check_duplicates(1, &at_1, now, &[10, 12]);
    // Peer 2 dialed none of them: it closes nothing.
    let at_2: Vec<_> = at_1
        .iter()
        .map(|l| Link {
            peer: 1,
            outbound: false,
            ..l.clone()
        })
        .collect();
    check_duplicates(2, &at_2, now, &[]);
}

#[test]
fn young_duplicates_and_peers_with_a_pinned_connection_are_left_alone() {
    let now = Instant::now() + Duration::from_secs(1000);
    let young = [
        link(2, 10, 1, false, now, 50),
        link(2, 20, 2, false, now, 1),
    ];
    check_duplicates(2, &young, now, &[]);
    let mut pinned = [
        link(2, 10, 1, false, now, 50),
        link(2, 20, 2, false, now, 60),
    ];
    pinned[1].pinned = true;
    check_duplicates(2, &pinned, now, &[]);
    // A single connection is never a duplicate.
    check_duplicates(2, &[link(2, 20, 2, false, now, 60)], now, &[]);
}

proptest! {
    #[test]
    fn both_ends_together_keep_exactly_one_connection_of_a_pair(
        conns in proptest::collection::vec((1u8..=2, any::<bool>(), 0u64..20, 0u64..3), 1..6),
    ) {
        let now = Instant::now() + Duration::from_secs(1000);
        // Each end sees its own opening time (skewed by up to 2 s) for each connection.
        let view = |local: u8| -> Vec<Link<u8, u32>> {
            conns
                .iter()
                .enumerate()
                .map(|(k, (dialer, relayed, age, skew))| {
                    let age = if local == 1 { age + 10 } else { age + 10 + skew };
                    link(local, k as u32, *dialer, *relayed, now, age)
                })
                .collect()
        };
        let mut closed = select_duplicates(&1, &view(1), now, Duration::ZERO);
        closed.extend(select_duplicates(&2, &view(2), now, Duration::ZERO));
        closed.sort_unstable();
        closed.dedup();
        // Everything is past the grace and nothing is pinned: exactly one connection stays.
        prop_assert_eq!(conns.len() - closed.len(), 1);
    }
}

#[test]
fn inbound_is_taken_below_the_high_mark_and_from_protected_peers_at_any_count() {
    let b = budget(4, 6);
    assert!(admits_inbound(0, &b, false));
    assert!(admits_inbound(5, &b, false));
    assert!(!admits_inbound(6, &b, false), "at the high mark");
    assert!(!admits_inbound(9, &b, false));
    assert!(admits_inbound(6, &b, true), "a protected peer at the mark");
    assert!(admits_inbound(40, &b, true));
}

#[test]
fn a_bootstrap_dials_below_the_high_mark_only_and_a_lookup_at_any_count() {
    let b = budget(4, 6);
    assert!(admits_kad_dial(0, &b, true));
    assert!(admits_kad_dial(5, &b, true));
    assert!(
        !admits_kad_dial(6, &b, true),
        "a bootstrap at the high mark"
    );
    assert!(!admits_kad_dial(9, &b, true));
    assert!(admits_kad_dial(6, &b, false), "a lookup at the mark");
    assert!(admits_kad_dial(40, &b, false));
}
