//! Choosing among answers, and the holders' first-come-first-served rule.
//!
//! Kademlia validates nothing on GET, so a resolver receives whatever each holder chose to return.
//! Honest holders refuse a claim for a name they already hold for another key, so the owner held
//! by most of the closest holders wins; ties go to the earliest claim.

use std::collections::{HashMap, HashSet};

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

fn newer(a: &NameRecord, b: &NameRecord) -> bool {
    (a.params().seq, a.params().expires_at_ms) > (b.params().seq, b.params().expires_at_ms)
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
mod tests {
    use std::ops::ControlFlow;

    use libp2p::identity::Keypair;

    use super::*;
    use crate::{ClaimParams, Name, pow};

    const NOW: u64 = 1_800_000_000_000;

    fn record(key: &Keypair, created: u64, seq: u64) -> NameRecord {
        let name = Name::parse("alice").unwrap();
        let peer = key.public().to_peer_id().to_bytes();
        let nonce = pow::solve(name.as_str(), &peer, created, 4, |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
        NameRecord::sign(
            key,
            ClaimParams {
                name,
                created_at_ms: created,
                seq,
                expires_at_ms: NOW + 1000,
                pow_nonce: nonce,
                addrs: vec![],
            },
        )
        .unwrap()
    }

    fn answer(holder: u8, record: &NameRecord) -> Answer {
        let _ = holder;
        Answer {
            holder: Some(PeerId::random()),
            record: record.clone(),
        }
    }

    #[test]
    fn the_owner_most_holders_return_wins() {
        let honest = Keypair::generate_ed25519();
        let thief = Keypair::generate_ed25519();
        // The thief claims earlier, but only one holder serves it.
        let h = record(&honest, NOW - 10, 1);
        let t = record(&thief, NOW - 100, 1);
        let answers = vec![answer(1, &h), answer(2, &h), answer(3, &t), answer(4, &h)];
        let s = select(&answers).unwrap();
        assert_eq!(s.record.peer_id(), honest.public().to_peer_id());
        assert_eq!(s.holders, 3);
        assert_eq!(s.rivals, vec![(thief.public().to_peer_id(), 1)]);
    }

    #[test]
    fn ties_go_to_the_earliest_claim() {
        let early = Keypair::generate_ed25519();
        let late = Keypair::generate_ed25519();
        let e = record(&early, NOW - 100, 1);
        let l = record(&late, NOW - 10, 1);
        let s = select(&[answer(1, &l), answer(2, &e)]).unwrap();
        assert_eq!(s.record.peer_id(), early.public().to_peer_id());
    }

    #[test]
    fn the_same_holder_counts_once_and_the_newest_seq_is_returned() {
        let owner = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let v1 = record(&owner, NOW - 10, 1);
        let v2 = record(&owner, NOW - 10, 2);
        let holder = Some(PeerId::random());
        let answers = vec![
            Answer {
                holder,
                record: v1.clone(),
            },
            Answer {
                holder,
                record: v2.clone(),
            },
            answer(9, &record(&other, NOW - 5, 1)),
            answer(8, &record(&other, NOW - 5, 1)),
        ];
        let s = select(&answers).unwrap();
        // Two distinct holders for `other` beat one (repeated) holder for `owner`.
        assert_eq!(s.record.peer_id(), other.public().to_peer_id());
        let only_owner = &answers[..2];
        let s = select(only_owner).unwrap();
        assert_eq!(s.holders, 1);
        assert_eq!(s.record.params().seq, 2);
        assert_eq!(agreement(only_owner), 1);
    }

    #[test]
    fn no_answers_no_owner() {
        assert!(select(&[]).is_none());
        assert_eq!(agreement(&[]), 0);
    }

    #[test]
    fn holders_serve_first_come_first_served() {
        let owner = Keypair::generate_ed25519();
        let thief = Keypair::generate_ed25519();
        let v1 = record(&owner, NOW - 10, 1);
        let v2 = record(&owner, NOW - 10, 2);
        let t = record(&thief, NOW - 1000, 5);
        assert_eq!(holder_accepts(None, &v1, NOW), Ok(()));
        assert_eq!(holder_accepts(Some(&v1), &v2, NOW), Ok(()));
        assert_eq!(holder_accepts(Some(&v1), &v1, NOW), Ok(()));
        assert_eq!(holder_accepts(Some(&v2), &v1, NOW), Err(Refusal::Stale));
        assert_eq!(
            holder_accepts(Some(&v1), &t, NOW),
            Err(Refusal::HeldByAnother)
        );
        // Once the owner's claim has expired, anyone may claim the name.
        assert_eq!(holder_accepts(Some(&v1), &t, NOW + 2000), Ok(()));
    }
}
