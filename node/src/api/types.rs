//! JSON shapes of API v1 and their validation. Bodies are parsed by hand from `serde_json::Value`
//! so that every problem names its field with a stable code, and nothing reaches the cluster
//! before it is valid. Answers are the typed shapes of `settle_client::api`, which clients read
//! back with the same types.

use super::amount::{parse_amount, AmountError};
use super::errors::ApiError;
use serde_json::{Map, Value};
use settle_client::api;
use settle_cluster::ids::{AccountId, TransferId};
use settle_cluster::ledger::{AccountKind, TransferStatus, TransferView};
use settle_cluster::message::AccountView;
use settle_cluster::message::{AccountRequest, TransferRequest};
use settle_cluster::money::{Currency, Minor};

/// The most transfers one batch request may carry.
pub const BATCH_TRANSFERS_MAX: usize = 8_000;

/// The most accounts one batch request may carry.
pub const BATCH_ACCOUNTS_MAX: usize = 8_000;

fn string_field<'a>(object: &'a Map<String, Value>, field: &'static str) -> Result<Option<&'a str>, ApiError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(ApiError::invalid_request(field, format!("{field} must be a string"))),
    }
}

pub fn required<'a>(object: &'a Map<String, Value>, field: &'static str) -> Result<&'a str, ApiError> {
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
pub fn create_account(object: &Map<String, Value>) -> Result<AccountRequest, ApiError> {
    super::body::only_fields(object, &["id", "currency", "kind", "customer"])?;
    let id = account_id(required(object, "id")?, "id")?;
    if let Some(customer) = string_field(object, "customer")? {
        let named = settle_cluster::ledger::customer_of(&id);
        if named.as_ref().map(|named| named.as_str()) != Some(customer) {
            let message = format!("an account of customer {customer} is named {customer}::<name> (so it lives on the customer's shard)");
            return Err(ApiError::invalid_request("id", message));
        }
    }
    let currency = currency(required(object, "currency")?)?;
    let kind = match string_field(object, "kind")? {
        None => AccountKind::Customer,
        Some(text) => AccountKind::parse(text).ok_or_else(|| {
            ApiError::invalid_request("kind", "kind must be customer, merchant, settlement, prepaid or prepaid_anonymous")
        })?,
    };
    if kind.prepaid() && currency.code() != settle_cluster::ledger::PREPAID_CURRENCY {
        return Err(ApiError::invalid_request("currency", "prepaid cards are issued in CNY"));
    }
    Ok(AccountRequest { id, currency, kind })
}

/// One transfer of `POST /v1/transfers` or of a batch.
pub fn transfer(object: &Map<String, Value>) -> Result<TransferRequest, ApiError> {
    transfer_with(object, &[])
}

/// A transfer whose body may also carry the `extra` members (the single endpoint's `mode`).
pub fn transfer_with(object: &Map<String, Value>, extra: &[&'static str]) -> Result<TransferRequest, ApiError> {
    let mut fields = vec!["id", "from", "to", "amount", "currency"];
    fields.extend_from_slice(extra);
    super::body::only_fields(object, &fields)?;
    let id = transfer_id(required(object, "id")?, "id")?;
    let from = account_id(required(object, "from")?, "from")?;
    let to = account_id(required(object, "to")?, "to")?;
    let currency = currency(required(object, "currency")?)?;
    let amount = amount(object, currency)?;
    if from == to {
        return Err(ApiError { field: Some("to"), ..ApiError::rejected(settle_cluster::ledger::RejectCode::SameAccount) });
    }
    Ok(TransferRequest { id, from, to, amount, currency })
}

/// The `amount` member of a body, in `currency`'s minor units.
pub fn amount(object: &Map<String, Value>, currency: Currency) -> Result<Minor, ApiError> {
    let amount_text = match object.get("amount") {
        Some(Value::String(text)) => text.as_str(),
        Some(Value::Number(_)) => return Err(ApiError::invalid_amount("amount must be a string such as \"12.34\", never a number")),
        None | Some(Value::Null) => return Err(ApiError::invalid_amount("amount is required")),
        Some(_) => return Err(ApiError::invalid_amount("amount must be a string such as \"12.34\"")),
    };
    parse_amount(amount_text, currency).map_err(|error| match error {
        AmountError::Scale(exponent) => {
            ApiError::invalid_amount(format!("{currency} amounts have exactly {exponent} decimal places; got {amount_text:?}"))
        }
        other => ApiError::invalid_amount(other.to_string()),
    })
}

/// An account as API v1 answers it.
pub fn account_json(view: &AccountView) -> api::AccountView {
    api::AccountView {
        available: view.currency.format(view.available),
        balance: view.currency.format(view.balance),
        created_at_ms: view.created_at_ms,
        currency: view.currency.code().to_string(),
        customer: settle_cluster::ledger::customer_of(&view.id).map(|customer| customer.to_string()),
        id: view.id.to_string(),
        kind: view.kind.as_str().to_string(),
        pending_debits: view.currency.format(view.debits_pending),
        transfer_count: view.transfer_count,
    }
}

/// Milliseconds since the Unix epoch as RFC 3339 in UTC (`2026-12-07T04:19:01.123Z`).
pub fn rfc3339(at_ms: u64) -> String {
    let nanos = i128::from(at_ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|at| at.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| at_ms.to_string())
}

/// An RFC 3339 timestamp as milliseconds since the Unix epoch (`field` names it in the error).
pub fn parse_rfc3339(text: &str, field: &'static str) -> Result<u64, ApiError> {
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).map_err(|error| {
        ApiError::invalid_request(field, format!("{field} must be an RFC 3339 time such as 2026-12-07T12:00:00Z: {error}"))
    })?;
    u64::try_from(at.unix_timestamp_nanos() / 1_000_000).map_err(|_| ApiError::invalid_request(field, format!("{field} is before 1970")))
}

/// How a single transfer is made: posted at once (`mode` absent or `"post"`), or held
/// (`"hold"`, for `hold_timeout_seconds`, default 7 days, at most 30).
/// How long a hold or a delayed transfer lasts, and whether it settles when that time passes
/// (`mode: "delayed"`, after `delay_hours`: 2 or 24, default 24); `None` for a plain transfer.
pub fn hold_terms(object: &Map<String, Value>) -> Result<Option<(u64, bool)>, ApiError> {
    let timeout = object.get("hold_timeout_seconds");
    let delay = object.get("delay_hours");
    let mode = string_field(object, "mode")?;
    if timeout.is_some() && mode != Some("hold") {
        return Err(ApiError::invalid_request("hold_timeout_seconds", "hold_timeout_seconds needs mode hold"));
    }
    if delay.is_some() && mode != Some("delayed") {
        return Err(ApiError::invalid_request("delay_hours", "delay_hours needs mode delayed"));
    }
    match mode {
        None | Some("post") => Ok(None),
        Some("hold") => {
            let max_seconds = settle_cluster::ledger::HOLD_TIMEOUT_MS_MAX / 1_000;
            let seconds = match timeout {
                None | Some(Value::Null) => HOLD_TIMEOUT_SECONDS_DEFAULT,
                Some(value) => value.as_u64().filter(|seconds| (1..=max_seconds).contains(seconds)).ok_or_else(|| {
                    ApiError::invalid_request(
                        "hold_timeout_seconds",
                        format!("hold_timeout_seconds must be an integer from 1 to {max_seconds}"),
                    )
                })?,
            };
            Ok(Some((seconds * 1_000, false)))
        }
        Some("delayed") => {
            let hours = match delay {
                None | Some(Value::Null) => 24,
                Some(value) => value
                    .as_u64()
                    .filter(|hours| DELAY_HOURS.contains(hours))
                    .ok_or_else(|| ApiError::invalid_request("delay_hours", "delay_hours must be 2 or 24"))?,
            };
            Ok(Some((hours * 3_600_000, true)))
        }
        Some(_) => Err(ApiError::invalid_request("mode", "mode must be \"post\", \"hold\" or \"delayed\"")),
    }
}

/// The delays a delayed transfer may take (the PBOC's delayed-arrival options).
pub const DELAY_HOURS: [u64; 2] = [2, 24];

/// A hold lasts a week unless the request says otherwise.
pub const HOLD_TIMEOUT_SECONDS_DEFAULT: u64 = 7 * 24 * 3_600;

/// A transfer as API v1 answers it; a rejected one carries its stored rejection.
pub fn transfer_json(view: &TransferView) -> api::TransferView {
    let rejection = match &view.status {
        TransferStatus::Rejected(code) => Some(api::Rejection { code: code.code().to_string(), message: code.message().to_string() }),
        _ => None,
    };
    let delayed = view.hold.as_ref().filter(|hold| hold.settle_on_expiry);
    let status = match (&view.status, delayed.is_some()) {
        (TransferStatus::Held, true) => "scheduled",
        (TransferStatus::Voided, true) => "revoked",
        (status, _) => status.as_str(),
    };
    let hold = view.hold.as_ref().filter(|hold| !hold.settle_on_expiry).map(|hold| api::HoldView {
        captured: view.currency.format(hold.captured),
        expires_at_ms: hold.expires_at_ms,
        held: view.currency.format(hold.held),
        released: view.currency.format(hold.released),
    });
    api::TransferView {
        amount: view.currency.format(view.amount),
        arrives_at: delayed.map(|hold| rfc3339(hold.expires_at_ms)),
        created_at_ms: view.created_at_ms,
        currency: view.currency.code().to_string(),
        from: view.from.to_string(),
        hold_expires_at: view.hold.as_ref().filter(|hold| !hold.settle_on_expiry).map(|hold| rfc3339(hold.expires_at_ms)),
        hold,
        id: view.id.to_string(),
        next_action: None,
        rejection,
        status: status.to_string(),
        to: view.to.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use settle_cluster::ledger::{AccountKind, RejectCode};

    fn usd() -> Currency {
        Currency::from_code("USD").expect("USD is in the currency table")
    }

    /// An account and a transfer (posted and rejected) are written byte for byte as before the
    /// typed shapes (keys sorted, as `json!` wrote them; `rejection` only when rejected).
    #[test]
    fn answers_keep_their_wire_bytes() {
        let account = AccountView {
            id: AccountId::new("alice").unwrap(),
            currency: usd(),
            kind: AccountKind::Merchant,
            balance: 5_000,
            available: 4_000,
            debits_pending: 1_000,
            created_at_ms: 17,
            transfer_count: 3,
        };
        assert_eq!(
            serde_json::to_string(&account_json(&account)).unwrap(),
            r#"{"available":"40.00","balance":"50.00","created_at_ms":17,"currency":"USD","id":"alice","kind":"merchant","pending_debits":"10.00","transfer_count":3}"#
        );
        let mut transfer = TransferView {
            id: TransferId::new("t1").unwrap(),
            from: AccountId::new("alice").unwrap(),
            to: AccountId::new("bob").unwrap(),
            amount: 1_234,
            currency: usd(),
            status: TransferStatus::Posted,
            created_at_ms: 9,
            payee_side: false,
            hold: None,
        };
        assert_eq!(
            serde_json::to_string(&transfer_json(&transfer)).unwrap(),
            r#"{"amount":"12.34","created_at_ms":9,"currency":"USD","from":"alice","id":"t1","status":"posted","to":"bob"}"#
        );
        transfer.status = TransferStatus::Rejected(RejectCode::InsufficientFunds);
        let rejection = RejectCode::InsufficientFunds;
        let expected = format!(
            r#"{{"amount":"12.34","created_at_ms":9,"currency":"USD","from":"alice","id":"t1","rejection":{{"code":"{}","message":{}}},"status":"rejected","to":"bob"}}"#,
            rejection.code(),
            serde_json::Value::from(rejection.message())
        );
        assert_eq!(serde_json::to_string(&transfer_json(&transfer)).unwrap(), expected);
        // A hold carries its amounts and its expiry in RFC 3339.
        transfer.status = TransferStatus::Held;
        transfer.hold = Some(settle_cluster::ledger::HoldRecord {
            held: 1_234,
            expires_at_ms: 1_796_601_600_000,
            captured: 0,
            released: 0,
            closed_at_ms: None,
            settle_on_expiry: false,
        });
        assert_eq!(
            serde_json::to_string(&transfer_json(&transfer)).unwrap(),
            r#"{"amount":"12.34","created_at_ms":9,"currency":"USD","from":"alice","hold":{"captured":"0.00","expires_at_ms":1796601600000,"held":"12.34","released":"0.00"},"hold_expires_at":"2026-12-07T00:00:00Z","id":"t1","status":"held","to":"bob"}"#
        );
        // A delayed transfer is scheduled until it arrives, then shows when it did; revoked
        // once voided.
        if let Some(hold) = transfer.hold.as_mut() {
            hold.settle_on_expiry = true;
        }
        assert_eq!(
            serde_json::to_string(&transfer_json(&transfer)).unwrap(),
            r#"{"amount":"12.34","arrives_at":"2026-12-07T00:00:00Z","created_at_ms":9,"currency":"USD","from":"alice","id":"t1","status":"scheduled","to":"bob"}"#
        );
        transfer.status = TransferStatus::Voided;
        assert_eq!(transfer_json(&transfer).status, "revoked");
    }

    /// The client's USD formatting, kept local so clients need not pull in the currency table,
    /// writes what the server writes.
    #[test]
    fn client_cents_match_the_server_format() {
        for minor in [0, 1, 5, 99, 100, -5, -1_230, 1_234, 1_000_000_000, i128::MAX, i128::MIN] {
            assert_eq!(settle_client::cents(minor), usd().format(minor), "{minor}");
        }
    }
}
