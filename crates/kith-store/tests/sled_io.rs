//! The vendored sled's I/O patches (vendor/sled/KITH-PATCHES.md), held to what they promise.
//!
//! - A flush writes the log buffer it seals on the thread that asked for it, so a run of flushes
//!   wakes none of sled's I/O threads (beyond their own once-a-second wake when idle).
//!   crates.io's sled handed every sealed buffer to its pool and woke all seven idle `sled-io`
//!   threads for it; with only `notify_one` the pool's threads still switched twice per flush
//!   (399 times for these 200 flushes).
//! - Flushes from many threads at once all return, and everything they flushed is there after the
//!   database is opened again: no job is left in the pool's queue and no flusher waits forever.
//!
//! One test in this binary: it counts the context switches of the process's `sled-io` threads,
//! so no other test may use sled at the same time.

use std::sync::mpsc;
use std::time::Duration;

use kith_store::{Quota, Store, StoreConfig};

/// Voluntary context switches of this process's `sled-io` threads so far, by thread id.
fn sled_io_switches() -> std::collections::HashMap<String, u64> {
    let mut switches = std::collections::HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return switches;
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with("sled-io") {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let voluntary = status
            .lines()
            .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
        switches.insert(task.file_name().to_string_lossy().into_owned(), voluntary);
    }
    switches
}

fn switches_since(
    before: &std::collections::HashMap<String, u64>,
    after: &std::collections::HashMap<String, u64>,
) -> u64 {
    after
        .iter()
        .map(|(tid, n)| n.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum()
}

const FLUSHES: u64 = 200;

#[test]
fn flushes_wake_no_io_thread_and_concurrent_flushes_all_return_with_their_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let config = StoreConfig {
        flush_every_ms: None,
        ..StoreConfig::default()
    };
    let recipient = [9u8; 32];
    let quota = Quota {
        max_items: u64::MAX,
        max_bytes: u64::MAX,
    };
    let mut next_id = 0u128;
    {
        let store = Store::open(&path, &config).unwrap();
        let mailboxes = store.mailboxes();
        mailboxes.register(&recipient, 1).unwrap();
        // Whatever opening the database and its first writes hand to the pool, before counting.
        store.flush_blocking().unwrap();
        std::thread::sleep(Duration::from_millis(200));

        let before = sled_io_switches();
        let started = std::time::Instant::now();
        for _ in 0..FLUSHES {
            next_id += 1;
            mailboxes
                .deposit(&recipient, next_id.to_be_bytes(), b"f", b"sealed", 2, quota)
                .unwrap();
            assert!(
                store.flush_blocking().unwrap() > 0,
                "every flush here has a write to make"
            );
        }
        let woken = switches_since(&before, &sled_io_switches());
        // An idle pool thread also wakes once a second by itself (its wait times out), however
        // slow this machine is; a flush handed to the pool costs at least two switches.
        let idle_wakes = 8 * (started.elapsed().as_secs() + 1);
        assert!(
            woken < FLUSHES + idle_wakes,
            "{FLUSHES} flushes woke sled's I/O threads {woken} times: flushes are handed to the pool again"
        );

        // Eight threads writing and flushing at once; each must finish within the bound.
        let (done_tx, done_rx) = mpsc::channel::<u128>();
        let mut threads = Vec::new();
        for thread in 0..8u128 {
            let store = store.clone();
            let done = done_tx.clone();
            threads.push(std::thread::spawn(move || {
                let mailboxes = store.mailboxes();
                for n in 0..50u128 {
                    let id = 1_000_000 + thread * 1_000 + n;
                    mailboxes
                        .deposit(&recipient, id.to_be_bytes(), b"f", b"sealed", 2, quota)
                        .unwrap();
                    store.flush_blocking().unwrap();
                }
                let _ = done.send(thread);
            }));
        }
        drop(done_tx);
        for _ in 0..8 {
            done_rx
                .recv_timeout(Duration::from_secs(60))
                .expect("a thread's flushes did not return within 60 s");
        }
        for thread in threads {
            thread.join().unwrap();
        }
    }

    // Everything flushed is there after the database is opened again. sled lets go of its file
    // lock a moment after the last handle drops (ARCHITECTURE.md), so the open is retried briefly.
    let mut attempts = 0;
    let store = loop {
        match Store::open(&path, &config) {
            Err(kith_store::StoreError::Locked { .. }) if attempts < 50 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            opened => break opened.unwrap(),
        }
    };
    let held = store.mailboxes().stats().unwrap().items;
    assert_eq!(held, FLUSHES as usize + 8 * 50);
}
