//! Helpers shared by the process-level tests: run the real `kith` binary, bounded.
// Each test binary compiles this module on its own and uses a different subset of it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// The binary under test.
pub(crate) const KITH: &str = env!("CARGO_BIN_EXE_kith");
/// Upper bound for one CLI command.
pub(crate) const PROCESS_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits for a child to exit, killing it (and failing the test) after `limit`.
pub(crate) fn wait_bounded(child: &mut Child, limit: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// `kith`, or `ip netns exec <netns> kith` to run it inside a network namespace.
pub(crate) fn kith_command(netns: Option<&str>) -> Command {
    match netns {
        Some(ns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", ns, KITH]);
            command
        }
        None => Command::new(KITH),
    }
}

/// Runs `kith <args> --home <home>` to completion (bounded) and returns (exit code, stdout, stderr).
pub(crate) fn kith(home: &Path, args: &[&str]) -> (i32, String, String) {
    kith_in(None, home, args)
}

/// [`kith`] inside network namespace `netns`, if given.
pub(crate) fn kith_in(netns: Option<&str>, home: &Path, args: &[&str]) -> (i32, String, String) {
    let mut child = kith_command(netns)
        .args(args)
        .arg("--home")
        .arg(home)
        .env_remove("KITH_HOME")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drained while it runs: an output larger than the pipe (a long history) must not block it.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let status = wait_bounded(&mut child, PROCESS_TIMEOUT);
    (
        status.code().unwrap_or(-1),
        stdout.join().unwrap(),
        stderr.join().unwrap(),
    )
}

/// [`kith`] that must exit 0; returns stdout.
pub(crate) fn kith_ok(home: &Path, args: &[&str]) -> String {
    let (code, out, err) = kith(home, args);
    assert_eq!(code, 0, "kith {args:?} failed with {code}: {err}{out}");
    out
}

/// Parses exactly one JSON document.
pub(crate) fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON document ({e}): {stdout}"))
}

/// Polls `check` every 200 ms until it returns `Some`, for at most `limit`; panics naming `what`.
pub(crate) fn poll<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        thread::sleep(Duration::from_millis(200));
    }
}

/// Checks `check` every 200 ms for `window` and fails at the first miss: for what must stay
/// true (no duplicate shows up late), where no event says "it can no longer change".
pub(crate) fn holds_for(
    what: &str,
    window: Duration,
    mut check: impl FnMut() -> Result<(), String>,
) {
    let start = Instant::now();
    loop {
        if let Err(why) = check() {
            panic!("{what} stopped holding after {:?}: {why}", start.elapsed());
        }
        if start.elapsed() >= window {
            return;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Whether a test's prerequisite (a tool, root) is there. Outside CI a missing one skips the
/// test with the reason printed; under `CI=true` (or `1`; CI installs the tools) it fails the
/// test, so a broken CI setup can never pass by not running it.
pub(crate) fn prerequisite(test: &str, ok: bool, reason: &str) -> bool {
    if ok {
        return true;
    }
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !in_ci,
        "{test}: {reason}, and CI={}: CI must provide it",
        std::env::var("CI").unwrap_or_default()
    );
    eprintln!("SKIPPED {test}: {reason}");
    false
}

/// Polls `kith status --json` on `home` until `check` holds, for at most 30 s; the last status.
pub(crate) fn wait_for_status(home: &Path, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let status = json(&kith_ok(home, &["status", "--json"]));
        if check(&status) {
            return status;
        }
        assert!(
            start.elapsed() < PROCESS_TIMEOUT,
            "timed out waiting for {what}; last status {status}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// The private network every process test runs on: its own id and a proof of work of 8 bits, so
/// registering a name takes milliseconds.
pub(crate) const LAB_NETWORK: &str = "[network]\nid = \"lab\"\nname_difficulty = 8\n";

/// A private test network: one temp dir holding the bootstrap file, the homes and the logs.
/// Declare it before the daemons so they die first. `KITH_TEST_KEEP=1` keeps the dir (homes and
/// `<node>.log`) for a post-mortem; `KITH_TEST_LOG` sets the nodes' `RUST_LOG` (default `info`).
pub(crate) struct Lab {
    pub(crate) dir: tempfile::TempDir,
}

impl Lab {
    /// A lab whose bootstrap file holds `network` (usually [`LAB_NETWORK`]).
    pub(crate) fn new(prefix: &str, network: &str) -> Lab {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .disable_cleanup(std::env::var_os("KITH_TEST_KEEP").is_some())
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("bootstrap.toml"), network).unwrap();
        Lab { dir }
    }

    pub(crate) fn bootstrap_file(&self) -> std::path::PathBuf {
        self.dir.path().join("bootstrap.toml")
    }

    pub(crate) fn home(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// Starts (or restarts) node `name` on its home: no mDNS, DHT server, TCP on loopback only
    /// (a stopped node's TCP port refuses dials at once, where a dead QUIC port would stall later
    /// DHT walks for the handshake timeout), the lab's bootstrap file, then `extra`.
    pub(crate) fn start(&self, name: &str, extra: &[&str]) -> Daemon {
        self.start_mode(name, true, extra)
    }

    /// Like [`Lab::start`]; `dht_server` false leaves the DHT mode automatic (the default a user
    /// gets), where a peer must confirm one of our addresses before we answer queries.
    pub(crate) fn start_mode(&self, name: &str, dht_server: bool, extra: &[&str]) -> Daemon {
        let file = self.bootstrap_file();
        let mut args = vec!["--no-mdns"];
        if dht_server {
            args.extend(["--dht-mode", "server"]);
        }
        args.extend([
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--bootstrap-file",
            file.to_str().unwrap(),
        ]);
        args.extend_from_slice(extra);
        let log = self.dir.path().join(format!("{name}.log"));
        Daemon::start(name, &self.home(name), &log, &args)
    }
}

/// A `kith run` process; SIGKILLed on drop if still running, with its log tail printed when the
/// test is failing.
pub(crate) struct Daemon {
    pub(crate) name: String,
    pub(crate) child: Child,
    /// The `kith run --json` ready line.
    pub(crate) ready: Value,
    pub(crate) home: std::path::PathBuf,
    /// Where its stderr goes (appended to, so a restarted node logs after its earlier run).
    pub(crate) log: std::path::PathBuf,
    /// The network namespace it runs in (and its CLI commands too), if any.
    pub(crate) netns: Option<String>,
}

impl Daemon {
    /// `kith run --json <args> --home <home>`, stderr appended to `log`; returns once the ready
    /// line is printed (bounded).
    pub(crate) fn start(name: &str, home: &Path, log: &Path, args: &[&str]) -> Daemon {
        Daemon::start_in(name, home, log, args, None)
    }

    /// [`Daemon::start`] inside network namespace `netns`, if given.
    pub(crate) fn start_in(
        name: &str,
        home: &Path,
        log: &Path,
        args: &[impl AsRef<std::ffi::OsStr>],
        netns: Option<&str>,
    ) -> Daemon {
        use std::io::{BufRead as _, BufReader};
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut child = kith_command(netns)
            .args(["run", "--json"])
            .args(args)
            .arg("--home")
            .arg(home)
            .env_remove("KITH_HOME")
            .env(
                "RUST_LOG",
                std::env::var("KITH_TEST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (line_tx, line_rx) = std::sync::mpsc::channel();
        // Keeps draining stdout after the ready line so the node can never block on a full pipe.
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = line_tx.send(line);
            }
        });
        let mut daemon = Daemon {
            name: name.to_owned(),
            child,
            ready: Value::Null,
            home: home.to_owned(),
            log: log.to_owned(),
            netns: netns.map(str::to_owned),
        };
        let line = line_rx.recv_timeout(PROCESS_TIMEOUT).unwrap_or_else(|e| {
            panic!("{name}: no ready line ({e}); log:\n{}", daemon.log_tail(40))
        });
        daemon.ready = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{name}: ready line is not JSON ({e}): {line}"));
        daemon
    }

    pub(crate) fn peer_id(&self) -> String {
        self.ready["peer_id"].as_str().unwrap().to_owned()
    }

    /// The first direct listen address of the ready line containing `transport` (`/tcp/`,
    /// `/quic-v1`), without /p2p.
    fn listen_addr(&self, transport: &str) -> String {
        self.ready["listen_addrs"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .find(|a| a.contains(transport) && !a.contains("p2p-circuit"))
            .unwrap_or_else(|| {
                panic!(
                    "{}: no {transport} listen address in {}",
                    self.name, self.ready
                )
            })
            .to_owned()
    }

    /// The first TCP listen address (without /p2p).
    pub(crate) fn tcp_listen(&self) -> String {
        self.listen_addr("/tcp/")
    }

    /// Its TCP listen port.
    pub(crate) fn tcp_port(&self) -> u16 {
        let addr = self.tcp_listen();
        addr.rsplit('/').next().unwrap().parse().unwrap()
    }

    /// `<tcp listen addr>/p2p/<peer id>`, for `--bootstrap`.
    pub(crate) fn tcp_addr(&self) -> String {
        format!("{}/p2p/{}", self.tcp_listen(), self.peer_id())
    }

    /// `<quic listen addr>/p2p/<peer id>`.
    pub(crate) fn quic_addr(&self) -> String {
        format!("{}/p2p/{}", self.listen_addr("/quic-v1"), self.peer_id())
    }

    /// A client of its local API, from its `api.json` and `api.token` (for what the CLI cannot
    /// do quickly, such as queueing a thousand messages).
    pub(crate) fn api_client(&self) -> kith_api::ApiClient {
        let info = json(&std::fs::read_to_string(self.home.join("api.json")).unwrap());
        let addr = info["addr"].as_str().unwrap().parse().unwrap();
        let token = kith_api::ApiToken::parse(
            &std::fs::read_to_string(self.home.join("api.token")).unwrap(),
        )
        .unwrap();
        kith_api::ApiClient::new(addr, token).unwrap()
    }

    /// `kith <args>` on this node's home: (exit code, stdout, stderr).
    pub(crate) fn cli(&self, args: &[&str]) -> (i32, String, String) {
        kith_in(self.netns.as_deref(), &self.home, args)
    }

    /// `kith <args>` that must succeed; its stdout.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.cli(args);
        assert_eq!(
            code, 0,
            "{}: kith {args:?} failed with {code}: {err}{out}",
            self.name
        );
        out
    }

    /// `kith <args> --json` that must succeed; its one JSON document.
    pub(crate) fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        json(&self.ok(&args))
    }

    /// `kith <args>` that must fail with exit code `code` and say why on stderr; its stderr.
    pub(crate) fn fails(&self, args: &[&str], code: i32) -> String {
        let (got, out, err) = self.cli(args);
        assert_eq!(
            got, code,
            "{}: kith {args:?} should exit {code}; stdout: {out} stderr: {err}",
            self.name
        );
        assert!(
            !err.trim().is_empty(),
            "{}: kith {args:?} exited {code} without saying why",
            self.name
        );
        err
    }

    /// Its whole log so far.
    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of its log.
    pub(crate) fn log_tail(&self, n: usize) -> String {
        let log = self.log_text();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Polls its log until it contains `needle`, for at most `limit`.
    pub(crate) fn log_contains(&self, needle: &str, limit: Duration) -> bool {
        let start = Instant::now();
        loop {
            if std::fs::read_to_string(&self.log).is_ok_and(|log| log.contains(needle)) {
                return true;
            }
            if start.elapsed() > limit {
                return false;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL, no chance to flush or say goodbye.
    pub(crate) fn kill9(&mut self) {
        self.child.kill().unwrap();
        let status = wait_bounded(&mut self.child, PROCESS_TIMEOUT);
        assert!(!status.success(), "{} survived SIGKILL", self.name);
    }

    /// `kith stop`, then waits for the process to exit cleanly.
    pub(crate) fn stop(mut self) {
        self.halt();
    }

    /// [`Daemon::stop`] keeping the guard (its home and log stay reachable; dropping it later
    /// is harmless).
    pub(crate) fn halt(&mut self) {
        let (code, _, err) = self.cli(&["stop", "--json"]);
        assert_eq!(code, 0, "{}: kith stop failed: {err}", self.name);
        let status = wait_bounded(&mut self.child, PROCESS_TIMEOUT);
        assert!(status.success(), "{} exited with {status:?}", self.name);
    }

    /// Waits (bounded) for the process to exit by itself.
    pub(crate) fn wait(&mut self) -> ExitStatus {
        wait_bounded(&mut self.child, PROCESS_TIMEOUT)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "---- last log lines of {} ({}) ----\n{}",
                self.name,
                self.log.display(),
                self.log_tail(40)
            );
        }
    }
}
