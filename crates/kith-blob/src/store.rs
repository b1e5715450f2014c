//! The on-disk blob store: one directory, three files per blob.
//!
//! - `<hex>.data`: the ciphertext, sized to its full length when created (sparse until received).
//! - `<hex>.obao`: the bao outboard in post order (64-byte hash pairs, 16 KiB chunk groups).
//! - `<hex>.have`: which chunk groups are verified and durable: `KITHHAV1`, the size (u64 LE), a
//!   bitfield (bit `g` = group `g`), and a BLAKE3 of all that. It is replaced atomically (write a
//!   temporary, fsync, rename) and only after the data and outboard it covers were fsync'd, so it
//!   never claims bytes a crash could have lost. Its existence is what makes a blob exist.
//!
//! Plain files rather than sled: a blob is large, written at offsets and read in ranges, which a
//! key-value tree does only by copying; the project rule is also that only kith-store imports sled.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bao_tree::io::outboard::PostOrderOutboard;
use bao_tree::{BaoTree, BlockSize, TreeNode};

use crate::crypto::{self, BlobKey, CryptoError, SealReader};
use crate::io::FileSlice;
use crate::metrics::BlobMetrics;

/// bao chunk groups of 16 KiB (2^4 chunks of 1 KiB): the outboard is ~0.4% of the blob, and a
/// group is the unit that is verified, written, recorded and re-requested.
pub(crate) const BLOCK_SIZE: BlockSize = BlockSize::from_chunk_log(4);
/// Bytes per chunk group.
pub const GROUP_BYTES: u64 = 16 * 1024;
/// The largest ciphertext the store accepts: a 4 GiB plaintext plus its tags. Files of up to
/// 2 GiB are the product goal; the cap keeps a hostile size in a message from reserving more.
pub const MAX_BLOB_SIZE: u64 = 4 * 1024 * 1024 * 1024 + 65536 * 16;
/// Verified bytes a download writes between two batches handed to its sync thread, so fsyncs
/// stay rare; a crash loses at most this plus [`MAX_UNSYNCED`].
pub(crate) const FLUSH_EVERY: u64 = 4 * 1024 * 1024;
/// ... or after this long with anything pending: a slow transfer (where a crash costs the most
/// time to redo) records often, a fast one every [`FLUSH_EVERY`] bytes.
pub(crate) const FLUSH_AFTER: std::time::Duration = std::time::Duration::from_millis(200);
/// Verified bytes a download may have handed to its sync thread and not yet seen recorded before
/// it waits for the disk: what a crash can cost on a disk slower than the network.
pub(crate) const MAX_UNSYNCED: u64 = 4 * FLUSH_EVERY;
/// Verified, contiguous chunk groups a download gathers in memory before one positioned write:
/// 64 groups of 16 KiB, so a 100 MB blob costs about a hundred `pwrite`s instead of six thousand,
/// and its hash pairs (64 bytes each, one `pwrite` apiece before) go out with each batch.
pub(crate) const WRITE_BATCH: usize = 1024 * 1024;
const HAVE_MAGIC: &[u8; 8] = b"KITHHAV1";

/// The content address of a blob: the BLAKE3 (bao) root of its ciphertext.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobHash([u8; 32]);

impl BlobHash {
    /// Wraps the 32 bytes carried in a chat message.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 bytes to carry in a chat message.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses the lowercase hex form used in file names and logs.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }

    fn root(&self) -> blake3::Hash {
        blake3::Hash::from_bytes(self.0)
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobHash({})", &hex::encode(self.0)[..12])
    }
}

/// What a sender puts into the chat message after sealing a file.
#[derive(Debug, Clone)]
pub struct BlobInfo {
    /// Content address of the ciphertext.
    pub hash: BlobHash,
    /// Ciphertext length in bytes (what the receiver fetches and reserves).
    pub size: u64,
    /// The per-file key that decrypts it.
    pub key: BlobKey,
}

/// One blob as the store sees it: for listings, quotas and progress bars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobStatus {
    /// Content address.
    pub hash: BlobHash,
    /// Ciphertext length.
    pub size: u64,
    /// Bytes verified and durable.
    pub verified_bytes: u64,
    /// Whether every chunk group is verified.
    pub complete: bool,
    /// Bytes the blob reserves on disk (data at full size, outboard, record), for quotas.
    pub size_on_disk: u64,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The disk (or the user's quota) is full; whatever was not written stays missing and can be
    /// fetched again once space is freed.
    #[error("disk full while writing {path}: free space and retry")]
    DiskFull {
        /// The file being written.
        path: PathBuf,
    },
    /// Another i/o failure on a store file.
    #[error("blob store i/o on {path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// No blob with this hash is in the store.
    #[error("blob {hash} is not in the store")]
    UnknownBlob {
        /// The hash asked for.
        hash: BlobHash,
    },
    /// The blob exists with another size than the one given.
    #[error("blob {hash} has size {stored}, not {given}")]
    SizeMismatch {
        /// The blob.
        hash: BlobHash,
        /// Size in the store.
        stored: u64,
        /// Size given by the caller.
        given: u64,
    },
    /// The size is not a valid ciphertext length, or above [`MAX_BLOB_SIZE`].
    #[error("invalid blob size {size} (must be a sealed length of at most {MAX_BLOB_SIZE} bytes)")]
    InvalidSize {
        /// The size given.
        size: u64,
    },
    /// The blob is not complete yet, so it cannot be exported.
    #[error("blob {hash} is incomplete: {missing} bytes still missing")]
    Incomplete {
        /// The blob.
        hash: BlobHash,
        /// Bytes not yet verified.
        missing: u64,
    },
    /// A download into this blob is already running.
    #[error("blob {hash} is already being downloaded")]
    Busy {
        /// The blob.
        hash: BlobHash,
    },
    /// Sealing or decrypting failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

fn is_disk_full(e: &io::Error) -> bool {
    // ENOSPC = 28, EDQUOT = 122 on Linux.
    e.kind() == io::ErrorKind::StorageFull
        || e.kind() == io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(28 | 122))
}

pub(crate) fn io_error(path: &Path, e: io::Error) -> StoreError {
    if is_disk_full(&e) {
        StoreError::DiskFull {
            path: path.to_owned(),
        }
    } else {
        StoreError::Io {
            path: path.to_owned(),
            source: e,
        }
    }
}

/// The verified chunk groups of one blob.
#[derive(Debug, Clone)]
pub(crate) struct Have {
    bits: Vec<u8>,
    groups: u64,
    count: u64,
}

impl Have {
    fn empty(size: u64) -> Self {
        let groups = size.div_ceil(GROUP_BYTES);
        Self {
            bits: vec![0; groups.div_ceil(8) as usize],
            groups,
            count: 0,
        }
    }

    fn full(size: u64) -> Self {
        let mut have = Self::empty(size);
        for g in 0..have.groups {
            have.set(g);
        }
        have
    }

    pub(crate) fn get(&self, g: u64) -> bool {
        g < self.groups && self.bits[(g / 8) as usize] & (1 << (g % 8)) != 0
    }

    pub(crate) fn set(&mut self, g: u64) {
        if g < self.groups && !self.get(g) {
            self.bits[(g / 8) as usize] |= 1 << (g % 8);
            self.count += 1;
        }
    }

    fn clear(&mut self, g: u64) {
        if self.get(g) {
            self.bits[(g / 8) as usize] &= !(1 << (g % 8));
            self.count -= 1;
        }
    }

    fn is_complete(&self) -> bool {
        self.count == self.groups
    }

    /// Runs of groups whose bit equals `present`, as group index ranges.
    fn runs(&self, present: bool) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        let mut start = None;
        for g in 0..self.groups {
            match (self.get(g) == present, start) {
                (true, None) => start = Some(g),
                (false, Some(s)) => {
                    out.push(s..g);
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            out.push(s..self.groups);
        }
        out
    }

    fn verified_bytes(&self, size: u64) -> u64 {
        let mut bytes = self.count * GROUP_BYTES;
        if self.groups > 0 && self.get(self.groups - 1) {
            bytes -= self.groups * GROUP_BYTES - size;
        }
        bytes
    }

    fn encode(&self, size: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 8 + self.bits.len() + 32);
        out.extend_from_slice(HAVE_MAGIC);
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&self.bits);
        let check = blake3::hash(&out);
        out.extend_from_slice(check.as_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<(u64, Self)> {
        let (body, check) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
        if blake3::hash(body).as_bytes() != check || body.get(..8)? != HAVE_MAGIC {
            return None;
        }
        let size = u64::from_le_bytes(body.get(8..16)?.try_into().ok()?);
        let mut have = Self::empty(size);
        if body.len() - 16 != have.bits.len() {
            return None;
        }
        for g in 0..have.groups {
            if body[16 + (g / 8) as usize] & (1 << (g % 8)) != 0 {
                have.set(g);
            }
        }
        Some((size, have))
    }
}

/// Byte ranges of group ranges, the last one clipped to the blob's size.
fn group_runs_to_bytes(runs: Vec<Range<u64>>, size: u64) -> Vec<Range<u64>> {
    runs.into_iter()
        .map(|r| r.start * GROUP_BYTES..(r.end * GROUP_BYTES).min(size))
        .collect()
}

#[derive(Debug)]
struct Entry {
    hash: BlobHash,
    size: u64,
    have: Mutex<Have>,
    /// Set while a download writes into this blob, so two never interleave their records.
    writing: AtomicBool,
    /// Bytes of this blob served to peers since the store was opened (a sender's progress bar).
    served: Arc<AtomicU64>,
    /// Set when the blob is removed, so a range being served from it stops at the next read
    /// instead of finishing from the unlinked file (a cancelled upload stops for good).
    removed: Arc<AtomicBool>,
}

impl Entry {
    fn new(hash: BlobHash, size: u64, have: Have) -> Self {
        Self {
            hash,
            size,
            have: Mutex::new(have),
            writing: AtomicBool::new(false),
            served: Arc::default(),
            removed: Arc::default(),
        }
    }

    fn have(&self) -> MutexGuard<'_, Have> {
        // A poisoned lock only means another thread panicked mid-update of a plain bitfield;
        // the bits are still a valid (conservative) state.
        self.have.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn status(&self) -> BlobStatus {
        let have = self.have();
        let tree = BaoTree::new(self.size, BLOCK_SIZE);
        BlobStatus {
            hash: self.hash,
            size: self.size,
            verified_bytes: have.verified_bytes(self.size),
            complete: have.is_complete(),
            size_on_disk: self.size + tree.outboard_size() + 8 + 8 + have.bits.len() as u64 + 32,
        }
    }
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    entries: Mutex<HashMap<BlobHash, Arc<Entry>>>,
    metrics: Arc<BlobMetrics>,
}

/// Encrypted blobs on disk, complete or partial, addressed by [`BlobHash`].
///
/// Cheap to clone (an `Arc`); every clone sees the same blobs. Methods do blocking file i/o:
/// call the heavy ones (`import_sealed*`, `export_decrypted`) from `spawn_blocking`.
#[derive(Debug, Clone)]
pub struct BlobStore {
    inner: Arc<Inner>,
}

impl BlobStore {
    /// Opens (creating if needed) the store in `dir`, e.g. `<home>/blobs/`, loading every blob's
    /// record and removing temporary files a crash left behind.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        Self::open_with_metrics(dir, Arc::new(BlobMetrics::default()))
    }

    /// Opens a store that counts into `metrics`, shared with another store (a relay's store of
    /// blobs held for its users counts into the node's own transfer metrics).
    pub fn open_with_metrics(
        dir: impl Into<PathBuf>,
        metrics: Arc<BlobMetrics>,
    ) -> Result<Self, StoreError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        let mut entries = HashMap::new();
        let listing = fs::read_dir(&dir).map_err(|e| io_error(&dir, e))?;
        for item in listing {
            let item = item.map_err(|e| io_error(&dir, e))?;
            let path = item.path();
            let name = item.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                let _ = fs::remove_file(&path);
                continue;
            }
            let Some(hash) = name.strip_suffix(".have").and_then(BlobHash::from_hex) else {
                continue;
            };
            match Self::load_entry(&dir, hash) {
                Ok(entry) => {
                    entries.insert(hash, Arc::new(entry));
                }
                Err(reason) => {
                    tracing::warn!(%hash, %reason, "dropping unreadable blob record");
                    let _ = fs::remove_file(&path);
                }
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                dir,
                entries: Mutex::new(entries),
                metrics,
            }),
        })
    }

    fn load_entry(dir: &Path, hash: BlobHash) -> Result<Entry, String> {
        let record = fs::read(paths(dir, hash).have).map_err(|e| e.to_string())?;
        let (size, have) = Have::decode(&record).ok_or("corrupt have record")?;
        let data_len = fs::metadata(paths(dir, hash).data)
            .map_err(|e| e.to_string())?
            .len();
        if data_len != size {
            return Err(format!("data file is {data_len} bytes, record says {size}"));
        }
        Ok(Entry::new(hash, size, have))
    }

    /// The transfer counters of this store and every transfer using it.
    pub fn metrics(&self) -> &Arc<BlobMetrics> {
        &self.inner.metrics
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<BlobHash, Arc<Entry>>> {
        self.inner.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entry(&self, hash: BlobHash) -> Result<Arc<Entry>, StoreError> {
        self.entries()
            .get(&hash)
            .cloned()
            .ok_or(StoreError::UnknownBlob { hash })
    }

    /// Seals the file at `path` into the store under a fresh key (sender side); returns what the
    /// chat message carries. Streams: memory use does not grow with the file.
    pub fn import_sealed(&self, path: &Path) -> Result<BlobInfo, StoreError> {
        let file = File::open(path).map_err(|e| io_error(path, e))?;
        let len = file.metadata().map_err(|e| io_error(path, e))?.len();
        self.import_sealed_reader(BufReader::new(file), len)
    }

    /// Seals `plaintext_len` bytes from `plaintext` into the store under a fresh key, writing the
    /// data file and the outboard in one pass.
    pub fn import_sealed_reader(
        &self,
        plaintext: impl Read,
        plaintext_len: u64,
    ) -> Result<BlobInfo, StoreError> {
        let key = BlobKey::generate()?;
        let size = crypto::ciphertext_len(plaintext_len);
        if size > MAX_BLOB_SIZE {
            return Err(StoreError::InvalidSize { size });
        }
        let dir = &self.inner.dir;
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| CryptoError::Random(e.to_string()))?;
        let tmp_data = dir.join(format!("import-{}.data.tmp", hex::encode(nonce)));
        let tmp_obao = dir.join(format!("import-{}.obao.tmp", hex::encode(nonce)));
        let result = self.seal_into(plaintext, plaintext_len, &key, &tmp_data, &tmp_obao);
        let hash = match result {
            Ok(hash) => hash,
            Err(e) => {
                let _ = fs::remove_file(&tmp_data);
                let _ = fs::remove_file(&tmp_obao);
                return Err(e);
            }
        };
        let p = paths(dir, hash);
        fs::rename(&tmp_data, &p.data).map_err(|e| io_error(&p.data, e))?;
        fs::rename(&tmp_obao, &p.obao).map_err(|e| io_error(&p.obao, e))?;
        let have = Have::full(size);
        write_record(dir, hash, size, &have)?;
        self.entries()
            .insert(hash, Arc::new(Entry::new(hash, size, have)));
        Ok(BlobInfo { hash, size, key })
    }

    fn seal_into(
        &self,
        plaintext: impl Read,
        plaintext_len: u64,
        key: &BlobKey,
        tmp_data: &Path,
        tmp_obao: &Path,
    ) -> Result<BlobHash, StoreError> {
        let size = crypto::ciphertext_len(plaintext_len);
        let data = File::create(tmp_data).map_err(|e| io_error(tmp_data, e))?;
        let obao = File::create(tmp_obao).map_err(|e| io_error(tmp_obao, e))?;
        let mut tee = Tee {
            seal: SealReader::new(plaintext, key),
            out: BufWriter::new(data),
        };
        let mut obao_out = BufWriter::new(obao);
        let tree = BaoTree::new(size, BLOCK_SIZE);
        let root = bao_tree::io::sync::outboard_post_order(&mut tee, tree, &mut obao_out);
        let got = tee.seal.plaintext_read();
        let root = match root {
            Ok(root) => root,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(CryptoError::SizeChanged {
                    expected: plaintext_len,
                    got,
                }
                .into());
            }
            Err(e) => return Err(io_error(tmp_data, e)),
        };
        // The source must have ended exactly where it said it would.
        let mut probe = [0u8; 1];
        let extra = tee
            .seal
            .read(&mut probe)
            .map_err(|e| io_error(tmp_data, e))?;
        let got = tee.seal.plaintext_read();
        if extra != 0 || got != plaintext_len {
            return Err(CryptoError::SizeChanged {
                expected: plaintext_len,
                got,
            }
            .into());
        }
        let data = tee
            .out
            .into_inner()
            .map_err(|e| io_error(tmp_data, e.into_error()))?;
        data.sync_all().map_err(|e| io_error(tmp_data, e))?;
        let obao = obao_out
            .into_inner()
            .map_err(|e| io_error(tmp_obao, e.into_error()))?;
        obao.sync_all().map_err(|e| io_error(tmp_obao, e))?;
        Ok(BlobHash(*root.as_bytes()))
    }

    /// Reserves a blob to receive (receiver side): the data file at its full `size`, an empty
    /// outboard and an empty record. Idempotent for the same size, so a retry just resumes.
    pub fn create_partial(&self, hash: BlobHash, size: u64) -> Result<(), StoreError> {
        if size > MAX_BLOB_SIZE || crypto::plaintext_len(size).is_none() {
            return Err(StoreError::InvalidSize { size });
        }
        let mut entries = self.entries();
        if let Some(entry) = entries.get(&hash) {
            return if entry.size == size {
                Ok(())
            } else {
                Err(StoreError::SizeMismatch {
                    hash,
                    stored: entry.size,
                    given: size,
                })
            };
        }
        let dir = &self.inner.dir;
        let p = paths(dir, hash);
        let tree = BaoTree::new(size, BLOCK_SIZE);
        let create = |path: &Path, len: u64| -> Result<(), StoreError> {
            let f = File::create(path).map_err(|e| io_error(path, e))?;
            f.set_len(len).map_err(|e| io_error(path, e))?;
            f.sync_all().map_err(|e| io_error(path, e))
        };
        create(&p.data, size)?;
        create(&p.obao, tree.outboard_size())?;
        let have = Have::empty(size);
        write_record(dir, hash, size, &have)?;
        entries.insert(hash, Arc::new(Entry::new(hash, size, have)));
        Ok(())
    }

    /// Byte ranges not yet verified (chunk-group aligned, the last clipped to the size): what a
    /// download still has to ask for.
    pub fn missing(&self, hash: BlobHash) -> Result<Vec<Range<u64>>, StoreError> {
        let entry = self.entry(hash)?;
        let runs = entry.have().runs(false);
        Ok(group_runs_to_bytes(runs, entry.size))
    }

    /// Byte ranges verified and durable: what this store can serve.
    pub fn have(&self, hash: BlobHash) -> Result<Vec<Range<u64>>, StoreError> {
        let entry = self.entry(hash)?;
        let runs = entry.have().runs(true);
        Ok(group_runs_to_bytes(runs, entry.size))
    }

    /// Whether every byte of the blob is verified.
    pub fn is_complete(&self, hash: BlobHash) -> Result<bool, StoreError> {
        Ok(self.entry(hash)?.have().is_complete())
    }

    /// Bytes of this blob served to peers (ranges and hashes) since the store was opened: how far
    /// the recipients of a file sent from here have got, for a progress bar.
    pub fn served(&self, hash: BlobHash) -> Result<u64, StoreError> {
        Ok(self.entry(hash)?.served.load(Ordering::Relaxed))
    }

    /// When the blob's record was last written (created, or a batch of ranges recorded): its age,
    /// for collecting blobs nothing refers to without touching one that is being made.
    pub fn modified(&self, hash: BlobHash) -> Result<std::time::SystemTime, StoreError> {
        let entry = self.entry(hash)?;
        let path = paths(&self.inner.dir, entry.hash).have;
        fs::metadata(&path)
            .and_then(|m| m.modified())
            .map_err(|e| io_error(&path, e))
    }

    /// Size, progress and disk use of one blob.
    pub fn status(&self, hash: BlobHash) -> Result<BlobStatus, StoreError> {
        Ok(self.entry(hash)?.status())
    }

    /// Every blob in the store, sorted by hash.
    pub fn list(&self) -> Vec<BlobStatus> {
        let entries: Vec<_> = self.entries().values().cloned().collect();
        let mut out: Vec<_> = entries.iter().map(|e| e.status()).collect();
        out.sort_by_key(|s| s.hash);
        out
    }

    /// Bytes all blobs reserve on disk, for quotas (data files count at full size even while
    /// still sparse, since they will fill up).
    pub fn size_on_disk(&self) -> u64 {
        self.list().iter().map(|s| s.size_on_disk).sum()
    }

    /// Decrypts a complete blob to `out_path` via a temporary file in the same directory, renamed
    /// into place only after the whole plaintext authenticated; returns the plaintext length.
    pub fn export_decrypted(
        &self,
        hash: BlobHash,
        key: &BlobKey,
        out_path: &Path,
    ) -> Result<u64, StoreError> {
        let entry = self.entry(hash)?;
        {
            let have = entry.have();
            if !have.is_complete() {
                let missing = entry.size - have.verified_bytes(entry.size);
                return Err(StoreError::Incomplete { hash, missing });
            }
        }
        let p = paths(&self.inner.dir, hash);
        let data = File::open(&p.data).map_err(|e| io_error(&p.data, e))?;
        let file_name = out_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let tmp = out_path.with_file_name(format!(".{}.kith.tmp", file_name.unwrap_or_default()));
        let result = (|| {
            let out = File::create(&tmp).map_err(|e| io_error(&tmp, e))?;
            let mut writer = BufWriter::new(out);
            let n = crypto::open(BufReader::new(data), key, &mut writer).map_err(|e| match e {
                CryptoError::Io(e) => io_error(&tmp, e),
                e => e.into(),
            })?;
            let out = writer
                .into_inner()
                .map_err(|e| io_error(&tmp, e.into_error()))?;
            out.sync_all().map_err(|e| io_error(&tmp, e))?;
            fs::rename(&tmp, out_path).map_err(|e| io_error(out_path, e))?;
            Ok(n)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Deletes a blob; returns whether it existed. The record goes first, so a crash part-way
    /// leaves only files that the next `open` ignores.
    pub fn remove(&self, hash: BlobHash) -> Result<bool, StoreError> {
        let Some(entry) = self.entries().remove(&hash) else {
            return Ok(false);
        };
        entry.removed.store(true, Ordering::Release);
        let p = paths(&self.inner.dir, entry.hash);
        for path in [&p.have, &p.data, &p.obao] {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(path, e)),
            }
        }
        Ok(true)
    }

    /// What `serve` needs to encode ranges: the geometry, the verified groups, and readers of the
    /// data and outboard files.
    pub(crate) fn reader(&self, hash: BlobHash) -> Result<BlobReader, StoreError> {
        let entry = self.entry(hash)?;
        let have = entry.have().clone();
        let p = paths(&self.inner.dir, hash);
        let data = File::open(&p.data).map_err(|e| io_error(&p.data, e))?;
        let obao = File::open(&p.obao).map_err(|e| io_error(&p.obao, e))?;
        let tree = BaoTree::new(entry.size, BLOCK_SIZE);
        Ok(BlobReader {
            size: entry.size,
            served: entry.served.clone(),
            have,
            data: FileSlice::new(
                data,
                Some(entry.removed.clone()),
                crate::io::DATA_READ_AHEAD,
            )
            .map_err(|e| io_error(&p.data, e))?,
            outboard: PostOrderOutboard {
                root: hash.root(),
                tree,
                data: FileSlice::new(obao, None, crate::io::OUTBOARD_READ_AHEAD)
                    .map_err(|e| io_error(&p.obao, e))?,
            },
        })
    }

    /// Drops a group this store found corrupt on its own disk from the record, so it is neither
    /// served again nor counted as present.
    pub(crate) fn forget_group(&self, hash: BlobHash, group: u64) -> Result<(), StoreError> {
        let entry = self.entry(hash)?;
        let mut have = entry.have();
        have.clear(group);
        write_record(&self.inner.dir, hash, entry.size, &have)
    }

    /// Starts writing received ranges into a partial blob; fails with `Busy` if a download into
    /// it is already running.
    pub(crate) fn writer(&self, hash: BlobHash) -> Result<PartialWriter, StoreError> {
        let entry = self.entry(hash)?;
        if entry.writing.swap(true, Ordering::AcqRel) {
            return Err(StoreError::Busy { hash });
        }
        // The flag is released on every path: by the writer's Drop once it exists, here before.
        let dir = self.inner.dir.clone();
        let p = paths(&dir, hash);
        let open = |path: &Path| {
            OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| io_error(path, e))
        };
        let files = open(&p.data).and_then(|data| Ok((data, open(&p.obao)?)));
        let (data, obao) = match files {
            Ok(files) => files,
            Err(e) => {
                entry.writing.store(false, Ordering::Release);
                return Err(e);
            }
        };
        Ok(PartialWriter {
            tree: BaoTree::new(entry.size, BLOCK_SIZE),
            entry,
            dir,
            paths: p,
            data,
            obao,
            run: Vec::with_capacity(WRITE_BATCH),
            run_start: 0,
            run_groups: Vec::new(),
            run_bytes: 0,
            pending: Batch::default(),
            last_flush: std::time::Instant::now(),
            syncer: None,
        })
    }
}

/// Readers of one blob for encoding ranges.
pub(crate) struct BlobReader {
    pub(crate) size: u64,
    pub(crate) served: Arc<AtomicU64>,
    pub(crate) have: Have,
    pub(crate) data: FileSlice,
    pub(crate) outboard: PostOrderOutboard<FileSlice>,
}

/// Writes verified parents and leaves of one download and records them in batches.
///
/// Durability is unchanged from writing the record inline: a batch's groups enter the record (and
/// `have`, so they are served and counted) only after the data and outboard were fsync'd. What
/// moved is *where* the fsyncs run: on a thread of this writer ([`Syncer`]), so the download goes
/// on receiving and verifying while the disk catches up, instead of stopping its async task (and
/// the runtime worker under it) for four fsyncs every 4 MiB. Batches that queue up while a sync
/// runs are merged into the next one.
pub(crate) struct PartialWriter {
    entry: Arc<Entry>,
    dir: PathBuf,
    paths: Paths,
    tree: BaoTree,
    data: File,
    obao: File,
    /// Verified leaves gathered for one write: contiguous bytes from `run_start`, at most
    /// [`WRITE_BATCH`].
    run: Vec<u8>,
    run_start: u64,
    /// Whole groups inside `run`, and their bytes: they join `pending` with the run.
    run_groups: Vec<u64>,
    run_bytes: u64,
    /// What the next batch hands to the syncer: closed runs, hash pairs, the groups they hold.
    pending: Batch,
    last_flush: std::time::Instant,
    /// Started with the first batch; `None` again after [`PartialWriter::flush`].
    syncer: Option<Syncer>,
}

/// One batch of a download for its sync thread: verified bytes still to write, then the groups
/// they complete, to record once data and outboard are durable.
#[derive(Default)]
struct Batch {
    /// Runs of verified, contiguous leaf bytes: (offset in the data file, bytes).
    runs: Vec<(u64, Vec<u8>)>,
    /// Verified hash pairs: (offset in the outboard, pair).
    parents: Vec<(u64, [u8; 64])>,
    /// The whole groups inside `runs`.
    groups: Vec<u64>,
    /// Their bytes (for [`MAX_UNSYNCED`]).
    bytes: u64,
}

impl Batch {
    fn merge(&mut self, other: Batch) {
        self.runs.extend(other.runs);
        self.parents.extend(other.parents);
        self.groups.extend(other.groups);
        self.bytes += other.bytes;
    }
}

/// The thread that writes one writer's batches and makes them durable, in order.
struct Syncer {
    jobs: std::sync::mpsc::Sender<Batch>,
    thread: std::thread::JoinHandle<Result<(), StoreError>>,
    /// Set when a sync failed: the thread has stopped and holds the error.
    failed: Arc<AtomicBool>,
    /// Bytes handed over and not yet recorded.
    unsynced: Arc<AtomicU64>,
    /// A message after every round the thread finished; closed when the thread ends.
    rounds: futures::channel::mpsc::Receiver<()>,
}

impl Syncer {
    /// Hands a batch over (the wait for room is [`PartialWriter::room`], which does not block
    /// the async runtime's thread).
    fn send(&self, batch: Batch) -> Result<(), Batch> {
        self.unsynced.fetch_add(batch.bytes, Ordering::AcqRel);
        self.jobs.send(batch).map_err(|e| e.0)
    }

    /// Whether the writer should wait before taking more: [`MAX_UNSYNCED`] bytes are waiting
    /// for the disk, and the thread is still there to bring that down.
    fn backlogged(&self) -> bool {
        self.unsynced.load(Ordering::Acquire) >= MAX_UNSYNCED
            && !self.failed.load(Ordering::Acquire)
            && !self.thread.is_finished()
    }

    /// Waits for every batch handed over so far; the first error, if one failed.
    fn finish(self) -> Result<(), StoreError> {
        drop(self.jobs);
        match self.thread.join() {
            Ok(result) => result,
            Err(_) => Err(StoreError::Io {
                path: PathBuf::from("<blob sync thread>"),
                source: io::Error::other("the blob sync thread panicked"),
            }),
        }
    }
}

/// What the sync thread needs of one writer.
struct SyncTarget {
    entry: Arc<Entry>,
    dir: PathBuf,
    data: File,
    obao: File,
    data_path: PathBuf,
    obao_path: PathBuf,
}

impl SyncTarget {
    /// Writes the batch's runs and hash pairs, fsyncs data and outboard, then records its groups
    /// (record file first, `have` after).
    fn sync(&self, batch: &mut Batch) -> Result<(), StoreError> {
        for (offset, bytes) in &batch.runs {
            self.data
                .write_all_at(bytes, *offset)
                .map_err(|e| io_error(&self.data_path, e))?;
        }
        write_pairs(&self.obao, &self.obao_path, &mut batch.parents)?;
        let groups = &batch.groups;
        self.data
            .sync_data()
            .map_err(|e| io_error(&self.data_path, e))?;
        self.obao
            .sync_data()
            .map_err(|e| io_error(&self.obao_path, e))?;
        // Only this writer adds groups to this blob while it runs, so the record written here
        // is what `have` becomes; the lock is not held across the record's own fsyncs, so
        // `status` and serving are not kept waiting on the disk.
        if self.entry.removed.load(Ordering::Acquire) {
            // Removed meanwhile (a cancelled download): a record now would bring it back.
            return Ok(());
        }
        let mut next = self.entry.have().clone();
        for g in groups {
            next.set(*g);
        }
        write_record(&self.dir, self.entry.hash, self.entry.size, &next)?;
        let mut have = self.entry.have();
        for g in groups {
            have.set(*g);
        }
        Ok(())
    }

    fn run(
        self,
        jobs: std::sync::mpsc::Receiver<Batch>,
        failed: &AtomicBool,
        unsynced: &AtomicU64,
        mut rounds: futures::channel::mpsc::Sender<()>,
    ) -> Result<(), StoreError> {
        while let Ok(mut batch) = jobs.recv() {
            // Whatever queued while the last sync ran is covered by one round of fsyncs.
            while let Ok(more) = jobs.try_recv() {
                batch.merge(more);
            }
            let bytes = batch.bytes;
            let result = self.sync(&mut batch);
            if result.is_err() {
                failed.store(true, Ordering::Release);
            }
            unsynced.fetch_sub(bytes, Ordering::AcqRel);
            // A full channel already holds a wake-up, which is all the message says.
            let _ = rounds.try_send(());
            result?;
        }
        Ok(())
    }
}

impl PartialWriter {
    pub(crate) fn tree(&self) -> BaoTree {
        self.tree
    }

    /// Keeps a verified hash pair for the outboard; the sync thread writes it with the batch it
    /// joins, before any group it covers is recorded.
    pub(crate) fn write_parent(
        &mut self,
        node: TreeNode,
        pair: &(blake3::Hash, blake3::Hash),
    ) -> Result<(), StoreError> {
        let Some(offset) = self.tree.post_order_offset(node) else {
            return Ok(());
        };
        let mut buf = [0u8; 64];
        buf[..32].copy_from_slice(pair.0.as_bytes());
        buf[32..].copy_from_slice(pair.1.as_bytes());
        self.pending.parents.push((offset.value() * 64, buf));
        Ok(())
    }

    /// Takes a verified leaf (one whole chunk group) into the current run of contiguous groups;
    /// hands a batch to the syncer every [`FLUSH_EVERY`] bytes or [`FLUSH_AFTER`].
    ///
    /// The file writes themselves happen on the sync thread: copying a megabyte into the page
    /// cache inline stalled this task, and with it whatever else ran on its runtime worker (a
    /// QUIC connection's packet processing and acknowledgements).
    pub(crate) fn write_leaf(&mut self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let run_end = self.run_start + self.run.len() as u64;
        if !self.run.is_empty() && (offset != run_end || self.run.len() + data.len() > WRITE_BATCH)
        {
            self.close_run();
        }
        if self.run.is_empty() {
            self.run_start = offset;
        }
        self.run.extend_from_slice(data);
        // Only whole groups count: a leaf always is one when we asked for whole groups.
        let group = offset / GROUP_BYTES;
        let group_len = (self.entry.size - group * GROUP_BYTES).min(GROUP_BYTES);
        if offset.is_multiple_of(GROUP_BYTES) && data.len() as u64 == group_len {
            self.run_groups.push(group);
            self.run_bytes += group_len;
        }
        if self.run.len() >= WRITE_BATCH {
            self.close_run();
        }
        if self.pending.bytes >= FLUSH_EVERY || self.last_flush.elapsed() >= FLUSH_AFTER {
            self.submit()?;
        }
        Ok(())
    }

    /// Moves the current run into the pending batch.
    fn close_run(&mut self) {
        if self.run.is_empty() {
            return;
        }
        let run = std::mem::replace(&mut self.run, Vec::with_capacity(WRITE_BATCH));
        self.pending.runs.push((self.run_start, run));
        self.pending.groups.append(&mut self.run_groups);
        self.pending.bytes += std::mem::take(&mut self.run_bytes);
    }

    /// Hands the pending batch to the syncer (started on first use). A sync that failed earlier
    /// is reported here, so the download stops as it did when syncing inline.
    fn submit(&mut self) -> Result<(), StoreError> {
        self.last_flush = std::time::Instant::now();
        self.close_run();
        if self
            .syncer
            .as_ref()
            .is_some_and(|s| s.failed.load(Ordering::Acquire))
            && let Some(syncer) = self.syncer.take()
        {
            syncer.finish()?;
        }
        if self.pending.runs.is_empty() && self.pending.parents.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        if self.syncer.is_none() {
            self.syncer = self.start_syncer();
        }
        let unsent = match &self.syncer {
            Some(syncer) => syncer.send(batch).err(),
            None => Some(batch),
        };
        if let Some(mut batch) = unsent {
            // No thread (could not start one, or it ended): write and sync here.
            if let Some(syncer) = self.syncer.take() {
                syncer.finish()?;
            }
            self.sync_target()?.sync(&mut batch)?;
        }
        Ok(())
    }

    fn sync_target(&self) -> Result<SyncTarget, StoreError> {
        Ok(SyncTarget {
            entry: self.entry.clone(),
            dir: self.dir.clone(),
            data: self
                .data
                .try_clone()
                .map_err(|e| io_error(&self.paths.data, e))?,
            obao: self
                .obao
                .try_clone()
                .map_err(|e| io_error(&self.paths.obao, e))?,
            data_path: self.paths.data.clone(),
            obao_path: self.paths.obao.clone(),
        })
    }

    fn start_syncer(&self) -> Option<Syncer> {
        let target = self.sync_target().ok()?;
        let (jobs, queue) = std::sync::mpsc::channel();
        let failed = Arc::new(AtomicBool::new(false));
        let unsynced = Arc::new(AtomicU64::new(0));
        let (flag, count) = (failed.clone(), unsynced.clone());
        let (done, rounds) = futures::channel::mpsc::channel(1);
        let thread = std::thread::Builder::new()
            .name("kith-blob-sync".into())
            .spawn(move || target.run(queue, &flag, &count, done))
            .ok()?;
        Some(Syncer {
            jobs,
            thread,
            failed,
            unsynced,
            rounds,
        })
    }

    /// Waits (asynchronously) while [`MAX_UNSYNCED`] bytes this download handed over are not yet
    /// durable: what a crash can cost stays bounded on a disk slower than the network, and the
    /// runtime thread stays free for other tasks meanwhile.
    pub(crate) async fn room(&mut self) {
        use futures::StreamExt as _;
        // Bounded: every round of the thread lowers the backlog or ends it; a closed channel
        // (the thread ended) ends the wait.
        while let Some(syncer) = self.syncer.as_mut() {
            if !syncer.backlogged() {
                return;
            }
            if syncer.rounds.next().await.is_none() {
                return;
            }
        }
    }

    /// Makes every written group durable and recorded, and waits for it: the end of a transfer.
    pub(crate) fn flush(&mut self) -> Result<(), StoreError> {
        let submitted = self.submit();
        let finished = match self.syncer.take() {
            Some(syncer) => syncer.finish(),
            None => Ok(()),
        };
        submitted.and(finished)
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.entry.have().is_complete()
    }
}

impl Drop for PartialWriter {
    fn drop(&mut self) {
        // A dropped transfer (cancelled, shut down) still records what it wrote and verified,
        // and no record of this blob is written after the flag is released.
        if let Err(e) = self.flush() {
            tracing::warn!(hash = %self.entry.hash, error = %e, "could not record the last verified ranges of a blob");
        }
        self.entry.writing.store(false, Ordering::Release);
    }
}

/// Writes hash pairs to the outboard, adjacent ones in one write.
fn write_pairs(obao: &File, path: &Path, pairs: &mut [(u64, [u8; 64])]) -> Result<(), StoreError> {
    pairs.sort_unstable_by_key(|(offset, _)| *offset);
    let mut buf = Vec::with_capacity(pairs.len() * 64);
    let mut start = 0u64;
    for (offset, pair) in pairs.iter() {
        if !buf.is_empty() && start + buf.len() as u64 != *offset {
            obao.write_all_at(&buf, start)
                .map_err(|e| io_error(path, e))?;
            buf.clear();
        }
        if buf.is_empty() {
            start = *offset;
        }
        buf.extend_from_slice(pair);
    }
    if !buf.is_empty() {
        obao.write_all_at(&buf, start)
            .map_err(|e| io_error(path, e))?;
    }
    Ok(())
}

/// Feeds the ciphertext to the outboard builder while writing it to the data file.
struct Tee<R, W> {
    seal: SealReader<R>,
    out: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.seal.read(buf)?;
        self.out.write_all(&buf[..n])?;
        Ok(n)
    }
}

struct Paths {
    data: PathBuf,
    obao: PathBuf,
    have: PathBuf,
}

fn paths(dir: &Path, hash: BlobHash) -> Paths {
    let hex = hash.to_string();
    Paths {
        data: dir.join(format!("{hex}.data")),
        obao: dir.join(format!("{hex}.obao")),
        have: dir.join(format!("{hex}.have")),
    }
}

/// Replaces the record atomically: temporary file, fsync, rename, fsync the directory.
fn write_record(dir: &Path, hash: BlobHash, size: u64, have: &Have) -> Result<(), StoreError> {
    let p = paths(dir, hash);
    let tmp = dir.join(format!("{hash}.have.tmp"));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(&have.encode(size))?;
        f.sync_all()?;
        fs::rename(&tmp, &p.have)?;
        File::open(dir)?.sync_all()
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_error(&p.have, e)
    })
}
