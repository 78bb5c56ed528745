//! Real processes: a node that was down while the others wrote 200,000 transfers comes back and
//! catches up by snapshots streamed from the shard leaders (their logs were compacted past it),
//! while the cluster keeps serving writes; afterwards it holds every balance exactly.

mod common;

use common::TestCluster;
use serde_json::{json, Value};
use settle_client::{cents, parse_cents};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SHARDS: u32 = 8;
const CUSTOMERS: usize = 2_000;
const FUNDING_MINOR: i128 = 10_000_000;
const BATCH: usize = 8_000;
const TRANSFERS_WHILE_DOWN: usize = 200_000;

/// The cluster's settings for this test: compact logs soon, so a node down for a while can only
/// come back through a snapshot.
const ENV: &[(&str, &str)] = &[
    ("SETTLE_LIMITS__CHECKPOINT_INTERVAL_MS", "300"),
    ("SETTLE_LIMITS__CHECKPOINT_ENTRIES", "200"),
    ("SETTLE_LIMITS__COMPACTION_LAG_ENTRIES", "20"),
    ("SETTLE_REQUEST_TIMEOUT_MS", "20000"),
];

fn customer(n: usize) -> String {
    format!("c{n}")
}

/// Sends one batch through the given nodes until every item has a definitive answer; returns
/// the posted transfers as (from, to, cents). Any refusal fails the test (the payers cannot run
/// out of funds here).
async fn post_batch(cluster: &TestCluster, nodes: &[u64], items: Vec<Value>) -> Vec<(String, String, i128)> {
    settle_actors::tls::install_crypto_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .default_headers(common::bearer(common::ADMIN_KEY))
        .build()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut waiting = items;
    let mut posted = Vec::new();
    let mut turn = 0;
    while !waiting.is_empty() {
        assert!(Instant::now() < deadline, "{} transfers without a definitive answer", waiting.len());
        let node = nodes[turn % nodes.len()];
        turn += 1;
        let url = format!("{}/v1/transfers/batch", cluster.node(node).url());
        let Ok(response) = client.post(url).json(&json!({ "transfers": waiting })).send().await else {
            continue;
        };
        if response.status() != 200 {
            continue;
        }
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let results = body["results"].as_array().cloned().unwrap_or_default();
        let mut unknown = Vec::new();
        for (position, item) in waiting.into_iter().enumerate() {
            let status = results.get(position).and_then(|result| result["status"].as_u64()).unwrap_or(0);
            match status {
                201 => posted.push((
                    item["from"].as_str().expect("from").to_string(),
                    item["to"].as_str().expect("to").to_string(),
                    parse_cents(item["amount"].as_str().expect("amount")).expect("cents"),
                )),
                400..=499 if status != 408 && status != 429 => panic!("{item} refused: {}", results[position]),
                _ => unknown.push(item),
            }
        }
        waiting = unknown;
    }
    posted
}

/// Transfers `first..first+count` between the customers (ids from `prefix`), in batches.
fn transfers(prefix: &str, first: usize, count: usize) -> Vec<Value> {
    (first..first + count)
        .map(|n| {
            let from = (n * 7_919) % CUSTOMERS;
            let to = (from + 1 + (n * 104_729) % (CUSTOMERS - 1)) % CUSTOMERS;
            json!({
                "id": format!("{prefix}-{n}"),
                "from": customer(from),
                "to": customer(to),
                "amount": cents(1 + i128::try_from(n % 97).expect("small")),
                "currency": "USD",
            })
        })
        .collect()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Per shard, the applied index of each running node's replica (from `/metrics`).
async fn applied_indexes(cluster: &TestCluster, node: u64) -> BTreeMap<String, f64> {
    let text =
        cluster.client.get(format!("{}/metrics", cluster.node(node).url())).send().await.expect("metrics").text().await.expect("text");
    text.lines()
        .filter(|line| line.starts_with("settle_shard_applied_index{"))
        .filter_map(|line| {
            let shard = line.split("shard=\"").nth(1)?.split('"').next()?.to_string();
            Some((shard, line.rsplit(' ').next()?.parse::<f64>().ok()?))
        })
        .collect()
}

/// A node restarted after 200,000 transfers it missed is brought up to date by streamed
/// snapshots while writes go on, and then serves every balance exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_for_200k_transfers_catches_up_by_streamed_snapshots_while_serving() {
    let mut cluster = TestCluster::start_with_env(3, SHARDS, ENV).await;
    let mut accounts = vec![json!({ "id": "bank", "currency": "USD", "kind": "settlement" })];
    accounts.extend((0..CUSTOMERS).map(|n| json!({ "id": customer(n), "currency": "USD" })));
    let (status, body) = cluster.post_json(1, "/v1/accounts/batch", &json!({ "accounts": accounts })).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["results"].as_array().expect("results").iter().all(|item| item["status"] == 201), "{body}");
    let funding: Vec<Value> = (0..CUSTOMERS)
        .map(|n| json!({ "id": format!("fund-{n}"), "from": "bank", "to": customer(n), "amount": cents(FUNDING_MINOR), "currency": "USD" }))
        .collect();
    let mut expected: BTreeMap<String, i128> = BTreeMap::new();
    let apply = |posted: Vec<(String, String, i128)>, expected: &mut BTreeMap<String, i128>| {
        for (from, to, amount) in posted {
            *expected.entry(from).or_default() -= amount;
            *expected.entry(to).or_default() += amount;
        }
    };
    apply(post_batch(&cluster, &[1, 2, 3], funding).await, &mut expected);

    cluster.kill(3);
    let written = Instant::now();
    for first in (0..TRANSFERS_WHILE_DOWN).step_by(BATCH) {
        apply(post_batch(&cluster, &[1, 2], transfers("down", first, BATCH)).await, &mut expected);
    }
    println!("{TRANSFERS_WHILE_DOWN} transfers written with node 3 down in {:.1} s", written.elapsed().as_secs_f64());

    // Writes go on while node 3 comes back.
    let stop = Arc::new(AtomicBool::new(false));
    let posted_during = Arc::new(AtomicU64::new(0));
    let restarted = Instant::now();
    cluster.restart(3).await;
    println!("node 3 ready {:.2} s after its restart", restarted.elapsed().as_secs_f64());
    let cluster = Arc::new(cluster);
    let writer = {
        let (cluster, stop, posted_during) = (cluster.clone(), stop.clone(), posted_during.clone());
        tokio::spawn(async move {
            let mut all = Vec::new();
            let mut first = 0;
            while !stop.load(Ordering::Relaxed) && first < 100 * 1_000 {
                let posted = post_batch(&cluster, &[1, 2, 3], transfers("during", first, 1_000)).await;
                posted_during.fetch_add(u64::try_from(posted.len()).expect("fits"), Ordering::Relaxed);
                all.extend(posted);
                first += 1_000;
            }
            all
        })
    };
    // Caught up: node 3's replica of every shard has applied what the leaders had when it
    // started, and it got there by snapshots.
    let deadline = Instant::now() + Duration::from_secs(240);
    let target = applied_indexes(&cluster, 1).await;
    loop {
        let here = applied_indexes(&cluster, 3).await;
        let behind: Vec<&String> = target.keys().filter(|shard| here.get(*shard).copied().unwrap_or(0.0) < target[*shard]).collect();
        if behind.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "node 3 still behind on shards {behind:?}; its log:\n{}", cluster.log_tail(3, 60));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("node 3 caught up {:.2} s after its restart", restarted.elapsed().as_secs_f64());
    stop.store(true, Ordering::Relaxed);
    apply(writer.await.expect("writer"), &mut expected);
    assert!(posted_during.load(Ordering::Relaxed) > 0, "the cluster served writes while node 3 caught up");
    let text = cluster.client.get(format!("{}/metrics", cluster.node(3).url())).send().await.unwrap().text().await.unwrap();
    let streams = metric(&text, "settle_snapshot_streams_started_total");
    let received = metric(&text, "settle_snapshot_bytes_received_total");
    println!("node 3 streamed {streams} snapshots, {received} bytes");
    assert!(streams >= 1.0 && received > 0.0, "node 3 caught up by streamed snapshots ({streams} streams, {received} bytes)");

    // Node 1 goes: node 3 now leads shards it learned by snapshot, and every balance is exact.
    let mut cluster = Arc::try_unwrap(cluster).unwrap_or_else(|_| panic!("the writer is done"));
    cluster.kill(1);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut sum = 0;
    for (account, want) in &expected {
        loop {
            let (status, body) = cluster.get_json(3, &format!("/v1/accounts/{account}")).await;
            if status == 200 {
                let balance = parse_cents(body["balance"].as_str().expect("balance")).expect("cents");
                assert_eq!(balance, *want, "{account}");
                sum += balance;
                break;
            }
            assert!(Instant::now() < deadline, "{account}: {status} {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(sum, 0, "money is conserved");
}
