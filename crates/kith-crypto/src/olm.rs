use std::collections::HashMap;
use std::fmt;

use kith_proto::v1 as proto;
use libp2p::identity::Keypair;
use prost::Message;
use vodozemac::olm::{
    Account, AccountPickle, DecryptionError, EncryptionError, OlmMessage, PreKeyMessage, Session,
    SessionConfig, SessionCreationError, SessionPickle,
};
use zeroize::{Zeroize, Zeroizing};

use crate::{
    Ciphertext, CryptoError, Curve25519Key, DecryptFailure, Ed25519Key, KeyBundle, PickleError,
    PickleKey, SignedKeyBundle, pickle,
};

/// The node's end-to-end encryption state: one Olm account and its sessions with other nodes.
///
/// One per node. Sessions are keyed by the peer's Curve25519 identity key; a peer may have several
/// (both sides started one at the same time, or a peer restarted from an old bundle), kept most
/// recently used first. Encryption uses the most recently used one, so two sides that started
/// sessions concurrently converge on one as soon as they hear from each other.
///
/// Every method that takes `&mut self` changes state that must be saved with
/// [`Olm::to_pickle`] before the result is acted on (sent or acknowledged): an encrypt whose new
/// ratchet state is lost would reuse message keys after a restart.
pub struct Olm {
    account: Account,
    sessions: HashMap<Curve25519Key, Vec<Session>>,
    fallback_key_used: bool,
}

impl Olm {
    /// Largest plaintext [`Olm::encrypt`] accepts, leaving room for the Olm overhead and the
    /// envelope within the 256 KiB `/kith/dm` frame.
    pub const MAX_PLAINTEXT_LEN: usize = 192 * 1024;

    /// Sessions kept per peer; the least recently used one is dropped beyond this. Bounds the
    /// state a peer can make us keep by sending many pre-key messages.
    pub const MAX_SESSIONS_PER_PEER: usize = 5;

    /// A fresh account with new identity keys and a fallback key, and no sessions.
    pub fn new() -> Self {
        let mut account = Account::new();
        account.generate_fallback_key();
        Self {
            account,
            sessions: HashMap::new(),
            fallback_key_used: false,
        }
    }

    /// Our Olm Curve25519 identity key: what peers key their sessions with us by.
    pub fn identity_key(&self) -> Curve25519Key {
        Curve25519Key(self.account.curve25519_key())
    }

    /// Our Olm Ed25519 key.
    pub fn signing_key(&self) -> Ed25519Key {
        Ed25519Key(self.account.ed25519_key())
    }

    /// The fallback key peers use to start sessions with us, as it goes into the key bundle.
    ///
    /// vodozemac only reports a fallback key that is not marked as published, so this crate never
    /// marks it (`Account::mark_keys_as_published` would only hide it); publication is tracked by
    /// the node, which republishes whenever [`Olm::rotate_fallback_key_if_used`] says so.
    fn fallback_key(&self) -> Option<Curve25519Key> {
        self.account
            .fallback_key()
            .into_values()
            .next()
            .map(Curve25519Key)
    }

    /// Our key bundle, signed with the node's libp2p key, for the DHT.
    ///
    /// Carries the peer id of `keypair`, both Olm identity keys and the current fallback key.
    pub fn key_bundle(
        &self,
        keypair: &Keypair,
        created_at_ms: u64,
    ) -> Result<SignedKeyBundle, CryptoError> {
        // Every constructor leaves a fallback key in the account, so this is only defensive.
        let fallback_key = self.fallback_key().ok_or(CryptoError::MissingFallbackKey)?;
        KeyBundle::new(
            keypair.public().to_peer_id(),
            self.identity_key(),
            self.signing_key(),
            fallback_key,
            created_at_ms,
        )
        .sign(keypair)
    }

    /// True when some peer started a session with the current fallback key since it was made.
    pub fn fallback_key_used(&self) -> bool {
        self.fallback_key_used
    }

    /// Replaces the fallback key if a session was started with it; returns true when it did, in
    /// which case the node must save the state and republish [`Olm::key_bundle`].
    ///
    /// A fallback key, unlike a one-time key, is reused by everyone who fetched the bundle, so
    /// rotating after use limits how many sessions hang on one key. The previous fallback key is
    /// kept, so first messages made from the old bundle (in flight, or from peers with a stale DHT
    /// answer) still decrypt; the key before that is forgotten.
    pub fn rotate_fallback_key_if_used(&mut self) -> bool {
        if !self.fallback_key_used {
            return false;
        }
        self.rotate_fallback_key();
        true
    }

    /// Replaces the fallback key unconditionally (e.g. on a timer); the previous one stays usable.
    /// The node must save the state and republish [`Olm::key_bundle`].
    pub fn rotate_fallback_key(&mut self) {
        self.account.generate_fallback_key();
        self.fallback_key_used = false;
    }

    /// True when at least one session with `peer` exists, so [`Olm::encrypt`] needs no bundle.
    pub fn has_session(&self, peer: &Curve25519Key) -> bool {
        self.session_count(peer) > 0
    }

    /// Number of sessions kept with `peer`.
    pub fn session_count(&self, peer: &Curve25519Key) -> usize {
        self.sessions.get(peer).map_or(0, Vec::len)
    }

    /// Drops every session with `peer` and returns how many there were.
    ///
    /// For when the peer reports it cannot decrypt our messages (e.g. it lost its state): the next
    /// [`Olm::encrypt_to_bundle`] starts a fresh session from its current bundle.
    pub fn forget_sessions(&mut self, peer: &Curve25519Key) -> usize {
        self.sessions
            .remove(peer)
            .map_or(0, |sessions| sessions.len())
    }

    /// Encrypts `plaintext` for `peer` on the most recently used session with it.
    ///
    /// Fails with [`CryptoError::NoSession`] when there is none; use
    /// [`Olm::encrypt_to_bundle`] then. Until the peer has replied on the session the result is a
    /// pre-key message, so the peer can start its side from any of them.
    pub fn encrypt(
        &mut self,
        peer: &Curve25519Key,
        plaintext: &[u8],
    ) -> Result<Ciphertext, CryptoError> {
        check_plaintext_len(plaintext)?;
        let sender = self.identity_key();
        let session = self
            .sessions
            .get_mut(peer)
            .and_then(|sessions| sessions.first_mut())
            .ok_or(CryptoError::NoSession { peer: *peer })?;
        let message = session.encrypt(plaintext).map_err(encryption_error)?;
        Ok(Ciphertext { sender, message })
    }

    /// Encrypts `plaintext` for the owner of `bundle`, starting an outbound session from the
    /// bundle's identity and fallback keys when there is no session yet.
    ///
    /// The bundle must come from [`KeyBundle::verify`] for the intended peer id.
    pub fn encrypt_to_bundle(
        &mut self,
        bundle: &KeyBundle,
        plaintext: &[u8],
    ) -> Result<Ciphertext, CryptoError> {
        check_plaintext_len(plaintext)?;
        let peer = bundle.identity_key();
        if !self.has_session(&peer) {
            let session = self
                .account
                .create_outbound_session(
                    SessionConfig::version_1(),
                    peer.0,
                    bundle.fallback_key().0,
                )
                .map_err(creation_error)?;
            self.insert_session(peer, session);
        }
        self.encrypt(&peer, plaintext)
    }

    /// Decrypts a message from the peer whose identity key is `sender`.
    ///
    /// `sender` must be the identity key from the sending peer's verified bundle (or a pinned
    /// copy of it): Olm authenticates the message as coming from the holder of that key, and the
    /// bundle ties the key to a peer id. A message naming another key fails with
    /// [`CryptoError::SenderMismatch`].
    ///
    /// Normal messages are tried on every session with the peer, most recently used first. A
    /// pre-key message goes to the session it belongs to if we have it, and otherwise starts a new
    /// inbound session (from our current or previous fallback key).
    ///
    /// A failed decryption leaves every session as it was, so a later genuine message still
    /// decrypts. Replays of a message already decrypted fail with
    /// [`DecryptFailure::AlreadyUsed`], with one gap: a replayed pre-key message whose session has
    /// since been dropped ([`Olm::forget_sessions`], the per-peer cap, or a restore from an older
    /// pickle) starts a new session and decrypts again, as long as the fallback key it used is
    /// still held. The node deduplicates by message id anyway.
    pub fn decrypt(
        &mut self,
        sender: &Curve25519Key,
        ciphertext: &Ciphertext,
    ) -> Result<Vec<u8>, CryptoError> {
        if ciphertext.sender != *sender {
            return Err(CryptoError::SenderMismatch {
                expected: *sender,
                got: ciphertext.sender,
            });
        }
        match &ciphertext.message {
            OlmMessage::Normal(_) => self.decrypt_normal(sender, &ciphertext.message),
            OlmMessage::PreKey(pre_key) => {
                self.decrypt_pre_key(sender, pre_key, &ciphertext.message)
            }
        }
    }

    fn decrypt_normal(
        &mut self,
        sender: &Curve25519Key,
        message: &OlmMessage,
    ) -> Result<Vec<u8>, CryptoError> {
        let sessions = self
            .sessions
            .get_mut(sender)
            .filter(|sessions| !sessions.is_empty())
            .ok_or(CryptoError::NoSession { peer: *sender })?;
        let mut failure: Option<CryptoError> = None;
        for index in 0..sessions.len() {
            match sessions[index].decrypt(message) {
                Ok(plaintext) => {
                    promote(sessions, index);
                    return Ok(plaintext);
                }
                Err(e) => {
                    let e = decryption_error(e);
                    // A normal message does not say which session it belongs to, so report the
                    // failure of the session that got furthest (see `DecryptFailure`).
                    if failure.as_ref().is_none_or(|f| rank(&e) > rank(f)) {
                        failure = Some(e);
                    }
                }
            }
        }
        Err(failure.unwrap_or(CryptoError::NoSession { peer: *sender }))
    }

    fn decrypt_pre_key(
        &mut self,
        sender: &Curve25519Key,
        pre_key: &PreKeyMessage,
        message: &OlmMessage,
    ) -> Result<Vec<u8>, CryptoError> {
        // The sender repeats pre-key messages until we reply; later ones belong to the session the
        // first one created. Decrypting them there (and never creating a second session from the
        // same pre-key material) is also what makes a replayed pre-key message fail.
        if let Some(sessions) = self.sessions.get_mut(sender)
            && let Some(index) = sessions
                .iter()
                .position(|session| session.session_keys() == pre_key.session_keys())
        {
            let plaintext = sessions[index].decrypt(message).map_err(decryption_error)?;
            promote(sessions, index);
            return Ok(plaintext);
        }

        let from_current_fallback =
            self.fallback_key().map(|key| key.0) == Some(pre_key.one_time_key());
        let created = self
            .account
            .create_inbound_session(SessionConfig::version_1(), sender.0, pre_key)
            .map_err(creation_error)?;
        if from_current_fallback {
            self.fallback_key_used = true;
        }
        self.insert_session(*sender, created.session);
        Ok(created.plaintext)
    }

    /// Adds a session as the most recently used one, dropping the least recently used beyond the cap.
    fn insert_session(&mut self, peer: Curve25519Key, session: Session) {
        let sessions = self.sessions.entry(peer).or_default();
        sessions.insert(0, session);
        sessions.truncate(Self::MAX_SESSIONS_PER_PEER);
    }

    /// Saves the whole state (account and every session) encrypted with `key`.
    ///
    /// Format: the account and sessions as vodozemac's serde pickles (JSON), gathered in a prost
    /// `kith.v1.OlmPickle`, which is encrypted as a whole with vodozemac's pickle cipher under a key
    /// derived from `key` and a random salt (see the `pickle` module). One MAC covers everything,
    /// so sessions cannot be swapped between saves, and wrong keys or damage are detected.
    pub fn to_pickle(&self, key: &PickleKey) -> Result<Vec<u8>, CryptoError> {
        let mut container = proto::OlmPickle {
            account: serde_json::to_vec(&self.account.pickle()).map_err(serialise_error)?,
            peers: Vec::with_capacity(self.sessions.len()),
            fallback_key_used: self.fallback_key_used,
        };
        for (peer, sessions) in &self.sessions {
            let mut pickles = Vec::with_capacity(sessions.len());
            for session in sessions {
                pickles.push(serde_json::to_vec(&session.pickle()).map_err(serialise_error)?);
            }
            container.peers.push(proto::OlmPeerSessions {
                identity_key: peer.to_bytes().to_vec(),
                sessions: pickles,
            });
        }
        let encoded = Zeroizing::new(container.encode_to_vec());
        wipe(&mut container);
        pickle::seal(&encoded, key)
    }

    /// Restores the state saved by [`Olm::to_pickle`].
    ///
    /// A wrong key or damaged bytes give [`PickleError::WrongKeyOrDamaged`], bytes that are not
    /// a pickle at all [`PickleError::UnknownFormat`].
    pub fn from_pickle(bytes: &[u8], key: &PickleKey) -> Result<Self, CryptoError> {
        let plaintext = pickle::open(bytes, key)?;
        let mut container =
            proto::OlmPickle::decode(plaintext.as_slice()).map_err(|e| PickleError::Corrupt {
                reason: e.to_string(),
            })?;
        let restored = Self::from_container(&container);
        wipe(&mut container);
        Ok(restored?)
    }

    fn from_container(container: &proto::OlmPickle) -> Result<Self, PickleError> {
        let account: AccountPickle =
            serde_json::from_slice(&container.account).map_err(deserialise_error("account"))?;
        let mut account = Account::from_pickle(account);
        // A state without a fallback key could not publish a bundle; give it one.
        if account.fallback_key().is_empty() {
            account.generate_fallback_key();
        }
        let mut sessions: HashMap<Curve25519Key, Vec<Session>> = HashMap::new();
        for peer in &container.peers {
            let identity_key = Curve25519Key::from_slice(&peer.identity_key).ok_or_else(|| {
                PickleError::Corrupt {
                    reason: format!(
                        "peer identity key must be 32 bytes, got {}",
                        peer.identity_key.len()
                    ),
                }
            })?;
            let list = sessions.entry(identity_key).or_default();
            for session in &peer.sessions {
                let session: SessionPickle =
                    serde_json::from_slice(session).map_err(deserialise_error("session"))?;
                list.push(Session::from_pickle(session));
            }
            list.truncate(Self::MAX_SESSIONS_PER_PEER);
        }
        sessions.retain(|_, list| !list.is_empty());
        Ok(Self {
            account,
            sessions,
            fallback_key_used: container.fallback_key_used,
        })
    }
}

impl Default for Olm {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Olm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Public keys and counts only; the account and sessions hold secrets.
        f.debug_struct("Olm")
            .field("identity_key", &self.identity_key())
            .field("peers", &self.sessions.len())
            .field(
                "sessions",
                &self.sessions.values().map(Vec::len).sum::<usize>(),
            )
            .field("fallback_key_used", &self.fallback_key_used)
            .finish_non_exhaustive()
    }
}

fn check_plaintext_len(plaintext: &[u8]) -> Result<(), CryptoError> {
    if plaintext.len() > Olm::MAX_PLAINTEXT_LEN {
        return Err(CryptoError::PlaintextTooLarge {
            len: plaintext.len(),
            max: Olm::MAX_PLAINTEXT_LEN,
        });
    }
    Ok(())
}

/// Moves the session at `index` to the front (most recently used).
fn promote(sessions: &mut [Session], index: usize) {
    sessions[..=index].rotate_right(1);
}

/// How much a decryption failure tells: higher means the session recognised more of the message.
fn rank(error: &CryptoError) -> u8 {
    match error {
        CryptoError::Undecryptable(DecryptFailure::AlreadyUsed) => 3,
        CryptoError::Undecryptable(DecryptFailure::TooFarAhead) => 2,
        CryptoError::Undecryptable(DecryptFailure::Tampered) => 1,
        _ => 0,
    }
}

fn decryption_error(error: DecryptionError) -> CryptoError {
    match error {
        DecryptionError::InvalidMAC(_)
        | DecryptionError::InvalidMACLength(..)
        | DecryptionError::InvalidPadding(_) => {
            CryptoError::Undecryptable(DecryptFailure::Tampered)
        }
        DecryptionError::MissingMessageKey(_) => {
            CryptoError::Undecryptable(DecryptFailure::AlreadyUsed)
        }
        DecryptionError::TooBigMessageGap(..) => {
            CryptoError::Undecryptable(DecryptFailure::TooFarAhead)
        }
        DecryptionError::NonContributoryKey => CryptoError::InsecureKey,
    }
}

fn creation_error(error: SessionCreationError) -> CryptoError {
    match error {
        SessionCreationError::MissingOneTimeKey(key) => CryptoError::UnknownPrekey {
            key: Curve25519Key(key),
        },
        SessionCreationError::MismatchedIdentityKey(expected, got) => CryptoError::SenderMismatch {
            expected: Curve25519Key(expected),
            got: Curve25519Key(got),
        },
        SessionCreationError::MismatchedSessionConfig { got, .. } => {
            CryptoError::MalformedMessage {
                reason: format!(
                    "unsupported Olm session version {:?}",
                    got.map(|config| config.version())
                ),
            }
        }
        SessionCreationError::Decryption(e) => decryption_error(e),
        SessionCreationError::NonContributoryKey => CryptoError::InsecureKey,
    }
}

fn encryption_error(error: EncryptionError) -> CryptoError {
    match error {
        EncryptionError::NonContributoryKey => CryptoError::InsecureKey,
    }
}

fn serialise_error(error: serde_json::Error) -> CryptoError {
    // vodozemac's pickles are plain structs; it treats this as unreachable itself.
    CryptoError::Pickle(PickleError::Corrupt {
        reason: format!("cannot serialise the Olm state: {error}"),
    })
}

fn deserialise_error(what: &'static str) -> impl Fn(serde_json::Error) -> PickleError {
    move |error| PickleError::Corrupt {
        reason: format!("{what} pickle: {error}"),
    }
}

/// Overwrites the secret parts of a decoded or encoded container before it is dropped.
fn wipe(container: &mut proto::OlmPickle) {
    container.account.zeroize();
    for peer in &mut container.peers {
        for session in &mut peer.sessions {
            session.zeroize();
        }
    }
}
