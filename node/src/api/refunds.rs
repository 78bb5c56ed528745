//! Refunds: `POST /v1/transfers/{id}/refunds {"id", "amount", "reason"}` and `GET
//! /v1/transfers/{id}/refunds`. A refund is a transfer from the original's payee back to its
//! payer under its own id, capped by the original's amount over all its refunds; the payee's
//! shard checks the cap in the same apply that moves the money (`ledger/refunds.rs`).

use super::auth::{AuditTargets, Principal};
use super::body;
use super::errors::ApiError;
use super::{call_one, transfer_outcome, types, unexpected, AppState, RequestId};
use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use settle_cluster::ids::TransferId;
use settle_cluster::ledger::{TransferStatus, TransferView, REFUND_REASON_BYTES_MAX};
use settle_cluster::message::{RefundRequest, Reply, Request, TransferRequest};

type Result<T> = std::result::Result<T, ApiError>;

/// The original transfer, as posted (a refund of anything else is refused).
async fn original(state: &AppState, request_id: &RequestId, id: &TransferId) -> Result<TransferView> {
    match state.call_with(request_id, Request::ReadTransfer { id: id.clone(), payer: None }).await? {
        Reply::Transfer(Some(view)) => Ok(view),
        Reply::Transfer(None) => Err(ApiError::transfer_not_found(id.as_str())),
        other => Err(unexpected(other)),
    }
}

/// `POST /v1/transfers/{id}/refunds {"id", "amount", "reason"}`: 201 with the refund transfer
/// (`refund_of` names the original), 200 for the same refund again; 422
/// `refund_exceeds_original`, `transfer_not_refundable`, or the refund transfer's own rejection
/// (`insufficient_funds` when the payee cannot pay it back).
pub async fn create(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    request_id: web::ReqData<RequestId>,
    principal: web::ReqData<Principal>,
) -> Result<HttpResponse> {
    let original_id = types::transfer_id(&path, "id")?;
    let object = state.read_object(&request, payload).await?;
    body::only_fields(&object, &["id", "amount", "reason"])?;
    let id = types::transfer_id(types::required(&object, "id")?, "id")?;
    let reason = match object.get("reason") {
        Some(Value::String(text)) if !text.trim().is_empty() && text.len() <= REFUND_REASON_BYTES_MAX => text.clone(),
        _ => return Err(ApiError::invalid_request("reason", format!("reason is required, at most {REFUND_REASON_BYTES_MAX} bytes"))),
    };
    request.extensions_mut().insert(AuditTargets(vec![id.to_string(), original_id.to_string()]));
    let original = original(&state, &request_id, &original_id).await?;
    // The refund's payer is the original's payee: a scoped key refunds only its own payments.
    principal.check_account(&original.to)?;
    if original.status != TransferStatus::Posted {
        return Err(ApiError::rejected(settle_cluster::ledger::RejectCode::NotRefundable));
    }
    let amount = types::amount(&object, original.currency)?;
    let transfer = TransferRequest { id, from: original.to.clone(), to: original.from.clone(), amount, currency: original.currency };
    let refund = RefundRequest { transfer, original: original_id.clone(), reason };
    let result = call_one(&state, &request_id, Request::Refund(refund)).await?;
    let (status, view) = transfer_outcome(&state.metrics, result)?;
    let mut body = json!(view);
    body["refund_of"] = json!(original_id.as_str());
    Ok(HttpResponse::build(status).json(body))
}

/// `GET /v1/transfers/{id}/refunds`: what was refunded of a transfer.
pub async fn list(
    state: web::Data<AppState>,
    path: web::Path<String>,
    request_id: web::ReqData<RequestId>,
    principal: web::ReqData<Principal>,
) -> Result<HttpResponse> {
    let original_id = types::transfer_id(&path, "id")?;
    let original = original(&state, &request_id, &original_id).await?;
    if !principal.may_act_for(&original.from) && !principal.may_act_for(&original.to) {
        principal.check_account(&original.to)?;
    }
    let request = Request::ReadRefunds { original: original_id.clone(), payee: original.to.clone() };
    let total = match state.call_with(&request_id, request).await? {
        Reply::Refunds(total) => total,
        other => return Err(unexpected(other)),
    };
    let currency = original.currency;
    let refunds: Vec<Value> = total
        .as_ref()
        .map(|total| {
            total
                .refunds
                .iter()
                .map(|item| {
                    json!({
                        "id": item.id.as_str(),
                        "amount": currency.format(item.amount),
                        "reason": item.reason,
                        "created_at_ms": item.created_at_ms,
                        "counted": !item.released,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let refunded = total.as_ref().map_or(0, |total| total.refunded);
    Ok(HttpResponse::build(StatusCode::OK).json(json!({
        "transfer": original_id.as_str(),
        "amount": currency.format(original.amount),
        "refunded": currency.format(refunded),
        "refundable": currency.format(original.amount - refunded),
        "refunds": refunds,
    })))
}
