//! The drill report: numbers computed from the recorded history and timeline, rendered as
//! Markdown (for people), JSON (fields other programs read: scenario, verdict, write_pause_ms,
//! acknowledged_lost, anomalies, recovery_ms) and JUnit XML (one test case per checker).

use super::workload::History;
use crate::history::{Findings, Told};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

pub struct Report {
    pub scenario: String,
    pub timeline: Vec<(u64, String)>,
    pub steady_transfers_per_sec: f64,
    pub steady_p50_ms: u64,
    pub steady_p99_ms: u64,
    pub time_to_detect_ms: Option<u64>,
    /// Per fault repeat: the longest write pause on any shard.
    pub write_pauses_ms: Vec<u64>,
    pub recovery_ms: Option<u64>,
    pub errors: BTreeMap<String, u64>,
    pub requests: u64,
    /// Attempts beyond the first (clients retrying an unknown outcome with the same id).
    pub retries: u64,
    pub succeeded: u64,
    pub failed_finally: u64,
    pub acknowledged_lost: u64,
    /// Per checker: pass, or what it found (the report's `anomalies`).
    pub checks: BTreeMap<&'static str, Result<(), String>>,
    /// Target name, measured text, met.
    pub targets: Vec<(String, String, bool)>,
}

fn percentile(sorted: &[u64], quantile: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64 - 1.0) * quantile).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The longest gap between successful completions on any shard within [from, to] (ms), the
/// measure of a write pause: only shards the fault touched stop, so the worst shard counts.
pub fn write_pause_ms(history: &History, from_ms: u64, to_ms: u64) -> u64 {
    let mut by_shard: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for outcome in &history.outcomes {
        if outcome.told == Told::Posted {
            by_shard.entry(outcome.transfer.shard).or_default().push(outcome.finished_ms);
        }
    }
    let mut worst = 0;
    for times in by_shard.values_mut() {
        times.sort_unstable();
        let mut previous = None;
        for time in times.iter().copied() {
            if time < from_ms {
                previous = Some(time);
                continue;
            }
            if let Some(earlier) = previous {
                worst = worst.max(time - earlier);
            }
            previous = Some(time);
            if time > to_ms {
                break;
            }
        }
    }
    worst
}

/// Whether writes flow again after a fault: every shard with a posted transfer finishing before
/// `before_ms` has one finishing after `after_ms` (what `write_pause_ms` needs to measure the gap
/// across the fault on that shard).
pub fn writes_resumed(history: &History, before_ms: u64, after_ms: u64) -> bool {
    let mut before = BTreeSet::new();
    let mut after = BTreeSet::new();
    for outcome in history.outcomes.iter().filter(|outcome| outcome.told == Told::Posted) {
        if outcome.finished_ms < before_ms {
            before.insert(outcome.transfer.shard);
        }
        if outcome.finished_ms > after_ms {
            after.insert(outcome.transfer.shard);
        }
    }
    before.is_subset(&after)
}

/// Throughput and latency over a window of the history.
pub fn steady_state(history: &History, from_ms: u64, to_ms: u64) -> (f64, u64, u64) {
    let mut latencies: Vec<u64> = history
        .outcomes
        .iter()
        .filter(|o| o.told == Told::Posted && o.started_ms >= from_ms && o.finished_ms <= to_ms)
        .map(|o| o.finished_ms - o.started_ms)
        .collect();
    latencies.sort_unstable();
    let seconds = (to_ms.saturating_sub(from_ms)).max(1) as f64 / 1000.0;
    (latencies.len() as f64 / seconds, percentile(&latencies, 0.5), percentile(&latencies, 0.99))
}

impl Report {
    pub fn new(scenario: &str, timeline: Vec<(u64, String)>, history: &History, findings: &Findings) -> Report {
        let mut errors = BTreeMap::new();
        for (_, code) in &history.failures {
            *errors.entry(code.clone()).or_insert(0) += 1;
        }
        for outcome in &history.outcomes {
            if outcome.told != Told::Posted {
                *errors.entry(outcome.told.label().to_string()).or_insert(0) += 1;
            }
        }
        let succeeded = history.outcomes.iter().filter(|o| o.told == Told::Posted).count() as u64;
        let failed_finally = history.outcomes.iter().filter(|o| o.told == Told::Unknown).count() as u64;
        Report {
            scenario: scenario.to_string(),
            timeline,
            steady_transfers_per_sec: 0.0,
            steady_p50_ms: 0,
            steady_p99_ms: 0,
            time_to_detect_ms: None,
            write_pauses_ms: Vec::new(),
            recovery_ms: None,
            errors,
            requests: history.outcomes.len() as u64,
            retries: history.outcomes.iter().map(|o| u64::from(o.attempts.saturating_sub(1))).sum(),
            succeeded,
            failed_finally,
            acknowledged_lost: findings.acknowledged_lost_count(),
            checks: findings.verdicts("drill"),
            targets: Vec::new(),
        }
    }

    pub fn passed(&self) -> bool {
        self.acknowledged_lost == 0 && self.checks.values().all(Result::is_ok) && self.recovery_ms.is_some()
    }

    pub fn write_pause_ms(&self) -> u64 {
        self.write_pauses_ms.iter().copied().max().unwrap_or(0)
    }

    fn pause_quantiles(&self) -> (u64, u64) {
        let mut sorted = self.write_pauses_ms.clone();
        sorted.sort_unstable();
        (percentile(&sorted, 0.5), percentile(&sorted, 0.99))
    }

    /// What the checkers found: one entry per failed checker.
    fn anomalies(&self) -> Vec<&str> {
        self.checks.values().filter_map(|check| check.as_ref().err().map(String::as_str)).collect()
    }

    pub fn to_json(&self) -> Value {
        let (p50, p99) = self.pause_quantiles();
        json!({
            "scenario": self.scenario,
            "verdict": if self.passed() { "pass" } else { "fail" },
            "write_pause_ms": self.write_pause_ms(),
            "write_pause_ms_p50": p50,
            "write_pause_ms_p99": p99,
            "write_pauses_ms": self.write_pauses_ms,
            "acknowledged_lost": self.acknowledged_lost,
            "anomalies": self.anomalies(),
            "recovery_ms": self.recovery_ms,
            "time_to_detect_ms": self.time_to_detect_ms,
            "steady_state": { "transfers_per_sec": self.steady_transfers_per_sec, "p50_ms": self.steady_p50_ms, "p99_ms": self.steady_p99_ms },
            "errors": self.errors,
            "requests": { "total": self.requests, "retries": self.retries, "succeeded": self.succeeded, "failed_after_retries": self.failed_finally },
            "checks": self.checks.iter().map(|(name, check)| (name.to_string(), json!(check.is_ok()))).collect::<serde_json::Map<_, _>>(),
            "targets": self.targets.iter().map(|(name, measured, met)| json!({ "target": name, "measured": measured, "met": met })).collect::<Vec<_>>(),
            "timeline": self.timeline.iter().map(|(at, event)| json!({ "at_ms": at, "event": event })).collect::<Vec<_>>(),
        })
    }

    pub fn to_markdown(&self) -> String {
        let (p50, p99) = self.pause_quantiles();
        let mut out = String::new();
        out.push_str(&format!("# Drill `{}`: {}\n\n", self.scenario, if self.passed() { "PASS" } else { "FAIL" }));
        out.push_str(&format!(
            "Steady state before the fault: {:.0} transfers/s, p50 {} ms, p99 {} ms.\n\n",
            self.steady_transfers_per_sec, self.steady_p50_ms, self.steady_p99_ms
        ));
        out.push_str("## Timeline\n\n| at | event |\n|---|---|\n");
        for (at, event) in &self.timeline {
            out.push_str(&format!("| {:.1} s | {event} |\n", *at as f64 / 1000.0));
        }
        out.push_str("\n## Numbers\n\n| measure | value |\n|---|---|\n");
        let detect = self.time_to_detect_ms.map_or("no failed request".to_string(), |ms| format!("{ms} ms"));
        out.push_str(&format!("| time to detect (first failed request) | {detect} |\n"));
        out.push_str(&format!(
            "| write pause, worst shard (max / p50 / p99 over {} repeat(s)) | {} / {p50} / {p99} ms |\n",
            self.write_pauses_ms.len(),
            self.write_pause_ms()
        ));
        let recovery = self.recovery_ms.map_or("NOT RECOVERED".to_string(), |ms| format!("{ms} ms"));
        out.push_str(&format!("| time to full recovery (every shard led, nothing in doubt) | {recovery} |\n"));
        out.push_str(&format!(
            "| transfers / retries / succeeded / failed after retries | {} / {} / {} / {} |\n",
            self.requests, self.retries, self.succeeded, self.failed_finally
        ));
        out.push_str(&format!("| acknowledged transfers lost (RPO) | {} |\n", self.acknowledged_lost));
        let errors: Vec<String> = self.errors.iter().map(|(code, count)| format!("{code} {count}")).collect();
        out.push_str(&format!(
            "| errors clients saw (by code) | {} |\n",
            if errors.is_empty() { "none".to_string() } else { errors.join(", ") }
        ));
        out.push_str("\n## Checkers\n\n| checker | verdict |\n|---|---|\n");
        for (name, check) in &self.checks {
            out.push_str(&format!(
                "| {name} | {} |\n",
                match check {
                    Ok(()) => "pass".to_string(),
                    Err(why) => format!("FAIL: {why}"),
                }
            ));
        }
        if !self.targets.is_empty() {
            out.push_str("\n## Targets\n\n| target | measured | met |\n|---|---|---|\n");
            for (name, measured, met) in &self.targets {
                out.push_str(&format!("| {name} | {measured} | {} |\n", if *met { "yes" } else { "no" }));
            }
        }
        out
    }

    pub fn to_junit(&self) -> String {
        let failures = self.checks.values().filter(|check| check.is_err()).count() + usize::from(self.recovery_ms.is_none());
        let mut out = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuite name=\"drill.{}\" tests=\"{}\" failures=\"{failures}\">\n",
            xml(&self.scenario),
            self.checks.len() + 1
        );
        for (name, check) in &self.checks {
            out.push_str(&format!("  <testcase classname=\"drill.{}\" name=\"{name}\">", xml(&self.scenario)));
            if let Err(why) = check {
                out.push_str(&format!("<failure message=\"{}\"/>", xml(why)));
            }
            out.push_str("</testcase>\n");
        }
        out.push_str(&format!("  <testcase classname=\"drill.{}\" name=\"recovery\">", xml(&self.scenario)));
        if self.recovery_ms.is_none() {
            out.push_str("<failure message=\"the cluster did not recover within the bound\"/>");
        }
        out.push_str("</testcase>\n</testsuite>\n");
        out
    }
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drill::workload::Outcome;
    use settle_client::Transfer;

    fn posted(shard: u32, finished_ms: u64) -> Outcome {
        let transfer = Transfer { id: format!("t{shard}-{finished_ms}"), from: 0, to: 1, amount: 1, shard };
        Outcome { transfer, started_ms: finished_ms, finished_ms, told: Told::Posted, attempts: 1 }
    }

    /// Writes have resumed only once every shard written before the fault is written after
    /// recovery, and the pause is then the gap across the fault on the worst shard.
    #[test]
    fn writes_resume_when_every_shard_written_before_is_written_after() {
        let mut history = History::default();
        history.outcomes.extend([posted(0, 100), posted(1, 120), posted(0, 900)]);
        assert!(!writes_resumed(&history, 200, 800), "shard 1 has not been written since");
        history.outcomes.push(posted(1, 1_000));
        assert!(writes_resumed(&history, 200, 800));
        assert_eq!(write_pause_ms(&history, 200, 800), 880);
    }
}
