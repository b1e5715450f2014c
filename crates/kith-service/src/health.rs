//! What `kith doctor` needs beyond `kith status`: when the node last published what others need
//! to find and reach it (names, key bundle, mailbox pointer) and how its mailbox relays answered.
//!
//! The re-publisher and the mailbox worker record outcomes here; [`crate::Node::checkup`] takes a
//! snapshot. A plain `std::sync::Mutex`: it is held for a few assignments, never across an await.

use std::{collections::BTreeMap, time::SystemTime};

use crate::node::Status;

/// The outcome of the latest attempts at one kind of publication.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Publication {
    /// When the last attempt ended.
    pub last_attempt: Option<SystemTime>,
    /// When an attempt last succeeded (at least one peer took the record).
    pub last_success: Option<SystemTime>,
    /// The last attempt's error, if it failed.
    pub last_error: Option<String>,
}

impl Publication {
    pub(crate) fn record(&mut self, result: Result<bool, String>) {
        let now = SystemTime::now();
        self.last_attempt = Some(now);
        match result {
            Ok(true) => {
                self.last_success = Some(now);
                self.last_error = None;
            }
            // Nothing to publish (no names, no mailbox relays): not an error.
            Ok(false) => self.last_error = None,
            Err(e) => self.last_error = Some(e),
        }
    }
}

/// One mailbox relay as the mailbox worker last found it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailboxHealth {
    /// When a sync (register + fetch) last succeeded.
    pub last_sync: Option<SystemTime>,
    /// The last sync's error, if it failed.
    pub last_error: Option<String>,
}

/// The recorded outcomes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Health {
    pub(crate) names: Publication,
    pub(crate) key_bundle: Publication,
    pub(crate) mailbox_pointer: Publication,
    pub(crate) mailboxes: BTreeMap<String, MailboxHealth>,
    /// Clock readings from peers' answers.
    pub(crate) clock: kith_core::ClockSkew,
}

/// Everything `kith doctor` judges, in one snapshot.
#[derive(Debug, Clone)]
pub struct Checkup {
    /// What `kith status` shows.
    pub status: Status,
    /// Names this node owns.
    pub owned_names: usize,
    /// Re-publication of owned names.
    pub names: Publication,
    /// Publication of the key bundle (without it nobody can write to us first).
    pub key_bundle: Publication,
    /// Publication of the mailbox pointer.
    pub mailbox_pointer: Publication,
    /// Our mailbox relays (address as configured) and how they last answered.
    pub mailboxes: Vec<(String, MailboxHealth)>,
    /// The STUN/TURN servers calls would use now, and whether they must (relay only).
    pub ice: crate::IceConfig,
    /// Relay role: the TURN server this node hands credentials for (empty: none).
    pub turn_served: Vec<String>,
    /// How far our clock is from our peers' (median over peers; `None` until one answered).
    pub clock_skew: Option<kith_core::SkewEstimate>,
    /// How far in the future a name claim may be signed before holders refuse it.
    pub max_clock_skew: std::time::Duration,
}
