//! Statements and as-of balances: every change of an account's posted balance is a `Movement`
//! (kind `q`), keyed by the account, the shard clock's time and the shard's movement sequence,
//! with the balance after it. The shard clock (`ShardClock`, kind `z`) is the largest entry
//! timestamp applied so far: entries from a new leader whose wall clock is behind do not move
//! it back, so a movement's time never precedes the one before it and the keys sort in apply
//! order. A statement is a range scan between two times; a balance as of a time is the last
//! movement at or before it — both cost what they return, never the account's whole history.

use super::{keys, Ledger};
use crate::ids::{AccountId, TransferId};
use crate::money::Minor;
use serde::{Deserialize, Serialize};

/// Rows of one statement page at most.
pub const STATEMENT_ROWS_MAX: u32 = 1_000;

/// The shard's clock and movement counter, advanced by every apply (kind `z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ShardClock {
    pub now_ms: u64,
    pub movements: u64,
}

/// One change of an account's posted balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Movement {
    pub at_ms: u64,
    /// The shard's movement sequence number (with `at_ms`, the page cursor).
    pub seq: u64,
    pub transfer: TransferId,
    pub counterparty: AccountId,
    /// Negative for a debit.
    pub amount: Minor,
    pub balance_after: Minor,
}

/// One page of a statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementPage {
    pub currency: crate::money::Currency,
    /// The balance before the page's first row (at the statement's start, on the first page).
    pub opening_balance: Minor,
    pub rows: Vec<Movement>,
    /// Where the next page starts (`at_ms`, `seq`), if the range has more rows.
    pub next: Option<(u64, u64)>,
}

impl Ledger {
    /// Moves the shard clock to `now_ms` unless it is already later; the time this apply runs at.
    pub(super) fn advance_clock(&mut self, now_ms: u64) -> u64 {
        if now_ms > self.clock.now_ms {
            self.clock.now_ms = now_ms;
            self.clock_changed = true;
        }
        self.clock.now_ms
    }

    /// The clock's write in a round's batch, if it changed since the last.
    pub(super) fn clock_write(&mut self) -> Option<(crate::store::Key, crate::store::Value)> {
        if !std::mem::take(&mut self.clock_changed) {
            return None;
        }
        Some((keys::key(self.shard, self.generation, keys::CLOCK, &[]), super::encode_value(&self.clock)))
    }

    pub(super) fn load_clock(&mut self) -> Result<(), crate::store::StoreError> {
        self.clock = match self.store.get(&keys::key(self.shard, self.generation, keys::CLOCK, &[])) {
            Some(bytes) => super::decode_value(&bytes)
                .map_err(|error| crate::store::StoreError(format!("shard {}: stored clock does not decode: {error}", self.shard)))?,
            None => ShardClock::default(),
        };
        Ok(())
    }

    /// The shard clock (what `memory_matches_store` compares).
    pub fn clock(&self) -> ShardClock {
        self.clock
    }

    /// Records that `account`'s posted balance changed by `amount` (negative: a debit) for
    /// `transfer`, at the shard clock's time. Called right after the balance changed.
    pub(super) fn record_movement(&mut self, account: &AccountId, transfer: &TransferId, counterparty: &AccountId, amount: Minor) {
        let Some(balance_after) = self.activate(account).map(|holder| holder.balance) else {
            return;
        };
        self.clock.movements += 1;
        let movement = Movement {
            at_ms: self.clock.now_ms,
            seq: self.clock.movements,
            transfer: transfer.clone(),
            counterparty: counterparty.clone(),
            amount,
            balance_after,
        };
        let key = keys::movement(self.shard, self.generation, account, movement.at_ms, movement.seq);
        self.write(key, &movement);
        self.clock_changed = true;
    }

    /// The posted balance of `account` after every movement at or before `at_ms`, in its
    /// currency (`None` if the account does not exist).
    pub fn balance_as_of(&self, account: &AccountId, at_ms: u64) -> Option<(crate::money::Currency, Minor)> {
        let currency = self.account(account)?.currency;
        let start = keys::movement_prefix(self.shard, self.generation, account);
        let end = keys::movement(self.shard, self.generation, account, at_ms.saturating_add(1), 0);
        let last = self.store.scan(&start, &end, 1, true).into_iter().next();
        let balance = match last {
            Some((_, value)) => self.decode_movement(&value).map_or(0, |movement| movement.balance_after),
            None => 0,
        };
        Some((currency, balance))
    }

    /// The movements of `account` with `from_ms <= at_ms < to_ms`, oldest first, at most
    /// `limit`, starting after `after` (a page's `next`). `None` if the account does not exist.
    pub fn statement(&self, account: &AccountId, from_ms: u64, to_ms: u64, after: Option<(u64, u64)>, limit: u32) -> Option<StatementPage> {
        let currency = self.account(account)?.currency;
        let prefix = keys::movement_prefix(self.shard, self.generation, account);
        // A cursor never reaches before the window's start.
        let window_start = keys::movement(self.shard, self.generation, account, from_ms, 0);
        let start = match after {
            Some((at_ms, seq)) => keys::movement(self.shard, self.generation, account, at_ms, seq.saturating_add(1)).max(window_start),
            None => window_start,
        };
        let end = keys::movement(self.shard, self.generation, account, to_ms, 0);
        let opening_balance = match self.store.scan(&prefix, &start, 1, true).into_iter().next() {
            Some((_, value)) => self.decode_movement(&value).map_or(0, |movement| movement.balance_after),
            None => 0,
        };
        if start >= end {
            return Some(StatementPage { currency, opening_balance, rows: Vec::new(), next: None });
        }
        let limit = usize::try_from(limit.clamp(1, STATEMENT_ROWS_MAX)).unwrap_or(1);
        let found = self.store.scan(&start, &end, limit + 1, false);
        let more = found.len() > limit;
        let rows: Vec<Movement> = found.into_iter().take(limit).filter_map(|(_, value)| self.decode_movement(&value)).collect();
        let next = if more { rows.last().map(|row| (row.at_ms, row.seq)) } else { None };
        Some(StatementPage { currency, opening_balance, rows, next })
    }

    fn decode_movement(&self, value: &[u8]) -> Option<Movement> {
        match super::decode_value(value) {
            Ok(movement) => Some(movement),
            Err(error) => {
                self.damaged(format!("a stored movement does not decode: {error}"));
                None
            }
        }
    }

    /// Every account's movements form a running balance that ends at its posted balance, in
    /// time and sequence order (tests, the simulator's `statements_match_balances`).
    pub fn verify_movements(&self) -> Result<(), String> {
        for account in self.accounts() {
            let prefix = keys::movement_prefix(self.shard, self.generation, &account.id);
            let end = crate::store::prefix_end(&prefix);
            let mut balance: Minor = 0;
            let mut last_seq = 0;
            for (_, value) in self.store.scan(&prefix, &end, usize::MAX, false) {
                let movement: Movement = super::decode_value(&value).map_err(|error| format!("a movement does not decode: {error}"))?;
                // Keys sort by time, then sequence: a sequence that falls along them means a
                // movement was stamped with a time earlier than one applied before it.
                if movement.seq <= last_seq || movement.seq > self.clock.movements {
                    return Err(format!("movement {} of {} is out of order", movement.seq, account.id));
                }
                last_seq = movement.seq;
                balance = balance.checked_add(movement.amount).ok_or("movements overflow")?;
                if balance != movement.balance_after {
                    return Err(format!(
                        "movement {} of {} says balance {} after it, the running sum is {balance}",
                        movement.seq, account.id, movement.balance_after
                    ));
                }
            }
            if balance != account.balance {
                return Err(format!("the movements of {} sum to {balance}, its balance is {}", account.id, account.balance));
            }
        }
        Ok(())
    }
}

/// A stored value of a statement kind decodes as its kind says (`Ledger::check_record`).
pub(super) fn check_statement_record(kind: u8, value: &[u8]) -> Option<Result<(), String>> {
    let decoded = match kind {
        keys::MOVEMENT => super::decode_value::<Movement>(value).map(|_| ()),
        keys::CLOCK => super::decode_value::<ShardClock>(value).map(|_| ()),
        _ => return None,
    };
    Some(decoded.map_err(|error| error.to_string()))
}
