//! The cluster's own records beside the money, replicated like it: API keys (who may call the
//! client API, with which role and scope), request nonces (a signed request's nonce is used once,
//! cluster-wide), and the audit log (a hash chain of what every mutating request did).
//!
//! Keys and the audit log live on the **system shard** (shard 0): one ordered place, low volume.
//! A nonce lives on the shard its name hashes to, so checking nonces spreads over the cluster.
//! Everything here is deterministic like the rest of the ledger: the only clock is the entry's
//! timestamp, and every value from a command is checked before it is stored (a log entry is
//! input too).

use super::{decode_value, keys, Ledger};
use crate::ids::{AccountId, NodeId, ShardId};
use crate::placement::fnv1a_64;
use crate::store::Key;
use ring::digest;
use serde::{Deserialize, Serialize};

/// The shard that holds API keys and the audit log.
pub const SYSTEM_SHARD: ShardId = 0;

pub const KEY_ID_BYTES_MAX: usize = 64;
pub const KEY_ACCOUNTS_MAX: usize = 64;
pub const LABEL_BYTES_MAX: usize = 128;
pub const NONCE_NAME_BYTES_MAX: usize = 160;
pub const AUDIT_TEXT_BYTES_MAX: usize = 256;
pub const AUDIT_TARGETS_MAX: usize = 1000;
pub const AUDIT_EVENTS_MAX: usize = 256;
/// A page of keys or audit records holds at most this many.
pub const SYSTEM_PAGE_MAX: u32 = 1000;
/// Nodes registered after bootstrap, at most (the bootstrap members come on top).
pub const REGISTERED_NODES_MAX: usize = 64;
/// Records the registry holds at most: registered nodes and retired ones.
pub const REGISTRY_RECORDS_MAX: usize = 2 * REGISTERED_NODES_MAX;
/// A registered node's peer address (`IP:port`), at most this long.
pub const PEER_ADDRESS_BYTES_MAX: usize = 64;
/// A nonce is kept at most this long after the entry that stored it.
pub const NONCE_TTL_MAX_MS: u64 = 3_600_000;
/// Expired nonces removed per nonce command (bounded work per apply; a command stores one, so
/// the set cannot outgrow what the window admits).
const NONCE_PRUNE_PER_COMMAND: usize = 64;

/// What an API key may do (the edge's table in `node/src/api/auth.rs` is the authority).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    Admin,
    Operator,
    Merchant,
    CustomerApp,
    Auditor,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Admin, Role::Operator, Role::Merchant, Role::CustomerApp, Role::Auditor];

    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Merchant => "merchant",
            Role::CustomerApp => "customer_app",
            Role::Auditor => "auditor",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.name() == text)
    }

    /// Whether the role is bound to the accounts its key names.
    pub fn scoped(self) -> bool {
        matches!(self, Role::Merchant | Role::CustomerApp)
    }
}

/// A token bucket: `per_second` tokens a second, at most `burst` saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

/// One API key as stored. The bearer secret is kept only as its SHA-256; a merchant's HMAC
/// signing secret is kept as is (a symmetric signature cannot be checked otherwise), an Ed25519
/// key only as its public half.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub id: String,
    pub role: Role,
    pub accounts: Vec<AccountId>,
    pub secret_sha256: [u8; 32],
    pub signing_secret: Option<Vec<u8>>,
    pub ed25519_public_key: Option<Vec<u8>>,
    pub rate_limit: Option<RateLimit>,
    pub label: String,
    pub created_at_ms: u64,
    pub revoked_at_ms: Option<u64>,
}

/// Secrets never reach a log: a key prints without its digest or signing secret.
impl std::fmt::Debug for ApiKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyRecord")
            .field("id", &self.id)
            .field("role", &self.role)
            .field("accounts", &self.accounts)
            .field("secret_sha256", &"<redacted>")
            .field("signing_secret", &self.signing_secret.as_ref().map(|_| "<redacted>"))
            .field("ed25519_public_key", &self.ed25519_public_key.as_deref().map(hex_of))
            .field("rate_limit", &self.rate_limit)
            .field("label", &self.label)
            .field("created_at_ms", &self.created_at_ms)
            .field("revoked_at_ms", &self.revoked_at_ms)
            .finish()
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Whether a key id is well formed: 1..=64 bytes of `[A-Za-z0-9_-]`.
pub fn valid_key_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= KEY_ID_BYTES_MAX && id.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
}

impl ApiKeyRecord {
    /// Every bound a stored key must meet.
    pub fn check(&self) -> Result<(), String> {
        if !valid_key_id(&self.id) {
            return Err("key id must be 1..=64 bytes of [A-Za-z0-9_-]".to_string());
        }
        if self.accounts.len() > KEY_ACCOUNTS_MAX {
            return Err(format!("a key names at most {KEY_ACCOUNTS_MAX} accounts"));
        }
        if self.role.scoped() && self.accounts.is_empty() {
            return Err(format!("a {} key names the accounts it owns", self.role.name()));
        }
        if !self.role.scoped() && !self.accounts.is_empty() {
            return Err(format!("a {} key is not bound to accounts", self.role.name()));
        }
        if self.signing_secret.as_ref().is_some_and(|secret| secret.len() < 16 || secret.len() > 64) {
            return Err("a signing secret is 16..=64 bytes".to_string());
        }
        if self.ed25519_public_key.as_ref().is_some_and(|key| key.len() != 32) {
            return Err("an Ed25519 public key is 32 bytes".to_string());
        }
        if self.rate_limit.is_some_and(|limit| limit.per_second == 0 || limit.burst == 0) {
            return Err("a rate limit allows at least one request".to_string());
        }
        if self.label.len() > LABEL_BYTES_MAX {
            return Err(format!("a label is at most {LABEL_BYTES_MAX} bytes"));
        }
        Ok(())
    }

    pub fn revoked(&self) -> bool {
        self.revoked_at_ms.is_some()
    }
}

/// What one mutating client request did, as its edge node reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// The edge's wall clock when the request finished.
    pub at_ms: u64,
    pub node: NodeId,
    pub key_id: String,
    pub role: String,
    pub request_id: String,
    /// The client's address as the edge saw it.
    pub client: String,
    /// Method and route, e.g. `POST /v1/transfers`.
    pub operation: String,
    /// The ids the request named (accounts, transfers, keys).
    pub targets: Vec<String>,
    pub status: u16,
    /// `ok` or the error code answered.
    pub outcome: String,
}

impl AuditEvent {
    pub fn check(&self) -> Result<(), String> {
        let texts = [&self.key_id, &self.role, &self.request_id, &self.client, &self.operation, &self.outcome];
        if texts.iter().any(|text| text.len() > AUDIT_TEXT_BYTES_MAX) {
            return Err(format!("audit fields are at most {AUDIT_TEXT_BYTES_MAX} bytes"));
        }
        if self.targets.len() > AUDIT_TARGETS_MAX || self.targets.iter().any(|target| target.len() > AUDIT_TEXT_BYTES_MAX) {
            return Err(format!("an audit event names at most {AUDIT_TARGETS_MAX} targets"));
        }
        Ok(())
    }
}

/// One link of the audit chain: `hash = SHA-256(domain, seq, recorded_ms, prev_hash, event)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    /// The timestamp of the log entry that appended it.
    pub recorded_ms: u64,
    pub prev_hash: [u8; 32],
    pub event: AuditEvent,
    pub hash: [u8; 32],
}

impl AuditRecord {
    /// The hash a record with these contents must carry.
    pub fn compute_hash(seq: u64, recorded_ms: u64, prev_hash: &[u8; 32], event: &AuditEvent) -> [u8; 32] {
        let mut context = digest::Context::new(&digest::SHA256);
        context.update(b"settle-audit-1");
        context.update(&seq.to_be_bytes());
        context.update(&recorded_ms.to_be_bytes());
        context.update(prev_hash);
        context.update(&bincode::serialize(event).expect("an audit event serialises"));
        let mut hash = [0u8; 32];
        hash.copy_from_slice(context.finish().as_ref());
        hash
    }

    /// Whether this record follows `prev` (the previous record's hash; zeros for the first) and
    /// its hash covers its contents. The first broken link of a chain is where it was edited.
    pub fn follows(&self, expected_seq: u64, prev: &[u8; 32]) -> Result<(), String> {
        if self.seq != expected_seq {
            return Err(format!("record {} found where {expected_seq} was expected", self.seq));
        }
        if &self.prev_hash != prev {
            return Err(format!("record {} does not link to the record before it", self.seq));
        }
        if self.hash != AuditRecord::compute_hash(self.seq, self.recorded_ms, &self.prev_hash, &self.event) {
            return Err(format!("record {}'s contents do not match its hash", self.seq));
        }
        Ok(())
    }
}

/// Where the chain ends: the next sequence number and the last record's hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AuditHead {
    pub next_seq: u64,
    pub hash: [u8; 32],
}

/// A node of the registry: one that joined after bootstrap (its id and the peer address every
/// member links to), or any node retired from the cluster (a bootstrap member's record has no
/// address). A retired node is no member any more and its id is never used again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    pub peer: String,
    pub registered_at_ms: u64,
    pub retired_at_ms: Option<u64>,
}

/// Whether a registered peer address is well formed: a socket address (`IP:port`) that a node
/// can listen on and others connect to (not unspecified, port not 0).
pub fn valid_peer_address(peer: &str) -> bool {
    peer.len() <= PEER_ADDRESS_BYTES_MAX
        && peer.parse::<std::net::SocketAddr>().is_ok_and(|address| !address.ip().is_unspecified() && address.port() != 0)
}

/// The system commands of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SystemCmd {
    /// Stores a key unless one with its id exists (then nothing changes).
    CreateKey(Box<ApiKeyRecord>),
    RevokeKey {
        id: String,
    },
    /// Uses a nonce (`name` = key id and nonce): fresh the first time, replayed after, until it
    /// expires.
    UseNonce {
        name: String,
        expires_ms: u64,
    },
    /// Appends events to the audit chain, in order.
    Audit(Vec<AuditEvent>),
    /// Makes a node a member of the cluster's registry (system shard): every node links to
    /// it, and replicas may be moved to it. Registering it again with the same address
    /// changes nothing; with another address is refused.
    RegisterNode {
        id: NodeId,
        peer: String,
    },
    /// Takes a node out of the cluster for good, once it holds no replica (the edge checks):
    /// members stop linking to it and drop what it sends; its id is never registered again.
    RetireNode {
        id: NodeId,
    },
}

impl SystemCmd {
    /// Every bound a command must meet before it is stored (checked on the edge, on a leg from
    /// a peer, and again when applied).
    pub fn check(&self) -> Result<(), String> {
        match self {
            SystemCmd::CreateKey(record) => record.check(),
            SystemCmd::RevokeKey { id } if !valid_key_id(id) => Err("not a key id".to_string()),
            SystemCmd::RevokeKey { .. } => Ok(()),
            SystemCmd::UseNonce { name, .. } if name.is_empty() || name.len() > NONCE_NAME_BYTES_MAX => Err("nonce bounds".to_string()),
            SystemCmd::UseNonce { .. } => Ok(()),
            SystemCmd::Audit(events) if events.is_empty() || events.len() > AUDIT_EVENTS_MAX => Err("audit batch bounds".to_string()),
            SystemCmd::Audit(events) => events.iter().try_for_each(AuditEvent::check),
            SystemCmd::RegisterNode { id: 0, .. } => Err("node ids start at 1".to_string()),
            SystemCmd::RegisterNode { peer, .. } if !valid_peer_address(peer) => {
                Err(format!("a peer address is IP:port, at most {PEER_ADDRESS_BYTES_MAX} bytes"))
            }
            SystemCmd::RegisterNode { .. } => Ok(()),
            SystemCmd::RetireNode { id: 0 } => Err("node ids start at 1".to_string()),
            SystemCmd::RetireNode { .. } => Ok(()),
        }
    }

    /// The shard a command belongs to: a nonce's own shard, else the system shard.
    pub fn shard(&self, shard_count: u32) -> ShardId {
        match self {
            SystemCmd::UseNonce { name, .. } => nonce_shard(name, shard_count),
            _ => SYSTEM_SHARD,
        }
    }
}

/// The shard a nonce lives on.
pub fn nonce_shard(name: &str, shard_count: u32) -> ShardId {
    u32::try_from(fnv1a_64(name.as_bytes()) % u64::from(shard_count.max(1))).expect("below a u32")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SystemOutcome {
    KeyCreated(ApiKeyRecord),
    /// A key with that id exists: nothing changed (it is returned as stored).
    KeyExists(ApiKeyRecord),
    KeyRevoked(ApiKeyRecord),
    KeyNotFound,
    NonceFresh,
    NonceReplayed,
    Audited {
        first_seq: u64,
        count: u64,
    },
    /// The node is registered; the registry's epoch after it.
    NodeRegistered {
        record: NodeRecord,
        epoch: u64,
    },
    /// The node was registered before with this address: nothing changed.
    NodeExists {
        record: NodeRecord,
        epoch: u64,
    },
    /// The node is retired (now, or before: then nothing changed).
    NodeRetired {
        record: NodeRecord,
        epoch: u64,
    },
    /// The command broke a bound: nothing changed.
    Invalid(String),
}

/// The system reads (linearizable, like every read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SystemRead {
    Key(String),
    /// Keys in id order after `after`.
    Keys {
        after: Option<String>,
        limit: u32,
    },
    /// Audit records in order from `from`.
    Audit {
        from: u64,
        limit: u32,
    },
    /// The node registry: every node registered after bootstrap, with its epoch.
    Nodes,
}

impl SystemRead {
    pub fn check(&self) -> Result<(), String> {
        match self {
            SystemRead::Key(id) if !valid_key_id(id) => Err("not a key id".to_string()),
            SystemRead::Keys { after: Some(after), .. } if !valid_key_id(after) => Err("not a key id".to_string()),
            SystemRead::Keys { limit, .. } | SystemRead::Audit { limit, .. } if *limit == 0 || *limit > SYSTEM_PAGE_MAX => {
                Err("page bounds".to_string())
            }
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SystemReadReply {
    Key(Option<ApiKeyRecord>),
    Keys(Vec<ApiKeyRecord>),
    /// Records from the asked position, and the chain's head.
    Audit {
        records: Vec<AuditRecord>,
        head: AuditHead,
    },
    Nodes {
        epoch: u64,
        nodes: Vec<NodeRecord>,
    },
}

impl Ledger {
    /// Applies a system command (already checked by `apply_command`).
    pub(super) fn system_command(&mut self, now_ms: u64, command: &SystemCmd) -> SystemOutcome {
        if let Err(reason) = command.check() {
            return SystemOutcome::Invalid(reason);
        }
        if command.shard(self.shard_count) != self.shard {
            return SystemOutcome::Invalid("the command belongs to another shard".to_string());
        }
        match command {
            SystemCmd::CreateKey(record) => {
                if let Some(existing) = self.api_key(&record.id) {
                    return SystemOutcome::KeyExists(existing);
                }
                let stored = ApiKeyRecord { created_at_ms: now_ms, revoked_at_ms: None, ..(**record).clone() };
                self.write(keys::key(self.shard, self.generation, keys::API_KEY, stored.id.as_bytes()), &stored);
                SystemOutcome::KeyCreated(stored)
            }
            SystemCmd::RevokeKey { id } => match self.api_key(id) {
                None => SystemOutcome::KeyNotFound,
                Some(existing) if existing.revoked() => SystemOutcome::KeyRevoked(existing),
                Some(existing) => {
                    let revoked = ApiKeyRecord { revoked_at_ms: Some(now_ms), ..existing };
                    self.write(keys::key(self.shard, self.generation, keys::API_KEY, id.as_bytes()), &revoked);
                    SystemOutcome::KeyRevoked(revoked)
                }
            },
            SystemCmd::UseNonce { name, expires_ms } => {
                self.prune_nonces(now_ms);
                if *expires_ms > now_ms.saturating_add(NONCE_TTL_MAX_MS) {
                    return SystemOutcome::Invalid("a nonce expires within an hour".to_string());
                }
                let key = keys::key(self.shard, self.generation, keys::NONCE, name.as_bytes());
                let forgotten = crate::planted::planted(self.planted, crate::planted::PlantedBug::NonceForgotten);
                if let Some(stored_expiry) = self.read::<u64>(&key).filter(|_| !forgotten) {
                    if stored_expiry >= now_ms {
                        return SystemOutcome::NonceReplayed;
                    }
                }
                let expires = (*expires_ms).max(now_ms);
                self.write(key, &expires);
                self.overlay.insert(nonce_expiry_key(self.shard, self.generation, expires, name), Some(Vec::new()));
                SystemOutcome::NonceFresh
            }
            SystemCmd::Audit(events) => {
                let first_seq = self.audit_head.next_seq;
                for event in events {
                    let seq = self.audit_head.next_seq;
                    let hash = AuditRecord::compute_hash(seq, now_ms, &self.audit_head.hash, event);
                    let record = AuditRecord { seq, recorded_ms: now_ms, prev_hash: self.audit_head.hash, event: event.clone(), hash };
                    self.write(keys::key(self.shard, self.generation, keys::AUDIT, &seq.to_be_bytes()), &record);
                    self.audit_head = AuditHead { next_seq: seq + 1, hash };
                }
                let head = self.audit_head;
                self.write(keys::key(self.shard, self.generation, keys::AUDIT_HEAD, &[]), &head);
                SystemOutcome::Audited { first_seq, count: u64::try_from(events.len()).unwrap_or(u64::MAX) }
            }
            SystemCmd::RegisterNode { id, peer } => {
                let key = keys::key(self.shard, self.generation, keys::NODE, &id.to_be_bytes());
                let epoch = self.registry_epoch();
                match self.read::<NodeRecord>(&key) {
                    Some(record) if record.retired_at_ms.is_some() => {
                        return SystemOutcome::Invalid(format!("node {id} was retired; a node id is never used again"));
                    }
                    Some(record) if &record.peer == peer => return SystemOutcome::NodeExists { record, epoch },
                    Some(record) => {
                        return SystemOutcome::Invalid(format!("node {id} is registered with peer address {}", record.peer));
                    }
                    None => {}
                }
                let (start, end) = keys::kind_range(self.shard, self.generation, keys::NODE);
                let records = self.scan_keys_merged(&start, &end, REGISTRY_RECORDS_MAX);
                let members =
                    records.iter().filter_map(|key| self.read::<NodeRecord>(key)).filter(|record| record.retired_at_ms.is_none()).count();
                if members >= REGISTERED_NODES_MAX || records.len() >= REGISTRY_RECORDS_MAX {
                    return SystemOutcome::Invalid(format!(
                        "at most {REGISTERED_NODES_MAX} registered nodes, and {REGISTRY_RECORDS_MAX} registry records with the retired ones"
                    ));
                }
                let record = NodeRecord { id: *id, peer: peer.clone(), registered_at_ms: now_ms, retired_at_ms: None };
                self.write(key, &record);
                let epoch = epoch + 1;
                self.write(keys::key(self.shard, self.generation, keys::REGISTRY_HEAD, &[]), &epoch);
                SystemOutcome::NodeRegistered { record, epoch }
            }
            SystemCmd::RetireNode { id } => {
                let key = keys::key(self.shard, self.generation, keys::NODE, &id.to_be_bytes());
                let epoch = self.registry_epoch();
                let record = match self.read::<NodeRecord>(&key) {
                    Some(record) if record.retired_at_ms.is_some() => return SystemOutcome::NodeRetired { record, epoch },
                    Some(record) => NodeRecord { retired_at_ms: Some(now_ms), ..record },
                    None => {
                        let (start, end) = keys::kind_range(self.shard, self.generation, keys::NODE);
                        if self.scan_keys_merged(&start, &end, REGISTRY_RECORDS_MAX).len() >= REGISTRY_RECORDS_MAX {
                            return SystemOutcome::Invalid(format!("the registry holds at most {REGISTRY_RECORDS_MAX} nodes"));
                        }
                        // A bootstrap member (the edge checked it is one).
                        NodeRecord { id: *id, peer: String::new(), registered_at_ms: now_ms, retired_at_ms: Some(now_ms) }
                    }
                };
                self.write(key, &record);
                let epoch = epoch + 1;
                self.write(keys::key(self.shard, self.generation, keys::REGISTRY_HEAD, &[]), &epoch);
                SystemOutcome::NodeRetired { record, epoch }
            }
        }
    }

    /// How many registrations the node registry applied (0 before the first).
    pub fn registry_epoch(&self) -> u64 {
        self.read(&keys::key(self.shard, self.generation, keys::REGISTRY_HEAD, &[])).unwrap_or(0)
    }

    /// The node registry as committed: its epoch and every registered node in id order.
    pub fn node_registry(&self) -> (u64, Vec<NodeRecord>) {
        let (start, end) = keys::kind_range(self.shard, self.generation, keys::NODE);
        // Through the overlay like the epoch, so both describe the same point.
        let nodes = self.scan_keys_merged(&start, &end, REGISTRY_RECORDS_MAX).iter().filter_map(|key| self.read(key)).collect();
        (self.registry_epoch(), nodes)
    }

    /// Deletes up to `NONCE_PRUNE_PER_COMMAND` nonces that expired before `now_ms` (oldest
    /// first, this round's writes included, so every replica deletes the same ones).
    fn prune_nonces(&mut self, now_ms: u64) {
        let (start, _) = keys::kind_range(self.shard, self.generation, keys::NONCE_EXPIRY);
        let end = keys::key(self.shard, self.generation, keys::NONCE_EXPIRY, &now_ms.to_be_bytes());
        for key in self.scan_keys_merged(&start, &end, NONCE_PRUNE_PER_COMMAND) {
            let name = &key[start.len() + 8..];
            let nonce = keys::key(self.shard, self.generation, keys::NONCE, name);
            self.overlay.insert(nonce, None);
            self.overlay.insert(key, None);
        }
    }

    /// The first `limit` keys in `[start, end)` as this round sees them: the store's, with the
    /// overlay's writes and deletions applied.
    pub(super) fn scan_keys_merged(&self, start: &[u8], end: &[u8], limit: usize) -> Vec<Key> {
        let written: Vec<(&Key, bool)> =
            self.overlay.range(start.to_vec()..end.to_vec()).map(|(key, value)| (key, value.is_some())).collect();
        let deletions = written.iter().filter(|(_, present)| !present).count();
        let mut keys: std::collections::BTreeSet<Key> =
            self.store.scan(start, end, limit.saturating_add(deletions), false).into_iter().map(|(key, _)| key).collect();
        for (key, present) in written {
            if present {
                keys.insert(key.clone());
            } else {
                keys.remove(key);
            }
        }
        keys.into_iter().take(limit).collect()
    }

    pub fn api_key(&self, id: &str) -> Option<ApiKeyRecord> {
        self.read(&keys::key(self.shard, self.generation, keys::API_KEY, id.as_bytes()))
    }

    pub fn audit_head(&self) -> AuditHead {
        self.audit_head
    }

    /// Answers a system read from committed state.
    pub fn system_read(&self, read: &SystemRead) -> SystemReadReply {
        match read {
            SystemRead::Key(id) => SystemReadReply::Key(self.api_key(id)),
            SystemRead::Keys { after, limit } => {
                let (start, end) = keys::kind_range(self.shard, self.generation, keys::API_KEY);
                let from = match after {
                    Some(after) => {
                        let mut key = keys::key(self.shard, self.generation, keys::API_KEY, after.as_bytes());
                        key.push(0);
                        key
                    }
                    None => start,
                };
                let limit = usize::try_from(*limit).unwrap_or(usize::MAX);
                let records =
                    self.store.scan(&from, &end, limit, false).into_iter().filter_map(|(_, value)| self.decoded(&value)).collect();
                SystemReadReply::Keys(records)
            }
            SystemRead::Audit { from, limit } => {
                let (_, end) = keys::kind_range(self.shard, self.generation, keys::AUDIT);
                let start = keys::key(self.shard, self.generation, keys::AUDIT, &from.to_be_bytes());
                let limit = usize::try_from(*limit).unwrap_or(usize::MAX);
                let records =
                    self.store.scan(&start, &end, limit, false).into_iter().filter_map(|(_, value)| self.decoded(&value)).collect();
                SystemReadReply::Audit { records, head: self.audit_head }
            }
            SystemRead::Nodes => {
                let (epoch, nodes) = self.node_registry();
                SystemReadReply::Nodes { epoch, nodes }
            }
        }
    }

    /// A stored value decoded, or `None` with the damage recorded (see `Ledger::damage`).
    pub(super) fn decoded<T: serde::de::DeserializeOwned>(&self, value: &[u8]) -> Option<T> {
        match decode_value(value) {
            Ok(decoded) => Some(decoded),
            Err(error) => {
                self.damaged(format!("a stored record does not decode: {error}"));
                None
            }
        }
    }

    /// Reads the audit head (part of `load_meta`).
    pub(super) fn load_audit_head(&mut self) -> Result<(), crate::store::StoreError> {
        self.audit_head = match self.store.get(&keys::key(self.shard, self.generation, keys::AUDIT_HEAD, &[])) {
            Some(bytes) => decode_value(&bytes)
                .map_err(|error| crate::store::StoreError(format!("shard {}: stored audit head does not decode: {error}", self.shard)))?,
            None => AuditHead::default(),
        };
        Ok(())
    }

    /// The audit chain from its start: every link and the head (proportional to the chain:
    /// `verify` and the offline checker only).
    pub fn verify_audit_chain(&self) -> Result<u64, String> {
        let (start, end) = keys::kind_range(self.shard, self.generation, keys::AUDIT);
        let mut head = AuditHead::default();
        for (key, value) in self.store.scan(&start, &end, usize::MAX, false) {
            let record: AuditRecord =
                decode_value(&value).map_err(|error| format!("shard {}: audit record at {key:?} does not decode: {error}", self.shard))?;
            if key[start.len()..] != record.seq.to_be_bytes() {
                return Err(format!("shard {}: audit record {} stored under another position", self.shard, record.seq));
            }
            record.follows(head.next_seq, &head.hash).map_err(|error| format!("shard {}: audit chain broken: {error}", self.shard))?;
            head = AuditHead { next_seq: record.seq + 1, hash: record.hash };
        }
        if head != self.audit_head {
            return Err(format!("shard {}: the audit head does not match the last record", self.shard));
        }
        Ok(head.next_seq)
    }

    /// Nonces and their expiry index agree (`verify`, the simulator's checkers).
    pub fn verify_nonces(&self) -> Result<(), String> {
        let (start, end) = keys::kind_range(self.shard, self.generation, keys::NONCE);
        for (key, value) in self.store.scan(&start, &end, usize::MAX, false) {
            let expires: u64 = decode_value(&value).map_err(|error| format!("a nonce does not decode: {error}"))?;
            let name = std::str::from_utf8(&key[start.len()..]).map_err(|_| "a nonce name is not text".to_string())?;
            if nonce_shard(name, self.shard_count) != self.shard {
                return Err(format!("nonce {name} on the wrong shard"));
            }
            if self.store.get(&nonce_expiry_key(self.shard, self.generation, expires, name)).is_none() {
                return Err(format!("nonce {name} missing from the expiry index"));
            }
        }
        Ok(())
    }
}

fn nonce_expiry_key(shard: ShardId, generation: u32, expires_ms: u64, name: &str) -> Key {
    let mut rest = expires_ms.to_be_bytes().to_vec();
    rest.extend_from_slice(name.as_bytes());
    keys::key(shard, generation, keys::NONCE_EXPIRY, &rest)
}

/// A stored value of a system record kind decodes as its kind says (`Ledger::check_record`).
pub(super) fn check_system_record(kind: u8, value: &[u8]) -> Option<Result<(), String>> {
    fn decodes<T: serde::de::DeserializeOwned>(value: &[u8]) -> Result<(), String> {
        decode_value::<T>(value).map(|_| ()).map_err(|error| error.to_string())
    }
    Some(match kind {
        keys::API_KEY => decodes::<ApiKeyRecord>(value),
        keys::NONCE => decodes::<u64>(value),
        keys::NONCE_EXPIRY if value.is_empty() => Ok(()),
        keys::NONCE_EXPIRY => Err("a nonce expiry marker with a value".to_string()),
        keys::AUDIT => decodes::<AuditRecord>(value),
        keys::AUDIT_HEAD => decodes::<AuditHead>(value),
        keys::NODE => decodes::<NodeRecord>(value),
        keys::REGISTRY_HEAD => decodes::<u64>(value),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Applied, Command};
    use crate::store::{Value, WriteBatch};
    use std::collections::BTreeMap;

    fn key(id: &str, role: Role, accounts: &[&str]) -> ApiKeyRecord {
        ApiKeyRecord {
            id: id.to_string(),
            role,
            accounts: accounts.iter().map(|account| AccountId::new(*account).unwrap()).collect(),
            secret_sha256: [7; 32],
            signing_secret: None,
            ed25519_public_key: None,
            rate_limit: None,
            label: String::new(),
            created_at_ms: 0,
            revoked_at_ms: None,
        }
    }

    fn event(n: u64) -> AuditEvent {
        AuditEvent {
            at_ms: n,
            node: 1,
            key_id: "k1".to_string(),
            role: "admin".to_string(),
            request_id: format!("r{n}"),
            client: "127.0.0.1:1".to_string(),
            operation: "POST /v1/transfers".to_string(),
            targets: vec![format!("t{n}")],
            status: 201,
            outcome: "ok".to_string(),
        }
    }

    fn system(ledger: &mut Ledger, now_ms: u64, command: SystemCmd) -> SystemOutcome {
        match ledger.apply(now_ms, &Command::System(command)) {
            Applied::System(outcome) => outcome,
            other => panic!("not a system outcome: {other:?}"),
        }
    }

    /// A node is registered once: again with the same address changes nothing, with another
    /// address is refused; each registration raises the epoch; the registry reads back in id
    /// order; malformed commands are refused before they are stored.
    #[test]
    fn nodes_register_once_and_the_epoch_counts_registrations() {
        let mut ledger = Ledger::new(SYSTEM_SHARD, 4);
        let register = |id: NodeId, peer: &str| SystemCmd::RegisterNode { id, peer: peer.to_string() };
        assert_eq!(ledger.node_registry(), (0, Vec::new()));
        let first = system(&mut ledger, 10, register(5, "127.0.0.1:9005"));
        assert!(matches!(&first, SystemOutcome::NodeRegistered { record, epoch: 1 } if record.id == 5 && record.registered_at_ms == 10));
        assert!(matches!(system(&mut ledger, 20, register(4, "127.0.0.1:9004")), SystemOutcome::NodeRegistered { epoch: 2, .. }));
        let again = system(&mut ledger, 30, register(4, "127.0.0.1:9004"));
        assert!(matches!(&again, SystemOutcome::NodeExists { record, epoch: 2 } if record.registered_at_ms == 20));
        assert!(matches!(system(&mut ledger, 40, register(4, "127.0.0.1:9999")), SystemOutcome::Invalid(_)));
        for bad in [register(0, "127.0.0.1:1"), register(6, "nowhere"), register(6, "0.0.0.0:9006"), register(6, "127.0.0.1:0")] {
            assert!(matches!(system(&mut ledger, 50, bad), SystemOutcome::Invalid(_)));
        }
        let (epoch, nodes) = ledger.node_registry();
        assert_eq!(epoch, 2);
        assert_eq!(
            nodes.iter().map(|record| (record.id, record.peer.as_str())).collect::<Vec<_>>(),
            vec![(4, "127.0.0.1:9004"), (5, "127.0.0.1:9005")]
        );
        // Retiring: a registered node and a bootstrap member (no record before); again changes
        // nothing; a retired id is never registered again.
        assert!(matches!(system(&mut ledger, 60, SystemCmd::RetireNode { id: 4 }), SystemOutcome::NodeRetired { epoch: 3, .. }));
        let bootstrap = system(&mut ledger, 70, SystemCmd::RetireNode { id: 2 });
        assert!(
            matches!(&bootstrap, SystemOutcome::NodeRetired { record, epoch: 4 } if record.peer.is_empty() && record.retired_at_ms == Some(70))
        );
        let again = system(&mut ledger, 80, SystemCmd::RetireNode { id: 4 });
        assert!(matches!(&again, SystemOutcome::NodeRetired { record, epoch: 4 } if record.retired_at_ms == Some(60)));
        assert!(matches!(system(&mut ledger, 90, register(4, "127.0.0.1:9004")), SystemOutcome::Invalid(_)));
        let (epoch, nodes) = ledger.node_registry();
        assert_eq!(epoch, 4);
        let retired: Vec<NodeId> = nodes.iter().filter(|record| record.retired_at_ms.is_some()).map(|record| record.id).collect();
        assert_eq!(retired, vec![2, 4]);
        ledger.verify().unwrap();
    }

    /// Every record kind a snapshot may carry has a decoder in `check_record` (a kind without
    /// one made a leader quarantine itself when it streamed the registry to a new replica).
    #[test]
    fn every_record_kind_is_checked_by_its_decoder() {
        for kind in keys::KINDS {
            if let Err(reason) = Ledger::check_record(&[kind], b"\xff\xff") {
                assert!(!reason.contains("unknown record kind"), "kind {kind:#04x}: {reason}");
            }
        }
    }

    #[test]
    fn a_key_never_prints_its_secrets() {
        let mut record = key("k1", Role::Merchant, &["m1"]);
        record.signing_secret = Some(b"0123456789abcdef-signing".to_vec());
        let printed = format!("{:?}", SystemCmd::CreateKey(Box::new(record)));
        assert!(printed.contains("k1") && printed.contains("<redacted>"), "{printed}");
        assert!(!printed.contains("0123456789abcdef") && !printed.contains("7, 7"), "{printed}");
    }

    #[test]
    fn a_key_is_created_once_and_revoked_for_good() {
        let mut ledger = Ledger::new(SYSTEM_SHARD, 4);
        let created = system(&mut ledger, 10, SystemCmd::CreateKey(Box::new(key("k1", Role::Merchant, &["m1"]))));
        assert!(matches!(&created, SystemOutcome::KeyCreated(record) if record.created_at_ms == 10));
        let again = system(&mut ledger, 20, SystemCmd::CreateKey(Box::new(key("k1", Role::Admin, &[]))));
        assert!(matches!(&again, SystemOutcome::KeyExists(record) if record.role == Role::Merchant && record.created_at_ms == 10));
        let revoked = system(&mut ledger, 30, SystemCmd::RevokeKey { id: "k1".to_string() });
        assert!(matches!(&revoked, SystemOutcome::KeyRevoked(record) if record.revoked_at_ms == Some(30)));
        let recreate = system(&mut ledger, 40, SystemCmd::CreateKey(Box::new(key("k1", Role::Merchant, &["m1"]))));
        assert!(matches!(&recreate, SystemOutcome::KeyExists(record) if record.revoked()), "a revoked id is never reused");
        assert_eq!(system(&mut ledger, 50, SystemCmd::RevokeKey { id: "nope".to_string() }), SystemOutcome::KeyNotFound);
        ledger.verify().unwrap();
    }

    /// Everything but the shard clock, which every applied entry may advance.
    fn business_state(ledger: &Ledger) -> BTreeMap<Key, Value> {
        let mut state = ledger.logical_state();
        state.retain(|key, _| key.first() != Some(&keys::CLOCK));
        state
    }

    /// Invalid or misrouted system commands leave the shard's records as they were.
    #[test]
    fn out_of_bounds_or_misrouted_system_commands_change_nothing() {
        let mut ledger = Ledger::new(SYSTEM_SHARD, 4);
        let before = business_state(&ledger);
        let scoped_without_accounts = key("k1", Role::Merchant, &[]);
        assert!(matches!(system(&mut ledger, 1, SystemCmd::CreateKey(Box::new(scoped_without_accounts))), SystemOutcome::Invalid(_)));
        assert!(matches!(
            system(&mut ledger, 1, SystemCmd::CreateKey(Box::new(key("bad id!", Role::Admin, &[])))),
            SystemOutcome::Invalid(_)
        ));
        assert!(matches!(system(&mut ledger, 1, SystemCmd::Audit(Vec::new())), SystemOutcome::Invalid(_)));
        let elsewhere = (0..100).map(|n| format!("k:{n}")).find(|name| nonce_shard(name, 4) != SYSTEM_SHARD).unwrap();
        assert!(matches!(system(&mut ledger, 1, SystemCmd::UseNonce { name: elsewhere, expires_ms: 5 }), SystemOutcome::Invalid(_)));
        let mut other = Ledger::new(1, 4);
        assert!(matches!(system(&mut other, 1, SystemCmd::CreateKey(Box::new(key("k1", Role::Admin, &[])))), SystemOutcome::Invalid(_)));
        assert_eq!(business_state(&ledger), before);
    }

    #[test]
    fn a_nonce_is_fresh_once_until_it_expires_and_expired_ones_are_pruned() {
        let mut ledger = Ledger::new(SYSTEM_SHARD, 1);
        let nonce = |name: &str, expires_ms| SystemCmd::UseNonce { name: name.to_string(), expires_ms };
        assert_eq!(system(&mut ledger, 1_000, nonce("k:a", 5_000)), SystemOutcome::NonceFresh);
        assert_eq!(system(&mut ledger, 2_000, nonce("k:a", 6_000)), SystemOutcome::NonceReplayed);
        assert!(matches!(system(&mut ledger, 2_000, nonce("k:b", 2_000 + NONCE_TTL_MAX_MS + 1)), SystemOutcome::Invalid(_)));
        for n in 0..200 {
            assert_eq!(system(&mut ledger, 3_000, nonce(&format!("k:old{n}"), 4_000)), SystemOutcome::NonceFresh);
        }
        ledger.verify().unwrap();
        // Each later command prunes at most its share of the expired ones, oldest first.
        for n in 0..10 {
            system(&mut ledger, 10_000, nonce(&format!("k:new{n}"), 20_000));
        }
        let (start, end) = keys::kind_range(SYSTEM_SHARD, 0, keys::NONCE);
        assert_eq!(ledger.store().scan(&start, &end, usize::MAX, false).len(), 10, "all 201 expired nonces are gone");
        assert_eq!(system(&mut ledger, 10_000, nonce("k:a", 20_000)), SystemOutcome::NonceFresh, "an expired nonce is forgotten");
        ledger.verify().unwrap();
    }

    #[test]
    fn nonce_pruning_is_the_same_whether_commands_share_a_round_or_not() {
        let commands: Vec<(u64, SystemCmd)> =
            (0..150u64).map(|n| (n * 10, SystemCmd::UseNonce { name: format!("k:{}", n % 120), expires_ms: n * 10 + 35 })).collect();
        let mut one_by_one = Ledger::new(SYSTEM_SHARD, 1);
        let mut outcomes = Vec::new();
        for (now, command) in &commands {
            outcomes.push(system(&mut one_by_one, *now, command.clone()));
        }
        let mut batched = Ledger::new(SYSTEM_SHARD, 1);
        let mut batched_outcomes = Vec::new();
        for (round, chunk) in commands.chunks(7).enumerate() {
            for (now, command) in chunk {
                match batched.apply_command(*now, Command::System(command.clone()), false) {
                    crate::ledger::AppliedCommand::System { outcome, .. } => batched_outcomes.push(outcome),
                    other => panic!("{other:?}"),
                }
            }
            let mark = crate::ledger::AppliedMark { index: u64::try_from(round).unwrap() + 1, ..Default::default() };
            batched.commit_round(&mark).unwrap();
        }
        assert_eq!(outcomes, batched_outcomes);
        assert_eq!(one_by_one.logical_state(), batched.logical_state());
    }

    #[test]
    fn the_audit_chain_links_every_record_and_an_edited_record_breaks_it_there() {
        let mut ledger = Ledger::new(SYSTEM_SHARD, 2);
        let appended = system(&mut ledger, 5, SystemCmd::Audit(vec![event(0), event(1)]));
        assert_eq!(appended, SystemOutcome::Audited { first_seq: 0, count: 2 });
        let appended = system(&mut ledger, 6, SystemCmd::Audit(vec![event(2)]));
        assert_eq!(appended, SystemOutcome::Audited { first_seq: 2, count: 1 });
        assert_eq!(ledger.verify_audit_chain(), Ok(3));
        let SystemReadReply::Audit { records, head } = ledger.system_read(&SystemRead::Audit { from: 1, limit: 10 }) else {
            panic!("not an audit page")
        };
        assert_eq!(records.iter().map(|record| record.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(head.next_seq, 3);
        assert_eq!(records[1].prev_hash, records[0].hash);

        // Someone with the disk changes who did it, and stores the record well formed.
        let mut edited = records[0].clone();
        edited.event.key_id = "someone-else".to_string();
        let mut batch = WriteBatch::default();
        batch.put(keys::key(SYSTEM_SHARD, 0, keys::AUDIT, &1u64.to_be_bytes()), super::super::encode_value(&edited));
        ledger.store().write(batch).unwrap();
        let broken = ledger.verify_audit_chain().unwrap_err();
        assert!(broken.contains("record 1's contents do not match its hash"), "{broken}");
    }
}
