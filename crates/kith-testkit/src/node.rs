//! In-process kith nodes: [`TestNode`] (a node with its own temporary home, identity, pickle key
//! and options, restartable), [`StoppedNode`], and the pieces they are made of, which kith-bench
//! uses for its own clusters: [`loopback_config`], [`start_node`], [`listen_addrs`],
//! [`open_store_at`] and the lock-retrying [`reopen_store_at`].

use std::{collections::HashSet, path::Path, time::Duration};

use anyhow::{Context, Result};
use kith_net::{Config, DhtMode, Keypair, Multiaddr, PeerId};
use kith_service::{Node, Options, PickleKey};
use kith_store::{Store, StoreConfig, StoreError};
use libp2p::multiaddr::Protocol;
use tempfile::TempDir;

use crate::{metric_value, poll_until};

/// The network id of every test node: its Kademlia protocol is `/kith/test/kad/1.0.0`, which no
/// main-network node speaks.
pub const NETWORK_ID: &str = "test";
/// Upper bound for one request to a node (start, status, shutdown).
pub const STEP: Duration = Duration::from_secs(10);
/// How often [`crate::wait_until`] re-checks its condition.
pub const POLL: Duration = Duration::from_millis(100);

/// Proof-of-work difficulty of every names test: 2^8 hashes, instant even in a debug build.
pub const TEST_NAME_DIFFICULTY: u8 = 8;

/// Node options for names tests: [`TEST_NAME_DIFFICULTY`], the default claim lifetime and resolve
/// quorum, and no automatic re-publish (of names, key bundles or mailbox pointers; a test that
/// wants one asks for it), so that every record in the DHT is there because the test put it there.
pub fn name_options() -> Options {
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
pub enum Transports {
    /// TCP and QUIC, like a default node.
    TcpAndQuic,
    /// TCP only. A stopped node's TCP port refuses a dial at once, while a dial to its dead QUIC
    /// port waits out the QUIC handshake timeout; Kademlia keeps a peer's last address in the
    /// routing table after a failed dial, so every later walk that includes a stopped TCP+QUIC
    /// node waits that long. Tests that stop nodes and time things use TCP only.
    Tcp,
    /// QUIC only: one UDP socket carries all of a node's connections, where TCP needs a
    /// descriptor per connection end (kith-bench's `scale --transport quic`).
    Quic,
}

impl Transports {
    /// Whether the node listens on TCP.
    fn tcp(self) -> bool {
        self != Transports::Quic
    }

    /// Whether the node listens on QUIC.
    fn quic(self) -> bool {
        self != Transports::Tcp
    }
}

/// A running node with its home directory, store, identity and options.
pub struct TestNode {
    node: Node,
    store: Store,
    keypair: Keypair,
    options: Options,
    transports: Transports,
    /// The network's peer-id difficulty it runs with (`kith_net::Config::peer_id_difficulty`).
    peer_id_difficulty: u8,
    home: TempDir,
    tcp: Multiaddr,
    quic: Option<Multiaddr>,
}

impl TestNode {
    /// Starts a node in a fresh temporary home with a fresh identity, default options, listening
    /// on TCP and QUIC.
    pub async fn start(bootstrap: Vec<Multiaddr>) -> Result<Self> {
        Self::start_with(bootstrap, Options::default(), Transports::TcpAndQuic).await
    }

    /// Starts a personal node (TCP) that bootstraps from `relay` and keeps its mail there: the
    /// usual set-up of the mailbox, call and file tests that need a relay.
    pub async fn start_with_mailbox(relay: &TestNode, options: Options) -> Result<Self> {
        let hub = relay.tcp_addr();
        let options = Options {
            mailbox_relays: vec![hub.clone()],
            ..options
        };
        Self::start_with(vec![hub], options, Transports::Tcp).await
    }

    /// Starts a node in a fresh temporary home with a fresh identity, the given options and
    /// transports. Without a pickle key in `options` the node gets a fresh one, kept for its
    /// restarts (as `kith run` keeps one in the home).
    pub async fn start_with(
        bootstrap: Vec<Multiaddr>,
        options: Options,
        transports: Transports,
    ) -> Result<Self> {
        let keypair = Keypair::generate_ed25519();
        Self::start_with_keypair(keypair, bootstrap, options, transports).await
    }

    /// Like [`TestNode::start_with`], with a chosen identity: for tests that play an attacker
    /// whose peer ids were generated to sit next to a DHT key.
    pub async fn start_with_keypair(
        keypair: Keypair,
        bootstrap: Vec<Multiaddr>,
        options: Options,
        transports: Transports,
    ) -> Result<Self> {
        Self::start_costly(keypair, bootstrap, options, transports, 0).await
    }

    /// Like [`TestNode::start_with_keypair`], in a network whose DHT servers need peer ids worked
    /// at `peer_id_difficulty` (`kith_core::id_work`); the node keeps it across restarts.
    pub async fn start_costly(
        keypair: Keypair,
        bootstrap: Vec<Multiaddr>,
        mut options: Options,
        transports: Transports,
        peer_id_difficulty: u8,
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
        let start = Start {
            options,
            transports,
            peer_id_difficulty,
        };
        Self::start_in(home, store, keypair, bootstrap, start).await
    }

    async fn start_in(
        home: TempDir,
        store: Store,
        keypair: Keypair,
        bootstrap: Vec<Multiaddr>,
        start: Start,
    ) -> Result<Self> {
        init_tracing();
        let Start {
            options,
            transports,
            peer_id_difficulty,
        } = start;
        let config = loopback_config(keypair.clone(), NETWORK_ID, transports, bootstrap)?
            .with_peer_id_difficulty(peer_id_difficulty);
        let node = start_node(config, store.clone(), options.clone()).await?;
        let (tcp, quic) = listen_addrs(&node, transports).await?;
        Ok(Self {
            node,
            store,
            keypair,
            options,
            transports,
            peer_id_difficulty,
            home,
            tcp,
            quic,
        })
    }

    /// The key its Olm state is encrypted with in its store.
    pub fn pickle_key(&self) -> Option<&PickleKey> {
        self.options.pickle_key.as_ref()
    }

    /// Its identity key (tests that play a misbehaving peer sign with it).
    pub fn keypair(&self) -> &Keypair {
        &self.keypair
    }

    /// The node itself.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Its peer id.
    pub fn peer_id(&self) -> PeerId {
        self.node.peer_id()
    }

    /// Its TCP listen address, ending in `/p2p/<peer id>`.
    pub fn tcp_addr(&self) -> Multiaddr {
        self.tcp.clone()
    }

    /// Its QUIC listen address, ending in `/p2p/<peer id>`. Only for nodes started with
    /// [`Transports::TcpAndQuic`].
    #[allow(clippy::expect_used)] // a test asking a TCP-only node for QUIC is a broken test
    pub fn quic_addr(&self) -> Multiaddr {
        self.quic
            .clone()
            .expect("quic_addr() of a node started without QUIC")
    }

    /// The peers in its Kademlia routing table.
    pub async fn routing_table(&self) -> Result<HashSet<PeerId>> {
        let table = tokio::time::timeout(STEP, self.node.probe().routing_table())
            .await
            .context("routing_table did not answer")??;
        Ok(table.into_iter().collect())
    }

    /// The value it holds under `key` in its own DHT store, if any: the local answer (holder
    /// `None`) of a GET with quorum one, which ends at that answer when there is one. Only this
    /// key counts, whatever else (key bundles, mailbox pointers) the node holds. An error when
    /// the lookup does not end within `timeout`; a failed lookup is `None`.
    pub async fn local_value(&self, key: &[u8], timeout: Duration) -> Result<Option<Vec<u8>>> {
        let lookup = self.node.probe().get_record(key.to_vec(), 1);
        let Ok(result) = tokio::time::timeout(timeout, lookup)
            .await
            .with_context(|| format!("get_record on {} hung", self.peer_id()))?
        else {
            return Ok(None);
        };
        Ok(result
            .answers
            .into_iter()
            .find(|a| a.holder.is_none())
            .map(|a| a.value))
    }

    /// The value of an unlabelled series in its metrics (0 when the series is absent).
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.node.metrics_text(), series).unwrap_or(0.0)
    }

    /// The peers it has an open connection to.
    pub async fn connected_peers(&self) -> Result<HashSet<PeerId>> {
        let peers = tokio::time::timeout(STEP, self.node.peers())
            .await
            .context("peers did not answer")??;
        Ok(peers.into_iter().map(|p| p.peer_id).collect())
    }

    /// The peers in its address book (the store), most recently seen first.
    pub fn address_book(&self) -> Result<Vec<PeerId>> {
        let known = self.store.peers().all()?;
        known
            .iter()
            .map(|p| PeerId::from_bytes(&p.peer_id).context("peer id in the address book"))
            .collect()
    }

    /// Stops the node (network closed, store flushed) and releases its store.
    pub async fn shutdown(self) -> Result<()> {
        self.stop().await.map(drop)
    }

    /// Stops the node, releases the store, and starts it again from the same home with the same
    /// identity, pickle key and options, and the given bootstrap list. Its listen ports change.
    pub async fn restart(self, bootstrap: Vec<Multiaddr>) -> Result<Self> {
        let options = self.options.clone();
        self.restart_with(bootstrap, options).await
    }

    /// Like [`TestNode::restart`], with other options for the new run (the pickle key stays the
    /// node's unless `options` brings one).
    pub async fn restart_with(
        self,
        bootstrap: Vec<Multiaddr>,
        mut options: Options,
    ) -> Result<Self> {
        if options.pickle_key.is_none() {
            options.pickle_key = self.options.pickle_key.clone();
        }
        let start = Start {
            options,
            transports: self.transports,
            peer_id_difficulty: self.peer_id_difficulty,
        };
        let (home, keypair) = self.stop().await?;
        let store = reopen_store(&home).await?;
        Self::start_in(home, store, keypair, bootstrap, start).await
    }

    /// Stops the node and releases its store but keeps its home, identity and options, so that
    /// it can be started again later ([`StoppedNode::start`]); in between its peer id is free for
    /// a test to play (e.g. with a raw swarm holding [`StoppedNode::keypair`]).
    pub async fn stop_keeping_home(self) -> Result<StoppedNode> {
        let start = Start {
            options: self.options.clone(),
            transports: self.transports,
            peer_id_difficulty: self.peer_id_difficulty,
        };
        let (home, keypair) = self.stop().await?;
        Ok(StoppedNode {
            home,
            keypair,
            start,
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
pub struct StoppedNode {
    home: TempDir,
    keypair: Keypair,
    start: Start,
}

/// How a node is started, kept across restarts.
struct Start {
    options: Options,
    transports: Transports,
    peer_id_difficulty: u8,
}

impl StoppedNode {
    /// Opens its store while it is stopped (to inspect it or to make it look like an older
    /// store), runs `f` with it and the node's pickle key, flushes and closes it.
    pub async fn with_store<T>(&self, f: impl FnOnce(&Store, &PickleKey) -> T) -> Result<T> {
        let store = reopen_store(&self.home).await?;
        let key = self
            .start
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
    pub fn peer_id(&self) -> PeerId {
        self.keypair.public().to_peer_id()
    }

    /// Its identity key.
    pub fn keypair(&self) -> &Keypair {
        &self.keypair
    }

    /// Starts it again from the same home with the same identity, pickle key and options, and
    /// the given bootstrap list. Its listen ports change.
    pub async fn start(self, bootstrap: Vec<Multiaddr>) -> Result<TestNode> {
        let store = reopen_store(&self.home).await?;
        TestNode::start_in(self.home, store, self.keypair, bootstrap, self.start).await
    }
}

/// The store of a test node's home (`<home>/db`), default settings.
fn open_store(home: &TempDir) -> Result<Store> {
    open_store_at(&home.path().join("db"), &StoreConfig::default())
}

/// Opens (or creates) a store at `path`; the error names the path.
pub fn open_store_at(path: &Path, config: &StoreConfig) -> Result<Store> {
    Store::open(path, config).with_context(|| format!("opening the store at {}", path.display()))
}

/// Opens the store of a test node that was just shut down in this process.
///
/// Dropping the last `Store` handle does not release sled's file lock synchronously: a log write
/// that sled 0.34 handed to its own I/O thread pool (`pagecache/iobuf.rs`, `threadpool::spawn`)
/// holds the last reference to the open file until that thread finishes, a moment after the
/// flush it belongs to has returned. Retrying `Locked` for a bounded time covers that window; a
/// node that really still held the store would keep failing and the error would say so.
async fn reopen_store(home: &TempDir) -> Result<Store> {
    reopen_store_at(&home.path().join("db"), &StoreConfig::default()).await
}

/// [`open_store_at`] for a store whose node was just shut down in this process: a `Locked` error
/// is retried for up to 5 s (see [`TestNode::restart`] for why sled needs that).
pub async fn reopen_store_at(path: &Path, config: &StoreConfig) -> Result<Store> {
    let mut last_error = None;
    let reopened = poll_until(
        "sled to release the store lock after a clean shutdown",
        Duration::from_secs(5),
        Duration::from_millis(20),
        async || match open_store_at(path, config) {
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

/// Waits until the node reports a listen address on each of its `transports`; returns them with
/// `/p2p/<id>`: the first is the TCP one (the QUIC one on a QUIC-only node), the second the QUIC
/// one of a TCP and QUIC node. Polls often (every 10 ms, for at most [`STEP`]): every node start
/// waits here.
pub async fn listen_addrs(
    node: &Node,
    transports: Transports,
) -> Result<(Multiaddr, Option<Multiaddr>)> {
    let peer_id = node.peer_id();
    // A plain loop rather than `poll_until` with an async closure: the closure's borrows make
    // the future `Send` only for one lifetime, so a node start could not run on a task of its
    // own (kith-bench `scale` starts several at once).
    let poll = Duration::from_millis(10);
    let polling = async {
        for _ in 0..STEP.as_millis() / poll.as_millis() + 1 {
            if let Ok(status) = node.net_status().await {
                let find = |quic: bool| {
                    status
                        .listen_addrs
                        .iter()
                        .find(|a| a.iter().any(|p| matches!(p, Protocol::QuicV1)) == quic)
                        .map(|a| a.clone().with(Protocol::P2p(peer_id)))
                };
                let found = match transports {
                    Transports::Tcp => find(false).map(|a| (a, None)),
                    Transports::Quic => find(true).map(|a| (a, None)),
                    Transports::TcpAndQuic => find(false).zip(find(true).map(Some)),
                };
                if found.is_some() {
                    return found;
                }
            }
            tokio::time::sleep(poll).await;
        }
        None
    };
    match tokio::time::timeout(STEP, polling).await {
        Ok(Some(found)) => Ok(found),
        Ok(None) | Err(_) => Err(anyhow::anyhow!(
            "timed out after {STEP:?} waiting for {peer_id} to report its listen addresses \
             ({transports:?})"
        )),
    }
}

/// The network configuration of a node that only ever meets other test nodes: listeners on
/// 127.0.0.1 only (random ports), mDNS off, DHT server, and the Kademlia protocol of
/// `network_id`, which no main-network node speaks.
pub fn loopback_config(
    keypair: Keypair,
    network_id: &str,
    transports: Transports,
    bootstrap: Vec<Multiaddr>,
) -> Result<Config> {
    let mut listen = Vec::new();
    if transports.tcp() {
        listen.push("/ip4/127.0.0.1/tcp/0".parse()?);
    }
    if transports.quic() {
        listen.push("/ip4/127.0.0.1/udp/0/quic-v1".parse()?);
    }
    Ok(Config::new(keypair)
        .with_network_id(network_id)
        .with_mdns(false)
        .with_dht_mode(DhtMode::Server)
        .with_listen(listen)
        .with_bootstrap(bootstrap))
}

/// Starts a [`Node`], bounded by [`STEP`]. Callers that build their own `Config` and store
/// (kith-bench's clusters) start nodes here too, then wait for [`listen_addrs`]. Installs no
/// logging: kith-bench writes its report on stdout ([`TestNode`] installs the test logger).
pub async fn start_node(config: Config, store: Store, options: Options) -> Result<Node> {
    tokio::time::timeout(STEP, Node::start_with(config, store, options))
        .await
        .context("Node::start did not return")?
        .context("Node::start failed")
}

/// Logs to the test's captured output; `RUST_LOG` overrides the default level (warn).
pub(crate) fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Fails when another test already installed it, which is fine.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
