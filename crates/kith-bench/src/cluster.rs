//! In-process networks of kith nodes or raw libp2p nodes, started the same way, so a scenario can
//! run the same measurement on both.
//!
//! Every node listens on `/ip4/127.0.0.1/tcp/0` only (or, in a cluster set to
//! [`Transport::Quic`], on `/ip4/127.0.0.1/udp/0/quic-v1` only), has mDNS off and speaks the Kademlia
//! protocol of network id [`NETWORK_ID`] (`/kith/bench/kad/1.0.0`); kith nodes keep their store
//! under the cluster's directory, which the caller owns and removes.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use kith_net::{Keypair, Multiaddr, PeerId};
use kith_service::{Node, Options};
use kith_store::StoreConfig;
use kith_testkit::Transports;
use libp2p::multiaddr::Protocol;
use serde::{Deserialize, Serialize};

use crate::baseline::{RawConfig, RawNode};

/// The network id of every benchmark node.
pub(crate) const NETWORK_ID: &str = "bench";

/// Upper bound for one request to a node (start, status, routing table).
const STEP: Duration = Duration::from_secs(10);

/// Which implementation a cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `kith_service::Node` with its own `kith_store::Store`.
    Kith,
    /// A bare libp2p swarm (identify + Kademlia), see [`crate::baseline`].
    Raw,
}

impl Kind {
    /// `kith` or `raw`, as the hidden worker's `--kind` flag spells it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Kith => "kith",
            Kind::Raw => "raw",
        }
    }
}

/// The one transport every node of a cluster listens on and dials, kith and raw alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Transport {
    /// TCP with Noise and yamux: one descriptor per connection end.
    #[default]
    Tcp,
    /// QUIC: one UDP socket per node carries all its connections (`scale` at a thousand nodes
    /// in one process, where TCP's descriptors run out first).
    Quic,
}

impl Transport {
    /// `tcp` or `quic`, as `--transport` spells it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Quic => "quic",
        }
    }

    /// Parses `tcp` or `quic`.
    pub(crate) fn parse(text: &str) -> anyhow::Result<Self> {
        match text {
            "tcp" => Ok(Transport::Tcp),
            "quic" => Ok(Transport::Quic),
            other => bail!("unknown transport {other:?} (tcp or quic)"),
        }
    }

    /// The loopback listen address on a random port.
    fn listen_addr(self) -> Multiaddr {
        match self {
            Transport::Tcp => crate::baseline::loopback_tcp(),
            Transport::Quic => crate::baseline::loopback_quic(),
        }
    }

    /// The same choice for a kith node started through kith-testkit.
    fn testkit(self) -> Transports {
        match self {
            Transport::Tcp => Transports::Tcp,
            Transport::Quic => Transports::Quic,
        }
    }
}

/// Per-node settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NodeSettings {
    /// Small buffers and caches for large networks (`scale`); defaults otherwise.
    pub(crate) reduced: bool,
}

impl NodeSettings {
    fn idle_timeout(self) -> Duration {
        // Both kinds use the same value, so both hold their connections equally long. A joining
        // node's bootstrap touches a large part of the network; with kith's default of 60 s those
        // connections pile up faster than a 20,000-descriptor limit allows at a hundred nodes.
        if self.reduced {
            kith_testkit::SCALE_IDLE_TIMEOUT
        } else {
            Duration::from_secs(60)
        }
    }

    fn query_timeout(self) -> Duration {
        if self.reduced {
            kith_testkit::SCALE_QUERY_TIMEOUT
        } else {
            Duration::from_secs(30)
        }
    }
}

/// A running node of either kind. Cheap to clone: both kinds are handles to tasks, so a
/// scenario can use a node while the set of nodes changes (`scale --churn`).
#[derive(Debug, Clone)]
pub(crate) enum Handle {
    /// A kith node.
    Kith(Node),
    /// A raw swarm.
    Raw(RawNode),
}

impl Handle {
    /// The kith node, if it is one.
    pub(crate) fn kith(&self) -> Option<&Node> {
        match self {
            Handle::Kith(node) => Some(node),
            Handle::Raw(_) => None,
        }
    }

    /// The raw node, if it is one.
    pub(crate) fn raw(&self) -> Option<&RawNode> {
        match self {
            Handle::Raw(node) => Some(node),
            Handle::Kith(_) => None,
        }
    }

    /// A `get_closest_peers` walk for `key`.
    pub(crate) async fn closest(&self, key: PeerId) -> anyhow::Result<Vec<PeerId>> {
        match self {
            Handle::Kith(node) => Ok(node.probe().get_closest_peers(key).await?),
            Handle::Raw(node) => node.get_closest_peers(key).await,
        }
    }

    /// Routing table size (bounded by [`STEP`]).
    pub(crate) async fn routing_len(&self) -> anyhow::Result<usize> {
        let ask = async {
            match self {
                Handle::Kith(node) => Ok(node.probe().routing_table().await?.len()),
                Handle::Raw(node) => node.routing_len().await,
            }
        };
        tokio::time::timeout(STEP, ask)
            .await
            .context("routing table request timed out")?
    }

    /// Established connections, both directions, and for a kith node how many its connection
    /// manager has closed so far (trims and idle closes; `None` for a raw swarm, which has no
    /// manager), bounded by [`STEP`]: `scale`'s per-node connection figures and its churn at rest.
    pub(crate) async fn connection_counts(&self) -> anyhow::Result<(usize, Option<u64>)> {
        let ask = async {
            match self {
                Handle::Kith(node) => {
                    let net = node.status().await?.net;
                    Ok((
                        net.connections_inbound + net.connections_outbound,
                        Some(net.connections_trimmed + net.connections_idle_closed),
                    ))
                }
                Handle::Raw(node) => Ok((node.connections().await?, None)),
            }
        };
        tokio::time::timeout(STEP, ask)
            .await
            .context("connection count request timed out")?
    }

    /// Starts a Kademlia bootstrap.
    pub(crate) async fn bootstrap(&self) -> anyhow::Result<()> {
        match self {
            Handle::Kith(node) => Ok(node.probe().bootstrap().await?),
            Handle::Raw(node) => node.bootstrap().await,
        }
    }

    /// Stops the node (bounded by [`STEP`]); kith nodes flush their stores.
    pub(crate) async fn stop(&self) {
        let _ = tokio::time::timeout(STEP, async {
            match self {
                Handle::Kith(node) => {
                    let _ = node.shutdown().await;
                }
                Handle::Raw(node) => {
                    let _ = node.shutdown().await;
                }
            }
        })
        .await;
    }
}

/// One started node.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    /// The node.
    pub(crate) handle: Handle,
    /// Its peer id.
    pub(crate) peer_id: PeerId,
    /// Listen address (of the cluster's [`Transport`]) ending in `/p2p/<peer id>`.
    pub(crate) addr: Multiaddr,
}

/// Everything needed to start one more node of a cluster, without the cluster: `scale --churn`
/// starts nodes while others are in use.
#[derive(Debug, Clone)]
pub(crate) struct Spawner {
    kind: Kind,
    settings: NodeSettings,
    dir: PathBuf,
    /// Service options of kith nodes; `None`: `Options::default()`.
    options: Option<Options>,
    /// Raw nodes also speak request-response (see [`Cluster::with_request_response`]).
    request_response: bool,
    /// The network's peer-id difficulty kith nodes start with (see
    /// [`Cluster::with_peer_id_difficulty`]).
    peer_id_difficulty: u8,
    /// What every node listens on (see [`Cluster::with_transport`]).
    transport: Transport,
}

impl Spawner {
    /// Starts a node that bootstraps from `bootstrap`, with its home (kith) in `node-<slot>`
    /// under the cluster's directory; returns once it listens. `keypair` is only for kith.
    pub(crate) async fn start(
        &self,
        slot: usize,
        bootstrap: Vec<Multiaddr>,
        keypair: Option<Keypair>,
    ) -> anyhow::Result<Member> {
        match self.kind {
            Kind::Kith => {
                let keypair = keypair.unwrap_or_else(Keypair::generate_ed25519);
                self.start_kith(slot, bootstrap, keypair, self.peer_id_difficulty)
                    .await
            }
            Kind::Raw => {
                if keypair.is_some() {
                    bail!("a chosen identity is only for kith clusters");
                }
                let config = RawConfig {
                    listen: vec![self.transport.listen_addr()],
                    bootstrap,
                    idle_timeout: self.settings.idle_timeout(),
                    query_timeout: self.settings.query_timeout(),
                    request_response: self.request_response,
                    ..RawConfig::dht(NETWORK_ID)
                };
                let node = tokio::time::timeout(STEP, RawNode::start(config))
                    .await
                    .context("raw node did not start in time")??;
                let peer_id = node.peer_id();
                // Its only listener is the cluster transport's.
                let addr = node
                    .listen_addrs()
                    .first()
                    .cloned()
                    .context("raw node has no listen address")?
                    .with(Protocol::P2p(peer_id));
                Ok(Member {
                    handle: Handle::Raw(node),
                    peer_id,
                    addr,
                })
            }
        }
    }

    async fn start_kith(
        &self,
        slot: usize,
        bootstrap: Vec<Multiaddr>,
        keypair: Keypair,
        peer_id_difficulty: u8,
    ) -> anyhow::Result<Member> {
        let home = self.dir.join(format!("node-{slot}"));
        let mut store_config = StoreConfig::default();
        if self.settings.reduced {
            // 1 MiB of page cache and no background flusher thread per node.
            store_config = store_config.with_cache_capacity(1024 * 1024);
            store_config.flush_every_ms = None;
        }
        // Opening a new store syncs it to disk: off the runtime's worker threads, which every
        // running node of the process shares.
        let opened = {
            let home = home.clone();
            tokio::task::spawn_blocking(move || kith_testkit::open_store_at(&home, &store_config))
        };
        let store = opened.await.context("the store opening task failed")??;
        let transports = self.transport.testkit();
        let mut config = kith_testkit::loopback_config(keypair, NETWORK_ID, transports, bootstrap)?
            .with_peer_id_difficulty(peer_id_difficulty);
        if self.settings.reduced {
            config = kith_testkit::scale_config(config);
        } else {
            config.idle_timeout = self.settings.idle_timeout();
            config.query_timeout = self.settings.query_timeout();
        }
        let options = self.options.clone().unwrap_or_default();
        let node = kith_testkit::start_node(config, store, options).await?;
        let peer_id = node.peer_id();
        let (addr, _) = kith_testkit::listen_addrs(&node, transports).await?;
        Ok(Member {
            handle: Handle::Kith(node),
            peer_id,
            addr,
        })
    }
}

/// A set of running nodes of one [`Kind`].
pub(crate) struct Cluster {
    spawner: Spawner,
    members: Vec<Member>,
}

impl Cluster {
    /// An empty cluster; kith homes go under `dir`, which must exist.
    pub(crate) fn new(kind: Kind, settings: NodeSettings, dir: PathBuf) -> Self {
        Self {
            spawner: Spawner {
                kind,
                settings,
                dir,
                options: None,
                request_response: false,
                peer_id_difficulty: 0,
                transport: Transport::Tcp,
            },
            members: Vec::new(),
        }
    }

    /// Kith nodes start with these service options (a low proof-of-work difficulty for
    /// `dm.first`, no inbound rate limit); every node of a network must agree on `name_rules`.
    pub(crate) fn with_options(mut self, options: Options) -> Self {
        self.spawner.options = Some(options);
        self
    }

    /// Kith nodes start in a network whose DHT servers need peer ids worked at `difficulty`
    /// (`kith_core::id_work`; `resolve.sybil.costly`).
    pub(crate) fn with_peer_id_difficulty(mut self, difficulty: u8) -> Self {
        self.spawner.peer_id_difficulty = difficulty;
        self
    }

    /// Every node listens on (and so is dialed over) `transport` only.
    pub(crate) fn with_transport(mut self, transport: Transport) -> Self {
        self.spawner.transport = transport;
        self
    }

    /// Raw nodes also answer and send request-response (`dm.first`'s baseline).
    pub(crate) fn with_request_response(mut self) -> Self {
        self.spawner.request_response = true;
        self
    }

    /// What the cluster runs.
    pub(crate) fn kind(&self) -> Kind {
        self.spawner.kind
    }

    /// Number of running nodes.
    pub(crate) fn len(&self) -> usize {
        self.members.len()
    }

    /// Peer ids, in start order.
    pub(crate) fn peer_ids(&self) -> Vec<PeerId> {
        self.members.iter().map(|m| m.peer_id).collect()
    }

    /// Dialable address (with `/p2p/`) of node `i`.
    pub(crate) fn addr(&self, i: usize) -> Option<Multiaddr> {
        self.members.get(i).map(|m| m.addr.clone())
    }

    /// The kith node `i`, in a kith cluster.
    pub(crate) fn kith(&self, i: usize) -> Option<&Node> {
        self.members.get(i)?.handle.kith()
    }

    /// The raw node `i`, in a raw cluster.
    pub(crate) fn raw(&self, i: usize) -> Option<&RawNode> {
        self.members.get(i)?.handle.raw()
    }

    /// Starts one more node that bootstraps from `bootstrap`; returns once it listens.
    pub(crate) async fn start_node(&mut self, bootstrap: Vec<Multiaddr>) -> anyhow::Result<()> {
        let member = self
            .spawner
            .start(self.members.len(), bootstrap, None)
            .await?;
        self.members.push(member);
        Ok(())
    }

    /// An empty cluster of full-size nodes in a fresh temporary directory named `prefix…`
    /// (removed when the returned guard drops, which must outlive the cluster).
    pub(crate) fn temporary(kind: Kind, prefix: &str) -> anyhow::Result<(tempfile::TempDir, Self)> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .context("cannot create a temporary directory")?;
        let cluster = Self::new(
            kind,
            NodeSettings { reduced: false },
            dir.path().to_path_buf(),
        );
        Ok((dir, cluster))
    }

    /// Grows the cluster to `nodes` (at least 2) nodes as a random tree rooted at node 0,
    /// bootstraps each once more and waits (at most `populate_wait`) until every routing table
    /// holds at least 10 peers (or all the others).
    pub(crate) async fn grow_tree(
        &mut self,
        nodes: usize,
        populate_wait: Duration,
        rng: &mut Rng,
    ) -> anyhow::Result<()> {
        let n = nodes.max(2);
        for i in 0..n {
            let bootstrap = if i == 0 {
                Vec::new()
            } else {
                self.addr(rng.below(i)).into_iter().collect()
            };
            self.start_node(bootstrap)
                .await
                .with_context(|| format!("starting {} node {i}", self.kind().as_str()))?;
        }
        for i in 0..n {
            let _ = self.bootstrap(i).await;
        }
        let target = (n - 1).min(10);
        let deadline = std::time::Instant::now() + populate_wait;
        while self.routing_summary().await?.0 < target && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(())
    }

    /// Starts one more kith node with a chosen identity (`resolve.sybil` plays attackers whose
    /// ids were generated to sit next to a name's key). Fails in a raw cluster.
    pub(crate) async fn start_kith_with_keypair(
        &mut self,
        bootstrap: Vec<Multiaddr>,
        keypair: Keypair,
    ) -> anyhow::Result<()> {
        let member = self
            .spawner
            .start(self.members.len(), bootstrap, Some(keypair))
            .await?;
        self.members.push(member);
        Ok(())
    }

    /// [`Cluster::start_kith_with_keypair`] with its own peer-id difficulty instead of the
    /// cluster's: `resolve.sybil.costly`'s attackers run modified nodes that ignore it.
    pub(crate) async fn start_kith_at(
        &mut self,
        bootstrap: Vec<Multiaddr>,
        keypair: Keypair,
        peer_id_difficulty: u8,
    ) -> anyhow::Result<()> {
        if self.spawner.kind != Kind::Kith {
            bail!("a chosen identity is only for kith clusters");
        }
        let member = self
            .spawner
            .start_kith(self.members.len(), bootstrap, keypair, peer_id_difficulty)
            .await?;
        self.members.push(member);
        Ok(())
    }

    /// What starts more nodes of this cluster, for a scenario that starts several at once.
    pub(crate) fn spawner(&self) -> Spawner {
        self.spawner.clone()
    }

    /// Adds a node a [`Cluster::spawner`] started.
    pub(crate) fn push(&mut self, member: Member) {
        self.members.push(member);
    }

    /// The nodes and what starts more of them, for a scenario that changes the set while using it.
    pub(crate) fn into_parts(self) -> (Spawner, Vec<Member>) {
        (self.spawner, self.members)
    }

    /// A `get_closest_peers` walk for `key` from node `i`.
    pub(crate) async fn closest(&self, i: usize, key: PeerId) -> anyhow::Result<Vec<PeerId>> {
        self.member(i)?.handle.closest(key).await
    }

    /// Routing table size of node `i`.
    pub(crate) async fn routing_len(&self, i: usize) -> anyhow::Result<usize> {
        self.member(i)?.handle.routing_len().await
    }

    /// Starts a Kademlia bootstrap on node `i`.
    pub(crate) async fn bootstrap(&self, i: usize) -> anyhow::Result<()> {
        self.member(i)?.handle.bootstrap().await
    }

    /// Routing table sizes of every node: (smallest, mean).
    pub(crate) async fn routing_summary(&self) -> anyhow::Result<(usize, f64)> {
        let mut min = usize::MAX;
        let mut total = 0;
        for i in 0..self.len() {
            let n = self.routing_len(i).await?;
            min = min.min(n);
            total += n;
        }
        let mean = total as f64 / self.len().max(1) as f64;
        Ok((if self.len() == 0 { 0 } else { min }, mean))
    }

    /// Stops every node (bounded); kith nodes flush their stores.
    pub(crate) async fn shutdown(self) {
        let stops = self
            .members
            .into_iter()
            .map(|m| async move { m.handle.stop().await });
        futures::future::join_all(stops).await;
    }

    fn member(&self, i: usize) -> anyhow::Result<&Member> {
        self.members
            .get(i)
            .with_context(|| format!("no node {i} in a cluster of {}", self.len()))
    }
}

/// A small, fast, seedable generator for picking nodes (not for keys, which come from
/// [`PeerId::random`]). SplitMix64.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// Seeded from the OS.
    pub(crate) fn from_os() -> Self {
        Self(getrandom::u64().unwrap_or(0x9E37_79B9_7F4A_7C15))
    }

    /// A number in `0..n` (`0` for `n == 0`).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z % n as u64) as usize
    }
}

/// The peer among `candidates` (except `origin`) closest to `key` in Kademlia's XOR metric: the
/// right answer a `get_closest_peers(key)` walk from `origin` should include.
pub(crate) fn true_closest(candidates: &[PeerId], origin: PeerId, key: PeerId) -> Option<PeerId> {
    let key = libp2p::kad::KBucketKey::from(key);
    candidates
        .iter()
        .filter(|p| **p != origin)
        .min_by_key(|p| libp2p::kad::KBucketKey::from(**p).distance(&key))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_stays_in_range_and_varies() {
        let mut rng = Rng(1);
        let picks: Vec<usize> = (0..1000).map(|_| rng.below(10)).collect();
        assert!(picks.iter().all(|p| *p < 10));
        for value in 0..10 {
            assert!(picks.contains(&value), "{value} never picked");
        }
        assert_eq!(rng.below(0), 0);
    }

    #[test]
    fn true_closest_skips_the_origin() {
        let peers: Vec<PeerId> = (0..20).map(|_| PeerId::random()).collect();
        let key = peers[3];
        assert_eq!(true_closest(&peers, peers[0], key), Some(key));
        let without_key = true_closest(&peers, key, key).unwrap();
        assert_ne!(without_key, key);
        assert_eq!(true_closest(&[], peers[0], key), None);
    }
}
