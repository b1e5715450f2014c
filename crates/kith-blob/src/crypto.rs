//! The chunked AEAD of a file: XChaCha20-Poly1305 in a STREAM-style construction.
//!
//! The plaintext is cut into [`PLAINTEXT_CHUNK`] byte chunks; each becomes `chunk ‖ tag` (16 bytes).
//! The nonce is `0…0 ‖ chunk index (u64 BE) ‖ last flag`: the key is fresh and random for every
//! file, so a counter never repeats under one key, and the last flag makes a ciphertext cut at a
//! chunk boundary fail to open instead of silently yielding a shorter file.
//! An empty file is one empty last chunk (16 bytes of tag), so even it authenticates.

use std::fmt;
use std::io::{self, Read, Write};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};

/// Plaintext bytes per AEAD chunk: large enough that the 16-byte tags cost 0.02%, small enough that
/// sealing and opening hold only one chunk in memory.
pub const PLAINTEXT_CHUNK: usize = 64 * 1024;
/// Bytes of the Poly1305 tag that follows every chunk.
pub const TAG_LEN: usize = 16;
const CIPHERTEXT_CHUNK: usize = PLAINTEXT_CHUNK + TAG_LEN;
/// Associated data of every chunk, so a kith blob chunk never authenticates in another protocol.
const AAD: &[u8] = b"kith/blob/1";

/// The per-file secret that decrypts a blob; it travels only inside an end-to-end encrypted chat
/// message, never with the blob itself.
#[derive(Clone, PartialEq, Eq)]
pub struct BlobKey([u8; 32]);

impl BlobKey {
    /// A fresh random key from the operating system, one per file (never derived from the content,
    /// so two people sending the same file produce unrelated blobs).
    pub fn generate() -> Result<Self, CryptoError> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| CryptoError::Random(e.to_string()))?;
        Ok(Self(key))
    }

    /// Rebuilds a key received in a chat message.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw key, to put into a chat message.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }
}

impl fmt::Debug for BlobKey {
    // Never print key material, not even in logs of a failed test.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlobKey(..)")
    }
}

/// Why sealing or opening failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// A chunk's tag did not verify: wrong key, or the ciphertext was modified.
    #[error("blob chunk {chunk} failed authentication: wrong key or modified ciphertext")]
    Tampered {
        /// Index of the chunk that failed.
        chunk: u64,
    },
    /// The ciphertext ended before a chunk marked last: it was truncated.
    #[error("blob ciphertext is truncated after chunk {chunks} (no final chunk)")]
    Truncated {
        /// Chunks that authenticated before the end.
        chunks: u64,
    },
    /// The plaintext source yielded a different number of bytes than announced.
    #[error("plaintext source changed while sealing: expected {expected} bytes, got {got}")]
    SizeChanged {
        /// Bytes announced up front.
        expected: u64,
        /// Bytes actually read.
        got: u64,
    },
    /// The operating system's random generator failed.
    #[error("no randomness for a blob key: {0}")]
    Random(String),
    /// Reading the source or writing the destination failed.
    #[error("blob i/o: {0}")]
    Io(#[from] io::Error),
}

/// The ciphertext length of a plaintext of `plaintext_len` bytes: one tag per chunk, at least one
/// chunk. A receiver can check a claimed size against this.
pub fn ciphertext_len(plaintext_len: u64) -> u64 {
    plaintext_len + TAG_LEN as u64 * chunk_count(plaintext_len)
}

/// The plaintext length behind a ciphertext of `ciphertext_len` bytes, or `None` if no plaintext
/// seals to exactly that length.
pub fn plaintext_len(ciphertext_len: u64) -> Option<u64> {
    let full = ciphertext_len / CIPHERTEXT_CHUNK as u64;
    let rest = ciphertext_len % CIPHERTEXT_CHUNK as u64;
    let plain = if rest == 0 {
        // Only full chunks: the last one is full too, unless there are none at all.
        full.checked_mul(PLAINTEXT_CHUNK as u64)?
    } else {
        let tail = rest.checked_sub(TAG_LEN as u64)?;
        full * PLAINTEXT_CHUNK as u64 + tail
    };
    (self::ciphertext_len(plain) == ciphertext_len).then_some(plain)
}

fn chunk_count(plaintext_len: u64) -> u64 {
    plaintext_len.div_ceil(PLAINTEXT_CHUNK as u64).max(1)
}

fn nonce(index: u64, last: bool) -> XNonce {
    let mut n = [0u8; 24];
    n[15..23].copy_from_slice(&index.to_be_bytes());
    n[23] = u8::from(last);
    XNonce::from(n)
}

fn cipher(key: &BlobKey) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(&key.0.into())
}

/// Reads until `buf` is full or the source ends; returns how many bytes were read.
fn read_full(src: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match src.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// A [`Read`] that yields the ciphertext of a plaintext [`Read`], one chunk at a time.
///
/// It reads one byte past each chunk to learn whether the chunk is the last, so it works on
/// sources of unknown length; the store uses it to feed the bao outboard while writing the data
/// file in the same pass.
pub(crate) struct SealReader<R> {
    plaintext: R,
    cipher: XChaCha20Poly1305,
    index: u64,
    /// Plaintext read ahead: up to one chunk plus the byte that tells whether more follows.
    ahead: Vec<u8>,
    /// Ciphertext of the current chunk, and how much of it was handed out.
    out: Vec<u8>,
    out_pos: usize,
    done: bool,
    plaintext_read: u64,
}

impl<R: Read> SealReader<R> {
    pub(crate) fn new(plaintext: R, key: &BlobKey) -> Self {
        Self {
            plaintext,
            cipher: cipher(key),
            index: 0,
            ahead: Vec::with_capacity(PLAINTEXT_CHUNK + 1),
            out: Vec::with_capacity(CIPHERTEXT_CHUNK),
            out_pos: 0,
            done: false,
            plaintext_read: 0,
        }
    }

    /// Plaintext bytes consumed so far.
    pub(crate) fn plaintext_read(&self) -> u64 {
        self.plaintext_read
    }

    fn next_chunk(&mut self) -> io::Result<()> {
        // Top the look-ahead up to one chunk plus one byte.
        let have = self.ahead.len();
        self.ahead.resize(PLAINTEXT_CHUNK + 1, 0);
        let n = read_full(&mut self.plaintext, &mut self.ahead[have..])?;
        self.ahead.truncate(have + n);
        self.plaintext_read += n as u64;
        let last = self.ahead.len() <= PLAINTEXT_CHUNK;
        let take = self.ahead.len().min(PLAINTEXT_CHUNK);
        self.out.clear();
        self.out.extend_from_slice(&self.ahead[..take]);
        self.ahead.drain(..take);
        let tag = self
            .cipher
            .encrypt_in_place_detached(&nonce(self.index, last), AAD, &mut self.out)
            .map_err(|_| io::Error::other("chunk too large for XChaCha20-Poly1305"))?;
        self.out.extend_from_slice(&tag);
        self.out_pos = 0;
        self.index += 1;
        self.done = last;
        Ok(())
    }
}

impl<R: Read> Read for SealReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.out_pos == self.out.len() {
            if self.done {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        let n = buf.len().min(self.out.len() - self.out_pos);
        buf[..n].copy_from_slice(&self.out[self.out_pos..self.out_pos + n]);
        self.out_pos += n;
        Ok(n)
    }
}

/// Encrypts `plaintext` under `key` into `out`, streaming one chunk at a time; returns the
/// ciphertext length.
pub fn seal(plaintext: impl Read, key: &BlobKey, mut out: impl Write) -> Result<u64, CryptoError> {
    let mut reader = SealReader::new(plaintext, key);
    let n = io::copy(&mut reader, &mut out)?;
    out.flush()?;
    Ok(n)
}

/// Encrypts a small in-memory plaintext under a fresh key: for thumbnails and tests.
pub fn seal_bytes(plaintext: &[u8]) -> Result<(Vec<u8>, BlobKey), CryptoError> {
    let key = BlobKey::generate()?;
    let mut out =
        Vec::with_capacity(usize::try_from(ciphertext_len(plaintext.len() as u64)).unwrap_or(0));
    seal(plaintext, &key, &mut out)?;
    Ok((out, key))
}

/// Decrypts a complete ciphertext into `out`, one chunk at a time; returns the plaintext length.
///
/// Fails with [`CryptoError::Tampered`] on any tag failure and [`CryptoError::Truncated`] when the
/// ciphertext stops before its last chunk. On failure `out` holds a prefix of authenticated
/// plaintext; callers writing files write to a temporary file and discard it (as
/// `BlobStore::export_decrypted` does).
pub fn open(
    mut ciphertext: impl Read,
    key: &BlobKey,
    mut out: impl Write,
) -> Result<u64, CryptoError> {
    let cipher = cipher(key);
    // One chunk plus one byte: the extra byte tells whether this chunk must be the last.
    let mut buf = vec![0u8; CIPHERTEXT_CHUNK + 1];
    let mut have = 0usize;
    let mut index = 0u64;
    let mut written = 0u64;
    loop {
        have += read_full(&mut ciphertext, &mut buf[have..])?;
        let last = have <= CIPHERTEXT_CHUNK;
        let take = have.min(CIPHERTEXT_CHUNK);
        if take < TAG_LEN {
            return Err(CryptoError::Truncated { chunks: index });
        }
        let (body, rest) = buf[..take].split_at_mut(take - TAG_LEN);
        let tag = Tag::clone_from_slice(rest);
        match cipher.decrypt_in_place_detached(&nonce(index, last), AAD, body, &tag) {
            Ok(()) => {}
            // A chunk that is the last only because the input stopped early authenticates as
            // neither last nor non-last when it was cut; tell a cut from a modification.
            Err(_) if last && cipher_opens_as_middle(&cipher, index, &buf[..take]) => {
                return Err(CryptoError::Truncated { chunks: index + 1 });
            }
            Err(_) => return Err(CryptoError::Tampered { chunk: index }),
        }
        out.write_all(body)?;
        written += body.len() as u64;
        index += 1;
        if last {
            out.flush()?;
            return Ok(written);
        }
        buf.copy_within(take..have, 0);
        have -= take;
    }
}

/// Whether a chunk read as the last one would have opened as a middle chunk, i.e. the ciphertext
/// was cut right after it.
fn cipher_opens_as_middle(cipher: &XChaCha20Poly1305, index: u64, chunk: &[u8]) -> bool {
    if chunk.len() != CIPHERTEXT_CHUNK {
        return false;
    }
    let mut body = chunk[..PLAINTEXT_CHUNK].to_vec();
    let tag = Tag::clone_from_slice(&chunk[PLAINTEXT_CHUNK..]);
    cipher
        .decrypt_in_place_detached(&nonce(index, false), AAD, &mut body, &tag)
        .is_ok()
}

/// Decrypts a small in-memory ciphertext: for thumbnails and tests.
pub fn open_bytes(ciphertext: &[u8], key: &BlobKey) -> Result<Vec<u8>, CryptoError> {
    let mut out = Vec::with_capacity(ciphertext.len());
    open(ciphertext, key, &mut out)?;
    Ok(out)
}
