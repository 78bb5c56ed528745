//! What the bench and the drills share as clients of a cluster: USD amounts as text, and reads
//! that wait out failovers (bounded) by trying every node in turn.

use anyhow::{bail, Context};
use rust_decimal::Decimal;
use serde_json::Value;
use settle_cluster::money::Currency;
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

/// A transfer's final status: "posted", "rejected" or "absent" (waits while it is pending).
pub async fn final_status(client: &reqwest::Client, urls: &[String], id: &str, payer: &str) -> anyhow::Result<String> {
    let deadline = Instant::now() + READ_FOR;
    let mut turn = 0;
    loop {
        let url = &urls[turn % urls.len()];
        turn += 1;
        if let Ok(response) = client.get(format!("{url}/v1/transfers/{id}?from={payer}")).send().await {
            match response.status().as_u16() {
                404 => return Ok("absent".to_string()),
                200 => {
                    let body: Value = response.json().await?;
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
}
