//! The one error shape clients see: `{"error": {"code", "message", "retryable", ...}}` with a
//! stable snake_case code. A 4xx other than 408/429 means "definitely not applied"; 5xx and
//! 429 mean "retry with the same id".

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::{json, Value};
use settle_cluster::ledger::RejectCode;
use std::fmt;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<&'static str>,
    /// Extra members of the error object (the stored transfer of a rejection, which limit
    /// refused it).
    pub detail: Vec<(&'static str, Value)>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), field: None, detail: Vec::new() }
    }

    pub fn invalid_request(field: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { field: Some(field), ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message) }
    }

    pub fn invalid_body(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn invalid_amount(message: impl Into<String>) -> ApiError {
        ApiError { field: Some("amount"), ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_amount", message) }
    }

    pub fn unknown_currency(code: &str) -> ApiError {
        let message = format!("unknown currency {code:?}; use an ISO 4217 code such as USD, EUR, CNY, JPY");
        ApiError { field: Some("currency"), ..ApiError::new(StatusCode::BAD_REQUEST, "unknown_currency", message) }
    }

    pub fn account_not_found(id: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "account_not_found", format!("account {id} does not exist"))
    }

    pub fn transfer_not_found(id: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "transfer_not_found", format!("transfer {id} does not exist"))
    }

    pub fn account_exists(id: &str) -> ApiError {
        let message = format!("account {id} exists with a different currency or kind");
        ApiError::new(StatusCode::CONFLICT, "account_exists", message)
    }

    /// A rejection from the ledger (stored or not), with the HTTP status it maps to; a limit's
    /// refusal names the limit (`details.limit`; the handler adds what remains when it can).
    pub fn rejected(code: RejectCode) -> ApiError {
        let status = StatusCode::from_u16(code.http_status()).expect("valid status");
        let error = ApiError::new(status, code.code(), code.message());
        match settle_cluster::ledger::limit_name(code) {
            Some(limit) => error.with_detail("details", json!({ "limit": limit })),
            None => error,
        }
    }

    pub fn unavailable() -> ApiError {
        let message = "no shard leader answered in time; the outcome is unknown: retry with the same id";
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    pub fn overloaded() -> ApiError {
        let message = "this node has too much in flight; nothing was started: retry later";
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", message)
    }

    pub fn not_found(path: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no such endpoint: {path}"))
    }

    pub fn with_detail(mut self, key: &'static str, value: Value) -> ApiError {
        self.detail.retain(|(existing, _)| *existing != key);
        self.detail.push((key, value));
        self
    }

    /// Whether retrying the same request can succeed.
    pub fn retryable(&self) -> bool {
        matches!(self.status.as_u16(), 408 | 429 | 500..=599)
    }

    pub fn body(&self) -> Value {
        let mut error = json!({ "code": self.code, "message": self.message, "retryable": self.retryable() });
        if let Some(field) = self.field {
            error["field"] = json!(field);
        }
        for (key, value) in &self.detail {
            error[*key] = value.clone();
        }
        json!({ "error": error })
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if matches!(self.status.as_u16(), 429 | 503) {
            response.insert_header(("Retry-After", "1"));
        }
        let mut response = response.json(self.body());
        response.extensions_mut().insert(super::auth::AnsweredCode(self.code));
        response
    }
}
