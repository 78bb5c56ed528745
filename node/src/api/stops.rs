//! Stop orders (emergency stop / rapid freeze) on accounts: `POST /v1/risk/stops`, `POST
//! /v1/risk/stops/{id}/lift`, `GET /v1/accounts/{id}/stops` (admin and operator place and lift;
//! auditors read). The order is applied by the account's shard, so no debit passes it once
//! it is answered; each is idempotent by its id; who placed and lifted it, when and why, is in
//! the stop record and in the audit log.

use super::auth::{AuditTargets, Principal};
use super::body;
use super::errors::ApiError;
use super::{types, unexpected, AppState, RequestId};
use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use serde_json::{json, Map, Value};
use settle_cluster::ids::StopId;
use settle_cluster::ledger::{LiftStop, PlaceStop, StopCmd, StopOutcome, StopRecord};
use settle_cluster::message::{Reply, Request};

type Result<T> = std::result::Result<T, ApiError>;

/// A stop as the API shows it.
pub fn stop_json(record: &StopRecord) -> Value {
    json!({
        "id": record.id.as_str(),
        "target": "account",
        "account": record.account.as_str(),
        "block_credits": record.block_credits,
        "reason": record.reason,
        "authority_ref": record.authority_ref,
        "placed_by": record.placed_by,
        "placed_at_ms": record.placed_at_ms,
        "status": if record.active() { "active" } else { "lifted" },
        "lifted": record.lifted.as_ref().map(|lifted| json!({ "by": lifted.by, "at_ms": lifted.at_ms, "reason": lifted.reason })),
    })
}

fn text(object: &Map<String, Value>, field: &'static str, required: bool) -> Result<String> {
    match object.get(field) {
        Some(Value::String(text)) if text.len() <= settle_cluster::ledger::STOP_TEXT_BYTES_MAX => Ok(text.clone()),
        None | Some(Value::Null) if !required => Ok(String::new()),
        _ => Err(ApiError::invalid_request(field, format!("{field} must be text of at most 256 bytes"))),
    }
}

fn stop_id(text: &str) -> Result<StopId> {
    StopId::new(text).map_err(|_| ApiError::invalid_request("id", "a stop id is 1..=64 of [A-Za-z0-9._:-]"))
}

fn answer(outcome: StopOutcome, account: &str) -> Result<HttpResponse> {
    match outcome {
        StopOutcome::Placed(record) => Ok(HttpResponse::Created().json(stop_json(&record))),
        StopOutcome::Lifted(record) | StopOutcome::Replayed(record) => Ok(HttpResponse::Ok().json(stop_json(&record))),
        StopOutcome::Conflict(record) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "stop_exists",
            format!("stop {} exists on account {} with another order", record.id, record.account),
        )
        .with_detail("stop", stop_json(&record))),
        StopOutcome::AccountNotFound => Err(ApiError::account_not_found(account)),
        StopOutcome::StopNotFound => Err(ApiError::new(StatusCode::NOT_FOUND, "stop_not_found", "no stop with this id on this account")),
        StopOutcome::Invalid(reason) => Err(ApiError::invalid_body(reason)),
    }
}

/// Checks a stop command, names its targets for the audit record, and has the account's shard
/// apply it.
async fn apply(state: &AppState, request: &HttpRequest, request_id: &RequestId, command: StopCmd) -> Result<HttpResponse> {
    command.check().map_err(|reason| ApiError::invalid_request("reason", reason))?;
    let account = command.account().clone();
    request.extensions_mut().insert(AuditTargets(vec![command.id().to_string(), account.to_string()]));
    match state.call_with(request_id, Request::Stop(command)).await? {
        Reply::Stop(outcome) => answer(outcome, account.as_str()),
        other => Err(unexpected(other)),
    }
}

/// `POST /v1/risk/stops {"id", "target": "account", "account", "reason", "authority_ref",
/// "block_credits"?}`: 201 placed, 200 the same order again, 409 `stop_exists` for another
/// order under the id.
pub async fn place(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
    request_id: web::ReqData<RequestId>,
    principal: web::ReqData<Principal>,
) -> Result<HttpResponse> {
    let object = state.read_object(&request, payload).await?;
    body::only_fields(&object, &["id", "target", "account", "reason", "authority_ref", "block_credits"])?;
    let id = stop_id(object.get("id").and_then(Value::as_str).unwrap_or_default())?;
    match object.get("target").and_then(Value::as_str) {
        Some("account") => {}
        _ => {
            return Err(ApiError::invalid_request(
                "target",
                "target must be \"account\" (stops on single transfers come with delayed transfers)",
            ))
        }
    }
    let account = types::account_id(object.get("account").and_then(Value::as_str).unwrap_or_default(), "account")?;
    let block_credits = match object.get("block_credits") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(block)) => *block,
        Some(_) => return Err(ApiError::invalid_request("block_credits", "block_credits must be true or false")),
    };
    let command = StopCmd::Place(PlaceStop {
        id: id.clone(),
        account: account.clone(),
        block_credits,
        reason: text(&object, "reason", true)?,
        authority_ref: text(&object, "authority_ref", false)?,
        actor: principal.key_id.clone(),
    });
    apply(&state, &request, &request_id, command).await
}

/// `POST /v1/risk/stops/{id}/lift {"account", "reason"}`: 200 with the lifted stop (again for a
/// stop already lifted), 404 `stop_not_found`.
pub async fn lift(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    request_id: web::ReqData<RequestId>,
    principal: web::ReqData<Principal>,
) -> Result<HttpResponse> {
    let id = stop_id(&path)?;
    let object = state.read_object(&request, payload).await?;
    body::only_fields(&object, &["account", "reason"])?;
    let account = types::account_id(object.get("account").and_then(Value::as_str).unwrap_or_default(), "account")?;
    let command = StopCmd::Lift(LiftStop {
        id: id.clone(),
        account: account.clone(),
        reason: text(&object, "reason", true)?,
        actor: principal.key_id.clone(),
    });
    apply(&state, &request, &request_id, command).await
}

/// `GET /v1/accounts/{id}/stops`: every stop placed on the account, active and lifted.
pub async fn list(state: web::Data<AppState>, path: web::Path<String>, request_id: web::ReqData<RequestId>) -> Result<HttpResponse> {
    let account = types::account_id(&path, "id")?;
    match state.call_with(&request_id, Request::ReadStops(account.clone())).await? {
        Reply::Stops(Some(stops)) => {
            let active = stops.iter().filter(|stop| stop.active()).count();
            let frozen = json!({
                "debits": active > 0,
                "credits": stops.iter().any(|stop| stop.active() && stop.block_credits),
            });
            let stops: Vec<Value> = stops.iter().map(stop_json).collect();
            Ok(HttpResponse::Ok().json(json!({ "account": account.as_str(), "frozen": frozen, "stops": stops })))
        }
        Reply::Stops(None) => Err(ApiError::account_not_found(account.as_str())),
        other => Err(unexpected(other)),
    }
}
