//! Files and photos between real nodes on loopback: a 20 MB file arrives byte-identical over
//! `/kith/blob/1.0.0` and costs about its size on the wire; a photo arrives re-encoded, filtered,
//! thumbnailed and without metadata; a file from someone not accepted waits for the accept; a
//! file that cannot be sent is a clear error and sends nothing.
//!
//! Files for offline recipients wait at their relay (and a full quota there is a clear error that
//! keeps the file queued); a group of five all receive a photo, a late member from the others.
//!
//! A cancelled download or upload stops for good and its ciphertext is deleted; ciphertext no file
//! needs any more is collected.
//!
//! Resuming a cut transfer, a holder that flips a byte and garbage requests are covered over real
//! libp2p connections in kith-blob's own tests.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::result_large_err
)]

use std::{path::Path, time::Duration};

use kith_service::{FileReport, FileState, Options, SendFileOptions, ServiceError};

use crate::harness::{
    POLL, TestNode, Transports, holds_for, name_options, poll_until, shutdown_all, star_with,
    wait_for_mesh, wait_until,
};

/// For a few nodes on loopback to know each other.
const MESH: Duration = Duration::from_secs(20);
/// For a file of a few MB to arrive.
const ARRIVAL: Duration = Duration::from_secs(60);

fn options() -> Options {
    Options {
        first_republish_after: Duration::from_millis(200),
        ..name_options()
    }
}

async fn pair() -> (TestNode, TestNode) {
    let mut nodes = star_with(2, options(), Transports::Tcp).await.unwrap();
    wait_for_mesh(&nodes, &[], MESH).await.unwrap();
    let b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
    (a, b)
}

/// A's first text makes B know A; B accepts, so files from A download at once.
async fn acquaint(a: &TestNode, b: &TestNode) {
    let sent = tokio::time::timeout(
        Duration::from_secs(30),
        a.node().send_text(&b.peer_id().to_string(), "hello"),
    )
    .await
    .unwrap()
    .unwrap();
    let id = sent.id;
    wait_until("B to store A's hello", ARRIVAL, POLL, async || {
        b.node()
            .history(&a.peer_id().to_string(), 10, None)
            .await
            .is_ok_and(|h| h.1.iter().any(|m| m.id == id))
    })
    .await
    .unwrap();
    b.node().accept(&a.peer_id().to_string()).await.unwrap();
}

async fn wait_complete(node: &TestNode, id: &kith_service::MessageId) -> FileReport {
    wait_until("the file to arrive", ARRIVAL, POLL, async || {
        node.node()
            .file(id)
            .is_ok_and(|f| f.state == FileState::Complete)
    })
    .await
    .unwrap();
    node.node().file(id).unwrap()
}

/// Whether `node`'s conversation with `with` shows message `id` with `text`.
async fn shows(node: &TestNode, with: &TestNode, id: &kith_service::MessageId, text: &str) -> bool {
    let (_, history) = node
        .node()
        .history(&with.peer_id().to_string(), 10, None)
        .await
        .unwrap();
    history.iter().any(|m| m.id == *id && m.text == text)
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    // xorshift: incompressible and reproducible, no extra dependency.
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A file called `name` holding `bytes`, in a fresh temporary directory (removed when the
/// returned guard drops).
fn temp_file(name: &str, bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

/// Send options for a photo with `caption` and the preset `filter`.
fn filtered(caption: &str, filter: &str) -> SendFileOptions {
    SendFileOptions {
        caption: caption.into(),
        filter: Some(filter.into()),
        original: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_mb_file_arrives_byte_identical() {
    let (a, b) = pair().await;
    acquaint(&a, &b).await;
    let bytes = random_bytes(20 * 1000 * 1000, 7);
    let (dir, path) = temp_file("archive.bin", &bytes);

    let sent = a
        .node()
        .send_file(&b.peer_id().to_string(), &path, SendFileOptions::default())
        .await
        .unwrap();
    assert_eq!(sent.file.offer.name, "archive.bin");
    assert_eq!(sent.file.offer.plain_size, bytes.len() as u64);
    let got = wait_complete(&b, &sent.sent.id).await;
    assert_eq!(got.offer.hash, sent.file.offer.hash);
    assert!(!got.outgoing);
    assert_eq!(got.peer, a.peer_id());

    let out = dir.path().join("saved.bin");
    let (saved_to, len) = b.node().save_file(&sent.sent.id, &out).await.unwrap();
    assert_eq!(saved_to, out);
    assert_eq!(len, bytes.len() as u64);
    assert!(std::fs::read(&out).unwrap() == bytes, "saved file differs");
    // Saving again does not overwrite.
    assert!(matches!(
        b.node().save_file(&sent.sent.id, &out).await,
        Err(ServiceError::InvalidFile(_))
    ));
    // The history shows the file's name, and both sides list the file.
    assert!(shows(&b, &a, &sent.sent.id, "archive.bin").await);
    assert_eq!(a.node().files(Some(b.peer_id())).unwrap().len(), 1);

    let received = b.metric("kith_blob_bytes_received_total");
    let size = sent.file.offer.size as f64;
    assert!(
        received >= size && received <= 1.1 * size,
        "received {received} bytes for a {size}-byte blob"
    );
    assert!(a.metric("kith_blob_bytes_sent_total") >= size);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A 64×48 JPEG whose top-left quarter is red and the rest blue.
fn jpeg() -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 48, |x, y| {
        if x < 32 && y < 24 {
            image::Rgb([220, 20, 20])
        } else {
            image::Rgb([20, 20, 220])
        }
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .unwrap();
    out.into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_photo_arrives_with_a_thumbnail_and_no_metadata() {
    let (a, b) = pair().await;
    acquaint(&a, &b).await;
    let (dir, path) = temp_file("holiday.jpeg", &jpeg());
    let sent = a
        .node()
        .send_file(
            &b.peer_id().to_string(),
            &path,
            filtered("the beach", "mono"),
        )
        .await
        .unwrap();
    let got = wait_complete(&b, &sent.sent.id).await;
    assert_eq!(got.offer.mime, "image/jpeg");
    assert_eq!(got.offer.name, "holiday.jpg");
    assert_eq!((got.offer.width, got.offer.height), (64, 48));
    assert_eq!(got.offer.caption, "the beach");
    assert!(!got.offer.thumbnail.is_empty(), "no thumbnail");
    assert!(!got.offer.placeholder.is_empty(), "no placeholder");
    let out = dir.path().join("out.jpg");
    b.node().save_file(&sent.sent.id, &out).await.unwrap();
    let saved = std::fs::read(&out).unwrap();
    assert!(!saved.windows(4).any(|w| w == b"Exif"), "metadata left in");
    // `mono` leaves no colour: red and blue came out grey.
    let img = image::load_from_memory(&saved).unwrap().to_rgb8();
    for (x, y) in [(8, 8), (50, 40)] {
        let [r, g, bl] = img.get_pixel(x, y).0;
        assert!(
            r.abs_diff(g) <= 6 && g.abs_diff(bl) <= 6,
            "pixel ({x},{y}) is {r},{g},{bl}: not grey"
        );
    }
    assert!(shows(&b, &a, &sent.sent.id, "the beach").await);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_from_someone_not_accepted_waits_for_the_accept() {
    let (a, b) = pair().await;
    let (dir, path) = temp_file("notes.txt", b"not for strangers");
    let sent = a
        .node()
        .send_file(&b.peer_id().to_string(), &path, SendFileOptions::default())
        .await
        .unwrap();
    wait_until("B to record the offer", ARRIVAL, POLL, async || {
        b.node().file(&sent.sent.id).is_ok()
    })
    .await
    .unwrap();
    let waiting = b.node().file(&sent.sent.id).unwrap();
    assert_eq!(waiting.state, FileState::Paused);
    assert_eq!(waiting.received_bytes, 0);
    assert!(waiting.note.contains("accept"), "{}", waiting.note);
    assert!(matches!(
        b.node().save_file(&sent.sent.id, dir.path()).await,
        Err(ServiceError::FileIncomplete { .. })
    ));
    b.node().accept(&a.peer_id().to_string()).await.unwrap();
    wait_complete(&b, &sent.sent.id).await;
    let (saved, _) = b
        .node()
        .save_file(&sent.sent.id, &dir.path().join("in"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(std::fs::read(saved).unwrap(), b"not for strangers");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_that_cannot_be_sent_are_clear_errors_and_send_nothing() {
    let mut nodes = star_with(
        2,
        Options {
            files: kith_service::FilesConfig {
                max_file_bytes: 1000,
                ..Default::default()
            },
            ..options()
        },
        Transports::Tcp,
    )
    .await
    .unwrap();
    wait_for_mesh(&nodes, &[], MESH).await.unwrap();
    let b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
    let to = b.peer_id().to_string();
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![1u8; 1001]).unwrap();
    let small = dir.path().join("small.jpg");
    std::fs::write(&small, b"\xFF\xD8\xFF\xE0 not really a jpeg").unwrap();
    let cases: [(&str, &Path, SendFileOptions, &str); 4] = [
        (
            "missing",
            &dir.path().join("nope"),
            SendFileOptions::default(),
            "no such file",
        ),
        (
            "directory",
            dir.path(),
            SendFileOptions::default(),
            "is a directory",
        ),
        (
            "too big",
            &big,
            SendFileOptions::default(),
            "the limit is 1000",
        ),
        (
            "unknown filter",
            &small,
            SendFileOptions {
                filter: Some("lomo".into()),
                ..Default::default()
            },
            "sepia",
        ),
    ];
    for (what, path, opts, says) in cases {
        match a.node().send_file(&to, path, opts).await {
            Err(ServiceError::InvalidFile(msg)) => assert!(msg.contains(says), "{what}: {msg}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    assert!(matches!(
        a.node()
            .send_file("nobody-here", &small, SendFileOptions::default())
            .await,
        Err(ServiceError::UnknownRecipient(_)
            | ServiceError::NameNotFound(_)
            | ServiceError::Request(_))
    ));
    assert!(
        a.node().files(None).unwrap().is_empty(),
        "a refused file was recorded"
    );
    // An image that does not decode goes as a file, with a note saying so.
    let sent = a
        .node()
        .send_file(&to, &small, SendFileOptions::default())
        .await
        .unwrap();
    assert!(sent.note.is_some_and(|n| n.contains("sent as a file")));
    assert_eq!(sent.file.offer.width, 0);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A relay (mailbox and file host) plus A and B, both keeping their mailbox there; B knows and
/// accepts A, then goes away (home kept).
async fn relay_and_pair(
    relay_files: kith_service::RelayBlobConfig,
) -> (TestNode, TestNode, crate::harness::StoppedNode) {
    let relay = TestNode::start_with(
        Vec::new(),
        Options {
            mailbox_server: Some(kith_service::MailboxConfig::default()),
            files: kith_service::FilesConfig {
                relay: relay_files,
                ..Default::default()
            },
            ..options()
        },
        Transports::Tcp,
    )
    .await
    .unwrap();
    let hub = vec![relay.tcp_addr()];
    let user = Options {
        mailbox_relays: hub.clone(),
        ..options()
    };
    let a = TestNode::start_with(hub.clone(), user.clone(), Transports::Tcp)
        .await
        .unwrap();
    let b = TestNode::start_with(hub.clone(), user.clone(), Transports::Tcp)
        .await
        .unwrap();
    let nodes = [relay, a, b];
    wait_for_mesh(&nodes, &[], MESH).await.unwrap();
    let [relay, a, b] = nodes;
    wait_until(
        "A and B to register at the relay",
        ARRIVAL,
        POLL,
        async || relay.node().mailbox_stats().unwrap().recipients == 2,
    )
    .await
    .unwrap();
    acquaint(&a, &b).await;
    let away = b.stop_keeping_home().await.unwrap();
    (relay, a, away)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_for_an_offline_recipient_waits_at_its_relay_after_the_sender_stops() {
    let (relay, a, away) = relay_and_pair(Default::default()).await;
    let b_id = away.peer_id();
    let bytes = random_bytes(3 * 1000 * 1000 + 17, 11);
    let (dir, path) = temp_file("while-away.bin", &bytes);
    let sent = a
        .node()
        .send_file(&b_id.to_string(), &path, SendFileOptions::default())
        .await
        .unwrap();
    // The file goes to B's relay first, then the offer to B's mailbox there.
    wait_until(
        "the file and its offer to wait at the relay",
        ARRIVAL,
        POLL,
        async || relay.node().mailbox_stats().unwrap().items == 1,
    )
    .await
    .unwrap();
    let held = relay.node().held_files_stats().unwrap();
    assert_eq!(held.entries, 1);
    assert_eq!(held.bytes, sent.file.offer.size);
    let note = a.node().file(&sent.sent.id).unwrap().note;
    assert!(note.contains("held at relay"), "{note}");
    // The sender goes away for good before B comes back.
    a.shutdown().await.unwrap();

    let b = away.start(vec![relay.tcp_addr()]).await.unwrap();
    let got = wait_complete(&b, &sent.sent.id).await;
    assert_eq!(got.offer.hash, sent.file.offer.hash);
    let out = dir.path().join("saved.bin");
    b.node().save_file(&sent.sent.id, &out).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == bytes, "saved file differs");
    // B told its relay it has the file: the relay's copy and quota are freed.
    wait_until("the relay to drop its copy", ARRIVAL, POLL, async || {
        relay.node().held_files_stats().unwrap().entries == 0
    })
    .await
    .unwrap();
    b.shutdown().await.unwrap();
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_relay_quota_is_a_clear_error_and_the_file_stays_queued() {
    let (relay, a, away) = relay_and_pair(kith_service::RelayBlobConfig {
        quota_bytes: 1_000_000,
        ..Default::default()
    })
    .await;
    let (_dir, path) = temp_file("too-much.bin", &random_bytes(2_000_000, 5));
    let sent = a
        .node()
        .send_file(
            &away.peer_id().to_string(),
            &path,
            SendFileOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(sent.sent.status, kith_service::MessageStatus::Queued);
    wait_until(
        "the refusal to be noted on the file",
        ARRIVAL,
        POLL,
        async || {
            a.node()
                .file(&sent.sent.id)
                .is_ok_and(|f| f.note.contains("relay holds at most 1000000 bytes"))
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}: note {:?}",
            a.node().file(&sent.sent.id).map(|f| f.note)
        )
    });
    // Nothing was deposited: the offer stays in A's outbox, the relay holds nothing.
    assert_eq!(relay.node().mailbox_stats().unwrap().items, 0);
    assert_eq!(relay.node().held_files_stats().unwrap().entries, 0);
    assert!(relay.metric("kith_blob_requests_refused_total") >= 1.0);
    a.shutdown().await.unwrap();
    relay.shutdown().await.unwrap();
    drop(away);
}

/// A group of five: four members receive a photo from the sender; the fifth, offline when it was
/// sent, catches up after the sender stopped and gets the photo from the other members.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_of_five_all_receive_a_photo_even_from_members_other_than_the_sender() {
    let group_options = Options {
        group_sync_every: Duration::from_secs(2),
        ..options()
    };
    let mut nodes = star_with(5, group_options, Transports::Tcp).await.unwrap();
    wait_for_mesh(&nodes, &[], MESH).await.unwrap();
    let others: Vec<&TestNode> = nodes[1..].iter().collect();
    let id = crate::groups::group_of("photos", &nodes[0], &others).await;
    // A first message shares the sender's Megolm key with every member while all are online.
    nodes[0]
        .node()
        .send_group_text(&id, "hello all")
        .await
        .unwrap();
    for node in &nodes[1..] {
        wait_until("the hello to arrive", ARRIVAL, POLL, async || {
            node.node()
                .group_history(&id, 10, None)
                .is_ok_and(|(_, h)| h.iter().any(|m| m.text == "hello all"))
        })
        .await
        .unwrap();
    }
    let late = nodes.pop().unwrap().stop_keeping_home().await.unwrap();

    let (dir, path) = temp_file("group.jpeg", &jpeg());
    let (sent, file, _) = nodes[0]
        .node()
        .send_group_file(&id, &path, filtered("us", "sepia"))
        .await
        .unwrap();
    assert_eq!(file.group, Some(gid(&id)));
    let mut photo = None;
    for node in &nodes[1..] {
        let got = wait_complete(node, &sent.id).await;
        assert_eq!(got.offer.hash, file.offer.hash);
        assert_eq!(got.group, Some(gid(&id)));
        assert_eq!(got.peer, nodes[0].peer_id());
        let out = dir.path().join(format!("{}.jpg", node.peer_id()));
        node.node().save_file(&sent.id, &out).await.unwrap();
        let saved = std::fs::read(&out).unwrap();
        assert!(
            photo.as_ref().is_none_or(|p| *p == saved),
            "members got different bytes"
        );
        photo = Some(saved);
        let (_, history) = node.node().group_history(&id, 10, None).unwrap();
        assert!(history.iter().any(|m| m.id == sent.id && m.text == "us"));
    }
    // The sender leaves; the late member catches up from the others and fetches from them.
    let sender = nodes.remove(0);
    let sender_id = sender.peer_id();
    sender.shutdown().await.unwrap();
    let late = late.start(vec![nodes[0].tcp_addr()]).await.unwrap();
    let got = wait_complete(&late, &sent.id).await;
    assert_eq!(got.peer, sender_id);
    let out = dir.path().join("late.jpg");
    late.node().save_file(&sent.id, &out).await.unwrap();
    assert!(
        Some(std::fs::read(&out).unwrap()) == photo,
        "the late member got other bytes"
    );
    let served: f64 = nodes
        .iter()
        .map(|n| n.metric("kith_blob_bytes_sent_total"))
        .sum();
    assert!(
        served >= file.offer.size as f64,
        "members served {served} bytes"
    );
    late.shutdown().await.unwrap();
    shutdown_all(nodes).await.unwrap();
}

fn gid(hex_id: &str) -> kith_service::GroupId {
    hex::decode(hex_id).unwrap().try_into().unwrap()
}

/// Nodes that serve files at 1 MB/s, so a transfer of a few MB is still running when a test acts
/// on it.
async fn slow_pair() -> (TestNode, TestNode) {
    let slow = Options {
        files: kith_service::FilesConfig {
            serve_rate: Some(1_000_000),
            ..Default::default()
        },
        ..options()
    };
    let mut nodes = star_with(2, slow, Transports::Tcp).await.unwrap();
    wait_for_mesh(&nodes, &[], MESH).await.unwrap();
    let b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
    acquaint(&a, &b).await;
    (a, b)
}

/// The files of blob `hash` in `node`'s blob store (ciphertext, outboard, record).
fn blob_files(node: &TestNode, hash: &[u8; 32]) -> Vec<String> {
    let uploads = node.node().upload_dir();
    let dir = uploads.with_file_name(
        uploads
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches(".uploads"),
    );
    let prefix = hex::encode(hash);
    std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// Waits until `node` is downloading file `id` and has some of it, not all.
/// A slow pair (see [`slow_pair`]) with an 8 MB file from A to B that B has received part of.
struct PartWay {
    a: TestNode,
    b: TestNode,
    /// Where the file was written (kept for the test's other files).
    dir: tempfile::TempDir,
    id: kith_service::MessageId,
    hash: [u8; 32],
    /// Ciphertext size.
    size: u64,
}

async fn part_way_transfer(name: &str, seed: u64) -> PartWay {
    let (a, b) = slow_pair().await;
    let (dir, path) = temp_file(name, &random_bytes(8_000_000, seed));
    let sent = a
        .node()
        .send_file(&b.peer_id().to_string(), &path, SendFileOptions::default())
        .await
        .unwrap();
    let id = sent.sent.id;
    wait_part_way(&b, &id).await;
    PartWay {
        a,
        b,
        dir,
        id,
        hash: sent.file.offer.hash,
        size: sent.file.offer.size,
    }
}

async fn wait_part_way(node: &TestNode, id: &kith_service::MessageId) -> FileReport {
    poll_until("a part of the file to arrive", ARRIVAL, POLL, async || {
        node.node().file(id).ok().filter(|f| {
            f.state == FileState::Downloading
                && f.received_bytes > 0
                && f.received_bytes < f.offer.size
        })
    })
    .await
    .unwrap()
}

/// Waits until counter `series` of `node` stops moving (two reads a second apart agree).
async fn wait_settled(node: &TestNode, series: &str) -> f64 {
    let mut last = node.metric(series);
    poll_until(&format!("{series} to settle"), ARRIVAL, POLL, async || {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = node.metric(series);
        let settled = (now == last).then_some(now);
        last = now;
        settled
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_download_stops_for_good_and_its_partial_ciphertext_is_deleted() {
    let PartWay {
        a,
        b,
        dir,
        id,
        hash,
        size,
    } = part_way_transfer("film.bin", 11).await;
    assert!(!blob_files(&b, &hash).is_empty(), "B keeps no partial blob");

    let cancelled = b.node().cancel_file(&id).await.unwrap();
    assert_eq!(cancelled.state, FileState::Cancelled);
    assert_eq!(cancelled.received_bytes, 0);
    assert_eq!(
        blob_files(&b, &hash),
        Vec::<String>::new(),
        "the partial ciphertext is still on disk"
    );
    // Again: harmless, still cancelled. Saving says why it cannot.
    assert_eq!(
        b.node().cancel_file(&id).await.unwrap().state,
        FileState::Cancelled
    );
    assert!(matches!(
        b.node().save_file(&id, &dir.path().join("out.bin")).await,
        Err(ServiceError::FileCancelled(_))
    ));
    assert!(matches!(
        b.node().cancel_file(&[9; 16]).await,
        Err(ServiceError::UnknownFile(_))
    ));

    // A stops sending, and nothing asks for the file again: not now, not after B restarts.
    let sent_then = wait_settled(&a, "kith_blob_bytes_sent_total").await;
    assert!(
        sent_then < size as f64,
        "A sent the whole file ({sent_then} bytes) before the cancel took effect"
    );
    let b = b.restart(vec![a.tcp_addr()]).await.unwrap();
    holds_for(
        "the cancelled file staying cancelled, deleted and unfetched",
        Duration::from_secs(3),
        POLL,
        async || {
            let f = b.node().file(&id).map_err(|e| e.to_string())?;
            let files = blob_files(&b, &hash);
            let sent_now = a.metric("kith_blob_bytes_sent_total");
            if f.state != FileState::Cancelled || !files.is_empty() || sent_now != sent_then {
                return Err(format!(
                    "state {:?}, blob files {files:?}, A sent {sent_now} (was {sent_then})",
                    f.state
                ));
            }
            Ok(())
        },
    )
    .await
    .unwrap();

    // A file that has arrived is not cancelled.
    let small = dir.path().join("note.txt");
    std::fs::write(&small, b"short").unwrap();
    let note = a
        .node()
        .send_file(&b.peer_id().to_string(), &small, SendFileOptions::default())
        .await
        .unwrap();
    wait_complete(&b, &note.sent.id).await;
    assert!(matches!(
        b.node().cancel_file(&note.sent.id).await,
        Err(ServiceError::FileComplete(_))
    ));
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_upload_is_no_longer_served() {
    let PartWay {
        a,
        b,
        dir: _dir,
        id,
        hash,
        size,
    } = part_way_transfer("draft.bin", 12).await;

    let cancelled = a.node().cancel_file(&id).await.unwrap();
    assert_eq!(cancelled.state, FileState::Cancelled);
    assert!(cancelled.outgoing);
    assert_eq!(
        blob_files(&a, &hash),
        Vec::<String>::new(),
        "A still keeps the ciphertext"
    );
    // The range being sent stops, and B's retries get nothing more.
    let sent_then = wait_settled(&a, "kith_blob_bytes_sent_total").await;
    let got_then = b.node().file(&id).unwrap().received_bytes;
    holds_for(
        "B getting no more of the cancelled file",
        Duration::from_secs(3),
        POLL,
        async || {
            let f = b.node().file(&id).map_err(|e| e.to_string())?;
            let sent_now = a.metric("kith_blob_bytes_sent_total");
            // Refusals cost A a status byte each; ranges would cost kilobytes.
            if f.state == FileState::Complete
                || f.received_bytes != got_then
                || sent_now > sent_then + 64.0
            {
                return Err(format!(
                    "B {:?} with {} bytes (was {got_then}); A sent {sent_now} (was {sent_then})",
                    f.state, f.received_bytes
                ));
            }
            Ok(())
        },
    )
    .await
    .unwrap();
    assert!(
        got_then < size,
        "B got the whole file ({got_then} bytes) before the cancel took effect"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ciphertext_no_file_needs_is_collected_and_the_rest_kept() {
    let (a, b) = pair().await;
    acquaint(&a, &b).await;
    let bytes = random_bytes(300_000, 13);
    let (dir, path) = temp_file("keep.bin", &bytes);
    let sent = a
        .node()
        .send_file(&b.peer_id().to_string(), &path, SendFileOptions::default())
        .await
        .unwrap();
    wait_complete(&b, &sent.sent.id).await;
    let kept = sent.file.offer.hash;

    // While B is stopped, ciphertext nothing refers to appears in its store (what a file record
    // lost with its message leaves behind): one old, one just made.
    let blobs_dir = {
        let uploads = b.node().upload_dir();
        let name = uploads.file_name().unwrap().to_string_lossy().into_owned();
        uploads.with_file_name(name.trim_end_matches(".uploads"))
    };
    let stopped = b.stop_keeping_home().await.unwrap();
    let (old, young) = {
        let store = kith_blob::BlobStore::open(&blobs_dir).unwrap();
        let old = store
            .import_sealed_reader(&random_bytes(50_000, 14)[..], 50_000)
            .unwrap()
            .hash;
        let young = store
            .import_sealed_reader(&random_bytes(50_000, 15)[..], 50_000)
            .unwrap()
            .hash;
        let record = blobs_dir.join(format!("{old}.have"));
        std::fs::File::options()
            .write(true)
            .open(&record)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - Duration::from_secs(2 * 3600))
            .unwrap();
        (*old.as_bytes(), *young.as_bytes())
    };
    let b = stopped.start(vec![a.tcp_addr()]).await.unwrap();
    wait_until("B to collect the old orphan", ARRIVAL, POLL, async || {
        blob_files(&b, &old).is_empty()
    })
    .await
    .unwrap();
    assert!(
        !blob_files(&b, &young).is_empty(),
        "a blob younger than an hour (it may be being sent) was collected"
    );
    assert_eq!(
        blob_files(&b, &kept).len(),
        3,
        "the received file's blob went"
    );
    let out = dir.path().join("still-there.bin");
    b.node().save_file(&sent.sent.id, &out).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == bytes, "saved file differs");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
