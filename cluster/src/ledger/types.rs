//! The ledger's nouns: accounts, records, commands and their outcomes.

use super::customers::{CustomerCmd, CustomerOutcome};
use super::fence::FenceOutcome;
use super::holds::{CaptureCmd, HoldCmd, HoldRecord, VoidCmd};
use super::refunds::RefundCmd;
use super::risk::{RiskCmd, RiskOutcome};
use super::stops::{StopCmd, StopOutcome};
use super::system::{SystemCmd, SystemOutcome};
use super::verification::VerifyCmd;
use crate::ids::{AccountId, ShardId, TransferId};
use crate::money::{Currency, Minor};
use serde::{Deserialize, Serialize};

/// What an account is for. Only settlement accounts (money held outside the cluster, such as at
/// the bank) may go negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    Customer,
    Merchant,
    Settlement,
    /// A named prepaid card (CNY): its balance never above `PREPAID_NAMED_MAX_MINOR`.
    Prepaid,
    /// An anonymous prepaid card (CNY): at most `PREPAID_ANONYMOUS_MAX_MINOR`, and it pays
    /// merchants only (no cash-out).
    PrepaidAnonymous,
}

/// The PBOC caps on a prepaid card's balance, in fen: 5,000 CNY named, 1,000 CNY anonymous.
pub const PREPAID_NAMED_MAX_MINOR: Minor = 500_000;
pub const PREPAID_ANONYMOUS_MAX_MINOR: Minor = 100_000;
/// Prepaid cards are issued in this currency only.
pub const PREPAID_CURRENCY: &str = "CNY";

impl AccountKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            AccountKind::Customer => "customer",
            AccountKind::Merchant => "merchant",
            AccountKind::Settlement => "settlement",
            AccountKind::Prepaid => "prepaid",
            AccountKind::PrepaidAnonymous => "prepaid_anonymous",
        }
    }

    /// The most a balance of this kind may hold, if capped.
    pub fn balance_cap(&self) -> Option<Minor> {
        match self {
            AccountKind::Prepaid => Some(PREPAID_NAMED_MAX_MINOR),
            AccountKind::PrepaidAnonymous => Some(PREPAID_ANONYMOUS_MAX_MINOR),
            _ => None,
        }
    }

    pub fn prepaid(&self) -> bool {
        matches!(self, AccountKind::Prepaid | AccountKind::PrepaidAnonymous)
    }

    pub fn parse(text: &str) -> Option<AccountKind> {
        match text {
            "customer" => Some(AccountKind::Customer),
            "merchant" => Some(AccountKind::Merchant),
            "settlement" => Some(AccountKind::Settlement),
            "prepaid" => Some(AccountKind::Prepaid),
            "prepaid_anonymous" => Some(AccountKind::PrepaidAnonymous),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: AccountId,
    pub currency: Currency,
    pub kind: AccountKind,
    /// Posted balance, in minor units.
    pub balance: Minor,
    /// Debits of cross-shard transfers prepared but not yet finalized.
    pub debits_pending: Minor,
    pub created_at_ms: u64,
    /// How many transfers touched this account on this shard (its history index in the store
    /// holds one entry per position, oldest first).
    pub history_len: u64,
}

impl Account {
    /// Posted balance minus pending debits: what the account can still spend.
    pub fn available(&self) -> Minor {
        self.balance - self.debits_pending
    }

    /// Invariant 3: no overdraft for non-settlement accounts; pending debits never negative.
    pub fn assert_invariants(&self) {
        if let Err(broken) = self.verify() {
            panic!("{broken}");
        }
    }

    /// Invariant 3 as a result (for state that crossed a trust boundary).
    pub fn verify(&self) -> Result<(), String> {
        if self.debits_pending < 0 {
            return Err(format!("account {} has negative pending debits", self.id));
        }
        if self.kind != AccountKind::Settlement && self.available() < 0 {
            return Err(format!("account {} is overdrawn: available {}", self.id, self.available()));
        }
        Ok(())
    }
}

/// An account as readers see it (without its history).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    pub id: AccountId,
    pub currency: Currency,
    pub kind: AccountKind,
    pub balance: Minor,
    pub available: Minor,
    pub debits_pending: Minor,
    pub created_at_ms: u64,
    pub transfer_count: u64,
}

impl From<&Account> for AccountView {
    fn from(account: &Account) -> AccountView {
        AccountView {
            id: account.id.clone(),
            currency: account.currency,
            kind: account.kind,
            balance: account.balance,
            available: account.available(),
            debits_pending: account.debits_pending,
            created_at_ms: account.created_at_ms,
            transfer_count: account.history_len,
        }
    }
}

/// Which record of this shard a history item points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RecordKind {
    /// The payer-side record (every same-shard transfer, and the debit of a cross-shard one).
    Transfer,
    /// The payee-side decision of a cross-shard transfer.
    Credit,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryItem {
    pub transfer: TransferId,
    pub record: RecordKind,
}

/// Why a transfer was not applied. Stored rejections are final: a retry returns the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    PayerNotFound,
    PayeeNotFound,
    InsufficientFunds,
    CurrencyMismatch,
    /// The payee shard refused because the coordinator asked it to prevent a late credit.
    CreditTimeout,
    /// A balance would leave the representable range (never with realistic amounts).
    BalanceOverflow,
    /// Not stored: the id names a different transfer.
    IdempotencyKeyReused,
    /// Not stored: caught at the edge; the core refuses it too.
    SameAccount,
    /// Not stored: caught at the edge; the core refuses it too.
    InvalidAmount,
    /// Not stored: the command reached a shard that does not own it (a leader checks routing
    /// before proposing, so only a misbehaving proposer gets this).
    WrongShard,
    /// A stop order on the payer (or, for a stop that blocks credits, the payee) is active.
    AccountFrozen,
    /// Not stored: a refund names a transfer that did not post from its payee to its payer.
    NotRefundable,
    /// Not stored: the refunds of the original would exceed its amount.
    RefundExceedsOriginal,
    /// A prepaid card's balance would pass its cap.
    PrepaidLimitExceeded,
    /// An anonymous prepaid card pays merchants only.
    PrepaidCashOut,
    /// Not stored: a capture or void names a transfer that is not a hold.
    NotAHold,
    /// Not stored: a capture asks for more than the hold reserved.
    CaptureExceedsHold,
    /// Not stored: the hold was already captured, voided or expired (the transfer shows which).
    HoldNotActive,
    /// The payer belongs to a customer with no identity check recorded (`risk.rs`).
    KycUnverified,
    /// A class I customer's payments since registration would pass the limit.
    KycLifetimeLimit,
    /// A class II or III customer's payments this calendar year would pass the limit.
    KycYearlyLimit,
    /// The amount passes the per-transaction limit of the payer's account kind.
    TransactionLimit,
    /// The payer failed to prove the transfer `VERIFY_ATTEMPTS_MAX` times.
    VerificationFailed,
    /// The payer did not prove the transfer within `VERIFY_WINDOW_MS`.
    VerificationExpired,
    /// What the customer paid today, with this one, passes the daily cap of the verification
    /// it passed.
    KycDailyLimit,
    /// Not stored: the transfer is not waiting for a verification.
    NotAwaitingVerification,
    /// A hold or delayed transfer from a payer who must prove its payments (made as a plain
    /// transfer instead, which waits for the proof).
    VerificationRequired,
}

impl RejectCode {
    /// The stable snake_case code clients see.
    pub fn code(&self) -> &'static str {
        match self {
            RejectCode::PayerNotFound | RejectCode::PayeeNotFound => "account_not_found",
            RejectCode::InsufficientFunds => "insufficient_funds",
            RejectCode::CurrencyMismatch => "currency_mismatch",
            RejectCode::CreditTimeout => "credit_timeout",
            RejectCode::BalanceOverflow => "balance_overflow",
            RejectCode::IdempotencyKeyReused => "idempotency_key_reused",
            RejectCode::SameAccount => "same_account",
            RejectCode::InvalidAmount => "invalid_amount",
            RejectCode::WrongShard => "wrong_shard",
            RejectCode::AccountFrozen => "account_frozen",
            RejectCode::NotRefundable => "transfer_not_refundable",
            RejectCode::RefundExceedsOriginal => "refund_exceeds_original",
            RejectCode::PrepaidLimitExceeded => "limit_exceeded",
            RejectCode::PrepaidCashOut => "prepaid_cash_out_refused",
            RejectCode::NotAHold => "transfer_not_a_hold",
            RejectCode::CaptureExceedsHold => "capture_exceeds_hold",
            RejectCode::HoldNotActive => "hold_not_active",
            RejectCode::KycUnverified
            | RejectCode::KycLifetimeLimit
            | RejectCode::KycYearlyLimit
            | RejectCode::TransactionLimit
            | RejectCode::KycDailyLimit => "limit_exceeded",
            RejectCode::VerificationFailed => "verification_failed",
            RejectCode::VerificationExpired => "verification_expired",
            RejectCode::NotAwaitingVerification => "transfer_not_awaiting_verification",
            RejectCode::VerificationRequired => "verification_required",
        }
    }

    /// The HTTP status a client sees for this rejection.
    pub fn http_status(&self) -> u16 {
        match self {
            RejectCode::PayerNotFound | RejectCode::PayeeNotFound => 404,
            RejectCode::SameAccount | RejectCode::InvalidAmount => 400,
            RejectCode::WrongShard => 503,
            RejectCode::HoldNotActive | RejectCode::NotAHold | RejectCode::NotAwaitingVerification => 409,
            _ => 422,
        }
    }

    pub fn message(&self) -> &'static str {
        match self {
            RejectCode::PayerNotFound => "the payer account does not exist",
            RejectCode::PayeeNotFound => "the payee account does not exist",
            RejectCode::InsufficientFunds => "the payer's available balance is less than the amount",
            RejectCode::CurrencyMismatch => "the transfer's currency differs from an account's currency",
            RejectCode::CreditTimeout => "the payee shard did not credit in time; the debit was released",
            RejectCode::BalanceOverflow => "a balance would leave the representable range",
            RejectCode::IdempotencyKeyReused => "this transfer id was already used for a different transfer",
            RejectCode::SameAccount => "payer and payee are the same account",
            RejectCode::InvalidAmount => "the amount must be positive and within limits",
            RejectCode::WrongShard => "the request reached a shard that does not own it; retry",
            RejectCode::AccountFrozen => "a stop order on the account forbids this movement",
            RejectCode::NotRefundable => "the original transfer did not post from this payee to this payer in this currency",
            RejectCode::RefundExceedsOriginal => "the refunds of this transfer would exceed its amount",
            RejectCode::PrepaidLimitExceeded => "the prepaid card's balance would pass its cap (5,000 CNY named, 1,000 CNY anonymous)",
            RejectCode::PrepaidCashOut => "an anonymous prepaid card pays merchant accounts only",
            RejectCode::NotAHold => "the transfer was not made with mode hold",
            RejectCode::CaptureExceedsHold => "a capture may not exceed the amount held",
            RejectCode::HoldNotActive => "the hold was already captured, voided or expired",
            RejectCode::KycUnverified => "the payer's customer has no identity verification recorded, so its accounts cannot pay",
            RejectCode::KycLifetimeLimit => "a class I customer's payments since registration would pass its limit (1,000 CNY by default)",
            RejectCode::KycYearlyLimit => "the customer's payments this year would pass its class's yearly limit",
            RejectCode::TransactionLimit => "the amount passes the per-transaction limit of the payer's account kind",
            RejectCode::VerificationFailed => "the payment was not proved: too many wrong passwords or codes",
            RejectCode::VerificationExpired => "the payment was not proved in time",
            RejectCode::KycDailyLimit => {
                "today's payments would pass the daily cap of this verification (1,000 CNY one factor, 5,000 CNY two)"
            }
            RejectCode::NotAwaitingVerification => "the transfer is not waiting for a verification",
            RejectCode::VerificationRequired => {
                "this payment must be verified: make it as a plain transfer (mode post), which asks for the proof"
            }
        }
    }
}

/// A transfer as its payer shard knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferStatus {
    /// Cross-shard: the debit is pending until the payee shard's decision is finalized here.
    Pending,
    Posted,
    Rejected(RejectCode),
    /// A hold (`holds.rs`): the amount is reserved on the payer (a pending debit) until it is
    /// captured (then `Posted`, or `Pending` while a cross-shard capture is decided), voided or
    /// expired.
    Held,
    /// A hold released by its payer's request: nothing moved.
    Voided,
    /// A hold released at its expiry: nothing moved.
    Expired,
    /// Waiting for its payer to prove it (`verification.rs`): nothing moved yet.
    RequiresVerification,
}

impl TransferStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            TransferStatus::Pending => "pending",
            TransferStatus::Posted => "posted",
            TransferStatus::Rejected(_) => "rejected",
            TransferStatus::Held => "held",
            TransferStatus::Voided => "voided",
            TransferStatus::Expired => "expired",
            TransferStatus::RequiresVerification => "requires_verification",
        }
    }
}

/// The payer-side record of a transfer, kept forever under its id (the idempotency key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRecord {
    pub id: TransferId,
    pub from: AccountId,
    pub to: AccountId,
    pub amount: Minor,
    pub currency: Currency,
    pub status: TransferStatus,
    pub cross_shard: bool,
    pub created_at_ms: u64,
    pub finalized_at_ms: Option<u64>,
}

impl TransferRecord {
    /// A new record of `transfer` with `status`, made at `now_ms` (final unless pending or held).
    pub fn new(transfer: &TransferCmd, status: TransferStatus, cross_shard: bool, now_ms: u64) -> TransferRecord {
        let open = matches!(status, TransferStatus::Pending | TransferStatus::Held | TransferStatus::RequiresVerification);
        TransferRecord {
            id: transfer.id.clone(),
            from: transfer.from.clone(),
            to: transfer.to.clone(),
            amount: transfer.amount,
            currency: transfer.currency,
            status,
            cross_shard,
            created_at_ms: now_ms,
            finalized_at_ms: if open { None } else { Some(now_ms) },
        }
    }

    /// What the transfer moves: compared in full whenever a record is found under an id.
    pub fn body(&self) -> TransferBody {
        TransferBody { from: self.from.clone(), to: self.to.clone(), amount: self.amount, currency: self.currency }
    }

    /// Whether a retried command asks for exactly this transfer.
    pub fn same_request(&self, command: &TransferCmd) -> bool {
        self.body().matches(command)
    }
}

/// The payee shard's decision on a cross-shard transfer. First decision wins, forever.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    Credited,
    Refused(RejectCode),
}

/// Transfer ids are global idempotency keys: a payee shard that already decided an id for one
/// transfer refuses it for any other (`same_transfer` false).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditRecord {
    pub id: TransferId,
    pub from: AccountId,
    pub to: AccountId,
    pub amount: Minor,
    pub currency: Currency,
    pub payer_shard: ShardId,
    pub decision: Decision,
    pub decided_at_ms: u64,
}

impl CreditRecord {
    pub fn body(&self) -> TransferBody {
        TransferBody { from: self.from.clone(), to: self.to.clone(), amount: self.amount, currency: self.currency }
    }

    pub fn same_transfer(&self, credit: &CreditCmd) -> bool {
        self.body() == credit.body()
    }
}

/// A transfer as a reader sees it, from whichever record a shard holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferView {
    pub id: TransferId,
    pub from: AccountId,
    pub to: AccountId,
    pub amount: Minor,
    pub currency: Currency,
    pub status: TransferStatus,
    pub created_at_ms: u64,
    /// True when the view comes from the payee shard's decision rather than the payer record.
    pub payee_side: bool,
    /// For a transfer made with mode hold, on its payer's side: what was held and what became
    /// of it.
    pub hold: Option<HoldRecord>,
}

impl From<&TransferRecord> for TransferView {
    fn from(record: &TransferRecord) -> TransferView {
        TransferView {
            id: record.id.clone(),
            from: record.from.clone(),
            to: record.to.clone(),
            amount: record.amount,
            currency: record.currency,
            status: record.status.clone(),
            created_at_ms: record.created_at_ms,
            payee_side: false,
            hold: None,
        }
    }
}

impl From<&CreditRecord> for TransferView {
    fn from(record: &CreditRecord) -> TransferView {
        let status = match &record.decision {
            Decision::Credited => TransferStatus::Posted,
            Decision::Refused(code) => TransferStatus::Rejected(*code),
        };
        TransferView {
            id: record.id.clone(),
            from: record.from.clone(),
            to: record.to.clone(),
            amount: record.amount,
            currency: record.currency,
            status,
            created_at_ms: record.decided_at_ms,
            payee_side: true,
            hold: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateAccount {
    pub id: AccountId,
    pub currency: Currency,
    pub kind: AccountKind,
}

/// A client's transfer, proposed on the payer's shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferCmd {
    pub id: TransferId,
    pub from: AccountId,
    pub to: AccountId,
    pub amount: Minor,
    pub currency: Currency,
}

impl TransferCmd {
    pub fn body(&self) -> TransferBody {
        TransferBody { from: self.from.clone(), to: self.to.clone(), amount: self.amount, currency: self.currency }
    }
}

/// Everything a transfer id stands for: payer, payee, amount and currency. A transfer id is a
/// global idempotency key, so wherever a record is found under an id, its body is compared in
/// full with the request's before the record is trusted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TransferBody {
    pub from: AccountId,
    pub to: AccountId,
    pub amount: Minor,
    pub currency: Currency,
}

impl TransferBody {
    pub fn matches(&self, command: &TransferCmd) -> bool {
        self.from == command.from && self.to == command.to && self.amount == command.amount && self.currency == command.currency
    }
}

/// Binds a transfer id to one body on the id's home shard (`placement::home_shard_of`), the one
/// place in the cluster that decides which body an id belongs to. Proposed by the origin node
/// before the transfer itself, unless the payer lives on the home shard (then the transfer
/// command reserves the id in the same apply).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveCmd {
    pub id: TransferId,
    pub body: TransferBody,
}

/// What the home shard answered to a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReserveOutcome {
    /// The id is now bound to this body.
    Reserved,
    /// The id was already bound to this same body (a retry): go ahead, the transfer dedups.
    Replayed,
    /// The id is bound to another body: refuse with `idempotency_key_reused`, move nothing.
    Reused,
    /// The reservation reached a shard that is not the id's home: nothing changed.
    WrongShard,
}

impl ReserveOutcome {
    pub fn allows_transfer(&self) -> bool {
        matches!(self, ReserveOutcome::Reserved | ReserveOutcome::Replayed)
    }
}

/// The coordinator's request for a decision, proposed on the payee's shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditCmd {
    pub id: TransferId,
    pub from: AccountId,
    pub to: AccountId,
    pub amount: Minor,
    pub currency: Currency,
    pub payer_shard: ShardId,
    /// Past its deadline the coordinator asks the payee shard to refuse unless it already decided.
    pub prevent: bool,
    /// The payer's kind, for the rules a payee shard applies by it (an anonymous prepaid card
    /// pays merchants only).
    pub payer_kind: AccountKind,
}

impl CreditCmd {
    pub fn body(&self) -> TransferBody {
        TransferBody { from: self.from.clone(), to: self.to.clone(), amount: self.amount, currency: self.currency }
    }

    pub fn for_record(record: &TransferRecord, payer_kind: AccountKind, payer_shard: ShardId, prevent: bool) -> CreditCmd {
        CreditCmd {
            id: record.id.clone(),
            from: record.from.clone(),
            to: record.to.clone(),
            amount: record.amount,
            currency: record.currency,
            payer_shard,
            prevent,
            payer_kind,
        }
    }
}

/// The payee shard's decision, copied into the payer's shard. It carries the body the payee
/// shard decided on; the payer shard finalizes only a pending record with exactly that body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalizeCmd {
    pub id: TransferId,
    pub body: TransferBody,
    pub decision: Decision,
}

/// One ledger command. A log entry carries a batch of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    CreateAccount(CreateAccount),
    Transfer(TransferCmd),
    Credit(CreditCmd),
    Finalize(FinalizeCmd),
    Reserve(ReserveCmd),
    /// API keys, nonces, the audit log (`system.rs`).
    System(SystemCmd),
    /// Stop orders on accounts (`stops.rs`).
    Stop(StopCmd),
    /// A refund of a posted transfer (`refunds.rs`): applied as a transfer, after the cap.
    Refund(RefundCmd),
    /// A hold, its capture, its void, and the expiry of due holds (`holds.rs`).
    Hold(HoldCmd),
    Capture(CaptureCmd),
    Void(VoidCmd),
    ExpireHolds,
    /// Customers and their identity checks (`customers.rs`).
    Customer(CustomerCmd),
    /// A change of the risk limits (`risk.rs`).
    Risk(RiskCmd),
    /// A verification attempt or a one-time code issued (`verification.rs`).
    Verify(VerifyCmd),
    /// A backup fence (`fence.rs`): raises the shard's fence epoch; the entry that raises it
    /// ends the shard's part of that backup's cut.
    Fence(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountOutcome {
    Created,
    /// Same id, same currency and kind: nothing changed.
    AlreadyExists,
    /// Same id, different body: nothing changed.
    Conflict,
    /// The command reached a shard that does not own the account: nothing changed.
    WrongShard,
    /// The id names a customer's account (`<customer>::<name>`) and that customer does not
    /// exist: nothing changed.
    CustomerNotFound,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferOutcome {
    /// A new record was stored with this status.
    Recorded(TransferStatus),
    /// The id was known with the same body: its stored status.
    Replayed(TransferStatus),
    /// Nothing stored (the id is reused for a different transfer, or the command is invalid).
    Refused(RejectCode),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditOutcome {
    /// `None`: not a credit this shard can decide (misrouted or malformed); nothing stored and
    /// nobody is told.
    pub decision: Option<Decision>,
    pub decided_now: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalizeOutcome {
    /// The record's status after the command; `None` if the id is unknown here.
    pub status: Option<TransferStatus>,
    pub finalized_now: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    Account(AccountOutcome),
    Transfer(TransferOutcome),
    Credit(CreditOutcome),
    Finalize(FinalizeOutcome),
    Reserve(ReserveOutcome),
    System(SystemOutcome),
    Stop(StopOutcome),
    HoldsExpired(usize),
    Customer(CustomerOutcome),
    Risk(RiskOutcome),
    Fence(FenceOutcome),
}

/// One command as applied, with its outcome and, when asked for (on a leader, whose waiters
/// answer clients), the records the answer needs, read right after the apply. One variant per
/// command, so whoever handles it never pairs a command with an outcome of another kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppliedCommand {
    Account {
        create: CreateAccount,
        outcome: AccountOutcome,
        account: Option<AccountView>,
    },
    Transfer {
        transfer: TransferCmd,
        outcome: TransferOutcome,
        record: Option<TransferView>,
    },
    Reserve {
        reserve: ReserveCmd,
        outcome: ReserveOutcome,
    },
    Credit {
        credit: CreditCmd,
        outcome: CreditOutcome,
    },
    Finalize {
        finalize: FinalizeCmd,
        outcome: FinalizeOutcome,
        record: Option<TransferView>,
    },
    System {
        command: SystemCmd,
        outcome: SystemOutcome,
    },
    Stop {
        command: StopCmd,
        outcome: StopOutcome,
    },
    /// A hold, capture or void: answered like a transfer; `transfer` is the record's body after
    /// the command (`None` if nothing is stored under the id).
    Hold {
        id: TransferId,
        transfer: Option<TransferCmd>,
        outcome: TransferOutcome,
        record: Option<TransferView>,
    },
    /// `ExpireHolds`: the holds it released, and the delayed transfers it settled that turned
    /// pending (cross shard: the leader sends their credit requests).
    HoldsExpired {
        expired: Vec<TransferId>,
        settled: Vec<TransferCmd>,
    },
    Customer {
        command: CustomerCmd,
        outcome: CustomerOutcome,
    },
    Risk {
        command: RiskCmd,
        outcome: RiskOutcome,
    },
    Fence {
        outcome: FenceOutcome,
    },
}
