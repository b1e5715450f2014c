//! What `kith doctor` needs beyond `kith status`: when the node last published what others need
//! to find and reach it (names, key bundle, mailbox pointer), how its mailbox relays answered, and
//! whether the DHT holds another key's claim for a name we own ([`NameClaims`]).
//!
//! The re-publisher, the mailbox user side and direct delivery record outcomes in the
//! [`HealthLog`]; [`crate::Node::checkup`] takes a snapshot, with the [`RivalCheck`] (which asks
//! the names component through its [`NameLookup`] handle). A plain `std::sync::Mutex`: it is held
//! for a few assignments, never across an await.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures::future::BoxFuture;
use libp2p::PeerId;

use crate::{ServiceError, node::Status};

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

/// The recorded outcomes, shared by whoever records them (the re-publisher, the mailbox user
/// side, direct delivery's clock readings) and [`crate::Node::checkup`], which reads them. A
/// cheap clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct HealthLog(std::sync::Arc<std::sync::Mutex<Health>>);

impl HealthLog {
    /// Runs `f` on the recorded health (a poisoned lock still holds usable data).
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Health) -> T) -> T {
        f(&mut crate::node::lock(&self.0))
    }

    /// A peer's answer carried its clock reading (`peer_now_ms`, 0 when it did not say): one
    /// sample for the clock-skew estimate `kith doctor` shows.
    pub(crate) fn clock_sample(&self, peer: PeerId, sent_ms: u64, peer_now_ms: u64) {
        let received = crate::node::now_ms();
        self.with(|h| {
            h.clock
                .record(&peer.to_bytes(), sent_ms, received, peer_now_ms)
        });
    }
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
    /// Other keys the DHT holds claims for names we own.
    pub name_claims: NameClaims,
}

/// Longest the rival-claim check waits for the DHT, all owned names together, so `kith doctor`
/// answers in bounded time on a slow or partitioned network.
const RIVAL_CHECK_TIMEOUT: Duration = Duration::from_secs(8);

/// Most owned names the rival-claim check asks about at once; the rest are reported unchecked.
const RIVAL_CHECK_MAX_NAMES: usize = 16;

/// What the DHT holds for the names this node owns: `kith doctor` reports a rival claim, which
/// fresh resolvers would see as a rival or, without our majority, as a conflict or a hijack.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameClaims {
    /// Owned names whose replica keys were asked (every holder, no early stop).
    pub checked: Vec<String>,
    /// Owned names not checked, with why (no peers, timed out, too many names).
    pub unchecked: Vec<(String, String)>,
    /// Every other key some holder returned for one of our names.
    pub rivals: Vec<RivalClaim>,
}

/// Another key's claim, held by DHT nodes, for a name this node owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RivalClaim {
    /// The name.
    pub name: String,
    /// The rival key.
    pub rival: PeerId,
    /// Distinct holders that returned the rival's claim, over all replica keys.
    pub holders: usize,
    /// Replica keys (of [`kith_core::NAME_REPLICAS`]) where most holders returned the rival.
    pub replicas: usize,
    /// Distinct holders that returned our claim.
    pub our_holders: usize,
    /// Replica keys where most holders returned our claim.
    pub our_replicas: usize,
}

impl RivalClaim {
    /// Whether resolvers that ask every holder still get us, with this rival listed: we hold a
    /// strict majority of the name's replica keys and the rival wins none
    /// ([`kith_core::select::decide`]; a rival that wins any key makes the name contested).
    pub fn resolvers_get_us(&self) -> bool {
        self.our_replicas * 2 > kith_core::NAME_REPLICAS && self.replicas == 0
    }
}

/// How long a rival check stands: `kith doctor` run again within a minute answers at once
/// instead of walking every replica key of every owned name again (up to 8 s).
pub(crate) const RIVAL_CHECK_REUSE: Duration = Duration::from_secs(60);

/// A finished rival check and what it was made for: reused only for the same owned names and
/// routing table size (a network that grew or split since deserves a new look) within
/// [`RIVAL_CHECK_REUSE`].
#[derive(Debug, Clone)]
struct CachedClaims {
    at: std::time::Instant,
    names: Vec<String>,
    routing_table: usize,
    claims: NameClaims,
}

impl CachedClaims {
    fn fits(&self, names: &[String], routing_table: usize, now: std::time::Instant) -> bool {
        now.duration_since(self.at) < RIVAL_CHECK_REUSE
            && self.names == names
            && self.routing_table == routing_table
    }
}

/// The rival-claim check `kith doctor` runs: asks the names component through [`NameLookup`]
/// and keeps its last answer for [`RIVAL_CHECK_REUSE`].
pub(crate) struct RivalCheck {
    me: PeerId,
    names: Arc<dyn NameLookup>,
    last: std::sync::Mutex<Option<CachedClaims>>,
}

impl std::fmt::Debug for RivalCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RivalCheck").finish_non_exhaustive()
    }
}

/// What the rival-claim check needs of the names component (which implements it itself,
/// router.rs).
pub(crate) trait NameLookup: Send + Sync {
    /// Our own claims as stored (expired ones included).
    fn own_names(&self) -> Result<Vec<kith_core::NameRecord>, ServiceError>;
    /// The valid answers per replica key of `name` from every holder (no early stop).
    fn ask_every_holder<'a>(
        &'a self,
        name: &'a kith_core::Name,
    ) -> BoxFuture<'a, Result<Vec<Vec<kith_core::select::Answer>>, ServiceError>>;
    /// The routing table's size now (a grown or split network deserves a new check).
    fn routing_table(&self) -> BoxFuture<'_, usize>;
}

impl RivalCheck {
    /// The check for the node `me`, asking `names`.
    pub(crate) fn new(me: PeerId, names: Arc<dyn NameLookup>) -> Self {
        Self {
            me,
            names,
            last: std::sync::Mutex::new(None),
        }
    }

    /// Asks the DHT, for each name we own, every holder of every replica key (no early stop) and
    /// lists the other keys they return. Bounded by [`RIVAL_CHECK_TIMEOUT`] for all names at once;
    /// a check made within the last minute for the same names and routing table is reused. A
    /// check that left a name unchecked (timeout, no peers) is not reused.
    pub(crate) async fn name_claims(&self) -> NameClaims {
        let owned = match self.names.own_names() {
            Ok(owned) => owned,
            Err(e) => {
                let mut claims = NameClaims::default();
                claims
                    .unchecked
                    .push((String::new(), format!("cannot read our names: {e}")));
                return claims;
            }
        };
        let names: Vec<String> = owned.iter().map(|r| r.name().to_string()).collect();
        let routing_table = self.names.routing_table().await;
        let cache = &self.last;
        let now = std::time::Instant::now();
        if let Some(cached) = crate::node::lock(cache).as_ref()
            && cached.fits(&names, routing_table, now)
        {
            return cached.claims.clone();
        }
        let claims = self.check_name_claims(&owned).await;
        *crate::node::lock(cache) = claims.unchecked.is_empty().then(|| CachedClaims {
            at: now,
            names,
            routing_table,
            claims: claims.clone(),
        });
        claims
    }

    async fn check_name_claims(&self, owned: &[kith_core::NameRecord]) -> NameClaims {
        let mut claims = NameClaims::default();
        let me = self.me;
        let (asked, skipped) = owned.split_at(owned.len().min(RIVAL_CHECK_MAX_NAMES));
        for record in skipped {
            claims.unchecked.push((
                record.name().to_string(),
                format!("only the first {RIVAL_CHECK_MAX_NAMES} names are checked"),
            ));
        }
        let lookups = asked.iter().map(|record| async move {
            let name = record.name();
            let answer =
                tokio::time::timeout(RIVAL_CHECK_TIMEOUT, self.names.ask_every_holder(name)).await;
            (name.to_string(), answer)
        });
        for (name, answer) in futures::future::join_all(lookups).await {
            let replicas = match answer {
                Ok(Ok(replicas)) => replicas,
                Ok(Err(e)) => {
                    claims.unchecked.push((name, e.to_string()));
                    continue;
                }
                Err(_) => {
                    claims.unchecked.push((
                        name,
                        format!(
                            "the DHT did not answer within {} s",
                            RIVAL_CHECK_TIMEOUT.as_secs()
                        ),
                    ));
                    continue;
                }
            };
            let standings = kith_core::select::standings(&replicas);
            let ours = standings.iter().find(|s| s.record.peer_id() == me);
            let (our_holders, our_replicas) = ours.map_or((0, 0), |s| (s.holders, s.replicas));
            for standing in standings.iter().filter(|s| s.record.peer_id() != me) {
                claims.rivals.push(RivalClaim {
                    name: name.clone(),
                    rival: standing.record.peer_id(),
                    holders: standing.holders,
                    replicas: standing.replicas,
                    our_holders,
                    our_replicas,
                });
            }
            claims.checked.push(name);
        }
        claims
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rival_check_is_reused_for_a_minute_for_the_same_names_and_network() {
        let at = std::time::Instant::now();
        let cached = CachedClaims {
            at,
            names: vec!["ivy".to_owned()],
            routing_table: 7,
            claims: NameClaims::default(),
        };
        let names = ["ivy".to_owned()];
        assert!(cached.fits(&names, 7, at));
        assert!(cached.fits(&names, 7, at + Duration::from_secs(59)));
        assert!(
            !cached.fits(&names, 7, at + RIVAL_CHECK_REUSE),
            "a minute later"
        );
        assert!(!cached.fits(&names, 8, at), "the routing table changed");
        assert!(!cached.fits(&[], 7, at), "we gave the name up");
        assert!(
            !cached.fits(&["ivy".to_owned(), "ada".to_owned()], 7, at),
            "we own another name"
        );
    }

    #[test]
    fn resolvers_get_us_only_with_the_majority_and_no_key_for_the_rival() {
        let rival = |replicas, our_replicas| RivalClaim {
            name: "ivy".to_owned(),
            rival: PeerId::random(),
            holders: 3,
            replicas,
            our_holders: 10,
            our_replicas,
        };
        assert!(rival(0, 5).resolvers_get_us());
        assert!(rival(0, 3).resolvers_get_us());
        assert!(!rival(1, 4).resolvers_get_us(), "it wins a key: contested");
        assert!(!rival(0, 2).resolvers_get_us(), "no majority");
    }
}
