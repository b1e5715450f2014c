//! `soak`: direct messages at a steady rate for many minutes between two `kith run` processes,
//! driven through the sender's local API by many concurrent clients, as users would.
//!
//! - Pacing: message `k` is due at `start + k / rate`; each of `clients` API clients (its own HTTP
//!   connection) takes the next message number, waits until it is due and sends it. A client
//!   still waiting for an answer takes no new message, so when the node answers slower than the
//!   rate needs, the run falls behind and the achieved `rate` says so.
//! - Accepted: the API answered with an id (`delivered` or `queued`). Latency: how long that
//!   answer took, p99 over the whole run.
//! - After the last message (and a bounded wait for the sender's outbox to drain), the
//!   recipient's whole history is read through its API, paging with `before`: every accepted id
//!   must be there exactly once (`stored_once`); `lost` are accepted ids missing there, and
//!   `duplicated` ids found more than once.
//! - Memory: `VmRSS` of both processes every few seconds. The figures are the larger of the two
//!   nodes at the end of the first minute (or a third of a shorter run), at half time and at the
//!   end, with the idle footprint (after the warm-up, before the load), the bound the issue sets
//!   (idle + the store's page cache budget, 64 MiB by default, + 16 MB), and over the last 10
//!   minutes (or the second half of a shorter run) the spread, (max − min) / min, and the
//!   farthest reading from the mean, in percent of the mean.
//!
//! There is no baseline: raw libp2p stores nothing, so there is nothing like it to compare with.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use indicatif::ProgressBar;

use crate::{
    machine,
    process::KithRun,
    report::{Figures, Scenario, percentile, round_to},
    scenarios::{cpu, dm, footprint},
};

const NAME: &str = "soak";
const UNIT: &str = "MB";
/// The store's page cache budget (`StoreConfig::DEFAULT_CACHE_MB`, memory in MiB), in MB: the
/// nodes run with the default.
const CACHE_BUDGET_MB: f64 = kith_store::StoreConfig::DEFAULT_CACHE_MB as f64 * 1.048_576;
/// Headroom the issue allows above idle + cache.
const HEADROOM_MB: f64 = 16.0;
/// Pages of history read at once (the API's largest).
const PAGE: usize = 1000;

/// Sizes of the scenario.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    /// How long messages are sent.
    pub(crate) duration: Duration,
    /// Messages per second asked for.
    pub(crate) rate: f64,
    /// Concurrent API clients.
    pub(crate) clients: usize,
    /// How often RSS is read.
    pub(crate) sample_every: Duration,
    /// Upper bound on waiting for the outbox to drain after the last message.
    pub(crate) drain_wait: Duration,
}

impl Params {
    /// Full-run (20 minutes at 1,000 msg/s, 64 clients) or `--quick` (5 s at 50 msg/s) defaults.
    pub(crate) fn new(quick: bool) -> Self {
        if quick {
            Self {
                duration: Duration::from_secs(5),
                rate: 50.0,
                clients: 8,
                sample_every: Duration::from_secs(1),
                drain_wait: Duration::from_secs(30),
            }
        } else {
            Self {
                duration: Duration::from_secs(20 * 60),
                rate: 1000.0,
                clients: 64,
                sample_every: Duration::from_secs(5),
                drain_wait: Duration::from_secs(300),
            }
        }
    }
}

/// One RSS reading: seconds since the load started, sender MB, receiver MB.
type RssSample = (f64, f64, f64);

/// What the run produced.
#[derive(Debug, Default)]
struct Outcome {
    accepted: usize,
    /// API calls that got no id (errors, timeouts), with the first reason.
    refused: usize,
    first_refusal: Option<String>,
    /// Answer latency of every accepted message, microseconds.
    latencies: Vec<u64>,
    /// Seconds the sending took (longer than asked when it fell behind).
    send_secs: f64,
    /// Seconds until the sender's outbox looked drained after the last message.
    drain_secs: f64,
    idle: (f64, f64),
    rss: Vec<RssSample>,
    stored_once: usize,
    lost: usize,
    duplicated: usize,
    /// Messages in the recipient's history from the sender that no accepted id names (the
    /// warm-up, and sends whose API answer was lost).
    extra: usize,
    /// `kith_dm_rejected` at the recipient after the run (rate limited, among others).
    rejected: Option<f64>,
}

/// Runs the scenario.
pub(crate) fn run(params: &Params, bar: &ProgressBar) -> Scenario {
    let kith = match footprint::kith_binary(NAME, UNIT) {
        Ok(kith) => kith,
        Err(unavailable) => return *unavailable,
    };
    let outcome = soak(&kith, params, bar);
    let mut notes = vec![format!(
        "{:.1} min at {} msg/s asked, {} concurrent API clients (POST /v1/messages, {}-byte texts) to the sender, two `kith run` processes ({} build) on loopback TCP with default settings; RSS every {} s; figures: the larger node's RSS at the first minute, half time and end, accepted (answered with an id), stored_once/lost/duplicated from the recipient's whole history paged with `before`, p99 of the API answer time",
        params.duration.as_secs_f64() / 60.0,
        params.rate,
        params.clients,
        dm::PAYLOAD,
        footprint::binary_profile(&kith),
        params.sample_every.as_secs()
    )];
    match outcome {
        Ok(o) => {
            let (figures, more) = figures(&o, params);
            notes.extend(more);
            Scenario::measured(NAME, UNIT, Some(figures), None, notes.join("; "))
        }
        Err(e) => {
            notes.push(format!("failed: {e:#}"));
            Scenario::unavailable(NAME, UNIT, notes.join("; "))
        }
    }
}

/// RSS of the larger node nearest to `at` seconds.
fn rss_at(samples: &[RssSample], at: f64) -> Option<f64> {
    samples
        .iter()
        .min_by(|a, b| (a.0 - at).abs().total_cmp(&(b.0 - at).abs()))
        .map(|s| s.1.max(s.2))
}

/// Spread of one node's RSS over the samples from `from` seconds on: (max − min) / min, percent.
fn spread_pct(samples: &[RssSample], from: f64, node: impl Fn(&RssSample) -> f64) -> Option<f64> {
    let window: Vec<f64> = samples.iter().filter(|s| s.0 >= from).map(node).collect();
    let min = window.iter().copied().reduce(f64::min)?;
    let max = window.iter().copied().reduce(f64::max)?;
    (min > 0.0).then(|| (max - min) / min * 100.0)
}

/// The largest distance of one node's RSS from its mean over the samples from `from` seconds on,
/// percent of that mean: the issue's "flat (±10%)" read literally, beside [`spread_pct`]'s
/// stricter (max − min) / min, which the figures have been judged by.
fn deviation_pct(
    samples: &[RssSample],
    from: f64,
    node: impl Fn(&RssSample) -> f64,
) -> Option<f64> {
    let window: Vec<f64> = samples.iter().filter(|s| s.0 >= from).map(node).collect();
    if window.is_empty() {
        return None;
    }
    let mean = window.iter().sum::<f64>() / window.len() as f64;
    let far = window.iter().map(|v| (v - mean).abs()).reduce(f64::max)?;
    (mean > 0.0).then(|| far / mean * 100.0)
}

/// The figures and the notes that explain them.
fn figures(o: &Outcome, params: &Params) -> (Figures, Vec<String>) {
    let total = o.send_secs;
    let first = 60f64.min(total / 3.0);
    // The last 10 minutes, or the second half of a shorter run.
    let window_from = if total > 20.0 * 60.0 {
        total - 10.0 * 60.0
    } else {
        total / 2.0
    };
    let mut sorted = o.latencies.clone();
    sorted.sort_unstable();
    let p99_ms = percentile(&sorted, 99.0).map_or(f64::NAN, |us| round_to(us as f64 / 1000.0, 2));
    let p50_ms = percentile(&sorted, 50.0).map_or(f64::NAN, |us| round_to(us as f64 / 1000.0, 2));
    let end = o.rss.last().copied().unwrap_or_default();
    let idle = o.idle.0.max(o.idle.1);
    let bound = idle + CACHE_BUDGET_MB + HEADROOM_MB;
    let spread_s = spread_pct(&o.rss, window_from, |s| s.1).unwrap_or(f64::NAN);
    let spread_r = spread_pct(&o.rss, window_from, |s| s.2).unwrap_or(f64::NAN);
    let deviation_s = deviation_pct(&o.rss, window_from, |s| s.1).unwrap_or(f64::NAN);
    let deviation_r = deviation_pct(&o.rss, window_from, |s| s.2).unwrap_or(f64::NAN);
    let rss = |v: Option<f64>| round_to(v.unwrap_or(f64::NAN), 1);
    let figures = Figures::default()
        .with("rss_first_min_mb", rss(rss_at(&o.rss, first)))
        .with("rss_half_mb", rss(rss_at(&o.rss, total / 2.0)))
        .with("rss_end_mb", round_to(end.1.max(end.2), 1))
        .with("accepted", o.accepted as f64)
        .with("stored_once", o.stored_once as f64)
        .with("lost", o.lost as f64)
        .with("duplicated", o.duplicated as f64)
        .with("p99_ms", p99_ms)
        .with("p50_ms", p50_ms)
        .with("rate", round_to(o.accepted as f64 / total.max(1e-9), 1))
        .with("rss_idle_mb", round_to(idle, 1))
        .with("rss_bound_mb", round_to(bound, 1))
        .with("rss_spread_pct", round_to(spread_s.max(spread_r), 1))
        .with(
            "rss_deviation_pct",
            round_to(deviation_s.max(deviation_r), 1),
        );
    let per_minute: Vec<String> = o
        .rss
        .iter()
        .scan(-1.0, |last, s| {
            // One reading per minute (every reading in runs under 3 minutes).
            let step = if total < 180.0 {
                0.0
            } else {
                60.0 - params.sample_every.as_secs_f64() / 2.0
            };
            if s.0 - *last >= step || *last < 0.0 {
                *last = s.0;
                Some(Some(format!("{:.0}s {:.1}/{:.1}", s.0, s.1, s.2)))
            } else {
                Some(None)
            }
        })
        .flatten()
        .collect();
    let mut notes = vec![
        format!(
            "sent for {:.1} s ({:.0} msg/s achieved of {} asked), outbox drained {:.1} s after the last message; {} API calls without an id{}; {} more messages at the recipient than accepted ids (warm-up, lost answers)",
            o.send_secs,
            o.accepted as f64 / total.max(1e-9),
            params.rate,
            o.drain_secs,
            o.refused,
            o.first_refusal
                .as_deref()
                .map(|f| format!(" (first: {f})"))
                .unwrap_or_default(),
            o.extra
        ),
        format!(
            "RSS idle sender {:.1} MB / receiver {:.1} MB; bound = idle {:.1} + cache {:.1} + {HEADROOM_MB} = {:.1} MB; end sender {:.1} / receiver {:.1} MB; spread (max − min) / min over the last {} sender {:.1}% / receiver {:.1}% (flat means within 10%), farthest from the mean sender ±{:.1}% / receiver ±{:.1}%",
            o.idle.0,
            o.idle.1,
            idle,
            CACHE_BUDGET_MB,
            bound,
            end.1,
            end.2,
            if total > 20.0 * 60.0 {
                "10 minutes"
            } else {
                "half"
            },
            spread_s,
            spread_r,
            deviation_s,
            deviation_r
        ),
        format!(
            "RSS sender/receiver MB over time: {}",
            per_minute.join(", ")
        ),
    ];
    match o.rejected {
        Some(rejected) if rejected > 0.0 => notes.push(format!(
            "the recipient refused {rejected:.0} frames (kith_dm_rejected: its per-sender rate limit of 200/s with a burst of 1000 in `kith run`, among others); the sender retried each"
        )),
        Some(_) => notes.push("the recipient refused no frame (kith_dm_rejected 0)".to_owned()),
        None => notes.push("kith_dm_rejected could not be read".to_owned()),
    }
    (figures, notes)
}

fn soak(kith: &std::path::Path, params: &Params, bar: &ProgressBar) -> anyhow::Result<Outcome> {
    KithRun::with_pair(kith, "kith-bench-soak-", async |sender, receiver| {
        drive(sender, receiver, params, bar).await
    })
}

/// What one client accepted: (message ids as numbers, answer latencies in us).
type ClientLog = (Vec<u128>, Vec<u64>);

async fn drive(
    sender: &KithRun,
    receiver: &KithRun,
    params: &Params,
    bar: &ProgressBar,
) -> anyhow::Result<Outcome> {
    bar.set_message(format!("{NAME}: warming up"));
    let (clients, to) = cpu::warm_clients(sender, receiver, params.clients).await?;
    let pids = (sender.pid(), receiver.pid());
    let read_rss = move || {
        (
            machine::rss_mb(pids.0).unwrap_or(f64::NAN),
            machine::rss_mb(pids.1).unwrap_or(f64::NAN),
        )
    };
    let mut o = Outcome {
        idle: read_rss(),
        ..Outcome::default()
    };

    let total = (params.rate * params.duration.as_secs_f64()).round() as usize;
    let start = tokio::time::Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let refusals: Arc<Mutex<(usize, Option<String>)>> = Arc::default();
    // RSS sampler, until the sending ends.
    let sampler = {
        let done = done.clone();
        let next = next.clone();
        let every = params.sample_every;
        let bar = bar.clone();
        tokio::spawn(async move {
            let mut samples: Vec<RssSample> = Vec::new();
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let (s, r) = read_rss();
                let at = start.elapsed().as_secs_f64();
                samples.push((at, s, r));
                bar.set_message(format!(
                    "{NAME}: {at:.0} s, {} of {total} sent, RSS {s:.1} / {r:.1} MB",
                    next.load(Ordering::Relaxed).min(total)
                ));
                if done.load(Ordering::Relaxed) {
                    return samples;
                }
            }
        })
    };
    let interval = 1.0 / params.rate.max(1e-6);
    let workers = clients.into_iter().map(|client| {
        let next = next.clone();
        let to = to.clone();
        let refusals = refusals.clone();
        tokio::spawn(async move {
            let mut log: ClientLog = (Vec::new(), Vec::new());
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= total {
                    return log;
                }
                tokio::time::sleep_until(start + Duration::from_secs_f64(k as f64 * interval))
                    .await;
                let asked = Instant::now();
                let answer = client.send_message(&to, &dm::text("soak", k)).await;
                let took = u64::try_from(asked.elapsed().as_micros()).unwrap_or(u64::MAX);
                match answer
                    .map_err(|e| e.to_string())
                    .and_then(|sent| u128::from_str_radix(&sent.id, 16).map_err(|e| e.to_string()))
                {
                    Ok(id) => {
                        log.0.push(id);
                        log.1.push(took);
                    }
                    Err(e) => {
                        let mut r = refusals.lock().unwrap_or_else(|p| p.into_inner());
                        r.0 += 1;
                        r.1.get_or_insert(e);
                    }
                }
            }
        })
    });
    let logs = futures::future::join_all(workers).await;
    o.send_secs = start.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    o.rss = sampler.await.context("the RSS sampler failed")?;
    let mut accepted: HashMap<u128, u32> = HashMap::new();
    for log in logs {
        let (ids, latencies) = log.context("a client task failed")?;
        accepted.extend(ids.into_iter().map(|id| (id, 0)));
        o.latencies.extend(latencies);
    }
    o.accepted = accepted.len();
    {
        let r = refusals.lock().unwrap_or_else(|p| p.into_inner());
        o.refused = r.0;
        o.first_refusal = r.1.clone();
    }

    // Drain: the newest page of the sender's history all delivered (bounded).
    bar.set_message(format!("{NAME}: waiting for the outbox to drain"));
    let probe = sender.client()?;
    let drain_start = Instant::now();
    while drain_start.elapsed() < params.drain_wait {
        let page = probe.history(&to, PAGE, None).await?;
        if page
            .messages
            .iter()
            .all(|m| m.status == "delivered" || m.status == "read")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    o.drain_secs = drain_start.elapsed().as_secs_f64();

    // Every accepted id exactly once in the recipient's history.
    bar.set_message(format!("{NAME}: reading the recipient's history"));
    let reader = receiver.client()?;
    let sender_id = sender.peer_id.clone();
    let mut before: Option<String> = None;
    for _ in 0..(o.accepted + o.refused) / PAGE + 1_000 {
        let page = reader
            .history(&sender_id, PAGE, before.as_deref())
            .await
            .context("cannot read the recipient's history")?;
        for m in &page.messages {
            match u128::from_str_radix(&m.id, 16)
                .ok()
                .and_then(|id| accepted.get_mut(&id))
            {
                Some(count) => *count += 1,
                None => o.extra += 1,
            }
        }
        match page.messages.first() {
            Some(oldest) if page.more => before = Some(oldest.id.clone()),
            _ => break,
        }
    }
    for count in accepted.values() {
        match count {
            0 => o.lost += 1,
            1 => o.stored_once += 1,
            _ => o.duplicated += 1,
        }
    }
    o.rejected = reader.metrics().await.ok().and_then(|text| {
        text.lines()
            .find(|l| {
                l.starts_with("kith_dm_rejected_total ") || l.starts_with("dm_rejected_total ")
            })
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    });
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_points_and_spread() {
        let samples = vec![(0.0, 30.0, 31.0), (60.0, 40.0, 35.0), (120.0, 44.0, 50.0)];
        assert_eq!(rss_at(&samples, 58.0), Some(40.0));
        assert_eq!(rss_at(&samples, 1000.0), Some(50.0));
        assert_eq!(rss_at(&[], 1.0), None);
        let spread = spread_pct(&samples, 60.0, |s| s.1).unwrap();
        assert!((spread - 10.0).abs() < 1e-9);
        assert!(spread_pct(&samples, 500.0, |s| s.1).is_none());
        // 40 and 44 around a mean of 42: ±4.76%.
        let deviation = deviation_pct(&samples, 60.0, |s| s.1).unwrap();
        assert!((deviation - 2.0 / 42.0 * 100.0).abs() < 1e-9);
        assert!(deviation_pct(&samples, 500.0, |s| s.1).is_none());
    }

    #[test]
    fn figures_carry_the_issue_names() {
        let o = Outcome {
            accepted: 10,
            stored_once: 9,
            lost: 1,
            latencies: (1..=10).map(|i| i * 1000).collect(),
            send_secs: 10.0,
            idle: (20.0, 21.0),
            rss: vec![(1.0, 20.0, 21.0), (5.0, 22.0, 23.0), (10.0, 24.0, 25.0)],
            ..Outcome::default()
        };
        let (f, _) = figures(&o, &Params::new(true));
        for name in [
            "rss_first_min_mb",
            "rss_half_mb",
            "rss_end_mb",
            "accepted",
            "stored_once",
            "lost",
            "duplicated",
            "p99_ms",
        ] {
            assert!(f.get(name).is_some(), "{name} missing");
        }
        assert_eq!(f.get("rss_end_mb"), Some(25.0));
        assert_eq!(f.get("p99_ms"), Some(10.0));
        assert_eq!(f.get("lost"), Some(1.0));
        assert_eq!(
            f.get("rss_bound_mb"),
            Some(round_to(21.0 + CACHE_BUDGET_MB + 16.0, 1))
        );
    }
}
