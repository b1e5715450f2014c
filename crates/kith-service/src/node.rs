use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use kith_core::NameRules;
use kith_net::{Channel, Event, Metrics as NetMetrics, NetStatus, PeerInfo};
use kith_store::Store;
use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use prometheus_client::registry::Registry;
use tokio::{sync::watch, task::JoinHandle};

use crate::ServiceError;

/// How many remembered peers a restarted node dials to rejoin the network.
const REDIAL_ON_START: usize = 16;
/// Retry delay when the key bundle reached no DHT peer.
const BUNDLE_RETRY: Duration = Duration::from_secs(15);
/// The second publication of the key bundle, after the first one at start.
const BUNDLE_SECOND_PUBLISH: Duration = Duration::from_secs(30);
/// At most this many group members are protected from the connection manager's trimming.
const PROTECTED_MEMBERS: usize = 512;
/// At most this many recent correspondents are protected.
const PROTECTED_CONTACTS: usize = 32;
/// "Recent" for a correspondent: a message in the last 10 minutes.
const RECENT_CONTACT_MS: u64 = 600_000;
/// Upper bound on the address book; the least recently seen peers fall off.
const ADDRESS_BOOK_LIMIT: usize = 2048;

/// A running node. Cheap to clone; every clone controls the same node.
#[derive(Debug, Clone)]
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

/// Node policies that are not networking or storage. Every node of a network must agree on
/// `name_rules`; the rest is local.
#[derive(Debug, Clone)]
pub struct Options {
    /// Name record rules (difficulty, lifetime). Default: the main network's.
    pub name_rules: NameRules,
    /// A resolve stops once this many distinct holders agree. Default 4 (as Substrate's
    /// authority discovery).
    pub resolve_quorum: usize,
    /// How often a use of a pinned name (a resolution or a send, answered from the pin) checks
    /// the name on the DHT again in the background; a name looked up within this long is not
    /// asked again. Default 60 s.
    pub name_recheck_every: Duration,
    /// How often owned names are re-published (and renewed when half their lifetime is gone).
    /// Default 1 hour; the first run is a few seconds after start.
    pub republish_every: Duration,
    /// Delay before the first re-publish, so bootstrap connections are up. Default 3 s.
    pub first_republish_after: Duration,
    /// Key that encrypts the Olm state at rest. `node/` keeps it in the home directory; without
    /// one it is derived from the node's identity key.
    pub pickle_key: Option<kith_crypto::PickleKey>,
    /// Inbound direct messages accepted per sender: (burst, per second). Default (1000, 200);
    /// beyond it senders are told to retry later, so a flood costs them, not us.
    pub dm_rate: (f64, f64),
    /// Relay role: host mailboxes for registered recipients (None: refuse mailbox requests).
    pub mailbox_server: Option<crate::MailboxConfig>,
    /// Relays (with `/p2p/<id>`) where this node keeps its mailbox; published in the DHT so
    /// senders can leave messages there while we are offline.
    pub mailbox_relays: Vec<Multiaddr>,
    /// How often the mailbox is fetched while connected. Default 60 s (also on every connect).
    pub mailbox_sync_every: Duration,
    /// How often every joined group catches up from its members. Default 30 s (also on start, on
    /// join, when a member comes online, on a sequence gap and when a session key arrives).
    pub group_sync_every: Duration,
    /// Where files are kept and how large they may be.
    pub files: crate::FilesConfig,
    /// How long a call rings before it counts as missed. Default 45 s.
    pub call_ring_timeout: Duration,
    /// STUN/TURN servers and the relay-only policy handed to the web app for calls.
    pub ice: crate::IceConfig,
    /// Relay role: hand registered users credentials for this TURN server.
    pub turn: Option<crate::TurnIssuer>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            name_rules: NameRules::default(),
            resolve_quorum: 4,
            name_recheck_every: crate::names::PIN_RECHECK,
            republish_every: Duration::from_secs(3600),
            first_republish_after: Duration::from_secs(3),
            pickle_key: None,
            dm_rate: (1000.0, 200.0),
            mailbox_server: None,
            mailbox_relays: Vec::new(),
            mailbox_sync_every: Duration::from_secs(60),
            group_sync_every: Duration::from_secs(30),
            files: crate::FilesConfig::default(),
            call_ring_timeout: crate::calls::DEFAULT_RING_TIMEOUT,
            ice: crate::IceConfig::default(),
            turn: None,
        }
    }
}

impl Inner {
    /// The network handle, for components that hold only the `Inner`.
    pub(crate) fn client_ref(&self) -> &kith_net::Client {
        &self.client
    }
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) options: Options,
    pub(crate) dm: Arc<crate::dm::Dm>,
    pub(crate) groups: crate::groups::Groups,
    pub(crate) files: Arc<crate::files::Files>,
    pub(crate) calls: crate::calls::Calls,
    pub(crate) names: crate::names::Names,
    pub(crate) mailbox: crate::mailbox::MailboxClient,
    pub(crate) mailbox_relay: crate::mailbox::MailboxRelay,
    client: kith_net::Client,
    store: Store,
    registry: Registry,
    net_metrics: NetMetrics,
    started: Instant,
    pub(crate) shutdown_tx: watch::Sender<bool>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    /// Publication and mailbox outcomes for `kith doctor`.
    health: crate::health::HealthLog,
    /// `kith doctor`'s check for other keys' claims on our names.
    rivals: crate::health::RivalCheck,
}

/// One hosted mailbox's use (relay role), as [`Node::mailbox_recipients`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxUsage {
    /// The registered recipient (None if its stored key is not a peer id: a damaged entry).
    pub peer: Option<PeerId>,
    /// Envelopes held for it.
    pub items: u64,
    /// Bytes held for it.
    pub bytes: u64,
}

/// Everything `kith status` shows.
#[derive(Debug, Clone)]
pub struct Status {
    /// Network state.
    pub net: NetStatus,
    /// kith version.
    pub version: &'static str,
    /// Time since [`Node::start`].
    pub uptime: Duration,
    /// Peers in the address book.
    pub known_peers: usize,
    /// Bytes the store occupies on disk.
    pub store_bytes: u64,
    /// Network events the service could not keep up with.
    pub events_dropped: u64,
}

impl Node {
    /// Starts a node with default [`Options`].
    pub async fn start(config: kith_net::Config, store: Store) -> Result<Self, ServiceError> {
        Self::start_with(config, store, Options::default()).await
    }

    /// Starts the network loop, the service task and the name re-publisher on the current tokio
    /// runtime.
    ///
    /// The store must already be open (that is where a second node on the same home is refused).
    pub async fn start_with(
        mut config: kith_net::Config,
        store: Store,
        options: Options,
    ) -> Result<Self, ServiceError> {
        let name_cache = crate::names::NameCache::default();
        config.record_validator = Some(name_cache.validator(options.name_rules.clone()));
        let keypair = config.keypair.clone();
        let mut registry = Registry::with_prefix("kith");
        let net_metrics = NetMetrics::default();
        net_metrics.register(&mut registry);

        let pickle_key = match &options.pickle_key {
            Some(key) => key.clone(),
            // Derived from the identity, so the state stays readable across restarts.
            None => {
                let secret = keypair
                    .to_protobuf_encoding()
                    .map_err(|e| ServiceError::Task(format!("cannot encode the identity: {e}")))?;
                let derived = blake3::derive_key("kith olm pickle key v1", &secret);
                kith_crypto::PickleKey::from_bytes(&derived).map_err(ServiceError::Crypto)?
            }
        };
        let dm_loaded = crate::dm::Dm::load(&store, pickle_key.clone(), &mut registry)?;
        let sync_every = options.mailbox_sync_every;
        let group_sync_every = options.group_sync_every;
        let blobs = crate::files::Files::open_blobs(&options.files, store.path(), &mut registry)?;
        let (client, events, event_loop) = kith_net::new(config, net_metrics.clone())?;
        let net_task = tokio::spawn(event_loop.run());
        let (shutdown_tx, _) = watch::channel(false);
        let health = crate::health::HealthLog::default();
        let held = crate::relay_blobs::HeldBlobs::new(
            store.clone(),
            blobs.clone(),
            options.files.relay.clone(),
            options.files.max_file_bytes,
            options.mailbox_server.is_some(),
        );

        // The components reach each other through handles over a weak reference to the node
        // (router::Links), so the node can be made with them inside it.
        let node = Node {
            inner: Arc::new_cyclic(|weak| {
                let links = Arc::new(crate::router::Links::new(weak.clone()));
                let names = crate::names::Names::new(crate::names::NamesParts {
                    store: store.clone(),
                    client: client.clone(),
                    keypair: keypair.clone(),
                    rules: options.name_rules.clone(),
                    quorum: options.resolve_quorum,
                    recheck_every: options.name_recheck_every,
                    cache: name_cache,
                    events: links.clone(),
                    addresses: links.clone(),
                });
                let groups = crate::groups::Groups::new(
                    crate::groups::GroupsParts {
                        store: store.clone(),
                        client: client.clone(),
                        keypair: keypair.clone(),
                        pickle_key,
                        outbound: links.clone(),
                        resolver: Arc::new(names.clone()),
                        events: links.clone(),
                        addresses: links.clone(),
                        files: links.clone(),
                    },
                    &mut registry,
                );
                let calls = crate::calls::Calls::new(
                    crate::calls::CallsParts {
                        store: store.clone(),
                        me: keypair.public().to_peer_id(),
                        ring_timeout: options.call_ring_timeout,
                        ice: options.ice.clone(),
                        turn: options.turn.clone(),
                        outbound: links.clone(),
                        events: links.clone(),
                        trust: links.clone(),
                        groups: Arc::new(groups.clone()),
                        connections: links.clone(),
                    },
                    &mut registry,
                );
                let mailbox =
                    crate::mailbox::MailboxClient::new(crate::mailbox::MailboxClientParts {
                        client: client.clone(),
                        keypair: keypair.clone(),
                        is_relay: options.mailbox_server.is_some(),
                        relays: options.mailbox_relays.clone(),
                        health: health.clone(),
                        turn: Arc::new(calls.clone()),
                        outbound: links.clone(),
                        files: links.clone(),
                        push: crate::relay_blobs::FilePush::new(
                            links.clone(),
                            blobs.clone(),
                            client.clone(),
                            links.clone(),
                            links.clone(),
                        ),
                    });
                let mailbox_relay = crate::mailbox::MailboxRelay::new(
                    crate::mailbox::MailboxRelayParts {
                        store: store.clone(),
                        client: client.clone(),
                        me: keypair.public().to_peer_id(),
                        config: options.mailbox_server.clone(),
                        turn: Arc::new(calls.clone()),
                        held,
                    },
                    &mut registry,
                );
                let files = Arc::new(crate::files::Files::new(
                    blobs,
                    &options.files,
                    crate::files::FilesParts {
                        store: store.clone(),
                        client: client.clone(),
                        outbound: links.clone(),
                        events: links.clone(),
                        groups: Arc::new(groups.clone()),
                        trust: links.clone(),
                        relays: Arc::new(mailbox.clone()),
                    },
                ));
                let dm = Arc::new(crate::dm::Dm::new(
                    dm_loaded,
                    crate::dm::DmParts {
                        store: store.clone(),
                        client: client.clone(),
                        keypair: keypair.clone(),
                        dm_rate: options.dm_rate,
                        resolver: Arc::new(names.clone()),
                        deposit: mailbox.deposit_handle(),
                        addresses: links.clone(),
                        health: health.clone(),
                    },
                ));
                let rivals = crate::health::RivalCheck::new(
                    keypair.public().to_peer_id(),
                    Arc::new(names.clone()),
                );
                Inner {
                    options,
                    dm,
                    groups,
                    files,
                    calls,
                    names,
                    mailbox,
                    mailbox_relay,
                    client,
                    store,
                    registry,
                    net_metrics,
                    started: Instant::now(),
                    shutdown_tx,
                    tasks: std::sync::Mutex::new(vec![net_task]),
                    health,
                    rivals,
                }
            }),
        };
        node.inner.calls.close_unfinished_calls();
        let service_task = tokio::spawn(consume_events(events, Arc::downgrade(&node.inner)));
        node.push_task(service_task);
        node.rejoin().await;
        let republisher = tokio::spawn(republish_loop(Arc::downgrade(&node.inner)));
        node.push_task(republisher);
        let delivery = tokio::spawn(crate::dm::delivery_loop(
            Arc::downgrade(&node.inner.dm),
            node.inner.shutdown_tx.subscribe(),
        ));
        node.push_task(delivery);
        let weak = Arc::downgrade(&node.inner);
        let mailbox = tokio::spawn(crate::mailbox::mailbox_loop(
            node.inner.mailbox.clone(),
            node.inner.mailbox_relay.clone(),
            node.inner.shutdown_tx.subscribe(),
            sync_every,
            move || {
                weak.upgrade()
                    .map(|inner| crate::router::Router::new(&Node { inner }))
            },
        ));
        node.push_task(mailbox);
        node.inner.groups.resubscribe_groups().await;
        let groups = tokio::spawn(group_loop(Arc::downgrade(&node.inner), group_sync_every));
        node.push_task(groups);
        let blob_server = tokio::spawn(serve_blob_streams(Arc::downgrade(&node.inner)));
        let link_server = tokio::spawn(serve_dm_links(Arc::downgrade(&node.inner)));
        node.push_task(blob_server);
        node.push_task(link_server);
        node.inner.files.resume_all_downloads();
        Ok(node)
    }

    fn push_task(&self, task: JoinHandle<()>) {
        lock(&self.inner.tasks).push(task);
    }

    /// Dials the most recently seen peers from the address book, so a restarted node finds the
    /// network again even when every bootstrap node is down.
    async fn rejoin(&self) {
        let known = match self.inner.store.peers().all() {
            Ok(known) => known,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the address book; relying on bootstrap nodes");
                return;
            }
        };
        let me = self.peer_id();
        let mut dialed = 0;
        for peer in known {
            if dialed == REDIAL_ON_START {
                break;
            }
            let Ok(peer_id) = PeerId::from_bytes(&peer.peer_id) else {
                continue;
            };
            if peer_id == me {
                continue;
            }
            let Some(addr) = peer
                .addrs
                .iter()
                .find_map(|raw| Multiaddr::try_from(raw.clone()).ok())
            else {
                continue;
            };
            if self
                .inner
                .client
                .dial(addr.with(Protocol::P2p(peer_id)))
                .await
                .is_ok()
            {
                dialed += 1;
            }
        }
        if dialed > 0 {
            tracing::info!(dialed, "redialing peers from the address book");
        }
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.inner.client.local_peer_id()
    }

    /// The network handle, for `Node::probe` (feature `testing`) alone: each component holds its
    /// own clone of the client, and callers outside the service use its operations.
    #[cfg(feature = "testing")]
    pub(crate) fn net(&self) -> &kith_net::Client {
        &self.inner.client
    }

    /// The store, for node.rs's own book (the address book), the links (router.rs) and
    /// `Node::probe`. Not public: every write goes through the component that keeps its book's
    /// rules.
    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The addresses last seen for `peer` in the address book, each ending in `/p2p/<peer>`
    /// ([`crate::handles::AddressBook`]).
    pub(crate) fn known_addrs(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.inner
            .store
            .peers()
            .get(&peer.to_bytes())
            .ok()
            .flatten()
            .map(|p| {
                p.addrs
                    .into_iter()
                    .filter_map(|a| Multiaddr::try_from(a).ok())
                    .map(|a| a.with(Protocol::P2p(*peer)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Remembers `addr` for `peer` (from a name record or an invite) without counting as a
    /// sighting ([`crate::handles::AddressBook`]).
    pub(crate) fn record_addr(&self, peer: &PeerId, addr: &Multiaddr) -> Result<(), ServiceError> {
        Ok(self
            .inner
            .store
            .peers()
            .record_seen(&peer.to_bytes(), Some(&addr.to_vec()), None, 0)?)
    }

    /// The network's state alone (listen addresses, connections, relay reservations), without
    /// the store figures of [`Node::status`]: cheap enough to poll while a node starts.
    pub async fn net_status(&self) -> Result<NetStatus, ServiceError> {
        Ok(self.inner.client.status().await?)
    }

    /// A status snapshot.
    pub async fn status(&self) -> Result<Status, ServiceError> {
        let net = self.inner.client.status().await?;
        Ok(Status {
            net,
            version: crate::VERSION,
            uptime: self.inner.started.elapsed(),
            known_peers: self.inner.store.peers().len(),
            store_bytes: self.inner.store.size_on_disk()?,
            events_dropped: self.inner.net_metrics.events_dropped(),
        })
    }

    /// Everything `kith doctor` judges: the status, what we own and when we last published it,
    /// and how our mailbox relays last answered.
    pub async fn checkup(&self) -> Result<crate::health::Checkup, ServiceError> {
        let (status, name_claims) = tokio::join!(self.status(), self.inner.rivals.name_claims());
        let status = status?;
        let owned_names = self.inner.names.owned_count()?;
        let health = self.health(|h| h.clone());
        let mailboxes = self
            .inner
            .mailbox
            .mailbox_relays()
            .iter()
            .map(|relay| {
                let key = relay.to_string();
                let state = health.mailboxes.get(&key).cloned().unwrap_or_default();
                (key, state)
            })
            .collect();
        Ok(crate::health::Checkup {
            status,
            owned_names,
            names: health.names,
            key_bundle: health.key_bundle,
            mailbox_pointer: health.mailbox_pointer,
            mailboxes,
            ice: self.ice_config(),
            turn_served: self
                .inner
                .options
                .turn
                .as_ref()
                .map(|t| t.urls.clone())
                .unwrap_or_default(),
            clock_skew: health.clock.estimate(now_ms()),
            max_clock_skew: self.name_rules().max_clock_skew,
            name_claims,
        })
    }

    /// Tells the connection manager which connections the features need kept (it trims the
    /// rest above its high mark and closes idle ones): everyone in a live call and the people we
    /// exchanged messages with in the last 10 minutes are protected; members of the groups we
    /// take part in are welcomed (let in at the mark, trimmed after strangers), since in a large
    /// group they are most of the network and the connections delivery needs, the gossipsub mesh,
    /// are protected by kith-net itself.
    pub(crate) async fn refresh_protection(&self) {
        let me = self.peer_id();
        let mut members = std::collections::HashSet::new();
        for g in self.groups().unwrap_or_default() {
            if g.joined && !g.left && !g.removed {
                members.extend(g.members.iter().map(|(p, _)| *p));
            }
        }
        members.remove(&me);
        let members: Vec<PeerId> = members.into_iter().take(PROTECTED_MEMBERS).collect();
        let now = now_ms();
        let recent: Vec<PeerId> = self
            .inbox()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| now.saturating_sub(c.last_message_ms) < RECENT_CONTACT_MS)
            .take(PROTECTED_CONTACTS)
            .map(|c| c.peer)
            .collect();
        let in_calls = self.inner.calls.call_participants();
        if let Err(e) = self.inner.client.welcome("group-members", members).await {
            tracing::debug!(error = %e, "cannot update welcomed connections");
        }
        for (tag, peers) in [("recent-contacts", recent), ("calls", in_calls)] {
            if let Err(e) = self.inner.client.protect(tag, peers).await {
                tracing::debug!(tag, error = %e, "cannot update protected connections");
            }
        }
    }

    /// [`Node::refresh_protection`] on its own task, for paths that must not wait for it.
    pub(crate) fn refresh_protection_soon(&self) {
        let node = self.clone();
        tokio::spawn(async move { node.refresh_protection().await });
    }

    /// Runs `f` on the recorded health (a poisoned lock still holds usable data).
    pub(crate) fn health<T>(&self, f: impl FnOnce(&mut crate::health::Health) -> T) -> T {
        self.inner.health.with(f)
    }

    /// Mailboxes this node hosts (relay role).
    pub fn mailbox_stats(&self) -> Result<kith_store::MailboxStats, ServiceError> {
        self.inner.mailbox_relay.stats()
    }

    /// The mailboxes this node hosts (relay role), fullest first, at most `limit` of them: who
    /// uses the relay, for `kith relay status`.
    pub fn mailbox_recipients(&self, limit: usize) -> Result<Vec<MailboxUsage>, ServiceError> {
        Ok(self
            .inner
            .mailbox_relay
            .recipients(limit)?
            .into_iter()
            .map(|(peer, items, bytes)| MailboxUsage {
                peer: PeerId::from_bytes(&peer).ok(),
                items,
                bytes,
            })
            .collect())
    }

    /// Accepts a sender (from requests) or unblocks a peer, then resumes the files from them
    /// that waited for it. Wiring: trust is the direct-message component's, downloads the files
    /// component's.
    pub async fn accept(&self, target: &str) -> Result<PeerId, ServiceError> {
        let peer = self.inner.dm.accept_sender(target).await?;
        self.inner.files.resume_downloads_from(peer);
        Ok(peer)
    }

    /// Connected peers.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, ServiceError> {
        Ok(self.inner.client.peers().await?)
    }

    /// Every metric in the Prometheus/OpenMetrics text format.
    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry) {
            tracing::warn!(error = %e, "could not encode metrics");
        }
        out
    }

    /// Asks whoever waits in [`Node::shutdown_requested`] to stop the node (e.g. `kith stop`).
    pub fn request_shutdown(&self) {
        self.inner.shutdown_tx.send_replace(true);
    }

    /// Resolves once [`Node::request_shutdown`] has been called. Cancel-safe.
    pub async fn shutdown_requested(&self) {
        let mut rx = self.inner.shutdown_tx.subscribe();
        // An error means the sender is gone, which cannot happen while `self` holds it.
        let _ = rx.wait_for(|stop| *stop).await;
    }

    /// Stops the network, waits for the service task to drain, and flushes the store.
    pub async fn shutdown(&self) -> Result<(), ServiceError> {
        // The others in a call hear us hang up, not a call that goes silent: give the hang-ups a
        // moment (at most 1 s) to leave before the network closes.
        if self.inner.calls.hang_up_all() > 0 {
            for _ in 0..20 {
                if !self.inner.dm.ephemeral_pending() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // Tells the re-publisher to stop, too.
        self.request_shutdown();
        // Already stopped is fine: shutdown is idempotent.
        let _ = self.inner.client.shutdown().await;
        let tasks = std::mem::take(&mut *lock(&self.inner.tasks));
        for task in tasks {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "a node task ended abnormally");
            }
        }
        self.inner.store.flush().await?;
        Ok(())
    }
}

/// The next inbound stream from `next`, or `None` once the node shuts down. The node's own
/// network handle keeps the inbound side open, so a loop over inbound streams must end on the
/// shutdown signal rather than on the end of the stream.
async fn until_shutdown<T>(
    next: impl std::future::Future<Output = Option<T>>,
    stop: &mut watch::Receiver<bool>,
) -> Option<T> {
    tokio::select! {
        next = next => next,
        _ = stop.wait_for(|s| *s) => None,
    }
}

/// Hands every inbound blob stream to the mailbox relay's `HeldBlobs` (which serves our own
/// blobs to whoever asks and, on a relay, keeps blobs for its users), one task per stream, held
/// to the files component's serving rate.
async fn serve_blob_streams(inner: std::sync::Weak<Inner>) {
    let (mut incoming, mut stop, rate) = {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        match inner.client_ref().accept_blob_streams() {
            Ok(incoming) => (
                incoming,
                inner.shutdown_tx.subscribe(),
                inner.files.serve_rate(),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot serve files");
                return;
            }
        }
    };
    let limits = kith_blob::ServeLimits::default();
    while let Some((peer, stream)) = until_shutdown(incoming.next(), &mut stop).await {
        let Some(node) = inner.upgrade().map(|inner| Node { inner }) else {
            return;
        };
        let limits = limits.clone();
        tokio::spawn(async move {
            let served = match rate {
                Some(rate) => {
                    node.inner
                        .mailbox_relay
                        .held()
                        .serve_blob_stream(
                            peer,
                            crate::files::Throttled::new(stream, rate),
                            &limits,
                        )
                        .await
                }
                None => {
                    node.inner
                        .mailbox_relay
                        .held()
                        .serve_blob_stream(peer, stream, &limits)
                        .await
                }
            };
            if let Err(e) = served {
                tracing::info!(%peer, error = %e, "closed a blob stream");
            }
        });
    }
}

/// Answers direct messages that arrive on links (`/kith/dm-link/1.0.0`), one task per link:
/// each envelope goes through the same receive pipeline as a `/kith/dm` request, but on the
/// link's own task, with no hand-over through the network loop or the event consumer.
async fn serve_dm_links(inner: std::sync::Weak<Inner>) {
    let (mut incoming, mut stop) = {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        match inner.client_ref().accept_dm_links() {
            Ok(incoming) => (incoming, inner.shutdown_tx.subscribe()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot take direct-message links; messages come one request each");
                return;
            }
        }
    };
    while let Some((peer, link)) = until_shutdown(incoming.next(), &mut stop).await {
        // Weak, like the loop: an open link must not keep a stopped node's store alive.
        let inner = inner.clone();
        tokio::spawn(async move {
            let served = link
                .serve(|bytes| {
                    let node = inner.upgrade().map(|inner| Node { inner });
                    async move {
                        match node {
                            Some(node) => {
                                let router = crate::router::Router::new(&node);
                                node.inner.dm.answer(peer, &bytes, &router).await
                            }
                            // Stopping: no ack the sender can read, so it sends again later.
                            None => Vec::new(),
                        }
                    }
                })
                .await;
            if let Err(e) = served {
                tracing::info!(%peer, error = %e, "closed a direct-message link");
            }
        });
    }
}

/// Re-publishes owned names periodically. Holds only a weak reference so it never keeps a
/// stopped node alive; ends when the node shuts down.
async fn republish_loop(inner: std::sync::Weak<Inner>) {
    let (first, every, mut stop) = match inner.upgrade() {
        Some(i) => (
            i.options.first_republish_after,
            i.options.republish_every,
            i.shutdown_tx.subscribe(),
        ),
        None => return,
    };
    // Claims must be renewed well before they lapse, whatever the configured interval.
    let every = match inner.upgrade() {
        Some(i) => every
            .min(i.options.name_rules.max_ttl / 4)
            .max(Duration::from_secs(1)),
        None => return,
    };
    let mut delay = first;
    let mut runs = 0u32;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let Some(inner) = inner.upgrade() else { return };
        let node = Node { inner };
        let names = node.republish_names().await;
        match &names {
            Ok(0) => {}
            Ok(n) => tracing::debug!(published = n, "re-published owned names"),
            Err(e) => tracing::warn!(error = %e, "could not re-publish owned names"),
        }
        let bundle = node.inner.dm.refresh_key_bundle().await;
        if let Err(e) = &bundle {
            tracing::warn!(error = %e, "could not publish the key bundle");
        }
        let bundle_out = matches!(bundle, Ok(true));
        let pointer = node.inner.mailbox.publish_mailbox_pointer().await;
        if let Err(e) = &pointer {
            tracing::warn!(error = %e, "could not publish the mailbox pointer");
        }
        let owned = node.inner.names.owned_count().unwrap_or(0);
        const NO_TAKER: &str = "no DHT peer took it";
        node.health(|h| {
            h.names.record(match names {
                Ok(0) if owned > 0 => Err(NO_TAKER.to_owned()),
                Ok(n) => Ok(n > 0),
                Err(e) => Err(e.to_string()),
            });
            h.key_bundle.record(match bundle {
                Ok(false) => Err(NO_TAKER.to_owned()),
                other => other.map_err(|e| e.to_string()),
            });
            h.mailbox_pointer.record(pointer.map_err(|e| e.to_string()));
        });
        runs += 1;
        // Nobody can send us a first message without the bundle: retry soon when no peer took
        // it, and publish once more shortly after start, when the routing table has grown and
        // the peers closest to the key are known.
        delay = if !bundle_out {
            every.min(BUNDLE_RETRY)
        } else if runs == 1 {
            every.min(BUNDLE_SECOND_PUBLISH)
        } else {
            every
        };
    }
}

/// Every `every` (and once shortly after start): tells the connection manager whom to keep, then
/// catches every joined group up. Holds only a weak reference; ends when the node shuts down.
async fn group_loop(inner: std::sync::Weak<Inner>, every: Duration) {
    let Some(mut stop) = inner.upgrade().map(|i| i.shutdown_tx.subscribe()) else {
        return;
    };
    let mut delay = Duration::from_secs(2).min(every);
    loop {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let node = Node { inner: strong };
        node.refresh_protection().await;
        node.inner.groups.sync_joined().await;
        node.inner.groups.request_missing_keys().await;
        delay = every;
    }
}

/// Runs one inbound request's handler on its own task once `limit` has room (the network keeps
/// buffering meanwhile).
async fn spawn_limited(
    limit: &Arc<tokio::sync::Semaphore>,
    handler: impl std::future::Future<Output = ()> + Send + 'static,
) {
    // The service task owns the semaphore and never closes it, so acquiring cannot fail.
    let Ok(permit) = limit.clone().acquire_owned().await else {
        return;
    };
    tokio::spawn(async move {
        handler.await;
        drop(permit);
    });
}

/// The service task: turns network events into store updates and hands direct messages to their
/// own tasks. Ends when the network loop ends.
async fn consume_events(
    mut events: tokio::sync::mpsc::Receiver<Event>,
    inner: std::sync::Weak<Inner>,
) {
    // Bounds the direct messages being processed at once; the network keeps buffering the rest.
    let inbound = Arc::new(tokio::sync::Semaphore::new(64));
    let mut seen = 0usize;
    while let Some(event) = events.recv().await {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let node = Node { inner: strong };
        let store = node.store().clone();
        let result = match event {
            Event::Request {
                channel,
                peer,
                request,
                bytes,
            } => {
                let router = crate::router::Router::new(&node);
                spawn_limited(&inbound, async move {
                    let inner = &node.inner;
                    match channel {
                        Channel::Dm => {
                            inner
                                .dm
                                .on_direct_message(peer, request, bytes, &router)
                                .await
                        }
                        Channel::Mailbox => {
                            inner
                                .mailbox_relay
                                .on_mailbox_request(peer, request, bytes, &inner.mailbox)
                                .await
                        }
                        Channel::Sync => inner.groups.on_sync_request(peer, request, bytes).await,
                    }
                })
                .await;
                Ok(())
            }
            Event::GroupMessage {
                author,
                source,
                message_id,
                topic,
                bytes,
            } => {
                spawn_limited(&inbound, async move {
                    node.inner
                        .groups
                        .on_group_message(author, source, message_id, topic, bytes)
                        .await;
                })
                .await;
                Ok(())
            }
            Event::GroupPeerSubscribed { peer, topic } => {
                node.inner.groups.on_group_peer_subscribed(peer, &topic);
                Ok(())
            }
            Event::PeerConnected {
                peer,
                addr,
                inbound,
            } => {
                node.inner.dm.on_peer_connected(peer);
                node.inner.files.resume_downloads_from(peer);
                if node.inner.mailbox.is_mailbox_relay(&peer) {
                    node.inner.mailbox.wake();
                }
                if inbound {
                    Ok(())
                } else {
                    store.peers().record_seen(
                        &peer.to_bytes(),
                        Some(&without_peer_id(&addr).to_vec()),
                        None,
                        now_ms(),
                    )
                }
            }
            Event::PeerIdentified {
                peer,
                agent,
                listen_addrs,
                kith: true,
            } => {
                let mut result =
                    store
                        .peers()
                        .record_seen(&peer.to_bytes(), None, Some(&agent), now_ms());
                // Oldest first, so the first listed address ends up at the front of the book.
                for addr in listen_addrs.iter().rev().filter(|a| is_dialable(a)) {
                    result = result.and_then(|()| {
                        store.peers().record_seen(
                            &peer.to_bytes(),
                            Some(&without_peer_id(addr).to_vec()),
                            None,
                            now_ms(),
                        )
                    });
                }
                seen += 1;
                result
            }
            Event::RelayFound { relay, addr } => {
                node.inner.mailbox.on_relay_found(relay, addr);
                Ok(())
            }
            Event::BootstrapUnreachable { addr, error } => {
                tracing::warn!(%addr, %error, "bootstrap entry unreachable");
                Ok(())
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not update the address book");
        }
        if seen >= 256 {
            seen = 0;
            if let Err(e) = store.peers().prune(ADDRESS_BOOK_LIMIT) {
                tracing::warn!(error = %e, "could not prune the address book");
            }
        }
    }
}

/// The address book stores transport addresses; `/p2p/<id>` is added back when dialing.
fn without_peer_id(addr: &Multiaddr) -> Multiaddr {
    let mut addr = addr.clone();
    if let Some(Protocol::P2p(_)) = addr.iter().last() {
        addr.pop();
    }
    addr
}

/// Unspecified (0.0.0.0) and circuit addresses cannot be redialed as they are.
pub(crate) fn is_dialable(addr: &Multiaddr) -> bool {
    !addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        Protocol::P2pCircuit => true,
        _ => false,
    })
}

/// Locks a mutex of the service's small shared state. Such a lock is only ever held for a few
/// assignments, so a panic while holding it cannot leave a half-made change: a poisoned lock is
/// used as it is rather than failing every later caller.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A duration in whole milliseconds, saturating: how deadlines and periods are kept beside
/// [`now_ms`] timestamps.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_addresses_lose_their_peer_id_suffix() {
        let peer = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let base: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        assert_eq!(
            without_peer_id(&base.clone().with(Protocol::P2p(peer))),
            base
        );
        assert_eq!(without_peer_id(&base), base);
    }

    #[test]
    fn unspecified_and_circuit_addresses_are_not_redialed() {
        let ok: Multiaddr = "/ip4/127.0.0.1/tcp/4717".parse().unwrap();
        let any: Multiaddr = "/ip4/0.0.0.0/tcp/4717".parse().unwrap();
        let circuit: Multiaddr = "/ip4/1.2.3.4/tcp/1/p2p/12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp/p2p-circuit"
            .parse()
            .unwrap();
        assert!(is_dialable(&ok));
        assert!(!is_dialable(&any));
        assert!(!is_dialable(&circuit));
    }
}
