//! `blob.throughput` (TCP), `blob.throughput.quic` and `blob.resume`: files between two kith
//! nodes over `/kith/blob/1.0.0`, beside raw libp2p streams copying the same number of bytes over
//! the same transport in the same run.
//!
//! - throughput: A sends a file of random bytes to B (who accepted A). The clock starts when B
//!   has recorded the offer (its download starts right after) and stops when B has verified and
//!   recorded the whole ciphertext; the rate is ciphertext bytes over that time. Sealing on A's
//!   side is not counted (it happens before the offer leaves). The baseline opens a
//!   `libp2p-stream` stream between two bare swarms (TCP+Noise+Yamux with nodelay, or QUIC, as
//!   kith's transport) and copies the same number of bytes in 64 KiB writes until the reader has
//!   them all. Runs alternate kith and raw.
//! - resume: B is shut down once about half the file is verified, started again from the same
//!   store and identity, and resumes. kith's figure is what A sent beyond one full transfer
//!   (re-sent bytes); the baseline is what a transfer without resume sends again: everything B
//!   had at the cut.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use indicatif::ProgressBar;
use kith_net::{DhtMode, Keypair, Multiaddr};
use kith_service::{FileState, Node, SendFileOptions};
use kith_store::{Store, StoreConfig};
use libp2p::{StreamProtocol, swarm::SwarmEvent};

use crate::report::{Figures, Scenario, round_to};

/// Size of the scenarios.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    /// Plaintext bytes of the throughput file.
    pub(crate) bytes: usize,
    /// Timed runs of each side (alternating).
    pub(crate) runs: usize,
    /// Plaintext bytes of the resume file.
    pub(crate) resume_bytes: usize,
}

impl Params {
    /// Full-run (100 MB, 3 runs) or `--quick` (8 MB, 1 run) defaults.
    pub(crate) fn new(quick: bool) -> Self {
        Self {
            bytes: if quick { 8_000_000 } else { 100_000_000 },
            runs: if quick { 1 } else { 3 },
            resume_bytes: if quick { 8_000_000 } else { 100_000_000 },
        }
    }
}

const RAW_PROTOCOL: StreamProtocol = StreamProtocol::new("/kith-bench/copy/1.0.0");
/// Bound on one transfer.
const TRANSFER_LIMIT: Duration = Duration::from_secs(300);

fn listen(quic: bool) -> anyhow::Result<Multiaddr> {
    Ok(if quic {
        "/ip4/127.0.0.1/udp/0/quic-v1".parse()?
    } else {
        "/ip4/127.0.0.1/tcp/0".parse()?
    })
}

fn random_file(
    dir: &std::path::Path,
    name: &str,
    len: usize,
) -> anyhow::Result<std::path::PathBuf> {
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let path = dir.join(name);
    std::fs::write(&path, bytes)?;
    Ok(path)
}

/// One kith node of a pair: its home and identity, so it can be started again.
struct Member {
    dir: tempfile::TempDir,
    keypair: Keypair,
    node: Node,
}

async fn start_node(
    dir: tempfile::TempDir,
    keypair: Keypair,
    quic: bool,
    bootstrap: Vec<Multiaddr>,
) -> anyhow::Result<Member> {
    // sled lets go of its lock a moment after the last handle of a stopped node drops.
    let mut store = None;
    for _ in 0..100 {
        match Store::open(dir.path().join("db"), &StoreConfig::default()) {
            Ok(s) => {
                store = Some(s);
                break;
            }
            Err(kith_store::StoreError::Locked { .. }) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let store = store.context("the store stayed locked after a restart")?;
    let config = kith_net::Config::new(keypair.clone())
        .with_network_id("bench")
        .with_mdns(false)
        .with_dht_mode(DhtMode::Server)
        .with_listen(vec![listen(quic)?])
        .with_bootstrap(bootstrap);
    let node = Node::start_with(config, store, super::dm::options()).await?;
    Ok(Member { dir, keypair, node })
}

async fn first_addr(node: &Node) -> anyhow::Result<Multiaddr> {
    for _ in 0..250 {
        if let Some(first) = node.status().await?.net.listen_addrs.first() {
            return Ok(first
                .clone()
                .with(libp2p::multiaddr::Protocol::P2p(node.peer_id())));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("the node never listened")
}

/// A and B, B bootstrapped from A; B knows and accepts A, so A's files download at once.
async fn pair(quic: bool) -> anyhow::Result<(Member, Member, Multiaddr)> {
    let dir = || {
        tempfile::Builder::new()
            .prefix("kith-bench-blob-")
            .tempdir()
    };
    let a = start_node(dir()?, Keypair::generate_ed25519(), quic, Vec::new()).await?;
    let addr = first_addr(&a.node).await?;
    let b = start_node(
        dir()?,
        Keypair::generate_ed25519(),
        quic,
        vec![addr.clone()],
    )
    .await?;
    super::dm::warm_up(&a.node, &b.node, Duration::from_secs(30)).await?;
    b.node.accept(&a.node.peer_id().to_string()).await?;
    Ok((a, b, addr))
}

/// Sends a file of `len` random bytes from A to B and times B's download. Returns
/// (ciphertext bytes, seconds).
async fn kith_transfer(
    a: &Node,
    b: &Node,
    dir: &std::path::Path,
    len: usize,
    run: usize,
) -> anyhow::Result<(u64, f64)> {
    let path = random_file(dir, &format!("run-{run}.bin"), len)?;
    let a_id = a.peer_id();
    let before: std::collections::HashSet<_> =
        b.files(Some(a_id))?.into_iter().map(|f| f.id).collect();
    let watcher = {
        let b = b.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + TRANSFER_LIMIT;
            let mut started = None;
            loop {
                if Instant::now() > deadline {
                    bail!(
                        "the file did not arrive within {} s",
                        TRANSFER_LIMIT.as_secs()
                    );
                }
                // Listing every file each millisecond would cost the node under test more than
                // it costs to look one up: list until the offer shows, then read that one.
                let current = match started {
                    None => b
                        .files(Some(a_id))?
                        .into_iter()
                        .find(|f| !before.contains(&f.id)),
                    Some((_, id)) => Some(b.file(&id)?),
                };
                if let Some(f) = current {
                    let (t0, _) = *started.get_or_insert((Instant::now(), f.id));
                    if f.state == FileState::Complete {
                        return anyhow::Ok((f.offer.size, t0.elapsed().as_secs_f64()));
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    a.send_file(&b.peer_id().to_string(), &path, SendFileOptions::default())
        .await?;
    let result = watcher.await.context("watcher task")??;
    let _ = std::fs::remove_file(&path);
    Ok(result)
}

type RawSwarm = libp2p::Swarm<libp2p_stream::Behaviour>;

fn raw_swarm(quic: bool) -> anyhow::Result<RawSwarm> {
    let builder = libp2p::SwarmBuilder::with_new_identity().with_tokio();
    let swarm = if quic {
        builder
            .with_quic()
            .with_behaviour(|_| libp2p_stream::Behaviour::new())?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build()
    } else {
        builder
            .with_tcp(
                libp2p::tcp::Config::default().nodelay(true),
                libp2p::noise::Config::new,
                libp2p::yamux::Config::default,
            )?
            .with_behaviour(|_| libp2p_stream::Behaviour::new())?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build()
    };
    Ok(swarm)
}

/// Copies `len` bytes over one raw libp2p stream; seconds from opening the stream until the
/// reader has every byte.
async fn raw_transfer(quic: bool, len: usize) -> anyhow::Result<f64> {
    let mut server = raw_swarm(quic)?;
    let mut incoming = server
        .behaviour()
        .new_control()
        .accept(RAW_PROTOCOL)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    server.listen_on(listen(quic)?)?;
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
            break address;
        }
    };
    let server_id = *server.local_peer_id();
    let server_task = tokio::spawn(async move {
        loop {
            server.select_next_some().await;
        }
    });
    let mut client = raw_swarm(quic)?;
    let mut control = client.behaviour().new_control();
    client.dial(addr)?;
    loop {
        if let SwarmEvent::ConnectionEstablished { .. } = client.select_next_some().await {
            break;
        }
    }
    let client_task = tokio::spawn(async move {
        loop {
            client.select_next_some().await;
        }
    });
    let reader = tokio::spawn(async move {
        let (_, mut stream) = incoming.next().await.context("no stream")?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0usize;
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got += n;
        }
        anyhow::Ok(got)
    });
    let started = Instant::now();
    let mut stream = control
        .open_stream(server_id, RAW_PROTOCOL)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let chunk = vec![0x5au8; 64 * 1024];
    let mut sent = 0usize;
    while sent < len {
        let n = chunk.len().min(len - sent);
        stream.write_all(&chunk[..n]).await?;
        sent += n;
    }
    stream.close().await?;
    let got = tokio::time::timeout(TRANSFER_LIMIT, reader)
        .await
        .context("raw copy timed out")?
        .context("reader task")??;
    let secs = started.elapsed().as_secs_f64();
    server_task.abort();
    client_task.abort();
    if got != len {
        bail!("raw copy delivered {got} of {len} bytes");
    }
    Ok(secs)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// Runs `blob.throughput` (TCP) or `blob.throughput.quic`.
pub(crate) fn run_throughput(params: &Params, quic: bool, bar: &ProgressBar) -> Scenario {
    let (name, unit) = if quic {
        ("blob.throughput.quic", "MB/s")
    } else {
        ("blob.throughput", "MB/s")
    };
    let runtime = match super::dm::runtime() {
        Ok(rt) => rt,
        Err(e) => return Scenario::unavailable(name, unit, format!("{e:#}")),
    };
    runtime.block_on(async {
        let mut notes = vec![format!(
            "{} MB of random bytes from A to B on loopback {}, {} run(s) each, alternating; kith: from B recording the offer until B verified and recorded the whole ciphertext (bao-verified 16 KiB groups, fsync'd), rate over ciphertext bytes; baseline: one raw libp2p-stream stream between two bare swarms copying as many bytes in 64 KiB writes",
            params.bytes / 1_000_000,
            if quic { "QUIC" } else { "TCP+Noise+Yamux" },
            params.runs,
        )];
        let mut kith_rates = Vec::new();
        let mut raw_rates = Vec::new();
        let measured: anyhow::Result<()> = async {
            let (a, b, _) = pair(quic).await?;
            let files = tempfile::tempdir()?;
            for run in 0..params.runs {
                let (size, secs) =
                    kith_transfer(&a.node, &b.node, files.path(), params.bytes, run).await?;
                kith_rates.push(size as f64 / secs / 1e6);
                bar.tick();
                let secs = raw_transfer(quic, size as usize).await?;
                raw_rates.push(size as f64 / secs / 1e6);
                bar.tick();
            }
            let _ = b.node.shutdown().await;
            let _ = a.node.shutdown().await;
            Ok(())
        }
        .await;
        if let Err(e) = measured {
            notes.push(format!("failed: {e:#}"));
        }
        notes.push(format!(
            "kith runs {:?} MB/s, raw runs {:?} MB/s",
            kith_rates.iter().map(|r| round_to(*r, 1)).collect::<Vec<_>>(),
            raw_rates.iter().map(|r| round_to(*r, 1)).collect::<Vec<_>>()
        ));
        let k = median(kith_rates).map(|r| Figures::default().with("rate", round_to(r, 1)));
        let b = median(raw_rates).map(|r| Figures::default().with("rate", round_to(r, 1)));
        Scenario::measured(name, unit, k, b, notes.join("; "))
    })
}

fn sent_bytes(node: &Node) -> f64 {
    let text = node.metrics_text();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (series, value) = l.split_once(' ')?;
            (series == "kith_blob_bytes_sent_total").then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0.0)
}

/// Runs `blob.resume`.
pub(crate) fn run_resume(params: &Params, bar: &ProgressBar) -> Scenario {
    let (name, unit) = ("blob.resume", "bytes");
    let runtime = match super::dm::runtime() {
        Ok(rt) => rt,
        Err(e) => return Scenario::unavailable(name, unit, format!("{e:#}")),
    };
    runtime.block_on(async {
        let mut notes = vec![format!(
            "{} MB of random bytes from A to B over TCP on loopback; B shut down once about half was verified, started again from the same store and identity; kith: bytes A sent beyond the ciphertext size over both attempts (re-sent bytes and bao hash pairs); baseline: what a transfer without resume sends again (everything B had verified at the cut)",
            params.resume_bytes / 1_000_000
        )];
        let measured: anyhow::Result<(f64, f64, u64)> = async {
            let (a, b, a_addr) = pair(false).await?;
            let files = tempfile::tempdir()?;
            let path = random_file(files.path(), "resume.bin", params.resume_bytes)?;
            let before = sent_bytes(&a.node);
            let sent = a
                .node
                .send_file(&b.node.peer_id().to_string(), &path, SendFileOptions::default())
                .await?;
            let id = sent.sent.id;
            let size = sent.file.offer.size;
            let deadline = Instant::now() + TRANSFER_LIMIT;
            let at_cut = loop {
                if Instant::now() > deadline {
                    bail!("B never reached half of the file");
                }
                if let Ok(f) = b.node.file(&id) {
                    if f.state == FileState::Complete {
                        bail!("the file arrived before the cut; use a larger file");
                    }
                    if f.received_bytes * 2 >= size {
                        break f.received_bytes;
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            let Member { dir, keypair, node } = b;
            node.shutdown().await?;
            drop(node);
            bar.tick();
            let b = start_node(dir, keypair, false, vec![a_addr]).await?;
            loop {
                if Instant::now() > deadline {
                    bail!("the resumed file did not complete");
                }
                if b.node.file(&id).is_ok_and(|f| f.state == FileState::Complete) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let total = sent_bytes(&a.node) - before;
            let _ = b.node.shutdown().await;
            let _ = a.node.shutdown().await;
            drop(b.dir);
            Ok(((total - size as f64).max(0.0), at_cut as f64, size))
        }
        .await;
        let (k, b) = match measured {
            Ok((resent, at_cut, size)) => {
                notes.push(format!(
                    "ciphertext {size} bytes; B had {at_cut} verified at the cut; A re-sent {resent} ({:.2}% of the file)",
                    resent * 100.0 / size as f64
                ));
                (
                    Some(
                        Figures::default()
                            .with("resent", resent.round())
                            .with("fraction", round_to(resent / size as f64, 4)),
                    ),
                    Some(
                        Figures::default()
                            .with("resent", at_cut.round())
                            .with("fraction", round_to(at_cut / size as f64, 4)),
                    ),
                )
            }
            Err(e) => {
                notes.push(format!("failed: {e:#}"));
                (None, None)
            }
        };
        Scenario::measured(name, unit, k, b, notes.join("; "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_keeps_the_files_small() {
        let quick = Params::new(true);
        assert!(quick.bytes <= 10_000_000 && quick.resume_bytes <= 10_000_000);
        assert_eq!(quick.runs, 1);
        assert_eq!(Params::new(false).bytes, 100_000_000);
    }

    #[test]
    fn median_of_rates() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(Vec::new()), None);
    }
}
