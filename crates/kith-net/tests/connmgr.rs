//! The connection manager on real swarms over loopback TCP: refusing strangers at the high mark
//! and then making room for their next dial, trimming to the low mark with protected peers, the
//! idle timeout that gossipsub's handler would otherwise defeat, and a DHT bootstrap that does
//! not dial past the high mark.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{POLL, TestNode, WAIT, metrics_text, poll_until};
use kith_net::{Config, ConnectionBudget, DhtMode, Multiaddr, PeerId};

/// A DHT server whose address is confirmed from the start, so no AutoNAT probe dials back to the
/// peers that dial it: with [`crowd_config`] peers, the only connections are the ones a test dials.
async fn confirmed_hub(budget: ConnectionBudget) -> TestNode {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let hub_addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
    TestNode::start_with(Some(budget), |mut c| {
        c.external_addrs = vec![hub_addr.clone()];
        c.with_listen(vec![hub_addr.clone()])
            .with_dht_mode(DhtMode::Server)
    })
    .await
}

/// Relay mode (no AutoNAT client) on another DHT than the hub's (no Kademlia walks through it).
fn crowd_config(mut c: Config) -> Config {
    c.relay_server = true;
    c.with_network_id("crowd")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowded_node_refuses_the_crowd_at_its_high_mark_then_makes_room_lets_protected_peers_in_and_trims_to_its_low_mark()
 {
    let budget = ConnectionBudget {
        low: 4,
        high: 6,
        grace: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(600),
    };
    // Only the crowd's own dials may open connections here, so that every connection is counted
    // against a known number: the hub's address is confirmed from the start (no AutoNAT probe
    // dials back to the crowd), and the crowd is on another DHT (no Kademlia walks through the
    // hub) and in relay mode (no AutoNAT client asking the hub for dial-backs).
    let hub = confirmed_hub(budget).await;
    let keeper = TestNode::start_with(None, crowd_config).await;
    let latecomer = TestNode::start_with(None, crowd_config).await;
    hub.client
        .protect("test-keep", vec![keeper.peer_id, latecomer.peer_id])
        .await
        .unwrap();
    keeper.client.dial(hub.addr.clone()).await.unwrap();
    poll_until("the protected peer to connect", || async {
        hub.connected(keeper.peer_id).await.then_some(())
    })
    .await;

    // Twelve strangers dial: the hub takes them up to its high mark and refuses the rest.
    let mut crowd = Vec::new();
    for _ in 0..12 {
        let peer = TestNode::start_with(None, crowd_config).await;
        peer.client.dial(hub.addr.clone()).await.unwrap();
        crowd.push(peer);
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let status = hub.client.status().await.unwrap();
        let open = status.connections_inbound + status.connections_outbound;
        assert!(open <= budget.high, "{open} open, above the high mark");
        assert!(
            hub.connected(keeper.peer_id).await,
            "the protected peer was disconnected"
        );
        if status.connections_refused >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nobody refused in time: {open} open"
        );
        tokio::time::sleep(POLL).await;
    }

    // A refusal at the mark makes room: the next round trims the strangers down to the low mark
    // (before, a node held exactly at its mark refused every newcomer for good), and a refused
    // stranger that dials again gets in.
    poll_until("the hub to make room down to its low mark", || async {
        (hub.connections().await <= budget.low).then_some(())
    })
    .await;
    assert!(hub.connected(keeper.peer_id).await);
    let mut outside = Vec::new();
    for peer in &crowd {
        if !hub.connected(peer.peer_id).await {
            outside.push(peer);
        }
    }
    assert!(outside.len() >= 2, "{} strangers outside", outside.len());
    for peer in &outside[..2] {
        peer.client.dial(hub.addr.clone()).await.unwrap();
        poll_until("a refused stranger to get in on its next dial", || async {
            hub.connected(peer.peer_id).await.then_some(())
        })
        .await;
    }

    // A protected peer is let in at the mark; above it, the manager trims the strangers away
    // down to the low mark and keeps both protected peers. (The strangers' connections first
    // pass the grace period, so that all of them may be trimmed in one round.)
    tokio::time::sleep(budget.grace * 2).await;
    let before = hub.client.status().await.unwrap();
    assert_eq!(
        before.connections_inbound + before.connections_outbound,
        budget.high,
        "back at the mark"
    );
    latecomer.client.dial(hub.addr.clone()).await.unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        let status = hub.client.status().await.unwrap();
        let open = status.connections_inbound + status.connections_outbound;
        assert!(open <= budget.high + 1, "{open} open");
        if hub.connected(latecomer.peer_id).await && open <= budget.low {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "not trimmed in time: {open} open, {} trimmed",
            status.connections_trimmed
        );
        tokio::time::sleep(POLL).await;
    };
    assert_eq!(
        status.connections_trimmed - before.connections_trimmed,
        (budget.high + 1 - budget.low) as u64
    );
    assert_eq!(status.connections_low, 4);
    assert_eq!(status.connections_high, 6);
    assert_eq!(status.connections_idle_closed, 0);
    assert!(hub.connected(keeper.peer_id).await);

    // Nothing more to trim at the low mark: the count stays put for a few manager rounds.
    let settled = status.connections_trimmed;
    for _ in 0..10 {
        tokio::time::sleep(POLL).await;
        assert!(hub.connections().await <= budget.low);
    }
    let status = hub.client.status().await.unwrap();
    assert_eq!(status.connections_trimmed, settled);

    let text = metrics_text(&hub.metrics);
    assert!(
        text.contains(&format!("kith_connections_trimmed_total {settled}")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "kith_connections_refused_total {}",
            status.connections_refused
        )),
        "{text}"
    );
    assert!(
        text.contains("kith_connections{direction=\"Inbound\"}"),
        "{text}"
    );

    for peer in crowd {
        peer.stop().await;
    }
    keeper.stop().await;
    latecomer.stop().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_closes_unless_it_shares_a_topic_or_is_protected() {
    let budget = ConnectionBudget {
        idle_timeout: Duration::from_secs(2),
        grace: Duration::from_secs(1),
        ..ConnectionBudget::personal()
    };
    let hub = TestNode::start(Some(budget), DhtMode::Server).await;
    let member = TestNode::start(None, DhtMode::Client).await;
    let friend = TestNode::start(None, DhtMode::Client).await;
    let stranger = TestNode::start(None, DhtMode::Client).await;
    let topic = "kith/v1/group/test".to_owned();
    hub.client.subscribe(topic.clone()).await.unwrap();
    member.client.subscribe(topic.clone()).await.unwrap();
    hub.client
        .protect("recent-contacts", vec![friend.peer_id])
        .await
        .unwrap();

    member.client.dial(hub.addr.clone()).await.unwrap();
    poll_until("the member's subscription to reach the hub", || async {
        hub.client
            .topic_peers(topic.clone())
            .await
            .unwrap()
            .contains(&member.peer_id)
            .then_some(())
    })
    .await;
    friend.client.dial(hub.addr.clone()).await.unwrap();
    stranger.client.dial(hub.addr.clone()).await.unwrap();
    poll_until("friend and stranger to connect", || async {
        (hub.connected(friend.peer_id).await && hub.connected(stranger.peer_id).await).then_some(())
    })
    .await;

    // The stranger shares nothing, is protected by nothing and sends nothing: it goes, although
    // gossipsub keeps every connection alive and the swarm's own idle timeout is 60 s.
    poll_until("the stranger to be idle-closed", || async {
        (!hub.connected(stranger.peer_id).await).then_some(())
    })
    .await;
    let status = hub.client.status().await.unwrap();
    // The stranger's connection, and the hub's own AutoNAT probe dial back to it when that one
    // came first (a node with no confirmed address probes kith peers it was dialed by); a probe
    // dial next to the peer's own connection may go earlier, as a duplicate (counted as trimmed).
    let closed = status.connections_idle_closed + status.connections_trimmed;
    assert!(
        (1..=2).contains(&closed) && status.connections_idle_closed >= 1,
        "idle-closed {}, trimmed {}",
        status.connections_idle_closed,
        status.connections_trimmed
    );
    assert!(status.connections_trimmed <= 1);
    // The member connected before the stranger and was just as quiet.
    assert!(hub.connected(member.peer_id).await);
    assert!(hub.connected(friend.peer_id).await);

    // Dropping the tag leaves the friend unprotected: it is idle too.
    hub.client
        .protect("recent-contacts", Vec::new())
        .await
        .unwrap();
    poll_until("the friend to be idle-closed", || async {
        (!hub.connected(friend.peer_id).await).then_some(())
    })
    .await;
    let closed = hub.client.status().await.unwrap().connections_idle_closed;
    assert!(closed > status.connections_idle_closed, "{closed}");
    assert!(hub.connected(member.peer_id).await);
    assert!(
        metrics_text(&hub.metrics)
            .contains(&format!("kith_connections_idle_closed_total {closed}"))
    );

    for node in [member, friend, stranger, hub] {
        node.stop().await;
    }
}

/// Relay mode (no AutoNAT client, so no dial-backs of its own) on a network of its own.
fn quiet(mut c: Config) -> Config {
    c.relay_server = true;
    c.with_network_id("pair")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_that_dialed_each_other_keep_one_connection_between_them() {
    let budget = ConnectionBudget {
        grace: Duration::from_secs(3),
        idle_timeout: Duration::from_secs(600),
        ..ConnectionBudget::personal()
    };
    let a = TestNode::start_with(Some(budget), quiet).await;
    let b = TestNode::start_with(Some(budget), quiet).await;
    // Both ends dial, and one of them twice. Each dial waits for the one before to connect: two
    // dials from listen port to listen port (TCP port reuse) sent at the same instant meet as one
    // TCP simultaneous open, which no handshake survives, and that is not what this test is about.
    for (n, (from, to)) in [(&a, &b), (&b, &a), (&a, &b)].into_iter().enumerate() {
        from.client.dial(to.addr.clone()).await.unwrap();
        poll_until("the dial to connect", || async {
            (a.connections().await > n && b.connections().await > n).then_some(())
        })
        .await;
    }
    poll_until("three connections between the two", || async {
        (a.connections().await == 3 && b.connections().await == 3).then_some(())
    })
    .await;

    // Each end closes only duplicates it dialed, ranked alike at both ends: one connection stays.
    poll_until("one connection between the two", || async {
        (a.connections().await == 1 && b.connections().await == 1).then_some(())
    })
    .await;
    for _ in 0..10 {
        tokio::time::sleep(POLL).await;
        assert!(a.connected(b.peer_id).await && b.connected(a.peer_id).await);
    }
    let trimmed = a.client.status().await.unwrap().connections_trimmed
        + b.client.status().await.unwrap().connections_trimmed;
    assert_eq!(trimmed, 2);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kademlia_requests_count_as_use_of_a_connection() {
    let budget = ConnectionBudget {
        grace: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(2),
        ..ConnectionBudget::personal()
    };
    let hub = TestNode::start_with(Some(budget), |c| c.with_dht_mode(DhtMode::Server)).await;
    let walker = TestNode::start(None, DhtMode::Client).await;
    walker.client.dial(hub.addr.clone()).await.unwrap();
    poll_until("the hub in the walker's routing table", || async {
        (walker.client.status().await.unwrap().routing_table_peers > 0).then_some(())
    })
    .await;

    // The walker asks the hub something every 300 ms for three idle timeouts: the only traffic
    // is Kademlia's, and the hub keeps the connection.
    let until = Instant::now() + budget.idle_timeout * 3;
    while Instant::now() < until {
        let _ = walker.client.get_closest_peers(PeerId::random()).await;
        assert!(
            hub.connected(walker.peer_id).await,
            "the hub closed a connection Kademlia was using"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Once the walker stops, the connection is idle and goes.
    poll_until("the idle walker to be closed", || async {
        (!hub.connected(walker.peer_id).await).then_some(())
    })
    .await;
    walker.stop().await;
    hub.stop().await;
}

/// How many of `nodes` the hub is connected to.
async fn connected_to(hub: &TestNode, nodes: &[TestNode]) -> usize {
    let mut connected = 0;
    for node in nodes {
        connected += usize::from(hub.connected(node.peer_id).await);
    }
    connected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcomed_peers_pass_the_gate_at_the_mark_and_are_trimmed_after_strangers_but_mesh_peers_stay()
 {
    // High mark 3, low 2. The hub's address is confirmed from the start and every other node is
    // on another DHT in relay mode, so the only connections are the ones dialed here (see the
    // first test).
    let budget = ConnectionBudget {
        low: 2,
        high: 3,
        grace: Duration::from_secs(3),
        idle_timeout: Duration::from_secs(8),
    };
    let hub = confirmed_hub(budget).await;
    let mut strangers = Vec::new();
    for _ in 0..3 {
        let stranger = TestNode::start_with(None, crowd_config).await;
        stranger.client.dial(hub.addr.clone()).await.unwrap();
        strangers.push(stranger);
    }
    poll_until("the hub to hold its high mark of strangers", || async {
        (hub.connections().await == budget.high).then_some(())
    })
    .await;

    // Four group members, welcomed by the hub as the service welcomes the members of its
    // groups, subscribed to the group's topic like the hub.
    let topic = "kith/v1/group/welcome".to_owned();
    hub.client.subscribe(topic.clone()).await.unwrap();
    let mut members = Vec::new();
    for _ in 0..4 {
        let member = TestNode::start_with(None, crowd_config).await;
        member.client.subscribe(topic.clone()).await.unwrap();
        members.push(member);
    }
    hub.client
        .welcome("group-members", members.iter().map(|m| m.peer_id).collect())
        .await
        .unwrap();
    for member in &members {
        member.client.dial(hub.addr.clone()).await.unwrap();
    }
    // Let in at the mark, where a stranger would have been refused; above the mark the strangers
    // go first, and the members, who each have the hub as their only subscribed peer and graft
    // it, are all in the hub's mesh (at most 8), which the manager never trims: they stay
    // although they alone are above the high mark.
    let mut all_in = false;
    let deadline = Instant::now() + WAIT;
    loop {
        let connected = connected_to(&hub, &members).await;
        all_in |= connected == members.len();
        let strangers_left = connected_to(&hub, &strangers).await;
        if all_in {
            assert_eq!(connected, members.len(), "a mesh peer was closed");
        }
        if all_in && strangers_left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{connected} members and {strangers_left} strangers connected"
        );
        tokio::time::sleep(POLL).await;
    }
    let status = hub.client.status().await.unwrap();
    assert_eq!(
        status.connections_refused, 0,
        "a welcomed member was refused"
    );
    // The members hold the hub above its high mark past their grace period (3 s) and several
    // manager rounds (one a second with this idle timeout), and are not trimmed.
    for _ in 0..60 {
        tokio::time::sleep(POLL).await;
        for member in &members {
            assert!(
                hub.connected(member.peer_id).await,
                "a mesh peer was closed"
            );
        }
    }
    assert!(hub.connections().await > budget.high);

    for node in strangers.into_iter().chain(members) {
        node.stop().await;
    }
    hub.stop().await;
}

/// A DHT server in relay mode: no AutoNAT client, so it asks nobody to dial it back.
fn quiet_server(mut c: Config) -> Config {
    c.relay_server = true;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_at_the_high_mark_dials_nobody_new_but_a_lookup_does() {
    // Seven DHT servers that know each other through a hub; a node with marks 1/2 connects to
    // two of them, which puts it at its high mark, and bootstraps. The answers name five peers
    // it is not connected to: the bootstrap may not dial them, so the count never passes the
    // mark, and the held-back dials are counted. A lookup someone waits for still dials them.
    let budget = ConnectionBudget {
        low: 1,
        high: 2,
        grace: Duration::from_secs(600),
        idle_timeout: Duration::from_secs(600),
    };
    let hub = TestNode::start_with(None, quiet_server).await;
    let mut others = Vec::new();
    for _ in 0..6 {
        let node = TestNode::start_with(None, quiet_server).await;
        node.client.dial(hub.addr.clone()).await.unwrap();
        others.push(node);
    }
    poll_until("the hub to know the six others", || async {
        (hub.client.status().await.unwrap().routing_table_peers >= 6).then_some(())
    })
    .await;

    let node = TestNode::start_with(Some(budget), quiet_server).await;
    node.client.dial(hub.addr.clone()).await.unwrap();
    node.client.dial(others[0].addr.clone()).await.unwrap();
    poll_until("the node at its high mark", || async {
        (node.connections().await == budget.high).then_some(())
    })
    .await;
    let _ = node.client.bootstrap().await;

    let held_back = |text: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix("kith_dht_dials_held_back_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + WAIT;
    let mut samples = 0;
    loop {
        let open = node.connections().await;
        assert!(
            open <= budget.high,
            "{open} open: the bootstrap dialed past the high mark"
        );
        samples += 1;
        if held_back(&metrics_text(&node.metrics)) > 0 && samples >= 30 {
            break;
        }
        assert!(Instant::now() < deadline, "no bootstrap dial held back");
        tokio::time::sleep(POLL).await;
    }

    // A lookup is waited for: it dials whoever it needs, mark or not, and finds its target.
    let target = others[5].peer_id;
    let found = node.client.get_closest_peers(target).await.unwrap();
    assert!(found.contains(&target), "the lookup did not reach {target}");

    for other in others {
        other.stop().await;
    }
    node.stop().await;
    hub.stop().await;
}
