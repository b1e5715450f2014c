//! The node's Olm state in memory: the account behind one lock, each peer's sessions behind a lock
//! of their own.
//!
//! ```text
//! account: Mutex<OlmAccount>            held briefly: start a session, publish/rotate the bundle
//! peers:   identity key → Mutex<Slot>   held across encrypt/decrypt + the store transaction
//! lock order: peer, then account (never the other way)
//! ```
//!
//! Why per peer: encrypting or decrypting for one conversation then saves only that
//! conversation's sessions (in the same transaction as the envelope or message, see
//! `kith_store::OlmSave`), so the saved state per message no longer grows with the contact list,
//! and work for different peers runs concurrently.
//!
//! A peer's sessions are read from the store the first time its lock is taken, so opening a node
//! with many contacts decrypts nothing up front. Stores written before per-peer sessions hold the
//! whole state under one key; [`OlmState::load`] splits it once, in one transaction.

use std::{
    collections::HashMap,
    ops::{Deref, DerefMut},
    sync::{Arc, Mutex as StdMutex},
};

use kith_crypto::{Curve25519Key, OlmAccount, PeerSessions, PickleKey};
use kith_store::{OlmSave, Store};
use tokio::sync::{Mutex, MutexGuard, OwnedMutexGuard};

use crate::ServiceError;

/// The Olm account and every peer's sessions, each behind its own lock.
pub(crate) struct OlmState {
    /// Our identity key (never changes), so a peer's sessions load without the account lock.
    ours: Curve25519Key,
    account: Mutex<OlmAccount>,
    peers: StdMutex<HashMap<Curve25519Key, Arc<Mutex<Slot>>>>,
    pickle_key: PickleKey,
    store: Store,
}

/// One peer's sessions; `loaded` is false until they were read from the store.
pub(crate) struct Slot {
    loaded: bool,
    sessions: PeerSessions,
}

/// A locked peer: derefs to its sessions. Save them (with [`PeerGuard::pickle`]) in the same
/// transaction as whatever the change produced, before the guard drops.
pub(crate) struct PeerGuard(OwnedMutexGuard<Slot>);

impl PeerGuard {
    /// Makes the next lock re-read the sessions from the store: for when saving them failed, so
    /// memory must not run ahead of what is on disk.
    pub(crate) fn reload(&mut self) {
        self.0.loaded = false;
    }
}

impl Deref for PeerGuard {
    type Target = PeerSessions;

    fn deref(&self) -> &PeerSessions {
        &self.0.sessions
    }
}

impl DerefMut for PeerGuard {
    fn deref_mut(&mut self) -> &mut PeerSessions {
        &mut self.0.sessions
    }
}

impl OlmState {
    /// Restores the account from the store (or creates and saves one), migrating a whole-state
    /// pickle from an older store to the per-peer layout.
    ///
    /// The migration is one transaction and is not flushed here: if it is lost in a crash, the
    /// old pickle is still there and the next start migrates again; any later flush (the first
    /// message sent or received) makes it durable together with what follows it in sled's log.
    pub(crate) fn load(store: &Store, pickle_key: PickleKey) -> Result<Self, ServiceError> {
        let account = match store.messages().olm_account()? {
            Some(bytes) => {
                let (account, legacy) =
                    OlmAccount::from_pickle(&bytes, &pickle_key).map_err(ServiceError::Crypto)?;
                if !legacy.is_empty() {
                    let mut sessions = Vec::with_capacity(legacy.len());
                    for peer in &legacy {
                        let pickle = peer.to_pickle(&pickle_key).map_err(ServiceError::Crypto)?;
                        sessions.push((peer.peer().to_bytes(), pickle));
                    }
                    let account_pickle = account
                        .to_pickle(&pickle_key)
                        .map_err(ServiceError::Crypto)?;
                    store.messages().migrate_olm(&account_pickle, &sessions)?;
                    tracing::info!(
                        peers = sessions.len(),
                        "split the Olm state into an account and per-peer sessions"
                    );
                }
                account
            }
            None => {
                let account = OlmAccount::new();
                let pickle = account
                    .to_pickle(&pickle_key)
                    .map_err(ServiceError::Crypto)?;
                store.messages().save_olm(OlmSave {
                    sessions: None,
                    account: Some(&pickle),
                })?;
                account
            }
        };
        Ok(Self {
            ours: account.identity_key(),
            account: Mutex::new(account),
            peers: StdMutex::new(HashMap::new()),
            pickle_key,
            store: store.clone(),
        })
    }

    /// The account. Lock it after any peer lock the caller needs, never before one.
    pub(crate) async fn account(&self) -> MutexGuard<'_, OlmAccount> {
        self.account.lock().await
    }

    /// Locks the sessions with `peer`, reading them from the store on first use.
    ///
    /// Waits for whoever holds that peer (an encryption batch, a receive batch); other peers are
    /// not affected. Cancel-safe: a cancelled wait holds nothing.
    pub(crate) async fn lock_peer(&self, peer: Curve25519Key) -> Result<PeerGuard, ServiceError> {
        let slot = self
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(peer)
            .or_insert_with(|| {
                Arc::new(Mutex::new(Slot {
                    loaded: false,
                    sessions: PeerSessions::new(self.ours, peer),
                }))
            })
            .clone();
        let mut guard = slot.lock_owned().await;
        if !guard.loaded {
            if let Some(bytes) = self.store.messages().olm_sessions(&peer.to_bytes())? {
                guard.sessions =
                    PeerSessions::from_pickle(self.ours, peer, &bytes, &self.pickle_key)
                        .map_err(ServiceError::Crypto)?;
            }
            guard.loaded = true;
        }
        Ok(PeerGuard(guard))
    }

    /// The pickle of a locked peer's sessions, to save with what they produced.
    pub(crate) fn pickle(&self, sessions: &PeerSessions) -> Result<Vec<u8>, ServiceError> {
        sessions
            .to_pickle(&self.pickle_key)
            .map_err(ServiceError::Crypto)
    }

    /// The pickle of the account, to save after it changed.
    pub(crate) fn account_pickle(&self, account: &OlmAccount) -> Result<Vec<u8>, ServiceError> {
        account
            .to_pickle(&self.pickle_key)
            .map_err(ServiceError::Crypto)
    }
}
