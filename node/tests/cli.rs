//! The `kith` binary as a user runs it: real processes, real homes in temp dirs, loopback only.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{Daemon, KITH, json, kith, wait_bounded, wait_for_status};

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

const TIMEOUT: Duration = Duration::from_secs(30);

/// `kith run` on `home`: no mDNS, DHT server, TCP and QUIC on loopback, then `extra`; the log
/// goes to `<home>/node.log`.
fn start(home: &Path, extra: &[&str]) -> Daemon {
    let mut args = vec![
        "--no-mdns",
        "--dht-mode",
        "server",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--listen",
        "/ip4/127.0.0.1/udp/0/quic-v1",
    ];
    args.extend_from_slice(extra);
    Daemon::start("node", home, &home.join("node.log"), &args)
}

#[test]
fn init_creates_an_identity_that_id_reports() {
    let home = tempfile::tempdir().unwrap();
    let (code, init_out, _) = kith(home.path(), &["init"]);
    assert_eq!(code, 0);
    let (code, id_out, _) = kith(home.path(), &["id", "--json"]);
    assert_eq!(code, 0);
    let id = json(&id_out);
    assert_eq!(id["peer_id"].as_str().unwrap(), init_out.trim());
    assert!(init_out.trim().starts_with("12D3Koo"));
    // A second init keeps the identity.
    let (_, again, _) = kith(home.path(), &["init"]);
    assert_eq!(again, init_out);
}

#[test]
fn commands_without_a_running_node_exit_5_with_a_hint() {
    let home = tempfile::tempdir().unwrap();
    for cmd in ["status", "peers", "stop"] {
        let (code, out, err) = kith(home.path(), &[cmd, "--json"]);
        assert_eq!(code, 5, "{cmd}: {err}");
        assert!(out.is_empty(), "{cmd} printed {out}");
        assert!(err.contains("no kith node is running"), "{cmd}: {err}");
        assert!(err.contains("kith run"), "{cmd}: {err}");
    }
}

#[test]
fn usage_errors_exit_2_and_version_exits_0() {
    let home = tempfile::tempdir().unwrap();
    assert_eq!(kith(home.path(), &["frobnicate"]).0, 2);
    assert_eq!(kith(home.path(), &["run", "--listen", "not-an-addr"]).0, 2);
    assert_eq!(kith(home.path(), &["run", "--api-addr", "0.0.0.0:0"]).0, 2);
    let (code, out, _) = kith(home.path(), &["--version"]);
    assert_eq!(code, 0);
    assert!(out.contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn a_node_runs_reports_status_refuses_a_second_instance_and_stops_cleanly() {
    let home = tempfile::tempdir().unwrap();
    let mut node = start(home.path(), &[]);
    let peer_id = node.peer_id();
    let db = home.path().join("db");
    let snapshot_at_open = newest_snapshot_lsn(&db);

    let (code, out, _) = kith(home.path(), &["status", "--json"]);
    assert_eq!(code, 0);
    let status = json(&out);
    assert_eq!(status["peer_id"], peer_id.as_str());
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(!status["listen_addrs"].as_array().unwrap().is_empty());
    for field in ["connected_peers", "routing_table_peers", "nat"] {
        assert!(
            status.get(field).is_some(),
            "status lacks {field}: {status}"
        );
    }
    let (code, human, _) = kith(home.path(), &["status"]);
    assert_eq!(code, 0);
    assert!(human.contains(&peer_id));

    // A second node on the same home is refused in words, and the first keeps running.
    let (code, _, err) = kith(
        home.path(),
        &["run", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("in use by another kith process"), "{err}");
    assert_eq!(kith(home.path(), &["status"]).0, 0);

    let (code, out, err) = kith(home.path(), &["stop", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["stopped"], true);
    assert!(node.wait().success());
    assert!(
        !home.path().join("api.json").exists(),
        "api.json is removed on a clean exit"
    );
    // The clean stop checkpointed the store: sled writes its page-table snapshot only when it
    // opens a database, so without the checkpoint the newest one would still be the one from
    // this run's open, and the next start would replay the run's whole log.
    let snapshot_at_stop = newest_snapshot_lsn(&db);
    assert!(
        snapshot_at_stop > snapshot_at_open,
        "no snapshot after the stop: newest at log position {snapshot_at_stop}, at open {snapshot_at_open}"
    );
    assert_eq!(kith(home.path(), &["status"]).0, 5);

    // Same identity after a restart.
    let again = start(home.path(), &[]);
    assert_eq!(again.peer_id(), peer_id);
}

/// The log position covered by the newest page-table snapshot sled has written in `db` (its
/// file name: `snap.<lsn in hex>`), 0 if none.
fn newest_snapshot_lsn(db: &Path) -> u64 {
    std::fs::read_dir(db)
        .map(|entries| {
            entries
                .filter_map(|e| {
                    let name = e.ok()?.file_name().into_string().ok()?;
                    u64::from_str_radix(name.strip_prefix("snap.")?, 16).ok()
                })
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

#[test]
fn sigterm_stops_the_node_with_exit_0() {
    let home = tempfile::tempdir().unwrap();
    let mut node = start(home.path(), &[]);
    let pid = node.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = node.wait();
    assert!(status.success(), "exit status {status:?}");
    assert!(node.log_contains("stopped cleanly", TIMEOUT));
}

/// A service manager may stop the node the moment it looks up (api.json written, before the ready
/// line): that SIGTERM must still get the clean stop, not the default kill.
#[test]
fn sigterm_as_soon_as_api_json_appears_still_stops_cleanly() {
    let home = tempfile::tempdir().unwrap();
    let log = home.path().join("node.log");
    let mut child = common::kith_command(None)
        .args([
            "run",
            "--json",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .arg("--home")
        .arg(home.path())
        .env_remove("KITH_HOME")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let api_json = home.path().join("api.json");
    // Polled tightly (not with `poll`'s 200 ms): the point is to hit the first moment.
    let started = std::time::Instant::now();
    while !api_json.exists() {
        assert!(
            started.elapsed() < TIMEOUT,
            "no api.json within {TIMEOUT:?}"
        );
        thread::sleep(Duration::from_millis(1));
    }
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = wait_bounded(&mut child, TIMEOUT);
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "exit status {status:?}; log:\n{log_text}");
    assert!(log_text.contains("stopped cleanly"), "log:\n{log_text}");
    assert!(!api_json.exists(), "a clean stop removes api.json");
}

#[test]
fn a_stale_api_json_after_a_crash_means_no_node() {
    let home = tempfile::tempdir().unwrap();
    let mut node = start(home.path(), &[]);
    node.child.kill().unwrap();
    node.wait();
    assert!(home.path().join("api.json").exists());
    let (code, _, err) = kith(home.path(), &["status"]);
    assert_eq!(code, 5, "{err}");
    // And the home is usable again: sled's lock died with the process.
    let _again = start(home.path(), &[]);
    assert_eq!(kith(home.path(), &["status"]).0, 0);
}

#[test]
fn two_nodes_meet_through_a_bootstrap_flag_and_list_each_other() {
    let a_home = tempfile::tempdir().unwrap();
    let b_home = tempfile::tempdir().unwrap();
    let a = start(a_home.path(), &[]);
    let addr = a.tcp_addr();
    let b = start(
        b_home.path(),
        &["--bootstrap", &addr, "--bootstrap", "garbage"],
    );
    let status = wait_for_status(b_home.path(), "b to have a in its routing table", |s| {
        s["routing_table_peers"] == 1 && s["connected_peers"] == 1
    });
    assert_eq!(status["dht_server"], true);
    wait_for_status(a_home.path(), "a to have b in its routing table", |s| {
        s["routing_table_peers"] == 1
    });
    let (code, out, _) = kith(b_home.path(), &["peers", "--json"]);
    assert_eq!(code, 0);
    let peers = json(&out);
    let peers = peers.as_array().unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0]["peer_id"], a.peer_id().as_str());
    assert!(
        peers[0]["protocols"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "/kith/kad/1.0.0")
    );
    assert!(
        b.log_contains("'garbage'", TIMEOUT),
        "the bad entry is named in a warning"
    );
}

/// Issue 13, first run: the human ready text names the peer id, the home, how peers will be
/// found (here: nothing, with the fix) and how to open the web app; `--json` carries the same.
#[test]
fn the_first_run_says_who_where_and_how_peers_will_be_found() {
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(KITH)
        .args([
            "run",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--home",
        ])
        .arg(home.path())
        .env_remove("KITH_HOME")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (line_tx, line_rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut text = String::new();
    while !text.contains("Stop it with") {
        let line = line_rx
            .recv_timeout(TIMEOUT)
            .unwrap_or_else(|_| panic!("kith run stopped talking; so far:\n{text}"));
        text.push_str(&line);
        text.push('\n');
    }
    let (code, id, _) = kith(home.path(), &["id", "--json"]);
    assert_eq!(code, 0);
    let peer_id = json(&id)["peer_id"].as_str().unwrap().to_owned();
    assert!(text.contains(&peer_id), "{text}");
    assert!(
        text.contains(&format!("home: {}", home.path().display())),
        "{text}"
    );
    assert!(
        text.contains("finding peers: none: add one with --bootstrap or bootstrap.toml"),
        "{text}"
    );
    assert!(text.contains("kith open"), "{text}");
    assert!(text.contains("local API on http://127.0.0.1:"), "{text}");
    let (code, _, err) = kith(home.path(), &["stop"]);
    assert_eq!(code, 0, "{err}");
    assert!(wait_bounded(&mut child, TIMEOUT).success());

    // The JSON ready line says the same, with mDNS on and one bootstrap entry.
    let entry = format!("/ip4/127.0.0.1/tcp/9/p2p/{peer_id}");
    let other = tempfile::tempdir().unwrap();
    let node = start(other.path(), &["--bootstrap", &entry]);
    assert_eq!(node.ready["bootstrap"], serde_json::json!([entry]));
    assert_eq!(node.ready["mdns"], false);
    assert_eq!(
        node.ready["discovery"], "1 bootstrap entry",
        "{}",
        node.ready
    );
    assert_eq!(kith(other.path(), &["stop"]).0, 0);
}

/// Issue 12: `kith history` of someone who never wrote invents no conversation (reading is a
/// `GET` with no side effects, and marking read a conversation that does not exist creates
/// nothing), and `--limit` above the API's page (1,000) pages back with `before` instead of
/// quietly showing the newest 1,000.
#[test]
fn history_of_a_stranger_invents_nothing_and_long_histories_page_past_the_api_cap() {
    let home = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let (code, stranger, _) = kith(other.path(), &["init"]);
    assert_eq!(code, 0);
    let stranger = stranger.trim().to_owned();
    let node = start(home.path(), &[]);

    let shown = node.ok(&["history", &stranger]);
    assert!(shown.contains("no messages"), "{shown}");
    assert_eq!(node.json(&["history", &stranger]), serde_json::json!([]));
    for list in ["requests", "inbox"] {
        assert_eq!(
            node.json(&[list]),
            serde_json::json!([]),
            "kith {list} after reading a stranger's history"
        );
    }

    // 1,005 messages queued for the stranger (nobody can deliver them; they stay in history).
    const SENT: usize = 1005;
    let client = node.api_client();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for chunk in (0..SENT).collect::<Vec<_>>().chunks(64) {
            let texts: Vec<String> = chunk.iter().map(|i| format!("m{i:04}")).collect();
            let sends = texts.iter().map(|t| client.send_message(&stranger, t));
            for sent in futures::future::join_all(sends).await {
                sent.unwrap();
            }
        }
    });

    let texts = |limit: &str| -> Vec<String> {
        node.json(&["history", &stranger, "--limit", limit])
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["text"].as_str().unwrap().to_owned())
            .collect()
    };
    // Sent 64 at a time, so the id order (the history's order) is not the numbering.
    let full = texts("1000000");
    let mut sorted = full.clone();
    sorted.sort();
    let numbered: Vec<String> = (0..SENT).map(|i| format!("m{i:04}")).collect();
    assert_eq!(
        sorted, numbered,
        "--limit above the total shows every message once"
    );
    assert_eq!(
        texts("1003"),
        full[SENT - 1003..],
        "--limit 1003 is the newest 1003"
    );
    assert_eq!(texts("2"), full[SENT - 2..]);
    // Paging by hand: the two before the second newest.
    let newest = node.json(&["history", &stranger, "--limit", "2"]);
    let before = newest[0]["id"].as_str().unwrap();
    let older = node.json(&["history", &stranger, "--limit", "2", "--before", before]);
    let older: Vec<&str> = older
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(older, full[SENT - 4..SENT - 2]);
    node.stop();
}
