//! What one answer to a transfer tells a client: the API's rule that only a non-retryable 4xx is
//! final, and that 408, 429 and every 5xx leave the outcome unknown.
//!
//! Answers are read as raw JSON rather than as `api` types: an answer may come from a proxy, or
//! carry no body at all, and must still be classified.

use serde_json::Value;

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Only 201 is posted, only a non-retryable 4xx is final; a 5xx without an error code (a
    /// proxy's 502) and a pending 202 are unknown outcomes.
    #[test]
    fn classify_follows_the_api_retry_rule() {
        let error = |code: &str| json!({ "error": { "code": code } });
        assert_eq!(classify(201, &Value::Null), Answer::Posted);
        assert_eq!(classify(409, &error("insufficient_funds")), Answer::Final("insufficient_funds".to_string()));
        assert_eq!(classify(404, &Value::Null), Answer::Final("http_404".to_string()));
        assert_eq!(classify(429, &error("overloaded")), Answer::Retry("overloaded".to_string()));
        assert_eq!(classify(408, &Value::Null), Answer::Retry("http_408".to_string()));
        assert_eq!(classify(503, &error("unavailable")), Answer::Retry("unavailable".to_string()));
        assert_eq!(classify(502, &Value::Null), Answer::Retry("http_502".to_string()));
        assert_eq!(classify(202, &Value::Null), Answer::Retry("http_202".to_string()));
    }

    /// A batch item is classified by its own status; one without a status is unknown.
    #[test]
    fn batch_items_carry_their_own_status() {
        assert_eq!(classify_item(&json!({ "status": 201, "transfer": {} })), Answer::Posted);
        let refused = json!({ "status": 422, "error": { "code": "insufficient_funds" } });
        assert_eq!(classify_item(&refused), Answer::Final("insufficient_funds".to_string()));
        assert_eq!(classify_item(&json!({ "transfer": {} })), Answer::Retry("internal".to_string()));
    }
}
