//! Statements and balances as of a time: `GET /v1/accounts/{id}/statement?from=&to=&limit=&cursor=`
//! (one row per movement of the posted balance, oldest first, with its direction, counterparty
//! and the balance after it) and `GET /v1/accounts/{id}/balance?as_of=`. Times are RFC 3339; a
//! movement's time is its shard's log time (`ledger/statements.rs`). Both are linearizable reads
//! on the account's shard and cost what they return.

use super::auth::Principal;
use super::errors::ApiError;
use super::{page_limit, types, unexpected, AppState, RequestId};
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};
use settle_cluster::ledger::STATEMENT_ROWS_MAX;
use settle_cluster::message::{Reply, Request};

type Result<T> = std::result::Result<T, ApiError>;

#[derive(Deserialize)]
pub struct StatementQuery {
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// A page cursor: the last row's time and sequence (`"<at_ms>.<seq>"`).
fn parse_cursor(text: &str) -> Result<(u64, u64)> {
    let invalid = || ApiError::invalid_request("cursor", "cursor is not one this API returned");
    let (at_ms, seq) = text.split_once('.').ok_or_else(invalid)?;
    Ok((at_ms.parse().map_err(|_| invalid())?, seq.parse().map_err(|_| invalid())?))
}

/// `GET /v1/accounts/{id}/statement`: `{"account","currency","from","to","opening_balance",
/// "closing_balance","rows":[{"at","at_ms","transfer","direction","amount","counterparty",
/// "balance_after"}],"next_cursor"}`. `from` defaults to the beginning, `to` (exclusive) to no
/// end; `opening_balance` is the balance before the page's first row, `closing_balance` after
/// its last.
pub async fn statement(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<StatementQuery>,
    request_id: web::ReqData<RequestId>,
    principal: web::ReqData<Principal>,
) -> Result<HttpResponse> {
    let account = types::account_id(&path, "id")?;
    principal.check_account(&account)?;
    let from_ms = query.from.as_deref().map(|text| types::parse_rfc3339(text, "from")).transpose()?.unwrap_or(0);
    let to_ms = query.to.as_deref().map(|text| types::parse_rfc3339(text, "to")).transpose()?.unwrap_or(u64::MAX);
    if from_ms > to_ms {
        return Err(ApiError::invalid_request("to", "to must not be before from"));
    }
    let limit = page_limit(query.limit.as_deref(), 100, STATEMENT_ROWS_MAX)?;
    let after = query.cursor.as_deref().map(parse_cursor).transpose()?;
    let request = Request::Statement { account: account.clone(), from_ms, to_ms, after, limit };
    let page = match state.call_with(&request_id, request).await? {
        Reply::Statement(Some(page)) => page,
        Reply::Statement(None) => return Err(ApiError::account_not_found(account.as_str())),
        other => return Err(unexpected(other)),
    };
    let currency = page.currency;
    let rows: Vec<Value> = page
        .rows
        .iter()
        .map(|row| {
            json!({
                "at": types::rfc3339(row.at_ms),
                "at_ms": row.at_ms,
                "transfer": row.transfer.as_str(),
                "direction": if row.amount < 0 { "debit" } else { "credit" },
                "amount": currency.format(row.amount.abs()),
                "counterparty": row.counterparty.as_str(),
                "balance_after": currency.format(row.balance_after),
            })
        })
        .collect();
    let closing = page.rows.last().map_or(page.opening_balance, |row| row.balance_after);
    Ok(HttpResponse::Ok().json(json!({
        "account": account.as_str(),
        "currency": currency.code(),
        "from": query.from.as_ref().map(|_| types::rfc3339(from_ms)),
        "to": query.to.as_ref().map(|_| types::rfc3339(to_ms)),
        "opening_balance": currency.format(page.opening_balance),
        "closing_balance": currency.format(closing),
        "rows": rows,
        "next_cursor": page.next.map(|(at_ms, seq)| format!("{at_ms}.{seq}")),
    })))
}

#[derive(Deserialize)]
pub struct BalanceQuery {
    as_of: Option<String>,
}

/// `GET /v1/accounts/{id}/balance?as_of=`: `{"account","currency","as_of","balance"}`, the
/// posted balance after every movement at or before `as_of` (now when absent).
pub async fn balance(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<BalanceQuery>,
    request_id: web::ReqData<RequestId>,
    principal: web::ReqData<Principal>,
) -> Result<HttpResponse> {
    let account = types::account_id(&path, "id")?;
    principal.check_account(&account)?;
    let at_ms = query.as_of.as_deref().map(|text| types::parse_rfc3339(text, "as_of")).transpose()?.unwrap_or(u64::MAX);
    let (currency, balance) = match state.call_with(&request_id, Request::BalanceAsOf { account: account.clone(), at_ms }).await? {
        Reply::Balance(Some(found)) => found,
        Reply::Balance(None) => return Err(ApiError::account_not_found(account.as_str())),
        other => return Err(unexpected(other)),
    };
    Ok(HttpResponse::Ok().json(json!({
        "account": account.as_str(),
        "currency": currency.code(),
        "as_of": query.as_of.as_ref().map(|_| types::rfc3339(at_ms)),
        "balance": currency.format(balance),
    })))
}
