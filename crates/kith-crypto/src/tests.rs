//! Tests with real vodozemac sessions between in-memory nodes; bytes go through the same
//! encodings the network would carry.

use kith_proto::v1 as proto;
use libp2p::identity::{Keypair, PeerId};
use proptest::prelude::*;
use prost::Message;

use crate::*;

/// One node's crypto state plus the libp2p identity that signs its bundle.
struct Node {
    keypair: Keypair,
    olm: Olm,
}

impl Node {
    fn new() -> Self {
        Self {
            keypair: Keypair::generate_ed25519(),
            olm: Olm::new(),
        }
    }

    fn peer_id(&self) -> PeerId {
        self.keypair.public().to_peer_id()
    }

    fn identity_key(&self) -> Curve25519Key {
        self.olm.identity_key()
    }

    /// The bundle as another node gets it: signed, encoded, fetched, verified.
    fn bundle(&self) -> KeyBundle {
        let bytes = self
            .olm
            .key_bundle(&self.keypair, 1_000)
            .unwrap()
            .to_bytes();
        KeyBundle::verify(&bytes, &self.peer_id()).unwrap()
    }

    /// Encrypts to `to` (starting a session from its bundle if needed) and encodes for the wire.
    fn send(&mut self, to: &KeyBundle, plaintext: &[u8]) -> Vec<u8> {
        self.olm
            .encrypt_to_bundle(to, plaintext)
            .unwrap()
            .to_bytes()
    }

    /// Encrypts on an existing session only.
    fn send_on_session(&mut self, to: &Curve25519Key, plaintext: &[u8]) -> Vec<u8> {
        self.olm.encrypt(to, plaintext).unwrap().to_bytes()
    }

    fn receive(&mut self, from: &Curve25519Key, bytes: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let ciphertext = Ciphertext::from_bytes(bytes)?;
        self.olm.decrypt(from, &ciphertext)
    }
}

fn message_type(bytes: &[u8]) -> MessageType {
    Ciphertext::from_bytes(bytes).unwrap().message_type()
}

/// Alice and Bob after Alice's first message and Bob's reply: both sides now send normal messages.
fn established() -> (Node, Node) {
    let mut alice = Node::new();
    let mut bob = Node::new();
    let bob_bundle = bob.bundle();
    let first = alice.send(&bob_bundle, b"hello bob");
    assert_eq!(
        bob.receive(&alice.identity_key(), &first).unwrap(),
        b"hello bob"
    );
    let reply = bob.send_on_session(&alice.identity_key(), b"hello alice");
    assert_eq!(
        alice.receive(&bob.identity_key(), &reply).unwrap(),
        b"hello alice"
    );
    (alice, bob)
}

#[track_caller]
fn assert_undecryptable(result: Result<Vec<u8>, CryptoError>, expected: DecryptFailure) {
    match result {
        Err(CryptoError::Undecryptable(failure)) => assert_eq!(failure, expected),
        other => panic!("expected Undecryptable({expected:?}), got {other:?}"),
    }
}

#[track_caller]
fn assert_bundle_error(
    result: Result<KeyBundle, CryptoError>,
    check: impl Fn(&BundleError) -> bool,
) {
    match result {
        Err(CryptoError::Bundle(e)) if check(&e) => {}
        other => panic!("unexpected result {other:?}"),
    }
}

/// Encodes and signs an arbitrary bundle body, to forge bundles `Olm` would never make.
fn signed_bundle(keypair: &Keypair, body: &proto::KeyBundle) -> Vec<u8> {
    let bundle = body.encode_to_vec();
    proto::SignedKeyBundle {
        signature: keypair.sign(&bundle).unwrap(),
        bundle,
        public_key: keypair.public().encode_protobuf(),
    }
    .encode_to_vec()
}

fn decode_signed(bytes: &[u8]) -> proto::SignedKeyBundle {
    proto::SignedKeyBundle::decode(bytes).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Sessions

#[test]
fn first_message_via_bundle_is_a_pre_key_message_and_decrypts() {
    let mut alice = Node::new();
    let mut bob = Node::new();
    let first = alice.send(&bob.bundle(), b"hi");
    assert_eq!(message_type(&first), MessageType::PreKey);
    assert!(alice.olm.has_session(&bob.identity_key()));
    assert!(!bob.olm.has_session(&alice.identity_key()));

    assert_eq!(bob.receive(&alice.identity_key(), &first).unwrap(), b"hi");
    assert_eq!(bob.olm.session_count(&alice.identity_key()), 1);
}

#[test]
fn reply_switches_both_sides_to_normal_messages() {
    let mut alice = Node::new();
    let mut bob = Node::new();
    let bob_bundle = bob.bundle();
    let first = alice.send(&bob_bundle, b"one");
    // Until Alice hears back, every message carries the pre-key material.
    let second = alice.send(&bob_bundle, b"two");
    assert_eq!(message_type(&second), MessageType::PreKey);
    assert_eq!(bob.receive(&alice.identity_key(), &first).unwrap(), b"one");
    assert_eq!(bob.receive(&alice.identity_key(), &second).unwrap(), b"two");
    assert_eq!(
        bob.olm.session_count(&alice.identity_key()),
        1,
        "one session, not two"
    );

    let reply = bob.send_on_session(&alice.identity_key(), b"three");
    assert_eq!(message_type(&reply), MessageType::Normal);
    assert_eq!(
        alice.receive(&bob.identity_key(), &reply).unwrap(),
        b"three"
    );

    let next = alice.send_on_session(&bob.identity_key(), b"four");
    assert_eq!(message_type(&next), MessageType::Normal);
    assert_eq!(bob.receive(&alice.identity_key(), &next).unwrap(), b"four");
}

#[test]
fn many_messages_both_ways_with_out_of_order_delivery_within_each_chain() {
    let (mut alice, mut bob) = established();
    let (a, b) = (alice.identity_key(), bob.identity_key());
    for round in 0..10 {
        // A batch from each side is one chain; deliver it in a scrambled order.
        let from_alice: Vec<(Vec<u8>, Vec<u8>)> = (0..25)
            .map(|i| {
                let text = format!("alice {round}/{i}").into_bytes();
                (alice.send_on_session(&b, &text), text)
            })
            .collect();
        for index in scrambled(from_alice.len(), round) {
            let (wire, text) = &from_alice[index];
            assert_eq!(&bob.receive(&a, wire).unwrap(), text);
        }
        let from_bob: Vec<(Vec<u8>, Vec<u8>)> = (0..25)
            .map(|i| {
                let text = format!("bob {round}/{i}").into_bytes();
                (bob.send_on_session(&a, &text), text)
            })
            .collect();
        for index in scrambled(from_bob.len(), round + 1) {
            let (wire, text) = &from_bob[index];
            assert_eq!(&alice.receive(&b, wire).unwrap(), text);
        }
    }
    assert_eq!(alice.olm.session_count(&b), 1);
    assert_eq!(bob.olm.session_count(&a), 1);
}

/// A deterministic permutation of `0..len`: reversed, interleaved or rotated depending on `seed`.
fn scrambled(len: usize, seed: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    match seed % 3 {
        0 => order.reverse(),
        1 => order.sort_by_key(|i| (i % 2 == 0, *i)),
        _ => order.rotate_left(len / 3),
    }
    order
}

#[test]
fn a_delayed_message_from_an_earlier_chain_still_decrypts() {
    let (mut alice, mut bob) = established();
    let (a, b) = (alice.identity_key(), bob.identity_key());
    let delayed = alice.send_on_session(&b, b"sent first, delivered last");
    let ping = alice.send_on_session(&b, b"ping");
    assert_eq!(bob.receive(&a, &ping).unwrap(), b"ping");
    let pong = bob.send_on_session(&a, b"pong");
    assert_eq!(alice.receive(&b, &pong).unwrap(), b"pong");
    // Alice now ratchets to a new chain.
    let later = alice.send_on_session(&b, b"new chain");
    assert_eq!(bob.receive(&a, &later).unwrap(), b"new chain");
    assert_eq!(
        bob.receive(&a, &delayed).unwrap(),
        b"sent first, delivered last"
    );
}

#[test]
fn pre_key_messages_delivered_out_of_order_share_one_session() {
    let mut alice = Node::new();
    let mut bob = Node::new();
    let bob_bundle = bob.bundle();
    let wire: Vec<Vec<u8>> = (0..4)
        .map(|i| alice.send(&bob_bundle, format!("m{i}").as_bytes()))
        .collect();
    for i in [3, 0, 2, 1] {
        assert_eq!(
            bob.receive(&alice.identity_key(), &wire[i]).unwrap(),
            format!("m{i}").as_bytes()
        );
    }
    assert_eq!(bob.olm.session_count(&alice.identity_key()), 1);
}

#[test]
fn concurrent_first_messages_from_both_sides_converge() {
    let mut alice = Node::new();
    let mut bob = Node::new();
    let (a, b) = (alice.identity_key(), bob.identity_key());
    let (alice_bundle, bob_bundle) = (alice.bundle(), bob.bundle());
    let from_alice = alice.send(&bob_bundle, b"hi from alice");
    let from_bob = bob.send(&alice_bundle, b"hi from bob");
    assert_eq!(bob.receive(&a, &from_alice).unwrap(), b"hi from alice");
    assert_eq!(alice.receive(&b, &from_bob).unwrap(), b"hi from bob");
    assert_eq!(alice.olm.session_count(&b), 2);
    assert_eq!(bob.olm.session_count(&a), 2);
    // Each side now answers on the session it last heard on; the conversation keeps working.
    for i in 0..5 {
        let text = format!("a{i}");
        let wire = alice.send_on_session(&b, text.as_bytes());
        assert_eq!(bob.receive(&a, &wire).unwrap(), text.as_bytes());
        let text = format!("b{i}");
        let wire = bob.send_on_session(&a, text.as_bytes());
        assert_eq!(alice.receive(&b, &wire).unwrap(), text.as_bytes());
    }
}

#[test]
fn encrypt_without_a_session_asks_for_a_bundle() {
    let mut alice = Node::new();
    let bob = Node::new();
    let err = alice.olm.encrypt(&bob.identity_key(), b"x").unwrap_err();
    assert!(
        matches!(err, CryptoError::NoSession { peer } if peer == bob.identity_key()),
        "{err:?}"
    );
}

#[test]
fn normal_message_without_a_session_is_no_session() {
    let (mut alice, bob) = established();
    let wire = alice.send_on_session(&bob.identity_key(), b"x");
    let mut stranger = Node::new();
    let err = stranger.receive(&alice.identity_key(), &wire).unwrap_err();
    assert!(matches!(err, CryptoError::NoSession { .. }), "{err:?}");
}

#[test]
fn decrypt_refuses_a_message_naming_another_sender() {
    let mut alice = Node::new();
    let mut bob = Node::new();
    let mallory = Node::new();
    let wire = alice.send(&bob.bundle(), b"hi");
    let err = bob.receive(&mallory.identity_key(), &wire).unwrap_err();
    assert!(
        matches!(err, CryptoError::SenderMismatch { expected, got }
            if expected == mallory.identity_key() && got == alice.identity_key()),
        "{err:?}"
    );
}

#[test]
fn oversized_plaintext_is_refused_before_any_session_is_made() {
    let mut alice = Node::new();
    let bob = Node::new();
    let big = vec![0u8; Olm::MAX_PLAINTEXT_LEN + 1];
    let err = alice
        .olm
        .encrypt_to_bundle(&bob.bundle(), &big)
        .unwrap_err();
    assert!(
        matches!(err, CryptoError::PlaintextTooLarge { .. }),
        "{err:?}"
    );
    assert!(!alice.olm.has_session(&bob.identity_key()));
    // The largest allowed plaintext fits in a ciphertext the receiver accepts.
    let mut bob = bob;
    let max = vec![7u8; Olm::MAX_PLAINTEXT_LEN];
    let wire = alice.send(&bob.bundle(), &max);
    assert!(wire.len() <= Ciphertext::MAX_LEN);
    assert_eq!(bob.receive(&alice.identity_key(), &wire).unwrap(), max);
}

#[test]
fn forgotten_sessions_are_replaced_from_the_bundle() {
    let (mut alice, mut bob) = established();
    let (a, b) = (alice.identity_key(), bob.identity_key());
    assert_eq!(alice.olm.forget_sessions(&b), 1);
    assert!(!alice.olm.has_session(&b));
    let wire = alice.send(&bob.bundle(), b"fresh start");
    assert_eq!(message_type(&wire), MessageType::PreKey);
    assert_eq!(bob.receive(&a, &wire).unwrap(), b"fresh start");
    assert_eq!(bob.olm.session_count(&a), 2);
    let reply = bob.send_on_session(&a, b"got it");
    assert_eq!(alice.receive(&b, &reply).unwrap(), b"got it");
}

#[test]
fn sessions_per_peer_are_capped() {
    let mut alice = Node::new();
    let mut bob = Node::new();
    let bob_bundle = bob.bundle();
    for i in 0..Olm::MAX_SESSIONS_PER_PEER + 3 {
        alice.olm.forget_sessions(&bob.identity_key());
        let wire = alice.send(&bob_bundle, format!("{i}").as_bytes());
        bob.receive(&alice.identity_key(), &wire).unwrap();
    }
    assert_eq!(
        bob.olm.session_count(&alice.identity_key()),
        Olm::MAX_SESSIONS_PER_PEER
    );
    // The newest session is kept: Alice's current one still works both ways.
    let wire = alice.send_on_session(&bob.identity_key(), b"latest");
    assert_eq!(
        bob.receive(&alice.identity_key(), &wire).unwrap(),
        b"latest"
    );
}

// ---------------------------------------------------------------------------------------------
// Tampering and replays

#[test]
fn tampered_ciphertext_fails_and_the_session_still_works() {
    let (mut alice, mut bob) = established();
    let (a, b) = (alice.identity_key(), bob.identity_key());
    let ciphertext = alice.olm.encrypt(&b, b"the real one").unwrap();
    let body = ciphertext.body();
    // Flip every byte of the Olm message in turn: none may decrypt, none may break the session.
    for position in 0..body.len() {
        let mut tampered = body.clone();
        tampered[position] ^= 0x01;
        let wire = proto::OlmMessage {
            r#type: 1,
            body: tampered,
            sender_identity_key: a.to_bytes().to_vec(),
        }
        .encode_to_vec();
        let result = bob.receive(&a, &wire);
        assert!(
            matches!(
                result,
                Err(CryptoError::MalformedMessage { .. } | CryptoError::Undecryptable(_))
            ),
            "flipping byte {position} gave {result:?}"
        );
    }
    // The last bytes are the MAC: flipping one is plain tampering.
    let mut tampered = body.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x80;
    let wire = proto::OlmMessage {
        r#type: 1,
        body: tampered,
        sender_identity_key: a.to_bytes().to_vec(),
    }
    .encode_to_vec();
    assert_undecryptable(bob.receive(&a, &wire), DecryptFailure::Tampered);

    assert_eq!(bob.olm.decrypt(&a, &ciphertext).unwrap(), b"the real one");
    let next = alice.send_on_session(&b, b"and the next");
    assert_eq!(bob.receive(&a, &next).unwrap(), b"and the next");
}

#[test]
fn tampered_pre_key_message_creates_no_session() {
    let mut alice = Node::new();
    let mut bob = Node::new();
    let ciphertext = alice.olm.encrypt_to_bundle(&bob.bundle(), b"hi").unwrap();
    let mut body = ciphertext.body();
    let last = body.len() - 1;
    body[last] ^= 0x01;
    let wire = proto::OlmMessage {
        r#type: 0,
        body,
        sender_identity_key: alice.identity_key().to_bytes().to_vec(),
    }
    .encode_to_vec();
    assert_undecryptable(
        bob.receive(&alice.identity_key(), &wire),
        DecryptFailure::Tampered,
    );
    assert!(!bob.olm.has_session(&alice.identity_key()));
    assert!(!bob.olm.fallback_key_used());
    assert_eq!(
        bob.olm.decrypt(&alice.identity_key(), &ciphertext).unwrap(),
        b"hi"
    );
}

#[test]
fn replayed_normal_message_is_refused_as_already_used() {
    let (mut alice, mut bob) = established();
    let (a, b) = (alice.identity_key(), bob.identity_key());
    let wire = alice.send_on_session(&b, b"once");
    assert_eq!(bob.receive(&a, &wire).unwrap(), b"once");
    assert_undecryptable(bob.receive(&a, &wire), DecryptFailure::AlreadyUsed);
    // Also for a message that was skipped and then delivered (its key came from the skipped store).
    let skipped = alice.send_on_session(&b, b"skipped");
    let after = alice.send_on_session(&b, b"after");
    assert_eq!(bob.receive(&a, &after).unwrap(), b"after");
    assert_eq!(bob.receive(&a, &skipped).unwrap(), b"skipped");
    assert_undecryptable(bob.receive(&a, &skipped), DecryptFailure::AlreadyUsed);
    assert_undecryptable(bob.receive(&a, &after), DecryptFailure::AlreadyUsed);
}

#[test]
fn replayed_pre_key_message_is_refused_and_creates_no_second_session() {
    let mut alice = Node::new();
    let mut bob = Node::new();
    let wire = alice.send(&bob.bundle(), b"once");
    assert_eq!(bob.receive(&alice.identity_key(), &wire).unwrap(), b"once");
    assert_undecryptable(
        bob.receive(&alice.identity_key(), &wire),
        DecryptFailure::AlreadyUsed,
    );
    assert_eq!(bob.olm.session_count(&alice.identity_key()), 1);
}

#[test]
fn ciphertext_does_not_contain_the_plaintext() {
    let (mut alice, bob) = established();
    let plaintext = b"a very recognisable plaintext, repeated: recognisable plaintext".repeat(4);
    let normal = alice.send_on_session(&bob.identity_key(), &plaintext);
    let mut carol = Node::new();
    let pre_key = carol.send(&bob.bundle(), &plaintext);
    for wire in [normal, pre_key] {
        assert!(
            !wire
                .windows(16)
                .any(|w| plaintext.windows(16).any(|p| p == w)),
            "16 plaintext bytes appear in the ciphertext"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Ciphertext encoding

#[test]
fn ciphertext_round_trips_through_bytes() {
    let mut alice = Node::new();
    let bob = Node::new();
    let ciphertext = alice.olm.encrypt_to_bundle(&bob.bundle(), b"x").unwrap();
    let decoded = Ciphertext::from_bytes(&ciphertext.to_bytes()).unwrap();
    assert_eq!(decoded, ciphertext);
    assert_eq!(decoded.sender_identity_key(), alice.identity_key());
    assert_eq!(decoded.message_type(), MessageType::PreKey);
    assert_eq!(decoded.message_type().to_wire(), 0);
    let debug = format!("{decoded:?}");
    assert!(
        debug.contains("PreKey") && debug.contains("body_len"),
        "{debug}"
    );
}

#[test]
fn malformed_ciphertexts_are_typed_errors() {
    let mut alice = Node::new();
    let bob = Node::new();
    let mallory = Node::new();
    let ciphertext = alice.olm.encrypt_to_bundle(&bob.bundle(), b"x").unwrap();
    let good = proto::OlmMessage::decode(ciphertext.to_bytes().as_slice()).unwrap();

    let check = |wire: proto::OlmMessage, what: &str| {
        let err = Ciphertext::from_bytes(&wire.encode_to_vec()).unwrap_err();
        assert!(
            matches!(err, CryptoError::MalformedMessage { .. }),
            "{what}: {err:?}"
        );
    };
    check(
        proto::OlmMessage {
            r#type: 7,
            ..good.clone()
        },
        "unknown type",
    );
    check(
        proto::OlmMessage {
            r#type: 1,
            ..good.clone()
        },
        "pre-key body as normal",
    );
    check(
        proto::OlmMessage {
            sender_identity_key: vec![1; 31],
            ..good.clone()
        },
        "short sender key",
    );
    check(
        proto::OlmMessage {
            sender_identity_key: mallory.identity_key().to_bytes().to_vec(),
            ..good.clone()
        },
        "pre-key naming another sender",
    );
    check(
        proto::OlmMessage {
            body: vec![],
            ..good
        },
        "empty body",
    );
    let err = Ciphertext::from_bytes(&[0xff; 10]).unwrap_err();
    assert!(
        matches!(err, CryptoError::MalformedMessage { .. }),
        "{err:?}"
    );
    let err = Ciphertext::from_bytes(&vec![0; Ciphertext::MAX_LEN + 1]).unwrap_err();
    assert!(
        matches!(err, CryptoError::MessageTooLarge { .. }),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Key bundles

#[test]
fn bundle_signs_and_verifies() {
    let node = Node::new();
    let signed = node.olm.key_bundle(&node.keypair, 1_234).unwrap();
    assert!(
        signed.as_bytes().len() < KeyBundle::MAX_LEN / 8,
        "{}",
        signed.as_bytes().len()
    );
    let bundle = KeyBundle::verify(&signed.to_bytes(), &node.peer_id()).unwrap();
    assert_eq!(&bundle, signed.bundle());
    assert_eq!(bundle.peer_id(), node.peer_id());
    assert_eq!(bundle.identity_key(), node.olm.identity_key());
    assert_eq!(bundle.signing_key(), node.olm.signing_key());
    assert_ne!(bundle.fallback_key(), bundle.identity_key());
    assert_eq!(bundle.created_at_ms(), 1_234);
    // The bundle is stable until the fallback key rotates.
    assert_eq!(node.bundle().fallback_key(), bundle.fallback_key());
}

#[test]
fn bundle_fetched_for_another_peer_is_refused() {
    let node = Node::new();
    let other = Node::new();
    let bytes = node.olm.key_bundle(&node.keypair, 1).unwrap().to_bytes();
    assert_bundle_error(KeyBundle::verify(&bytes, &other.peer_id()), |e| {
        matches!(e, BundleError::WrongSigner { expected, got }
            if **expected == other.peer_id() && **got == node.peer_id())
    });
}

#[test]
fn bundle_re_signed_by_another_key_is_refused() {
    // Mallory takes Bob's bundle and signs it herself: the signer no longer matches Bob.
    let bob = Node::new();
    let mallory = Node::new();
    let mut signed = decode_signed(bob.olm.key_bundle(&bob.keypair, 1).unwrap().as_bytes());
    signed.signature = mallory.keypair.sign(&signed.bundle).unwrap();
    signed.public_key = mallory.keypair.public().encode_protobuf();
    assert_bundle_error(
        KeyBundle::verify(&signed.encode_to_vec(), &bob.peer_id()),
        |e| matches!(e, BundleError::WrongSigner { .. }),
    );
}

#[test]
fn bundle_with_a_bad_signature_is_refused() {
    let bob = Node::new();
    let mallory = Node::new();
    let mut signed = decode_signed(bob.olm.key_bundle(&bob.keypair, 1).unwrap().as_bytes());
    // A valid signature, but by another key, under Bob's public key.
    signed.signature = mallory.keypair.sign(&signed.bundle).unwrap();
    assert_bundle_error(
        KeyBundle::verify(&signed.encode_to_vec(), &bob.peer_id()),
        |e| matches!(e, BundleError::BadSignature),
    );
    signed.signature.clear();
    assert_bundle_error(
        KeyBundle::verify(&signed.encode_to_vec(), &bob.peer_id()),
        |e| matches!(e, BundleError::BadSignature),
    );
}

#[test]
fn bundle_with_tampered_bytes_is_refused() {
    let bob = Node::new();
    let mallory = Node::new();
    let signed = decode_signed(bob.olm.key_bundle(&bob.keypair, 1).unwrap().as_bytes());
    // Swap in Mallory's fallback key, keeping Bob's signature: caught by the signature check
    // before the body is even decoded.
    let mut body = proto::KeyBundle::decode(signed.bundle.as_slice()).unwrap();
    body.fallback_key = mallory.bundle().fallback_key().to_bytes().to_vec();
    let forged = proto::SignedKeyBundle {
        bundle: body.encode_to_vec(),
        ..signed.clone()
    };
    assert_bundle_error(
        KeyBundle::verify(&forged.encode_to_vec(), &bob.peer_id()),
        |e| matches!(e, BundleError::BadSignature),
    );
    // Any single flipped bit in the signed body is caught the same way.
    for position in 0..signed.bundle.len() {
        let mut bundle = signed.bundle.clone();
        bundle[position] ^= 0x01;
        let tampered = proto::SignedKeyBundle {
            bundle,
            ..signed.clone()
        };
        assert_bundle_error(
            KeyBundle::verify(&tampered.encode_to_vec(), &bob.peer_id()),
            |e| matches!(e, BundleError::BadSignature),
        );
    }
    // A trailing byte after the wrapper changes how it decodes, never yields a valid bundle.
    let mut bytes = signed.encode_to_vec();
    bytes.push(0x08);
    assert!(KeyBundle::verify(&bytes, &bob.peer_id()).is_err());
}

#[test]
fn bundle_naming_another_peer_inside_is_refused() {
    let mallory = Node::new();
    let bob = Node::new();
    let body = proto::KeyBundle {
        peer_id: bob.peer_id().to_bytes(),
        identity_key: mallory.identity_key().to_bytes().to_vec(),
        signing_key: mallory.olm.signing_key().to_bytes().to_vec(),
        fallback_key: mallory.bundle().fallback_key().to_bytes().to_vec(),
        created_at_ms: 1,
    };
    let bytes = signed_bundle(&mallory.keypair, &body);
    assert_bundle_error(
        KeyBundle::verify(&bytes, &mallory.peer_id()),
        |e| matches!(e, BundleError::PeerIdMismatch { signer, .. } if **signer == mallory.peer_id()),
    );
}

#[test]
fn oversized_bundle_is_refused_before_decoding() {
    let node = Node::new();
    let mut signed = decode_signed(node.olm.key_bundle(&node.keypair, 1).unwrap().as_bytes());
    signed.signature = vec![0; KeyBundle::MAX_LEN];
    assert_bundle_error(
        KeyBundle::verify(&signed.encode_to_vec(), &node.peer_id()),
        |e| matches!(e, BundleError::TooLarge { max, .. } if *max == KeyBundle::MAX_LEN),
    );
}

#[test]
fn garbage_bundle_is_malformed() {
    let node = Node::new();
    assert_bundle_error(KeyBundle::verify(&[0xff; 64], &node.peer_id()), |e| {
        matches!(e, BundleError::Malformed { .. })
    });
    // Decodes as an empty wrapper: the missing signer key is reported.
    assert_bundle_error(KeyBundle::verify(&[], &node.peer_id()), |e| {
        matches!(e, BundleError::BadPublicKey { .. })
    });
    let mut signed = decode_signed(node.olm.key_bundle(&node.keypair, 1).unwrap().as_bytes());
    signed.public_key = vec![1, 2, 3];
    assert_bundle_error(
        KeyBundle::verify(&signed.encode_to_vec(), &node.peer_id()),
        |e| matches!(e, BundleError::BadPublicKey { .. }),
    );
    // A correctly signed body that is not a KeyBundle.
    let body = vec![0xff; 40];
    let bytes = proto::SignedKeyBundle {
        signature: node.keypair.sign(&body).unwrap(),
        bundle: body,
        public_key: node.keypair.public().encode_protobuf(),
    }
    .encode_to_vec();
    assert_bundle_error(KeyBundle::verify(&bytes, &node.peer_id()), |e| {
        matches!(e, BundleError::Malformed { .. })
    });
}

#[test]
fn bundle_with_unusable_keys_is_refused() {
    let node = Node::new();
    let good = proto::KeyBundle {
        peer_id: node.peer_id().to_bytes(),
        identity_key: node.identity_key().to_bytes().to_vec(),
        signing_key: node.olm.signing_key().to_bytes().to_vec(),
        fallback_key: node.bundle().fallback_key().to_bytes().to_vec(),
        created_at_ms: 1,
    };
    let check = |body: proto::KeyBundle, which: &str| {
        let bytes = signed_bundle(&node.keypair, &body);
        assert_bundle_error(
            KeyBundle::verify(&bytes, &node.peer_id()),
            |e| matches!(e, BundleError::BadKey { which: w, .. } if *w == which),
        );
    };
    // The all-zero point is of low order: any Diffie-Hellman with it is predictable.
    check(
        proto::KeyBundle {
            identity_key: vec![0; 32],
            ..good.clone()
        },
        "identity key",
    );
    check(
        proto::KeyBundle {
            fallback_key: vec![1; 31],
            ..good.clone()
        },
        "fallback key",
    );
    check(
        proto::KeyBundle {
            fallback_key: vec![0; 32],
            ..good.clone()
        },
        "fallback key",
    );
    check(
        proto::KeyBundle {
            signing_key: vec![],
            ..good.clone()
        },
        "signing key",
    );
    assert!(KeyBundle::verify(&signed_bundle(&node.keypair, &good), &node.peer_id()).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Fallback key rotation

#[test]
fn fallback_key_rotates_after_use_and_the_previous_one_keeps_working() {
    let mut bob = Node::new();
    let first_bundle = bob.bundle();
    assert!(!bob.olm.rotate_fallback_key_if_used(), "nothing used yet");

    let mut alice = Node::new();
    let wire = alice.send(&first_bundle, b"from alice");
    bob.receive(&alice.identity_key(), &wire).unwrap();
    assert!(bob.olm.fallback_key_used());
    assert!(bob.olm.rotate_fallback_key_if_used(), "must republish");
    assert!(!bob.olm.fallback_key_used());
    assert!(!bob.olm.rotate_fallback_key_if_used());
    let second_bundle = bob.bundle();
    assert_ne!(second_bundle.fallback_key(), first_bundle.fallback_key());
    assert_eq!(second_bundle.identity_key(), first_bundle.identity_key());

    // Carol fetched the first bundle before the rotation: her first message still decrypts, and
    // using the previous key does not demand another rotation.
    let mut carol = Node::new();
    let wire = carol.send(&first_bundle, b"from carol");
    assert_eq!(
        bob.receive(&carol.identity_key(), &wire).unwrap(),
        b"from carol"
    );
    assert!(!bob.olm.fallback_key_used());

    // Dave uses the second bundle, which rotates again; the first key is now gone.
    let mut dave = Node::new();
    let wire = dave.send(&second_bundle, b"from dave");
    bob.receive(&dave.identity_key(), &wire).unwrap();
    assert!(bob.olm.rotate_fallback_key_if_used());
    let mut eve = Node::new();
    let wire = eve.send(&first_bundle, b"too late");
    let err = bob.receive(&eve.identity_key(), &wire).unwrap_err();
    assert!(
        matches!(err, CryptoError::UnknownPrekey { key } if key == first_bundle.fallback_key()),
        "{err:?}"
    );
    // Established sessions are unaffected by rotation.
    let reply = bob.send_on_session(&alice.identity_key(), b"still here");
    assert_eq!(
        alice.receive(&bob.identity_key(), &reply).unwrap(),
        b"still here"
    );
}

#[test]
fn pre_key_message_for_another_account_is_unknown_prekey() {
    let mut alice = Node::new();
    let mut bob = Node::new();
    let stranger = Node::new();
    // A bundle with Bob's identity but someone else's fallback key (e.g. Bob reinstalled).
    let mixed = proto::KeyBundle {
        peer_id: bob.peer_id().to_bytes(),
        identity_key: bob.identity_key().to_bytes().to_vec(),
        signing_key: bob.olm.signing_key().to_bytes().to_vec(),
        fallback_key: stranger.bundle().fallback_key().to_bytes().to_vec(),
        created_at_ms: 1,
    };
    let bundle = KeyBundle::verify(&signed_bundle(&bob.keypair, &mixed), &bob.peer_id()).unwrap();
    let wire = alice.send(&bundle, b"hi");
    let err = bob.receive(&alice.identity_key(), &wire).unwrap_err();
    assert!(matches!(err, CryptoError::UnknownPrekey { .. }), "{err:?}");
    assert!(!bob.olm.has_session(&alice.identity_key()));
}

// ---------------------------------------------------------------------------------------------
// Pickles

#[test]
fn pickle_round_trip_keeps_sessions_working() {
    let (mut alice, mut bob) = established();
    let (a, b) = (alice.identity_key(), bob.identity_key());
    let in_flight = alice.send_on_session(&b, b"encrypted before the restart");
    let key = PickleKey::generate().unwrap();
    let alice_pickle = alice.olm.to_pickle(&key).unwrap();
    let bob_pickle = bob.olm.to_pickle(&key).unwrap();

    alice.olm = Olm::from_pickle(&alice_pickle, &key).unwrap();
    bob.olm = Olm::from_pickle(&bob_pickle, &key).unwrap();
    assert_eq!(alice.identity_key(), a);
    assert_eq!(bob.identity_key(), b);
    assert_eq!(
        bob.receive(&a, &in_flight).unwrap(),
        b"encrypted before the restart"
    );
    let reply = bob.send_on_session(&a, b"after the restart");
    assert_eq!(alice.receive(&b, &reply).unwrap(), b"after the restart");
}

/// A whole-state pickle (the format of stores written before sessions were saved per peer) splits
/// into the account and per-peer sessions that keep working in both directions, each saved and
/// restored on its own.
#[test]
fn a_whole_state_pickle_splits_into_an_account_and_per_peer_sessions() {
    let (mut alice, mut bob) = established();
    let mut carol = Node::new();
    let carol_bundle = carol.bundle();
    let to_carol = alice.send(&carol_bundle, b"hello carol");
    carol.receive(&alice.identity_key(), &to_carol).unwrap();
    let (a, b, c) = (
        alice.identity_key(),
        bob.identity_key(),
        carol.identity_key(),
    );
    let key = PickleKey::generate().unwrap();
    let whole = alice.olm.to_pickle(&key).unwrap();

    let (account, legacy) = OlmAccount::from_pickle(&whole, &key).unwrap();
    assert_eq!(account.identity_key(), a);
    let mut peers: Vec<Curve25519Key> = legacy.iter().map(PeerSessions::peer).collect();
    peers.sort_by_key(Curve25519Key::to_bytes);
    let mut want = vec![b, c];
    want.sort_by_key(Curve25519Key::to_bytes);
    assert_eq!(peers, want, "one entry per peer");

    // Save each part on its own, as the node does after migrating, and restore from those.
    let account_pickle = account.to_pickle(&key).unwrap();
    let saved: Vec<(Curve25519Key, Vec<u8>)> = legacy
        .iter()
        .map(|p| (p.peer(), p.to_pickle(&key).unwrap()))
        .collect();
    let (account, none) = OlmAccount::from_pickle(&account_pickle, &key).unwrap();
    assert!(none.is_empty(), "an account pickle holds no sessions");
    let mut restored: Vec<PeerSessions> = saved
        .iter()
        .map(|(peer, bytes)| account.restore_sessions(*peer, bytes, &key).unwrap())
        .collect();
    for sessions in &mut restored {
        let (other, name): (&mut Node, &[u8]) = if sessions.peer() == b {
            (&mut bob, b"bob")
        } else {
            (&mut carol, b"carol")
        };
        let wire = sessions.encrypt(name).unwrap().to_bytes();
        assert_eq!(other.receive(&a, &wire).unwrap(), name);
        let reply = other.send_on_session(&a, b"reply");
        let ciphertext = Ciphertext::from_bytes(&reply).unwrap();
        assert!(!sessions.needs_account(&ciphertext));
        assert_eq!(sessions.decrypt(&ciphertext).unwrap(), b"reply");
    }
}

#[test]
fn a_sessions_pickle_restores_only_for_its_own_peer_and_never_as_an_account() {
    let (alice, bob) = established();
    let key = PickleKey::generate().unwrap();
    let (account, peers) = Olm::from_pickle(&alice.olm.to_pickle(&key).unwrap(), &key)
        .unwrap()
        .into_parts();
    let sessions = peers.into_iter().next().unwrap();
    assert_eq!(sessions.peer(), bob.identity_key());
    let bytes = sessions.to_pickle(&key).unwrap();

    let stranger = Node::new().identity_key();
    let err = account
        .restore_sessions(stranger, &bytes, &key)
        .unwrap_err();
    assert!(
        matches!(err, CryptoError::Pickle(PickleError::Corrupt { .. })),
        "{err:?}"
    );
    let err = OlmAccount::from_pickle(&bytes, &key).unwrap_err();
    assert!(
        matches!(err, CryptoError::Pickle(PickleError::UnknownFormat)),
        "{err:?}"
    );
    let account_bytes = account.to_pickle(&key).unwrap();
    let err = account
        .restore_sessions(bob.identity_key(), &account_bytes, &key)
        .unwrap_err();
    assert!(
        matches!(err, CryptoError::Pickle(PickleError::UnknownFormat)),
        "{err:?}"
    );
    let wrong = PickleKey::generate().unwrap();
    let err = account
        .restore_sessions(bob.identity_key(), &bytes, &wrong)
        .unwrap_err();
    assert!(
        matches!(err, CryptoError::Pickle(PickleError::WrongKeyOrDamaged)),
        "{err:?}"
    );
}

/// A pre-key message that starts a session needs the account; later messages on that session do
/// not, so they can be decrypted under the peer's lock alone.
#[test]
fn only_a_new_inbound_session_needs_the_account() {
    let mut bob_account = OlmAccount::new();
    let keypair = Keypair::generate_ed25519();
    let bytes = bob_account.key_bundle(&keypair, 1).unwrap().to_bytes();
    let bundle = KeyBundle::verify(&bytes, &keypair.public().to_peer_id()).unwrap();
    let mut alice = Node::new();
    let first = Ciphertext::from_bytes(&alice.send(&bundle, b"first")).unwrap();
    let second = Ciphertext::from_bytes(&alice.send(&bundle, b"second")).unwrap();

    let mut sessions = bob_account.sessions_with(alice.identity_key());
    assert!(sessions.needs_account(&first));
    let err = sessions.decrypt(&first).unwrap_err();
    assert!(matches!(err, CryptoError::NoSession { .. }), "{err:?}");
    assert_eq!(
        bob_account.decrypt(&mut sessions, &first).unwrap(),
        b"first"
    );
    assert!(bob_account.fallback_key_used());
    assert!(!sessions.needs_account(&second), "same session");
    assert_eq!(sessions.decrypt(&second).unwrap(), b"second");
    assert_eq!(sessions.len(), 1);
}

#[test]
fn pickle_keeps_fallback_keys_and_their_state() {
    let mut bob = Node::new();
    let old_bundle = bob.bundle();
    let mut alice = Node::new();
    let wire = alice.send(&old_bundle, b"hi");
    bob.receive(&alice.identity_key(), &wire).unwrap();
    let key = PickleKey::generate().unwrap();

    let restored = Olm::from_pickle(&bob.olm.to_pickle(&key).unwrap(), &key).unwrap();
    assert!(
        restored.fallback_key_used(),
        "the pending rotation survives a restart"
    );
    bob.olm = restored;
    assert_eq!(bob.bundle(), old_bundle);
    assert!(bob.olm.rotate_fallback_key_if_used());
    let new_bundle = bob.bundle();
    bob.olm = Olm::from_pickle(&bob.olm.to_pickle(&key).unwrap(), &key).unwrap();
    assert_eq!(bob.bundle(), new_bundle);
    // The previous fallback key survives too.
    let mut carol = Node::new();
    let wire = carol.send(&old_bundle, b"late");
    assert_eq!(bob.receive(&carol.identity_key(), &wire).unwrap(), b"late");
}

#[test]
fn pickle_with_the_wrong_key_or_damage_is_a_typed_error() {
    let (alice, _bob) = established();
    let key = PickleKey::generate().unwrap();
    let pickle = alice.olm.to_pickle(&key).unwrap();

    let wrong = PickleKey::generate().unwrap();
    let err = Olm::from_pickle(&pickle, &wrong).unwrap_err();
    assert!(
        matches!(err, CryptoError::Pickle(PickleError::WrongKeyOrDamaged)),
        "{err:?}"
    );
    let mut damaged = pickle.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x01;
    let err = Olm::from_pickle(&damaged, &key).unwrap_err();
    assert!(
        matches!(err, CryptoError::Pickle(PickleError::WrongKeyOrDamaged)),
        "{err:?}"
    );
    let err = Olm::from_pickle(&pickle[..30], &key).unwrap_err();
    assert!(
        matches!(err, CryptoError::Pickle(PickleError::WrongKeyOrDamaged)),
        "{err:?}"
    );
    let err = Olm::from_pickle(b"{\"not\": \"a pickle\"}", &key).unwrap_err();
    assert!(
        matches!(err, CryptoError::Pickle(PickleError::UnknownFormat)),
        "{err:?}"
    );
    let err = Olm::from_pickle(&[], &key).unwrap_err();
    assert!(
        matches!(err, CryptoError::Pickle(PickleError::UnknownFormat)),
        "{err:?}"
    );
}

#[test]
fn pickles_of_the_same_state_differ_and_hide_keys() {
    let node = Node::new();
    let key = PickleKey::generate().unwrap();
    let first = node.olm.to_pickle(&key).unwrap();
    let second = node.olm.to_pickle(&key).unwrap();
    // A fresh salt per save: identical states do not give identical (or prefix-sharing) bytes.
    assert_ne!(first, second);
    assert_ne!(first[24..40], second[24..40]);
    let identity = node.identity_key().to_bytes();
    assert!(!first.windows(32).any(|w| w == identity));
}

#[test]
fn pickle_key_is_never_printed_and_checks_its_length() {
    let key = PickleKey::from_bytes(&[0xab; 32]).unwrap();
    let debug = format!("{key:?}");
    assert_eq!(debug, "PickleKey(<redacted>)");
    assert!(!debug.to_lowercase().contains("ab"));
    assert_eq!(key.as_bytes(), &[0xab; 32]);
    let err = PickleKey::from_bytes(&[0; 31]).unwrap_err();
    assert!(
        matches!(
            err,
            CryptoError::Pickle(PickleError::BadKeyLength { len: 31 })
        ),
        "{err:?}"
    );
    assert_ne!(
        PickleKey::generate().unwrap().as_bytes(),
        PickleKey::generate().unwrap().as_bytes()
    );
}

#[test]
fn state_can_move_between_tasks() {
    // The node keeps `Olm` inside a tokio task or behind a mutex.
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Olm>();
    assert_send_sync::<KeyBundle>();
    assert_send_sync::<Ciphertext>();
    assert_send_sync::<CryptoError>();
}

#[test]
fn olm_debug_shows_no_secrets() {
    let (alice, _bob) = established();
    let debug = format!("{:?}", alice.olm);
    assert!(
        debug.contains("identity_key") && debug.contains("sessions: 1"),
        "{debug}"
    );
}

// ---------------------------------------------------------------------------------------------
// Safety numbers

#[test]
fn safety_number_is_symmetric_and_differs_per_pair() {
    let alice = Node::new();
    let bob = Node::new();
    let carol = Node::new();
    let (a, b, c) = (
        alice.bundle().party(),
        bob.bundle().party(),
        carol.bundle().party(),
    );
    let ab = SafetyNumber::new(&a, &b);
    assert_eq!(ab, SafetyNumber::new(&b, &a));
    assert_ne!(ab, SafetyNumber::new(&a, &c));
    assert_ne!(ab, SafetyNumber::new(&b, &c));

    let text = ab.to_string();
    assert_eq!(text, ab.as_str());
    let groups: Vec<&str> = text.split(' ').collect();
    assert_eq!(groups.len(), SafetyNumber::GROUPS);
    assert!(
        groups
            .iter()
            .all(|g| g.len() == 5 && g.bytes().all(|d| d.is_ascii_digit()))
    );

    // Same peer id, different Olm key (a man in the middle with his own key): different number.
    let mallory = Node::new();
    let forged = Party {
        peer_id: b.peer_id,
        identity_key: mallory.identity_key(),
    };
    assert_ne!(ab, SafetyNumber::new(&a, &forged));
}

// ---------------------------------------------------------------------------------------------
// Untrusted bytes never panic

proptest! {
    #[test]
    fn random_bytes_never_panic_the_ciphertext_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Ciphertext::from_bytes(&bytes);
    }

    #[test]
    fn random_olm_bodies_never_panic_the_parser_or_decrypt(
        message_type in 0u32..3,
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut bob = Node::new();
        let alice = Node::new();
        let wire = proto::OlmMessage {
            r#type: message_type,
            body,
            sender_identity_key: alice.identity_key().to_bytes().to_vec(),
        }
        .encode_to_vec();
        if let Ok(ciphertext) = Ciphertext::from_bytes(&wire) {
            prop_assert!(bob.olm.decrypt(&alice.identity_key(), &ciphertext).is_err());
        }
    }

    #[test]
    fn random_bytes_never_panic_bundle_verification(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
        let peer = Keypair::generate_ed25519().public().to_peer_id();
        prop_assert!(KeyBundle::verify(&bytes, &peer).is_err());
    }

    #[test]
    fn random_bytes_never_panic_pickle_restore(
        bytes in proptest::collection::vec(any::<u8>(), 0..1024),
        with_header in any::<bool>(),
    ) {
        let key = PickleKey::from_bytes(&[7; 32]).unwrap();
        let mut input = if with_header { b"kitholm\x01".to_vec() } else { Vec::new() };
        input.extend_from_slice(&bytes);
        prop_assert!(Olm::from_pickle(&input, &key).is_err());
    }
}
