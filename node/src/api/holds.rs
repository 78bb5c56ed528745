//! Holds: `POST /v1/transfers {"mode": "hold", ...}` reserves (see `create_transfer`);
//! `POST /v1/transfers/{id}/capture {"amount"?}` moves all or part of it to the payee and
//! releases the rest; `POST /v1/transfers/{id}/void` releases it. The rules, and expiry, live in
//! the payer shard's ledger (`ledger/holds.rs`); this edge finds the hold's payer (the same
//! lookup as `GET /v1/transfers/{id}`) and sends the command to its shard.
//!
//! Answers: 200 with the transfer (202 while a cross-shard capture is being decided); a retry
//! of the same capture or void answers the same. 409 `hold_not_active` when the hold was already
//! closed another way (the transfer in the error's `transfer`), 409 `transfer_not_a_hold`, 422
//! `capture_exceeds_hold`, 422 `account_frozen` (a stop on the payer keeps the money held). A
//! hold rejected when it was made, or whose capture the payee refused, answers its stored
//! rejection (422), as every rejected transfer does.

use super::auth::{AuditTargets, Principal};
use super::body;
use super::errors::ApiError;
use super::{call_one, transfer_outcome, types, unexpected, AppState, RequestId};
use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use serde_json::json;
use settle_cluster::ids::{AccountId, TransferId};
use settle_cluster::ledger::{HoldRecord, RejectCode, TransferStatus, TransferView};
use settle_cluster::message::{Reply, Request, TransferResult};

type Result<T> = std::result::Result<T, ApiError>;

async fn read_transfer(state: &AppState, request_id: &RequestId, id: &TransferId, payer: Option<AccountId>) -> Result<TransferView> {
    match state.call_with(request_id, Request::ReadTransfer { id: id.clone(), payer }).await? {
        Reply::Transfer(Some(view)) => Ok(view),
        Reply::Transfer(None) => Err(ApiError::transfer_not_found(id.as_str())),
        other => Err(unexpected(other)),
    }
}

/// The hold under `id` with its hold terms, for a key that may act for its payer or payee.
async fn find_hold(state: &AppState, request_id: &RequestId, principal: &Principal, id: &TransferId) -> Result<(TransferView, HoldRecord)> {
    let mut view = read_transfer(state, request_id, id, None).await?;
    if view.payee_side {
        // The id's home shard is the payee's, which answered with its credit decision (a
        // cross-shard capture was decided): the hold lives on the payer's shard.
        view = read_transfer(state, request_id, id, Some(view.from)).await?;
    }
    // The payer's key or the payee's (a merchant captures what its customer authorised).
    if !principal.may_act_for(&view.from) && !principal.may_act_for(&view.to) {
        principal.check_account(&view.from)?;
    }
    let Some(hold) = view.hold.clone() else {
        return Err(ApiError::rejected(RejectCode::NotAHold).with_detail("transfer", json!(types::transfer_json(&view))));
    };
    Ok((view, hold))
}

/// The answer to a capture or void: the transfer when it reached `wanted`, else 409
/// `hold_not_active` with the transfer as it is.
fn answer(
    state: &AppState,
    result: TransferResult,
    before: &HoldRecord,
    wanted: &[TransferStatus],
    amount: Option<i128>,
) -> Result<HttpResponse> {
    let result = match result {
        // A cross-shard capture's answer comes from its finalize, without the hold: fill it in.
        TransferResult::Done(mut view) => {
            if view.hold.is_none() {
                view.hold = Some(closed_hold(before, &view));
            }
            let reached = wanted.contains(&view.status) && amount.is_none_or(|asked| asked == view.amount);
            if !reached && !matches!(view.status, TransferStatus::Rejected(_)) {
                let body = json!(types::transfer_json(&view));
                return Err(ApiError::rejected(RejectCode::HoldNotActive).with_detail("transfer", body));
            }
            TransferResult::Done(view)
        }
        other => other,
    };
    let (status, view) = transfer_outcome(&state.metrics, result)?;
    let status = if status == StatusCode::CREATED { StatusCode::OK } else { status };
    Ok(HttpResponse::build(status).json(view))
}

/// What a hold became, from its terms and the transfer's status after a capture.
fn closed_hold(before: &HoldRecord, view: &TransferView) -> HoldRecord {
    let captured = match view.status {
        TransferStatus::Posted | TransferStatus::Pending => view.amount,
        _ => 0,
    };
    HoldRecord { captured, released: before.held - captured, ..before.clone() }
}

/// `POST /v1/transfers/{id}/capture {"amount"?}`.
pub async fn capture(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    request_id: web::ReqData<RequestId>,
    principal: web::ReqData<Principal>,
) -> Result<HttpResponse> {
    let id = types::transfer_id(&path, "id")?;
    let object = state.read_object(&request, payload).await?;
    body::only_fields(&object, &["amount"])?;
    request.extensions_mut().insert(AuditTargets(vec![id.to_string()]));
    let (view, hold) = find_hold(&state, &request_id, &principal, &id).await?;
    if hold.settle_on_expiry {
        let message = "a delayed transfer arrives by itself at arrives_at; it cannot be captured (revoke it before then)";
        return Err(
            ApiError::new(StatusCode::CONFLICT, "transfer_not_a_hold", message).with_detail("transfer", json!(types::transfer_json(&view)))
        );
    }
    let amount = match object.get("amount") {
        None => None,
        Some(_) => Some(types::amount(&object, view.currency)?),
    };
    let call = Request::Capture { id, payer: view.from.clone(), amount };
    let result = call_one(&state, &request_id, call).await?;
    // A retry without an amount answers the capture that happened; one with another amount
    // than was captured is refused.
    answer(&state, result, &hold, &[TransferStatus::Posted, TransferStatus::Pending], amount)
}

/// `POST /v1/transfers/{id}/void`.
pub async fn void(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    request_id: web::ReqData<RequestId>,
    principal: web::ReqData<Principal>,
) -> Result<HttpResponse> {
    release(&state, &request, &path, payload, &request_id, &principal, false).await
}

/// `POST /v1/transfers/{id}/revoke`: the payer takes back a delayed transfer before it arrives
/// (200 `status: "revoked"`, again for a retry); 409 `hold_not_active` once it arrived (the
/// transfer as it is), 409 `transfer_not_delayed` for any other transfer. Only a key that may
/// act for the payer revokes.
pub async fn revoke(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    request_id: web::ReqData<RequestId>,
    principal: web::ReqData<Principal>,
) -> Result<HttpResponse> {
    release(&state, &request, &path, payload, &request_id, &principal, true).await
}

/// A void, or (`revoke`) the payer's revoke of a delayed transfer: the same release on the
/// payer's shard.
async fn release(
    state: &AppState,
    request: &HttpRequest,
    path: &str,
    payload: web::Payload,
    request_id: &RequestId,
    principal: &Principal,
    revoke: bool,
) -> Result<HttpResponse> {
    let id = types::transfer_id(path, "id")?;
    let object = state.read_object(request, payload).await?;
    body::only_fields(&object, &[])?;
    request.extensions_mut().insert(AuditTargets(vec![id.to_string()]));
    let not_delayed = |message: &str| ApiError::new(StatusCode::CONFLICT, "transfer_not_delayed", message.to_string());
    let found = find_hold(state, request_id, principal, &id).await;
    let (view, hold) = match found {
        // A transfer made without a mode is not delayed either: the revoke's own code.
        Err(error) if revoke && error.code == "transfer_not_a_hold" => {
            return Err(not_delayed("only a delayed transfer (mode delayed) is revoked"))
        }
        other => other?,
    };
    if revoke {
        principal.check_account(&view.from)?;
        if !hold.settle_on_expiry {
            let error = not_delayed("only a delayed transfer (mode delayed) is revoked; a hold is voided");
            return Err(error.with_detail("transfer", json!(types::transfer_json(&view))));
        }
    }
    let call = Request::Void { id, payer: view.from.clone() };
    let result = call_one(state, request_id, call).await?;
    answer(state, result, &hold, &[TransferStatus::Voided], None)
}
