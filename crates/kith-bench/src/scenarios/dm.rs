//! `dm.latency`, `dm.latency.quic`, `dm.throughput`: direct messages between two kith nodes on
//! loopback, beside raw libp2p request-response between two bare swarms with the same transport,
//! measured in the same run.
//!
//! kith's figure covers everything a user waits for: resolve the recipient, store + flush the
//! message and its outbox entry, encrypt (Olm) and save the ratchet state, send, the recipient's
//! decrypt + store + flush, and the ack. The baseline is one request and one response of the same
//! size over the same transport, with no storage and no encryption beyond the transport's.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt as _, future::join_all};
use indicatif::ProgressBar;
use kith_net::{DhtMode, Keypair, Multiaddr};
use kith_service::{MessageStatus, Node, Options};
use kith_store::{Store, StoreConfig};
use libp2p::{
    StreamProtocol, SwarmBuilder, noise, request_response,
    swarm::{NetworkBehaviour, SwarmEvent},
    tcp, yamux,
};

use crate::report::{Figures, Scenario};

/// Payload size of every message, bytes (a short chat line).
pub(crate) const PAYLOAD: usize = 100;

/// Sizes of the scenarios.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    /// Sequential messages for the latency scenarios.
    pub(crate) latency_messages: usize,
    /// Messages for the throughput scenario.
    pub(crate) throughput_messages: usize,
    /// Concurrent senders (kith) / requests in flight (baseline).
    pub(crate) in_flight: usize,
}

impl Params {
    /// Full-run or `--quick` defaults.
    pub(crate) fn new(quick: bool) -> Self {
        if quick {
            Self {
                latency_messages: 30,
                throughput_messages: 200,
                in_flight: 64,
            }
        } else {
            Self {
                latency_messages: 1000,
                throughput_messages: 20_000,
                in_flight: 64,
            }
        }
    }
}

/// A multi-threaded runtime for one scenario.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("no async runtime")
}

/// Runs `dm.latency` (TCP) or `dm.latency.quic`.
pub(crate) fn run_latency(params: &Params, quic: bool, bar: &ProgressBar) -> Scenario {
    let (name, unit) = if quic {
        ("dm.latency.quic", "us")
    } else {
        ("dm.latency", "us")
    };
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(e) => return Scenario::unavailable(name, unit, format!("{e:#}")),
    };
    runtime.block_on(async {
        let n = params.latency_messages;
        let kith = kith_latency(n, quic, bar).await;
        let raw = raw_run(n, 1, quic).await;
        let mut notes = vec![format!(
            "{n} sequential {PAYLOAD}-byte messages between two nodes on loopback {}; kith: send until the recipient stored, flushed and acked it (encrypted, durable both sides); baseline: raw request-response round trip of the same size, same transport",
            if quic { "QUIC" } else { "TCP+Noise+Yamux" }
        )];
        let k = kith
            .map_err(|e| notes.push(format!("kith failed: {e:#}")))
            .ok()
            .and_then(|s| Figures::latency(&s));
        let b = raw
            .map_err(|e| notes.push(format!("baseline failed: {e:#}")))
            .ok()
            .and_then(|r| Figures::latency(&r.samples));
        Scenario::measured(name, unit, k, b, notes.join("; "))
    })
}

/// Runs `dm.throughput`.
pub(crate) fn run_throughput(params: &Params, bar: &ProgressBar) -> Scenario {
    let (name, unit) = ("dm.throughput", "msg/s");
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(e) => return Scenario::unavailable(name, unit, format!("{e:#}")),
    };
    runtime.block_on(async {
        let n = params.throughput_messages;
        let kith = kith_throughput(n, params.in_flight, bar).await;
        let raw = raw_run(n, params.in_flight, false).await;
        let mut notes = vec![format!(
            "{n} {PAYLOAD}-byte messages, {} concurrent senders (kith: each send returns once the recipient acked it or queued it; rate counted until every message is acknowledged) vs raw request-response with {} requests in flight, TCP+Noise+Yamux on loopback; durability by group commit",
            params.in_flight, params.in_flight
        )];
        let k = kith
            .map_err(|e| notes.push(format!("kith failed: {e:#}")))
            .ok()
            .map(|rate| Figures::default().with("rate", rate.round()));
        let b = raw
            .map_err(|e| notes.push(format!("baseline failed: {e:#}")))
            .ok()
            .map(|r| Figures::default().with("rate", r.rate.round()));
        Scenario::measured(name, unit, k, b, notes.join("; "))
    })
}

/// Two kith nodes, B bootstrapped from A, with the recipient's key bundle already fetched.
struct Pair {
    _dirs: [tempfile::TempDir; 2],
    a: Node,
    b: Node,
}

impl Pair {
    async fn start(quic: bool) -> anyhow::Result<Self> {
        let listen: Multiaddr = if quic {
            "/ip4/127.0.0.1/udp/0/quic-v1".parse()?
        } else {
            "/ip4/127.0.0.1/tcp/0".parse()?
        };
        let start = |bootstrap: Vec<Multiaddr>| {
            let listen = listen.clone();
            async move {
                let dir = tempfile::Builder::new()
                    .prefix("kith-bench-dm-")
                    .tempdir()?;
                let store = Store::open(dir.path().join("db"), &StoreConfig::default())?;
                let mut config = kith_net::Config::new(Keypair::generate_ed25519())
                    .with_network_id("bench")
                    .with_mdns(false)
                    .with_dht_mode(DhtMode::Server)
                    .with_listen(vec![listen])
                    .with_bootstrap(bootstrap);
                config.dm_links = dm_links();
                let node = Node::start_with(config, store, options()).await?;
                anyhow::Ok((dir, node))
            }
        };
        let (dir_a, a) = start(Vec::new()).await?;
        let mut addr = None;
        for _ in 0..100 {
            if let Some(first) = a.status().await?.net.listen_addrs.first() {
                addr = Some(first.clone());
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let addr = addr.context("node A never listened")?;
        let addr = addr.with(libp2p::multiaddr::Protocol::P2p(a.peer_id()));
        let (dir_b, b) = start(vec![addr]).await?;
        let pair = Self {
            _dirs: [dir_a, dir_b],
            a,
            b,
        };
        warm_up(&pair.b, &pair.a, Duration::from_secs(30)).await?;
        Ok(pair)
    }

    async fn shutdown(self) {
        let _ = self.b.shutdown().await;
        let _ = self.a.shutdown().await;
    }
}

/// Whether the pair's messages may go on direct-message links: on unless
/// `KITH_BENCH_DM_LINKS=off`, which measures the one-request-per-message path in the same build.
fn dm_links() -> bool {
    std::env::var("KITH_BENCH_DM_LINKS").map_or(true, |v| v != "off")
}

/// The options every benchmark node runs with: a quick first re-publish (key bundle) and no
/// inbound rate limit (benchmarks measure the pipeline, not the flood protection).
pub(crate) fn options() -> Options {
    Options {
        first_republish_after: Duration::from_millis(100),
        dm_rate: (1e9, 1e9),
        ..Options::default()
    }
}

/// Sends messages from `sender` to `recipient` until one is delivered within `send_text`'s first
/// attempt: the first needs the recipient's key bundle from the DHT (published shortly after
/// start) and opens the Olm session. Bounded by `limit`.
pub(crate) async fn warm_up(
    sender: &Node,
    recipient: &Node,
    limit: Duration,
) -> anyhow::Result<()> {
    let target = recipient.peer_id().to_string();
    let poll = Duration::from_millis(200);
    kith_testkit::poll_until(
        "a warm-up message to be delivered",
        limit,
        poll,
        async || match sender.send_text(&target, "warm-up").await {
            Ok(sent) => (sent.status == MessageStatus::Delivered).then_some(Ok(())),
            Err(e) => Some(Err(anyhow::Error::from(e))),
        },
    )
    .await?
}

/// Message `i` of a run: `"{prefix} {i} "` padded with `x` to [`PAYLOAD`] bytes.
pub(crate) fn text(prefix: &str, i: usize) -> String {
    let mut text = format!("{prefix} {i} ");
    while text.len() < PAYLOAD {
        text.push('x');
    }
    text
}

fn payload(i: usize) -> String {
    text("message", i)
}

/// Sends one message and returns the microseconds until `send_text` answered `Delivered` (the
/// recipient stored, flushed and acknowledged it); an error if it was only queued.
pub(crate) async fn timed_send(sender: &Node, target: &str, i: usize) -> anyhow::Result<u64> {
    let started = Instant::now();
    let sent = sender.send_text(target, &payload(i)).await?;
    if sent.status != MessageStatus::Delivered {
        bail!("message {i} was queued, not delivered, on an idle loopback link");
    }
    Ok(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX))
}

async fn kith_latency(n: usize, quic: bool, bar: &ProgressBar) -> anyhow::Result<Vec<u64>> {
    let pair = Pair::start(quic).await?;
    let target = pair.a.peer_id().to_string();
    let mut samples = Vec::with_capacity(n);
    let budget = Instant::now() + Duration::from_secs(300);
    for i in 0..n {
        samples.push(timed_send(&pair.b, &target, i).await?);
        if i % 50 == 0 {
            bar.tick();
        }
        if Instant::now() > budget {
            break;
        }
    }
    pair.shutdown().await;
    Ok(samples)
}

async fn kith_throughput(n: usize, senders: usize, bar: &ProgressBar) -> anyhow::Result<f64> {
    let pair = Pair::start(false).await?;
    let rate = throughput(&pair.b, &pair.a, n, senders, bar).await;
    pair.shutdown().await;
    rate
}

/// `n` messages from `sender` to `recipient` by `senders` concurrent tasks, each calling
/// `send_text` in turn; the clock stops once the sender's outbox is empty (every message
/// acknowledged). Messages per second.
pub(crate) async fn throughput(
    sender: &Node,
    recipient: &Node,
    n: usize,
    senders: usize,
    bar: &ProgressBar,
) -> anyhow::Result<f64> {
    let target = recipient.peer_id().to_string();
    let started = Instant::now();
    let per = n.div_ceil(senders.max(1));
    let tasks = (0..senders).map(|s| {
        let node = sender.clone();
        let target = target.clone();
        tokio::spawn(async move {
            for i in 0..per {
                node.send_text(&target, &payload(s * per + i)).await?;
            }
            anyhow::Ok(())
        })
    });
    for result in join_all(tasks).await {
        result.context("a sender task failed")??;
    }
    // Everything queued must be acknowledged before the clock stops (bounded).
    let deadline = Instant::now() + Duration::from_secs(300);
    while sender.outbox_len() > 0 {
        if Instant::now() > deadline {
            bail!("the outbox did not drain within 300 s");
        }
        bar.tick();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let sent = per * senders;
    Ok(sent as f64 / elapsed)
}

/// Raw request-response: bytes in, bytes out, in kith's own framing ([`kith_net::frame`]).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RawCodec;

/// The largest frame the raw baseline reads or writes: far above anything it sends (kith's own
/// caps are per protocol; the baseline has none of its own).
const RAW_MAX_FRAME: usize = 16 * 1024 * 1024;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        kith_net::frame::read_frame(io, RAW_MAX_FRAME).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        kith_net::frame::read_frame(io, RAW_MAX_FRAME).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        kith_net::frame::write_frame(io, &req, RAW_MAX_FRAME).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        kith_net::frame::write_frame(io, &res, RAW_MAX_FRAME).await
    }
}

#[derive(NetworkBehaviour)]
struct RawBehaviour {
    rr: request_response::Behaviour<RawCodec>,
}

type RawSwarm = libp2p::Swarm<RawBehaviour>;

fn raw_swarm(quic: bool) -> anyhow::Result<RawSwarm> {
    let behaviour = |_: &Keypair| RawBehaviour {
        rr: request_response::Behaviour::with_codec(
            RawCodec,
            [(
                StreamProtocol::new("/kith-bench/rr/1.0.0"),
                request_response::ProtocolSupport::Full,
            )],
            request_response::Config::default()
                .with_request_timeout(Duration::from_secs(20))
                .with_max_concurrent_streams(256),
        ),
    };
    let swarm = if quic {
        SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_quic()
            .with_behaviour(behaviour)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build()
    } else {
        SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )?
            .with_behaviour(behaviour)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build()
    };
    Ok(swarm)
}

struct RawResult {
    samples: Vec<u64>,
    rate: f64,
}

/// `n` requests from a client swarm to a server swarm, `in_flight` at a time; the server answers
/// each with a 20-byte ack. Both swarms are driven on their own tasks.
async fn raw_run(n: usize, in_flight: usize, quic: bool) -> anyhow::Result<RawResult> {
    let mut server = raw_swarm(quic)?;
    let listen: Multiaddr = if quic {
        "/ip4/127.0.0.1/udp/0/quic-v1".parse()?
    } else {
        "/ip4/127.0.0.1/tcp/0".parse()?
    };
    server.listen_on(listen)?;
    let addr = loop {
        match tokio::time::timeout(Duration::from_secs(10), server.select_next_some()).await {
            Ok(SwarmEvent::NewListenAddr { address, .. }) => break address,
            Ok(_) => {}
            Err(_) => bail!("raw server never listened"),
        }
    };
    let server_id = *server.local_peer_id();
    let server_task = tokio::spawn(async move {
        loop {
            if let SwarmEvent::Behaviour(RawBehaviourEvent::Rr(
                request_response::Event::Message {
                    message: request_response::Message::Request { channel, .. },
                    ..
                },
            )) = server.select_next_some().await
            {
                let _ = server
                    .behaviour_mut()
                    .rr
                    .send_response(channel, vec![0u8; 20]);
            }
        }
    });
    let mut client = raw_swarm(quic)?;
    client.dial(addr.with(libp2p::multiaddr::Protocol::P2p(server_id)))?;
    let body = payload(0).into_bytes();
    let mut started = std::collections::HashMap::new();
    let mut samples = Vec::with_capacity(n);
    let mut sent = 0;
    // The clock starts with the first request, after the connection is up, as kith's does.
    let mut begin: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    // Wait for the connection, then keep `in_flight` requests outstanding.
    loop {
        if Instant::now() > deadline {
            server_task.abort();
            bail!("raw baseline did not finish within 300 s");
        }
        while client.is_connected(&server_id) && sent < n && started.len() < in_flight {
            begin.get_or_insert_with(Instant::now);
            let id = client
                .behaviour_mut()
                .rr
                .send_request(&server_id, body.clone());
            started.insert(id, Instant::now());
            sent += 1;
        }
        if samples.len() == n {
            break;
        }
        let event = tokio::time::timeout(Duration::from_secs(20), client.select_next_some())
            .await
            .context("raw client stalled")?;
        match event {
            SwarmEvent::Behaviour(RawBehaviourEvent::Rr(request_response::Event::Message {
                message: request_response::Message::Response { request_id, .. },
                ..
            })) => {
                if let Some(at) = started.remove(&request_id) {
                    samples.push(u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX));
                }
            }
            SwarmEvent::Behaviour(RawBehaviourEvent::Rr(
                request_response::Event::OutboundFailure { error, .. },
            )) => {
                server_task.abort();
                bail!("raw request failed: {error}");
            }
            SwarmEvent::OutgoingConnectionError { error, .. } => {
                server_task.abort();
                bail!("raw dial failed: {error}");
            }
            _ => {}
        }
    }
    let rate = n as f64 / begin.map_or(f64::MAX, |b| b.elapsed().as_secs_f64());
    server_task.abort();
    Ok(RawResult { samples, rate })
}
