//! Tests against a real server on 127.0.0.1 with `turn`'s own client: allocation, relaying both
//! ways, refusals, capacity, shutdown. Every wait is bounded by `WAIT`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

use crate::*;

const SECRET: &[u8; 32] = b"kith-turn-test-secret-0123456789";
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const WAIT: Duration = Duration::from_secs(10);

/// A server on 127.0.0.1 that relays to 127.0.0.1 peers (denied by default).
fn config() -> TurnConfig {
    TurnConfig::new(SocketAddr::new(LOCALHOST, 0), LOCALHOST, SECRET.to_vec())
        .with_allow_private_peers(true)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn fresh(user: &str) -> Credentials {
    Credentials::mint(SECRET, user, Duration::from_secs(3600), now())
}

/// A `turn` client of `server` on its own 127.0.0.1 socket, already reading it.
async fn client(server: &TurnServer, username: &str, password: &str) -> Client {
    let socket = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let addr = server.local_addr().to_string();
    let client = Client::new(ClientConfig {
        stun_serv_addr: addr.clone(),
        turn_serv_addr: addr,
        username: username.to_owned(),
        password: password.to_owned(),
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(socket),
        vnet: None,
    })
    .await
    .unwrap();
    client.listen().await.unwrap();
    client
}

/// Waits (bounded) until `done` holds.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `turn` answers a refused key (our check) and a failed `MESSAGE-INTEGRITY` (wrong password)
/// alike: 400 Bad Request.
#[track_caller]
fn assert_refused<T>(result: &Result<T, turn::Error>) {
    let Err(err) = result else {
        panic!("the allocation succeeded");
    };
    assert!(err.to_string().contains("error 400"), "{err}");
}

/// Awaits `fut`, which must finish within [`WAIT`] and succeed.
async fn within<T, E: std::fmt::Debug>(fut: impl std::future::Future<Output = Result<T, E>>) -> T {
    tokio::time::timeout(WAIT, fut).await.unwrap().unwrap()
}

fn get(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

#[tokio::test]
async fn allocates_and_relays_both_ways() {
    let server = TurnServer::start(config()).await.unwrap();
    let metrics = server.metrics();
    let creds = fresh("alice");
    let client = client(&server, &creds.username, &creds.password).await;

    // STUN: the server reflects our own address.
    let mapped = within(client.send_binding_request()).await;
    assert_eq!(mapped.ip(), LOCALHOST);

    let relayed = within(client.allocate()).await;
    let relay_addr = relayed.local_addr().unwrap();
    assert_eq!(relay_addr.ip(), LOCALHOST);
    assert_ne!(relay_addr.port(), server.local_addr().port());
    assert_eq!(get(&metrics.allocations), 1);
    assert_eq!(get(&metrics.allocations_active), 1);
    assert!(get(&metrics.credentials_accepted) >= 1);

    // Client → peer: the first send creates the permission, then arrives from the relayed address.
    let peer = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    within(relayed.send_to(b"ping", peer_addr)).await;
    let mut buf = [0u8; 64];
    let (n, from) = within(peer.recv_from(&mut buf)).await;
    assert_eq!(&buf[..n], b"ping");
    assert_eq!(from, relay_addr);

    // Peer → client, through the relayed address.
    peer.send_to(b"pong", relay_addr).await.unwrap();
    let (n, from) = within(relayed.recv_from(&mut buf)).await;
    assert_eq!(&buf[..n], b"pong");
    assert_eq!(from, peer_addr);

    // Closing the relayed conn refreshes with lifetime 0: the server frees the slot.
    relayed.close().await.unwrap();
    eventually("the allocation to close", || {
        get(&metrics.allocations_active) == 0
    })
    .await;
    client.close().await.unwrap();

    // After shutdown the port is free again.
    let addr = server.local_addr();
    server.shutdown().await;
    UdpSocket::bind(addr).await.unwrap();
}

#[tokio::test]
async fn private_peers_are_denied_by_default() {
    let server = TurnServer::start(config().with_allow_private_peers(false))
        .await
        .unwrap();
    let metrics = server.metrics();
    let creds = fresh("alice");
    let client = client(&server, &creds.username, &creds.password).await;
    let relayed = within(client.allocate()).await;
    let relay_addr = relayed.local_addr().unwrap();

    let peer = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    within(relayed.send_to(b"ping", peer_addr)).await;
    eventually("the datagram to be denied", || {
        get(&metrics.peers_denied) >= 1
    })
    .await;
    let mut buf = [0u8; 64];
    let received = tokio::time::timeout(Duration::from_millis(300), peer.recv_from(&mut buf)).await;
    assert!(received.is_err(), "a loopback peer got relayed data");

    // And the other way: the peer's datagram never reaches the client.
    peer.send_to(b"pong", relay_addr).await.unwrap();
    eventually("the inbound datagram to be denied", || {
        get(&metrics.peers_denied) >= 2
    })
    .await;
    relayed.close().await.unwrap();
    client.close().await.unwrap();
    server.shutdown().await;
}

#[test]
fn public_and_private_peer_addresses() {
    use super::is_public_peer;
    for public in [
        "203.0.113.7",
        "8.8.8.8",
        "100.63.0.1",
        "100.128.0.1",
        "2001:db8::1",
        "::ffff:8.8.8.8",
    ] {
        assert!(is_public_peer(public.parse().unwrap()), "{public}");
    }
    for private in [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.1.1",
        "100.64.0.1",
        "0.0.0.0",
        "0.1.2.3",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fd00::1",
        "fe80::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
    ] {
        assert!(!is_public_peer(private.parse().unwrap()), "{private}");
    }
}

/// Starts a server, asks it for an allocation with `creds`, checks that it refused and allocated
/// nothing, and returns its metrics once it is shut down.
async fn refused_allocation(creds: &Credentials) -> Arc<TurnMetrics> {
    let server = TurnServer::start(config()).await.unwrap();
    let metrics = server.metrics();
    let client = client(&server, &creds.username, &creds.password).await;
    let result = tokio::time::timeout(WAIT, client.allocate()).await.unwrap();
    assert_refused(&result);
    assert_eq!(get(&metrics.allocations), 0);
    client.close().await.unwrap();
    server.shutdown().await;
    metrics
}

#[tokio::test]
async fn expired_credentials_are_refused() {
    let creds = Credentials::mint(SECRET, "alice", Duration::from_secs(3600), now() - 7200);
    let metrics = refused_allocation(&creds).await;
    assert!(get(&metrics.credentials_expired) >= 1);
}

#[tokio::test]
async fn credentials_too_far_ahead_are_refused() {
    let creds = Credentials::mint(SECRET, "alice", MAX_CREDENTIAL_TTL * 2, now());
    let metrics = refused_allocation(&creds).await;
    assert!(get(&metrics.credentials_refused) >= 1);
}

#[tokio::test]
async fn wrong_password_is_refused() {
    let creds = fresh("alice");
    // The same username signed with another secret: current expiry, wrong password.
    let forged = Credentials::mint(
        b"not the relay's secret, 32 bytes",
        "alice",
        Duration::from_secs(3600),
        creds.expires_at_unix_secs - 3600,
    );
    assert_eq!(forged.username, creds.username);
    assert_ne!(forged.password, creds.password);
    let metrics = refused_allocation(&forged).await;
    // The username passed our check: what failed is the password (`MESSAGE-INTEGRITY`).
    assert!(get(&metrics.credentials_accepted) >= 1);
    assert_eq!(
        get(&metrics.credentials_expired) + get(&metrics.credentials_refused),
        0
    );
}

#[tokio::test]
async fn allocations_beyond_the_limit_are_refused() {
    let server = TurnServer::start(config().with_max_allocations(1))
        .await
        .unwrap();
    let metrics = server.metrics();
    let alice = fresh("alice");
    let bob = fresh("bob");
    let first = client(&server, &alice.username, &alice.password).await;
    let second = client(&server, &bob.username, &bob.password).await;

    let relayed = within(first.allocate()).await;
    let refused = tokio::time::timeout(WAIT, second.allocate()).await.unwrap();
    let err = refused.err().expect("a second allocation fit in one slot");
    assert!(err.to_string().contains("error 508"), "{err}");
    assert_eq!(get(&metrics.allocations_refused_full), 1);
    assert_eq!(get(&metrics.allocations), 1);

    // Once the first is released, the slot is free again.
    relayed.close().await.unwrap();
    eventually("the slot to be freed", || {
        get(&metrics.allocations_active) == 0
    })
    .await;
    let third = client(&server, &bob.username, &bob.password).await;
    let relayed = within(third.allocate()).await;
    assert_eq!(get(&metrics.allocations), 2);
    relayed.close().await.unwrap();
    for client in [first, second, third] {
        client.close().await.unwrap();
    }
    server.shutdown().await;
}

#[tokio::test]
async fn relay_ports_come_from_the_configured_range() {
    // A free range: ports just above one the OS handed out (checked by the binds themselves).
    let probe = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let base = probe
        .local_addr()
        .unwrap()
        .port()
        .saturating_sub(200)
        .max(20_000);
    drop(probe);
    let range = base..=base + 99;
    let server = TurnServer::start(config().with_relay_ports(range.clone()))
        .await
        .unwrap();
    let creds = fresh("alice");
    let client = client(&server, &creds.username, &creds.password).await;
    let relayed = within(client.allocate()).await;
    let port = relayed.local_addr().unwrap().port();
    assert!(
        range.contains(&port),
        "relayed port {port} outside {range:?}"
    );
    relayed.close().await.unwrap();
    client.close().await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn a_taken_port_gives_a_clear_error() {
    let first = TurnServer::start(config()).await.unwrap();
    let addr = first.local_addr();
    let err = TurnServer::start(TurnConfig::new(addr, LOCALHOST, SECRET.to_vec()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, TurnError::AddrInUse { addr: a } if a == addr),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains(&addr.to_string()), "{message}");
    assert!(message.contains("already in use"), "{message}");
    first.shutdown().await;
}

#[tokio::test]
async fn unusable_configurations_are_refused() {
    let short = TurnConfig::new(SocketAddr::new(LOCALHOST, 0), LOCALHOST, b"short".to_vec());
    assert!(matches!(
        TurnServer::start(short).await,
        Err(TurnError::SecretTooShort { len: 5, min: 16 })
    ));
    assert!(matches!(
        TurnServer::start(config().with_realm("")).await,
        Err(TurnError::EmptyRealm)
    ));
    #[allow(clippy::reversed_empty_ranges)]
    let empty = 5000..=4000;
    assert!(matches!(
        TurnServer::start(config().with_relay_ports(empty)).await,
        Err(TurnError::BadPortRange { .. })
    ));
    assert!(matches!(
        TurnServer::start(config().with_relay_ports(0..=10)).await,
        Err(TurnError::BadPortRange { .. })
    ));
}

#[test]
fn ice_server_urls_bracket_ipv6() {
    assert_eq!(
        ice_server_urls("203.0.113.7:3478".parse().unwrap()),
        [
            "stun:203.0.113.7:3478",
            "turn:203.0.113.7:3478?transport=udp"
        ]
    );
    assert_eq!(
        ice_server_urls("[2001:db8::1]:3478".parse().unwrap()),
        [
            "stun:[2001:db8::1]:3478",
            "turn:[2001:db8::1]:3478?transport=udp"
        ]
    );
}

#[test]
fn debug_hides_the_secret() {
    let debug = format!("{:?}", config());
    assert!(debug.contains("<32 bytes>"), "{debug}");
    assert!(!debug.contains("kith-turn-test-secret"), "{debug}");
}
