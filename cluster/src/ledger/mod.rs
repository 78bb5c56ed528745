//! The ledger state machine of one shard: accounts, the payer-side transfer records, the
//! payee-side credit decisions, the transfer-id reservations. Deterministic: the only inputs are
//! the commands and the proposer's timestamp carried in each log entry. Only `apply_command`
//! mutates it (invariant 4).
//!
//! Its state lives in the node's store (`store.rs`, layout in `keys.rs`), not in memory:
//! - **Accounts are virtual actors.** A command that touches an account activates it: it is
//!   read from the store into a bounded cache (`AccountCache`) and stays there while it is used;
//!   the least recently used clean accounts are passivated (dropped) whenever the cache is over
//!   its budget. An account's mailbox is its shard's log, so it has exactly one writer. Changed
//!   accounts are written back when the round commits.
//! - Records (transfers, credits, reservations, history) are written once into the round's
//!   overlay and read from the store when needed; nothing proportional to history stays in
//!   memory. Only the pending set (in-flight cross-shard transfers) and the per-currency inflow
//!   are held, and stored too.
//! - `commit_round` writes everything a round changed, with the applied index, as one batch.
//!   It is durable once the store persists (the runtime does, off the driver thread), and the
//!   Raft log is compacted only behind an applied index the store made durable.

mod cache;
mod customers;
mod fence;
mod holds;
pub mod keys;
mod refunds;
mod risk;
mod statements;
mod stops;
mod system;
mod types;
mod verification;

#[cfg(test)]
mod customers_tests;
#[cfg(test)]
mod holds_tests;
#[cfg(test)]
mod tests;

pub use cache::CacheStats;
pub use customers::*;
pub use fence::*;
pub use holds::*;
pub use refunds::*;
pub use risk::*;
pub use statements::*;
pub use stops::*;
pub use system::*;
pub use types::*;
pub use verification::*;

use crate::codec::{self, CodecError};
use crate::ids::{AccountId, ShardId, TransferId};
use crate::money::{Currency, Minor, AMOUNT_MINOR_MAX};
use crate::placement::{home_shard_of, shard_of};
use crate::planted::{planted, PlantedBug};
use crate::store::{Key, KvStore, MemStore, StoreError, Value, WriteBatch};
use cache::AccountCache;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The layout of stored ledger values (and of the records a snapshot carries).
/// 3: state in the store, one value per record (accounts without their history).
/// 4: per-account movements (statements, as-of balances), the shard clock; holds.
/// 5: customers, their counters, risk limits, delayed transfers, verification challenges.
pub const LEDGER_FORMAT_VERSION: u8 = 5;

/// An account's cache budget when none is given (tests).
const CACHE_BYTES_DEFAULT: usize = 4 << 20;

/// The applied point stored with a round's writes: recovery starts the shard here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AppliedMark {
    pub index: u64,
    pub term: u64,
    /// The shard's voters at that index (protobuf `ConfState`).
    pub conf_state: Vec<u8>,
}

/// An account as stored (its id is the key; its history is an index of its own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredAccount {
    currency: Currency,
    kind: AccountKind,
    balance: Minor,
    debits_pending: Minor,
    created_at_ms: u64,
    history_len: u64,
}

/// The generation of keys a shard uses, as `get` reads it from a store (0 before any snapshot).
fn stored_generation(shard: ShardId, get: impl Fn(&[u8]) -> Option<Vec<u8>>) -> Result<u32, StoreError> {
    match get(&keys::generation_key(shard)) {
        Some(bytes) => {
            bytes.as_slice().try_into().map(u32::from_be_bytes).map_err(|_| StoreError(format!("shard {shard}: bad generation")))
        }
        None => Ok(0),
    }
}

pub(crate) fn encode_value<T: Serialize>(value: &T) -> Value {
    codec::encode(LEDGER_FORMAT_VERSION, value)
}

pub(crate) fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    codec::decode(LEDGER_FORMAT_VERSION, bytes)
}

/// The state of one shard, as every replica of it holds it after applying the same log prefix.
pub struct Ledger {
    shard: ShardId,
    shard_count: u32,
    store: Arc<dyn KvStore>,
    /// The generation of keys this shard uses (`keys.rs`); a snapshot install switches it.
    generation: u32,
    accounts: AccountCache,
    /// Records written by commands since the last commit, not yet in the store.
    overlay: BTreeMap<Key, Option<Value>>,
    /// Cross-shard transfers prepared here and not yet finalized (the coordinator's to-do list).
    pending: BTreeSet<TransferId>,
    /// Per currency: money that entered this shard through posted cross-shard credits minus money
    /// that left through posted cross-shard debits. The sum of balances must equal it.
    net_inflow: BTreeMap<Currency, Minor>,
    inflow_changed: BTreeSet<Currency>,
    /// How many accounts the shard has (stored beside them), and whether a command changed it.
    account_count: u64,
    account_count_changed: bool,
    /// Test-only: a planted bug (see `planted.rs`).
    planted: PlantedBug,
    /// The first stored record this ledger met that does not decode (damage the storage
    /// engine's checksums missed, or a bug): read as absent, and the core quarantines the
    /// replica before anything read from it leaves (`NodeCore::quarantine_damaged`). A crash
    /// instead would loop: the same record is met again after every restart.
    damage: RefCell<Option<String>>,
    /// Where the audit chain ends (system shard; stored beside the records).
    audit_head: AuditHead,
    /// Accounts with active stop orders (`stops.rs`): how many block debits and credits.
    frozen: BTreeMap<AccountId, Frozen>,
    /// The risk limits this shard applies (`risk.rs`), loaded at open.
    risk_limits: RiskLimits,
    /// The shard's time and movement count (`statements.rs`), stored beside the records (once
    /// per round, when a command changed it).
    clock: ShardClock,
    clock_changed: bool,
    /// The last backup fence this shard applied (`fence.rs`), stored beside the records.
    fence_epoch: u64,
}

impl Ledger {
    /// A fresh shard on a store of its own (tests).
    pub fn new(shard: ShardId, shard_count: u32) -> Ledger {
        let store: Arc<dyn KvStore> = Arc::new(MemStore::new());
        Ledger::open(shard, shard_count, store, CACHE_BYTES_DEFAULT).expect("a fresh store opens").0
    }

    /// Opens a shard's ledger from the node's store (fresh when the store holds nothing of it),
    /// with the applied point its state is at.
    pub fn open(
        shard: ShardId,
        shard_count: u32,
        store: Arc<dyn KvStore>,
        cache_bytes_max: usize,
    ) -> Result<(Ledger, AppliedMark), StoreError> {
        assert!(shard < shard_count, "shard {shard} out of {shard_count}");
        let generation = stored_generation(shard, |key| store.get(key))?;
        let mut ledger = Ledger::unloaded(shard, shard_count, store, generation, cache_bytes_max);
        let mark = ledger.load_meta()?;
        Ok((ledger, mark))
    }

    /// A ledger over `store` at `generation` with nothing loaded yet (`load_meta` reads it).
    fn unloaded(shard: ShardId, shard_count: u32, store: Arc<dyn KvStore>, generation: u32, cache_bytes_max: usize) -> Ledger {
        Ledger {
            shard,
            shard_count,
            store,
            generation,
            accounts: AccountCache::new(cache_bytes_max),
            overlay: BTreeMap::new(),
            pending: BTreeSet::new(),
            net_inflow: BTreeMap::new(),
            inflow_changed: BTreeSet::new(),
            account_count: 0,
            account_count_changed: false,
            planted: PlantedBug::None,
            damage: RefCell::new(None),
            audit_head: AuditHead::default(),
            frozen: BTreeMap::new(),
            risk_limits: RiskLimits::default(),
            clock: ShardClock::default(),
            clock_changed: false,
            fence_epoch: 0,
        }
    }

    /// The applied mark a store holds for a shard (of its current generation), read through
    /// `get` alone: the simulator reads it from a store's durable contents to check that no log
    /// is compacted past the state that survives a crash.
    pub fn stored_mark(shard: ShardId, get: impl Fn(&[u8]) -> Option<Vec<u8>>) -> Result<AppliedMark, StoreError> {
        let generation = stored_generation(shard, &get)?;
        match get(&keys::applied(shard, generation)) {
            Some(bytes) => {
                decode_value(&bytes).map_err(|error| StoreError(format!("shard {shard}: stored applied mark does not decode: {error}")))
            }
            None => Ok(AppliedMark::default()),
        }
    }

    /// An applied mark as stored (a backup reads the one of its cut).
    pub fn decode_mark(bytes: &[u8]) -> Result<AppliedMark, StoreError> {
        decode_value(bytes).map_err(|error| StoreError(format!("an applied mark does not decode: {error}")))
    }

    /// Reads what the ledger keeps in memory (the pending set, the inflow) and the applied mark
    /// of the current generation.
    fn load_meta(&mut self) -> Result<AppliedMark, StoreError> {
        self.load_audit_head()?;
        self.load_frozen()?;
        self.load_limits()?;
        self.load_clock()?;
        self.load_fence()?;
        if planted(self.planted, PlantedBug::AuditHeadNotLoaded) {
            self.audit_head = AuditHead::default();
        }
        let corrupt = |what: &str, error: CodecError| StoreError(format!("shard {}: stored {what} does not decode: {error}", self.shard));
        self.pending.clear();
        self.net_inflow.clear();
        let (start, end) = keys::kind_range(self.shard, self.generation, keys::PENDING);
        for (key, _) in self.store.scan(&start, &end, usize::MAX, false) {
            let id = std::str::from_utf8(&key[start.len()..]).ok().and_then(|text| TransferId::new(text).ok());
            let id = id.ok_or_else(|| StoreError(format!("shard {}: bad pending key", self.shard)))?;
            self.pending.insert(id);
        }
        let (start, end) = keys::kind_range(self.shard, self.generation, keys::INFLOW);
        for (key, value) in self.store.scan(&start, &end, usize::MAX, false) {
            let code = std::str::from_utf8(&key[start.len()..]).ok().and_then(Currency::from_code);
            let currency = code.ok_or_else(|| StoreError(format!("shard {}: bad inflow key", self.shard)))?;
            let inflow: Minor = decode_value(&value).map_err(|error| corrupt("inflow", error))?;
            self.net_inflow.insert(currency, inflow);
        }
        self.account_count = match self.store.get(&keys::account_count(self.shard, self.generation)) {
            Some(bytes) => decode_value(&bytes).map_err(|error| corrupt("account count", error))?,
            None => 0,
        };
        match self.store.get(&keys::applied(self.shard, self.generation)) {
            Some(bytes) => decode_value(&bytes).map_err(|error| corrupt("applied mark", error)),
            None => Ok(AppliedMark::default()),
        }
    }

    /// Test-only: plants a bug in this ledger (inert without the `planted-bugs` feature).
    pub fn set_planted(&mut self, bug: PlantedBug) {
        self.planted = bug;
        self.accounts.set_planted(bug);
        if planted(bug, PlantedBug::AuditHeadNotLoaded) {
            // The bug: as if `load_meta` had not read the audit head.
            self.audit_head = AuditHead::default();
        }
    }

    pub fn shard(&self) -> ShardId {
        self.shard
    }

    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    pub fn store(&self) -> &Arc<dyn KvStore> {
        &self.store
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.accounts.stats()
    }

    /// Sets the account cache's budget (the node splits its `cache_mb` among its shards).
    pub fn set_cache_budget(&mut self, bytes: usize) {
        self.accounts.set_budget(bytes);
    }

    /// A record by key: this round's writes first, then the store.
    fn read<T: DeserializeOwned>(&self, key: &[u8]) -> Option<T> {
        let bytes = match self.overlay.get(key) {
            Some(written) => written.clone()?,
            None => self.store.get(key)?,
        };
        match decode_value(&bytes) {
            Ok(value) => Some(value),
            Err(error) => {
                self.damaged(format!("a stored record does not decode: {error}"));
                None
            }
        }
    }

    /// Whether a record of a shard's state (its key after the generation prefix, its value)
    /// decodes as what its kind says (`keys.rs`). Snapshot streams check every record on both
    /// ends: a damaged record is neither sent nor staged.
    pub fn check_record(suffix: &[u8], value: &[u8]) -> Result<(), String> {
        fn decodes<T: DeserializeOwned>(value: &[u8]) -> Result<(), String> {
            decode_value::<T>(value).map(|_| ()).map_err(|error| error.to_string())
        }
        if let Some(checked) = suffix.first().and_then(|kind| system::check_system_record(*kind, value)) {
            return checked;
        }
        if let Some(checked) = suffix.first().and_then(|kind| stops::check_stop_record(*kind, value)) {
            return checked;
        }
        if let Some(checked) = suffix.first().and_then(|kind| refunds::check_refund_record(*kind, value)) {
            return checked;
        }
        if let Some(checked) = suffix.first().and_then(|kind| holds::check_hold_record(*kind, value)) {
            return checked;
        }
        if let Some(checked) = suffix.first().and_then(|kind| statements::check_statement_record(*kind, value)) {
            return checked;
        }
        if let Some(checked) = suffix.first().and_then(|kind| customers::check_customer_record(*kind, value)) {
            return checked;
        }
        if let Some(checked) = suffix.first().and_then(|kind| risk::check_risk_record(*kind, value)) {
            return checked;
        }
        if let Some(checked) = suffix.first().and_then(|kind| verification::check_verification_record(*kind, value)) {
            return checked;
        }
        if let Some(checked) = suffix.first().and_then(|kind| fence::check_fence_record(*kind, value)) {
            return checked;
        }
        match suffix.first().copied() {
            Some(keys::ACCOUNT) => decodes::<StoredAccount>(value),
            Some(keys::TRANSFER) => decodes::<TransferRecord>(value),
            Some(keys::CREDIT) => decodes::<CreditRecord>(value),
            Some(keys::RESERVATION) => decodes::<TransferBody>(value),
            Some(keys::HISTORY) => decodes::<HistoryItem>(value),
            Some(keys::PENDING) if value.is_empty() => Ok(()),
            Some(keys::PENDING) => Err("a pending marker with a value".to_string()),
            Some(keys::INFLOW) => decodes::<Minor>(value),
            Some(keys::APPLIED) => decodes::<AppliedMark>(value),
            Some(keys::ACCOUNT_COUNT) => decodes::<u64>(value),
            Some(kind) => Err(format!("unknown record kind {kind:#04x}")),
            None => Err("an empty key".to_string()),
        }
    }

    /// Records the first damage met (see `damage`).
    pub(crate) fn damaged(&self, reason: String) {
        let mut damage = self.damage.borrow_mut();
        if damage.is_none() {
            *damage = Some(format!("shard {}: {reason}", self.shard));
        }
    }

    /// The first stored record this ledger met that does not decode, if any: what was read
    /// from it must not be used, and the replica must stop (it is quarantined).
    pub fn damage(&self) -> Option<String> {
        self.damage.borrow().clone()
    }

    fn write<T: Serialize>(&mut self, key: Key, value: &T) {
        self.overlay.insert(key, Some(encode_value(value)));
    }

    fn stored_account(&self, id: &AccountId) -> Option<Account> {
        let stored: StoredAccount = self.read(&keys::account(self.shard, self.generation, id))?;
        Some(Account {
            id: id.clone(),
            currency: stored.currency,
            kind: stored.kind,
            balance: stored.balance,
            debits_pending: stored.debits_pending,
            created_at_ms: stored.created_at_ms,
            history_len: stored.history_len,
        })
    }

    /// An account as it is now, without activating it (reads for clients).
    pub fn account(&self, id: &AccountId) -> Option<Account> {
        if let Some(account) = self.accounts.peek(id) {
            return Some(account.clone());
        }
        self.stored_account(id)
    }

    /// Activates an account for a command (loading it from the store on a miss).
    fn activate(&mut self, id: &AccountId) -> Option<&mut Account> {
        let hit = self.accounts.contains(id);
        if !hit {
            let account = self.stored_account(id)?;
            self.accounts.activate(account);
        }
        self.accounts.get_mut(id, hit)
    }

    /// Every account of the shard, in id order. Proportional to the shard: for tests, the
    /// simulator's checkers and verification of a whole ledger, never on a hot path.
    pub fn accounts(&self) -> Vec<Account> {
        let (start, end) = keys::kind_range(self.shard, self.generation, keys::ACCOUNT);
        let mut ids: BTreeSet<AccountId> = BTreeSet::new();
        for (key, _) in self.store.scan(&start, &end, usize::MAX, false) {
            if let Some(id) = std::str::from_utf8(&key[start.len()..]).ok().and_then(|text| AccountId::new(text).ok()) {
                ids.insert(id);
            }
        }
        ids.extend(self.accounts.ids().cloned());
        ids.iter().filter_map(|id| self.account(id)).collect()
    }

    /// How many accounts the shard has (kept beside them, not counted).
    pub fn account_count(&self) -> u64 {
        self.account_count
    }

    pub fn transfer(&self, id: &TransferId) -> Option<TransferRecord> {
        self.read(&keys::transfer(self.shard, self.generation, keys::TRANSFER, id))
    }

    pub fn credit(&self, id: &TransferId) -> Option<CreditRecord> {
        self.read(&keys::transfer(self.shard, self.generation, keys::CREDIT, id))
    }

    /// The body a transfer id whose home is this shard is bound to.
    pub fn reservation(&self, id: &TransferId) -> Option<TransferBody> {
        self.read(&keys::transfer(self.shard, self.generation, keys::RESERVATION, id))
    }

    /// Every record of one kind, in key order (committed ones only). For tests and checkers.
    fn scan_kind<T: DeserializeOwned>(&self, kind: u8) -> Vec<(Key, T)> {
        let (start, end) = keys::kind_range(self.shard, self.generation, kind);
        let mut out = Vec::new();
        for (key, value) in self.store.scan(&start, &end, usize::MAX, false) {
            match decode_value(&value) {
                Ok(decoded) => out.push((key[start.len()..].to_vec(), decoded)),
                Err(error) => self.damaged(format!("a stored record does not decode: {error}")),
            }
        }
        out
    }

    /// Every payer record (committed). Proportional to history: tests and checkers only.
    pub fn transfers(&self) -> Vec<TransferRecord> {
        self.scan_kind(keys::TRANSFER).into_iter().map(|(_, record)| record).collect()
    }

    /// Every payee decision (committed). Proportional to history: tests and checkers only.
    pub fn credits(&self) -> Vec<CreditRecord> {
        self.scan_kind(keys::CREDIT).into_iter().map(|(_, record)| record).collect()
    }

    /// Every reservation (committed). Proportional to history: tests and checkers only.
    pub fn reservations(&self) -> Vec<(TransferId, TransferBody)> {
        self.scan_kind(keys::RESERVATION)
            .into_iter()
            .filter_map(|(key, body)| std::str::from_utf8(&key).ok().and_then(|text| TransferId::new(text).ok()).map(|id| (id, body)))
            .collect()
    }

    /// Cross-shard transfers prepared here and waiting for the payee shard's decision.
    pub fn pending(&self) -> Vec<TransferRecord> {
        self.pending.iter().filter_map(|id| self.transfer(id)).collect()
    }

    pub fn pending_ids(&self) -> impl Iterator<Item = &TransferId> {
        self.pending.iter()
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// A page of an account's history, newest first, read from the store. `before` is the
    /// cursor from the previous page (a position in the history); the returned cursor is
    /// `None` on the last page.
    pub fn history(&self, account: &AccountId, before: Option<u64>, limit: usize) -> Option<(Vec<TransferView>, Option<u64>)> {
        let length = self.account(account)?.history_len;
        let end = before.map_or(length, |cursor| cursor.min(length));
        let prefix = keys::history_prefix(self.shard, self.generation, account);
        let start_key = prefix.clone();
        let end_key = keys::history(self.shard, self.generation, account, end);
        let items = self.store.scan(&start_key, &end_key, limit, true);
        let mut views = Vec::new();
        let mut last_position = end;
        for (key, value) in items {
            let Ok(position_bytes) = <[u8; 8]>::try_from(&key[prefix.len()..]) else {
                continue;
            };
            last_position = u64::from_be_bytes(position_bytes);
            let item: HistoryItem = match decode_value(&value) {
                Ok(item) => item,
                Err(error) => {
                    self.damaged(format!("a stored history item does not decode: {error}"));
                    continue;
                }
            };
            if let Some(view) = self.view(&item) {
                views.push(view);
            }
        }
        let next = if last_position > 0 && views.len() == limit { Some(last_position) } else { None };
        Some((views, next))
    }

    fn view(&self, item: &HistoryItem) -> Option<TransferView> {
        match item.record {
            RecordKind::Transfer => self.transfer_view(&item.transfer),
            RecordKind::Credit => self.credit(&item.transfer).map(|record| TransferView::from(&record)),
        }
    }

    /// Applies one command and reports it with the records its waiters need (`report`: a
    /// leader's replica, which answers clients; followers skip building them). `now_ms` is the
    /// proposer's timestamp from the log entry, the same on every replica. Invalid commands never
    /// panic: they come back as rejections. The only mutator of the ledger; its writes reach the
    /// store at `commit_round`.
    pub fn apply_command(&mut self, entry_ms: u64, command: Command, report: bool) -> AppliedCommand {
        // The shard clock: the entry's time, never behind an earlier entry's.
        let now_ms = self.advance_clock(entry_ms);
        let applied = match command {
            Command::CreateAccount(create) => {
                let outcome = self.create_account(now_ms, &create);
                let account = if report { self.account(&create.id).map(|account| AccountView::from(&account)) } else { None };
                AppliedCommand::Account { create, outcome, account }
            }
            Command::Transfer(transfer) => {
                let outcome = self.transfer_command(now_ms, &transfer, true);
                let stored = matches!(&outcome, TransferOutcome::Recorded(_) | TransferOutcome::Replayed(_));
                let record = if report && stored { self.transfer(&transfer.id).map(|record| TransferView::from(&record)) } else { None };
                AppliedCommand::Transfer { transfer, outcome, record }
            }
            Command::Refund(refund) => {
                let outcome = self.refund_command(now_ms, &refund);
                let transfer = refund.transfer;
                let stored = matches!(&outcome, TransferOutcome::Recorded(_) | TransferOutcome::Replayed(_));
                let record = if report && stored { self.transfer(&transfer.id).map(|record| TransferView::from(&record)) } else { None };
                AppliedCommand::Transfer { transfer, outcome, record }
            }
            Command::Hold(hold) => {
                let outcome = self.hold_command(now_ms, &hold);
                self.hold_applied(hold.transfer.id.clone(), outcome, report)
            }
            Command::Capture(capture) => {
                let outcome = self.capture_command(now_ms, &capture);
                self.hold_applied(capture.id.clone(), outcome, report)
            }
            Command::Void(void) => {
                let outcome = self.void_command(now_ms, &void);
                self.hold_applied(void.id.clone(), outcome, report)
            }
            Command::ExpireHolds => {
                let (expired, settled) = self.expire_holds(now_ms);
                AppliedCommand::HoldsExpired { expired, settled }
            }
            Command::Verify(command) => {
                let outcome = self.verify_command(now_ms, &command);
                self.hold_applied(command.id().clone(), outcome, report)
            }
            Command::Customer(command) => {
                let outcome = self.customer_command(now_ms, &command);
                AppliedCommand::Customer { command, outcome }
            }
            Command::Risk(command) => {
                let outcome = self.risk_command(&command);
                AppliedCommand::Risk { command, outcome }
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
                let record = if report { self.transfer(&finalize.id).map(|record| TransferView::from(&record)) } else { None };
                AppliedCommand::Finalize { finalize, outcome, record }
            }
            Command::System(command) => {
                let outcome = self.system_command(now_ms, &command);
                AppliedCommand::System { command, outcome }
            }
            Command::Stop(command) => {
                let outcome = self.stop_command(now_ms, &command);
                AppliedCommand::Stop { command, outcome }
            }
            Command::Fence(epoch) => AppliedCommand::Fence { outcome: self.fence_command(epoch) },
        };
        if cfg!(debug_assertions) {
            self.assert_touched_accounts(&applied);
        }
        if planted(self.planted, PlantedBug::PassivateUnflushed) {
            // The bug: passivate while the round's changes are still only in the cache.
            self.accounts.passivate_over_budget(true);
        }
        applied
    }

    /// A hold, capture or void as applied: its `transfer` is the record's body after the
    /// command (what a cross-shard capture's credit carries; `None` when nothing is stored under
    /// the id), its record comes with the hold.
    fn hold_applied(&mut self, id: TransferId, outcome: TransferOutcome, report: bool) -> AppliedCommand {
        let transfer = self.transfer(&id).map(|record| TransferCmd {
            id: id.clone(),
            from: record.from,
            to: record.to,
            amount: record.amount,
            currency: record.currency,
        });
        let record = if report { self.transfer_view(&id) } else { None };
        AppliedCommand::Hold { id, transfer, outcome, record }
    }

    /// `apply_command` without the records, committed at once: the outcome alone (what the
    /// tests compare).
    pub fn apply(&mut self, now_ms: u64, command: &Command) -> Applied {
        let applied = match self.apply_command(now_ms, command.clone(), false) {
            AppliedCommand::Account { outcome, .. } => Applied::Account(outcome),
            AppliedCommand::Transfer { outcome, .. } => Applied::Transfer(outcome),
            AppliedCommand::Reserve { outcome, .. } => Applied::Reserve(outcome),
            AppliedCommand::Credit { outcome, .. } => Applied::Credit(outcome),
            AppliedCommand::Finalize { outcome, .. } => Applied::Finalize(outcome),
            AppliedCommand::System { outcome, .. } => Applied::System(outcome),
            AppliedCommand::Stop { outcome, .. } => Applied::Stop(outcome),
            AppliedCommand::Hold { outcome, .. } => Applied::Transfer(outcome),
            AppliedCommand::HoldsExpired { expired, .. } => Applied::HoldsExpired(expired.len()),
            AppliedCommand::Customer { outcome, .. } => Applied::Customer(outcome),
            AppliedCommand::Risk { outcome, .. } => Applied::Risk(outcome),
            AppliedCommand::Fence { outcome } => Applied::Fence(outcome),
        };
        let mark = AppliedMark { index: now_ms, ..AppliedMark::default() };
        self.commit_round(&mark).expect("a test store takes writes");
        applied
    }

    /// Writes everything the commands since the last commit changed, with the applied mark, as
    /// one batch; then passivates cold accounts while the cache is over its budget. The batch is
    /// in the store (readable) at once and durable after the store's next persist.
    pub fn commit_round(&mut self, mark: &AppliedMark) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for (id, account) in self.accounts.take_dirty() {
            let stored = StoredAccount {
                currency: account.currency,
                kind: account.kind,
                balance: account.balance,
                debits_pending: account.debits_pending,
                created_at_ms: account.created_at_ms,
                history_len: account.history_len,
            };
            batch.put(keys::account(self.shard, self.generation, &id), encode_value(&stored));
        }
        for (key, value) in std::mem::take(&mut self.overlay) {
            match value {
                Some(value) => batch.put(key, value),
                None => batch.delete(key),
            }
        }
        for currency in std::mem::take(&mut self.inflow_changed) {
            let inflow = self.net_inflow.get(&currency).copied().unwrap_or(0);
            batch.put(keys::inflow(self.shard, self.generation, currency), encode_value(&inflow));
        }
        if std::mem::take(&mut self.account_count_changed) {
            batch.put(keys::account_count(self.shard, self.generation), encode_value(&self.account_count));
        }
        if let Some((key, value)) = self.clock_write() {
            batch.put(key, value);
        }
        batch.put(keys::applied(self.shard, self.generation), encode_value(mark));
        self.store.write(batch)?;
        self.accounts.passivate_over_budget(false);
        Ok(())
    }

    /// Switches the shard to a snapshot staged under `generation` (its records, written by
    /// `stage`), dropping every cached account: the old generation is left for the caller to
    /// delete in the background. Returns the snapshot's applied mark.
    pub fn install_generation(&mut self, generation: u32) -> Result<AppliedMark, StoreError> {
        let mut batch = WriteBatch::default();
        batch.put(keys::generation_key(self.shard), generation.to_be_bytes().to_vec());
        self.store.write(batch)?;
        self.generation = generation;
        self.accounts.clear();
        self.overlay.clear();
        self.inflow_changed.clear();
        self.account_count_changed = false;
        self.clock_changed = false;
        self.load_meta()
    }

    fn create_account(&mut self, now_ms: u64, create: &CreateAccount) -> AccountOutcome {
        if create.kind.prepaid() && create.currency.code() != PREPAID_CURRENCY {
            // The edge refuses it first; a log entry is input too.
            return AccountOutcome::WrongShard;
        }
        if self.owner(&create.id) != self.shard {
            // Committed entries come from a leader that checked routing; refuse rather than
            // panic on one that did not (a log entry is input too).
            return AccountOutcome::WrongShard;
        }
        if let Some(customer) = customer_of(&create.id) {
            if self.customer(&customer).is_none() {
                return AccountOutcome::CustomerNotFound;
            }
        }
        if let Some(existing) = self.activate(&create.id) {
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
            history_len: 0,
        };
        self.accounts.insert_new(account);
        self.account_count += 1;
        self.account_count_changed = true;
        AccountOutcome::Created
    }

    /// Binds an id to a body on its home shard: the first body wins, forever.
    fn reserve_command(&mut self, reserve: &ReserveCmd) -> ReserveOutcome {
        if home_shard_of(&reserve.id, self.shard_count) != self.shard {
            return ReserveOutcome::WrongShard;
        }
        match self.reservation(&reserve.id) {
            Some(body) if body == reserve.body => ReserveOutcome::Replayed,
            Some(_) if planted(self.planted, PlantedBug::IdReuseUnchecked) => ReserveOutcome::Replayed,
            Some(_) => ReserveOutcome::Reused,
            None => {
                self.write(keys::transfer(self.shard, self.generation, keys::RESERVATION, &reserve.id), &reserve.body);
                ReserveOutcome::Reserved
            }
        }
    }

    /// A transfer (or, without `may_challenge`, a refund's transfer: refunds are never held for
    /// verification).
    fn transfer_command(&mut self, now_ms: u64, transfer: &TransferCmd, may_challenge: bool) -> TransferOutcome {
        if self.owner(&transfer.from) != self.shard {
            return TransferOutcome::Refused(RejectCode::WrongShard);
        }
        if let Some(existing) = self.transfer(&transfer.id) {
            // A hold's id is not a plain transfer's, whatever its body became at capture.
            if existing.same_request(transfer) && self.hold(&transfer.id).is_none() {
                return TransferOutcome::Replayed(existing.status);
            }
            return TransferOutcome::Refused(RejectCode::IdempotencyKeyReused);
        }
        let (home_here, reserved) = match self.admit(transfer) {
            Ok(admitted) => admitted,
            Err(code) => return TransferOutcome::Refused(code),
        };
        let cross_shard = self.owner(&transfer.to) != self.shard;
        let status = self.decide(now_ms, transfer, cross_shard, may_challenge);
        let record = TransferRecord::new(transfer, status.clone(), cross_shard, now_ms);
        self.apply_decision(now_ms, transfer, &status);
        if home_here && reserved.is_none() {
            self.write(keys::transfer(self.shard, self.generation, keys::RESERVATION, &transfer.id), &transfer.body());
        }
        self.write(keys::transfer(self.shard, self.generation, keys::TRANSFER, &transfer.id), &record);
        TransferOutcome::Recorded(status)
    }

    /// What a transfer becomes now: rejected by its payer's checks, awaiting verification (when
    /// `may_challenge` and its payer's customer must prove it), pending (cross shard), or posted
    /// or rejected by its payee's checks (same shard). Changes nothing.
    fn decide(&mut self, now_ms: u64, transfer: &TransferCmd, cross_shard: bool, may_challenge: bool) -> TransferStatus {
        let payer_check = match self.check_payer(now_ms, transfer, !cross_shard) {
            Err(RejectCode::InsufficientFunds) if cross_shard && planted(self.planted, PlantedBug::SkipOverdraftCheck) => Ok(()),
            other => other,
        };
        match payer_check {
            Err(code) => TransferStatus::Rejected(code),
            Ok(())
                if may_challenge
                    && self.verification_needed(transfer).is_some()
                    && !(cross_shard && planted(self.planted, PlantedBug::VerificationSkippedCrossShard)) =>
            {
                TransferStatus::RequiresVerification
            }
            Ok(()) if cross_shard => TransferStatus::Pending,
            Ok(()) => match self.check_payee(&transfer.to, transfer.currency, transfer.amount, self.kind_of(&transfer.from)) {
                Err(code) => TransferStatus::Rejected(code),
                Ok(()) => TransferStatus::Posted,
            },
        }
    }

    /// Carries out what `decide` found: posts both sides, prepares the debit (pending), or
    /// opens the verification challenge. The caller writes the record.
    fn apply_decision(&mut self, now_ms: u64, transfer: &TransferCmd, status: &TransferStatus) {
        match status {
            TransferStatus::Posted => {
                self.count_spend(&transfer.from, transfer.amount, now_ms);
                self.post_debit(&transfer.from, &transfer.to, transfer.amount, &transfer.id);
                self.post_credit(&transfer.to, &transfer.from, transfer.amount, &transfer.id, RecordKind::Transfer);
            }
            TransferStatus::Pending => {
                self.count_spend(&transfer.from, transfer.amount, now_ms);
                let payer = self.activate(&transfer.from).expect("checked payer");
                payer.debits_pending = payer.debits_pending.checked_add(transfer.amount).expect("bounded amounts");
                self.push_history(&transfer.from, &transfer.id, RecordKind::Transfer);
                self.pending.insert(transfer.id.clone());
                self.overlay.insert(keys::transfer(self.shard, self.generation, keys::PENDING, &transfer.id), Some(Vec::new()));
            }
            TransferStatus::RequiresVerification => {
                let methods = self.verification_needed(transfer).unwrap_or_else(|| vec![Factor::OneTimeCode]);
                self.open_challenge(now_ms, &transfer.id, methods);
            }
            TransferStatus::Rejected(_) | TransferStatus::Held | TransferStatus::Voided | TransferStatus::Expired => {}
        }
    }

    /// The checks of a new transfer (or hold) under an unused id: whether the id's home is this
    /// shard and, if so, its reservation (which must be for this body), then the body's own
    /// validity. When the id's home is this shard, the reservation happens here, in the same
    /// apply; otherwise the origin reserved it on the home shard before proposing the command.
    fn admit(&self, transfer: &TransferCmd) -> Result<(bool, Option<TransferBody>), RejectCode> {
        let home_here = home_shard_of(&transfer.id, self.shard_count) == self.shard;
        let reserved = if home_here { self.reservation(&transfer.id) } else { None };
        if let Some(reserved) = &reserved {
            if !reserved.matches(transfer) && !planted(self.planted, PlantedBug::IdReuseUnchecked) {
                return Err(RejectCode::IdempotencyKeyReused);
            }
        }
        if transfer.from == transfer.to {
            return Err(RejectCode::SameAccount);
        }
        if transfer.amount <= 0 || transfer.amount > AMOUNT_MINOR_MAX {
            return Err(RejectCode::InvalidAmount);
        }
        Ok((home_here, reserved))
    }

    /// The payer exists, holds this currency and (unless it is a settlement account) has the
    /// funds available: posted balance minus debits already pending.
    fn check_payer(&mut self, now_ms: u64, transfer: &TransferCmd, same_shard: bool) -> Result<(), RejectCode> {
        let slack = Minor::from(same_shard && planted(self.planted, PlantedBug::OverdraftOffByOne));
        let ignored = !same_shard && planted(self.planted, PlantedBug::StopIgnoredCrossShard);
        let frozen = self.frozen(&transfer.from).debits > 0 && !ignored;
        let payer = self.activate(&transfer.from).ok_or(RejectCode::PayerNotFound)?;
        if payer.currency != transfer.currency {
            return Err(RejectCode::CurrencyMismatch);
        }
        if frozen {
            return Err(RejectCode::AccountFrozen);
        }
        if payer.kind != AccountKind::Settlement {
            let available = payer.available();
            if available + slack < transfer.amount {
                return Err(RejectCode::InsufficientFunds);
            }
        }
        if payer.balance.checked_sub(payer.debits_pending + transfer.amount).is_none() {
            return Err(RejectCode::BalanceOverflow);
        }
        let kind = payer.kind;
        let unchecked = !same_shard && planted(self.planted, PlantedBug::KycLimitUncheckedCrossShard);
        if !unchecked {
            self.check_limits(&transfer.from, kind, transfer.currency, transfer.amount, now_ms)?;
        }
        Ok(())
    }

    /// A same-shard payer's kind (what `check_payee` needs; the payer was just checked).
    fn kind_of(&self, payer: &AccountId) -> AccountKind {
        self.account(payer).map_or(AccountKind::Customer, |account| account.kind)
    }

    /// The payee exists, holds this currency, takes credits (no stop blocks them), stays under a
    /// prepaid cap, and may be paid by a payer of `payer_kind` (an anonymous prepaid card pays
    /// merchants only: no cash-out).
    fn check_payee(&mut self, payee: &AccountId, currency: Currency, amount: Minor, payer_kind: AccountKind) -> Result<(), RejectCode> {
        let frozen = self.frozen(payee).credits > 0;
        let account = self.activate(payee).ok_or(RejectCode::PayeeNotFound)?;
        if account.currency != currency {
            return Err(RejectCode::CurrencyMismatch);
        }
        if frozen {
            return Err(RejectCode::AccountFrozen);
        }
        if account.balance.checked_add(AMOUNT_MINOR_MAX).is_none() {
            return Err(RejectCode::BalanceOverflow);
        }
        // A prepaid card never holds more than its cap (credits post on this shard, both paths).
        if account.kind.balance_cap().is_some_and(|cap| account.balance + amount > cap) {
            return Err(RejectCode::PrepaidLimitExceeded);
        }
        if payer_kind == AccountKind::PrepaidAnonymous && account.kind != AccountKind::Merchant {
            return Err(RejectCode::PrepaidCashOut);
        }
        Ok(())
    }

    /// Decides a cross-shard credit on the payee's shard. The first decision for an id wins and
    /// is returned to every later request for it, so duplicates and retries change nothing.
    fn credit_command(&mut self, now_ms: u64, credit: &CreditCmd) -> CreditOutcome {
        let valid_amount = credit.amount > 0 && credit.amount <= AMOUNT_MINOR_MAX;
        let payer_elsewhere =
            credit.payer_shard < self.shard_count && credit.payer_shard != self.shard && self.owner(&credit.from) == credit.payer_shard;
        if self.owner(&credit.to) != self.shard || !valid_amount || !payer_elsewhere {
            // Not a credit this shard can decide: no decision, nothing stored, nobody told.
            return CreditOutcome { decision: None, decided_now: false };
        }
        if let Some(existing) = self.credit(&credit.id) {
            if !existing.same_transfer(credit) {
                // Another payer used this id already: refuse without touching the first decision.
                return CreditOutcome { decision: Some(Decision::Refused(RejectCode::IdempotencyKeyReused)), decided_now: false };
            }
            let decision = existing.decision.clone();
            if decision == Decision::Credited && planted(self.planted, PlantedBug::DoubleCredit) {
                self.post_credit(&credit.to, &credit.from, credit.amount, &credit.id, RecordKind::Credit);
                self.add_inflow(credit.currency, credit.amount);
            }
            return CreditOutcome { decision: Some(decision), decided_now: false };
        }
        let decision = if credit.prevent {
            Decision::Refused(RejectCode::CreditTimeout)
        } else {
            match self.check_payee(&credit.to, credit.currency, credit.amount, credit.payer_kind) {
                Ok(()) => Decision::Credited,
                Err(code) => Decision::Refused(code),
            }
        };
        if decision == Decision::Credited {
            self.post_credit(&credit.to, &credit.from, credit.amount, &credit.id, RecordKind::Credit);
            self.add_inflow(credit.currency, credit.amount);
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
        self.write(keys::transfer(self.shard, self.generation, keys::CREDIT, &credit.id), &record);
        CreditOutcome { decision: Some(decision), decided_now: true }
    }

    /// Copies the payee shard's decision into the payer's record: post the pending debit, or
    /// release it. A second finalize for the same id is a no-op.
    fn finalize_command(&mut self, now_ms: u64, finalize: &FinalizeCmd) -> FinalizeOutcome {
        let Some(mut record) = self.transfer(&finalize.id) else {
            return FinalizeOutcome { status: None, finalized_now: false };
        };
        if record.status != TransferStatus::Pending {
            return FinalizeOutcome { status: Some(record.status), finalized_now: false };
        }
        if record.body() != finalize.body && !planted(self.planted, PlantedBug::IdReuseUnchecked) {
            // A decision about another transfer under the same id: never ours to copy.
            return FinalizeOutcome { status: Some(record.status), finalized_now: false };
        }
        let (payer, amount, currency) = (record.from.clone(), record.amount, record.currency);
        let post_refused = planted(self.planted, PlantedBug::FinalizePostsRefused);
        let Some(account) = self.activate(&payer) else {
            // Only damage (the payer's record does not decode) hides a pending transfer's payer:
            // nothing of this replica's round leaves, and it is quarantined.
            assert!(self.damage.borrow().is_some(), "a pending transfer's payer exists");
            return FinalizeOutcome { status: None, finalized_now: false };
        };
        account.debits_pending = account.debits_pending.checked_sub(amount).expect("pending covers the amount");
        let status = match &finalize.decision {
            Decision::Refused(_) if post_refused => {
                account.balance = account.balance.checked_sub(amount).expect("bounded amounts");
                self.add_inflow(currency, -amount);
                TransferStatus::Posted
            }
            Decision::Credited => {
                account.balance = account.balance.checked_sub(amount).expect("bounded amounts");
                self.add_inflow(currency, -amount);
                TransferStatus::Posted
            }
            Decision::Refused(code) => TransferStatus::Rejected(*code),
        };
        if status == TransferStatus::Posted && !planted(self.planted, PlantedBug::MovementLostOnFinalize) {
            self.record_movement(&payer, &finalize.id, &record.to, -amount);
        }
        if matches!(status, TransferStatus::Rejected(_)) {
            // A refund the original payer's shard refused gives its amount back; so does a
            // capture the payee's shard refused.
            self.release_refund(&finalize.id);
            self.capture_refused(&finalize.id);
            // What did not leave no longer counts against the payer's limits.
            self.uncount_spend(&payer, amount, record.created_at_ms);
        }
        record.status = status.clone();
        record.finalized_at_ms = Some(now_ms);
        self.write(keys::transfer(self.shard, self.generation, keys::TRANSFER, &finalize.id), &record);
        self.pending.remove(&finalize.id);
        self.overlay.insert(keys::transfer(self.shard, self.generation, keys::PENDING, &finalize.id), None);
        FinalizeOutcome { status: Some(status), finalized_now: true }
    }

    fn add_inflow(&mut self, currency: Currency, amount: Minor) {
        let inflow = self.net_inflow.entry(currency).or_insert(0);
        *inflow = inflow.checked_add(amount).expect("bounded amounts");
        self.inflow_changed.insert(currency);
    }

    fn push_history(&mut self, account: &AccountId, transfer: &TransferId, record: RecordKind) {
        let holder = self.activate(account).expect("an account with history exists");
        let position = holder.history_len;
        holder.history_len += 1;
        let item = HistoryItem { transfer: transfer.clone(), record };
        let key = keys::history(self.shard, self.generation, account, position);
        self.write(key, &item);
    }

    fn post_debit(&mut self, payer: &AccountId, payee: &AccountId, amount: Minor, transfer: &TransferId) {
        let account = self.activate(payer).expect("checked payer");
        account.balance = account.balance.checked_sub(amount).expect("checked for overflow");
        self.record_movement(payer, transfer, payee, -amount);
        self.push_history(payer, transfer, RecordKind::Transfer);
    }

    fn post_credit(&mut self, payee: &AccountId, payer: &AccountId, amount: Minor, transfer: &TransferId, record: RecordKind) {
        let account = self.activate(payee).expect("checked payee");
        account.balance = account.balance.checked_add(amount).expect("checked for overflow");
        self.record_movement(payee, transfer, payer, amount);
        self.push_history(payee, transfer, record);
    }

    fn owner(&self, account: &AccountId) -> ShardId {
        shard_of(account, self.shard_count)
    }

    /// Invariant 3 on the accounts a command touched: no overdraft, pending debits never negative.
    fn assert_touched_accounts(&self, applied: &AppliedCommand) {
        let finalized_payer = match applied {
            AppliedCommand::Finalize { finalize, .. } => self.transfer(&finalize.id).map(|record| record.from),
            _ => None,
        };
        let touched: [Option<&AccountId>; 2] = match applied {
            AppliedCommand::Account { create, .. } => [Some(&create.id), None],
            AppliedCommand::Transfer { transfer, .. } | AppliedCommand::Hold { transfer: Some(transfer), .. } => {
                [Some(&transfer.from), Some(&transfer.to)]
            }
            AppliedCommand::Hold { transfer: None, .. } => [None, None],
            AppliedCommand::Credit { credit, .. } => [Some(&credit.to), None],
            AppliedCommand::Finalize { .. } => [finalized_payer.as_ref(), None],
            AppliedCommand::Reserve { .. }
            | AppliedCommand::System { .. }
            | AppliedCommand::Stop { .. }
            | AppliedCommand::HoldsExpired { .. }
            | AppliedCommand::Customer { .. }
            | AppliedCommand::Risk { .. }
            | AppliedCommand::Fence { .. } => [None, None],
        };
        for id in touched.into_iter().flatten() {
            if let Some(account) = self.account(id) {
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

    /// Every invariant one shard can check alone, as a result. Reads the whole shard: for tests,
    /// the simulator and verification of a staged snapshot, never on a hot path.
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
        let mut pending_sums: BTreeMap<AccountId, Minor> = BTreeMap::new();
        let accounts = self.accounts();
        for account in &accounts {
            account.verify()?;
            ensure!(self.owner(&account.id) == self.shard, "account {} on the wrong shard", account.id);
            let sum = sums.entry(account.currency).or_insert(0);
            *sum = sum.checked_add(account.balance).ok_or_else(|| format!("shard {} balances overflow", self.shard))?;
        }
        for id in &self.pending {
            let record = self.transfer(id).ok_or_else(|| format!("pending {id} has no record"))?;
            ensure!(record.status == TransferStatus::Pending, "transfer {id} in pending set");
            let sum = pending_sums.entry(record.from.clone()).or_insert(0);
            *sum = sum.checked_add(record.amount).ok_or_else(|| format!("pending debits of {} overflow", record.from))?;
        }
        for record in self.transfers() {
            let id = &record.id;
            ensure!(record.amount > 0 && record.amount <= AMOUNT_MINOR_MAX, "transfer {id} has amount {}", record.amount);
            ensure!(self.owner(&record.from) == self.shard, "transfer {id} recorded off its payer's shard");
            if record.status == TransferStatus::Pending {
                ensure!(self.pending.contains(id), "pending transfer {id} not tracked");
            }
            if home_shard_of(id, self.shard_count) == self.shard {
                let reserved = self.reservation(id);
                // A captured hold's record says what was captured; its id was reserved for what it held.
                let mut body = record.body();
                if let Some(hold) = self.hold(id) {
                    body.amount = hold.held;
                }
                ensure!(reserved == Some(body), "transfer {id} is not the body its id is reserved for");
            }
        }
        for credit in self.credits() {
            let id = &credit.id;
            ensure!(credit.amount > 0 && credit.amount <= AMOUNT_MINOR_MAX, "credit {id} has amount {}", credit.amount);
            ensure!(self.owner(&credit.to) == self.shard, "credit {id} decided off its payee's shard");
        }
        for (id, _) in self.reservations() {
            ensure!(home_shard_of(&id, self.shard_count) == self.shard, "reservation {id} on the wrong shard");
        }
        for (payer, held) in self.verify_holds()? {
            let sum = pending_sums.entry(payer).or_insert(0);
            *sum = sum.checked_add(held).ok_or("held amounts overflow")?;
        }
        for account in &accounts {
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
        self.verify_audit_chain()?;
        self.verify_nonces()?;
        self.verify_stops()?;
        self.verify_customers()?;
        self.verify_challenges()?;
        self.verify_refunds()?;
        self.verify_movements()?;
        Ok(())
    }

    /// Per currency, the money that entered this shard through cross-shard transfers minus what
    /// left. Summed over all shards, plus the amounts credited but not yet finalized, it is zero.
    pub fn net_inflow(&self) -> &BTreeMap<Currency, Minor> {
        &self.net_inflow
    }

    /// A fingerprint of `logical_state` (FNV-1a over its keys and values).
    pub fn state_digest(&self) -> u64 {
        let mut bytes = Vec::new();
        for (key, value) in self.logical_state() {
            bytes.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_le_bytes());
            bytes.extend_from_slice(&key);
            bytes.extend_from_slice(&u32::try_from(value.len()).unwrap_or(u32::MAX).to_le_bytes());
            bytes.extend_from_slice(&value);
        }
        crate::placement::fnv1a_64(&bytes)
    }

    /// Whether what the ledger keeps in memory (the pending set, the net inflow, the account
    /// count, every cached account) says what its store says, once a round is committed (no
    /// overlay, no dirty account). The simulator checks it on every replica, so a replica whose
    /// memory drifted from its serialised state is caught before a restart or a snapshot hides
    /// it. Proportional to the shard.
    pub fn memory_matches_store(&self) -> Result<(), String> {
        if !self.overlay.is_empty() {
            return Err(format!("{} overlay writes not committed", self.overlay.len()));
        }
        let mut stored = Ledger::unloaded(self.shard, self.shard_count, self.store.clone(), self.generation, 0);
        stored.load_meta().map_err(|error| error.to_string())?;
        if stored.clock != self.clock {
            return Err(format!("shard clock in memory {:?}, stored {:?}", self.clock, stored.clock));
        }
        if stored.pending != self.pending {
            return Err(format!("pending set in memory {:?}, stored {:?}", self.pending, stored.pending));
        }
        let nonzero = |inflow: &BTreeMap<Currency, Minor>| -> BTreeMap<Currency, Minor> {
            inflow.iter().filter(|(_, amount)| **amount != 0).map(|(currency, amount)| (*currency, *amount)).collect()
        };
        if nonzero(&stored.net_inflow) != nonzero(&self.net_inflow) {
            return Err(format!("net inflow in memory {:?}, stored {:?}", self.net_inflow, stored.net_inflow));
        }
        if stored.frozen != self.frozen {
            return Err(format!("frozen accounts in memory {:?}, stored {:?}", self.frozen, stored.frozen));
        }
        if stored.risk_limits != self.risk_limits {
            return Err(format!("risk limits in memory {:?}, stored {:?}", self.risk_limits, stored.risk_limits));
        }
        if stored.audit_head != self.audit_head {
            return Err(format!("audit head in memory {:?}, stored {:?}", self.audit_head, stored.audit_head));
        }
        if stored.account_count != self.account_count {
            return Err(format!("account count in memory {}, stored {}", self.account_count, stored.account_count));
        }
        for id in self.accounts.ids() {
            let cached = self.accounts.peek(id).cloned();
            let on_disk = stored.account(id);
            if cached != on_disk {
                return Err(format!("account {id} cached as {cached:?}, stored as {on_disk:?}"));
            }
        }
        Ok(())
    }

    /// The shard's whole committed logical state: every record of the current generation, with
    /// the generation taken out of the keys (and the applied mark left out: replicas apply the
    /// same log but may record different terms). How the simulator compares replicas and
    /// fingerprints a state. Proportional to the shard.
    pub fn logical_state(&self) -> BTreeMap<Key, Value> {
        let prefix = keys::generation_prefix(self.shard, self.generation);
        let end = crate::store::prefix_end(&prefix);
        let mut state = BTreeMap::new();
        for (key, value) in self.store.scan(&prefix, &end, usize::MAX, false) {
            if key.get(prefix.len()) == Some(&keys::APPLIED) {
                continue;
            }
            state.insert(key[prefix.len()..].to_vec(), value);
        }
        state
    }
}
