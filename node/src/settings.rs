//! Node settings: defaults, then the TOML file given by `--config`, then `SETTLE_*` environment
//! variables, then command-line flags (flags win). Nested keys use `__` in the environment:
//! `SETTLE_RAFT__TICK_MS=50`, `SETTLE_LIMITS__CALLS_INFLIGHT_MAX=5000`.

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use settle_cluster::ids::NodeId;
use settle_cluster::ledger::{RateLimit, Role};
use settle_cluster::replica::RaftSettings;
use settle_cluster::CoreLimits;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeSettings {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    pub http: SocketAddr,
    pub peer: SocketAddr,
    /// Every initial member's peer address by node id: the `cluster` setting
    /// (`1=127.0.0.1:9080,2=...`), parsed once, when the settings load.
    /// Empty for a node started with `--join` (it learns the members from the cluster).
    #[serde(rename = "cluster", default, deserialize_with = "members_from_text", serialize_with = "members_to_text")]
    pub members: BTreeMap<NodeId, SocketAddr>,
    /// A member's peer address to join through (a node added after bootstrap).
    #[serde(default)]
    pub join: Option<SocketAddr>,
    #[serde(default = "default_shards")]
    pub shards: u32,
    /// How long the HTTP edge waits for the cluster before answering 503 `unavailable`.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    #[serde(default = "default_http_workers")]
    pub http_workers: usize,
    #[serde(default = "default_frame_bytes_max")]
    pub frame_bytes_max: u32,
    /// Peer connections open at once; more are closed on accept.
    #[serde(default = "default_peer_connections_max")]
    pub peer_connections_max: usize,
    /// Bytes of frames being read from all peer connections together (a reader waits beyond).
    #[serde(default = "default_peer_inbound_bytes_max")]
    pub peer_inbound_bytes_max: usize,
    /// A peer's TLS handshake, and a frame's payload after its header, must arrive within these.
    #[serde(default = "default_peer_handshake_timeout_ms")]
    pub peer_handshake_timeout_ms: u64,
    #[serde(default = "default_peer_frame_read_timeout_ms")]
    pub peer_frame_read_timeout_ms: u64,
    /// Plain TCP between peers, allowed only when every peer address is loopback (development).
    #[serde(default)]
    pub insecure_peers: bool,
    /// A request body must arrive within this (a stalled client cannot hold a connection).
    #[serde(default = "default_http_body_timeout_ms")]
    pub http_body_timeout_ms: u64,
    /// HTTP connections open at once, over all workers.
    #[serde(default = "default_http_connections_max")]
    pub http_connections_max: usize,
    /// Memory budget of the account cache (active accounts, all of a node's shards), MiB.
    /// Accounts beyond it are passivated to the state store and activated again on use.
    #[serde(default = "default_cache_mb")]
    pub cache_mb: u64,
    #[serde(default = "default_inbox_calls_max")]
    pub inbox_calls_max: usize,
    #[serde(default = "default_io_queue_jobs_max")]
    pub io_queue_jobs_max: usize,
    /// `text` or `json`.
    #[serde(default = "default_log_format")]
    pub log_format: String,
    /// Fault injection through `/admin/faults` (for drills); off unless asked for.
    #[serde(default)]
    pub faults_enabled: bool,
    /// Bearer token every `/admin/*` request must carry; admin endpoints are off without it.
    #[serde(default)]
    pub admin_token: Option<String>,
    /// Mutual TLS between peers: this node's certificate (naming its peer IP), its key, and the
    /// cluster CA, all PEM. All three or none (plain TCP).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// TLS on the client HTTP API: the certificate chain clients verify and its key, PEM. Both
    /// or neither (plain HTTP, for development).
    #[serde(default)]
    pub http_tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub http_tls_key: Option<PathBuf>,
    /// The bootstrap admin key: on its first use it is registered as API key `bootstrap` (role
    /// admin) in the cluster's replicated state; revoke it once real admin keys exist. At
    /// least 16 characters. Better from SETTLE_BOOTSTRAP_ADMIN_KEY than a flag.
    #[serde(default)]
    pub bootstrap_admin_key: Option<String>,
    /// A second listener serving only `/metrics`, without a key (for Prometheus).
    #[serde(default)]
    pub metrics_addr: Option<SocketAddr>,
    /// The file holding the key personal data is sealed with (64 hex digits; the same on every
    /// node). Without it the customer endpoints answer 503 `pii_key_not_configured`.
    #[serde(default)]
    pub pii_key_file: Option<PathBuf>,
    /// How long a node trusts a key it looked up (a revocation holds everywhere within it).
    #[serde(default = "default_auth_cache_ms")]
    pub auth_cache_ms: u64,
    /// How often the node rebuilds its own quarantined replicas (`scheduler.rs`); 0 turns the
    /// repair off (then `POST /admin/shards/{id}/move {"from": N, "to": N}` does it by hand).
    #[serde(default = "default_rebuild_interval_ms")]
    pub rebuild_interval_ms: u64,
    /// Requests per second and burst for each role's keys (a key may carry its own).
    #[serde(default)]
    pub rate_limits: RateLimits,
    #[serde(default)]
    pub raft: RaftSettings,
    #[serde(default)]
    pub limits: CoreLimits,
}

fn default_auth_cache_ms() -> u64 {
    1_000
}

fn default_rebuild_interval_ms() -> u64 {
    5_000
}

/// The default token bucket of each role's keys (`[rate_limits.merchant]` in the TOML file,
/// `SETTLE_RATE_LIMITS__MERCHANT__PER_SECOND=...` in the environment).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimits {
    pub admin: RateLimit,
    pub operator: RateLimit,
    pub merchant: RateLimit,
    pub customer_app: RateLimit,
    pub auditor: RateLimit,
}

impl Default for RateLimits {
    fn default() -> RateLimits {
        let limit = |per_second, burst| RateLimit { per_second, burst };
        RateLimits {
            admin: limit(100_000, 200_000),
            operator: limit(100_000, 200_000),
            merchant: limit(1_000, 2_000),
            customer_app: limit(50, 100),
            auditor: limit(100, 200),
        }
    }
}

impl RateLimits {
    pub fn for_role(&self, role: Role) -> RateLimit {
        match role {
            Role::Admin => self.admin,
            Role::Operator => self.operator,
            Role::Merchant => self.merchant,
            Role::CustomerApp => self.customer_app,
            Role::Auditor => self.auditor,
        }
    }
}

fn default_shards() -> u32 {
    64
}
fn default_request_timeout_ms() -> u64 {
    5_000
}
fn default_http_workers() -> usize {
    2
}
fn default_frame_bytes_max() -> u32 {
    256 << 20
}
fn default_peer_connections_max() -> usize {
    64
}
fn default_peer_inbound_bytes_max() -> usize {
    512 << 20
}
fn default_peer_handshake_timeout_ms() -> u64 {
    5_000
}
fn default_peer_frame_read_timeout_ms() -> u64 {
    30_000
}
fn default_http_body_timeout_ms() -> u64 {
    10_000
}
fn default_http_connections_max() -> usize {
    800
}
fn default_cache_mb() -> u64 {
    u64::try_from(settle_cluster::CACHE_BYTES_DEFAULT >> 20).expect("fits u64")
}
fn default_inbox_calls_max() -> usize {
    8_192
}
fn default_io_queue_jobs_max() -> usize {
    256
}
fn default_log_format() -> String {
    "text".to_string()
}

/// Flags given on the command line (absent ones fall through to env, file, defaults). They
/// serialize to the settings keys they override: absent flags are left out, and so is
/// `--config`, which names the file rather than a setting.
#[derive(Debug, Default, Clone, clap::Args, Serialize)]
pub struct StartFlags {
    /// This node's id (1, 2, 3, ...), also its Raft peer id.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<NodeId>,
    /// Where this node keeps its Raft log and its ledger state store.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// HTTP API address, e.g. 127.0.0.1:8080.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<SocketAddr>,
    /// Peer (Raft) address, e.g. 127.0.0.1:9080.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<SocketAddr>,
    /// Every initial member's peer address: 1=ADDR,2=ADDR,3=ADDR.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Join a running cluster through this member's peer address, instead of --cluster (a node
    /// added after bootstrap: register it first with `settle node add ID --peer ADDR`).
    #[arg(long, conflicts_with = "cluster")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join: Option<SocketAddr>,
    /// Shards, fixed at bootstrap (default 64).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards: Option<u32>,
    /// Memory budget of the account cache in MiB (default 256).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_mb: Option<u64>,
    /// A TOML file with any of these settings.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
    /// Allow fault injection through /admin/faults (drills).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub faults_enabled: bool,
    /// Bearer token for /admin/* endpoints (better from SETTLE_ADMIN_TOKEN than a flag).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
    /// Plain TCP between peers instead of mutual TLS; refused unless every peer address is
    /// loopback (development only). Also SETTLE_INSECURE_PEERS=true.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub insecure_peers: bool,
    /// Peer mutual TLS: this node's certificate, key and the cluster CA (PEM files).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// HTTPS on the client API: the certificate chain (PEM) clients verify. With
    /// --http-tls-key; also SETTLE_HTTP_TLS_CERT / `http_tls_cert` in the TOML file.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --http-tls-cert; also SETTLE_HTTP_TLS_KEY.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_tls_key: Option<PathBuf>,
    /// The bootstrap admin key, registered on first use (better from
    /// SETTLE_BOOTSTRAP_ADMIN_KEY than a flag, which other users can see).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootstrap_admin_key: Option<String>,
    /// Serve /metrics without a key on this extra address (for Prometheus), e.g. 127.0.0.1:9100.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<SocketAddr>,
    /// The key file personal data is sealed with (64 hex digits, the same on every node),
    /// e.g. made by `openssl rand -hex 32`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pii_key_file: Option<PathBuf>,
}

impl NodeSettings {
    pub fn load(flags: &StartFlags) -> anyhow::Result<NodeSettings> {
        let mut builder = config::Config::builder();
        if let Some(path) = &flags.config {
            builder = builder.add_source(config::File::from(path.as_path()).format(config::FileFormat::Toml));
        }
        builder = builder.add_source(config::Environment::with_prefix("SETTLE").prefix_separator("_").separator("__"));
        builder = builder.add_source(config::Config::try_from(flags).context("command-line flags")?);
        let settings: NodeSettings = builder.build()?.try_deserialize().context("settings (flags, SETTLE_* environment, --config file)")?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> anyhow::Result<()> {
        match self.join {
            Some(_) if !self.members.is_empty() => {
                bail!("--join and --cluster exclude each other: a new node joins, a bootstrap member lists the cluster")
            }
            Some(_) => {}
            None if self.members.is_empty() => {
                bail!("give --cluster (the bootstrap members) or --join (a member's peer address, for a node added later)")
            }
            None => {
                let Some(listed) = self.members.get(&self.node_id) else {
                    bail!("--cluster does not list this node's id {}", self.node_id);
                };
                if *listed != self.peer {
                    bail!("--cluster lists {listed} for node {}, but --peer is {}", self.node_id, self.peer);
                }
            }
        }
        if self.shards == 0 {
            bail!("--shards must be at least 1");
        }
        if usize::try_from(self.frame_bytes_max).map_or(true, |frame| frame > self.peer_inbound_bytes_max) {
            bail!("peer_inbound_bytes_max must hold at least one frame of frame_bytes_max");
        }
        if self.cache_mb == 0 || self.cache_mb > 1 << 20 {
            bail!("--cache-mb must be between 1 and {}", 1u64 << 20);
        }
        if self.log_format != "text" && self.log_format != "json" {
            bail!("--log-format must be text or json");
        }
        let tls_given = [&self.tls_cert, &self.tls_key, &self.tls_ca].iter().filter(|path| path.is_some()).count();
        if tls_given != 0 && tls_given != 3 {
            bail!("peer TLS needs all of --tls-cert, --tls-key and --tls-ca");
        }
        if tls_given == 0 && !self.insecure_peers {
            bail!(
                "peers are authenticated with mutual TLS: give --tls-cert, --tls-key and --tls-ca (make a cluster CA and \
                 node certificates with `settle certs`), or --insecure-peers for a development cluster on loopback"
            );
        }
        if self.bootstrap_admin_key.as_ref().is_some_and(|key| key.len() < 16) {
            bail!("--bootstrap-admin-key must be at least 16 characters");
        }
        for role in Role::ALL {
            let limit = self.rate_limits.for_role(role);
            if limit.per_second == 0 || limit.burst == 0 {
                bail!("rate_limits.{} must allow at least one request (per_second and burst >= 1)", role.name());
            }
        }
        if self.http_tls_cert.is_some() != self.http_tls_key.is_some() {
            bail!("HTTPS needs both --http-tls-cert and --http-tls-key");
        }
        if tls_given == 0 && self.insecure_peers {
            let exposed: Vec<String> = self
                .members
                .values()
                .chain(self.join.iter())
                .filter(|address| !address.ip().is_loopback())
                .map(|address| address.to_string())
                .collect();
            if !exposed.is_empty() || !self.peer.ip().is_loopback() {
                bail!("--insecure-peers is only allowed when every peer address is loopback; not: {}", exposed.join(", "));
            }
        }
        Ok(())
    }

    /// `https` when the client API serves TLS, else `http` (how other nodes and tools are told
    /// to reach it).
    pub fn http_scheme(&self) -> &'static str {
        if self.http_tls().is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Certificate and key of the HTTPS client API, when configured.
    pub fn http_tls(&self) -> Option<(PathBuf, PathBuf)> {
        Some((self.http_tls_cert.clone()?, self.http_tls_key.clone()?))
    }

    /// The bounds of the peer port.
    pub fn peer_limits(&self) -> settle_actors::transport::PeerLimits {
        settle_actors::transport::PeerLimits {
            frame_bytes_max: self.frame_bytes_max,
            connections_max: self.peer_connections_max,
            inbound_bytes_max: self.peer_inbound_bytes_max,
            handshake_timeout_ms: self.peer_handshake_timeout_ms,
            frame_read_timeout_ms: self.peer_frame_read_timeout_ms,
        }
    }

    /// Certificate, key and CA for peer mTLS, when configured.
    pub fn peer_tls(&self) -> Option<(PathBuf, PathBuf, PathBuf)> {
        Some((self.tls_cert.clone()?, self.tls_key.clone()?, self.tls_ca.clone()?))
    }
}

fn members_from_text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<BTreeMap<NodeId, SocketAddr>, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_cluster(&text).map_err(|error| serde::de::Error::custom(format!("{error:#}")))
}

fn members_to_text<S: serde::Serializer>(members: &BTreeMap<NodeId, SocketAddr>, serializer: S) -> Result<S::Ok, S::Error> {
    let parts: Vec<String> = members.iter().map(|(id, address)| format!("{id}={address}")).collect();
    serializer.serialize_str(&parts.join(","))
}

pub fn parse_cluster(text: &str) -> anyhow::Result<BTreeMap<NodeId, SocketAddr>> {
    let mut members = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|part| !part.is_empty()) {
        let (id, address) = part.split_once('=').with_context(|| format!("cluster member {part:?} is not ID=ADDR"))?;
        let id: NodeId = id.trim().parse().with_context(|| format!("node id in {part:?}"))?;
        let address: SocketAddr = address.trim().parse().with_context(|| format!("address in {part:?}"))?;
        if id == 0 {
            bail!("node ids start at 1");
        }
        if members.insert(id, address).is_some() {
            bail!("node {id} listed twice in --cluster");
        }
    }
    if members.is_empty() {
        bail!("--cluster lists no members");
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Defaults < TOML file < SETTLE_* environment < flags, for every key.
    #[test]
    fn flags_win_over_environment_which_wins_over_the_file() {
        let dir = std::env::temp_dir().join(format!("settle-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("settle.toml");
        std::fs::write(
            &file,
            "node_id = 2\ndata_dir = \"/from/file\"\nhttp = \"127.0.0.1:1\"\npeer = \"127.0.0.1:9002\"\ncluster = \"1=127.0.0.1:9001,2=127.0.0.1:9002\"\nshards = 5\nrequest_timeout_ms = 1234\n[raft]\ntick_ms = 50\n",
        )
        .unwrap();
        // Only this test sets SETTLE_* variables in this process.
        std::env::set_var("SETTLE_SHARDS", "7");
        std::env::set_var("SETTLE_DATA_DIR", "/from/env");
        std::env::set_var("SETTLE_LIMITS__CALLS_INFLIGHT_MAX", "99");
        let flags = StartFlags {
            config: Some(file),
            http: Some("127.0.0.1:8088".parse().unwrap()),
            data_dir: Some(PathBuf::from("/from/flag")),
            insecure_peers: true,
            ..StartFlags::default()
        };
        let settings = NodeSettings::load(&flags);
        std::env::remove_var("SETTLE_SHARDS");
        std::env::remove_var("SETTLE_DATA_DIR");
        std::env::remove_var("SETTLE_LIMITS__CALLS_INFLIGHT_MAX");
        let settings = settings.unwrap();
        assert_eq!(settings.node_id, 2, "from the file");
        assert_eq!(settings.request_timeout_ms, 1234, "from the file");
        assert_eq!(settings.raft.tick_ms, 50, "nested key from the file");
        assert_eq!(settings.raft.election_ticks, 10, "default for a key nobody set");
        assert_eq!(settings.shards, 7, "environment over file");
        assert_eq!(settings.limits.calls_inflight_max, 99, "nested key from the environment");
        assert_eq!(settings.data_dir, PathBuf::from("/from/flag"), "flag over environment");
        assert_eq!(settings.http.port(), 8088, "flag over file");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The cluster list parses ids and addresses and refuses duplicates and junk.
    #[test]
    fn cluster_list_parses_and_rejects_bad_input() {
        let members = parse_cluster("1=127.0.0.1:9001, 2=127.0.0.1:9002").unwrap();
        assert_eq!(members.len(), 2);
        assert_eq!(members[&2].port(), 9002);
        assert!(parse_cluster("1=127.0.0.1:9001,1=127.0.0.1:9002").is_err());
        assert!(parse_cluster("x=127.0.0.1:9001").is_err());
        assert!(parse_cluster("1=nowhere").is_err());
        assert!(parse_cluster("").is_err());
        assert!(parse_cluster("0=127.0.0.1:1").is_err());
    }

    /// Without peer certificates a node refuses to start, unless `--insecure-peers` is given
    /// and every peer address is loopback.
    #[test]
    fn peers_are_authenticated_unless_insecure_on_loopback() {
        let flags = |cluster: &str, insecure: bool| StartFlags {
            node_id: Some(1),
            data_dir: Some(PathBuf::from("/tmp/unused")),
            http: Some("127.0.0.1:8080".parse().unwrap()),
            peer: Some(cluster.split(',').next().unwrap().split('=').nth(1).unwrap().parse().unwrap()),
            cluster: Some(cluster.to_string()),
            insecure_peers: insecure,
            ..StartFlags::default()
        };
        let loopback = "1=127.0.0.1:9001,2=127.0.0.1:9002";
        let exposed = "1=127.0.0.1:9001,2=10.1.2.3:9002";
        let refused = NodeSettings::load(&flags(loopback, false)).unwrap_err();
        assert!(format!("{refused:#}").contains("--insecure-peers"), "{refused:#}");
        assert!(NodeSettings::load(&flags(loopback, true)).is_ok());
        let refused = NodeSettings::load(&flags(exposed, true)).unwrap_err();
        assert!(format!("{refused:#}").contains("loopback"), "{refused:#}");
    }

    /// A node added later starts with --join instead of --cluster; one of the two is needed,
    /// not both, and an insecure join through a non-loopback member is refused.
    #[test]
    fn join_replaces_the_cluster_list() {
        let flags = |join: Option<&str>, cluster: Option<&str>| StartFlags {
            node_id: Some(4),
            data_dir: Some(PathBuf::from("/tmp/unused")),
            http: Some("127.0.0.1:8084".parse().unwrap()),
            peer: Some("127.0.0.1:9004".parse().unwrap()),
            join: join.map(|join| join.parse().unwrap()),
            cluster: cluster.map(str::to_string),
            insecure_peers: true,
            ..StartFlags::default()
        };
        let settings = NodeSettings::load(&flags(Some("127.0.0.1:9001"), None)).unwrap();
        assert!(settings.members.is_empty() && settings.join.is_some());
        let neither = NodeSettings::load(&flags(None, None)).unwrap_err();
        assert!(format!("{neither:#}").contains("--join"), "{neither:#}");
        let both = NodeSettings::load(&flags(Some("127.0.0.1:9001"), Some("4=127.0.0.1:9004"))).unwrap_err();
        assert!(format!("{both:#}").contains("exclude"), "{both:#}");
        let exposed = NodeSettings::load(&flags(Some("10.1.2.3:9001"), None)).unwrap_err();
        assert!(format!("{exposed:#}").contains("loopback"), "{exposed:#}");
    }
}
