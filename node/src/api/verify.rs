//! The verification step at the edge (`ledger/verification.rs` has the rules): a transfer the
//! ledger stored `requires_verification` is answered 202 with `next_action`, after this node
//! issued its one-time code (generated here, stored as a salted PBKDF2 hash and sealed under the
//! PII key for the delivery service); `POST /v1/transfers/{id}/verify` checks the proofs here
//! against the stored hashes and proposes the attempt's result; `GET
//! /v1/transfers/{id}/verification` is what a delivery service (SMS gateway: out of scope)
//! reads to send the code, with an operator key (audited).

use super::auth::{AuditTargets, Principal};
use super::body;
use super::errors::ApiError;
use super::{call_one, transfer_outcome, types, unexpected, AppState, RequestId};
use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{json, Value};
use settle_client::api;
use settle_cluster::ids::{AccountId, TransferId};
use settle_cluster::ledger::{ChallengeReport, Factor, OtpHash, PasswordHash, TransferStatus, VerifyCmd, VERIFY_ATTEMPTS_MAX};
use settle_cluster::message::{Reply, Request, TransferResult};
use std::num::NonZeroU32;

type Result<T> = std::result::Result<T, ApiError>;

/// PBKDF2 rounds of a payment password (OWASP's floor for PBKDF2-HMAC-SHA256 is 600,000; a
/// payment password is short, so the attempts lock is what protects it, not the hash's cost).
const PASSWORD_ROUNDS: u32 = 100_000;
/// A one-time code's hash needs no cost: it lives minutes and five guesses at most.
const OTP_ROUNDS: u32 = 1_000;

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    SystemRandom::new().fill(&mut bytes).expect("the system's random source works");
    bytes
}

fn derive(rounds: u32, salt: &[u8; 16], secret: &str) -> [u8; 32] {
    let mut hash = [0u8; 32];
    let rounds = NonZeroU32::new(rounds).expect("rounds are positive");
    ring::pbkdf2::derive(ring::pbkdf2::PBKDF2_HMAC_SHA256, rounds, salt, secret.as_bytes(), &mut hash);
    hash
}

fn matches(rounds: u32, salt: &[u8; 16], secret: &str, hash: &[u8; 32]) -> bool {
    let Some(rounds) = NonZeroU32::new(rounds) else {
        return false;
    };
    ring::pbkdf2::verify(ring::pbkdf2::PBKDF2_HMAC_SHA256, rounds, salt, secret.as_bytes(), hash).is_ok()
}

/// A payment password's stored form.
pub fn hash_password(password: &str) -> PasswordHash {
    let salt = random::<16>();
    PasswordHash { salt, iterations: PASSWORD_ROUNDS, hash: derive(PASSWORD_ROUNDS, &salt, password) }
}

async fn challenge(state: &AppState, request_id: &RequestId, id: &TransferId, payer: &AccountId) -> Result<ChallengeReport> {
    match state.call_with(request_id, Request::ReadChallenge { id: id.clone(), payer: payer.clone() }).await? {
        Reply::Challenge(Some(report)) => Ok(*report),
        Reply::Challenge(None) => Err(ApiError::rejected(settle_cluster::ledger::RejectCode::NotAwaitingVerification)),
        other => Err(unexpected(other)),
    }
}

/// Issues a new one-time code for a transfer awaiting verification: six random digits, stored
/// hashed and sealed for delivery. False when the cluster did not take it (the client asks for
/// another by `POST /v1/transfers/{id}/verify {"resend_otp": true}`).
async fn issue_otp(state: &AppState, request_id: &RequestId, id: &TransferId, payer: &AccountId) -> Result<bool> {
    let key = state.pii.as_deref().ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "pii_key_not_configured", "this node cannot seal one-time codes (no pii_key_file)")
    })?;
    let number = u32::from_be_bytes(random::<4>()) % 1_000_000;
    let code = format!("{number:06}");
    let salt = random::<16>();
    let customer =
        settle_cluster::ledger::customer_of(payer).ok_or_else(|| ApiError::invalid_body("the payer is not a customer's account"))?;
    let otp = OtpHash { salt, hash: derive(OTP_ROUNDS, &salt, &code), sealed: key.seal(&customer, code.as_bytes()) };
    let command = VerifyCmd::IssueOtp { id: id.clone(), otp: Box::new(otp) };
    Ok(matches!(
        call_one(state, request_id, Request::VerifyTransfer { payer: payer.clone(), command }).await?,
        TransferResult::Done(view) if view.status == TransferStatus::RequiresVerification
    ))
}

/// The `next_action` of a transfer awaiting verification.
fn next_action(report: &ChallengeReport) -> api::NextAction {
    api::NextAction {
        attempts_remaining: VERIFY_ATTEMPTS_MAX.saturating_sub(report.challenge.failed_attempts),
        expires_at: types::rfc3339(report.challenge.expires_at_ms),
        methods: report.challenge.methods.iter().map(|factor| factor.as_str().to_string()).collect(),
        kind: "verify_payment".to_string(),
        url: format!("/v1/transfers/{}/verify", report.transfer.id),
    }
}

/// For `POST /v1/transfers`: a transfer the ledger holds for verification gets its one-time
/// code issued and its `next_action`.
pub async fn challenge_answer(state: &AppState, request_id: &RequestId, body: &mut api::TransferView, payer: &AccountId) -> Result<()> {
    let id = types::transfer_id(&body.id, "id")?;
    let mut report = challenge(state, request_id, &id, payer).await?;
    if report.challenge.methods.contains(&Factor::OneTimeCode) && report.challenge.otp.is_none() {
        issue_otp(state, request_id, &id, payer).await?;
        report = challenge(state, request_id, &id, payer).await?;
    }
    body.next_action = Some(next_action(&report));
    Ok(())
}

async fn payer_of(state: &AppState, request_id: &RequestId, principal: &Principal, id: &TransferId) -> Result<AccountId> {
    let view = match state.call_with(request_id, Request::ReadTransfer { id: id.clone(), payer: None }).await? {
        Reply::Transfer(Some(view)) => view,
        Reply::Transfer(None) => return Err(ApiError::transfer_not_found(id.as_str())),
        other => return Err(unexpected(other)),
    };
    principal.check_account(&view.from)?;
    Ok(view.from)
}

/// `POST /v1/transfers/{id}/verify {"payment_password"?, "otp"?, "resend_otp"?}`: the payer
/// proves a transfer awaiting verification with every method its `next_action` names. Right:
/// the transfer runs now (201 posted, 202 pending, or its rejection, e.g. `limit_exceeded` with
/// `details.limit: "daily_by_verification"`). Wrong or missing proofs: 422
/// `verification_incorrect` with `attempts_remaining`, and after the fifth the stored rejection
/// `verification_failed`. Too late: the stored rejection `verification_expired`. `resend_otp`
/// issues a new code instead (202 with `next_action`). 409 `transfer_not_awaiting_verification`
/// for any other transfer.
pub async fn verify(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    request_id: web::ReqData<RequestId>,
    principal: web::ReqData<Principal>,
) -> Result<HttpResponse> {
    let id = types::transfer_id(&path, "id")?;
    let object = state.read_object(&request, payload).await?;
    body::only_fields(&object, &["payment_password", "otp", "resend_otp"])?;
    request.extensions_mut().insert(AuditTargets(vec![id.to_string()]));
    let payer = payer_of(&state, &request_id, &principal, &id).await?;
    let report = challenge(&state, &request_id, &id, &payer).await?;
    if report.transfer.status != TransferStatus::RequiresVerification {
        // Already decided: answer what it became, as a retry of the transfer would.
        let (status, view) = transfer_outcome(&state.metrics, TransferResult::Done(report.transfer))?;
        return Ok(HttpResponse::build(status).json(view));
    }
    if object.get("resend_otp") == Some(&Value::Bool(true)) {
        issue_otp(&state, &request_id, &id, &payer).await?;
        let report = challenge(&state, &request_id, &id, &payer).await?;
        let mut body = types::transfer_json(&report.transfer);
        body.next_action = Some(next_action(&report));
        return Ok(HttpResponse::Accepted().json(body));
    }
    if report.password_locked && report.challenge.methods.contains(&Factor::PaymentPassword) {
        let message = "the payment password is locked after too many wrong attempts: an operator sets a new one";
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "payment_password_locked", message));
    }
    let text = |field: &'static str| object.get(field).and_then(Value::as_str).map(str::to_string);
    let (password, otp) = (text("payment_password"), text("otp"));
    let challenge_report = report.clone();
    // Every factor is checked (no early exit that would time a right password), off the
    // HTTP workers: PBKDF2 takes a while by design.
    let checks = web::block(move || {
        let report = challenge_report;
        let password_ok = match (password.as_deref(), &report.password) {
            (Some(given), Some(stored)) => matches(stored.iterations, &stored.salt, given, &stored.hash),
            _ => false,
        };
        let otp_ok = match (otp.as_deref(), &report.challenge.otp) {
            (Some(given), Some(stored)) => matches(OTP_ROUNDS, &stored.salt, given, &stored.hash),
            _ => false,
        };
        (password.is_some(), password_ok, otp_ok)
    })
    .await
    .map_err(|_| ApiError::unavailable())?;
    let (password_given, password_ok, otp_ok) = checks;
    let by_password = report.challenge.methods.contains(&Factor::PaymentPassword);
    let by_code = report.challenge.methods.contains(&Factor::OneTimeCode);
    let passed = (!by_password || password_ok) & (!by_code || otp_ok);
    let password_wrong = by_password && password_given && !password_ok;
    let command = VerifyCmd::Attempt { id: id.clone(), passed, password_wrong };
    let result = call_one(&state, &request_id, Request::VerifyTransfer { payer: payer.clone(), command }).await?;
    if let TransferResult::Done(view) = &result {
        if view.status == TransferStatus::RequiresVerification {
            let report = challenge(&state, &request_id, &id, &payer).await?;
            let remaining = VERIFY_ATTEMPTS_MAX.saturating_sub(report.challenge.failed_attempts);
            let message = format!("a payment password or one-time code is wrong or missing; {remaining} attempts remain");
            return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "verification_incorrect", message)
                .with_detail("attempts_remaining", json!(remaining)));
        }
    }
    let (status, view) = transfer_outcome(&state.metrics, result)?;
    Ok(HttpResponse::build(status).json(view))
}

/// `GET /v1/transfers/{id}/verification`: the challenge of a transfer awaiting
/// verification, with its current one-time code in clear for the delivery service (admin and
/// operator keys only; every read is audited).
pub async fn show(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
    request_id: web::ReqData<RequestId>,
    principal: web::ReqData<Principal>,
) -> Result<HttpResponse> {
    let id = types::transfer_id(&path, "id")?;
    request.extensions_mut().insert(AuditTargets(vec![id.to_string()]));
    let payer = payer_of(&state, &request_id, &principal, &id).await?;
    let report = challenge(&state, &request_id, &id, &payer).await?;
    let code = match (&report.challenge.otp, state.pii.as_deref(), settle_cluster::ledger::customer_of(&payer)) {
        (Some(otp), Some(key), Some(customer)) => key.open(&customer, &otp.sealed).ok().and_then(|clear| String::from_utf8(clear).ok()),
        _ => None,
    };
    Ok(HttpResponse::Ok().json(json!({
        "transfer": report.transfer.id.as_str(),
        "payer": payer.as_str(),
        "status": report.transfer.status.as_str(),
        "methods": report.challenge.methods.iter().map(Factor::as_str).collect::<Vec<_>>(),
        "failed_attempts": report.challenge.failed_attempts,
        "expires_at": types::rfc3339(report.challenge.expires_at_ms),
        "otp": code,
    })))
}
