use std::path::PathBuf;

use kith_proto::v1 as pb;
use prost::Message as _;

use crate::StoreError;
use crate::error::{corrupt, stored_id};

pub(crate) const TREE: &str = "calls";

/// A call's id: 16 bytes, time-ordered like message ids, so the earlier of two crossing calls wins.
pub type CallId = [u8; 16];

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// Answered, then hung up.
    Completed,
    /// Rang, nobody answered (or the caller gave up first).
    Missed,
    /// The callee declined.
    Declined,
    /// The callee was in another call.
    Busy,
    /// The callee's node never answered the ring (offline, unknown, unreachable).
    Unavailable,
    /// The call could not go on (our node stopped, signalling failed).
    Failed,
}

impl CallOutcome {
    /// The wire and store form.
    pub fn to_proto(self) -> pb::CallOutcome {
        match self {
            Self::Completed => pb::CallOutcome::Completed,
            Self::Missed => pb::CallOutcome::Missed,
            Self::Declined => pb::CallOutcome::Declined,
            Self::Busy => pb::CallOutcome::Busy,
            Self::Unavailable => pb::CallOutcome::Unavailable,
            Self::Failed => pb::CallOutcome::Failed,
        }
    }

    /// Reads the wire form; an unknown value (a newer peer) counts as failed.
    pub fn from_proto(value: i32) -> Self {
        match pb::CallOutcome::try_from(value) {
            Ok(pb::CallOutcome::Completed) => Self::Completed,
            Ok(pb::CallOutcome::Missed) => Self::Missed,
            Ok(pb::CallOutcome::Declined) => Self::Declined,
            Ok(pb::CallOutcome::Busy) => Self::Busy,
            Ok(pb::CallOutcome::Unavailable) => Self::Unavailable,
            Ok(pb::CallOutcome::Failed) | Err(_) => Self::Failed,
        }
    }
}

/// One call as this node saw it: what `kith calls` and `GET /v1/calls` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// The call.
    pub call_id: CallId,
    /// The other side: the caller of an incoming call, the (first) callee of an outgoing one.
    pub peer_id: Vec<u8>,
    /// The group of a group call.
    pub group_id: Option<crate::GroupId>,
    /// We called.
    pub outgoing: bool,
    /// Started as a video call.
    pub video: bool,
    /// When it started ringing, unix ms.
    pub started_ms: u64,
    /// When it was answered (0: never).
    pub answered_ms: u64,
    /// When it ended (0: not yet).
    pub ended_ms: u64,
    /// How it ended, once it has.
    pub outcome: Option<CallOutcome>,
    /// Everyone else in the call (binary peer ids), for group calls several.
    pub participants: Vec<Vec<u8>>,
}

impl CallRecord {
    /// Time from the answer to the end; 0 for a call never answered or still going.
    pub fn duration_ms(&self) -> u64 {
        if self.answered_ms == 0 || self.ended_ms == 0 {
            0
        } else {
            self.ended_ms.saturating_sub(self.answered_ms)
        }
    }

    fn encode(&self) -> Vec<u8> {
        pb::CallRecord {
            call_id: self.call_id.to_vec(),
            peer_id: self.peer_id.clone(),
            group_id: self.group_id.map(|g| g.to_vec()).unwrap_or_default(),
            outgoing: self.outgoing,
            video: self.video,
            started_ms: self.started_ms,
            answered_ms: self.answered_ms,
            ended_ms: self.ended_ms,
            outcome: self
                .outcome
                .map_or(pb::CallOutcome::Failed, CallOutcome::to_proto) as i32,
            ended: self.outcome.is_some(),
            participants: self.participants.clone(),
        }
        .encode_to_vec()
    }

    fn decode(raw: &[u8]) -> Result<Self, StoreError> {
        let p = pb::CallRecord::decode(raw).map_err(|e| corrupt(TREE, e))?;
        let call_id = stored_id(TREE, "call id", &p.call_id)?;
        let group_id = if p.group_id.is_empty() {
            None
        } else {
            Some(stored_id(TREE, "group id", &p.group_id)?)
        };
        Ok(Self {
            call_id,
            peer_id: p.peer_id,
            group_id,
            outgoing: p.outgoing,
            video: p.video,
            started_ms: p.started_ms,
            answered_ms: p.answered_ms,
            ended_ms: p.ended_ms,
            outcome: p.ended.then(|| CallOutcome::from_proto(p.outcome)),
            participants: p.participants,
        })
    }
}

/// Call history (tree `calls`, key = call id, value = `kith.v1.CallRecord`). Signalling itself is
/// never stored: only what the history shows.
#[derive(Debug, Clone)]
pub struct CallBook {
    tree: sled::Tree,
    path: PathBuf,
}

impl CallBook {
    pub(crate) fn new(tree: sled::Tree, path: PathBuf) -> Self {
        Self { tree, path }
    }

    /// Records a call or replaces its record; not flushed (the caller's next flush covers it).
    pub fn put(&self, record: &CallRecord) -> Result<(), StoreError> {
        self.tree
            .insert(record.call_id.as_slice(), record.encode())
            .map_err(|e| StoreError::from_sled(&self.path, e))?;
        Ok(())
    }

    /// One call.
    pub fn get(&self, call_id: &CallId) -> Result<Option<CallRecord>, StoreError> {
        self.tree
            .get(call_id.as_slice())
            .map_err(|e| StoreError::from_sled(&self.path, e))?
            .map(|raw| CallRecord::decode(&raw))
            .transpose()
    }

    /// Removes a call that never was one (the losing half of two crossing calls).
    pub fn remove(&self, call_id: &CallId) -> Result<(), StoreError> {
        self.tree
            .remove(call_id.as_slice())
            .map_err(|e| StoreError::from_sled(&self.path, e))?;
        Ok(())
    }

    /// The newest `limit` calls, newest first (ids are time-ordered). Damaged entries are skipped.
    pub fn recent(&self, limit: usize) -> Result<Vec<CallRecord>, StoreError> {
        let mut calls = Vec::new();
        for entry in self.tree.iter().rev() {
            if calls.len() >= limit {
                break;
            }
            let (_, raw) = entry.map_err(|e| StoreError::from_sled(&self.path, e))?;
            match CallRecord::decode(&raw) {
                Ok(record) => calls.push(record),
                Err(e) => tracing::warn!(error = %e, "skipping a damaged call record"),
            }
        }
        Ok(calls)
    }

    /// Calls still marked as going: after a crash they never ended, so start-up ends them.
    pub fn unfinished(&self) -> Result<Vec<CallRecord>, StoreError> {
        let mut calls = Vec::new();
        for entry in self.tree.iter() {
            let (_, raw) = entry.map_err(|e| StoreError::from_sled(&self.path, e))?;
            if let Ok(record) = CallRecord::decode(&raw)
                && record.outcome.is_none()
            {
                calls.push(record);
            }
        }
        Ok(calls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Store, StoreConfig};

    fn record(id: u8, outcome: Option<CallOutcome>) -> CallRecord {
        CallRecord {
            call_id: [id; 16],
            peer_id: vec![1, 2, 3],
            group_id: id.is_multiple_of(2).then_some([id; 16]),
            outgoing: id.is_multiple_of(3),
            video: true,
            started_ms: 1_000 + u64::from(id),
            answered_ms: 2_000,
            ended_ms: if outcome.is_some() { 5_000 } else { 0 },
            outcome,
            participants: vec![vec![1, 2, 3], vec![4]],
        }
    }

    #[test]
    fn calls_round_trip_newest_first_and_unfinished_ones_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db"), &StoreConfig::default()).unwrap();
        let calls = store.calls();
        calls.put(&record(1, Some(CallOutcome::Completed))).unwrap();
        calls.put(&record(2, None)).unwrap();
        calls.put(&record(3, Some(CallOutcome::Declined))).unwrap();
        let recent = calls.recent(10).unwrap();
        assert_eq!(
            recent.iter().map(|c| c.call_id[0]).collect::<Vec<_>>(),
            vec![3, 2, 1]
        );
        assert_eq!(recent[2], record(1, Some(CallOutcome::Completed)));
        assert_eq!(recent[2].duration_ms(), 3_000);
        assert_eq!(recent[1].duration_ms(), 0, "still going: no duration yet");
        assert_eq!(calls.recent(1).unwrap().len(), 1);
        let unfinished = calls.unfinished().unwrap();
        assert_eq!(unfinished.len(), 1);
        assert_eq!(unfinished[0].call_id, [2; 16]);
        calls.remove(&[2; 16]).unwrap();
        assert!(calls.get(&[2; 16]).unwrap().is_none());
    }

    #[test]
    fn every_outcome_survives_the_store_form() {
        for outcome in [
            CallOutcome::Completed,
            CallOutcome::Missed,
            CallOutcome::Declined,
            CallOutcome::Busy,
            CallOutcome::Unavailable,
            CallOutcome::Failed,
        ] {
            assert_eq!(CallOutcome::from_proto(outcome.to_proto() as i32), outcome);
        }
        assert_eq!(CallOutcome::from_proto(99), CallOutcome::Failed);
    }
}
