//! JSON shapes of API v1 and their validation. Bodies are parsed by hand from `serde_json::Value`
//! so that every problem names its field with a stable code, and nothing reaches the cluster
//! before it is valid.

use super::amount::{parse_amount, AmountError};
use super::errors::ApiError;
use serde_json::{json, Map, Value};
use settle_cluster::ids::{AccountId, TransferId};
use settle_cluster::ledger::{AccountKind, CreateAccount, TransferCmd, TransferStatus, TransferView};
use settle_cluster::message::AccountView;
use settle_cluster::money::Currency;

/// The most transfers one batch request may carry.
pub const BATCH_TRANSFERS_MAX: usize = 8_000;

pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|error| ApiError::invalid_body(format!("body is not JSON: {error}")))?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::invalid_body("body must be a JSON object")),
    }
}

fn string_field<'a>(object: &'a Map<String, Value>, field: &'static str) -> Result<Option<&'a str>, ApiError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(ApiError::invalid_request(field, format!("{field} must be a string"))),
    }
}

fn required<'a>(object: &'a Map<String, Value>, field: &'static str) -> Result<&'a str, ApiError> {
    string_field(object, field)?.ok_or_else(|| ApiError::invalid_request(field, format!("{field} is required")))
}

pub fn account_id(text: &str, field: &'static str) -> Result<AccountId, ApiError> {
    AccountId::new(text).map_err(|error| ApiError::invalid_request(field, format!("{field} {error}")))
}

pub fn transfer_id(text: &str, field: &'static str) -> Result<TransferId, ApiError> {
    TransferId::new(text).map_err(|error| ApiError::invalid_request(field, format!("{field} {error}")))
}

pub fn currency(text: &str) -> Result<Currency, ApiError> {
    Currency::from_code(text).ok_or_else(|| ApiError::unknown_currency(text))
}

/// `POST /v1/accounts {"id","currency","kind"}`.
pub fn create_account(object: &Map<String, Value>) -> Result<CreateAccount, ApiError> {
    let id = account_id(required(object, "id")?, "id")?;
    let currency = currency(required(object, "currency")?)?;
    let kind = match string_field(object, "kind")? {
        None => AccountKind::Customer,
        Some(text) => {
            AccountKind::parse(text).ok_or_else(|| ApiError::invalid_request("kind", "kind must be customer, merchant or settlement"))?
        }
    };
    Ok(CreateAccount { id, currency, kind })
}

/// One transfer of `POST /v1/transfers` or of a batch.
pub fn transfer(object: &Map<String, Value>) -> Result<TransferCmd, ApiError> {
    let id = transfer_id(required(object, "id")?, "id")?;
    let from = account_id(required(object, "from")?, "from")?;
    let to = account_id(required(object, "to")?, "to")?;
    let currency = currency(required(object, "currency")?)?;
    let amount_text = match object.get("amount") {
        Some(Value::String(text)) => text.as_str(),
        Some(Value::Number(_)) => return Err(ApiError::invalid_amount("amount must be a string such as \"12.34\", never a number")),
        None | Some(Value::Null) => return Err(ApiError::invalid_amount("amount is required")),
        Some(_) => return Err(ApiError::invalid_amount("amount must be a string such as \"12.34\"")),
    };
    let amount = parse_amount(amount_text, currency).map_err(|error| match error {
        AmountError::Scale(exponent) => {
            ApiError::invalid_amount(format!("{currency} amounts have exactly {exponent} decimal places; got {amount_text:?}"))
        }
        other => ApiError::invalid_amount(other.to_string()),
    })?;
    if from == to {
        return Err(ApiError { field: Some("to"), ..ApiError::rejected(settle_cluster::ledger::RejectCode::SameAccount) });
    }
    Ok(TransferCmd { id, from, to, amount, currency })
}

pub fn account_json(view: &AccountView) -> Value {
    json!({
        "id": view.id,
        "currency": view.currency.code(),
        "kind": view.kind.as_str(),
        "balance": view.currency.format(view.balance),
        "available": view.currency.format(view.available),
        "pending_debits": view.currency.format(view.debits_pending),
        "transfer_count": view.transfer_count,
        "created_at_ms": view.created_at_ms,
    })
}

pub fn transfer_json(view: &TransferView) -> Value {
    let mut value = json!({
        "id": view.id,
        "from": view.from,
        "to": view.to,
        "amount": view.currency.format(view.amount),
        "currency": view.currency.code(),
        "status": view.status.as_str(),
        "created_at_ms": view.created_at_ms,
    });
    if let TransferStatus::Rejected(code) = &view.status {
        value["rejection"] = json!({ "code": code.code(), "message": code.message() });
    }
    value
}
