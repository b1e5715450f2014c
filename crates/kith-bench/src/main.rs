//! `kith-bench`: measures kith beside the raw libp2p it is built on, in the same run on the same
//! machine, and prints one JSON document (`--json`, stdout) and a table (stderr).
//!
//! - `report`: the JSON contract, the table, percentiles and ratios.
//! - `machine`: cores, CPU model, OS, profile, date; RSS and descriptor counts from `/proc`.
//! - `scenarios`: the catalogue (every scenario of issue #8) and one module per measured group.
//! - `cluster`: in-process networks of kith nodes or raw swarms, started the same way.
//! - `baseline`: the raw libp2p node (in-process, or as the hidden `__raw-node` process).
//! - `process`: child processes that are always reaped.
//!
//! `BENCHMARKS.md` at the repository root says how to run it and keeps the latest figures.

mod baseline;
mod cluster;
mod machine;
mod process;
mod report;
mod scenarios;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::{
    cluster::Kind,
    machine::Machine,
    report::Report,
    scenarios::{CATALOGUE, Group, Settings},
};

/// Measures kith against raw libp2p, side by side, in one run. Loopback only.
#[derive(Debug, Parser)]
#[command(name = "kith-bench", version, about)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Global {
    /// Smoke mode for CI: tiny counts, short waits; figures are not meaningful.
    #[arg(long, global = true)]
    quick: bool,
    /// Print exactly one JSON document on stdout (the table still goes to stderr).
    #[arg(long, global = true)]
    json: bool,
    /// Run only this scenario of the chosen command (repeatable), e.g. `dm --only dm.first`.
    #[arg(long, global = true, value_name = "SCENARIO")]
    only: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List every scenario with its unit, what it measures, its baseline and whether it runs.
    List,
    /// Run every scenario.
    All,
    /// Direct messages: latency, throughput, the first message to a new name, CPU per message.
    Dm(DmArgs),
    /// Direct messages through a circuit relay vs direct, and relay mailbox deposit + fetch.
    Relay(RelayArgs),
    /// Name resolution: cold (a DHT lookup), warm (a pinned name, no network call) and under a
    /// Sybil attack.
    Resolve(NodesArg),
    /// Group delivery latency (10 and 50 members) beside raw gossipsub, and catch-up throughput.
    Group(GroupArgs),
    /// Message history: open (after a clean stop and after a crash) and page times at 1,000,000
    /// messages, beside raw sled.
    History(HistoryArgs),
    /// RSS of an idle `kith run` process beside a raw libp2p node process.
    Footprint(FootprintArgs),
    /// The largest in-process network within a time budget, kith beside raw swarms.
    Scale(ScaleArgs),
    /// Kademlia `get_closest_peers` walk latency, kith beside raw swarms.
    Dht(DhtArgs),
    /// Preparing a 12 MP photo for sending, kith-photo beside the image crate's decode + encode.
    Photo(PhotoArgs),
    /// Files between two nodes beside a raw libp2p stream (TCP, QUIC), and bytes re-sent after
    /// a cut.
    Blob(BlobArgs),
    /// Messages at a steady rate for minutes through the API of two `kith run` processes:
    /// exactly-once storage, latency and RSS over time.
    Soak(SoakArgs),
    /// Internal: a raw libp2p node process for the footprint baseline.
    #[command(name = "__raw-node", hide = true)]
    RawNode,
    /// Internal: a raw request-response node process for `dm.cpu`'s baseline.
    #[command(name = "__raw-rr", hide = true)]
    RawRr(RawRrArgs),
    /// Internal: grows one network for `scale` and prints JSON lines.
    #[command(name = "__scale-worker", hide = true)]
    ScaleWorker(WorkerCli),
}

#[derive(Debug, Args)]
struct DmArgs {
    /// Nodes taking part.
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// Messages to send.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
}

#[derive(Debug, Args)]
struct RelayArgs {
    /// Sequential messages per path for relay.latency (default 1000, quick 30).
    #[arg(long)]
    latency_messages: Option<usize>,
    /// Messages per path for relay.throughput (default 20000, quick 200).
    #[arg(long)]
    messages: Option<usize>,
    /// Messages held and fetched for mailbox.throughput (default 1000, quick 50).
    #[arg(long)]
    mailbox_messages: Option<usize>,
}

#[derive(Debug, Args)]
struct NodesArg {
    /// Nodes in the network.
    #[arg(long, default_value_t = 50)]
    nodes: usize,
}

#[derive(Debug, Args)]
struct GroupArgs {
    /// Measured messages per latency scenario.
    #[arg(long)]
    messages: Option<usize>,
    /// Messages the offline member misses in `group.catchup`.
    #[arg(long)]
    catchup: Option<usize>,
}

#[derive(Debug, Args)]
struct HistoryArgs {
    /// Messages in the store.
    #[arg(long, default_value_t = 1_000_000)]
    messages: usize,
}

#[derive(Debug, Args)]
struct FootprintArgs {
    /// Idle seconds before RSS is read (default 60, quick 3).
    #[arg(long)]
    wait_secs: Option<u64>,
}

#[derive(Debug, Args)]
struct ScaleArgs {
    /// Target network size (default 1000, quick 20).
    #[arg(long)]
    nodes: Option<usize>,
    /// Upper bound on growing each network, seconds (default 240, quick 20).
    #[arg(long)]
    budget_secs: Option<u64>,
    /// Walks per network (default 200, quick 20).
    #[arg(long)]
    walks: Option<usize>,
    /// Percent of the nodes that leave, and as many fresh ones that join, per minute while names
    /// are resolved and group messages sent (default 0: no churn).
    #[arg(long)]
    churn: Option<f64>,
    /// What every node, kith and raw, listens on and dials: `tcp` or `quic` (default tcp).
    #[arg(long)]
    transport: Option<String>,
    /// Seconds between the first connection count and the one at rest (default 90, quick 0).
    #[arg(long)]
    rest_secs: Option<u64>,
}

#[derive(Debug, Args)]
struct DhtArgs {
    /// Nodes per network (default 50, quick 8).
    #[arg(long)]
    nodes: Option<usize>,
    /// Timed walks per network (default 200, quick 20).
    #[arg(long)]
    queries: Option<usize>,
}

#[derive(Debug, Args)]
struct PhotoArgs {
    /// Timed runs of each side (default 20, quick 3).
    #[arg(long)]
    iterations: Option<usize>,
}

#[derive(Debug, Args)]
struct BlobArgs {
    /// Megabytes per file (default 100, quick 8).
    #[arg(long)]
    megabytes: Option<usize>,
}

#[derive(Debug, Args)]
struct SoakArgs {
    /// Minutes of sending (default 20, quick 5 s).
    #[arg(long)]
    minutes: Option<f64>,
    /// Messages per second asked for (default 1000, quick 50).
    #[arg(long)]
    rate: Option<f64>,
    /// Concurrent API clients (default 64, quick 8).
    #[arg(long)]
    clients: Option<usize>,
}

#[derive(Debug, Args)]
struct RawRrArgs {
    /// The node to send to (ending in `/p2p/<id>`); without it, only serve.
    #[arg(long)]
    connect: Option<libp2p::Multiaddr>,
    /// Request size in bytes.
    #[arg(long, default_value_t = scenarios::dm::PAYLOAD)]
    size: usize,
}

#[derive(Debug, Args)]
struct WorkerCli {
    #[arg(long)]
    kind: String,
    /// `scale::Params` as JSON.
    #[arg(long)]
    params: String,
    #[arg(long)]
    dir: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The in-process nodes log nothing unless asked: a thousand nodes' logs would cost more CPU
    // than the scenario measures. `KITH_BENCH_LOG=kith_net=debug` (an env-filter) prints them.
    if let Ok(filter) = std::env::var("KITH_BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let mut settings = Settings::new(cli.global.quick);
    settings.only = cli.global.only.clone();
    if let Some(unknown) = settings
        .only
        .iter()
        .find(|o| !CATALOGUE.iter().any(|s| s.name == o.as_str()))
    {
        anyhow::bail!("unknown scenario {unknown}; `kith-bench list` names them all");
    }
    let groups: Vec<Group> = match cli.command {
        Command::List => return list(cli.global.json),
        Command::RawNode => return baseline::run_process(),
        Command::RawRr(args) => return baseline::run_rr_process(args.connect, args.size),
        Command::ScaleWorker(args) => return scale_worker(args),
        Command::All => Group::ALL.to_vec(),
        // Their flags are accepted now so scripts keep working once the features land.
        Command::Dm(DmArgs { .. }) => vec![Group::Dm],
        Command::Relay(args) => {
            if let Some(n) = args.latency_messages {
                settings.relayed.latency_messages = n.max(1);
            }
            if let Some(n) = args.messages {
                settings.relayed.throughput_messages = n.max(1);
            }
            if let Some(n) = args.mailbox_messages {
                settings.relayed.mailbox_messages = n.max(1);
            }
            vec![Group::Relay]
        }
        Command::Resolve(NodesArg { .. }) => vec![Group::Resolve],
        Command::Group(args) => {
            if let Some(n) = args.messages {
                settings.group.messages = n.max(1);
            }
            if let Some(n) = args.catchup {
                settings.group.catchup = n.max(1);
            }
            vec![Group::Chat]
        }
        Command::History(HistoryArgs { .. }) => vec![Group::History],
        Command::Footprint(args) => {
            if let Some(secs) = args.wait_secs {
                settings.footprint.wait = Duration::from_secs(secs);
            }
            vec![Group::Footprint]
        }
        Command::Scale(args) => {
            if let Some(nodes) = args.nodes {
                settings.scale.nodes = nodes.max(1);
            }
            if let Some(secs) = args.budget_secs {
                settings.scale.budget = Duration::from_secs(secs);
            }
            if let Some(walks) = args.walks {
                settings.scale.walks = walks;
            }
            if let Some(pct) = args.churn {
                if !(0.0..=100.0).contains(&pct) {
                    anyhow::bail!("--churn is a percentage of the nodes per minute, 0 to 100");
                }
                settings.scale.churn_pct = pct;
            }
            if let Some(transport) = &args.transport {
                settings.scale.transport = cluster::Transport::parse(transport)?;
            }
            if let Some(secs) = args.rest_secs {
                settings.scale.rest = Duration::from_secs(secs);
            }
            vec![Group::Scale]
        }
        Command::Dht(args) => {
            if let Some(nodes) = args.nodes {
                settings.dht.nodes = nodes.max(2);
            }
            if let Some(queries) = args.queries {
                settings.dht.queries = queries;
            }
            vec![Group::Dht]
        }
        Command::Photo(args) => {
            if let Some(n) = args.iterations {
                settings.photo.iterations = n.max(1);
            }
            vec![Group::Photo]
        }
        Command::Blob(args) => {
            if let Some(mb) = args.megabytes {
                settings.blob.bytes = mb.max(1) * 1_000_000;
                settings.blob.resume_bytes = mb.max(1) * 1_000_000;
            }
            vec![Group::Blob]
        }
        Command::Soak(args) => {
            if let Some(minutes) = args.minutes {
                settings.soak.duration = Duration::from_secs_f64((minutes * 60.0).max(1.0));
            }
            if let Some(rate) = args.rate {
                settings.soak.rate = rate.max(0.1);
            }
            if let Some(clients) = args.clients {
                settings.soak.clients = clients.max(1);
            }
            vec![Group::Soak]
        }
    };
    // In-process networks need many sockets; the default soft limit is often 1024.
    let _ = rlimit::increase_nofile_limit(u64::MAX);

    let date = machine::now_rfc3339();
    let bar = progress_bar();
    let scenarios = scenarios::run(&groups, &settings, &bar);
    bar.finish_and_clear();
    let report = Report {
        machine: Machine::detect(),
        profile: machine::profile(),
        date,
        quick: cli.global.quick,
        scenarios,
    };
    eprint!("{}", report.table());
    if cli.global.json {
        println!("{}", report.to_json().context("cannot encode the report")?);
    }
    Ok(())
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:24} {pos}/{len} {msg}")
    {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn list(json: bool) -> anyhow::Result<()> {
    if json {
        let entries: Vec<serde_json::Value> = CATALOGUE
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name,
                    "unit": s.unit,
                    "measures": s.measures,
                    "baseline": s.baseline,
                    "available": s.missing.is_none(),
                    "notes": s.missing.unwrap_or(""),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(entries));
        return Ok(());
    }
    let width = CATALOGUE.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for s in CATALOGUE {
        let state = s
            .missing
            .map_or("runs".to_owned(), |m| format!("unavailable: {m}"));
        println!("{:<width$}  {:<5}  {}", s.name, s.unit, s.measures);
        println!("{:<width$}  {:<5}  baseline: {}", "", "", s.baseline);
        println!("{:<width$}  {:<5}  {state}", "", "");
    }
    Ok(())
}

fn scale_worker(args: WorkerCli) -> anyhow::Result<()> {
    let kind = match args.kind.as_str() {
        "kith" => Kind::Kith,
        "raw" => Kind::Raw,
        other => anyhow::bail!("unknown --kind {other}; expected kith or raw"),
    };
    let params = serde_json::from_str(&args.params).context("--params is not scale's JSON")?;
    scenarios::scale::worker(scenarios::scale::WorkerArgs {
        kind,
        params,
        dir: args.dir,
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = Cli::try_parse_from(["kith-bench", "all", "--quick", "--json"]).unwrap();
        assert!(cli.global.quick && cli.global.json);
        let cli = Cli::try_parse_from([
            "kith-bench",
            "--json",
            "dm",
            "--nodes",
            "2",
            "--messages",
            "5",
        ])
        .unwrap();
        assert!(cli.global.json);
        assert!(matches!(
            cli.command,
            Command::Dm(DmArgs {
                nodes: 2,
                messages: 5
            })
        ));
        let cli = Cli::try_parse_from(["kith-bench", "relay", "--mailbox-messages", "64"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Relay(RelayArgs {
                mailbox_messages: Some(64),
                ..
            })
        ));
        let cli = Cli::try_parse_from(["kith-bench", "photo", "--iterations", "5"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Photo(PhotoArgs {
                iterations: Some(5)
            })
        ));
        let cli = Cli::try_parse_from(["kith-bench", "soak", "--minutes", "20", "--rate", "1000"])
            .unwrap();
        assert!(matches!(
            cli.command,
            Command::Soak(SoakArgs {
                minutes: Some(20.0),
                rate: Some(1000.0),
                clients: None
            })
        ));
        let cli = Cli::try_parse_from(["kith-bench", "dm", "--only", "dm.first"]).unwrap();
        assert_eq!(cli.global.only, ["dm.first"]);
        let cli = Cli::try_parse_from(["kith-bench", "scale", "--nodes", "1000", "--churn", "10"])
            .unwrap();
        assert!(matches!(
            cli.command,
            Command::Scale(ScaleArgs {
                nodes: Some(1000),
                churn: Some(10.0),
                transport: None,
                ..
            })
        ));
        let cli = Cli::try_parse_from(["kith-bench", "scale", "--rest-secs", "90"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Scale(ScaleArgs {
                rest_secs: Some(90),
                ..
            })
        ));
        let cli = Cli::try_parse_from(["kith-bench", "scale", "--transport", "quic"]).unwrap();
        let Command::Scale(ScaleArgs {
            transport: Some(transport),
            ..
        }) = cli.command
        else {
            panic!("--transport was not parsed");
        };
        assert_eq!(
            cluster::Transport::parse(&transport).unwrap(),
            cluster::Transport::Quic
        );
        assert!(cluster::Transport::parse("udp").is_err());
    }
}
