use std::path::PathBuf;

use kith_proto::v1::PeerRecord;
use prost::Message;

use crate::StoreError;

pub(crate) const TREE: &str = "peers";

/// How many addresses are kept per peer; older ones fall off the end.
const MAX_ADDRS_PER_PEER: usize = 8;

/// A peer this node has met, as remembered in the address book.
///
/// Peer ids and multiaddrs are kept in their binary encodings so this crate does not depend on
/// libp2p; `kith-service` converts them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownPeer {
    /// The peer id in its binary (multihash) form.
    pub peer_id: Vec<u8>,
    /// Binary multiaddrs, most recently confirmed first.
    pub addrs: Vec<Vec<u8>>,
    /// Unix milliseconds of the last established connection.
    pub last_seen_ms: u64,
    /// The peer's identify agent string, empty if never identified.
    pub agent: String,
}

/// The address book (tree `peers`, key = peer id bytes, value = `kith.v1.PeerRecord`).
///
/// A restarted node dials these before (or instead of) the bootstrap list, so the network keeps
/// working when the bootstrap nodes are down.
#[derive(Debug, Clone)]
pub struct PeerBook {
    pub(crate) tree: sled::Tree,
    path: PathBuf,
}

impl PeerBook {
    pub(crate) fn new(tree: sled::Tree, path: PathBuf) -> Self {
        Self { tree, path }
    }

    /// Records that `peer_id` was reachable at `addr` at `now_ms`; the address moves to the front.
    ///
    /// Atomic per peer (read-modify-write with `update_and_fetch`), so concurrent callers do not lose
    /// each other's addresses.
    pub fn record_seen(
        &self,
        peer_id: &[u8],
        addr: Option<&[u8]>,
        agent: Option<&str>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut decode_error = None;
        self.tree
            .update_and_fetch(peer_id, |old| {
                let mut record = match old.map(PeerRecord::decode).transpose() {
                    Ok(r) => r.unwrap_or_default(),
                    Err(e) => {
                        // A damaged entry is replaced rather than blocking the peer forever.
                        decode_error = Some(e.to_string());
                        PeerRecord::default()
                    }
                };
                if let Some(addr) = addr {
                    record.addrs.retain(|a| a.as_slice() != addr);
                    record.addrs.insert(0, addr.to_vec());
                    record.addrs.truncate(MAX_ADDRS_PER_PEER);
                }
                if let Some(agent) = agent {
                    record.agent = agent.to_owned();
                }
                record.last_seen_ms = record.last_seen_ms.max(now_ms);
                Some(record.encode_to_vec())
            })
            .map_err(|e| StoreError::from_sled(&self.path, e))?;
        if let Some(reason) = decode_error {
            tracing::warn!(%reason, "replaced a damaged address-book entry");
        }
        Ok(())
    }

    /// One remembered peer, by its binary peer id: a point lookup, for the send path (which must
    /// not decode the whole book per message). A damaged entry reads as unknown, with a warning.
    pub fn get(&self, peer_id: &[u8]) -> Result<Option<KnownPeer>, StoreError> {
        let Some(value) = self
            .tree
            .get(peer_id)
            .map_err(|e| StoreError::from_sled(&self.path, e))?
        else {
            return Ok(None);
        };
        match PeerRecord::decode(value.as_ref()) {
            Ok(record) => Ok(Some(KnownPeer {
                peer_id: peer_id.to_vec(),
                addrs: record.addrs,
                last_seen_ms: record.last_seen_ms,
                agent: record.agent,
            })),
            Err(e) => {
                tracing::warn!(error = %e, "skipping a damaged address-book entry");
                Ok(None)
            }
        }
    }

    /// Every remembered peer, most recently seen first. Damaged entries are skipped with a warning.
    pub fn all(&self) -> Result<Vec<KnownPeer>, StoreError> {
        let mut peers = Vec::new();
        for item in self.tree.iter() {
            let (key, value) = item.map_err(|e| StoreError::from_sled(&self.path, e))?;
            match PeerRecord::decode(value.as_ref()) {
                Ok(record) => peers.push(KnownPeer {
                    peer_id: key.to_vec(),
                    addrs: record.addrs,
                    last_seen_ms: record.last_seen_ms,
                    agent: record.agent,
                }),
                Err(e) => tracing::warn!(error = %e, "skipping a damaged address-book entry"),
            }
        }
        peers.sort_by_key(|p| std::cmp::Reverse(p.last_seen_ms));
        Ok(peers)
    }

    /// Number of remembered peers.
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    /// True when no peer has been remembered yet.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// Keeps only the `keep` most recently seen peers, so the book cannot grow without bound.
    /// Returns how many entries were removed.
    pub fn prune(&self, keep: usize) -> Result<usize, StoreError> {
        let peers = self.all()?;
        let mut removed = 0;
        for peer in peers.iter().skip(keep) {
            self.tree
                .remove(&peer.peer_id)
                .map_err(|e| StoreError::from_sled(&self.path, e))?;
            removed += 1;
        }
        Ok(removed)
    }
}
