//! `settle node decommission` and `settle node replace`: move every replica off a node,
//! repeating the admin endpoint's step (`api/membership.rs`) until no shard has a replica on
//! it, and print each shard's progress as it changes.

use anyhow::{bail, Context};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum NodeCommand {
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
        NodeCommand::Decommission { id, target } => (id, None, target),
        NodeCommand::Replace { id, with, target } => (id, Some(with), target),
    };
    runtime.block_on(drive(id, with, &flags))
}

async fn drive(id: u64, with: Option<u64>, flags: &TargetFlags) -> anyhow::Result<()> {
    let client =
        settle_chaos::http::client_builder(flags.ca_cert.as_deref(), flags.api_key.as_deref())?.timeout(Duration::from_secs(30)).build()?;
    let (path, body) = match with {
        None => (format!("/admin/nodes/{id}/decommission"), serde_json::json!({})),
        Some(with) => (format!("/admin/nodes/{id}/replace"), serde_json::json!({ "with": with })),
    };
    let started = Instant::now();
    let deadline = started + Duration::from_secs(flags.timeout_secs);
    let mut shown: BTreeMap<u64, String> = BTreeMap::new();
    loop {
        let answer = match post(&client, &flags.target, &path, &body).await? {
            Ok(answer) => answer,
            Err(transient) => {
                // A failover mid-move, a node restarting: the next round continues.
                println!("{:>7.1}s retrying: {transient}", started.elapsed().as_secs_f64());
                Value::Null
            }
        };
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
        if answer.get("done").and_then(Value::as_bool) == Some(true) {
            println!(
                "node {id} holds no replica any more ({} shard(s) moved in {:.1}s): it may be stopped",
                shown.len(),
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("moves not finished after {}s (they stay valid: run the command again)", flags.timeout_secs);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// POSTs to the first target that answers: its answer, or (inner error) why no target
/// answered now (retried); a refusal (4xx) stops the command with its reason.
async fn post(client: &reqwest::Client, targets: &[String], path: &str, body: &Value) -> anyhow::Result<Result<Value, String>> {
    let mut last = String::new();
    for target in targets.iter().map(|target| target.trim_end_matches('/')).filter(|target| !target.is_empty()) {
        match client.post(format!("{target}{path}")).json(body).send().await {
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
