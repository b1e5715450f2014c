//! Atomic writes across trees at the cost of single-key writes.
//!
//! A sled 0.34 transaction writes and syncs the log's current buffer, then its own 24-byte batch
//! marker, each on its own and before it returns (`pin_log`); the caller's flush then writes the
//! data. On the direct-message path that made five disk syncs per message where two carry the
//! data (BENCHMARKS.md, "Direct-message links, and five disk syncs per message"). A journaled
//! batch instead:
//!
//! 1. inserts the batch's writes, encoded, under one key of the `journal` tree: one single-key
//!    write, atomic by itself;
//! 2. applies them to their trees with plain writes;
//! 3. removes its journal key.
//!
//! All three sit in the log's current buffer and reach the disk with the caller's next flush, in
//! one write. sled replays its log in order and stops at the first gap, so after a crash either
//! the journal record is missing (and so is everything after it: nothing of the batch), or its
//! removal is there (and so is everything before it: all of the batch), or the record is there
//! without its removal, and [`Journal::replay`] applies its writes again at open (they are whole
//! values and removals, so applying them twice is harmless) and removes it.
//!
//! Isolation comes from the journal's write lock ([`Journal::writing`]), which [`Journal::batch`]
//! holds and every other writer of the same trees must take too. Then nothing writes between a
//! batch's reads and its writes, and no later write to its keys can be on disk unless the batch's
//! removal is too, so a replay never puts back an older value over a newer one.

use std::{
    cell::RefCell,
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use sled::{IVec, transaction::ConflictableTransactionError};

use crate::{StoreError, error::corrupt};

/// The journal's tree name.
pub(crate) const JOURNAL: &str = "journal";

/// What a batch's preparation sees of a tree: its reads see the batch's own writes first.
pub(crate) trait Writes {
    /// The value under `key`, as this batch left it.
    fn get(
        &self,
        key: impl AsRef<[u8]>,
    ) -> Result<Option<IVec>, ConflictableTransactionError<StoreError>>;
    /// Sets `key` to `value`.
    fn insert(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<(), ConflictableTransactionError<StoreError>>;
    /// Removes `key`.
    fn remove(&self, key: impl AsRef<[u8]>)
    -> Result<(), ConflictableTransactionError<StoreError>>;
}

/// One tree's pending writes in a journaled batch.
pub(crate) struct Staged<'t> {
    tree: &'t sled::Tree,
    /// The tree's number in journal records.
    number: u8,
    writes: RefCell<BTreeMap<Vec<u8>, Option<IVec>>>,
}

impl<'t> Staged<'t> {
    pub(crate) fn new(tree: &'t sled::Tree, number: u8) -> Self {
        Self {
            tree,
            number,
            writes: RefCell::new(BTreeMap::new()),
        }
    }
}

impl Writes for Staged<'_> {
    fn get(
        &self,
        key: impl AsRef<[u8]>,
    ) -> Result<Option<IVec>, ConflictableTransactionError<StoreError>> {
        let key = key.as_ref();
        if let Some(pending) = self.writes.borrow().get(key) {
            return Ok(pending.clone());
        }
        self.tree
            .get(key)
            .map_err(ConflictableTransactionError::Storage)
    }

    fn insert(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<(), ConflictableTransactionError<StoreError>> {
        self.writes
            .borrow_mut()
            .insert(key.as_ref().to_vec(), Some(IVec::from(value.as_ref())));
        Ok(())
    }

    fn remove(
        &self,
        key: impl AsRef<[u8]>,
    ) -> Result<(), ConflictableTransactionError<StoreError>> {
        self.writes.borrow_mut().insert(key.as_ref().to_vec(), None);
        Ok(())
    }
}

/// The journal tree, the `N` trees its records may write (a record names a tree by its index
/// here), and the write lock of the store that owns them. Cheap to clone; clones share the lock.
#[derive(Debug, Clone)]
pub(crate) struct Journal<const N: usize> {
    tree: sled::Tree,
    trees: [sled::Tree; N],
    next: Arc<AtomicU64>,
    lock: Arc<Mutex<()>>,
    /// The store's directory, for errors.
    path: PathBuf,
}

/// One write of a record.
type Op = (u8, Vec<u8>, Option<Vec<u8>>);

impl<const N: usize> Journal<N> {
    /// Opens the journal tree `name` over `trees` and completes whatever batch a crash
    /// interrupted ([`Journal::replay`]). Call it before anything reads those trees.
    pub(crate) fn open(
        db: &sled::Db,
        path: &Path,
        name: &str,
        trees: [sled::Tree; N],
    ) -> Result<Self, StoreError> {
        let tree = db
            .open_tree(name)
            .map_err(|e| StoreError::from_sled(path, e))?;
        let journal = Self::new(tree, trees, path.to_path_buf());
        journal.replay()?;
        Ok(journal)
    }

    /// The journal over `trees`, without a replay.
    fn new(tree: sled::Tree, trees: [sled::Tree; N], path: PathBuf) -> Self {
        Self {
            tree,
            trees,
            next: Arc::new(AtomicU64::new(0)),
            lock: Arc::default(),
            path,
        }
    }

    fn err(&self, e: sled::Error) -> StoreError {
        StoreError::from_sled(&self.path, e)
    }

    /// The store's write lock: every write to the journal's trees holds it (see the module doc).
    /// Held for a few sled calls, never across an await.
    pub(crate) fn writing(&self) -> MutexGuard<'_, ()> {
        // Guards no data of its own: a panic while it was held leaves nothing half-written here.
        self.lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Prepares a batch with `prepare` against the trees (its reads see its own writes) and
    /// commits it, under the write lock. Nothing is written when `prepare` fails; its error (an
    /// abort's, or a failed read's) is returned as the store's.
    pub(crate) fn batch<R>(
        &self,
        prepare: impl FnOnce(&[Staged<'_>; N]) -> Result<R, ConflictableTransactionError<StoreError>>,
    ) -> Result<R, StoreError> {
        let _writing = self.writing();
        let staged: [Staged<'_>; N] = std::array::from_fn(|i| Staged::new(&self.trees[i], i as u8));
        let result = prepare(&staged).map_err(|e| match e {
            ConflictableTransactionError::Abort(e) => e,
            ConflictableTransactionError::Storage(e) => self.err(e),
            // Staged trees never conflict.
            _ => corrupt(JOURNAL, "a journaled batch reported a conflict"),
        })?;
        self.commit(&staged)?;
        Ok(result)
    }

    /// Applies the records a crash left (each one's writes, then its removal) and returns how
    /// many there were. New records are numbered after the last one found.
    pub(crate) fn replay(&self) -> Result<usize, StoreError> {
        let mut replayed = 0;
        let mut last = None;
        for entry in self.tree.iter() {
            let (key, record) = entry.map_err(|e| self.err(e))?;
            last = Some(key.clone());
            self.apply(&decode(&record)?)?;
            self.tree.remove(&key).map_err(|e| self.err(e))?;
            replayed += 1;
        }
        if let Some(key) = last
            && let Ok(bytes) = <[u8; 8]>::try_from(key.as_ref())
        {
            self.next
                .store(u64::from_be_bytes(bytes).wrapping_add(1), Ordering::SeqCst);
        }
        if replayed > 0 {
            tracing::info!(records = replayed, "re-applied writes a crash interrupted");
        }
        Ok(replayed)
    }

    /// Commits a prepared batch: its record, its writes, its record's removal (see the module
    /// doc). Nothing is on disk until the caller flushes. Called under the write lock.
    fn commit(&self, staged: &[Staged<'_>]) -> Result<(), StoreError> {
        // Taken, not copied: the batch ends here.
        let ops: Vec<Op> = staged
            .iter()
            .flat_map(|s| {
                let number = s.number;
                s.writes
                    .take()
                    .into_iter()
                    .map(move |(k, v)| (number, k, v.map(|v| v.to_vec())))
            })
            .collect();
        match ops.len() {
            0 => return Ok(()),
            // One write is atomic by itself.
            1 => return self.apply(&ops),
            _ => {}
        }
        let key = self.next.fetch_add(1, Ordering::SeqCst).to_be_bytes();
        self.tree
            .insert(key, encode(&ops))
            .map_err(|e| self.err(e))?;
        self.apply(&ops)?;
        self.tree.remove(key).map_err(|e| self.err(e))?;
        Ok(())
    }

    fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
        for (number, key, value) in ops {
            let Some(tree) = self.trees.get(usize::from(*number)) else {
                return Err(corrupt(
                    JOURNAL,
                    format!("a record names tree {number}, which does not exist"),
                ));
            };
            match value {
                Some(value) => tree.insert(key.as_slice(), value.as_slice()),
                None => tree.remove(key.as_slice()),
            }
            .map_err(|e| self.err(e))?;
        }
        Ok(())
    }
}

/// A record: per write, the tree number, the key's length (u32, big-endian) and the key, then 1
/// and the value's length and the value, or 0 for a removal.
fn encode(ops: &[Op]) -> Vec<u8> {
    let size: usize = ops
        .iter()
        .map(|(_, k, v)| 10 + k.len() + v.as_ref().map_or(0, |v| 4 + v.len()))
        .sum();
    let mut out = Vec::with_capacity(size);
    for (number, key, value) in ops {
        out.push(*number);
        out.extend_from_slice(&(key.len() as u32).to_be_bytes());
        out.extend_from_slice(key);
        match value {
            Some(value) => {
                out.push(1);
                out.extend_from_slice(&(value.len() as u32).to_be_bytes());
                out.extend_from_slice(value);
            }
            None => out.push(0),
        }
    }
    out
}

fn decode(mut raw: &[u8]) -> Result<Vec<Op>, StoreError> {
    fn take<'a>(raw: &mut &'a [u8], n: usize) -> Result<&'a [u8], StoreError> {
        if raw.len() < n {
            return Err(corrupt(JOURNAL, "record ends early"));
        }
        let (head, rest) = raw.split_at(n);
        *raw = rest;
        Ok(head)
    }
    fn length(raw: &mut &[u8]) -> Result<usize, StoreError> {
        let bytes: [u8; 4] = take(raw, 4)?
            .try_into()
            .map_err(|_| corrupt(JOURNAL, "length"))?;
        Ok(u32::from_be_bytes(bytes) as usize)
    }
    let mut ops = Vec::new();
    // Bounded by the record: every pass consumes at least six bytes.
    while !raw.is_empty() {
        let number = take(&mut raw, 1)?[0];
        let n = length(&mut raw)?;
        let key = take(&mut raw, n)?.to_vec();
        let value = match take(&mut raw, 1)?[0] {
            0 => None,
            1 => {
                let n = length(&mut raw)?;
                Some(take(&mut raw, n)?.to_vec())
            }
            other => return Err(corrupt(JOURNAL, format!("write kind {other}"))),
        };
        ops.push((number, key, value));
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trees() -> (sled::Db, Journal<2>, sled::Tree, sled::Tree) {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let a = db.open_tree("a").unwrap();
        let b = db.open_tree("b").unwrap();
        let journal = Journal::new(
            db.open_tree(JOURNAL).unwrap(),
            [a.clone(), b.clone()],
            PathBuf::from("test"),
        );
        (db, journal, a, b)
    }

    #[test]
    fn records_round_trip_and_truncation_is_refused() {
        let ops = vec![
            (0, b"k1".to_vec(), Some(b"v1".to_vec())),
            (1, b"".to_vec(), None),
            (1, vec![7; 300], Some(Vec::new())),
        ];
        let raw = encode(&ops);
        assert_eq!(decode(&raw).unwrap(), ops);
        for cut in 1..raw.len() {
            if decode(&raw[..cut]).is_ok_and(|d| d == ops) {
                panic!("a record cut at {cut} decoded whole");
            }
        }
        assert!(decode(&raw[..3]).is_err());
    }

    #[test]
    fn a_batch_reads_its_own_writes_and_commits_them_all_with_no_record_left() {
        let (_db, journal, a, b) = trees();
        a.insert(b"gone", b"x").unwrap();
        journal
            .batch(|[sa, sb]| {
                sa.insert(b"k", b"1")?;
                assert_eq!(sa.get(b"k")?.as_deref(), Some(&b"1"[..]));
                sa.remove(b"gone")?;
                assert_eq!(sa.get(b"gone")?, None);
                assert_eq!(a.get(b"gone").unwrap().as_deref(), Some(&b"x"[..]));
                sb.insert(b"other", b"2")
            })
            .unwrap();
        assert_eq!(a.get(b"k").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(a.get(b"gone").unwrap(), None);
        assert_eq!(b.get(b"other").unwrap().as_deref(), Some(&b"2"[..]));
        assert!(journal.tree.is_empty());
    }

    #[test]
    fn a_record_a_crash_left_is_applied_once_at_replay() {
        let (_db, journal, a, b) = trees();
        // The record is on disk, its writes only partly: what a crash between steps leaves.
        a.insert(b"k", b"old").unwrap();
        b.insert(b"gone", b"x").unwrap();
        let ops = vec![
            (0, b"k".to_vec(), Some(b"new".to_vec())),
            (1, b"gone".to_vec(), None),
        ];
        journal
            .tree
            .insert(5u64.to_be_bytes(), encode(&ops))
            .unwrap();
        journal.apply(&ops[..1]).unwrap();
        assert_eq!(journal.replay().unwrap(), 1);
        assert_eq!(a.get(b"k").unwrap().as_deref(), Some(&b"new"[..]));
        assert_eq!(b.get(b"gone").unwrap(), None);
        assert!(journal.tree.is_empty());
        assert_eq!(journal.replay().unwrap(), 0);
        // New records are numbered after the replayed one.
        assert_eq!(journal.next.load(Ordering::SeqCst), 6);
    }

    #[test]
    fn a_failed_preparation_writes_nothing() {
        let (_db, journal, a, _b) = trees();
        let failed = journal.batch(|[sa, _]| {
            sa.insert(b"k", b"1")?;
            Err::<(), _>(ConflictableTransactionError::Abort(corrupt(JOURNAL, "no")))
        });
        assert!(matches!(failed, Err(StoreError::Corrupt { reason, .. }) if reason == "no"));
        assert_eq!(a.get(b"k").unwrap(), None);
        assert!(journal.tree.is_empty());
    }

    #[test]
    fn a_record_naming_an_unknown_tree_fails_replay_and_stays() {
        let (_db, journal, _a, _b) = trees();
        let ops = vec![(9, b"k".to_vec(), None)];
        journal
            .tree
            .insert(0u64.to_be_bytes(), encode(&ops))
            .unwrap();
        assert!(journal.replay().is_err());
        assert_eq!(journal.tree.len(), 1);
    }
}
