//! `footprint.relay`: RSS of a community relay (`kith run --relay`) whose store holds 10,000
//! registered mailboxes with one encrypted envelope each (quick: 1,000).
//!
//! The mailboxes are written into the relay's store through `kith-store` before the relay starts,
//! exactly as deposits would leave them, so the figure is the relay's memory with that much mail
//! on disk, after the same idle wait as `footprint.idle`. There is no baseline: no other process
//! holds kith mailboxes.

use std::{process::Command, time::Instant};

use anyhow::Context as _;
use indicatif::ProgressBar;
use kith_store::{Quota, Store, StoreConfig};

use super::footprint::{self, READY_WAIT};
use crate::{
    machine,
    process::ChildProcess,
    report::{Figures, Scenario},
};

const NAME: &str = "footprint.relay";
const UNIT: &str = "MB";
/// Size of each held envelope: a short chat message after encryption.
const ENVELOPE: usize = 340;

/// Runs the scenario with `mailboxes` recipients.
pub(crate) fn run(params: &footprint::Params, mailboxes: usize, bar: &ProgressBar) -> Scenario {
    let Some(kith) = footprint::find_kith() else {
        return Scenario::unavailable(
            NAME,
            UNIT,
            "the kith binary is not built next to kith-bench; run `cargo build --release -p kith` first",
        );
    };
    match measure(&kith, params, mailboxes, bar) {
        Ok(s) => s,
        Err(e) => Scenario::unavailable(NAME, UNIT, format!("failed: {e:#}")),
    }
}

fn measure(
    kith: &std::path::Path,
    params: &footprint::Params,
    mailboxes: usize,
    bar: &ProgressBar,
) -> anyhow::Result<Scenario> {
    let dir = tempfile::Builder::new()
        .prefix("kith-bench-relay-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let home = dir.path().join("relay");
    std::fs::create_dir_all(&home)?;
    let bootstrap = dir.path().join("bootstrap.toml");
    std::fs::write(&bootstrap, "[network]\nid = \"bench\"\n")?;

    bar.set_message(format!("{NAME}: filling {mailboxes} mailboxes"));
    let filled = Instant::now();
    {
        let store = Store::open(home.join("db"), &StoreConfig::default())?;
        let boxes = store.mailboxes();
        let quota = Quota {
            max_items: 1000,
            max_bytes: 64 * 1024 * 1024,
        };
        let envelope = vec![0x5au8; ENVELOPE];
        for i in 0..mailboxes {
            let recipient = libp2p::PeerId::random().to_bytes();
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            boxes.register(&recipient, 1)?;
            boxes.deposit(&recipient, id, b"bench-sender", &envelope, 1, quota)?;
        }
        store.flush_blocking()?;
    }
    let fill_secs = filled.elapsed().as_secs_f64();

    let mut cmd = Command::new(kith);
    cmd.arg("run")
        .arg("--relay")
        .arg("--home")
        .arg(&home)
        .args(["--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .arg("--bootstrap-file")
        .arg(&bootstrap)
        .arg("--json")
        .stderr(footprint::log_file(dir.path(), "relay.log"));
    let mut child = ChildProcess::spawn(cmd, "kith run --relay")?;
    if let Err(e) = child.expect_line(READY_WAIT) {
        footprint::stop_kith(kith, &home, &mut child);
        return Err(e);
    }
    let start = Instant::now();
    while start.elapsed() < params.wait {
        let left = params.wait.saturating_sub(start.elapsed());
        bar.set_message(format!("{NAME}: idle, {} s left", left.as_secs()));
        std::thread::sleep(left.min(std::time::Duration::from_secs(1)));
    }
    let rss = machine::rss_mb(child.pid());
    let clean = footprint::stop_kith(kith, &home, &mut child);
    let mut notes = vec![format!(
        "VmRSS of `kith run --relay` ({} build) after {} s idle, its store holding {mailboxes} registered mailboxes with one {ENVELOPE}-byte envelope each (filled in {fill_secs:.1} s through kith-store before start); no baseline",
        footprint::binary_profile(kith),
        params.wait.as_secs()
    )];
    if !clean {
        notes.push("the relay did not stop within 15 s and was killed".to_owned());
    }
    Ok(Scenario::measured(
        NAME,
        UNIT,
        rss.map(|mb| Figures::default().with("rss_mb", mb)),
        None,
        notes.join("; "),
    ))
}
