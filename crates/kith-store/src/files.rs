use std::path::PathBuf;

use kith_proto::v1 as pb;
use prost::Message as _;

use crate::error::corrupt;
use crate::{MessageId, StoreError};

pub(crate) const TREE: &str = "files";

/// Where a file's transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileState {
    /// Incoming, ranges still being fetched.
    Downloading,
    /// Every range verified and on disk (outgoing files are complete from the start).
    Complete,
    /// Incoming, stopped until something changes (a full disk); resumed on restart.
    Paused,
    /// Incoming, given up for good.
    Failed,
    /// Stopped for good by the user: never retried, the partial ciphertext deleted (for a file
    /// we sent, the ciphertext too, so nobody can fetch it from us any more).
    Cancelled,
}

/// The descriptor a chat message carries for one file: enough to fetch, verify and decrypt it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileOffer {
    /// BLAKE3/bao root of the ciphertext.
    pub hash: [u8; 32],
    /// Ciphertext length.
    pub size: u64,
    /// The per-file key.
    pub key: [u8; 32],
    /// Media type.
    pub mime: String,
    /// The file's name (no directories).
    pub name: String,
    /// Plaintext length.
    pub plain_size: u64,
    /// Displayed photo dimensions; 0 for other files.
    pub width: u32,
    /// Displayed photo dimensions; 0 for other files.
    pub height: u32,
    /// Small JPEG shown before the photo arrives; empty for other files.
    pub thumbnail: Vec<u8>,
    /// ThumbHash placeholder; empty for other files.
    pub placeholder: Vec<u8>,
    /// Text sent with it.
    pub caption: String,
}

impl FileOffer {
    /// The wire form (also what `FileRecord` stores).
    pub fn to_proto(&self) -> pb::FileOffer {
        pb::FileOffer {
            hash: self.hash.to_vec(),
            size: self.size,
            key: self.key.to_vec(),
            mime: self.mime.clone(),
            name: self.name.clone(),
            plain_size: self.plain_size,
            width: self.width,
            height: self.height,
            thumbnail: self.thumbnail.clone(),
            placeholder: self.placeholder.clone(),
            caption: self.caption.clone(),
        }
    }
}

impl TryFrom<pb::FileOffer> for FileOffer {
    type Error = String;

    /// Checks what a peer sent: 32-byte hash and key, a name without directories.
    fn try_from(p: pb::FileOffer) -> Result<Self, String> {
        let hash: [u8; 32] = p
            .hash
            .as_slice()
            .try_into()
            .map_err(|_| format!("file hash has {} bytes, expected 32", p.hash.len()))?;
        let key: [u8; 32] = p
            .key
            .as_slice()
            .try_into()
            .map_err(|_| format!("file key has {} bytes, expected 32", p.key.len()))?;
        if p.name.is_empty()
            || p.name.contains(['/', '\\', '\0'])
            || p.name == "."
            || p.name == ".."
            || p.name.len() > 255
        {
            return Err("file name is empty, too long or holds a path".into());
        }
        if p.plain_size > p.size {
            return Err("plaintext size exceeds the ciphertext size".into());
        }
        Ok(Self {
            hash,
            size: p.size,
            key,
            mime: p.mime,
            name: p.name,
            plain_size: p.plain_size,
            width: p.width,
            height: p.height,
            thumbnail: p.thumbnail,
            placeholder: p.placeholder,
            caption: p.caption,
        })
    }
}

/// One file sent or received, keyed by the message that carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    /// The message that carried the offer (the file's id in the API).
    pub message_id: MessageId,
    /// The other side (binary peer id).
    pub peer_id: Vec<u8>,
    /// Sent by us.
    pub outgoing: bool,
    /// What was offered.
    pub offer: FileOffer,
    /// Where the transfer stands.
    pub state: FileState,
    /// Why it is paused or failed.
    pub note: String,
    /// When it was recorded, unix ms.
    pub created_ms: u64,
    /// The group it was sent in (its members can serve it too); `None` for a direct message.
    pub group: Option<crate::GroupId>,
}

impl FileRecord {
    fn encode(&self) -> Vec<u8> {
        pb::FileRecord {
            message_id: self.message_id.to_vec(),
            peer_id: self.peer_id.clone(),
            outgoing: self.outgoing,
            offer: Some(self.offer.to_proto()),
            state: match self.state {
                FileState::Downloading => pb::FileState::FileDownloading,
                FileState::Complete => pb::FileState::FileComplete,
                FileState::Paused => pb::FileState::FilePaused,
                FileState::Failed => pb::FileState::FileFailed,
                FileState::Cancelled => pb::FileState::FileCancelled,
            } as i32,
            note: self.note.clone(),
            created_ms: self.created_ms,
            group_id: self.group.map(|g| g.to_vec()).unwrap_or_default(),
        }
        .encode_to_vec()
    }

    fn decode(raw: &[u8]) -> Result<Self, StoreError> {
        let p = pb::FileRecord::decode(raw).map_err(|e| corrupt(TREE, e))?;
        let message_id = <MessageId>::try_from(p.message_id.as_slice())
            .map_err(|_| corrupt(TREE, "bad message id"))?;
        let offer =
            FileOffer::try_from(p.offer.unwrap_or_default()).map_err(|e| corrupt(TREE, e))?;
        let state = match pb::FileState::try_from(p.state) {
            Ok(pb::FileState::FileDownloading) => FileState::Downloading,
            Ok(pb::FileState::FileComplete) => FileState::Complete,
            Ok(pb::FileState::FilePaused) => FileState::Paused,
            Ok(pb::FileState::FileCancelled) => FileState::Cancelled,
            Ok(pb::FileState::FileFailed) | Err(_) => FileState::Failed,
        };
        Ok(Self {
            message_id,
            peer_id: p.peer_id,
            outgoing: p.outgoing,
            offer,
            state,
            note: p.note,
            created_ms: p.created_ms,
            group: crate::GroupId::try_from(p.group_id.as_slice()).ok(),
        })
    }
}

/// Files sent and received (tree `files`, key = message id, value = `kith.v1.FileRecord`).
///
/// The ciphertext itself lives in kith-blob's store on disk; this keeps what the chat knows:
/// who, which message, the key, and where the transfer stands.
#[derive(Debug, Clone)]
pub struct FileBook {
    tree: sled::Tree,
    path: PathBuf,
}

impl FileBook {
    pub(crate) fn new(tree: sled::Tree, path: PathBuf) -> Self {
        Self { tree, path }
    }

    /// Records a file (or replaces its record); not flushed, so the caller's next flush (the
    /// message's) covers it.
    pub fn put(&self, record: &FileRecord) -> Result<(), StoreError> {
        self.tree
            .insert(record.message_id.as_slice(), record.encode())
            .map_err(|e| StoreError::from_sled(&self.path, e))?;
        Ok(())
    }

    /// Records a file only if its message id is new; returns whether it was.
    pub fn insert_new(&self, record: &FileRecord) -> Result<bool, StoreError> {
        let swapped = self
            .tree
            .compare_and_swap(
                record.message_id.as_slice(),
                None as Option<&[u8]>,
                Some(record.encode()),
            )
            .map_err(|e| StoreError::from_sled(&self.path, e))?;
        Ok(swapped.is_ok())
    }

    /// The file a message carried.
    pub fn get(&self, message_id: &MessageId) -> Result<Option<FileRecord>, StoreError> {
        self.tree
            .get(message_id.as_slice())
            .map_err(|e| StoreError::from_sled(&self.path, e))?
            .map(|raw| FileRecord::decode(&raw))
            .transpose()
    }

    /// Every file, oldest message first (ids are time-ordered).
    pub fn all(&self) -> Result<Vec<FileRecord>, StoreError> {
        let mut out = Vec::new();
        for entry in self.tree.iter() {
            let (_, raw) = entry.map_err(|e| StoreError::from_sled(&self.path, e))?;
            out.push(FileRecord::decode(&raw)?);
        }
        Ok(out)
    }

    /// Moves a file to `to` only if it is in one of the states `from` now, as one
    /// compare-and-swap: a download that completes and a cancel that arrives at the same moment
    /// cannot both win. Returns the state it left, or `None` when it was in none of `from` (or is
    /// unknown, or kept changing under us).
    pub fn transition(
        &self,
        message_id: &MessageId,
        from: &[FileState],
        to: FileState,
        note: &str,
    ) -> Result<Option<FileState>, StoreError> {
        // Writers of one record are few (its download, the user); 64 lost races do not happen.
        for _ in 0..64 {
            let Some(raw) = self
                .tree
                .get(message_id.as_slice())
                .map_err(|e| StoreError::from_sled(&self.path, e))?
            else {
                return Ok(None);
            };
            let mut record = FileRecord::decode(&raw)?;
            if !from.contains(&record.state) {
                return Ok(None);
            }
            let was = record.state;
            record.state = to;
            note.clone_into(&mut record.note);
            let swapped = self
                .tree
                .compare_and_swap(message_id.as_slice(), Some(raw), Some(record.encode()))
                .map_err(|e| StoreError::from_sled(&self.path, e))?;
            if swapped.is_ok() {
                return Ok(Some(was));
            }
        }
        Ok(None)
    }

    /// Moves a file to another state, with a note saying why.
    pub fn set_state(
        &self,
        message_id: &MessageId,
        state: FileState,
        note: &str,
    ) -> Result<(), StoreError> {
        if let Some(mut record) = self.get(message_id)? {
            record.state = state;
            note.clone_into(&mut record.note);
            self.put(&record)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Store, StoreConfig};

    fn record(id: u8, state: FileState) -> FileRecord {
        FileRecord {
            message_id: [id; 16],
            peer_id: vec![1, 2, 3],
            outgoing: false,
            offer: FileOffer {
                hash: [7; 32],
                size: 100,
                key: [9; 32],
                mime: "image/jpeg".into(),
                name: "cat.jpg".into(),
                plain_size: 84,
                width: 4,
                height: 3,
                thumbnail: vec![1; 10],
                placeholder: vec![2; 5],
                caption: "look".into(),
            },
            state,
            note: String::new(),
            created_ms: 5,
            group: id.is_multiple_of(2).then_some([id; 16]),
        }
    }

    #[test]
    fn records_survive_a_reopen_and_change_state() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), &StoreConfig::default()).unwrap();
            assert!(
                store
                    .files()
                    .insert_new(&record(1, FileState::Downloading))
                    .unwrap()
            );
            assert!(
                !store
                    .files()
                    .insert_new(&record(1, FileState::Complete))
                    .unwrap()
            );
            store
                .files()
                .set_state(&[1; 16], FileState::Paused, "disk full")
                .unwrap();
            store.flush_blocking().unwrap();
        }
        let store = Store::open(dir.path(), &StoreConfig::default()).unwrap();
        let all = store.files().all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].state, FileState::Paused);
        assert_eq!(all[0].note, "disk full");
        let mut want = record(1, FileState::Paused);
        want.note = "disk full".into();
        assert_eq!(all[0], want);
    }

    #[test]
    fn a_transition_happens_only_from_the_named_states() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreConfig::default()).unwrap();
        let files = store.files();
        files
            .insert_new(&record(5, FileState::Downloading))
            .unwrap();
        let cancel = [FileState::Downloading, FileState::Paused];
        assert_eq!(
            files
                .transition(&[5; 16], &cancel, FileState::Cancelled, "cancelled")
                .unwrap(),
            Some(FileState::Downloading)
        );
        // The download finishing afterwards does not undo the cancel.
        assert_eq!(
            files
                .transition(&[5; 16], &[FileState::Downloading], FileState::Complete, "")
                .unwrap(),
            None
        );
        assert_eq!(
            files.get(&[5; 16]).unwrap().unwrap().state,
            FileState::Cancelled
        );
        assert_eq!(
            files
                .transition(&[6; 16], &cancel, FileState::Cancelled, "")
                .unwrap(),
            None
        );
    }

    #[test]
    fn a_cancelled_file_stays_cancelled_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), &StoreConfig::default()).unwrap();
            store
                .files()
                .insert_new(&record(3, FileState::Downloading))
                .unwrap();
            store
                .files()
                .set_state(&[3; 16], FileState::Cancelled, "cancelled")
                .unwrap();
            store.flush_blocking().unwrap();
        }
        let store = Store::open(dir.path(), &StoreConfig::default()).unwrap();
        let got = store.files().get(&[3; 16]).unwrap().unwrap();
        assert_eq!(got.state, FileState::Cancelled);
        assert_eq!(got.note, "cancelled");
    }

    #[test]
    fn offers_with_paths_or_short_keys_are_refused() {
        let good = record(1, FileState::Complete).offer.to_proto();
        for (what, bad) in [
            (
                "path",
                pb::FileOffer {
                    name: "../etc/passwd".into(),
                    ..good.clone()
                },
            ),
            (
                "empty name",
                pb::FileOffer {
                    name: String::new(),
                    ..good.clone()
                },
            ),
            (
                "short hash",
                pb::FileOffer {
                    hash: vec![1; 31],
                    ..good.clone()
                },
            ),
            (
                "short key",
                pb::FileOffer {
                    key: vec![1; 3],
                    ..good.clone()
                },
            ),
            (
                "sizes",
                pb::FileOffer {
                    plain_size: 101,
                    ..good.clone()
                },
            ),
        ] {
            assert!(FileOffer::try_from(bad).is_err(), "{what} accepted");
        }
        assert!(FileOffer::try_from(good).is_ok());
    }
}
