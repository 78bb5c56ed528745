//! `settle bench`: a load generator for a running cluster (`--target`) or for a fresh local
//! cluster it starts itself. Closed loop (`--concurrency`) or open loop (`--rate`, latency
//! measured from each request's intended send time so stalls are not hidden), single transfers
//! or batches, skewed account choice and a chosen share of cross-shard transfers. It funds its
//! own accounts, checks at the end that their balances add up (`conservation` and
//! `at_most_once` of `crate::history`), and reports throughput, latency percentiles
//! (HdrHistogram) and errors by code.

mod report;
mod timeline;
mod workload;

use crate::local::{settle_binary, LocalCluster};
use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use report::Report;
use serde::Serialize;
use serde_json::Value;
use settle_client::{Answer, Transfer};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use workload::{Distribution, Plan};

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct BenchFlags {
    /// Node URLs to spread load over (comma-separated). Without it, a local 3-node cluster is
    /// started in a temporary directory and stopped at the end.
    #[arg(long, value_delimiter = ',')]
    pub target: Vec<String>,
    /// How long to measure (e.g. 30s, 500ms, 2m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    #[serde(serialize_with = "as_seconds")]
    pub duration: Duration,
    /// How long to run before measuring.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    #[serde(serialize_with = "as_seconds")]
    pub warmup: Duration,
    /// Accounts the bench creates and funds for itself.
    #[arg(long, default_value_t = 1_000)]
    pub accounts: usize,
    /// Requests in flight (closed loop), or the most in flight at once (open loop).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Open loop: requests started per second at fixed intervals, whatever the latency.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Transfers per request: 1 uses POST /v1/transfers, more the batch endpoint.
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// Which accounts receive: uniform, zipf:S (exponent S) or hot:N (N accounts take 90%).
    #[arg(long, default_value = "uniform")]
    pub distribution: Distribution,
    /// `spread`: requests go round-robin to every node (a load balancer; most are forwarded to
    /// the shard leader). `leader`: single transfers go straight to the payer shard's leader,
    /// learned from /v1/cluster and refreshed every second (a smart client).
    #[arg(long, default_value = "spread")]
    pub route: String,
    /// Share of transfers whose payee is on another shard than the payer (0.0 to 1.0).
    #[arg(long, default_value_t = 0.5)]
    pub cross_shard_ratio: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the full report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Print the ratios against an earlier --json report.
    #[arg(long)]
    pub compare: Option<PathBuf>,
    /// Embedded cluster: nodes and shards.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    #[arg(long, default_value_t = 64)]
    pub shards: u32,
    /// Soak runs: record a timeline (throughput, p99, and each node's RSS, leader changes and
    /// driver-loop max, every `--sample-every`) as JSON here, and as an SVG chart beside it.
    #[arg(long)]
    pub timeline: Option<PathBuf>,
    /// How often the timeline samples.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    #[serde(serialize_with = "as_seconds")]
    pub sample_every: Duration,
    /// Embedded cluster: plain TCP between its nodes instead of mutual TLS (to measure the cost).
    #[arg(long)]
    pub insecure_peers: bool,
    /// `--target` serves HTTPS: the cluster CA (PEM) to verify its certificates with.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// The API key every request carries (a key that may create accounts and move money:
    /// admin or operator). Embedded cluster: its development admin key.
    #[arg(long, env = "SETTLE_API_KEY", hide_env_values = true)]
    #[serde(skip)]
    pub api_key: Option<String>,
    /// Embedded cluster: plain HTTP on the client port instead of HTTPS (to measure the cost).
    #[arg(long)]
    pub plain_http: bool,
}

fn as_seconds<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

/// "10s", "500ms", "2m", "1h" or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(position) => text.split_at(position),
        None => (text, "s"),
    };
    let value: u64 = number.parse().map_err(|_| format!("bad duration {text:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(value)),
        "s" => Ok(Duration::from_secs(value)),
        "m" => Ok(Duration::from_secs(value.saturating_mul(60))),
        "h" => Ok(Duration::from_secs(value.saturating_mul(3_600))),
        _ => Err(format!("bad duration unit in {text:?} (ms, s, m, h)")),
    }
}

/// Transfers whose answer was unknown (timeouts, 5xx, 429) and must be looked up at the end: a
/// soak at saturation meets hundreds of thousands (about 100 bytes each here). Past the cap the
/// per-account check is impossible and the run says so.
const AMBIGUOUS_TRACKED_MAX: usize = 2_000_000;
/// Every request gives up after this long (then counted as `timeout`, outcome looked up later).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The most requests the open loop starts (a bound on one run).
const OPEN_LOOP_REQUESTS_MAX: u64 = 50_000_000;

/// `settle bench`: against `--target`, or a local cluster of the running `settle` binary.
pub fn run(flags: BenchFlags) -> anyhow::Result<()> {
    validate(&flags)?;
    let embedded = if flags.target.is_empty() {
        Some(LocalCluster::start_temporary(
            "bench",
            &settle_binary()?,
            flags.nodes,
            flags.shards,
            flags.insecure_peers,
            flags.plain_http,
            Vec::new(),
        )?)
    } else {
        None
    };
    let targets = match &embedded {
        Some(cluster) => cluster.urls.clone(),
        None => flags.target.clone(),
    };
    let (ca, api_key) = match &embedded {
        Some(cluster) => (cluster.ca.clone(), Some(cluster.admin_key.clone())),
        None => (flags.ca_cert.clone(), flags.api_key.clone()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let report = runtime.block_on(run_bench(&flags, &targets, ca.as_deref(), api_key.as_deref()));
    drop(embedded);
    let report = report?;
    report.print();
    if let Some(path) = &flags.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report.to_json(&flags, &targets))?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &flags.compare {
        let old: Value = serde_json::from_slice(&std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)?;
        report.print_comparison(&old);
    }
    if !report.conserved {
        bail!("conservation check FAILED: the bench accounts do not add up");
    }
    Ok(())
}

fn validate(flags: &BenchFlags) -> anyhow::Result<()> {
    if flags.accounts < 2 {
        bail!("--accounts must be at least 2");
    }
    if flags.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if flags.batch_size == 0 || flags.batch_size > 8_000 {
        bail!("--batch-size must be 1..=8000");
    }
    if !(0.0..=1.0).contains(&flags.cross_shard_ratio) {
        bail!("--cross-shard-ratio must be between 0 and 1");
    }
    if flags.rate == Some(0) {
        bail!("--rate must be at least 1");
    }
    if flags.sample_every.is_zero() {
        bail!("--sample-every must be more than 0");
    }
    if flags.route != "spread" && flags.route != "leader" {
        bail!("--route must be spread or leader");
    }
    Ok(())
}

/// What the workers share.
struct Shared {
    client: reqwest::Client,
    targets: Vec<String>,
    plan: Plan,
    measuring: AtomicBool,
    stop: AtomicBool,
    transfers: AtomicU64,
    requests: AtomicU64,
    error_count: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    latency: Mutex<Histogram<u64>>,
    interval: Mutex<Histogram<u64>>,
    /// Latencies since the last timeline sample.
    sample_window: Mutex<Histogram<u64>>,
    /// Per account: net minor units moved by acknowledged transfers.
    net: Mutex<Vec<i128>>,
    ambiguous: Mutex<Vec<Transfer>>,
    /// Unknown outcomes past `AMBIGUOUS_TRACKED_MAX` (not looked up).
    ambiguous_untracked: AtomicU64,
    /// `--route leader`: the target index leading each shard (refreshed every second).
    leaders: std::sync::RwLock<Vec<Option<usize>>>,
    route_to_leader: bool,
}

async fn run_bench(flags: &BenchFlags, targets: &[String], ca: Option<&std::path::Path>, api_key: Option<&str>) -> anyhow::Result<Report> {
    // Idle connections for every request in flight, the final read-back's too: a smaller pool
    // closes and reopens connections, leaving thousands in TIME_WAIT after a large run.
    let pool = flags.concurrency.max(crate::history::READS_IN_FLIGHT);
    let client = crate::http::client_builder(ca, api_key)?.timeout(REQUEST_TIMEOUT).pool_max_idle_per_host(pool).build()?;
    let plan = workload::setup(&client, targets, flags).await?;
    let accounts = plan.accounts.len();
    let shared = Arc::new(Shared {
        client,
        targets: targets.to_vec(),
        plan,
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        transfers: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        error_count: AtomicU64::new(0),
        errors: Mutex::new(BTreeMap::new()),
        latency: Mutex::new(Histogram::new_with_bounds(1, 120_000_000, 3)?),
        interval: Mutex::new(Histogram::new_with_bounds(1, 120_000_000, 3)?),
        sample_window: Mutex::new(Histogram::new_with_bounds(1, 120_000_000, 3)?),
        net: Mutex::new(vec![0; accounts]),
        ambiguous: Mutex::new(Vec::new()),
        ambiguous_untracked: AtomicU64::new(0),
        leaders: std::sync::RwLock::new(Vec::new()),
        route_to_leader: flags.route == "leader",
    });
    if shared.route_to_leader {
        *shared.leaders.write().expect("leaders") = workload::shard_leaders(&shared.client, &shared.targets).await;
        let refresher = shared.clone();
        tokio::spawn(async move {
            while !refresher.stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let leaders = workload::shard_leaders(&refresher.client, &refresher.targets).await;
                if !leaders.is_empty() {
                    *refresher.leaders.write().expect("leaders") = leaders;
                }
            }
        });
    }
    let started = Instant::now();
    let total = flags.warmup + flags.duration;
    let next_slot = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for worker in 0..flags.concurrency {
        let shared = shared.clone();
        let next_slot = next_slot.clone();
        let (rate, batch, seed) = (flags.rate, flags.batch_size, flags.seed);
        workers.push(tokio::spawn(async move {
            worker_loop(shared, worker, rate, batch, seed, started, next_slot).await;
        }));
    }
    let mut measured_from = None;
    // When the last progress line was printed, and the transfers counted then.
    let mut last = (Instant::now(), 0u64);
    let mut samples: Vec<timeline::Sample> = Vec::new();
    let mut last_sample = (Instant::now(), 0u64);
    while started.elapsed() < total {
        tokio::time::sleep(Duration::from_millis(1_000).min(total.saturating_sub(started.elapsed()))).await;
        if measured_from.is_none() && started.elapsed() >= flags.warmup {
            reset_counters(&shared);
            shared.measuring.store(true, Ordering::Relaxed);
            measured_from = Some(Instant::now());
            last = (Instant::now(), 0);
            last_sample = (Instant::now(), 0);
            shared.sample_window.lock().expect("window").reset();
            eprintln!("bench: warmup done, measuring for {:?}", flags.duration);
            continue;
        }
        let transfers = shared.transfers.load(Ordering::Relaxed);
        let elapsed = last.0.elapsed().as_secs_f64().max(1e-9);
        let p99_ms = {
            let mut interval = shared.interval.lock().expect("interval");
            let p99 = interval.value_at_quantile(0.99) as f64 / 1000.0;
            interval.reset();
            p99
        };
        eprintln!(
            "bench: {:>5.1}s  {:>9.0} transfers/s  p99 {:>7.2} ms  errors {}",
            started.elapsed().as_secs_f64(),
            (transfers - last.1) as f64 / elapsed,
            p99_ms,
            shared.error_count.load(Ordering::Relaxed)
        );
        last = (Instant::now(), transfers);
        if let (Some(from), Some(path)) = (measured_from, &flags.timeline) {
            if last_sample.0.elapsed() >= flags.sample_every {
                samples.push(take_sample(&shared, from, &mut last_sample).await);
                if let Err(error) = timeline::write(path, &samples, &serde_json::to_value(flags)?) {
                    eprintln!("bench: writing the timeline {}: {error}", path.display());
                }
            }
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    if let Some(path) = &flags.timeline {
        let summary = timeline::summary(&samples);
        eprintln!("bench: timeline in {} (and .svg): {summary}", path.display());
    }
    let measured_for = measured_from.map_or(Duration::ZERO, |at: Instant| at.elapsed());
    for worker in workers {
        worker.await?;
    }
    let mut conserved = workload::check_conservation(&shared.client, targets, &shared.plan, &shared.net, &shared.ambiguous).await?;
    let untracked = shared.ambiguous_untracked.load(Ordering::Relaxed);
    if untracked > 0 {
        eprintln!(
            "bench: conservation: {untracked} transfers had an unknown outcome past the {AMBIGUOUS_TRACKED_MAX} looked up: \
             their accounts' balances cannot be checked (the sum over the bank and the accounts still is)"
        );
        conserved = false;
    }
    let latency = shared.latency.lock().expect("latency").clone();
    let errors = shared.errors.lock().expect("errors").clone();
    Ok(Report::new(
        shared.transfers.load(Ordering::Relaxed),
        shared.requests.load(Ordering::Relaxed),
        measured_for,
        latency,
        errors,
        conserved,
    ))
}

/// One timeline sample: the bench's window since the last sample, and every node's metrics.
async fn take_sample(shared: &Shared, measured_from: Instant, last: &mut (Instant, u64)) -> timeline::Sample {
    let transfers = shared.transfers.load(Ordering::Relaxed);
    let seconds = last.0.elapsed().as_secs_f64().max(1e-9);
    let p99_ms = {
        let mut window = shared.sample_window.lock().expect("window");
        let p99 = window.value_at_quantile(0.99) as f64 / 1000.0;
        window.reset();
        p99
    };
    let transfers_per_sec = transfers.saturating_sub(last.1) as f64 / seconds;
    *last = (Instant::now(), transfers);
    let mut nodes = Vec::new();
    for target in &shared.targets {
        nodes.push(timeline::scrape(&shared.client, target).await);
    }
    timeline::Sample {
        elapsed_seconds: measured_from.elapsed().as_secs_f64(),
        transfers_per_sec,
        p99_ms,
        transfers_total: transfers,
        errors_total: shared.error_count.load(Ordering::Relaxed),
        nodes,
    }
}

fn reset_counters(shared: &Shared) {
    shared.transfers.store(0, Ordering::Relaxed);
    shared.requests.store(0, Ordering::Relaxed);
    shared.error_count.store(0, Ordering::Relaxed);
    shared.errors.lock().expect("errors").clear();
    shared.latency.lock().expect("latency").reset();
}

async fn worker_loop(
    shared: Arc<Shared>,
    worker: usize,
    rate: Option<u64>,
    batch: usize,
    seed: u64,
    started: Instant,
    next_slot: Arc<AtomicU64>,
) {
    let mut rng = workload::worker_rng(seed, worker);
    let mut sequence = 0u64;
    let target = shared.targets[worker % shared.targets.len()].clone();
    while !shared.stop.load(Ordering::Relaxed) {
        // Open loop: each request has an intended start; latency counts from it.
        let intended = match rate {
            Some(rate) => {
                let slot = next_slot.fetch_add(1, Ordering::Relaxed);
                if slot >= OPEN_LOOP_REQUESTS_MAX {
                    return;
                }
                let at = started + Duration::from_nanos(slot.saturating_mul(1_000_000_000) / rate);
                let now = Instant::now();
                if at > now {
                    tokio::time::sleep(at - now).await;
                }
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                at
            }
            None => Instant::now(),
        };
        let transfers = shared.plan.transfers(&mut rng, batch, worker, &mut sequence);
        let leader = if shared.route_to_leader {
            let shard = usize::try_from(transfers[0].shard).expect("fits");
            shared.leaders.read().expect("leaders").get(shard).copied().flatten()
        } else {
            None
        };
        let target = leader.map_or(target.as_str(), |index| shared.targets[index].as_str());
        let outcome = workload::send(&shared.client, target, &transfers, &shared.plan).await;
        let micros = u64::try_from(intended.elapsed().as_micros()).unwrap_or(u64::MAX).max(1);
        record(&shared, &transfers, outcome, micros);
    }
}

fn record(shared: &Shared, transfers: &[Transfer], outcome: workload::Outcome, micros: u64) {
    let measuring = shared.measuring.load(Ordering::Relaxed);
    let mut posted = 0u64;
    {
        let mut net = shared.net.lock().expect("net");
        for (transfer, answer) in transfers.iter().zip(&outcome.results) {
            match answer {
                Answer::Posted => {
                    net[transfer.from] -= transfer.amount;
                    net[transfer.to] += transfer.amount;
                    posted += 1;
                }
                // The cluster may have posted it: looked up before the conservation check.
                Answer::Retry(_) => {
                    let mut ambiguous = shared.ambiguous.lock().expect("ambiguous");
                    if ambiguous.len() < AMBIGUOUS_TRACKED_MAX {
                        ambiguous.push(transfer.clone());
                    } else {
                        shared.ambiguous_untracked.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Answer::Final(_) => {}
            }
        }
    }
    if !measuring {
        return;
    }
    shared.requests.fetch_add(1, Ordering::Relaxed);
    shared.transfers.fetch_add(posted, Ordering::Relaxed);
    let _ = shared.latency.lock().expect("latency").record(micros);
    let _ = shared.interval.lock().expect("interval").record(micros);
    let _ = shared.sample_window.lock().expect("window").record(micros);
    let failures: Vec<&String> = outcome
        .results
        .iter()
        .filter_map(|answer| match answer {
            Answer::Posted => None,
            Answer::Final(code) | Answer::Retry(code) => Some(code),
        })
        .collect();
    if !failures.is_empty() {
        shared.error_count.fetch_add(u64::try_from(failures.len()).unwrap_or(u64::MAX), Ordering::Relaxed);
        let mut errors = shared.errors.lock().expect("errors");
        for failure in failures {
            *errors.entry(failure.clone()).or_insert(0) += 1;
        }
    }
}
