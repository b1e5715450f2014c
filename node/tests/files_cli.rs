//! `kith send-file`, `kith files`, `kith save` and `kith filters` between two `kith run`
//! processes: the file arrives byte-identical, JSON shapes are as documented, and bad input gets
//! the documented exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use std::time::Duration;

use common::{LAB_NETWORK, poll};

const ARRIVAL: Duration = Duration::from_secs(60);

#[test]
fn a_file_sent_with_the_cli_is_saved_byte_identical() {
    let lab = common::Lab::new("kith-files-", LAB_NETWORK);
    let a = lab.start("a", &[]);
    let b = lab.start("b", &["--bootstrap", &a.tcp_addr()]);
    let b_id = b.peer_id();
    let a_id = a.peer_id();

    // B knows and accepts A first, so A's file downloads at once.
    a.json(&["send", &b_id, "hello"]);
    poll("A's hello to reach B", ARRIVAL, || {
        let (code, out, _) = b.cli(&["history", &a_id, "--json"]);
        (code == 0 && out.contains("hello")).then_some(())
    });
    b.ok(&["accept", &a_id]);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.pdf");
    let bytes: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &bytes).unwrap();
    let sent = a.json(&[
        "send-file",
        &b_id,
        path.to_str().unwrap(),
        "--caption",
        "the report",
    ]);
    for field in ["id", "file_id", "hash", "size", "status"] {
        assert!(
            sent.get(field).is_some(),
            "send-file --json lacks {field}: {sent}"
        );
    }
    assert_eq!(sent["size"], bytes.len());
    let file_id = sent["file_id"].as_str().unwrap().to_owned();

    let listed = b.json(&["files", &a_id]);
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["file_id"] == file_id.as_str())
        .unwrap_or_else(|| panic!("B does not list the file: {listed}"))
        .clone();
    for field in [
        "file_id",
        "message_id",
        "from",
        "name",
        "mime",
        "size",
        "hash",
        "state",
        "received_bytes",
        "width",
        "height",
    ] {
        assert!(
            entry.get(field).is_some(),
            "files --json lacks {field}: {entry}"
        );
    }
    assert_eq!(entry["name"], "report.pdf");
    assert_eq!(entry["mime"], "application/pdf");
    assert_eq!(entry["from"], a_id.as_str());

    // `save` waits for the file, then writes it.
    let out = dir.path().join("saved.pdf");
    let saved = b.json(&["save", &file_id, out.to_str().unwrap()]);
    assert_eq!(saved["size"], bytes.len());
    assert!(std::fs::read(&out).unwrap() == bytes, "saved file differs");

    // Bad input: exit 3 for an unknown id, 2 for a missing file or an unknown filter.
    b.fails(
        &[
            "save",
            "00000000000000000000000000000000",
            dir.path().to_str().unwrap(),
        ],
        3,
    );
    a.fails(
        &[
            "send-file",
            &b_id,
            dir.path().join("nope").to_str().unwrap(),
        ],
        2,
    );
    a.fails(
        &[
            "send-file",
            &b_id,
            path.to_str().unwrap(),
            "--filter",
            "lomo",
        ],
        2,
    );

    let filters = a.json(&["filters"]);
    let names: Vec<&str> = filters
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    for want in [
        "mono", "sepia", "vivid", "warm", "cool", "fade", "noir", "chrome",
    ] {
        assert!(names.contains(&want), "no filter {want}: {names:?}");
    }
    assert_eq!(filters[0]["matrix"].as_array().unwrap().len(), 20);
}
