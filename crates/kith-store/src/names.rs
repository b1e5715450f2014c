use std::path::PathBuf;

use kith_proto::v1::{Contact as ContactRecord, OwnName, Pin as PinRecord};
use prost::Message;

use crate::StoreError;
use crate::error::corrupt;

pub(crate) const OWN_NAMES: &str = "own_names";
pub(crate) const PINS: &str = "pins";
pub(crate) const CONTACTS: &str = "contacts";

/// The owner a name was first resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// Owner peer id (binary).
    pub peer_id: Vec<u8>,
    /// Owner public key (libp2p protobuf encoding).
    pub public_key: Vec<u8>,
    /// When we pinned it, unix ms.
    pub pinned_at_ms: u64,
    /// When the owner first claimed the name, unix ms.
    pub claimed_at_ms: u64,
}

/// A contact: a key with a local petname.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// The petname (key of the tree).
    pub petname: String,
    /// Their peer id (binary).
    pub peer_id: Vec<u8>,
    /// The name they were added by, empty if by peer id or invite without name.
    pub name: String,
    /// When added, unix ms.
    pub added_at_ms: u64,
    /// Binary multiaddr hints.
    pub addrs: Vec<Vec<u8>>,
}

/// Names this node owns (tree `own_names`), pins (tree `pins`) and contacts (tree `contacts`).
/// Writes that a user was told about are flushed by the caller with [`crate::Store::flush`].
#[derive(Debug, Clone)]
pub struct NameBook {
    own: sled::Tree,
    pins: sled::Tree,
    contacts: sled::Tree,
    path: PathBuf,
}

impl NameBook {
    pub(crate) fn new(
        own: sled::Tree,
        pins: sled::Tree,
        contacts: sled::Tree,
        path: PathBuf,
    ) -> Self {
        Self {
            own,
            pins,
            contacts,
            path,
        }
    }

    fn err(&self, e: sled::Error) -> StoreError {
        StoreError::from_sled(&self.path, e)
    }

    /// Remembers the latest signed record for a name we own.
    pub fn put_own(&self, name: &str, record: &[u8]) -> Result<(), StoreError> {
        let value = OwnName {
            record: record.to_vec(),
        }
        .encode_to_vec();
        self.own
            .insert(name.as_bytes(), value)
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The latest signed record for a name we own.
    pub fn get_own(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.own.get(name.as_bytes()).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(raw) => Ok(Some(decode::<OwnName>(OWN_NAMES, &raw)?.record)),
        }
    }

    /// Every name we own with its latest record, in name order.
    pub fn list_own(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.own.iter() {
            let (key, value) = item.map_err(|e| self.err(e))?;
            let name = String::from_utf8_lossy(&key).into_owned();
            out.push((name, decode::<OwnName>(OWN_NAMES, &value)?.record));
        }
        Ok(out)
    }

    /// Forgets a name we owned; returns whether it was there.
    pub fn remove_own(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .own
            .remove(name.as_bytes())
            .map_err(|e| self.err(e))?
            .is_some())
    }

    /// The pin for a name, if it was ever resolved.
    pub fn pin(&self, name: &str) -> Result<Option<Pin>, StoreError> {
        match self.pins.get(name.as_bytes()).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(raw) => {
                let p = decode::<PinRecord>(PINS, &raw)?;
                Ok(Some(Pin {
                    peer_id: p.peer_id,
                    public_key: p.public_key,
                    pinned_at_ms: p.pinned_at_ms,
                    claimed_at_ms: p.claimed_at_ms,
                }))
            }
        }
    }

    /// Pins a name to an owner only if it is not pinned yet (compare-and-swap), so two concurrent
    /// first resolutions cannot both win. Returns the pin in force afterwards.
    pub fn pin_if_absent(&self, name: &str, pin: &Pin) -> Result<Pin, StoreError> {
        let value = PinRecord {
            peer_id: pin.peer_id.clone(),
            public_key: pin.public_key.clone(),
            pinned_at_ms: pin.pinned_at_ms,
            claimed_at_ms: pin.claimed_at_ms,
        }
        .encode_to_vec();
        match self
            .pins
            .compare_and_swap(name.as_bytes(), None as Option<&[u8]>, Some(value))
            .map_err(|e| self.err(e))?
        {
            Ok(()) => Ok(pin.clone()),
            Err(_) => self
                .pin(name)?
                .ok_or_else(|| corrupt(PINS, "pin vanished during compare-and-swap")),
        }
    }

    /// Replaces a pin (the user chose to follow a new owner explicitly).
    pub fn repin(&self, name: &str, pin: &Pin) -> Result<(), StoreError> {
        self.pins.remove(name.as_bytes()).map_err(|e| self.err(e))?;
        self.pin_if_absent(name, pin).map(|_| ())
    }

    /// Adds or replaces a contact.
    pub fn put_contact(&self, contact: &Contact) -> Result<(), StoreError> {
        let value = ContactRecord {
            peer_id: contact.peer_id.clone(),
            name: contact.name.clone(),
            added_at_ms: contact.added_at_ms,
            addrs: contact.addrs.clone(),
        }
        .encode_to_vec();
        self.contacts
            .insert(contact.petname.as_bytes(), value)
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// A contact by petname.
    pub fn contact(&self, petname: &str) -> Result<Option<Contact>, StoreError> {
        match self
            .contacts
            .get(petname.as_bytes())
            .map_err(|e| self.err(e))?
        {
            None => Ok(None),
            Some(raw) => Ok(Some(to_contact(petname, decode(CONTACTS, &raw)?))),
        }
    }

    /// Every contact, by petname.
    pub fn contacts(&self) -> Result<Vec<Contact>, StoreError> {
        let mut out = Vec::new();
        for item in self.contacts.iter() {
            let (key, value) = item.map_err(|e| self.err(e))?;
            out.push(to_contact(
                &String::from_utf8_lossy(&key),
                decode(CONTACTS, &value)?,
            ));
        }
        Ok(out)
    }

    /// Removes a contact; returns whether it existed.
    pub fn remove_contact(&self, petname: &str) -> Result<bool, StoreError> {
        Ok(self
            .contacts
            .remove(petname.as_bytes())
            .map_err(|e| self.err(e))?
            .is_some())
    }
}

fn to_contact(petname: &str, c: ContactRecord) -> Contact {
    Contact {
        petname: petname.to_owned(),
        peer_id: c.peer_id,
        name: c.name,
        added_at_ms: c.added_at_ms,
        addrs: c.addrs,
    }
}

fn decode<M: Message + Default>(tree: &'static str, raw: &[u8]) -> Result<M, StoreError> {
    M::decode(raw).map_err(|e| corrupt(tree, e))
}

#[cfg(test)]
mod tests {
    use crate::{Store, StoreConfig};

    use super::*;

    fn pin(id: u8) -> Pin {
        Pin {
            peer_id: vec![id],
            public_key: vec![id, id],
            pinned_at_ms: 1,
            claimed_at_ms: 2,
        }
    }

    #[test]
    fn the_first_pin_wins_and_repin_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db"), &StoreConfig::default()).unwrap();
        let book = store.names();
        assert_eq!(book.pin("alice").unwrap(), None);
        assert_eq!(book.pin_if_absent("alice", &pin(1)).unwrap(), pin(1));
        assert_eq!(book.pin_if_absent("alice", &pin(2)).unwrap(), pin(1));
        book.repin("alice", &pin(2)).unwrap();
        assert_eq!(book.pin("alice").unwrap(), Some(pin(2)));
    }

    #[test]
    fn own_names_and_contacts_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db"), &StoreConfig::default()).unwrap();
        let book = store.names();
        book.put_own("bob", b"rec1").unwrap();
        book.put_own("alice", b"rec2").unwrap();
        assert_eq!(book.get_own("bob").unwrap(), Some(b"rec1".to_vec()));
        let names: Vec<_> = book
            .list_own()
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, vec!["alice", "bob"]);
        assert!(book.remove_own("bob").unwrap());
        assert!(!book.remove_own("bob").unwrap());

        let mum = Contact {
            petname: "mum".into(),
            peer_id: vec![7],
            name: "alice".into(),
            added_at_ms: 3,
            addrs: vec![vec![1, 2]],
        };
        book.put_contact(&mum).unwrap();
        assert_eq!(book.contact("mum").unwrap(), Some(mum.clone()));
        assert_eq!(book.contacts().unwrap(), vec![mum]);
        assert!(book.remove_contact("mum").unwrap());
        assert_eq!(book.contact("mum").unwrap(), None);
    }

    #[test]
    fn a_damaged_pin_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db"), &StoreConfig::default()).unwrap();
        store
            .names()
            .pins
            .insert("x", b"\xff\xff".as_slice())
            .unwrap();
        assert!(matches!(
            store.names().pin("x"),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
