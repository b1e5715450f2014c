//! `resolve.cold` and `resolve.warm`: name resolution in an in-process network of kith nodes,
//! beside raw Kademlia `get_record`s of a value of the same size in a network of bare swarms of
//! the same size and shape, measured in the same run.
//!
//! kith: node 0 registers a name (proof of work at the main network's difficulty, timed as
//! `register_ms`), then other nodes resolve it: the first time is cold (nothing pinned: kith asks
//! the name's five replica keys at once, validates every answer and stops each walk after 4
//! agreeing holders or its end), then warm, [`WARM_REPEATS`] times per node: `resolve_name` as
//! `kith resolve` and a send call it, answered from the pin and the last lookup with no network
//! call (the background re-check is due only a minute after the cold lookup). The raw baseline
//! for both does the same five gets at once, each stopping after 4 records, unvalidated (the same
//! number of answers).
//!
//! `resolve.sybil`: issue 14's attack. A fifth of the network are attacker nodes whose ids were
//! generated to be closer to the name's first key than any honest node, holding the attacker's
//! own valid, older claim under every replica key; they join through random honest nodes.
//! The honest owner registers first, and its registration counts as complete once the honest
//! nodes among every replica key's 20 closest nodes hold its claim (it re-publishes until they
//! do, within 90 s; the figure says how many did). Only then do the attacker's nodes store their
//! claim. Every honest node (and a few fresh nodes bootstrapping from an attacker node) then
//! resolves the name once; the figure is the fraction that got the honest owner
//! or a conflict. The baseline is the rule before replica keys, in the same network and from the
//! same nodes: one key, stop at 4 agreeing holders.
//!
//! `resolve.sybil.costly`: the same attack in a network that sets a peer-id difficulty
//! ([`Params::sybil_difficulty`]): honest nodes have worked ids, the attacker's ground ids are not
//! worked (the work is what the network charges for) and run modified nodes that ignore the
//! difficulty (they serve the DHT and admit every peer), except one, which the attacker paid the
//! work for: a worked id ground next to the key that names its un-worked friends to anyone who
//! asks it for peers near the key.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::ProgressBar;
use kith_core::{NAME_REPLICAS, Name, NameRecord, NameRules, select};
use kith_net::{Keypair, PeerId};
use kith_service::{ResolvedFrom, ServiceError};
use libp2p::kad::KBucketKey;

use crate::{
    cluster::{Cluster, Kind, NodeSettings, Rng},
    report::{Figures, Scenario, micros},
};

const NAME: &str = "bench-name";
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(35);
/// Warm resolutions per resolving node (each a few microseconds).
const WARM_REPEATS: usize = 20;

/// Sizes of the scenarios.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    /// Nodes in each network.
    pub(crate) nodes: usize,
    /// Resolving nodes (each resolves cold once, then warm [`WARM_REPEATS`] times).
    pub(crate) lookups: usize,
    /// Upper bound on waiting for routing tables to fill.
    pub(crate) populate_wait: Duration,
    /// `resolve.sybil`: nodes in the network, attackers included.
    pub(crate) sybil_nodes: usize,
    /// `resolve.sybil`: attacker nodes (ground ids) among them.
    pub(crate) sybils: usize,
    /// `resolve.sybil`: fresh nodes that join through an attacker node and resolve.
    pub(crate) sybil_joiners: usize,
    /// `resolve.sybil.costly`: the network's peer-id difficulty (2^d key generations per worked
    /// id; the outcome does not depend on `d` while the attacker does not pay it).
    pub(crate) sybil_difficulty: u8,
}

impl Params {
    /// Full-run or `--quick` defaults.
    pub(crate) fn new(quick: bool) -> Self {
        if quick {
            Self {
                nodes: 8,
                lookups: 7,
                populate_wait: Duration::from_secs(10),
                sybil_nodes: 20,
                sybils: 4,
                sybil_joiners: 2,
                sybil_difficulty: 8,
            }
        } else {
            Self {
                nodes: 50,
                lookups: 49,
                populate_wait: Duration::from_secs(30),
                sybil_nodes: 50,
                sybils: 10,
                sybil_joiners: 5,
                sybil_difficulty: 8,
            }
        }
    }
}

struct KithMeasured {
    register_ms: f64,
    record_len: usize,
    cold: Vec<u64>,
    warm: Vec<u64>,
    failures: usize,
}

async fn kith(params: &Params, mut rng: Rng, bar: &ProgressBar) -> anyhow::Result<KithMeasured> {
    let (_dir, cluster) = Cluster::temporary(Kind::Kith, "kith-bench-resolve-")?;
    let mut cluster = cluster;
    let result = async {
        cluster
            .grow_tree(params.nodes, params.populate_wait, &mut rng)
            .await?;
        let owner = cluster.kith(0).context("no kith node 0")?;
        bar.set_message("resolve: registering (proof of work)");
        let started = Instant::now();
        let registration = owner.register_name(NAME, None).await?;
        let register_ms = started.elapsed().as_secs_f64() * 1000.0;
        let n = cluster.len();
        let mut m = KithMeasured {
            register_ms,
            record_len: registration.record.to_bytes().len(),
            cold: Vec::new(),
            warm: Vec::new(),
            failures: 0,
        };
        let lookups = params.lookups.min(n - 1);
        for i in 1..=lookups {
            let node = cluster.kith(i).context("missing kith node")?;
            bar.set_message(format!("resolve: cold lookup from node {i}"));
            let started = Instant::now();
            match tokio::time::timeout(LOOKUP_TIMEOUT, node.resolve_name(NAME)).await {
                Ok(Ok(r)) if r.peer_id == owner.peer_id() && r.source == ResolvedFrom::Network => {
                    m.cold.push(micros(started.elapsed()))
                }
                _ => m.failures += 1,
            }
        }
        // Warm: what a user gets from `resolve_name` (the call behind `kith resolve` and every
        // send to a name) once the name is pinned; it must answer without the network.
        for i in 1..=lookups {
            let node = cluster.kith(i).context("missing kith node")?;
            bar.set_message(format!("resolve: warm lookups from node {i}"));
            for _ in 0..WARM_REPEATS {
                let started = Instant::now();
                match tokio::time::timeout(LOOKUP_TIMEOUT, node.resolve_name(NAME)).await {
                    Ok(Ok(r))
                        if r.peer_id == owner.peer_id() && r.source != ResolvedFrom::Network =>
                    {
                        m.warm.push(micros(started.elapsed()))
                    }
                    _ => m.failures += 1,
                }
            }
        }
        anyhow::Ok(m)
    }
    .await;
    cluster.shutdown().await;
    result
}

async fn raw(
    params: &Params,
    mut rng: Rng,
    value_len: usize,
    bar: &ProgressBar,
) -> anyhow::Result<(Vec<u64>, usize)> {
    let (_dir, cluster) = Cluster::temporary(Kind::Raw, "kith-bench-resolve-raw-")?;
    let mut cluster = cluster;
    let result = async {
        cluster
            .grow_tree(params.nodes, params.populate_wait, &mut rng)
            .await?;
        // The same keys kith uses, so both networks walk to the same points.
        let keys = Name::parse(NAME)?.replica_keys();
        let value = vec![7u8; value_len.max(1)];
        bar.set_message("resolve: raw put_record");
        let owner = cluster.raw(0).context("no raw node 0")?;
        for key in &keys {
            owner.put_record(key.clone(), value.clone()).await?;
        }
        let mut samples = Vec::new();
        let mut failures = 0;
        for i in 1..=params.lookups.min(cluster.len() - 1) {
            let node = cluster.raw(i).context("missing raw node")?;
            let started = Instant::now();
            let gets = futures::future::join_all(keys.iter().map(|k| node.get_record(k.clone())));
            match tokio::time::timeout(LOOKUP_TIMEOUT, gets).await {
                Ok(results) if results.iter().all(Result::is_ok) => {
                    samples.push(micros(started.elapsed()))
                }
                _ => failures += 1,
            }
        }
        anyhow::Ok((samples, failures))
    }
    .await;
    cluster.shutdown().await;
    result
}

/// Runs both scenarios from one network of each kind.
pub(crate) fn run(params: &Params, bar: &ProgressBar) -> Vec<Scenario> {
    let runtime = match super::dm::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            return vec![
                Scenario::unavailable("resolve.cold", "us", format!("{e:#}")),
                Scenario::unavailable("resolve.warm", "us", format!("{e:#}")),
            ];
        }
    };
    let seed = Rng::from_os();
    runtime.block_on(async {
        let k = kith(params, seed.clone(), bar).await;
        let value_len = k.as_ref().map(|m| m.record_len).unwrap_or(300);
        let r = raw(params, seed, value_len, bar).await;
        let mut notes = vec![format!(
            "{} nodes per network on loopback TCP, random-tree bootstrap; {} resolving nodes; cold: kith asks the name's {NAME_REPLICAS} replica keys at once, validates every answer (signature, proof of work, expiry) and stops each walk after 4 agreeing holders; warm: {WARM_REPEATS} resolve_name calls per node after the cold one, answered from the pin and the last lookup (no network call; the background re-check is not due yet); baseline: bare swarms, {NAME_REPLICAS} raw Kademlia get_records at once of a {value_len}-byte value under the same keys, each until 4 records (or the end of the walk)",
            params.nodes, params.lookups
        )];
        match &k {
            Ok(m) => notes.push(format!(
                "kith: register incl. proof of work {:.0} ms, {} lookups failed",
                m.register_ms, m.failures
            )),
            Err(e) => notes.push(format!("kith failed: {e:#}")),
        }
        match &r {
            Ok((_, failures)) => notes.push(format!("raw: {failures} lookups failed")),
            Err(e) => notes.push(format!("baseline failed: {e:#}")),
        }
        let notes = notes.join("; ");
        let base = r.as_ref().ok().and_then(|(s, _)| Figures::latency(s));
        let cold = k.as_ref().ok().and_then(|m| {
            Figures::latency(&m.cold).map(|f| f.with("register_ms", m.register_ms.round()))
        });
        let warm = k.as_ref().ok().and_then(|m| Figures::latency(&m.warm));
        vec![
            Scenario::measured("resolve.cold", "us", cold, base.clone(), notes.clone()),
            Scenario::measured("resolve.warm", "us", warm, base, notes),
        ]
    })
}

/// Upper bound on identities generated while grinding (tens per attacker node are expected).
const MAX_GRIND: usize = 200_000;

/// What the fresh resolutions of `resolve.sybil` got.
#[derive(Debug, Default)]
struct SybilMeasured {
    /// Resolved to the honest owner.
    honest: usize,
    /// A conflict naming both owners.
    conflict: usize,
    /// Resolved to the attacker: the failure the scenario exists to catch.
    attacker: usize,
    /// Errors or timeouts.
    failed: usize,
    /// How many of them the attacker won under the rule before replica keys.
    old_rule_attacker: usize,
    /// Old-rule lookups that produced an owner at all.
    old_rule_answered: usize,
    /// Answers for the owner's and for the attacker's claim when the owner walked all five keys
    /// to the end just before the resolutions (every holder): shows whether the honest claim
    /// was really in the network when the attack started.
    held: (usize, usize),
    /// Before the attack: (honest holders holding the owner's claim, honest holders), summed
    /// over the replica keys (honest nodes among each key's closest holders).
    settled: (usize, usize),
    /// Re-publications the owner needed before that.
    republished: usize,
    /// The same resolvers' full walks of the five keys decided with the density check:
    /// [honest owner, conflict, attacker].
    with_density: [usize; 3],
    /// The same answers decided without it (only each key's 20 closest holders count).
    without_density: [usize; 3],
    /// Latency of each kith resolution, us.
    samples: Vec<u64>,
}

impl SybilMeasured {
    fn total(&self) -> usize {
        self.honest + self.conflict + self.attacker + self.failed
    }
}

/// Identities closer to `key` (Kademlia's metric: SHA-256 of both, XOR) than every peer in
/// `honest` whose peer id `keep` accepts, closest first.
fn grind(
    key: &[u8],
    honest: &[PeerId],
    count: usize,
    keep: impl Fn(&PeerId) -> bool,
) -> anyhow::Result<Vec<Keypair>> {
    let target = KBucketKey::new(key.to_vec());
    let closest_honest = honest
        .iter()
        .map(|p| KBucketKey::from(*p).distance(&target))
        .min()
        .context("no honest node to grind against")?;
    let mut ground = Vec::with_capacity(count);
    for _ in 0..MAX_GRIND {
        if ground.len() == count {
            break;
        }
        let keypair = Keypair::generate_ed25519();
        let id = keypair.public().to_peer_id();
        if keep(&id) && KBucketKey::from(id).distance(&target) < closest_honest {
            ground.push(keypair);
        }
    }
    if ground.len() < count {
        anyhow::bail!(
            "{MAX_GRIND} identities gave only {} ground ids",
            ground.len()
        );
    }
    Ok(ground)
}

/// An honest node's identity: worked at `difficulty` (what `kith init` does in such a network).
fn identity(difficulty: u8) -> anyhow::Result<Keypair> {
    let bound = MAX_GRIND as u64 * 16;
    kith_core::id_work::grind(difficulty, Keypair::generate_ed25519, |n| {
        if n >= bound {
            std::ops::ControlFlow::Break(())
        } else {
            std::ops::ControlFlow::Continue(())
        }
    })
    .with_context(|| format!("no id worked at {difficulty} within {bound} identities"))
}

/// Longest wait for the owner's claim to reach the honest holders of every replica key.
const CLAIM_SETTLE: Duration = Duration::from_secs(90);

/// Indices (into `nodes`) of the `count` nodes closest to `key` in Kademlia's metric.
fn closest_nodes(key: &[u8], nodes: &[PeerId], count: usize) -> Vec<usize> {
    let target = KBucketKey::new(key.to_vec());
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.sort_by_key(|i| KBucketKey::from(nodes[*i]).distance(&target));
    order.truncate(count);
    order
}

/// How many of the listed holders hold `claim` in their own DHT store, and how many are listed.
async fn claim_at_holders(
    cluster: &Cluster,
    holders: &[(Vec<u8>, Vec<usize>)],
    claim: &[u8],
) -> (usize, usize) {
    let (mut held, mut expected) = (0, 0);
    for (key, nodes) in holders {
        for i in nodes {
            expected += 1;
            let Some(node) = cluster.kith(*i) else {
                continue;
            };
            // Quorum 1: a record in the node's own store answers first (holder `None`).
            if let Ok(Ok(result)) =
                tokio::time::timeout(LOOKUP_TIMEOUT, node.probe().get_record(key.clone(), 1)).await
                && result
                    .answers
                    .iter()
                    .any(|a| a.holder.is_none() && a.value == claim)
            {
                held += 1;
            }
        }
    }
    (held, expected)
}

/// The attacker's claim: registered on a node alone (so nobody refuses it), before the honest
/// owner's, so it is older and would win every tie.
async fn attacker_claim(dir: &std::path::Path) -> anyhow::Result<(PeerId, Vec<u8>)> {
    let mut alone = Cluster::new(
        Kind::Kith,
        NodeSettings { reduced: false },
        dir.to_path_buf(),
    );
    let result = async {
        alone.start_node(Vec::new()).await?;
        let thief = alone.kith(0).context("no attacker node")?;
        let claim = thief.register_name(NAME, None).await?;
        anyhow::Ok((thief.peer_id(), claim.record.to_bytes().to_vec()))
    }
    .await;
    alone.shutdown().await;
    result
}

/// One node's first resolution, and before it the old rule's answer from the same node.
async fn resolve_once(
    node: &kith_service::Node,
    owner: PeerId,
    attacker: PeerId,
    m: &mut SybilMeasured,
) {
    let first_key = match Name::parse(NAME) {
        Ok(name) => name.dht_key(),
        Err(_) => return,
    };
    if let Ok(Ok(raw)) =
        tokio::time::timeout(LOOKUP_TIMEOUT, node.probe().get_record(first_key, 4)).await
    {
        let rules = NameRules {
            difficulty: node.name_rules().difficulty,
            ..NameRules::default()
        };
        let now = kith_now_ms();
        let answers: Vec<select::Answer> = raw
            .answers
            .iter()
            .filter_map(|a| verified(a, &rules, now))
            .collect();
        if let Some(s) = select::select(&answers) {
            m.old_rule_answered += 1;
            if s.record.peer_id() == attacker {
                m.old_rule_attacker += 1;
            }
        }
    }
    let started = Instant::now();
    match tokio::time::timeout(LOOKUP_TIMEOUT, node.resolve_name(NAME)).await {
        Ok(Ok(r)) if r.peer_id == owner => {
            m.samples.push(micros(started.elapsed()));
            m.honest += 1;
        }
        Ok(Ok(r)) if r.peer_id == attacker => m.attacker += 1,
        Ok(Err(ServiceError::NameConflict { .. })) => {
            m.samples.push(micros(started.elapsed()));
            m.conflict += 1;
        }
        _ => m.failed += 1,
    }
    density_effect(node, owner, attacker, m).await;
}

/// What the density check changes: the same node walks all five keys to the end, and the answers
/// are decided with the density check (as resolutions do) and without it (only each key's 20
/// closest holders count).
async fn density_effect(
    node: &kith_service::Node,
    owner: PeerId,
    attacker: PeerId,
    m: &mut SybilMeasured,
) {
    let Ok(name) = Name::parse(NAME) else { return };
    let keys = name.replica_keys();
    let walks = futures::future::join_all(keys.iter().map(|k| {
        tokio::time::timeout(
            LOOKUP_TIMEOUT,
            node.probe().get_record(k.clone(), usize::MAX),
        )
    }))
    .await;
    let rules = NameRules {
        difficulty: node.name_rules().difficulty,
        ..NameRules::default()
    };
    let now = kith_now_ms();
    let mut table_estimate = None;
    let mut replicas = Vec::new();
    for walk in walks {
        let answers = match walk {
            Ok(Ok(result)) => {
                table_estimate = table_estimate.max(result.network_size);
                result.answers
            }
            _ => Vec::new(),
        };
        replicas.push(
            answers
                .iter()
                .filter_map(|a| verified(a, &rules, now))
                .collect::<Vec<_>>(),
        );
    }
    let holders: std::collections::HashSet<PeerId> =
        replicas.iter().flatten().filter_map(|a| a.holder).collect();
    let size = table_estimate
        .max(Some(holders.len() as u64 + 1))
        .map(|n| n as f64);
    let judge = |network_size: Option<f64>| {
        let admitted: Vec<Vec<select::Answer>> = keys
            .iter()
            .zip(replicas.iter().cloned())
            .map(|(key, answers)| select::admit(key, answers, network_size))
            .collect();
        match select::decide(&admitted, NAME_REPLICAS) {
            Some(select::Verdict::Owner { selected, .. }) if selected.record.peer_id() == owner => {
                Some(0)
            }
            Some(select::Verdict::Owner { selected, .. })
                if selected.record.peer_id() == attacker =>
            {
                Some(2)
            }
            Some(select::Verdict::Contested { .. }) => Some(1),
            _ => None,
        }
    };
    if let Some(i) = judge(size) {
        m.with_density[i] += 1;
    }
    if let Some(i) = judge(None) {
        m.without_density[i] += 1;
    }
}

fn kith_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

async fn sybil(
    params: &Params,
    difficulty: u8,
    mut rng: Rng,
    bar: &ProgressBar,
) -> anyhow::Result<SybilMeasured> {
    let dir = tempfile::Builder::new()
        .prefix("kith-bench-sybil-")
        .tempdir()?;
    bar.set_message("resolve.sybil: the attacker's claim (proof of work)");
    let (attacker, stolen) = attacker_claim(&dir.path().join("attacker")).await?;
    let network_dir = dir.path().join("network");
    std::fs::create_dir_all(&network_dir)?;
    let mut cluster = Cluster::new(Kind::Kith, NodeSettings { reduced: false }, network_dir)
        .with_peer_id_difficulty(difficulty);
    let result = async {
        let sybils = params.sybils.min(params.sybil_nodes.saturating_sub(2));
        let honest_n = params.sybil_nodes - sybils;
        let name = Name::parse(NAME)?;
        bar.set_message("resolve.sybil: honest nodes");
        for i in 0..honest_n {
            let bootstrap = if i == 0 {
                Vec::new()
            } else {
                cluster.addr(rng.below(i)).into_iter().collect()
            };
            cluster
                .start_kith_with_keypair(bootstrap, identity(difficulty)?)
                .await?;
        }
        bar.set_message("resolve.sybil: grinding attacker ids");
        let key = name.dht_key();
        let honest_ids = cluster.peer_ids();
        let keys = if difficulty == 0 {
            grind(&key, &honest_ids, sybils, |_| true)?
        } else {
            // One worked id (the attacker pays 2^d for it), the rest not worked.
            let worked = |id: &PeerId| kith_core::id_work::is_worked(id, difficulty);
            let mut keys = grind(&key, &honest_ids, 1, worked)?;
            keys.extend(grind(&key, &honest_ids, sybils.saturating_sub(1), |id| {
                !worked(id)
            })?);
            keys
        };
        for key in keys {
            let bootstrap = cluster.addr(rng.below(honest_n)).into_iter().collect();
            // Modified nodes: they ignore the network's difficulty.
            cluster.start_kith_at(bootstrap, key, 0).await?;
        }
        // The rest of the honest nodes join now, some of them through an attacker node.
        let n = cluster.len();
        for i in 0..n {
            let _ = cluster.bootstrap(i).await;
        }
        let target = (n - 1).min(10);
        let deadline = Instant::now() + params.populate_wait;
        while cluster.routing_summary().await?.0 < target && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }

        bar.set_message("resolve.sybil: honest owner registers");
        let owner = cluster.kith(0).context("no kith node 0")?;
        let owner_id = owner.peer_id();
        let registration = owner.register_name(NAME, None).await?;
        let claim = registration.record.to_bytes().to_vec();
        // "A name registered first by an honest owner": the registration is complete when the
        // honest nodes among each replica key's closest holders hold the owner's claim. Under
        // load a first publish can miss some; the owner re-publishes (what its re-publisher does)
        // until they all do, or the bound runs out (reported either way).
        bar.set_message("resolve.sybil: waiting for the owner's claim at its holders");
        let everyone = cluster.peer_ids();
        let holders: Vec<(Vec<u8>, Vec<usize>)> = name
            .replica_keys()
            .into_iter()
            .map(|key| {
                let closest = closest_nodes(&key, &everyone, kith_core::density::HOLDERS_PER_KEY);
                let honest: Vec<usize> = closest.into_iter().filter(|i| *i < honest_n).collect();
                (key, honest)
            })
            .collect();
        let deadline = Instant::now() + CLAIM_SETTLE;
        let mut m = SybilMeasured::default();
        loop {
            let (held, expected) = claim_at_holders(&cluster, &holders, &claim).await;
            m.settled = (held, expected);
            if held == expected || Instant::now() > deadline {
                break;
            }
            m.republished += 1;
            owner.republish_names().await?;
        }
        bar.set_message("resolve.sybil: attacker nodes serve their claim");
        for i in honest_n..n {
            let node = cluster.kith(i).context("missing attacker node")?;
            for key in name.replica_keys() {
                // The local store takes it; honest peers refuse it.
                let _ = tokio::time::timeout(
                    LOOKUP_TIMEOUT,
                    node.probe().put_record(key, stolen.clone()),
                )
                .await;
            }
        }

        for key in name.replica_keys() {
            if let Ok(Ok(all)) =
                tokio::time::timeout(LOOKUP_TIMEOUT, owner.probe().get_record(key, usize::MAX))
                    .await
            {
                for answer in all.answers {
                    if answer.value == stolen {
                        m.held.1 += 1;
                    } else {
                        m.held.0 += 1;
                    }
                }
            }
        }
        for i in 1..honest_n {
            bar.set_message(format!(
                "resolve.sybil: first resolution on honest node {i}"
            ));
            let node = cluster.kith(i).context("missing honest node")?;
            resolve_once(node, owner_id, attacker, &mut m).await;
        }
        for j in 0..params.sybil_joiners {
            bar.set_message(format!(
                "resolve.sybil: fresh node {j} via an attacker node"
            ));
            let through = honest_n + rng.below(sybils.max(1));
            let bootstrap = [cluster.addr(through), cluster.addr(rng.below(honest_n))]
                .into_iter()
                .flatten()
                .collect();
            cluster
                .start_kith_with_keypair(bootstrap, identity(difficulty)?)
                .await?;
            let joined = cluster.len() - 1;
            let deadline = Instant::now() + params.populate_wait;
            while cluster.routing_len(joined).await? < target && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let node = cluster.kith(joined).context("missing fresh node")?;
            resolve_once(node, owner_id, attacker, &mut m).await;
        }
        anyhow::Ok(m)
    }
    .await;
    cluster.shutdown().await;
    result
}

/// Runs `resolve.sybil`.
pub(crate) fn run_sybil(params: &Params, bar: &ProgressBar) -> Scenario {
    run_sybil_at("resolve.sybil", 0, params, bar)
}

/// Runs `resolve.sybil.costly`: the same attack in a network with a peer-id difficulty.
pub(crate) fn run_sybil_costly(params: &Params, bar: &ProgressBar) -> Scenario {
    run_sybil_at(
        "resolve.sybil.costly",
        params.sybil_difficulty.max(1),
        params,
        bar,
    )
}

fn run_sybil_at(
    scenario: &'static str,
    difficulty: u8,
    params: &Params,
    bar: &ProgressBar,
) -> Scenario {
    const UNIT: &str = "fraction";
    let runtime = match super::dm::runtime() {
        Ok(rt) => rt,
        Err(e) => return Scenario::unavailable(scenario, UNIT, format!("{e:#}")),
    };
    let result = runtime.block_on(sybil(params, difficulty, Rng::from_os(), bar));
    let sybils = params.sybils.min(params.sybil_nodes.saturating_sub(2));
    let costly = if difficulty == 0 {
        String::new()
    } else {
        format!(
            "; peer-id difficulty {difficulty}: honest ids worked, the attackers' not (but one, the attacker's worked referrer, also ground next to the key), every attacker node ignoring the difficulty (serving the DHT and admitting every id)"
        )
    };
    let setting = format!(
        "{} kith nodes on loopback TCP, {sybils} of them attackers with ids ground to be closer to the name's first key than any honest node, holding the attacker's older valid claim under all {NAME_REPLICAS} replica keys and joining through random honest nodes; every honest node but the owner resolves once, then {} fresh nodes bootstrapping from an attacker node and an honest one; correct = the honest owner or a conflict; baseline: the rule before replica keys (one key, stop at 4 agreeing holders), same nodes, just before each resolution{costly}",
        params.sybil_nodes, params.sybil_joiners
    );
    match result {
        Ok(m) => {
            let total = m.total().max(1) as f64;
            let correct = (m.honest + m.conflict) as f64 / total;
            let mut kith = Figures::default()
                .with("fraction", correct)
                .with("resolutions", m.total() as f64)
                .with("honest", m.honest as f64)
                .with("conflict", m.conflict as f64)
                .with("attacker", m.attacker as f64)
                .with("failed", m.failed as f64)
                .with("full_honest", m.with_density[0] as f64)
                .with("full_conflict", m.with_density[1] as f64)
                .with("full_attacker", m.with_density[2] as f64)
                .with("no_density_honest", m.without_density[0] as f64)
                .with("no_density_conflict", m.without_density[1] as f64)
                .with("no_density_attacker", m.without_density[2] as f64)
                .with("held_before_attack", m.settled.0 as f64)
                .with("holders_before_attack", m.settled.1 as f64);
            if let Some(lat) = Figures::latency(&m.samples) {
                kith = kith
                    .with("p50_us", lat.get("p50").unwrap_or(f64::NAN))
                    .with("p90_us", lat.get("p90").unwrap_or(f64::NAN));
            }
            let old_total = m.old_rule_answered.max(1) as f64;
            let baseline = Figures::default().with(
                "fraction",
                (m.old_rule_answered - m.old_rule_attacker) as f64 / old_total,
            );
            Scenario::measured(
                scenario,
                UNIT,
                Some(kith),
                Some(baseline),
                format!(
                    "{setting}; before the attack {} of the {} honest holders of the five keys held the owner's claim ({} re-publications); the old rule gave the attacker {} of {} lookups; before the resolutions the owner's full walks of the five keys got {} answers with its claim and {} with the attacker's; each resolver's full walks of the five keys decided with the density check gave honest/conflict/attacker {:?}, without it {:?}",
                    m.settled.0,
                    m.settled.1,
                    m.republished,
                    m.old_rule_attacker,
                    m.old_rule_answered,
                    m.held.0,
                    m.held.1,
                    m.with_density,
                    m.without_density
                ),
            )
        }
        Err(e) => Scenario::unavailable(scenario, UNIT, format!("{setting}; failed: {e:#}")),
    }
}

/// One DHT answer as the resolver's rule reads it: the holder and its record, if it verifies.
fn verified(a: &kith_net::RecordAnswer, rules: &NameRules, now: u64) -> Option<select::Answer> {
    NameRecord::verify(&a.value, rules, now)
        .ok()
        .map(|record| select::Answer {
            holder: a.holder,
            record,
        })
}
