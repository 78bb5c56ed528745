//! `settle bench` end to end: it starts its own local cluster, runs closed-loop, batched and
//! open-loop workloads, and writes a report other programs can read, with a passing
//! conservation check of its own accounts.

use serde_json::Value;
use std::process::Command;

fn bench(args: &[&str], json: &std::path::Path) -> (bool, String, Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_settle"))
        .arg("bench")
        .args(["--warmup", "1s", "--duration", "2s", "--accounts", "40", "--shards", "8", "--seed", "7"])
        .args(args)
        .arg("--json")
        .arg(json)
        .output()
        .expect("run settle bench");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let report = std::fs::read(json).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or(Value::Null);
    (output.status.success(), format!("{stdout}\n{}", String::from_utf8_lossy(&output.stderr)), report)
}

fn assert_report(report: &Value, output: &str) {
    for field in ["transfers_per_sec", "requests_per_sec"] {
        assert!(report[field].as_f64().is_some_and(|value| value > 0.0), "{field} in {report}\n{output}");
    }
    for quantile in ["p50", "p90", "p99", "p999", "max"] {
        assert!(report["latency_ms"][quantile].as_f64().is_some_and(|value| value > 0.0), "latency {quantile}: {report}");
    }
    assert!(report["errors"].is_object(), "{report}");
    assert_eq!(report["conserved"], true, "{report}\n{output}");
    assert!(report["options"]["concurrency"].is_number(), "{report}");
}

/// Closed loop of single transfers, then batches across shards, then an open loop at a fixed
/// rate with --compare: each run reports its numbers and its accounts add up.
#[test]
fn bench_reports_throughput_latency_errors_and_conservation() {
    let dir = tempfile::tempdir().unwrap();
    let single = dir.path().join("single.json");
    let (ok, output, report) = bench(&["--concurrency", "4"], &single);
    assert!(ok, "{output}");
    assert_report(&report, &output);
    assert_eq!(report["options"]["batch_size"], 1);
    assert!(output.contains("transfers/s"), "{output}");

    let batched = dir.path().join("batched.json");
    let (ok, output, report) =
        bench(&["--concurrency", "2", "--batch-size", "50", "--cross-shard-ratio", "1.0", "--distribution", "zipf:1.1"], &batched);
    assert!(ok, "{output}");
    assert_report(&report, &output);
    assert!(report["transfers_per_sec"].as_f64().unwrap() > report["requests_per_sec"].as_f64().unwrap(), "batches carry many transfers");

    let open = dir.path().join("open.json");
    let compare = single.to_str().unwrap().to_string();
    let (ok, output, report) = bench(&["--rate", "40", "--concurrency", "8", "--distribution", "hot:3", "--compare", &compare], &open);
    assert!(ok, "{output}");
    assert_report(&report, &output);
    assert!(output.contains("new/old"), "the comparison is printed: {output}");
}
