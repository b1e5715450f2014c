//! kith's files and photos: encrypted, content-addressed blobs with verified ranges.
//!
//! Design (DESIGN.md §12):
//! 1. **Encrypt, then address.** A file is sealed under a fresh random key with a chunked AEAD
//!    (XChaCha20-Poly1305, 64 KiB chunks, nonce = chunk index ‖ last flag; see [`crypto`]), and
//!    the blob's address is the BLAKE3/bao root of the *ciphertext*. Never of the plaintext:
//!    convergent encryption would tell anyone holding a file that you sent it. Anyone (sender,
//!    relay, group member) can hold and serve ciphertext without learning anything, and anyone
//!    can check it against the hash.
//! 2. **A store that resumes.** [`BlobStore`] keeps per blob the ciphertext, its bao outboard
//!    (16 KiB chunk groups, ~0.4% overhead) and a record of the verified groups, in plain files
//!    (layout in the `store` module). Data is fsync'd before the record that covers it, and the
//!    record is replaced atomically, so after a crash the store knows a subset of what it has and
//!    never more. A transfer resumes by asking only for what is missing.
//! 3. **`/kith/blob/1.0.0`** (frames in the `wire` module): the client names a hash and the
//!    chunk ranges it lacks; the server answers with a status and the bao encoding of exactly
//!    those ranges. [`fetch_missing`] verifies each chunk group against the hash before writing
//!    it, so a lying holder costs one rejected range, never a corrupt file. It runs over any
//!    `futures` byte stream; kith-net opens them with libp2p-stream.
//! 4. **Counters** for the node's metrics: [`BlobMetrics`].
//!
//! Usage:
//! - sender: [`BlobStore::import_sealed`] → put [`BlobInfo`] (hash, size, key) in the message;
//!   answer incoming streams with [`serve`].
//! - receiver: [`fetch_missing`] from one or more holders until complete, then
//!   [`BlobStore::export_decrypted`].
//! - relay: answer with [`serve_with`] and a [`HoldPolicy`]; a sender whose recipient is offline
//!   [`push`]es the blob there (only the ranges the relay lacks, each verified on arrival).

pub mod crypto;
mod io;
mod metrics;
mod protocol;
mod store;
mod wire;

pub use crypto::{
    BlobKey, CryptoError, ciphertext_len, open, open_bytes, plaintext_len, seal, seal_bytes,
};
pub use metrics::BlobMetrics;
pub use protocol::{
    FetchError, FetchOutcome, HoldOffer, HoldPolicy, HoldRefusal, Progress, PushError, PushOutcome,
    ServeError, ServeLimits, ServeSummary, fetch_missing, push, serve, serve_with,
};
pub use store::{
    BlobHash, BlobInfo, BlobStatus, BlobStore, GROUP_BYTES, MAX_BLOB_SIZE, StoreError,
};
pub use wire::{PROTOCOL_NAME, Status};

#[cfg(test)]
mod tests;
