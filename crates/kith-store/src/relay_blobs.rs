//! A community relay's blobs held for its registered users (files sent to them while offline).
//!
//! | tree | key | value |
//! |---|---|---|
//! | `relay_blobs` | blake3(recipient) ‖ blob hash | `HeldBlob` |
//! | `relay_blob_index` | blob hash ‖ blake3(recipient) | empty |
//! | `relay_blob_usage` | blake3(recipient) | bytes (u64 BE) |
//!
//! The ciphertext lives in the relay's blob store (kith-blob); this is the bookkeeping: who it is
//! held for, the per-recipient byte quota, and when it expires. The quota check and the
//! reservation are one transaction, so concurrent uploads can never overshoot it. One blob held
//! for several recipients (a group's members) is stored once and counted for each; the index
//! says when the last one let go of it.

use std::path::PathBuf;

use kith_proto::v1 as pb;
use prost::Message as _;
use sled::{Transactional as _, transaction::ConflictableTransactionError};

use crate::StoreError;

/// One blob held for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldBlob {
    /// The recipient's peer id.
    pub recipient: Vec<u8>,
    /// The blob's hash.
    pub hash: [u8; 32],
    /// Who uploaded it.
    pub from: Vec<u8>,
    /// Bytes counted against the recipient's quota.
    pub size: u64,
    /// When it was first reserved, unix ms.
    pub held_at_ms: u64,
}

/// The result of [`RelayBlobBook::reserve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    /// Counted against the quota now.
    Reserved,
    /// Already held (or being received) for this recipient; nothing changed.
    AlreadyHeld,
    /// Over the quota; nothing was reserved.
    Full {
        /// Bytes held for the recipient now.
        held: u64,
    },
}

/// Totals for `kith relay status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayBlobStats {
    /// (recipient, blob) entries.
    pub entries: usize,
    /// Bytes reserved over all recipients (a blob held for two counts twice).
    pub bytes: u64,
}

/// The relay blob trees. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RelayBlobBook {
    held: sled::Tree,
    index: sled::Tree,
    usage: sled::Tree,
    path: PathBuf,
}

fn prefix(recipient: &[u8]) -> [u8; 32] {
    *blake3::hash(recipient).as_bytes()
}

fn parse_bytes(raw: Option<&[u8]>) -> u64 {
    raw.and_then(|v| <[u8; 8]>::try_from(v).ok())
        .map_or(0, u64::from_be_bytes)
}

fn abort(e: sled::transaction::TransactionError<StoreError>, path: &std::path::Path) -> StoreError {
    match e {
        sled::transaction::TransactionError::Abort(e) => e,
        sled::transaction::TransactionError::Storage(e) => StoreError::from_sled(path, e),
    }
}

impl RelayBlobBook {
    pub(crate) fn new(db: &sled::Db, path: PathBuf) -> Result<Self, StoreError> {
        let open = |name: &str| {
            db.open_tree(name)
                .map_err(|e| StoreError::from_sled(&path, e))
        };
        Ok(Self {
            held: open("relay_blobs")?,
            index: open("relay_blob_index")?,
            usage: open("relay_blob_usage")?,
            path,
        })
    }

    fn err(&self, e: sled::Error) -> StoreError {
        StoreError::from_sled(&self.path, e)
    }

    /// Counts `size` bytes of blob `hash` against `recipient`'s quota of `quota` bytes, unless
    /// that breaks it. Not flushed: the caller's next flush covers it.
    pub fn reserve(
        &self,
        recipient: &[u8],
        hash: [u8; 32],
        from: &[u8],
        size: u64,
        now_ms: u64,
        quota: u64,
    ) -> Result<Reserve, StoreError> {
        let p = prefix(recipient);
        let mut key = p.to_vec();
        key.extend_from_slice(&hash);
        let mut index_key = hash.to_vec();
        index_key.extend_from_slice(&p);
        let value = pb::HeldBlob {
            recipient: recipient.to_vec(),
            from: from.to_vec(),
            size,
            held_at_ms: now_ms,
        }
        .encode_to_vec();
        crate::gate::transaction(|| {
            (&self.held, &self.index, &self.usage).transaction(|(held, index, usage)| {
                if held.get(key.as_slice())?.is_some() {
                    return Ok(Reserve::AlreadyHeld);
                }
                let bytes = parse_bytes(usage.get(p)?.as_deref());
                if bytes.saturating_add(size) > quota {
                    return Ok(Reserve::Full { held: bytes });
                }
                held.insert(key.as_slice(), value.as_slice())?;
                index.insert(index_key.as_slice(), &[][..])?;
                usage.insert(&p[..], &(bytes + size).to_be_bytes()[..])?;
                Ok::<_, ConflictableTransactionError<StoreError>>(Reserve::Reserved)
            })
        })
        .map_err(|e| abort(e, &self.path))
    }

    /// Whether `hash` is held for `recipient`.
    pub fn holds(&self, recipient: &[u8], hash: &[u8; 32]) -> Result<bool, StoreError> {
        let mut key = prefix(recipient).to_vec();
        key.extend_from_slice(hash);
        self.held.contains_key(key).map_err(|e| self.err(e))
    }

    /// Drops `hash` for `recipient` and frees its quota. Returns `None` if it was not held,
    /// `Some(true)` if nobody else holds it any more (the caller deletes the ciphertext).
    pub fn release(&self, recipient: &[u8], hash: &[u8; 32]) -> Result<Option<bool>, StoreError> {
        let p = prefix(recipient);
        let mut key = p.to_vec();
        key.extend_from_slice(hash);
        let mut index_key = hash.to_vec();
        index_key.extend_from_slice(&p);
        let removed = crate::gate::transaction(|| {
            (&self.held, &self.index, &self.usage).transaction(|(held, index, usage)| {
                let Some(raw) = held.remove(key.as_slice())? else {
                    return Ok(false);
                };
                index.remove(index_key.as_slice())?;
                let size = pb::HeldBlob::decode(raw.as_ref()).map_or(0, |h| h.size);
                let bytes = parse_bytes(usage.get(p)?.as_deref());
                usage.insert(&p[..], &bytes.saturating_sub(size).to_be_bytes()[..])?;
                Ok::<_, ConflictableTransactionError<StoreError>>(true)
            })
        })
        .map_err(|e| abort(e, &self.path))?;
        if !removed {
            return Ok(None);
        }
        let others = self
            .index
            .scan_prefix(hash)
            .next()
            .transpose()
            .map_err(|e| self.err(e))?;
        Ok(Some(others.is_none()))
    }

    /// Every entry held for longer than `ttl_ms`, to release.
    pub fn expired(&self, now_ms: u64, ttl_ms: u64) -> Result<Vec<HeldBlob>, StoreError> {
        let mut out = Vec::new();
        for entry in self.held.iter() {
            let (key, raw) = entry.map_err(|e| self.err(e))?;
            let Ok(h) = pb::HeldBlob::decode(raw.as_ref()) else {
                continue;
            };
            let Some(hash) = key.get(32..).and_then(|h| <[u8; 32]>::try_from(h).ok()) else {
                continue;
            };
            if h.held_at_ms.saturating_add(ttl_ms) <= now_ms {
                out.push(HeldBlob {
                    recipient: h.recipient,
                    hash,
                    from: h.from,
                    size: h.size,
                    held_at_ms: h.held_at_ms,
                });
            }
        }
        Ok(out)
    }

    /// Whether anyone holds `hash` here.
    pub fn is_held(&self, hash: &[u8; 32]) -> Result<bool, StoreError> {
        Ok(self
            .index
            .scan_prefix(hash)
            .next()
            .transpose()
            .map_err(|e| self.err(e))?
            .is_some())
    }

    /// Bytes held for one recipient.
    pub fn usage(&self, recipient: &[u8]) -> Result<u64, StoreError> {
        Ok(parse_bytes(
            self.usage
                .get(prefix(recipient))
                .map_err(|e| self.err(e))?
                .as_deref(),
        ))
    }

    /// Totals.
    pub fn stats(&self) -> Result<RelayBlobStats, StoreError> {
        let mut stats = RelayBlobStats {
            entries: self.held.len(),
            ..RelayBlobStats::default()
        };
        for entry in self.usage.iter() {
            let (_, v) = entry.map_err(|e| self.err(e))?;
            stats.bytes += parse_bytes(Some(&v));
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use crate::{Store, StoreConfig};

    use super::*;

    #[test]
    fn reservations_respect_the_quota_and_releases_free_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db"), &StoreConfig::default()).unwrap();
        let b = store.relay_blobs();
        assert_eq!(
            b.reserve(b"bob", [1; 32], b"al", 60, 5, 100).unwrap(),
            Reserve::Reserved
        );
        assert_eq!(
            b.reserve(b"bob", [1; 32], b"al", 60, 6, 100).unwrap(),
            Reserve::AlreadyHeld
        );
        assert_eq!(
            b.reserve(b"bob", [2; 32], b"al", 50, 7, 100).unwrap(),
            Reserve::Full { held: 60 }
        );
        // The same blob for another recipient counts against theirs.
        assert_eq!(
            b.reserve(b"cy", [1; 32], b"al", 60, 8, 100).unwrap(),
            Reserve::Reserved
        );
        assert!(b.holds(b"bob", &[1; 32]).unwrap());
        assert_eq!(b.usage(b"bob").unwrap(), 60);
        assert_eq!(b.release(b"bob", &[1; 32]).unwrap(), Some(false));
        assert_eq!(b.release(b"bob", &[1; 32]).unwrap(), None);
        assert_eq!(b.usage(b"bob").unwrap(), 0);
        assert_eq!(
            b.reserve(b"bob", [2; 32], b"al", 50, 9, 100).unwrap(),
            Reserve::Reserved
        );
        assert_eq!(b.release(b"cy", &[1; 32]).unwrap(), Some(true));
        assert!(!b.is_held(&[1; 32]).unwrap());
        assert_eq!(
            b.stats().unwrap(),
            RelayBlobStats {
                entries: 1,
                bytes: 50
            }
        );
    }

    #[test]
    fn expiry_lists_old_entries_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db"), &StoreConfig::default()).unwrap();
        let b = store.relay_blobs();
        b.reserve(b"bob", [1; 32], b"al", 10, 100, 1000).unwrap();
        b.reserve(b"bob", [2; 32], b"al", 10, 900, 1000).unwrap();
        let old = b.expired(1000, 500).unwrap();
        assert_eq!(old.len(), 1);
        assert_eq!(old[0].hash, [1; 32]);
        assert_eq!(old[0].recipient, b"bob");
    }
}
