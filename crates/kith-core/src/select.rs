//! Choosing among answers, and the holders' first-come-first-served rule.
//!
//! Kademlia validates nothing on GET, so a resolver receives whatever each holder chose to return.
//! Honest holders refuse a claim for a name they already hold for another key, so within one key
//! the owner held by most of the holders that answered wins; ties go to the earliest claim
//! ([`select`]).
//!
//! One key is not enough: peer ids are free, so an attacker can generate ids next to a name's key
//! until its nodes are that key's closest holders, and they are the first to answer. A claim is
//! therefore stored under [`crate::NAME_REPLICAS`] unrelated keys and [`decide`] combines them:
//! per replica the owners most holders returned ([`top_owners`]; a tie is won by both), then
//! across replicas the owner that won a strict majority of all replicas, provided no other owner
//! won any replica. Owners returned by some holder without winning a replica are reported as
//! rivals; when two owners each won a replica, or nobody won a majority, the name is contested
//! and nobody is followed.
//!
//! Before any of that, [`admit`] keeps per replica only the answers of holders that count
//! ([`crate::density::counted_holders`]): the key's closest holders, with a cluster of ids
//! implausibly close to the key counted only as far as the network's density allows.

use std::{
    cmp::{Ordering, Reverse},
    collections::{HashMap, HashSet},
};

use libp2p::PeerId;

use crate::NameRecord;

/// One verified answer: who returned it (`None` for our own store) and the record.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The DHT holder that returned it.
    pub holder: Option<PeerId>,
    /// The verified record.
    pub record: NameRecord,
}

/// The outcome of [`select`].
#[derive(Debug, Clone)]
pub struct Selected {
    /// The winning owner's newest record.
    pub record: NameRecord,
    /// How many distinct holders returned the winner.
    pub holders: usize,
    /// Other owners seen, with how many holders returned each.
    pub rivals: Vec<(PeerId, usize)>,
}

/// Picks the owner most holders agree on (ties: earliest `created_at`, then lowest peer id, so
/// every resolver picks the same), and that owner's record with the highest `seq`.
pub fn select(answers: &[Answer]) -> Option<Selected> {
    let mut by_owner: HashMap<PeerId, (HashSet<Option<PeerId>>, &NameRecord)> = HashMap::new();
    for answer in answers {
        let owner = answer.record.peer_id();
        let entry = by_owner
            .entry(owner)
            .or_insert_with(|| (HashSet::new(), &answer.record));
        entry.0.insert(answer.holder);
        if newer(&answer.record, entry.1) {
            entry.1 = &answer.record;
        }
    }
    let (winner, (holders, record)) = by_owner.iter().max_by(|(a_id, a), (b_id, b)| {
        a.0.len()
            .cmp(&b.0.len())
            // Earlier claim wins, so reverse; then lower peer id wins, so reverse again.
            .then_with(|| b.1.params().created_at_ms.cmp(&a.1.params().created_at_ms))
            .then_with(|| b_id.to_bytes().cmp(&a_id.to_bytes()))
    })?;
    let mut rivals: Vec<(PeerId, usize)> = by_owner
        .iter()
        .filter(|(id, _)| *id != winner)
        .map(|(id, (h, _))| (*id, h.len()))
        .collect();
    rivals.sort_by_key(|(id, n)| (std::cmp::Reverse(*n), id.to_bytes()));
    Some(Selected {
        record: (*record).clone(),
        holders: holders.len(),
        rivals,
    })
}

/// How many holders returned the most-agreed owner so far; a resolver stops once this reaches its
/// quorum.
pub fn agreement(answers: &[Answer]) -> usize {
    select(answers).map_or(0, |s| s.holders)
}

/// Whether `a` is a newer version than `b` (same owner): higher `seq`, then later expiry, then
/// the larger encoding, so that the pick never depends on the order answers arrived in.
fn newer(a: &NameRecord, b: &NameRecord) -> bool {
    (a.params().seq, a.params().expires_at_ms, a.to_bytes())
        > (b.params().seq, b.params().expires_at_ms, b.to_bytes())
}

/// One owner's standing across the replica keys of a name.
#[derive(Debug, Clone)]
pub struct Standing {
    /// The owner's newest record seen at any replica.
    pub record: NameRecord,
    /// Replicas where this owner was returned by the most holders ([`top_owners`]; a tie counts
    /// for every tied owner).
    pub replicas: usize,
    /// Distinct holders that returned this owner, over all replicas.
    pub holders: usize,
}

/// What [`decide`] concluded from the answers for every replica key of a name.
// A verdict lives for one lookup and is matched at once; boxing the common case would only add
// an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Verdict {
    /// One owner won a strict majority of the replicas, or no holder returned any other owner.
    Owner {
        /// The winner's newest record, its distinct holders over all replicas, and every other
        /// owner seen with its distinct holders (strongest first).
        selected: Selected,
        /// Replicas the winner won.
        replicas: usize,
    },
    /// Several owners and none won a majority: following any of them could follow an attacker.
    Contested {
        /// Every owner seen, strongest first (most replicas won, then most holders, then the
        /// earliest claim, then the lowest peer id).
        contestants: Vec<Standing>,
    },
}

impl Verdict {
    /// Whether any holder returned an owner other than the winner. A resolver that stopped each
    /// walk early asks again without stopping early when this is true, so the attacker's nodes
    /// answering first cannot decide a disputed name.
    pub fn disputed(&self) -> bool {
        match self {
            Verdict::Owner { selected, .. } => !selected.rivals.is_empty(),
            Verdict::Contested { .. } => true,
        }
    }
}

/// Every owner seen in the answers for each replica key of a name (`replicas[i]` holds replica
/// `i`'s answers), with the replicas it won ([`top_owners`] per replica: ties count for every tied
/// owner) and its distinct holders over
/// all replicas, strongest first (most replicas, most holders, earliest claim, lowest peer id).
/// What [`decide`] rules on, and what an owner checking its own name needs to see every rival.
pub fn standings(replicas: &[Vec<Answer>]) -> Vec<Standing> {
    struct Tally<'a> {
        record: &'a NameRecord,
        replicas: usize,
        holders: HashSet<Option<PeerId>>,
    }
    let mut tallies: HashMap<PeerId, Tally<'_>> = HashMap::new();
    for answer in replicas.iter().flatten() {
        let tally = tallies
            .entry(answer.record.peer_id())
            .or_insert_with(|| Tally {
                record: &answer.record,
                replicas: 0,
                holders: HashSet::new(),
            });
        tally.holders.insert(answer.holder);
        if newer(&answer.record, tally.record) {
            tally.record = &answer.record;
        }
    }
    for replica in replicas {
        for owner in top_owners(replica) {
            if let Some(tally) = tallies.get_mut(&owner) {
                tally.replicas += 1;
            }
        }
    }
    let mut standings: Vec<Standing> = tallies
        .into_values()
        .map(|t| Standing {
            record: t.record.clone(),
            replicas: t.replicas,
            holders: t.holders.len(),
        })
        .collect();
    standings.sort_by(stronger);
    standings
}

/// The owners returned by the most distinct holders of one replica: the replica's winners for
/// [`standings`] and [`decide`]. A tie makes every tied owner a winner, so a tie is a contest
/// rather than a win for the earlier claim (a claim time is whatever its signer wrote, and an
/// attacker would back-date it).
pub fn top_owners(answers: &[Answer]) -> Vec<PeerId> {
    let mut holders: HashMap<PeerId, HashSet<Option<PeerId>>> = HashMap::new();
    for answer in answers {
        holders
            .entry(answer.record.peer_id())
            .or_default()
            .insert(answer.holder);
    }
    let most = holders.values().map(HashSet::len).max().unwrap_or(0);
    holders
        .into_iter()
        .filter(|(_, h)| h.len() == most)
        .map(|(owner, _)| owner)
        .collect()
}

/// Combines the answers for each replica key of a name (`replicas[i]` holds replica `i`'s answers,
/// in any order; replicas nobody answered for may be empty or missing) into one verdict.
///
/// `total` is how many replicas the name has ([`crate::NAME_REPLICAS`]). Per replica the
/// [`top_owners`] (the owner most holders returned; every tied owner on a tie) count as that
/// replica's winners. An owner wins if it is the only owner any
/// holder returned (nothing contests it), or if it won more than half of `total` (not of the
/// replicas that answered, so silencing honest replicas does not help an attacker) **and** no
/// other owner won any replica. Otherwise the name is [`Verdict::Contested`]. `None` when no
/// replica had a valid answer.
///
/// The second condition is what keeps an attacker from being followed alone when some honest
/// holders never received the first owner's claim (they took the attacker's as the first one):
/// to be followed, the attacker must win every replica the honest owner is seen at, not three of
/// five; winning fewer only makes the name contested, which shows both owners.
///
/// The result depends only on the sets of answers, never on their order.
pub fn decide(replicas: &[Vec<Answer>], total: usize) -> Option<Verdict> {
    let total = total.max(replicas.len());
    let standings = standings(replicas);
    let first = standings.first()?;
    let rival_won_a_replica = standings.iter().skip(1).any(|s| s.replicas > 0);
    if standings.len() > 1 && (first.replicas * 2 <= total || rival_won_a_replica) {
        return Some(Verdict::Contested {
            contestants: standings,
        });
    }
    let replicas_won = first.replicas;
    let mut rest = standings.into_iter();
    let winner = rest.next()?;
    let rivals = rest.map(|s| (s.record.peer_id(), s.holders)).collect();
    Some(Verdict::Owner {
        selected: Selected {
            record: winner.record,
            holders: winner.holders,
            rivals,
        },
        replicas: replicas_won,
    })
}

/// Orders standings strongest first: most replicas won, most holders, earliest claim, lowest peer
/// id (a total order, so every resolver ranks the same answers the same way).
fn stronger(a: &Standing, b: &Standing) -> Ordering {
    (
        Reverse(a.replicas),
        Reverse(a.holders),
        a.record.params().created_at_ms,
        a.record.peer_id().to_bytes(),
    )
        .cmp(&(
            Reverse(b.replicas),
            Reverse(b.holders),
            b.record.params().created_at_ms,
            b.record.peer_id().to_bytes(),
        ))
}

/// The answers for one replica `key` that count: those from holders
/// [`crate::density::counted_holders`] keeps (the key's closest holders, a cluster of ids
/// implausibly close to the key counted only as far as a network of `network_size` nodes would
/// put there), and our own store's (`holder: None`). Apply it to each replica before [`decide`].
pub fn admit(key: &[u8], answers: Vec<Answer>, network_size: Option<f64>) -> Vec<Answer> {
    let counted =
        crate::density::counted_holders(key, answers.iter().filter_map(|a| a.holder), network_size);
    answers
        .into_iter()
        .filter(|a| a.holder.is_none_or(|h| counted.contains(&h)))
        .collect()
}

/// Why a holder refused to replace its stored claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Another key holds a valid, unexpired claim for the name.
    HeldByAnother,
    /// Same owner, but not a newer version.
    Stale,
}

/// The holder's first-come-first-served rule: a stored, unexpired claim can be replaced only by
/// its own owner with a higher `seq` (or the identical record again).
pub fn holder_accepts(
    stored: Option<&NameRecord>,
    incoming: &NameRecord,
    now_ms: u64,
) -> Result<(), Refusal> {
    let Some(stored) = stored else {
        return Ok(());
    };
    if stored.is_expired(now_ms) {
        return Ok(());
    }
    if stored.peer_id() != incoming.peer_id() {
        return Err(Refusal::HeldByAnother);
    }
    if incoming.params().seq > stored.params().seq || incoming.to_bytes() == stored.to_bytes() {
        Ok(())
    } else {
        Err(Refusal::Stale)
    }
}

#[cfg(test)]
mod tests;
