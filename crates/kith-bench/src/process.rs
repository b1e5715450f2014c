//! Child processes the scenarios start (the `kith` binary, a raw node, the scale worker): their
//! stdout arrives line by line on a bounded channel, and a child still running when its
//! [`ChildProcess`] drops is killed, so no scenario leaves a process behind.

use std::{
    io::BufRead as _,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc::{Receiver, sync_channel},
    time::{Duration, Instant},
};

use anyhow::Context as _;

/// A running child with its stdout read by a helper thread.
pub(crate) struct ChildProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    what: String,
}

impl ChildProcess {
    /// Spawns `command` with stdout piped; stdin is piped too (closing it is how raw nodes are
    /// stopped). `what` names the child in errors.
    pub(crate) fn spawn(mut command: Command, what: impl Into<String>) -> anyhow::Result<Self> {
        let what = what.into();
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .with_context(|| format!("{what} has no stdout"))?;
        let (tx, lines) = sync_channel(256);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            stdin,
            lines,
            what,
        })
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next stdout line, waiting at most `timeout`; `None` at EOF or timeout.
    pub(crate) fn next_line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// The next stdout line, or an error naming the child.
    pub(crate) fn expect_line(&self, timeout: Duration) -> anyhow::Result<String> {
        self.next_line(timeout).with_context(|| {
            format!(
                "{} printed nothing within {} s",
                self.what,
                timeout.as_secs()
            )
        })
    }

    /// Writes one line to the child's stdin (a command for a `__raw-rr` process).
    pub(crate) fn send_line(&mut self, line: &str) -> anyhow::Result<()> {
        use std::io::Write as _;
        let stdin = self
            .stdin
            .as_mut()
            .with_context(|| format!("{}'s stdin is closed", self.what))?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("cannot write to {}", self.what))
    }

    /// Closes the child's stdin.
    pub(crate) fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits up to `timeout` for the child to exit by itself; kills it after that. Returns true
    /// when it exited by itself.
    pub(crate) fn wait_or_kill(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) => return true,
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(_) => break,
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a short command to completion, bounded by `timeout` (killed after it).
pub(crate) fn run_bounded(mut command: Command, timeout: Duration) -> bool {
    let Ok(mut child) = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// CPU time a process used so far (user + system, every thread, living or exited), in seconds,
/// from `/proc/<pid>/stat`; `None` when the process is gone or the file does not parse.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = parse_stat_cpu_ticks(&stat)?;
    Some(ticks as f64 / clock_ticks_per_second() as f64)
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name (field 2) is
/// in parentheses and may hold spaces, so fields are counted after its closing parenthesis.
pub(crate) fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: state (3), ppid (4), ... utime is field 14, the 12th after the name.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The kernel's clock ticks per second for `/proc` CPU times (`getconf CLK_TCK`; 100 on every
/// common Linux build, used when `getconf` is missing).
pub(crate) fn clock_ticks_per_second() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}

/// A `kith run` process on a fresh home under a scenario's directory, with a client of its
/// local API: loopback TCP only, mDNS off, DHT server, a bootstrap file with no entries (network
/// id `bench`), optionally one `--bootstrap` peer. Stopped with `kith stop` (killed after 15 s)
/// by [`KithRun::stop`], killed if dropped.
pub(crate) struct KithRun {
    child: ChildProcess,
    kith: std::path::PathBuf,
    home: std::path::PathBuf,
    /// Its peer id.
    pub(crate) peer_id: String,
    /// Its first listen address, ending in `/p2p/<peer id>`.
    pub(crate) addr: String,
    api_addr: std::net::SocketAddr,
    token: kith_api::ApiToken,
}

impl KithRun {
    /// Starts a receiver and a sender bootstrapped from it under a fresh temporary directory
    /// (named `prefix…`), runs `drive(sender, receiver)` on a runtime of its own, and stops both.
    pub(crate) fn with_pair<T>(
        kith: &std::path::Path,
        prefix: &str,
        drive: impl AsyncFnOnce(&KithRun, &KithRun) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .context("cannot create a temporary directory")?;
        let receiver = KithRun::start(kith, dir.path(), "receiver", None)?;
        let sender = KithRun::start(kith, dir.path(), "sender", Some(&receiver.addr))?;
        let result = crate::scenarios::dm::runtime()?.block_on(drive(&sender, &receiver));
        sender.stop();
        receiver.stop();
        result
    }

    /// Starts `kith` (the binary) as `label` under `dir`, bootstrapping from `bootstrap`; returns
    /// once it printed its ready line.
    pub(crate) fn start(
        kith: &std::path::Path,
        dir: &std::path::Path,
        label: &str,
        bootstrap: Option<&str>,
    ) -> anyhow::Result<Self> {
        let home = dir.join(label);
        let bootstrap_file = dir.join("bootstrap.toml");
        std::fs::write(&bootstrap_file, "[network]\nid = \"bench\"\n")
            .context("cannot write the bootstrap file")?;
        let log = std::fs::File::create(dir.join(format!("{label}.log")))
            .map_or_else(|_| Stdio::null(), Stdio::from);
        let mut command = Command::new(kith);
        command
            .arg("run")
            .arg("--home")
            .arg(&home)
            .args(["--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"])
            .args(["--dht-mode", "server"])
            // The message path is measured, not the per-peer flood limit (200/s by default),
            // which a steady 1,000/s from one peer would hit by design.
            .args(["--peer-message-rate", "100000"])
            .arg("--bootstrap-file")
            .arg(&bootstrap_file)
            .arg("--json")
            .stderr(log);
        if let Some(addr) = bootstrap {
            command.args(["--bootstrap", addr]);
        }
        let child = ChildProcess::spawn(command, format!("kith run ({label})"))?;
        let line = child
            .expect_line(Duration::from_secs(60))
            .with_context(|| {
                format!(
                    "kith {label} did not start; see its log in {}",
                    dir.display()
                )
            })?;
        let ready: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("kith {label} printed {line:?}, not its JSON ready line"))?;
        let field = |name: &str| {
            ready
                .get(name)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
                .with_context(|| format!("kith {label}'s ready line has no {name}: {line}"))
        };
        let peer_id = field("peer_id")?;
        let api_addr = field("api_addr")?
            .parse()
            .context("kith's api_addr is not a socket address")?;
        let listen = ready
            .get("listen_addrs")
            .and_then(serde_json::Value::as_array)
            .and_then(|a| a.first())
            .and_then(serde_json::Value::as_str)
            .with_context(|| format!("kith {label} listens nowhere: {line}"))?;
        let addr = if listen.contains("/p2p/") {
            listen.to_owned()
        } else {
            format!("{listen}/p2p/{peer_id}")
        };
        let token_text = std::fs::read_to_string(home.join("api.token"))
            .with_context(|| format!("cannot read {label}'s api.token"))?;
        let token = kith_api::ApiToken::parse(token_text.trim())
            .with_context(|| format!("{label}'s api.token is malformed"))?;
        Ok(Self {
            child,
            kith: kith.to_owned(),
            home,
            peer_id,
            addr,
            api_addr,
            token,
        })
    }

    /// A new API client with its own connection pool (one per simulated user).
    pub(crate) fn client(&self) -> anyhow::Result<kith_api::ApiClient> {
        kith_api::ApiClient::new(self.api_addr, self.token.clone())
            .context("cannot build an API client")
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// `kith stop`, then wait; killed after 15 s. True when it stopped by itself.
    pub(crate) fn stop(mut self) -> bool {
        crate::scenarios::footprint::stop_kith(&self.kith, &self.home, &mut self.child)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_ticks_skip_a_name_with_spaces() {
        let stat = "4242 (tokio runtime) S 1 4242 4242 0 -1 4194560 1500 0 0 0 377 23 0 0 20 0 9 0 \
                    12345 1000000 500 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(400));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn own_cpu_time_is_readable_and_grows() {
        let pid = std::process::id();
        let before = cpu_seconds(pid).unwrap();
        // Spin until the counter moves (one clock tick), bounded in time: it must move.
        let started = Instant::now();
        let mut x = 0u64;
        let mut now = before;
        while now <= before && started.elapsed() < Duration::from_secs(20) {
            for _ in 0..100_000 {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            }
            now = cpu_seconds(pid).unwrap();
        }
        std::hint::black_box(x);
        assert!(now > before, "CPU time did not grow in 20 s of spinning");
    }
}
