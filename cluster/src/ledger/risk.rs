//! Risk limits in the state machine (the operations guide: risk control; PBOC limits for payment
//! accounts), checked in the same apply as the debit they limit:
//!
//! - **By KYC class** (`customers.rs`), across all of a customer's accounts: class I at most
//!   1,000 CNY paid since the customer was registered, class II 100,000 CNY and class III
//!   200,000 CNY per calendar year; a customer with no identity check pays nothing.
//! - **Per transaction**, by the payer account's kind.
//!
//! Amounts count when a debit is admitted (posted, pending or held) and count no more when it
//! is given back (refused at finalize, a hold voided, expired or captured for less), so two
//! debits in flight together can never pass a limit. Days and years are those of the **shard
//! clock** (the largest log timestamp applied, `statements.rs`) in the configured UTC offset
//! (default UTC+8): every replica counts the same day, and no node's local clock decides.
//! An amount given back counts off the day or year it was counted in, if that is still the
//! current one. Limits and counters are in CNY; debits in other currencies are not counted.
//!
//! The limits are replicated state, the same on every shard: `RiskCmd::SetLimits` carries a
//! version; the system shard takes only the next version (it orders operators' changes), the
//! other shards take any newer one (the edge sends a change to the system shard first, then to
//! every other shard). A shard that never got a change applies the defaults.

use super::{keys, AccountKind, Ledger, RejectCode};
use crate::ids::{AccountId, CustomerId};
use crate::money::Minor;
use serde::{Deserialize, Serialize};

/// The currency the limits are written in and counted in.
pub const RISK_CURRENCY: &str = "CNY";
/// Per-transaction limits listed at most (one per account kind).
const PER_TRANSACTION_MAX: usize = 16;
const DAY_MS: i64 = 86_400_000;

/// The limits every shard applies, in CNY minor units (fen).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskLimits {
    /// 0 for the built-in defaults; each change takes the next number.
    pub version: u64,
    /// The calendar of the day and year counters, in minutes east of UTC (480: UTC+8).
    pub utc_offset_minutes: i32,
    pub class_i_lifetime: Minor,
    pub class_ii_yearly: Minor,
    pub class_iii_yearly: Minor,
    /// The largest single debit of an account of a kind (kinds not listed: no such limit).
    pub per_transaction: Vec<(AccountKind, Minor)>,
    /// A customer's payment above this asks for a verification first (0: none does, unless the
    /// customer asked to verify every payment).
    pub verification_threshold: Minor,
    /// What a customer may pay a day in payments verified with one factor (a one-time code) /
    /// with two (payment password and code).
    pub daily_single_factor: Minor,
    pub daily_two_factor: Minor,
}

impl Default for RiskLimits {
    fn default() -> Self {
        RiskLimits {
            version: 0,
            utc_offset_minutes: 480,
            class_i_lifetime: 100_000,
            class_ii_yearly: 10_000_000,
            class_iii_yearly: 20_000_000,
            per_transaction: Vec::new(),
            verification_threshold: 0,
            daily_single_factor: 100_000,
            daily_two_factor: 500_000,
        }
    }
}

impl RiskLimits {
    /// Bounds a set of limits meets (the edge, a peer's leg and the apply check them).
    pub fn check(&self) -> Result<(), String> {
        if !(-14 * 60..=14 * 60).contains(&self.utc_offset_minutes) {
            return Err("utc_offset_minutes is within ±14 hours".to_string());
        }
        let amounts = [
            self.class_i_lifetime,
            self.class_ii_yearly,
            self.class_iii_yearly,
            self.verification_threshold,
            self.daily_single_factor,
            self.daily_two_factor,
        ];
        let bounded = |amount: Minor| (0..=crate::money::AMOUNT_MINOR_MAX).contains(&amount);
        if !amounts.into_iter().chain(self.per_transaction.iter().map(|(_, amount)| *amount)).all(bounded) {
            return Err("every limit is between 0 and the largest amount".to_string());
        }
        if self.per_transaction.len() > PER_TRANSACTION_MAX {
            return Err(format!("at most {PER_TRANSACTION_MAX} per-transaction limits"));
        }
        let kinds: std::collections::BTreeSet<&str> = self.per_transaction.iter().map(|(kind, _)| kind.as_str()).collect();
        if kinds.len() != self.per_transaction.len() {
            return Err("one per-transaction limit per account kind".to_string());
        }
        Ok(())
    }

    pub fn per_transaction(&self, kind: AccountKind) -> Option<Minor> {
        self.per_transaction.iter().find(|(listed, _)| *listed == kind).map(|(_, amount)| *amount)
    }

    /// The day number and the calendar year of a shard-clock time in this calendar.
    pub fn period_of(&self, at_ms: u64) -> (i64, i64) {
        let local = i64::try_from(at_ms).unwrap_or(i64::MAX).saturating_add(i64::from(self.utc_offset_minutes) * 60_000);
        let day = local.div_euclid(DAY_MS);
        (day, year_of_day(day))
    }
}

/// The proleptic Gregorian year of a day counted from 1970-01-01 (the civil-from-days algorithm
/// of H. Hinnant's date library, year part only).
fn year_of_day(day: i64) -> i64 {
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    yoe + era * 400 + i64::from(month <= 2)
}

/// What a customer's accounts paid, as the limits count it (kind `b`, on the customer's shard).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CustomerSpend {
    /// Since the customer was registered.
    pub lifetime: Minor,
    pub year: i64,
    pub year_spent: Minor,
    pub day: i64,
    pub day_spent: Minor,
}

impl CustomerSpend {
    /// The counters as of a period: a past year or day counts nothing now.
    pub fn as_of(&self, day: i64, year: i64) -> CustomerSpend {
        CustomerSpend {
            lifetime: self.lifetime,
            year,
            year_spent: if self.year == year { self.year_spent } else { 0 },
            day,
            day_spent: if self.day == day { self.day_spent } else { 0 },
        }
    }
}

/// Which limit refused a debit (the `details.limit` of a `limit_exceeded` answer).
pub fn limit_name(code: RejectCode) -> Option<&'static str> {
    match code {
        RejectCode::KycUnverified => Some("kyc_unverified"),
        RejectCode::KycLifetimeLimit => Some("kyc_class_i_lifetime"),
        RejectCode::KycYearlyLimit => Some("kyc_yearly"),
        RejectCode::TransactionLimit => Some("per_transaction"),
        RejectCode::KycDailyLimit => Some("daily_by_verification"),
        RejectCode::PrepaidLimitExceeded => Some("prepaid_balance"),
        _ => None,
    }
}

/// A change of the limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RiskCmd {
    SetLimits(RiskLimits),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RiskOutcome {
    /// The shard now applies these limits.
    Set(RiskLimits),
    /// The shard had this version already: the limits it applies.
    Unchanged(RiskLimits),
    /// Not the version this shard takes next (the system shard), or older than what it has
    /// (the others), or the same version with another body: nothing changed; what it applies.
    Stale(RiskLimits),
    Invalid(String),
}

/// A customer as a read answers it: the record, its counters as of now, and what its class
/// still allows (`None`: no class, nothing may be paid).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerReport {
    pub record: super::CustomerRecord,
    pub spend: CustomerSpend,
    pub remaining: Option<Minor>,
    /// The version of the limits the shard applies.
    pub limits_version: u64,
}

pub(super) fn spend_key(ledger: &Ledger, customer: &CustomerId) -> crate::store::Key {
    keys::key(ledger.shard, ledger.generation, keys::SPEND, customer.as_str().as_bytes())
}

/// The customer an account id names (`<customer>::<name>`), if any.
pub fn customer_of(account: &AccountId) -> Option<CustomerId> {
    let key = account.placement_key();
    (key != account.as_str()).then(|| CustomerId::new(key).ok()).flatten()
}

impl Ledger {
    pub(super) fn risk_command(&mut self, command: &RiskCmd) -> RiskOutcome {
        let RiskCmd::SetLimits(limits) = command;
        if let Err(reason) = limits.check() {
            return RiskOutcome::Invalid(reason);
        }
        let current = &self.risk_limits;
        if limits.version == current.version {
            return if limits == current { RiskOutcome::Unchanged(current.clone()) } else { RiskOutcome::Stale(current.clone()) };
        }
        // A version is a peer's input too: never an overflow.
        let takes = if self.shard == super::SYSTEM_SHARD {
            current.version.checked_add(1) == Some(limits.version)
        } else {
            limits.version > current.version
        };
        if !takes {
            return RiskOutcome::Stale(current.clone());
        }
        self.risk_limits = limits.clone();
        self.write(keys::key(self.shard, self.generation, keys::LIMITS, &[]), limits);
        RiskOutcome::Set(limits.clone())
    }

    /// The limits this shard applies.
    pub fn risk_limits(&self) -> &RiskLimits {
        &self.risk_limits
    }

    /// Loads the stored limits (part of `load_meta`); the defaults when none were set.
    pub(super) fn load_limits(&mut self) -> Result<(), crate::store::StoreError> {
        self.risk_limits = match self.store.get(&keys::key(self.shard, self.generation, keys::LIMITS, &[])) {
            Some(bytes) => super::decode_value(&bytes)
                .map_err(|error| crate::store::StoreError(format!("shard {}: stored risk limits do not decode: {error}", self.shard)))?,
            None => RiskLimits::default(),
        };
        Ok(())
    }

    /// What a customer's accounts paid, as of the shard clock's day and year.
    pub fn customer_spend(&self, customer: &CustomerId) -> CustomerSpend {
        let (day, year) = self.risk_limits.period_of(self.clock().now_ms);
        self.read::<CustomerSpend>(&spend_key(self, customer)).unwrap_or_default().as_of(day, year)
    }

    /// A customer with its counters and what it may still pay (`Request::ReadCustomer`).
    pub fn customer_report(&self, customer: &CustomerId) -> Option<CustomerReport> {
        let record = self.customer(customer)?;
        let spend = self.customer_spend(customer);
        let remaining = record.class().map(|class| {
            let (spent, limit) = self.class_limit(class, &spend);
            (limit - spent).max(0)
        });
        Some(CustomerReport { spend, remaining, limits_version: self.risk_limits.version, record })
    }

    /// How much more a customer may pay now under its class's limit (None: no class).
    pub fn customer_remaining(&self, customer: &CustomerId) -> Option<Minor> {
        self.customer_report(customer)?.remaining
    }

    /// What a class's limit counts of a customer's counters, and the limit.
    fn class_limit(&self, class: super::KycClass, spend: &CustomerSpend) -> (Minor, Minor) {
        let limits = &self.risk_limits;
        match class {
            super::KycClass::I => (spend.lifetime, limits.class_i_lifetime),
            super::KycClass::II => (spend.year_spent, limits.class_ii_yearly),
            super::KycClass::III => (spend.year_spent, limits.class_iii_yearly),
        }
    }

    /// The limits a debit of `amount` from `payer` (of `kind`) must stay within: a customer
    /// with no identity check pays nothing in any currency; the amounts are CNY's.
    pub(super) fn check_limits(
        &self,
        payer: &AccountId,
        kind: AccountKind,
        currency: crate::money::Currency,
        amount: Minor,
        now_ms: u64,
    ) -> Result<(), RejectCode> {
        let cny = currency.code() == RISK_CURRENCY;
        if cny && self.risk_limits.per_transaction(kind).is_some_and(|limit| amount > limit) {
            return Err(RejectCode::TransactionLimit);
        }
        let Some(customer) = customer_of(payer) else {
            return Ok(());
        };
        let Some(record) = self.customer(&customer) else {
            // An account named for a customer exists only once the customer does; a damaged
            // record is the damage check's business.
            return Err(RejectCode::KycUnverified);
        };
        if !cny {
            return if record.class().is_some() { Ok(()) } else { Err(RejectCode::KycUnverified) };
        }
        let limits = &self.risk_limits;
        let (day, year) = limits.period_of(now_ms);
        let spend = self.read::<CustomerSpend>(&spend_key(self, &customer)).unwrap_or_default().as_of(day, year);
        let within = |spent: Minor, limit: Minor| spent.checked_add(amount).is_some_and(|total| total <= limit);
        match record.class() {
            None => Err(RejectCode::KycUnverified),
            Some(super::KycClass::I) if !within(spend.lifetime, limits.class_i_lifetime) => Err(RejectCode::KycLifetimeLimit),
            Some(super::KycClass::II) if !within(spend.year_spent, limits.class_ii_yearly) => Err(RejectCode::KycYearlyLimit),
            Some(super::KycClass::III) if !within(spend.year_spent, limits.class_iii_yearly) => Err(RejectCode::KycYearlyLimit),
            Some(_) => Ok(()),
        }
    }

    /// Counts an admitted debit against its customer's limits (CNY accounts of customers only).
    pub(super) fn count_spend(&mut self, payer: &AccountId, amount: Minor, now_ms: u64) {
        let Some(customer) = self.counted_customer(payer) else {
            return;
        };
        let (day, year) = self.risk_limits.period_of(now_ms);
        let key = spend_key(self, &customer);
        let mut spend = self.read::<CustomerSpend>(&key).unwrap_or_default().as_of(day, year);
        spend.lifetime = spend.lifetime.saturating_add(amount);
        spend.year_spent = spend.year_spent.saturating_add(amount);
        spend.day_spent = spend.day_spent.saturating_add(amount);
        self.write(key, &spend);
    }

    /// Gives back an amount counted at `counted_at_ms` that did not leave (refused, released):
    /// off the lifetime total, and off the year and day if they are still current.
    pub(super) fn uncount_spend(&mut self, payer: &AccountId, amount: Minor, counted_at_ms: u64) {
        let Some(customer) = self.counted_customer(payer) else {
            return;
        };
        if amount <= 0 {
            return;
        }
        let key = spend_key(self, &customer);
        let Some(mut spend) = self.read::<CustomerSpend>(&key) else {
            return;
        };
        let (day, year) = self.risk_limits.period_of(counted_at_ms);
        spend.lifetime = (spend.lifetime - amount).max(0);
        if spend.year == year {
            spend.year_spent = (spend.year_spent - amount).max(0);
        }
        if spend.day == day {
            spend.day_spent = (spend.day_spent - amount).max(0);
        }
        self.write(key, &spend);
    }

    /// Every customer record sits under its own id with bounded, uniquely named checks; every
    /// counter names a customer of this shard and none is negative (`verify`).
    pub(super) fn verify_customers(&self) -> Result<(), String> {
        self.verify_spend()?;
        let (start, end) = keys::kind_range(self.shard, self.generation, keys::CUSTOMER);
        for (key, value) in self.store.scan(&start, &end, usize::MAX, false) {
            let record: super::CustomerRecord =
                super::decode_value(&value).map_err(|error| format!("a customer does not decode: {error}"))?;
            if key[start.len()..] != *record.id.as_str().as_bytes() {
                return Err(format!("customer {} stored under another key", record.id));
            }
            let ids: std::collections::BTreeSet<_> = record.verifications.iter().map(|check| &check.id).collect();
            if ids.len() != record.verifications.len() || ids.len() > super::VERIFICATIONS_MAX {
                return Err(format!("customer {}: checks repeated or too many", record.id));
            }
        }
        let (start, end) = keys::kind_range(self.shard, self.generation, keys::SPEND);
        for (key, value) in self.store.scan(&start, &end, usize::MAX, false) {
            let spend: CustomerSpend =
                super::decode_value(&value).map_err(|error| format!("a customer's counters do not decode: {error}"))?;
            let id = std::str::from_utf8(&key[start.len()..]).ok().and_then(|id| CustomerId::new(id).ok()).ok_or("a bad counter key")?;
            if self.customer(&id).is_none() {
                return Err(format!("counters of {id}, who is not a customer here"));
            }
            if spend.lifetime < 0 || spend.year_spent < 0 || spend.day_spent < 0 {
                return Err(format!("customer {id}: negative counters {spend:?}"));
            }
        }
        Ok(())
    }

    /// Every customer's lifetime counter equals what its CNY accounts' records on this shard
    /// still hold against it: posted and pending debits, and open holds (`verify`; the
    /// simulator's `spend_matches_history`).
    pub fn verify_spend(&self) -> Result<(), String> {
        let mut counted: std::collections::BTreeMap<CustomerId, Minor> = std::collections::BTreeMap::new();
        let (start, end) = keys::kind_range(self.shard, self.generation, keys::TRANSFER);
        for (_, value) in self.store.scan(&start, &end, usize::MAX, false) {
            let record: super::TransferRecord =
                super::decode_value(&value).map_err(|error| format!("a transfer does not decode: {error}"))?;
            let Some(customer) = customer_of(&record.from) else {
                continue;
            };
            if record.currency.code() != RISK_CURRENCY {
                continue;
            }
            let amount = match record.status {
                super::TransferStatus::Posted | super::TransferStatus::Pending => record.amount,
                super::TransferStatus::Held => self.hold(&record.id).map_or(0, |hold| hold.held),
                _ => 0,
            };
            *counted.entry(customer).or_insert(0) += amount;
        }
        let (start, end) = keys::kind_range(self.shard, self.generation, keys::SPEND);
        for (key, value) in self.store.scan(&start, &end, usize::MAX, false) {
            let spend: CustomerSpend = super::decode_value(&value).map_err(|error| format!("counters do not decode: {error}"))?;
            let id = std::str::from_utf8(&key[start.len()..]).ok().and_then(|id| CustomerId::new(id).ok()).ok_or("a bad counter key")?;
            let expected = counted.remove(&id).unwrap_or(0);
            if spend.lifetime != expected {
                return Err(format!("customer {id} counts {} paid, its records hold {expected}", spend.lifetime));
            }
        }
        match counted.into_iter().find(|(_, amount)| *amount != 0) {
            Some((id, amount)) => Err(format!("customer {id} has no counters, its records hold {amount}")),
            None => Ok(()),
        }
    }

    /// No customer's counters pass its class's limit under the limits in force (`limits_respected`
    /// in the simulator, whose limits only ever stay or rise; an operator may lower them below
    /// what a customer already paid, so this is not part of `verify`).
    pub fn verify_limits(&self) -> Result<(), String> {
        let (start, end) = keys::kind_range(self.shard, self.generation, keys::CUSTOMER);
        for (key, _) in self.store.scan(&start, &end, usize::MAX, false) {
            let Some(id) = std::str::from_utf8(&key[start.len()..]).ok().and_then(|id| CustomerId::new(id).ok()) else {
                continue;
            };
            let Some(record) = self.customer(&id) else {
                continue;
            };
            let spend = self.customer_spend(&id);
            let (spent, limit) = record.class().map_or((spend.lifetime, 0), |class| self.class_limit(class, &spend));
            if spent > limit {
                return Err(format!("customer {id} (class {:?}) paid {spent}, past its limit {limit}", record.class()));
            }
        }
        Ok(())
    }

    /// The customer whose counters a debit of `payer` moves: a customer's CNY account.
    fn counted_customer(&self, payer: &AccountId) -> Option<CustomerId> {
        let customer = customer_of(payer)?;
        let cny = self.account(payer).is_some_and(|account| account.currency.code() == RISK_CURRENCY);
        cny.then_some(customer)
    }
}

/// A stored value of a risk kind decodes as its kind says (`Ledger::check_record`).
pub(super) fn check_risk_record(kind: u8, value: &[u8]) -> Option<Result<(), String>> {
    Some(match kind {
        keys::SPEND => super::decode_value::<CustomerSpend>(value).map(|_| ()).map_err(|error| error.to_string()),
        keys::LIMITS => super::decode_value::<RiskLimits>(value).map(|_| ()).map_err(|error| error.to_string()),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Day and year numbers follow the civil calendar in the configured offset.
    #[test]
    fn periods_follow_the_calendar_in_the_offset() {
        let limits = RiskLimits::default();
        // 2026-12-31T16:00:00Z is 2027-01-01 00:00 at UTC+8.
        let new_year_utc8 = 1_798_732_800_000u64;
        assert_eq!(limits.period_of(new_year_utc8 - 1).1, 2026);
        assert_eq!(limits.period_of(new_year_utc8).1, 2027);
        let utc = RiskLimits { utc_offset_minutes: 0, ..RiskLimits::default() };
        assert_eq!(utc.period_of(new_year_utc8).1, 2026);
        assert_eq!(year_of_day(0), 1970);
        assert_eq!(year_of_day(-1), 1969);
        // 2024-02-29 is day 19782; 2024-12-31 is 20088; 2025-01-01 is 20089.
        assert_eq!((year_of_day(19_782), year_of_day(20_088), year_of_day(20_089)), (2024, 2024, 2025));
        assert_eq!(limits.period_of(new_year_utc8).0 - limits.period_of(new_year_utc8 - 1).0, 1);
    }
}
