//! `scale` after growth: the network in use while it changes.
//!
//! - [`Live`]: the running nodes, shared by the phases and the churn task; a node that leaves
//!   keeps its slot (marked gone), a node that joins gets a new one.
//! - [`churn`]: every `60 / (pct% × nodes)` seconds one random node leaves (stopped; never a group
//!   member or a node in the middle of a resolution) and a fresh node joins through three random
//!   live nodes, until the phases are done.
//! - [`names`]: `names` nodes register a name each, then `resolutions` cold resolutions of a random
//!   one of those names from random other live nodes (kith: `resolve_name` with the scale's name
//!   rules; raw: the five replica keys' `get_record`s at once, as `resolve.cold`'s baseline does).
//! - [`group`] (kith only): one group of `group_members` random nodes, then `group_messages`
//!   messages from rotating senders; delivery is per (message, receiving member), latency from the
//!   send call to the receiver's `GroupReceived` event (stored and flushed).

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use kith_core::Name;
use kith_net::PeerId;
use kith_service::Node;
use serde::{Deserialize, Serialize};

use crate::{
    cluster::{Member, Rng, Spawner},
    report,
};

/// Resolutions in flight at once.
pub(crate) const RESOLVE_CONCURRENCY: usize = 8;
/// Upper bound for one resolution (the scale's query timeout is 20 s).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(35);
/// Registrations in flight at once.
const REGISTER_CONCURRENCY: usize = 4;
/// Upper bound for one registration (proof of work at the scale's low difficulty, then a put to
/// each replica key).
const REGISTER_TIMEOUT: Duration = Duration::from_secs(60);
/// Members that take turns sending group messages.
const SENDERS: usize = 3;
/// How long the next group message waits for the previous one to reach every member.
const PACE: Duration = Duration::from_secs(2);
/// Bootstrap entries of a node that joins during churn.
const CHURN_FANOUT: usize = 3;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

struct Slot {
    member: Member,
    alive: bool,
}

/// The running nodes while the network is in use, and which of them must not leave.
pub(crate) struct Live {
    slots: Mutex<Vec<Slot>>,
    /// Group members: churn never stops them.
    protected: Mutex<HashSet<usize>>,
    /// Nodes with a resolution in flight, with how many: churn never stops them either.
    busy: Mutex<HashMap<usize, usize>>,
}

impl Live {
    /// Every grown node, alive.
    pub(crate) fn new(members: Vec<Member>) -> Self {
        Self {
            slots: Mutex::new(
                members
                    .into_iter()
                    .map(|member| Slot {
                        member,
                        alive: true,
                    })
                    .collect(),
            ),
            protected: Mutex::default(),
            busy: Mutex::default(),
        }
    }

    /// Indices of the live nodes.
    pub(crate) fn alive(&self) -> Vec<usize> {
        lock(&self.slots)
            .iter()
            .enumerate()
            .filter(|(_, s)| s.alive)
            .map(|(i, _)| i)
            .collect()
    }

    /// A live node.
    pub(crate) fn get(&self, i: usize) -> Option<Member> {
        lock(&self.slots)
            .get(i)
            .filter(|s| s.alive)
            .map(|s| s.member.clone())
    }

    /// A random live node other than those in `except`.
    fn pick(&self, rng: &mut Rng, except: &HashSet<usize>) -> Option<usize> {
        let candidates: Vec<usize> = self
            .alive()
            .into_iter()
            .filter(|i| !except.contains(i))
            .collect();
        candidates.get(rng.below(candidates.len())).copied()
    }

    fn push(&self, member: Member) {
        lock(&self.slots).push(Slot {
            member,
            alive: true,
        });
    }

    /// Marks a random node that may leave as gone and returns it, for the caller to stop.
    fn retire_random(&self, rng: &mut Rng) -> Option<Member> {
        // Both locks are held together, so a node cannot become busy or protected between the
        // check and the retirement.
        let protected = lock(&self.protected);
        let busy = lock(&self.busy);
        let mut slots = lock(&self.slots);
        let candidates: Vec<usize> = slots
            .iter()
            .enumerate()
            .filter(|(i, s)| s.alive && !protected.contains(i) && !busy.contains_key(i))
            .map(|(i, _)| i)
            .collect();
        let i = *candidates.get(rng.below(candidates.len()))?;
        let slot = slots.get_mut(i)?;
        slot.alive = false;
        Some(slot.member.clone())
    }

    /// Marks `i` busy if it is still alive.
    fn claim(&self, i: usize) -> Option<Member> {
        let mut busy = lock(&self.busy);
        let member = self.get(i)?;
        *busy.entry(i).or_default() += 1;
        Some(member)
    }

    fn release(&self, i: usize) {
        let mut busy = lock(&self.busy);
        if let Some(n) = busy.get_mut(&i) {
            *n -= 1;
            if *n == 0 {
                busy.remove(&i);
            }
        }
    }

    /// Picks `n` distinct random live nodes and protects them from churn, atomically.
    fn protect_random(&self, rng: &mut Rng, n: usize) -> Vec<(usize, Member)> {
        let mut protected = lock(&self.protected);
        let slots = lock(&self.slots);
        let mut candidates: Vec<usize> = slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.alive)
            .map(|(i, _)| i)
            .collect();
        let mut out = Vec::new();
        while out.len() < n && !candidates.is_empty() {
            let i = candidates.swap_remove(rng.below(candidates.len()));
            if let Some(slot) = slots.get(i) {
                protected.insert(i);
                out.push((i, slot.member.clone()));
            }
        }
        out
    }
}

/// What churn did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ChurnResult {
    /// Asked for: percent of the nodes replaced per minute.
    pub(crate) pct: f64,
    /// Nodes stopped.
    pub(crate) left: usize,
    /// Nodes started.
    pub(crate) joined: usize,
    /// Joins that failed.
    pub(crate) join_failures: usize,
    /// Seconds churn ran.
    pub(crate) secs: f64,
}

/// Replaces nodes at `pct` percent of `base` per minute until `done` is set.
pub(crate) async fn churn(
    live: &Live,
    spawner: &Spawner,
    pct: f64,
    base: usize,
    first_slot: usize,
    done: &AtomicBool,
) -> ChurnResult {
    let mut result = ChurnResult {
        pct,
        ..ChurnResult::default()
    };
    let per_minute = pct / 100.0 * base as f64;
    if per_minute <= 0.0 {
        return result;
    }
    let period = Duration::from_secs_f64((60.0 / per_minute).max(0.05));
    let started = Instant::now();
    let mut rng = Rng::from_os();
    let mut next = Instant::now() + period;
    let mut stops = Vec::new();
    while !done.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next {
            // Short steps, so the end of the phases is noticed at once.
            tokio::time::sleep((next - now).min(Duration::from_millis(100))).await;
            continue;
        }
        // Behind (a join took longer than the period): the rate drops rather than bunching up.
        next = (next + period).max(now);
        if let Some(gone) = live.retire_random(&mut rng) {
            result.left += 1;
            // Stopping waits for the store flush; it must not hold up the next join.
            stops.push(tokio::spawn(async move { gone.handle.stop().await }));
        }
        let mut bootstrap = Vec::new();
        for _ in 0..CHURN_FANOUT {
            if let Some(m) = live
                .pick(&mut rng, &HashSet::new())
                .and_then(|i| live.get(i))
                && !bootstrap.contains(&m.addr)
            {
                bootstrap.push(m.addr);
            }
        }
        // Homes are numbered on from every slot the growth used (a join that failed there used
        // one too), one per attempt.
        let slot = first_slot + result.joined + result.join_failures;
        match spawner.start(slot, bootstrap, None).await {
            Ok(member) => {
                live.push(member);
                result.joined += 1;
            }
            Err(_) => result.join_failures += 1,
        }
    }
    for stop in stops {
        let _ = stop.await;
    }
    result.secs = report::round_to(started.elapsed().as_secs_f64(), 1);
    result
}

/// What the names phase measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct NamesResult {
    /// Names registered (and published to at least one peer).
    pub(crate) registered: usize,
    /// Registrations that failed or published to nobody.
    pub(crate) register_failures: usize,
    /// Resolutions started.
    pub(crate) resolutions: usize,
    /// Resolutions that found the right owner.
    pub(crate) ok: usize,
    /// Resolutions that named another owner (kith) or returned another value (raw).
    pub(crate) wrong: usize,
    /// Resolutions that failed or timed out.
    pub(crate) failed: usize,
    /// One failure's reason, for the notes.
    pub(crate) example_failure: Option<String>,
    /// Median time of the successful resolutions, ms.
    pub(crate) p50_ms: f64,
    /// 99th percentile of the successful resolutions, ms.
    pub(crate) p99_ms: f64,
}

/// One registered name: who owns it (kith) or what its records hold (raw).
struct Registered {
    name: String,
    owner: usize,
    owner_id: PeerId,
    value: Vec<u8>,
}

/// Registers `names` names on random nodes, then runs `resolutions` resolutions from random other
/// live nodes, within `budget` (registration included).
pub(crate) async fn names(
    live: &Live,
    names: usize,
    resolutions: usize,
    budget: Duration,
    progress: impl Fn(&str, usize, usize),
) -> NamesResult {
    let deadline = tokio::time::Instant::now() + budget;
    let mut out = NamesResult::default();
    let mut rng = Rng::from_os();
    let mut owners = HashSet::new();
    let mut plans = Vec::new();
    for n in 0..names {
        let Some(owner) = live.pick(&mut rng, &owners) else {
            break;
        };
        owners.insert(owner);
        plans.push((format!("scale-name-{n}"), owner));
    }
    let registered: Vec<Result<Registered, String>> = futures::stream::iter(plans)
        .map(|(name, owner)| async move { register(live, name, owner).await })
        .buffer_unordered(REGISTER_CONCURRENCY)
        .collect()
        .await;
    let mut names_ok = Vec::new();
    for r in registered {
        match r {
            Ok(r) => names_ok.push(r),
            Err(e) => {
                out.register_failures += 1;
                out.example_failure.get_or_insert(e);
            }
        }
    }
    out.registered = names_ok.len();
    if names_ok.is_empty() {
        return out;
    }
    let names_ok = &names_ok;
    let asked: Mutex<HashSet<(usize, usize)>> = Mutex::default();
    let asked = &asked;
    let mut resolving = futures::stream::iter(0..resolutions)
        .map(|_| async move {
            let mut rng = Rng::from_os();
            // A node that resolved a name before answers from its pin: every pair is new.
            let mut pick = None;
            for _ in 0..20 {
                let n = rng.below(names_ok.len());
                let Some(r) = names_ok.get(n) else { continue };
                let except = HashSet::from([r.owner]);
                let Some(from) = live.pick(&mut rng, &except) else {
                    continue;
                };
                if lock(asked).insert((from, n)) {
                    pick = Some((from, r));
                    break;
                }
            }
            let Some((from, r)) = pick else {
                return Err("no live node left to resolve from".to_owned());
            };
            let Some(member) = live.claim(from) else {
                return Err("the resolving node left".to_owned());
            };
            let started = Instant::now();
            let outcome = resolve(&member, r).await;
            let elapsed = started.elapsed();
            live.release(from);
            outcome.map(|right| (right, elapsed))
        })
        .buffer_unordered(RESOLVE_CONCURRENCY);
    let mut ok_ms = Vec::new();
    while let Ok(Some(outcome)) = tokio::time::timeout_at(deadline, resolving.next()).await {
        out.resolutions += 1;
        match outcome {
            Ok((true, elapsed)) => {
                out.ok += 1;
                ok_ms.push(millis(elapsed));
            }
            Ok((false, _)) => out.wrong += 1,
            Err(e) => {
                out.failed += 1;
                out.example_failure.get_or_insert(e);
            }
        }
        if out.resolutions % 10 == 0 {
            progress("resolve", out.resolutions, resolutions);
        }
    }
    ok_ms.sort_unstable();
    out.p50_ms = report::percentile(&ok_ms, 50.0).map_or(0.0, |v| v as f64);
    out.p99_ms = report::percentile(&ok_ms, 99.0).map_or(0.0, |v| v as f64);
    out
}

async fn register(live: &Live, name: String, owner: usize) -> Result<Registered, String> {
    let member = live
        .claim(owner)
        .ok_or_else(|| format!("the owner of {name} left"))?;
    let result = async {
        let value = match member.handle.kith() {
            Some(node) => {
                let registration =
                    tokio::time::timeout(REGISTER_TIMEOUT, node.register_name(&name, None))
                        .await
                        .map_err(|_| format!("registering {name} timed out"))?
                        .map_err(|e| format!("registering {name}: {e}"))?;
                if !registration.published {
                    return Err(format!("no peer took the claim on {name}"));
                }
                Vec::new()
            }
            None => {
                let node = member.handle.raw().ok_or("neither kith nor raw")?;
                let keys = Name::parse(&name)
                    .map_err(|e| format!("{name}: {e}"))?
                    .replica_keys();
                let mut value = format!("record of {name} ").into_bytes();
                value.resize(256, b'x');
                let puts = futures::future::join_all(
                    keys.iter()
                        .map(|k| node.put_record(k.clone(), value.clone())),
                );
                let results = tokio::time::timeout(REGISTER_TIMEOUT, puts)
                    .await
                    .map_err(|_| format!("putting {name} timed out"))?;
                if results.iter().all(Result::is_err) {
                    return Err(format!("no replica key of {name} was stored"));
                }
                value
            }
        };
        Ok(Registered {
            name: name.clone(),
            owner,
            owner_id: member.peer_id,
            value,
        })
    }
    .await;
    live.release(owner);
    result
}

/// One resolution; `Ok(true)` when it found the right owner (or value).
async fn resolve(member: &Member, r: &Registered) -> Result<bool, String> {
    match member.handle.kith() {
        Some(node) => match tokio::time::timeout(RESOLVE_TIMEOUT, node.resolve_name(&r.name)).await
        {
            Ok(Ok(resolution)) => Ok(resolution.peer_id == r.owner_id),
            Ok(Err(e)) => Err(format!("resolving {}: {e}", r.name)),
            Err(_) => Err(format!(
                "resolving {} took over {} s",
                r.name,
                RESOLVE_TIMEOUT.as_secs()
            )),
        },
        None => {
            let node = member.handle.raw().ok_or("neither kith nor raw")?;
            let keys = Name::parse(&r.name)
                .map_err(|e| format!("{}: {e}", r.name))?
                .replica_keys();
            let gets = futures::future::join_all(keys.iter().map(|k| node.get_record(k.clone())));
            let results = tokio::time::timeout(RESOLVE_TIMEOUT, gets)
                .await
                .map_err(|_| format!("getting {} timed out", r.name))?;
            if results
                .iter()
                .any(|got| got.as_ref().is_ok_and(|v| *v == r.value))
            {
                Ok(true)
            } else if results.iter().any(Result::is_ok) {
                Ok(false)
            } else {
                Err(format!("no replica key of {} answered", r.name))
            }
        }
    }
}

/// What the group phase measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct GroupResult {
    /// Members of the group (the creator included).
    pub(crate) members: usize,
    /// Measured messages sent.
    pub(crate) messages: usize,
    /// (message, receiving member) pairs expected.
    pub(crate) expected: usize,
    /// Pairs delivered by the end of the wait.
    pub(crate) delivered: usize,
    /// Pairs delivered more than once (must stay 0).
    pub(crate) duplicates: usize,
    /// Seconds from creating the group until every member knew every other.
    pub(crate) setup_secs: f64,
    /// Median delivery latency, ms.
    pub(crate) p50_ms: f64,
    /// 99th percentile delivery latency, ms.
    pub(crate) p99_ms: f64,
    /// Why the group could not be set up, if it could not.
    pub(crate) error: Option<String>,
}

/// Arrivals of numbered messages: (message number, receiver index) → (first arrival, count).
type Arrivals = Arc<Mutex<HashMap<(usize, usize), (Instant, usize)>>>;

fn number(text: &str) -> Option<usize> {
    text.strip_prefix("scale ")?.split(' ').next()?.parse().ok()
}

fn watch(node: &Node, index: usize, arrivals: &Arrivals) -> tokio::task::JoinHandle<()> {
    let arrivals = arrivals.clone();
    super::on_group_texts(node, move |text| {
        if let Some(i) = number(text) {
            lock(&arrivals)
                .entry((i, index))
                .or_insert_with(|| (Instant::now(), 0))
                .1 += 1;
        }
    })
}

/// Receivers of message `i` (of `n` members) that have not got it yet.
fn missing(arrivals: &Arrivals, i: usize, receivers: &[usize]) -> usize {
    let a = lock(arrivals);
    receivers
        .iter()
        .filter(|r| !a.contains_key(&(i, **r)))
        .count()
}

async fn wait_for(arrivals: &Arrivals, i: usize, receivers: &[usize], limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let left = missing(arrivals, i, receivers);
        if left == 0 || Instant::now() > deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls `check` every 100 ms until it holds, at most until `deadline`.
async fn until(
    what: &str,
    deadline: Instant,
    mut check: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    loop {
        if check() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One group of `size` random live nodes (protected from churn), `messages` measured messages.
/// The whole phase is bounded by `budget`.
pub(crate) async fn group(
    live: &Live,
    size: usize,
    messages: usize,
    budget: Duration,
    progress: impl Fn(&str, usize, usize),
) -> GroupResult {
    let mut rng = Rng::from_os();
    let chosen = live.protect_random(&mut rng, size);
    let nodes: Vec<Node> = chosen
        .iter()
        .filter_map(|(_, m)| m.handle.kith().cloned())
        .collect();
    let mut out = GroupResult {
        members: nodes.len(),
        ..GroupResult::default()
    };
    if nodes.len() < 2 {
        out.error = Some("fewer than two kith nodes to form a group".to_owned());
        return out;
    }
    let arrivals: Arrivals = Arc::default();
    let watchers: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| watch(n, i, &arrivals))
        .collect();
    let deadline = Instant::now() + budget;
    let run = async {
        let started = Instant::now();
        let id = setup_group(&nodes, &arrivals, deadline).await?;
        out.setup_secs = report::round_to(started.elapsed().as_secs_f64(), 1);
        let n = nodes.len();
        let senders = SENDERS.min(n);
        let mut sent_at = Vec::with_capacity(messages);
        for i in 0..messages {
            let s = i % senders;
            let receivers: Vec<usize> = (0..n).filter(|r| *r != s).collect();
            let sender = nodes.get(s).context("no sender")?;
            let at = Instant::now();
            sender
                .send_group_text(&id, &format!("scale {i} from member {s}"))
                .await
                .with_context(|| format!("sending message {i}"))?;
            sent_at.push((at, receivers.clone()));
            // Paced by delivery, but a slow member does not hold up the next message.
            wait_for(&arrivals, i, &receivers, PACE).await;
            if (i + 1) % 10 == 0 {
                progress("group", i + 1, messages);
            }
        }
        // Eventual delivery: what has not arrived yet may still come by gossip or catch-up.
        let last = Instant::now().max(deadline.min(Instant::now() + Duration::from_secs(90)));
        for (i, (_, receivers)) in sent_at.iter().enumerate() {
            wait_for(
                &arrivals,
                i,
                receivers,
                last.saturating_duration_since(Instant::now()),
            )
            .await;
        }
        anyhow::Ok(sent_at)
    }
    .await;
    for w in &watchers {
        w.abort();
    }
    match run {
        Ok(sent_at) => {
            let a = lock(&arrivals);
            let mut ms = Vec::new();
            for (i, (at, receivers)) in sent_at.iter().enumerate() {
                out.expected += receivers.len();
                for r in receivers {
                    if let Some((arrived, count)) = a.get(&(i, *r)) {
                        out.delivered += 1;
                        out.duplicates += count.saturating_sub(1);
                        ms.push(millis(arrived.saturating_duration_since(*at)));
                    }
                }
            }
            out.messages = sent_at.len();
            ms.sort_unstable();
            out.p50_ms = report::percentile(&ms, 50.0).map_or(0.0, |v| v as f64);
            out.p99_ms = report::percentile(&ms, 99.0).map_or(0.0, |v| v as f64);
        }
        Err(e) => out.error = Some(format!("{e:#}")),
    }
    out
}

/// Key bundles, the group, invitations, joins, member lists; then one warm-up message from each
/// sender (it carries the sender's key to everyone). Returns the group id.
async fn setup_group(
    nodes: &[Node],
    arrivals: &Arrivals,
    deadline: Instant,
) -> anyhow::Result<String> {
    // The scale's nodes publish no key bundle on their own (it is what makes joins cheap); the
    // invitations and keys travel over Olm, which needs them.
    let published = futures::future::join_all(nodes.iter().map(|n| async move {
        loop {
            if matches!(n.publish_key_bundle().await, Ok(true)) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }))
    .await;
    if published.iter().any(|ok| !ok) {
        bail!("a member's key bundle found no taker");
    }
    let admin = nodes.first().context("no members")?;
    let id = hex::encode(admin.create_group("scale").await?.id);
    for node in &nodes[1..] {
        loop {
            match admin
                .invite_to_group(&id, &node.peer_id().to_string())
                .await
            {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => {
                    return Err(anyhow::Error::from(e).context("inviting a member"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    for node in &nodes[1..] {
        until("an invitation", deadline, || {
            node.group_invitations()
                .is_ok_and(|all| all.iter().any(|g| hex::encode(g.id) == id))
        })
        .await?;
        node.join_group(&id).await?;
    }
    let size = nodes.len();
    for node in nodes {
        until("every member to know every other", deadline, || {
            node.group(&id).is_ok_and(|g| g.members.len() == size)
        })
        .await?;
    }
    for s in 0..SENDERS.min(size) {
        let i = usize::MAX - s;
        let sender = nodes.get(s).context("no sender")?;
        sender
            .send_group_text(&id, &format!("scale {i} warm-up"))
            .await?;
        let receivers: Vec<usize> = (0..size).filter(|r| *r != s).collect();
        let left = wait_for(
            arrivals,
            i,
            &receivers,
            deadline.saturating_duration_since(Instant::now()),
        )
        .await;
        if left > 0 {
            bail!("sender {s}'s warm-up message did not reach {left} members");
        }
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_numbers_come_back() {
        assert_eq!(number("scale 17 from member 2"), Some(17));
        assert_eq!(
            number(&format!("scale {} warm-up", usize::MAX)),
            Some(usize::MAX)
        );
        assert_eq!(number("hello"), None);
    }
}
