//! The verification step (the operations guide: payment verification; PBOC daily caps by
//! verification strength). A transfer from a customer's CNY account above the limits'
//! `verification_threshold`, or from a customer who asked to verify every payment, is stored
//! `RequiresVerification` with a `Challenge` beside it (kind `d`) and an expiry-index entry
//! (kind `C`): nothing moves yet. The payer proves it with the methods the challenge names —
//! the payment password (when the customer set one) and a one-time code — through the edge,
//! which checks the proofs against the stored hashes (never in clear here) and proposes the
//! attempt's result. A passed attempt runs the transfer's ordinary checks and effects at that
//! point (funds, stops, limits, then posted / pending / rejected), within the daily cap of its
//! verification strength (two factors: `daily_two_factor`, one: `daily_single_factor`); a failed
//! one is counted, and the transfer is rejected `verification_failed` after
//! `VERIFY_ATTEMPTS_MAX`; one not verified within `VERIFY_WINDOW_MS` is rejected
//! `verification_expired` by the same log-driven sweep that expires holds.

use super::customers::SealedPii;
use super::{keys, Ledger, RejectCode, TransferCmd, TransferOutcome, TransferRecord, TransferStatus};
use crate::ids::TransferId;
use serde::{Deserialize, Serialize};

/// Failed attempts a challenge takes before its transfer is rejected.
pub const VERIFY_ATTEMPTS_MAX: u32 = 5;
/// How long a transfer waits for its verification: 15 minutes.
pub const VERIFY_WINDOW_MS: u64 = 15 * 60_000;
/// Wrong payment passwords in a row (across transfers) that lock a customer's password.
pub const PASSWORD_FAILURES_MAX: u32 = 5;
/// PBKDF2 rounds at most (a stored hash naming more is refused as input).
pub const PASSWORD_ITERATIONS_MAX: u32 = 10_000_000;

/// A payment password as stored: PBKDF2-HMAC-SHA256 of it under a random salt, by the edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordHash {
    pub salt: [u8; 16],
    pub iterations: u32,
    pub hash: [u8; 32],
}

/// A one-time code as stored: its salted SHA-256 (what a proof is checked against) and the
/// code sealed under the PII key for the delivery service (`GET /v1/transfers/{id}/verification`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtpHash {
    pub salt: [u8; 16],
    pub hash: [u8; 32],
    pub sealed: SealedPii,
}

/// A way to prove a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Factor {
    PaymentPassword,
    OneTimeCode,
}

impl Factor {
    pub fn as_str(&self) -> &'static str {
        match self {
            Factor::PaymentPassword => "payment_password",
            Factor::OneTimeCode => "otp",
        }
    }
}

/// What a transfer awaiting verification asks for (kind `d`, by transfer id, on the payer's
/// shard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    pub methods: Vec<Factor>,
    pub expires_at_ms: u64,
    pub failed_attempts: u32,
    /// The code issued last (a new one replaces it).
    pub otp: Option<OtpHash>,
    /// Passed, failed for good or expired: the transfer's status says which.
    pub closed: bool,
}

/// The verification commands, all on the payer's shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VerifyCmd {
    /// The edge issued a one-time code for a transfer awaiting verification.
    IssueOtp { id: TransferId, otp: Box<OtpHash> },
    /// The edge checked the proofs of an attempt against the stored hashes: all right
    /// (`passed`), and whether the payment password was wrong (counted on the customer).
    Attempt { id: TransferId, passed: bool, password_wrong: bool },
}

impl VerifyCmd {
    pub fn id(&self) -> &TransferId {
        match self {
            VerifyCmd::IssueOtp { id, .. } | VerifyCmd::Attempt { id, .. } => id,
        }
    }
}

/// A challenge with what the edge needs to check an attempt (`Request::ReadChallenge`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeReport {
    pub transfer: super::TransferView,
    pub challenge: Challenge,
    pub password: Option<PasswordHash>,
    /// The customer's password is locked by wrong attempts: every attempt fails.
    pub password_locked: bool,
}

fn challenge_key(ledger: &Ledger, id: &TransferId) -> crate::store::Key {
    keys::transfer(ledger.shard, ledger.generation, keys::CHALLENGE, id)
}

fn expiry_key(ledger: &Ledger, at_ms: u64, id: &TransferId) -> crate::store::Key {
    let mut rest = at_ms.to_be_bytes().to_vec();
    rest.extend_from_slice(id.as_str().as_bytes());
    keys::key(ledger.shard, ledger.generation, keys::CHALLENGE_EXPIRY, &rest)
}

impl Ledger {
    /// The factors a debit must be proved with before it runs, if any: a customer's CNY account
    /// paying above the threshold, or a customer who verifies every payment. Two factors when
    /// the customer has a payment password, else the one-time code alone.
    pub(super) fn verification_needed(&self, transfer: &TransferCmd) -> Option<Vec<Factor>> {
        let customer = super::customer_of(&transfer.from)?;
        if transfer.currency.code() != super::RISK_CURRENCY {
            return None;
        }
        let record = self.customer(&customer)?;
        let threshold = self.risk_limits.verification_threshold;
        let above = threshold > 0 && transfer.amount > threshold;
        if !above && !record.always_verify {
            return None;
        }
        Some(if record.password.is_some() { vec![Factor::PaymentPassword, Factor::OneTimeCode] } else { vec![Factor::OneTimeCode] })
    }

    /// Stores the challenge of a transfer just recorded `RequiresVerification`.
    pub(super) fn open_challenge(&mut self, now_ms: u64, id: &TransferId, methods: Vec<Factor>) {
        let expires_at_ms = now_ms.saturating_add(VERIFY_WINDOW_MS);
        let challenge = Challenge { methods, expires_at_ms, failed_attempts: 0, otp: None, closed: false };
        self.write(challenge_key(self, id), &challenge);
        self.overlay.insert(expiry_key(self, expires_at_ms, id), Some(Vec::new()));
    }

    pub fn challenge(&self, id: &TransferId) -> Option<Challenge> {
        self.read(&challenge_key(self, id))
    }

    /// A transfer awaiting verification with its challenge and its payer's password hash.
    pub fn challenge_report(&self, id: &TransferId) -> Option<ChallengeReport> {
        let challenge = self.challenge(id)?;
        let transfer = self.transfer_view(id)?;
        let customer = super::customer_of(&transfer.from).and_then(|customer| self.customer(&customer));
        let password_locked = customer.as_ref().is_some_and(|record| record.password_failures >= PASSWORD_FAILURES_MAX);
        let password = customer.and_then(|record| record.password);
        Some(ChallengeReport { transfer, challenge, password, password_locked })
    }

    pub(super) fn verify_command(&mut self, now_ms: u64, command: &VerifyCmd) -> TransferOutcome {
        let id = command.id();
        let (Some(record), Some(mut challenge)) = (self.transfer(id), self.challenge(id)) else {
            return TransferOutcome::Refused(RejectCode::NotAwaitingVerification);
        };
        if record.status != TransferStatus::RequiresVerification || challenge.closed {
            return TransferOutcome::Replayed(record.status);
        }
        if now_ms >= challenge.expires_at_ms {
            let status = self.close_challenge(now_ms, record, challenge, TransferStatus::Rejected(RejectCode::VerificationExpired));
            return TransferOutcome::Recorded(status);
        }
        match command {
            VerifyCmd::IssueOtp { otp, .. } => {
                if otp.sealed.check().is_err() {
                    return TransferOutcome::Refused(RejectCode::NotAwaitingVerification);
                }
                challenge.otp = Some(otp.as_ref().clone());
                self.write(challenge_key(self, id), &challenge);
                TransferOutcome::Recorded(TransferStatus::RequiresVerification)
            }
            VerifyCmd::Attempt { passed, password_wrong, .. } => {
                let by_password = challenge.methods.contains(&Factor::PaymentPassword);
                let customer = super::customer_of(&record.from).and_then(|id| Some((self.customer(&id)?, id)));
                let mut passed = *passed;
                if let Some((mut customer, id)) = customer.filter(|_| by_password) {
                    // Wrong passwords count across transfers; a locked password fails every attempt.
                    passed &= customer.password_failures < PASSWORD_FAILURES_MAX;
                    let failures = if *password_wrong {
                        customer.password_failures.saturating_add(1)
                    } else if passed {
                        0
                    } else {
                        customer.password_failures
                    };
                    if failures != customer.password_failures {
                        customer.password_failures = failures;
                        self.write(super::customers::customer_key(self, &id), &customer);
                    }
                }
                if passed {
                    self.verification_passed(now_ms, record, challenge)
                } else {
                    self.verification_failed(now_ms, record, challenge)
                }
            }
        }
    }

    fn verification_failed(&mut self, now_ms: u64, record: TransferRecord, mut challenge: Challenge) -> TransferOutcome {
        challenge.failed_attempts += 1;
        if challenge.failed_attempts >= VERIFY_ATTEMPTS_MAX {
            let status = self.close_challenge(now_ms, record, challenge, TransferStatus::Rejected(RejectCode::VerificationFailed));
            return TransferOutcome::Recorded(status);
        }
        self.write(challenge_key(self, &record.id), &challenge);
        TransferOutcome::Recorded(TransferStatus::RequiresVerification)
    }

    /// A passed attempt: the transfer runs now with its ordinary checks, within the daily cap
    /// of the verification's strength. Counted (and checked) as of the transfer's creation, the
    /// day a release would give it back to.
    fn verification_passed(&mut self, now_ms: u64, mut record: TransferRecord, mut challenge: Challenge) -> TransferOutcome {
        let transfer = TransferCmd {
            id: record.id.clone(),
            from: record.from.clone(),
            to: record.to.clone(),
            amount: record.amount,
            currency: record.currency,
        };
        let counted_at_ms = record.created_at_ms;
        let status = match self.within_daily_cap(&transfer, challenge.methods.len(), counted_at_ms) {
            Err(code) => TransferStatus::Rejected(code),
            Ok(()) => self.decide(counted_at_ms, &transfer, record.cross_shard, false),
        };
        self.apply_decision(counted_at_ms, &transfer, &status);
        challenge.closed = true;
        self.overlay.insert(expiry_key(self, challenge.expires_at_ms, &record.id), None);
        self.write(challenge_key(self, &record.id), &challenge);
        record.status = status.clone();
        if !matches!(status, TransferStatus::Pending) {
            record.finalized_at_ms = Some(now_ms);
        }
        self.write(keys::transfer(self.shard, self.generation, keys::TRANSFER, &record.id), &record);
        TransferOutcome::Recorded(status)
    }

    /// The daily cap of a debit verified with `factors` factors, against what its customer paid
    /// today.
    fn within_daily_cap(&self, transfer: &TransferCmd, factors: usize, now_ms: u64) -> Result<(), RejectCode> {
        let Some(customer) = super::customer_of(&transfer.from) else {
            return Ok(());
        };
        let limits = &self.risk_limits;
        let cap = if factors >= 2 { limits.daily_two_factor } else { limits.daily_single_factor };
        let (day, year) = limits.period_of(now_ms);
        let spend = self.read::<super::CustomerSpend>(&super::risk::spend_key(self, &customer)).unwrap_or_default().as_of(day, year);
        if spend.day_spent.checked_add(transfer.amount).is_none_or(|total| total > cap) {
            return Err(RejectCode::KycDailyLimit);
        }
        Ok(())
    }

    fn close_challenge(
        &mut self,
        now_ms: u64,
        mut record: TransferRecord,
        mut challenge: Challenge,
        status: TransferStatus,
    ) -> TransferStatus {
        challenge.closed = true;
        self.overlay.insert(expiry_key(self, challenge.expires_at_ms, &record.id), None);
        self.write(challenge_key(self, &record.id), &challenge);
        record.status = status.clone();
        record.finalized_at_ms = Some(now_ms);
        self.write(keys::transfer(self.shard, self.generation, keys::TRANSFER, &record.id), &record);
        status
    }

    /// The earliest expiry among open challenges (the leader's sweep waits for it too).
    pub fn next_challenge_expiry_ms(&self) -> Option<u64> {
        let (start, end) = keys::kind_range(self.shard, self.generation, keys::CHALLENGE_EXPIRY);
        let first = self.scan_keys_merged(&start, &end, 1).into_iter().next()?;
        let bytes = first.get(start.len()..start.len() + 8)?;
        Some(u64::from_be_bytes(bytes.try_into().ok()?))
    }

    /// Rejects the transfers whose verification window ended before `now_ms` (part of the
    /// expiry sweep), at most `limit`, oldest first.
    pub(super) fn expire_challenges(&mut self, now_ms: u64, limit: usize) -> usize {
        let (start, _) = keys::kind_range(self.shard, self.generation, keys::CHALLENGE_EXPIRY);
        let end = keys::key(self.shard, self.generation, keys::CHALLENGE_EXPIRY, &now_ms.saturating_add(1).to_be_bytes());
        let mut expired = 0;
        for key in self.scan_keys_merged(&start, &end, limit) {
            let id =
                key.get(start.len() + 8..).and_then(|bytes| std::str::from_utf8(bytes).ok()).and_then(|text| TransferId::new(text).ok());
            let found = id.as_ref().and_then(|id| Some((self.transfer(id)?, self.challenge(id)?)));
            let Some((record, challenge)) = found.filter(|(record, _)| record.status == TransferStatus::RequiresVerification) else {
                self.damaged("a challenge expiry names no transfer awaiting verification".to_string());
                continue;
            };
            self.close_challenge(now_ms, record, challenge, TransferStatus::Rejected(RejectCode::VerificationExpired));
            expired += 1;
        }
        expired
    }

    /// Every transfer from an account of a customer who verifies every payment that moved money
    /// (posted or pending) passed a verification first (the simulator's `verified_before_paid`,
    /// whose customer c1 asks for it from the start; refunds are never asked). Not part of
    /// `verify`: a customer may turn the setting on after paying.
    pub fn verify_always_verified(&self) -> Result<(), String> {
        for record in self.transfers() {
            if !matches!(record.status, TransferStatus::Posted | TransferStatus::Pending) {
                continue;
            }
            let always = super::customer_of(&record.from).and_then(|customer| self.customer(&customer)).is_some_and(|c| c.always_verify);
            if always && self.refund_of(&record.id).is_none() && !self.challenge(&record.id).is_some_and(|challenge| challenge.closed) {
                return Err(format!("{} from {} moved without a verification", record.id, record.from));
            }
        }
        Ok(())
    }

    /// Every open challenge is indexed for its expiry and its transfer awaits verification;
    /// every transfer awaiting verification has an open challenge (`verify`).
    pub(super) fn verify_challenges(&self) -> Result<(), String> {
        let (start, end) = keys::kind_range(self.shard, self.generation, keys::CHALLENGE);
        for (key, value) in self.store.scan(&start, &end, usize::MAX, false) {
            let challenge: Challenge = super::decode_value(&value).map_err(|error| format!("a challenge does not decode: {error}"))?;
            let id =
                std::str::from_utf8(&key[start.len()..]).ok().and_then(|text| TransferId::new(text).ok()).ok_or("a bad challenge key")?;
            let record = self.transfer(&id).ok_or_else(|| format!("challenge {id} has no transfer"))?;
            let indexed = self.store.get(&expiry_key(self, challenge.expires_at_ms, &id)).is_some();
            let awaiting = record.status == TransferStatus::RequiresVerification;
            if awaiting == challenge.closed || indexed != awaiting {
                return Err(format!("challenge {id}: closed {}, indexed {indexed}, transfer {}", challenge.closed, record.status.as_str()));
            }
        }
        Ok(())
    }
}

/// A stored value of a verification kind decodes as its kind says (`Ledger::check_record`).
pub(super) fn check_verification_record(kind: u8, value: &[u8]) -> Option<Result<(), String>> {
    Some(match kind {
        keys::CHALLENGE => super::decode_value::<Challenge>(value).map(|_| ()).map_err(|error| error.to_string()),
        keys::CHALLENGE_EXPIRY if value.is_empty() => Ok(()),
        keys::CHALLENGE_EXPIRY => Err("a challenge expiry marker with a value".to_string()),
        _ => return None,
    })
}
