//! The catalogue of scenarios and the runner.
//!
//! Every scenario of issue #8 is listed here, in report order. Those whose kith feature does not
//! exist yet carry the reason in [`Spec::missing`] and are reported as unavailable, with no figure.
//!
//! - [`dht`]: `dht.closest`, Kademlia walks in an in-process network, kith vs raw swarms.
//! - [`footprint`]: `footprint.idle`, RSS of an idle `kith run` process vs a raw node process.
//! - [`scale`]: `scale`, the largest in-process network within a time budget, kith vs raw, and
//!   [`scale_live`]: names, a group and churn in that network once grown.
//! - [`relayed`]: `relay.latency`, `relay.throughput` (through a circuit relay vs direct) and
//!   `mailbox.throughput` (held at a relay for an offline recipient vs direct delivery).
//! - [`photo`]: `photo.process`, kith-photo's send path on a 12 MP JPEG vs the `image` crate's
//!   decode + encode alone.
//! - [`blob`]: `blob.throughput` (TCP), `blob.throughput.quic` (files between two nodes vs a raw
//!   libp2p-stream copy) and `blob.resume` (bytes re-sent after a cut vs a restart from zero).
//! - [`first`]: `dm.first`, the first message to a name never seen before in a 20-node network vs
//!   a raw Kademlia get + request-response round trip.
//! - [`cpu`]: `dm.cpu`, CPU time per message of two `kith run` processes vs two raw
//!   request-response processes.
//! - [`soak`]: `soak`, minutes of messages at a steady rate through the API of two `kith run`
//!   processes: exactly-once storage, latency and RSS over time.

pub(crate) mod blob;
pub(crate) mod cpu;
pub(crate) mod dht;
pub(crate) mod dm;
pub(crate) mod first;
pub(crate) mod footprint;
pub(crate) mod group;
pub(crate) mod history;
pub(crate) mod photo;
pub(crate) mod relay;
pub(crate) mod relayed;
pub(crate) mod resolve;
pub(crate) mod scale;
pub(crate) mod scale_live;
pub(crate) mod soak;

use indicatif::ProgressBar;

use crate::{cluster::Rng, report::Scenario};

/// Runs scenario `name` (figures in `unit`) on a multi-threaded runtime of its own, dropped
/// afterwards with every leftover task; `run` gets a random seed. Without a runtime the scenario
/// is reported unavailable.
pub(crate) fn on_runtime(
    name: &'static str,
    unit: &'static str,
    run: impl AsyncFnOnce(Rng) -> Scenario,
) -> Scenario {
    match dm::runtime() {
        Ok(runtime) => runtime.block_on(run(Rng::from_os())),
        Err(e) => Scenario::unavailable(name, unit, format!("{e:#}")),
    }
}

/// Hands `on_text` the text of every group message `node` receives, on a task of its own that
/// ends when the node's event stream closes (a subscriber that lags loses events, as any does).
pub(crate) fn on_group_texts(
    node: &kith_service::Node,
    mut on_text: impl FnMut(&str) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let mut events = node.subscribe();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(kith_service::MessageEvent::GroupReceived { message, .. }) => {
                    on_text(&message.text);
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    })
}

/// Scenario groups, one per subcommand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Group {
    /// Direct messages.
    Dm,
    /// Name resolution.
    Resolve,
    /// Group chat (the `group` subcommand).
    Chat,
    /// Message history in the store.
    History,
    /// Memory of one process.
    Footprint,
    /// Many nodes in one process.
    Scale,
    /// Kademlia.
    Dht,
    /// Direct messages through a circuit relay, and relay mailboxes (the `relay` subcommand).
    Relay,
    /// Photos prepared for sending.
    Photo,
    /// Files between two nodes.
    Blob,
    /// Minutes of messages through the API of two `kith run` processes.
    Soak,
}

impl Group {
    /// Every group, in report order.
    pub(crate) const ALL: [Group; 11] = [
        Group::Dm,
        Group::Relay,
        Group::Resolve,
        Group::Chat,
        Group::History,
        Group::Footprint,
        Group::Scale,
        Group::Dht,
        Group::Photo,
        Group::Blob,
        Group::Soak,
    ];
}

/// One scenario of the catalogue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spec {
    /// Stable name used in the JSON.
    pub(crate) name: &'static str,
    /// Its group (subcommand).
    pub(crate) group: Group,
    /// Unit of the headline figures.
    pub(crate) unit: &'static str,
    /// What kith is measured doing.
    pub(crate) measures: &'static str,
    /// The baseline it is compared with.
    pub(crate) baseline: &'static str,
    /// Why it cannot run yet; `None` when implemented.
    pub(crate) missing: Option<&'static str>,
}

/// Every scenario, in report order.
pub(crate) const CATALOGUE: &[Spec] = &[
    Spec {
        name: "dm.latency",
        group: Group::Dm,
        unit: "us",
        measures: "sequential direct message send until stored at the recipient, p50/p90/p99",
        baseline: "raw libp2p request-response round trip over TCP+Noise+Yamux",
        missing: None,
    },
    Spec {
        name: "dm.throughput",
        group: Group::Dm,
        unit: "msg/s",
        measures: "sustained durable, encrypted messages per second between two nodes",
        baseline: "raw libp2p request-response with 64 requests in flight",
        missing: None,
    },
    Spec {
        name: "dm.latency.quic",
        group: Group::Dm,
        unit: "us",
        measures: "dm.latency over QUIC",
        baseline: "raw libp2p request-response round trip over QUIC",
        missing: None,
    },
    Spec {
        name: "dm.first",
        group: Group::Dm,
        unit: "ms",
        measures: "first message to a name never seen before (resolve + dial + key bundle + encrypt + stored at the recipient) in a 20-node in-process network (quick: 6), p50/p99",
        baseline: "raw Kademlia get_record + one request-response round trip to the peer it names, 20 bare swarms",
        missing: None,
    },
    Spec {
        name: "dm.cpu",
        group: Group::Dm,
        unit: "us",
        measures: "CPU microseconds per delivered message of the sending and the receiving `kith run` process (sent through the API, 16 at a time)",
        baseline: "two raw request-response processes, same count, size and concurrency",
        missing: None,
    },
    Spec {
        name: "relay.latency",
        group: Group::Relay,
        unit: "us",
        measures: "sequential direct message send until stored at the recipient, the two nodes reaching each other only through a circuit relay v2 at a kith relay, p50/p90/p99",
        baseline: "the same kind of kith pair connected directly (TCP), same run, alternating messages",
        missing: None,
    },
    Spec {
        name: "relay.throughput",
        group: Group::Relay,
        unit: "msg/s",
        measures: "durable, encrypted messages per second with 64 concurrent senders, through a circuit relay v2 at a kith relay",
        baseline: "the same kind of kith pair connected directly (TCP), same run",
        missing: None,
    },
    Spec {
        name: "mailbox.throughput",
        group: Group::Relay,
        unit: "msg/s",
        measures: "messages for an offline recipient deposited at its mailbox relay (deposit_rate), then fetched and stored when it returns (fetch_rate), and end to end (rate)",
        baseline: "the same two nodes delivering the same number of messages directly, same run",
        missing: None,
    },
    Spec {
        name: "resolve.cold",
        group: Group::Resolve,
        unit: "us",
        measures: "name resolution in a 50-node in-process DHT, nothing cached",
        baseline: "raw Kademlia get_record",
        missing: None,
    },
    Spec {
        name: "resolve.warm",
        group: Group::Resolve,
        unit: "us",
        measures: "resolve_name of a name resolved (and pinned) before: answered from the pin and the last lookup, no network call",
        baseline: "raw Kademlia get_record (what the answer no longer waits for)",
        missing: None,
    },
    Spec {
        name: "resolve.sybil",
        group: Group::Resolve,
        unit: "fraction",
        measures: "fraction of first resolutions that get the honest owner or a conflict, in a 50-node network where 20% are attacker nodes with ids ground next to the name's key",
        baseline: "the single-key rule before replica keys (stop at 4 agreeing holders), same nodes",
        missing: None,
    },
    Spec {
        name: "resolve.sybil.costly",
        group: Group::Resolve,
        unit: "fraction",
        measures: "resolve.sybil in a network with a peer-id difficulty (8): honest ids worked, the attacker's ground ids not, but for one worked referrer next to the key naming the others",
        baseline: "the single-key rule before replica keys (stop at 4 agreeing holders), same nodes",
        missing: None,
    },
    Spec {
        name: "group.latency.10",
        group: Group::Chat,
        unit: "us",
        measures: "group message delivery latency with 10 members (quick: 4), per receiver, p50/p90/p99",
        baseline: "raw gossipsub, same topology and mesh settings",
        missing: None,
    },
    Spec {
        name: "group.latency.50",
        group: Group::Chat,
        unit: "us",
        measures: "group message delivery latency with 50 members (quick: 6), per receiver, p50/p90/p99",
        baseline: "raw gossipsub, same topology and mesh settings",
        missing: None,
    },
    Spec {
        name: "group.catchup",
        group: Group::Chat,
        unit: "msg/s",
        measures: "messages per second a member that was offline fetches over /kith/sync (2,000; quick: 100)",
        baseline: "none (raw gossipsub has no catch-up)",
        missing: None,
    },
    Spec {
        name: "history.open",
        group: Group::History,
        unit: "ms",
        measures: "opening a store holding 1M messages (quick: 5,000)",
        baseline: "raw sled with the same keys",
        missing: None,
    },
    Spec {
        name: "history.page",
        group: Group::History,
        unit: "us",
        measures: "reading the last 50 messages of a conversation, p50/p99",
        baseline: "raw sled range scan with the same keys",
        missing: None,
    },
    Spec {
        name: "footprint.idle",
        group: Group::Footprint,
        unit: "MB",
        measures: "RSS of an idle `kith run` process (TCP+QUIC on loopback, no peers) after the wait",
        baseline: "RSS of a raw libp2p node process (TCP+QUIC, identify, Kademlia, ping, gossipsub)",
        missing: None,
    },
    Spec {
        name: "footprint.relay",
        group: Group::Footprint,
        unit: "MB",
        measures: "RSS of a relay holding 10,000 mailboxes",
        baseline: "none planned",
        missing: None,
    },
    Spec {
        name: "scale",
        group: Group::Scale,
        unit: "nodes",
        measures: "largest in-process network within a time budget, its RSS and connections per node, the fraction of get_closest_peers walks that succeed, name resolutions (success, p50/p99) and a 20-member group's delivery (rate, p99), optionally under churn",
        baseline: "the same number of raw libp2p swarms (identify + Kademlia), same topology, walks, churn, and raw records for names (no groups)",
        missing: None,
    },
    Spec {
        name: "dht.closest",
        group: Group::Dht,
        unit: "us",
        measures: "get_closest_peers walk latency in an in-process network, p50/p90/p99",
        baseline: "raw libp2p swarms (identify + Kademlia Mode::Server, MemoryStore), same protocol name and topology",
        missing: None,
    },
    Spec {
        name: "photo.process",
        group: Group::Photo,
        unit: "ms",
        measures: "kith_photo::process of a 12 MP phone-like JPEG (EXIF orientation + GPS): decode, orient, vivid filter, re-encode without metadata, thumbnail, ThumbHash, p50/p99",
        baseline: "the image crate alone: decode + JPEG encode of the same input at the same quality",
        missing: None,
    },
    Spec {
        name: "blob.throughput",
        group: Group::Blob,
        unit: "MB/s",
        measures: "a file (100 MB; quick: 8 MB) from one node to another over /kith/blob/1.0.0 on TCP, from the offer recorded until every range is verified and recorded",
        baseline: "a raw libp2p-stream stream copying the same bytes over TCP+Noise+Yamux",
        missing: None,
    },
    Spec {
        name: "blob.throughput.quic",
        group: Group::Blob,
        unit: "MB/s",
        measures: "blob.throughput over QUIC",
        baseline: "a raw libp2p-stream stream copying the same bytes over QUIC",
        missing: None,
    },
    Spec {
        name: "blob.resume",
        group: Group::Blob,
        unit: "bytes",
        measures: "bytes re-sent when the recipient stops at half of a file (100 MB; quick: 8 MB) and starts again",
        baseline: "a transfer without resume: everything the recipient had at the cut, sent again",
        missing: None,
    },
    Spec {
        name: "soak",
        group: Group::Soak,
        unit: "MB",
        measures: "20 minutes at 1,000 msg/s through the API of two `kith run` processes (quick: 5 s at 50): every accepted message stored exactly once, p99 answer time, RSS over time",
        baseline: "none (raw libp2p stores nothing)",
        missing: None,
    },
];

/// Everything the runnable scenarios need to know.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// `dht.closest`.
    pub(crate) dht: dht::Params,
    /// `dm.*`.
    pub(crate) dm: dm::Params,
    /// `history.*`.
    pub(crate) history: history::Params,
    /// `resolve.*`.
    pub(crate) resolve: resolve::Params,
    /// `group.*`.
    pub(crate) group: group::Params,
    /// `relay.*`, `mailbox.throughput`.
    pub(crate) relayed: relayed::Params,
    /// `footprint.relay`: mailboxes held by the relay.
    pub(crate) relay_mailboxes: usize,
    /// `footprint.idle`.
    pub(crate) footprint: footprint::Params,
    /// `scale`.
    pub(crate) scale: scale::Params,
    /// `photo.process`.
    pub(crate) photo: photo::Params,
    /// `blob.*`.
    pub(crate) blob: blob::Params,
    /// `dm.first`.
    pub(crate) first: first::Params,
    /// `dm.cpu`.
    pub(crate) cpu: cpu::Params,
    /// `soak`.
    pub(crate) soak: soak::Params,
    /// Only these scenarios (by name) run; empty: every scenario of the chosen groups.
    pub(crate) only: Vec<String>,
}

impl Settings {
    /// Full-run or `--quick` defaults.
    pub(crate) fn new(quick: bool) -> Self {
        Self {
            dht: dht::Params::new(quick),
            dm: dm::Params::new(quick),
            history: history::Params::new(quick),
            resolve: resolve::Params::new(quick),
            relayed: relayed::Params::new(quick),
            group: group::Params::new(quick),
            relay_mailboxes: if quick { 1_000 } else { 10_000 },
            footprint: footprint::Params::new(quick),
            scale: scale::Params::new(quick),
            photo: photo::Params::new(quick),
            blob: blob::Params::new(quick),
            first: first::Params::new(quick),
            cpu: cpu::Params::new(quick),
            soak: soak::Params::new(quick),
            only: Vec::new(),
        }
    }
}

/// Runs every scenario of `groups`, in catalogue order, ticking `bar` once per scenario.
pub(crate) fn run(groups: &[Group], settings: &Settings, bar: &ProgressBar) -> Vec<Scenario> {
    let specs: Vec<&Spec> = CATALOGUE
        .iter()
        .filter(|s| groups.contains(&s.group))
        .filter(|s| settings.only.is_empty() || settings.only.iter().any(|o| o == s.name))
        .collect();
    bar.set_length(specs.len() as u64);
    let mut out = Vec::new();
    // history.open and history.page share one fill.
    let mut history: Option<Vec<Scenario>> = None;
    // resolve.cold and resolve.warm share one network of each kind.
    let mut resolve: Option<Vec<Scenario>> = None;
    // relay.latency and relay.throughput share one relayed and one direct trio.
    let mut relay_dm: Option<Vec<Scenario>> = None;
    for spec in specs {
        bar.set_message(spec.name);
        let scenario = match (spec.missing, spec.name) {
            (Some(missing), _) => Scenario::unavailable(
                spec.name,
                spec.unit,
                format!(
                    "unavailable: {missing}; will compare with {}",
                    spec.baseline
                ),
            ),
            (None, "dht.closest") => dht::run(&settings.dht, bar),
            (None, "dm.latency") => dm::run_latency(&settings.dm, false, bar),
            (None, "dm.latency.quic") => dm::run_latency(&settings.dm, true, bar),
            (None, "dm.throughput") => dm::run_throughput(&settings.dm, bar),
            (None, "dm.first") => first::run(&settings.first, bar),
            (None, "dm.cpu") => cpu::run(&settings.cpu, bar),
            (None, "soak") => soak::run(&settings.soak, bar),
            (None, "resolve.sybil") => resolve::run_sybil(&settings.resolve, bar),
            (None, "resolve.sybil.costly") => resolve::run_sybil_costly(&settings.resolve, bar),
            (None, name @ ("resolve.cold" | "resolve.warm")) => {
                let all = resolve.get_or_insert_with(|| resolve::run(&settings.resolve, bar));
                match all.iter().position(|s| s.name == name) {
                    Some(i) => all.remove(i),
                    None => Scenario::unavailable(
                        spec.name,
                        spec.unit,
                        "resolve run produced no figure",
                    ),
                }
            }
            (None, name @ ("relay.latency" | "relay.throughput")) => {
                let all =
                    relay_dm.get_or_insert_with(|| relayed::run_relay(&settings.relayed, bar));
                match all.iter().position(|s| s.name == name) {
                    Some(i) => all.remove(i),
                    None => {
                        Scenario::unavailable(spec.name, spec.unit, "relay run produced no figure")
                    }
                }
            }
            (None, "group.latency.10") => {
                group::run_latency(spec.name, settings.group.small, &settings.group, bar)
            }
            (None, "group.latency.50") => {
                group::run_latency(spec.name, settings.group.large, &settings.group, bar)
            }
            (None, "group.catchup") => group::run_catchup(&settings.group, bar),
            (None, "mailbox.throughput") => relayed::run_mailbox(&settings.relayed, bar),
            (None, name @ ("history.open" | "history.page")) => {
                let all = history.get_or_insert_with(|| history::run(&settings.history, bar));
                match all.iter().position(|s| s.name == name) {
                    Some(i) => all.remove(i),
                    None => Scenario::unavailable(
                        spec.name,
                        spec.unit,
                        "history run produced no figure",
                    ),
                }
            }
            (None, "footprint.idle") => footprint::run(&settings.footprint, bar),
            (None, "footprint.relay") => {
                relay::run(&settings.footprint, settings.relay_mailboxes, bar)
            }
            (None, "scale") => scale::run(&settings.scale, bar),
            (None, "photo.process") => photo::run(&settings.photo, bar),
            (None, "blob.throughput") => blob::run_throughput(&settings.blob, false, bar),
            (None, "blob.throughput.quic") => blob::run_throughput(&settings.blob, true, bar),
            (None, "blob.resume") => blob::run_resume(&settings.blob, bar),
            (None, other) => Scenario::unavailable(
                spec.name,
                spec.unit,
                format!("no runner for {other} in this build"),
            ),
        };
        out.push(scenario);
        bar.inc(1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_keeps_the_contract_names() {
        let names: Vec<&str> = CATALOGUE.iter().map(|s| s.name).collect();
        for required in [
            "dm.latency",
            "dm.throughput",
            "dm.latency.quic",
            "resolve.cold",
            "resolve.warm",
            "resolve.sybil",
            "group.latency.10",
            "group.latency.50",
            "history.open",
            "history.page",
            "footprint.idle",
            "footprint.relay",
            "relay.latency",
            "relay.throughput",
            "mailbox.throughput",
            "scale",
            "photo.process",
            "blob.throughput",
            "blob.throughput.quic",
            "blob.resume",
            "dm.first",
            "dm.cpu",
            "soak",
        ] {
            assert!(names.contains(&required), "{required} missing");
        }
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "duplicate scenario names");
    }

    #[test]
    fn every_group_has_a_scenario() {
        for group in Group::ALL {
            assert!(CATALOGUE.iter().any(|s| s.group == group), "{group:?}");
        }
    }

    #[test]
    fn every_scenario_has_a_runner() {
        // Groups were the last feature missing; nothing is listed unavailable by design now.
        assert!(CATALOGUE.iter().all(|s| s.missing.is_none()));
    }
}
