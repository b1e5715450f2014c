use std::cell::Cell;

use kith_crypto::{KeyBundle, OlmAccount};
use proptest::prelude::*;

use super::*;
use crate::{
    Name,
    record::tests::{DAY, NOW, params, rules},
};

/// kith-crypto's check, as kith-service plugs it in.
struct Olm;

impl Verifiers for Olm {
    fn key_bundle(&self, signed_bundle: &[u8], peer: &PeerId) -> Result<u64, String> {
        KeyBundle::verify(signed_bundle, peer)
            .map(|b| b.created_at_ms())
            .map_err(|e| e.to_string())
    }
}

fn relays(n: usize) -> Vec<Multiaddr> {
    (0..n)
        .map(|i| {
            format!("/ip4/198.18.0.{}/tcp/4717/p2p/{}", i + 1, PeerId::random())
                .parse()
                .unwrap()
        })
        .collect()
}

fn pointer(key: &Keypair, created_at_ms: u64) -> Vec<u8> {
    MailboxPointer::sign(key, &relays(2), created_at_ms).unwrap()
}

fn bundle(key: &Keypair, created_at_ms: u64) -> Vec<u8> {
    let signed = OlmAccount::new().key_bundle(key, created_at_ms).unwrap();
    key_bundle_value(signed.to_bytes())
}

fn name_record(key: &Keypair, name: &str, seq: u64) -> NameRecord {
    NameRecord::sign(key, params(key, name, seq)).unwrap()
}

fn peer(key: &Keypair) -> PeerId {
    key.public().to_peer_id()
}

#[test]
fn a_pointer_is_valid_at_its_peers_pointer_key_only() {
    let key = Keypair::generate_ed25519();
    let value = pointer(&key, NOW);
    let valid = validate(&pointer_key(&peer(&key)), &value, &rules(), NOW, &Olm).unwrap();
    assert_eq!(valid.owner, peer(&key));
    assert_eq!(valid.expires_at_ms, NOW + 30 * DAY);

    let other = PeerId::random();
    for wrong in [pointer_key(&other), bundle_key(&peer(&key))] {
        assert_eq!(
            validate(&wrong, &value, &rules(), NOW, &Olm),
            Err(DhtError::WrongKey("mailbox pointer"))
        );
    }
    let read = MailboxPointer::verify(&value).unwrap();
    assert_eq!(read.peer, peer(&key));
    assert_eq!(read.relays.len(), 2);
    assert_eq!(read.created_at_ms, NOW);
}

#[test]
fn a_pointer_must_be_signed_by_its_peer_and_name_few_relays() {
    let key = Keypair::generate_ed25519();
    let mut record = DhtRecord::decode(pointer(&key, NOW).as_slice()).unwrap();
    let Some(Body::Mailbox(p)) = record.body.as_mut() else {
        panic!("not a pointer");
    };
    p.created_at_ms += 1;
    let tampered = record.encode_to_vec();
    assert_eq!(
        MailboxPointer::verify(&tampered),
        Err(DhtError::BadPointerSignature)
    );

    let crowded = MailboxPointer::sign(&key, &relays(MAX_POINTER_RELAYS + 1), NOW).unwrap();
    assert_eq!(
        MailboxPointer::verify(&crowded),
        Err(DhtError::TooManyRelays)
    );
    let full = MailboxPointer::sign(&key, &relays(MAX_POINTER_RELAYS), NOW).unwrap();
    assert!(MailboxPointer::verify(&full).is_ok());

    // Another peer's signature over a pointer naming `key`'s peer.
    let mut record = DhtRecord::decode(pointer(&key, NOW).as_slice()).unwrap();
    let forged = DhtRecord::decode(pointer(&Keypair::generate_ed25519(), NOW).as_slice()).unwrap();
    if let (Some(Body::Mailbox(p)), Some(Body::Mailbox(f))) = (record.body.as_mut(), forged.body) {
        p.signature = f.signature;
    }
    assert_eq!(
        MailboxPointer::verify(&record.encode_to_vec()),
        Err(DhtError::BadPointerSignature)
    );
}

#[test]
fn a_key_bundle_is_valid_at_its_peers_bundle_key_only() {
    let key = Keypair::generate_ed25519();
    let value = bundle(&key, NOW);
    assert_eq!(bundle_claimed_peer(&value), Some(peer(&key)));
    let valid = validate(&bundle_key(&peer(&key)), &value, &rules(), NOW, &Olm).unwrap();
    assert_eq!(valid.owner, peer(&key));
    assert_eq!(valid.expires_at_ms, NOW + 30 * DAY);
    assert_eq!(
        validate(&pointer_key(&peer(&key)), &value, &rules(), NOW, &Olm),
        Err(DhtError::WrongKey("key bundle"))
    );
    assert!(!is_pointer(&value));
    assert_eq!(
        key_bundle_bytes(&pointer(&key, NOW)),
        Err(DhtError::WrongKind("key bundle"))
    );
}

#[test]
fn a_key_bundle_the_crypto_check_refuses_is_refused() {
    struct Refuse;
    impl Verifiers for Refuse {
        fn key_bundle(&self, _: &[u8], _: &PeerId) -> Result<u64, String> {
            Err("bad key".into())
        }
    }
    let key = Keypair::generate_ed25519();
    assert_eq!(
        validate(
            &bundle_key(&peer(&key)),
            &bundle(&key, NOW),
            &rules(),
            NOW,
            &Refuse
        ),
        Err(DhtError::Bundle("bad key".into()))
    );
}

#[test]
fn a_name_record_is_valid_at_its_replica_keys_only() {
    let key = Keypair::generate_ed25519();
    let record = name_record(&key, "alice", 1);
    for replica in record.name().replica_keys() {
        let valid = validate(&replica, record.to_bytes(), &rules(), NOW, &Olm).unwrap();
        assert_eq!(valid.owner, peer(&key));
        assert_eq!(valid.expires_at_ms, NOW + 30 * DAY);
    }
    assert_eq!(
        validate(
            &Name::parse("bob").unwrap().replica_key(0),
            record.to_bytes(),
            &rules(),
            NOW,
            &Olm
        ),
        Err(DhtError::NotAReplicaKey("alice".into()))
    );
    assert!(matches!(
        validate(
            &record.name().replica_key(0),
            record.to_bytes(),
            &rules(),
            NOW + 31 * DAY,
            &Olm
        ),
        Err(DhtError::Name(RecordError::Expired { .. }))
    ));
}

#[test]
fn the_callers_name_check_is_the_one_used() {
    struct Counting(Cell<usize>);
    impl Verifiers for Counting {
        fn key_bundle(&self, _: &[u8], _: &PeerId) -> Result<u64, String> {
            Err("unused".into())
        }
        fn name_record(&self, value: &[u8], rules: &NameRules, now_ms: u64) -> NameCheck {
            self.0.set(self.0.get() + 1);
            NameRecord::verify(value, rules, now_ms)
        }
    }
    let key = Keypair::generate_ed25519();
    let record = name_record(&key, "carol", 1);
    let counting = Counting(Cell::new(0));
    validate(
        &record.name().replica_key(0),
        record.to_bytes(),
        &rules(),
        NOW,
        &counting,
    )
    .unwrap();
    assert_eq!(counting.0.get(), 1);
}

#[test]
fn names_are_first_come_first_served_and_the_owner_may_renew() {
    let owner = Keypair::generate_ed25519();
    let rival = Keypair::generate_ed25519();
    let first = name_record(&owner, "dave", 1);
    let renewal = name_record(&owner, "dave", 2);
    let theirs = name_record(&rival, "dave", 5);
    let r = rules();
    assert!(may_replace(
        first.to_bytes(),
        renewal.to_bytes(),
        &r,
        NOW,
        &Olm
    ));
    assert!(!may_replace(
        renewal.to_bytes(),
        first.to_bytes(),
        &r,
        NOW,
        &Olm
    ));
    assert!(!may_replace(
        first.to_bytes(),
        theirs.to_bytes(),
        &r,
        NOW,
        &Olm
    ));
    // A stored value that no longer verifies gives way to any valid one, never to garbage.
    let later = name_record(&rival, "dave", 1);
    assert!(may_replace(b"garbage", later.to_bytes(), &r, NOW, &Olm));
    assert!(!may_replace(first.to_bytes(), b"garbage", &r, NOW, &Olm));
}

#[test]
fn keys_of_different_kinds_and_peers_differ() {
    let a = PeerId::random();
    let b = PeerId::random();
    assert_ne!(bundle_key(&a), bundle_key(&b));
    assert_ne!(pointer_key(&a), pointer_key(&b));
    assert_ne!(bundle_key(&a), pointer_key(&a));
    assert_eq!(bundle_key(&a).len(), 32);
    assert_eq!(pointer_key(&a).len(), 32);
}

#[test]
fn only_ed25519_ids_carry_a_public_key() {
    let key = Keypair::generate_ed25519();
    assert_eq!(public_key_of(&peer(&key)), Some(key.public()));
    assert_eq!(public_key_of(&PeerId::random()), None);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Of two valid pointers (or bundles) of one peer, the holder keeps the newer: replacement
    /// follows creation time and nothing else.
    #[test]
    fn newer_pointers_and_bundles_replace_older_ones(a in 0u64..4 * DAY, b in 0u64..4 * DAY) {
        let key = Keypair::generate_ed25519();
        let (pa, pb) = (pointer(&key, NOW + a), pointer(&key, NOW + b));
        prop_assert_eq!(may_replace(&pa, &pb, &rules(), NOW, &Olm), b >= a);
        let (ba, bb) = (bundle(&key, NOW + a), bundle(&key, NOW + b));
        prop_assert_eq!(may_replace(&ba, &bb, &rules(), NOW, &Olm), b >= a);
    }

    /// Whatever the bytes and the key, validation answers (never panics), and random bytes are
    /// never accepted.
    #[test]
    fn random_values_are_refused(
        key in proptest::collection::vec(any::<u8>(), 0..40),
        value in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        prop_assert!(validate(&key, &value, &rules(), NOW, &Olm).is_err());
        prop_assert!(!may_replace(&value, &value, &rules(), NOW, &Olm));
    }

    /// A valid value is valid under exactly one key of its kind: its own peer's.
    #[test]
    fn a_value_is_valid_under_its_own_key_and_no_other_peers(seed in any::<u8>()) {
        let key = Keypair::ed25519_from_bytes([seed.max(1); 32]).unwrap();
        let other = PeerId::random();
        let p = pointer(&key, NOW);
        let k = bundle(&key, NOW);
        prop_assert!(validate(&pointer_key(&peer(&key)), &p, &rules(), NOW, &Olm).is_ok());
        prop_assert!(validate(&pointer_key(&other), &p, &rules(), NOW, &Olm).is_err());
        prop_assert!(validate(&bundle_key(&peer(&key)), &k, &rules(), NOW, &Olm).is_ok());
        prop_assert!(validate(&bundle_key(&other), &k, &rules(), NOW, &Olm).is_err());
    }
}
