//! `relay.latency`, `relay.throughput` and `mailbox.throughput` (issue #6): direct messages
//! between two kith nodes whose only path is a circuit relay v2 through a kith relay, beside the
//! same kind of pair connected directly, in the same run; and mail held at a relay's mailbox for an
//! offline recipient, beside direct delivery of the same messages between the same nodes.
//!
//! Every node runs in this process with its own sled store in a temporary directory, listens on
//! 127.0.0.1 only, has mDNS off, is a DHT server on network id `bench`, and runs with
//! [`dm::options`]. A "trio" is a relay R (`relay_server`, mailbox host) and two personal nodes,
//! B (sender) and A (recipient), both bootstrapped from R:
//!
//! ```text
//! relayed trio: B ──TCP── R ──TCP── A    A and B listen only on <R>/p2p-circuit: B reaches A
//!                                        through a circuit at R, and neither has an address
//!                                        anyone could dial directly (nothing for DCUtR to punch)
//! direct trio:  B ──TCP── R ──TCP── A    A and B listen on 127.0.0.1/tcp/0 with relay policy
//!               B ────────TCP─────── A   "never": B dials A directly
//! mailbox trio: the direct trio, A keeping its mailbox at R
//! ```
//!
//! Which path was used is checked, not assumed: before, during and after each measurement the
//! open connections between A and B (both ends' view) are classified as relayed (`/p2p-circuit`)
//! or direct, and the notes report what was seen.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use indicatif::ProgressBar;
use kith_net::{DhtMode, Keypair, Multiaddr, PeerId, RelayPolicy};
use kith_service::{MailboxConfig, MessageEvent, Node, Quota};
use kith_store::{Store, StoreConfig, StoreError};
use kith_testkit::Transports;
use libp2p::multiaddr::Protocol;
use tokio::sync::broadcast::error::RecvError;

use super::dm::{self, PAYLOAD};
use crate::{
    baseline::loopback_tcp,
    cluster::NETWORK_ID,
    report::{Figures, Scenario},
};

const LATENCY: &str = "relay.latency";
const THROUGHPUT: &str = "relay.throughput";
const MAILBOX: &str = "mailbox.throughput";

/// Upper bound for one step: a node starting, listening, getting its reservation.
const STEP: Duration = Duration::from_secs(20);
/// Upper bound for the first message between two fresh nodes (key bundle, Olm session, and for
/// the relayed trio the circuit).
const WARM_UP: Duration = Duration::from_secs(45);
/// Upper bound for every timed loop.
const BUDGET: Duration = Duration::from_secs(300);
/// The deposit and fetch phases give up when their count has not moved for this long.
const STALL: Duration = Duration::from_secs(10);

/// Sizes of the scenarios.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    /// Sequential messages per path for `relay.latency`.
    pub(crate) latency_messages: usize,
    /// Messages per path for `relay.throughput`.
    pub(crate) throughput_messages: usize,
    /// Concurrent senders, as in `dm.throughput`.
    pub(crate) in_flight: usize,
    /// Messages held and fetched for `mailbox.throughput`.
    pub(crate) mailbox_messages: usize,
}

impl Params {
    /// Full-run or `--quick` defaults: the direct-message scenarios' sizes, so the relayed and
    /// direct figures compare, plus the mailbox's.
    pub(crate) fn new(quick: bool) -> Self {
        let direct = dm::Params::new(quick);
        Self {
            latency_messages: direct.latency_messages,
            throughput_messages: direct.throughput_messages,
            in_flight: direct.in_flight,
            mailbox_messages: if quick { 50 } else { 1000 },
        }
    }
}

/// How B reaches A.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Through a circuit at R only.
    Relayed,
    /// A direct TCP connection.
    Direct,
}

impl Route {
    fn as_str(self) -> &'static str {
        match self {
            Route::Relayed => "relayed",
            Route::Direct => "direct",
        }
    }
}

/// What a node is in a trio.
enum Role<'a> {
    /// The community relay, holding up to `mailbox_items` envelopes per recipient.
    Relay { mailbox_items: u64 },
    /// A personal node reaching the others by `route`, bootstrapped from `relay`, keeping its
    /// mailbox there if `mailbox`.
    Personal {
        route: Route,
        relay: &'a Multiaddr,
        mailbox: bool,
    },
}

/// Opens a store, retrying while a previous handle in this process still holds sled's lock (it
/// is released a moment after the last handle drops; see ARCHITECTURE.md). Bounded.
async fn open_store(path: &Path) -> anyhow::Result<Store> {
    let deadline = Instant::now() + STEP;
    loop {
        match Store::open(path, &StoreConfig::default()) {
            Ok(store) => return Ok(store),
            Err(StoreError::Locked { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot open a store in {}", path.display()));
            }
        }
    }
}

async fn start_node(home: &Path, keypair: Keypair, role: &Role<'_>) -> anyhow::Result<Node> {
    let store = open_store(home).await?;
    let mut config = kith_net::Config::new(keypair)
        .with_network_id(NETWORK_ID)
        .with_mdns(false)
        .with_dht_mode(DhtMode::Server);
    let mut options = dm::options();
    match role {
        Role::Relay { mailbox_items } => {
            config = config.with_listen(vec![loopback_tcp()]);
            config.relay_server = true;
            options.mailbox_server = Some(MailboxConfig {
                quota: Quota {
                    max_items: *mailbox_items,
                    max_bytes: 1 << 30,
                },
                ..MailboxConfig::default()
            });
        }
        Role::Personal {
            route,
            relay,
            mailbox,
        } => {
            config = config.with_bootstrap(vec![(*relay).clone()]);
            match route {
                // A `/p2p-circuit` listen address makes the node listen through that relay from
                // the start (relay policy "always") and nowhere else.
                Route::Relayed => {
                    config = config.with_listen(vec![(*relay).clone().with(Protocol::P2pCircuit)]);
                }
                Route::Direct => {
                    config = config.with_listen(vec![loopback_tcp()]);
                    config.relay_policy = RelayPolicy::Never;
                }
            }
            if *mailbox {
                options.mailbox_relays = vec![(*relay).clone()];
            }
        }
    }
    tokio::time::timeout(STEP, Node::start_with(config, store, options))
        .await
        .context("a kith node did not start in time")?
        .context("a kith node failed to start")
}

/// Waits until `node` holds a reservation at `relay` and listens through it.
async fn wait_reserved(node: &Node, relay: PeerId) -> anyhow::Result<()> {
    let poll = Duration::from_millis(20);
    kith_testkit::poll_until(
        "a reservation at the relay",
        STEP,
        poll,
        async || match node.net_status().await.context("a node stopped") {
            Ok(status) => (status.relayed_via.contains(&relay) && !status.listen_addrs.is_empty())
                .then_some(Ok(())),
            Err(e) => Some(Err(e)),
        },
    )
    .await?
}

/// A relay R and two personal nodes, B (sender) and A (recipient).
struct Trio {
    dir: tempfile::TempDir,
    route: Route,
    relay: Node,
    relay_addr: Multiaddr,
    a_key: Keypair,
    /// `None` while A is offline (`mailbox.throughput`).
    a: Option<Node>,
    a_id: PeerId,
    a_mailbox: bool,
    b: Node,
}

impl Trio {
    /// Starts the three nodes and exchanges a first message B → A. `mailbox_items`: A keeps its
    /// mailbox at R, which holds up to that many envelopes for it.
    async fn start(route: Route, mailbox_items: Option<u64>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("kith-bench-{}-", route.as_str()))
            .tempdir()
            .context("cannot create a temporary directory")?;
        let relay = start_node(
            &dir.path().join("relay"),
            Keypair::generate_ed25519(),
            &Role::Relay {
                mailbox_items: mailbox_items.unwrap_or(1000),
            },
        )
        .await?;
        let relay_addr = match kith_testkit::listen_addrs(&relay, Transports::Tcp).await {
            Ok((addr, _)) => addr,
            Err(e) => {
                let _ = relay.shutdown().await;
                return Err(e);
            }
        };
        let a_key = Keypair::generate_ed25519();
        let a_mailbox = mailbox_items.is_some();
        let personal = |mailbox| Role::Personal {
            route,
            relay: &relay_addr,
            mailbox,
        };
        let a = start_node(&dir.path().join("a"), a_key.clone(), &personal(a_mailbox)).await;
        let b = start_node(
            &dir.path().join("b"),
            Keypair::generate_ed25519(),
            &personal(false),
        )
        .await;
        let (a, b) = match (a, b) {
            (Ok(a), Ok(b)) => (a, b),
            (a, b) => {
                let mut why = Vec::new();
                for node in [a, b] {
                    match node {
                        Ok(node) => {
                            let _ = node.shutdown().await;
                        }
                        Err(e) => why.push(format!("{e:#}")),
                    }
                }
                let _ = relay.shutdown().await;
                bail!("{}", why.join("; "));
            }
        };
        let trio = Self {
            dir,
            route,
            relay,
            relay_addr,
            a_key,
            a_id: a.peer_id(),
            a: Some(a),
            a_mailbox,
            b,
        };
        match trio.connect().await {
            Ok(()) => Ok(trio),
            Err(e) => {
                trio.shutdown().await;
                Err(e.context(format!("the {} trio did not connect", route.as_str())))
            }
        }
    }

    async fn connect(&self) -> anyhow::Result<()> {
        let a = self.a()?;
        if self.route == Route::Relayed {
            let relay = self.relay.peer_id();
            wait_reserved(a, relay).await?;
            wait_reserved(&self.b, relay).await?;
        }
        dm::warm_up(&self.b, a, WARM_UP).await
    }

    fn a(&self) -> anyhow::Result<&Node> {
        self.a.as_ref().context("the recipient is offline")
    }

    /// `dm.throughput`'s measurement, B → A.
    async fn throughput(&self, n: usize, senders: usize, bar: &ProgressBar) -> anyhow::Result<f64> {
        dm::throughput(&self.b, self.a()?, n, senders, bar).await
    }

    /// Circuits the relay accepted since it started.
    async fn circuits_total(&self) -> Option<u64> {
        let status = self.relay.net_status().await.ok()?;
        status.relay_served.map(|s| s.circuits_total)
    }

    /// Stops A (it is offline until [`Trio::restart_a`]).
    async fn stop_a(&mut self) {
        if let Some(a) = self.a.take() {
            let _ = tokio::time::timeout(STEP, a.shutdown()).await;
        }
    }

    /// Starts A again on its home and identity, as a user reopening the app.
    async fn restart_a(&mut self) -> anyhow::Result<&Node> {
        self.stop_a().await;
        let role = Role::Personal {
            route: self.route,
            relay: &self.relay_addr,
            mailbox: self.a_mailbox,
        };
        let a = start_node(&self.home("a"), self.a_key.clone(), &role).await?;
        Ok(self.a.insert(a))
    }

    fn home(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn shutdown(self) {
        let mut nodes = vec![self.b, self.relay];
        nodes.extend(self.a);
        let stops = nodes.into_iter().map(|node| async move {
            let _ = tokio::time::timeout(STEP, node.shutdown()).await;
        });
        futures::future::join_all(stops).await;
    }
}

/// Whether a connection's remote address is a relay circuit: it names `/p2p-circuit` (the dialing
/// side), or it has no transport at all (the listening side: libp2p's relay client reports an
/// inbound circuit's remote address as just `/p2p/<peer>`).
fn is_relayed(addr: &Multiaddr) -> bool {
    let transport = addr.iter().any(|p| {
        matches!(
            p,
            Protocol::Tcp(_) | Protocol::Udp(_) | Protocol::QuicV1 | Protocol::Memory(_)
        )
    });
    addr.iter().any(|p| p == Protocol::P2pCircuit) || !transport
}

/// Connections between A and B seen at each check, by kind.
#[derive(Debug, Default)]
struct PathLog {
    checks: usize,
    /// Checks that saw at least one relayed connection.
    relayed: usize,
    /// Checks that saw at least one direct connection.
    direct: usize,
    failed: usize,
}

impl PathLog {
    /// Classifies the open connections between A and B, as both ends see them.
    async fn check(&mut self, trio: &Trio) {
        self.checks += 1;
        let Ok(a) = trio.a() else {
            self.failed += 1;
            return;
        };
        let (mut relayed, mut direct) = (false, false);
        for (from, to) in [(&trio.b, a.peer_id()), (a, trio.b.peer_id())] {
            let Ok(peers) = from.peers().await else {
                self.failed += 1;
                return;
            };
            for addr in peers
                .iter()
                .filter(|p| p.peer_id == to)
                .flat_map(|p| &p.addrs)
            {
                if is_relayed(addr) {
                    relayed = true;
                } else {
                    direct = true;
                }
            }
        }
        self.relayed += usize::from(relayed);
        self.direct += usize::from(direct);
    }

    /// What the checks saw, for the notes.
    fn summary(&self, route: Route) -> String {
        let seen = format!(
            "{} checks of the connections between A and B (both ends, before, during and after the measurement): relayed (/p2p-circuit) in {}, direct in {}{}",
            self.checks,
            self.relayed,
            self.direct,
            if self.failed > 0 {
                format!(", {} checks failed", self.failed)
            } else {
                String::new()
            }
        );
        let verdict = match route {
            Route::Relayed if self.direct == 0 && self.relayed > 0 => {
                "path: only relayed connections were ever seen, so the relayed figures went through the circuit (A and B have no direct listen address, so DCUtR has nothing to upgrade to)"
            }
            Route::Relayed => {
                "WARNING: a direct connection between A and B was seen (DCUtR or a direct dial), so the relayed figures are partly direct"
            }
            Route::Direct if self.relayed == 0 && self.direct > 0 => {
                "baseline path: only direct TCP connections"
            }
            Route::Direct => {
                "WARNING: the direct baseline also saw a relayed connection, so it is partly relayed"
            }
        };
        format!("{verdict} ({seen})")
    }
}

/// Runs `relay.latency` and `relay.throughput` on one relayed and one direct trio.
pub(crate) fn run_relay(params: &Params, bar: &ProgressBar) -> Vec<Scenario> {
    match dm::runtime() {
        Ok(runtime) => runtime.block_on(relay_scenarios(params, bar)),
        Err(e) => vec![
            Scenario::unavailable(LATENCY, "us", format!("{e:#}")),
            Scenario::unavailable(THROUGHPUT, "msg/s", format!("{e:#}")),
        ],
    }
}

async fn relay_scenarios(params: &Params, bar: &ProgressBar) -> Vec<Scenario> {
    bar.set_message("relay.*: starting a relayed and a direct trio");
    let started = Instant::now();
    let (relayed, direct) = tokio::join!(
        Trio::start(Route::Relayed, None),
        Trio::start(Route::Direct, None)
    );
    let (relayed, direct) = match (relayed, direct) {
        (Ok(r), Ok(d)) => (r, d),
        (r, d) => {
            let mut why = Vec::new();
            for trio in [r, d] {
                match trio {
                    Ok(trio) => trio.shutdown().await,
                    Err(e) => why.push(format!("{e:#}")),
                }
            }
            let why = format!("could not set up: {}", why.join("; "));
            return vec![
                Scenario::unavailable(LATENCY, "us", why.clone()),
                Scenario::unavailable(THROUGHPUT, "msg/s", why),
            ];
        }
    };
    let setup_secs = started.elapsed().as_secs_f64();
    let circuits_before = relayed.circuits_total().await;

    bar.set_message("relay.latency");
    let mut paths = [PathLog::default(), PathLog::default()];
    let latency = latency(&relayed, &direct, params.latency_messages, &mut paths, bar).await;
    let latency_paths = [
        paths[0].summary(Route::Relayed),
        paths[1].summary(Route::Direct),
    ];
    let circuits_mid = relayed.circuits_total().await;

    bar.set_message("relay.throughput");
    let mut paths = [PathLog::default(), PathLog::default()];
    let n = params.throughput_messages;
    let senders = params.in_flight;
    paths[0].check(&relayed).await;
    let relayed_rate = relayed.throughput(n, senders, bar).await;
    paths[0].check(&relayed).await;
    paths[1].check(&direct).await;
    let direct_rate = direct.throughput(n, senders, bar).await;
    paths[1].check(&direct).await;
    let circuits_after = relayed.circuits_total().await;
    relayed.shutdown().await;
    direct.shutdown().await;

    let circuits = |from: Option<u64>, to: Option<u64>| match (from, to) {
        (Some(from), Some(to)) => format!(
            "relay circuits accepted: {from} during setup and warm-up, {} during the measurement",
            to.saturating_sub(from)
        ),
        _ => "the relay's circuit count was not readable".to_owned(),
    };
    let (samples_relayed, samples_direct) = latency;
    let mut notes = vec![format!(
        "{} sequential {PAYLOAD}-byte messages B → A on each path, alternating between the two trios (both in this process, set up in {setup_secs:.1} s), each timed until send_text answered Delivered (the recipient decrypted, stored, flushed and acked it); kith: A and B listen only on <R>/p2p-circuit, so B reaches A through a circuit relay v2 at the kith relay R over TCP+Noise+Yamux on loopback; baseline: the same kind of trio with A and B listening on 127.0.0.1/tcp and relay policy never, so B reaches A directly",
        params.latency_messages
    )];
    notes.push(latency_paths[0].clone());
    notes.push(latency_paths[1].clone());
    notes.push(circuits(circuits_before, circuits_mid));
    let k = samples_relayed
        .map_err(|e| notes.push(format!("relayed failed: {e:#}")))
        .ok()
        .and_then(|s| Figures::latency(&s));
    let b = samples_direct
        .map_err(|e| notes.push(format!("direct failed: {e:#}")))
        .ok()
        .and_then(|s| Figures::latency(&s));
    let latency = Scenario::measured(LATENCY, "us", k, b, notes.join("; "));

    let mut notes = vec![format!(
        "{} {PAYLOAD}-byte messages B → A on each path by {senders} concurrent senders (as dm.throughput: each send returns once acked or queued; the clock stops when B's outbox is empty), relayed trio first, then the direct trio; kith: through a circuit relay v2 at the kith relay R; baseline: the same kind of trio connected directly",
        n.div_ceil(senders.max(1)) * senders
    )];
    notes.push(paths[0].summary(Route::Relayed));
    notes.push(paths[1].summary(Route::Direct));
    notes.push(circuits(circuits_mid, circuits_after));
    let k = relayed_rate
        .map_err(|e| notes.push(format!("relayed failed: {e:#}")))
        .ok()
        .map(|rate| Figures::default().with("rate", rate.round()));
    let b = direct_rate
        .map_err(|e| notes.push(format!("direct failed: {e:#}")))
        .ok()
        .map(|rate| Figures::default().with("rate", rate.round()));
    let throughput = Scenario::measured(THROUGHPUT, "msg/s", k, b, notes.join("; "));
    vec![latency, throughput]
}

/// `n` sequential sends on each trio, alternating which goes first, checking the path every 100
/// messages. A side that fails stops; the other goes on.
async fn latency(
    relayed: &Trio,
    direct: &Trio,
    n: usize,
    paths: &mut [PathLog; 2],
    bar: &ProgressBar,
) -> (anyhow::Result<Vec<u64>>, anyhow::Result<Vec<u64>>) {
    let trios = [relayed, direct];
    let mut samples: [anyhow::Result<Vec<u64>>; 2] =
        [Ok(Vec::with_capacity(n)), Ok(Vec::with_capacity(n))];
    let targets = trios.map(|t| t.a_id.to_string());
    let deadline = Instant::now() + BUDGET;
    for i in 0..n {
        if i % 100 == 0 {
            for (log, trio) in paths.iter_mut().zip(trios) {
                log.check(trio).await;
            }
        }
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            if let Ok(list) = &mut samples[side] {
                match dm::timed_send(&trios[side].b, &targets[side], i).await {
                    Ok(us) => list.push(us),
                    Err(e) => samples[side] = Err(e),
                }
            }
        }
        if i % 50 == 0 {
            bar.tick();
        }
        if Instant::now() > deadline {
            break;
        }
    }
    for (log, trio) in paths.iter_mut().zip(trios) {
        log.check(trio).await;
    }
    let [relayed, direct] = samples;
    (relayed, direct)
}

fn pointer_key(peer: &PeerId) -> Vec<u8> {
    kith_service::mailbox_pointer_key(peer)
}

/// Runs `mailbox.throughput`.
pub(crate) fn run_mailbox(params: &Params, bar: &ProgressBar) -> Scenario {
    let runtime = match dm::runtime() {
        Ok(rt) => rt,
        Err(e) => return Scenario::unavailable(MAILBOX, "msg/s", format!("{e:#}")),
    };
    runtime.block_on(async {
        let n = params.mailbox_messages.max(1);
        let senders = params.in_flight.clamp(1, n);
        bar.set_message("mailbox.throughput: starting a relay with a mailbox and two nodes");
        // Room for every deposit, whatever else is held.
        let quota = u64::try_from(n).unwrap_or(u64::MAX).saturating_add(1000);
        let mut trio = match Trio::start(Route::Direct, Some(quota)).await {
            Ok(trio) => trio,
            Err(e) => {
                return Scenario::unavailable(MAILBOX, "msg/s", format!("could not set up: {e:#}"));
            }
        };
        let measured = mailbox(&mut trio, n, senders, bar).await;
        trio.shutdown().await;
        let m = match measured {
            Ok(m) => m,
            Err(e) => return Scenario::unavailable(MAILBOX, "msg/s", format!("failed: {e:#}")),
        };
        let mut notes = vec![format!(
            "{n} {PAYLOAD}-byte messages B → A on a relay R (mailbox host) and two personal nodes on loopback TCP; A keeps its mailbox at R. deposit_rate: A offline, B sends with {senders} concurrent senders; each first attempt fails, B looks up A's mailbox pointer in the DHT and deposits the encrypted envelope at R (stored + flushed there); from the first send until R holds them all. Then B goes offline too, so nothing can arrive directly. fetch_rate: A restarts on its home and identity, registers at R, fetches, decrypts, stores + flushes each message and deletes it at R; from the restart until every one is in A's history. rate: end to end, messages / (deposit + fetch time), given only when all {n} arrived; held: how many R held. Baseline: the same nodes, before A went offline, with the same size and senders, delivering directly (dm.throughput's measurement: until B's outbox is empty) - the same messages, encryption and durability at A without the detour through R; raw sled insert+flush was not chosen because it would bound only the disk part of one side"
        )];
        notes.push(format!(
            "deposited {} of {n} in {:.2} s; fetched {} in {:.2} s ({:.0} ms to the first, including A's start); direct baseline: {} messages",
            m.deposited, m.deposit_secs, m.fetched, m.fetch_secs, m.first_ms, m.direct_sent
        ));
        notes.extend(m.notes);
        let complete = m.deposited >= n && m.fetched >= m.deposited;
        let kith = (m.deposited > 0 && m.fetched > 0).then(|| {
            let mut figures = Figures::default();
            // End to end only when every message made it: a rate over the ones that did would
            // hide the ones that did not.
            if complete {
                figures = figures.with(
                    "rate",
                    (m.fetched as f64 / (m.deposit_secs + m.fetch_secs)).round(),
                );
            }
            figures
                .with(
                    "deposit_rate",
                    (m.deposited as f64 / m.deposit_secs).round(),
                )
                .with("fetch_rate", (m.fetched as f64 / m.fetch_secs).round())
                .with("fetch_first_ms", m.first_ms.round())
                .with("held", m.deposited as f64)
        });
        if kith.is_none() {
            notes.push("nothing was deposited and fetched, so there is no kith figure".to_owned());
        } else if !complete {
            notes.push(format!(
                "no end-to-end rate (and so no ratio): only {} of {n} messages were held and {} fetched",
                m.deposited, m.fetched
            ));
        }
        let baseline = m
            .direct_rate
            .map(|rate| Figures::default().with("rate", rate.round()));
        Scenario::measured(MAILBOX, "msg/s", kith, baseline, notes.join("; "))
    })
}

struct Mailbox {
    direct_rate: Option<f64>,
    direct_sent: usize,
    deposited: usize,
    deposit_secs: f64,
    fetched: usize,
    fetch_secs: f64,
    first_ms: f64,
    notes: Vec<String>,
}

/// What `relay` holds for `peer` (envelopes, bytes): None while `peer` has no mailbox there.
fn held_for(relay: &Node, peer: PeerId) -> anyhow::Result<Option<(u64, u64)>> {
    Ok(relay
        .mailbox_recipients(usize::MAX)?
        .into_iter()
        .find(|usage| usage.peer == Some(peer))
        .map(|usage| (usage.items, usage.bytes)))
}

async fn mailbox(
    trio: &mut Trio,
    n: usize,
    senders: usize,
    bar: &ProgressBar,
) -> anyhow::Result<Mailbox> {
    let mut notes = Vec::new();
    let a_id = trio.a_id;
    let b_bytes = trio.b.peer_id().to_bytes();
    let b_target = trio.b.peer_id().to_string();
    let relay = trio.relay.clone();

    // A registers at R on connecting and publishes its pointer shortly after start.
    let deadline = Instant::now() + STEP;
    while held_for(&relay, a_id)?.is_none() {
        if Instant::now() > deadline {
            bail!(
                "A did not register its mailbox at R within {} s",
                STEP.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + STEP;
    loop {
        let found = trio
            .b
            .probe()
            .get_record(pointer_key(&a_id), 1)
            .await
            .is_ok_and(|r| !r.answers.is_empty());
        if found {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "B could not find A's mailbox pointer in the DHT within {} s",
                STEP.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Baseline: the same pair, direct.
    bar.set_message("mailbox.throughput: direct baseline");
    let direct_rate = match trio.throughput(n, senders, bar).await {
        Ok(rate) => Some(rate),
        Err(e) => {
            notes.push(format!("direct baseline failed: {e:#}"));
            None
        }
    };
    let direct_sent = n.div_ceil(senders) * senders;

    // Deposits: A offline.
    bar.set_message("mailbox.throughput: deposits for an offline recipient");
    trio.stop_a().await;
    let (held_before, _) = held_for(&relay, a_id)?.unwrap_or_default();
    let target = a_id.to_string();
    let started = Instant::now();
    let tasks: Vec<_> = (0..senders)
        .map(|s| {
            let node = trio.b.clone();
            let target = target.clone();
            tokio::spawn(async move {
                for i in (s..n).step_by(senders) {
                    node.send_text(&target, &dm::text("mailbox", i)).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    let mut held = 0usize;
    let mut last_change = started;
    let mut stalled = false;
    loop {
        let (items, _) = held_for(&relay, a_id)?.unwrap_or_default();
        let now_held = usize::try_from(items.saturating_sub(held_before)).unwrap_or(usize::MAX);
        if now_held != held {
            held = now_held;
            last_change = Instant::now();
        }
        if held >= n {
            break;
        }
        if last_change.elapsed() > STALL || started.elapsed() > BUDGET {
            stalled = true;
            break;
        }
        bar.tick();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let deposit_secs = last_change.duration_since(started).as_secs_f64();
    if stalled {
        notes.push(format!(
            "the deposits stopped at {held} of {n}: R's count did not move for {} s (or the {} s budget ran out); deposit_rate and the fetch count only cover what was held",
            STALL.as_secs(),
            BUDGET.as_secs()
        ));
    }
    // The senders return once their send_text calls do (each waits at most a few seconds for its
    // first attempt); bounded, then aborted.
    let grace = Instant::now() + STEP;
    let mut send_errors = Vec::new();
    for task in tasks {
        let left = grace.saturating_duration_since(Instant::now());
        let abort = task.abort_handle();
        match tokio::time::timeout(left, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => send_errors.push(format!("{e:#}")),
            Ok(Err(e)) => send_errors.push(e.to_string()),
            Err(_) => abort.abort(),
        }
    }
    if let Some(first) = send_errors.first() {
        notes.push(format!(
            "{} sender tasks failed, the first with: {first}",
            send_errors.len()
        ));
    }
    // B goes offline: from now on A can only get the messages from R.
    let _ = tokio::time::timeout(STEP, trio.b.shutdown()).await;

    // Fetch: A comes back.
    bar.set_message("mailbox.throughput: the recipient comes back and fetches");
    let expected = held;
    let restarted = Instant::now();
    let a = trio.restart_a().await?;
    let mut events = a.subscribe();
    let is_mail = |m: &kith_store::Message| {
        !m.outgoing && m.peer_id == b_bytes && m.text.starts_with("mailbox ")
    };
    let count = async |a: &Node| -> anyhow::Result<usize> {
        Ok(a.history(&b_target, expected + 16, None)
            .await?
            .1
            .iter()
            .filter(|m| is_mail(m))
            .count())
    };
    let mut seen = 0usize;
    let mut first: Option<Instant> = None;
    let mut check = tokio::time::interval(Duration::from_millis(250));
    let mut progress = restarted;
    let (fetched, fetch_secs) = loop {
        if seen >= expected {
            let exact = count(a).await?;
            if exact >= expected {
                break (exact, restarted.elapsed().as_secs_f64());
            }
            seen = exact;
        }
        if progress.elapsed() > STALL || restarted.elapsed() > BUDGET {
            let exact = count(a).await?;
            notes.push(format!(
                "the fetch stopped at {exact} of {expected}: nothing new for {} s (or the {} s budget ran out); fetch_rate covers what arrived",
                STALL.as_secs(),
                BUDGET.as_secs()
            ));
            break (exact, progress.duration_since(restarted).as_secs_f64());
        }
        let before = seen;
        tokio::select! {
            event = events.recv() => match event {
                Ok(MessageEvent::Received(m)) if is_mail(&m) => {
                    seen += 1;
                    first.get_or_insert_with(Instant::now);
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => seen = count(a).await?,
                Err(RecvError::Closed) => bail!("A stopped while fetching"),
            },
            _ = check.tick() => {
                let exact = count(a).await?;
                if exact > 0 {
                    first.get_or_insert_with(Instant::now);
                }
                seen = seen.max(exact);
                bar.tick();
            }
        }
        if seen > before {
            progress = Instant::now();
        }
    };
    let first_ms = first.map_or(f64::NAN, |t| {
        t.duration_since(restarted).as_secs_f64() * 1000.0
    });
    // Whether R let go of what A stored (bounded, not timed).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left = held_for(&relay, a_id)?.unwrap_or_default().0;
    while left > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = held_for(&relay, a_id)?.unwrap_or_default().0;
    }
    if left > 0 {
        notes.push(format!("R still held {left} envelopes for A afterwards"));
    }
    Ok(Mailbox {
        direct_rate,
        direct_sent,
        deposited: held,
        deposit_secs,
        fetched,
        fetch_secs,
        first_ms,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn circuits_are_told_from_direct_connections() {
        let relay = PeerId::random();
        let peer = PeerId::random();
        let dialed: Multiaddr =
            format!("/ip4/127.0.0.1/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{peer}")
                .parse()
                .unwrap();
        let accepted = Multiaddr::empty().with(Protocol::P2p(peer));
        let tcp: Multiaddr = "/ip4/127.0.0.1/tcp/4002".parse().unwrap();
        let quic: Multiaddr = "/ip4/127.0.0.1/udp/4002/quic-v1".parse().unwrap();
        assert!(is_relayed(&dialed));
        assert!(is_relayed(&accepted));
        assert!(!is_relayed(&tcp));
        assert!(!is_relayed(&quic));
    }

    #[test]
    fn path_summary_is_honest() {
        let clean = PathLog {
            checks: 3,
            relayed: 3,
            direct: 0,
            failed: 0,
        };
        assert!(
            clean
                .summary(Route::Relayed)
                .starts_with("path: only relayed")
        );
        let mixed = PathLog { direct: 1, ..clean };
        assert!(mixed.summary(Route::Relayed).starts_with("WARNING"));
        let direct = PathLog {
            checks: 2,
            relayed: 0,
            direct: 2,
            failed: 0,
        };
        assert!(direct.summary(Route::Direct).starts_with("baseline path"));
    }
}
