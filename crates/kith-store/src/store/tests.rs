use super::*;

/// Opens the store in `dir`; a lock still held for a moment by sled's I/O threads after an
/// earlier handle was dropped (they finish a log write) is waited out, for up to a second.
fn open(dir: &Path) -> Result<Store, StoreError> {
    let mut result = Store::open(dir.join("db"), &StoreConfig::default());
    for _ in 0..20 {
        if !matches!(result, Err(StoreError::Locked { .. })) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        result = Store::open(dir.join("db"), &StoreConfig::default());
    }
    result
}

#[test]
fn a_cache_budget_gives_sled_the_serialized_share_that_fits_it_in_memory() {
    let mib = 1024 * 1024;
    // 64 MiB of memory: sled may cache 24 MiB of serialized pages (about 58 MiB decoded).
    assert_eq!(StoreConfig::default().cache_capacity, 24 * mib);
    assert_eq!(
        StoreConfig::default().with_cache_mb(16).cache_capacity,
        6 * mib
    );
    // Zero is taken as the least budget, not as "no cache" or sled's 1 GiB default.
    assert_eq!(
        StoreConfig::default().with_cache_mb(0).cache_capacity,
        3 * mib / 8
    );
}

#[test]
fn fresh_store_records_the_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
}

#[test]
fn second_open_of_the_same_home_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path()).unwrap();
    let err = open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "got {err:?}");
    let text = err.to_string();
    assert!(text.contains("in use by another kith process"), "{text}");
}

#[test]
fn store_can_be_reopened_after_the_first_handle_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path()).unwrap();
        store
            .peers()
            .record_seen(b"peer-a", Some(b"addr-1"), None, 5)
            .unwrap();
    }
    let store = open(dir.path()).unwrap();
    let peers = store.peers().all().unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].addrs, vec![b"addr-1".to_vec()]);
}

#[test]
fn a_store_from_a_newer_kith_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path().join("db")).unwrap();
        db.open_tree(META_TREE)
            .unwrap()
            .insert(SCHEMA_KEY, &(SCHEMA_VERSION + 1).to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let err = open(dir.path()).unwrap_err();
    match err {
        StoreError::NewerSchema {
            found, supported, ..
        } => {
            assert_eq!(found, SCHEMA_VERSION + 1);
            assert_eq!(supported, SCHEMA_VERSION);
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
}

#[test]
fn a_damaged_schema_version_is_reported_not_panicked_on() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path().join("db")).unwrap();
        db.open_tree(META_TREE)
            .unwrap()
            .insert(SCHEMA_KEY, b"xx".as_slice())
            .unwrap();
        db.flush().unwrap();
    }
    let err = open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "got {err:?}");
}

#[tokio::test]
async fn flush_reports_bytes_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    store
        .peers()
        .record_seen(b"p", Some(b"a"), Some("kith/0.1.0"), 1)
        .unwrap();
    assert!(store.flush().await.unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_flushes_share_disk_syncs_and_all_complete() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    let mut tasks = Vec::new();
    for i in 0..64u8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .peers()
                .record_seen(&[i], Some(&[i]), None, 1)
                .unwrap();
            store.flush().await.unwrap()
        }));
    }
    let mut flushed_by_self = 0;
    for t in tasks {
        if t.await.unwrap() > 0 {
            flushed_by_self += 1;
        }
    }
    assert!(flushed_by_self >= 1);
    assert!(
        flushed_by_self < 64,
        "every caller synced on its own: no group commit"
    );
    assert_eq!(store.peers().len(), 64);
    let c = &store.commit;
    assert_eq!(
        c.completed.load(Ordering::SeqCst),
        c.requested.load(Ordering::SeqCst)
    );
}

#[test]
fn address_book_keeps_newest_addresses_first_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    let book = store.peers();
    for i in 0..20u8 {
        book.record_seen(b"peer", Some(&[i]), None, u64::from(i))
            .unwrap();
    }
    // Seeing an old address again moves it to the front instead of duplicating it.
    book.record_seen(b"peer", Some(&[15]), Some("kith/9"), 100)
        .unwrap();
    let peer = &book.all().unwrap()[0];
    assert_eq!(peer.addrs.len(), 8);
    assert_eq!(peer.addrs[0], vec![15]);
    assert_eq!(peer.addrs[1], vec![19]);
    assert_eq!(peer.addrs.iter().filter(|a| a[0] == 15).count(), 1);
    assert_eq!(peer.last_seen_ms, 100);
    assert_eq!(peer.agent, "kith/9");
    assert_eq!(
        book.get(b"peer").unwrap().as_ref(),
        Some(peer),
        "point lookup"
    );
    assert_eq!(book.get(b"stranger").unwrap(), None);
}

#[test]
fn damaged_address_book_entries_are_skipped_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    store
        .peers()
        .tree
        .insert(b"bad", b"\xff\xff\xff".as_slice())
        .unwrap();
    store
        .peers()
        .record_seen(b"good", Some(b"a"), None, 1)
        .unwrap();
    let all = store.peers().all().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].peer_id, b"good".to_vec());
    assert_eq!(store.peers().get(b"bad").unwrap(), None);
    store
        .peers()
        .record_seen(b"bad", Some(b"b"), None, 2)
        .unwrap();
    assert_eq!(store.peers().all().unwrap().len(), 2);
}

#[test]
fn prune_keeps_the_most_recent_peers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    for i in 0..10u8 {
        store
            .peers()
            .record_seen(&[i], None, None, u64::from(i))
            .unwrap();
    }
    assert_eq!(store.peers().prune(3).unwrap(), 7);
    let ids: Vec<_> = store
        .peers()
        .all()
        .unwrap()
        .into_iter()
        .map(|p| p.peer_id)
        .collect();
    assert_eq!(ids, vec![vec![9], vec![8], vec![7]]);
}

proptest::proptest! {
    #[test]
    fn address_book_never_holds_duplicates_or_more_than_the_cap(
        addrs in proptest::collection::vec(0u8..12, 0..64)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).unwrap();
        for (i, a) in addrs.iter().enumerate() {
            store.peers().record_seen(b"p", Some(&[*a]), None, i as u64).unwrap();
        }
        if let Some(peer) = store.peers().all().unwrap().first() {
            let mut seen = peer.addrs.clone();
            seen.sort();
            seen.dedup();
            proptest::prop_assert_eq!(seen.len(), peer.addrs.len());
            proptest::prop_assert!(peer.addrs.len() <= 8);
            proptest::prop_assert_eq!(&peer.addrs[0], &vec![*addrs.last().unwrap()]);
        }
    }
}

/// The newest page-table snapshot sled has written in `db`: its file name carries the log
/// position it covers (`snap.<lsn in hex>`).
fn newest_snapshot_lsn(db: &Path) -> u64 {
    std::fs::read_dir(db)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let hex = name.strip_prefix("snap.")?;
            u64::from_str_radix(hex, 16).ok()
        })
        .max()
        .unwrap_or(0)
}

fn fill_peers(store: &Store, n: usize) {
    for i in 0..n {
        store
            .peers()
            .record_seen(
                format!("peer-{i:06}").as_bytes(),
                Some(format!("/ip4/198.18.0.1/tcp/{i}").as_bytes()),
                None,
                i as u64,
            )
            .unwrap();
    }
}

#[test]
fn a_clean_close_leaves_a_snapshot_of_the_whole_log_and_a_drop_does_not() {
    let closed = tempfile::tempdir().unwrap();
    let dropped = tempfile::tempdir().unwrap();
    for (dir, close) in [(&closed, true), (&dropped, false)] {
        let store = open(dir.path()).unwrap();
        fill_peers(&store, 5_000);
        if close {
            assert!(
                store.close().unwrap(),
                "the only handle closes with a checkpoint"
            );
        } else {
            store.flush_blocking().unwrap();
            drop(store);
        }
    }
    let closed_lsn = newest_snapshot_lsn(&closed.path().join("db"));
    let dropped_lsn = newest_snapshot_lsn(&dropped.path().join("db"));
    // Both wrote the same log; only the closed one's snapshot reaches past the writes (the
    // dropped one's dates from its open, before them).
    assert!(
        closed_lsn > dropped_lsn + 100_000,
        "closed store's snapshot at {closed_lsn}, dropped store's at {dropped_lsn}"
    );
    for dir in [&closed, &dropped] {
        let store = open(dir.path()).unwrap();
        assert_eq!(store.peers().all().unwrap().len(), 5_000);
    }
}

#[test]
fn closing_one_handle_of_a_shared_store_keeps_the_others_working() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    let other = store.clone();
    fill_peers(&store, 10);
    assert!(
        !store.close().unwrap(),
        "another handle is alive: no checkpoint"
    );
    fill_peers(&other, 20);
    assert!(other.close().unwrap());
    let store = open(dir.path()).unwrap();
    assert_eq!(store.peers().all().unwrap().len(), 20);
}

#[test]
fn a_checkpoint_of_an_open_store_is_refused_as_locked() {
    let dir = tempfile::tempdir().unwrap();
    let _store = open(dir.path()).unwrap();
    let err = Store::checkpoint(dir.path().join("db")).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "got {err:?}");
}
