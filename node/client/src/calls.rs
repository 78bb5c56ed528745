//! Calls that wait out failovers: writes (`post_until`, `fund`) and reads (`balance`,
//! `final_status`, `cluster_view`) that try every node in turn, each within a bound.

use crate::amount::{cents, parse_cents};
use crate::answer::{classify, classify_item, Answer};
use crate::api::{AccountBatchRequest, BatchRequest, ClusterView, CreateAccountRequest, TransferRequest, TransferView};
use crate::transfer::Transfer;
use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::Value;
use std::time::{Duration, Instant};

/// How long a client read keeps retrying before it gives up.
const READ_FOR: Duration = Duration::from_secs(60);

/// Funding transfers per batch request.
const FUND_BATCH_MAX: usize = 1_000;

/// Accounts per batch creation request (the API's maximum).
const ACCOUNT_BATCH_MAX: usize = 8_000;

/// A request body as compact JSON, for error messages.
fn json_text<B: Serialize + ?Sized>(body: &B) -> String {
    serde_json::to_string(body).unwrap_or_else(|error| format!("<unprintable body: {error}>"))
}

/// POSTs `body` to `path`, trying the nodes in turn, until a node answers with a status in
/// `accept` (then returns its JSON body, `Null` if none). Fails at once on an answer that is
/// final (a 4xx other than 408/429) and after `within` without an accepted answer.
pub async fn post_until<B: Serialize + ?Sized>(
    client: &reqwest::Client,
    urls: &[String],
    path: &str,
    body: &B,
    accept: &[u16],
    within: Duration,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + within;
    let mut turn = 0;
    loop {
        let url = &urls[turn % urls.len()];
        turn += 1;
        if let Ok(response) = client.post(format!("{url}{path}")).json(body).send().await {
            let status = response.status().as_u16();
            let answer: Value = response.json().await.unwrap_or(Value::Null);
            if accept.contains(&status) {
                return Ok(answer);
            }
            if let Answer::Final(code) = classify(status, &answer) {
                bail!("POST {path} {}: HTTP {status} {code}: {answer}", json_text(body));
            }
        }
        if Instant::now() > deadline {
            bail!("POST {path} {}: no success within {within:?}", json_text(body));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Pays `amount_minor` cents from `bank` to every account (transfer id `fund-ACCOUNT`, so a
/// retry never pays twice), in batches, resending the items whose outcome is unknown until each
/// is posted. Fails at once if an item is refused, or when a batch is not done within `within`.
pub async fn fund(
    client: &reqwest::Client,
    urls: &[String],
    bank: &str,
    accounts: &[String],
    amount_minor: i128,
    within: Duration,
) -> anyhow::Result<()> {
    let amount = cents(amount_minor);
    for chunk in accounts.chunks(FUND_BATCH_MAX) {
        let deadline = Instant::now() + within;
        let mut waiting: Vec<TransferRequest> = chunk
            .iter()
            .map(|account| TransferRequest {
                amount: amount.clone(),
                currency: "USD".to_string(),
                from: bank.to_string(),
                id: format!("fund-{account}"),
                to: account.clone(),
            })
            .collect();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let batch = BatchRequest { transfers: waiting };
            let answer = post_until(client, urls, "/v1/transfers/batch", &batch, &[200], left).await?;
            let results = answer["results"].as_array().cloned().unwrap_or_default();
            let mut unknown = Vec::new();
            for (position, item) in batch.transfers.into_iter().enumerate() {
                match results.get(position).map_or(Answer::Retry("internal".to_string()), classify_item) {
                    Answer::Posted => {}
                    Answer::Final(code) => bail!("funding {} refused: {code}: {}", Value::from(item.to), results[position]),
                    Answer::Retry(_) => unknown.push(item),
                }
            }
            if unknown.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                bail!("funding did not complete within {within:?}");
            }
            waiting = unknown;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// Creates accounts through `POST /v1/accounts/batch`, 8,000 per request, resending the items
/// whose outcome is unknown until each exists (201, or 200: it existed alike). Fails at once if
/// an item is refused (say `account_exists` with another currency or kind), or when a batch is
/// not done within `within`.
pub async fn create_accounts(
    client: &reqwest::Client,
    urls: &[String],
    accounts: &[CreateAccountRequest],
    within: Duration,
) -> anyhow::Result<()> {
    for chunk in accounts.chunks(ACCOUNT_BATCH_MAX) {
        let deadline = Instant::now() + within;
        let mut waiting: Vec<CreateAccountRequest> = chunk.to_vec();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let batch = AccountBatchRequest { accounts: waiting };
            let answer = post_until(client, urls, "/v1/accounts/batch", &batch, &[200], left).await?;
            let results = answer["results"].as_array().cloned().unwrap_or_default();
            let mut unknown = Vec::new();
            for (position, item) in batch.accounts.into_iter().enumerate() {
                let result = results.get(position).unwrap_or(&Value::Null);
                if matches!(result["status"].as_u64(), Some(200 | 201)) {
                    continue;
                }
                match classify_item(result) {
                    Answer::Final(code) => bail!("creating account {} refused: {code}: {result}", Value::from(item.id)),
                    Answer::Posted | Answer::Retry(_) => unknown.push(item),
                }
            }
            if unknown.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                bail!("creating accounts did not complete within {within:?}");
            }
            waiting = unknown;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// An account's balance in cents.
pub async fn balance(client: &reqwest::Client, urls: &[String], account: &str) -> anyhow::Result<i128> {
    let deadline = Instant::now() + READ_FOR;
    let mut turn = 0;
    loop {
        let url = &urls[turn % urls.len()];
        turn += 1;
        if let Ok(response) = client.get(format!("{url}/v1/accounts/{account}")).send().await {
            if response.status().as_u16() == 200 {
                let body: Value = response.json().await?;
                return body["balance"].as_str().and_then(parse_cents).with_context(|| format!("balance of {account}: {body}"));
            }
        }
        if Instant::now() > deadline {
            bail!("reading {account}: no answer within {READ_FOR:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A transfer's final status: "posted", "rejected", "absent", or "reused" when the id holds
/// another body (then this one can never post); waits while it is pending. The record found
/// under the id is trusted only if its payer, payee and amount are this transfer's.
pub async fn final_status(client: &reqwest::Client, urls: &[String], transfer: &Transfer, accounts: &[String]) -> anyhow::Result<String> {
    let deadline = Instant::now() + READ_FOR;
    let (id, payer) = (&transfer.id, &accounts[transfer.from]);
    let expected = transfer.body(accounts);
    let mut turn = 0;
    loop {
        let url = &urls[turn % urls.len()];
        turn += 1;
        if let Ok(response) = client.get(format!("{url}/v1/transfers/{id}?from={payer}")).send().await {
            match response.status().as_u16() {
                404 => return Ok("absent".to_string()),
                200 => {
                    let found: TransferView = response.json().await?;
                    let same_body = found.from == expected.from
                        && found.to == expected.to
                        && found.amount == expected.amount
                        && found.currency == expected.currency;
                    if !same_body {
                        return Ok("reused".to_string());
                    }
                    if found.status != "pending" {
                        return Ok(found.status);
                    }
                }
                _ => {}
            }
        }
        if Instant::now() > deadline {
            bail!("transfer {id} unresolved after {READ_FOR:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first node's answer to GET /v1/cluster, trying the nodes in order.
pub async fn cluster_view(client: &reqwest::Client, urls: &[String]) -> Option<ClusterView> {
    for url in urls {
        let Ok(response) = client.get(format!("{url}/v1/cluster")).send().await else {
            continue;
        };
        if let Ok(view) = response.json::<ClusterView>().await {
            return Some(view);
        }
    }
    None
}
