//! `settle drill all` against a local cluster it starts: every scenario injects its fault under
//! load, heals, recovers and passes every checker; the JSON report has the fields other
//! programs read, and the kill switch leaves no fault behind.

use serde_json::Value;
use std::process::Command;

/// Every drill scenario passes on a local cluster (3 nodes, grown to 5 by scale-out and back to
/// 3 by disk-loss and decommission), with RPO 0, and reports its numbers.
#[test]
fn every_drill_scenario_passes_on_a_local_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("drills.json");
    let output = Command::new(env!("CARGO_BIN_EXE_settle"))
        .args(["drill", "all", "--duration", "8s", "--rate", "200"])
        .arg("--report-dir")
        .arg(dir.path().join("reports"))
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run settle drill");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!("{text}");
    assert!(output.status.success(), "{text}");
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["verdict"], "pass");
    let scenarios = report["scenarios"].as_array().unwrap();
    let names: Vec<&str> = scenarios.iter().map(|s| s["scenario"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "leader-kill",
            "node-pause",
            "partition-minority",
            "partition-leader",
            "rolling-restart",
            "full-restart",
            "slow-disk",
            "leader-transfer",
            "backup-restore",
            "scale-out",
            "disk-loss",
            "decommission"
        ]
    );
    for scenario in scenarios {
        assert_eq!(scenario["verdict"], "pass", "{scenario}");
        assert_eq!(scenario["acknowledged_lost"], 0, "{scenario}");
        assert!(scenario["anomalies"].as_array().unwrap().is_empty(), "{scenario}");
        assert!(scenario["write_pause_ms"].is_u64(), "{scenario}");
        assert!(scenario["recovery_ms"].is_u64(), "{scenario}");
        assert!(scenario["requests"]["succeeded"].as_u64().unwrap() > 0, "{scenario}");
        let name = scenario["scenario"].as_str().unwrap();
        if name == "backup-restore" {
            let targets = scenario["targets"].as_array().unwrap();
            let restored: Vec<&Value> =
                targets.iter().filter(|target| target["target"].as_str().unwrap().starts_with("restored")).collect();
            assert_eq!(restored.len(), 3, "{scenario}");
            assert!(restored.iter().all(|target| target["met"] == true), "{scenario}");
        }
        if ["scale-out", "disk-loss", "decommission"].contains(&name) {
            // 3 → 5 nodes, one of them lost and replaced, then back to 3: replicas placed.
            let targets = scenario["targets"].as_array().unwrap();
            let placed: Vec<&Value> =
                targets.iter().filter(|target| target["target"].as_str().unwrap().contains("3 live voters")).collect();
            assert_eq!(placed.len(), 1, "{scenario}");
            assert_eq!(placed[0]["met"], true, "{scenario}");
        }
        for extension in ["md", "json", "xml"] {
            assert!(dir.path().join("reports").join(format!("{name}.{extension}")).is_file(), "{name}.{extension}");
        }
    }
}

/// Admin endpoints refuse requests without the token, and faults without --faults-enabled.
#[test]
fn drill_against_a_target_needs_an_admin_token() {
    let output = Command::new(env!("CARGO_BIN_EXE_settle"))
        .args(["drill", "partition-leader", "--target", "http://127.0.0.1:9"])
        .env_remove("SETTLE_ADMIN_TOKEN")
        .output()
        .expect("run settle drill");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("admin-token"), "{}", String::from_utf8_lossy(&output.stderr));
}
