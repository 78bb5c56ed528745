//! The soak timeline (`settle bench --timeline FILE.json`): every `--sample-every` the bench
//! records its throughput and p99 over the window, and scrapes each node's `/metrics` for its
//! RSS, leader changes, driver-loop max and data-dir size. Written as JSON (with a summary: first
//! and last five minutes, RSS growth, leader changes) and as an SVG chart beside it.

use serde::Serialize;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::Path;

/// One node's numbers at one sample.
#[derive(Debug, Clone, Serialize)]
pub struct NodeSample {
    pub target: String,
    /// Whether its `/metrics` answered.
    pub up: bool,
    pub rss_bytes: f64,
    /// Leader changes its shard replicas have seen since it started.
    pub leader_changes: f64,
    /// The longest driver-loop iteration over the last 10–20 s (wall time)...
    pub driver_loop_max_seconds: f64,
    /// ...and the most CPU time one used (the node's own work).
    pub driver_loop_max_cpu_seconds: f64,
    pub data_dir_bytes: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since measuring started.
    pub elapsed_seconds: f64,
    pub transfers_per_sec: f64,
    pub p99_ms: f64,
    /// Transfers posted since measuring started.
    pub transfers_total: u64,
    pub errors_total: u64,
    pub nodes: Vec<NodeSample>,
}

/// The sum over a metric's series in Prometheus text (0 when absent).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Scrapes one node; a node that does not answer is reported down (zeros).
pub async fn scrape(client: &reqwest::Client, target: &str) -> NodeSample {
    let text = match client.get(format!("{target}/metrics")).send().await {
        Ok(response) if response.status().is_success() => response.text().await.ok(),
        _ => None,
    };
    let text = text.unwrap_or_default();
    NodeSample {
        target: target.to_string(),
        up: !text.is_empty(),
        rss_bytes: metric(&text, "process_resident_memory_bytes"),
        leader_changes: metric(&text, "settle_shard_leader_changes_total"),
        driver_loop_max_seconds: metric(&text, "settle_driver_loop_recent_max_seconds"),
        driver_loop_max_cpu_seconds: metric(&text, "settle_driver_loop_recent_max_cpu_seconds"),
        data_dir_bytes: metric(&text, "settle_data_dir_bytes"),
    }
}

/// Samples taken within `seconds` of the start (`first`) or of the end (`!first`).
fn window(samples: &[Sample], seconds: f64, first: bool) -> Vec<&Sample> {
    let end = samples.last().map_or(0.0, |sample| sample.elapsed_seconds);
    samples.iter().filter(|sample| if first { sample.elapsed_seconds <= seconds } else { sample.elapsed_seconds > end - seconds }).collect()
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, count) = values.fold((0.0, 0usize), |(sum, count), value| (sum + value, count + 1));
    if count == 0 {
        0.0
    } else {
        sum / count as f64
    }
}

/// The soak's verdict numbers: throughput and p99 of the first and last five minutes (or
/// fifths, for a shorter run), RSS per node at the first and last sample and its peak, leader
/// changes during the run, the longest driver-loop iteration seen.
pub fn summary(samples: &[Sample]) -> Value {
    let total = samples.last().map_or(0.0, |sample| sample.elapsed_seconds);
    let span = if total >= 1_500.0 { 300.0 } else { (total / 5.0).max(1.0) };
    let (first, last) = (window(samples, span, true), window(samples, span, false));
    let throughput = |part: &[&Sample]| mean(part.iter().map(|sample| sample.transfers_per_sec));
    let p99 = |part: &[&Sample]| mean(part.iter().map(|sample| sample.p99_ms));
    let nodes = samples.first().map_or(0, |sample| sample.nodes.len());
    let per_node: Vec<Value> = (0..nodes)
        .map(|node| {
            let rss: Vec<f64> = samples.iter().filter(|s| s.nodes[node].up).map(|s| s.nodes[node].rss_bytes).collect();
            let changes: Vec<f64> = samples.iter().filter(|s| s.nodes[node].up).map(|s| s.nodes[node].leader_changes).collect();
            json!({
                "target": samples[0].nodes[node].target,
                "rss_first_bytes": rss.first().copied().unwrap_or(0.0),
                "rss_last_bytes": rss.last().copied().unwrap_or(0.0),
                "rss_max_bytes": rss.iter().copied().fold(0.0, f64::max),
                "leader_changes_during_run": changes.last().copied().unwrap_or(0.0) - changes.first().copied().unwrap_or(0.0),
                "data_dir_last_bytes": samples.last().map_or(0.0, |s| s.nodes[node].data_dir_bytes),
            })
        })
        .collect();
    let (first_tps, last_tps) = (throughput(&first), throughput(&last));
    let (first_p99, last_p99) = (p99(&first), p99(&last));
    json!({
        "window_seconds": span,
        "first_transfers_per_sec": first_tps,
        "last_transfers_per_sec": last_tps,
        "last_over_first_throughput": if first_tps > 0.0 { last_tps / first_tps } else { 0.0 },
        "first_p99_ms": first_p99,
        "last_p99_ms": last_p99,
        "last_over_first_p99": if first_p99 > 0.0 { last_p99 / first_p99 } else { 0.0 },
        "driver_loop_max_seconds": samples.iter().flat_map(|s| s.nodes.iter()).map(|n| n.driver_loop_max_seconds).fold(0.0, f64::max),
        "driver_loop_max_cpu_seconds": samples.iter().flat_map(|s| s.nodes.iter()).map(|n| n.driver_loop_max_cpu_seconds).fold(0.0, f64::max),
        "transfers_total": samples.last().map_or(0, |sample| sample.transfers_total),
        "nodes": per_node,
    })
}

/// Writes the timeline as JSON at `path` and as SVG beside it (same name, `.svg`).
pub fn write(path: &Path, samples: &[Sample], options: &Value) -> std::io::Result<()> {
    let document = json!({ "options": options, "summary": summary(samples), "samples": samples });
    std::fs::write(path, serde_json::to_vec_pretty(&document)?)?;
    std::fs::write(path.with_extension("svg"), svg(samples))
}

const PANEL_WIDTH: f64 = 900.0;
const PANEL_HEIGHT: f64 = 150.0;
const MARGIN_LEFT: f64 = 90.0;
const MARGIN_TOP: f64 = 30.0;
const GAP: f64 = 45.0;
const COLORS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];

/// One labelled series of (seconds, value) points.
type Line = (String, Vec<(f64, f64)>);

/// Panels over time: throughput, p99, and per node RSS, driver-loop max (wall and CPU) and
/// leader changes.
pub fn svg(samples: &[Sample]) -> String {
    let nodes = samples.first().map_or(0, |sample| sample.nodes.len());
    let mut panels: Vec<(&str, &str, Vec<Line>)> = Vec::new();
    let series = |value: &dyn Fn(&Sample) -> f64| samples.iter().map(|s| (s.elapsed_seconds, value(s))).collect::<Vec<_>>();
    panels.push(("throughput", "transfers/s", vec![("bench".to_string(), series(&|s| s.transfers_per_sec))]));
    panels.push(("p99 latency", "ms", vec![("bench".to_string(), series(&|s| s.p99_ms))]));
    let per_node = |value: &dyn Fn(&NodeSample) -> f64| {
        (0..nodes).map(|node| (samples[0].nodes[node].target.clone(), series(&|s| value(&s.nodes[node])))).collect::<Vec<_>>()
    };
    panels.push(("RSS per node", "MiB", per_node(&|n| n.rss_bytes / (1 << 20) as f64)));
    panels.push(("driver-loop max iteration per node, wall time", "ms", per_node(&|n| n.driver_loop_max_seconds * 1000.0)));
    panels.push(("driver-loop max iteration per node, CPU time", "ms", per_node(&|n| n.driver_loop_max_cpu_seconds * 1000.0)));
    panels.push(("leader changes seen per node (cumulative)", "changes", per_node(&|n| n.leader_changes)));
    let height = MARGIN_TOP + panels.len() as f64 * (PANEL_HEIGHT + GAP) + 20.0;
    let width = MARGIN_LEFT + PANEL_WIDTH + 220.0;
    let x_max = samples.last().map_or(1.0, |sample| sample.elapsed_seconds).max(1.0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (number, (title, unit, lines)) in panels.iter().enumerate() {
        let top = MARGIN_TOP + number as f64 * (PANEL_HEIGHT + GAP);
        let y_max = lines.iter().flat_map(|(_, points)| points.iter().map(|(_, y)| *y)).fold(0.0, f64::max).max(1e-9) * 1.1;
        let _ = writeln!(out, r#"<text x="{MARGIN_LEFT}" y="{}" font-weight="bold">{title} ({unit})</text>"#, top - 8.0);
        let _ = writeln!(
            out,
            r##"<rect x="{MARGIN_LEFT}" y="{top}" width="{PANEL_WIDTH}" height="{PANEL_HEIGHT}" fill="none" stroke="#999"/>"##
        );
        for tick in 0..=4 {
            let value = y_max * f64::from(tick) / 4.0;
            let y = top + PANEL_HEIGHT - PANEL_HEIGHT * f64::from(tick) / 4.0;
            let _ = writeln!(out, r#"<text x="{}" y="{}" text-anchor="end">{value:.0}</text>"#, MARGIN_LEFT - 6.0, y + 4.0);
        }
        for tick in 0..=6 {
            let seconds = x_max * f64::from(tick) / 6.0;
            let x = MARGIN_LEFT + PANEL_WIDTH * f64::from(tick) / 6.0;
            let _ =
                writeln!(out, r#"<text x="{x}" y="{}" text-anchor="middle">{:.0} min</text>"#, top + PANEL_HEIGHT + 14.0, seconds / 60.0);
        }
        for (line, (label, points)) in lines.iter().enumerate() {
            let color = COLORS[line % COLORS.len()];
            let path: Vec<String> = points
                .iter()
                .map(|(x, y)| format!("{:.1},{:.1}", MARGIN_LEFT + PANEL_WIDTH * x / x_max, top + PANEL_HEIGHT - PANEL_HEIGHT * y / y_max))
                .collect();
            let _ = writeln!(out, r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#, path.join(" "));
            let _ = writeln!(
                out,
                r#"<text x="{}" y="{}" fill="{color}">{}</text>"#,
                MARGIN_LEFT + PANEL_WIDTH + 10.0,
                top + 14.0 + 16.0 * line as f64,
                label.replace('&', "&amp;").replace('<', "&lt;")
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(elapsed: f64, tps: f64, rss: f64) -> Sample {
        Sample {
            elapsed_seconds: elapsed,
            transfers_per_sec: tps,
            p99_ms: 10.0,
            transfers_total: (elapsed * tps) as u64,
            errors_total: 0,
            nodes: vec![NodeSample {
                target: "http://n1".into(),
                up: true,
                rss_bytes: rss,
                leader_changes: elapsed,
                driver_loop_max_seconds: 0.01,
                driver_loop_max_cpu_seconds: 0.005,
                data_dir_bytes: 0.0,
            }],
        }
    }

    /// The summary compares the first and last fifth of a short run and reports RSS growth and
    /// leader changes during the run; the chart has one line per series.
    #[test]
    fn summary_compares_the_start_with_the_end() {
        let samples: Vec<Sample> = (1..=10).map(|n| sample(f64::from(n) * 10.0, if n <= 5 { 100.0 } else { 80.0 }, f64::from(n))).collect();
        let summary = summary(&samples);
        assert_eq!(summary["first_transfers_per_sec"], 100.0);
        assert_eq!(summary["last_transfers_per_sec"], 80.0);
        assert_eq!(summary["nodes"][0]["rss_first_bytes"], 1.0);
        assert_eq!(summary["nodes"][0]["rss_max_bytes"], 10.0);
        assert_eq!(summary["nodes"][0]["leader_changes_during_run"], 90.0);
        assert_eq!(svg(&samples).matches("<polyline").count(), 6);
    }

    /// Series are summed over labels, and only exact metric names count.
    #[test]
    fn metric_sums_a_family() {
        let text = "settle_x{shard=\"1\"} 2\nsettle_x{shard=\"2\"} 3\nsettle_x_total 9\n";
        assert_eq!(metric(text, "settle_x"), 5.0);
    }
}
