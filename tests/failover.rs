//! Real processes: a 3-node cluster under concurrent transfers survives the SIGKILL of the
//! node leading the most shards, and a SIGKILL of every node, without losing or creating money.

mod common;

use common::TestCluster;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use settle_cluster::ids::AccountId;
use settle_cluster::money::Currency;
use settle_cluster::placement::Placement;
use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SHARDS: u32 = 16;
const CUSTOMERS: usize = 24;
const FUNDING_MINOR: i128 = 100_000;

/// Cents as the API's USD amount text.
fn cents(minor: i128) -> String {
    Currency::from_code("USD").expect("USD").format(minor)
}

/// The API's USD amount text back to cents.
fn parse_cents(text: &str) -> i128 {
    let decimal = Decimal::from_str(text).expect("a decimal amount");
    assert_eq!(decimal.scale(), 2, "USD amounts carry two decimals: {text}");
    decimal.mantissa()
}

/// What clients learned: a definitive answer per transfer id, or none (ambiguous).
#[derive(Default)]
struct History {
    posted: BTreeMap<String, (String, String, i128)>,
    rejected: BTreeMap<String, (String, u16)>,
    ambiguous: BTreeMap<String, Value>,
}

enum Outcome {
    Posted,
    Rejected(u16),
    Unknown,
}

/// Sends one transfer, retrying the same id on every node until a definitive answer (2xx, or a
/// 4xx other than 408/429) or the deadline.
async fn submit(client: &reqwest::Client, urls: &[String], body: &Value, start: usize, deadline: Instant) -> Outcome {
    let mut attempt = start;
    loop {
        let url = &urls[attempt % urls.len()];
        attempt += 1;
        let response = client.post(format!("{url}/v1/transfers")).json(body).timeout(Duration::from_secs(6)).send().await;
        if let Ok(response) = response {
            let status = response.status().as_u16();
            match status {
                201 => return Outcome::Posted,
                400..=499 if status != 408 && status != 429 => return Outcome::Rejected(status),
                _ => {}
            }
        }
        if Instant::now() > deadline {
            return Outcome::Unknown;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until the workers have posted `more` transfers beyond what they had posted.
async fn progress(history: &Mutex<History>, more: usize) {
    let target = history.lock().expect("history lock").posted.len() + more;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let posted = history.lock().expect("history lock").posted.len();
        if posted >= target {
            return;
        }
        assert!(Instant::now() < deadline, "the workload stalled at {posted} posted transfers (waiting for {target})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn record(history: &Mutex<History>, id: String, from: &str, to: &str, amount: i128, outcome: Outcome, body: Value) {
    let mut history = history.lock().expect("history lock");
    match outcome {
        Outcome::Posted => {
            history.posted.insert(id, (from.to_string(), to.to_string(), amount));
        }
        Outcome::Rejected(status) => {
            history.rejected.insert(id, (from.to_string(), status));
        }
        Outcome::Unknown => {
            history.ambiguous.insert(id, body);
        }
    }
}

/// For each shard, an account name that lives on it (probes measure each shard's write pause).
fn probe_accounts(placement: &Placement) -> BTreeMap<u32, String> {
    let mut probes = BTreeMap::new();
    let mut n = 0;
    while probes.len() < usize::try_from(placement.shard_count()).expect("small") {
        let name = format!("probe-{n}");
        let shard = placement.shard_of(&AccountId::new(&name).expect("valid"));
        probes.entry(shard).or_insert(name);
        n += 1;
    }
    probes
}

async fn balances(cluster: &TestCluster, node: u64, accounts: &[String]) -> BTreeMap<String, i128> {
    let mut seen = BTreeMap::new();
    for account in accounts {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = cluster.get_json(node, &format!("/v1/accounts/{account}")).await;
            if status == 200 {
                seen.insert(account.clone(), parse_cents(body["balance"].as_str().expect("balance")));
                break;
            }
            assert!(status >= 500 && Instant::now() < deadline, "read {account} on node {node}: {status} {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    seen
}

async fn transfer_status(cluster: &TestCluster, node: u64, id: &str, from: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = cluster.get_json(node, &format!("/v1/transfers/{id}?from={from}")).await;
        if status == 200 {
            return body["status"].as_str().expect("status").to_string();
        }
        if status == 404 {
            return "not_found".to_string();
        }
        assert!(Instant::now() < deadline, "read transfer {id}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kill the busiest leader under load, restart it, then kill and restart every node: every
/// node reports balances equal to funding plus the posted transfers, money sums to zero, no
/// customer is negative, and nothing rejected with a 4xx ever reads back as posted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kill_under_load_and_full_restart_lose_nothing() {
    let mut cluster = TestCluster::start(3, SHARDS).await;
    let placement = Placement::new(vec![1, 2, 3], SHARDS);
    let customers: Vec<String> = (0..CUSTOMERS).map(|n| format!("c{n:02}")).collect();
    let probes = probe_accounts(&placement);
    let mut expected: BTreeMap<String, i128> = BTreeMap::new();
    cluster.create_account(1, "bank", "USD", "settlement").await;
    expected.insert("bank".to_string(), 0);
    let urls = cluster.urls();
    let deadline = || Instant::now() + Duration::from_secs(30);
    for (n, account) in customers.iter().chain(probes.values()).enumerate() {
        let node = 1 + u64::try_from(n % 3).expect("small");
        cluster.create_account(node, account, "USD", "customer").await;
        let body =
            json!({ "id": format!("fund-{account}"), "from": "bank", "to": account, "amount": cents(FUNDING_MINOR), "currency": "USD" });
        let outcome = submit(&cluster.client, &urls, &body, n, deadline()).await;
        assert!(matches!(outcome, Outcome::Posted), "funding {account}");
        expected.insert(account.clone(), FUNDING_MINOR);
        *expected.get_mut("bank").expect("bank") -= FUNDING_MINOR;
    }

    // Concurrent clients: same- and cross-shard transfers with amounts that often exceed balances.
    let history = Arc::new(Mutex::new(History::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..6usize {
        let (client, urls, customers) = (cluster.client.clone(), urls.clone(), customers.clone());
        let (history, stop) = (history.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(u64::try_from(worker).expect("small"));
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 100_000 {
                let from = &customers[rng.gen_range(0..customers.len())];
                let to = &customers[rng.gen_range(0..customers.len())];
                if from == to {
                    continue;
                }
                let amount: i128 = rng.gen_range(1..=40_000);
                let id = format!("w{worker}-{n}");
                n += 1;
                let body = json!({ "id": id, "from": from, "to": to, "amount": cents(amount), "currency": "USD" });
                let outcome = submit(&client, &urls, &body, worker, Instant::now() + Duration::from_secs(20)).await;
                record(&history, id, from, to, amount, outcome, body);
            }
        }));
    }
    progress(&history, 30).await;

    let view = cluster.cluster_view(1).await;
    let victim = view["nodes"].as_array().expect("nodes").iter().max_by_key(|node| node["leader_of"].as_u64()).expect("a node")["id"]
        .as_u64()
        .expect("id");
    let victim_shards: Vec<u32> = view["shards"]
        .as_array()
        .expect("shards")
        .iter()
        .filter(|shard| shard["leader"].as_u64() == Some(victim))
        .map(|shard| u32::try_from(shard["id"].as_u64().expect("id")).expect("small"))
        .collect();
    assert!(!victim_shards.is_empty(), "the busiest node leads something");
    let killed_at = Instant::now();
    cluster.kill(victim);

    // Writes to every shard the victim led, through the survivors, until each succeeds once.
    let survivors: Vec<String> = cluster.running().iter().map(|id| cluster.node(*id).url()).collect();
    let mut probes_done = Vec::new();
    for shard in &victim_shards {
        let (client, survivors) = (cluster.client.clone(), survivors.clone());
        let probe = probes[shard].clone();
        probes_done.push(tokio::spawn(async move {
            let id = format!("probe-after-kill-{probe}");
            let body = json!({ "id": id, "from": probe, "to": "bank", "amount": "0.01", "currency": "USD" });
            let outcome = submit(&client, &survivors, &body, 0, Instant::now() + Duration::from_secs(30)).await;
            (probe, outcome, killed_at.elapsed())
        }));
    }
    let mut pause = Duration::ZERO;
    for probe in probes_done {
        let (account, outcome, elapsed) = probe.await.expect("probe task");
        assert!(matches!(outcome, Outcome::Posted), "probe on {account} did not post");
        *expected.get_mut(&account).expect("probe") -= 1;
        *expected.get_mut("bank").expect("bank") += 1;
        pause = pause.max(elapsed);
    }
    println!("writes resumed on all {} shards of killed leader node {victim} after {pause:?} (target < 2 s)", victim_shards.len());
    assert!(pause < Duration::from_secs(10), "writes paused {pause:?} after the leader's SIGKILL");

    progress(&history, 20).await;
    cluster.restart(victim).await;
    progress(&history, 20).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.expect("worker");
    }

    // Clients resolve ambiguous outcomes by retrying the same id.
    let ambiguous: Vec<(String, Value)> = std::mem::take(&mut history.lock().expect("lock").ambiguous).into_iter().collect();
    for (id, body) in ambiguous {
        let outcome = submit(&cluster.client, &urls, &body, 0, deadline()).await;
        let (from, to) = (body["from"].as_str().expect("from").to_string(), body["to"].as_str().expect("to").to_string());
        let amount = parse_cents(body["amount"].as_str().expect("amount"));
        assert!(!matches!(outcome, Outcome::Unknown), "transfer {id} still unresolved");
        record(&history, id, &from, &to, amount, outcome, body);
    }
    // The workers have stopped: take the history out rather than hold the lock across awaits.
    let history = std::mem::take(&mut *history.lock().expect("lock"));
    for (from, to, amount) in history.posted.values() {
        *expected.get_mut(from).expect("payer") -= amount;
        *expected.get_mut(to).expect("payee") += amount;
    }
    println!("{} posted, {} rejected", history.posted.len(), history.rejected.len());
    assert!(history.posted.len() > 20, "the workload made progress");

    let accounts: Vec<String> = expected.keys().cloned().collect();
    for node in 1..=3 {
        let seen = balances(&cluster, node, &accounts).await;
        assert_eq!(seen, expected, "node {node} balances = funding + posted transfers");
    }
    assert_eq!(expected.values().sum::<i128>(), 0, "money sums to zero");
    for (account, balance) in &expected {
        assert!(account == "bank" || *balance >= 0, "{account} is negative");
    }
    for (id, (from, status)) in &history.rejected {
        let stored = transfer_status(&cluster, 1 + u64::try_from(id.len() % 3).expect("small"), id, from).await;
        assert_ne!(stored, "posted", "transfer {id} was rejected with {status} but reads back posted");
    }

    // Every node SIGKILLed at once, then restarted: nothing acknowledged is lost.
    let sample: Vec<(String, String)> = history.posted.iter().take(200).map(|(id, (from, _, _))| (id.clone(), from.clone())).collect();
    for node in 1..=3 {
        cluster.kill(node);
    }
    for node in 1..=3 {
        cluster.spawn(node);
    }
    for node in 1..=3 {
        cluster.wait_ready(node, Duration::from_secs(60)).await;
    }
    for node in 1..=3 {
        let seen = balances(&cluster, node, &accounts).await;
        assert_eq!(seen, expected, "node {node} after restarting every node");
    }
    for (id, from) in &sample {
        assert_eq!(transfer_status(&cluster, 2, id, from).await, "posted", "transfer {id} after full restart");
    }
    for (id, (from, _)) in history.rejected.iter().take(100) {
        assert_ne!(transfer_status(&cluster, 3, id, from).await, "posted", "rejected {id} after full restart");
    }
}
