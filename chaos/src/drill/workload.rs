//! The drill's steady workload and its history: clients send transfers at a set rate through
//! every node and retry an unknown outcome with the same id (as the API asks), a reader checks
//! that acknowledged transfers read back posted. Everything is recorded with timestamps so the
//! report can measure pauses and the checkers (`crate::history`) can hold the cluster to what
//! clients were told.

use crate::history::{self, ClientHistory, Findings, ReadBack, Told};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use settle_client::api::CreateAccountRequest;
use settle_client::{classify, fund, post_until, Answer, Transfer};
use settle_cluster::ids::AccountId;
use settle_cluster::placement::shard_of;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const FUNDING_MINOR: i128 = 10_000_000;
const ACCOUNTS: usize = 40;
/// A client gives up retrying one transfer after this long (then it is resolved at the end).
const RETRY_FOR: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Creating and funding the accounts gives up after this long (per request, per funding batch).
const SETUP_WITHIN: Duration = Duration::from_secs(60);

/// One transfer's story, as its client saw it.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub transfer: Transfer,
    pub started_ms: u64,
    pub finished_ms: u64,
    /// Posted, rejected with a 4xx code (definitely not applied), or unknown (gave up retrying).
    pub told: Told,
    pub attempts: u32,
}

#[derive(Default)]
pub struct History {
    pub outcomes: Vec<Outcome>,
    /// Every failed attempt (5xx, 429, timeout, connection error), by code, with its time.
    pub failures: Vec<(u64, String)>,
    pub anomalies: Vec<String>,
    pub reads: u64,
}

pub struct Workload {
    pub run: String,
    pub bank: String,
    pub accounts: Vec<String>,
    /// Each account's shard (by index, as `accounts`).
    pub shard: Vec<u32>,
    started: Instant,
    pub history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Workload {
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Creates and funds the drill's accounts.
    pub async fn setup(client: &reqwest::Client, urls: &[String], shards: u32) -> anyhow::Result<Workload> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos();
        let run = format!("{:06x}", nanos & 0xff_ffff);
        let bank = format!("d{run}-bank");
        let accounts: Vec<String> = (0..ACCOUNTS).map(|n| format!("d{run}-{n}")).collect();
        let bank_body = CreateAccountRequest { currency: "USD".to_string(), id: bank.clone(), kind: Some("settlement".to_string()) };
        post_until(client, urls, "/v1/accounts", &bank_body, &[200, 201], SETUP_WITHIN).await?;
        for account in &accounts {
            let body = CreateAccountRequest { currency: "USD".to_string(), id: account.clone(), kind: None };
            post_until(client, urls, "/v1/accounts", &body, &[200, 201], SETUP_WITHIN).await?;
        }
        fund(client, urls, &bank, &accounts, FUNDING_MINOR, SETUP_WITHIN).await?;
        let shard = accounts.iter().map(|account| shard_of(&AccountId::new(account).expect("valid id"), shards)).collect();
        Ok(Workload {
            run,
            bank,
            accounts,
            shard,
            started: Instant::now(),
            history: Arc::new(Mutex::new(History::default())),
            stop: Arc::new(AtomicBool::new(false)),
            tasks: Vec::new(),
        })
    }

    /// Starts `clients` writers sharing `rate` transfers per second, and one reader.
    pub fn start(&mut self, client: &reqwest::Client, urls: &[String], rate: u64, clients: usize) {
        let sequence = Arc::new(AtomicU64::new(0));
        let interval_ns = 1_000_000_000 / rate.max(1);
        for worker in 0..clients {
            let client = client.clone();
            let urls = urls.to_vec();
            let accounts = self.accounts.clone();
            let (history, stop, sequence) = (self.history.clone(), self.stop.clone(), sequence.clone());
            let (run, shard_of_account, started) = (self.run.clone(), self.shard.clone(), self.started);
            self.tasks.push(tokio::spawn(async move {
                let mut rng = SmallRng::seed_from_u64(u64::try_from(worker).unwrap_or(0) + 11);
                while !stop.load(Ordering::Relaxed) {
                    // Open loop: slot n is due at n × interval, whoever takes it.
                    let slot = sequence.fetch_add(1, Ordering::Relaxed);
                    let due = started + Duration::from_nanos(slot.saturating_mul(interval_ns));
                    let now = Instant::now();
                    if due > now {
                        tokio::time::sleep(due - now).await;
                    }
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let from = rng.gen_range(0..accounts.len());
                    let to = (from + rng.gen_range(1..accounts.len())) % accounts.len();
                    let id = format!("x{run}-{slot}");
                    let transfer = Transfer { id, from, to, amount: rng.gen_range(1..=500), shard: shard_of_account[from] };
                    let outcome = send_until_definitive(&client, &urls, &accounts, transfer, worker, &history, started).await;
                    history.lock().expect("history").outcomes.push(outcome);
                }
            }));
        }
        let client = client.clone();
        let urls = urls.to_vec();
        let accounts = self.accounts.clone();
        let (history, stop) = (self.history.clone(), self.stop.clone());
        self.tasks.push(tokio::spawn(async move {
            let mut turn = 0usize;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let sample = {
                    let history = history.lock().expect("history");
                    history.outcomes.iter().rev().find(|o| o.told == Told::Posted).cloned()
                };
                let Some(outcome) = sample else {
                    continue;
                };
                turn += 1;
                let url = &urls[turn % urls.len()];
                let payer = &accounts[outcome.transfer.from];
                let response = client.get(format!("{url}/v1/transfers/{}?from={payer}", outcome.transfer.id)).send().await;
                let Ok(response) = response else {
                    continue;
                };
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                let mut history = history.lock().expect("history");
                history.reads += 1;
                if status == 404 || (status == 200 && body["status"] != "posted") {
                    history.anomalies.push(format!(
                        "linearizable_reads: {} was acknowledged posted but read back {status} {}",
                        outcome.transfer.id, body["status"]
                    ));
                }
            }
        }));
    }

    pub async fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }

    /// What the checkers need of the recorded history: every transfer with what its client was
    /// told, and what the reader found.
    pub fn client_history(&self) -> ClientHistory {
        let recorded = self.history.lock().expect("history");
        ClientHistory {
            bank: self.bank.clone(),
            accounts: self.accounts.clone(),
            funding_minor: FUNDING_MINOR,
            transfers: recorded.outcomes.iter().map(|outcome| (outcome.transfer.clone(), outcome.told.clone())).collect(),
            acknowledged_net_minor: Vec::new(),
            read_anomalies: recorded.anomalies.clone(),
        }
    }
}

/// Sends one transfer, retrying the same id on the next node after any unknown outcome.
async fn send_until_definitive(
    client: &reqwest::Client,
    urls: &[String],
    accounts: &[String],
    transfer: Transfer,
    worker: usize,
    history: &Mutex<History>,
    started: Instant,
) -> Outcome {
    let now_ms = || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let started_ms = now_ms();
    let body = transfer.body(accounts);
    let give_up = Instant::now() + RETRY_FOR;
    let mut attempts = 0u32;
    loop {
        let url = &urls[(worker + usize::try_from(attempts).unwrap_or(0)) % urls.len()];
        attempts += 1;
        let answer = match client.post(format!("{url}/v1/transfers")).json(&body).timeout(REQUEST_TIMEOUT).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                classify(status, &body)
            }
            Err(error) if error.is_timeout() => Answer::Retry("timeout".to_string()),
            Err(_) => Answer::Retry("connection_error".to_string()),
        };
        let code = match answer {
            Answer::Posted => return Outcome { transfer, started_ms, finished_ms: now_ms(), told: Told::Posted, attempts },
            Answer::Final(code) => return Outcome { transfer, started_ms, finished_ms: now_ms(), told: Told::Rejected(code), attempts },
            Answer::Retry(code) => code,
        };
        history.lock().expect("history").failures.push((now_ms(), code));
        if Instant::now() > give_up {
            return Outcome { transfer, started_ms, finished_ms: now_ms(), told: Told::Unknown, attempts };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The history checkers on the recorded history, against the cluster's final state.
pub async fn check(client: &reqwest::Client, urls: &[String], workload: &Workload) -> anyhow::Result<Findings> {
    let history = workload.client_history();
    let read_back = ReadBack::read(client, urls, &history).await?;
    Ok(history::check(&history, &read_back))
}
