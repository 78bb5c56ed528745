//! The bench's accounts, how it picks transfers, how it sends them, and the conservation
//! check of its own accounts at the end (`crate::history`).

use super::BenchFlags;
use crate::history::{self, ClientHistory, ReadBack, Told};
use anyhow::{bail, Context};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use settle_client::api::{BatchRequest, ClusterView, CreateAccountRequest};
use settle_client::{classify, classify_item, cluster_view, create_accounts, fund, match_advertised, Answer, Transfer};
use settle_cluster::ids::AccountId;
use settle_cluster::placement::shard_of;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Each bench account starts with this many cents: far more than a run can spend.
const FUNDING_MINOR: i128 = 1_000_000_000;
const AMOUNT_MINOR_MAX: i128 = 100;
/// Each funding batch must be posted within this long.
const FUNDING_WITHIN: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, PartialEq)]
pub enum Distribution {
    Uniform,
    /// Payees drawn with probability proportional to 1 / rank^s.
    Zipf(f64),
    /// 90% of payees are among the first N accounts.
    Hot(usize),
}

impl FromStr for Distribution {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once(':') {
            None if text == "uniform" => Ok(Distribution::Uniform),
            Some(("zipf", s)) => {
                s.parse::<f64>().ok().filter(|s| *s > 0.0).map(Distribution::Zipf).ok_or_else(|| format!("bad zipf exponent {s:?}"))
            }
            Some(("hot", n)) => {
                n.parse::<usize>().ok().filter(|n| *n > 0).map(Distribution::Hot).ok_or_else(|| format!("bad hot count {n:?}"))
            }
            _ => Err(format!("unknown distribution {text:?} (uniform, zipf:S, hot:N)")),
        }
    }
}

impl fmt::Display for Distribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Distribution::Uniform => write!(f, "uniform"),
            Distribution::Zipf(s) => write!(f, "zipf:{s}"),
            Distribution::Hot(n) => write!(f, "hot:{n}"),
        }
    }
}

impl serde::Serialize for Distribution {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

/// The bench's accounts and how transfers are drawn from them.
pub struct Plan {
    pub run: String,
    pub bank: String,
    pub accounts: Vec<String>,
    pub shard: Vec<u32>,
    by_shard: Vec<Vec<usize>>,
    /// Cumulative weights for payee choice (empty for uniform).
    cdf: Vec<f64>,
    hot: Option<usize>,
    cross_shard_ratio: f64,
}

pub fn worker_rng(seed: u64, worker: usize) -> SmallRng {
    SmallRng::seed_from_u64(seed ^ (u64::try_from(worker).unwrap_or(0).wrapping_add(1)).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

impl Plan {
    fn pick_payee(&self, rng: &mut SmallRng) -> usize {
        let count = self.accounts.len();
        if let Some(hot) = self.hot {
            if rng.gen_range(0..10) < 9 {
                return rng.gen_range(0..hot.min(count));
            }
            return rng.gen_range(0..count);
        }
        if self.cdf.is_empty() {
            return rng.gen_range(0..count);
        }
        let draw: f64 = rng.gen();
        self.cdf.partition_point(|weight| *weight < draw).min(count - 1)
    }

    /// A payer for `payee`: on its shard or on another one, by the cross-shard ratio.
    fn pick_payer(&self, rng: &mut SmallRng, payee: usize) -> usize {
        let cross = rng.gen_bool(self.cross_shard_ratio);
        let shard = self.shard[payee];
        for _ in 0..32 {
            let candidate = if cross {
                rng.gen_range(0..self.accounts.len())
            } else {
                let same = &self.by_shard[usize::try_from(shard).expect("fits")];
                same[rng.gen_range(0..same.len())]
            };
            if candidate != payee && (self.shard[candidate] != shard) == cross {
                return candidate;
            }
        }
        // A shard with one account (or a single shard): take any other account.
        (payee + 1) % self.accounts.len()
    }

    pub fn transfers(&self, rng: &mut SmallRng, batch: usize, worker: usize, sequence: &mut u64) -> Vec<Transfer> {
        (0..batch)
            .map(|_| {
                let to = self.pick_payee(rng);
                let from = self.pick_payer(rng, to);
                let id = format!("t{}-{worker}-{sequence}", self.run);
                *sequence += 1;
                Transfer { id, from, to, amount: rng.gen_range(1..=AMOUNT_MINOR_MAX), shard: self.shard[from] }
            })
            .collect()
    }
}

/// Creates and funds the bench's accounts on the cluster.
pub async fn setup(client: &reqwest::Client, targets: &[String], flags: &BenchFlags) -> anyhow::Result<Plan> {
    let cluster: ClusterView =
        client.get(format!("{}/v1/cluster", targets[0])).send().await?.json().await.context("reading /v1/cluster")?;
    let shards = u32::try_from(cluster.shards.len()).context("shard count")?;
    if shards == 0 {
        bail!("{} reports no shards", targets[0]);
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos();
    let run = format!("{:06x}", (nanos ^ u32::try_from(flags.seed & 0xffff_ffff).unwrap_or(0)) & 0xff_ffff);
    let bank = format!("b{run}-bank");
    let accounts: Vec<String> = (0..flags.accounts).map(|n| format!("b{run}-{n}")).collect();
    let shard: Vec<u32> = accounts.iter().map(|name| shard_of(&AccountId::new(name).expect("valid id"), shards)).collect();
    let mut by_shard = vec![Vec::new(); usize::try_from(shards).expect("fits")];
    for (index, account_shard) in shard.iter().enumerate() {
        by_shard[usize::try_from(*account_shard).expect("fits")].push(index);
    }
    let (cdf, hot) = match &flags.distribution {
        Distribution::Uniform => (Vec::new(), None),
        Distribution::Hot(n) => (Vec::new(), Some(*n)),
        Distribution::Zipf(exponent) => {
            let weights: Vec<f64> = (1..=accounts.len()).map(|rank| 1.0 / (rank as f64).powf(*exponent)).collect();
            let total: f64 = weights.iter().sum();
            let mut running = 0.0;
            (
                weights
                    .iter()
                    .map(|w| {
                        running += w / total;
                        running
                    })
                    .collect(),
                None,
            )
        }
    };
    let plan = Plan { run, bank: bank.clone(), accounts, shard, by_shard, cdf, hot, cross_shard_ratio: flags.cross_shard_ratio };
    eprintln!("bench: creating {} accounts and funding them ({} shards)", plan.accounts.len(), shards);
    let started = Instant::now();
    let account =
        |id: &str, kind: &str| CreateAccountRequest { currency: "USD".to_string(), id: id.to_string(), kind: Some(kind.to_string()) };
    let mut creates = vec![account(&bank, "settlement")];
    creates.extend(plan.accounts.iter().map(|name| account(name, "customer")));
    create_accounts(client, targets, &creates, Duration::from_secs(120)).await?;
    let created = started.elapsed();
    eprintln!("bench: created {} accounts in {:.1} s", creates.len(), created.as_secs_f64());
    fund(client, targets, &bank, &plan.accounts, FUNDING_MINOR, FUNDING_WITHIN).await?;
    eprintln!("bench: setup took {:.1} s", started.elapsed().as_secs_f64());
    Ok(plan)
}

/// What happened to each transfer of a request.
pub struct Outcome {
    pub results: Vec<Answer>,
}

pub async fn send(client: &reqwest::Client, target: &str, transfers: &[Transfer], plan: &Plan) -> Outcome {
    let count = transfers.len();
    let fail = |answer: Answer| Outcome { results: vec![answer; count] };
    let unknown = |code: &str| fail(Answer::Retry(code.to_string()));
    let request = if count == 1 {
        client.post(format!("{target}/v1/transfers")).json(&transfers[0].body(&plan.accounts))
    } else {
        let batch = BatchRequest { transfers: transfers.iter().map(|transfer| transfer.body(&plan.accounts)).collect() };
        client.post(format!("{target}/v1/transfers/batch")).json(&batch)
    };
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) if error.is_timeout() => return unknown("timeout"),
        Err(_) => return unknown("connection_error"),
    };
    let status = response.status().as_u16();
    let body: Value = match response.json().await {
        Ok(body) => body,
        Err(error) if error.is_timeout() => return unknown("timeout"),
        Err(_) => Value::Null,
    };
    if count == 1 || status != 200 {
        return fail(classify(status, &body));
    }
    let results = body["results"].as_array().cloned().unwrap_or_default();
    if results.len() != count {
        return unknown("internal");
    }
    Outcome { results: results.iter().map(classify_item).collect() }
}

/// Resolves ambiguous transfers, then checks every bench account's balance equals its funding
/// plus the transfers the cluster posted, and that the bench's money sums to zero
/// (`history::Findings::conserved`). The transfers told posted are not kept one by one (there
/// are millions): their net per account stands for them. Prints what does not add up.
pub async fn check_conservation(
    client: &reqwest::Client,
    targets: &[String],
    plan: &Plan,
    net: &Mutex<Vec<i128>>,
    ambiguous: &Mutex<Vec<Transfer>>,
) -> anyhow::Result<bool> {
    let unresolved: Vec<Transfer> = ambiguous.lock().expect("ambiguous").clone();
    let history = ClientHistory {
        bank: plan.bank.clone(),
        accounts: plan.accounts.clone(),
        funding_minor: FUNDING_MINOR,
        transfers: unresolved.into_iter().map(|transfer| (transfer, Told::Unknown)).collect(),
        acknowledged_net_minor: net.lock().expect("net").clone(),
        read_anomalies: Vec::new(),
    };
    let read_back = ReadBack::read(client, targets, &history).await?;
    let findings = history::check(&history, &read_back);
    // The first thing that does not add up, then the sum.
    if let Some(bank) = &findings.bank_mismatch {
        eprintln!("bench: conservation: {} has {}, expected {}", bank.account, bank.got_minor, bank.expected_minor);
    } else if let Some(account) = findings.mismatched.first() {
        eprintln!("bench: conservation: {} has {}, expected {}", account.account, account.got_minor, account.expected_minor);
    }
    if findings.total_minor != 0 {
        eprintln!("bench: conservation: the bench accounts sum to {}, not 0", findings.total_minor);
    }
    Ok(findings.conserved())
}

/// For `--route leader`: which target URL leads each shard, from `/v1/cluster` (node ids matched
/// to targets by the HTTP address each node advertises). `None` where unknown.
pub async fn shard_leaders(client: &reqwest::Client, targets: &[String]) -> Vec<Option<usize>> {
    let Some(view) = cluster_view(client, targets).await else {
        return Vec::new();
    };
    let node_target = match_advertised(&view, targets);
    view.shards.iter().map(|shard| shard.leader.and_then(|id| node_target.get(&id).copied())).collect()
}
