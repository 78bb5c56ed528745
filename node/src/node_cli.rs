//! `settle node add`, `settle node rebalance`, `settle node decommission` and `settle node
//! replace`: register a node, then move replicas onto it or off a node, repeating the admin
//! endpoint's step (`api/membership.rs`) until the layout is what was asked, and print each
//! shard's progress as it changes.

use anyhow::{bail, Context};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum NodeCommand {
    /// Register a new node in the cluster's node registry, wait until it joined (`settle start
    /// --node-id ID --peer ADDR --join MEMBER_PEER_ADDR`, empty data dir), then move replicas
    /// onto it until every live node holds about as many.
    Add {
        /// The new node's id (not used by any member).
        id: u64,
        /// The new node's peer address (what it passes as --peer), IP:port. Without it, the
        /// address the node gave when it asked to join through one of the --target nodes
        /// (start it with --join first).
        #[arg(long)]
        peer: Option<std::net::SocketAddr>,
        /// Only register it; leave the replicas where they are.
        #[arg(long)]
        no_rebalance: bool,
        #[command(flatten)]
        target: TargetFlags,
    },
    /// Even out replicas over the live nodes (what `add` does once the node joined).
    Rebalance {
        #[command(flatten)]
        target: TargetFlags,
    },
    /// Move every replica off a live node (to the live nodes with the fewest replicas); when it
    /// finishes the node holds nothing and may be stopped.
    Decommission {
        /// The node to empty.
        id: u64,
        #[command(flatten)]
        target: TargetFlags,
    },
    /// Rebuild a dead node's replicas elsewhere: on `--with` (a member without the shard),
    /// else on the live nodes with the fewest replicas.
    Replace {
        /// The dead (or quarantined) node.
        id: u64,
        /// The node that takes its replicas.
        #[arg(long)]
        with: u64,
        #[command(flatten)]
        target: TargetFlags,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct TargetFlags {
    /// Nodes of the cluster (comma-separated or repeated): each call goes to the first that answers.
    #[arg(long, value_delimiter = ',', default_value = "https://127.0.0.1:8080")]
    pub target: Vec<String>,
    /// The cluster CA (PEM) to verify an HTTPS cluster's certificates with.
    #[arg(long)]
    pub ca_cert: Option<std::path::PathBuf>,
    /// An admin API key, or SETTLE_API_KEY.
    #[arg(long, env = "SETTLE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Give up after this many seconds (the moves started stay valid; run the command again).
    #[arg(long, default_value_t = 1_800)]
    pub timeout_secs: u64,
}

pub fn run(command: NodeCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (id, with, flags) = match command {
        NodeCommand::Add { id, peer, no_rebalance, target } => return runtime.block_on(add(id, peer, no_rebalance, &target)),
        NodeCommand::Rebalance { target } => return runtime.block_on(rebalance(&target, Instant::now())),
        NodeCommand::Decommission { id, target } => (id, None, target),
        NodeCommand::Replace { id, with, target } => (id, Some(with), target),
    };
    runtime.block_on(drive(id, with, &flags))
}

fn client(flags: &TargetFlags) -> anyhow::Result<reqwest::Client> {
    Ok(settle_chaos::http::client_builder(flags.ca_cert.as_deref(), flags.api_key.as_deref())?.timeout(Duration::from_secs(30)).build()?)
}

/// Registers the node, waits until a member hears from it, then rebalances.
async fn add(id: u64, peer: Option<std::net::SocketAddr>, no_rebalance: bool, flags: &TargetFlags) -> anyhow::Result<()> {
    let client = client(flags)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(flags.timeout_secs);
    let peer = match peer {
        Some(peer) => peer,
        None => asking_to_join(&client, flags, id).await?,
    };
    let body = serde_json::json!({ "id": id, "peer": peer.to_string() });
    let registered = loop {
        match post(&client, &flags.target, "/admin/nodes", &body).await? {
            Ok(answer) => break answer,
            Err(transient) if Instant::now() < deadline => {
                println!("{:>7.1}s retrying: {transient}", started.elapsed().as_secs_f64());
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(transient) => bail!("node {id} not registered: {transient}"),
        }
    };
    println!(
        "{:>7.1}s node {id} registered at {peer} (registry epoch {}); start it with `settle start --node-id {id} --peer {peer} --join <a member's peer address>` and an empty data dir",
        started.elapsed().as_secs_f64(),
        registered.get("epoch").and_then(Value::as_u64).unwrap_or(0)
    );
    let mut waiting_said = false;
    loop {
        let nodes = get(&client, &flags.target, "/admin/nodes").await?;
        let joined = nodes.ok().and_then(|nodes| {
            let listed = nodes.get("nodes")?.as_array()?.iter().find(|node| node.get("id").and_then(Value::as_u64) == Some(id))?.clone();
            listed.get("live").and_then(Value::as_bool)
        });
        if joined == Some(true) {
            println!("{:>7.1}s node {id} joined", started.elapsed().as_secs_f64());
            break;
        }
        if !waiting_said {
            println!("{:>7.1}s waiting for node {id} to join", started.elapsed().as_secs_f64());
            waiting_said = true;
        }
        if Instant::now() >= deadline {
            bail!("node {id} is registered but did not join within {}s (start it with --join)", flags.timeout_secs);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if no_rebalance {
        return Ok(());
    }
    rebalance(flags, started).await
}

/// The peer address node `id` gave when it asked to join through one of the targets.
async fn asking_to_join(client: &reqwest::Client, flags: &TargetFlags, id: u64) -> anyhow::Result<std::net::SocketAddr> {
    for target in &flags.target {
        let Ok(Ok(nodes)) = get(client, std::slice::from_ref(target), "/admin/nodes").await else {
            continue;
        };
        let asking = nodes.get("asking_to_join").and_then(Value::as_array).into_iter().flatten();
        if let Some(peer) =
            asking.filter(|node| node.get("id").and_then(Value::as_u64) == Some(id)).find_map(|node| node.get("peer")?.as_str())
        {
            println!("node {id} asked to join through {target} from {peer}");
            return peer.parse().with_context(|| format!("node {id} gave the peer address {peer:?}"));
        }
    }
    bail!("no --target has heard node {id} ask to join: give --peer ADDR, or start it with --join naming a --target node's peer address first")
}

/// Repeats `POST /admin/rebalance` until no live node holds two replicas more than another.
async fn rebalance(flags: &TargetFlags, started: Instant) -> anyhow::Result<()> {
    let client = client(flags)?;
    let (answer, _) = repeat_step(&client, flags, "/admin/rebalance", &serde_json::json!({}), started).await?;
    println!(
        "{:>7.1}s balanced: replicas per live node {}",
        started.elapsed().as_secs_f64(),
        answer.get("replicas").map(Value::to_string).unwrap_or_default()
    );
    Ok(())
}

/// POSTs a step endpoint every 500 ms, printing each shard's progress, until it answers
/// `done`: that answer, and how many shards were seen moving. A target that does not answer
/// (a failover mid-move, a node restarting) is retried; the next round continues.
async fn repeat_step(
    client: &reqwest::Client,
    flags: &TargetFlags,
    path: &str,
    body: &Value,
    started: Instant,
) -> anyhow::Result<(Value, usize)> {
    let deadline = Instant::now() + Duration::from_secs(flags.timeout_secs);
    let mut shown: BTreeMap<u64, String> = BTreeMap::new();
    loop {
        let answer = match post(client, &flags.target, path, body).await? {
            Ok(answer) => answer,
            Err(transient) => {
                println!("{:>7.1}s retrying: {transient}", started.elapsed().as_secs_f64());
                Value::Null
            }
        };
        show_moves(&answer, &mut shown, started);
        if answer.get("done").and_then(Value::as_bool) == Some(true) {
            return Ok((answer, shown.len()));
        }
        if Instant::now() >= deadline {
            bail!("not finished after {}s (the moves started stay valid: run the command again)", flags.timeout_secs);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Prints each shard's move step when it changed since last shown.
fn show_moves(answer: &Value, shown: &mut BTreeMap<u64, String>, started: Instant) {
    for step in answer.get("moves").and_then(Value::as_array).into_iter().flatten() {
        let shard = step.get("shard").and_then(Value::as_u64).unwrap_or(u64::MAX);
        let line = format!(
            "stage {:<14} voters {} learners {} (matched {}/{})",
            step.get("stage").and_then(Value::as_str).unwrap_or("?"),
            step.get("voters").map(Value::to_string).unwrap_or_default(),
            step.get("learners").map(Value::to_string).unwrap_or_default(),
            step.get("matched").and_then(Value::as_u64).unwrap_or(0),
            step.get("last_index").and_then(Value::as_u64).unwrap_or(0),
        );
        if shown.get(&shard) != Some(&line) {
            println!("{:>7.1}s shard {shard:<4} {line}", started.elapsed().as_secs_f64());
            shown.insert(shard, line);
        }
    }
}

async fn drive(id: u64, with: Option<u64>, flags: &TargetFlags) -> anyhow::Result<()> {
    let client = client(flags)?;
    let (path, body) = match with {
        None => (format!("/admin/nodes/{id}/decommission"), serde_json::json!({})),
        Some(with) => (format!("/admin/nodes/{id}/replace"), serde_json::json!({ "with": with })),
    };
    let started = Instant::now();
    let (_, moved) = repeat_step(&client, flags, &path, &body, started).await?;
    println!("node {id} holds no replica any more ({moved} shard(s) moved in {:.1}s): it may be stopped", started.elapsed().as_secs_f64());
    Ok(())
}

/// POSTs to the first target that answers: its answer, or (inner error) why no target
/// answered now (retried); a refusal (4xx) stops the command with its reason.
async fn post(client: &reqwest::Client, targets: &[String], path: &str, body: &Value) -> anyhow::Result<Result<Value, String>> {
    call(client, targets, path, Some(body)).await
}

/// GETs from the first target that answers (like `post`).
async fn get(client: &reqwest::Client, targets: &[String], path: &str) -> anyhow::Result<Result<Value, String>> {
    call(client, targets, path, None).await
}

async fn call(client: &reqwest::Client, targets: &[String], path: &str, body: Option<&Value>) -> anyhow::Result<Result<Value, String>> {
    let mut last = String::new();
    for target in targets.iter().map(|target| target.trim_end_matches('/')).filter(|target| !target.is_empty()) {
        let url = format!("{target}{path}");
        let request = match body {
            Some(body) => client.post(url).json(body),
            None => client.get(url),
        };
        match request.send().await {
            Ok(response) if response.status().is_success() => return Ok(Ok(response.json().await.context("the answer is not JSON")?)),
            Ok(response) if response.status().is_client_error() => {
                let status = response.status();
                bail!("{target} refused {path}: {status}: {}", response.text().await.unwrap_or_default());
            }
            Ok(response) => last = format!("{target}: {}", response.status()),
            Err(error) => last = format!("{target}: {error}"),
        }
    }
    Ok(Err(format!("no --target answered {path} ({last})")))
}
