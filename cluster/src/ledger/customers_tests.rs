//! Unit tests of customers, KYC classes and risk limits (`customers.rs`, `risk.rs`).

use super::tests::{id, tid};
use super::*;
use crate::ids::{CustomerId, VerificationId};
use crate::money::Currency;
use crate::placement::{customer_shard_of, home_shard_of};

const DAY_MS: u64 = 86_400_000;
/// 2026-06-01T00:00:00Z, mid-year at UTC+8.
const JUNE_MS: u64 = 1_780_272_000_000;

fn cny() -> Currency {
    Currency::from_code("CNY").unwrap()
}

fn sealed(fingerprint: u8) -> SealedPii {
    SealedPii { key_id: "k1".to_string(), nonce: [7; 12], ciphertext: vec![1, 2, 3], fingerprint: [fingerprint; 32] }
}

fn register(ledger: &mut Ledger, customer: &str, fingerprint: u8) -> CustomerOutcome {
    let command = CustomerCmd::Register(RegisterCustomer {
        id: CustomerId::new(customer).unwrap(),
        pii: sealed(fingerprint),
        actor: "ops".to_string(),
    });
    match ledger.apply(JUNE_MS, &Command::Customer(command)) {
        Applied::Customer(outcome) => outcome,
        other => panic!("not a customer outcome: {other:?}"),
    }
}

fn verify(ledger: &mut Ledger, customer: &str, check: &str, channel: Channel) -> CustomerOutcome {
    let command = CustomerCmd::Verify(RecordVerification {
        customer: CustomerId::new(customer).unwrap(),
        id: VerificationId::new(check).unwrap(),
        channel,
        reference: format!("ref-{check}"),
        actor: "ops".to_string(),
    });
    match ledger.apply(JUNE_MS, &Command::Customer(command)) {
        Applied::Customer(outcome) => outcome,
        other => panic!("not a customer outcome: {other:?}"),
    }
}

fn class(ledger: &Ledger, customer: &str) -> Option<KycClass> {
    ledger.customer(&CustomerId::new(customer).unwrap()).unwrap().class()
}

fn open(ledger: &mut Ledger, account: &AccountId, kind: AccountKind) -> AccountOutcome {
    match ledger.apply(JUNE_MS, &Command::CreateAccount(CreateAccount { id: account.clone(), currency: cny(), kind })) {
        Applied::Account(outcome) => outcome,
        other => panic!("not an account outcome: {other:?}"),
    }
}

fn pay(ledger: &mut Ledger, now_ms: u64, id_text: &str, from: &AccountId, to: &AccountId, amount: Minor) -> TransferStatus {
    let command = Command::Transfer(TransferCmd { id: tid(id_text), from: from.clone(), to: to.clone(), amount, currency: cny() });
    match ledger.apply(now_ms, &command) {
        Applied::Transfer(TransferOutcome::Recorded(status)) => status,
        other => panic!("not a recorded transfer: {other:?}"),
    }
}

fn set_limits(ledger: &mut Ledger, limits: RiskLimits) -> RiskOutcome {
    match ledger.apply(JUNE_MS, &Command::Risk(RiskCmd::SetLimits(limits))) {
        Applied::Risk(outcome) => outcome,
        other => panic!("not a risk outcome: {other:?}"),
    }
}

/// One shard with a funded settlement account, customer `c1` with wallet `c1::wallet` (funded
/// with 10,000 CNY) and a merchant.
fn with_customer() -> (Ledger, AccountId, AccountId) {
    let mut ledger = Ledger::new(0, 1);
    let (bank, wallet, shop) = (id("bank"), id("c1::wallet"), id("shop"));
    assert_eq!(open(&mut ledger, &bank, AccountKind::Settlement), AccountOutcome::Created);
    assert_eq!(open(&mut ledger, &wallet, AccountKind::Customer), AccountOutcome::CustomerNotFound, "no customer yet");
    assert!(matches!(register(&mut ledger, "c1", 1), CustomerOutcome::Registered(_)));
    assert_eq!(open(&mut ledger, &wallet, AccountKind::Customer), AccountOutcome::Created);
    assert_eq!(open(&mut ledger, &shop, AccountKind::Merchant), AccountOutcome::Created);
    assert_eq!(pay(&mut ledger, JUNE_MS, "fund", &bank, &wallet, 1_000_000), TransferStatus::Posted);
    (ledger, wallet, shop)
}

/// Registration is idempotent by the data's fingerprint, a check by its id; the class follows
/// the checks: one channel I, three II, five III, face-to-face III at once.
#[test]
fn classes_follow_the_recorded_checks() {
    let mut ledger = Ledger::new(0, 1);
    assert!(matches!(register(&mut ledger, "c1", 1), CustomerOutcome::Registered(_)));
    assert!(matches!(register(&mut ledger, "c1", 1), CustomerOutcome::Replayed(_)));
    assert!(matches!(register(&mut ledger, "c1", 2), CustomerOutcome::Conflict(_)), "other data under the same id");
    assert_eq!(class(&ledger, "c1"), None);
    assert!(matches!(verify(&mut ledger, "c1", "v1", Channel::BankCard), CustomerOutcome::Verified(_)));
    assert!(matches!(verify(&mut ledger, "c1", "v1", Channel::BankCard), CustomerOutcome::Replayed(_)));
    assert!(matches!(verify(&mut ledger, "c1", "v1", Channel::Utility), CustomerOutcome::Conflict(_)));
    // The same channel twice counts once.
    verify(&mut ledger, "c1", "v1b", Channel::BankCard);
    assert_eq!(class(&ledger, "c1"), Some(KycClass::I));
    verify(&mut ledger, "c1", "v2", Channel::IdDatabase);
    verify(&mut ledger, "c1", "v3", Channel::MobileCarrier);
    assert_eq!(class(&ledger, "c1"), Some(KycClass::II));
    verify(&mut ledger, "c1", "v4", Channel::TaxRecord);
    assert_eq!(class(&ledger, "c1"), Some(KycClass::II));
    verify(&mut ledger, "c1", "v5", Channel::SocialInsurance);
    assert_eq!(class(&ledger, "c1"), Some(KycClass::III));
    register(&mut ledger, "c2", 3);
    verify(&mut ledger, "c2", "f1", Channel::FaceToFace);
    assert_eq!(class(&ledger, "c2"), Some(KycClass::III));
    assert_eq!(verify(&mut ledger, "nobody", "v1", Channel::BankCard), CustomerOutcome::CustomerNotFound);
    ledger.check_invariants();
    ledger.memory_matches_store().unwrap();
}

/// An unverified customer's account pays nothing (a stored rejection); class I pays at most
/// 1,000 CNY since registration across holds and transfers; a void gives its amount back.
#[test]
fn class_one_pays_at_most_its_lifetime_limit() {
    let (mut ledger, wallet, shop) = with_customer();
    let refused = TransferStatus::Rejected(RejectCode::KycUnverified);
    assert_eq!(pay(&mut ledger, JUNE_MS, "p0", &wallet, &shop, 100), refused);
    assert_eq!(refused_code(&refused), "limit_exceeded");
    verify(&mut ledger, "c1", "v1", Channel::BankCard);
    assert_eq!(pay(&mut ledger, JUNE_MS, "p1", &wallet, &shop, 60_000), TransferStatus::Posted);
    let hold = Command::Hold(HoldCmd {
        transfer: TransferCmd { id: tid("h1"), from: wallet.clone(), to: shop.clone(), amount: 30_000, currency: cny() },
        timeout_ms: DAY_MS,
        settle_on_expiry: false,
    });
    assert_eq!(ledger.apply(JUNE_MS, &hold), Applied::Transfer(TransferOutcome::Recorded(TransferStatus::Held)));
    let over = TransferStatus::Rejected(RejectCode::KycLifetimeLimit);
    assert_eq!(pay(&mut ledger, JUNE_MS, "p2", &wallet, &shop, 10_001), over);
    let customer = CustomerId::new("c1").unwrap();
    assert_eq!(ledger.customer_remaining(&customer), Some(10_000));
    ledger.apply(JUNE_MS + 1, &Command::Void(VoidCmd { id: tid("h1") }));
    assert_eq!(ledger.customer_remaining(&customer), Some(40_000), "the void gave the hold back");
    assert_eq!(pay(&mut ledger, JUNE_MS + 2, "p3", &wallet, &shop, 40_000), TransferStatus::Posted);
    // A year later the lifetime limit still holds.
    assert_eq!(pay(&mut ledger, JUNE_MS + 400 * DAY_MS, "p4", &wallet, &shop, 1), over);
    let spend = ledger.customer_spend(&customer);
    assert_eq!((spend.lifetime, spend.year_spent), (100_000, 0));
    ledger.check_invariants();
    ledger.memory_matches_store().unwrap();
}

fn refused_code(status: &TransferStatus) -> &'static str {
    match status {
        TransferStatus::Rejected(code) => code.code(),
        other => panic!("not a rejection: {other:?}"),
    }
}

/// Class II and III count per calendar year of the shard clock at UTC+8: the counter starts
/// again at local midnight of 1 January, not at UTC's.
#[test]
fn yearly_limits_start_again_at_the_local_new_year() {
    let (mut ledger, wallet, shop) = with_customer();
    for (check, channel) in [("v1", Channel::BankCard), ("v2", Channel::IdDatabase), ("v3", Channel::MobileCarrier)] {
        verify(&mut ledger, "c1", check, channel);
    }
    let limits = RiskLimits { version: 1, class_ii_yearly: 50_000, ..RiskLimits::default() };
    assert!(matches!(set_limits(&mut ledger, limits), RiskOutcome::Set(_)));
    // 2026-12-31T15:59:59.999Z is the last instant of 2026 at UTC+8.
    let last_2026 = 1_798_732_800_000 - 1;
    assert_eq!(pay(&mut ledger, last_2026, "y1", &wallet, &shop, 50_000), TransferStatus::Posted);
    assert_eq!(pay(&mut ledger, last_2026, "y2", &wallet, &shop, 1), TransferStatus::Rejected(RejectCode::KycYearlyLimit));
    assert_eq!(pay(&mut ledger, last_2026 + 1, "y3", &wallet, &shop, 50_000), TransferStatus::Posted);
    let spend = ledger.customer_spend(&CustomerId::new("c1").unwrap());
    assert_eq!((spend.year, spend.year_spent, spend.lifetime), (2027, 50_000, 100_000));
    ledger.check_invariants();
}

/// A per-transaction limit applies to the account kinds it names, and only to them.
#[test]
fn per_transaction_limits_apply_by_account_kind() {
    let (mut ledger, wallet, shop) = with_customer();
    verify(&mut ledger, "c1", "f1", Channel::FaceToFace);
    let limits = RiskLimits { version: 1, per_transaction: vec![(AccountKind::Customer, 5_000)], ..RiskLimits::default() };
    set_limits(&mut ledger, limits);
    assert_eq!(pay(&mut ledger, JUNE_MS, "t1", &wallet, &shop, 5_001), TransferStatus::Rejected(RejectCode::TransactionLimit));
    assert_eq!(pay(&mut ledger, JUNE_MS, "t2", &wallet, &shop, 5_000), TransferStatus::Posted);
    assert_eq!(pay(&mut ledger, JUNE_MS, "t3", &id("bank"), &shop, 10_000), TransferStatus::Posted);
    assert_eq!(pay(&mut ledger, JUNE_MS, "t4", &shop, &wallet, 5_001), TransferStatus::Posted, "merchants are not limited");
}

/// A cross-shard payment the payee's shard refuses stops counting against the payer's limit.
#[test]
fn a_refused_cross_shard_payment_gives_its_amount_back() {
    let shards = 2;
    let customer =
        (0..).map(|n| format!("cust-{n}")).find(|c| customer_shard_of(&CustomerId::new(c.as_str()).unwrap(), shards) == 0).unwrap();
    let wallet = id(&format!("{customer}::wallet"));
    let missing = (0..).map(|n| id(&format!("gone-{n}"))).find(|a| crate::placement::shard_of(a, shards) == 1).unwrap();
    let mut p = Ledger::new(0, shards);
    let mut q = Ledger::new(1, shards);
    let bank = (0..).map(|n| id(&format!("bank-{n}"))).find(|a| crate::placement::shard_of(a, shards) == 0).unwrap();
    open(&mut p, &bank, AccountKind::Settlement);
    register(&mut p, &customer, 1);
    verify(&mut p, &customer, "v1", Channel::BankCard);
    open(&mut p, &wallet, AccountKind::Customer);
    let fund = (0..).map(|n| format!("fund-{n}")).find(|t| home_shard_of(&tid(t), shards) == 0).unwrap();
    assert_eq!(pay(&mut p, JUNE_MS, &fund, &bank, &wallet, 500_000), TransferStatus::Posted);
    let x = (0..).map(|n| format!("x-{n}")).find(|t| home_shard_of(&tid(t), shards) == 0).unwrap();
    assert_eq!(pay(&mut p, JUNE_MS, &x, &wallet, &missing, 70_000), TransferStatus::Pending);
    let c = CustomerId::new(customer.as_str()).unwrap();
    assert_eq!(p.customer_remaining(&c), Some(30_000), "a pending debit counts");
    let record = p.transfer(&tid(&x)).unwrap();
    let decided = q.apply(JUNE_MS + 1, &Command::Credit(CreditCmd::for_record(&record, AccountKind::Customer, 0, false)));
    let Applied::Credit(CreditOutcome { decision: Some(decision), .. }) = decided else { panic!("no decision: {decided:?}") };
    p.apply(JUNE_MS + 2, &Command::Finalize(FinalizeCmd { id: tid(&x), body: record.body(), decision }));
    assert_eq!(p.customer_remaining(&c), Some(100_000));
    p.check_invariants();
}

/// The system shard takes only the next version of the limits (it orders operators' changes);
/// other shards take any newer one; equal versions with other bodies and older ones change
/// nothing; the limits survive a reopen.
#[test]
fn limits_change_by_version() {
    let mut system = Ledger::new(SYSTEM_SHARD, 2);
    let mut other = Ledger::new(1, 2);
    let v = |version: u64, class_i: Minor| RiskLimits { version, class_i_lifetime: class_i, ..RiskLimits::default() };
    assert!(matches!(set_limits(&mut system, v(2, 1)), RiskOutcome::Stale(_)), "the system shard skips no version");
    assert!(matches!(set_limits(&mut system, v(1, 1)), RiskOutcome::Set(_)));
    assert!(matches!(set_limits(&mut system, v(1, 1)), RiskOutcome::Unchanged(_)));
    assert!(matches!(set_limits(&mut system, v(1, 2)), RiskOutcome::Stale(_)), "another body under the same version");
    assert!(matches!(set_limits(&mut other, v(3, 3)), RiskOutcome::Set(_)), "another shard catches up at once");
    assert!(matches!(set_limits(&mut other, v(2, 2)), RiskOutcome::Stale(_)));
    let bad = RiskLimits { utc_offset_minutes: 15 * 60, ..v(4, 1) };
    assert!(matches!(set_limits(&mut other, bad), RiskOutcome::Invalid(_)));
    assert_eq!(other.risk_limits(), &v(3, 3));
    system.memory_matches_store().unwrap();
    other.memory_matches_store().unwrap();
}

fn attempt(ledger: &mut Ledger, now_ms: u64, id_text: &str, passed: bool) -> TransferOutcome {
    match ledger.apply(now_ms, &Command::Verify(VerifyCmd::Attempt { id: tid(id_text), passed, password_wrong: false })) {
        Applied::Transfer(outcome) => outcome,
        other => panic!("not a transfer outcome: {other:?}"),
    }
}

fn security(ledger: &mut Ledger, password: bool, always_verify: Option<bool>) {
    let password = password.then_some(PasswordHash { salt: [1; 16], iterations: 1, hash: [2; 32] });
    let command = CustomerCmd::SetSecurity(SetSecurity {
        customer: CustomerId::new("c1").unwrap(),
        password,
        always_verify,
        actor: "ops".to_string(),
    });
    assert!(matches!(ledger.apply(JUNE_MS, &Command::Customer(command)), Applied::Customer(CustomerOutcome::Updated(_))));
}

/// Above the threshold a customer's payment waits for its proof: nothing moves until an attempt
/// passes; wrong attempts are counted and the fifth rejects it for good; a retry of the
/// transfer answers its state; below the threshold nothing is asked unless the customer asked
/// to verify every payment.
#[test]
fn payments_above_the_threshold_wait_for_their_verification() {
    let (mut ledger, wallet, shop) = with_customer();
    verify(&mut ledger, "c1", "f1", Channel::FaceToFace);
    security(&mut ledger, true, None);
    set_limits(&mut ledger, RiskLimits { version: 1, verification_threshold: 50_000, ..RiskLimits::default() });
    assert_eq!(pay(&mut ledger, JUNE_MS, "small", &wallet, &shop, 50_000), TransferStatus::Posted);
    assert_eq!(pay(&mut ledger, JUNE_MS, "big", &wallet, &shop, 60_000), TransferStatus::RequiresVerification);
    let challenge = ledger.challenge(&tid("big")).unwrap();
    assert_eq!(challenge.methods, vec![Factor::PaymentPassword, Factor::OneTimeCode]);
    assert_eq!(ledger.account(&shop).unwrap().balance, 50_000, "nothing moved yet");
    ledger.check_invariants();
    assert_eq!(attempt(&mut ledger, JUNE_MS + 1, "big", false), TransferOutcome::Recorded(TransferStatus::RequiresVerification));
    assert_eq!(attempt(&mut ledger, JUNE_MS + 2, "big", true), TransferOutcome::Recorded(TransferStatus::Posted));
    assert_eq!(ledger.account(&shop).unwrap().balance, 110_000);
    assert_eq!(attempt(&mut ledger, JUNE_MS + 3, "big", true), TransferOutcome::Replayed(TransferStatus::Posted), "a retry");
    // Five wrong attempts reject it.
    assert_eq!(pay(&mut ledger, JUNE_MS, "bad", &wallet, &shop, 60_000), TransferStatus::RequiresVerification);
    for n in 1..VERIFY_ATTEMPTS_MAX {
        assert_eq!(
            attempt(&mut ledger, JUNE_MS + u64::from(n), "bad", false),
            TransferOutcome::Recorded(TransferStatus::RequiresVerification)
        );
    }
    let failed = TransferStatus::Rejected(RejectCode::VerificationFailed);
    assert_eq!(attempt(&mut ledger, JUNE_MS + 9, "bad", false), TransferOutcome::Recorded(failed.clone()));
    assert_eq!(attempt(&mut ledger, JUNE_MS + 10, "bad", true), TransferOutcome::Replayed(failed));
    // Asked for every payment.
    security(&mut ledger, false, Some(true));
    assert_eq!(pay(&mut ledger, JUNE_MS, "tiny", &wallet, &shop, 1), TransferStatus::RequiresVerification);
    assert_eq!(
        ledger.challenge(&tid("tiny")).unwrap().methods,
        vec![Factor::PaymentPassword, Factor::OneTimeCode],
        "the password stays set"
    );
    ledger.check_invariants();
    ledger.memory_matches_store().unwrap();
}

/// A verified payment stays within the daily cap of its verification's strength (one factor:
/// 1,000 CNY a day); an unverified one expires through the sweep and is rejected for good.
#[test]
fn daily_caps_follow_the_verification_and_unverified_payments_expire() {
    let (mut ledger, wallet, shop) = with_customer();
    verify(&mut ledger, "c1", "f1", Channel::FaceToFace);
    security(&mut ledger, false, Some(true));
    assert_eq!(pay(&mut ledger, JUNE_MS, "a", &wallet, &shop, 90_000), TransferStatus::RequiresVerification);
    assert_eq!(ledger.challenge(&tid("a")).unwrap().methods, vec![Factor::OneTimeCode]);
    assert_eq!(attempt(&mut ledger, JUNE_MS, "a", true), TransferOutcome::Recorded(TransferStatus::Posted));
    assert_eq!(pay(&mut ledger, JUNE_MS, "b", &wallet, &shop, 10_001), TransferStatus::RequiresVerification);
    let capped = TransferStatus::Rejected(RejectCode::KycDailyLimit);
    assert_eq!(attempt(&mut ledger, JUNE_MS, "b", true), TransferOutcome::Recorded(capped));
    // The next day the cap starts again.
    assert_eq!(pay(&mut ledger, JUNE_MS + DAY_MS, "c", &wallet, &shop, 10_001), TransferStatus::RequiresVerification);
    assert_eq!(attempt(&mut ledger, JUNE_MS + DAY_MS, "c", true), TransferOutcome::Recorded(TransferStatus::Posted));
    // Not proved in time: the sweep rejects it.
    assert_eq!(pay(&mut ledger, JUNE_MS + DAY_MS, "late", &wallet, &shop, 1), TransferStatus::RequiresVerification);
    assert_eq!(ledger.next_hold_expiry_ms(), Some(JUNE_MS + DAY_MS + VERIFY_WINDOW_MS));
    ledger.apply(JUNE_MS + DAY_MS + VERIFY_WINDOW_MS, &Command::ExpireHolds);
    assert_eq!(ledger.transfer(&tid("late")).unwrap().status, TransferStatus::Rejected(RejectCode::VerificationExpired));
    assert_eq!(ledger.next_hold_expiry_ms(), None);
    ledger.check_invariants();
}

fn attempt_with(ledger: &mut Ledger, id_text: &str, passed: bool, password_wrong: bool) -> TransferOutcome {
    match ledger.apply(JUNE_MS, &Command::Verify(VerifyCmd::Attempt { id: tid(id_text), passed, password_wrong })) {
        Applied::Transfer(outcome) => outcome,
        other => panic!("not a transfer outcome: {other:?}"),
    }
}

/// Wrong payment passwords count across transfers: after five the password is locked (every
/// attempt fails, even a right one) until a new password is set; a password change keeps the
/// verify-every-payment setting; holds and delayed transfers of such a payer are refused; a
/// customer with no check pays nothing in any currency.
#[test]
fn wrong_passwords_lock_across_transfers_and_holds_need_no_bypass() {
    let (mut ledger, wallet, shop) = with_customer();
    verify(&mut ledger, "c1", "f1", Channel::FaceToFace);
    security(&mut ledger, true, Some(true));
    for n in 0..PASSWORD_FAILURES_MAX {
        let id_text = format!("t{n}");
        assert_eq!(pay(&mut ledger, JUNE_MS, &id_text, &wallet, &shop, 100), TransferStatus::RequiresVerification);
        let outcome = attempt_with(&mut ledger, &id_text, false, true);
        assert_eq!(outcome, TransferOutcome::Recorded(TransferStatus::RequiresVerification), "one wrong try per transfer");
    }
    assert_eq!(ledger.challenge_report(&tid("t0")).map(|report| report.password_locked), Some(true));
    assert_eq!(attempt_with(&mut ledger, "t0", true, false), TransferOutcome::Recorded(TransferStatus::RequiresVerification), "locked");
    security(&mut ledger, true, None);
    let customer = ledger.customer(&CustomerId::new("c1").unwrap()).unwrap();
    assert_eq!((customer.password_failures, customer.always_verify), (0, true), "a new password; the setting kept");
    assert_eq!(attempt_with(&mut ledger, "t0", true, false), TransferOutcome::Recorded(TransferStatus::Posted));
    // A hold would move money without the proof.
    let hold = Command::Hold(HoldCmd {
        transfer: TransferCmd { id: tid("h1"), from: wallet.clone(), to: shop.clone(), amount: 10, currency: cny() },
        timeout_ms: DAY_MS,
        settle_on_expiry: true,
    });
    let refused = Applied::Transfer(TransferOutcome::Recorded(TransferStatus::Rejected(RejectCode::VerificationRequired)));
    assert_eq!(ledger.apply(JUNE_MS, &hold), refused);
    // An unverified customer's account in another currency pays nothing either.
    register(&mut ledger, "c2", 9);
    let usd_wallet = id("c2::usd");
    let usd = Currency::from_code("USD").unwrap();
    let create = CreateAccount { id: usd_wallet.clone(), currency: usd, kind: AccountKind::Customer };
    assert_eq!(ledger.apply(JUNE_MS, &Command::CreateAccount(create)), Applied::Account(AccountOutcome::Created));
    let bank_usd = id("bank-usd");
    let create = CreateAccount { id: bank_usd.clone(), currency: usd, kind: AccountKind::Settlement };
    ledger.apply(JUNE_MS, &Command::CreateAccount(create));
    let fund = TransferCmd { id: tid("fu"), from: bank_usd.clone(), to: usd_wallet.clone(), amount: 500, currency: usd };
    ledger.apply(JUNE_MS, &Command::Transfer(fund));
    let spend = TransferCmd { id: tid("su"), from: usd_wallet, to: bank_usd, amount: 1, currency: usd };
    let unverified = Applied::Transfer(TransferOutcome::Recorded(TransferStatus::Rejected(RejectCode::KycUnverified)));
    assert_eq!(ledger.apply(JUNE_MS, &Command::Transfer(spend)), unverified);
    ledger.check_invariants();
}
