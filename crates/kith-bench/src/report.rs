//! The report: the JSON document scripts read and the table people read.
//!
//! The JSON shape is a contract (issue #8):
//!
//! ```text
//! {"machine": {"cores", "cpu", "os"}, "profile", "date", "quick",
//!  "scenarios": [{"name", "unit", "kith", "baseline", "ratio", "available", "notes"}]}
//! ```
//!
//! `kith`, `baseline` and `ratio` are [`Figures`]: a flat object of named numbers
//! (`{"p50", "p90", "p99"}`, `{"rate"}`, `{"rss_mb"}`, ...) or `null`.

use std::fmt::Write as _;

use serde::{Serialize, Serializer, ser::SerializeMap as _};

use crate::machine::Machine;

/// Named numbers of one measurement, kept in the order they were added so the JSON reads
/// `p50, p90, p99` and not alphabetically.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Figures(Vec<(&'static str, f64)>);

impl Figures {
    /// Adds a figure. Non-finite values are skipped: JSON has no NaN.
    pub(crate) fn with(mut self, name: &'static str, value: f64) -> Self {
        if value.is_finite() {
            self.0.push((name, value));
        }
        self
    }

    /// p50, p90 and p99 of `samples` (nearest rank), or `None` without samples.
    pub(crate) fn latency(samples: &[u64]) -> Option<Self> {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let figure = |p| percentile(&sorted, p).map(|v| v as f64);
        Some(
            Self::default()
                .with("p50", figure(50.0)?)
                .with("p90", figure(90.0)?)
                .with("p99", figure(99.0)?),
        )
    }

    /// The value of one figure.
    pub(crate) fn get(&self, name: &str) -> Option<f64> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    /// `kith / baseline` for every figure both have and the baseline is not zero, rounded to
    /// three decimals; `None` when no figure can be compared.
    pub(crate) fn ratio(kith: &Self, baseline: &Self) -> Option<Self> {
        let mut ratio = Self::default();
        for (name, k) in &kith.0 {
            if let Some(b) = baseline.get(name)
                && b != 0.0
            {
                ratio = ratio.with(name, round_to(k / b, 3));
            }
        }
        (!ratio.0.is_empty()).then_some(ratio)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Figures {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// A duration in whole microseconds, the unit of most samples (saturating).
pub(crate) fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Nearest-rank percentile of already sorted samples: the smallest sample with at least `p`
/// percent of the samples at or below it. `None` for no samples.
pub(crate) fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    sorted.get(index).copied()
}

/// Rounds to `decimals` decimal places.
pub(crate) fn round_to(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Scenario {
    /// Stable name, e.g. `dht.closest`; scripts key on it.
    pub(crate) name: &'static str,
    /// Unit of the headline figures: `us`, `msg/s`, `MB`, `nodes`.
    pub(crate) unit: &'static str,
    /// kith's figures; `null` when not measured.
    pub(crate) kith: Option<Figures>,
    /// The baseline's figures, measured in the same run; `null` when there is none.
    pub(crate) baseline: Option<Figures>,
    /// `kith / baseline` per figure; `null` without both.
    pub(crate) ratio: Option<Figures>,
    /// False when kith could not be measured (feature missing, binary not built, failure).
    pub(crate) available: bool,
    /// What was measured and how, or why it was not.
    pub(crate) notes: String,
}

impl Scenario {
    /// A measured scenario; the ratio is computed here, so it always matches the figures.
    pub(crate) fn measured(
        name: &'static str,
        unit: &'static str,
        kith: Option<Figures>,
        baseline: Option<Figures>,
        notes: impl Into<String>,
    ) -> Self {
        let kith = kith.filter(|f| !f.is_empty());
        let baseline = baseline.filter(|f| !f.is_empty());
        let ratio = match (&kith, &baseline) {
            (Some(k), Some(b)) => Figures::ratio(k, b),
            _ => None,
        };
        Self {
            name,
            unit,
            available: kith.is_some(),
            kith,
            baseline,
            ratio,
            notes: notes.into(),
        }
    }

    /// A scenario that could not run; `notes` say why. Never carries a figure.
    pub(crate) fn unavailable(
        name: &'static str,
        unit: &'static str,
        notes: impl Into<String>,
    ) -> Self {
        Self::measured(name, unit, None, None, notes)
    }
}

/// The whole document.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    /// Where it ran.
    pub(crate) machine: Machine,
    /// `release` or `debug`: debug figures are not comparable with release ones.
    pub(crate) profile: &'static str,
    /// When the run started, RFC 3339 in UTC.
    pub(crate) date: String,
    /// Whether this was the `--quick` smoke mode (tiny counts; figures are not meaningful).
    pub(crate) quick: bool,
    /// One entry per scenario, in catalogue order.
    pub(crate) scenarios: Vec<Scenario>,
}

impl Report {
    /// The JSON document, on one line.
    pub(crate) fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string(self)
    }

    /// A plain-text table with the notes underneath, for people: one row per figure.
    pub(crate) fn table(&self) -> String {
        let header = ["scenario", "figure", "kith", "baseline", "kith/baseline"];
        let mut rows: Vec<[String; 5]> = Vec::new();
        for s in &self.scenarios {
            let title = format!("{} ({})", s.name, s.unit);
            let Some(kith) = s.kith.as_ref().filter(|_| s.available) else {
                rows.push([
                    title,
                    "unavailable".to_owned(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ]);
                continue;
            };
            let mut names: Vec<&'static str> = kith.0.iter().map(|(n, _)| *n).collect();
            if let Some(baseline) = &s.baseline {
                for (name, _) in &baseline.0 {
                    if !names.contains(name) {
                        names.push(name);
                    }
                }
            }
            for (i, name) in names.iter().enumerate() {
                let cell = |f: &Option<Figures>| {
                    f.as_ref()
                        .and_then(|f| f.get(name))
                        .map_or("-".to_owned(), compact)
                };
                rows.push([
                    if i == 0 { title.clone() } else { String::new() },
                    (*name).to_owned(),
                    compact_or_dash(kith.get(name)),
                    cell(&s.baseline),
                    cell(&s.ratio),
                ]);
            }
        }
        let mut widths = header.map(str::len);
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let _ = writeln!(
            out,
            "kith-bench {} build, {}, {} cores, {}, {}{}",
            self.profile,
            self.machine.cpu,
            self.machine.cores,
            self.machine.os,
            self.date,
            if self.quick {
                " (--quick: smoke counts, figures not meaningful)"
            } else {
                ""
            }
        );
        let line = |out: &mut String, cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            let _ = writeln!(out, "{}", padded.join("  ").trim_end());
        };
        line(&mut out, &header.map(str::to_owned));
        line(&mut out, &widths.map(|w| "-".repeat(w)));
        for row in &rows {
            line(&mut out, row);
        }
        out.push('\n');
        for s in &self.scenarios {
            if !s.notes.is_empty() {
                let _ = writeln!(out, "{}: {}", s.name, s.notes);
            }
        }
        out
    }
}

fn compact_or_dash(value: Option<f64>) -> String {
    value.map_or("-".to_owned(), compact)
}

/// A number as people read it: integers without decimals, small values with a few.
fn compact(value: f64) -> String {
    if value.fract() == 0.0 || value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

#[cfg(test)]
mod tests;
