//! The ledger state machine of one shard: accounts, the payer-side transfer records, the
//! payee-side credit decisions. Deterministic: the only inputs are the commands and the
//! proposer's timestamp carried in each log entry. Only `apply` mutates it (invariant 4).

mod types;

#[cfg(test)]
mod tests;

pub use types::*;

use crate::ids::{AccountId, ShardId, TransferId};
use crate::money::{Currency, Minor, AMOUNT_MINOR_MAX};
use crate::placement::{home_shard_of, shard_of};
use crate::planted::{planted, PlantedBug};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The layout of encoded ledgers (checkpoints, and raft snapshots for lagging followers).
/// 2: transfer-id reservations.
pub const LEDGER_FORMAT_VERSION: u8 = 2;

/// The state of one shard, as every replica of it holds it after applying the same log prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    shard: ShardId,
    shard_count: u32,
    accounts: BTreeMap<AccountId, Account>,
    /// Payer-side records: every transfer whose payer lives here, by id (the idempotency key).
    transfers: BTreeMap<TransferId, TransferRecord>,
    /// Payee-side decisions for cross-shard transfers into this shard: first decision wins.
    credits: BTreeMap<TransferId, CreditRecord>,
    /// Cross-shard transfers prepared here and not yet finalized (the coordinator's to-do list).
    pending: BTreeSet<TransferId>,
    /// Transfer ids whose home shard this is, with the one body each is bound to (first wins,
    /// forever): the cluster-wide idempotency index.
    reservations: BTreeMap<TransferId, TransferBody>,
    /// Per currency: money that entered this shard through posted cross-shard credits minus money
    /// that left through posted cross-shard debits. The sum of balances must equal it.
    net_inflow: BTreeMap<Currency, Minor>,
    /// Test-only: a planted bug (see `planted.rs`); never serialised.
    #[serde(skip)]
    planted: PlantedBug,
}

impl Ledger {
    pub fn new(shard: ShardId, shard_count: u32) -> Ledger {
        assert!(shard < shard_count, "shard {shard} out of {shard_count}");
        Ledger {
            shard,
            shard_count,
            accounts: BTreeMap::new(),
            transfers: BTreeMap::new(),
            credits: BTreeMap::new(),
            pending: BTreeSet::new(),
            reservations: BTreeMap::new(),
            net_inflow: BTreeMap::new(),
            planted: PlantedBug::None,
        }
    }

    /// The ledger as a checkpoint or snapshot carries it.
    pub fn encode(&self) -> Vec<u8> {
        crate::codec::encode(LEDGER_FORMAT_VERSION, self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Ledger, crate::codec::CodecError> {
        crate::codec::decode(LEDGER_FORMAT_VERSION, bytes)
    }

    /// Test-only: plants a bug in this ledger (inert without the `planted-bugs` feature).
    pub fn set_planted(&mut self, bug: PlantedBug) {
        self.planted = bug;
    }

    pub fn shard(&self) -> ShardId {
        self.shard
    }

    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }

    pub fn account(&self, id: &AccountId) -> Option<&Account> {
        self.accounts.get(id)
    }

    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.accounts.values()
    }

    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }

    pub fn transfer(&self, id: &TransferId) -> Option<&TransferRecord> {
        self.transfers.get(id)
    }

    pub fn transfers(&self) -> impl Iterator<Item = &TransferRecord> {
        self.transfers.values()
    }

    pub fn credit(&self, id: &TransferId) -> Option<&CreditRecord> {
        self.credits.get(id)
    }

    pub fn credits(&self) -> impl Iterator<Item = &CreditRecord> {
        self.credits.values()
    }

    /// The body a transfer id whose home is this shard is bound to.
    pub fn reservation(&self, id: &TransferId) -> Option<&TransferBody> {
        self.reservations.get(id)
    }

    pub fn reservations(&self) -> impl Iterator<Item = (&TransferId, &TransferBody)> {
        self.reservations.iter()
    }

    /// Cross-shard transfers prepared here and waiting for the payee shard's decision.
    pub fn pending(&self) -> impl Iterator<Item = &TransferRecord> {
        self.pending.iter().map(|id| &self.transfers[id])
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// A page of an account's history, newest first. `before` is the cursor from the previous
    /// page (a position in the history); the returned cursor is `None` on the last page.
    pub fn history(&self, account: &AccountId, before: Option<u64>, limit: usize) -> Option<(Vec<TransferView>, Option<u64>)> {
        let account = self.accounts.get(account)?;
        let length = u64::try_from(account.history.len()).expect("history fits u64");
        let end = before.map_or(length, |cursor| cursor.min(length));
        let mut views = Vec::new();
        let mut position = end;
        while position > 0 && views.len() < limit {
            position -= 1;
            let item = &account.history[usize::try_from(position).expect("fits usize")];
            views.push(self.view(item));
        }
        let next = if position > 0 { Some(position) } else { None };
        Some((views, next))
    }

    fn view(&self, item: &HistoryItem) -> TransferView {
        match item.record {
            RecordKind::Transfer => TransferView::from(&self.transfers[&item.transfer]),
            RecordKind::Credit => TransferView::from(&self.credits[&item.transfer]),
        }
    }

    /// Applies one command and reports it with the records its waiters need (`report`: a
    /// leader's replica, which answers clients; followers skip building them). `now_ms` is the
    /// proposer's timestamp from the log entry, the same on every replica. Invalid commands never
    /// panic: they come back as rejections. The only mutator of the ledger.
    pub fn apply_command(&mut self, now_ms: u64, command: Command, report: bool) -> AppliedCommand {
        let applied = match command {
            Command::CreateAccount(create) => {
                let outcome = self.create_account(now_ms, &create);
                let account = if report { self.accounts.get(&create.id).map(AccountView::from) } else { None };
                AppliedCommand::Account { create, outcome, account }
            }
            Command::Transfer(transfer) => {
                let outcome = self.transfer_command(now_ms, &transfer);
                let stored = matches!(&outcome, TransferOutcome::Recorded(_) | TransferOutcome::Replayed(_));
                let record = if report && stored { self.transfers.get(&transfer.id).map(TransferView::from) } else { None };
                AppliedCommand::Transfer { transfer, outcome, record }
            }
            Command::Reserve(reserve) => {
                let outcome = self.reserve_command(&reserve);
                AppliedCommand::Reserve { reserve, outcome }
            }
            Command::Credit(credit) => {
                let outcome = self.credit_command(now_ms, &credit);
                AppliedCommand::Credit { credit, outcome }
            }
            Command::Finalize(finalize) => {
                let outcome = self.finalize_command(now_ms, &finalize);
                let record = if report { self.transfers.get(&finalize.id).map(TransferView::from) } else { None };
                AppliedCommand::Finalize { finalize, outcome, record }
            }
        };
        if cfg!(debug_assertions) {
            self.assert_touched_accounts(&applied);
        }
        applied
    }

    /// `apply_command` without the records: the outcome alone (what the tests compare).
    pub fn apply(&mut self, now_ms: u64, command: &Command) -> Applied {
        match self.apply_command(now_ms, command.clone(), false) {
            AppliedCommand::Account { outcome, .. } => Applied::Account(outcome),
            AppliedCommand::Transfer { outcome, .. } => Applied::Transfer(outcome),
            AppliedCommand::Reserve { outcome, .. } => Applied::Reserve(outcome),
            AppliedCommand::Credit { outcome, .. } => Applied::Credit(outcome),
            AppliedCommand::Finalize { outcome, .. } => Applied::Finalize(outcome),
        }
    }

    fn create_account(&mut self, now_ms: u64, create: &CreateAccount) -> AccountOutcome {
        if self.owner(&create.id) != self.shard {
            // Committed entries come from a leader that checked routing; refuse rather than
            // panic on one that did not (a log entry is input too).
            return AccountOutcome::WrongShard;
        }
        if let Some(existing) = self.accounts.get(&create.id) {
            if existing.currency == create.currency && existing.kind == create.kind {
                return AccountOutcome::AlreadyExists;
            }
            return AccountOutcome::Conflict;
        }
        let account = Account {
            id: create.id.clone(),
            currency: create.currency,
            kind: create.kind,
            balance: 0,
            debits_pending: 0,
            created_at_ms: now_ms,
            history: Vec::new(),
        };
        self.accounts.insert(create.id.clone(), account);
        AccountOutcome::Created
    }

    /// Binds an id to a body on its home shard: the first body wins, forever.
    fn reserve_command(&mut self, reserve: &ReserveCmd) -> ReserveOutcome {
        if home_shard_of(&reserve.id, self.shard_count) != self.shard {
            return ReserveOutcome::WrongShard;
        }
        match self.reservations.get(&reserve.id) {
            Some(body) if *body == reserve.body => ReserveOutcome::Replayed,
            Some(_) if planted(self.planted, PlantedBug::IdReuseUnchecked) => ReserveOutcome::Replayed,
            Some(_) => ReserveOutcome::Reused,
            None => {
                self.reservations.insert(reserve.id.clone(), reserve.body.clone());
                ReserveOutcome::Reserved
            }
        }
    }

    fn transfer_command(&mut self, now_ms: u64, transfer: &TransferCmd) -> TransferOutcome {
        if self.owner(&transfer.from) != self.shard {
            return TransferOutcome::Refused(RejectCode::WrongShard);
        }
        if let Some(existing) = self.transfers.get(&transfer.id) {
            if existing.same_request(transfer) {
                return TransferOutcome::Replayed(existing.status.clone());
            }
            return TransferOutcome::Refused(RejectCode::IdempotencyKeyReused);
        }
        // When the id's home is this shard, the reservation happens here, in the same apply;
        // otherwise the origin reserved it on the home shard before proposing this command.
        let home_here = home_shard_of(&transfer.id, self.shard_count) == self.shard;
        if home_here {
            if let Some(reserved) = self.reservations.get(&transfer.id) {
                if !reserved.matches(transfer) && !planted(self.planted, PlantedBug::IdReuseUnchecked) {
                    return TransferOutcome::Refused(RejectCode::IdempotencyKeyReused);
                }
            }
        }
        if transfer.from == transfer.to {
            return TransferOutcome::Refused(RejectCode::SameAccount);
        }
        if transfer.amount <= 0 || transfer.amount > crate::money::AMOUNT_MINOR_MAX {
            return TransferOutcome::Refused(RejectCode::InvalidAmount);
        }
        let cross_shard = self.owner(&transfer.to) != self.shard;
        let payer_check = match self.check_payer(transfer) {
            Err(RejectCode::InsufficientFunds) if cross_shard && planted(self.planted, PlantedBug::SkipOverdraftCheck) => Ok(()),
            other => other,
        };
        let status = match payer_check {
            Err(code) => TransferStatus::Rejected(code),
            Ok(()) if cross_shard => TransferStatus::Pending,
            Ok(()) => match self.check_payee(&transfer.to, transfer.currency) {
                Err(code) => TransferStatus::Rejected(code),
                Ok(()) => TransferStatus::Posted,
            },
        };
        let record = TransferRecord {
            id: transfer.id.clone(),
            from: transfer.from.clone(),
            to: transfer.to.clone(),
            amount: transfer.amount,
            currency: transfer.currency,
            status: status.clone(),
            cross_shard,
            created_at_ms: now_ms,
            finalized_at_ms: if status == TransferStatus::Pending { None } else { Some(now_ms) },
        };
        match &status {
            TransferStatus::Posted => {
                self.post_debit(&transfer.from, transfer.amount, &transfer.id);
                self.post_credit(&transfer.to, transfer.amount, &transfer.id, RecordKind::Transfer);
            }
            TransferStatus::Pending => {
                let payer = self.accounts.get_mut(&transfer.from).expect("checked payer");
                payer.debits_pending = payer.debits_pending.checked_add(transfer.amount).expect("bounded amounts");
                payer.history.push(HistoryItem { transfer: transfer.id.clone(), record: RecordKind::Transfer });
                self.pending.insert(transfer.id.clone());
            }
            TransferStatus::Rejected(_) => {}
        }
        if home_here && !self.reservations.contains_key(&transfer.id) {
            self.reservations.insert(transfer.id.clone(), transfer.body());
        }
        self.transfers.insert(transfer.id.clone(), record);
        TransferOutcome::Recorded(status)
    }

    /// The payer exists, holds this currency and (unless it is a settlement account) has the
    /// funds available: posted balance minus debits already pending.
    fn check_payer(&self, transfer: &TransferCmd) -> Result<(), RejectCode> {
        let payer = self.accounts.get(&transfer.from).ok_or(RejectCode::PayerNotFound)?;
        if payer.currency != transfer.currency {
            return Err(RejectCode::CurrencyMismatch);
        }
        if payer.kind != AccountKind::Settlement {
            let available = payer.available();
            if available < transfer.amount {
                return Err(RejectCode::InsufficientFunds);
            }
        }
        if payer.balance.checked_sub(payer.debits_pending + transfer.amount).is_none() {
            return Err(RejectCode::BalanceOverflow);
        }
        Ok(())
    }

    fn check_payee(&self, payee: &AccountId, currency: Currency) -> Result<(), RejectCode> {
        let account = self.accounts.get(payee).ok_or(RejectCode::PayeeNotFound)?;
        if account.currency != currency {
            return Err(RejectCode::CurrencyMismatch);
        }
        if account.balance.checked_add(crate::money::AMOUNT_MINOR_MAX).is_none() {
            return Err(RejectCode::BalanceOverflow);
        }
        Ok(())
    }

    /// Decides a cross-shard credit on the payee's shard. The first decision for an id wins and
    /// is returned to every later request for it, so duplicates and retries change nothing.
    fn credit_command(&mut self, now_ms: u64, credit: &CreditCmd) -> CreditOutcome {
        let valid_amount = credit.amount > 0 && credit.amount <= crate::money::AMOUNT_MINOR_MAX;
        let payer_elsewhere =
            credit.payer_shard < self.shard_count && credit.payer_shard != self.shard && self.owner(&credit.from) == credit.payer_shard;
        if self.owner(&credit.to) != self.shard || !valid_amount || !payer_elsewhere {
            // Not a credit this shard can decide: no decision, nothing stored, nobody told.
            return CreditOutcome { decision: None, decided_now: false };
        }
        if let Some(existing) = self.credits.get(&credit.id) {
            if !existing.same_transfer(credit) {
                // Another payer used this id already: refuse without touching the first decision.
                return CreditOutcome { decision: Some(Decision::Refused(RejectCode::IdempotencyKeyReused)), decided_now: false };
            }
            let decision = existing.decision.clone();
            if decision == Decision::Credited && planted(self.planted, PlantedBug::DoubleCredit) {
                self.post_credit(&credit.to, credit.amount, &credit.id, RecordKind::Credit);
                let inflow = self.net_inflow.entry(credit.currency).or_insert(0);
                *inflow += credit.amount;
            }
            return CreditOutcome { decision: Some(decision), decided_now: false };
        }
        let decision = if credit.prevent {
            Decision::Refused(RejectCode::CreditTimeout)
        } else {
            match self.check_payee(&credit.to, credit.currency) {
                Ok(()) => Decision::Credited,
                Err(code) => Decision::Refused(code),
            }
        };
        if decision == Decision::Credited {
            self.post_credit(&credit.to, credit.amount, &credit.id, RecordKind::Credit);
            let inflow = self.net_inflow.entry(credit.currency).or_insert(0);
            *inflow = inflow.checked_add(credit.amount).expect("bounded amounts");
        }
        let record = CreditRecord {
            id: credit.id.clone(),
            from: credit.from.clone(),
            to: credit.to.clone(),
            amount: credit.amount,
            currency: credit.currency,
            payer_shard: credit.payer_shard,
            decision: decision.clone(),
            decided_at_ms: now_ms,
        };
        self.credits.insert(credit.id.clone(), record);
        CreditOutcome { decision: Some(decision), decided_now: true }
    }

    /// Copies the payee shard's decision into the payer's record: post the pending debit, or
    /// release it. A second finalize for the same id is a no-op.
    fn finalize_command(&mut self, now_ms: u64, finalize: &FinalizeCmd) -> FinalizeOutcome {
        let Some(record) = self.transfers.get(&finalize.id) else {
            return FinalizeOutcome { status: None, finalized_now: false };
        };
        if record.status != TransferStatus::Pending {
            return FinalizeOutcome { status: Some(record.status.clone()), finalized_now: false };
        }
        if record.body() != finalize.body && !planted(self.planted, PlantedBug::IdReuseUnchecked) {
            // A decision about another transfer under the same id: never ours to copy.
            return FinalizeOutcome { status: Some(record.status.clone()), finalized_now: false };
        }
        let (payer, amount, currency) = (record.from.clone(), record.amount, record.currency);
        let account = self.accounts.get_mut(&payer).expect("a pending transfer's payer exists");
        account.debits_pending = account.debits_pending.checked_sub(amount).expect("pending covers the amount");
        let status = match &finalize.decision {
            Decision::Credited => {
                account.balance = account.balance.checked_sub(amount).expect("bounded amounts");
                let inflow = self.net_inflow.entry(currency).or_insert(0);
                *inflow = inflow.checked_sub(amount).expect("bounded amounts");
                TransferStatus::Posted
            }
            Decision::Refused(code) => TransferStatus::Rejected(*code),
        };
        let record = self.transfers.get_mut(&finalize.id).expect("looked up above");
        record.status = status.clone();
        record.finalized_at_ms = Some(now_ms);
        self.pending.remove(&finalize.id);
        FinalizeOutcome { status: Some(status), finalized_now: true }
    }

    fn post_debit(&mut self, payer: &AccountId, amount: Minor, transfer: &TransferId) {
        let account = self.accounts.get_mut(payer).expect("checked payer");
        account.balance = account.balance.checked_sub(amount).expect("checked for overflow");
        account.history.push(HistoryItem { transfer: transfer.clone(), record: RecordKind::Transfer });
    }

    fn post_credit(&mut self, payee: &AccountId, amount: Minor, transfer: &TransferId, record: RecordKind) {
        let account = self.accounts.get_mut(payee).expect("checked payee");
        account.balance = account.balance.checked_add(amount).expect("checked for overflow");
        account.history.push(HistoryItem { transfer: transfer.clone(), record });
    }

    fn owner(&self, account: &AccountId) -> ShardId {
        shard_of(account, self.shard_count)
    }

    /// Invariant 3 on the accounts a command touched: no overdraft, pending debits never negative.
    fn assert_touched_accounts(&self, applied: &AppliedCommand) {
        let touched: [Option<&AccountId>; 2] = match applied {
            AppliedCommand::Account { create, .. } => [Some(&create.id), None],
            AppliedCommand::Transfer { transfer, .. } => [Some(&transfer.from), Some(&transfer.to)],
            AppliedCommand::Credit { credit, .. } => [Some(&credit.to), None],
            AppliedCommand::Finalize { finalize, .. } => [self.transfers.get(&finalize.id).map(|r| &r.from), None],
            AppliedCommand::Reserve { .. } => [None, None],
        };
        for id in touched.into_iter().flatten() {
            if let Some(account) = self.accounts.get(id) {
                account.assert_invariants();
            }
        }
    }

    /// Checks every invariant that one shard can check alone; panics with the broken one. Used
    /// by tests and the simulator after every step, on our own state.
    pub fn check_invariants(&self) {
        if let Err(broken) = self.verify() {
            panic!("{broken}");
        }
    }

    /// Every invariant one shard can check alone, as a result: what a ledger that crossed a
    /// trust boundary (a snapshot from a peer, a checkpoint from disk) must pass before it is
    /// installed. Names the first broken one.
    pub fn verify(&self) -> Result<(), String> {
        macro_rules! ensure {
            ($condition:expr, $($message:tt)+) => {
                if !$condition {
                    return Err(format!($($message)+));
                }
            };
        }
        ensure!(self.shard < self.shard_count, "shard {} out of {}", self.shard, self.shard_count);
        let mut sums: BTreeMap<Currency, Minor> = BTreeMap::new();
        let mut pending_sums: BTreeMap<&AccountId, Minor> = BTreeMap::new();
        for (id, account) in &self.accounts {
            ensure!(*id == account.id, "account {} stored under {id}", account.id);
            account.verify()?;
            ensure!(self.owner(&account.id) == self.shard, "account {} on the wrong shard", account.id);
            let sum = sums.entry(account.currency).or_insert(0);
            *sum = sum.checked_add(account.balance).ok_or_else(|| format!("shard {} balances overflow", self.shard))?;
        }
        for id in &self.pending {
            let record = self.transfers.get(id).ok_or_else(|| format!("pending {id} has no record"))?;
            ensure!(record.status == TransferStatus::Pending, "transfer {id} in pending set");
            let sum = pending_sums.entry(&record.from).or_insert(0);
            *sum = sum.checked_add(record.amount).ok_or_else(|| format!("pending debits of {} overflow", record.from))?;
        }
        for (id, record) in &self.transfers {
            ensure!(*id == record.id, "transfer {} stored under {id}", record.id);
            ensure!(record.amount > 0 && record.amount <= AMOUNT_MINOR_MAX, "transfer {id} has amount {}", record.amount);
            ensure!(self.owner(&record.from) == self.shard, "transfer {id} recorded off its payer's shard");
            if record.status == TransferStatus::Pending {
                ensure!(self.pending.contains(&record.id), "pending transfer {} not tracked", record.id);
            }
            if home_shard_of(&record.id, self.shard_count) == self.shard {
                let reserved = self.reservations.get(&record.id);
                ensure!(reserved == Some(&record.body()), "transfer {} is not the body its id is reserved for", record.id);
            }
        }
        for (id, credit) in &self.credits {
            ensure!(*id == credit.id, "credit {} stored under {id}", credit.id);
            ensure!(credit.amount > 0 && credit.amount <= AMOUNT_MINOR_MAX, "credit {id} has amount {}", credit.amount);
            ensure!(self.owner(&credit.to) == self.shard, "credit {id} decided off its payee's shard");
        }
        for id in self.reservations.keys() {
            ensure!(home_shard_of(id, self.shard_count) == self.shard, "reservation {id} on the wrong shard");
        }
        for account in self.accounts.values() {
            let expected = pending_sums.get(&account.id).copied().unwrap_or(0);
            ensure!(account.debits_pending == expected, "pending debits of {}", account.id);
        }
        for (currency, sum) in &sums {
            let inflow = self.net_inflow.get(currency).copied().unwrap_or(0);
            ensure!(*sum == inflow, "shard {} {currency}: balances vs net cross-shard inflow", self.shard);
        }
        for (currency, inflow) in &self.net_inflow {
            if !sums.contains_key(currency) {
                ensure!(*inflow == 0, "shard {} {currency}: inflow without accounts", self.shard);
            }
        }
        Ok(())
    }

    /// Per currency, the money that entered this shard through cross-shard transfers minus what
    /// left. Summed over all shards, plus the amounts credited but not yet finalized, it is zero.
    pub fn net_inflow(&self) -> &BTreeMap<Currency, Minor> {
        &self.net_inflow
    }
}
