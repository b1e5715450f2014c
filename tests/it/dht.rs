//! Discovery: bootstrap over TCP and QUIC, routing tables filling up, a DHT walk finding a peer,
//! bad bootstrap entries, and a restarted node finding its way back through its address book.

use std::{collections::HashSet, time::Duration};

use kith_net::{Multiaddr, PeerId};

use crate::harness::{
    POLL, STEP, TestNode, node_pair, routing_report, shutdown_all, star, wait_until,
};

/// Long enough for five nodes to find each other through kad's automatic bootstrap on a loaded
/// two-core machine; in practice it takes a second or two.
const DISCOVERY: Duration = Duration::from_secs(60);
/// For a single connection to come up on loopback.
const CONNECT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_bootstrapped_from_node_one_fill_their_routing_tables() {
    let nodes = star(5).await.unwrap();
    let ids: Vec<PeerId> = nodes.iter().map(TestNode::peer_id).collect();
    let others = |i: usize| -> HashSet<PeerId> {
        ids.iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .map(|(_, p)| *p)
            .collect()
    };

    let filled = wait_until(
        "every node's routing table to hold exactly the other four nodes",
        DISCOVERY,
        POLL,
        async || {
            for (i, node) in nodes.iter().enumerate() {
                match node.routing_table().await {
                    Ok(table) if table == others(i) => {}
                    _ => return false,
                }
            }
            true
        },
    )
    .await;
    if let Err(e) = filled {
        panic!("{e}\n{}", routing_report(&nodes).await);
    }

    for (i, node) in nodes.iter().enumerate() {
        assert_eq!(
            node.routing_table().await.unwrap(),
            others(i),
            "node{} routing table",
            i + 1
        );
        let status = node.node().status().await.unwrap();
        assert_eq!(status.net.peer_id, ids[i]);
        assert_eq!(
            status.net.routing_table_peers,
            4,
            "node{} status().routing_table_peers",
            i + 1
        );
    }

    // libp2p-kad 0.49 does not leave the key out of a FIND_NODE walk's result: the result is the
    // peers that answered, closest first, and node 2 is at distance zero from its own id. So
    // node 2 coming back first means node 5's walk reached node 2 and node 2 answered.
    let (node2, node5) = (&nodes[1], &nodes[4]);
    let closest = tokio::time::timeout(
        Duration::from_secs(40),
        node5.node().probe().get_closest_peers(node2.peer_id()),
    )
    .await
    .expect("node 5's get_closest_peers did not finish")
    .expect("node 5's get_closest_peers failed");
    assert_eq!(
        closest.first(),
        Some(&node2.peer_id()),
        "node 5's walk for node 2's id should find node 2 first; got {closest:?}"
    );
    assert!(
        !closest.contains(&node5.peer_id()),
        "a walk never returns the asking node"
    );
    assert_eq!(
        closest.iter().copied().collect::<HashSet<_>>(),
        others(4),
        "with five nodes the walk should reach all four others"
    );

    shutdown_all(nodes).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_over_quic_only() {
    let a = TestNode::start(Vec::new()).await.unwrap();
    let b = TestNode::start(vec![a.quic_addr()]).await.unwrap();

    wait_until(
        "A and B to be in each other's routing table",
        CONNECT,
        POLL,
        async || {
            let a_has_b = a
                .routing_table()
                .await
                .is_ok_and(|t| t.contains(&b.peer_id()));
            let b_has_a = b
                .routing_table()
                .await
                .is_ok_and(|t| t.contains(&a.peer_id()));
            a_has_b && b_has_a
        },
    )
    .await
    .unwrap();

    let is_quic = |addr: &Multiaddr| addr.to_string().contains("quic-v1");
    let b_peers = b.node().peers().await.unwrap();
    let b_to_a = b_peers
        .iter()
        .find(|p| p.peer_id == a.peer_id())
        .expect("B is connected to A");
    assert!(
        b_to_a.addrs.iter().any(is_quic),
        "B's connection to A should be QUIC: {:?}",
        b_to_a.addrs
    );
    assert!(!b_to_a.inbound, "B dialed A");
    let a_peers = a.node().peers().await.unwrap();
    let a_to_b = a_peers
        .iter()
        .find(|p| p.peer_id == b.peer_id())
        .expect("A is connected to B");
    assert!(
        a_to_b.addrs.iter().any(is_quic),
        "A's connection from B should be QUIC: {:?}",
        a_to_b.addrs
    );

    shutdown_all(vec![b, a]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_malformed_bootstrap_entries_do_not_stop_the_node() {
    let good = TestNode::start(Vec::new()).await.unwrap();
    // Port 1 on loopback: nobody listens, the dial is refused at once.
    let unreachable: Multiaddr = format!("/ip4/127.0.0.1/tcp/1/p2p/{}", PeerId::random())
        .parse()
        .unwrap();
    // Parses as a multiaddr, but no transport can dial a bare UDP address.
    let malformed: Multiaddr = "/ip4/127.0.0.1/udp/9".parse().unwrap();
    let node = TestNode::start(vec![unreachable, malformed, good.tcp_addr()])
        .await
        .unwrap();

    wait_until(
        "the node to connect to the good bootstrap peer and put it in its routing table",
        CONNECT,
        POLL,
        async || {
            node.connected_peers()
                .await
                .is_ok_and(|p| p.contains(&good.peer_id()))
                && node
                    .routing_table()
                    .await
                    .is_ok_and(|t| t.contains(&good.peer_id()))
        },
    )
    .await
    .unwrap();

    let status = node.node().status().await.unwrap();
    assert_eq!(status.net.peer_id, node.peer_id());
    assert!(status.net.connected_peers >= 1, "{status:?}");
    assert!(!status.net.listen_addrs.is_empty(), "{status:?}");

    // Counter "dial_failures" in a registry with prefix "kith": the text encoder appends "_total".
    let counted = wait_until(
        "kith_dial_failures_total to count the failed bootstrap dials",
        STEP,
        POLL,
        async || {
            metric_value(&node.node().metrics_text(), "kith_dial_failures_total")
                .is_some_and(|n| n >= 1.0)
        },
    )
    .await;
    if let Err(e) = counted {
        panic!("{e}; metrics:\n{}", node.node().metrics_text());
    }

    shutdown_all(vec![node, good]).await.unwrap();
}

// An entry with `/p2p/<id>` goes into Kademlia before it is dialed; when the dial fails it must
// leave again, or `routing_table_peers` counts a peer that never existed and every walk asks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_bootstrap_peers_leave_the_routing_table() {
    let good = TestNode::start(Vec::new()).await.unwrap();
    let ghost = PeerId::random();
    let unreachable: Multiaddr = format!("/ip4/127.0.0.1/tcp/1/p2p/{ghost}").parse().unwrap();
    let node = TestNode::start(vec![unreachable, good.tcp_addr()])
        .await
        .unwrap();

    let settled = wait_until(
        "the routing table to hold the good peer and not the unreachable one",
        CONNECT,
        POLL,
        async || {
            node.routing_table()
                .await
                .is_ok_and(|t| t == HashSet::from([good.peer_id()]))
        },
    )
    .await;
    let table = node.routing_table().await.unwrap();
    shutdown_all(vec![node, good]).await.unwrap();
    if let Err(e) = settled {
        panic!("{e}; routing table: {table:?}, unreachable entry: {ghost}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_keeps_its_address_book_and_rejoins_without_bootstrap() {
    let (a, b) = node_pair().await.unwrap();
    let b_id = b.peer_id();

    wait_until(
        "B to have A in its routing table and address book",
        CONNECT,
        POLL,
        async || {
            b.routing_table()
                .await
                .is_ok_and(|t| t.contains(&a.peer_id()))
                && b.address_book()
                    .is_ok_and(|book| book.contains(&a.peer_id()))
        },
    )
    .await
    .unwrap();

    // Same home, same identity, no bootstrap entries; new listen ports, so A cannot dial B's old
    // addresses and any connection has to come from B.
    let b = b.restart(Vec::new()).await.unwrap();
    assert_eq!(b.peer_id(), b_id, "the identity survives a restart");
    assert!(
        b.address_book().unwrap().contains(&a.peer_id()),
        "the address book survives a restart"
    );

    wait_until(
        "restarted B to reconnect to A from its address book",
        CONNECT,
        POLL,
        async || {
            b.connected_peers()
                .await
                .is_ok_and(|p| p.contains(&a.peer_id()))
                && b.routing_table()
                    .await
                    .is_ok_and(|t| t.contains(&a.peer_id()))
                && a.connected_peers().await.is_ok_and(|p| p.contains(&b_id))
        },
    )
    .await
    .unwrap();
    let b_to_a = b
        .node()
        .peers()
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.peer_id == a.peer_id())
        .expect("B is connected to A");
    assert!(!b_to_a.inbound, "the restarted node dialed A itself");
    assert!(
        b.node().status().await.unwrap().known_peers >= 1,
        "status shows the address book"
    );

    shutdown_all(vec![b, a]).await.unwrap();
}

/// The value of an unlabelled series in Prometheus text output.
fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}
