//! `kith chat` as a person uses it: two real nodes on loopback, the chat UI running in a detached
//! tmux session, keys typed with `send-keys` and the screen read with `capture-pane`.
//!
//! Skipped (with a printed reason) where tmux is not installed, except under `CI=true`, where
//! a missing tmux fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{KITH, LAB_NETWORK, Lab, kith, wait_for_status};

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// Bound of every wait for one process or one condition.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Bound of the wait for a message to arrive: generous, since one that had to be queued is
/// delivered by the retry loop.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// A tmux server of our own (its socket in the test's temp dir), killed on drop.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    /// A tmux server in `lab`'s dir running `kith chat <with> --home <home>` in a 100×30
    /// session "chat". The shell stays after kith exits so its exit code can be read off the
    /// screen (`chat-exit=N`).
    fn chat(lab: &Lab, with: &str, home: &Path) -> Tmux {
        let tmux = Tmux {
            socket: lab.dir.path().join("tmux.sock"),
        };
        let script = format!(
            "{} chat {} --home {}; echo \"chat-exit=$?\"; sleep 600",
            quote(KITH),
            quote(with),
            quote(&home.display().to_string()),
        );
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "chat",
            "-x",
            "100",
            "-y",
            "30",
            &script,
        ]);
        tmux
    }

    fn command(&self) -> Command {
        let mut command = Command::new("tmux");
        command
            .args(["-u", "-f", "/dev/null", "-S"])
            .arg(&self.socket)
            .env_remove("TMUX")
            .env_remove("KITH_HOME")
            .env_remove("RUST_LOG")
            .env("LANG", "C.UTF-8")
            .env("LC_ALL", "C.UTF-8")
            .stdin(Stdio::null());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = self.command().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "tmux {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The visible screen of the session's pane.
    fn screen(&self) -> String {
        let out = self
            .command()
            .args(["capture-pane", "-p", "-t", "chat"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls the screen until `check` holds (bounded); returns it.
    fn wait_for(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if check(&screen) {
                return screen;
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "timed out waiting for {what}; the screen:\n{screen}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self
            .command()
            .arg("kill-server")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Whether tmux can be used here (see [`common::prerequisite`] for what happens if not).
fn tmux_available(test: &str) -> bool {
    let missing = match Command::new("tmux").arg("-V").output() {
        Ok(out) if out.status.success() => return true,
        Ok(out) => format!("`tmux -V` failed: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => format!("tmux is not installed ({e}); `apt-get install tmux` to run it"),
    };
    common::prerequisite(test, false, &missing)
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[test]
fn chat_sends_shows_delivery_and_live_replies_and_quits_cleanly() {
    if !tmux_available("chat_sends_shows_delivery_and_live_replies_and_quits_cleanly") {
        return;
    }
    let lab = Lab::new("kith-chat-", LAB_NETWORK);
    let (a_home, b_home) = (lab.home("a"), lab.home("b"));

    let a = lab.start("a", &[]);
    let b = lab.start("b", &["--bootstrap", &a.tcp_addr()]);
    let (a_id, b_id) = (a.peer_id(), b.peer_id());
    wait_for_status(&b_home, "b to have a in its routing table", |s| {
        s["routing_table_peers"] == 1
    });
    wait_for_status(&a_home, "a to have b in its routing table", |s| {
        s["routing_table_peers"] == 1
    });

    let began = Instant::now();
    let phase = |name: &str| println!("{:>6.1} s  {name}", began.elapsed().as_secs_f64());
    phase("both nodes see each other");
    // Each node publishes its key bundle a few seconds after it starts, to itself and to the
    // other: two records on both means B can encrypt to A at once. Not required (a first send
    // that finds no bundle is queued and retried), but it keeps the test from waiting on retries.
    for home in [&a_home, &b_home] {
        wait_for_status(home, "both key bundles in the DHT", |s| {
            s["dht_records"].as_u64() >= Some(2)
        });
    }
    phase("both key bundles are in the DHT");
    let tmux = Tmux::chat(&lab, &a_id, &b_home);
    let report = |what: &str| {
        format!(
            "{what}\nscreen:\n{}\nnode a log:\n{}\nnode b log:\n{}",
            tmux.screen(),
            a.log_tail(40),
            b.log_tail(40)
        )
    };

    let screen = tmux.wait_for("the chat UI to connect", |s| {
        s.contains("kith chat ·") && s.contains(" live")
    });
    assert!(screen.contains(&a_id), "the title names the peer: {screen}");
    phase("chat UI is live");

    // B types a message; it reaches A (perhaps after a retry: the first send may be queued
    // until A's key bundle is in the DHT) and B's screen marks it delivered (or read).
    tmux.run(&["send-keys", "-t", "chat", "-l", "hello from b ✓ü"]);
    tmux.run(&["send-keys", "-t", "chat", "Enter"]);
    let start = Instant::now();
    loop {
        let (code, out, _) = kith(&a_home, &["history", &b_id, "--json"]);
        if code == 0 && out.contains("hello from b ✓ü") {
            break;
        }
        assert!(
            start.elapsed() < DELIVERY_TIMEOUT,
            "{}",
            report("a never got the message typed in b's chat")
        );
        thread::sleep(Duration::from_millis(250));
    }
    phase("a has the message");
    let start = Instant::now();
    loop {
        let screen = tmux.screen();
        let marked = screen
            .lines()
            .find(|l| l.contains("you: hello from b ✓ü"))
            .is_some_and(|l| l.trim_end().ends_with("ü ✓") || l.trim_end().ends_with("ü ✓✓"));
        if marked {
            break;
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "{}",
            report("b's chat never marked the message delivered")
        );
        thread::sleep(Duration::from_millis(100));
    }

    phase("b shows it delivered");
    // A answers from the command line; B's chat shows it live.
    let (code, out, err) = kith(&a_home, &["send", &b_id, "reply from a"]);
    assert_eq!(code, 0, "send failed: {out} {err}");
    let start = Instant::now();
    while !tmux.screen().contains(": reply from a") {
        assert!(
            start.elapsed() < DELIVERY_TIMEOUT,
            "{}",
            report("b's chat never showed a's reply")
        );
        thread::sleep(Duration::from_millis(100));
    }

    phase("b shows a's reply");
    println!("b's screen:\n{}", tmux.screen().trim_end());
    // Esc quits, restoring the normal screen, with exit code 0.
    tmux.run(&["send-keys", "-t", "chat", "Escape"]);
    let screen = tmux.wait_for("kith chat to exit", |s| s.contains("chat-exit="));
    assert!(screen.contains("chat-exit=0"), "{screen}");
    assert!(
        !screen.contains("kith chat ·"),
        "the alternate screen is left: {screen}"
    );
    phase("chat exited cleanly");
}

/// Polls `check` every 200 ms until it holds, for at most `limit`; `report` explains a timeout.
fn wait_until(limit: Duration, report: impl Fn() -> String, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{}", report());
        thread::sleep(Duration::from_millis(200));
    }
}

/// `kith chat <group title>`: a message another member sends from the command line shows up live,
/// and one typed in the chat reaches the other member.
#[test]
fn group_chat_shows_members_messages_live_and_sends_to_them() {
    if !tmux_available("group_chat_shows_members_messages_live_and_sends_to_them") {
        return;
    }
    let lab = Lab::new("kith-chat-", LAB_NETWORK);
    let (a_home, b_home) = (lab.home("a"), lab.home("b"));
    let a = lab.start("a", &[]);
    let b = lab.start("b", &["--bootstrap", &a.tcp_addr()]);
    let b_id = b.peer_id();
    for home in [&a_home, &b_home] {
        wait_for_status(home, "the other node in the routing table", |s| {
            s["routing_table_peers"] == 1
        });
    }
    let began = Instant::now();
    let phase = |name: &str| println!("{:>6.1} s  {name}", began.elapsed().as_secs_f64());

    // A creates the group and invites B, who joins once the invitation (sent over Olm) arrived.
    let (code, out, err) = kith(&a_home, &["group", "create", "climbing", "--json"]);
    assert_eq!(code, 0, "create failed: {err}");
    let created: Value = serde_json::from_str(out.trim()).unwrap();
    let gid = created["group_id"].as_str().unwrap().to_owned();
    let (code, _, err) = kith(&a_home, &["group", "invite", "climbing", &b_id]);
    assert_eq!(code, 0, "invite failed: {err}");
    let log_tails = || {
        format!(
            "node a log:\n{}\nnode b log:\n{}",
            a.log_tail(40),
            b.log_tail(40)
        )
    };
    wait_until(
        DELIVERY_TIMEOUT,
        || format!("b was never invited\n{}", log_tails()),
        || {
            let (code, out, _) = kith(&b_home, &["group", "invitations", "--json"]);
            code == 0 && out.contains(&gid)
        },
    );
    let (code, _, err) = kith(&b_home, &["group", "join", &gid]);
    assert_eq!(code, 0, "join failed: {err}");
    phase("b joined the group");

    let tmux = Tmux::chat(&lab, "climbing", &b_home);
    let report = |what: &str| format!("{what}\nscreen:\n{}\n{}", tmux.screen(), log_tails());
    let screen = tmux.wait_for("the group chat UI to connect", |s| {
        s.contains("kith chat · group 'climbing'") && s.contains(" live")
    });
    assert!(
        screen.contains(&gid),
        "the title names the group id: {screen}"
    );
    phase("b's group chat is live");

    // A writes from the command line; B's chat shows it live, labelled with A's short id.
    let (code, out, err) = kith(
        &a_home,
        &["group", "send", "climbing", "hello group from a"],
    );
    assert_eq!(code, 0, "group send failed: {out} {err}");
    wait_until(
        DELIVERY_TIMEOUT,
        || report("b's chat never showed a's group message"),
        || {
            tmux.screen()
                .lines()
                .any(|l| l.contains(": hello group from a") && !l.contains("you:"))
        },
    );
    phase("b's chat shows a's message");

    // B types in the chat; A gets it.
    tmux.run(&["send-keys", "-t", "chat", "-l", "hi a, from the tui ✓ü"]);
    tmux.run(&["send-keys", "-t", "chat", "Enter"]);
    wait_until(
        DELIVERY_TIMEOUT,
        || report("a never got the message typed in b's group chat"),
        || {
            let (code, out, _) = kith(&a_home, &["group", "history", &gid, "--json"]);
            code == 0
                && serde_json::from_str::<Value>(out.trim()).is_ok_and(|h| {
                    h.as_array().is_some_and(|ms| {
                        ms.iter().any(|m| {
                            m["text"] == "hi a, from the tui ✓ü" && m["from"] == b_id.as_str()
                        })
                    })
                })
        },
    );
    tmux.wait_for("b's chat to show its own message", |s| {
        s.contains("you: hi a, from the tui ✓ü")
    });
    phase("a has b's message");
    println!("b's screen:\n{}", tmux.screen().trim_end());

    tmux.run(&["send-keys", "-t", "chat", "Escape"]);
    let screen = tmux.wait_for("kith chat to exit", |s| s.contains("chat-exit="));
    assert!(screen.contains("chat-exit=0"), "{screen}");
}
