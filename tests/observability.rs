//! Observability with the real tools: the alert rules pass `promtool check` and their unit
//! tests; a real Prometheus (Debian's package) scrapes a real 3-node cluster, every metric the
//! rules and the Grafana dashboard use exists, every dashboard query is valid PromQL, and
//! killing a node sends SettleNodeDown to firing. Also: JSON logs carry a request's id on every
//! node it touched, and `settle status` exits non-zero while a node is down.

mod common;

use common::TestCluster;
use serde_json::{json, Value};
use settle_cluster::ids::AccountId;
use settle_cluster::placement::Placement;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SHARDS: u32 = 8;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// A tool from Debian's `prometheus` package (installed by `.ci/run`).
fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join(name)).find(|path| path.is_file()))
        .unwrap_or(None);
    found.unwrap_or_else(|| panic!("{name} not found: install Debian's prometheus package (.ci/run does)"))
}

fn run_ok(command: &mut Command) -> String {
    let output = command.output().expect("run tool");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{command:?} failed:\n{text}");
    text
}

struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_prometheus(dir: &Path, targets: &[String]) -> Prometheus {
    let rules = repo().join("deploy/prometheus/alerts.yml");
    let targets: Vec<String> = targets.iter().map(|url| format!("\"{}\"", url.trim_start_matches("http://"))).collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: settle\n    authorization:\n      credentials: {}\n    static_configs:\n      - targets: [{}]\n",
        rules.display(),
        common::ADMIN_KEY,
        targets.join(", ")
    );
    let config_path = dir.join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
    run_ok(Command::new(tool("promtool")).arg("check").arg("config").arg(&config_path));
    let port = free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new(tool("prometheus"))
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    Prometheus { child, url: format!("http://127.0.0.1:{port}") }
}

async fn api(client: &reqwest::Client, prometheus: &Prometheus, path: &str) -> Option<Value> {
    let response = client.get(format!("{}{path}", prometheus.url)).send().await.ok()?;
    response.json().await.ok()
}

/// Metric names the rules or the dashboard use.
fn referenced_metrics(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut start = 0;
    while let Some(offset) = text[start..].find("settle_") {
        let begin = start + offset;
        let end = bytes[begin..].iter().position(|b| !(b.is_ascii_alphanumeric() || *b == b'_')).map_or(text.len(), |n| begin + n);
        names.insert(text[begin..end].to_string());
        start = end;
    }
    names
}

/// The sample names a scrape exposes (histogram families add _bucket, _sum, _count).
fn exposed_metrics(scrape: &str) -> BTreeSet<String> {
    scrape.lines().filter(|line| line.starts_with("settle_")).map(|line| line.split(['{', ' ']).next().unwrap().to_string()).collect()
}

/// The alert rules and their unit tests pass promtool; Prometheus scrapes a live cluster, every
/// referenced metric exists and every dashboard query is valid; a killed node's SettleNodeDown
/// alert fires; a request id shows in the JSON logs of every node it touched; `settle status`
/// flags the dead node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_cluster_and_node_down_fires() {
    let promtool = tool("promtool");
    run_ok(Command::new(&promtool).arg("check").arg("rules").arg(repo().join("deploy/prometheus/alerts.yml")));
    let unit = run_ok(Command::new(&promtool).arg("test").arg("rules").arg(repo().join("deploy/prometheus/alerts_test.yml")));
    assert!(unit.contains("SUCCESS"), "{unit}");

    let env = [("SETTLE_LOG_FORMAT", "json"), ("RUST_LOG", "info,settle=debug,settle_actors=debug")];
    let mut cluster = TestCluster::start_with_env(3, SHARDS, &env).await;
    let scratch = tempfile::tempdir().unwrap();
    let prometheus = start_prometheus(scratch.path(), &cluster.urls());
    settle_actors::tls::install_crypto_provider();
    let client =
        reqwest::Client::builder().timeout(Duration::from_secs(5)).default_headers(common::bearer(common::ADMIN_KEY)).build().unwrap();

    // Some traffic, so that business metrics exist; one request carries a known id.
    cluster.create_account(1, "bank", "USD", "settlement").await;
    cluster.create_account(1, "alice", "USD", "customer").await;
    let placement = Placement::new(vec![1, 2, 3], SHARDS);
    let bank_shard = placement.shard_of(&AccountId::new("bank").unwrap());
    let view = cluster.cluster_view(1).await;
    let leader = view["shards"][usize::try_from(bank_shard).unwrap()]["leader"].as_u64().expect("a leader");
    let origin = if leader == 1 { 2 } else { 1 };
    let response = client
        .post(format!("{}/v1/transfers", cluster.node(origin).url()))
        .header("Request-Id", "trace-obs-4242")
        .json(&json!({ "id": "obs-1", "from": "bank", "to": "alice", "amount": "5.00", "currency": "USD" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["request-id"], "trace-obs-4242");
    for node in [origin, leader] {
        let log = std::fs::read_to_string(cluster.data_dir(node).join("settle.log")).unwrap();
        let mentions = log
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|line| line["request_id"] == "trace-obs-4242")
            .count();
        assert!(mentions > 0, "node {node}'s JSON log names the request id");
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let targets = api(&client, &prometheus, "/api/v1/targets").await;
        let up = targets
            .as_ref()
            .and_then(|t| t["data"]["activeTargets"].as_array().cloned())
            .map_or(0, |targets| targets.iter().filter(|t| t["health"] == "up").count());
        if up == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "prometheus did not scrape all 3 nodes: {targets:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let scrape = client.get(format!("{}/metrics", cluster.node(origin).url())).send().await.unwrap().text().await.unwrap();
    let exposed = exposed_metrics(&scrape);
    let rules = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).unwrap();
    let dashboard_text = std::fs::read_to_string(repo().join("deploy/grafana/settle.json")).unwrap();
    let mut referenced = referenced_metrics(&rules);
    referenced.extend(referenced_metrics(&dashboard_text));
    let missing: Vec<&String> = referenced.iter().filter(|name| !exposed.contains(*name)).collect();
    assert!(missing.is_empty(), "metrics used by alerts or dashboard but not exposed: {missing:?}");

    let dashboard: Value = serde_json::from_str(&dashboard_text).unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().cloned().unwrap_or_default() {
            let expr = target["expr"].as_str().unwrap();
            let url = format!("/api/v1/query?query={}", urlencode(expr));
            let answer = api(&client, &prometheus, &url).await.unwrap_or(Value::Null);
            assert_eq!(answer["status"], "success", "dashboard query {expr:?}: {answer}");
        }
    }

    let killed = 2;
    let killed_instance = cluster.node(killed).url().trim_start_matches("http://").to_string();
    let killed_at = Instant::now();
    cluster.kill(killed);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let alerts = api(&client, &prometheus, "/api/v1/alerts").await.unwrap_or(Value::Null);
        let firing = alerts["data"]["alerts"].as_array().is_some_and(|alerts| {
            alerts.iter().any(|a| {
                a["labels"]["alertname"] == "SettleNodeDown"
                    && a["labels"]["instance"] == killed_instance.as_str()
                    && a["state"] == "firing"
            })
        });
        if firing {
            println!("SettleNodeDown fired {:?} after the kill", killed_at.elapsed());
            break;
        }
        assert!(Instant::now() < deadline, "SettleNodeDown did not fire: {alerts}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let status = Command::new(env!("CARGO_BIN_EXE_settle"))
        .args(["status", "--target", &format!("{},{}", cluster.node(killed).url(), cluster.node(1).url()), "--api-key", common::ADMIN_KEY])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(!status.status.success(), "settle status exits non-zero with a node down:\n{text}");
    // The first --target is the dead node: the report comes from the next one.
    assert!(text.contains("DOWN"), "{text}");
    assert!(text.contains("shard(s) under-replicated"), "shards with a replica on the dead node are named: {text}");
}

fn urlencode(text: &str) -> String {
    let mut encoded = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}
