use std::path::PathBuf;

/// Everything that can go wrong in the store, worded so a user knows what to do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process (usually a running `kith run`) holds the database lock.
    #[error(
        "the store at {path} is in use by another kith process; stop that node first (`kith stop`) or use another --home"
    )]
    Locked {
        /// The database directory.
        path: PathBuf,
    },
    /// The database was written by a newer kith whose format this build does not understand.
    #[error(
        "the store at {path} has schema version {found}, but this kith understands up to {supported}; upgrade kith"
    )]
    NewerSchema {
        /// The database directory.
        path: PathBuf,
        /// The version found on disk.
        found: u32,
        /// The newest version this build can read.
        supported: u32,
    },
    /// The disk (or the user's quota) is full; the write did not happen.
    #[error("the disk holding {path} is full; free some space and try again (nothing was written)")]
    DiskFull {
        /// The database directory.
        path: PathBuf,
    },
    /// A stored value could not be decoded: the database is damaged or was edited by hand.
    #[error("stored record in tree '{tree}' is damaged: {reason}")]
    Corrupt {
        /// The tree the record lives in.
        tree: &'static str,
        /// What was wrong with it.
        reason: String,
    },
    /// Any other sled or I/O failure.
    #[error("store I/O error at {path}: {source}")]
    Sled {
        /// The database directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: sled::Error,
    },
}

impl StoreError {
    /// Classifies a sled error: lock contention and a full disk get their own variants because the
    /// user can act on them.
    pub(crate) fn from_sled(path: &std::path::Path, source: sled::Error) -> Self {
        let path = path.to_path_buf();
        if let sled::Error::Io(io) = &source {
            // ENOSPC (28) and EDQUOT (122) on Linux.
            if matches!(io.raw_os_error(), Some(28) | Some(122)) {
                return StoreError::DiskFull { path };
            }
            let text = io.to_string();
            if io.kind() == std::io::ErrorKind::WouldBlock
                || text.contains("could not acquire lock")
            {
                return StoreError::Locked { path };
            }
        }
        StoreError::Sled { path, source }
    }
}

/// A damaged record in `tree`: what every decoder returns when the bytes are not what was written.
pub(crate) fn corrupt(tree: &'static str, reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        tree,
        reason: reason.to_string(),
    }
}

/// A 16-byte id (message, group, outbox key) read back from the store, or the tree's damage.
pub(crate) fn stored_id(
    tree: &'static str,
    what: &str,
    bytes: &[u8],
) -> Result<[u8; 16], StoreError> {
    bytes
        .try_into()
        .map_err(|_| corrupt(tree, format!("{what} is not 16 bytes")))
}
