//! Peer routing on real swarms over loopback TCP: a direct message to a peer we never met and
//! have no address for reaches it through a DHT walk towards its id.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TestNode, WAIT, poll_until};
use kith_net::{Channel, DhtMode, Event, PeerId};

/// A node on the test's own network in DHT mode `mode`.
async fn start_as(mode: DhtMode) -> TestNode {
    TestNode::start_with(None, |c| c.with_network_id("routing").with_dht_mode(mode)).await
}

/// A DHT server on the test's own network.
async fn start() -> TestNode {
    start_as(DhtMode::Server).await
}

/// Waits until `node`'s routing table holds at least `n` peers.
async fn routing_table_has(node: &TestNode, n: usize) {
    poll_until(&format!("{n} peers in the routing table"), || async {
        (node.client.status().await.unwrap().routing_table_peers >= n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_to_a_peer_never_met_finds_it_through_the_dht() {
    // A and C know only the hub. A is a DHT client (a home node), so the hub never names it to
    // anyone and C's own walks cannot meet it; A has no address for C.
    let hub = start().await;
    let a = start_as(DhtMode::Client).await;
    a.client.dial(hub.addr.clone()).await.unwrap();
    routing_table_has(&a, 1).await;
    let mut c = start().await;
    c.client.dial(hub.addr.clone()).await.unwrap();
    routing_table_has(&c, 1).await;
    routing_table_has(&hub, 1).await;
    assert!(!a.connected(c.peer_id).await, "A met C before the test");

    // C answers whatever direct message reaches it.
    let c_client = c.client.clone();
    let answering = tokio::spawn(async move {
        while let Some(event) = c.events.recv().await {
            if let Event::Request {
                channel: Channel::Dm,
                request,
                bytes,
                ..
            } = event
            {
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
