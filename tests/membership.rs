//! Issue 15 (membership) on real processes: `settle node decommission` empties a live node
//! while transfers run, and `settle node replace` rebuilds a dead node's replicas on the
//! others. Afterwards no shard names the node, every shard has three voters that are up, the
//! cluster serves without it, and money is conserved through every node.

mod common;

use common::{TestCluster, ADMIN_KEY};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const SHARDS: u32 = 8;
const ACCOUNTS: usize = 16;

fn account(index: usize) -> String {
    format!("acct-{index}")
}

/// Runs `settle node ...` to completion; panics with its output if it fails.
fn settle_node(args: &[String]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_settle")).arg("node").args(args).output().expect("run settle node");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "settle node {args:?} failed:\n{text}");
    text
}

async fn funded_cluster(nodes: u64) -> TestCluster {
    funded_cluster_with(nodes, &[]).await
}

async fn funded_cluster_with(nodes: u64, env: &[(&str, &str)]) -> TestCluster {
    let cluster = TestCluster::start_with_env(nodes, SHARDS, env).await;
    cluster.create_account(1, "bank", "USD", "settlement").await;
    for index in 0..ACCOUNTS {
        cluster.create_account(2, &account(index), "USD", "customer").await;
    }
    let funding: Vec<Value> = (0..ACCOUNTS)
        .map(|index| json!({ "id": format!("fund-{index}"), "from": "bank", "to": account(index), "amount": "100.00", "currency": "USD" }))
        .collect();
    let (status, body) = cluster.post_settled(1, "/v1/transfers/batch", &json!({ "transfers": funding })).await;
    assert_eq!(status, 200, "{body}");
    cluster
}

/// Batches of transfers between the accounts through `urls`, round after round (outcomes may
/// be unknown during a move: the balances read afterwards are the reference).
fn load(cluster: &TestCluster, urls: Vec<String>, prefix: &'static str, rounds: usize) -> tokio::task::JoinHandle<()> {
    let client = cluster.client.clone();
    tokio::spawn(async move {
        for round in 0..rounds {
            let items: Vec<Value> = (0..20)
                .map(|item| {
                    let n = round * 20 + item;
                    let (from, to) = (n % ACCOUNTS, (n * 5 + 3) % ACCOUNTS);
                    let to = if to == from { (to + 1) % ACCOUNTS } else { to };
                    json!({ "id": format!("{prefix}-{n}"), "from": account(from), "to": account(to), "amount": "0.37", "currency": "USD" })
                })
                .collect();
            let url = format!("{}/v1/transfers/batch", urls[round % urls.len()]);
            let _ = client.post(url).json(&json!({ "transfers": items })).send().await;
        }
    })
}

/// Waits until every listed node's `/v1/cluster` shows no shard with `gone` as voter or
/// learner and every shard with three voters among `live`; at most 30 s.
async fn wait_membership(cluster: &TestCluster, live: &[u64], gone: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut settled = true;
        for node in live {
            let view = cluster.cluster_view(*node).await;
            for shard in view["shards"].as_array().expect("shards") {
                let voters: Vec<u64> = shard["replicas"].as_array().expect("replicas").iter().filter_map(Value::as_u64).collect();
                let learners = shard["learners"].as_array().map_or(0, Vec::len);
                settled &= voters.len() == 3 && learners == 0 && !voters.contains(&gone) && voters.iter().all(|voter| live.contains(voter));
            }
        }
        if settled {
            return;
        }
        assert!(Instant::now() < deadline, "membership did not settle without node {gone}: {}", cluster.cluster_view(live[0]).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The sum of every balance through each node: zero (the bank paid what the accounts hold),
/// and the same balances through every node.
async fn assert_conserved(cluster: &TestCluster, live: &[u64]) {
    let mut seen = Vec::new();
    for node in live {
        let mut balances = Vec::new();
        for name in std::iter::once("bank".to_string()).chain((0..ACCOUNTS).map(account)) {
            let deadline = Instant::now() + Duration::from_secs(30);
            let body = loop {
                let (status, body) = cluster.get_json(*node, &format!("/v1/accounts/{name}")).await;
                if status == 200 {
                    break body;
                }
                assert!(status >= 500 && Instant::now() < deadline, "{name} through node {node}: {status} {body}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            balances.push(settle_client::parse_cents(body["balance"].as_str().expect("balance")).expect("an amount"));
        }
        assert_eq!(balances.iter().sum::<i128>(), 0, "money is conserved through node {node}: {balances:?}");
        seen.push(balances);
    }
    assert!(seen.windows(2).all(|pair| pair[0] == pair[1]), "every node reads the same balances");
}

/// A transfer through each live node posts.
async fn assert_serves(cluster: &TestCluster, live: &[u64], prefix: &str) {
    for node in live {
        let body = json!({ "id": format!("{prefix}-{node}"), "from": account(0), "to": account(1), "amount": "0.01", "currency": "USD" });
        let (status, reply) = cluster.post_settled(*node, "/v1/transfers", &body).await;
        assert!(status == 200 || status == 201, "through node {node}: {status} {reply}");
        assert_eq!(reply["status"], "posted", "{reply}");
    }
}

/// Decommissioning a live node under load moves every replica off it; it is then stopped and
/// the other three serve, with every shard on three of them and money conserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decommission_moves_every_replica_off_a_live_node_under_load() {
    // A retired node can no longer read API keys from the system shard (its peers drop what it
    // sends): it authenticates the scrape below from its key cache, kept for the whole test and
    // filled by a first scrape before the decommission.
    let mut cluster = funded_cluster_with(4, &[("SETTLE_AUTH_CACHE_MS", "600000")]).await;
    let urls = cluster.urls();
    let before = cluster.client.get(format!("{}/metrics", cluster.node(4).url())).send().await.expect("scrape node 4");
    assert_eq!(before.status(), 200, "node 4 serves its metrics before the decommission");
    let running = load(&cluster, urls.clone(), "d", 60);
    let said = tokio::task::spawn_blocking({
        let args: Vec<String> = ["decommission", "4", "--target", &urls.join(","), "--api-key", ADMIN_KEY].map(String::from).to_vec();
        move || settle_node(&args)
    })
    .await
    .expect("decommission runs");
    assert!(said.contains("node 4 holds no replica any more"), "{said}");
    running.await.expect("load runs");
    wait_membership(&cluster, &[1, 2, 3], 4).await;
    // The emptied node still serves its metrics (no shard family left to encode) and counts
    // the replicas it gave up.
    let scrape = cluster.client.get(format!("{}/metrics", cluster.node(4).url())).send().await.expect("scrape node 4");
    assert_eq!(scrape.status(), 200);
    let text = scrape.text().await.expect("metrics text");
    let removed = text.lines().find(|line| line.starts_with("settle_replicas_removed_total")).expect("settle_replicas_removed_total");
    let count: f64 = removed.rsplit(' ').next().and_then(|value| value.parse().ok()).expect("a number");
    assert!(count >= 6.0, "node 4 gave up the 6 shards it held: {removed}");
    cluster.terminate(4);
    assert_retired(&cluster, &[1, 2, 3], 4).await;
    assert_serves(&cluster, &[1, 2, 3], "after").await;
    assert_conserved(&cluster, &[1, 2, 3]).await;
}

/// The node is retired: the registry says so, and no live node lists it any more.
async fn assert_retired(cluster: &TestCluster, live: &[u64], gone: u64) {
    let (status, nodes) = cluster.get_json(live[0], "/admin/nodes").await;
    assert_eq!(status, 200, "{nodes}");
    let entry = nodes["nodes"].as_array().expect("nodes").iter().find(|node| node["id"] == gone).cloned().unwrap_or_default();
    assert_eq!(entry["retired"], true, "{nodes}");
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in live {
        loop {
            let view = cluster.cluster_view(*node).await;
            let listed = view["nodes"].as_array().expect("nodes").iter().any(|entry| entry["id"] == gone);
            if !listed {
                break;
            }
            assert!(Instant::now() < deadline, "node {node} still lists retired node {gone}: {view}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A node killed and its disk lost is replaced: its replicas are rebuilt on the live nodes
/// (the one named by --with first), every shard is back to three live voters, and the cluster
/// serves with money conserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_rebuilds_a_dead_nodes_replicas_on_the_others() {
    let mut cluster = funded_cluster(4).await;
    cluster.kill(3);
    std::fs::remove_dir_all(cluster.data_dir(3)).expect("wipe node 3's data dir");
    let urls: Vec<String> = [1, 2, 4].iter().map(|id| cluster.node(*id).url()).collect();
    let running = load(&cluster, urls.clone(), "r", 30);
    let said = tokio::task::spawn_blocking({
        let args: Vec<String> =
            ["replace", "3", "--with", "4", "--target", &urls.join(","), "--api-key", ADMIN_KEY].map(String::from).to_vec();
        move || settle_node(&args)
    })
    .await
    .expect("replace runs");
    assert!(said.contains("node 3 holds no replica any more"), "{said}");
    running.await.expect("load runs");
    wait_membership(&cluster, &[1, 2, 4], 3).await;
    assert_retired(&cluster, &[1, 2, 4], 3).await;
    assert_serves(&cluster, &[1, 2, 4], "after").await;
    assert_conserved(&cluster, &[1, 2, 4]).await;
}

/// The replicas (voters and learners) each node holds, as node `through` sees the shards.
async fn replicas_per_node(cluster: &TestCluster, through: u64) -> std::collections::BTreeMap<u64, usize> {
    let view = cluster.cluster_view(through).await;
    let mut load = std::collections::BTreeMap::new();
    for shard in view["shards"].as_array().expect("shards") {
        let members = shard["replicas"].as_array().into_iter().flatten().chain(shard["learners"].as_array().into_iter().flatten());
        for member in members.filter_map(Value::as_u64) {
            *load.entry(member).or_insert(0) += 1;
        }
    }
    load
}

/// The value of the sample of `name` whose labels include `label` in node `id`'s `/metrics`.
async fn metric(cluster: &TestCluster, id: u64, name: &str, label: &str) -> f64 {
    let text = cluster.client.get(format!("{}/metrics", cluster.node(id).url())).send().await.expect("scrape").text().await.expect("text");
    let sample = text.lines().find(|line| line.starts_with(&format!("{name}{{")) && line.contains(label));
    sample.and_then(|line| line.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0)
}

/// Scale-out 3 → 5 under load: a node started with `--join` before it is registered is
/// refused (and counted), `settle node add 4` (no address: the one it asked with) registers it
/// and moves replicas onto it; a second node is registered first with `--peer` and joins; replicas end even over the five, every shard has three
/// live voters, a joined node restarts from its own data dir, and money is conserved through
/// every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_from_three_to_five_nodes_under_load() {
    let mut cluster = funded_cluster(3).await;
    let urls = cluster.urls();
    let running = load(&cluster, urls.clone(), "s", 60);

    // Node 4 asks to join before anyone registered it: refused until `settle node add`.
    let four = cluster.add_node();
    cluster.spawn(four);
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&cluster, 1, "settle_peer_messages_rejected_total", "reason=\"join_not_registered\"").await < 1.0 {
        assert!(Instant::now() < deadline, "node 1 never refused the unregistered node 4; its log:\n{}", cluster.log_tail(1, 50));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (id, spawn_after_registering) in [(four, false), (cluster.add_node(), true)] {
        let mut args: Vec<String> = ["add", &id.to_string(), "--target", &urls.join(","), "--api-key", ADMIN_KEY, "--timeout-secs", "300"]
            .map(String::from)
            .to_vec();
        // Node 4 asked to join already: `settle node add 4` finds the address it gave. Node 5
        // is registered with its address first.
        if spawn_after_registering {
            args.extend(["--peer".to_string(), format!("127.0.0.1:{}", cluster.node(id).peer_port)]);
        }
        let adding = tokio::task::spawn_blocking(move || settle_node(&args));
        // Node 5 is registered first and started after: `settle node add` waits for it.
        if spawn_after_registering {
            cluster.spawn(id);
        }
        let said = adding.await.expect("node add runs");
        assert!(said.contains(&format!("node {id} joined")) && said.contains("balanced"), "{said}");
        assert_eq!(said.contains("asked to join"), !spawn_after_registering, "{said}");
        cluster.wait_ready(id, Duration::from_secs(60)).await;
    }
    running.await.expect("load runs");

    let all = [1, 2, 3, 4, 5];
    wait_membership(&cluster, &all, 0).await;
    let load = replicas_per_node(&cluster, 1).await;
    let (least, most) = (load.values().min().copied().unwrap_or(0), load.values().max().copied().unwrap_or(0));
    assert!(load.len() == 5 && most - least <= 1, "replicas even over five nodes: {load:?}");
    // Through a joined node too: it knows every shard's members.
    assert_eq!(replicas_per_node(&cluster, 5).await, load);

    // A joined node restarts from its data dir (no member is asked again) and serves.
    assert!(cluster.terminate(four).success(), "node 4 stops cleanly");
    cluster.spawn(four);
    cluster.wait_ready(four, Duration::from_secs(60)).await;
    assert_serves(&cluster, &all, "after").await;
    assert_conserved(&cluster, &all).await;
}
