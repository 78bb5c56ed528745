//! Customers, identity checks and risk limits: `POST /v1/customers`, `GET /v1/customers/{id}`,
//! `POST /v1/customers/{id}/verifications`, `GET`/`PUT /v1/risk/limits` (admin and operator;
//! every read of a customer is audited like a write, since it shows personal data).
//!
//! Personal data (name, identity document, phone, email) is sealed here (`pii.rs`) before it is
//! proposed and opened here when read; the cluster stores only ciphertext. A customer's
//! accounts are named `<customer>::<name>` and live on its shard (`placement::shard_of`).

use super::auth::AuditTargets;
use super::body;
use super::errors::ApiError;
use super::{types, unexpected, AppState, RequestId};
use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use settle_cluster::ids::{CustomerId, VerificationId};
use settle_cluster::ledger::{
    AccountKind, Channel, CustomerCmd, CustomerOutcome, CustomerRecord, CustomerReport, RecordVerification, RegisterCustomer, RiskLimits,
    RiskOutcome, CUSTOMER_TEXT_BYTES_MAX, RISK_CURRENCY, SYSTEM_SHARD,
};
use settle_cluster::message::{Reply, Request};
use settle_cluster::money::{Currency, Minor};

type Result<T> = std::result::Result<T, ApiError>;

/// The clear personal data of a customer, in the field order it is sealed in (so equal data
/// seals to equal fingerprints).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Personal {
    name: String,
    id_document_type: String,
    id_document_number: String,
    phone: Option<String>,
    email: Option<String>,
}

fn customer_id(text: &str, field: &'static str) -> Result<CustomerId> {
    CustomerId::new(text)
        .map_err(|_| ApiError::invalid_request(field, "a customer id is 1..=64 of [A-Za-z0-9._:-], without \"::\""))
        .and_then(|id| {
            if settle_cluster::ledger::customer_id_usable(&id) {
                Ok(id)
            } else {
                Err(ApiError::invalid_request(
                    field,
                    "a customer id may not contain \"::\" (it separates a customer's account names) nor start or end with \":\"",
                ))
            }
        })
}

fn text(object: &Map<String, Value>, field: &'static str, max: usize, required: bool) -> Result<Option<String>> {
    match object.get(field) {
        Some(Value::String(text)) if !text.trim().is_empty() && text.len() <= max => Ok(Some(text.clone())),
        None | Some(Value::Null) if !required => Ok(None),
        _ => Err(ApiError::invalid_request(field, format!("{field} must be non-empty text of at most {max} bytes"))),
    }
}

fn pii_key(state: &AppState) -> Result<&super::pii::PiiKey> {
    state.pii.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "pii_key_not_configured",
            "this node has no PII key (pii_key_file), so it cannot store or show personal data",
        )
    })
}

fn cny() -> Currency {
    Currency::from_code(RISK_CURRENCY).expect("CNY is in the table")
}

/// A customer as the API shows it: personal data opened, the class and the checks.
fn customer_json(state: &AppState, record: &CustomerRecord) -> Result<Value> {
    let key = pii_key(state)?;
    let clear = key.open(&record.id, &record.pii).map_err(|error| {
        tracing::error!(customer = %record.id, %error, "a customer's personal data does not open");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "pii_unreadable",
            format!("the customer's personal data cannot be opened: {error}"),
        )
    })?;
    let personal: Personal = serde_json::from_slice(&clear)
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "pii_unreadable", "the customer's personal data does not parse"))?;
    let checks: Vec<Value> = record
        .verifications
        .iter()
        .map(|check| {
            json!({
                "id": check.id.as_str(),
                "channel": check.channel.as_str(),
                "reference": check.reference,
                "verified_by": check.by,
                "verified_at": types::rfc3339(check.at_ms),
            })
        })
        .collect();
    Ok(json!({
        "id": record.id.as_str(),
        "name": personal.name,
        "id_document": { "type": personal.id_document_type, "number": personal.id_document_number },
        "phone": personal.phone,
        "email": personal.email,
        "kyc_class": record.class().map(|class| class.as_str()),
        "verifications": checks,
        "created_at": types::rfc3339(record.created_at_ms),
        "created_by": record.created_by,
        "account_prefix": format!("{}{}", record.id.as_str(), settle_cluster::ids::CUSTOMER_SEPARATOR),
        "payment_password_set": record.password.is_some(),
        "always_verify": record.always_verify,
    }))
}

fn answer(state: &AppState, outcome: CustomerOutcome, created: bool) -> Result<HttpResponse> {
    match outcome {
        CustomerOutcome::Registered(record) | CustomerOutcome::Verified(record) => {
            let status = if created { StatusCode::CREATED } else { StatusCode::OK };
            Ok(HttpResponse::build(status).json(customer_json(state, &record)?))
        }
        CustomerOutcome::Replayed(record) | CustomerOutcome::Updated(record) => Ok(HttpResponse::Ok().json(customer_json(state, &record)?)),
        CustomerOutcome::Conflict(record) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "customer_conflict",
            format!("customer {} (or this verification id) was recorded with other data", record.id),
        )),
        CustomerOutcome::CustomerNotFound => Err(customer_not_found()),
        CustomerOutcome::TooManyVerifications => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many_verifications",
            format!("a customer has at most {} verifications", settle_cluster::ledger::VERIFICATIONS_MAX),
        )),
        CustomerOutcome::Invalid(reason) => Err(ApiError::invalid_body(reason)),
    }
}

/// Has the customer's shard apply a customer command and answers its outcome.
async fn propose(state: &AppState, request_id: &RequestId, command: CustomerCmd, created: bool) -> Result<HttpResponse> {
    match state.call_with(request_id, Request::Customer(command)).await? {
        Reply::Customer(outcome) => answer(state, *outcome, created),
        other => Err(unexpected(other)),
    }
}

fn customer_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "customer_not_found", "no customer with this id")
}

/// `POST /v1/customers {"id", "name", "id_document": {"type", "number"}, "phone"?, "email"?}`:
/// 201 registered, 200 the same data again, 409 `customer_conflict` for other data under the id.
pub async fn create(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
    request_id: web::ReqData<RequestId>,
    principal: web::ReqData<super::auth::Principal>,
) -> Result<HttpResponse> {
    let object = state.read_object(&request, payload).await?;
    body::only_fields(&object, &["id", "name", "id_document", "phone", "email"])?;
    let id = customer_id(object.get("id").and_then(Value::as_str).unwrap_or_default(), "id")?;
    let Some(Value::Object(document)) = object.get("id_document") else {
        return Err(ApiError::invalid_request("id_document", "id_document must be {\"type\", \"number\"}"));
    };
    body::only_fields(document, &["type", "number"])?;
    let personal = Personal {
        name: text(&object, "name", 128, true)?.unwrap_or_default(),
        id_document_type: text(document, "type", 32, true)?.unwrap_or_default(),
        id_document_number: text(document, "number", 64, true)?.unwrap_or_default(),
        phone: text(&object, "phone", 32, false)?,
        email: text(&object, "email", 128, false)?,
    };
    let clear = serde_json::to_vec(&personal).expect("plain strings serialize");
    let pii = pii_key(&state)?.seal(&id, &clear);
    request.extensions_mut().insert(AuditTargets(vec![id.to_string()]));
    let command = CustomerCmd::Register(RegisterCustomer { id, pii, actor: principal.key_id.clone() });
    command.check().map_err(ApiError::invalid_body)?;
    propose(&state, &request_id, command, true).await
}

/// `POST /v1/customers/{id}/verifications {"id", "channel", "reference"?}`: records one identity
/// check (201; 200 for the same check again); the answer shows the class it earned.
pub async fn verify(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    request_id: web::ReqData<RequestId>,
    principal: web::ReqData<super::auth::Principal>,
) -> Result<HttpResponse> {
    let customer = customer_id(&path, "id")?;
    let object = state.read_object(&request, payload).await?;
    body::only_fields(&object, &["id", "channel", "reference"])?;
    let id = VerificationId::new(object.get("id").and_then(Value::as_str).unwrap_or_default())
        .map_err(|_| ApiError::invalid_request("id", "a verification id is 1..=64 of [A-Za-z0-9._:-]"))?;
    let names: Vec<&str> = Channel::ALL.iter().map(Channel::as_str).collect();
    let channel = object
        .get("channel")
        .and_then(Value::as_str)
        .and_then(Channel::parse)
        .ok_or_else(|| ApiError::invalid_request("channel", format!("channel must be one of {}", names.join(", "))))?;
    let reference = text(&object, "reference", CUSTOMER_TEXT_BYTES_MAX, false)?.unwrap_or_default();
    request.extensions_mut().insert(AuditTargets(vec![customer.to_string(), id.to_string()]));
    let command = CustomerCmd::Verify(RecordVerification { customer, id, channel, reference, actor: principal.key_id.clone() });
    propose(&state, &request_id, command, true).await
}

fn limits_spent_json(report: &CustomerReport) -> Value {
    let cny = cny();
    json!({
        "currency": RISK_CURRENCY,
        "paid_lifetime": cny.format(report.spend.lifetime),
        "paid_this_year": cny.format(report.spend.year_spent),
        "paid_today": cny.format(report.spend.day_spent),
        "remaining": report.remaining.map(|remaining| cny.format(remaining)),
        "limits_version": report.limits_version,
    })
}

/// `GET /v1/customers/{id}`: the customer with its personal data, class, checks and what its
/// accounts paid and may still pay under the limits.
pub async fn show(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
    request_id: web::ReqData<RequestId>,
) -> Result<HttpResponse> {
    let customer = customer_id(&path, "id")?;
    request.extensions_mut().insert(AuditTargets(vec![customer.to_string()]));
    match state.call_with(&request_id, Request::ReadCustomer(customer)).await? {
        Reply::CustomerState(Some(report)) => {
            let mut body = customer_json(&state, &report.record)?;
            body["limits"] = limits_spent_json(&report);
            Ok(HttpResponse::Ok().json(body))
        }
        Reply::CustomerState(None) => Err(customer_not_found()),
        other => Err(unexpected(other)),
    }
}

/// What a customer may still pay (for a `limit_exceeded` answer's `details.remaining`), if the
/// payer is a customer's account and its shard answers.
pub async fn remaining_of(state: &AppState, request_id: &RequestId, payer: &settle_cluster::ids::AccountId) -> Option<Minor> {
    let customer = settle_cluster::ledger::customer_of(payer)?;
    match state.call_with(request_id, Request::ReadCustomer(customer)).await {
        Ok(Reply::CustomerState(Some(report))) => report.remaining,
        _ => None,
    }
}

fn limits_json(limits: &RiskLimits) -> Value {
    let cny = cny();
    let per_transaction: Map<String, Value> =
        limits.per_transaction.iter().map(|(kind, amount)| (kind.as_str().to_string(), json!(cny.format(*amount)))).collect();
    json!({
        "version": limits.version,
        "currency": RISK_CURRENCY,
        "utc_offset_minutes": limits.utc_offset_minutes,
        "class_i_lifetime": cny.format(limits.class_i_lifetime),
        "class_ii_yearly": cny.format(limits.class_ii_yearly),
        "class_iii_yearly": cny.format(limits.class_iii_yearly),
        "per_transaction": per_transaction,
        "verification_threshold": cny.format(limits.verification_threshold),
        "daily_single_factor": cny.format(limits.daily_single_factor),
        "daily_two_factor": cny.format(limits.daily_two_factor),
    })
}

fn limit_amount(object: &Map<String, Value>, field: &'static str, current: Minor) -> Result<Minor> {
    match object.get(field) {
        None => Ok(current),
        Some(Value::String(text)) => super::amount::parse_amount(text, cny())
            .map_err(|error| ApiError::invalid_request(field, format!("{field}: {error} (a CNY amount such as \"1000.00\")"))),
        Some(_) => Err(ApiError::invalid_request(field, format!("{field} must be a CNY amount string such as \"1000.00\""))),
    }
}

/// The limits of every shard: the system shard's, and which shards apply another version.
async fn read_all(state: &AppState, request_id: &RequestId) -> Result<(RiskLimits, Vec<(u32, Option<u64>)>)> {
    let shards = state.settings.shards;
    let mut versions = Vec::new();
    let mut system = None;
    for shard in 0..shards {
        let version = match state.call_with(request_id, Request::ReadRiskLimits { shard }).await {
            Ok(Reply::RiskLimits(limits)) => {
                let version = limits.version;
                if shard == SYSTEM_SHARD {
                    system = Some(limits);
                }
                Some(version)
            }
            _ => None,
        };
        versions.push((shard, version));
    }
    let system = system.ok_or_else(ApiError::unavailable)?;
    Ok((system, versions))
}

fn shards_json(version: u64, versions: &[(u32, Option<u64>)]) -> Value {
    let behind: Vec<u32> = versions.iter().filter(|(_, applied)| *applied != Some(version)).map(|(shard, _)| *shard).collect();
    json!({ "total": versions.len(), "applied": versions.len() - behind.len(), "behind": behind })
}

/// `GET /v1/risk/limits`: the limits in force (the system shard's version) and `shards`:
/// how many shards apply that version, and which do not yet (unreachable, or a change still
/// on its way).
pub async fn get_limits(state: web::Data<AppState>, request_id: web::ReqData<RequestId>) -> Result<HttpResponse> {
    let (limits, versions) = read_all(&state, &request_id).await?;
    let mut body = limits_json(&limits);
    body["shards"] = shards_json(limits.version, &versions);
    Ok(HttpResponse::Ok().json(body))
}

/// `PUT /v1/risk/limits {"utc_offset_minutes"?, "class_i_lifetime"?, "class_ii_yearly"?,
/// "class_iii_yearly"?, "per_transaction"? {"<kind>": amount}}`: members not given keep their
/// value. The system shard takes the change as the next version (409 `limits_changed` if
/// another change got there first), then every other shard; 200 with the new limits when all
/// took it, 503 (`details.version`, `shards.behind`) when some did not answer — PUT again.
pub async fn put_limits(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
    request_id: web::ReqData<RequestId>,
) -> Result<HttpResponse> {
    let object = state.read_object(&request, payload).await?;
    body::only_fields(
        &object,
        &[
            "utc_offset_minutes",
            "class_i_lifetime",
            "class_ii_yearly",
            "class_iii_yearly",
            "per_transaction",
            "verification_threshold",
            "daily_single_factor",
            "daily_two_factor",
        ],
    )?;
    request.extensions_mut().insert(AuditTargets(vec!["risk_limits".to_string()]));
    let current = match state.call_with(&request_id, Request::ReadRiskLimits { shard: SYSTEM_SHARD }).await? {
        Reply::RiskLimits(limits) => limits,
        other => return Err(unexpected(other)),
    };
    let utc_offset_minutes = match object.get("utc_offset_minutes") {
        None => current.utc_offset_minutes,
        Some(value) => value
            .as_i64()
            .and_then(|minutes| i32::try_from(minutes).ok())
            .ok_or_else(|| ApiError::invalid_request("utc_offset_minutes", "utc_offset_minutes is a whole number of minutes"))?,
    };
    let per_transaction = match object.get("per_transaction") {
        None => current.per_transaction.clone(),
        Some(Value::Object(items)) => {
            let mut limits = Vec::new();
            for (kind, amount) in items {
                let kind = AccountKind::parse(kind)
                    .ok_or_else(|| ApiError::invalid_request("per_transaction", format!("{kind:?} is not an account kind")))?;
                let amount = match amount {
                    Value::String(text) => super::amount::parse_amount(text, cny())
                        .map_err(|error| ApiError::invalid_request("per_transaction", format!("per_transaction: {error}")))?,
                    _ => {
                        return Err(ApiError::invalid_request(
                            "per_transaction",
                            "per_transaction amounts are CNY strings such as \"5000.00\"",
                        ))
                    }
                };
                limits.push((kind, amount));
            }
            limits
        }
        Some(_) => return Err(ApiError::invalid_request("per_transaction", "per_transaction is {\"<account kind>\": amount}")),
    };
    let limits = RiskLimits {
        verification_threshold: limit_amount(&object, "verification_threshold", current.verification_threshold)?,
        daily_single_factor: limit_amount(&object, "daily_single_factor", current.daily_single_factor)?,
        daily_two_factor: limit_amount(&object, "daily_two_factor", current.daily_two_factor)?,
        version: current.version.checked_add(1).ok_or_else(|| ApiError::invalid_body("the limits' version is exhausted"))?,
        utc_offset_minutes,
        class_i_lifetime: limit_amount(&object, "class_i_lifetime", current.class_i_lifetime)?,
        class_ii_yearly: limit_amount(&object, "class_ii_yearly", current.class_ii_yearly)?,
        class_iii_yearly: limit_amount(&object, "class_iii_yearly", current.class_iii_yearly)?,
        per_transaction,
    };
    limits.check().map_err(ApiError::invalid_body)?;
    match state.call_with(&request_id, Request::SetRiskLimits { shard: SYSTEM_SHARD, limits: limits.clone() }).await? {
        Reply::Risk(RiskOutcome::Set(_) | RiskOutcome::Unchanged(_)) => {}
        Reply::Risk(RiskOutcome::Stale(now)) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "limits_changed",
                "another change of the limits was made first: read them again and retry",
            )
            .with_detail("limits", limits_json(&now)))
        }
        Reply::Risk(RiskOutcome::Invalid(reason)) => return Err(ApiError::invalid_body(reason)),
        other => return Err(unexpected(other)),
    }
    let mut versions = vec![(SYSTEM_SHARD, Some(limits.version))];
    for shard in (0..state.settings.shards).filter(|shard| *shard != SYSTEM_SHARD) {
        let applied = match state.call_with(&request_id, Request::SetRiskLimits { shard, limits: limits.clone() }).await {
            Ok(Reply::Risk(RiskOutcome::Set(now) | RiskOutcome::Unchanged(now) | RiskOutcome::Stale(now))) => Some(now.version),
            _ => None,
        };
        versions.push((shard, applied));
    }
    versions.sort_unstable();
    let mut body = limits_json(&limits);
    body["shards"] = shards_json(limits.version, &versions);
    if versions.iter().any(|(_, applied)| applied.is_none_or(|version| version < limits.version)) {
        return Err(ApiError::unavailable()
            .with_detail("details", json!({ "version": limits.version }))
            .with_detail("shards", body["shards"].clone()));
    }
    Ok(HttpResponse::Ok().json(body))
}

/// `POST /v1/customers/{id}/security {"payment_password"?, "always_verify"?}`: sets the payment
/// password (6 to 64 characters; stored as a PBKDF2-HMAC-SHA256 hash made here, never in
/// clear) and whether every payment of the customer's accounts asks for a verification. 200
/// with the customer (`payment_password_set`, `always_verify`).
pub async fn security(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    request_id: web::ReqData<RequestId>,
    principal: web::ReqData<super::auth::Principal>,
) -> Result<HttpResponse> {
    let customer = customer_id(&path, "id")?;
    let object = state.read_object(&request, payload).await?;
    body::only_fields(&object, &["payment_password", "always_verify"])?;
    let password = match object.get("payment_password") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) if (6..=64).contains(&text.chars().count()) => Some(super::verify::hash_password(text)),
        Some(_) => return Err(ApiError::invalid_request("payment_password", "payment_password is 6 to 64 characters")),
    };
    let always_verify = match object.get("always_verify") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(always)) => Some(*always),
        Some(_) => return Err(ApiError::invalid_request("always_verify", "always_verify must be true or false")),
    };
    request.extensions_mut().insert(AuditTargets(vec![customer.to_string()]));
    let command = CustomerCmd::SetSecurity(settle_cluster::ledger::SetSecurity {
        customer,
        password,
        always_verify,
        actor: principal.key_id.clone(),
    });
    command.check().map_err(ApiError::invalid_body)?;
    propose(&state, &request_id, command, false).await
}
