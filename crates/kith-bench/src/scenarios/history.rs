//! `history.open` and `history.page`: a store holding many messages in one conversation, beside
//! raw sled holding the same keys and values, measured in the same run.
//!
//! kith writes through `MessageStore::store_incoming` (one journaled batch over four trees per
//! message, as the receive pipeline does); the baseline inserts the same key and value bytes into
//! one raw sled tree. Then both are closed and reopened (`open`), and the last 50 messages are read
//! repeatedly (`page`): kith through `MessageStore::history`, raw sled through a reverse range scan.

use std::time::Instant;

use anyhow::Context as _;
use indicatif::ProgressBar;
use kith_proto::v1 as pb;
use kith_store::{Message, OlmSave, Status as MessageStatus, Store, StoreConfig};
use prost::Message as _;

use crate::report::{Figures, Scenario, micros};

/// Sizes of the scenarios.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    /// Messages stored.
    pub(crate) messages: usize,
    /// Page reads timed.
    pub(crate) pages: usize,
}

impl Params {
    /// Full-run or `--quick` defaults.
    pub(crate) fn new(quick: bool) -> Self {
        if quick {
            Self {
                messages: 5_000,
                pages: 100,
            }
        } else {
            Self {
                messages: 1_000_000,
                pages: 1_000,
            }
        }
    }
}

const PEER: &[u8] = b"bench-peer-id-0123456789abcdef0123456";

fn message(i: usize) -> Message {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&(1_800_000_000_000u64 + i as u64).to_be_bytes());
    id[8..].copy_from_slice(&(i as u64).to_be_bytes());
    Message {
        id,
        peer_id: PEER.to_vec(),
        outgoing: false,
        text: format!("message number {i}: a short line of chat text, about eighty bytes long."),
        sent_at_ms: 1_800_000_000_000 + i as u64,
        received_at_ms: 1_800_000_000_100 + i as u64,
        status: MessageStatus::Received,
        failure: String::new(),
    }
}

fn raw_key(m: &Message) -> Vec<u8> {
    let mut key = blake3::hash(PEER).as_bytes().to_vec();
    key.extend_from_slice(&m.id);
    key
}

struct Measured {
    open_ms: f64,
    /// kith only: the open that replays the log (after a crash, or the checkpoint of a clean
    /// close).
    crash_open_ms: Option<f64>,
    pages: Vec<u64>,
    bytes_on_disk: u64,
    fill_secs: f64,
}

fn kith(params: &Params, bar: &ProgressBar) -> anyhow::Result<Measured> {
    let dir = tempfile::Builder::new()
        .prefix("kith-bench-history-")
        .tempdir()?;
    let path = dir.path().join("db");
    let fill = Instant::now();
    {
        let store = Store::open(&path, &StoreConfig::default())?;
        let db = store.messages();
        for i in 0..params.messages {
            db.store_incoming(
                &message(i),
                OlmSave::sessions([7; 32], b"olm-state"),
                [7; 32],
            )?;
            if i % 10_000 == 0 {
                bar.tick();
            }
        }
        store.flush_blocking()?;
    }
    let fill_secs = fill.elapsed().as_secs_f64();
    // The store was dropped without closing: the next open replays sled's log, as after a crash.
    // That open is what `Store::close` pays at a clean stop (it opens once more to write the
    // snapshot), so it is timed here as both.
    let replayed = Instant::now();
    Store::checkpoint(&path)?;
    let crash_open_ms = replayed.elapsed().as_secs_f64() * 1000.0;
    let opened = Instant::now();
    let store = Store::open(&path, &StoreConfig::default())?;
    let open_ms = opened.elapsed().as_secs_f64() * 1000.0;
    let mut pages = Vec::with_capacity(params.pages);
    for _ in 0..params.pages {
        let t = Instant::now();
        let page = store.messages().history(PEER, 50, None)?;
        pages.push(micros(t.elapsed()));
        anyhow::ensure!(page.len() == 50.min(params.messages), "short page");
    }
    Ok(Measured {
        open_ms,
        crash_open_ms: Some(crash_open_ms),
        pages,
        bytes_on_disk: store.size_on_disk()?,
        fill_secs,
    })
}

fn raw(params: &Params, bar: &ProgressBar) -> anyhow::Result<Measured> {
    let dir = tempfile::Builder::new()
        .prefix("kith-bench-history-raw-")
        .tempdir()?;
    let path = dir.path().join("db");
    let config = || {
        sled::Config::new()
            .path(&path)
            // The same page cache kith's store gets, so the comparison is of everything else.
            .cache_capacity(StoreConfig::default().cache_capacity)
    };
    let fill = Instant::now();
    {
        let db = config().open().context("raw sled open")?;
        let tree = db.open_tree("messages")?;
        for i in 0..params.messages {
            let m = message(i);
            tree.insert(raw_key(&m), m.stored_bytes())?;
            if i % 10_000 == 0 {
                bar.tick();
            }
        }
        db.flush()?;
    }
    let fill_secs = fill.elapsed().as_secs_f64();
    let opened = Instant::now();
    let db = config().open().context("raw sled reopen")?;
    let tree = db.open_tree("messages")?;
    let open_ms = opened.elapsed().as_secs_f64() * 1000.0;
    let prefix = blake3::hash(PEER).as_bytes().to_vec();
    let mut end = prefix.clone();
    end.extend_from_slice(&[0xff; 17]);
    let mut pages = Vec::with_capacity(params.pages);
    for _ in 0..params.pages {
        let t = Instant::now();
        let mut page = Vec::with_capacity(50);
        for item in tree.range(prefix.clone()..end.clone()).rev().take(50) {
            let (_, v) = item?;
            page.push(pb::StoredMessage::decode(v.as_ref())?);
        }
        page.reverse();
        pages.push(micros(t.elapsed()));
    }
    Ok(Measured {
        open_ms,
        crash_open_ms: None,
        pages,
        bytes_on_disk: db.size_on_disk()?,
        fill_secs,
    })
}

/// Runs both scenarios from one fill (filling a million messages twice would double the run).
pub(crate) fn run(params: &Params, bar: &ProgressBar) -> Vec<Scenario> {
    let k = kith(params, bar);
    let r = raw(params, bar);
    let describe = |m: &Measured| {
        format!(
            "filled in {:.1} s, {:.1} MB on disk",
            m.fill_secs,
            m.bytes_on_disk as f64 / 1_048_576.0
        )
    };
    let mut notes = vec![format!(
        "{} messages in one conversation; kith: MessageStore (messages, ids, Olm state, correspondents in one journaled batch per message), open after a clean close (Store::close writes sled's snapshot; crash_open_ms: the open that replays the log instead, after a crash or inside that close); baseline: raw sled, one tree, same keys and values, closed by dropping it",
        params.messages
    )];
    match &k {
        Ok(m) => notes.push(format!("kith {}", describe(m))),
        Err(e) => notes.push(format!("kith failed: {e:#}")),
    }
    match &r {
        Ok(m) => notes.push(format!("raw sled {}", describe(m))),
        Err(e) => notes.push(format!("baseline failed: {e:#}")),
    }
    let notes = notes.join("; ");
    let open = |m: &Measured| {
        let figures = Figures::default().with("open_ms", (m.open_ms * 10.0).round() / 10.0);
        match m.crash_open_ms {
            Some(ms) => figures.with("crash_open_ms", (ms * 10.0).round() / 10.0),
            None => figures,
        }
    };
    vec![
        Scenario::measured(
            "history.open",
            "ms",
            k.as_ref().ok().map(open),
            r.as_ref().ok().map(open),
            notes.clone(),
        ),
        Scenario::measured(
            "history.page",
            "us",
            k.as_ref().ok().and_then(|m| Figures::latency(&m.pages)),
            r.as_ref().ok().and_then(|m| Figures::latency(&m.pages)),
            format!("last 50 messages, {} reads; {notes}", params.pages),
        ),
    ]
}
