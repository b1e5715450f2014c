//! A community relay's mailboxes: encrypted envelopes held for registered recipients.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `mailbox_registrations` | recipient peer id | registered at, unix ms (u64 BE) |
//! | `mailbox` | blake3(recipient) ‖ item id | `HeldMail` |
//! | `mailbox_usage` | blake3(recipient) | count (u64 BE) ‖ bytes (u64 BE) |
//!
//! | `mailbox_journal` | sequence number (u64) | the writes of a batch being committed (see `journal.rs`) |
//!
//! A deposit checks the quota and stores the item in one journaled batch under the store's write
//! lock, so concurrent deposits can never overshoot it; the items a recipient stored are deleted
//! in one batch per request, not one transaction each (two synchronous log writes apiece in sled
//! 0.34: a page of 256 cost 512).

use std::path::PathBuf;

use kith_proto::v1 as pb;
use prost::Message as _;
use sled::transaction::ConflictableTransactionError;

use crate::StoreError;
use crate::error::corrupt;
use crate::journal::{Journal, Staged, Writes};

/// A relay-assigned item id.
pub type MailId = [u8; 16];

/// One held envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// Its id at this relay.
    pub id: MailId,
    /// The depositor's peer id.
    pub from: Vec<u8>,
    /// The encrypted envelope, as deposited.
    pub envelope: Vec<u8>,
    /// When deposited, unix ms.
    pub deposited_at_ms: u64,
}

/// Per-recipient limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Most items held for one recipient.
    pub max_items: u64,
    /// Most bytes held for one recipient.
    pub max_bytes: u64,
}

/// The result of a deposit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deposit {
    /// Held under this id.
    Stored(MailId),
    /// Over quota; nothing was stored.
    Full {
        /// Items held now.
        items: u64,
        /// Bytes held now.
        bytes: u64,
    },
}

/// Totals for `kith relay status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailboxStats {
    /// Registered recipients.
    pub recipients: usize,
    /// Items held.
    pub items: usize,
    /// Bytes held (envelopes).
    pub bytes: u64,
}

/// The mailbox trees. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MailboxStore {
    registrations: sled::Tree,
    mail: sled::Tree,
    usage: sled::Tree,
    /// Batches over `mail` and `usage` (in that order), and the store's write lock.
    journal: Journal<2>,
    path: PathBuf,
}

/// Removes the items under `keys` (of the recipient with prefix `p`) and takes them off its usage.
fn remove_staged(
    mail: &Staged<'_>,
    usage: &Staged<'_>,
    p: &[u8; 32],
    keys: &[Vec<u8>],
) -> Result<usize, ConflictableTransactionError<StoreError>> {
    let (mut items, mut bytes) = parse_usage(usage.get(p)?.as_deref());
    let mut removed = 0;
    for key in keys {
        let Some(raw) = mail.get(key)? else {
            continue;
        };
        mail.remove(key)?;
        let size = pb::HeldMail::decode(raw.as_ref())
            .map(|h| h.envelope.len() as u64)
            .unwrap_or(0);
        items = items.saturating_sub(1);
        bytes = bytes.saturating_sub(size);
        removed += 1;
    }
    if removed > 0 {
        usage.insert(&p[..], usage_value(items, bytes))?;
    }
    Ok(removed)
}

fn prefix(recipient: &[u8]) -> [u8; 32] {
    *blake3::hash(recipient).as_bytes()
}

fn usage_value(items: u64, bytes: u64) -> Vec<u8> {
    let mut v = items.to_be_bytes().to_vec();
    v.extend_from_slice(&bytes.to_be_bytes());
    v
}

fn parse_usage(raw: Option<&[u8]>) -> (u64, u64) {
    match raw {
        Some(v) if v.len() == 16 => {
            let mut a = [0u8; 8];
            let mut b = [0u8; 8];
            a.copy_from_slice(&v[..8]);
            b.copy_from_slice(&v[8..]);
            (u64::from_be_bytes(a), u64::from_be_bytes(b))
        }
        _ => (0, 0),
    }
}

impl MailboxStore {
    pub(crate) fn new(db: &sled::Db, path: PathBuf) -> Result<Self, StoreError> {
        let open = |name: &str| {
            db.open_tree(name)
                .map_err(|e| StoreError::from_sled(&path, e))
        };
        let mail = open("mailbox")?;
        let usage = open("mailbox_usage")?;
        // Before anything reads the trees: a batch a crash interrupted is completed first.
        let journal = Journal::open(db, &path, "mailbox_journal", [mail.clone(), usage.clone()])?;
        Ok(Self {
            registrations: open("mailbox_registrations")?,
            mail,
            usage,
            journal,
            path,
        })
    }

    fn err(&self, e: sled::Error) -> StoreError {
        StoreError::from_sled(&self.path, e)
    }

    /// Registers (or re-registers) a recipient.
    pub fn register(&self, recipient: &[u8], now_ms: u64) -> Result<(), StoreError> {
        self.registrations
            .insert(recipient, &now_ms.to_be_bytes())
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Whether a recipient registered here.
    pub fn is_registered(&self, recipient: &[u8]) -> Result<bool, StoreError> {
        self.registrations
            .contains_key(recipient)
            .map_err(|e| self.err(e))
    }

    /// Holds an envelope for `recipient` unless that breaks its quota.
    pub fn deposit(
        &self,
        recipient: &[u8],
        id: MailId,
        from: &[u8],
        envelope: &[u8],
        now_ms: u64,
        quota: Quota,
    ) -> Result<Deposit, StoreError> {
        let p = prefix(recipient);
        let mut key = p.to_vec();
        key.extend_from_slice(&id);
        let value = pb::HeldMail {
            from: from.to_vec(),
            envelope: envelope.to_vec(),
            deposited_at_ms: now_ms,
        }
        .encode_to_vec();
        let size = envelope.len() as u64;
        self.journal.batch(|[mail, usage]| {
            let (items, bytes) = parse_usage(usage.get(p)?.as_deref());
            if items + 1 > quota.max_items || bytes + size > quota.max_bytes {
                return Ok(Deposit::Full { items, bytes });
            }
            mail.insert(key.as_slice(), value.as_slice())?;
            usage.insert(&p[..], usage_value(items + 1, bytes + size))?;
            Ok(Deposit::Stored(id))
        })
    }

    /// Up to `max` held items for `recipient`, oldest first, dropping those older than `ttl_ms`.
    /// Returns the items and how many more wait.
    pub fn fetch(
        &self,
        recipient: &[u8],
        max: usize,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<(Vec<Mail>, u64), StoreError> {
        self.expire(recipient, now_ms, ttl_ms)?;
        let mut items = Vec::new();
        let mut remaining = 0u64;
        for entry in self.mail.scan_prefix(prefix(recipient)) {
            let (key, raw) = entry.map_err(|e| self.err(e))?;
            if items.len() >= max {
                remaining += 1;
                continue;
            }
            let held = pb::HeldMail::decode(raw.as_ref()).map_err(|e| corrupt("mailbox", e))?;
            let id: MailId = key[32..]
                .try_into()
                .map_err(|_| corrupt("mailbox", "item key is not 48 bytes"))?;
            items.push(Mail {
                id,
                from: held.from,
                envelope: held.envelope,
                deposited_at_ms: held.deposited_at_ms,
            });
        }
        Ok((items, remaining))
    }

    /// Deletes items the recipient has stored; returns how many were there.
    pub fn delete(&self, recipient: &[u8], ids: &[MailId]) -> Result<usize, StoreError> {
        let p = prefix(recipient);
        let keys: Vec<Vec<u8>> = ids
            .iter()
            .map(|id| {
                let mut key = p.to_vec();
                key.extend_from_slice(id);
                key
            })
            .collect();
        self.remove_items(&p, &keys)
    }

    /// Removes the items under `keys` of one recipient (prefix `p`) and their usage, in one
    /// batch; returns how many were there.
    fn remove_items(&self, p: &[u8; 32], keys: &[Vec<u8>]) -> Result<usize, StoreError> {
        self.journal
            .batch(|[mail, usage]| remove_staged(mail, usage, p, keys))
    }

    fn expire(&self, recipient: &[u8], now_ms: u64, ttl_ms: u64) -> Result<usize, StoreError> {
        let p = prefix(recipient);
        let mut expired = Vec::new();
        for entry in self.mail.scan_prefix(p) {
            let (key, raw) = entry.map_err(|e| self.err(e))?;
            let old = pb::HeldMail::decode(raw.as_ref())
                .map(|h| h.deposited_at_ms.saturating_add(ttl_ms) <= now_ms)
                .unwrap_or(true);
            if old {
                expired.push(key.to_vec());
            }
        }
        if expired.is_empty() {
            return Ok(0);
        }
        self.remove_items(&p, &expired)
    }

    /// Drops every item older than `ttl_ms`, for all recipients; returns how many.
    pub fn sweep(&self, now_ms: u64, ttl_ms: u64) -> Result<usize, StoreError> {
        let mut n = 0;
        for entry in self.registrations.iter() {
            let (recipient, _) = entry.map_err(|e| self.err(e))?;
            n += self.expire(&recipient, now_ms, ttl_ms)?;
        }
        Ok(n)
    }

    /// Items and bytes held for one recipient.
    pub fn usage(&self, recipient: &[u8]) -> Result<(u64, u64), StoreError> {
        Ok(parse_usage(
            self.usage
                .get(prefix(recipient))
                .map_err(|e| self.err(e))?
                .as_deref(),
        ))
    }

    /// Registered recipients with their usage (items, bytes), most items first, at most `limit`.
    pub fn recipients(&self, limit: usize) -> Result<Vec<(Vec<u8>, u64, u64)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.registrations.iter() {
            let (recipient, _) = entry.map_err(|e| self.err(e))?;
            let (items, bytes) = self.usage(&recipient)?;
            out.push((recipient.to_vec(), items, bytes));
        }
        out.sort_by_key(|(_, items, bytes)| std::cmp::Reverse((*items, *bytes)));
        out.truncate(limit);
        Ok(out)
    }

    /// Totals.
    pub fn stats(&self) -> Result<MailboxStats, StoreError> {
        let mut stats = MailboxStats {
            recipients: self.registrations.len(),
            ..MailboxStats::default()
        };
        for entry in self.usage.iter() {
            let (_, v) = entry.map_err(|e| self.err(e))?;
            let (items, bytes) = parse_usage(Some(&v));
            stats.items += usize::try_from(items).unwrap_or(usize::MAX);
            stats.bytes += bytes;
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use crate::{Store, StoreConfig};

    use super::*;

    const Q: Quota = Quota {
        max_items: 3,
        max_bytes: 100,
    };

    fn id(n: u8) -> MailId {
        [n; 16]
    }

    #[test]
    fn deposits_respect_the_quota_and_deletes_free_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db"), &StoreConfig::default()).unwrap();
        let m = store.mailboxes();
        m.register(b"bob", 1).unwrap();
        assert!(m.is_registered(b"bob").unwrap());
        assert!(!m.is_registered(b"eve").unwrap());
        for n in 0..3 {
            assert_eq!(
                m.deposit(b"bob", id(n), b"al", &[n; 10], 5, Q).unwrap(),
                Deposit::Stored(id(n))
            );
        }
        assert_eq!(
            m.deposit(b"bob", id(9), b"al", &[9; 10], 5, Q).unwrap(),
            Deposit::Full {
                items: 3,
                bytes: 30
            }
        );
        let (items, remaining) = m.fetch(b"bob", 2, 6, 1000).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(remaining, 1);
        assert_eq!(items[0].envelope, vec![0; 10]);
        assert_eq!(m.delete(b"bob", &[id(0), id(1), id(7)]).unwrap(), 2);
        assert_eq!(m.usage(b"bob").unwrap(), (1, 10));
        // Bytes quota too.
        assert!(matches!(
            m.deposit(b"bob", id(5), b"al", &[5; 95], 7, Q).unwrap(),
            Deposit::Full { .. }
        ));
        assert_eq!(
            m.stats().unwrap(),
            MailboxStats {
                recipients: 1,
                items: 1,
                bytes: 10
            }
        );
    }

    #[test]
    fn expired_mail_is_dropped_and_frees_the_quota() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db"), &StoreConfig::default()).unwrap();
        let m = store.mailboxes();
        m.register(b"bob", 1).unwrap();
        m.deposit(b"bob", id(1), b"al", b"old", 100, Q).unwrap();
        m.deposit(b"bob", id(2), b"al", b"new", 900, Q).unwrap();
        let (items, _) = m.fetch(b"bob", 10, 1000, 500).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].envelope, b"new");
        assert_eq!(m.sweep(2000, 500).unwrap(), 1);
        assert_eq!(m.usage(b"bob").unwrap(), (0, 0));
    }

    #[test]
    fn mail_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path().join("db"), &StoreConfig::default()).unwrap();
            store.mailboxes().register(b"bob", 1).unwrap();
            store
                .mailboxes()
                .deposit(b"bob", id(1), b"al", b"x", 1, Q)
                .unwrap();
            store.db_flush_for_tests();
        }
        let store = Store::open(dir.path().join("db"), &StoreConfig::default()).unwrap();
        assert_eq!(
            store
                .mailboxes()
                .fetch(b"bob", 10, 2, 1000)
                .unwrap()
                .0
                .len(),
            1
        );
    }
}
