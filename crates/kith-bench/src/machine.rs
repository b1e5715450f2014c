//! What the figures were measured on, and small readers of `/proc` the scenarios share.

use std::path::Path;

use serde::Serialize;

/// The machine a report was measured on.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Machine {
    /// Cores this process may use (`std::thread::available_parallelism`).
    pub(crate) cores: usize,
    /// CPU model from `/proc/cpuinfo`.
    pub(crate) cpu: String,
    /// Distribution and kernel.
    pub(crate) os: String,
}

impl Machine {
    /// Reads the current machine.
    pub(crate) fn detect() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| cpu_model(&text))
            .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
        let os = os_name(
            std::fs::read_to_string("/etc/os-release").ok().as_deref(),
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .as_deref(),
        );
        Self { cores, cpu, os }
    }
}

/// The build profile: release figures are the only ones worth comparing.
pub(crate) fn profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

/// Now, as RFC 3339 in UTC, to the second.
pub(crate) fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.replace_nanosecond(0)
        .unwrap_or(now)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// The first `model name` in `/proc/cpuinfo` text (x86), else `Hardware`/`CPU part` (ARM).
pub(crate) fn cpu_model(cpuinfo: &str) -> Option<String> {
    ["model name", "Hardware", "cpu model"]
        .iter()
        .find_map(|key| {
            cpuinfo.lines().find_map(|line| {
                let (k, v) = line.split_once(':')?;
                (k.trim() == *key && !v.trim().is_empty()).then(|| v.trim().to_owned())
            })
        })
}

/// `PRETTY_NAME` from os-release plus the kernel, e.g. `Debian GNU/Linux 13 (trixie), Linux 6.1`.
pub(crate) fn os_name(os_release: Option<&str>, kernel: Option<&str>) -> String {
    let pretty = os_release.and_then(|text| {
        text.lines().find_map(|line| {
            let value = line.strip_prefix("PRETTY_NAME=")?;
            Some(value.trim().trim_matches('"').to_owned())
        })
    });
    let kernel = kernel.map(|k| format!("{} {}", capitalised_os(), k.trim()));
    match (pretty, kernel) {
        (Some(p), Some(k)) => format!("{p}, {k}"),
        (Some(p), None) => p,
        (None, Some(k)) => k,
        (None, None) => capitalised_os(),
    }
}

fn capitalised_os() -> String {
    let os = std::env::consts::OS;
    let mut chars = os.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

/// Resident set size of a process in MiB (`VmRSS` of `/proc/<pid>/status`), one decimal.
pub(crate) fn rss_mb(pid: u32) -> Option<f64> {
    status_kib(format!("/proc/{pid}/status"), "VmRSS:").map(kib_to_mb)
}

/// Resident set size of this process in MiB.
pub(crate) fn own_rss_mb() -> Option<f64> {
    status_kib("/proc/self/status", "VmRSS:").map(kib_to_mb)
}

/// Open file descriptors of this process; `None` when even that directory cannot be opened
/// (which usually means every descriptor is in use).
pub(crate) fn open_fds() -> Option<usize> {
    std::fs::read_dir("/proc/self/fd").ok().map(Iterator::count)
}

fn kib_to_mb(kib: u64) -> f64 {
    crate::report::round_to(kib as f64 / 1024.0, 1)
}

fn status_kib(path: impl AsRef<Path>, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_status_kib(&text, field)
}

/// The kB value of a `/proc/<pid>/status` field such as `VmRSS:   12345 kB`.
pub(crate) fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_model_is_the_first_model_name() {
        let text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n\
                    processor\t: 1\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(cpu_model(text).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(cpu_model("processor: 0\n"), None);
        assert_eq!(
            cpu_model("processor : 0\nHardware : BCM2835\n").as_deref(),
            Some("BCM2835")
        );
    }

    #[test]
    fn os_name_combines_release_and_kernel() {
        let release = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\n";
        let os = os_name(Some(release), Some("6.1.0-1\n"));
        assert!(os.starts_with("Debian GNU/Linux 13 (trixie), "), "{os}");
        assert!(os.ends_with(" 6.1.0-1"), "{os}");
        assert!(!os_name(None, None).is_empty());
    }

    #[test]
    fn status_fields_parse() {
        let status = "Name:\tkith\nVmHWM:\t  20000 kB\nVmRSS:\t   12345 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS:"), Some(12345));
        assert_eq!(parse_status_kib(status, "VmSwap:"), None);
        assert_eq!(kib_to_mb(12345), 12.1);
    }

    #[test]
    fn own_rss_is_readable() {
        assert!(own_rss_mb().is_some_and(|mb| mb > 0.0));
        assert!(open_fds().is_some_and(|n| n > 0));
    }
}
