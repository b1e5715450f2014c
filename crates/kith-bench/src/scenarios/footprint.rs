//! `footprint.idle`: the resident memory of an idle personal node, as its own process.
//!
//! kith: the real `kith` binary (`kith run` on a fresh temporary home, TCP and QUIC on loopback,
//! mDNS off, a bootstrap file with no entries so nothing beyond loopback is ever dialed).
//! Baseline: this binary re-executed as `kith-bench __raw-node`, a bare libp2p node with the same
//! transports and identify, Kademlia, ping and gossipsub. Both start together, sit idle for the
//! wait, and `VmRSS` of each is read from `/proc/<pid>/status`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use indicatif::ProgressBar;

use crate::{
    machine,
    process::{self, ChildProcess},
    report::{Figures, Scenario},
};

const NAME: &str = "footprint.idle";
const UNIT: &str = "MB";
/// How long a process may take to print its ready line.
pub(crate) const READY_WAIT: Duration = Duration::from_secs(30);
/// How long a process may take to stop before it is killed.
const STOP_WAIT: Duration = Duration::from_secs(15);

/// Sizes of the scenario.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    /// Idle time before RSS is read.
    pub(crate) wait: Duration,
}

impl Params {
    /// Full-run (60 s) or `--quick` (3 s) defaults.
    pub(crate) fn new(quick: bool) -> Self {
        Self {
            wait: Duration::from_secs(if quick { 3 } else { 60 }),
        }
    }
}

/// Runs the scenario.
pub(crate) fn run(params: &Params, bar: &ProgressBar) -> Scenario {
    let kith = match kith_binary(NAME, UNIT) {
        Ok(kith) => kith,
        Err(unavailable) => return *unavailable,
    };
    match measure(&kith, params, bar) {
        Ok(scenario) => scenario,
        Err(e) => Scenario::unavailable(NAME, UNIT, format!("failed: {e:#}")),
    }
}

fn measure(kith: &Path, params: &Params, bar: &ProgressBar) -> anyhow::Result<Scenario> {
    let dir = tempfile::Builder::new()
        .prefix("kith-bench-footprint-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let home = dir.path().join("home");
    let bootstrap = dir.path().join("bootstrap.toml");
    std::fs::write(&bootstrap, "[network]\nid = \"bench\"\n")
        .context("cannot write the bootstrap file")?;

    let mut kith_cmd = Command::new(kith);
    kith_cmd
        .arg("run")
        .arg("--home")
        .arg(&home)
        .args(["--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .args(["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"])
        .arg("--bootstrap-file")
        .arg(&bootstrap)
        .arg("--json")
        .stderr(log_file(dir.path(), "kith.log"));
    let mut kith_child = ChildProcess::spawn(kith_cmd, "kith run")?;

    let exe = std::env::current_exe().context("cannot locate kith-bench itself")?;
    let mut raw_cmd = Command::new(exe);
    raw_cmd
        .arg("__raw-node")
        .stderr(log_file(dir.path(), "raw.log"));
    let mut raw_child = ChildProcess::spawn(raw_cmd, "the raw libp2p node")?;

    let ready = kith_child
        .expect_line(READY_WAIT)
        .and_then(|_| raw_child.expect_line(READY_WAIT));
    if let Err(e) = ready {
        let log = std::fs::read_to_string(dir.path().join("kith.log")).unwrap_or_default();
        let last = log.lines().last().unwrap_or("").to_owned();
        stop_kith(kith, &home, &mut kith_child);
        raw_child.close_stdin();
        raw_child.wait_or_kill(STOP_WAIT);
        return Err(e).context(format!("kith log: {last}"));
    }

    let start = Instant::now();
    while start.elapsed() < params.wait {
        let left = params.wait.saturating_sub(start.elapsed());
        bar.set_message(format!("{NAME}: idle, {} s left", left.as_secs()));
        std::thread::sleep(left.min(Duration::from_secs(1)));
    }
    let kith_rss = machine::rss_mb(kith_child.pid());
    let raw_rss = machine::rss_mb(raw_child.pid());

    bar.set_message(format!("{NAME}: stopping"));
    let kith_clean = stop_kith(kith, &home, &mut kith_child);
    raw_child.close_stdin();
    raw_child.wait_or_kill(STOP_WAIT);
    drop(dir);

    let mut notes = vec![format!(
        "VmRSS after {} s idle with no peers; kith: {} ({} build), `kith run` on TCP+QUIC loopback, mDNS off, local API up, empty bootstrap list",
        params.wait.as_secs(),
        kith.display(),
        binary_profile(kith)
    )];
    notes.push(
        "baseline: `kith-bench __raw-node`, bare libp2p with the same transports and identify + Kademlia + ping + gossipsub (the bench binary's own code pages count against it)"
            .to_owned(),
    );
    if !kith_clean {
        notes.push("kith did not stop within 15 s and was killed".to_owned());
    }
    Ok(Scenario::measured(
        NAME,
        UNIT,
        kith_rss.map(|mb| Figures::default().with("rss_mb", mb)),
        raw_rss.map(|mb| Figures::default().with("rss_mb", mb)),
        notes.join("; "),
    ))
}

/// `kith stop`, then wait; kill after [`STOP_WAIT`]. True when it stopped by itself.
pub(crate) fn stop_kith(kith: &Path, home: &Path, child: &mut ChildProcess) -> bool {
    let mut stop = Command::new(kith);
    stop.arg("stop").arg("--home").arg(home);
    process::run_bounded(stop, STOP_WAIT);
    child.wait_or_kill(STOP_WAIT)
}

pub(crate) fn log_file(dir: &Path, name: &str) -> Stdio {
    std::fs::File::create(dir.join(name)).map_or_else(|_| Stdio::null(), Stdio::from)
}

/// The `kith` binary for scenario `name` (figures in `unit`), or the scenario reported
/// unavailable with how to build it.
pub(crate) fn kith_binary(
    name: &'static str,
    unit: &'static str,
) -> Result<PathBuf, Box<Scenario>> {
    find_kith().ok_or_else(|| {
        Box::new(Scenario::unavailable(
            name,
            unit,
            "unavailable: the kith binary was not found next to kith-bench (target/release or target/debug); build it with `cargo build --release -p kith`",
        ))
    })
}

/// The `kith` binary beside this one: the same profile first, then the other.
pub(crate) fn find_kith() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let mut candidates = vec![dir.join("kith")];
    if let Some(target) = dir.parent() {
        candidates.push(target.join("release").join("kith"));
        candidates.push(target.join("debug").join("kith"));
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// `release` or `debug`, from the directory the binary sits in.
pub(crate) fn binary_profile(path: &Path) -> &'static str {
    match path.parent().and_then(Path::file_name) {
        Some(name) if name == "debug" => "debug",
        Some(name) if name == "release" => "release",
        _ => "unknown",
    }
}
