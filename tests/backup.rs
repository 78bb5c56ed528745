//! Issue 15 (backup and restore) on real processes: `settle backup` takes an online backup
//! while transfers run, and another once they stopped; `settle restore` prepares the data dirs
//! of two new clusters from them. The quiet backup restores every balance and every transfer
//! exactly; the online one restores a consistent cut: money is conserved on every node, every
//! transfer in it has the status the source gave it, and one in flight at the cut completes.
//! `settle restore --check` passes a good backup and refuses one with a flipped byte.

mod common;

use common::{TestCluster, ADMIN_KEY};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

const SHARDS: u32 = 8;
const ACCOUNTS: usize = 24;
const ROUNDS: usize = 30;
const BATCH: usize = 40;

fn account(index: usize) -> String {
    format!("acct-{index}")
}

/// Runs a `settle` tool to completion; panics with its output if it fails.
fn settle(args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_settle")).args(args).output().expect("run settle");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "settle {args:?} failed:\n{text}");
    text
}

fn backup(cluster: &TestCluster, to: &Path) -> String {
    let targets = cluster.urls().join(",");
    settle(&["backup", "--to", to.to_str().expect("utf-8 path"), "--target", &targets, "--api-key", ADMIN_KEY])
}

/// A new 3-node cluster started from `from` by `settle restore` on each node.
async fn restored(from: &Path) -> TestCluster {
    let mut cluster = TestCluster::prepare_insecure(3, SHARDS);
    for id in 1..=3 {
        let output = cluster.command(id, "restore").arg("--from").arg(from).output().expect("run settle restore");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "settle restore of node {id} failed:\n{text}");
        assert!(text.contains("every shard of the backup checked"), "{text}");
    }
    for id in 1..=3 {
        cluster.spawn(id);
    }
    for id in 1..=3 {
        cluster.wait_ready(id, Duration::from_secs(60)).await;
    }
    cluster
}

/// Reads until the answer is not a 5xx (a restored cluster electing its leaders), at most 30 s.
async fn get_settled(cluster: &TestCluster, node: u64, path: &str) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = cluster.get_json(node, path).await;
        if status < 500 || Instant::now() > deadline {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every account's balance in cents through `node`.
async fn balances(cluster: &TestCluster, node: u64) -> BTreeMap<String, i128> {
    let mut balances = BTreeMap::new();
    for name in std::iter::once("bank".to_string()).chain((0..ACCOUNTS).map(account)) {
        let (status, body) = get_settled(cluster, node, &format!("/v1/accounts/{name}")).await;
        assert_eq!(status, 200, "{name} through node {node}: {body}");
        let text = body["balance"].as_str().expect("balance");
        balances.insert(name, settle_client::parse_cents(text).expect("an amount"));
    }
    balances
}

/// A transfer's status through `node` once it is not pending (`None`: unknown there).
async fn final_status(cluster: &TestCluster, node: u64, id: &str) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get_settled(cluster, node, &format!("/v1/transfers/{id}")).await;
        if status == 404 {
            return None;
        }
        assert_eq!(status, 200, "{id}: {body}");
        let state = body["status"].as_str().expect("status").to_string();
        if state != "pending" {
            return Some(state);
        }
        assert!(Instant::now() < deadline, "{id} still pending");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The backups, their restores, and what each restored cluster holds against the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_restore_into_new_clusters_as_consistent_cuts() {
    let source = TestCluster::start(3, SHARDS).await;
    source.create_account(1, "bank", "USD", "settlement").await;
    for index in 0..ACCOUNTS {
        source.create_account(2, &account(index), "USD", "customer").await;
    }
    let funding: Vec<Value> = (0..ACCOUNTS)
        .map(|index| json!({ "id": format!("fund-{index}"), "from": "bank", "to": account(index), "amount": "100.00", "currency": "USD" }))
        .collect();
    let (status, body) = source.post_settled(1, "/v1/transfers/batch", &json!({ "transfers": funding })).await;
    assert_eq!(status, 200, "{body}");

    // Transfers between the accounts (mostly across shards), batch after batch through every
    // node, while the first backup runs.
    let client = source.client.clone();
    let urls = source.urls();
    let load = tokio::spawn(async move {
        let mut ids = Vec::new();
        for round in 0..ROUNDS {
            let items: Vec<Value> = (0..BATCH)
                .map(|item| {
                    let n = round * BATCH + item;
                    let (from, to) = (n % ACCOUNTS, (n * 7 + 3) % ACCOUNTS);
                    let to = if to == from { (to + 1) % ACCOUNTS } else { to };
                    json!({ "id": format!("t-{n}"), "from": account(from), "to": account(to), "amount": format!("{}.{:02}", n % 3, n % 100), "currency": "USD" })
                })
                .collect();
            ids.extend(items.iter().map(|item| item["id"].as_str().expect("id").to_string()));
            let url = format!("{}/v1/transfers/batch", urls[round % urls.len()]);
            // An unknown outcome is fine here: the cluster read back afterwards is the reference.
            let _ = client.post(url).json(&json!({ "transfers": items })).send().await;
        }
        ids
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let online = dir.path().join("online");
    let said = tokio::task::spawn_blocking({
        let targets = source.urls().join(",");
        let online = online.clone();
        move || settle(&["backup", "--to", online.to_str().expect("utf-8"), "--target", &targets, "--api-key", ADMIN_KEY])
    })
    .await
    .expect("backup thread");
    assert!(said.contains("backup complete"), "{said}");
    let ids = load.await.expect("load");
    // Everything the source will ever post has settled before the quiet backup.
    let mut source_status = BTreeMap::new();
    for id in &ids {
        source_status.insert(id.clone(), final_status(&source, 1, id).await);
    }
    let source_balances = balances(&source, 1).await;
    assert_eq!(source_balances.values().sum::<i128>(), 0, "money is conserved on the source");
    let quiet = dir.path().join("quiet");
    assert!(backup(&source, &quiet).contains("backup complete"));

    // The quiet backup: the same balances and transfers, through every node.
    let copy = restored(&quiet).await;
    for node in 1..=3 {
        assert_eq!(balances(&copy, node).await, source_balances, "balances through node {node} of the restored cluster");
    }
    for id in &ids {
        assert_eq!(final_status(&copy, 2, id).await, source_status[id], "{id} in the restored cluster");
    }
    drop(copy);

    // The online backup: a consistent cut. Money is conserved; every transfer in it ends as
    // the source ended it (one in flight at the cut is re-driven to the same decision).
    let cut = restored(&online).await;
    let mut in_cut = 0;
    for id in &ids {
        if let Some(status) = final_status(&cut, 3, id).await {
            assert_eq!(Some(status), source_status[id], "{id} in the cut");
            in_cut += 1;
        }
    }
    // Nothing is pending any more: every balance is final.
    for node in 1..=3 {
        assert_eq!(balances(&cut, node).await.values().sum::<i128>(), 0, "money is conserved through node {node}");
    }
    eprintln!("the online backup's cut holds {in_cut} of {} transfers", ids.len());
    // `settle restore --check` checks a backup without a cluster; a flipped byte is refused.
    let said = settle(&["restore", "--from", quiet.to_str().expect("utf-8"), "--check"]);
    assert!(said.contains("every file matches the manifest"), "{said}");
    let file = online.join("shard-0000.records");
    let mut bytes = std::fs::read(&file).expect("shard file");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&file, bytes).expect("tamper");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_settle"))
        .args(["restore", "--from", online.to_str().expect("utf-8"), "--check"])
        .output()
        .expect("run settle restore --check");
    assert!(!output.status.success(), "a tampered backup must be refused");
    assert!(String::from_utf8_lossy(&output.stderr).contains("checksum mismatch"), "{}", String::from_utf8_lossy(&output.stderr));
    // A restored cluster takes new transfers.
    let (status, body) = cut
        .post_settled(
            1,
            "/v1/transfers",
            &json!({ "id": "after-restore", "from": "bank", "to": account(0), "amount": "1.00", "currency": "USD" }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}
