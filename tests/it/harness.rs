//! The shared harness: real kith nodes on 127.0.0.1, each with its own temporary home.
//!
//! - [`TestNode::start`]: open a store in a fresh temp home, start a [`Node`] listening on loopback
//!   TCP and QUIC (random ports), wait until both listeners are up.
//! - [`TestNode::restart`]: stop a node, release its store and start it again from the same home
//!   with the same identity.
//! - [`star`], [`node_pair`]: small networks where everyone bootstraps from the first node.
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
use kith_net::{Config, DhtMode, Keypair, Multiaddr, PeerId};
use kith_service::Node;
use kith_store::{Store, StoreConfig, StoreError};
use libp2p::multiaddr::Protocol;
use tempfile::TempDir;

/// The network id of every test node: its Kademlia protocol is `/kith/test/kad/1.0.0`, which no
/// main-network node speaks.
pub(crate) const NETWORK_ID: &str = "test";
/// Upper bound for one request to a node (start, status, shutdown).
pub(crate) const STEP: Duration = Duration::from_secs(10);
/// How often [`wait_until`] re-checks its condition.
pub(crate) const POLL: Duration = Duration::from_millis(100);

/// A running node with its home directory, store and identity.
pub(crate) struct TestNode {
    node: Node,
    store: Store,
    keypair: Keypair,
    home: TempDir,
    tcp: Multiaddr,
    quic: Multiaddr,
}

impl TestNode {
    /// Starts a node in a fresh temporary home with a fresh identity.
    pub(crate) async fn start(bootstrap: Vec<Multiaddr>) -> Result<Self> {
        let home = tempfile::Builder::new()
            .prefix("kith-it-")
            .tempdir()
            .context("creating a temporary home")?;
        let store = open_store(&home)?;
        Self::start_in(home, store, Keypair::generate_ed25519(), bootstrap).await
    }

    async fn start_in(
        home: TempDir,
        store: Store,
        keypair: Keypair,
        bootstrap: Vec<Multiaddr>,
    ) -> Result<Self> {
        init_tracing();
        let config = Config::new(keypair.clone())
            .with_network_id(NETWORK_ID)
            .with_mdns(false)
            .with_dht_mode(DhtMode::Server)
            .with_listen(vec![
                "/ip4/127.0.0.1/tcp/0".parse()?,
                "/ip4/127.0.0.1/udp/0/quic-v1".parse()?,
            ])
            .with_bootstrap(bootstrap);
        let node = tokio::time::timeout(STEP, Node::start(config, store.clone()))
            .await
            .context("Node::start did not return")?
            .context("Node::start failed")?;
        let (tcp, quic) = listen_addrs(&node).await?;
        Ok(Self {
            node,
            store,
            keypair,
            home,
            tcp,
            quic,
        })
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

    /// Its QUIC listen address, ending in `/p2p/<peer id>`.
    pub(crate) fn quic_addr(&self) -> Multiaddr {
        self.quic.clone()
    }

    /// The peers in its Kademlia routing table.
    pub(crate) async fn routing_table(&self) -> Result<HashSet<PeerId>> {
        let table = tokio::time::timeout(STEP, self.node.net().routing_table())
            .await
            .context("routing_table did not answer")??;
        Ok(table.into_iter().collect())
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
    /// identity and the given bootstrap list. Its listen ports change.
    pub(crate) async fn restart(self, bootstrap: Vec<Multiaddr>) -> Result<Self> {
        let (home, keypair) = self.stop().await?;
        let store = reopen_store(&home).await?;
        Self::start_in(home, store, keypair, bootstrap).await
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

/// Waits until the node reports a TCP and a QUIC listen address; returns both with `/p2p/<id>`.
async fn listen_addrs(node: &Node) -> Result<(Multiaddr, Multiaddr)> {
    let peer_id = node.peer_id();
    poll_until(
        &format!("{peer_id} to report a TCP and a QUIC listen address"),
        STEP,
        POLL,
        async || {
            let status = node.status().await.ok()?;
            let find = |quic: bool| {
                status
                    .net
                    .listen_addrs
                    .iter()
                    .find(|a| a.iter().any(|p| matches!(p, Protocol::QuicV1)) == quic)
                    .cloned()
            };
            let tcp = find(false)?;
            let quic = find(true)?;
            Some((
                tcp.with(Protocol::P2p(peer_id)),
                quic.with(Protocol::P2p(peer_id)),
            ))
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
