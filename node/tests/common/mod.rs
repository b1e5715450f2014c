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

/// Runs `kith <args> --home <home>` to completion (bounded) and returns (exit code, stdout, stderr).
pub(crate) fn kith(home: &Path, args: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(KITH)
        .args(args)
        .arg("--home")
        .arg(home)
        .env_remove("KITH_HOME")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_bounded(&mut child, PROCESS_TIMEOUT);
    let out = child.wait_with_output().unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
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
