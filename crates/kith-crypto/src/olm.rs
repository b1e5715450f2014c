use std::collections::HashMap;
use std::fmt;

use kith_proto::v1 as proto;
use libp2p::identity::Keypair;
use prost::Message;
use vodozemac::olm::{
    Account, AccountPickle, DecryptionError, EncryptionError, OlmMessage, Session, SessionConfig,
    SessionCreationError, SessionPickle,
};
use zeroize::{Zeroize, Zeroizing};

use crate::{
    Ciphertext, CryptoError, Curve25519Key, DecryptFailure, Ed25519Key, KeyBundle, PickleError,
    PickleKey, SignedKeyBundle, pickle,
};

/// The node's Olm account: its identity keys and fallback key, without any session.
///
/// Sessions live in [`PeerSessions`], one per peer, so the node can lock, encrypt with and save
/// the state of one conversation without touching the others: the saved state per message stays
/// the size of one peer's sessions however many contacts there are, and work for different peers
/// runs concurrently. The account is needed only to start a session (an outbound one from a key
/// bundle, an inbound one from a pre-key message) and to publish or rotate the fallback key.
///
/// Every method that takes `&mut self` changes state that must be saved with
/// [`OlmAccount::to_pickle`]; [`OlmAccount::fallback_key_used`] is the only field a decryption
/// changes, so a caller that compares it before and after knows whether to save.
pub struct OlmAccount {
    account: Account,
    fallback_key_used: bool,
}

impl OlmAccount {
    /// A fresh account with new identity keys and a fallback key.
    pub fn new() -> Self {
        let mut account = Account::new();
        account.generate_fallback_key();
        Self {
            account,
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
    /// the node, which republishes whenever [`OlmAccount::rotate_fallback_key_if_used`] says so.
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
    /// which case the node must save the account and republish [`OlmAccount::key_bundle`].
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
    /// The node must save the account and republish [`OlmAccount::key_bundle`].
    pub fn rotate_fallback_key(&mut self) {
        self.account.generate_fallback_key();
        self.fallback_key_used = false;
    }

    /// An empty set of sessions with `peer`, to fill with [`OlmAccount::encrypt_to_bundle`] or
    /// [`OlmAccount::decrypt`].
    pub fn sessions_with(&self, peer: Curve25519Key) -> PeerSessions {
        PeerSessions::new(self.identity_key(), peer)
    }

    /// Restores the sessions with `peer` saved by [`PeerSessions::to_pickle`].
    ///
    /// Fails with [`PickleError::Corrupt`] when the pickle holds the sessions of another peer (a
    /// value stored under the wrong key), so sessions can never be used with the wrong peer.
    pub fn restore_sessions(
        &self,
        peer: Curve25519Key,
        bytes: &[u8],
        key: &PickleKey,
    ) -> Result<PeerSessions, CryptoError> {
        PeerSessions::from_pickle(self.identity_key(), peer, bytes, key)
    }

    /// Encrypts `plaintext` for the owner of `bundle`, starting an outbound session from the
    /// bundle's identity and fallback keys when `sessions` has none yet.
    ///
    /// The bundle must come from [`KeyBundle::verify`] for the intended peer id, and `sessions`
    /// must be the sessions with that bundle's identity key.
    pub fn encrypt_to_bundle(
        &self,
        sessions: &mut PeerSessions,
        bundle: &KeyBundle,
        plaintext: &[u8],
    ) -> Result<Ciphertext, CryptoError> {
        check_plaintext_len(plaintext)?;
        let peer = bundle.identity_key();
        if sessions.peer != peer {
            return Err(CryptoError::SenderMismatch {
                expected: sessions.peer,
                got: peer,
            });
        }
        if sessions.is_empty() {
            let session = self
                .account
                .create_outbound_session(
                    SessionConfig::version_1(),
                    peer.0,
                    bundle.fallback_key().0,
                )
                .map_err(creation_error)?;
            sessions.insert(session);
        }
        sessions.encrypt(plaintext)
    }

    /// Decrypts a message from the owner of `sessions`, starting an inbound session from our
    /// current or previous fallback key when it is a pre-key message no session knows.
    ///
    /// Use [`PeerSessions::decrypt`] when [`PeerSessions::needs_account`] is false: it needs no
    /// account, so it does not contend with other peers. Semantics otherwise as there.
    pub fn decrypt(
        &mut self,
        sessions: &mut PeerSessions,
        ciphertext: &Ciphertext,
    ) -> Result<Vec<u8>, CryptoError> {
        sessions.check_sender(ciphertext)?;
        let OlmMessage::PreKey(pre_key) = &ciphertext.message else {
            return sessions.decrypt(ciphertext);
        };
        if !sessions.needs_account(ciphertext) {
            return sessions.decrypt(ciphertext);
        }
        let from_current_fallback =
            self.fallback_key().map(|key| key.0) == Some(pre_key.one_time_key());
        let created = self
            .account
            .create_inbound_session(SessionConfig::version_1(), sessions.peer.0, pre_key)
            .map_err(creation_error)?;
        if from_current_fallback {
            self.fallback_key_used = true;
        }
        sessions.insert(created.session);
        Ok(created.plaintext)
    }

    /// Saves the account (no sessions) encrypted with `key`.
    ///
    /// Format: a prost `kith.v1.OlmPickle` with the account as vodozemac's serde pickle (JSON) and
    /// no peers, encrypted with vodozemac's pickle cipher under a key derived from `key` and a
    /// random salt (see the `pickle` module).
    pub fn to_pickle(&self, key: &PickleKey) -> Result<Vec<u8>, CryptoError> {
        self.to_pickle_with(&[], key)
    }

    /// The account plus `peers`' sessions in one `OlmPickle`: the whole-state format.
    fn to_pickle_with(
        &self,
        peers: &[&PeerSessions],
        key: &PickleKey,
    ) -> Result<Vec<u8>, CryptoError> {
        let mut container = proto::OlmPickle {
            account: serde_json::to_vec(&self.account.pickle()).map_err(serialise_error)?,
            peers: Vec::with_capacity(peers.len()),
            fallback_key_used: self.fallback_key_used,
        };
        for sessions in peers {
            container.peers.push(sessions.to_container()?);
        }
        let encoded = Zeroizing::new(container.encode_to_vec());
        wipe(&mut container);
        pickle::seal(&encoded, key, pickle::Kind::Account)
    }

    /// Restores an account saved by [`OlmAccount::to_pickle`], or by [`Olm::to_pickle`] (the
    /// whole-state format of stores written before sessions were saved per peer).
    ///
    /// Returns the account and the sessions the pickle held: none for an account pickle, every
    /// peer's for a whole-state one (the caller saves those per peer and the account alone, once).
    /// A wrong key or damaged bytes give [`PickleError::WrongKeyOrDamaged`], bytes that are not
    /// a pickle at all [`PickleError::UnknownFormat`].
    pub fn from_pickle(
        bytes: &[u8],
        key: &PickleKey,
    ) -> Result<(Self, Vec<PeerSessions>), CryptoError> {
        let plaintext = pickle::open(bytes, key, pickle::Kind::Account)?;
        let mut container =
            proto::OlmPickle::decode(plaintext.as_slice()).map_err(|e| PickleError::Corrupt {
                reason: e.to_string(),
            })?;
        let restored = Self::from_container(&container);
        wipe(&mut container);
        Ok(restored?)
    }

    fn from_container(
        container: &proto::OlmPickle,
    ) -> Result<(Self, Vec<PeerSessions>), PickleError> {
        let account: AccountPickle =
            serde_json::from_slice(&container.account).map_err(deserialise_error("account"))?;
        let mut account = Account::from_pickle(account);
        // A state without a fallback key could not publish a bundle; give it one.
        if account.fallback_key().is_empty() {
            account.generate_fallback_key();
        }
        let restored = Self {
            account,
            fallback_key_used: container.fallback_key_used,
        };
        let ours = restored.identity_key();
        let mut peers: Vec<PeerSessions> = Vec::with_capacity(container.peers.len());
        for peer in &container.peers {
            let sessions = PeerSessions::from_container(ours, peer)?;
            if sessions.is_empty() {
                continue;
            }
            // Two entries for one peer (never written, but cheap to tolerate): keep the first.
            if !peers.iter().any(|p| p.peer == sessions.peer) {
                peers.push(sessions);
            }
        }
        Ok((restored, peers))
    }
}

impl Default for OlmAccount {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for OlmAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Public keys only; the account holds secrets.
        f.debug_struct("OlmAccount")
            .field("identity_key", &self.identity_key())
            .field("fallback_key_used", &self.fallback_key_used)
            .finish_non_exhaustive()
    }
}

/// Our Olm sessions with one peer (keyed by its Curve25519 identity key), most recently used
/// first.
///
/// A peer may have several (both sides started one at the same time, or a peer restarted from an
/// old bundle). Encryption uses the most recently used one, so two sides that started sessions
/// concurrently converge on one as soon as they hear from each other.
///
/// Every method that takes `&mut self` changes state that must be saved with
/// [`PeerSessions::to_pickle`] before the result is acted on (sent or acknowledged): an encrypt
/// whose new ratchet state is lost would reuse message keys after a restart.
pub struct PeerSessions {
    /// Our identity key, the sender of what we encrypt.
    ours: Curve25519Key,
    peer: Curve25519Key,
    sessions: Vec<Session>,
}

impl PeerSessions {
    /// No sessions yet between `ours` (our identity key) and `peer`.
    pub fn new(ours: Curve25519Key, peer: Curve25519Key) -> Self {
        Self {
            ours,
            peer,
            sessions: Vec::new(),
        }
    }

    /// The peer's identity key.
    pub fn peer(&self) -> Curve25519Key {
        self.peer
    }

    /// Number of sessions kept with the peer.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// True when there is no session, so [`PeerSessions::encrypt`] needs a bundle first.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Drops every session and returns how many there were.
    ///
    /// For when the peer reports it cannot decrypt our messages (e.g. it lost its state): the next
    /// [`OlmAccount::encrypt_to_bundle`] starts a fresh session from its current bundle.
    pub fn forget(&mut self) -> usize {
        let count = self.sessions.len();
        self.sessions.clear();
        count
    }

    /// Encrypts `plaintext` on the most recently used session.
    ///
    /// Fails with [`CryptoError::NoSession`] when there is none; use
    /// [`OlmAccount::encrypt_to_bundle`] then. Until the peer has replied on the session the result
    /// is a pre-key message, so the peer can start its side from any of them.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Ciphertext, CryptoError> {
        check_plaintext_len(plaintext)?;
        let session = self
            .sessions
            .first_mut()
            .ok_or(CryptoError::NoSession { peer: self.peer })?;
        let message = session.encrypt(plaintext).map_err(encryption_error)?;
        Ok(Ciphertext {
            sender: self.ours,
            message,
        })
    }

    /// True when decrypting `ciphertext` would start a new inbound session, which needs the
    /// account ([`OlmAccount::decrypt`]): a pre-key message no session belongs to.
    pub fn needs_account(&self, ciphertext: &Ciphertext) -> bool {
        match &ciphertext.message {
            OlmMessage::Normal(_) => false,
            OlmMessage::PreKey(pre_key) => !self
                .sessions
                .iter()
                .any(|session| session.session_keys() == pre_key.session_keys()),
        }
    }

    /// Decrypts a message from the peer on an existing session.
    ///
    /// The peer's identity key must come from its verified bundle (or a pinned copy of it): Olm
    /// authenticates the message as coming from the holder of that key, and the bundle ties the
    /// key to a peer id. A message naming another key fails with [`CryptoError::SenderMismatch`].
    ///
    /// Normal messages are tried on every session, most recently used first. A pre-key message goes
    /// to the session it belongs to; one that would start a new session fails with
    /// [`CryptoError::NoSession`] (see [`PeerSessions::needs_account`]).
    ///
    /// A failed decryption leaves every session as it was, so a later genuine message still
    /// decrypts. Replays of a message already decrypted fail with
    /// [`DecryptFailure::AlreadyUsed`], with one gap: a replayed pre-key message whose session has
    /// since been dropped ([`PeerSessions::forget`], the per-peer cap, or a restore from an older
    /// pickle) starts a new session and decrypts again, as long as the fallback key it used is
    /// still held. The node deduplicates by message id anyway.
    pub fn decrypt(&mut self, ciphertext: &Ciphertext) -> Result<Vec<u8>, CryptoError> {
        self.check_sender(ciphertext)?;
        match &ciphertext.message {
            OlmMessage::Normal(_) => self.decrypt_normal(&ciphertext.message),
            OlmMessage::PreKey(pre_key) => {
                // The sender repeats pre-key messages until we reply; later ones belong to the
                // session the first one created. Decrypting them there (and never creating a
                // second session from the same pre-key material) is also what makes a replayed
                // pre-key message fail.
                let index = self
                    .sessions
                    .iter()
                    .position(|session| session.session_keys() == pre_key.session_keys())
                    .ok_or(CryptoError::NoSession { peer: self.peer })?;
                let plaintext = self.sessions[index]
                    .decrypt(&ciphertext.message)
                    .map_err(decryption_error)?;
                promote(&mut self.sessions, index);
                Ok(plaintext)
            }
        }
    }

    fn check_sender(&self, ciphertext: &Ciphertext) -> Result<(), CryptoError> {
        if ciphertext.sender != self.peer {
            return Err(CryptoError::SenderMismatch {
                expected: self.peer,
                got: ciphertext.sender,
            });
        }
        Ok(())
    }

    fn decrypt_normal(&mut self, message: &OlmMessage) -> Result<Vec<u8>, CryptoError> {
        let mut failure: Option<CryptoError> = None;
        for index in 0..self.sessions.len() {
            match self.sessions[index].decrypt(message) {
                Ok(plaintext) => {
                    promote(&mut self.sessions, index);
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
        Err(failure.unwrap_or(CryptoError::NoSession { peer: self.peer }))
    }

    /// Adds a session as the most recently used one, dropping the least recently used beyond the
    /// cap.
    fn insert(&mut self, session: Session) {
        self.sessions.insert(0, session);
        self.sessions.truncate(Olm::MAX_SESSIONS_PER_PEER);
    }

    /// Saves these sessions encrypted with `key`.
    ///
    /// Format: a prost `kith.v1.OlmPeerSessions` (the peer's identity key and vodozemac's serde
    /// session pickles, JSON) encrypted like the account pickle but under its own header and key
    /// derivation (see the `pickle` module). The peer's key is inside the MAC, so a pickle stored
    /// under another peer's key is refused on restore.
    pub fn to_pickle(&self, key: &PickleKey) -> Result<Vec<u8>, CryptoError> {
        let mut container = self.to_container()?;
        let encoded = Zeroizing::new(container.encode_to_vec());
        wipe_peer(&mut container);
        pickle::seal(&encoded, key, pickle::Kind::Sessions)
    }

    /// Restores the sessions between `ours` (our identity key) and `peer` saved by
    /// [`PeerSessions::to_pickle`].
    ///
    /// Fails with [`PickleError::Corrupt`] when the pickle holds the sessions of another peer (a
    /// value stored under the wrong key), so sessions can never be used with the wrong peer.
    pub fn from_pickle(
        ours: Curve25519Key,
        peer: Curve25519Key,
        bytes: &[u8],
        key: &PickleKey,
    ) -> Result<Self, CryptoError> {
        let plaintext = pickle::open(bytes, key, pickle::Kind::Sessions)?;
        let mut container = proto::OlmPeerSessions::decode(plaintext.as_slice()).map_err(|e| {
            PickleError::Corrupt {
                reason: e.to_string(),
            }
        })?;
        let restored = Self::from_container(ours, &container);
        wipe_peer(&mut container);
        let restored = restored?;
        if restored.peer != peer {
            return Err(CryptoError::Pickle(PickleError::Corrupt {
                reason: format!("sessions pickle is for {}, expected {peer}", restored.peer),
            }));
        }
        Ok(restored)
    }

    fn to_container(&self) -> Result<proto::OlmPeerSessions, CryptoError> {
        let mut pickles = Vec::with_capacity(self.sessions.len());
        for session in &self.sessions {
            pickles.push(serde_json::to_vec(&session.pickle()).map_err(serialise_error)?);
        }
        Ok(proto::OlmPeerSessions {
            identity_key: self.peer.to_bytes().to_vec(),
            sessions: pickles,
        })
    }

    fn from_container(
        ours: Curve25519Key,
        container: &proto::OlmPeerSessions,
    ) -> Result<Self, PickleError> {
        let peer = Curve25519Key::from_slice(&container.identity_key).ok_or_else(|| {
            PickleError::Corrupt {
                reason: format!(
                    "peer identity key must be 32 bytes, got {}",
                    container.identity_key.len()
                ),
            }
        })?;
        let mut sessions = Vec::with_capacity(container.sessions.len());
        for session in &container.sessions {
            let session: SessionPickle =
                serde_json::from_slice(session).map_err(deserialise_error("session"))?;
            sessions.push(Session::from_pickle(session));
        }
        sessions.truncate(Olm::MAX_SESSIONS_PER_PEER);
        Ok(Self {
            ours,
            peer,
            sessions,
        })
    }
}

impl fmt::Debug for PeerSessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Public keys and counts only; sessions hold secrets.
        f.debug_struct("PeerSessions")
            .field("peer", &self.peer)
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

/// The whole Olm state in one value: the account and the sessions with every peer.
///
/// A convenience over [`OlmAccount`] and [`PeerSessions`] for tools and tests, and the type that
/// reads and writes the whole-state pickle of stores written before sessions were saved per peer.
/// The node keeps the parts apart ([`Olm::into_parts`]) so it can lock and save them per peer.
pub struct Olm {
    account: OlmAccount,
    sessions: HashMap<Curve25519Key, PeerSessions>,
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
        Self {
            account: OlmAccount::new(),
            sessions: HashMap::new(),
        }
    }

    /// The whole state from its parts (the inverse of [`Olm::into_parts`]); sessions with a peer
    /// that appears twice keep the first entry.
    pub fn from_parts(account: OlmAccount, peers: Vec<PeerSessions>) -> Self {
        let mut sessions = HashMap::with_capacity(peers.len());
        for peer in peers {
            sessions.entry(peer.peer).or_insert(peer);
        }
        Self { account, sessions }
    }

    /// The account and every peer's sessions, for saving and locking them separately.
    pub fn into_parts(self) -> (OlmAccount, Vec<PeerSessions>) {
        (self.account, self.sessions.into_values().collect())
    }

    /// The account.
    pub fn account(&self) -> &OlmAccount {
        &self.account
    }

    /// Our Olm Curve25519 identity key: what peers key their sessions with us by.
    pub fn identity_key(&self) -> Curve25519Key {
        self.account.identity_key()
    }

    /// Our Olm Ed25519 key.
    pub fn signing_key(&self) -> Ed25519Key {
        self.account.signing_key()
    }

    /// See [`OlmAccount::key_bundle`].
    pub fn key_bundle(
        &self,
        keypair: &Keypair,
        created_at_ms: u64,
    ) -> Result<SignedKeyBundle, CryptoError> {
        self.account.key_bundle(keypair, created_at_ms)
    }

    /// See [`OlmAccount::fallback_key_used`].
    pub fn fallback_key_used(&self) -> bool {
        self.account.fallback_key_used()
    }

    /// See [`OlmAccount::rotate_fallback_key_if_used`].
    pub fn rotate_fallback_key_if_used(&mut self) -> bool {
        self.account.rotate_fallback_key_if_used()
    }

    /// See [`OlmAccount::rotate_fallback_key`].
    pub fn rotate_fallback_key(&mut self) {
        self.account.rotate_fallback_key();
    }

    /// True when at least one session with `peer` exists, so [`Olm::encrypt`] needs no bundle.
    pub fn has_session(&self, peer: &Curve25519Key) -> bool {
        self.session_count(peer) > 0
    }

    /// Number of sessions kept with `peer`.
    pub fn session_count(&self, peer: &Curve25519Key) -> usize {
        self.sessions.get(peer).map_or(0, PeerSessions::len)
    }

    /// Drops every session with `peer` and returns how many there were (see
    /// [`PeerSessions::forget`]).
    pub fn forget_sessions(&mut self, peer: &Curve25519Key) -> usize {
        self.sessions
            .remove(peer)
            .map_or(0, |sessions| sessions.len())
    }

    /// Encrypts `plaintext` for `peer` on the most recently used session with it (see
    /// [`PeerSessions::encrypt`]).
    pub fn encrypt(
        &mut self,
        peer: &Curve25519Key,
        plaintext: &[u8],
    ) -> Result<Ciphertext, CryptoError> {
        check_plaintext_len(plaintext)?;
        self.sessions
            .get_mut(peer)
            .ok_or(CryptoError::NoSession { peer: *peer })?
            .encrypt(plaintext)
    }

    /// See [`OlmAccount::encrypt_to_bundle`].
    pub fn encrypt_to_bundle(
        &mut self,
        bundle: &KeyBundle,
        plaintext: &[u8],
    ) -> Result<Ciphertext, CryptoError> {
        let peer = bundle.identity_key();
        let ours = self.account.identity_key();
        let sessions = self
            .sessions
            .entry(peer)
            .or_insert_with(|| PeerSessions::new(ours, peer));
        let result = self.account.encrypt_to_bundle(sessions, bundle, plaintext);
        self.sessions.retain(|_, sessions| !sessions.is_empty());
        result
    }

    /// Decrypts a message from the peer whose identity key is `sender` (see
    /// [`PeerSessions::decrypt`] and [`OlmAccount::decrypt`]).
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
        let ours = self.account.identity_key();
        let sessions = self
            .sessions
            .entry(*sender)
            .or_insert_with(|| PeerSessions::new(ours, *sender));
        let result = self.account.decrypt(sessions, ciphertext);
        self.sessions.retain(|_, sessions| !sessions.is_empty());
        result
    }

    /// Saves the whole state (account and every session) encrypted with `key`, in the format of
    /// stores written before sessions were saved per peer; [`OlmAccount::from_pickle`] reads it.
    ///
    /// Format: the account and sessions as vodozemac's serde pickles (JSON), gathered in a prost
    /// `kith.v1.OlmPickle`, which is encrypted as a whole with vodozemac's pickle cipher under a key
    /// derived from `key` and a random salt (see the `pickle` module). One MAC covers everything,
    /// so sessions cannot be swapped between saves, and wrong keys or damage are detected.
    pub fn to_pickle(&self, key: &PickleKey) -> Result<Vec<u8>, CryptoError> {
        let peers: Vec<&PeerSessions> = self.sessions.values().collect();
        self.account.to_pickle_with(&peers, key)
    }

    /// Restores the state saved by [`Olm::to_pickle`] (or an account alone, with no sessions).
    ///
    /// A wrong key or damaged bytes give [`PickleError::WrongKeyOrDamaged`], bytes that are not
    /// a pickle at all [`PickleError::UnknownFormat`].
    pub fn from_pickle(bytes: &[u8], key: &PickleKey) -> Result<Self, CryptoError> {
        let (account, peers) = OlmAccount::from_pickle(bytes, key)?;
        Ok(Self {
            account,
            sessions: peers.into_iter().map(|p| (p.peer, p)).collect(),
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
                &self.sessions.values().map(PeerSessions::len).sum::<usize>(),
            )
            .field("fallback_key_used", &self.account.fallback_key_used)
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
        wipe_peer(peer);
    }
}

/// Overwrites the session pickles of one peer's container before it is dropped.
fn wipe_peer(container: &mut proto::OlmPeerSessions) {
    for session in &mut container.sessions {
        session.zeroize();
    }
}
