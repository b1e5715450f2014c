//! Peer routing on real swarms over loopback TCP: a direct message to a peer we never met and
//! have no address for reaches it through a DHT walk towards its id.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use kith_net::{Client, Config, DhtMode, Event, Keypair, Metrics, Multiaddr, PeerId};
use tokio::sync::mpsc;

/// Upper bound for any awaited condition.
const WAIT: Duration = Duration::from_secs(30);

struct Node {
    client: Client,
    peer_id: PeerId,
    addr: Multiaddr,
    events: mpsc::Receiver<Event>,
    task: tokio::task::JoinHandle<()>,
}

impl Node {
    async fn start() -> Node {
        let config = Config::new(Keypair::generate_ed25519())
            .with_network_id("routing")
            .with_listen(vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()])
            .with_mdns(false)
            .with_dht_mode(DhtMode::Server);
        let (client, events, event_loop) = kith_net::new(config, Metrics::default()).unwrap();
        let task = tokio::spawn(event_loop.run());
        let peer_id = client.local_peer_id();
        let deadline = Instant::now() + WAIT;
        let addr = loop {
            if let Some(addr) = client.status().await.unwrap().listen_addrs.first() {
                break addr.clone();
            }
            assert!(Instant::now() < deadline, "no listen address");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Node {
            client,
            peer_id,
            addr: addr.with(libp2p::multiaddr::Protocol::P2p(peer_id)),
            events,
            task,
        }
    }

    async fn routing_table_has(&self, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.client.status().await.unwrap().routing_table_peers < n {
            assert!(Instant::now() < deadline, "routing table below {n}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn connected_to(&self, peer: PeerId) -> bool {
        self.client
            .peers()
            .await
            .unwrap()
            .iter()
            .any(|p| p.peer_id == peer)
    }

    async fn stop(self) {
        let _ = self.client.shutdown().await;
        let _ = self.task.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_to_a_peer_never_met_finds_it_through_the_dht() {
    // A and C know only the hub, and C joins after A's bootstrap walk: A has no address for C.
    let hub = Node::start().await;
    let a = Node::start().await;
    a.client.dial(hub.addr.clone()).await.unwrap();
    a.routing_table_has(1).await;
    let mut c = Node::start().await;
    c.client.dial(hub.addr.clone()).await.unwrap();
    c.routing_table_has(1).await;
    hub.routing_table_has(2).await;
    assert!(!a.connected_to(c.peer_id).await, "A met C before the test");

    // C answers whatever direct message reaches it.
    let c_client = c.client.clone();
    let answering = tokio::spawn(async move {
        while let Some(event) = c.events.recv().await {
            if let Event::DirectMessage { request, bytes, .. } = event {
                let mut answer = b"got ".to_vec();
                answer.extend(bytes);
                c_client.respond_dm(request, answer).await.unwrap();
            }
        }
    });

    // No address given: the dial fails, the walk towards C's id finds it at the hub, and the
    // message goes again with that address.
    let answer = tokio::time::timeout(
        WAIT,
        a.client.send_dm(c.peer_id, b"hello".to_vec(), Vec::new()),
    )
    .await
    .expect("the send did not finish")
    .expect("the message did not reach a peer the DHT knows");
    assert_eq!(answer, b"got hello");

    // A peer nobody knows fails, with a reason, and a second try within the window does not
    // walk again (it fails as fast as a plain dial failure).
    let nobody = PeerId::random();
    let err = a
        .client
        .send_dm(nobody, b"hello".to_vec(), Vec::new())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("the DHT did not find it"),
        "unexpected error: {err}"
    );
    let err = a
        .client
        .send_dm(nobody, b"again".to_vec(), Vec::new())
        .await
        .unwrap_err();
    assert!(
        !err.to_string().contains("the DHT did not find it"),
        "looked up again: {err}"
    );

    answering.abort();
    a.stop().await;
    hub.stop().await;
}
