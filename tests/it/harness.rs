//! The shared harness: real kith nodes on 127.0.0.1, each with its own temporary home.
//!
//! - [`TestNode::start`]: open a store in a fresh temp home, start a [`Node`] listening on loopback
//!   TCP and QUIC (random ports), wait until both listeners are up.
//! - [`TestNode::start_with`]: the same with chosen [`Options`] and [`Transports`]
//!   ([`TestNode::start_with_keypair`]: and a chosen identity);
//!   [`name_options`] are the name rules every names test uses (8-bit proof of work, no automatic
//!   re-publish).
//! - [`TestNode::restart`], [`TestNode::restart_with`]: stop a node, release its store and start it
//!   again from the same home with the same identity and pickle key.
//! - [`TestNode::stop_keeping_home`], [`StoppedNode::start`]: the same in two steps, with the node
//!   down in between.
//! - [`star`], [`star_with`], [`chain_with`], [`node_pair`]: networks where everyone bootstraps from
//!   the first node, or each node from the one before; [`wait_for_mesh`] waits until every node
//!   knows every other.
//! - [`LyingHolder`]: a DHT holder that stores and serves anything, to play a malicious holder.
//! - [`metric_value`]: one series out of a node's Prometheus text.
//! - [`wait_until`], [`poll_until`]: bounded polling; on timeout the error names what was awaited.
//!
//! Nodes never listen on anything but 127.0.0.1, mDNS is off and the network id is [`NETWORK_ID`],
//! so nothing started here can meet a node of the main network.

use std::{
    collections::{BTreeSet, HashSet},
    fmt::Write as _,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use kith_net::{Config, DhtMode, Keypair, Multiaddr, PeerId, RecordValidator, Validated};
use kith_service::{Node, Options, PickleKey};
use kith_store::{Store, StoreConfig, StoreError};
use libp2p::{futures, multiaddr::Protocol};
use tempfile::TempDir;

/// The network id of every test node: its Kademlia protocol is `/kith/test/kad/1.0.0`, which no
/// main-network node speaks.
pub(crate) const NETWORK_ID: &str = "test";
/// Upper bound for one request to a node (start, status, shutdown).
pub(crate) const STEP: Duration = Duration::from_secs(10);
/// How often [`wait_until`] re-checks its condition.
pub(crate) const POLL: Duration = Duration::from_millis(100);

/// Proof-of-work difficulty of every names test: 2^8 hashes, instant even in a debug build.
pub(crate) const TEST_NAME_DIFFICULTY: u8 = 8;

/// Node options for names tests: [`TEST_NAME_DIFFICULTY`], the default claim lifetime and resolve
/// quorum, and no automatic re-publish (of names, key bundles or mailbox pointers; a test that
/// wants one asks for it), so that every record in the DHT is there because the test put it there.
pub(crate) fn name_options() -> Options {
    let mut options = Options {
        republish_every: Duration::from_secs(3600),
        first_republish_after: Duration::from_secs(3600),
        ..Options::default()
    };
    options.name_rules.difficulty = TEST_NAME_DIFFICULTY;
    options
}

/// Which transports a test node listens on (always on 127.0.0.1, random ports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transports {
    /// TCP and QUIC, like a default node.
    TcpAndQuic,
    /// TCP only. A stopped node's TCP port refuses a dial at once, while a dial to its dead QUIC
    /// port waits out the QUIC handshake timeout; Kademlia keeps a peer's last address in the
    /// routing table after a failed dial, so every later walk that includes a stopped TCP+QUIC
    /// node waits that long. Tests that stop nodes and time things use TCP only.
    Tcp,
}

/// A running node with its home directory, store, identity and options.
pub(crate) struct TestNode {
    node: Node,
    store: Store,
    keypair: Keypair,
    options: Options,
    transports: Transports,
    home: TempDir,
    tcp: Multiaddr,
    quic: Option<Multiaddr>,
}

impl TestNode {
    /// Starts a node in a fresh temporary home with a fresh identity, default options, listening
    /// on TCP and QUIC.
    pub(crate) async fn start(bootstrap: Vec<Multiaddr>) -> Result<Self> {
        Self::start_with(bootstrap, Options::default(), Transports::TcpAndQuic).await
    }

    /// Starts a node in a fresh temporary home with a fresh identity, the given options and
    /// transports. Without a pickle key in `options` the node gets a fresh one, kept for its
    /// restarts (as `kith run` keeps one in the home).
    pub(crate) async fn start_with(
        bootstrap: Vec<Multiaddr>,
        options: Options,
        transports: Transports,
    ) -> Result<Self> {
        let keypair = Keypair::generate_ed25519();
        Self::start_with_keypair(keypair, bootstrap, options, transports).await
    }

    /// Like [`TestNode::start_with`], with a chosen identity: for tests that play an attacker
    /// whose peer ids were generated to sit next to a DHT key.
    pub(crate) async fn start_with_keypair(
        keypair: Keypair,
        bootstrap: Vec<Multiaddr>,
        mut options: Options,
        transports: Transports,
    ) -> Result<Self> {
        if options.pickle_key.is_none() {
            options.pickle_key =
                Some(PickleKey::generate().context("generating the node's pickle key")?);
        }
        let home = tempfile::Builder::new()
            .prefix("kith-it-")
            .tempdir()
            .context("creating a temporary home")?;
        let store = open_store(&home)?;
        Self::start_in(home, store, keypair, bootstrap, options, transports).await
    }

    async fn start_in(
        home: TempDir,
        store: Store,
        keypair: Keypair,
        bootstrap: Vec<Multiaddr>,
        options: Options,
        transports: Transports,
    ) -> Result<Self> {
        init_tracing();
        let mut listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
        if transports == Transports::TcpAndQuic {
            listen.push("/ip4/127.0.0.1/udp/0/quic-v1".parse()?);
        }
        let config = Config::new(keypair.clone())
            .with_network_id(NETWORK_ID)
            .with_mdns(false)
            .with_dht_mode(DhtMode::Server)
            .with_listen(listen)
            .with_bootstrap(bootstrap);
        let node = tokio::time::timeout(
            STEP,
            Node::start_with(config, store.clone(), options.clone()),
        )
        .await
        .context("Node::start did not return")?
        .context("Node::start failed")?;
        let (tcp, quic) = listen_addrs(&node, transports).await?;
        Ok(Self {
            node,
            store,
            keypair,
            options,
            transports,
            home,
            tcp,
            quic,
        })
    }

    /// The key its Olm state is encrypted with in its store.
    pub(crate) fn pickle_key(&self) -> Option<&PickleKey> {
        self.options.pickle_key.as_ref()
    }

    /// Its identity key (tests that play a misbehaving peer sign with it).
    pub(crate) fn keypair(&self) -> &Keypair {
        &self.keypair
    }

    /// The node itself.
    pub(crate) fn node(&self) -> &Node {
        &self.node
    }

    /// Its peer id.
    pub(crate) fn peer_id(&self) -> PeerId {
        self.node.peer_id()
    }

    /// Its TCP listen address, ending in `/p2p/<peer id>`.
    pub(crate) fn tcp_addr(&self) -> Multiaddr {
        self.tcp.clone()
    }

    /// Its QUIC listen address, ending in `/p2p/<peer id>`. Only for nodes started with
    /// [`Transports::TcpAndQuic`].
    #[allow(clippy::expect_used)] // a test asking a TCP-only node for QUIC is a broken test
    pub(crate) fn quic_addr(&self) -> Multiaddr {
        self.quic
            .clone()
            .expect("quic_addr() of a node started without QUIC")
    }

    /// The peers in its Kademlia routing table.
    pub(crate) async fn routing_table(&self) -> Result<HashSet<PeerId>> {
        let table = tokio::time::timeout(STEP, self.node.probe().routing_table())
            .await
            .context("routing_table did not answer")??;
        Ok(table.into_iter().collect())
    }

    /// The value of an unlabelled series in its metrics (0 when the series is absent).
    pub(crate) fn metric(&self, series: &str) -> f64 {
        metric_value(&self.node.metrics_text(), series).unwrap_or(0.0)
    }

    /// The peers it has an open connection to.
    pub(crate) async fn connected_peers(&self) -> Result<HashSet<PeerId>> {
        let peers = tokio::time::timeout(STEP, self.node.peers())
            .await
            .context("peers did not answer")??;
        Ok(peers.into_iter().map(|p| p.peer_id).collect())
    }

    /// The peers in its address book (the store), most recently seen first.
    pub(crate) fn address_book(&self) -> Result<Vec<PeerId>> {
        let known = self.store.peers().all()?;
        known
            .iter()
            .map(|p| PeerId::from_bytes(&p.peer_id).context("peer id in the address book"))
            .collect()
    }

    /// Stops the node (network closed, store flushed) and releases its store.
    pub(crate) async fn shutdown(self) -> Result<()> {
        self.stop().await.map(drop)
    }

    /// Stops the node, releases the store, and starts it again from the same home with the same
    /// identity, pickle key and options, and the given bootstrap list. Its listen ports change.
    pub(crate) async fn restart(self, bootstrap: Vec<Multiaddr>) -> Result<Self> {
        let options = self.options.clone();
        self.restart_with(bootstrap, options).await
    }

    /// Like [`TestNode::restart`], with other options for the new run (the pickle key stays the
    /// node's unless `options` brings one).
    pub(crate) async fn restart_with(
        self,
        bootstrap: Vec<Multiaddr>,
        mut options: Options,
    ) -> Result<Self> {
        if options.pickle_key.is_none() {
            options.pickle_key = self.options.pickle_key.clone();
        }
        let transports = self.transports;
        let (home, keypair) = self.stop().await?;
        let store = reopen_store(&home).await?;
        Self::start_in(home, store, keypair, bootstrap, options, transports).await
    }

    /// Stops the node and releases its store but keeps its home, identity and options, so that
    /// it can be started again later ([`StoppedNode::start`]); in between its peer id is free for
    /// a test to play (e.g. with a raw swarm holding [`StoppedNode::keypair`]).
    pub(crate) async fn stop_keeping_home(self) -> Result<StoppedNode> {
        let options = self.options.clone();
        let transports = self.transports;
        let (home, keypair) = self.stop().await?;
        Ok(StoppedNode {
            home,
            keypair,
            options,
            transports,
        })
    }

    async fn stop(self) -> Result<(TempDir, Keypair)> {
        let peer_id = self.peer_id();
        tokio::time::timeout(STEP, self.node.shutdown())
            .await
            .with_context(|| format!("shutdown of {peer_id} did not finish"))?
            .with_context(|| format!("shutdown of {peer_id} failed"))?;
        // The sled lock goes away with the last handle: the node's and ours.
        drop(self.node);
        drop(self.store);
        Ok((self.home, self.keypair))
    }
}

/// A node stopped with [`TestNode::stop_keeping_home`]: its home, identity and options.
pub(crate) struct StoppedNode {
    home: TempDir,
    keypair: Keypair,
    options: Options,
    transports: Transports,
}

impl StoppedNode {
    /// Opens its store while it is stopped (to inspect it or to make it look like an older
    /// store), runs `f` with it and the node's pickle key, flushes and closes it.
    pub(crate) async fn with_store<T>(&self, f: impl FnOnce(&Store, &PickleKey) -> T) -> Result<T> {
        let store = reopen_store(&self.home).await?;
        let key = self
            .options
            .pickle_key
            .clone()
            .context("a test node always has a pickle key")?;
        let out = f(&store, &key);
        store.flush_blocking()?;
        drop(store);
        Ok(out)
    }

    /// Its peer id.
    pub(crate) fn peer_id(&self) -> PeerId {
        self.keypair.public().to_peer_id()
    }

    /// Its identity key.
    pub(crate) fn keypair(&self) -> &Keypair {
        &self.keypair
    }

    /// Starts it again from the same home with the same identity, pickle key and options, and
    /// the given bootstrap list. Its listen ports change.
    pub(crate) async fn start(self, bootstrap: Vec<Multiaddr>) -> Result<TestNode> {
        let store = reopen_store(&self.home).await?;
        TestNode::start_in(
            self.home,
            store,
            self.keypair,
            bootstrap,
            self.options,
            self.transports,
        )
        .await
    }
}

fn open_store(home: &TempDir) -> Result<Store> {
    let path = home.path().join("db");
    Store::open(&path, &StoreConfig::default())
        .with_context(|| format!("opening the store at {}", path.display()))
}

/// Opens the store of a node that was just shut down in this process.
///
/// Dropping the last `Store` handle does not release sled's file lock synchronously: a log write
/// that sled 0.34 handed to its own I/O thread pool (`pagecache/iobuf.rs`, `threadpool::spawn`)
/// holds the last reference to the open file until that thread finishes, a moment after the
/// flush it belongs to has returned. Retrying `Locked` for a bounded time covers that window; a
/// node that really still held the store would keep failing and the error would say so.
async fn reopen_store(home: &TempDir) -> Result<Store> {
    let mut last_error = None;
    let reopened = poll_until(
        "sled to release the store lock after a clean shutdown",
        Duration::from_secs(5),
        Duration::from_millis(20),
        async || match open_store(home) {
            Ok(store) => Some(Ok(store)),
            Err(e) if is_locked(&e) => {
                last_error = Some(e);
                None
            }
            Err(e) => Some(Err(e)),
        },
    )
    .await;
    match reopened {
        Ok(result) => result,
        Err(timeout) => Err(match last_error {
            Some(e) => e.context(timeout),
            None => timeout,
        }),
    }
}

fn is_locked(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref(), Some(StoreError::Locked { .. }))
}

/// Waits until the node reports its TCP (and, if asked for, QUIC) listen address; returns them
/// with `/p2p/<id>`. Polls often: every test node start waits here.
async fn listen_addrs(
    node: &Node,
    transports: Transports,
) -> Result<(Multiaddr, Option<Multiaddr>)> {
    let peer_id = node.peer_id();
    let want_quic = transports == Transports::TcpAndQuic;
    poll_until(
        &format!("{peer_id} to report its listen addresses ({transports:?})"),
        STEP,
        Duration::from_millis(10),
        async || {
            let status = node.status().await.ok()?;
            let find = |quic: bool| {
                status
                    .net
                    .listen_addrs
                    .iter()
                    .find(|a| a.iter().any(|p| matches!(p, Protocol::QuicV1)) == quic)
                    .map(|a| a.clone().with(Protocol::P2p(peer_id)))
            };
            let tcp = find(false)?;
            let quic = if want_quic { Some(find(true)?) } else { None };
            Some((tcp, quic))
        },
    )
    .await
}

/// `n` nodes; the first has no bootstrap list, every other one bootstraps only from the first
/// one's TCP address.
pub(crate) async fn star(n: usize) -> Result<Vec<TestNode>> {
    let mut nodes = Vec::with_capacity(n);
    if n == 0 {
        return Ok(nodes);
    }
    let hub = TestNode::start(Vec::new()).await?;
    let bootstrap = vec![hub.tcp_addr()];
    nodes.push(hub);
    for _ in 1..n {
        nodes.push(TestNode::start(bootstrap.clone()).await?);
    }
    Ok(nodes)
}

/// [`star`] with the given options and transports on every node; the nodes after the hub start
/// concurrently.
pub(crate) async fn star_with(
    n: usize,
    options: Options,
    transports: Transports,
) -> Result<Vec<TestNode>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let hub = TestNode::start_with(Vec::new(), options.clone(), transports).await?;
    let bootstrap = vec![hub.tcp_addr()];
    let leaves = futures::future::try_join_all(
        (1..n).map(|_| TestNode::start_with(bootstrap.clone(), options.clone(), transports)),
    )
    .await?;
    let mut nodes = Vec::with_capacity(n);
    nodes.push(hub);
    nodes.extend(leaves);
    Ok(nodes)
}

/// `n` nodes in a line: each bootstraps only from the TCP address of the one started before it,
/// so the last one starts out knowing nobody but its neighbour.
pub(crate) async fn chain_with(
    n: usize,
    options: Options,
    transports: Transports,
) -> Result<Vec<TestNode>> {
    let mut nodes: Vec<TestNode> = Vec::with_capacity(n);
    for _ in 0..n {
        let bootstrap = nodes.last().map(TestNode::tcp_addr).into_iter().collect();
        nodes.push(TestNode::start_with(bootstrap, options.clone(), transports).await?);
    }
    Ok(nodes)
}

/// Waits until every node's routing table holds every other node and every peer in `extra`
/// (bounded by `timeout`); on timeout the error carries every routing table.
pub(crate) async fn wait_for_mesh(
    nodes: &[TestNode],
    extra: &[PeerId],
    timeout: Duration,
) -> Result<()> {
    let ids: Vec<PeerId> = nodes.iter().map(TestNode::peer_id).collect();
    let meshed = wait_until(
        &format!(
            "each of {} nodes to have every other one (and {} extra peers) in its routing table",
            nodes.len(),
            extra.len()
        ),
        timeout,
        POLL,
        async || {
            for node in nodes {
                let Ok(table) = node.routing_table().await else {
                    return false;
                };
                let me = node.peer_id();
                if !ids
                    .iter()
                    .chain(extra)
                    .all(|p| *p == me || table.contains(p))
                {
                    return false;
                }
            }
            true
        },
    )
    .await;
    match meshed {
        Ok(()) => Ok(()),
        Err(e) => Err(e.context(routing_report(nodes).await)),
    }
}

/// Two nodes, the second bootstrapped from the first one's TCP address.
pub(crate) async fn node_pair() -> Result<(TestNode, TestNode)> {
    let mut nodes = star(2).await?.into_iter();
    match (nodes.next(), nodes.next()) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => bail!("star(2) did not return two nodes"),
    }
}

/// Shuts every node down, in order; reports the first failure after trying all of them.
pub(crate) async fn shutdown_all(nodes: Vec<TestNode>) -> Result<()> {
    let mut first_error = None;
    for node in nodes {
        if let Err(e) = node.shutdown().await {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Every node's routing table, for failure messages. Peers are numbered by their position in
/// `nodes`; unknown peers are printed as ids.
pub(crate) async fn routing_report(nodes: &[TestNode]) -> String {
    let ids: Vec<PeerId> = nodes.iter().map(TestNode::peer_id).collect();
    let name = |p: &PeerId| match ids.iter().position(|id| id == p) {
        Some(i) => format!("node{}", i + 1),
        None => p.to_string(),
    };
    let mut out = String::new();
    for (i, node) in nodes.iter().enumerate() {
        let table = match node.routing_table().await {
            Ok(t) => t
                .iter()
                .map(name)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            Err(e) => vec![format!("<{e}>")],
        };
        let _ = writeln!(out, "node{} ({}): {:?}", i + 1, ids[i], table);
    }
    out
}

/// The value of an unlabelled series in Prometheus text output.
pub(crate) fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// A DHT holder that stores and serves whatever it is given: kith's own network layer, speaking
/// the test network's protocols like any node, but with a validator that accepts every record.
/// Kademlia checks nothing a GET returns, so this is what a malicious holder looks like to a
/// resolver.
pub(crate) struct LyingHolder {
    client: kith_net::Client,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Accepts every record.
struct AcceptAnything;

impl RecordValidator for AcceptAnything {
    fn validate(&self, _key: &[u8], value: &[u8]) -> Result<Validated, String> {
        Ok(Validated {
            class: value.to_vec(),
            expires: None,
        })
    }

    /// Keeps the first record it was given, so one liar's record never overwrites another's.
    fn may_replace(&self, _key: &[u8], _stored: &[u8], _incoming: &[u8]) -> bool {
        false
    }
}

impl LyingHolder {
    /// Starts a lying holder on loopback (TCP only, DHT server) with the given bootstrap list.
    pub(crate) async fn start(bootstrap: Vec<Multiaddr>) -> Result<Self> {
        init_tracing();
        let config = Config::new(Keypair::generate_ed25519())
            .with_network_id(NETWORK_ID)
            .with_mdns(false)
            .with_dht_mode(DhtMode::Server)
            .with_listen(vec!["/ip4/127.0.0.1/tcp/0".parse()?])
            .with_bootstrap(bootstrap)
            .with_record_validator(std::sync::Arc::new(AcceptAnything));
        let (client, mut events, event_loop) =
            kith_net::new(config, kith_net::Metrics::default()).context("starting a liar")?;
        let run = tokio::spawn(event_loop.run());
        let drain = tokio::spawn(async move { while events.recv().await.is_some() {} });
        let liar = Self {
            client,
            tasks: vec![run, drain],
        };
        let peer_id = liar.peer_id();
        wait_until(
            &format!("lying holder {peer_id} to listen"),
            STEP,
            POLL,
            async || {
                liar.client
                    .status()
                    .await
                    .is_ok_and(|s| !s.listen_addrs.is_empty())
            },
        )
        .await?;
        Ok(liar)
    }

    /// Its peer id.
    pub(crate) fn peer_id(&self) -> PeerId {
        self.client.local_peer_id()
    }

    /// Stores `value` under `key` in its own DHT store, to serve it to every GET. (It also offers
    /// it to the closest peers, who judge it by their own rules.)
    pub(crate) async fn hold(&self, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        // The local store takes the record even when every peer refuses it, so the outcome of the
        // network part does not matter here; the local answer to a GET below is what counts.
        let _ = tokio::time::timeout(
            STEP,
            self.client.put_record(key.clone(), value.clone(), None),
        )
        .await;
        wait_until("the liar to hold its record", STEP, POLL, async || {
            let Ok(Ok(got)) =
                tokio::time::timeout(STEP, self.client.get_record(key.clone(), 1)).await
            else {
                return false;
            };
            got.answers
                .iter()
                .any(|a| a.holder.is_none() && a.value == value)
        })
        .await
    }

    /// Stops its network loop.
    pub(crate) async fn shutdown(self) -> Result<()> {
        tokio::time::timeout(STEP, self.client.shutdown())
            .await
            .context("liar shutdown did not finish")?
            .context("liar shutdown failed")?;
        for task in self.tasks {
            tokio::time::timeout(STEP, task)
                .await
                .context("liar task did not end")?
                .context("liar task failed")?;
        }
        Ok(())
    }
}

/// Polls `check` every `poll` until it returns true, for at most `timeout` (and at most
/// `timeout / poll + 1` polls). The error says what was awaited.
pub(crate) async fn wait_until(
    what: &str,
    timeout: Duration,
    poll: Duration,
    mut check: impl AsyncFnMut() -> bool,
) -> Result<()> {
    poll_until(what, timeout, poll, async || check().await.then_some(())).await
}

/// Checks `check` every `poll` for `window` and fails at the first miss: for what must stay true
/// where no event says it can no longer change (a late duplicate from gossip or sync).
pub(crate) async fn holds_for(
    what: &str,
    window: Duration,
    poll: Duration,
    mut check: impl AsyncFnMut() -> std::result::Result<(), String>,
) -> Result<()> {
    let start = tokio::time::Instant::now();
    loop {
        if let Err(why) = check().await {
            return Err(anyhow!(
                "{what} stopped holding after {:?}: {why}",
                start.elapsed()
            ));
        }
        if start.elapsed() >= window {
            return Ok(());
        }
        tokio::time::sleep(poll).await;
    }
}

/// Like [`wait_until`], for a check that produces a value once it succeeds.
pub(crate) async fn poll_until<T>(
    what: &str,
    timeout: Duration,
    poll: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> Result<T> {
    let max_polls = timeout.as_millis() / poll.as_millis().max(1) + 1;
    let polling = async {
        for _ in 0..max_polls {
            if let Some(value) = check().await {
                return Some(value);
            }
            tokio::time::sleep(poll).await;
        }
        None
    };
    match tokio::time::timeout(timeout, polling).await {
        Ok(Some(value)) => Ok(value),
        Ok(None) | Err(_) => Err(anyhow!("timed out after {timeout:?} waiting for {what}")),
    }
}

/// Logs to the test's captured output; `RUST_LOG` overrides the default level (warn).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Fails when another test already installed it, which is fine.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
