use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::error::corrupt;
use crate::{FileBook, GroupStore, MailboxStore, MessageStore, NameBook, PeerBook, StoreError};

/// The on-disk format version this build writes and the newest it can read.
///
/// Bump it together with a migration in [`Store::open`] whenever a tree's key or value layout changes.
pub const SCHEMA_VERSION: u32 = 1;

const META_TREE: &str = "meta";
const SCHEMA_KEY: &[u8] = b"schema_version";

/// How the database is opened.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// sled's page cache capacity in bytes, which sled counts in *serialized* page bytes. A page
    /// decoded in memory takes about 2.4 times its serialized size (heap profile of a soak: 38 MB
    /// of cached nodes under a 16 MiB capacity), so a memory budget is turned into this figure by
    /// [`StoreConfig::with_cache_mb`]. Default: the 64 MiB budget's share.
    pub cache_capacity: u64,
    /// How often the store's background thread flushes, in milliseconds. Default 500. Durable
    /// writes do not rely on it: they call [`Store::flush`] before anything is acknowledged.
    /// (Not sled's own flusher, which would bypass the write gate; see `gate.rs`.)
    pub flush_every_ms: Option<u64>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            cache_capacity: Self::capacity_for_budget(Self::DEFAULT_CACHE_MB),
            flush_every_ms: Some(500),
        }
    }
}

impl StoreConfig {
    /// The memory a node's page cache may take unless told otherwise, in MiB: sled's own
    /// default (1 GiB of serialized pages) is far too much for a messenger on a laptop or phone.
    pub const DEFAULT_CACHE_MB: u64 = 64;

    /// Serialized bytes sled may cache per byte of memory budget: 3/8, a little under the
    /// measured 1/2.4, so the decoded pages stay within the budget.
    const SERIALIZED_PER_BUDGET: (u64, u64) = (3, 8);

    /// Sets the memory the page cache may use, in MiB (at least 1): the unit
    /// `kith run --store-cache-mb` takes.
    pub fn with_cache_mb(self, mib: u64) -> Self {
        self.with_cache_capacity(Self::capacity_for_budget(mib))
    }

    /// Sets sled's page cache capacity in serialized bytes (see [`StoreConfig::cache_capacity`]).
    pub fn with_cache_capacity(mut self, bytes: u64) -> Self {
        self.cache_capacity = bytes;
        self
    }

    /// sled's capacity for a memory budget of `mib` MiB.
    fn capacity_for_budget(mib: u64) -> u64 {
        let (num, den) = Self::SERIALIZED_PER_BUDGET;
        mib.max(1).saturating_mul(1024 * 1024) / den * num
    }
}

/// The node's database: cheap to clone, every clone shares the same sled handles.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
    db: sled::Db,
    peers: PeerBook,
    names: NameBook,
    messages: MessageStore,
    mailboxes: MailboxStore,
    groups: GroupStore,
    files: FileBook,
    calls: crate::CallBook,
    relay_blobs: crate::RelayBlobBook,
    commit: Arc<GroupCommit>,
    /// Stops the periodic flusher when the last clone of the store is dropped.
    _flusher: Option<Arc<PeriodicFlush>>,
}

/// Ends the periodic flush thread when dropped (the thread sees its channel close), and waits
/// for it, so the database is closed (and its file lock released) when the store is.
#[derive(Debug)]
struct PeriodicFlush {
    stop: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for PeriodicFlush {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Flushes `db` through the write gate, then frees the log buffers the flush retired.
///
/// sled drops a sealed log buffer (512 KiB) through crossbeam-epoch's deferred destruction, queued
/// in the bag of the thread that sealed it, and a flush seals the current buffer. A thread that
/// seldom touches sled (the periodic flusher, a blocking-pool thread) keeps up to 64 such drops
/// in its bag until the bag fills: measured in a soak at 1,000 msg/s, 32 MB of a node's heap
/// was buffers already written, waiting in flushers' bags, and RSS swung with them. Handing the
/// bag to the global queue right after the flush frees them within a couple of epochs.
fn flush_and_release(db: &sled::Db) -> sled::Result<usize> {
    let written = {
        let _pass = crate::gate::flush();
        db.flush()
    };
    crossbeam_epoch::pin().flush();
    written
}

impl PeriodicFlush {
    /// Flushes `db` through the write gate every `every` until dropped.
    fn start(db: sled::Db, path: PathBuf, every: std::time::Duration) -> Result<Self, StoreError> {
        let (stop, stopped) = std::sync::mpsc::sync_channel::<()>(0);
        let error_path = path.clone();
        let thread = std::thread::Builder::new()
            .name("kith-store-flush".into())
            .spawn(move || {
                // Ends when the store is dropped: the sender goes and `recv_timeout` reports it.
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(every)
                {
                    if let Err(e) = flush_and_release(&db) {
                        tracing::warn!(path = %path.display(), error = %e, "periodic flush failed");
                    }
                }
            })
            .map_err(|e| StoreError::Sled {
                path: error_path,
                source: sled::Error::Io(e),
            })?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// A point in the store's write history; see [`Store::flush_ticket`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushTicket(u64);

/// Group commit: callers that ask for a flush while one is running share the next one, so N
/// concurrent writers cost one or two disk syncs instead of N.
#[derive(Debug, Default)]
struct GroupCommit {
    /// Flush requests so far; a caller's ticket is the value after its increment.
    requested: AtomicU64,
    /// Every ticket up to this one is on disk.
    completed: AtomicU64,
    /// One flush at a time.
    running: tokio::sync::Mutex<()>,
}

impl Store {
    /// Opens (or creates) the database in `path`.
    ///
    /// Fails with [`StoreError::Locked`] when another process has it open, and with
    /// [`StoreError::NewerSchema`] when a newer kith wrote it; neither touches the data.
    pub fn open(path: impl AsRef<Path>, config: &StoreConfig) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(config.cache_capacity)
            .flush_every_ms(None)
            .open()
            .map_err(|e| StoreError::from_sled(&path, e))?;
        if db.was_recovered() {
            tracing::debug!(path = %path.display(), "opened existing store");
        }
        let meta = open_tree(&db, &path, META_TREE)?;
        match meta
            .get(SCHEMA_KEY)
            .map_err(|e| StoreError::from_sled(&path, e))?
        {
            None => {
                meta.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())
                    .map_err(|e| StoreError::from_sled(&path, e))?;
                let _pass = crate::gate::flush();
                db.flush().map_err(|e| StoreError::from_sled(&path, e))?;
            }
            Some(raw) => {
                let found = decode_version(&raw)?;
                if found > SCHEMA_VERSION {
                    return Err(StoreError::NewerSchema {
                        path,
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
                // Versions below SCHEMA_VERSION would be migrated here; version 1 is the first.
            }
        }
        let peers = PeerBook::new(open_tree(&db, &path, crate::peers::TREE)?, path.clone());
        let names = NameBook::new(
            open_tree(&db, &path, crate::names::OWN_NAMES)?,
            open_tree(&db, &path, crate::names::PINS)?,
            open_tree(&db, &path, crate::names::CONTACTS)?,
            path.clone(),
        );
        let messages = MessageStore::new(&db, path.clone())?;
        let mailboxes = MailboxStore::new(&db, path.clone())?;
        let groups = GroupStore::new(&db, path.clone())?;
        let files = FileBook::new(open_tree(&db, &path, crate::files::TREE)?, path.clone());
        let calls = crate::CallBook::new(open_tree(&db, &path, crate::calls::TREE)?, path.clone());
        let flusher = match config.flush_every_ms {
            Some(ms) => Some(Arc::new(PeriodicFlush::start(
                db.clone(),
                path.clone(),
                std::time::Duration::from_millis(ms.max(1)),
            )?)),
            None => None,
        };
        let relay_blobs = crate::RelayBlobBook::new(&db, path.clone())?;
        Ok(Self {
            _flusher: flusher,
            files,
            relay_blobs,
            calls,
            path,
            db,
            peers,
            names,
            messages,
            mailboxes,
            groups,
            commit: Arc::new(GroupCommit::default()),
        })
    }

    /// The schema version recorded in the database.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        let meta = open_tree(&self.db, &self.path, META_TREE)?;
        match meta
            .get(SCHEMA_KEY)
            .map_err(|e| StoreError::from_sled(&self.path, e))?
        {
            Some(raw) => decode_version(&raw),
            None => Err(corrupt(META_TREE, "schema version missing")),
        }
    }

    /// The address book of peers this node has met.
    pub fn peers(&self) -> &PeerBook {
        &self.peers
    }

    /// Owned names, pins and contacts.
    pub fn names(&self) -> &NameBook {
        &self.names
    }

    /// Direct messages, outbox, Olm state, correspondents.
    pub fn messages(&self) -> &MessageStore {
        &self.messages
    }

    /// A relay's mailboxes.
    pub fn mailboxes(&self) -> &MailboxStore {
        &self.mailboxes
    }

    /// Groups: members, Megolm sessions, envelopes, history.
    pub fn groups(&self) -> &GroupStore {
        &self.groups
    }

    /// Files sent and received.
    pub fn files(&self) -> &FileBook {
        &self.files
    }

    /// A relay's blobs held for its users (quota and TTL bookkeeping).
    pub fn relay_blobs(&self) -> &crate::RelayBlobBook {
        &self.relay_blobs
    }

    /// Call history.
    pub fn calls(&self) -> &crate::CallBook {
        &self.calls
    }

    /// Flushes from synchronous code (tools and benchmarks; the node uses [`Store::flush`]).
    pub fn flush_blocking(&self) -> Result<usize, StoreError> {
        flush_and_release(&self.db).map_err(|e| StoreError::from_sled(&self.path, e))
    }

    /// Closes the store cleanly: flushes, then, when this was the last handle, rewrites sled's
    /// page-table snapshot ([`Store::checkpoint`]) so that the next open reads the snapshot
    /// instead of replaying everything written since this open.
    ///
    /// sled 0.34 writes that snapshot only while it opens a database, so without this a node that
    /// wrote a million messages since it started replays all of them at its next start (1.7 s
    /// where raw sled with a third of the bytes needs 0.3 s). The replay is paid here instead, at
    /// a clean stop, where nobody waits for it. A crash skips it and the next open replays, as
    /// before: nothing is lost either way.
    ///
    /// Returns whether the snapshot was rewritten: `false` when other handles of this store are
    /// still alive (the database stays open through them; their last flush covers the data).
    pub fn close(self) -> Result<bool, StoreError> {
        self.flush_blocking()?;
        let last = Arc::strong_count(&self.commit) == 1;
        let path = self.path.clone();
        // Joins the periodic flusher and releases sled's handles (and its file lock).
        drop(self);
        if !last {
            return Ok(false);
        }
        // sled's own I/O threads may hold the file (and its lock) a moment after the last handle
        // went, while they finish a log write: try again for up to a second.
        for _ in 0..20 {
            match Self::checkpoint(&path) {
                Ok(()) => return Ok(true),
                Err(StoreError::Locked { .. }) => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
        // Something outside the store (a tree handle kept by a caller) still holds it open.
        Ok(false)
    }

    /// Opens the database at `path` and closes it again, which makes sled replay its log once and
    /// write a page-table snapshot covering all of it: the next open starts from that snapshot.
    /// Fails with [`StoreError::Locked`] while the database is open.
    pub fn checkpoint(path: impl AsRef<Path>) -> Result<(), StoreError> {
        let path = path.as_ref();
        let db = sled::Config::new()
            .path(path)
            // Opening only: the snapshot is written before any page is read into the cache.
            .cache_capacity(4 * 1024 * 1024)
            .flush_every_ms(None)
            .open()
            .map_err(|e| StoreError::from_sled(path, e))?;
        let _pass = crate::gate::flush();
        db.flush().map_err(|e| StoreError::from_sled(path, e))?;
        Ok(())
    }

    /// Synchronous flush, for tests that reopen the store.
    #[cfg(test)]
    pub(crate) fn db_flush_for_tests(&self) {
        let _pass = crate::gate::flush();
        let _ = self.db.flush();
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes everything written so far to disk. Call before acknowledging anything to anyone.
    /// The flush itself runs on tokio's blocking pool.
    /// Concurrent callers share flushes (group commit); returns the bytes this call flushed
    /// itself (0 when another caller's flush covered it).
    ///
    /// Cancel-safe: a cancelled flush leaves the data in sled's cache, to be flushed by the next call.
    pub async fn flush(&self) -> Result<usize, StoreError> {
        let ticket = self.flush_ticket();
        self.flush_through(ticket).await
    }

    /// Marks everything written so far: [`Store::flush_through`] with the returned ticket is done
    /// as soon as any flush that started after this call has finished. For a caller that expects
    /// someone else to flush soon (the delivery run after a send) and must only make sure of it.
    pub fn flush_ticket(&self) -> FlushTicket {
        FlushTicket(self.commit.requested.fetch_add(1, Ordering::SeqCst) + 1)
    }

    /// Makes sure everything written before `ticket` was taken is on disk: returns at once when a
    /// flush that covers it already finished, else flushes (sharing with concurrent callers).
    ///
    /// Cancel-safe, like [`Store::flush`].
    pub async fn flush_through(&self, ticket: FlushTicket) -> Result<usize, StoreError> {
        let commit = &self.commit;
        let ticket = ticket.0;
        if commit.completed.load(Ordering::SeqCst) >= ticket {
            return Ok(0);
        }
        let _running = commit.running.lock().await;
        if commit.completed.load(Ordering::SeqCst) >= ticket {
            return Ok(0);
        }
        // Everything requested before this point was written before this flush starts.
        let covers = commit.requested.load(Ordering::SeqCst);
        // Not `flush_async`: in sled 0.34 its futures can stay pending forever when several
        // are polled at once (spacejam/sled#1241, #1308), which hung sends in a 50-node
        // benchmark. A blocking flush on tokio's blocking pool has no such wake-up.
        let db = self.db.clone();
        let bytes = tokio::task::spawn_blocking(move || flush_and_release(&db))
            .await
            .map_err(|e| StoreError::Sled {
                path: self.path.clone(),
                source: sled::Error::Io(std::io::Error::other(format!("flush task: {e}"))),
            })?
            .map_err(|e| StoreError::from_sled(&self.path, e))?;
        commit.completed.fetch_max(covers, Ordering::SeqCst);
        Ok(bytes)
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db
            .size_on_disk()
            .map_err(|e| StoreError::from_sled(&self.path, e))
    }
}

fn open_tree(db: &sled::Db, path: &Path, name: &str) -> Result<sled::Tree, StoreError> {
    db.open_tree(name)
        .map_err(|e| StoreError::from_sled(path, e))
}

fn decode_version(raw: &[u8]) -> Result<u32, StoreError> {
    let bytes: [u8; 4] = raw.try_into().map_err(|_| {
        corrupt(
            META_TREE,
            format!("schema version has {} bytes, expected 4", raw.len()),
        )
    })?;
    Ok(u32::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests;
