//! `dm.first`: the first message to a name never seen before, in an in-process network of kith
//! nodes, beside a raw Kademlia get plus a raw request-response round trip in a network of bare
//! swarms of the same size and shape, measured in the same run.
//!
//! kith: every node registers a name of its own (a low proof-of-work difficulty, set for the
//! whole network through `Options::name_rules`: registration is not what is measured) and
//! publishes its key bundle. Then, for pairs of nodes taken in random order, each pair used once
//! in either direction (so neither side has resolved the other's name, fetched its key bundle or
//! holds an Olm session with it), the sender calls `send_text(<the other's name>)` and the clock
//! runs until it answers `Delivered`: resolve the name on the DHT (five replica walks, validated),
//! dial, fetch and verify the key bundle, open the Olm session and encrypt, store and flush on
//! both sides, and the ack. A send that answers `Queued` is a failure and not a sample.
//!
//! Baseline: every raw node puts one record (its peer id, padded to the size of a kith name
//! record) under a key of its own; for the same kind of pairs, the sender does one raw
//! `get_record` (stopping after 4 answers, as kith's walks do), reads the peer id from it and
//! sends one request-response round trip of the same payload size to that peer, dialing it with
//! the addresses Kademlia knows.
//!
//! Each network settles after its set-up (its process nearly idle, see [`settle`]) before the
//! first sample.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::ProgressBar;
use kith_core::NameRules;
use kith_net::PeerId;
use kith_service::MessageStatus;

use crate::{
    cluster::{Cluster, Kind, Rng},
    report::{Figures, Scenario, micros, percentile, round_to},
    scenarios::dm,
};

const NAME: &str = "dm.first";
const UNIT: &str = "ms";
/// Proof-of-work difficulty of the benchmark network's names (the main network's is 22): the
/// registrations are set-up, not the measured path.
const DIFFICULTY: u8 = 8;
/// Upper bound on one first send (resolution, bundle fetch, delivery).
const SEND_TIMEOUT: Duration = Duration::from_secs(40);
/// Upper bound on all the samples of one side.
const BUDGET: Duration = Duration::from_secs(600);

/// Sizes of the scenario.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    /// Nodes in each network.
    pub(crate) nodes: usize,
    /// First messages measured (each a pair of nodes used once).
    pub(crate) samples: usize,
    /// Upper bound on waiting for routing tables to fill.
    pub(crate) populate_wait: Duration,
}

impl Params {
    /// Full-run (20 nodes, 100 first messages) or `--quick` defaults.
    pub(crate) fn new(quick: bool) -> Self {
        if quick {
            Self {
                nodes: 6,
                samples: 5,
                populate_wait: Duration::from_secs(10),
            }
        } else {
            Self {
                nodes: 20,
                samples: 100,
                populate_wait: Duration::from_secs(30),
            }
        }
    }
}

/// The name node `i` registers.
fn name_of(i: usize) -> String {
    format!("first-node-{i}")
}

/// Pairs of distinct nodes in random order, each unordered pair once, in a random direction:
/// (sender, recipient).
fn pairs(nodes: usize, rng: &mut Rng) -> Vec<(usize, usize)> {
    let mut all = Vec::new();
    for a in 0..nodes {
        for b in a + 1..nodes {
            all.push(if rng.below(2) == 0 { (a, b) } else { (b, a) });
        }
    }
    // Fisher-Yates.
    for i in (1..all.len()).rev() {
        all.swap(i, rng.below(i + 1));
    }
    all
}

/// Up to `samples` numbered (sender, recipient) pairs, while [`BUDGET`] from the first has not
/// passed.
fn budgeted_pairs(
    n: usize,
    rng: &mut Rng,
    samples: usize,
) -> impl Iterator<Item = (usize, (usize, usize))> + use<> {
    let deadline = Instant::now() + BUDGET;
    pairs(n, rng)
        .into_iter()
        .take(samples)
        .enumerate()
        .take_while(move |_| Instant::now() <= deadline)
}

/// What the kith side measured.
struct KithMeasured {
    samples: Vec<u64>,
    /// Sends that answered `Queued` or failed, with the first reason.
    failures: usize,
    first_failure: Option<String>,
    /// Samples whose sender already had a connection to the recipient (a DHT walk had opened
    /// one), so no dial was needed.
    connected_before: usize,
    /// Size of a name record, for the baseline's value.
    record_len: usize,
    /// Registering every name and publishing every key bundle (set-up, not measured).
    setup_ms: f64,
    /// Waiting for the network to settle after the set-up ([`settle`]).
    settle_ms: f64,
}

/// The share of one core this process may use and still count as settled.
const SETTLED_CORES: f64 = 0.05;
/// How long [`settle`] watches the process's CPU time per look.
const SETTLE_WINDOW: Duration = Duration::from_millis(500);
/// Upper bound on waiting for the network to settle.
const SETTLE_LIMIT: Duration = Duration::from_secs(20);

/// Waits until this process (the whole in-process network) has been nearly idle for one
/// [`SETTLE_WINDOW`], at most [`SETTLE_LIMIT`]; the milliseconds waited. The set-up's records
/// travel on for a few seconds after their puts answer (replication to every holder, kad's
/// caching, routing-table refreshes): about half a core for the first two seconds after 20
/// registrations, measured. A first message sent meanwhile competes with that work for the two
/// cores, which is not what a first message in a running network meets. Both networks settle
/// the same way before their samples.
async fn settle() -> f64 {
    let started = Instant::now();
    let pid = std::process::id();
    while started.elapsed() < SETTLE_LIMIT {
        let (Some(before), at) = (crate::process::cpu_seconds(pid), Instant::now()) else {
            break;
        };
        tokio::time::sleep(SETTLE_WINDOW).await;
        let Some(after) = crate::process::cpu_seconds(pid) else {
            break;
        };
        if after - before <= SETTLED_CORES * at.elapsed().as_secs_f64() {
            break;
        }
    }
    started.elapsed().as_secs_f64() * 1000.0
}

async fn kith(params: &Params, mut rng: Rng, bar: &ProgressBar) -> anyhow::Result<KithMeasured> {
    let options = kith_service::Options {
        name_rules: NameRules {
            difficulty: DIFFICULTY,
            ..NameRules::default()
        },
        ..dm::options()
    };
    let (_dir, cluster) = Cluster::temporary(Kind::Kith, "kith-bench-first-")?;
    let mut cluster = cluster.with_options(options);
    let result = async {
        bar.set_message(format!("{NAME}: starting {} kith nodes", params.nodes));
        cluster
            .grow_tree(params.nodes, params.populate_wait, &mut rng)
            .await?;
        let n = cluster.len();
        bar.set_message(format!("{NAME}: registering {n} names"));
        let started = Instant::now();
        let registrations = (0..n).map(|i| {
            let node = cluster.kith(i);
            async move {
                let node = node.context("missing kith node")?;
                let registration = node
                    .register_name(&name_of(i), None)
                    .await
                    .with_context(|| format!("node {i} cannot register {}", name_of(i)))?;
                // The republisher published the bundle right after start, maybe with no peers
                // yet; once more now that the routing table is full.
                node.publish_key_bundle().await?;
                anyhow::Ok(registration.record.to_bytes().len())
            }
        });
        let mut record_len = 0;
        for result in futures::future::join_all(registrations).await {
            record_len = record_len.max(result?);
        }
        let setup_ms = started.elapsed().as_secs_f64() * 1000.0;
        let peer_ids = cluster.peer_ids();
        bar.set_message(format!("{NAME}: waiting for the kith network to settle"));
        let settle_ms = settle().await;
        let mut m = KithMeasured {
            samples: Vec::new(),
            failures: 0,
            first_failure: None,
            connected_before: 0,
            record_len,
            setup_ms,
            settle_ms,
        };
        for (k, (from, to)) in budgeted_pairs(n, &mut rng, params.samples) {
            bar.set_message(format!("{NAME}: kith first message {k}"));
            let sender = cluster.kith(from).context("missing kith node")?;
            let recipient = peer_ids[to];
            if sender.peers().await?.iter().any(|p| p.peer_id == recipient) {
                m.connected_before += 1;
            }
            let text = dm::text("first", k);
            let started = Instant::now();
            let outcome =
                tokio::time::timeout(SEND_TIMEOUT, sender.send_text(&name_of(to), &text)).await;
            let failure = match outcome {
                Ok(Ok(sent)) if sent.peer != recipient => {
                    Some(format!("{} resolved to the wrong peer", name_of(to)))
                }
                Ok(Ok(sent)) if sent.status == MessageStatus::Delivered => {
                    m.samples.push(micros(started.elapsed()));
                    None
                }
                Ok(Ok(_)) => Some("a first message was queued, not delivered".to_owned()),
                Ok(Err(e)) => Some(format!("send failed: {e}")),
                Err(_) => Some(format!("send took over {} s", SEND_TIMEOUT.as_secs())),
            };
            if let Some(failure) = failure {
                m.failures += 1;
                m.first_failure.get_or_insert(failure);
            }
        }
        anyhow::Ok(m)
    }
    .await;
    cluster.shutdown().await;
    result
}

/// The record key raw node `i` puts its peer id under.
fn raw_key(i: usize) -> Vec<u8> {
    blake3::hash(format!("kith-bench/first/{i}").as_bytes())
        .as_bytes()
        .to_vec()
}

/// Raw samples, the number of failed pairs with the first reason, and the milliseconds waited
/// for the network to settle.
async fn raw(
    params: &Params,
    mut rng: Rng,
    value_len: usize,
    bar: &ProgressBar,
) -> anyhow::Result<(Vec<u64>, usize, Option<String>, f64)> {
    let (_dir, cluster) = Cluster::temporary(Kind::Raw, "kith-bench-first-raw-")?;
    let mut cluster = cluster.with_request_response();
    let result = async {
        bar.set_message(format!("{NAME}: starting {} raw nodes", params.nodes));
        cluster
            .grow_tree(params.nodes, params.populate_wait, &mut rng)
            .await?;
        let n = cluster.len();
        let peer_ids = cluster.peer_ids();
        bar.set_message(format!("{NAME}: raw put_record"));
        for (i, peer) in peer_ids.iter().enumerate() {
            // The peer id, length-prefixed, padded to a name record's size.
            let id = peer.to_bytes();
            let mut value = Vec::with_capacity(value_len.max(id.len() + 1));
            value.push(u8::try_from(id.len()).context("peer id too long")?);
            value.extend_from_slice(&id);
            value.resize(value_len.max(value.len()), 0);
            let node = cluster.raw(i).context("missing raw node")?;
            node.put_record(raw_key(i), value).await?;
        }
        let body = dm::text("first", 0).into_bytes();
        bar.set_message(format!("{NAME}: waiting for the raw network to settle"));
        let settle_ms = settle().await;
        let (mut samples, mut failures, mut first_failure) = (Vec::new(), 0, None);
        for (k, (from, to)) in budgeted_pairs(n, &mut rng, params.samples) {
            bar.set_message(format!("{NAME}: raw get + round trip {k}"));
            let sender = cluster.raw(from).context("missing raw node")?;
            let started = Instant::now();
            let attempt = async {
                let value = sender.get_record(raw_key(to)).await?;
                // The walk may end with fewer than 4 answers and no value in hand (see
                // `RawNode::get_record`); the key still names node `to`.
                let peer = match value.split_first() {
                    Some((len, rest)) => PeerId::from_bytes(
                        rest.get(..usize::from(*len))
                            .context("record value is truncated")?,
                    )?,
                    None => peer_ids[to],
                };
                if let Err(first) = sender.request(peer, body.clone()).await {
                    // No address known yet: a walk to the peer finds it (kith does the same
                    // when its address book has none), then once more.
                    let _ = sender.get_closest_peers(peer).await;
                    sender
                        .request(peer, body.clone())
                        .await
                        .with_context(|| format!("after {first:#}"))?;
                }
                anyhow::Ok(())
            };
            match tokio::time::timeout(SEND_TIMEOUT, attempt).await {
                Ok(Ok(())) => samples.push(micros(started.elapsed())),
                Ok(Err(e)) => {
                    failures += 1;
                    first_failure.get_or_insert(format!("{e:#}"));
                }
                Err(_) => {
                    failures += 1;
                    first_failure.get_or_insert("timed out".to_owned());
                }
            }
        }
        anyhow::Ok((samples, failures, first_failure, settle_ms))
    }
    .await;
    cluster.shutdown().await;
    result
}

/// p50 and p99 of microsecond samples, in milliseconds (two decimals).
fn figures(samples: &[u64]) -> Option<Figures> {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let ms = |p| percentile(&sorted, p).map(|us| round_to(us as f64 / 1000.0, 2));
    Some(
        Figures::default()
            .with("p50", ms(50.0)?)
            .with("p99", ms(99.0)?),
    )
}

/// Runs the scenario: the kith network first, then the raw one.
pub(crate) fn run(params: &Params, bar: &ProgressBar) -> Scenario {
    super::on_runtime(NAME, UNIT, async |seed| {
        let k = kith(params, seed.clone(), bar).await;
        let value_len = k.as_ref().map(|m| m.record_len).unwrap_or(300);
        let r = raw(params, seed, value_len, bar).await;
        let mut notes = vec![format!(
            "{} nodes per network on loopback TCP, random-tree bootstrap; {} first messages, each between a pair of nodes used once (never resolved, no key bundle fetched, no Olm session); kith: send_text to the recipient's name until it answers Delivered (resolve on the DHT: 5 replica walks, validated; dial; key bundle fetch + verify; Olm session + encrypt; store + flush at both ends; ack), names registered at proof-of-work difficulty {DIFFICULTY} beforehand (not timed); baseline: bare swarms, one raw Kademlia get_record (stop at 4 answers) of a {value_len}-byte value holding the peer id, then one {}-byte request-response round trip to that peer (dialed with Kademlia's addresses)",
            params.nodes,
            params.samples,
            dm::PAYLOAD
        )];
        match &k {
            Ok(m) => {
                notes.push(format!(
                    "kith: {} samples, {} failed{}; {} of the senders were already connected to the recipient (no dial); set-up (register {} names + publish bundles) {:.0} ms, then settled for {:.0} ms before the samples",
                    m.samples.len(),
                    m.failures,
                    m.first_failure
                        .as_deref()
                        .map(|f| format!(" (first: {f})"))
                        .unwrap_or_default(),
                    m.connected_before,
                    params.nodes,
                    m.setup_ms,
                    m.settle_ms
                ));
            }
            Err(e) => notes.push(format!("kith failed: {e:#}")),
        }
        match &r {
            Ok((samples, failures, first, settle_ms)) => notes.push(format!(
                "raw: {} samples, {failures} failed{}; settled for {settle_ms:.0} ms before the samples",
                samples.len(),
                first
                    .as_deref()
                    .map(|f| format!(" (first: {f})"))
                    .unwrap_or_default()
            )),
            Err(e) => notes.push(format!("baseline failed: {e:#}")),
        }
        Scenario::measured(
            NAME,
            UNIT,
            k.as_ref().ok().and_then(|m| figures(&m.samples)),
            r.as_ref().ok().and_then(|(s, _, _, _)| figures(s)),
            notes.join("; "),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_use_each_couple_once() {
        let mut rng = Rng::from_os();
        let all = pairs(20, &mut rng);
        assert_eq!(all.len(), 190);
        let mut couples: Vec<(usize, usize)> =
            all.iter().map(|&(a, b)| (a.min(b), a.max(b))).collect();
        couples.sort_unstable();
        couples.dedup();
        assert_eq!(couples.len(), 190);
        assert!(all.iter().all(|&(a, b)| a != b && a < 20 && b < 20));
    }

    #[test]
    fn names_are_valid() {
        for i in [0, 7, 19] {
            kith_core::Name::parse(&name_of(i)).unwrap();
        }
    }

    #[test]
    fn figures_are_milliseconds() {
        let f = figures(&[1_000, 2_000, 3_000, 150_000]).unwrap();
        assert_eq!(f.get("p50"), Some(2.0));
        assert_eq!(f.get("p99"), Some(150.0));
        assert!(figures(&[]).is_none());
    }
}
