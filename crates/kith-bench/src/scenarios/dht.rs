//! `dht.closest`: how long a Kademlia `get_closest_peers` walk takes in an in-process network of
//! kith nodes, beside the same walk in a network of bare libp2p swarms.
//!
//! Both networks are built the same way, from the same seed: node 0 first, then every node
//! bootstraps from one random earlier node (a random tree rooted at node 0). Once every routing
//! table holds at least a few peers (bounded wait), a few untimed warm-up walks run, then the timed
//! walks: each from a random node to a random key, one at a time.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::ProgressBar;
use kith_net::PeerId;

use crate::{
    cluster::{Cluster, Kind, Rng},
    report::{Figures, Scenario},
};

const NAME: &str = "dht.closest";
const UNIT: &str = "us";
/// Upper bound for one walk; above kith's 30 s query timeout.
const WALK_TIMEOUT: Duration = Duration::from_secs(35);
/// Untimed walks before the timed ones.
const WARM_UP: usize = 5;

/// Sizes of the scenario.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    /// Nodes in each network.
    pub(crate) nodes: usize,
    /// Timed walks in each network.
    pub(crate) queries: usize,
    /// Upper bound on waiting for routing tables to fill.
    pub(crate) populate_wait: Duration,
    /// Upper bound on the timed walks of one network.
    pub(crate) walk_budget: Duration,
}

impl Params {
    /// Full-run or `--quick` defaults.
    pub(crate) fn new(quick: bool) -> Self {
        if quick {
            Self {
                nodes: 8,
                queries: 20,
                populate_wait: Duration::from_secs(10),
                walk_budget: Duration::from_secs(20),
            }
        } else {
            Self {
                nodes: 50,
                queries: 200,
                populate_wait: Duration::from_secs(30),
                walk_budget: Duration::from_secs(120),
            }
        }
    }
}

/// What one network yielded.
struct Measured {
    samples: Vec<u64>,
    failures: usize,
    routing_min: usize,
    routing_mean: f64,
}

impl Measured {
    fn describe(&self, kind: Kind) -> String {
        format!(
            "{}: {} timed walks, {} failed, routing tables min {} mean {:.1}",
            kind.as_str(),
            self.samples.len() + self.failures,
            self.failures,
            self.routing_min,
            self.routing_mean
        )
    }
}

/// Runs the scenario on a runtime of its own (dropped afterwards with every leftover task).
pub(crate) fn run(params: &Params, bar: &ProgressBar) -> Scenario {
    super::on_runtime(NAME, UNIT, async |seed| {
        let kith = measure(Kind::Kith, params, seed.clone(), bar).await;
        let raw = measure(Kind::Raw, params, seed, bar).await;
        let setup = format!(
            "{} nodes per network on loopback TCP, random-tree bootstrap from node 0; {} warm-up then up to {} sequential walks to random keys from random nodes",
            params.nodes, WARM_UP, params.queries
        );
        let mut notes = vec![setup];
        let kith_figures = match &kith {
            Ok(m) => {
                notes.push(m.describe(Kind::Kith));
                Figures::latency(&m.samples)
            }
            Err(e) => {
                notes.push(format!("kith failed: {e:#}"));
                None
            }
        };
        let raw_figures = match &raw {
            Ok(m) => {
                notes.push(m.describe(Kind::Raw));
                Figures::latency(&m.samples)
            }
            Err(e) => {
                notes.push(format!("raw baseline failed: {e:#}"));
                None
            }
        };
        notes.push(
            "baseline: bare libp2p swarms (identify + Kademlia Mode::Server, MemoryStore, /kith/bench/kad/1.0.0, same timeouts, same actor shape); failed walks are excluded from the percentiles"
                .to_owned(),
        );
        Scenario::measured(NAME, UNIT, kith_figures, raw_figures, notes.join("; "))
    })
}

async fn measure(
    kind: Kind,
    params: &Params,
    rng: Rng,
    bar: &ProgressBar,
) -> anyhow::Result<Measured> {
    let (dir, cluster) = Cluster::temporary(kind, "kith-bench-dht-")?;
    let mut cluster = cluster;
    let result = measure_in(&mut cluster, params, rng, bar).await;
    cluster.shutdown().await;
    drop(dir);
    result
}

async fn measure_in(
    cluster: &mut Cluster,
    params: &Params,
    mut rng: Rng,
    bar: &ProgressBar,
) -> anyhow::Result<Measured> {
    let kind = cluster.kind().as_str();
    let n = params.nodes.max(2);
    for i in 0..n {
        bar.set_message(format!("{NAME}: starting {kind} node {}/{n}", i + 1));
        let bootstrap = if i == 0 {
            Vec::new()
        } else {
            cluster.addr(rng.below(i)).into_iter().collect()
        };
        cluster
            .start_node(bootstrap)
            .await
            .with_context(|| format!("starting node {i}"))?;
    }

    // Populate: one more bootstrap each, then wait (bounded) for every table to hold a few peers.
    bar.set_message(format!("{NAME}: filling {kind} routing tables"));
    for i in 0..n {
        let _ = cluster.bootstrap(i).await;
    }
    let target = (n - 1).min(10);
    let deadline = Instant::now() + params.populate_wait;
    let (mut routing_min, mut routing_mean) = cluster.routing_summary().await?;
    while routing_min < target && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        (routing_min, routing_mean) = cluster.routing_summary().await?;
    }

    for _ in 0..WARM_UP.min(params.queries) {
        let origin = rng.below(n);
        let _ = tokio::time::timeout(WALK_TIMEOUT, cluster.closest(origin, PeerId::random())).await;
    }

    let mut samples = Vec::with_capacity(params.queries);
    let mut failures = 0;
    let budget = Instant::now() + params.walk_budget;
    for q in 0..params.queries {
        if Instant::now() > budget {
            break;
        }
        if q % 10 == 0 {
            bar.set_message(format!("{NAME}: {kind} walk {}/{}", q + 1, params.queries));
        }
        let origin = rng.below(n);
        let key = PeerId::random();
        let started = Instant::now();
        match tokio::time::timeout(WALK_TIMEOUT, cluster.closest(origin, key)).await {
            Ok(Ok(peers)) if !peers.is_empty() => {
                samples.push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
            }
            _ => failures += 1,
        }
    }
    Ok(Measured {
        samples,
        failures,
        routing_min,
        routing_mean,
    })
}
