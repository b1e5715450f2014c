//! `dm.cpu`: CPU time per direct message on the sending and the receiving node, each a `kith run`
//! process of its own, beside two raw libp2p request-response processes doing the same number of
//! round trips with the same payload and concurrency, measured in the same run.
//!
//! CPU time is `utime + stime` of the whole process from `/proc/<pid>/stat` (every thread, also
//! tokio's blocking threads that exited meanwhile), read before and after the messages. The idle
//! rate of each process (its timers: connection manager, republisher, group and mailbox rounds)
//! is measured just before over a few seconds and subtracted for the duration of the run.
//!
//! kith: the bench process sends through the sender's local API (`POST /v1/messages`, the path a
//! user takes), `in_flight` API clients at once, each with its own HTTP connection; a message
//! counts once it is delivered (stored, flushed and acknowledged at the recipient). So the
//! sender's figure includes the API's HTTP and JSON work; the receiver's is the network path only.
//! Raw: `kith-bench __raw-rr` processes (identify + Kademlia + request-response over
//! TCP+Noise+Yamux), the client sending the requests from inside its own process.

use std::{
    collections::HashSet,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use indicatif::ProgressBar;

use crate::{
    process::{self, ChildProcess, KithRun},
    report::{Figures, Scenario, round_to},
    scenarios::{dm, footprint},
};

const NAME: &str = "dm.cpu";
const UNIT: &str = "us";
/// Upper bound on the messages of one side being delivered.
const RUN_WAIT: Duration = Duration::from_secs(300);

/// Sizes of the scenario.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    /// Messages measured.
    pub(crate) messages: usize,
    /// API clients sending at once (kith) / requests in flight (raw).
    pub(crate) in_flight: usize,
    /// How long each process's idle CPU rate is measured for.
    pub(crate) idle: Duration,
}

impl Params {
    /// Full-run (5,000 messages, 16 at once) or `--quick` defaults.
    pub(crate) fn new(quick: bool) -> Self {
        if quick {
            Self {
                messages: 100,
                in_flight: 8,
                idle: Duration::from_secs(1),
            }
        } else {
            Self {
                messages: 5_000,
                in_flight: 16,
                idle: Duration::from_secs(5),
            }
        }
    }
}

/// CPU microseconds per message on each side, with what went into them.
#[derive(Debug, Clone, Copy)]
struct Measured {
    sender_us: f64,
    receiver_us: f64,
    /// Idle CPU of sender and receiver, percent of one core.
    idle_pct: (f64, f64),
    /// Wall time of the measured messages, seconds.
    seconds: f64,
}

/// One measurement of a (sender, receiver) pair of processes: their idle rates, then their CPU
/// time from [`Sampling::start`] to [`Sampling::finish`].
struct Sampling {
    pids: (u32, u32),
    idle: (f64, f64),
    before: (f64, f64),
    started: Instant,
}

impl Sampling {
    /// Measures both processes' idle rates over `idle_wait`, then starts the clock.
    fn start(pids: (u32, u32), idle_wait: Duration) -> anyhow::Result<Self> {
        let idle = idle_rates(pids.0, pids.1, idle_wait)?;
        Ok(Self {
            pids,
            idle,
            before: cpu_pair(pids.0, pids.1)?,
            started: Instant::now(),
        })
    }

    /// The CPU per message, `messages` having been sent since [`Sampling::start`].
    fn finish(self, messages: usize) -> anyhow::Result<Measured> {
        let seconds = self.started.elapsed().as_secs_f64();
        let after = cpu_pair(self.pids.0, self.pids.1)?;
        let (before, idle) = (self.before, self.idle);
        Ok(Measured {
            sender_us: per_message_us(after.0 - before.0, idle.0, seconds, messages),
            receiver_us: per_message_us(after.1 - before.1, idle.1, seconds, messages),
            idle_pct: (idle.0 * 100.0, idle.1 * 100.0),
            seconds,
        })
    }
}

impl Measured {
    fn figures(&self) -> Figures {
        Figures::default()
            .with("sender_us", round_to(self.sender_us, 1))
            .with("receiver_us", round_to(self.receiver_us, 1))
    }
}

/// CPU seconds of two processes.
fn cpu_pair(a: u32, b: u32) -> anyhow::Result<(f64, f64)> {
    let read =
        |pid| process::cpu_seconds(pid).with_context(|| format!("cannot read /proc/{pid}/stat"));
    Ok((read(a)?, read(b)?))
}

/// Idle CPU rates (core-seconds per second) of two processes over `wait`.
fn idle_rates(a: u32, b: u32, wait: Duration) -> anyhow::Result<(f64, f64)> {
    let before = cpu_pair(a, b)?;
    let started = Instant::now();
    std::thread::sleep(wait);
    let after = cpu_pair(a, b)?;
    let secs = started.elapsed().as_secs_f64();
    Ok(((after.0 - before.0) / secs, (after.1 - before.1) / secs))
}

/// Per message: (CPU delta − idle rate × wall time) / messages, in microseconds, never negative.
fn per_message_us(delta: f64, idle_rate: f64, seconds: f64, messages: usize) -> f64 {
    ((delta - idle_rate * seconds).max(0.0) / messages.max(1) as f64) * 1e6
}

/// Runs the scenario: the kith pair, then the raw pair.
pub(crate) fn run(params: &Params, bar: &ProgressBar) -> Scenario {
    let kith = match footprint::kith_binary(NAME, UNIT) {
        Ok(kith) => kith,
        Err(unavailable) => return *unavailable,
    };
    let mut notes = vec![format!(
        "{} messages of {} bytes, {} at a time; CPU = utime+stime of each whole process from /proc/<pid>/stat, minus its idle rate (measured over {} s just before) for the run's duration; kith: two `kith run` processes ({} build) on loopback TCP, sent through the sender's local API (POST /v1/messages, {} API clients), each message delivered = stored, flushed and acked at the recipient; the sender's figure includes the API's HTTP/JSON work; baseline: two `kith-bench __raw-rr` processes (identify + Kademlia + request-response, TCP+Noise+Yamux), the client sending from inside its process, each request answered with 20 bytes",
        params.messages,
        dm::PAYLOAD,
        params.in_flight,
        params.idle.as_secs(),
        footprint::binary_profile(&kith),
        params.in_flight
    )];
    bar.set_message(format!("{NAME}: kith"));
    let k = measure_kith(&kith, params, bar);
    bar.set_message(format!("{NAME}: raw"));
    let r = measure_raw(params);
    for (side, result) in [("kith", &k), ("raw", &r)] {
        match result {
            Ok(m) => notes.push(format!(
                "{side}: {:.2} s for the messages ({:.0} msg/s); idle CPU sender {:.2}%, receiver {:.2}% of a core",
                m.seconds,
                params.messages as f64 / m.seconds.max(1e-9),
                m.idle_pct.0,
                m.idle_pct.1
            )),
            Err(e) => notes.push(format!("{side} failed: {e:#}")),
        }
    }
    Scenario::measured(
        NAME,
        UNIT,
        k.as_ref().ok().map(Measured::figures),
        r.as_ref().ok().map(Measured::figures),
        notes.join("; "),
    )
}

fn measure_kith(
    kith: &std::path::Path,
    params: &Params,
    bar: &ProgressBar,
) -> anyhow::Result<Measured> {
    KithRun::with_pair(kith, "kith-bench-cpu-", async |sender, receiver| {
        kith_messages(sender, receiver, params, bar).await
    })
}

/// `n` (at least one) API clients of `sender`, once one message reached `receiver` (whose peer id
/// comes second).
pub(crate) async fn warm_clients(
    sender: &KithRun,
    receiver: &KithRun,
    n: usize,
) -> anyhow::Result<(Vec<kith_api::ApiClient>, String)> {
    let clients = (0..n.max(1))
        .map(|_| sender.client())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let to = receiver.peer_id.clone();
    warm_up(&clients[0], &to, Duration::from_secs(60)).await?;
    Ok((clients, to))
}

/// Sends until one message is delivered (the key bundle is in the DHT and the session open),
/// bounded by `limit`.
pub(crate) async fn warm_up(
    client: &kith_api::ApiClient,
    to: &str,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(sent) = client.send_message(to, "warm-up").await
            && sent.status == "delivered"
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "no warm-up message was delivered within {} s",
                limit.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn kith_messages(
    sender: &KithRun,
    receiver: &KithRun,
    params: &Params,
    bar: &ProgressBar,
) -> anyhow::Result<Measured> {
    let (clients, to) = warm_clients(sender, receiver, params.in_flight).await?;
    // Warm every client's connection and the pipelines, untimed.
    send_all(&clients, &to, params.in_flight * 4, "warm").await?;
    bar.set_message(format!("{NAME}: kith idle, then messages"));
    let sampling = Sampling::start((sender.pid(), receiver.pid()), params.idle)?;
    let queued = send_all(&clients, &to, params.messages, "cpu").await?;
    wait_delivered(&clients[0], &to, queued, params.messages).await?;
    sampling.finish(params.messages)
}

/// Sends `n` messages through `clients`, all at once; returns the ids answered `queued`.
async fn send_all(
    clients: &[kith_api::ApiClient],
    to: &str,
    n: usize,
    prefix: &'static str,
) -> anyhow::Result<HashSet<String>> {
    let next = Arc::new(AtomicUsize::new(0));
    let workers = clients.iter().map(|client| {
        let next = next.clone();
        async move {
            let mut queued = HashSet::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(queued);
                }
                let sent = client
                    .send_message(to, &dm::text(prefix, i))
                    .await
                    .with_context(|| format!("message {i} was refused"))?;
                if sent.status != "delivered" {
                    queued.insert(sent.id);
                }
            }
        }
    });
    let mut queued = HashSet::new();
    for result in futures::future::join_all(workers).await {
        queued.extend(result?);
    }
    Ok(queued)
}

/// Waits until every id in `queued` shows `delivered` among the sender's last `recent` messages
/// (bounded).
async fn wait_delivered(
    client: &kith_api::ApiClient,
    to: &str,
    mut queued: HashSet<String>,
    recent: usize,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + RUN_WAIT;
    while !queued.is_empty() {
        if Instant::now() > deadline {
            bail!(
                "{} messages were still queued after {} s",
                queued.len(),
                RUN_WAIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        let page = client.history_up_to(to, recent, None).await?;
        for m in &page.messages {
            if m.status == "delivered" || m.status == "read" {
                queued.remove(&m.id);
            }
        }
    }
    Ok(())
}

/// The two raw processes: a server, and a client that sends from inside its own process.
fn measure_raw(params: &Params) -> anyhow::Result<Measured> {
    let exe = std::env::current_exe().context("cannot locate kith-bench itself")?;
    let mut server_cmd = Command::new(&exe);
    server_cmd
        .arg("__raw-rr")
        .stderr(std::process::Stdio::null());
    let mut server = ChildProcess::spawn(server_cmd, "the raw request-response server")?;
    let ready = server.expect_line(footprint::READY_WAIT)?;
    let addr = ready_addr(&ready)?;
    let mut client_cmd = Command::new(&exe);
    client_cmd
        .args(["__raw-rr", "--connect", &addr])
        .args(["--size", &dm::PAYLOAD.to_string()])
        .stderr(std::process::Stdio::null());
    let mut client = ChildProcess::spawn(client_cmd, "the raw request-response client")?;
    let result = (|| {
        client.expect_line(footprint::READY_WAIT)?;
        // Untimed warm-up: the connection, the streams, the allocator.
        batch(&mut client, params.in_flight * 4, params.in_flight)?;
        let sampling = Sampling::start((client.pid(), server.pid()), params.idle)?;
        batch(&mut client, params.messages, params.in_flight)?;
        sampling.finish(params.messages)
    })();
    client.close_stdin();
    client.wait_or_kill(Duration::from_secs(10));
    server.close_stdin();
    server.wait_or_kill(Duration::from_secs(10));
    result
}

/// The first listen address with `/p2p/` from a raw node's ready line.
fn ready_addr(line: &str) -> anyhow::Result<String> {
    let ready: serde_json::Value =
        serde_json::from_str(line).with_context(|| format!("raw node printed {line:?}"))?;
    let peer = ready
        .get("peer_id")
        .and_then(serde_json::Value::as_str)
        .context("no peer_id in the raw node's ready line")?;
    let addr = ready
        .get("listen_addrs")
        .and_then(serde_json::Value::as_array)
        .and_then(|a| a.first())
        .and_then(serde_json::Value::as_str)
        .context("no listen address in the raw node's ready line")?;
    Ok(format!("{addr}/p2p/{peer}"))
}

/// Asks the raw client for `n` round trips and waits for its answer; all must succeed.
fn batch(client: &mut ChildProcess, n: usize, in_flight: usize) -> anyhow::Result<()> {
    client.send_line(&format!("send {n} {in_flight}"))?;
    let line = client.expect_line(RUN_WAIT)?;
    let done: serde_json::Value =
        serde_json::from_str(&line).with_context(|| format!("raw client printed {line:?}"))?;
    let sent = done.get("sent").and_then(serde_json::Value::as_u64);
    if sent != Some(n as u64) {
        bail!("the raw client answered {n} requests with {line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_is_subtracted_and_never_below_zero() {
        // 1 s of CPU over 10 s with 1% idle: 0.9 s for 1000 messages = 900 us each.
        assert!((per_message_us(1.0, 0.01, 10.0, 1000) - 900.0).abs() < 1e-6);
        assert_eq!(per_message_us(0.0, 0.5, 10.0, 1000), 0.0);
    }

    #[test]
    fn ready_addr_ends_in_the_peer_id() {
        let line = r#"{"peer_id":"12D3KooWA","listen_addrs":["/ip4/127.0.0.1/tcp/4001"]}"#;
        assert_eq!(
            ready_addr(line).unwrap(),
            "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWA"
        );
        assert!(ready_addr("{}").is_err());
    }
}
