//! `settle drill SCENARIO`: breaks a cluster on purpose under a steady workload, heals it, waits
//! for recovery, and checks the recorded history with `crate::history` (conservation, no
//! overdraft, at most once, acknowledged transfers durable, rejected never posted, linearizable
//! reads). Scenarios are
//! named for what SREs rehearse; each writes a Markdown, JSON and JUnit report. Process faults
//! (kill, pause, restart) need `--local` (a cluster the drill starts); network faults, a slow
//! disk and leader transfers go through the admin endpoints and work against any deployment
//! started with `--faults-enabled` and an admin token.

mod report;
mod workload;

use crate::bench::parse_duration;
use crate::local::{settle_binary, LocalCluster};
use anyhow::{bail, Context};
use report::Report;
use serde_json::{json, Value};
use settle_client::api::ClusterView;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use workload::Workload;

pub const SCENARIOS: [&str; 12] = [
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
    "decommission",
];

/// Scenarios that move replicas off a node: they need more nodes than replicas per shard
/// (`all` skips them on smaller clusters; in `all`, `scale-out` adds two nodes first).
const MEMBERSHIP_SCENARIOS: [&str; 2] = ["decommission", "disk-loss"];
/// Nodes `scale-out` adds.
const SCALE_OUT_NODES: usize = 2;
/// How long a drill waits for every replica of a node to move.
const MOVES_WAIT_MAX: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, clap::Args)]
pub struct DrillFlags {
    /// leader-kill, node-pause, partition-minority, partition-leader, rolling-restart,
    /// full-restart, slow-disk, leader-transfer, backup-restore, scale-out (two nodes join,
    /// --local), disk-loss and decommission (these two need 4+ nodes; decommission shrinks the
    /// cluster back to 3), all — or `heal` to remove every injected fault.
    pub scenario: String,
    /// Nodes of a running cluster (started with --faults-enabled and an admin token).
    #[arg(long, value_delimiter = ',')]
    pub target: Vec<String>,
    /// Start a local cluster for the drill (the default without --target).
    #[arg(long)]
    pub local: bool,
    /// Workload time per scenario: a quarter steady state, the fault, the rest recovery.
    #[arg(long, default_value = "16s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Transfers per second of the steady workload.
    #[arg(long, default_value_t = 400)]
    pub rate: u64,
    /// Faults injected per scenario (write-pause p50/p99 are over these).
    #[arg(long, default_value_t = 1)]
    pub repeats: u32,
    /// The drill fails if the cluster has not recovered this long after healing.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub recovery_timeout: Duration,
    /// Where reports go (Markdown, JSON, JUnit per scenario).
    #[arg(long, default_value = "drill-reports")]
    pub report_dir: PathBuf,
    /// Also write the JSON report (all scenarios' for `all`) here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Admin bearer token for --target clusters (or SETTLE_ADMIN_TOKEN).
    #[arg(long, env = "SETTLE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// An API key for --target clusters that may create accounts and move money (admin or
    /// operator; or SETTLE_API_KEY). A local cluster uses its development admin key.
    #[arg(long, env = "SETTLE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// --target serves HTTPS: the cluster CA (PEM) to verify it with.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// The node to break (kill, pause, isolate, slow down) instead of the one leading the most
    /// shards (or, for partition-minority, the one leading the fewest).
    #[arg(long)]
    pub node: Option<usize>,
    /// Local cluster shape.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    #[arg(long, default_value_t = 8)]
    pub shards: u32,
}

/// A fault the drill puts on one node for a while, then takes off.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGKILL, then start it again (local clusters).
    Kill,
    /// SIGSTOP, then SIGCONT (local clusters).
    Pause,
    /// Cut off from every other node, both ways (admin fault hooks).
    Isolate,
    /// Every flush delayed 50 ms (admin fault hooks).
    SlowDisk,
}

/// The cluster under drill: its URLs, the admin token, and (local) its processes.
struct Drilled {
    urls: Vec<String>,
    /// Node id → URL, from /v1/cluster (not the order of --target).
    nodes: BTreeMap<usize, String>,
    token: String,
    local: Option<LocalCluster>,
    client: reqwest::Client,
    /// Nodes currently SIGSTOPped or killed by the drill (healed on the way out).
    paused: Vec<usize>,
    killed: Vec<usize>,
    /// What `settle backup` needs (backup-restore): the API key and the cluster CA; where the
    /// backup goes; and, once taken, when it began (workload time).
    api_key: Option<String>,
    ca: Option<PathBuf>,
    backup_dir: PathBuf,
    backup_started_ms: Option<u64>,
    /// decommission, disk-loss: how long until every replica of the node lived elsewhere.
    replicated_ms: Option<u64>,
}

/// `settle drill`: against `--target`, or a local cluster of the running `settle` binary.
pub fn run(flags: DrillFlags) -> anyhow::Result<()> {
    let scenarios: Vec<&str> = match flags.scenario.as_str() {
        "all" => SCENARIOS.to_vec(),
        "heal" => Vec::new(),
        name if SCENARIOS.contains(&name) => vec![name],
        other => bail!("unknown scenario {other:?}; one of {}, all, heal", SCENARIOS.join(", ")),
    };
    let client = |ca: Option<&std::path::Path>, key: Option<&str>| -> anyhow::Result<reqwest::Client> {
        Ok(crate::http::client_builder(ca, key)?.timeout(Duration::from_secs(5)).build()?)
    };
    let mut drilled = if flags.target.is_empty() {
        if flags.scenario == "heal" {
            bail!("`settle drill heal` needs --target (a local drill heals itself on Ctrl-C)");
        }
        let token = format!("{:032x}", rand::random::<u128>());
        let env = vec![("SETTLE_FAULTS_ENABLED".to_string(), "true".to_string()), ("SETTLE_ADMIN_TOKEN".to_string(), token.clone())];
        let cluster = LocalCluster::start_temporary("drill", &settle_binary()?, flags.nodes, flags.shards, false, false, env)?;
        Drilled {
            urls: cluster.urls.clone(),
            nodes: BTreeMap::new(),
            token,
            client: client(cluster.ca.as_deref(), Some(&cluster.admin_key))?,
            api_key: Some(cluster.admin_key.clone()),
            ca: cluster.ca.clone(),
            local: Some(cluster),
            paused: Vec::new(),
            killed: Vec::new(),
            backup_dir: flags.report_dir.join("backup-restore-backup"),
            backup_started_ms: None,
            replicated_ms: None,
        }
    } else {
        let token = flags.admin_token.clone().context("--admin-token (or SETTLE_ADMIN_TOKEN) is needed to drill a running cluster")?;
        Drilled {
            urls: flags.target.iter().map(|url| url.trim_end_matches('/').to_string()).collect(),
            nodes: BTreeMap::new(),
            token,
            local: None,
            client: client(flags.ca_cert.as_deref(), flags.api_key.as_deref())?,
            paused: Vec::new(),
            killed: Vec::new(),
            api_key: flags.api_key.clone(),
            ca: flags.ca_cert.clone(),
            backup_dir: flags.report_dir.join("backup-restore-backup"),
            backup_started_ms: None,
            replicated_ms: None,
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    if scenarios.is_empty() {
        runtime.block_on(drilled.heal());
        println!("drill: every injected fault removed");
        return Ok(());
    }
    std::fs::create_dir_all(&flags.report_dir).with_context(|| format!("creating {}", flags.report_dir.display()))?;
    let outcome = runtime.block_on(async {
        drilled.nodes = settle_client::node_urls(&drilled.client, &drilled.urls)
            .await
            .into_iter()
            .filter_map(|(id, url)| Some((usize::try_from(id).ok()?, url)))
            .collect();
        tokio::select! {
            result = run_all(&flags, &scenarios, &mut drilled) => result,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    // The kill switch: whatever happened, no fault stays behind.
    runtime.block_on(drilled.heal());
    // Stops the local nodes, then removes their temporary directory.
    drop(drilled.local.take());
    let reports = outcome?;
    let failed: Vec<&str> = reports.iter().filter(|report| !report.passed()).map(|report| report.scenario.as_str()).collect();
    if let Some(path) = &flags.json {
        let body = if reports.len() == 1 {
            reports[0].to_json()
        } else {
            json!({ "verdict": if failed.is_empty() { "pass" } else { "fail" }, "scenarios": reports.iter().map(Report::to_json).collect::<Vec<_>>() })
        };
        std::fs::write(path, serde_json::to_vec_pretty(&body)?)?;
    }
    println!();
    for report in &reports {
        println!(
            "drill {:<20} {}  write pause {:>5} ms  recovery {:>6}  lost {}  errors {}",
            report.scenario,
            if report.passed() { "PASS" } else { "FAIL" },
            report.write_pause_ms(),
            report.recovery_ms.map_or("-".to_string(), |ms| format!("{ms} ms")),
            report.acknowledged_lost,
            report.errors.values().sum::<u64>()
        );
    }
    println!("reports in {}", flags.report_dir.display());
    if !failed.is_empty() {
        bail!("drill failed: {}", failed.join(", "));
    }
    Ok(())
}

async fn run_all(flags: &DrillFlags, scenarios: &[&str], drilled: &mut Drilled) -> anyhow::Result<Vec<Report>> {
    let mut reports = Vec::new();
    for scenario in scenarios {
        if scenarios.len() > 1 && MEMBERSHIP_SCENARIOS.contains(scenario) && drilled.nodes.len() <= 3 {
            eprintln!("drill: {scenario}: skipped (needs 4 or more nodes: --nodes 4)");
            continue;
        }
        eprintln!("drill: {scenario}");
        let report = run_scenario(flags, scenario, drilled).await?;
        let base = flags.report_dir.join(scenario);
        std::fs::write(base.with_extension("md"), report.to_markdown())?;
        std::fs::write(base.with_extension("json"), serde_json::to_vec_pretty(&report.to_json())?)?;
        std::fs::write(base.with_extension("xml"), report.to_junit())?;
        eprintln!("drill: {scenario}: {}", if report.passed() { "pass" } else { "FAIL" });
        reports.push(report);
    }
    Ok(reports)
}

async fn run_scenario(flags: &DrillFlags, scenario: &str, drilled: &mut Drilled) -> anyhow::Result<Report> {
    let needs_processes = matches!(scenario, "leader-kill" | "node-pause" | "rolling-restart" | "full-restart" | "disk-loss" | "scale-out");
    if needs_processes && drilled.local.is_none() {
        bail!("{scenario} kills or pauses processes: run it with --local");
    }
    let shards = drilled.shard_count().await?;
    let mut workload = Workload::setup(&drilled.client, &drilled.urls, shards).await?;
    workload.start(&drilled.client, &drilled.urls, flags.rate, 16);
    let quarter = flags.duration / 4;
    let hold = quarter.max(Duration::from_millis(2_500));
    let mut timeline = vec![(workload.now_ms(), "workload started".to_string())];
    let steady_from = workload.now_ms();
    tokio::time::sleep(quarter).await;
    let steady_to = workload.now_ms();
    let mut pauses = Vec::new();
    let mut recovery_ms = Some(0);
    let mut first_inject = None;
    for _ in 0..flags.repeats.max(1) {
        let injected_at = workload.now_ms();
        first_inject.get_or_insert(injected_at);
        drilled.inject(scenario, hold, flags.node, &workload, &mut timeline).await?;
        match drilled.wait_recovered(flags.recovery_timeout).await {
            Some(after) => {
                let recovered_at = workload.now_ms();
                timeline.push((recovered_at, format!("recovered: every shard led, nothing in doubt ({after} ms after healing)")));
                recovery_ms = recovery_ms.map(|worst: u64| worst.max(after));
                // The pause on a shard ends with its first write after recovery: wait for one
                // on every shard written before the fault.
                if !wait_writes_resumed(&workload, injected_at, recovered_at).await {
                    eprintln!("drill: {scenario}: some shard had no write within {WRITES_RESUME_WAIT_MAX:?} of recovery");
                }
                pauses.push(report::write_pause_ms(
                    &workload.history.lock().expect("history"),
                    injected_at.saturating_sub(200),
                    recovered_at,
                ));
            }
            None => {
                timeline.push((workload.now_ms(), format!("NOT recovered within {:?} of healing", flags.recovery_timeout)));
                recovery_ms = None;
                break;
            }
        }
    }
    tokio::time::sleep(quarter).await;
    timeline.push((workload.now_ms(), "workload stopped".to_string()));
    workload.stop().await;
    let findings = workload::check(&drilled.client, &drilled.urls, &workload).await?;
    let restored =
        if scenario == "backup-restore" { Some(drilled.restore_and_check(shards, &workload, &mut timeline).await?) } else { None };
    let history = workload.history.lock().expect("history");
    let mut report = Report::new(scenario, timeline, &history, &findings);
    let (throughput, p50, p99) = report::steady_state(&history, steady_from, steady_to);
    report.steady_transfers_per_sec = throughput;
    report.steady_p50_ms = p50;
    report.steady_p99_ms = p99;
    report.time_to_detect_ms =
        first_inject.and_then(|at| history.failures.iter().map(|(time, _)| *time).filter(|time| *time >= at).min().map(|time| time - at));
    report.write_pauses_ms = pauses;
    report.recovery_ms = recovery_ms;
    let success = if report.requests == 0 { 0.0 } else { report.succeeded as f64 / report.requests as f64 };
    report.targets = targets(scenario, &report, success);
    if MEMBERSHIP_SCENARIOS.contains(&scenario) || scenario == "scale-out" {
        let replicated = drilled.replicated_ms.take();
        let what = if scenario == "scale-out" {
            "replicas even over every node, 3 live voters per shard (time to rebalance)"
        } else {
            "every shard back on 3 live voters (time to full replication)"
        };
        report.targets.push((
            what.to_string(),
            replicated.map_or("not reached".to_string(), |ms| format!("{ms} ms")),
            replicated.is_some(),
        ));
    }
    if let Some((ready_ms, restored)) = restored {
        let failing = failing_checks(&restored);
        report.targets.extend(restore_targets(ready_ms, restored.acknowledged_lost_count(), &failing));
        // The restored cluster's checks are part of the verdict.
        report.checks.insert("restored_consistent", if failing.is_empty() { Ok(()) } else { Err(failing.join("; ")) });
    }
    Ok(report)
}

/// How long the drill waits, after recovery, for writes on every shard before measuring the pause.
const WRITES_RESUME_WAIT_MAX: Duration = Duration::from_secs(10);
/// How long a planned leader transfer may take before the drill gives up on it.
const LEADER_TRANSFER_WAIT_MAX: Duration = Duration::from_secs(10);

/// Polls the history until `report::writes_resumed` (true), or `WRITES_RESUME_WAIT_MAX` passes.
async fn wait_writes_resumed(workload: &Workload, before_ms: u64, after_ms: u64) -> bool {
    let deadline = Instant::now() + WRITES_RESUME_WAIT_MAX;
    loop {
        let resumed = report::writes_resumed(&workload.history.lock().expect("history"), before_ms, after_ms);
        if resumed {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a cluster view shows shard `id` led by `to` in a term after `term`, or led by anyone
/// two terms on (`to` took over and the shard was already handed back to its preferred node).
fn leader_moved(view: &ClusterView, id: u32, to: u64, term: u64) -> bool {
    let Some(shard) = view.shards.iter().find(|shard| shard.id == id) else {
        return false;
    };
    let (leader_now, term_now) = (shard.leader, shard.term);
    (leader_now == Some(to) && term_now > term) || (leader_now.is_some() && term_now >= term + 2)
}

/// The history checks the restored cluster failed, each with what it found.
fn failing_checks(findings: &crate::history::Findings) -> Vec<String> {
    findings.verdicts("drill").into_iter().filter_map(|(name, verdict)| verdict.err().map(|why| format!("{name}: {why}"))).collect()
}

/// What the cluster restored from the drill's backup must show: every transfer acknowledged
/// before the backup began (RPO 0 at the backup's start), and every history check.
fn restore_targets(ready_ms: u64, lost: u64, failing: &[String]) -> Vec<(String, String, bool)> {
    vec![
        ("restored: RPO 0 at the backup's start".to_string(), lost.to_string(), lost == 0),
        (
            "restored: every check passes (conservation, at most once, ...)".to_string(),
            if failing.is_empty() { "all pass".to_string() } else { failing.join("; ") },
            failing.is_empty(),
        ),
        ("restored cluster ready".to_string(), format!("{ready_ms} ms"), true),
    ]
}

fn targets(scenario: &str, report: &Report, success: f64) -> Vec<(String, String, bool)> {
    let pause = report.write_pause_ms();
    let mut targets =
        vec![("RPO 0 (no acknowledged transfer lost)".to_string(), report.acknowledged_lost.to_string(), report.acknowledged_lost == 0)];
    match scenario {
        "leader-kill" => targets.push(("writes resume in under 2 s".to_string(), format!("{pause} ms"), pause < 2_000)),
        "leader-transfer" => {
            targets.push(("planned leader transfer pauses writes under 300 ms".to_string(), format!("{pause} ms"), pause < 300))
        }
        "rolling-restart" => targets.push((
            "zero failed requests for retrying clients".to_string(),
            report.failed_finally.to_string(),
            report.failed_finally == 0,
        )),
        "node-pause" | "partition-minority" | "partition-leader" | "slow-disk" => targets.push((
            "≥ 99.9% of requests succeed with one node down".to_string(),
            format!("{:.3}%", success * 100.0),
            success >= 0.999,
        )),
        _ => {}
    }
    targets
}

impl Drilled {
    /// What `url` answers to /v1/cluster, if it answers.
    async fn cluster_view_of(&self, url: &str) -> Option<ClusterView> {
        let response = self.client.get(format!("{url}/v1/cluster")).send().await.ok()?;
        response.json().await.ok()
    }

    async fn admin(&self, url: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut request = self.client.request(method, format!("{url}{path}")).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| format!("{url}{path}"))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{url}{path}: HTTP {status}: {body}");
        }
        Ok(body)
    }

    async fn shard_count(&self) -> anyhow::Result<u32> {
        let view = settle_client::cluster_view(&self.client, &self.urls).await.context("no node answers /v1/cluster")?;
        u32::try_from(view.shards.len()).context("shard count")
    }

    /// Shards led per node as the first answering node sees them.
    async fn leaders(&self) -> Vec<(usize, usize)> {
        let Some(view) = settle_client::cluster_view(&self.client, &self.urls).await else {
            return Vec::new();
        };
        self.nodes
            .keys()
            .map(|node| (*node, view.shards.iter().filter(|shard| shard.leader == u64::try_from(*node).ok()).count()))
            .collect()
    }

    async fn busiest_leader(&self) -> usize {
        self.leaders().await.into_iter().max_by_key(|(_, count)| *count).map_or(1, |(node, _)| node)
    }

    async fn quietest_node(&self) -> usize {
        self.leaders().await.into_iter().min_by_key(|(_, count)| *count).map_or(1, |(node, _)| node)
    }

    fn url(&self, node: usize) -> anyhow::Result<String> {
        self.nodes.get(&node).cloned().with_context(|| format!("node {node}: no URL among the targets"))
    }

    /// Cuts `node` off from every other node, both ways, through the admin fault hooks.
    async fn isolate(&self, node: usize) -> anyhow::Result<()> {
        let cut = json!({ "drop_outbound": true, "drop_inbound": true });
        let mut on_victim = serde_json::Map::new();
        for other in self.nodes.keys().copied() {
            if other == node {
                continue;
            }
            on_victim.insert(other.to_string(), cut.clone());
            let body = json!({ "peers": { node.to_string(): cut } });
            self.admin(&self.url(other)?, reqwest::Method::POST, "/admin/faults", Some(body)).await?;
        }
        self.admin(&self.url(node)?, reqwest::Method::POST, "/admin/faults", Some(json!({ "peers": on_victim }))).await?;
        Ok(())
    }

    /// Removes every fault the drill may have left: admin faults, draining, paused or killed
    /// local processes. Best effort: it runs on the way out of any drill, failed or not.
    async fn heal(&mut self) {
        if let Some(cluster) = self.local.as_mut() {
            for node in self.paused.drain(..) {
                cluster.signal(node, libc::SIGCONT);
            }
            for node in self.killed.drain(..) {
                if !cluster.is_running(node) && cluster.spawn(node).is_ok() {
                    let _ = cluster.wait_ready(node, Duration::from_secs(60)).await;
                }
            }
        }
        for url in self.urls.clone() {
            let _ = self.admin(&url, reqwest::Method::DELETE, "/admin/faults", None).await;
            let _ = self.admin(&url, reqwest::Method::DELETE, "/admin/drain", None).await;
        }
    }

    /// Every node answers, every shard has a leader in every node's view and no transfer is in
    /// doubt on any leader. Returns how long that took.
    async fn wait_recovered(&self, timeout: Duration) -> Option<u64> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            let mut recovered = true;
            for url in &self.urls {
                let Some(view) = self.cluster_view_of(url).await else {
                    recovered = false;
                    break;
                };
                let led = view.shards.iter().all(|shard| shard.leader.is_some());
                let in_doubt: u64 = view.shards.iter().filter(|shard| shard.role == "leader").map(|shard| shard.pending_transfers).sum();
                if !led || in_doubt > 0 {
                    recovered = false;
                    break;
                }
            }
            if recovered {
                return Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// Injects the scenario's fault, holds it, and heals it.
    async fn inject(
        &mut self,
        scenario: &str,
        hold: Duration,
        named: Option<usize>,
        workload: &Workload,
        timeline: &mut Vec<(u64, String)>,
    ) -> anyhow::Result<()> {
        if let Some(node) = named {
            if !self.nodes.contains_key(&node) {
                let known: Vec<String> = self.nodes.keys().map(usize::to_string).collect();
                bail!("--node {node}: the cluster has nodes {}", known.join(", "));
            }
        }
        let (fault, held_for) = match scenario {
            "leader-kill" => (Fault::Kill, hold),
            "node-pause" => (Fault::Pause, hold.max(Duration::from_secs(3))),
            "partition-leader" | "partition-minority" => (Fault::Isolate, hold),
            "slow-disk" => (Fault::SlowDisk, hold),
            "leader-transfer" => return self.transfer_one_leader(workload, timeline).await,
            "rolling-restart" => return self.rolling_restart(workload, timeline).await,
            "full-restart" => return self.full_restart(workload, timeline).await,
            "backup-restore" => return self.take_backup(workload, timeline).await,
            "decommission" | "disk-loss" => return self.move_replicas_off(scenario, named, workload, timeline).await,
            "scale-out" => return self.scale_out(workload, timeline).await,
            other => bail!("unknown scenario {other}"),
        };
        // The victim: the named node, else the node leading the fewest shards for a minority
        // partition and the one leading the most for every other fault.
        let victim = match named {
            Some(node) => node,
            None if scenario == "partition-minority" => self.quietest_node().await,
            None => self.busiest_leader().await,
        };
        self.hold(fault, victim, held_for, workload, timeline).await
    }

    /// Applies `fault` to `victim`, keeps it for `hold`, undoes it; both steps go on the timeline.
    async fn hold(
        &mut self,
        fault: Fault,
        victim: usize,
        hold: Duration,
        workload: &Workload,
        timeline: &mut Vec<(u64, String)>,
    ) -> anyhow::Result<()> {
        let applied = self.apply(fault, victim).await?;
        timeline.push((workload.now_ms(), applied));
        tokio::time::sleep(hold).await;
        let undone = self.undo(fault, victim).await?;
        timeline.push((workload.now_ms(), undone));
        if let Fault::Kill = fault {
            self.local.as_mut().expect("local").wait_ready(victim, Duration::from_secs(60)).await?;
        }
        Ok(())
    }

    /// Puts `fault` on `victim` (keeping note of killed and paused nodes for `heal`); returns
    /// the timeline entry.
    async fn apply(&mut self, fault: Fault, victim: usize) -> anyhow::Result<String> {
        Ok(match fault {
            Fault::Kill => {
                self.local.as_mut().expect("local").kill(victim);
                self.killed.push(victim);
                format!("SIGKILL node {victim}")
            }
            Fault::Pause => {
                self.local.as_ref().expect("local").signal(victim, libc::SIGSTOP);
                self.paused.push(victim);
                format!("SIGSTOP node {victim}")
            }
            Fault::Isolate => {
                self.isolate(victim).await?;
                format!("node {victim} isolated from every other node")
            }
            Fault::SlowDisk => {
                self.admin(&self.url(victim)?, reqwest::Method::POST, "/admin/faults", Some(json!({ "disk_delay_ms": 50 }))).await?;
                format!("node {victim}: every flush delayed 50 ms")
            }
        })
    }

    /// Takes `fault` off `victim` again; returns the timeline entry.
    async fn undo(&mut self, fault: Fault, victim: usize) -> anyhow::Result<String> {
        Ok(match fault {
            Fault::Kill => {
                self.local.as_mut().expect("local").spawn(victim)?;
                self.killed.retain(|node| *node != victim);
                format!("node {victim} restarted")
            }
            Fault::Pause => {
                self.local.as_ref().expect("local").signal(victim, libc::SIGCONT);
                self.paused.retain(|node| *node != victim);
                format!("SIGCONT node {victim}")
            }
            Fault::Isolate => {
                for url in self.urls.clone() {
                    self.admin(&url, reqwest::Method::DELETE, "/admin/faults", None).await?;
                }
                "partition healed".to_string()
            }
            Fault::SlowDisk => {
                self.admin(&self.url(victim)?, reqwest::Method::DELETE, "/admin/faults", None).await?;
                format!("node {victim}: disk back to normal")
            }
        })
    }

    async fn transfer_one_leader(&mut self, workload: &Workload, timeline: &mut Vec<(u64, String)>) -> anyhow::Result<()> {
        let view = self.cluster_view_of(&self.urls[0]).await.context("cluster view")?;
        let shard = view.shards.iter().find(|shard| shard.leader.is_some()).context("a led shard")?;
        let (id, leader, term) = (shard.id, shard.leader.unwrap_or(1), shard.term);
        let to = shard.replicas.iter().copied().find(|node| *node != leader).context("another replica")?;
        let leader_url = self.url(usize::try_from(leader).unwrap_or(1))?;
        self.admin(&leader_url, reqwest::Method::POST, &format!("/admin/shards/{id}/transfer-leader"), Some(json!({ "to": to }))).await?;
        timeline.push((workload.now_ms(), format!("shard {id}: leadership handed from node {leader} to node {to}")));
        let to_url = self.url(usize::try_from(to).unwrap_or(0))?;
        let deadline = Instant::now() + LEADER_TRANSFER_WAIT_MAX;
        loop {
            let view = self.cluster_view_of(&to_url).await;
            if view.is_some_and(|view| leader_moved(&view, id, to, term)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("shard {id}: node {to} did not take the lead within {LEADER_TRANSFER_WAIT_MAX:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Drain, SIGTERM, restart, wait ready — one node after the other.
    async fn rolling_restart(&mut self, workload: &Workload, timeline: &mut Vec<(u64, String)>) -> anyhow::Result<()> {
        let nodes: Vec<usize> = self.nodes.keys().copied().collect();
        for node in nodes {
            let url = self.url(node)?;
            self.admin(&url, reqwest::Method::POST, "/admin/drain", None).await?;
            timeline.push((workload.now_ms(), format!("node {node} draining")));
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let leading = self.admin(&url, reqwest::Method::POST, "/admin/drain", None).await?["leading"].as_u64().unwrap_or(0);
                if leading == 0 || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            timeline.push((workload.now_ms(), format!("node {node} leads nothing; SIGTERM")));
            let cluster = self.local.as_mut().expect("local");
            cluster.terminate(node, Duration::from_secs(20)).await;
            cluster.spawn(node)?;
            cluster.wait_ready(node, Duration::from_secs(60)).await?;
            timeline.push((workload.now_ms(), format!("node {node} restarted and ready")));
        }
        Ok(())
    }

    /// decommission: moves every replica off live nodes under load — the named one, else the
    /// highest ids until 3 nodes hold every replica (5 → 3) — and stops each emptied node of a
    /// local cluster. disk-loss: kills the node, wipes its data dir and replaces it (its
    /// replicas rebuilt on the other nodes; the node is not started again: a node that lost
    /// its disk comes back under a new id). Both through the admin endpoints `settle node`
    /// repeats.
    async fn move_replicas_off(
        &mut self,
        scenario: &str,
        named: Option<usize>,
        workload: &Workload,
        timeline: &mut Vec<(u64, String)>,
    ) -> anyhow::Result<()> {
        if self.nodes.len() <= 3 {
            bail!("{scenario} needs a cluster of 4 or more nodes (--nodes 4): every node of a 3-node cluster holds every shard");
        }
        let started = workload.now_ms();
        let victims: Vec<usize> = match named {
            Some(node) => vec![node],
            None if scenario == "disk-loss" => self.nodes.keys().max().copied().into_iter().collect(),
            None => self.nodes.keys().rev().take(self.nodes.len() - 3).copied().collect(),
        };
        for victim in victims {
            let via = self.nodes.iter().find(|(id, _)| **id != victim).map(|(_, url)| url.clone()).context("another node")?;
            let (path, body) = if scenario == "disk-loss" {
                let local = self.local.as_mut().expect("checked: local");
                local.kill(victim);
                let dir = local.data_dir(victim).context("the node's data dir")?;
                for entry in std::fs::read_dir(&dir)? {
                    let path = entry?.path();
                    if path.file_name().is_some_and(|name| name == "settle.log") {
                        continue;
                    }
                    if path.is_dir() {
                        std::fs::remove_dir_all(&path)?
                    } else {
                        std::fs::remove_file(&path)?
                    }
                }
                self.forget(victim)?;
                timeline.push((workload.now_ms(), format!("SIGKILL node {victim}; its data dir wiped")));
                let with = *self.nodes.keys().next().context("a live node")?;
                (format!("/admin/nodes/{victim}/replace"), json!({ "with": with }))
            } else {
                (format!("/admin/nodes/{victim}/decommission"), json!({}))
            };
            timeline.push((workload.now_ms(), format!("POST {path} (repeated until done)")));
            let Some(answer) = self.repeat_until_done(&via, &path, body).await else {
                timeline.push((workload.now_ms(), format!("replicas of node {victim} not moved within {MOVES_WAIT_MAX:?}")));
                return Ok(());
            };
            let retired = if answer["retired"] == true { " and is retired" } else { "" };
            timeline.push((workload.now_ms(), format!("node {victim} holds no replica{retired}")));
            if scenario == "decommission" {
                if let Some(local) = self.local.as_mut() {
                    local.terminate(victim, Duration::from_secs(20)).await;
                    self.forget(victim)?;
                    timeline.push((workload.now_ms(), format!("node {victim} stopped")));
                }
            }
        }
        self.replicated_ms = Some(workload.now_ms().saturating_sub(started));
        Ok(())
    }

    /// A node that left the drill: no more requests or checks through it.
    fn forget(&mut self, node: usize) -> anyhow::Result<()> {
        let url = self.url(node)?;
        self.urls.retain(|known| *known != url);
        self.nodes.remove(&node);
        Ok(())
    }

    /// POSTs an admin step endpoint every 200 ms until it answers `done` (that answer), or
    /// `MOVES_WAIT_MAX` passes (`None`). A failover mid-move answers 503: the next round
    /// continues.
    async fn repeat_until_done(&self, via: &str, path: &str, body: Value) -> Option<Value> {
        let deadline = Instant::now() + MOVES_WAIT_MAX;
        loop {
            if let Ok(answer) = self.admin(via, reqwest::Method::POST, path, Some(body.clone())).await {
                if answer["done"] == true {
                    return Some(answer);
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// scale-out: `SCALE_OUT_NODES` nodes join under load (each registered through `POST
    /// /admin/nodes`, then started with `--join` and an empty data dir), then `POST
    /// /admin/rebalance` is repeated until every node holds about as many replicas. The new
    /// nodes serve (and are checked) from then on.
    async fn scale_out(&mut self, workload: &Workload, timeline: &mut Vec<(u64, String)>) -> anyhow::Result<()> {
        let via = self.urls.first().cloned().context("a node")?;
        let started = workload.now_ms();
        let mut added = Vec::new();
        for _ in 0..SCALE_OUT_NODES {
            let (node, peer) = self.local.as_mut().expect("checked: local").add_node()?;
            self.admin(&via, reqwest::Method::POST, "/admin/nodes", Some(json!({ "id": node, "peer": peer }))).await?;
            let local = self.local.as_mut().expect("checked: local");
            local.spawn(node)?;
            local.wait_ready(node, Duration::from_secs(60)).await?;
            let url = local.urls[node - 1].clone();
            self.urls.push(url.clone());
            self.nodes.insert(node, url);
            timeline.push((workload.now_ms(), format!("node {node} registered at {peer}, started with --join, ready")));
            added.push(node);
        }
        let deadline = Instant::now() + MOVES_WAIT_MAX;
        // The rebalance counts only nodes its answering node hears from.
        loop {
            let listed = self.admin(&via, reqwest::Method::GET, "/admin/nodes", None).await.unwrap_or(Value::Null);
            let live =
                |node: usize| listed["nodes"].as_array().into_iter().flatten().any(|entry| entry["id"] == node && entry["live"] == true);
            if added.iter().all(|node| live(*node)) {
                break;
            }
            if Instant::now() >= deadline {
                bail!("nodes {added:?} joined but node 1 does not hear from them");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        timeline.push((workload.now_ms(), "POST /admin/rebalance (repeated until done)".to_string()));
        match self.repeat_until_done(&via, "/admin/rebalance", json!({})).await {
            Some(answer) => {
                let took = workload.now_ms().saturating_sub(started);
                timeline.push((workload.now_ms(), format!("balanced: replicas per node {} ({took} ms)", answer["replicas"])));
                self.replicated_ms = Some(took);
            }
            None => timeline.push((workload.now_ms(), format!("replicas not balanced within {MOVES_WAIT_MAX:?}"))),
        }
        Ok(())
    }

    /// Takes an online backup with `settle backup` while the workload runs.
    async fn take_backup(&mut self, workload: &Workload, timeline: &mut Vec<(u64, String)>) -> anyhow::Result<()> {
        if self.backup_dir.exists() {
            std::fs::remove_dir_all(&self.backup_dir).with_context(|| format!("removing {}", self.backup_dir.display()))?;
        }
        let mut command = std::process::Command::new(settle_binary()?);
        command.arg("backup").arg("--to").arg(&self.backup_dir).arg("--target").arg(self.urls.join(","));
        if let Some(key) = &self.api_key {
            command.env("SETTLE_API_KEY", key);
        }
        if let Some(ca) = &self.ca {
            command.arg("--ca-cert").arg(ca);
        }
        let started_ms = workload.now_ms();
        timeline.push((started_ms, format!("settle backup --to {}", self.backup_dir.display())));
        let output = tokio::task::spawn_blocking(move || command.output()).await??;
        if !output.status.success() {
            bail!("settle backup failed: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        let said = String::from_utf8_lossy(&output.stdout);
        let summary = said.lines().find(|line| line.starts_with("backup complete")).unwrap_or("backup complete").to_string();
        timeline.push((workload.now_ms(), summary));
        self.backup_started_ms = Some(started_ms);
        Ok(())
    }

    /// Starts a new local cluster from the backup and checks it against the history: a
    /// transfer finished before the backup began must read back as its client was told; one
    /// finished later may or may not be in the cut (the read-back decides), and every check
    /// (conservation, at most once, no overdraft) must pass. Returns how long the restored
    /// cluster took to be ready, and the findings.
    async fn restore_and_check(
        &mut self,
        shards: u32,
        workload: &Workload,
        timeline: &mut Vec<(u64, String)>,
    ) -> anyhow::Result<(u64, crate::history::Findings)> {
        let started_ms = self.backup_started_ms.context("no backup was taken")?;
        let keys_from = self.local.as_ref().and_then(LocalCluster::temporary_dir).map(PathBuf::from).unwrap_or_default();
        let backup = self.backup_dir.clone();
        let nodes = u64::try_from(self.urls.len())?;
        let began = Instant::now();
        timeline.push((workload.now_ms(), "restoring the backup into a new local cluster".to_string()));
        let restored = tokio::task::spawn_blocking(move || {
            LocalCluster::start_temporary_restored("drill-restore", &settle_binary()?, nodes, shards, &backup, &keys_from)
        })
        .await??;
        let ready_ms = u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX);
        timeline.push((workload.now_ms(), format!("restored cluster ready ({ready_ms} ms)")));
        let mut history = workload.client_history();
        history.transfers = workload
            .history
            .lock()
            .expect("history")
            .outcomes
            .iter()
            .map(|outcome| {
                let told = if outcome.finished_ms < started_ms { outcome.told.clone() } else { crate::history::Told::Unknown };
                (outcome.transfer.clone(), told)
            })
            .collect();
        history.read_anomalies.clear();
        let client =
            crate::http::client_builder(restored.ca.as_deref(), self.api_key.as_deref())?.timeout(Duration::from_secs(5)).build()?;
        let read_back = crate::history::ReadBack::read(&client, &restored.urls, &history).await?;
        let findings = crate::history::check(&history, &read_back);
        timeline.push((workload.now_ms(), "restored cluster checked against the history".to_string()));
        tokio::task::spawn_blocking(move || drop(restored)).await?;
        Ok((ready_ms, findings))
    }

    async fn full_restart(&mut self, workload: &Workload, timeline: &mut Vec<(u64, String)>) -> anyhow::Result<()> {
        let cluster = self.local.as_mut().expect("local");
        for node in 1..=self.urls.len() {
            cluster.kill(node);
        }
        timeline.push((workload.now_ms(), "SIGKILL every node".to_string()));
        for node in 1..=self.urls.len() {
            cluster.spawn(node)?;
        }
        for node in 1..=self.urls.len() {
            cluster.wait_ready(node, Duration::from_secs(60)).await?;
        }
        timeline.push((workload.now_ms(), "every node restarted and ready (cold start)".to_string()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use settle_client::api::ShardView;

    /// A planned transfer counts as done once the target leads in a later term, or once the
    /// shard has moved on two terms (handed back already); not before.
    #[test]
    fn leader_moved_needs_the_target_in_a_later_term() {
        let view = |leader: u64, term: u64| ClusterView {
            shards: vec![ShardView { id: 3, leader: Some(leader), term, ..ShardView::default() }],
            ..ClusterView::default()
        };
        assert!(!leader_moved(&view(1, 5), 3, 2, 5), "still the old leader");
        assert!(!leader_moved(&view(2, 5), 3, 2, 5), "the target, but in the old term");
        assert!(leader_moved(&view(2, 6), 3, 2, 5));
        assert!(leader_moved(&view(1, 7), 3, 2, 5), "handed back");
        assert!(!leader_moved(&view(2, 6), 4, 2, 5), "another shard");
    }
}
