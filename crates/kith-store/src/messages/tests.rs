use super::*;
use crate::{Store, StoreConfig};

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("db"), &StoreConfig::default()).unwrap();
    (dir, store)
}

fn id(n: u8) -> MessageId {
    let mut id = [0u8; 16];
    id[5] = n;
    id
}

fn outgoing(n: u8, peer: &[u8]) -> (Message, OutboxItem) {
    let m = Message {
        id: id(n),
        peer_id: peer.to_vec(),
        outgoing: true,
        text: format!("msg {n}"),
        sent_at_ms: u64::from(n),
        received_at_ms: 0,
        status: Status::Queued,
        failure: String::new(),
    };
    let o = OutboxItem {
        id: id(n),
        peer_id: peer.to_vec(),
        payload: vec![n],
        envelope: None,
        attempts: 0,
        next_attempt_ms: 0,
        created_ms: 0,
        receipt: false,
        deposited: false,
        control: false,
        expires_ms: 0,
    };
    (m, o)
}

fn incoming(n: u8, peer: &[u8]) -> Message {
    Message {
        id: id(n),
        peer_id: peer.to_vec(),
        outgoing: false,
        text: format!("in {n}"),
        sent_at_ms: u64::from(n),
        received_at_ms: 9,
        status: Status::Received,
        failure: String::new(),
    }
}

#[test]
fn queued_messages_are_in_history_and_outbox_until_completed() {
    let (_d, store) = store();
    let db = store.messages();
    for n in [3, 1, 2] {
        let (m, o) = outgoing(n, b"bob");
        db.enqueue(Some(&m), &o).unwrap();
    }
    let history = db.history(b"bob", 10, None).unwrap();
    let ids: Vec<_> = history.iter().map(|m| m.id[5]).collect();
    assert_eq!(ids, vec![1, 2, 3], "history is in id order");
    assert_eq!(db.outbox_len(), 3);
    assert_eq!(
        db.correspondent(b"bob").unwrap().unwrap().trust,
        Trust::Accepted
    );

    db.complete(b"bob", &id(2), Status::Delivered, "", 50)
        .unwrap();
    assert_eq!(db.outbox_len(), 2);
    let m = db.message(&id(2)).unwrap().unwrap();
    assert_eq!(m.status, Status::Delivered);
    assert_eq!(m.received_at_ms, 50);
}

#[test]
fn history_pages_backwards() {
    let (_d, store) = store();
    let db = store.messages();
    for n in 1..=10 {
        let (m, o) = outgoing(n, b"bob");
        db.enqueue(Some(&m), &o).unwrap();
    }
    let last3: Vec<_> = db
        .history(b"bob", 3, None)
        .unwrap()
        .iter()
        .map(|m| m.id[5])
        .collect();
    assert_eq!(last3, vec![8, 9, 10]);
    let before: Vec<_> = db
        .history(b"bob", 3, Some(&id(8)))
        .unwrap()
        .iter()
        .map(|m| m.id[5])
        .collect();
    assert_eq!(before, vec![5, 6, 7]);
    assert!(db.history(b"alice", 3, None).unwrap().is_empty());
}

#[test]
fn incoming_messages_are_deduplicated_and_start_as_requests() {
    let (_d, store) = store();
    let db = store.messages();
    let m = incoming(1, b"eve");
    assert_eq!(
        db.store_incoming(&m, OlmSave::sessions([7; 32], b"pickle1"), [7; 32])
            .unwrap(),
        Incoming::Stored
    );
    assert_eq!(
        db.store_incoming(&m, OlmSave::sessions([7; 32], b"pickle2"), [8; 32])
            .unwrap(),
        Incoming::Duplicate
    );
    assert_eq!(
        db.olm_sessions(&[7; 32]).unwrap().unwrap(),
        b"pickle2",
        "the Olm state is saved even for a duplicate (its ratchet step was spent)"
    );
    let c = db.correspondent(b"eve").unwrap().unwrap();
    assert_eq!(c.trust, Trust::Unknown);
    assert_eq!(c.identity_key, Some([7; 32]));
    assert_eq!(c.unread, 1);
    assert!(db.is_known(&id(1)).unwrap());

    assert_eq!(db.mark_seen(b"eve").unwrap(), vec![id(1)]);
    assert_eq!(db.correspondent(b"eve").unwrap().unwrap().unread, 0);
    assert!(db.mark_seen(b"eve").unwrap().is_empty());

    db.set_trust(b"eve", Trust::Blocked).unwrap();
    assert_eq!(
        db.correspondent(b"eve").unwrap().unwrap().trust,
        Trust::Blocked
    );
}

#[test]
fn messages_are_found_by_id_without_an_index_entry() {
    let (_d, store) = store();
    let db = store.messages();
    let (ours, o) = outgoing(1, b"bob");
    db.enqueue(Some(&ours), &o).unwrap();
    for (n, peer) in [(2, &b"alice"[..]), (3, b"carol"), (4, b"carol")] {
        db.store_incoming(
            &incoming(n, peer),
            OlmSave::sessions([n; 32], b"s"),
            [n; 32],
        )
        .unwrap();
    }
    // No message is indexed.
    assert_eq!(db.ids.len(), 0);
    assert_eq!(db.message(&id(1)).unwrap().unwrap().text, "msg 1");
    for (n, peer) in [(2, &b"alice"[..]), (3, b"carol"), (4, b"carol")] {
        let found = db.message(&id(n)).unwrap().unwrap();
        assert_eq!((found.peer_id.as_slice(), found.outgoing), (peer, false));
        assert!(db.is_known(&id(n)).unwrap());
    }
    assert!(db.message(&id(9)).unwrap().is_none());
    assert!(!db.is_known(&id(9)).unwrap());
}

#[test]
fn another_peers_message_under_the_same_id_is_stored_too() {
    let (_d, store) = store();
    let db = store.messages();
    let real = incoming(1, b"alice");
    let fake = incoming(1, b"mallory");
    assert_eq!(
        db.store_incoming(&fake, OlmSave::sessions([1; 32], b"p"), [1; 32])
            .unwrap(),
        Incoming::Stored
    );
    assert_eq!(
        db.store_incoming(&real, OlmSave::sessions([2; 32], b"p"), [2; 32])
            .unwrap(),
        Incoming::Stored
    );
    assert_eq!(
        db.store_incoming(&real, OlmSave::sessions([2; 32], b"p"), [2; 32])
            .unwrap(),
        Incoming::Duplicate
    );
    assert!(db.is_known_from(b"alice", &id(1)).unwrap());
    assert_eq!(db.history(b"alice", 10, None).unwrap().len(), 1);
    assert_eq!(
        db.message_from(b"alice", &id(1)).unwrap().unwrap().peer_id,
        b"alice"
    );
}

#[test]
fn read_receipts_never_step_back_to_delivered() {
    let (_d, store) = store();
    let db = store.messages();
    let (m, o) = outgoing(1, b"bob");
    db.enqueue(Some(&m), &o).unwrap();
    assert_eq!(db.mark_read_by_peer(b"bob", &[id(1)]).unwrap(), 1);
    db.complete(b"bob", &id(1), Status::Delivered, "", 5)
        .unwrap();
    assert_eq!(db.message(&id(1)).unwrap().unwrap().status, Status::Read);
}

#[test]
fn envelope_and_olm_state_are_saved_together_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path().join("db"), &StoreConfig::default()).unwrap();
        let (m, mut o) = outgoing(1, b"bob");
        store.messages().enqueue(Some(&m), &o).unwrap();
        o.envelope = Some(b"ciphertext".to_vec());
        store
            .messages()
            .enqueue_batch(
                std::iter::empty(),
                std::slice::from_ref(&o),
                Some(OlmSave::sessions([3; 32], b"sessions-after").with_account(Some(b"account"))),
            )
            .unwrap();
        store.db_flush_for_tests();
    }
    let store = Store::open(dir.path().join("db"), &StoreConfig::default()).unwrap();
    let outbox = store.messages().outbox().unwrap();
    assert_eq!(outbox[0].envelope.as_deref(), Some(&b"ciphertext"[..]));
    let db = store.messages();
    assert_eq!(
        db.olm_sessions(&[3; 32]).unwrap().unwrap(),
        b"sessions-after"
    );
    assert_eq!(db.olm_account().unwrap().unwrap(), b"account");
    assert!(db.olm_sessions(&[4; 32]).unwrap().is_none(), "per peer");
}

#[test]
fn a_batch_of_incoming_messages_is_one_write_with_its_olm_state() {
    let (_d, store) = store();
    let db = store.messages();
    let batch = vec![
        incoming(1, b"eve"),
        incoming(2, b"eve"),
        incoming(1, b"eve"),
    ];
    let results = db
        .store_incoming_batch(&batch, OlmSave::sessions([9; 32], b"after-two"), [9; 32])
        .unwrap();
    assert_eq!(
        results,
        vec![Incoming::Stored, Incoming::Stored, Incoming::Duplicate],
        "a repeat inside the batch is a duplicate too"
    );
    assert_eq!(db.history(b"eve", 10, None).unwrap().len(), 2);
    assert_eq!(db.correspondent(b"eve").unwrap().unwrap().unread, 2);
    assert_eq!(db.olm_sessions(&[9; 32]).unwrap().unwrap(), b"after-two");
}

#[test]
fn receipts_touch_only_our_messages_to_that_peer_and_save_the_olm_state() {
    let (_d, store) = store();
    let db = store.messages();
    let (m1, o1) = outgoing(1, b"bob");
    let (m2, o2) = outgoing(2, b"bob");
    let (m3, o3) = outgoing(3, b"carol");
    for (m, o) in [(&m1, &o1), (&m2, &o2), (&m3, &o3)] {
        db.enqueue(Some(m), o).unwrap();
    }
    // Bob says 1 and 3 were delivered; 3 is Carol's, so only 1 changes.
    let ours = db
        .apply_receipt(
            b"bob",
            ReceiptKind::Delivered,
            &[id(1), id(3)],
            7,
            OlmSave::sessions([5; 32], b"after-receipt"),
        )
        .unwrap();
    assert_eq!(ours, vec![id(1)]);
    assert_eq!(
        db.message(&id(1)).unwrap().unwrap().status,
        Status::Delivered
    );
    assert_eq!(db.message(&id(3)).unwrap().unwrap().status, Status::Queued);
    let left: Vec<MessageId> = db.outbox().unwrap().iter().map(|i| i.id).collect();
    assert_eq!(left, vec![id(2), id(3)]);
    assert_eq!(
        db.olm_sessions(&[5; 32]).unwrap().unwrap(),
        b"after-receipt"
    );

    let ours = db
        .apply_receipt(
            b"bob",
            ReceiptKind::Read,
            &[id(1), id(2)],
            8,
            OlmSave::sessions([5; 32], b"after-read"),
        )
        .unwrap();
    assert_eq!(ours, vec![id(1), id(2)]);
    assert_eq!(db.message(&id(2)).unwrap().unwrap().status, Status::Read);
    assert_eq!(db.olm_sessions(&[5; 32]).unwrap().unwrap(), b"after-read");
}

#[test]
fn outbox_for_reads_one_peers_entries_in_id_order_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path().join("db"), &StoreConfig::default()).unwrap();
        let db = store.messages();
        for (n, peer) in [(4, b"bob"), (1, b"amy"), (3, b"bob"), (2, b"bob")] {
            let (m, o) = outgoing(n, peer);
            db.enqueue(Some(&m), &o).unwrap();
        }
        let ids = |peer: &[u8]| -> Vec<MessageId> {
            db.outbox_for(peer).unwrap().iter().map(|i| i.id).collect()
        };
        assert_eq!(ids(b"bob"), [id(2), id(3), id(4)]);
        assert_eq!(ids(b"amy"), [id(1)]);
        assert!(ids(b"cat").is_empty());
        // A completed entry is gone from the next read (the index drops it lazily).
        db.complete(b"bob", &id(3), Status::Delivered, "", 7)
            .unwrap();
        assert_eq!(ids(b"bob"), [id(2), id(4)]);
        // Updates keep the entry (and its new fields) in place.
        let mut later = db.outbox_for(b"bob").unwrap().remove(0);
        later.attempts = 5;
        db.reschedule(&later).unwrap();
        assert_eq!(db.outbox_for(b"bob").unwrap()[0].attempts, 5);
        store.db_flush_for_tests();
    }
    // Reopened: the index is rebuilt from the tree.
    let store = Store::open(dir.path().join("db"), &StoreConfig::default()).unwrap();
    let bob: Vec<MessageId> = store
        .messages()
        .outbox_for(b"bob")
        .unwrap()
        .iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(bob, [id(2), id(4)]);
    assert_eq!(store.messages().outbox_for(b"amy").unwrap().len(), 1);
}

/// Issue 16: a delivery run picks what is due from the in-memory schedule, with the same rules
/// as reading the whole queue did, and sees every later write of an entry's schedule.
#[test]
fn outbox_due_picks_the_oldest_entries_once_anything_is_due() {
    let dir = tempfile::tempdir().unwrap();
    let now = 1_000;
    let none = std::collections::HashSet::new();
    let due_ids = |db: &MessageStore, skip: &std::collections::HashSet<MessageId>, limit| {
        let due = db.outbox_due(b"bob", now, skip, limit).unwrap();
        let ids = |items: &[OutboxItem]| items.iter().map(|i| i.id).collect::<Vec<_>>();
        (ids(&due.expired), ids(&due.ready))
    };
    {
        let store = Store::open(dir.path().join("db"), &StoreConfig::default()).unwrap();
        let db = store.messages();
        // 1: waiting (not yet due); 2: held at a mailbox, not due again yet; 3: a call signal
        // past its expiry; 4: waiting; another peer's entry, due.
        for (n, next, deposited, expires) in [
            (1, now + 500, false, 0),
            (2, now + 500, true, 0),
            (3, 0, false, now - 1),
            (4, now + 900, false, 0),
        ] {
            let (m, mut o) = outgoing(n, b"bob");
            o.next_attempt_ms = next;
            o.deposited = deposited;
            o.expires_ms = expires;
            db.enqueue(Some(&m), &o).unwrap();
        }
        let (m, o) = outgoing(9, b"amy");
        db.enqueue(Some(&m), &o).unwrap();
        // Nothing of Bob's is due: nothing to send, and the expired signal is still reported.
        assert_eq!(due_ids(db, &none, 10), (vec![id(3)], vec![]));
        // Entry 4 becomes due: everything not held at the mailbox goes, oldest first.
        let mut four = db.outbox_for(b"bob").unwrap().pop().unwrap();
        assert_eq!(four.id, id(4));
        four.next_attempt_ms = now;
        db.reschedule(&four).unwrap();
        assert_eq!(due_ids(db, &none, 10), (vec![id(3)], vec![id(1), id(4)]));
        assert_eq!(due_ids(db, &none, 1), (vec![id(3)], vec![id(1)]));
        // In flight: skipped (and with entry 4 in flight, nothing left is due).
        let flying: std::collections::HashSet<MessageId> = [id(4)].into();
        assert_eq!(due_ids(db, &flying, 10), (vec![id(3)], vec![]));
        // Completed entries are gone at once.
        db.complete(b"bob", &id(3), Status::Failed, "expired", now)
            .unwrap();
        db.complete(b"bob", &id(1), Status::Delivered, "", now)
            .unwrap();
        assert_eq!(due_ids(db, &none, 10), (vec![], vec![id(4)]));
        // A reschedule of an entry completed meanwhile does not bring it back.
        let (_, mut one) = outgoing(1, b"bob");
        one.next_attempt_ms = 0;
        db.reschedule(&one).unwrap();
        assert_eq!(due_ids(db, &none, 10), (vec![], vec![id(4)]));
        assert!(db.outbox_for(b"bob").unwrap().iter().all(|i| i.id != id(1)));
        store.db_flush_for_tests();
    }
    // Reopened: the schedule is rebuilt from the tree.
    let store = Store::open(dir.path().join("db"), &StoreConfig::default()).unwrap();
    assert_eq!(due_ids(store.messages(), &none, 10), (vec![], vec![id(4)]));
    let amy = store.messages().outbox_due(b"amy", now, &none, 10).unwrap();
    assert_eq!(amy.ready.len(), 1);
}

/// Issue 12: reading or marking read a conversation that does not exist creates nothing.
#[test]
fn reading_or_marking_read_a_strangers_conversation_creates_nothing() {
    let (_d, store) = store();
    let db = store.messages();
    assert!(db.history(b"stranger", 50, None).unwrap().is_empty());
    assert!(db.mark_seen(b"stranger").unwrap().is_empty());
    assert_eq!(db.correspondent(b"stranger").unwrap(), None);
    assert!(db.correspondents().unwrap().is_empty());
}

#[test]
fn new_messages_queued_entries_and_olm_state_are_stored_in_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path().join("db"), &StoreConfig::default()).unwrap();
        let db = store.messages();
        // One entry queued earlier, now encrypted; two new messages handed over with it.
        let (old_m, mut old) = outgoing(1, b"bob");
        db.enqueue(Some(&old_m), &old).unwrap();
        old.envelope = Some(b"old-ciphertext".to_vec());
        let (m2, mut o2) = outgoing(2, b"bob");
        o2.envelope = Some(b"new-ciphertext".to_vec());
        let (m3, o3) = outgoing(3, b"bob");
        db.enqueue_batch(
            [&m2, &m3].into_iter(),
            &[old, o2, o3],
            Some(OlmSave::sessions([5; 32], b"sessions-after-two")),
        )
        .unwrap();
        assert_eq!(db.outbox_len(), 3);
        store.db_flush_for_tests();
    }
    let store = Store::open(dir.path().join("db"), &StoreConfig::default()).unwrap();
    let db = store.messages();
    let outbox = db.outbox_for(b"bob").unwrap();
    let envelopes: Vec<Option<&[u8]>> = outbox.iter().map(|o| o.envelope.as_deref()).collect();
    assert_eq!(
        envelopes,
        vec![
            Some(&b"old-ciphertext"[..]),
            Some(&b"new-ciphertext"[..]),
            None
        ]
    );
    let history: Vec<String> = db
        .history(b"bob", 10, None)
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(history, vec!["msg 1", "msg 2", "msg 3"]);
    let bob = db.correspondent(b"bob").unwrap().unwrap();
    assert_eq!(
        bob.last_text, "msg 3",
        "the summary is the newest message's"
    );
    assert_eq!(bob.trust, Trust::Accepted);
    assert_eq!(
        db.olm_sessions(&[5; 32]).unwrap().unwrap(),
        b"sessions-after-two"
    );
}

#[test]
fn a_delivered_message_leaves_one_entry_behind_and_status_updates_need_no_index() {
    let (_d, store) = store();
    let db = store.messages();
    let (m, o) = outgoing(1, b"bob");
    db.enqueue(Some(&m), &o).unwrap();
    db.note_failure(b"bob", &id(1), "bob is offline").unwrap();
    assert_eq!(
        db.message_from(b"bob", &id(1)).unwrap().unwrap().failure,
        "bob is offline"
    );
    // A note for another peer's message under the same id changes nothing.
    db.note_failure(b"amy", &id(1), "wrong peer").unwrap();
    assert_eq!(
        db.message(&id(1)).unwrap().unwrap().failure,
        "bob is offline"
    );
    db.complete(b"bob", &id(1), Status::Delivered, "", 9)
        .unwrap();
    let m = db.message_from(b"bob", &id(1)).unwrap().unwrap();
    assert_eq!((m.status, m.failure.as_str()), (Status::Delivered, ""));
    // The history entry is all that stays: sled keeps every entry's page in memory for good.
    assert_eq!(
        (db.messages.len(), db.ids.len(), db.outbox.len()),
        (1, 0, 0)
    );
    // A receipt or control entry (no history message) completes without writing one.
    let (_, mut receipt) = outgoing(2, b"bob");
    receipt.receipt = true;
    db.enqueue(None, &receipt).unwrap();
    db.complete(b"bob", &id(2), Status::Delivered, "", 9)
        .unwrap();
    assert_eq!((db.messages.len(), db.outbox_len()), (1, 0));
}

#[test]
fn a_message_an_older_version_indexed_is_still_found_by_id() {
    let (_d, store) = store();
    let db = store.messages();
    let (m, o) = outgoing(1, b"bob");
    db.enqueue(Some(&m), &o).unwrap();
    // Older versions wrote the id index and may not list the conversation among
    // correspondents any more (a removed contact): the index still finds it.
    db.ids.insert(&id(1)[..], &conv_key(b"bob")[..]).unwrap();
    db.correspondents.remove(&b"bob"[..]).unwrap();
    assert_eq!(db.message(&id(1)).unwrap().unwrap().text, "msg 1");
    db.complete(b"bob", &id(1), Status::Delivered, "", 3)
        .unwrap();
    assert_eq!(
        db.message(&id(1)).unwrap().unwrap().status,
        Status::Delivered
    );
}
