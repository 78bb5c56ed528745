//! `settle status`: the cluster at a glance for SREs — nodes (up/down, version, uptime), shards
//! and leaders per node, shards without a leader, lagging or quarantined replicas, in-doubt
//! transfers — from every node's `/v1/cluster`. Exits non-zero when something needs attention,
//! so scripts and cron jobs can use it.

use anyhow::{bail, Context};
use settle_client::api::{ClusterView, NodeView, ShardView};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct StatusFlags {
    /// Nodes of the cluster (comma-separated or repeated): the first that answers is asked who
    /// the members are, so one node down does not blind the report.
    #[arg(long, value_delimiter = ',', default_value = "https://127.0.0.1:8080")]
    pub target: Vec<String>,
    /// The cluster CA (PEM) to verify an HTTPS cluster's certificates with.
    #[arg(long)]
    pub ca_cert: Option<std::path::PathBuf>,
    /// An API key (any role; `/v1/cluster` needs one), or SETTLE_API_KEY.
    #[arg(long, env = "SETTLE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// A replica further behind its leader than this many entries counts as lagging.
    #[arg(long, default_value_t = 1_000)]
    pub lag_entries_max: u64,
    /// An in-doubt (pending cross-shard) transfer older than this needs attention.
    #[arg(long, default_value_t = 30)]
    pub in_doubt_seconds_max: u64,
}

/// One member of the cluster and, when it answered, its own `/v1/cluster`.
struct Member {
    id: u64,
    http: Option<String>,
    cluster: Option<ClusterView>,
}

pub fn run(flags: StatusFlags) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let problems = runtime.block_on(report(&flags))?;
    if !problems.is_empty() {
        println!();
        for problem in &problems {
            println!("ATTENTION: {problem}");
        }
        bail!("{} problem(s) need attention", problems.len());
    }
    println!();
    println!("ok: every node up, every shard led, nothing lagging or in doubt");
    Ok(())
}

async fn fetch(client: &reqwest::Client, url: &str) -> Option<ClusterView> {
    let response = client.get(format!("{url}/v1/cluster")).send().await.ok()?;
    if matches!(response.status().as_u16(), 401 | 403) {
        eprintln!("{url} refused the API key ({}): give --api-key or SETTLE_API_KEY", response.status());
        return None;
    }
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

async fn report(flags: &StatusFlags) -> anyhow::Result<Vec<String>> {
    let client =
        settle_chaos::http::client_builder(flags.ca_cert.as_deref(), flags.api_key.as_deref())?.timeout(Duration::from_secs(2)).build()?;
    let mut first = None;
    for target in flags.target.iter().map(|target| target.trim_end_matches('/')).filter(|target| !target.is_empty()) {
        first = fetch(&client, target).await;
        if first.is_some() {
            break;
        }
        eprintln!("{target} does not answer /v1/cluster; trying the next --target");
    }
    let first = first.with_context(|| format!("no --target answers /v1/cluster (tried {})", flags.target.join(", ")))?;
    let mut members = Vec::new();
    for node in &first.nodes {
        let http = node.http_url().map(str::to_string);
        let cluster = match &http {
            Some(_) if node.is_self => Some(first.clone()),
            Some(url) => fetch(&client, url).await,
            None => None,
        };
        members.push(Member { id: node.id, http, cluster });
    }
    let mut problems = Vec::new();

    println!("{:<5} {:<26} {:<6} {:<9} {:>10} {:>8} {:>8}", "node", "http", "state", "version", "uptime", "shards", "leads");
    for member in &members {
        let (state, version, uptime, shards, leads) = match &member.cluster {
            Some(cluster) => {
                let me = cluster.this_node();
                let hosted = cluster.shards.iter().filter(|shard| shard.role != "none").count();
                let leads = cluster.shards.iter().filter(|shard| shard.leader == Some(member.id)).count();
                let uptime = me.and_then(NodeView::uptime).map_or_else(|| "?".to_string(), format_age);
                let version = me.and_then(NodeView::version_text).unwrap_or("?").to_string();
                ("up", version, uptime, hosted.to_string(), leads.to_string())
            }
            None => {
                problems.push(format!(
                    "node {} ({}) is down or unreachable",
                    member.id,
                    member.http.as_deref().unwrap_or("address unknown")
                ));
                ("DOWN", "-".to_string(), "-".to_string(), "-".to_string(), "-".to_string())
            }
        };
        println!(
            "{:<5} {:<26} {:<6} {:<9} {:>10} {:>8} {:>8}",
            member.id,
            member.http.as_deref().unwrap_or("?"),
            state,
            version,
            uptime,
            shards,
            leads
        );
    }

    // Every up node's view of every shard: leader, indexes, role.
    let mut by_shard: BTreeMap<u32, Vec<(u64, &ShardView)>> = BTreeMap::new();
    for member in &members {
        if let Some(cluster) = &member.cluster {
            for shard in &cluster.shards {
                by_shard.entry(shard.id).or_default().push((member.id, shard));
            }
        }
    }
    let mut leaderless = Vec::new();
    let mut lagging = Vec::new();
    let mut quarantined = Vec::new();
    let mut in_doubt = 0u64;
    let mut oldest_ms = 0u64;
    for (shard, replicas) in &by_shard {
        let leader = replicas.iter().find(|(node, view)| view.leader == Some(*node) && view.role == "leader");
        let Some((leader_node, leader_view)) = leader else {
            leaderless.push(*shard);
            continue;
        };
        let commit = leader_view.commit_index;
        in_doubt += leader_view.pending_transfers;
        oldest_ms = oldest_ms.max(leader_view.pending_oldest_ms);
        for (node, view) in replicas {
            if view.role == "quarantined" {
                quarantined.push(format!("shard {shard} on node {node}"));
            } else if node != leader_node && view.role != "none" {
                let applied = view.applied_index;
                if commit.saturating_sub(applied) > flags.lag_entries_max {
                    lagging.push(format!("shard {shard} on node {node} ({} entries behind)", commit - applied));
                }
            }
        }
    }
    // A shard with a replica on a node that is down, or quarantined, survives one loss fewer.
    let down: Vec<u64> = members.iter().filter(|member| member.cluster.is_none()).map(|member| member.id).collect();
    let mut under_replicated = Vec::new();
    for (shard, replicas) in &by_shard {
        let hosts = replicas.first().map(|(_, view)| view.replicas.clone()).unwrap_or_default();
        let missing: Vec<u64> = hosts
            .iter()
            .copied()
            .filter(|host| down.contains(host) || replicas.iter().any(|(node, view)| node == host && view.role == "quarantined"))
            .collect();
        if !missing.is_empty() {
            under_replicated.push(format!("shard {shard} (replica on node {missing:?} down or quarantined)"));
        } else if hosts.len() < settle_cluster::placement::REPLICAS_PER_SHARD.min(members.len()) {
            under_replicated.push(format!("shard {shard} (only {} voters: {hosts:?})", hosts.len()));
        }
    }
    // Replica moves in flight: shards with a learner (`settle node decommission/replace`).
    let moving: Vec<String> = by_shard
        .iter()
        .filter_map(|(shard, replicas)| {
            let learners: Vec<u64> = replicas.iter().flat_map(|(_, view)| view.learners.iter().copied()).collect();
            (!learners.is_empty()).then(|| format!("shard {shard} → node {:?}", learners.first().copied().unwrap_or_default()))
        })
        .collect();
    println!();
    println!("shards          {}", by_shard.len());
    println!("under-replicated {}", under_replicated.len());
    println!("without leader  {}", leaderless.len());
    println!("lagging         {}", lagging.len());
    println!("moving          {}{}", moving.len(), if moving.is_empty() { String::new() } else { format!(" ({})", moving.join(", ")) });
    println!("quarantined     {}", quarantined.len());
    println!("in-doubt        {in_doubt} (oldest {})", format_age(oldest_ms));
    if !under_replicated.is_empty() {
        let shown: Vec<&String> = under_replicated.iter().take(8).collect();
        problems.push(format!(
            "{} shard(s) under-replicated: {shown:?}{}",
            under_replicated.len(),
            if under_replicated.len() > 8 { " ..." } else { "" }
        ));
    }
    if !leaderless.is_empty() {
        problems.push(format!("{} shard(s) without a leader: {:?}", leaderless.len(), leaderless));
    }
    problems.extend(lagging.into_iter().map(|replica| format!("replica lagging: {replica}")));
    problems.extend(quarantined.into_iter().map(|replica| format!("replica quarantined (corrupt records): {replica}")));
    if oldest_ms > flags.in_doubt_seconds_max * 1_000 {
        problems.push(format!("an in-doubt transfer is {} old", format_age(oldest_ms)));
    }
    Ok(problems)
}

fn format_age(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1_000..=59_999 => format!("{}s", ms / 1_000),
        60_000..=3_599_999 => format!("{}m{}s", ms / 60_000, (ms / 1_000) % 60),
        _ => format!("{}h{}m", ms / 3_600_000, (ms / 60_000) % 60),
    }
}
