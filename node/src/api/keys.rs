//! `/v1/api_keys` (admin): create, list, show and revoke API keys; `/v1/audit` (admin, auditor):
//! page the audit chain. A key's secret is shown once, in the creation's answer; the cluster
//! keeps only its SHA-256.

use super::auth::{key_digest, AuditTargets};
use super::body;
use super::errors::ApiError;
use super::{unexpected, AppState, RequestId};
use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;
use serde_json::{json, Value};
use settle_cluster::ids::AccountId;
use settle_cluster::ledger::{
    valid_key_id, ApiKeyRecord, AuditRecord, RateLimit, Role, SystemCmd, SystemOutcome, SystemRead, SystemReadReply, KEY_ACCOUNTS_MAX,
    LABEL_BYTES_MAX, SYSTEM_PAGE_MAX,
};
use settle_cluster::message::{Reply, Request};

type Result<T> = std::result::Result<T, ApiError>;

fn random_hex(bytes: usize) -> Result<String> {
    let mut buffer = vec![0u8; bytes];
    SystemRandom::new().fill(&mut buffer).map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "no randomness"))?;
    Ok(hex::encode(buffer))
}

/// A key as the API shows it (never its secret).
pub fn key_json(record: &ApiKeyRecord) -> Value {
    json!({
        "id": record.id,
        "role": record.role.name(),
        "accounts": record.accounts.iter().map(AccountId::as_str).collect::<Vec<_>>(),
        "label": record.label,
        "rate_limit": record.rate_limit.map(|limit| json!({ "per_second": limit.per_second, "burst": limit.burst })),
        "signs_with": {
            "hmac_sha256": record.signing_secret.is_some(),
            "ed25519": record.ed25519_public_key.is_some(),
        },
        "created_at_ms": record.created_at_ms,
        "revoked_at_ms": record.revoked_at_ms,
        "revoked": record.revoked(),
    })
}

fn key_not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "key_not_found", format!("API key {id} does not exist"))
}

fn parse_rate_limit(value: &Value) -> Result<RateLimit> {
    let field = |name: &str| -> Result<u32> {
        value
            .get(name)
            .and_then(Value::as_u64)
            .and_then(|number| u32::try_from(number).ok())
            .filter(|number| *number >= 1)
            .ok_or_else(|| ApiError::invalid_request("rate_limit", format!("rate_limit.{name} must be a whole number >= 1")))
    };
    match value {
        Value::Object(object) => {
            body::only_fields(object, &["per_second", "burst"])?;
            Ok(RateLimit { per_second: field("per_second")?, burst: field("burst")? })
        }
        _ => Err(ApiError::invalid_request("rate_limit", "rate_limit must be {\"per_second\": n, \"burst\": n}")),
    }
}

/// `POST /v1/api_keys {"role", "accounts"?, "label"?, "rate_limit"?, "ed25519_public_key"?}` →
/// 201 with the key (`key`, shown once) and, for merchant keys, the HMAC `signing_secret`.
pub async fn create(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
    request_id: web::ReqData<RequestId>,
) -> Result<HttpResponse> {
    let object = state.read_object(&request, payload).await?;
    body::only_fields(&object, &["role", "accounts", "label", "rate_limit", "ed25519_public_key"])?;
    let role_text = object.get("role").and_then(Value::as_str).ok_or_else(|| ApiError::invalid_request("role", "role is required"))?;
    let role = Role::parse(role_text).ok_or_else(|| {
        let names: Vec<&str> = Role::ALL.iter().map(|role| role.name()).collect();
        ApiError::invalid_request("role", format!("role must be one of {}", names.join(", ")))
    })?;
    let accounts: Vec<AccountId> = match object.get("accounts") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if items.len() <= KEY_ACCOUNTS_MAX => items
            .iter()
            .map(|item| item.as_str().ok_or(()).and_then(|text| AccountId::new(text).map_err(|_| ())))
            .collect::<std::result::Result<_, _>>()
            .map_err(|()| ApiError::invalid_request("accounts", "accounts must be account ids"))?,
        Some(_) => {
            return Err(ApiError::invalid_request("accounts", format!("accounts must be an array of at most {KEY_ACCOUNTS_MAX} ids")))
        }
    };
    if role.scoped() && accounts.is_empty() {
        return Err(ApiError::invalid_request("accounts", format!("a {} key names the accounts it owns", role.name())));
    }
    if !role.scoped() && !accounts.is_empty() {
        return Err(ApiError::invalid_request("accounts", format!("a {} key is not bound to accounts", role.name())));
    }
    let label = match object.get("label") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) if text.len() <= LABEL_BYTES_MAX => text.clone(),
        Some(_) => return Err(ApiError::invalid_request("label", format!("label must be text of at most {LABEL_BYTES_MAX} bytes"))),
    };
    let rate_limit = object.get("rate_limit").filter(|value| !value.is_null()).map(parse_rate_limit).transpose()?;
    let ed25519_public_key = match object.get("ed25519_public_key") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(
            hex::decode(text)
                .ok()
                .filter(|key| key.len() == 32)
                .ok_or_else(|| ApiError::invalid_request("ed25519_public_key", "ed25519_public_key must be 32 bytes in hex"))?,
        ),
        Some(_) => return Err(ApiError::invalid_request("ed25519_public_key", "ed25519_public_key must be hex text")),
    };
    let id = random_hex(8)?;
    let key = format!("settle_{id}_{}", random_hex(32)?);
    let signing_secret = if role == Role::Merchant { Some(random_hex(32)?) } else { None };
    let record = ApiKeyRecord {
        id: id.clone(),
        role,
        accounts,
        secret_sha256: key_digest(&key),
        signing_secret: signing_secret.as_ref().map(|secret| secret.as_bytes().to_vec()),
        ed25519_public_key,
        rate_limit,
        label,
        created_at_ms: 0,
        revoked_at_ms: None,
    };
    request.extensions_mut().insert(AuditTargets(vec![id.clone()]));
    match state.call_with(&request_id, Request::System(SystemCmd::CreateKey(Box::new(record)))).await? {
        Reply::System(SystemOutcome::KeyCreated(stored)) => {
            let mut body = key_json(&stored);
            body["key"] = json!(key);
            if let Some(secret) = signing_secret {
                body["signing_secret"] = json!(secret);
            }
            Ok(HttpResponse::Created().json(body))
        }
        // 64 random bits collided with an existing id: nothing was stored; the client retries.
        Reply::System(SystemOutcome::KeyExists(_)) => Err(ApiError::unavailable()),
        Reply::System(SystemOutcome::Invalid(reason)) => Err(ApiError::invalid_body(reason)),
        other => Err(unexpected(other)),
    }
}

#[derive(Deserialize)]
pub struct PageQuery {
    after: Option<String>,
    from: Option<String>,
    limit: Option<String>,
}

/// `GET /v1/api_keys?after=ID&limit=N`: keys in id order.
pub async fn list(state: web::Data<AppState>, query: web::Query<PageQuery>, request_id: web::ReqData<RequestId>) -> Result<HttpResponse> {
    let limit = super::page_limit(query.limit.as_deref(), 100, SYSTEM_PAGE_MAX)?;
    if let Some(after) = &query.after {
        if !valid_key_id(after) {
            return Err(ApiError::invalid_request("after", "after must be a key id"));
        }
    }
    let read = SystemRead::Keys { after: query.after.clone(), limit };
    match state.call_with(&request_id, Request::SystemRead(read)).await? {
        Reply::SystemRead(SystemReadReply::Keys(records)) => {
            let full = records.len() == usize::try_from(limit).unwrap_or(usize::MAX);
            let next_after = if full { records.last().map(|record| record.id.clone()) } else { None };
            let keys: Vec<Value> = records.iter().map(key_json).collect();
            Ok(HttpResponse::Ok().json(json!({ "keys": keys, "next_after": next_after })))
        }
        other => Err(unexpected(other)),
    }
}

fn path_key_id(path: &str) -> Result<String> {
    if valid_key_id(path) {
        Ok(path.to_string())
    } else {
        Err(ApiError::invalid_request("id", "not a key id"))
    }
}

/// `GET /v1/api_keys/{id}`.
pub async fn show(state: web::Data<AppState>, path: web::Path<String>, request_id: web::ReqData<RequestId>) -> Result<HttpResponse> {
    let id = path_key_id(&path)?;
    match state.call_with(&request_id, Request::SystemRead(SystemRead::Key(id.clone()))).await? {
        Reply::SystemRead(SystemReadReply::Key(Some(record))) => Ok(HttpResponse::Ok().json(key_json(&record))),
        Reply::SystemRead(SystemReadReply::Key(None)) => Err(key_not_found(&id)),
        other => Err(unexpected(other)),
    }
}

/// `DELETE /v1/api_keys/{id}`: revokes the key (for good; its id is never reused). Every node
/// refuses it within `auth_cache_ms`; this one at once.
pub async fn revoke(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
    request_id: web::ReqData<RequestId>,
) -> Result<HttpResponse> {
    let id = path_key_id(&path)?;
    request.extensions_mut().insert(AuditTargets(vec![id.clone()]));
    match state.call_with(&request_id, Request::System(SystemCmd::RevokeKey { id: id.clone() })).await? {
        Reply::System(SystemOutcome::KeyRevoked(record)) => {
            state.auth.remember(&id, Some(record.clone()));
            Ok(HttpResponse::Ok().json(key_json(&record)))
        }
        Reply::System(SystemOutcome::KeyNotFound) => Err(key_not_found(&id)),
        Reply::System(SystemOutcome::Invalid(reason)) => Err(ApiError::invalid_body(reason)),
        other => Err(unexpected(other)),
    }
}

/// An audit record as the API shows it; `settle audit verify` recomputes `hash` from it.
pub fn audit_json(record: &AuditRecord) -> Value {
    json!({
        "seq": record.seq,
        "recorded_ms": record.recorded_ms,
        "prev_hash": hex::encode(record.prev_hash),
        "hash": hex::encode(record.hash),
        "event": record.event,
    })
}

/// `GET /v1/audit?from=SEQ&limit=N`: the audit chain in order, and its head.
pub async fn audit(state: web::Data<AppState>, query: web::Query<PageQuery>, request_id: web::ReqData<RequestId>) -> Result<HttpResponse> {
    let limit = super::page_limit(query.limit.as_deref(), 100, SYSTEM_PAGE_MAX)?;
    let from = match &query.from {
        None => 0,
        Some(text) => text.parse::<u64>().map_err(|_| ApiError::invalid_request("from", "from must be a sequence number"))?,
    };
    match state.call_with(&request_id, Request::SystemRead(SystemRead::Audit { from, limit })).await? {
        Reply::SystemRead(SystemReadReply::Audit { records, head }) => {
            let next_from = records.last().map(|record| record.seq + 1).filter(|next| *next < head.next_seq);
            let records: Vec<Value> = records.iter().map(audit_json).collect();
            Ok(HttpResponse::Ok().json(json!({
                "records": records,
                "next_from": next_from,
                "head": { "next_seq": head.next_seq, "hash": hex::encode(head.hash) },
            })))
        }
        other => Err(unexpected(other)),
    }
}
