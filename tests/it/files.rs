//! Files and photos between real nodes on loopback: a 20 MB file arrives byte-identical over
//! `/kith/blob/1.0.0` and costs about its size on the wire; a photo arrives re-encoded, filtered,
//! thumbnailed and without metadata; a file from someone not accepted waits for the accept; a
//! file that cannot be sent is a clear error and sends nothing.
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
    POLL, TestNode, Transports, name_options, star_with, wait_for_mesh, wait_until,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_mb_file_arrives_byte_identical() {
    let (a, b) = pair().await;
    acquaint(&a, &b).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("archive.bin");
    let bytes = random_bytes(20 * 1000 * 1000, 7);
    std::fs::write(&path, &bytes).unwrap();

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
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("holiday.jpeg");
    std::fs::write(&path, jpeg()).unwrap();
    let sent = a
        .node()
        .send_file(
            &b.peer_id().to_string(),
            &path,
            SendFileOptions {
                caption: "the beach".into(),
                filter: Some("mono".into()),
                original: false,
            },
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
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, b"not for strangers").unwrap();
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
