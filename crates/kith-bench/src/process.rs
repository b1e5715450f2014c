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
