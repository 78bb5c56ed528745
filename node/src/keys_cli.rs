//! `settle keys ...` (create, list, show, revoke API keys through `/v1/api_keys`) and `settle
//! audit verify` (recompute the audit chain: over HTTP through `/v1/audit`, or offline from a
//! stopped node's state store with `--data-dir`).

use anyhow::{bail, Context};
use serde_json::{json, Value};
use settle_cluster::ledger::{AuditEvent, AuditRecord, Ledger, SYSTEM_SHARD};
use std::path::PathBuf;
use std::time::Duration;

/// How to reach the cluster.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// Any node of the cluster.
    #[arg(long, default_value = "https://127.0.0.1:8080")]
    pub target: String,
    /// The cluster CA (PEM) to verify an HTTPS cluster's certificates with.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// An API key (admin for `keys`; admin or auditor for `audit`), or SETTLE_API_KEY.
    #[arg(long, env = "SETTLE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Create a key; its secret is printed once.
    Create {
        #[command(flatten)]
        connection: Connection,
        /// admin, operator, merchant, customer_app or auditor.
        #[arg(long)]
        role: String,
        /// An account the key is bound to (merchant, customer_app); repeat for more.
        #[arg(long = "account")]
        accounts: Vec<String>,
        #[arg(long)]
        label: Option<String>,
        /// This key's own rate limit: requests per second (with --burst).
        #[arg(long, requires = "burst")]
        per_second: Option<u32>,
        #[arg(long, requires = "per_second")]
        burst: Option<u32>,
        /// A merchant's Ed25519 public key (32 bytes, hex) for asymmetric signatures.
        #[arg(long)]
        ed25519_public_key: Option<String>,
    },
    /// List keys (never their secrets).
    List {
        #[command(flatten)]
        connection: Connection,
    },
    /// Revoke a key, for good.
    Revoke {
        #[command(flatten)]
        connection: Connection,
        id: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Recompute the audit chain and report the first broken link (exits non-zero on one).
    Verify {
        #[command(flatten)]
        connection: Connection,
        /// Verify a stopped node's own copy, read from its state store, instead of asking the
        /// cluster.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

fn client(connection: &Connection) -> anyhow::Result<reqwest::Client> {
    let key = connection.api_key.as_deref().context("an API key is needed: --api-key or SETTLE_API_KEY")?;
    Ok(settle_chaos::http::client_builder(connection.ca_cert.as_deref(), Some(key))?.timeout(Duration::from_secs(10)).build()?)
}

async fn answer(response: reqwest::Response) -> anyhow::Result<Value> {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{status}: {}", body["error"]["message"].as_str().unwrap_or("no error message"));
    }
    Ok(body)
}

pub fn keys(command: KeysCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        match command {
            KeysCommand::Create { connection, role, accounts, label, per_second, burst, ed25519_public_key } => {
                let mut body = json!({ "role": role, "accounts": accounts, "label": label, "ed25519_public_key": ed25519_public_key });
                if let (Some(per_second), Some(burst)) = (per_second, burst) {
                    body["rate_limit"] = json!({ "per_second": per_second, "burst": burst });
                }
                let url = format!("{}/v1/api_keys", connection.target.trim_end_matches('/'));
                let created = answer(client(&connection)?.post(url).json(&body).send().await?).await?;
                println!("{}", serde_json::to_string_pretty(&created)?);
                eprintln!("the key (and a merchant's signing_secret) is shown only now: store it in a secret manager");
            }
            KeysCommand::List { connection } => {
                let client = client(&connection)?;
                let mut after: Option<String> = None;
                loop {
                    let mut url = format!("{}/v1/api_keys?limit=1000", connection.target.trim_end_matches('/'));
                    if let Some(after) = &after {
                        url.push_str(&format!("&after={after}"));
                    }
                    let page = answer(client.get(url).send().await?).await?;
                    for key in page["keys"].as_array().cloned().unwrap_or_default() {
                        let accounts: Vec<&str> =
                            key["accounts"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
                        println!(
                            "{:<18} {:<13} {:<8} {} {}",
                            key["id"].as_str().unwrap_or("?"),
                            key["role"].as_str().unwrap_or("?"),
                            if key["revoked"] == true { "revoked" } else { "active" },
                            accounts.join(","),
                            key["label"].as_str().unwrap_or(""),
                        );
                    }
                    match page["next_after"].as_str() {
                        Some(next) => after = Some(next.to_string()),
                        None => break,
                    }
                }
            }
            KeysCommand::Revoke { connection, id } => {
                let url = format!("{}/v1/api_keys/{id}", connection.target.trim_end_matches('/'));
                let revoked = answer(client(&connection)?.delete(url).send().await?).await?;
                println!("{}", serde_json::to_string_pretty(&revoked)?);
            }
        }
        anyhow::Ok(())
    })
}

pub fn audit(command: AuditCommand) -> anyhow::Result<()> {
    let AuditCommand::Verify { connection, data_dir } = command;
    let verified = match data_dir {
        Some(data_dir) => verify_offline(&data_dir),
        None => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(verify_online(&connection))
        }
    };
    match verified {
        Ok(count) => {
            println!("audit chain intact: {count} records");
            Ok(())
        }
        Err(broken) => bail!("audit chain BROKEN: {broken}"),
    }
}

/// The chain as one node's store holds it (the node must be stopped: the store is locked).
fn verify_offline(data_dir: &std::path::Path) -> anyhow::Result<u64> {
    let path = data_dir.join("state");
    if !path.is_dir() {
        bail!("{} holds no state store", data_dir.display());
    }
    let store =
        settle_actors::state_store::StateStore::open(&path).map_err(|error| anyhow::anyhow!("opening {}: {error}", path.display()))?;
    let (ledger, _) = Ledger::open(SYSTEM_SHARD, SYSTEM_SHARD + 1, std::sync::Arc::new(store), 1 << 20)
        .map_err(|error| anyhow::anyhow!("reading the system shard: {error}"))?;
    ledger.verify_audit_chain().map_err(|broken| anyhow::anyhow!(broken))
}

/// The chain as the cluster serves it, page by page: every record must follow the one before
/// and hash to what it carries, and the last must be the head.
async fn verify_online(connection: &Connection) -> anyhow::Result<u64> {
    let client = client(connection)?;
    let mut from = 0u64;
    let mut prev = [0u8; 32];
    loop {
        let url = format!("{}/v1/audit?from={from}&limit=1000", connection.target.trim_end_matches('/'));
        let page = answer(client.get(url).send().await?).await?;
        let records = page["records"].as_array().cloned().unwrap_or_default();
        for record in &records {
            let record = parse_record(record).with_context(|| format!("audit record after {from} is not well formed"))?;
            record.follows(from, &prev).map_err(|broken| anyhow::anyhow!(broken))?;
            prev = record.hash;
            from += 1;
        }
        if page["next_from"].is_null() || records.is_empty() {
            let head = &page["head"];
            if head["next_seq"].as_u64() != Some(from) || head["hash"].as_str() != Some(hex::encode(prev).as_str()) {
                bail!("the chain's head ({head}) is not its last record ({from} records)");
            }
            return Ok(from);
        }
    }
}

fn hash_field(value: &Value) -> anyhow::Result<[u8; 32]> {
    let bytes = hex::decode(value.as_str().context("a hash is hex text")?)?;
    bytes.try_into().map_err(|_| anyhow::anyhow!("a hash is 32 bytes"))
}

fn parse_record(value: &Value) -> anyhow::Result<AuditRecord> {
    let event: AuditEvent = serde_json::from_value(value["event"].clone())?;
    Ok(AuditRecord {
        seq: value["seq"].as_u64().context("seq")?,
        recorded_ms: value["recorded_ms"].as_u64().context("recorded_ms")?,
        prev_hash: hash_field(&value["prev_hash"])?,
        event,
        hash: hash_field(&value["hash"])?,
    })
}
