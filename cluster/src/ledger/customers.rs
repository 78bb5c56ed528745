//! Customers and their KYC class (the operations guide: user registration and identity
//! verification). A customer is a person or business; its accounts are named
//! `<customer>::<name>` and therefore live on the customer's shard (`placement::shard_of`), so
//! its risk limits are checked inside one Raft group (`risk.rs`).
//!
//! The core never sees personal data in clear: the edge seals the name and identity document
//! with AES-256-GCM under the node's PII key before proposing, so the log, the state store and
//! snapshots carry only ciphertext (`SealedPii`) plus a keyed fingerprint of the clear text
//! (`fingerprint`), which is what makes a registration idempotent when the same request is
//! sealed twice with different nonces.
//!
//! Identity checks are recorded one by one (`RecordVerification`, idempotent by its id); the
//! class follows from them (PBOC rules for payment accounts): class III after a face-to-face
//! check or five distinct non-face-to-face channels, class II after three, class I after one.
//! A customer with no check has no class, and its accounts cannot pay.

use super::{keys, Ledger};
use crate::ids::{CustomerId, VerificationId};
use crate::store::Key;
use serde::{Deserialize, Serialize};

/// The most ciphertext one customer's sealed personal data may hold.
pub const PII_SEALED_BYTES_MAX: usize = 4096;
/// Identity checks recorded per customer at most.
pub const VERIFICATIONS_MAX: usize = 32;
/// Free text (a check's reference, who did it, a key id) at most.
pub const CUSTOMER_TEXT_BYTES_MAX: usize = 256;

/// Personal data sealed by the edge: AES-256-GCM of the JSON of the clear fields, the customer
/// id as associated data, under the key named `key_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedPii {
    pub key_id: String,
    pub nonce: [u8; 12],
    pub ciphertext: Vec<u8>,
    /// HMAC-SHA256 of the clear text under a key derived from the PII key: equal for equal
    /// data, so a retried registration is recognised; says nothing of the data without the key.
    pub fingerprint: [u8; 32],
}

impl SealedPii {
    /// Bounds a sealed blob meets wherever it comes from.
    pub fn check(&self) -> Result<(), String> {
        if self.ciphertext.is_empty() || self.ciphertext.len() > PII_SEALED_BYTES_MAX {
            return Err(format!("sealed data is 1..={PII_SEALED_BYTES_MAX} bytes"));
        }
        if self.key_id.is_empty() || self.key_id.len() > CUSTOMER_TEXT_BYTES_MAX {
            return Err(format!("a key id is 1..={CUSTOMER_TEXT_BYTES_MAX} bytes"));
        }
        Ok(())
    }
}

/// Where an identity check was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// In person, documents seen (counter, video with a trained agent).
    FaceToFace,
    /// A bank card verified with its issuing bank.
    BankCard,
    /// The national identity database.
    IdDatabase,
    /// The mobile carrier's subscriber record.
    MobileCarrier,
    SocialInsurance,
    TaxRecord,
    CreditBureau,
    /// A utility account in the customer's name.
    Utility,
}

impl Channel {
    pub const ALL: [Channel; 8] = [
        Channel::FaceToFace,
        Channel::BankCard,
        Channel::IdDatabase,
        Channel::MobileCarrier,
        Channel::SocialInsurance,
        Channel::TaxRecord,
        Channel::CreditBureau,
        Channel::Utility,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Channel::FaceToFace => "face_to_face",
            Channel::BankCard => "bank_card",
            Channel::IdDatabase => "id_database",
            Channel::MobileCarrier => "mobile_carrier",
            Channel::SocialInsurance => "social_insurance",
            Channel::TaxRecord => "tax_record",
            Channel::CreditBureau => "credit_bureau",
            Channel::Utility => "utility",
        }
    }

    pub fn parse(name: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|channel| channel.as_str() == name)
    }
}

/// A customer's KYC class: what its accounts may pay (`risk.rs` holds the limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum KycClass {
    I,
    II,
    III,
}

impl KycClass {
    pub fn as_str(&self) -> &'static str {
        match self {
            KycClass::I => "I",
            KycClass::II => "II",
            KycClass::III => "III",
        }
    }
}

/// The class a set of checks earns: face-to-face → III; distinct non-face-to-face channels:
/// ≥ 5 → III, ≥ 3 → II, ≥ 1 → I; none → no class.
pub fn class_of(verifications: &[Verification]) -> Option<KycClass> {
    if verifications.iter().any(|check| check.channel == Channel::FaceToFace) {
        return Some(KycClass::III);
    }
    let channels: std::collections::BTreeSet<Channel> = verifications.iter().map(|check| check.channel).collect();
    match channels.len() {
        0 => None,
        1 | 2 => Some(KycClass::I),
        3 | 4 => Some(KycClass::II),
        _ => Some(KycClass::III),
    }
}

/// Registers a customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterCustomer {
    pub id: CustomerId,
    pub pii: SealedPii,
    /// Who registered it (the API key id).
    pub actor: String,
}

/// Records one identity check of a customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordVerification {
    pub customer: CustomerId,
    pub id: VerificationId,
    pub channel: Channel,
    /// The check's reference at whoever made it (the bank's answer id, the agent's case).
    pub reference: String,
    pub actor: String,
}

/// Sets a customer's payment password (its hash, made by the edge) and whether every payment
/// of its accounts asks for a verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetSecurity {
    pub customer: CustomerId,
    /// `None` keeps the password there is.
    pub password: Option<super::PasswordHash>,
    /// `None` keeps the setting there is.
    pub always_verify: Option<bool>,
    pub actor: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CustomerCmd {
    Register(RegisterCustomer),
    Verify(RecordVerification),
    SetSecurity(SetSecurity),
}

impl CustomerCmd {
    pub fn customer(&self) -> &CustomerId {
        match self {
            CustomerCmd::Register(register) => &register.id,
            CustomerCmd::Verify(verify) => &verify.customer,
            CustomerCmd::SetSecurity(security) => &security.customer,
        }
    }

    /// Bounds every customer command meets (the edge, a peer's leg, and the apply check them).
    pub fn check(&self) -> Result<(), String> {
        if !customer_id_usable(self.customer()) {
            return Err("a customer id neither contains \"::\" nor starts or ends with \":\"".to_string());
        }
        match self {
            CustomerCmd::Register(register) => {
                let pii = &register.pii;
                if pii.ciphertext.is_empty() || pii.ciphertext.len() > PII_SEALED_BYTES_MAX {
                    return Err(format!("sealed personal data is 1..={PII_SEALED_BYTES_MAX} bytes"));
                }
                if pii.key_id.is_empty() || pii.key_id.len() > CUSTOMER_TEXT_BYTES_MAX || register.actor.len() > CUSTOMER_TEXT_BYTES_MAX {
                    return Err(format!("key id and actor are at most {CUSTOMER_TEXT_BYTES_MAX} bytes"));
                }
                Ok(())
            }
            CustomerCmd::Verify(verify) => {
                if verify.reference.len() > CUSTOMER_TEXT_BYTES_MAX || verify.actor.len() > CUSTOMER_TEXT_BYTES_MAX {
                    return Err(format!("reference and actor are at most {CUSTOMER_TEXT_BYTES_MAX} bytes"));
                }
                Ok(())
            }
            CustomerCmd::SetSecurity(security) => {
                let rounds = security.password.as_ref().map_or(1, |password| password.iterations);
                if rounds == 0 || rounds > super::PASSWORD_ITERATIONS_MAX || security.actor.len() > CUSTOMER_TEXT_BYTES_MAX {
                    return Err("a password hash names 1..=10,000,000 rounds; actor at most 256 bytes".to_string());
                }
                Ok(())
            }
        }
    }
}

/// Whether an id can name a customer: the part of an account id before `::` must be the whole
/// customer id, so it neither contains `::` nor starts or ends with `:`.
pub fn customer_id_usable(id: &CustomerId) -> bool {
    let text = id.as_str();
    !text.contains(crate::ids::CUSTOMER_SEPARATOR) && !text.starts_with(':') && !text.ends_with(':')
}

/// One identity check as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    pub id: VerificationId,
    pub channel: Channel,
    pub reference: String,
    pub by: String,
    pub at_ms: u64,
}

/// A customer as stored (kind `m`, on the customer's shard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerRecord {
    pub id: CustomerId,
    pub pii: SealedPii,
    pub created_at_ms: u64,
    pub created_by: String,
    pub verifications: Vec<Verification>,
    /// The payment password's hash, once set (`verification.rs`).
    pub password: Option<super::PasswordHash>,
    /// Every payment of the customer's accounts asks for a verification.
    pub always_verify: bool,
    /// Wrong payment passwords in a row, across transfers; at `PASSWORD_FAILURES_MAX` the
    /// password is locked (every attempt fails) until an operator sets a new one.
    pub password_failures: u32,
}

impl CustomerRecord {
    pub fn class(&self) -> Option<KycClass> {
        class_of(&self.verifications)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CustomerOutcome {
    Registered(CustomerRecord),
    Verified(CustomerRecord),
    /// The payment password or the verification setting changed.
    Updated(CustomerRecord),
    /// Applied before (a retry): the customer as stored.
    Replayed(CustomerRecord),
    /// The id names another customer, or the check id another check: nothing changed.
    Conflict(CustomerRecord),
    CustomerNotFound,
    /// The customer has `VERIFICATIONS_MAX` checks already: nothing changed.
    TooManyVerifications,
    /// A bound broken, or the wrong shard: nothing changed.
    Invalid(String),
}

pub(super) fn customer_key(ledger: &Ledger, id: &CustomerId) -> Key {
    keys::key(ledger.shard, ledger.generation, keys::CUSTOMER, id.as_str().as_bytes())
}

impl Ledger {
    pub(super) fn customer_command(&mut self, now_ms: u64, command: &CustomerCmd) -> CustomerOutcome {
        if let Err(reason) = command.check() {
            return CustomerOutcome::Invalid(reason);
        }
        if crate::placement::customer_shard_of(command.customer(), self.shard_count) != self.shard {
            return CustomerOutcome::Invalid("the customer lives on another shard".to_string());
        }
        let existing = self.customer(command.customer());
        match command {
            CustomerCmd::Register(register) => {
                if let Some(existing) = existing {
                    return if existing.pii.fingerprint == register.pii.fingerprint {
                        CustomerOutcome::Replayed(existing)
                    } else {
                        CustomerOutcome::Conflict(existing)
                    };
                }
                let record = CustomerRecord {
                    id: register.id.clone(),
                    pii: register.pii.clone(),
                    created_at_ms: now_ms,
                    created_by: register.actor.clone(),
                    verifications: Vec::new(),
                    password: None,
                    always_verify: false,
                    password_failures: 0,
                };
                self.write(customer_key(self, &register.id), &record);
                CustomerOutcome::Registered(record)
            }
            CustomerCmd::Verify(verify) => {
                let Some(mut record) = existing else {
                    return CustomerOutcome::CustomerNotFound;
                };
                if let Some(check) = record.verifications.iter().find(|check| check.id == verify.id) {
                    let same = check.channel == verify.channel && check.reference == verify.reference;
                    return if same { CustomerOutcome::Replayed(record) } else { CustomerOutcome::Conflict(record) };
                }
                if record.verifications.len() >= VERIFICATIONS_MAX {
                    return CustomerOutcome::TooManyVerifications;
                }
                record.verifications.push(Verification {
                    id: verify.id.clone(),
                    channel: verify.channel,
                    reference: verify.reference.clone(),
                    by: verify.actor.clone(),
                    at_ms: now_ms,
                });
                self.write(customer_key(self, &verify.customer), &record);
                CustomerOutcome::Verified(record)
            }
            CustomerCmd::SetSecurity(security) => {
                let Some(mut record) = existing else {
                    return CustomerOutcome::CustomerNotFound;
                };
                if let Some(password) = &security.password {
                    record.password = Some(password.clone());
                    // A new password starts with no failed attempts.
                    record.password_failures = 0;
                }
                if let Some(always) = security.always_verify {
                    record.always_verify = always;
                }
                self.write(customer_key(self, &security.customer), &record);
                CustomerOutcome::Updated(record)
            }
        }
    }

    pub fn customer(&self, id: &CustomerId) -> Option<CustomerRecord> {
        self.read(&customer_key(self, id))
    }
}

/// A stored value of a customer kind decodes as its kind says (`Ledger::check_record`).
pub(super) fn check_customer_record(kind: u8, value: &[u8]) -> Option<Result<(), String>> {
    Some(match kind {
        keys::CUSTOMER => super::decode_value::<CustomerRecord>(value).map(|_| ()).map_err(|error| error.to_string()),
        _ => return None,
    })
}
