use libp2p::identity::Keypair;

use super::*;

const NOW: u64 = 1_800_000_000_000;
const GROUP: GroupId = [1; 16];

fn key(seed: u8) -> Keypair {
    Keypair::ed25519_from_bytes([seed; 32]).unwrap()
}

fn list(k: &Keypair, version: u64, members: &[(PeerId, bool)]) -> MemberList {
    MemberList::sign(
        k,
        GROUP,
        version,
        "climbing",
        &members.iter().copied().collect(),
        NOW,
    )
    .unwrap()
}

fn envelope(k: &Keypair) -> GroupEnvelope {
    GroupEnvelope {
        group: GROUP,
        sender: k.public().to_peer_id(),
        seq: 1,
        session: [2; 32],
        ciphertext: vec![3; 10],
        list_version: 1,
    }
}

#[test]
fn only_admins_change_the_list_and_members_may_leave() {
    let (a, b, c) = (key(1), key(2), key(3));
    let (pa, pb, pc) = (
        a.public().to_peer_id(),
        b.public().to_peer_id(),
        c.public().to_peer_id(),
    );
    let v1 = list(&a, 1, &[(pa, true), (pb, false)]);
    let by_admin = list(&a, 2, &[(pa, true), (pb, false), (pc, false)]);
    assert!(v1.may_be_replaced_by(&by_admin));
    let by_member = list(&b, 2, &[(pa, true), (pb, false), (pc, false)]);
    assert!(!v1.may_be_replaced_by(&by_member));
    let b_leaves = list(&b, 2, &[(pa, true)]);
    assert!(v1.may_be_replaced_by(&b_leaves));
    let b_kicks_a = list(&b, 2, &[(pb, true)]);
    assert!(!v1.may_be_replaced_by(&b_kicks_a));
    let a_leaves = list(&a, 2, &[(pb, true)]);
    assert!(
        v1.may_be_replaced_by(&a_leaves),
        "last admin leaving promotes the next member"
    );
    let b_leaves_adding_c = list(&b, 2, &[(pa, true), (pc, false)]);
    assert!(
        !v1.may_be_replaced_by(&b_leaves_adding_c),
        "a member leaving may change nothing else"
    );
    let older = list(&a, 1, &[(pa, true)]);
    assert!(!by_admin.may_be_replaced_by(&older));
    assert!(
        !v1.may_be_replaced_by(&v1),
        "the same bytes replace nothing"
    );
    let elsewhere = MemberList::sign(&a, [9; 16], 2, "climbing", by_admin.members(), NOW).unwrap();
    assert!(!v1.may_be_replaced_by(&elsewhere), "another group's list");
}

#[test]
fn successor_keeps_id_and_title_and_counts_up() {
    let a = key(1);
    let pa = a.public().to_peer_id();
    let v1 = list(&a, 1, &[(pa, true)]);
    let mut members = v1.members().clone();
    members.insert(key(2).public().to_peer_id(), false);
    let v2 = v1.successor(&a, &members, NOW + 1).unwrap();
    assert_eq!(
        (v2.id(), v2.title(), v2.version(), v2.author()),
        (GROUP, "climbing", 2, pa)
    );
    assert_eq!(v2.created_at_ms(), NOW + 1);
    assert_eq!(MemberList::verify(v2.signed()).unwrap(), v2);
    assert!(v1.may_be_replaced_by(&v2));
}

#[test]
fn members_keep_the_time_they_were_added_across_versions() {
    let (a, b, c) = (key(1), key(2), key(3));
    let (pa, pb, pc) = (
        a.public().to_peer_id(),
        b.public().to_peer_id(),
        c.public().to_peer_id(),
    );
    let v1 =
        MemberList::sign(&a, GROUP, 1, "climbing", &BTreeMap::from([(pa, true)]), NOW).unwrap();
    assert_eq!(v1.added_at_ms(&pa), Some(NOW));
    let mut members = v1.members().clone();
    members.insert(pb, false);
    let v2 = v1.successor(&a, &members, NOW + 10).unwrap();
    members.insert(pc, false);
    let v3 = v2.successor(&a, &members, NOW + 20).unwrap();
    assert_eq!(
        [pa, pb, pc].map(|p| v3.added_at_ms(&p)),
        [Some(NOW), Some(NOW + 10), Some(NOW + 20)]
    );
    // Removed and re-added: added anew.
    members.remove(&pb);
    let v4 = v3.successor(&a, &members, NOW + 30).unwrap();
    members.insert(pb, false);
    let v5 = v4.successor(&a, &members, NOW + 40).unwrap();
    assert_eq!(v5.added_at_ms(&pb), Some(NOW + 40));
    assert_eq!(v5.added_at_ms(&pc), Some(NOW + 20));
    assert_eq!(v5.added_at_ms(&PeerId::random()), None);
}

#[test]
fn a_member_added_after_its_list_was_signed_is_refused() {
    let a = key(1);
    let pa = a.public().to_peer_id();
    let list = pb::MemberList {
        group_id: GROUP.to_vec(),
        version: 1,
        title: "climbing".into(),
        members: vec![pb::GroupMember {
            peer_id: pa.to_bytes(),
            admin: true,
            added_at_ms: NOW + 1,
        }],
        author: pa.to_bytes(),
        created_at_ms: NOW,
    }
    .encode_to_vec();
    let signed = pb::SignedMemberList {
        signature: a.sign(&list).unwrap(),
        list,
        public_key: a.public().encode_protobuf(),
    }
    .encode_to_vec();
    assert!(matches!(
        MemberList::verify(&signed),
        Err(GroupError::ListOutOfBounds)
    ));
}

#[test]
fn concurrent_versions_resolve_the_same_way_everywhere() {
    let (a, b) = (key(1), key(2));
    let (pa, pb) = (a.public().to_peer_id(), b.public().to_peer_id());
    let v1 = list(&a, 1, &[(pa, true), (pb, true)]);
    let x = list(&a, 2, &[(pa, true), (pb, true), (PeerId::random(), false)]);
    let y = list(&b, 2, &[(pa, true), (pb, true), (PeerId::random(), false)]);
    let (winner, loser) = if x.hash() < y.hash() {
        (&x, &y)
    } else {
        (&y, &x)
    };
    assert!(v1.may_be_replaced_by(winner) && v1.may_be_replaced_by(loser));
    assert!(loser.may_be_replaced_by(winner));
    assert!(!winner.may_be_replaced_by(loser));
}

#[test]
fn forged_and_out_of_bounds_lists_are_refused() {
    let a = key(1);
    let l = list(&a, 1, &[(a.public().to_peer_id(), true)]);
    let mut signed = pb::SignedMemberList::decode(l.signed()).unwrap();
    signed.signature[0] ^= 1;
    assert_eq!(
        MemberList::verify(&signed.encode_to_vec()),
        Err(GroupError::ListSignature)
    );
    assert!(matches!(
        MemberList::verify(b"garbage"),
        Err(GroupError::MalformedList(_))
    ));
    assert_eq!(
        MemberList::verify(&vec![0; MAX_LIST_BYTES + 1]),
        Err(GroupError::ListTooLarge)
    );
    // Signed by b, claiming a as author.
    let b = key(2);
    let inner = pb::MemberList::decode(
        pb::SignedMemberList::decode(l.signed())
            .unwrap()
            .list
            .as_slice(),
    )
    .unwrap()
    .encode_to_vec();
    let forged = pb::SignedMemberList {
        signature: b.sign(&inner).unwrap(),
        list: inner,
        public_key: b.public().encode_protobuf(),
    };
    assert_eq!(
        MemberList::verify(&forged.encode_to_vec()),
        Err(GroupError::AuthorMismatch)
    );
    let pa = a.public().to_peer_id();
    assert_eq!(
        MemberList::sign(&a, GROUP, 0, "t", &BTreeMap::from([(pa, true)]), NOW),
        Err(GroupError::ListOutOfBounds)
    );
    let long = "x".repeat(MAX_TITLE_CHARS + 1);
    assert_eq!(
        MemberList::sign(&a, GROUP, 1, &long, &BTreeMap::from([(pa, true)]), NOW),
        Err(GroupError::ListOutOfBounds)
    );
}

#[test]
fn envelopes_round_trip_and_forgeries_are_refused() {
    let a = key(1);
    let env = envelope(&a);
    let bytes = env.seal(&a).unwrap();
    assert_eq!(GroupEnvelope::verify(&bytes).unwrap(), env);

    let mut raw = pb::GroupEnvelope::decode(bytes.as_slice()).unwrap();
    raw.seq = 2;
    assert_eq!(
        GroupEnvelope::verify(&raw.encode_to_vec()),
        Err(GroupError::EnvelopeSignature),
        "replayed under a new seq"
    );
    let mut impostor = pb::GroupEnvelope::decode(bytes.as_slice()).unwrap();
    impostor.sender = PeerId::random().to_bytes();
    assert_eq!(
        GroupEnvelope::verify(&impostor.encode_to_vec()),
        Err(GroupError::SenderMismatch),
        "forged sender"
    );
    assert_eq!(
        GroupEnvelope::verify(&vec![0u8; MAX_ENVELOPE + 1]),
        Err(GroupError::EnvelopeTooLarge(MAX_ENVELOPE + 1))
    );
    assert_eq!(
        env.seal(&key(2)),
        Err(GroupError::SenderMismatch),
        "only the sender seals"
    );
    let zero = GroupEnvelope { seq: 0, ..env };
    assert_eq!(
        GroupEnvelope::verify(&zero.seal(&a).unwrap()),
        Err(GroupError::SequenceZero)
    );
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Three admins who stay admins, and a pool of other peers to add or drop.
    fn admins() -> [Keypair; 3] {
        [key(1), key(2), key(3)]
    }

    fn others() -> Vec<PeerId> {
        (10..18).map(|s| key(s).public().to_peer_id()).collect()
    }

    /// A version-`version` list by admin `author` with the admins and the chosen others.
    fn edit(author: usize, version: u64, pick: &[bool]) -> MemberList {
        let admins = admins();
        let mut members: Vec<(PeerId, bool)> = admins
            .iter()
            .map(|k| (k.public().to_peer_id(), true))
            .collect();
        members.extend(
            others()
                .into_iter()
                .zip(pick)
                .filter(|(_, keep)| **keep)
                .map(|(p, _)| (p, false)),
        );
        list(&admins[author], version, &members)
    }

    fn edits() -> impl Strategy<Value = Vec<(usize, u64, Vec<bool>)>> {
        proptest::collection::vec(
            (
                0..3usize,
                2..4u64,
                proptest::collection::vec(any::<bool>(), 8),
            ),
            1..6,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Whatever order concurrent admin edits arrive in, every member ends on the same list:
        /// the highest version, and among those the lowest hash.
        #[test]
        fn members_converge_whatever_the_arrival_order(spec in edits(), seed in any::<u64>()) {
            let base = edit(0, 1, &[false; 8]);
            let lists: Vec<MemberList> =
                spec.iter().map(|(a, v, pick)| edit(*a, *v, pick)).collect();
            let mut order: Vec<usize> = (0..lists.len()).collect();
            // A deterministic shuffle from the seed.
            let mut s = seed | 1;
            for i in (1..order.len()).rev() {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                order.swap(i, usize::try_from(s % (i as u64 + 1)).unwrap());
            }
            let apply = |order: &[usize]| {
                let mut held = base.clone();
                for i in order {
                    if held.may_be_replaced_by(&lists[*i]) {
                        held = lists[*i].clone();
                    }
                }
                held
            };
            let forward = apply(&(0..lists.len()).collect::<Vec<_>>());
            let shuffled = apply(&order);
            prop_assert_eq!(&forward, &shuffled);
            let top = lists.iter().map(MemberList::version).max().unwrap();
            let best = lists
                .iter()
                .filter(|l| l.version() == top)
                .min_by_key(|l| l.hash())
                .unwrap();
            prop_assert_eq!(&forward, best);
        }

        /// Replacement is a strict order: two lists never replace each other, and nothing
        /// replaces itself, so no pair of members can flip between two lists forever.
        #[test]
        fn replacement_is_antisymmetric(spec in edits()) {
            let lists: Vec<MemberList> =
                spec.iter().map(|(a, v, pick)| edit(*a, *v, pick)).collect();
            for x in &lists {
                prop_assert!(!x.may_be_replaced_by(x));
                for y in &lists {
                    prop_assert!(!(x.may_be_replaced_by(y) && y.may_be_replaced_by(x)));
                }
            }
        }

        /// A peer outside the list (never an admin of it) cannot replace it, whatever it signs.
        #[test]
        fn outsiders_never_replace_a_list(spec in edits(), outsider in 20u8..30) {
            let base = edit(0, 1, &[false; 8]);
            let stranger = key(outsider);
            for (_, version, pick) in &spec {
                let mut members = edit(0, *version, pick).members().clone();
                members.insert(stranger.public().to_peer_id(), true);
                let forged = MemberList::sign(&stranger, GROUP, *version, "climbing", &members, NOW)
                    .unwrap();
                prop_assert!(!base.may_be_replaced_by(&forged));
            }
        }
    }
}

#[test]
fn a_newcomer_reads_from_the_first_message_written_after_it_was_added() {
    let sent = [(7, NOW - 20), (8, NOW - 10), (9, NOW), (10, NOW + 5)];
    assert_eq!(first_readable(&sent, NOW - 30), Some((0, 7)));
    assert_eq!(first_readable(&sent, NOW - 10), Some((1, 8)));
    assert_eq!(first_readable(&sent, NOW + 1), Some((3, 10)));
    assert_eq!(first_readable(&sent, NOW + 6), None);
    assert_eq!(first_readable(&[], NOW), None);
}

#[test]
fn a_missing_key_is_asked_for_after_a_wait_then_at_most_once_per_period() {
    let mut requests = KeyRequests::new(20_000, 60_000, 3);
    // First seen waiting: too early to ask (the share may be just behind its messages).
    assert!(requests.due(["a"], NOW).is_empty());
    assert!(requests.due(["a"], NOW + 19_999).is_empty());
    assert_eq!(requests.due(["a", "a"], NOW + 20_000), vec!["a"]);
    // Asked: not again within the period, then again.
    assert!(requests.due(["a"], NOW + 79_999).is_empty());
    assert_eq!(requests.due(["a"], NOW + 80_000), vec!["a"]);
    // Its key came (it no longer waits): forgotten, so a later wait starts over.
    assert!(requests.due(Vec::<&str>::new(), NOW + 90_000).is_empty());
    assert!(requests.due(["a"], NOW + 100_000).is_empty());
    assert_eq!(requests.due(["a"], NOW + 120_000), vec!["a"]);
    // Sessions are counted separately.
    assert!(requests.due(["a", "b"], NOW + 130_000).is_empty());
    assert_eq!(requests.due(["a", "b"], NOW + 150_000), vec!["b"]);
    assert_eq!(requests.due(["b", "a"], NOW + 180_000), vec!["a"]);
    // Three asks each at most while they keep waiting.
    assert_eq!(requests.due(["a", "b"], NOW + 240_000), vec!["a", "b"]);
    assert_eq!(requests.due(["a", "b"], NOW + 300_000), vec!["b"]);
    assert!(requests.due(["a", "b"], NOW + 1_000_000).is_empty());
}
