//! What the bench and the drills share as clients of a cluster: USD amounts as text, their
//! transfers and what an answer to one means (`classify`), and writes (`post_until`, `fund`) and
//! reads that wait out failovers (bounded) by trying every node in turn.

use anyhow::{bail, Context};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use settle_cluster::money::Currency;
use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// How long a client read keeps retrying before it gives up.
const READ_FOR: Duration = Duration::from_secs(60);

/// Cents as a USD amount string ("12.34"), as the API writes amounts.
pub fn cents(minor: i128) -> String {
    Currency::from_code("USD").expect("USD is in the currency table").format(minor)
}

/// A USD amount string back to cents; `None` unless it has exactly two decimals.
pub fn parse_cents(text: &str) -> Option<i128> {
    let decimal = Decimal::from_str(text).ok()?;
    (decimal.scale() == 2).then(|| decimal.mantissa())
}

/// A transfer between two of a tool's accounts (indexes into its account list).
#[derive(Debug, Clone)]
pub struct Transfer {
    pub id: String,
    pub from: usize,
    pub to: usize,
    pub amount: i128,
    /// The payer's shard (where the transfer is recorded).
    pub shard: u32,
}

impl Transfer {
    /// The request body of POST /v1/transfers (and of one batch item), in USD.
    pub fn body(&self, accounts: &[String]) -> Value {
        json!({
            "id": self.id,
            "from": accounts[self.from],
            "to": accounts[self.to],
            "amount": cents(self.amount),
            "currency": "USD",
        })
    }
}

/// What one answer to a transfer (a response, or one item of a batch response) tells a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 201: the transfer is posted.
    Posted,
    /// A 4xx other than 408/429: definitely not applied; the code says why.
    Final(String),
    /// Anything else (5xx with or without an error code, 408, 429, 202 pending, ...): the outcome is
    /// unknown; retry with the same id, or look the transfer up later.
    Retry(String),
}

/// The API's rule (`ApiError::retryable`): 408, 429 and every 5xx may succeed when retried.
fn retryable(status: u16) -> bool {
    matches!(status, 408 | 429 | 500..=599)
}

/// Classifies a transfer answer by its HTTP status and body. The code is the body's
/// `error.code`, or `http_STATUS` when there is none (a proxy's 502, say).
pub fn classify(status: u16, body: &Value) -> Answer {
    if status == 201 {
        return Answer::Posted;
    }
    let code = body["error"]["code"].as_str().map_or_else(|| format!("http_{status}"), str::to_string);
    if (400..=499).contains(&status) && !retryable(status) {
        Answer::Final(code)
    } else {
        Answer::Retry(code)
    }
}

/// Classifies one item of a batch answer (`{"status": 201, ...}` or `{"status": 409, "error": ...}`);
/// an item without a status is an unknown outcome.
pub fn classify_item(item: &Value) -> Answer {
    match item["status"].as_u64().and_then(|status| u16::try_from(status).ok()) {
        Some(status) => classify(status, item),
        None => Answer::Retry("internal".to_string()),
    }
}

/// POSTs `body` to `path`, trying the nodes in turn, until a node answers with a status in
/// `accept` (then returns its JSON body, `Null` if none). Fails at once on an answer that is
/// final (a 4xx other than 408/429) and after `within` without an accepted answer.
pub async fn post_until(
    client: &reqwest::Client,
    urls: &[String],
    path: &str,
    body: &Value,
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
                bail!("POST {path} {body}: HTTP {status} {code}: {answer}");
            }
        }
        if Instant::now() > deadline {
            bail!("POST {path} {body}: no success within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Funding transfers per batch request.
const FUND_BATCH_MAX: usize = 1_000;

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
        let mut waiting: Vec<Value> = chunk
            .iter()
            .map(|account| json!({ "id": format!("fund-{account}"), "from": bank, "to": account, "amount": amount, "currency": "USD" }))
            .collect();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = post_until(client, urls, "/v1/transfers/batch", &json!({ "transfers": waiting }), &[200], left).await?;
            let results = answer["results"].as_array().cloned().unwrap_or_default();
            let mut unknown = Vec::new();
            for (position, item) in waiting.into_iter().enumerate() {
                match results.get(position).map_or(Answer::Retry("internal".to_string()), classify_item) {
                    Answer::Posted => {}
                    Answer::Final(code) => bail!("funding {} refused: {code}: {}", item["to"], results[position]),
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
                    let body: Value = response.json().await?;
                    let same_body = ["from", "to", "amount", "currency"].iter().all(|field| body[*field] == expected[*field]);
                    if !same_body {
                        return Ok("reused".to_string());
                    }
                    let status = body["status"].as_str().unwrap_or("").to_string();
                    if status != "pending" {
                        return Ok(status);
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
pub async fn cluster_view(client: &reqwest::Client, urls: &[String]) -> Option<Value> {
    for url in urls {
        let Ok(response) = client.get(format!("{url}/v1/cluster")).send().await else {
            continue;
        };
        if let Ok(view) = response.json::<Value>().await {
            return Some(view);
        }
    }
    None
}

/// Which of `urls` each node of a /v1/cluster view is, matched by the HTTP address the node
/// advertises: node id → index into `urls`. Nodes whose address matches no URL are left out.
pub fn match_advertised(view: &Value, urls: &[String]) -> BTreeMap<u64, usize> {
    let mut matched = BTreeMap::new();
    for node in view["nodes"].as_array().map_or(&[][..], Vec::as_slice) {
        let (Some(id), Some(http)) = (node["id"].as_u64(), node["http"].as_str()) else {
            continue;
        };
        let http = http.trim_end_matches('/');
        if let Some(index) = urls.iter().position(|url| url.trim_end_matches('/') == http) {
            matched.insert(id, index);
        }
    }
    matched
}

/// The URL of every node id: a URL that answers /v1/cluster is the node it says it is
/// (`"node"`); one that does not is matched by the address the others advertise for it; one
/// still unmatched is taken to be node N when it is the N-th URL and no other URL is node N
/// (as in a local cluster, whose nodes are started in order).
pub async fn node_urls(client: &reqwest::Client, urls: &[String]) -> BTreeMap<u64, String> {
    let mut views = Vec::new();
    for url in urls {
        let view = match client.get(format!("{url}/v1/cluster")).send().await {
            Ok(response) => response.json::<Value>().await.ok(),
            Err(_) => None,
        };
        views.push(view);
    }
    assign_node_urls(&views, urls)
}

/// `node_urls` on the views already read (`views[i]` is what `urls[i]` answered, if anything).
fn assign_node_urls(views: &[Option<Value>], urls: &[String]) -> BTreeMap<u64, String> {
    let mut node_of: Vec<Option<u64>> = views.iter().map(|view| view.as_ref().and_then(|view| view["node"].as_u64())).collect();
    node_of.resize(urls.len(), None);
    for view in views.iter().flatten() {
        for (id, index) in match_advertised(view, urls) {
            if node_of[index].is_none() && !node_of.contains(&Some(id)) {
                node_of[index] = Some(id);
            }
        }
    }
    for index in 0..node_of.len() {
        let position = u64::try_from(index + 1).expect("few urls");
        if node_of[index].is_none() && !node_of.contains(&Some(position)) {
            node_of[index] = Some(position);
        }
    }
    node_of.iter().zip(urls).filter_map(|(id, url)| id.map(|id| (id, url.clone()))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Amount text round-trips, signs and padding included.
    #[test]
    fn cents_round_trip() {
        for minor in [0, 5, 1234, -1230, 1_000_000_000] {
            assert_eq!(parse_cents(&cents(minor)), Some(minor));
        }
        assert_eq!(cents(5), "0.05");
        assert_eq!(parse_cents("12"), None);
    }

    /// Only 201 is posted, only a non-retryable 4xx is final; a 5xx without an error code (a
    /// proxy's 502) and a pending 202 are unknown outcomes.
    #[test]
    fn classify_follows_the_api_retry_rule() {
        let error = |code: &str| serde_json::json!({ "error": { "code": code } });
        assert_eq!(classify(201, &Value::Null), Answer::Posted);
        assert_eq!(classify(409, &error("insufficient_funds")), Answer::Final("insufficient_funds".to_string()));
        assert_eq!(classify(404, &Value::Null), Answer::Final("http_404".to_string()));
        assert_eq!(classify(429, &error("overloaded")), Answer::Retry("overloaded".to_string()));
        assert_eq!(classify(408, &Value::Null), Answer::Retry("http_408".to_string()));
        assert_eq!(classify(503, &error("unavailable")), Answer::Retry("unavailable".to_string()));
        assert_eq!(classify(502, &Value::Null), Answer::Retry("http_502".to_string()));
        assert_eq!(classify(202, &Value::Null), Answer::Retry("http_202".to_string()));
    }

    /// Node ids follow what the nodes say about themselves and advertise, not the order of the
    /// URLs; a URL nobody identifies falls back to its position.
    #[test]
    fn node_urls_follow_the_cluster_view_not_the_url_order() {
        let urls: Vec<String> = ["http://c:3", "http://a:1", "http://b:2"].iter().map(|url| url.to_string()).collect();
        let nodes = json!([{ "id": 1, "http": "http://a:1" }, { "id": 2, "http": "http://b:2/" }, { "id": 3, "http": "http://c:3" }]);
        let view = |node: u64| Some(json!({ "node": node, "nodes": nodes }));
        let expected: BTreeMap<u64, String> =
            [(1, "http://a:1"), (2, "http://b:2"), (3, "http://c:3")].iter().map(|(id, url)| (*id, url.to_string())).collect();
        // Every node answers for itself.
        assert_eq!(assign_node_urls(&[view(3), view(1), view(2)], &urls), expected);
        // c is down: the others' views name it by its advertised address.
        assert_eq!(assign_node_urls(&[None, view(1), view(2)], &urls), expected);
        // Nothing advertised and nobody answers: position.
        let by_position: BTreeMap<u64, String> = urls.iter().enumerate().map(|(index, url)| (index as u64 + 1, url.clone())).collect();
        assert_eq!(assign_node_urls(&[None, None, None], &urls), by_position);
        assert_eq!(match_advertised(&json!({ "nodes": nodes }), &urls), [(1, 1), (2, 2), (3, 0)].into_iter().collect());
    }
}
