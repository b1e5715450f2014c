//! `scale`: the largest in-process network this machine holds within a time budget.
//!
//! Each network grows in a process of its own (this binary re-executed as the hidden
//! `__scale-worker`), so its RSS and file descriptors are its own and everything is released when
//! it exits. The worker starts nodes one by one, each bootstrapping from up to three random earlier
//! nodes, and stops growing at the target, the time budget, 85% of the file-descriptor limit or the
//! memory cap, whichever comes first. After a short settle it reads its RSS, samples routing
//! tables and counts every node's connections, then runs `get_closest_peers` walks from random
//! nodes to random keys (how many found at least one peer, how many the true closest node). Then
//! the network is used while it changes ([`super::scale_live`]): with `--churn PCT`, PCT% of the
//! nodes leave and fresh ones join per minute while random nodes register names and others resolve
//! them, and while one group of random members (kith only) exchanges messages. kith runs first,
//! then the raw baseline with the same target and budget.
//!
//! kith nodes start with [`kith_options`]: nothing is re-published on a timer (no key bundle,
//! mailbox pointer or name put per join; the group's members publish their key bundles when the
//! group is set up), and names take an 8-bit proof of work.
//!
//! Worker protocol: one JSON object per stdout line, [`WorkerLine`].

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures::StreamExt as _;
use indicatif::ProgressBar;
use kith_net::PeerId;
use kith_service::Options;
use serde::{Deserialize, Serialize};

use super::scale_live::{self, ChurnResult, GroupResult, Live, NamesResult};
use crate::{
    cluster::{self, Cluster, Kind, Member, NodeSettings, Rng, Transport},
    machine,
    process::ChildProcess,
    report::{self, Figures, Scenario},
};

const NAME: &str = "scale";
const UNIT: &str = "nodes";
/// Walks in flight at once.
const WALK_CONCURRENCY: usize = 4;
/// Upper bound for one walk (the reduced query timeout is 20 s).
const WALK_TIMEOUT: Duration = Duration::from_secs(25);
/// Longest pause in growth waiting for idle connections to close.
const FD_WAIT: Duration = Duration::from_secs(30);
/// Nodes whose routing table size is sampled.
const ROUTING_SAMPLE: usize = 100;
/// Upper bound on sampling routing tables.
const ROUTING_BUDGET: Duration = Duration::from_secs(30);
/// Upper bound on counting every node's connections.
const CONNS_BUDGET: Duration = Duration::from_secs(60);
/// The full run's [`Params::rest`]: long enough for the joins' own Kademlia bootstraps (one or two
/// per node, 12-17 s each on a loaded 2-core machine at 100 nodes) to end and their connections to
/// pass the scale nodes' idle close ([`kith_testkit::SCALE_QUERY_TIMEOUT`], 20 s). A 30 s rest
/// counted those bootstraps' connections as churn at rest (BENCHMARKS.md, "The churn at rest was
/// the joins' own bootstraps").
const REST: Duration = Duration::from_secs(90);
/// Connection counts asked at once.
const CONNS_CONCURRENCY: usize = 16;
/// Shortest time between two joins.
const JOIN_INTERVAL: Duration = Duration::from_millis(50);
/// Joins awaited at once while the network grows.
const JOINS_IN_FLIGHT: usize = 16;
/// Bootstrap entries per new node.
const BOOTSTRAP_FANOUT: usize = 3;
/// Proof-of-work difficulty of names in `scale` (the main network's would spend minutes of CPU
/// per registration on a machine already running a thousand nodes).
pub(crate) const SCALE_NAME_DIFFICULTY: u8 = 8;

/// Service options of kith nodes in `scale` (tests/it/scale.rs uses the same):
/// [`kith_testkit::scale_options`] with [`SCALE_NAME_DIFFICULTY`].
pub(crate) fn kith_options() -> Options {
    kith_testkit::scale_options(SCALE_NAME_DIFFICULTY)
}

/// Sizes of the scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Params {
    /// Target network size.
    pub(crate) nodes: usize,
    /// Upper bound on growing one network.
    pub(crate) budget: Duration,
    /// Pause between the last node and the first connection count.
    pub(crate) settle: Duration,
    /// A further pause, longer than the connection manager's grace period, after which the
    /// connections are counted again (0: no second count): the first count still sees the
    /// young connections of the last joins, which the manager may not trim yet.
    #[serde(default)]
    pub(crate) rest: Duration,
    /// Walks per network.
    pub(crate) walks: usize,
    /// Upper bound on the walks of one network.
    pub(crate) walk_budget: Duration,
    /// Names registered, each by a different random node.
    pub(crate) names: usize,
    /// Resolutions of those names from random other nodes.
    pub(crate) resolutions: usize,
    /// Upper bound on registering and resolving.
    pub(crate) resolve_budget: Duration,
    /// Members of the group (kith only).
    pub(crate) group_members: usize,
    /// Measured group messages.
    pub(crate) group_messages: usize,
    /// Upper bound on the group phase (setup, messages, the wait for late deliveries).
    pub(crate) group_budget: Duration,
    /// Percent of the nodes that leave (and as many that join) per minute during the names and
    /// group phases; 0: no churn.
    pub(crate) churn_pct: f64,
    /// What every node, kith and raw, listens on and dials.
    #[serde(default)]
    pub(crate) transport: Transport,
}

impl Params {
    /// Full-run or `--quick` defaults.
    pub(crate) fn new(quick: bool) -> Self {
        if quick {
            Self {
                nodes: 20,
                budget: Duration::from_secs(20),
                settle: Duration::from_secs(2),
                rest: Duration::ZERO,
                walks: 20,
                walk_budget: Duration::from_secs(15),
                names: 4,
                resolutions: 20,
                resolve_budget: Duration::from_secs(60),
                group_members: 5,
                group_messages: 10,
                group_budget: Duration::from_secs(120),
                churn_pct: 0.0,
                transport: Transport::Tcp,
            }
        } else {
            Self {
                nodes: 1000,
                budget: Duration::from_secs(240),
                settle: Duration::from_secs(10),
                rest: REST,
                walks: 200,
                walk_budget: Duration::from_secs(60),
                names: 20,
                resolutions: 200,
                resolve_budget: Duration::from_secs(240),
                group_members: 20,
                group_messages: 50,
                group_budget: Duration::from_secs(300),
                churn_pct: 0.0,
                transport: Transport::Tcp,
            }
        }
    }

    /// The longest a worker may take before it is killed.
    fn worker_deadline(&self) -> Duration {
        self.budget
            + self.settle
            + self.rest
            + CONNS_BUDGET
            + self.walk_budget
            + ROUTING_BUDGET
            + CONNS_BUDGET
            + self.resolve_budget
            + self.group_budget
            + Duration::from_secs(180)
    }
}

/// One line of worker output.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum WorkerLine {
    /// Progress while growing, walking, resolving or messaging.
    Progress {
        /// `grow`, `walk`, `resolve` or `group`.
        phase: String,
        /// Done so far.
        done: usize,
        /// Target.
        of: usize,
    },
    /// The final result.
    Result(Box<WorkerResult>),
}

/// What one worker measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct WorkerResult {
    /// Nodes running at the end of growth.
    pub(crate) nodes: usize,
    /// Why growth stopped.
    pub(crate) stop_reason: String,
    /// Seconds spent starting the nodes.
    pub(crate) start_secs: f64,
    /// Process RSS with every node running, MiB.
    pub(crate) rss_mb: f64,
    /// Open file descriptors with every node running.
    pub(crate) fds: usize,
    /// What those descriptors were.
    #[serde(default)]
    pub(crate) fd_kinds: FdKinds,
    /// The soft file-descriptor limit after raising it.
    pub(crate) fd_limit: u64,
    /// Smallest routing table.
    pub(crate) routing_min: usize,
    /// Mean routing table size.
    pub(crate) routing_mean: f64,
    /// Nodes whose connections were counted.
    pub(crate) conns_counted: usize,
    /// Median open connections per node after the settle.
    pub(crate) conns_median: f64,
    /// Most open connections of one node after the settle.
    pub(crate) conns_max: f64,
    /// Seconds of rest before the second count (0: none).
    #[serde(default)]
    pub(crate) rest_secs: f64,
    /// Median open connections per node after the rest.
    #[serde(default)]
    pub(crate) conns_median_rest: f64,
    /// Most open connections of one node after the rest.
    #[serde(default)]
    pub(crate) conns_max_rest: f64,
    /// kith: connections its managers closed (trims and idle closes) during the rest, per node
    /// per minute; with no joins or walks running this is the network's connection churn at rest.
    #[serde(default)]
    pub(crate) closes_per_node_min_rest: Option<f64>,
    /// Walks that ran.
    pub(crate) walks: usize,
    /// Walks that returned at least one peer.
    pub(crate) walk_ok: usize,
    /// Walks whose result included the true closest node to the key.
    pub(crate) walk_exact: usize,
    /// Median walk time of the successful walks, ms.
    pub(crate) walk_p50_ms: f64,
    /// Registrations and resolutions.
    pub(crate) names: NamesResult,
    /// The group (kith only).
    pub(crate) group: Option<GroupResult>,
    /// What churn did during the names and group phases.
    pub(crate) churn: ChurnResult,
}

impl WorkerResult {
    fn figures(&self) -> Figures {
        let walks = self.walks.max(1) as f64;
        let mut figures = Figures::default()
            .with("nodes", self.nodes as f64)
            .with("rss_mb", self.rss_mb)
            .with(
                "rss_mb_per_node",
                report::round_to(self.rss_mb / self.nodes.max(1) as f64, 2),
            )
            .with("conns_median", self.conns_median)
            .with("conns_max", self.conns_max);
        if self.rest_secs > 0.0 {
            figures = figures
                .with("conns_median_rest", self.conns_median_rest)
                .with("conns_max_rest", self.conns_max_rest);
        }
        figures = figures
            .with(
                "walk_success",
                report::round_to(self.walk_ok as f64 / walks, 3),
            )
            .with(
                "walk_exact",
                report::round_to(self.walk_exact as f64 / walks, 3),
            )
            .with("walk_p50_ms", self.walk_p50_ms);
        if self.names.resolutions > 0 {
            figures = figures
                .with(
                    "resolve_success",
                    report::round_to(self.names.ok as f64 / self.names.resolutions as f64, 3),
                )
                .with("resolve_p50_ms", self.names.p50_ms)
                .with("resolve_p99_ms", self.names.p99_ms);
        }
        if let Some(g) = self.group.as_ref().filter(|g| g.expected > 0) {
            figures = figures
                .with(
                    "group_delivery",
                    report::round_to(g.delivered as f64 / g.expected as f64, 3),
                )
                .with("group_p99_ms", g.p99_ms);
        }
        figures.with("start_s", report::round_to(self.start_secs, 1))
    }

    fn describe(&self, kind: Kind) -> String {
        let k = &self.fd_kinds;
        let mut text = format!(
            "{}: {} nodes ({}), {} descriptors open after the settle (limit {}; {} TCP sockets, {} UDP sockets, {} other sockets, {} files, {} other), routing tables (sample of up to {ROUTING_SAMPLE}) min {} mean {:.1}, connections per node (all {} counted) median {} max {}, {}/{} walks found a peer, {} found the true closest",
            kind.as_str(),
            self.nodes,
            self.stop_reason,
            self.fds,
            self.fd_limit,
            k.tcp,
            k.udp,
            k.other_sockets,
            k.files,
            k.other,
            self.routing_min,
            self.routing_mean,
            self.conns_counted,
            self.conns_median,
            self.conns_max,
            self.walk_ok,
            self.walks,
            self.walk_exact
        );
        let n = &self.names;
        text.push_str(&format!(
            ", {} names registered ({} failed), {}/{} resolutions right, {} wrong, {} failed",
            n.registered, n.register_failures, n.ok, n.resolutions, n.wrong, n.failed
        ));
        if let Some(why) = &n.example_failure {
            text.push_str(&format!(" (e.g. {why})"));
        }
        if let Some(g) = &self.group {
            match &g.error {
                Some(e) => text.push_str(&format!(", group of {} not set up: {e}", g.members)),
                None => text.push_str(&format!(
                    ", group of {} set up in {} s: {}/{} deliveries of {} messages, {} duplicates, p50 {} ms",
                    g.members, g.setup_secs, g.delivered, g.expected, g.messages, g.duplicates, g.p50_ms
                )),
            }
        }
        if self.rest_secs > 0.0 {
            text.push_str(&format!(
                ", after {} s more at rest connections per node median {} max {}",
                self.rest_secs, self.conns_median_rest, self.conns_max_rest
            ));
            if let Some(closes) = self.closes_per_node_min_rest {
                text.push_str(&format!(
                    " (the connection managers closed {closes} per node per minute meanwhile)"
                ));
            }
        }
        let c = &self.churn;
        if c.pct > 0.0 {
            text.push_str(&format!(
                ", churn {}%/min: {} left and {} joined ({} joins failed) in {} s",
                c.pct, c.left, c.joined, c.join_failures, c.secs
            ));
        }
        text
    }
}

/// Runs the scenario: kith, then the raw baseline, each aiming for the same target.
pub(crate) fn run(params: &Params, bar: &ProgressBar) -> Scenario {
    let kith = run_worker(Kind::Kith, params, bar);
    let raw = run_worker(Kind::Raw, params, bar);
    let mut notes = vec![format!(
        "transport {}: target {} nodes, growth budget {} s, each node on loopback {} only (kith and raw alike) bootstrapping from up to {BOOTSTRAP_FANOUT} random earlier nodes; reduced settings: mDNS off, 1 MiB sled cache and no flusher thread, event buffer 64, command buffer 16, 20 s query timeout, 5 s idle connection timeout (both kinds; kith's connection manager closes idle connections gossipsub would keep, and trims above {} to {} connections per node); kith: nothing re-published on a timer (key bundles published by the group's members when it is set up), names with an {SCALE_NAME_DIFFICULTY}-bit proof of work; joins at least 50 ms apart, up to {JOINS_IN_FLIGHT} awaited at once (a new node bootstraps from nodes whose joins finished); growth pauses while more than half of 85% of the descriptor limit is open and stops if that lasts 30 s",
        params.transport.as_str(),
        params.nodes,
        params.budget.as_secs(),
        params.transport.as_str(),
        kith_testkit::SCALE_CONNECTIONS_HIGH,
        kith_testkit::SCALE_CONNECTIONS_LOW,
    )];
    let kith_figures = match &kith {
        Ok(r) => {
            notes.push(r.describe(Kind::Kith));
            Some(r.figures())
        }
        Err(e) => {
            notes.push(format!("kith failed: {e:#}"));
            None
        }
    };
    let raw_figures = match &raw {
        Ok(r) => {
            notes.push(r.describe(Kind::Raw));
            Some(r.figures())
        }
        Err(e) => {
            notes.push(format!("raw baseline failed: {e:#}"));
            None
        }
    };
    notes.push(format!(
        "walk_success: fraction of get_closest_peers walks (random node, random key, {WALK_CONCURRENCY} in flight) returning at least one peer; walk_exact: fraction including the true closest node; resolve_success: fraction of {} resolutions ({} in flight) of {} names, each registered by a random node, from random other nodes that never resolved that name, that named the right owner (raw: any of the name's five replica keys' get_record returned the value put there); group_delivery: fraction of (message, receiving member) pairs delivered within the phase, {} messages from 3 rotating senders in a group of {} random nodes (kith only: raw swarms have no groups); churn {}% of the nodes per minute during names and group",
        params.resolutions,
        scale_live::RESOLVE_CONCURRENCY,
        params.names,
        params.group_messages,
        params.group_members,
        params.churn_pct
    ));
    if kith
        .as_ref()
        .is_ok_and(|k| k.stop_reason.contains("descriptors"))
    {
        notes.push("kith ran out of descriptors first: its connection manager (marks and idle close, since gossipsub alone never lets a connection go idle, rust-libp2p #5190) did not keep up with the connections joins and walks open".to_owned());
    }
    notes.push("baseline: bare libp2p swarms (identify + Kademlia, no store) aiming for the same target, grown, walked and churned the same way, names as raw records".to_owned());
    Scenario::measured(NAME, UNIT, kith_figures, raw_figures, notes.join("; "))
}

fn run_worker(kind: Kind, params: &Params, bar: &ProgressBar) -> anyhow::Result<WorkerResult> {
    let dir = tempfile::Builder::new()
        .prefix("kith-bench-scale-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let exe = std::env::current_exe().context("cannot locate kith-bench itself")?;
    let mut command = Command::new(exe);
    command
        .arg("__scale-worker")
        .args(["--kind", kind.as_str()])
        .args([
            "--params",
            &serde_json::to_string(params).context("cannot encode the parameters")?,
        ])
        .arg("--dir")
        .arg(dir.path())
        .stderr(Stdio::inherit());
    let mut child = ChildProcess::spawn(command, format!("the {} scale worker", kind.as_str()))?;
    let deadline = Instant::now() + params.worker_deadline();
    let result = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            anyhow::bail!(
                "the {} worker did not finish within {} s",
                kind.as_str(),
                params.worker_deadline().as_secs()
            );
        }
        let Some(line) = child.next_line(left) else {
            if Instant::now() >= deadline {
                continue;
            }
            anyhow::bail!("the {} worker exited without a result", kind.as_str());
        };
        match serde_json::from_str::<WorkerLine>(&line) {
            Ok(WorkerLine::Progress { phase, done, of }) => {
                bar.set_message(format!("{NAME}: {} {phase} {done}/{of}", kind.as_str()));
            }
            Ok(WorkerLine::Result(result)) => break result,
            Err(_) => {}
        }
    };
    child.wait_or_kill(Duration::from_secs(30));
    drop(child);
    drop(dir);
    Ok(*result)
}

/// Arguments of the hidden `__scale-worker` subcommand.
#[derive(Debug, Clone)]
pub(crate) struct WorkerArgs {
    /// What to run.
    pub(crate) kind: Kind,
    /// Sizes and budgets.
    pub(crate) params: Params,
    /// Where node homes go (owned by the parent, which removes it).
    pub(crate) dir: PathBuf,
}

/// The worker: grows one network, measures it, prints the result, exits without tearing down
/// (process exit closes every socket; the parent removes the homes).
pub(crate) fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let fd_limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(grow_and_measure(&args, fd_limit))?;
    emit(&WorkerLine::Result(Box::new(result)));
    // Tearing down thousands of nodes one by one would take longer than the measurement.
    std::process::exit(0)
}

fn emit(line: &WorkerLine) {
    if let Ok(text) = serde_json::to_string(line) {
        println!("{text}");
    }
}

fn progress(phase: &str, done: usize, of: usize) {
    emit(&WorkerLine::Progress {
        phase: phase.to_owned(),
        done,
        of,
    });
}

async fn grow_and_measure(args: &WorkerArgs, fd_limit: u64) -> anyhow::Result<WorkerResult> {
    let params = &args.params;
    let mut cluster = Cluster::new(args.kind, NodeSettings { reduced: true }, args.dir.clone())
        .with_transport(params.transport);
    if args.kind == Kind::Kith {
        cluster = cluster.with_options(kith_options());
    }
    let mut rng = Rng::from_os();
    let fd_cap = usize::try_from(fd_limit.saturating_mul(85) / 100).unwrap_or(usize::MAX);
    let rss_cap_mb = memory_cap_mb();
    let started = Instant::now();
    let mut stop_reason = "target reached".to_owned();
    let mut last_join = tokio::time::Instant::now();
    // Joins overlap: each is awaited (until its node reports its listen address) on a task of
    // its own, and a new node bootstraps from nodes whose joins have finished. Awaiting each
    // join in turn made growth wait for the runtime, which every running node shares, to get
    // round to the newest node's event loop: 0.3-2 s per join at 200 nodes, where the store
    // and the node start took under 10 ms.
    let spawner = cluster.spawner();
    let mut joining = futures::stream::FuturesUnordered::new();
    let mut slots_used = 0;
    let mut failed = None;
    for i in 0..params.nodes {
        if started.elapsed() > params.budget {
            stop_reason = format!("time budget of {} s", params.budget.as_secs());
            break;
        }
        if !descriptors_available(fd_cap).await {
            stop_reason = format!(
                "open descriptors stayed above {} of {fd_limit} for {} s",
                fd_cap / 2,
                FD_WAIT.as_secs()
            );
            break;
        }
        // Finished joins join the cluster; at most JOINS_IN_FLIGHT wait, and the first node
        // must listen before anyone can bootstrap from it.
        while let Some(Some(joined)) = futures::FutureExt::now_or_never(joining.next()) {
            admit(&mut cluster, joined, &mut failed);
        }
        while (joining.len() >= JOINS_IN_FLIGHT || (i > 0 && cluster.len() == 0))
            && let Some(joined) = joining.next().await
        {
            admit(&mut cluster, joined, &mut failed);
        }
        if let Some(reason) = failed.take() {
            stop_reason = reason;
            break;
        }
        // Joins are paced: each one's bootstrap opens connections a moment later.
        tokio::time::sleep_until(last_join + JOIN_INTERVAL).await;
        last_join = tokio::time::Instant::now();
        if i % 25 == 0 && machine::own_rss_mb().is_some_and(|mb| mb > rss_cap_mb) {
            stop_reason = format!("memory cap of {rss_cap_mb:.0} MB");
            break;
        }
        let known = cluster.len();
        let mut bootstrap = Vec::new();
        for _ in 0..BOOTSTRAP_FANOUT.min(known) {
            if let Some(addr) = cluster.addr(rng.below(known))
                && !bootstrap.contains(&addr)
            {
                bootstrap.push(addr);
            }
        }
        let spawner = spawner.clone();
        joining.push(tokio::spawn(async move {
            (i, spawner.start(i, bootstrap, None).await)
        }));
        slots_used = i + 1;
        if (i + 1) % 10 == 0 || i + 1 == params.nodes {
            progress("grow", i + 1, params.nodes);
        }
    }
    // Every join started finishes (each is bounded by the node start's own timeouts).
    while let Some(joined) = joining.next().await {
        admit(&mut cluster, joined, &mut failed);
    }
    if let Some(reason) = failed {
        stop_reason = reason;
    }
    let start_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(params.settle).await;

    let rss_mb = machine::own_rss_mb().unwrap_or(0.0);
    let fds = machine::open_fds().unwrap_or(0);
    let fd_kinds = FdKinds::of_this_process();
    let (routing_min, routing_mean) = routing_sample(&cluster, &mut rng).await;
    let n = cluster.len();
    let (spawner, members) = cluster.into_parts();
    let first = count_connections(&members).await;
    let rest = if params.rest.is_zero() {
        None
    } else {
        let logged = std::env::var_os("KITH_BENCH_LOG").is_some();
        if logged {
            eprintln!("scale: rest of {} s begins", params.rest.as_secs());
        }
        tokio::time::sleep(params.rest).await;
        if logged {
            eprintln!("scale: rest ends");
        }
        Some(count_connections(&members).await)
    };
    let (walks, walk_ok, walk_exact, walk_p50_ms) = walk(&members, params, &mut rng).await;

    // The network in use while it changes.
    let live = Live::new(members);
    let done = AtomicBool::new(false);
    let phases = async {
        let names = scale_live::names(
            &live,
            params.names,
            params.resolutions,
            params.resolve_budget,
            progress,
        )
        .await;
        let group = match args.kind {
            Kind::Kith => Some(
                scale_live::group(
                    &live,
                    params.group_members,
                    params.group_messages,
                    params.group_budget,
                    progress,
                )
                .await,
            ),
            Kind::Raw => None,
        };
        done.store(true, Ordering::Relaxed);
        (names, group)
    };
    let ((names, group), churn) = tokio::join!(
        phases,
        scale_live::churn(&live, &spawner, params.churn_pct, n, slots_used, &done)
    );
    Ok(WorkerResult {
        nodes: n,
        stop_reason,
        start_secs,
        rss_mb,
        fds,
        fd_kinds,
        fd_limit,
        routing_min,
        routing_mean: report::round_to(routing_mean, 1),
        conns_counted: first.counts.len(),
        conns_median: first.median(),
        conns_max: first.max(),
        rest_secs: params.rest.as_secs_f64(),
        conns_median_rest: rest.as_ref().map_or(0.0, ConnCount::median),
        conns_max_rest: rest.as_ref().map_or(0.0, ConnCount::max),
        closes_per_node_min_rest: rest.as_ref().and_then(|r| {
            let closed = r.closed?.checked_sub(first.closed?)?;
            let minutes = params.rest.as_secs_f64() / 60.0;
            Some(report::round_to(
                closed as f64 / r.counts.len().max(1) as f64 / minutes,
                1,
            ))
        }),
        walks,
        walk_ok,
        walk_exact,
        walk_p50_ms,
        names,
        group,
        churn,
    })
}

/// What a process's open descriptors are: `scale` stops growing on descriptors, and a node's
/// share of them depends on the transport (TCP: one per connection end; QUIC: one UDP socket per
/// node for all its connections).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FdKinds {
    /// TCP sockets (listeners and connection ends).
    pub(crate) tcp: usize,
    /// UDP sockets (QUIC endpoints).
    pub(crate) udp: usize,
    /// Other sockets (Unix, netlink).
    pub(crate) other_sockets: usize,
    /// Regular files (sled's database files).
    pub(crate) files: usize,
    /// epoll, eventfd, pipes, terminals.
    pub(crate) other: usize,
}

impl FdKinds {
    /// This process's descriptors, sorted by what `/proc/self/fd` links to and which of
    /// `/proc/self/net/{tcp,tcp6,udp,udp6}` lists the socket's inode.
    fn of_this_process() -> Self {
        let inodes = |files: &[&str]| -> std::collections::HashSet<String> {
            files
                .iter()
                .filter_map(|f| std::fs::read_to_string(format!("/proc/self/net/{f}")).ok())
                .flat_map(|text| {
                    text.lines()
                        .skip(1)
                        .filter_map(|line| line.split_whitespace().nth(9).map(str::to_owned))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let tcp = inodes(&["tcp", "tcp6"]);
        let udp = inodes(&["udp", "udp6"]);
        let links = std::fs::read_dir("/proc/self/fd")
            .map(|dir| {
                dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                    .map(|p| p.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        Self::classify(&links, &tcp, &udp)
    }

    /// Sorts descriptor link targets (`socket:[123]`, `/path`, `anon_inode:[eventpoll]`).
    fn classify(
        links: &[String],
        tcp: &std::collections::HashSet<String>,
        udp: &std::collections::HashSet<String>,
    ) -> Self {
        let mut kinds = Self::default();
        for link in links {
            if let Some(inode) = link
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
            {
                if tcp.contains(inode) {
                    kinds.tcp += 1;
                } else if udp.contains(inode) {
                    kinds.udp += 1;
                } else {
                    kinds.other_sockets += 1;
                }
            } else if link.starts_with('/') && !link.starts_with("/dev/") {
                kinds.files += 1;
            } else {
                kinds.other += 1;
            }
        }
        kinds
    }
}

/// Every node's connections at one moment.
struct ConnCount {
    /// Open connections per node, sorted.
    counts: Vec<u64>,
    /// kith: connections the managers closed so far (trims and idle closes), summed over the
    /// nodes counted; `None` for raw swarms, or when a node did not answer in time (the sum
    /// would not compare with another).
    closed: Option<u64>,
}

impl ConnCount {
    /// The median node's open connections (0 when no node answered).
    fn median(&self) -> f64 {
        report::percentile(&self.counts, 50.0).map_or(0.0, |v| v as f64)
    }

    /// The most open connections of one node (0 when no node answered).
    fn max(&self) -> f64 {
        self.counts.last().map_or(0.0, |v| *v as f64)
    }
}

/// Every node's open connections (bounded by [`CONNS_BUDGET`]).
async fn count_connections(members: &[Member]) -> ConnCount {
    let deadline = tokio::time::Instant::now() + CONNS_BUDGET;
    let mut counting = futures::stream::iter(members)
        .map(|m| async move { m.handle.connection_counts().await.ok() })
        .buffer_unordered(CONNS_CONCURRENCY);
    let mut counts = Vec::new();
    let mut closed = Some(0u64);
    while let Ok(Some(counted)) = tokio::time::timeout_at(deadline, counting.next()).await {
        match counted {
            Some((n, node_closed)) => {
                counts.push(n as u64);
                closed = closed.zip(node_closed).map(|(a, b)| a + b);
            }
            None => closed = None,
        }
    }
    if counts.len() < members.len() {
        closed = None;
    }
    counts.sort_unstable();
    ConnCount { counts, closed }
}

/// `params.walks` walks from random nodes to random keys: (done, found a peer, found the true
/// closest, p50 ms of those that found a peer).
async fn walk(members: &[Member], params: &Params, rng: &mut Rng) -> (usize, usize, usize, f64) {
    let peers: Vec<PeerId> = members.iter().map(|m| m.peer_id).collect();
    let n = members.len();
    let plans: Vec<(usize, PeerId)> = (0..params.walks)
        .map(|_| (rng.below(n), PeerId::random()))
        .collect();
    let peers = &peers;
    let mut walks = futures::stream::iter(plans)
        .map(|(origin, key)| async move {
            let Some(member) = members.get(origin) else {
                return (false, false, Duration::ZERO);
            };
            let began = Instant::now();
            let found = tokio::time::timeout(WALK_TIMEOUT, member.handle.closest(key)).await;
            let elapsed = began.elapsed();
            let found = match found {
                Ok(Ok(found)) => found,
                _ => Vec::new(),
            };
            let truth = cluster::true_closest(peers, member.peer_id, key);
            let exact = truth.is_some_and(|t| found.contains(&t));
            (!found.is_empty(), exact, elapsed)
        })
        .buffer_unordered(WALK_CONCURRENCY);
    let walk_deadline = tokio::time::Instant::now() + params.walk_budget;
    let (mut done, mut ok, mut exact) = (0, 0, 0);
    let mut ok_ms = Vec::new();
    while let Ok(Some((found, hit, elapsed))) =
        tokio::time::timeout_at(walk_deadline, walks.next()).await
    {
        done += 1;
        if found {
            ok += 1;
            ok_ms.push(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
        }
        if hit {
            exact += 1;
        }
        if done % 10 == 0 {
            progress("walk", done, params.walks);
        }
    }
    ok_ms.sort_unstable();
    (
        done,
        ok,
        exact,
        report::percentile(&ok_ms, 50.0).map_or(0.0, |v| v as f64),
    )
}

/// Waits (bounded by [`FD_WAIT`]) until fewer than half of `fd_cap` descriptors are open, so
/// idle connections of earlier joins can close before the next node joins. False if they never do.
async fn descriptors_available(fd_cap: usize) -> bool {
    let deadline = Instant::now() + FD_WAIT;
    loop {
        if machine::open_fds().is_some_and(|open| open < fd_cap / 2) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Routing table sizes (smallest, mean) of up to [`ROUTING_SAMPLE`] random nodes, bounded by
/// [`ROUTING_BUDGET`]: a loaded process answers slowly, and asking every node could take minutes.
async fn routing_sample(cluster: &Cluster, rng: &mut Rng) -> (usize, f64) {
    let deadline = Instant::now() + ROUTING_BUDGET;
    let mut sizes = Vec::new();
    for _ in 0..ROUTING_SAMPLE.min(cluster.len()) {
        if Instant::now() > deadline {
            break;
        }
        if let Ok(n) = cluster.routing_len(rng.below(cluster.len())).await {
            sizes.push(n);
        }
    }
    let mean = sizes.iter().sum::<usize>() as f64 / sizes.len().max(1) as f64;
    (sizes.iter().copied().min().unwrap_or(0), mean)
}

/// Adds a finished join to the cluster; the first failure becomes the reason growth stops.
fn admit(
    cluster: &mut Cluster,
    joined: Result<(usize, anyhow::Result<Member>), tokio::task::JoinError>,
    failed: &mut Option<String>,
) {
    match joined {
        Ok((_, Ok(member))) => cluster.push(member),
        Ok((slot, Err(e))) => {
            failed.get_or_insert_with(|| format!("node {slot} failed to start: {e:#}"));
        }
        Err(e) => {
            failed.get_or_insert_with(|| format!("a join task ended: {e}"));
        }
    }
}

/// Stop growing at 60% of physical memory (the machine is shared with the build).
fn memory_cap_mb() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| machine::parse_status_kib(&text, "MemTotal:"))
        .map_or(8192.0, |kib| kib as f64 / 1024.0 * 0.6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_lines_round_trip() {
        let line = WorkerLine::Progress {
            phase: "grow".to_owned(),
            done: 10,
            of: 20,
        };
        let text = serde_json::to_string(&line).unwrap();
        assert!(matches!(
            serde_json::from_str::<WorkerLine>(&text).unwrap(),
            WorkerLine::Progress { done: 10, .. }
        ));
    }

    #[test]
    fn figures_are_fractions_of_walks() {
        let result = WorkerResult {
            nodes: 100,
            stop_reason: "target reached".to_owned(),
            start_secs: 12.34,
            rss_mb: 250.0,
            fds: 900,
            fd_kinds: FdKinds::default(),
            fd_limit: 20000,
            routing_min: 5,
            routing_mean: 20.0,
            walks: 40,
            walk_ok: 39,
            walk_exact: 30,
            walk_p50_ms: 12.0,
            conns_counted: 100,
            conns_median: 20.0,
            conns_max: 31.0,
            rest_secs: 30.0,
            conns_median_rest: 18.0,
            conns_max_rest: 30.0,
            closes_per_node_min_rest: Some(4.0),
            names: NamesResult {
                registered: 20,
                resolutions: 200,
                ok: 198,
                failed: 2,
                p50_ms: 40.0,
                p99_ms: 900.0,
                ..NamesResult::default()
            },
            group: Some(GroupResult {
                members: 20,
                messages: 50,
                expected: 950,
                delivered: 950,
                p99_ms: 120.0,
                ..GroupResult::default()
            }),
            churn: ChurnResult::default(),
        };
        let figures = result.figures();
        assert_eq!(figures.get("nodes"), Some(100.0));
        assert_eq!(figures.get("rss_mb_per_node"), Some(2.5));
        assert_eq!(figures.get("conns_max"), Some(31.0));
        assert_eq!(figures.get("conns_max_rest"), Some(30.0));
        assert_eq!(figures.get("walk_success"), Some(0.975));
        assert_eq!(figures.get("walk_exact"), Some(0.75));
        assert_eq!(figures.get("resolve_success"), Some(0.99));
        assert_eq!(figures.get("resolve_p99_ms"), Some(900.0));
        assert_eq!(figures.get("group_delivery"), Some(1.0));
        assert_eq!(figures.get("group_p99_ms"), Some(120.0));
        assert_eq!(figures.get("start_s"), Some(12.3));
        // Raw swarms have no group, and a run without resolutions reports none.
        let raw = WorkerResult {
            group: None,
            names: NamesResult::default(),
            ..result
        };
        let figures = raw.figures();
        assert_eq!(figures.get("group_delivery"), None);
        assert_eq!(figures.get("resolve_success"), None);
    }

    #[test]
    fn descriptors_are_sorted_by_kind() {
        let set = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect();
        let links: Vec<String> = [
            "socket:[10]",
            "socket:[11]",
            "socket:[20]",
            "socket:[30]",
            "/tmp/kith-bench-scale-x/node-3/db",
            "/dev/null",
            "anon_inode:[eventpoll]",
            "pipe:[40]",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let kinds = FdKinds::classify(&links, &set(&["10", "11"]), &set(&["20"]));
        assert_eq!(
            kinds,
            FdKinds {
                tcp: 2,
                udp: 1,
                other_sockets: 1,
                files: 1,
                other: 3,
            }
        );
    }

    #[test]
    fn params_reach_the_worker_intact() {
        let mut params = Params::new(false);
        params.churn_pct = 10.0;
        params.transport = Transport::Quic;
        let text = serde_json::to_string(&params).unwrap();
        let back: Params = serde_json::from_str(&text).unwrap();
        assert_eq!(back.transport, Transport::Quic);
        assert_eq!(back.churn_pct, 10.0);
        assert_eq!(back.nodes, 1000);
        assert_eq!(back.group_budget, params.group_budget);
    }
}
