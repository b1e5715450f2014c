//! Group encryption: vodozemac Megolm behind two small types.
//!
//! Each member encrypts its own group messages with a [`GroupSender`] (a Megolm outbound session)
//! and hands its [`GroupSessionKey`] to every other member over the Olm channel; members decrypt
//! with a [`GroupReceiver`] built from that key. Megolm gives forward secrecy per message index but
//! no post-compromise security, so the node starts a new sender session when a member leaves or is
//! removed and after a bounded number of messages.
//!
//! The service only sees these types and bytes, never vodozemac's: MLS (openmls) can replace the
//! inside once groups have an ordering point.

use serde::{Serialize, de::DeserializeOwned};
use vodozemac::{
    Ed25519PublicKey,
    megolm::{
        DecryptionError, ExportedSessionKey, GroupSession, GroupSessionPickle, InboundGroupSession,
        InboundGroupSessionPickle, MegolmMessage, SessionConfig, SessionKey,
    },
};
use zeroize::Zeroizing;

use crate::{CryptoError, DecryptFailure, PickleError, PickleKey, pickle};

/// Identifies one sender session: the public half of its Megolm signing key (32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupSessionId(pub [u8; 32]);

impl GroupSessionId {
    /// Parses the 32 bytes carried in a group envelope.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    fn of(base64_id: &str) -> Result<Self, CryptoError> {
        Ed25519PublicKey::from_base64(base64_id)
            .map(|k| Self(*k.as_bytes()))
            .map_err(|e| CryptoError::MalformedMessage {
                reason: format!("group session id: {e}"),
            })
    }
}

/// The secret a member shares (over Olm) so others can read its messages from now on.
///
/// Carries the ratchet at the sender's current index: a member who receives it cannot read what
/// the sender encrypted before.
pub struct GroupSessionKey(Zeroizing<Vec<u8>>);

impl GroupSessionKey {
    /// Largest encoded key accepted (vodozemac's are 229 bytes).
    pub const MAX_LEN: usize = 512;

    /// The key as it travels inside an Olm-encrypted payload.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.to_vec()
    }

    /// Wraps received bytes; they are checked when a [`GroupReceiver`] is made from them.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() > Self::MAX_LEN {
            return Err(CryptoError::MessageTooLarge {
                len: bytes.len(),
                max: Self::MAX_LEN,
            });
        }
        Ok(Self(Zeroizing::new(bytes.to_vec())))
    }
}

impl std::fmt::Debug for GroupSessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupSessionKey(..)")
    }
}

/// One member's outbound session for one group.
///
/// Every [`GroupSender::encrypt`] advances the ratchet; save the state with
/// [`GroupSender::to_pickle`] in the same transaction as the envelope it produced, or a restart
/// would reuse a message index.
pub struct GroupSender {
    session: GroupSession,
}

impl GroupSender {
    /// Largest plaintext [`GroupSender::encrypt`] accepts: the envelope must fit gossipsub's
    /// 256 KiB transmit limit with room for the signature and ids.
    pub const MAX_PLAINTEXT_LEN: usize = 160 * 1024;

    /// A fresh session with a random ratchet and signing key.
    pub fn new() -> Self {
        Self {
            session: GroupSession::new(SessionConfig::version_1()),
        }
    }

    /// The session's id, carried in every envelope so receivers pick the right key.
    pub fn session_id(&self) -> Result<GroupSessionId, CryptoError> {
        GroupSessionId::of(&self.session.session_id())
    }

    /// How many messages this session has encrypted.
    pub fn message_index(&self) -> u32 {
        self.session.message_index()
    }

    /// The key to share with members who should read what this session encrypts from now on.
    pub fn session_key(&self) -> GroupSessionKey {
        GroupSessionKey(Zeroizing::new(self.session.session_key().to_bytes()))
    }

    /// Encrypts one group payload (and signs it with the session's signing key).
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if plaintext.len() > Self::MAX_PLAINTEXT_LEN {
            return Err(CryptoError::PlaintextTooLarge {
                len: plaintext.len(),
                max: Self::MAX_PLAINTEXT_LEN,
            });
        }
        Ok(self.session.encrypt(plaintext).to_bytes())
    }

    /// Saves the session encrypted with `key`.
    pub fn to_pickle(&self, key: &PickleKey) -> Result<Vec<u8>, CryptoError> {
        seal_json(&self.session.pickle(), key)
    }

    /// Restores a session saved by [`GroupSender::to_pickle`].
    pub fn from_pickle(bytes: &[u8], key: &PickleKey) -> Result<Self, CryptoError> {
        let pickle: GroupSessionPickle = open_json(bytes, key, "group session")?;
        Ok(Self {
            session: GroupSession::from_pickle(pickle),
        })
    }
}

impl Default for GroupSender {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for GroupSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupSender")
            .field("message_index", &self.message_index())
            .finish_non_exhaustive()
    }
}

/// Another member's session as we received it: decrypts that member's messages from the index the
/// key was shared at.
pub struct GroupReceiver {
    session: InboundGroupSession,
}

impl GroupReceiver {
    /// Largest ciphertext accepted before parsing.
    pub const MAX_CIPHERTEXT_LEN: usize = 192 * 1024;

    /// Builds a receiver from a shared key; a key whose signature does not verify is refused.
    pub fn new(key: &GroupSessionKey) -> Result<Self, CryptoError> {
        let key = SessionKey::from_bytes(&key.0).map_err(|e| CryptoError::MalformedMessage {
            reason: format!("group session key: {e}"),
        })?;
        Ok(Self {
            session: InboundGroupSession::new(&key, SessionConfig::version_1()),
        })
    }

    /// The id of the sender session this key belongs to.
    pub fn session_id(&self) -> Result<GroupSessionId, CryptoError> {
        GroupSessionId::of(&self.session.session_id())
    }

    /// The session exported at `index`, for a member who must read from there on although the
    /// key it was given starts later (a member added before messages its sender wrote while it
    /// did not yet know of them). `None` when this receiver starts after `index`.
    ///
    /// An exported key is not signed by the session: it is only trusted through
    /// [`GroupReceiver::extend_back`], which checks that it connects to a signed key.
    pub fn export_at(&mut self, index: u32) -> Option<GroupSessionKey> {
        self.session
            .export_at(index)
            .map(|k| GroupSessionKey(Zeroizing::new(k.to_bytes())))
    }

    /// Extends this receiver back to an earlier index with `earlier`, a key exported from the
    /// same session by [`GroupReceiver::export_at`]. Returns whether it now starts earlier; a key
    /// of another session (or a forged ratchet that does not lead to ours) is refused.
    pub fn extend_back(&mut self, earlier: &GroupSessionKey) -> Result<bool, CryptoError> {
        let key = ExportedSessionKey::from_bytes(&earlier.0).map_err(|e| {
            CryptoError::MalformedMessage {
                reason: format!("exported group session key: {e}"),
            }
        })?;
        let mut imported = InboundGroupSession::import(&key, SessionConfig::version_1());
        if imported.session_id() != self.session.session_id() {
            return Err(CryptoError::MalformedMessage {
                reason: "exported group session key belongs to another session".into(),
            });
        }
        if imported.first_known_index() >= self.session.first_known_index() {
            return Ok(false);
        }
        // `merge` keeps our (signed) signing key and takes the earlier ratchet only when it
        // provably leads to ours.
        match self.session.merge(&mut imported) {
            Some(merged) => {
                self.session = merged;
                Ok(true)
            }
            None => Err(CryptoError::MalformedMessage {
                reason: "exported group session key does not lead to the shared key".into(),
            }),
        }
    }

    /// The first message index this receiver can decrypt.
    pub fn first_known_index(&self) -> u32 {
        self.session.first_known_index()
    }

    /// Decrypts one ciphertext; returns the plaintext and its message index.
    ///
    /// Megolm keeps every later message key derivable, so a replayed ciphertext decrypts again:
    /// callers deduplicate by (sender, sequence) before trusting a message as new.
    pub fn decrypt(&mut self, ciphertext: &[u8]) -> Result<(Vec<u8>, u32), CryptoError> {
        if ciphertext.len() > Self::MAX_CIPHERTEXT_LEN {
            return Err(CryptoError::MessageTooLarge {
                len: ciphertext.len(),
                max: Self::MAX_CIPHERTEXT_LEN,
            });
        }
        let message =
            MegolmMessage::from_bytes(ciphertext).map_err(|e| CryptoError::MalformedMessage {
                reason: format!("group message: {e}"),
            })?;
        let decrypted = self.session.decrypt(&message).map_err(|e| match e {
            DecryptionError::UnknownMessageIndex(..) => {
                CryptoError::Undecryptable(DecryptFailure::AlreadyUsed)
            }
            _ => CryptoError::Undecryptable(DecryptFailure::Tampered),
        })?;
        Ok((decrypted.plaintext, decrypted.message_index))
    }

    /// Saves the receiver encrypted with `key`.
    pub fn to_pickle(&self, key: &PickleKey) -> Result<Vec<u8>, CryptoError> {
        seal_json(&self.session.pickle(), key)
    }

    /// Restores a receiver saved by [`GroupReceiver::to_pickle`].
    pub fn from_pickle(bytes: &[u8], key: &PickleKey) -> Result<Self, CryptoError> {
        let pickle: InboundGroupSessionPickle = open_json(bytes, key, "group receiver")?;
        Ok(Self {
            session: InboundGroupSession::from_pickle(pickle),
        })
    }
}

impl std::fmt::Debug for GroupReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupReceiver")
            .field("first_known_index", &self.first_known_index())
            .finish_non_exhaustive()
    }
}

fn seal_json<T: Serialize>(value: &T, key: &PickleKey) -> Result<Vec<u8>, CryptoError> {
    let json =
        Zeroizing::new(
            serde_json::to_vec(value).map_err(|e| CryptoError::MalformedMessage {
                reason: format!("cannot serialise group session: {e}"),
            })?,
        );
    pickle::seal(&json, key, pickle::Kind::Account)
}

fn open_json<T: DeserializeOwned>(
    bytes: &[u8],
    key: &PickleKey,
    what: &'static str,
) -> Result<T, CryptoError> {
    let json = pickle::open(bytes, key, pickle::Kind::Account)?;
    serde_json::from_slice(&json).map_err(|e| {
        CryptoError::Pickle(PickleError::Corrupt {
            reason: format!("{what}: {e}"),
        })
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn key() -> PickleKey {
        PickleKey::from_bytes(&[7u8; 32]).unwrap()
    }

    #[test]
    fn members_read_from_the_shared_index_only() {
        let mut alice = GroupSender::new();
        let early = alice.encrypt(b"before bob").unwrap();
        let mut bob = GroupReceiver::new(&alice.session_key()).unwrap();
        assert_eq!(bob.session_id().unwrap(), alice.session_id().unwrap());
        let later = alice.encrypt(b"hello bob").unwrap();
        assert_eq!(bob.decrypt(&later).unwrap(), (b"hello bob".to_vec(), 1));
        assert!(matches!(
            bob.decrypt(&early),
            Err(CryptoError::Undecryptable(DecryptFailure::AlreadyUsed))
        ));
    }

    #[test]
    fn a_new_session_is_unreadable_with_the_old_key() {
        let mut alice = GroupSender::new();
        let mut carol = GroupReceiver::new(&alice.session_key()).unwrap();
        let _ = alice.encrypt(b"one").unwrap();
        let mut rotated = GroupSender::new();
        let secret = rotated.encrypt(b"after carol left").unwrap();
        assert!(carol.decrypt(&secret).is_err());
        assert_ne!(rotated.session_id().unwrap(), alice.session_id().unwrap());
    }

    #[test]
    fn tampered_and_garbage_ciphertexts_are_refused() {
        let mut alice = GroupSender::new();
        let mut bob = GroupReceiver::new(&alice.session_key()).unwrap();
        let mut c = alice.encrypt(b"hello").unwrap();
        let mid = c.len() / 2;
        c[mid] ^= 1;
        assert!(bob.decrypt(&c).is_err());
        assert!(bob.decrypt(b"garbage").is_err());
        assert!(bob.decrypt(&vec![0u8; 300 * 1024]).is_err());
        assert!(GroupReceiver::new(&GroupSessionKey::from_bytes(b"nope").unwrap()).is_err());
        assert!(GroupSessionKey::from_bytes(&[0u8; 4096]).is_err());
    }

    #[test]
    fn pickles_round_trip_and_keep_the_ratchet() {
        let mut alice = GroupSender::new();
        let mut bob = GroupReceiver::new(&alice.session_key()).unwrap();
        let _ = alice.encrypt(b"one").unwrap();
        let saved = alice.to_pickle(&key()).unwrap();
        let mut restored = GroupSender::from_pickle(&saved, &key()).unwrap();
        assert_eq!(restored.message_index(), 1);
        let two = restored.encrypt(b"two").unwrap();
        let bob_saved = bob.to_pickle(&key()).unwrap();
        bob = GroupReceiver::from_pickle(&bob_saved, &key()).unwrap();
        assert_eq!(bob.decrypt(&two).unwrap().1, 1);
        let wrong = PickleKey::from_bytes(&[8u8; 32]).unwrap();
        assert!(GroupSender::from_pickle(&saved, &wrong).is_err());
    }

    #[test]
    fn an_earlier_export_extends_a_signed_key_back_only_when_it_connects() {
        let mut alice = GroupSender::new();
        let mut own = GroupReceiver::new(&alice.session_key()).unwrap();
        let _before = alice.encrypt(b"before carol was added").unwrap();
        let written_unaware = alice
            .encrypt(b"carol was added; alice did not know")
            .unwrap();
        let mut carol = GroupReceiver::new(&alice.session_key()).unwrap();
        assert_eq!(carol.first_known_index(), 2);
        assert!(carol.decrypt(&written_unaware).is_err());

        let earlier = own.export_at(1).unwrap();
        assert!(carol.extend_back(&earlier).unwrap());
        assert_eq!(carol.first_known_index(), 1);
        assert_eq!(
            carol.decrypt(&written_unaware).unwrap().0,
            b"carol was added; alice did not know".to_vec()
        );
        // Index 0 stays unreadable, and a later export changes nothing.
        assert!(carol.decrypt(&_before).is_err());
        assert!(!carol.extend_back(&own.export_at(1).unwrap()).unwrap());

        // Another session's export, a forged ratchet and garbage are refused.
        let mut mallory = GroupReceiver::new(&GroupSender::new().session_key()).unwrap();
        assert!(carol.extend_back(&mallory.export_at(0).unwrap()).is_err());
        let mut forged = own.export_at(0).unwrap().to_bytes();
        forged[5] ^= 0xff;
        assert!(
            carol
                .extend_back(&GroupSessionKey::from_bytes(&forged).unwrap())
                .is_err()
        );
        assert!(
            carol
                .extend_back(&GroupSessionKey::from_bytes(b"junk").unwrap())
                .is_err()
        );
        assert_eq!(carol.first_known_index(), 1);
    }

    #[test]
    fn oversized_plaintext_is_refused() {
        let mut alice = GroupSender::new();
        assert!(matches!(
            alice.encrypt(&vec![0u8; GroupSender::MAX_PLAINTEXT_LEN + 1]),
            Err(CryptoError::PlaintextTooLarge { .. })
        ));
    }
}
