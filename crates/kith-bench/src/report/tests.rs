use serde_json::{Value, json};

use super::*;

#[track_caller]
fn check_percentile(samples: &[u64], p: f64, expect: Option<u64>) {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    assert_eq!(percentile(&sorted, p), expect, "p{p} of {samples:?}");
}

#[test]
fn percentile_uses_nearest_rank() {
    let hundred: Vec<u64> = (1..=100).collect();
    check_percentile(&hundred, 50.0, Some(50));
    check_percentile(&hundred, 90.0, Some(90));
    check_percentile(&hundred, 99.0, Some(99));
    check_percentile(&hundred, 100.0, Some(100));
    check_percentile(&[7, 1, 4], 50.0, Some(4));
    check_percentile(&[7, 1, 4], 99.0, Some(7));
    check_percentile(&[3, 9], 50.0, Some(3));
}

#[test]
fn percentile_edges() {
    check_percentile(&[], 50.0, None);
    check_percentile(&[42], 0.0, Some(42));
    check_percentile(&[42], 50.0, Some(42));
    check_percentile(&[42], 99.0, Some(42));
    check_percentile(&[1, 2, 3, 4], 0.0, Some(1));
}

#[test]
fn latency_figures_are_p50_p90_p99_in_order() {
    let samples: Vec<u64> = (1..=1000).rev().collect();
    let figures = Figures::latency(&samples).unwrap();
    assert_eq!(
        serde_json::to_string(&figures).unwrap(),
        r#"{"p50":500.0,"p90":900.0,"p99":990.0}"#
    );
    assert_eq!(Figures::latency(&[]), None);
}

#[test]
fn ratio_is_kith_over_baseline_per_shared_field() {
    let kith = Figures::default()
        .with("p50", 300.0)
        .with("p99", 1000.0)
        .with("extra", 1.0);
    let baseline = Figures::default()
        .with("p50", 200.0)
        .with("p99", 3000.0)
        .with("other", 5.0);
    let ratio = Figures::ratio(&kith, &baseline).unwrap();
    assert_eq!(ratio.get("p50"), Some(1.5));
    assert_eq!(ratio.get("p99"), Some(0.333));
    assert_eq!(ratio.get("extra"), None);
    assert_eq!(ratio.get("other"), None);
}

#[test]
fn ratio_skips_zero_baselines_and_is_null_when_nothing_compares() {
    let kith = Figures::default().with("rate", 10.0);
    let zero = Figures::default().with("rate", 0.0);
    assert_eq!(Figures::ratio(&kith, &zero), None);
    let unrelated = Figures::default().with("rss_mb", 3.0);
    assert_eq!(Figures::ratio(&kith, &unrelated), None);
}

#[test]
fn non_finite_figures_are_dropped() {
    let figures = Figures::default()
        .with("a", f64::NAN)
        .with("b", f64::INFINITY)
        .with("c", 1.0);
    assert_eq!(serde_json::to_string(&figures).unwrap(), r#"{"c":1.0}"#);
}

fn sample_report() -> Report {
    Report {
        machine: Machine {
            cores: 2,
            cpu: "Test CPU".to_owned(),
            os: "Linux".to_owned(),
        },
        profile: "release",
        date: "2026-01-02T03:04:05Z".to_owned(),
        quick: true,
        scenarios: vec![
            Scenario::measured(
                "dht.closest",
                "us",
                Figures::latency(&[100, 200, 300]),
                Figures::latency(&[50, 100, 150]),
                "n=3",
            ),
            Scenario::measured(
                "footprint.idle",
                "MB",
                Some(Figures::default().with("rss_mb", 20.0)),
                None,
                "no baseline",
            ),
            Scenario::unavailable("dm.latency", "us", "not built yet"),
        ],
    }
}

#[test]
fn json_has_the_contract_shape() {
    let doc: Value = serde_json::from_str(&sample_report().to_json().unwrap()).unwrap();
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&doc),
        ["date", "machine", "profile", "quick", "scenarios"]
    );
    assert_eq!(
        doc["machine"],
        json!({"cores": 2, "cpu": "Test CPU", "os": "Linux"})
    );
    assert_eq!(doc["profile"], "release");
    assert_eq!(doc["quick"], true);
    let scenarios = doc["scenarios"].as_array().unwrap();
    for s in scenarios {
        assert_eq!(
            keys(s),
            [
                "available",
                "baseline",
                "kith",
                "name",
                "notes",
                "ratio",
                "unit"
            ]
        );
    }
    assert_eq!(
        scenarios[0],
        json!({
            "name": "dht.closest", "unit": "us",
            "kith": {"p50": 200.0, "p90": 300.0, "p99": 300.0},
            "baseline": {"p50": 100.0, "p90": 150.0, "p99": 150.0},
            "ratio": {"p50": 2.0, "p90": 2.0, "p99": 2.0},
            "available": true, "notes": "n=3"
        })
    );
    assert_eq!(scenarios[1]["baseline"], Value::Null);
    assert_eq!(scenarios[1]["ratio"], Value::Null);
    assert_eq!(scenarios[1]["kith"], json!({"rss_mb": 20.0}));
    assert_eq!(
        scenarios[2],
        json!({
            "name": "dm.latency", "unit": "us", "kith": null, "baseline": null,
            "ratio": null, "available": false, "notes": "not built yet"
        })
    );
}

#[test]
fn unavailable_never_carries_figures() {
    let s = Scenario::measured("x", "us", None, Figures::latency(&[1]), "");
    assert!(!s.available);
    assert_eq!(s.ratio, None);
}

#[test]
fn table_lists_every_scenario_and_its_notes() {
    let table = sample_report().table();
    assert!(table.contains("dht.closest"), "{table}");
    let p50 = table
        .lines()
        .find(|l| l.starts_with("dht.closest (us)"))
        .unwrap();
    let cells: Vec<&str> = p50.split_whitespace().collect();
    assert_eq!(cells, ["dht.closest", "(us)", "p50", "200", "100", "2"]);
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["p99", "300", "150", "2"])
    );
    assert!(table.contains("unavailable"), "{table}");
    assert!(table.contains("dm.latency: not built yet"), "{table}");
}

#[test]
fn compact_numbers() {
    assert_eq!(compact(1234.0), "1234");
    assert_eq!(compact(12.345), "12.35");
    assert_eq!(compact(0.1234), "0.123");
    assert_eq!(compact(150.6), "151");
}
