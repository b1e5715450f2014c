use std::ops::ControlFlow;

use super::*;

pub(crate) const NOW: u64 = 1_800_000_000_000;
pub(crate) const DAY: u64 = 86_400_000;

/// Default rules with a proof of work cheap enough for tests.
pub(crate) fn rules() -> NameRules {
    NameRules {
        difficulty: 8,
        ..NameRules::default()
    }
}

/// A claim of `name` by `keypair` made at [`NOW`], valid 30 days, with its proof of work.
pub(crate) fn params(keypair: &Keypair, name: &str, seq: u64) -> ClaimParams {
    let name = Name::parse(name).unwrap();
    let peer = keypair.public().to_peer_id().to_bytes();
    let nonce = pow::solve(name.as_str(), &peer, NOW, 8, |_| ControlFlow::Continue(())).unwrap();
    ClaimParams {
        name,
        created_at_ms: NOW,
        seq,
        expires_at_ms: NOW + 30 * DAY,
        pow_nonce: nonce,
        addrs: vec!["/ip4/127.0.0.1/tcp/4717".parse().unwrap()],
    }
}

#[test]
fn a_signed_record_verifies_to_the_same_claim() {
    let key = Keypair::generate_ed25519();
    let record = NameRecord::sign(&key, params(&key, "alice", 1)).unwrap();
    let verified = NameRecord::verify(record.to_bytes(), &rules(), NOW).unwrap();
    assert_eq!(verified, record);
    assert_eq!(verified.peer_id(), key.public().to_peer_id());
    assert_eq!(verified.name().as_str(), "alice");
}

#[test]
fn every_kind_of_bad_record_is_refused_with_its_own_error() {
    let key = Keypair::generate_ed25519();
    let good = NameRecord::sign(&key, params(&key, "alice", 1)).unwrap();
    let r = rules();

    // Garbage.
    assert!(matches!(
        NameRecord::verify(b"\xff\x00garbage", &r, NOW),
        Err(RecordError::Malformed(_))
    ));
    // Too large.
    let big = vec![0u8; 5000];
    assert!(matches!(
        NameRecord::verify(&big, &r, NOW),
        Err(RecordError::TooLarge { .. })
    ));
    // Expired.
    assert!(matches!(
        NameRecord::verify(good.to_bytes(), &r, NOW + 31 * DAY),
        Err(RecordError::Expired { .. })
    ));
    // Created in the future.
    assert!(matches!(
        NameRecord::verify(good.to_bytes(), &r, NOW - DAY),
        Err(RecordError::FromTheFuture)
    ));
    // Lifetime too long.
    let mut long = params(&key, "alice", 1);
    long.expires_at_ms = NOW + 60 * DAY;
    let long = NameRecord::sign(&key, long).unwrap();
    assert!(matches!(
        NameRecord::verify(long.to_bytes(), &r, NOW),
        Err(RecordError::LivesTooLong { .. })
    ));
    // Weak proof of work.
    let strict = NameRules {
        difficulty: 30,
        ..rules()
    };
    assert!(matches!(
        NameRecord::verify(good.to_bytes(), &strict, NOW),
        Err(RecordError::BadProofOfWork(30))
    ));
}

fn tamper(bytes: &[u8], f: impl FnOnce(&mut SignedNameRecord, &mut NameClaim)) -> Vec<u8> {
    let DhtRecord {
        body: Some(Body::Name(mut signed)),
    } = DhtRecord::decode(bytes).unwrap()
    else {
        panic!("not a name record")
    };
    let mut claim = NameClaim::decode(signed.claim.as_slice()).unwrap();
    f(&mut signed, &mut claim);
    DhtRecord {
        body: Some(Body::Name(signed)),
    }
    .encode_to_vec()
}

#[test]
fn a_hijacked_or_forged_record_fails_the_signature_or_key_check() {
    let owner = Keypair::generate_ed25519();
    let thief = Keypair::generate_ed25519();
    let good = NameRecord::sign(&owner, params(&owner, "alice", 1)).unwrap();
    let r = rules();

    // Claim bytes changed after signing (owner's key, another peer id): signature fails.
    let forged = tamper(good.to_bytes(), |signed, claim| {
        claim.seq = 99;
        signed.claim = claim.encode_to_vec();
    });
    assert_eq!(
        NameRecord::verify(&forged, &r, NOW),
        Err(RecordError::BadSignature)
    );

    // Thief swaps in its own key but keeps the owner's peer id: key mismatch.
    let swapped = tamper(good.to_bytes(), |signed, claim| {
        claim.public_key = thief.public().encode_protobuf();
        signed.claim = claim.encode_to_vec();
        signed.signature = thief.sign(&signed.claim).unwrap();
    });
    assert_eq!(
        NameRecord::verify(&swapped, &r, NOW),
        Err(RecordError::KeyMismatch)
    );

    // A name that is not normalized.
    let upper = tamper(good.to_bytes(), |signed, claim| {
        claim.name = "Alice".into();
        signed.claim = claim.encode_to_vec();
        signed.signature = owner.sign(&signed.claim).unwrap();
    });
    assert!(matches!(
        NameRecord::verify(&upper, &r, NOW),
        Err(RecordError::NotNormalized(_))
    ));
}

#[test]
fn the_signature_covers_the_exact_claim_bytes() {
    // Appending an unknown field to the claim changes the bytes: verification must fail even
    // though a re-encoding of the decoded claim would look identical.
    let key = Keypair::generate_ed25519();
    let good = NameRecord::sign(&key, params(&key, "alice", 1)).unwrap();
    let extended = tamper(good.to_bytes(), |signed, _| {
        signed.claim.extend_from_slice(&[0x78, 0x01]); // field 15, varint 1
    });
    assert_eq!(
        NameRecord::verify(&extended, &rules(), NOW),
        Err(RecordError::BadSignature)
    );
}

proptest::proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
        let _ = NameRecord::verify(&bytes, &rules(), NOW);
    }
}

#[test]
fn the_owner_can_read_back_its_expired_claim_for_renewal() {
    let key = Keypair::generate_ed25519();
    let record = NameRecord::sign(&key, params(&key, "alice", 3)).unwrap();
    let later = NOW + 40 * DAY;
    assert!(NameRecord::verify(record.to_bytes(), &rules(), later).is_err());
    let own = NameRecord::verify_own(record.to_bytes(), &rules()).unwrap();
    assert_eq!(own.params().seq, 3);
    // Signature and proof of work are still checked.
    let strict = NameRules {
        difficulty: 30,
        ..rules()
    };
    assert!(NameRecord::verify_own(record.to_bytes(), &strict).is_err());
}
