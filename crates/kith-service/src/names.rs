//! Names: register, resolve, pin, contacts, invites, safety numbers.
//!
//! The rules (what a valid claim is, who wins among answers) live in `kith-core`; this module owns
//! the policies around them: first resolution pins, a changed key is a conflict, claims are stored
//! before they are published and re-published before they expire.

use std::{
    ops::ControlFlow,
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use kith_core::{
    ClaimParams, Invite, NAME_REPLICAS, Name, NameRecord, NameRules, pow,
    select::{self, Answer, Verdict},
};
use kith_net::{RecordValidator, Validated};
use kith_store::{Contact, Pin};
use libp2p::{Multiaddr, PeerId, identity::PublicKey, multiaddr::Protocol};

use crate::{Node, ServiceError, error::rfc3339, node::now_ms};

/// How often a send to a pinned name re-checks the DHT in the background.
const PIN_RECHECK: Duration = Duration::from_secs(60);

/// What the node knows about names between lookups: conflicts found on pinned names, and when
/// each pinned name was last checked. Sends answer from the pin with no network call; a key
/// change found by a lookup (explicit or in the background) is kept here and refused on every
/// later use until a lookup finds the pinned key again.
#[derive(Debug, Default)]
pub(crate) struct NameCache {
    conflicts: std::sync::Mutex<std::collections::HashMap<String, Conflict>>,
    checked: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

/// A pinned name that now resolves to another key.
#[derive(Debug, Clone)]
struct Conflict {
    pinned: PeerId,
    pinned_since: String,
    found: PeerId,
}

fn guard<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl NameCache {
    fn conflict(&self, name: &str) -> Option<ServiceError> {
        guard(&self.conflicts)
            .get(name)
            .map(|c| ServiceError::NameConflict {
                name: name.to_owned(),
                pinned: c.pinned,
                pinned_since: c.pinned_since.clone(),
                found: c.found,
                contested: false,
            })
    }

    /// Whether a background check of `name` is due now (and marks it as started).
    fn check_due(&self, name: &str) -> bool {
        let mut checked = guard(&self.checked);
        let now = std::time::Instant::now();
        match checked.get(name) {
            Some(at) if now.duration_since(*at) < PIN_RECHECK => false,
            _ => {
                checked.insert(name.to_owned(), now);
                true
            }
        }
    }
}

/// Most addresses put in a name record or an invite.
const MAX_ADDRS: usize = 8;

/// Holders' and resolvers' rules for DHT values, plugged into the network event loop.
#[derive(Debug, Clone)]
pub(crate) struct NameValidator {
    pub(crate) rules: NameRules,
}

impl RecordValidator for NameValidator {
    fn validate(&self, key: &[u8], value: &[u8]) -> Result<Validated, String> {
        if crate::mailbox::is_pointer(value) {
            let (peer, _, created) = crate::mailbox::verify_pointer(value)?;
            if crate::mailbox::pointer_key(&peer) != key {
                return Err("mailbox pointer stored under another peer's key".into());
            }
            return Ok(Validated {
                class: peer.to_bytes(),
                expires: Some(
                    UNIX_EPOCH + Duration::from_millis(created) + Duration::from_secs(30 * 86_400),
                ),
            });
        }
        if let Some(peer) = crate::dm::bundle_claimed_peer(value) {
            let bundle = crate::dm::decode_bundle(value, &peer)?;
            if crate::dm::bundle_key(&peer) != key {
                return Err("key bundle stored under another peer's key".into());
            }
            return Ok(Validated {
                class: peer.to_bytes(),
                expires: Some(
                    UNIX_EPOCH
                        + Duration::from_millis(bundle.created_at_ms())
                        + Duration::from_secs(30 * 86_400),
                ),
            });
        }
        let record = NameRecord::verify(value, &self.rules, now_ms()).map_err(|e| e.to_string())?;
        if record.name().replica_of(key).is_none() {
            return Err(format!(
                "record for '{}' stored under a key that is not one of its replica keys",
                record.name()
            ));
        }
        Ok(Validated {
            class: record.peer_id().to_bytes(),
            expires: Some(UNIX_EPOCH + Duration::from_millis(record.params().expires_at_ms)),
        })
    }

    fn may_replace(&self, _key: &[u8], stored: &[u8], incoming: &[u8]) -> bool {
        if crate::mailbox::is_pointer(incoming) {
            return match (
                crate::mailbox::verify_pointer(stored),
                crate::mailbox::verify_pointer(incoming),
            ) {
                (Ok((_, _, s)), Ok((_, _, i))) => i >= s,
                (Err(_), Ok(_)) => true,
                _ => false,
            };
        }
        if let (Some(a), Some(b)) = (
            crate::dm::bundle_claimed_peer(stored),
            crate::dm::bundle_claimed_peer(incoming),
        ) {
            // Same key means same peer (the validator checked it); newer bundles win.
            return match (
                crate::dm::decode_bundle(stored, &a),
                crate::dm::decode_bundle(incoming, &b),
            ) {
                (Ok(s), Ok(i)) => i.created_at_ms() >= s.created_at_ms(),
                (Err(_), Ok(_)) => true,
                _ => false,
            };
        }
        let now = now_ms();
        match (
            NameRecord::verify(stored, &self.rules, now),
            NameRecord::verify(incoming, &self.rules, now),
        ) {
            (Ok(stored), Ok(incoming)) => {
                select::holder_accepts(Some(&stored), &incoming, now).is_ok()
            }
            // A stored record that no longer verifies (expired) may always be replaced.
            (Err(_), Ok(_)) => true,
            (_, Err(_)) => false,
        }
    }
}

/// The outcome of [`Node::register_name`].
#[derive(Debug, Clone)]
pub struct Registration {
    /// The signed claim now in force.
    pub record: NameRecord,
    /// True when this renewed an existing claim (same proof of work, higher seq).
    pub renewed: bool,
    /// True when at least one DHT peer took the record; false when the node has no peers yet (it
    /// is stored and re-published once it has).
    pub published: bool,
}

/// The outcome of [`Node::resolve_name`].
#[derive(Debug, Clone)]
pub struct Resolution {
    /// The winning claim.
    pub record: NameRecord,
    /// When the name was pinned to this owner (unix ms).
    pub pinned_at_ms: u64,
    /// True when this resolution created the pin.
    pub newly_pinned: bool,
    /// Distinct holders that returned this owner, over all replica keys.
    pub holders: usize,
    /// Replica keys (of [`NAME_REPLICAS`]) where this owner was the answer most holders gave.
    pub replicas: usize,
    /// Other owners some holders returned, with their distinct holders (ignored; a sign of an
    /// attack or a stale holder).
    pub rivals: Vec<(PeerId, usize)>,
}

/// A proof of work the client computed itself (so it can show progress).
#[derive(Debug, Clone, Copy)]
pub struct SuppliedPow {
    /// The claim time the work covers, unix ms.
    pub created_at_ms: u64,
    /// The nonce.
    pub nonce: u64,
}

/// Who a safety number is for.
#[derive(Debug, Clone)]
pub struct Verification {
    /// Their peer id.
    pub peer_id: PeerId,
    /// The 60-digit safety number.
    pub safety_number: String,
}

impl Node {
    /// The network-wide name rules this node enforces.
    pub fn name_rules(&self) -> &NameRules {
        &self.inner.options.name_rules
    }

    /// Claims `name` for this node's key, or renews our existing claim.
    ///
    /// Fails with [`ServiceError::NameTaken`] when the DHT holds a valid claim by another key. The
    /// claim is stored and flushed before it is published, so it survives a crash and is
    /// re-published on the next start.
    pub async fn register_name(
        &self,
        name: &str,
        supplied: Option<SuppliedPow>,
    ) -> Result<Registration, ServiceError> {
        let name = Name::parse(name)?;
        let rules = self.name_rules().clone();
        let me = self.peer_id();
        let own = match self.store().names().get_own(name.as_str())? {
            Some(bytes) => NameRecord::verify_own(&bytes, &rules).ok(),
            None => None,
        };
        let verdict = match self.lookup(&name).await {
            Ok(verdict) => verdict,
            // Alone on the network: nobody to ask, nobody to conflict with yet.
            Err(ServiceError::Request(kith_net::RequestError::NoKnownPeers)) => None,
            Err(e) => return Err(e),
        };
        let current = match verdict {
            None => None,
            Some(Verdict::Owner { selected, .. }) if selected.record.peer_id() == me => {
                Some(selected)
            }
            Some(Verdict::Owner { selected, .. }) => {
                return Err(ServiceError::NameTaken {
                    name: name.to_string(),
                    holder: selected.record.peer_id(),
                    since: rfc3339(selected.record.params().created_at_ms),
                });
            }
            // Someone else claims it at some replicas: not free to take, even if we are one of
            // the claimants (renewing our own claim goes through `own` below).
            Some(Verdict::Contested { contestants }) => {
                let other = contestants.iter().find(|c| c.record.peer_id() != me);
                if let Some(other) = other
                    && own.is_none()
                {
                    return Err(ServiceError::NameTaken {
                        name: name.to_string(),
                        holder: other.record.peer_id(),
                        since: rfc3339(other.record.params().created_at_ms),
                    });
                }
                None
            }
        };
        let previous_seq = own
            .iter()
            .chain(current.iter().map(|c| &c.record))
            .map(|r| r.params().seq)
            .max();
        let (created_at_ms, nonce, renewed) = match (&own, &current) {
            (Some(own), _) => (own.params().created_at_ms, own.params().pow_nonce, true),
            (None, Some(ours)) => (
                ours.record.params().created_at_ms,
                ours.record.params().pow_nonce,
                true,
            ),
            (None, None) => {
                let (created_at_ms, nonce) = self.proof_of_work(&name, supplied).await?;
                (created_at_ms, nonce, false)
            }
        };
        let record = self
            .sign_claim(
                &name,
                created_at_ms,
                nonce,
                previous_seq.map_or(1, |s| s + 1),
            )
            .await?;
        self.store()
            .names()
            .put_own(name.as_str(), record.to_bytes())?;
        self.store().flush().await?;
        let published = self.publish(&record).await;
        Ok(Registration {
            record,
            renewed,
            published,
        })
    }

    async fn proof_of_work(
        &self,
        name: &Name,
        supplied: Option<SuppliedPow>,
    ) -> Result<(u64, u64), ServiceError> {
        let difficulty = self.name_rules().difficulty;
        let peer = self.peer_id().to_bytes();
        if let Some(s) = supplied {
            let skew = u64::try_from(self.name_rules().max_clock_skew.as_millis()).unwrap_or(0);
            if s.created_at_ms > now_ms() + skew
                || !pow::verify(name.as_str(), &peer, s.created_at_ms, s.nonce, difficulty)
            {
                return Err(ServiceError::BadProofOfWork(name.to_string()));
            }
            return Ok((s.created_at_ms, s.nonce));
        }
        let created_at_ms = now_ms();
        let text = name.as_str().to_owned();
        let nonce = tokio::task::spawn_blocking(move || {
            pow::solve(&text, &peer, created_at_ms, difficulty, |_| {
                ControlFlow::Continue(())
            })
        })
        .await
        .map_err(|e| ServiceError::Task(e.to_string()))?
        .ok_or_else(|| ServiceError::Task("proof of work found no nonce".into()))?;
        Ok((created_at_ms, nonce))
    }

    async fn sign_claim(
        &self,
        name: &Name,
        created_at_ms: u64,
        pow_nonce: u64,
        seq: u64,
    ) -> Result<NameRecord, ServiceError> {
        let ttl = u64::try_from(self.name_rules().max_ttl.as_millis()).unwrap_or(u64::MAX);
        let addrs = self.advertised_addrs().await;
        Ok(NameRecord::sign(
            &self.inner.keypair,
            ClaimParams {
                name: name.clone(),
                created_at_ms,
                seq,
                expires_at_ms: now_ms().saturating_add(ttl),
                pow_nonce,
                addrs,
            },
        )?)
    }

    /// Addresses worth telling others: confirmed external ones first, then dialable listeners.
    pub(crate) async fn advertised_addrs(&self) -> Vec<Multiaddr> {
        let Ok(status) = self.net().status().await else {
            return Vec::new();
        };
        status
            .external_addrs
            .into_iter()
            .chain(status.listen_addrs)
            .filter(crate::node::is_dialable)
            .take(MAX_ADDRS)
            .collect()
    }

    /// Puts a record into the DHT under every replica key of its name, all at once; returns
    /// whether any peer took it at any replica.
    async fn publish(&self, record: &NameRecord) -> bool {
        let expires = UNIX_EPOCH + Duration::from_millis(record.params().expires_at_ms);
        let puts = record.name().replica_keys().into_iter().map(|key| {
            self.net()
                .put_record(key, record.to_bytes().to_vec(), Some(expires))
        });
        let results = futures::future::join_all(puts).await;
        let taken = results.iter().filter(|r| r.is_ok()).count();
        if taken < results.len() {
            let error = results.into_iter().find_map(Result::err);
            tracing::info!(
                name = %record.name(),
                taken,
                replicas = NAME_REPLICAS,
                error = ?error,
                "name stored locally; replicas nobody took are published again with the next re-publish"
            );
        }
        taken > 0
    }

    /// Asks the DHT who holds `name`: every replica key at once, each walk stopping once
    /// `resolve_quorum` holders agree, then [`select::decide`] across replicas. When any holder
    /// returned another owner, every replica is asked again with no early stop, so the nodes
    /// closest to a key (which answer first, and which an attacker can place there by generating
    /// ids) cannot decide a disputed name on their own.
    async fn lookup(&self, name: &Name) -> Result<Option<Verdict>, ServiceError> {
        let quorum = self.inner.options.resolve_quorum;
        let fast = select::decide(&self.ask_replicas(name, quorum).await?, NAME_REPLICAS);
        if !fast.as_ref().is_some_and(Verdict::disputed) || quorum == usize::MAX {
            return Ok(fast);
        }
        tracing::info!(%name, "holders disagree on the owner; asking every replica without stopping early");
        match self.ask_replicas(name, usize::MAX).await {
            Ok(full) => Ok(select::decide(&full, NAME_REPLICAS).or(fast)),
            Err(e) => {
                tracing::info!(%name, error = %e, "the full lookup failed; deciding on the first answers");
                Ok(fast)
            }
        }
    }

    /// One GET per replica key of `name`, concurrently; the valid answers per replica (a replica
    /// whose GET failed has none). Fails only if every GET failed.
    async fn ask_replicas(
        &self,
        name: &Name,
        quorum: usize,
    ) -> Result<Vec<Vec<Answer>>, ServiceError> {
        let gets = name
            .replica_keys()
            .into_iter()
            .map(|key| self.net().get_record(key, quorum));
        let results = futures::future::join_all(gets).await;
        let rules = self.name_rules();
        let now = now_ms();
        let mut replicas = Vec::with_capacity(results.len());
        let mut first_error = None;
        let mut answered = false;
        for result in results {
            let answers = match result {
                Ok(result) => {
                    answered = true;
                    result.answers
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                    Vec::new()
                }
            };
            replicas.push(
                answers
                    .into_iter()
                    .filter_map(|a| {
                        NameRecord::verify(&a.value, rules, now)
                            .ok()
                            .filter(|r| r.name() == name)
                            .map(|record| Answer {
                                holder: a.holder,
                                record,
                            })
                    })
                    .collect(),
            );
        }
        match first_error {
            Some(e) if !answered => Err(e.into()),
            _ => Ok(replicas),
        }
    }

    /// Resolves a name to its owner through the DHT, and pins the first answer.
    ///
    /// A later answer with another key is [`ServiceError::NameConflict`]; nothing follows a
    /// changed key silently.
    pub async fn resolve_name(&self, name: &str) -> Result<Resolution, ServiceError> {
        let name = Name::parse(name)?;
        let (selected, replicas) = match self.lookup(&name).await? {
            None => return Err(ServiceError::NameNotFound(name.to_string())),
            Some(Verdict::Owner { selected, replicas }) => (selected, replicas),
            Some(Verdict::Contested { contestants }) => {
                return Err(self.contested(&name, &contestants)?);
            }
        };
        let found = selected.record.peer_id();
        let candidate = Pin {
            peer_id: found.to_bytes(),
            public_key: selected.record.public_key().encode_protobuf(),
            pinned_at_ms: now_ms(),
            claimed_at_ms: selected.record.params().created_at_ms,
        };
        let pin = self
            .store()
            .names()
            .pin_if_absent(name.as_str(), &candidate)?;
        if pin.peer_id != candidate.peer_id {
            let pinned =
                PeerId::from_bytes(&pin.peer_id).map_err(|e| kith_store::StoreError::Corrupt {
                    tree: "pins",
                    reason: e.to_string(),
                })?;
            let conflict = Conflict {
                pinned,
                pinned_since: rfc3339(pin.claimed_at_ms),
                found,
            };
            guard(&self.inner.names.conflicts).insert(name.to_string(), conflict.clone());
            return Err(ServiceError::NameConflict {
                name: name.to_string(),
                pinned: conflict.pinned,
                pinned_since: conflict.pinned_since,
                found,
                contested: false,
            });
        }
        guard(&self.inner.names.conflicts).remove(name.as_str());
        let newly_pinned = pin.pinned_at_ms == candidate.pinned_at_ms;
        if newly_pinned {
            self.store().flush().await?;
        }
        // Remember where the owner can be reached.
        for addr in selected.record.params().addrs.iter().rev() {
            let _ =
                self.store()
                    .peers()
                    .record_seen(&found.to_bytes(), Some(&addr.to_vec()), None, 0);
        }
        Ok(Resolution {
            record: selected.record,
            pinned_at_ms: pin.pinned_at_ms,
            newly_pinned,
            holders: selected.holders,
            replicas,
            rivals: selected.rivals,
        })
    }

    /// The conflict for a name no owner won a majority of replicas for: against our pin if we
    /// have one, else between the two strongest claimants. Nothing is pinned.
    fn contested(
        &self,
        name: &Name,
        contestants: &[select::Standing],
    ) -> Result<ServiceError, ServiceError> {
        let pin = self.store().names().pin(name.as_str())?;
        let (pinned, pinned_since) = match &pin {
            Some(pin) => (peer_from_bytes(&pin.peer_id)?, pin.claimed_at_ms),
            None => match contestants.first() {
                Some(c) => (c.record.peer_id(), c.record.params().created_at_ms),
                None => return Ok(ServiceError::NameNotFound(name.to_string())),
            },
        };
        let found = contestants
            .iter()
            .map(|c| c.record.peer_id())
            .find(|p| *p != pinned)
            .unwrap_or(pinned);
        tracing::warn!(%name, %pinned, %found, "name contested: no owner holds a majority of its replica keys");
        Ok(ServiceError::NameConflict {
            name: name.to_string(),
            pinned,
            pinned_since: rfc3339(pinned_since),
            found,
            contested: true,
        })
    }

    /// Names this node owns, with their latest records (expired ones included).
    pub fn own_names(&self) -> Result<Vec<NameRecord>, ServiceError> {
        let rules = self.name_rules();
        Ok(self
            .store()
            .names()
            .list_own()?
            .into_iter()
            .filter_map(|(_, bytes)| NameRecord::verify_own(&bytes, rules).ok())
            .collect())
    }

    /// Gives up a name: publishes a final version that expires within a minute (holders then let
    /// anyone claim it) and stops renewing it.
    pub async fn release_name(&self, name: &str) -> Result<NameRecord, ServiceError> {
        let name = Name::parse(name)?;
        let Some(bytes) = self.store().names().get_own(name.as_str())? else {
            return Err(ServiceError::NotOurName(name.to_string()));
        };
        let own = NameRecord::verify_own(&bytes, self.name_rules())?;
        let mut params = own.params().clone();
        params.seq += 1;
        params.expires_at_ms = now_ms() + 60_000;
        params.addrs.clear();
        let last = NameRecord::sign(&self.inner.keypair, params)?;
        self.store().names().remove_own(name.as_str())?;
        self.store().flush().await?;
        self.publish(&last).await;
        Ok(last)
    }

    /// Re-publishes every claim we own, renewing those that expire within half their lifetime.
    /// Runs at start and periodically; returns how many claims went out.
    pub async fn republish_names(&self) -> Result<usize, ServiceError> {
        let now = now_ms();
        let half_ttl = u64::try_from(self.name_rules().max_ttl.as_millis() / 2).unwrap_or(u64::MAX);
        let mut published = 0;
        for record in self.own_names()? {
            let params = record.params();
            let record = if params.expires_at_ms.saturating_sub(now) < half_ttl {
                let renewed = self
                    .sign_claim(
                        record.name(),
                        params.created_at_ms,
                        params.pow_nonce,
                        params.seq + 1,
                    )
                    .await?;
                self.store()
                    .names()
                    .put_own(renewed.name().as_str(), renewed.to_bytes())?;
                self.store().flush().await?;
                tracing::info!(name = %renewed.name(), "renewed name claim");
                renewed
            } else {
                record
            };
            if self.publish(&record).await {
                published += 1;
            }
        }
        Ok(published)
    }

    /// Adds a contact under `petname` for `target` (a name, resolved and pinned, or a peer id).
    pub async fn add_contact(&self, petname: &str, target: &str) -> Result<Contact, ServiceError> {
        let key = petname_key(petname)?;
        if let Some(existing) = self.store().names().contact(&key)? {
            return Err(ServiceError::PetnameTaken {
                petname: petname.to_owned(),
                peer: peer_from_bytes(&existing.peer_id)?,
            });
        }
        let (peer, name, addrs) = match target.parse::<PeerId>() {
            Ok(peer) => (peer, String::new(), Vec::new()),
            Err(_) => {
                let resolution = self.resolve_name(target).await?;
                (
                    resolution.record.peer_id(),
                    resolution.record.name().to_string(),
                    resolution
                        .record
                        .params()
                        .addrs
                        .iter()
                        .map(|a| a.to_vec())
                        .collect(),
                )
            }
        };
        let contact = Contact {
            petname: key,
            peer_id: peer.to_bytes(),
            name,
            added_at_ms: now_ms(),
            addrs,
        };
        self.store().names().put_contact(&contact)?;
        self.store().flush().await?;
        Ok(contact)
    }

    /// Adds a contact from an invite link; pins the invite's name to its key (the friend handed it
    /// over directly, which is stronger evidence than any lookup).
    pub async fn add_invite(
        &self,
        link: &str,
        petname: Option<&str>,
    ) -> Result<Contact, ServiceError> {
        let invite = Invite::parse(link)?;
        let petname = match (petname, &invite.name) {
            (Some(p), _) => p.to_owned(),
            (None, Some(name)) => name.to_string(),
            (None, None) => invite.peer_id.to_string(),
        };
        let key = petname_key(&petname)?;
        if let Some(existing) = self.store().names().contact(&key)?
            && existing.peer_id != invite.peer_id.to_bytes()
        {
            return Err(ServiceError::PetnameTaken {
                petname,
                peer: peer_from_bytes(&existing.peer_id)?,
            });
        }
        if let Some(name) = &invite.name {
            let public_key = public_key_of(&invite.peer_id)?;
            let candidate = Pin {
                peer_id: invite.peer_id.to_bytes(),
                public_key: public_key.encode_protobuf(),
                pinned_at_ms: now_ms(),
                claimed_at_ms: 0,
            };
            let pin = self
                .store()
                .names()
                .pin_if_absent(name.as_str(), &candidate)?;
            if pin.peer_id != candidate.peer_id {
                return Err(ServiceError::NameConflict {
                    name: name.to_string(),
                    pinned: peer_from_bytes(&pin.peer_id)?,
                    pinned_since: rfc3339(pin.claimed_at_ms),
                    found: invite.peer_id,
                    contested: false,
                });
            }
        }
        for addr in invite.addrs.iter().rev() {
            self.store().peers().record_seen(
                &invite.peer_id.to_bytes(),
                Some(&addr.to_vec()),
                None,
                0,
            )?;
        }
        let contact = Contact {
            petname: key,
            peer_id: invite.peer_id.to_bytes(),
            name: invite.name.map(|n| n.to_string()).unwrap_or_default(),
            added_at_ms: now_ms(),
            addrs: invite.addrs.iter().map(|a| a.to_vec()).collect(),
        };
        self.store().names().put_contact(&contact)?;
        self.store().flush().await?;
        if let Some(addr) = invite.addrs.first() {
            let _ = self
                .net()
                .dial(addr.clone().with(Protocol::P2p(invite.peer_id)))
                .await;
        }
        Ok(contact)
    }

    /// Every contact.
    pub fn contacts(&self) -> Result<Vec<Contact>, ServiceError> {
        Ok(self.store().names().contacts()?)
    }

    /// Removes a contact.
    pub async fn remove_contact(&self, petname: &str) -> Result<(), ServiceError> {
        let key = petname_key(petname)?;
        if !self.store().names().remove_contact(&key)? {
            return Err(ServiceError::NoSuchContact(petname.to_owned()));
        }
        self.store().flush().await?;
        Ok(())
    }

    /// Finds who a recipient string means: a petname first, then a name, then a peer id.
    ///
    /// A name pinned earlier answers from the store with no network call (so a send to it works,
    /// and is queued, while the node has no peers); the DHT is asked again in the background at
    /// most once a minute, and a key change it finds is refused from the next call on. A name
    /// never resolved here is looked up (and pinned) now.
    pub async fn resolve_recipient(&self, target: &str) -> Result<PeerId, ServiceError> {
        if let Ok(key) = petname_key(target)
            && let Some(contact) = self.store().names().contact(&key)?
        {
            return peer_from_bytes(&contact.peer_id);
        }
        if let Ok(name) = Name::parse(target) {
            if let Some(conflict) = self.inner.names.conflict(name.as_str()) {
                return Err(conflict);
            }
            if let Some(pin) = self.store().names().pin(name.as_str())? {
                let peer = peer_from_bytes(&pin.peer_id)?;
                if self.inner.names.check_due(name.as_str()) {
                    let weak = std::sync::Arc::downgrade(&self.inner);
                    let name = name.to_string();
                    tokio::spawn(async move {
                        let Some(inner) = weak.upgrade() else { return };
                        if let Err(e) = (Node { inner }).resolve_name(&name).await {
                            tracing::debug!(%name, error = %e, "background check of a pinned name");
                        }
                    });
                }
                return Ok(peer);
            }
        }
        match self.resolve_name(target).await {
            Ok(resolution) => return Ok(resolution.record.peer_id()),
            Err(ServiceError::NameNotFound(_) | ServiceError::InvalidName(_)) => {}
            Err(e) => return Err(e),
        }
        target
            .parse::<PeerId>()
            .map_err(|_| ServiceError::UnknownRecipient(target.to_owned()))
    }

    /// The safety number between us and `target` (petname, name or peer id).
    pub async fn verify(&self, target: &str) -> Result<Verification, ServiceError> {
        let peer = self.resolve_recipient(target).await?;
        let theirs = public_key_of(&peer)?;
        Ok(Verification {
            peer_id: peer,
            safety_number: kith_core::safety_number(&self.inner.keypair.public(), &theirs),
        })
    }

    /// An invite link for this node: our first name (if any), peer id and addresses.
    pub async fn invite(&self) -> Result<Invite, ServiceError> {
        let name = self
            .own_names()?
            .into_iter()
            .next()
            .map(|r| r.name().clone());
        Ok(Invite {
            peer_id: self.peer_id(),
            name,
            addrs: self.advertised_addrs().await,
        })
    }
}

/// Petnames are matched case-insensitively: "Mum" and "mum" are the same contact.
fn petname_key(petname: &str) -> Result<String, ServiceError> {
    let trimmed = petname.trim();
    let len = trimmed.chars().count();
    if len == 0 || len > 64 || trimmed.chars().any(char::is_control) {
        return Err(ServiceError::InvalidPetname(petname.to_owned()));
    }
    Ok(trimmed.to_lowercase())
}

fn peer_from_bytes(bytes: &[u8]) -> Result<PeerId, ServiceError> {
    PeerId::from_bytes(bytes).map_err(|e| {
        ServiceError::Store(kith_store::StoreError::Corrupt {
            tree: "contacts",
            reason: e.to_string(),
        })
    })
}

/// Ed25519 peer ids embed the public key (identity multihash).
pub(crate) fn public_key_of(peer: &PeerId) -> Result<PublicKey, ServiceError> {
    let multihash = peer.as_ref();
    if multihash.code() != 0 {
        return Err(ServiceError::NoPublicKey(*peer));
    }
    PublicKey::try_decode_protobuf(multihash.digest()).map_err(|_| ServiceError::NoPublicKey(*peer))
}

/// Keeps the validator type private while letting `Node::start` build one.
pub(crate) fn validator(rules: NameRules) -> Arc<dyn RecordValidator> {
    Arc::new(NameValidator { rules })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn petnames_are_case_insensitive_and_bounded() {
        assert_eq!(petname_key(" Mum ").unwrap(), "mum");
        assert!(petname_key("").is_err());
        assert!(petname_key(&"x".repeat(65)).is_err());
        assert!(petname_key("a\nb").is_err());
    }

    #[test]
    fn public_keys_come_out_of_ed25519_peer_ids() {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let peer = key.public().to_peer_id();
        assert_eq!(public_key_of(&peer).unwrap(), key.public());
        assert!(public_key_of(&PeerId::random()).is_err());
    }
}
