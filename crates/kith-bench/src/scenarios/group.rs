//! `group.latency.10`, `group.latency.50`: group message delivery latency in an in-process network
//! of kith nodes that are all members of one group, beside raw gossipsub swarms with the same
//! topology (bootstrap from the first node, Kademlia walks) and the same gossipsub settings,
//! measured in the same run. `group.catchup`: a member that was offline fetches what it missed.
//!
//! Latency is per (message, receiving member): from the moment the sender's application hands the
//! text over (`send_group_text`: Megolm encrypt, sign, store + flush, publish) to the moment the
//! receiver has validated, decrypted, stored and flushed it (kith), or from `publish` to the
//! gossipsub `Message` event (raw). Messages go out one at a time, rotating over a few senders,
//! each after the previous one reached every member.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use indicatif::ProgressBar;
use kith_net::{Keypair, Multiaddr};
use kith_service::{Node, Options};
use kith_store::StoreConfig;
use kith_testkit::Transports;
use libp2p::{
    StreamProtocol, SwarmBuilder, gossipsub, identify, kad,
    multiaddr::Protocol,
    noise,
    swarm::{NetworkBehaviour, SwarmEvent},
    tcp, yamux,
};
use tokio::sync::{mpsc, oneshot};

use crate::{
    baseline::loopback_tcp,
    cluster::NETWORK_ID,
    report::{Figures, Scenario, micros},
    scenarios::dm::{options as bench_options, runtime, text},
};

/// Sizes of the scenarios.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    /// Members in `group.latency.10` (quick: fewer).
    pub(crate) small: usize,
    /// Members in `group.latency.50` (quick: fewer).
    pub(crate) large: usize,
    /// Measured messages per latency scenario.
    pub(crate) messages: usize,
    /// Messages a member misses in `group.catchup`.
    pub(crate) catchup: usize,
}

impl Params {
    /// Full-run or `--quick` defaults.
    pub(crate) fn new(quick: bool) -> Self {
        if quick {
            Self {
                small: 4,
                large: 6,
                messages: 10,
                catchup: 100,
            }
        } else {
            Self {
                small: 10,
                large: 50,
                messages: 100,
                catchup: 2_000,
            }
        }
    }
}

/// Phase timings on stderr when `KITH_BENCH_DEBUG` is set (setup problems are otherwise silent
/// waits).
macro_rules! phase {
    ($($arg:tt)*) => {
        if std::env::var_os("KITH_BENCH_DEBUG").is_some() {
            eprintln!("[group] {}", format!($($arg)*));
        }
    };
}

/// Members that take turns sending.
const SENDERS: usize = 3;
/// Longest wait for one message to reach every member.
const ARRIVAL: Duration = Duration::from_secs(20);
/// Longest setup (group creation, invitations, joins, warm-up).
const SETUP: Duration = Duration::from_secs(300);

/// Runs `group.latency.<members>`.
pub(crate) fn run_latency(
    name: &'static str,
    members: usize,
    params: &Params,
    bar: &ProgressBar,
) -> Scenario {
    let unit = "us";
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return Scenario::unavailable(name, unit, format!("{e:#}")),
    };
    rt.block_on(async {
        let kith = kith_latency(members, params.messages, bar).await;
        let raw = raw_latency(members, params.messages, bar).await;
        let notes = format!(
            "{members} members, {} messages one at a time from {SENDERS} rotating senders, latency per \
             (message, receiver): kith = send_group_text (Megolm, sign, store+flush, publish) until \
             the receiver stored and flushed it; baseline = raw gossipsub publish until the Message \
             event, same topology and mesh settings, no validation or storage{}{}",
            params.messages,
            note("kith", &kith),
            note("baseline", &raw)
        );
        let kith = kith.ok().and_then(|(s, _)| Figures::latency(&s));
        let raw = raw.ok().and_then(|(s, _)| Figures::latency(&s));
        Scenario::measured(name, unit, kith, raw, notes)
    })
}

fn note(which: &str, result: &anyhow::Result<(Vec<u64>, usize)>) -> String {
    match result {
        Ok((_, 0)) => String::new(),
        Ok((_, lost)) => format!(
            "; {which}: {lost} deliveries missing after {} s",
            ARRIVAL.as_secs()
        ),
        Err(e) => format!("; {which} failed: {e:#}"),
    }
}

/// A kith node of the benchmark, with what it needs to be restarted.
struct KithMember {
    node: Node,
    keypair: Keypair,
    home: std::path::PathBuf,
    addr: Multiaddr,
}

async fn start_kith(
    dir: &Path,
    i: usize,
    keypair: Keypair,
    bootstrap: Vec<Multiaddr>,
) -> anyhow::Result<KithMember> {
    let home = dir.join(format!("node-{i}"));
    let store =
        kith_testkit::open_store_at(&home, &StoreConfig::default().with_cache_capacity(8 << 20))?;
    let config =
        kith_testkit::loopback_config(keypair.clone(), NETWORK_ID, Transports::Tcp, bootstrap)?;
    let options = Options {
        group_sync_every: Duration::from_secs(5),
        ..bench_options()
    };
    let node = kith_testkit::start_node(config, store, options).await?;
    let (addr, _) = kith_testkit::listen_addrs(&node, Transports::Tcp).await?;
    Ok(KithMember {
        node,
        keypair,
        home,
        addr,
    })
}

async fn kith_network(dir: &Path, n: usize) -> anyhow::Result<Vec<KithMember>> {
    let mut members = Vec::with_capacity(n);
    members.push(start_kith(dir, 0, Keypair::generate_ed25519(), Vec::new()).await?);
    let hub = vec![members[0].addr.clone()];
    for i in 1..n {
        members.push(start_kith(dir, i, Keypair::generate_ed25519(), hub.clone()).await?);
    }
    // Every routing table holds a fair part of the network, then every key bundle is published
    // again, so the first direct messages (invitations, keys) find them.
    let want = (n - 1).min(8);
    let deadline = Instant::now() + Duration::from_secs(60);
    for m in &members {
        while m.node.probe().routing_table().await?.len() < want {
            if Instant::now() > deadline {
                bail!("routing tables did not fill in 60 s");
            }
            let _ = m.node.probe().bootstrap().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    phase!("{n} kith nodes up, routing tables filled");
    for m in &members {
        m.node.publish_key_bundle().await?;
    }
    phase!("key bundles published");
    Ok(members)
}

/// Arrival times of messages, by (message number, receiver index).
type Arrivals = Arc<Mutex<HashMap<(usize, usize), Instant>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Number `i` from a message text made by [`text`] (`"group {i} xxx…"`).
fn number(text: &str) -> Option<usize> {
    text.split(' ').nth(1)?.parse().ok()
}

fn watch_kith(node: &Node, index: usize, arrivals: &Arrivals) -> tokio::task::JoinHandle<()> {
    let arrivals = arrivals.clone();
    super::on_group_texts(node, move |text| {
        if let Some(i) = number(text) {
            lock(&arrivals)
                .entry((i, index))
                .or_insert_with(Instant::now);
        }
    })
}

/// Sends `messages` messages, message `i` from member `i % SENDERS` through `publish(sender, i)`,
/// each once the one before reached everyone or timed out; returns how long each arrival took
/// (microseconds) and how many arrivals never came.
async fn timed_rounds(
    arrivals: &Arrivals,
    n: usize,
    messages: usize,
    bar: &ProgressBar,
    mut publish: impl AsyncFnMut(usize, usize) -> anyhow::Result<()>,
) -> anyhow::Result<(Vec<u64>, usize)> {
    let mut samples = Vec::with_capacity(messages * n);
    let mut lost = 0;
    for i in 0..messages {
        let s = i % SENDERS.min(n);
        let receivers: Vec<usize> = (0..n).filter(|r| *r != s).collect();
        let started = Instant::now();
        publish(s, i).await?;
        lost += wait_all(arrivals, i, &receivers).await;
        let a = lock(arrivals);
        for r in &receivers {
            if let Some(at) = a.get(&(i, *r)) {
                samples.push(micros(at.duration_since(started)));
            }
        }
        drop(a);
        bar.tick();
    }
    Ok((samples, lost))
}

/// Starts watching every member's group messages; arrivals are recorded by (message, member).
fn watch_all(members: &[KithMember]) -> (Arrivals, Vec<tokio::task::JoinHandle<()>>) {
    let arrivals: Arrivals = Arc::default();
    let watchers = members
        .iter()
        .enumerate()
        .map(|(i, m)| watch_kith(&m.node, i, &arrivals))
        .collect();
    (arrivals, watchers)
}

async fn wait_all(arrivals: &Arrivals, i: usize, receivers: &[usize]) -> usize {
    let deadline = Instant::now() + ARRIVAL;
    loop {
        let missing = {
            let a = lock(arrivals);
            receivers
                .iter()
                .filter(|r| !a.contains_key(&(i, **r)))
                .count()
        };
        if missing == 0 || Instant::now() > deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Creates a group on member 0 with everyone in it; returns its id once every invited member
/// joined and every sender's first message reached everyone (keys shared).
async fn kith_group(
    members: &[KithMember],
    arrivals: &Arrivals,
    first: usize,
) -> anyhow::Result<String> {
    let admin = &members[0].node;
    let info = admin.create_group("bench").await?;
    let id = hex::encode(info.id);
    for m in &members[1..] {
        let deadline = Instant::now() + SETUP;
        // The invitation travels over Olm: the member's key bundle must be in the DHT first.
        loop {
            match admin
                .invite_to_group(&id, &m.node.peer_id().to_string())
                .await
            {
                Ok(_) => break,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    for m in &members[1..] {
        let deadline = Instant::now() + SETUP;
        loop {
            if m.node
                .group_invitations()?
                .iter()
                .any(|g| hex::encode(g.id) == id)
            {
                m.node.join_group(&id).await?;
                break;
            }
            if Instant::now() > deadline {
                bail!("member {} never got the invitation", m.node.peer_id());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    phase!("everyone joined");
    // Warm-up: each sender's first message carries its key to everyone.
    for s in 0..SENDERS.min(members.len()) {
        let i = first + s;
        members[s]
            .node
            .send_group_text(&id, &text("group", i))
            .await?;
        let receivers: Vec<usize> = (0..members.len()).filter(|r| *r != s).collect();
        let deadline = Instant::now() + SETUP;
        loop {
            let missing = wait_all(arrivals, i, &receivers).await;
            if missing == 0 {
                break;
            }
            phase!("warm-up {s}: {missing} members still lack it");
            if Instant::now() > deadline {
                bail!("warm-up message {i} did not reach every member");
            }
        }
        phase!("warm-up {s} reached everyone");
    }
    Ok(id)
}

async fn kith_latency(
    n: usize,
    messages: usize,
    bar: &ProgressBar,
) -> anyhow::Result<(Vec<u64>, usize)> {
    let dir = tempfile::Builder::new()
        .prefix("kith-bench-group-")
        .tempdir()?;
    let members = kith_network(dir.path(), n).await?;
    let (arrivals, watchers) = watch_all(&members);
    let result = async {
        let id = kith_group(&members, &arrivals, 1_000_000).await?;
        timed_rounds(&arrivals, n, messages, bar, async |s, i| {
            members[s]
                .node
                .send_group_text(&id, &text("group", i))
                .await?;
            Ok(())
        })
        .await
    }
    .await;
    for w in watchers {
        w.abort();
    }
    shutdown(members).await;
    result
}

async fn shutdown(members: Vec<KithMember>) {
    let stops = members.into_iter().map(|m| async move {
        let _ = tokio::time::timeout(Duration::from_secs(10), m.node.shutdown()).await;
    });
    futures::future::join_all(stops).await;
}

/// Runs `group.catchup`: three members; one stops, the other two send `n` messages, it starts
/// again and fetches them over `/kith/sync` (decrypt, validate, store, flush). Messages per second
/// from its restart until every missed message is in its history. No baseline: raw gossipsub has
/// no catch-up to compare with.
pub(crate) fn run_catchup(params: &Params, bar: &ProgressBar) -> Scenario {
    let (name, unit) = ("group.catchup", "msg/s");
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return Scenario::unavailable(name, unit, format!("{e:#}")),
    };
    rt.block_on(async {
        match catchup(params.catchup, bar).await {
            Ok((rate, secs)) => Scenario::measured(
                name,
                unit,
                Some(Figures::default().with("rate", rate).with("seconds", secs)),
                None,
                format!(
                    "{} messages missed by a member of a 3-member group, fetched after its restart \
                     by /kith/sync pages of 256 (validate, decrypt, store, flush); no baseline (raw \
                     gossipsub has no catch-up)",
                    params.catchup
                ),
            ),
            Err(e) => Scenario::unavailable(name, unit, format!("catch-up failed: {e:#}")),
        }
    })
}

async fn catchup(n: usize, bar: &ProgressBar) -> anyhow::Result<(f64, f64)> {
    let dir = tempfile::Builder::new()
        .prefix("kith-bench-catchup-")
        .tempdir()?;
    let mut members = kith_network(dir.path(), 3).await?;
    let (arrivals, watchers) = watch_all(&members);
    let result = async {
        let id = kith_group(&members, &arrivals, 1_000_000).await?;
        let away = members.pop().context("no third member")?;
        let (keypair, home) = (away.keypair.clone(), away.home.clone());
        away.node.shutdown().await?;
        drop(away);
        for i in 0..n {
            members[i % 2]
                .node
                .send_group_text(&id, &text("group", i))
                .await?;
            if i % 100 == 0 {
                bar.tick();
            }
        }
        // sled releases its lock a moment after the last handle drops.
        let mut back = None;
        for _ in 0..50 {
            match start_kith(
                dir.path(),
                2,
                keypair.clone(),
                vec![members[0].addr.clone()],
            )
            .await
            {
                Ok(m) => {
                    back = Some(m);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let back =
            back.with_context(|| format!("cannot restart the member in {}", home.display()))?;
        let started = Instant::now();
        let expected = n + SENDERS.min(3);
        let deadline = started + Duration::from_secs(600);
        loop {
            let (_, h) = back.node.group_history(&id, expected + 10, None)?;
            if h.len() >= expected {
                break;
            }
            if Instant::now() > deadline {
                bail!("caught up on {} of {expected} messages in 600 s", h.len());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        members.push(back);
        Ok::<_, anyhow::Error>((n as f64 / secs, secs))
    }
    .await;
    for w in watchers {
        w.abort();
    }
    shutdown(members).await;
    result
}

// ---- the raw gossipsub baseline ----

#[derive(NetworkBehaviour)]
struct RawBehaviour {
    identify: identify::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    gossipsub: gossipsub::Behaviour,
}

enum RawCommand {
    Publish(Vec<u8>, oneshot::Sender<bool>),
    Shutdown(oneshot::Sender<()>),
}

struct RawMember {
    commands: mpsc::Sender<RawCommand>,
    addr: Multiaddr,
}

const RAW_TOPIC: &str = "kith/v1/group/bench";

/// kith's gossipsub settings ([`kith_net::gossip_settings`]), without application validation.
fn raw_gossip_config() -> anyhow::Result<gossipsub::Config> {
    kith_net::gossip_settings()
        .build()
        .map_err(|e| anyhow::anyhow!("gossipsub config: {e}"))
}

async fn start_raw(
    index: usize,
    bootstrap: Option<Multiaddr>,
    arrivals: Arrivals,
) -> anyhow::Result<RawMember> {
    let kad_protocol = StreamProtocol::try_from_owned(kith_net::kad_protocol(NETWORK_ID))
        .context("kad protocol")?;
    let gossip_config = raw_gossip_config()?;
    let mut swarm = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|key| {
            let kad = crate::baseline::server_kad(
                key.public().to_peer_id(),
                kad::Config::new(kad_protocol.clone()),
            );
            Ok(RawBehaviour {
                identify: identify::Behaviour::new(identify::Config::new(
                    "/kith-bench/raw/1.0.0".to_owned(),
                    key.public(),
                )),
                kad,
                gossipsub: gossipsub::Behaviour::new(
                    gossipsub::MessageAuthenticity::Signed(key.clone()),
                    gossip_config,
                )?,
            })
        })
        .map_err(|e| anyhow::anyhow!("raw behaviour: {e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    swarm.listen_on(loopback_tcp())?;
    swarm
        .behaviour_mut()
        .gossipsub
        .subscribe(&gossipsub::IdentTopic::new(RAW_TOPIC))?;
    let peer_id = *swarm.local_peer_id();
    let addr = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                return address;
            }
        }
    })
    .await
    .context("raw listener did not come up")?
    .with(Protocol::P2p(peer_id));
    if let Some(hub) = bootstrap {
        if let Some(Protocol::P2p(hub_id)) = hub.iter().last() {
            let base: Multiaddr = hub
                .iter()
                .filter(|p| !matches!(p, Protocol::P2p(_)))
                .collect();
            swarm.behaviour_mut().kad.add_address(&hub_id, base);
        }
        swarm.dial(hub)?;
        let _ = swarm.behaviour_mut().kad.bootstrap();
    }
    let (commands, mut rx) = mpsc::channel::<RawCommand>(64);
    tokio::spawn(async move {
        let topic = gossipsub::IdentTopic::new(RAW_TOPIC);
        loop {
            tokio::select! {
                biased;
                command = rx.recv() => match command {
                    Some(RawCommand::Publish(bytes, reply)) => {
                        let ok = swarm.behaviour_mut().gossipsub.publish(topic.clone(), bytes).is_ok();
                        let _ = reply.send(ok);
                    }
                    Some(RawCommand::Shutdown(reply)) => {
                        let _ = reply.send(());
                        return;
                    }
                    None => return,
                },
                event = swarm.select_next_some() => match event {
                    SwarmEvent::Behaviour(RawBehaviourEvent::Gossipsub(gossipsub::Event::Message { message, .. })) => {
                        if let Some(i) = std::str::from_utf8(&message.data).ok().and_then(number) {
                            lock(&arrivals).entry((i, index)).or_insert_with(Instant::now);
                        }
                    }
                    SwarmEvent::Behaviour(RawBehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                        for a in info.listen_addrs {
                            swarm.behaviour_mut().kad.add_address(&peer_id, a);
                        }
                    }
                    _ => {}
                },
            }
        }
    });
    Ok(RawMember { commands, addr })
}

async fn raw_publish(member: &RawMember, bytes: Vec<u8>) -> bool {
    let (reply, rx) = oneshot::channel();
    if member
        .commands
        .send(RawCommand::Publish(bytes, reply))
        .await
        .is_err()
    {
        return false;
    }
    rx.await.unwrap_or(false)
}

async fn raw_latency(
    n: usize,
    messages: usize,
    bar: &ProgressBar,
) -> anyhow::Result<(Vec<u64>, usize)> {
    let arrivals: Arrivals = Arc::default();
    let mut members = Vec::with_capacity(n);
    members.push(start_raw(0, None, arrivals.clone()).await?);
    let hub = members[0].addr.clone();
    for i in 1..n {
        members.push(start_raw(i, Some(hub.clone()), arrivals.clone()).await?);
    }
    let result = async {
        phase!("{n} raw nodes up");
        // Warm-up as for kith: each sender's first message must reach everyone (the mesh formed).
        for (s, sender) in members.iter().enumerate().take(SENDERS.min(n)) {
            let i = 1_000_000 + s;
            let receivers: Vec<usize> = (0..n).filter(|r| *r != s).collect();
            let deadline = Instant::now() + SETUP;
            let mut attempt = 0;
            loop {
                let mut payload = text("group", i).into_bytes();
                payload.extend_from_slice(format!(" {attempt}").as_bytes());
                attempt += 1;
                raw_publish(sender, payload).await;
                if wait_all(&arrivals, i, &receivers).await == 0 {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("raw warm-up message {i} did not reach every member");
                }
            }
        }
        timed_rounds(&arrivals, n, messages, bar, async |s, i| {
            raw_publish(&members[s], text("group", i).into_bytes()).await;
            Ok(())
        })
        .await
    }
    .await;
    for m in members {
        let (reply, rx) = oneshot::channel();
        if m.commands.send(RawCommand::Shutdown(reply)).await.is_ok() {
            let _ = rx.await;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_numbers_come_back_from_their_text() {
        assert_eq!(number(&text("group", 42)), Some(42));
        assert_eq!(number("garbage"), None);
    }

    #[test]
    fn the_raw_baseline_uses_a_valid_gossipsub_config() {
        assert!(raw_gossip_config().is_ok());
    }
}
