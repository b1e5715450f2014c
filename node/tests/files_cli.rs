//! `kith send-file`, `kith files`, `kith save` and `kith filters` between two `kith run`
//! processes: the file arrives byte-identical, JSON shapes are as documented, and bad input gets
//! the documented exit codes. `kith group send-file` reaches every member of a group of three;
//! `kith files cancel` stops a transfer for good.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use std::time::Duration;

use common::{LAB_NETWORK, poll};

const ARRIVAL: Duration = Duration::from_secs(60);

/// B receives a text from A and accepts A, so A's files download at once.
fn accepted_by(a: &common::Daemon, b: &common::Daemon) {
    let (a_id, b_id) = (a.peer_id(), b.peer_id());
    a.json(&["send", &b_id, "hello"]);
    poll("A's hello to reach B", ARRIVAL, || {
        let (code, out, _) = b.cli(&["history", &a_id, "--json"]);
        (code == 0 && out.contains("hello")).then_some(())
    });
    b.ok(&["accept", &a_id]);
}

/// `len` bytes that do not compress (xorshift from `seed`), for transfers whose size matters.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn a_file_sent_with_the_cli_is_saved_byte_identical() {
    let lab = common::Lab::new("kith-files-", LAB_NETWORK);
    let a = lab.start("a", &[]);
    let b = lab.start("b", &["--bootstrap", &a.tcp_addr()]);
    let b_id = b.peer_id();
    let a_id = a.peer_id();

    // B knows and accepts A first, so A's file downloads at once.
    accepted_by(&a, &b);

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

/// A free loopback address for a node's `--metrics-addr`.
fn free_loopback_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// The value of an unlabelled series on a node's `/metrics`.
fn metric(addr: &str, name: &str) -> f64 {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    raw.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (series, value) = l.split_once(' ')?;
            (series == name).then(|| value.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {name} in:\n{raw}"))
}

/// B is killed with SIGKILL about half way through a 20 MB file and started again: the transfer
/// resumes where it stopped, the file is byte-identical, and A sent at most 1.1× the file over
/// both attempts. A serves at 2 MB/s (`--file-upload-rate`) so "half way" lasts long enough to
/// be seen from outside.
#[test]
fn a_recipient_killed_half_way_resumes_and_costs_at_most_a_tenth_more() {
    let lab = common::Lab::new("kith-files-kill-", LAB_NETWORK);
    let metrics = free_loopback_addr();
    let a = lab.start(
        "a",
        &["--file-upload-rate", "2000000", "--metrics-addr", &metrics],
    );
    let mut b = lab.start("b", &["--bootstrap", &a.tcp_addr()]);
    let b_id = b.peer_id();
    accepted_by(&a, &b);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.bin");
    let bytes = noise(20_000_000, 0x9e37_79b9_7f4a_7c15u64);
    std::fs::write(&path, &bytes).unwrap();
    let sent_before = metric(&metrics, "kith_blob_bytes_sent_total");
    let sent = a.json(&["send-file", &b_id, path.to_str().unwrap()]);
    let file_id = sent["file_id"].as_str().unwrap().to_owned();

    // Half way (what B has made durable), then SIGKILL.
    let (received, size) = poll("B to have about half of the file", ARRIVAL, || {
        let (code, out, _) = b.cli(&["files", "--json"]);
        if code != 0 {
            return None;
        }
        let files: serde_json::Value = serde_json::from_str(&out).ok()?;
        let f = files
            .as_array()?
            .iter()
            .find(|f| f["file_id"] == file_id.as_str())?;
        let received = f["received_bytes"].as_u64()?;
        let size = f["transfer_size"].as_u64()?;
        (received * 100 >= size * 45).then_some((received, size))
    });
    b.kill9();
    assert!(
        received < size,
        "the file arrived before B could be killed ({received} of {size})"
    );

    let b = lab.start("b", &["--bootstrap", &a.tcp_addr()]);
    let resumed = b.json(&["files"]);
    let at_restart = resumed
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["file_id"] == file_id.as_str())
        .unwrap()["received_bytes"]
        .as_u64()
        .unwrap();
    assert!(
        at_restart >= received,
        "B lost verified bytes over the kill: {received} before, {at_restart} after"
    );
    let out = dir.path().join("saved.bin");
    let saved = b.json(&["save", &file_id, out.to_str().unwrap()]);
    assert_eq!(saved["size"], bytes.len());
    assert!(std::fs::read(&out).unwrap() == bytes, "saved file differs");
    let sent_total = metric(&metrics, "kith_blob_bytes_sent_total") - sent_before;
    eprintln!(
        "A sent {sent_total} bytes for a {size}-byte blob over two attempts (B had {received} at the kill)"
    );
    assert!(
        sent_total <= 1.1 * size as f64,
        "A sent {sent_total} bytes for a {size}-byte blob"
    );
    assert!(sent_total >= size as f64);
}

/// Whether this machine can run the private-mount-namespace test `test` (root, `unshare`,
/// `nsenter`). Under `CI=true` a missing piece fails the test instead of skipping it
/// ([`common::prerequisite`]).
fn can_use_mount_namespaces(test: &str) -> bool {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let tool = |name: &str| {
        std::process::Command::new(name)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    common::prerequisite(
        test,
        root && tool("unshare") && tool("nsenter"),
        "needs root, unshare and nsenter (util-linux)",
    )
}

/// `kith run` for node `name` in a private mount namespace whose blob directory is a tmpfs of
/// `size` (a small disk that fills up), otherwise as [`common::Lab::start`].
fn start_on_small_disk(
    lab: &common::Lab,
    name: &str,
    size: &str,
    extra: &[&str],
) -> common::Daemon {
    use std::io::{BufRead as _, BufReader};
    let home = lab.home(name);
    let blobs = home.join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let log = lab.dir.path().join(format!("{name}.log"));
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let mut args: Vec<String> = [
        "run",
        "--json",
        "--no-mdns",
        "--dht-mode",
        "server",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--bootstrap-file",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.push(lab.bootstrap_file().display().to_string());
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args.push("--home".into());
    args.push(home.display().to_string());
    let script = format!("mount -t tmpfs -o size={size} kith-test-disk \"$0\" && exec \"$@\"",);
    let mut child = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .arg(&blobs)
        .arg(common::KITH)
        .args(&args)
        .env_remove("KITH_HOME")
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::from(log_file))
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(common::PROCESS_TIMEOUT)
        .unwrap_or_else(|e| panic!("{name}: no ready line ({e}); see {}", log.display()));
    common::Daemon {
        name: name.to_owned(),
        child,
        ready: serde_json::from_str(&line).unwrap(),
        home,
        log,
        netns: None,
    }
}

/// B's blob directory is a 6 MiB disk; a 12 MB file fills it: the transfer pauses with a message
/// saying so, B keeps working (a text still arrives), nothing verified is lost, and once the disk
/// grows the transfer resumes by itself and the file is byte-identical.
#[test]
fn a_full_disk_pauses_the_transfer_and_it_resumes_once_space_is_freed() {
    if !can_use_mount_namespaces(
        "a_full_disk_pauses_the_transfer_and_it_resumes_once_space_is_freed",
    ) {
        return;
    }
    let lab = common::Lab::new("kith-files-disk-", LAB_NETWORK);
    let a = lab.start("a", &[]);
    let b = start_on_small_disk(&lab, "b", "6m", &["--bootstrap", &a.tcp_addr()]);
    let (a_id, b_id) = (a.peer_id(), b.peer_id());
    accepted_by(&a, &b);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("too-big-for-b.bin");
    let bytes = noise(12_000_000, 0x2545_f491_4f6c_dd1du64);
    std::fs::write(&path, &bytes).unwrap();
    let sent = a.json(&["send-file", &b_id, path.to_str().unwrap()]);
    let file_id = sent["file_id"].as_str().unwrap().to_owned();
    let entry = |node: &common::Daemon| {
        let files = node.json(&["files"]);
        files
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["file_id"] == file_id.as_str())
            .cloned()
    };
    let paused = poll("B to pause on the full disk", ARRIVAL, || {
        entry(&b).filter(|f| f["state"] == "paused")
    });
    let note = paused["note"].as_str().unwrap();
    assert!(note.contains("is full"), "{note}");
    let kept = paused["received_bytes"].as_u64().unwrap();
    assert!(
        kept > 0 && kept < paused["transfer_size"].as_u64().unwrap(),
        "kept {kept}"
    );
    // B still works: a text arrives and is stored.
    a.json(&["send", &b_id, "still there?"]);
    poll("a text to reach B while its file waits", ARRIVAL, || {
        let (code, out, _) = b.cli(&["history", &a_id, "--json"]);
        (code == 0 && out.contains("still there?")).then_some(())
    });

    // Free space: the tmpfs grows (in B's own mount namespace).
    let grown = std::process::Command::new("nsenter")
        .args([
            "-t",
            &b.child.id().to_string(),
            "-m",
            "mount",
            "-o",
            "remount,size=64m",
        ])
        .arg(b.home.join("blobs"))
        .status()
        .unwrap();
    assert!(grown.success(), "could not grow B's tmpfs");
    // The paused transfer tries again by itself (5 s, then 10 s, ...).
    poll("the paused transfer to resume and finish", ARRIVAL, || {
        entry(&b).filter(|f| f["state"] == "complete")
    });
    let out = dir.path().join("saved.bin");
    let saved = b.json(&["save", &file_id, out.to_str().unwrap()]);
    assert_eq!(saved["size"], bytes.len());
    assert!(std::fs::read(&out).unwrap() == bytes, "saved file differs");
}

/// A 96×64 JPEG: the left half pure blue, the right half pure red.
fn two_colour_jpeg() -> Vec<u8> {
    let img = image::RgbImage::from_fn(96, 64, |x, _| {
        if x < 48 {
            image::Rgb([0, 0, 255])
        } else {
            image::Rgb([255, 0, 0])
        }
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .unwrap();
    out.into_inner()
}

/// The entry for `file_id` in `node`'s `kith files --json`, if listed.
fn listed(node: &common::Daemon, file_id: &str) -> Option<serde_json::Value> {
    let (code, out, _) = node.cli(&["files", "--json"]);
    if code != 0 {
        return None;
    }
    let files: serde_json::Value = serde_json::from_str(&out).ok()?;
    files
        .as_array()?
        .iter()
        .find(|f| f["file_id"] == file_id)
        .cloned()
}

/// Three `kith run` processes in a group; A sends a photo with `--filter sepia` with
/// `kith group send-file`; B and C list it in `kith files --json` until it is `complete`, and
/// `kith save` gives each of them the same bytes as A's own copy: a JPEG, filtered (the blue half
/// is no longer blue).
#[test]
fn a_photo_sent_to_a_group_with_a_filter_reaches_every_member() {
    let lab = common::Lab::new("kith-files-group-", LAB_NETWORK);
    let a = lab.start("a", &[]);
    let b = lab.start("b", &["--bootstrap", &a.tcp_addr()]);
    let c = lab.start(
        "c",
        &["--bootstrap", &a.tcp_addr(), "--bootstrap", &b.tcp_addr()],
    );
    for node in [&a, &b, &c] {
        poll(
            &format!("{} to see the other two", node.name),
            ARRIVAL,
            || (node.json(&["status"])["routing_table_peers"].as_u64()? >= 2).then_some(()),
        );
    }
    let gid = a.json(&["group", "create", "photos"])["group_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for node in [&b, &c] {
        a.json(&["group", "invite", "photos", &node.peer_id()]);
    }
    for node in [&b, &c] {
        poll(&format!("{} to be invited", node.name), ARRIVAL, || {
            node.json(&["group", "invitations"])
                .as_array()?
                .iter()
                .any(|g| g["group_id"] == gid.as_str())
                .then_some(())
        });
        node.json(&["group", "join", &gid]);
    }
    // Everyone has everyone's keys once a text from A reaches both.
    let hello = a.json(&["group", "send", &gid, "photos coming"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for node in [&b, &c] {
        poll(&format!("{} to read A's text", node.name), ARRIVAL, || {
            let history = node.json(&["group", "history", &gid]);
            history
                .as_array()?
                .iter()
                .any(|m| m["id"] == hello.as_str())
                .then_some(())
        });
    }

    let dir = tempfile::tempdir().unwrap();
    let photo = dir.path().join("harbour.jpg");
    std::fs::write(&photo, two_colour_jpeg()).unwrap();
    let sent = a.json(&[
        "group",
        "send-file",
        &gid,
        photo.to_str().unwrap(),
        "--filter",
        "sepia",
        "--caption",
        "the harbour",
    ]);
    for field in ["id", "file_id", "hash", "size", "status"] {
        assert!(
            sent.get(field).is_some(),
            "group send-file lacks {field}: {sent}"
        );
    }
    let file_id = sent["file_id"].as_str().unwrap().to_owned();

    let mine = dir.path().join("a.jpg");
    a.json(&["save", &file_id, mine.to_str().unwrap()]);
    let original = std::fs::read(&mine).unwrap();
    assert!(
        original.starts_with(&[0xFF, 0xD8]),
        "A's copy is not a JPEG"
    );
    for node in [&b, &c] {
        let entry = poll(
            &format!("{} to have the photo complete", node.name),
            ARRIVAL,
            || listed(node, &file_id).filter(|f| f["state"] == "complete"),
        );
        assert_eq!(entry["from"], a.peer_id().as_str(), "{entry}");
        assert_eq!(entry["mime"], "image/jpeg", "{entry}");
        assert_eq!(entry["name"], "harbour.jpg", "{entry}");
        assert_eq!(entry["width"], 96, "{entry}");
        assert_eq!(entry["height"], 64, "{entry}");
        assert_eq!(entry["received_bytes"], entry["transfer_size"], "{entry}");
        assert_eq!(entry["group"], gid.as_str(), "{entry}");
        let out = dir.path().join(format!("{}.jpg", node.name));
        let saved = node.json(&["save", &file_id, out.to_str().unwrap()]);
        assert_eq!(saved["size"], original.len(), "{saved}");
        assert!(
            std::fs::read(&out).unwrap() == original,
            "{}'s saved photo differs from A's",
            node.name
        );
    }
    // Filtered: sepia turns the pure blue half into a brownish grey (red at least blue).
    let img = image::load_from_memory(&original).unwrap().to_rgb8();
    let image::Rgb([r, _, blue]) = *img.get_pixel(10, 32);
    assert!(
        r >= blue,
        "the blue half is still blue ({r}, {blue}): no filter"
    );
}

/// `kith files cancel` on a download half way: the file is `cancelled`, `kith save` says so with
/// exit 4, cancelling again is harmless, an unknown id exits 3, and after a restart the file is
/// still cancelled and not fetched again.
#[test]
fn a_download_cancelled_from_the_cli_stays_cancelled() {
    let lab = common::Lab::new("kith-files-cancel-", LAB_NETWORK);
    let a = lab.start("a", &["--file-upload-rate", "1000000"]);
    let b = lab.start("b", &["--bootstrap", &a.tcp_addr()]);
    let (a_id, b_id) = (a.peer_id(), b.peer_id());
    accepted_by(&a, &b);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slow.bin");
    let bytes = noise(8_000_000, 0x1234_5678_9abc_def1u64);
    std::fs::write(&path, &bytes).unwrap();
    let sent = a.json(&["send-file", &b_id, path.to_str().unwrap()]);
    let file_id = sent["file_id"].as_str().unwrap().to_owned();
    poll("B to receive part of the file", ARRIVAL, || {
        listed(&b, &file_id).filter(|f| {
            f["state"] == "downloading" && f["received_bytes"].as_u64().is_some_and(|n| n > 0)
        })
    });

    let cancelled = b.json(&["files", "cancel", &file_id]);
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    assert_eq!(cancelled["file_id"], file_id.as_str(), "{cancelled}");
    let human = b.ok(&["files", "cancel", &file_id]);
    assert!(human.contains("cancelled"), "{human}");
    let err = b.fails(
        &[
            "save",
            &file_id,
            dir.path().join("out.bin").to_str().unwrap(),
        ],
        4,
    );
    assert!(err.contains("cancelled"), "{err}");
    b.fails(&["files", "cancel", "00000000000000000000000000000000"], 3);
    // `kith files <who>` still lists by person.
    let with_a = b.json(&["files", &a_id]);
    assert_eq!(with_a.as_array().unwrap().len(), 1, "{with_a}");

    let mut b = b;
    b.halt();
    let b = lab.start("b", &["--bootstrap", &a.tcp_addr()]);
    common::holds_for(
        "the cancelled file staying cancelled after a restart",
        Duration::from_secs(3),
        || match listed(&b, &file_id) {
            Some(f) if f["state"] == "cancelled" && f["received_bytes"] == 0 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
}
