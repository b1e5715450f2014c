//! `resolve.cold` and `resolve.warm`: name resolution in an in-process network of kith nodes,
//! beside a raw Kademlia `get_record` of a value of the same size in a network of bare swarms of
//! the same size and shape, measured in the same run.
//!
//! kith: node 0 registers a name (proof of work at the main network's difficulty, timed as
//! `register_ms`), then other nodes resolve it: the first time is cold (nothing pinned), the second
//! warm (pinned; kith still asks the DHT so a changed key is noticed). kith validates every answer
//! and stops after 4 agreeing holders or the end of the walk; the raw baseline stops after 4
//! records too, unvalidated.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::ProgressBar;

use crate::{
    cluster::{Cluster, Kind, NodeSettings, Rng},
    report::{Figures, Scenario},
};

const NAME: &str = "bench-name";
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(35);

/// Sizes of the scenarios.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    /// Nodes in each network.
    pub(crate) nodes: usize,
    /// Resolving nodes (each resolves cold once, then warm once).
    pub(crate) lookups: usize,
    /// Upper bound on waiting for routing tables to fill.
    pub(crate) populate_wait: Duration,
}

impl Params {
    /// Full-run or `--quick` defaults.
    pub(crate) fn new(quick: bool) -> Self {
        if quick {
            Self {
                nodes: 8,
                lookups: 7,
                populate_wait: Duration::from_secs(10),
            }
        } else {
            Self {
                nodes: 50,
                lookups: 49,
                populate_wait: Duration::from_secs(30),
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

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

async fn grow(cluster: &mut Cluster, params: &Params, rng: &mut Rng) -> anyhow::Result<()> {
    let n = params.nodes.max(2);
    for i in 0..n {
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
    for i in 0..n {
        let _ = cluster.bootstrap(i).await;
    }
    let target = (n - 1).min(10);
    let deadline = Instant::now() + params.populate_wait;
    while cluster.routing_summary().await?.0 < target && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

async fn kith(params: &Params, mut rng: Rng, bar: &ProgressBar) -> anyhow::Result<KithMeasured> {
    let dir = tempfile::Builder::new()
        .prefix("kith-bench-resolve-")
        .tempdir()?;
    let mut cluster = Cluster::new(
        Kind::Kith,
        NodeSettings { reduced: false },
        dir.path().to_path_buf(),
    );
    let result = async {
        grow(&mut cluster, params, &mut rng).await?;
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
        for pass in 0..2 {
            for i in 1..=params.lookups.min(n - 1) {
                let node = cluster.kith(i).context("missing kith node")?;
                bar.set_message(format!(
                    "resolve: {} lookup from node {i}",
                    if pass == 0 { "cold" } else { "warm" }
                ));
                let started = Instant::now();
                match tokio::time::timeout(LOOKUP_TIMEOUT, node.resolve_name(NAME)).await {
                    Ok(Ok(r)) if r.record.peer_id() == owner.peer_id() => {
                        let sample = micros(started.elapsed());
                        if pass == 0 {
                            m.cold.push(sample)
                        } else {
                            m.warm.push(sample)
                        }
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
    let dir = tempfile::Builder::new()
        .prefix("kith-bench-resolve-raw-")
        .tempdir()?;
    let mut cluster = Cluster::new(
        Kind::Raw,
        NodeSettings { reduced: false },
        dir.path().to_path_buf(),
    );
    let result = async {
        grow(&mut cluster, params, &mut rng).await?;
        let key = blake3::hash(format!("kith/name/v1/{NAME}").as_bytes())
            .as_bytes()
            .to_vec();
        let value = vec![7u8; value_len.max(1)];
        bar.set_message("resolve: raw put_record");
        cluster
            .raw(0)
            .context("no raw node 0")?
            .put_record(key.clone(), value)
            .await?;
        let mut samples = Vec::new();
        let mut failures = 0;
        for i in 1..=params.lookups.min(cluster.len() - 1) {
            let node = cluster.raw(i).context("missing raw node")?;
            let started = Instant::now();
            match tokio::time::timeout(LOOKUP_TIMEOUT, node.get_record(key.clone())).await {
                Ok(Ok(_)) => samples.push(micros(started.elapsed())),
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return vec![
                Scenario::unavailable("resolve.cold", "us", format!("no async runtime: {e}")),
                Scenario::unavailable("resolve.warm", "us", format!("no async runtime: {e}")),
            ];
        }
    };
    let seed = Rng::from_os();
    runtime.block_on(async {
        let k = kith(params, seed.clone(), bar).await;
        let value_len = k.as_ref().map(|m| m.record_len).unwrap_or(300);
        let r = raw(params, seed, value_len, bar).await;
        let mut notes = vec![format!(
            "{} nodes per network on loopback TCP, random-tree bootstrap; {} resolving nodes; kith validates every answer (signature, proof of work, expiry) and stops after 4 agreeing holders; baseline: bare swarms, raw Kademlia get_record of a {value_len}-byte value until 4 records (or the end of the walk)",
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
