//! What the kith-net integration tests share: a node on loopback TCP with its event loop on a
//! task, and a bounded poll.

#![allow(clippy::unwrap_used, dead_code)]

use std::{
    future::Future,
    time::{Duration, Instant},
};

use kith_net::{
    Client, Config, ConnectionBudget, DhtMode, Event, Keypair, Metrics, Multiaddr, PeerId,
};
use tokio::sync::mpsc;

/// Upper bound for any awaited condition.
pub(crate) const WAIT: Duration = Duration::from_secs(30);
/// How often conditions are re-checked.
pub(crate) const POLL: Duration = Duration::from_millis(100);

pub(crate) struct TestNode {
    pub(crate) client: Client,
    pub(crate) peer_id: PeerId,
    pub(crate) addr: Multiaddr,
    pub(crate) metrics: Metrics,
    /// The node's events, for a test that answers requests; unread, they are dropped when the
    /// buffer is full.
    pub(crate) events: mpsc::Receiver<Event>,
    task: tokio::task::JoinHandle<()>,
}

impl TestNode {
    pub(crate) async fn start(budget: Option<ConnectionBudget>, dht_mode: DhtMode) -> Self {
        Self::start_with(budget, |c| c.with_dht_mode(dht_mode)).await
    }

    pub(crate) async fn start_with(
        budget: Option<ConnectionBudget>,
        configure: impl FnOnce(Config) -> Config,
    ) -> Self {
        let mut config = configure(
            Config::new(Keypair::generate_ed25519())
                .with_network_id("test")
                .with_listen(vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()])
                .with_mdns(false),
        );
        config.connections = budget;
        let metrics = Metrics::default();
        let (client, events, event_loop) = kith_net::new(config, metrics.clone()).unwrap();
        let task = tokio::spawn(event_loop.run());
        let peer_id = client.local_peer_id();
        let listening = poll_until("a listen address", || {
            let client = client.clone();
            async move { client.status().await.unwrap().listen_addrs.first().cloned() }
        })
        .await;
        let addr = listening.with(libp2p::multiaddr::Protocol::P2p(peer_id));
        Self {
            client,
            peer_id,
            addr,
            metrics,
            events,
            task,
        }
    }

    pub(crate) async fn connected(&self, peer: PeerId) -> bool {
        self.client
            .peers()
            .await
            .unwrap()
            .iter()
            .any(|p| p.peer_id == peer)
    }

    pub(crate) async fn connections(&self) -> usize {
        let s = self.client.status().await.unwrap();
        s.connections_inbound + s.connections_outbound
    }

    pub(crate) async fn stop(self) {
        let _ = self.client.shutdown().await;
        let _ = self.task.await;
    }
}

/// Polls `check` every [`POLL`] until it returns `Some`, for at most [`WAIT`].
pub(crate) async fn poll_until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// The node's metrics in Prometheus text form, as `/metrics` serves them.
pub(crate) fn metrics_text(metrics: &Metrics) -> String {
    let mut registry = prometheus_client::registry::Registry::with_prefix("kith");
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text
}
