//! Who may call the client API, and what they may do.
//!
//! - **Authentication.** `Authorization: Bearer <key>` (a key `settle_<id>_<secret>` made by
//!   `POST /v1/api_keys`, stored as the SHA-256 of the whole key; or the bootstrap admin key of
//!   the settings, registered as key `bootstrap` on its first use), or a signed request
//!   (`Settle-Signature`, required of merchant keys): HMAC-SHA256 with the key's signing secret
//!   or Ed25519 with its registered public key, over method, path and query, timestamp, nonce
//!   and the body's SHA-256; at most `SIGNATURE_SKEW_S` from this node's clock, and each nonce
//!   once per key, cluster-wide (a `UseNonce` command on the nonce's shard).
//! - **Keys are looked up** on the system shard (a linearizable read) and cached here for
//!   `auth_cache_ms`, so a revocation holds on every node within that time.
//! - **Authorization** is the table `access` (role × endpoint) and, for keys bound to accounts
//!   (merchant, customer_app), the handlers' scope checks (`Principal::check_account`).
//! - **Rate limits**: a token bucket per key on each node (`RateLimiter`).
//! - **Audit**: every authenticated mutating request is appended to the audit chain before its
//!   answer leaves (`audit`).

use super::errors::ApiError;
use super::AppState;
use actix_web::dev::ServiceRequest;
use actix_web::http::{Method, StatusCode};
use actix_web::HttpMessage;
use ring::{digest, hmac, signature};
use settle_cluster::ids::AccountId;
use settle_cluster::ledger::{
    ApiKeyRecord, AuditEvent, RateLimit, Role, SystemCmd, SystemOutcome, SystemRead, SystemReadReply, AUDIT_TARGETS_MAX,
    AUDIT_TEXT_BYTES_MAX,
};
use settle_cluster::message::{Reply, Request};
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How far a signed request's timestamp may be from this node's clock.
pub const SIGNATURE_SKEW_S: u64 = 300;
/// Cached key lookups at most (the cache is emptied when full: a flood of unknown ids cannot
/// grow it).
const KEY_CACHE_MAX: usize = 10_000;
const BUCKETS_MAX: usize = 100_000;
/// Failed authentications a client address may make: a burst, then this many a second. Past
/// it the address gets 429 `auth_throttled` without its credentials being looked up, so a
/// flood of guessed or random keys costs the system shard nothing.
const FAILED_AUTH_BURST: f64 = 100.0;
const FAILED_AUTH_PER_SECOND: f64 = 10.0;

/// The caller of a request, once authenticated.
#[derive(Debug, Clone)]
pub struct Principal {
    pub key_id: String,
    pub role: Role,
    pub accounts: BTreeSet<AccountId>,
}

impl Principal {
    /// Whether this key may act for (debit, read) `account`: unscoped roles may act for any.
    pub fn may_act_for(&self, account: &AccountId) -> bool {
        !self.role.scoped() || self.accounts.contains(account)
    }

    /// 403 unless this key may act for `account`.
    pub fn check_account(&self, account: &AccountId) -> Result<(), ApiError> {
        if self.may_act_for(account) {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("key {} ({}) is not bound to account {account}", self.key_id, self.role.name()),
        ))
    }
}

/// The ids a mutating request named, set by its handler for the audit record.
#[derive(Debug, Clone, Default)]
pub struct AuditTargets(pub Vec<String>);

/// The error code a response answered (set by `ApiError`), for the audit record.
#[derive(Debug, Clone, Copy)]
pub struct AnsweredCode(pub &'static str);

/// Who may call an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    Roles(&'static [Role]),
}

const EVERY_ROLE: &[Role] = &Role::ALL;
const ADMIN: &[Role] = &[Role::Admin];
const STAFF: &[Role] = &[Role::Admin, Role::Operator];
const OBSERVERS: &[Role] = &[Role::Admin, Role::Operator, Role::Auditor];
const PAYERS: &[Role] = &[Role::Admin, Role::Operator, Role::Merchant, Role::CustomerApp];
const AUDITORS: &[Role] = &[Role::Admin, Role::Auditor];

/// The authorization table: which roles may call each route (by actix match pattern). Scoped
/// roles are further limited to their accounts by the handlers. A route not listed needs any
/// valid key (it answers 404 or 405 after that).
pub fn access(method: &Method, pattern: &str) -> Access {
    let get = *method == Method::GET || *method == Method::HEAD;
    match (pattern, get) {
        ("/health/live" | "/health/ready", _) => Access::Public,
        ("/metrics", _) => Access::Roles(OBSERVERS),
        ("/v1/cluster", _) => Access::Roles(EVERY_ROLE),
        ("/v1/accounts" | "/v1/accounts/batch", false) => Access::Roles(STAFF),
        ("/v1/accounts/{id}" | "/v1/accounts/{id}/transfers" | "/v1/transfers/{id}", true) => Access::Roles(EVERY_ROLE),
        ("/v1/accounts/{id}/statement" | "/v1/accounts/{id}/balance", true) => Access::Roles(EVERY_ROLE),
        ("/v1/transfers" | "/v1/transfers/batch", false) => Access::Roles(PAYERS),
        ("/v1/api_keys" | "/v1/api_keys/{id}", _) => Access::Roles(ADMIN),
        ("/v1/audit", true) => Access::Roles(AUDITORS),
        ("/v1/risk/stops" | "/v1/risk/stops/{id}/lift", false) => Access::Roles(STAFF),
        ("/v1/transfers/{id}/refunds", false) => Access::Roles(PAYERS),
        ("/v1/transfers/{id}/capture" | "/v1/transfers/{id}/void" | "/v1/transfers/{id}/revoke", false) => Access::Roles(PAYERS),
        ("/v1/transfers/{id}/refunds", true) => Access::Roles(EVERY_ROLE),
        ("/v1/accounts/{id}/stops", true) => Access::Roles(OBSERVERS),
        ("/v1/customers" | "/v1/customers/{id}" | "/v1/customers/{id}/verifications" | "/v1/customers/{id}/security", _) => {
            Access::Roles(STAFF)
        }
        ("/v1/transfers/{id}/verify", false) => Access::Roles(PAYERS),
        ("/v1/transfers/{id}/verification", true) => Access::Roles(STAFF),
        ("/v1/risk/limits", true) => Access::Roles(OBSERVERS),
        ("/v1/risk/limits", false) => Access::Roles(STAFF),
        ("/admin/faults" | "/admin/backup/fence" | "/admin/backup/shards/{id}", _) => Access::Roles(ADMIN),
        ("/admin/shards/{id}/move" | "/admin/nodes/{id}/decommission" | "/admin/nodes/{id}/replace", _) => Access::Roles(ADMIN),
        ("/admin/nodes" | "/admin/rebalance", _) => Access::Roles(ADMIN),
        ("/admin/drain" | "/admin/shards/{id}/transfer-leader", _) => Access::Roles(STAFF),
        _ => Access::Roles(EVERY_ROLE),
    }
}

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

fn forbidden_role(principal: &Principal, method: &Method, pattern: &str) -> ApiError {
    let message = format!("key {} has role {}, which may not {method} {pattern}", principal.key_id, principal.role.name());
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// SHA-256 of a key as presented (what is stored for it).
pub fn key_digest(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, token.as_bytes()).as_ref());
    out
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The id inside a key made by `POST /v1/api_keys` (`settle_<id>_<secret>`).
pub fn token_key_id(token: &str) -> Option<&str> {
    let (id, secret) = token.strip_prefix("settle_")?.split_once('_')?;
    (settle_cluster::ledger::valid_key_id(id) && !secret.is_empty()).then_some(id)
}

/// The per-node authentication state: the key cache and the rate-limit buckets.
pub struct Auth {
    keys: Mutex<HashMap<String, (Option<ApiKeyRecord>, Instant)>>,
    buckets: Mutex<HashMap<String, Bucket>>,
    /// Per client address, what is left of its failed-authentication budget.
    failures: Mutex<HashMap<std::net::IpAddr, Bucket>>,
    cache_for: Duration,
    bootstrap_digest: Option<[u8; 32]>,
}

impl Auth {
    pub fn new(cache_ms: u64, bootstrap_key: Option<&str>) -> Auth {
        Auth {
            keys: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            cache_for: Duration::from_millis(cache_ms),
            bootstrap_digest: bootstrap_key.filter(|key| !key.is_empty()).map(key_digest),
        }
    }

    fn cached(&self, id: &str) -> Option<Option<ApiKeyRecord>> {
        let keys = self.keys.lock().expect("key cache");
        keys.get(id).filter(|(_, at)| at.elapsed() < self.cache_for).map(|(record, _)| record.clone())
    }

    /// Whether `address` has used up its failed-authentication budget (seconds until it has
    /// one again, if so).
    pub fn throttled(&self, address: std::net::IpAddr) -> Option<u64> {
        let mut failures = self.failures.lock().expect("failures");
        let bucket = failures.get_mut(&address)?;
        let now = Instant::now();
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * FAILED_AUTH_PER_SECOND).min(FAILED_AUTH_BURST);
        bucket.at = now;
        // Whole seconds for Retry-After; the value is below one.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let wait = ((1.0 - bucket.tokens) / FAILED_AUTH_PER_SECOND).ceil().max(1.0) as u64;
        (bucket.tokens < 1.0).then_some(wait)
    }

    /// Takes one failed authentication from `address`'s budget.
    pub fn failed(&self, address: std::net::IpAddr) {
        let mut failures = self.failures.lock().expect("failures");
        if failures.len() >= BUCKETS_MAX && !failures.contains_key(&address) {
            failures.clear();
        }
        let now = Instant::now();
        let bucket = failures.entry(address).or_insert(Bucket { tokens: FAILED_AUTH_BURST, at: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * FAILED_AUTH_PER_SECOND).min(FAILED_AUTH_BURST);
        bucket.at = now;
        bucket.tokens = (bucket.tokens - 1.0).max(0.0);
    }

    pub fn remember(&self, id: &str, record: Option<ApiKeyRecord>) {
        let mut keys = self.keys.lock().expect("key cache");
        if keys.len() >= KEY_CACHE_MAX {
            keys.clear();
        }
        keys.insert(id.to_string(), (record, Instant::now()));
    }
}

/// A key's record: from the cache, else read from the system shard.
async fn lookup(state: &AppState, id: &str) -> Result<Option<ApiKeyRecord>, ApiError> {
    if let Some(record) = state.auth.cached(id) {
        return Ok(record);
    }
    let request_id = super::RequestId(format!("n{}-auth", state.settings.node_id));
    match state.call_with(&request_id, Request::SystemRead(SystemRead::Key(id.to_string()))).await? {
        Reply::SystemRead(SystemReadReply::Key(record)) => {
            state.auth.remember(id, record.clone());
            Ok(record)
        }
        other => Err(super::unexpected(other)),
    }
}

/// The bootstrap admin key: registered as key `bootstrap` on first use (and never again once
/// revoked or replaced).
async fn bootstrap(state: &AppState, digest: [u8; 32]) -> Result<ApiKeyRecord, ApiError> {
    if let Some(record) = lookup(state, "bootstrap").await? {
        return Ok(record);
    }
    let record = ApiKeyRecord {
        id: "bootstrap".to_string(),
        role: Role::Admin,
        accounts: Vec::new(),
        secret_sha256: digest,
        signing_secret: None,
        ed25519_public_key: None,
        rate_limit: None,
        label: "bootstrap admin key (settings)".to_string(),
        created_at_ms: 0,
        revoked_at_ms: None,
    };
    let request_id = super::RequestId(format!("n{}-bootstrap", state.settings.node_id));
    match state.call_with(&request_id, Request::System(SystemCmd::CreateKey(Box::new(record)))).await? {
        Reply::System(SystemOutcome::KeyCreated(record) | SystemOutcome::KeyExists(record)) => {
            state.auth.remember("bootstrap", Some(record.clone()));
            Ok(record)
        }
        other => Err(super::unexpected(other)),
    }
}

/// A parsed `Settle-Signature` header.
struct SignatureHeader {
    key_id: String,
    timestamp: u64,
    nonce: String,
    algorithm: String,
    signature: Vec<u8>,
}

fn parse_signature(text: &str) -> Result<SignatureHeader, ApiError> {
    let bad = |why: &str| {
        unauthorized(format!("Settle-Signature: {why}; expected key_id=..,timestamp=..,nonce=..,signature=.. (alg=hmac-sha256|ed25519)"))
    };
    let mut fields: HashMap<&str, &str> = HashMap::new();
    for part in text.split(',') {
        let (name, value) = part.trim().split_once('=').ok_or_else(|| bad("a part is not name=value"))?;
        if fields.insert(name.trim(), value.trim().trim_matches('"')).is_some() {
            return Err(bad("a part repeats"));
        }
    }
    let field = |name: &str| fields.get(name).copied().ok_or_else(|| bad(&format!("{name} is missing")));
    let key_id = field("key_id")?.to_string();
    if !settle_cluster::ledger::valid_key_id(&key_id) {
        return Err(bad("key_id is not a key id"));
    }
    let timestamp = field("timestamp")?.parse::<u64>().map_err(|_| bad("timestamp is not Unix seconds"))?;
    let nonce = field("nonce")?.to_string();
    if nonce.is_empty() || nonce.len() > 64 || !nonce.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_') {
        return Err(bad("nonce must be 1..=64 of [A-Za-z0-9_-]"));
    }
    let algorithm = fields.get("alg").copied().unwrap_or("hmac-sha256").to_string();
    let signature = hex::decode(field("signature")?).map_err(|_| bad("signature is not hex"))?;
    Ok(SignatureHeader { key_id, timestamp, nonce, algorithm, signature })
}

/// What a signature covers: method, path and query, timestamp, nonce and the body's SHA-256
/// (hex), each followed by a newline.
pub fn signing_message(method: &str, path_and_query: &str, timestamp: u64, nonce: &str, body: &[u8]) -> String {
    let body_digest = hex::encode(digest::digest(&digest::SHA256, body));
    format!("{method}\n{path_and_query}\n{timestamp}\n{nonce}\n{body_digest}\n")
}

/// Reads the body of a signed request (bounded like every body) and puts it back for the
/// handler.
async fn take_body(state: &AppState, request: &mut ServiceRequest) -> Result<actix_web::web::Bytes, ApiError> {
    let payload = request.take_payload();
    let timeout = Duration::from_millis(state.settings.http_body_timeout_ms);
    let bytes = super::body::read(request.headers(), payload, super::BODY_BYTES_MAX, timeout).await?;
    request.set_payload(actix_web::dev::Payload::from(bytes.clone()));
    Ok(bytes)
}

async fn verify_signed(state: &AppState, request: &mut ServiceRequest, header: &str) -> Result<ApiKeyRecord, ApiError> {
    let signed = parse_signature(header)?;
    let now_s = settle_actors::now_ms() / 1000;
    if now_s.abs_diff(signed.timestamp) > SIGNATURE_SKEW_S {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "signature_expired",
            format!("the signature's timestamp is more than {SIGNATURE_SKEW_S} s from this node's clock ({now_s})"),
        ));
    }
    let record = lookup(state, &signed.key_id).await?.ok_or_else(|| unauthorized("unknown or revoked key"))?;
    if record.revoked() {
        return Err(unauthorized("unknown or revoked key"));
    }
    let body = take_body(state, request).await?;
    let path = request.uri().path_and_query().map_or_else(|| request.path().to_string(), |value| value.as_str().to_string());
    let message = signing_message(request.method().as_str(), &path, signed.timestamp, &signed.nonce, &body);
    let valid = match signed.algorithm.as_str() {
        "hmac-sha256" => record
            .signing_secret
            .as_ref()
            .is_some_and(|secret| hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, secret), message.as_bytes(), &signed.signature).is_ok()),
        "ed25519" => record.ed25519_public_key.as_ref().is_some_and(|public| {
            signature::UnparsedPublicKey::new(&signature::ED25519, public).verify(message.as_bytes(), &signed.signature).is_ok()
        }),
        _ => return Err(unauthorized("Settle-Signature: alg must be hmac-sha256 or ed25519")),
    };
    if !valid {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "signature_invalid", "the signature does not match the request"));
    }
    // The nonce last: a request that fails the checks above does not use it up.
    let name = format!("{}:{}", signed.key_id, signed.nonce);
    let expires_ms = (signed.timestamp + 2 * SIGNATURE_SKEW_S) * 1000;
    let request_id = super::RequestId(format!("n{}-nonce", state.settings.node_id));
    match state.call_with(&request_id, Request::System(SystemCmd::UseNonce { name, expires_ms })).await? {
        Reply::System(SystemOutcome::NonceFresh) => Ok(record),
        Reply::System(SystemOutcome::NonceReplayed) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "nonce_reused",
            "this nonce was already used with this key; sign again with a new one",
        )),
        other => Err(super::unexpected(other)),
    }
}

/// Authenticates a request: the principal it acts as, and its key's record (for the limits).
pub async fn authenticate(state: &AppState, request: &mut ServiceRequest) -> Result<(Principal, Option<RateLimit>), ApiError> {
    let record = if let Some(header) = request.headers().get("settle-signature") {
        let header = header.to_str().map_err(|_| unauthorized("Settle-Signature is not text"))?.to_string();
        verify_signed(state, request, &header).await?
    } else {
        let token = request
            .headers()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| unauthorized("an API key is needed: Authorization: Bearer <key>, or a Settle-Signature"))?
            .to_string();
        let digest = key_digest(&token);
        if let Some(legacy) = admin_token_principal(state, request, &token) {
            return Ok((legacy, None));
        }
        let record = if state.auth.bootstrap_digest.is_some_and(|bootstrap| same(&bootstrap, &digest)) {
            bootstrap(state, digest).await?
        } else {
            let id = token_key_id(&token).ok_or_else(|| unauthorized("unknown or revoked key"))?;
            lookup(state, id).await?.ok_or_else(|| unauthorized("unknown or revoked key"))?
        };
        if record.revoked() || !same(&record.secret_sha256, &digest) {
            return Err(unauthorized("unknown or revoked key"));
        }
        if record.role == Role::Merchant {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "signature_required",
                "merchant keys sign every request (Settle-Signature); a bearer key alone is not accepted",
            ));
        }
        record
    };
    let principal = Principal { key_id: record.id.clone(), role: record.role, accounts: record.accounts.iter().cloned().collect() };
    Ok((principal, record.rate_limit))
}

/// The node's admin token (`--admin-token`, from before API keys) still opens `/admin/*`.
fn admin_token_principal(state: &AppState, request: &ServiceRequest, token: &str) -> Option<Principal> {
    let expected = state.settings.admin_token.as_deref().filter(|expected| !expected.is_empty())?;
    (request.path().starts_with("/admin/") && same(expected.as_bytes(), token.as_bytes())).then(|| Principal {
        key_id: "admin-token".to_string(),
        role: Role::Admin,
        accounts: BTreeSet::new(),
    })
}

/// Checks an authenticated principal against the route's entry of the role table (`access`).
pub fn authorize(principal: &Principal, access: Access, method: &Method, pattern: &str) -> Result<(), ApiError> {
    match access {
        Access::Public => Ok(()),
        Access::Roles(roles) if roles.contains(&principal.role) => Ok(()),
        Access::Roles(_) => Err(forbidden_role(principal, method, pattern)),
    }
}

/// One key's token bucket on this node.
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// What a rate-limit check answers: the headers to send, and whether the request may go.
pub struct RateDecision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until a token is available (when refused) or the bucket is full (when allowed).
    pub reset_s: u64,
}

/// Takes a token from the key's bucket.
pub fn rate_check(auth: &Auth, key_id: &str, limit: RateLimit) -> RateDecision {
    let mut buckets = auth.buckets.lock().expect("buckets");
    if buckets.len() >= BUCKETS_MAX && !buckets.contains_key(key_id) {
        buckets.clear();
    }
    let now = Instant::now();
    let burst = f64::from(limit.burst.max(1));
    let rate = f64::from(limit.per_second.max(1));
    let bucket = buckets.entry(key_id.to_string()).or_insert(Bucket { tokens: burst, at: now });
    bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst);
    bucket.at = now;
    let allowed = bucket.tokens >= 1.0;
    if allowed {
        bucket.tokens -= 1.0;
    }
    // Whole tokens and seconds for the headers; the float is bounded by `burst`.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let remaining = bucket.tokens.floor() as u32;
    let missing = if allowed { burst - bucket.tokens } else { 1.0 - bucket.tokens };
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let reset_s = (missing / rate).ceil().max(if allowed { 0.0 } else { 1.0 }) as u64;
    RateDecision { allowed, limit: limit.burst, remaining, reset_s }
}

/// The audit event of a request, its fields cut to the audit record's bounds.
#[allow(clippy::too_many_arguments)]
pub fn audit_event(
    state: &AppState,
    principal: &Principal,
    request_id: String,
    client: String,
    operation: String,
    mut targets: Vec<String>,
    status: u16,
    outcome: String,
) -> AuditEvent {
    let cut = |mut text: String| {
        if text.len() > AUDIT_TEXT_BYTES_MAX {
            let mut end = AUDIT_TEXT_BYTES_MAX;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        text
    };
    if targets.len() > AUDIT_TARGETS_MAX {
        let more = targets.len() - (AUDIT_TARGETS_MAX - 1);
        targets.truncate(AUDIT_TARGETS_MAX - 1);
        targets.push(format!("+{more} more"));
    }
    AuditEvent {
        at_ms: settle_actors::now_ms(),
        node: state.settings.node_id,
        key_id: cut(principal.key_id.clone()),
        role: principal.role.name().to_string(),
        request_id: cut(request_id),
        client: cut(client),
        operation: cut(operation),
        targets: targets.into_iter().map(cut).collect(),
        status,
        outcome: cut(outcome),
    }
}

/// Appends an event to the audit chain and waits for it. A failure is logged and counted (the
/// operation itself already happened; its answer still goes out).
pub async fn audit(state: &AppState, event: AuditEvent) {
    let request_id = super::RequestId(event.request_id.clone());
    let operation = event.operation.clone();
    match state.call_with(&request_id, Request::System(SystemCmd::Audit(vec![event]))).await {
        Ok(Reply::System(SystemOutcome::Audited { .. })) => {}
        other => {
            state.metrics.audit_failures.inc();
            tracing::error!(request_id = %request_id.0, operation, answer = ?other.map(|_| ()), "audit record not appended");
        }
    }
}
