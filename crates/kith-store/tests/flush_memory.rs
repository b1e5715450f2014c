//! A flush must not leave the log buffers it retired alive on the flushing thread.
//!
//! sled 0.34 frees a sealed log buffer (512 KiB) through crossbeam-epoch's deferred destruction,
//! queued on the thread that sealed it; a flush seals the current buffer. When one thread does
//! nothing but flush (kith's periodic flusher, the blocking-pool thread of a group commit), its
//! bag of deferred drops fills only after 64 flushes, so up to 64 buffers that were already
//! written stay allocated: 32 MB in a soak at 1,000 messages a second. This binary counts live
//! heap bytes with its own allocator and checks that forty flushes, each after about a buffer's
//! worth of writes, leave no such pile behind.

use std::sync::mpsc;

use kith_store::{Deposit, Quota, Store, StoreConfig};

/// The system allocator, counting the bytes it has handed out and not yet taken back (`cap`
/// does the counting, so this binary needs no `unsafe` of its own).
#[global_allocator]
static ALLOCATOR: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

const MB: usize = 1024 * 1024;

#[test]
fn flushes_from_one_thread_do_not_keep_the_log_buffers_they_retired() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        cache_capacity: MB as u64,
        flush_every_ms: None,
    };
    let store = Store::open(dir.path().join("db"), &config).unwrap();
    let mailboxes = store.mailboxes();
    let recipient = [7u8; 32];
    mailboxes.register(&recipient, 1).unwrap();
    let quota = Quota {
        max_items: u64::MAX,
        max_bytes: u64::MAX,
    };

    // One thread that only flushes, as the node's flushers do.
    let (flush_tx, flush_rx) = mpsc::channel::<mpsc::Sender<()>>();
    let flusher_store = store.clone();
    let flusher = std::thread::spawn(move || {
        while let Ok(done) = flush_rx.recv() {
            flusher_store.flush_blocking().unwrap();
            let _ = done.send(());
        }
    });
    let flush = || {
        let (done_tx, done_rx) = mpsc::channel();
        flush_tx.send(done_tx).unwrap();
        done_rx.recv().unwrap();
    };

    let envelope = vec![0x5au8; 4096];
    let mut next_id = 0u128;
    let mut write_about_a_buffer = || {
        // 150 envelopes of 4 KiB: a little more than one 512 KiB log buffer.
        for _ in 0..150 {
            next_id += 1;
            let stored = mailboxes
                .deposit(&recipient, next_id.to_be_bytes(), b"f", &envelope, 2, quota)
                .unwrap();
            assert!(matches!(stored, Deposit::Stored(_)));
        }
    };

    // Warm up: the cache fills to its cap and sled's lazily made structures exist.
    for _ in 0..10 {
        write_about_a_buffer();
        flush();
    }
    settle();
    let before = ALLOCATOR.allocated();

    for _ in 0..40 {
        write_about_a_buffer();
        flush();
    }
    settle();
    let after = ALLOCATOR.allocated();

    let grown = after.saturating_sub(before);
    // Forty retired buffers would be 20 MiB on top of what forty buffers' worth of writes adds
    // to the tree, page table and cache (6.5 to 10 MiB measured; 27 MiB in all without the
    // release).
    assert!(
        grown < 16 * MB,
        "the heap grew {:.1} MiB over 40 flushes (from {:.1} to {:.1} MiB): retired log buffers are kept",
        grown as f64 / MB as f64,
        before as f64 / MB as f64,
        after as f64 / MB as f64,
    );

    drop(flush_tx);
    flusher.join().unwrap();
}

/// Lets the epoch collector run what is due: pins from this thread advance the epoch and free
/// the global queue's bags (a bounded number of rounds).
fn settle() {
    for _ in 0..1024 {
        crossbeam_epoch::pin().flush();
    }
}
