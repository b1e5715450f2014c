//! Mailboxes in process: a friend who is offline gets more mail deposited than one delivery batch
//! holds, and all of it arrives once they return. (The process-level relay scenarios, relay
//! restarts, quotas, TTL and NAT namespaces, are in `node/tests/relay_cli.rs`.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::result_large_err
)]

use std::time::Duration;

use kith_service::{MailboxConfig, MessageStatus, Options};

use crate::harness::{POLL, TestNode, Transports, name_options, wait_for_mesh, wait_until};

const WAIT: Duration = Duration::from_secs(60);

fn options() -> Options {
    Options {
        first_republish_after: Duration::from_millis(200),
        ..name_options()
    }
}

/// Regression: the sender's delivery run took the oldest 64 entries for a peer every round, and
/// entries already deposited stay in the outbox, so the 65th and later were never deposited (and
/// the run spun).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn more_mail_than_one_batch_is_deposited_and_arrives_once() {
    let relay = TestNode::start_with(
        Vec::new(),
        Options {
            mailbox_server: Some(MailboxConfig::default()),
            ..options()
        },
        Transports::Tcp,
    )
    .await
    .unwrap();
    let hub = vec![relay.tcp_addr()];
    let a = TestNode::start_with_mailbox(&relay, options())
        .await
        .unwrap();
    let b = TestNode::start_with(hub.clone(), options(), Transports::Tcp)
        .await
        .unwrap();
    let nodes = [relay, a, b];
    wait_for_mesh(&nodes, &[], WAIT).await.unwrap();
    let [relay, a, b] = nodes;
    wait_until("A to register its mailbox", WAIT, POLL, async || {
        relay.node().mailbox_stats().unwrap().recipients == 1
    })
    .await
    .unwrap();
    let a_id = a.peer_id().to_string();
    // One hello, waited for until delivered: re-sending it until a send answered `Delivered`
    // left the earlier, queued copies to be deposited with the held messages below.
    let hello = b.node().send_text(&a_id, "hello").await.unwrap();
    wait_until("B's first message to reach A", WAIT, POLL, async || {
        b.node()
            .message(&hello.id)
            .unwrap()
            .is_some_and(|m| m.status == MessageStatus::Delivered)
    })
    .await
    .unwrap();

    let away = a.stop_keeping_home().await.unwrap();
    const HELD: usize = 80;
    for i in 0..HELD {
        let sent = b
            .node()
            .send_text(&a_id, &format!("held {i}"))
            .await
            .unwrap();
        assert_eq!(sent.status, MessageStatus::Queued);
    }
    let result = wait_until("every message to be deposited", WAIT, POLL, async || {
        relay.node().mailbox_stats().unwrap().items == HELD
    })
    .await;
    if let Err(e) = result {
        panic!(
            "{e}: the relay holds {}",
            relay.node().mailbox_stats().unwrap().items
        );
    }

    let a = away.start(hub).await.unwrap();
    let b_id = b.peer_id().to_string();
    wait_until("A to fetch all its mail", WAIT, POLL, async || {
        a.node()
            .history(&b_id, 1000, None)
            .await
            .is_ok_and(|(_, h)| h.iter().filter(|m| m.text.starts_with("held")).count() >= HELD)
    })
    .await
    .unwrap();
    let (_, history) = a.node().history(&b_id, 1000, None).await.unwrap();
    // The warm-up may have taken more than one "hello"; the held ones arrive once, in order.
    let texts: Vec<&str> = history
        .iter()
        .map(|m| m.text.as_str())
        .filter(|t| *t != "hello")
        .collect();
    let expected: Vec<String> = (0..HELD).map(|i| format!("held {i}")).collect();
    assert_eq!(texts, expected);
    wait_until("the mailbox to be emptied", WAIT, POLL, async || {
        relay.node().mailbox_stats().unwrap().items == 0
    })
    .await
    .unwrap();
    for node in [relay, a, b] {
        node.shutdown().await.unwrap();
    }
}
