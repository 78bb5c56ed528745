//! The activation cache of one shard's accounts (accounts are virtual actors): an account a
//! command touches is activated (read from the store) and stays while it is used; when the
//! cache is over its byte budget, the least recently used accounts are passivated (dropped).
//! Changed accounts are dirty until the round commits them to the store; a dirty account is
//! never passivated, or its update would be lost. Deterministic: recency is a counter.

use super::types::Account;
use crate::ids::AccountId;
use crate::planted::{planted, PlantedBug};
use std::collections::BTreeMap;

/// Bytes an account is counted for beyond its id (the struct, the map entries).
const ACCOUNT_OVERHEAD_BYTES: usize = 160;

/// What the cache did, since the ledger opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CacheStats {
    /// Accounts read from the store into the cache (misses), and accounts created in it.
    pub activations: u64,
    /// Accounts dropped from the cache to stay within the budget.
    pub passivations: u64,
    /// Commands that found their account in the cache.
    pub hits: u64,
    /// Accounts in the cache now, and the bytes they are counted for.
    pub active: u64,
    pub bytes: u64,
}

struct Entry {
    account: Account,
    dirty: bool,
    /// The recency counter at the last use.
    used: u64,
}

pub struct AccountCache {
    entries: BTreeMap<AccountId, Entry>,
    /// Recency counter → account, least recent first.
    by_use: BTreeMap<u64, AccountId>,
    clock: u64,
    bytes: usize,
    budget_bytes: usize,
    stats: CacheStats,
    planted: PlantedBug,
}

fn size_of(account: &Account) -> usize {
    ACCOUNT_OVERHEAD_BYTES + 2 * account.id.as_str().len()
}

impl AccountCache {
    pub fn new(budget_bytes: usize) -> AccountCache {
        AccountCache {
            entries: BTreeMap::new(),
            by_use: BTreeMap::new(),
            clock: 0,
            bytes: 0,
            budget_bytes,
            stats: CacheStats::default(),
            planted: PlantedBug::None,
        }
    }

    pub fn set_planted(&mut self, bug: PlantedBug) {
        self.planted = bug;
    }

    pub fn set_budget(&mut self, bytes: usize) {
        self.budget_bytes = bytes;
        self.passivate_over_budget(false);
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            active: u64::try_from(self.entries.len()).unwrap_or(u64::MAX),
            bytes: u64::try_from(self.bytes).unwrap_or(u64::MAX),
            ..self.stats
        }
    }

    pub fn contains(&self, id: &AccountId) -> bool {
        self.entries.contains_key(id)
    }

    /// An account in the cache, without counting a use (reads for clients).
    pub fn peek(&self, id: &AccountId) -> Option<&Account> {
        self.entries.get(id).map(|entry| &entry.account)
    }

    pub fn ids(&self) -> impl Iterator<Item = &AccountId> {
        self.entries.keys()
    }

    fn touch(&mut self, id: &AccountId) {
        self.clock += 1;
        let clock = self.clock;
        if let Some(entry) = self.entries.get_mut(id) {
            self.by_use.remove(&entry.used);
            entry.used = clock;
            self.by_use.insert(clock, id.clone());
        }
    }

    /// An account for a command (`hit`: it was in the cache already): counted as a use, and
    /// dirty from now until the round commits.
    pub fn get_mut(&mut self, id: &AccountId, hit: bool) -> Option<&mut Account> {
        if !self.entries.contains_key(id) {
            return None;
        }
        if hit {
            self.stats.hits += 1;
        }
        self.touch(id);
        let entry = self.entries.get_mut(id).expect("checked above");
        entry.dirty = true;
        Some(&mut entry.account)
    }

    /// Brings an account read from the store into the cache (clean).
    pub fn activate(&mut self, account: Account) {
        self.stats.activations += 1;
        self.insert(account, false);
    }

    /// A new account, dirty until the round commits it.
    pub fn insert_new(&mut self, account: Account) {
        self.stats.activations += 1;
        self.insert(account, true);
    }

    fn insert(&mut self, account: Account, dirty: bool) {
        let id = account.id.clone();
        self.bytes += size_of(&account);
        self.entries.insert(id.clone(), Entry { account, dirty, used: 0 });
        self.touch(&id);
    }

    /// The dirty accounts, now clean: what the round writes back.
    pub fn take_dirty(&mut self) -> Vec<(AccountId, Account)> {
        let mut dirty = Vec::new();
        for (id, entry) in self.entries.iter_mut() {
            if entry.dirty {
                entry.dirty = false;
                dirty.push((id.clone(), entry.account.clone()));
            }
        }
        dirty
    }

    /// Passivates the least recently used clean accounts while the cache is over its budget.
    /// `including_dirty` is the planted bug `PassivateUnflushed` (an update not yet written
    /// back is lost with its account).
    pub fn passivate_over_budget(&mut self, including_dirty: bool) {
        let drop_dirty = including_dirty && planted(self.planted, PlantedBug::PassivateUnflushed);
        let mut skipped = Vec::new();
        while self.bytes > self.budget_bytes {
            let Some((used, id)) = self.by_use.pop_first() else {
                break;
            };
            let dirty = self.entries.get(&id).is_some_and(|entry| entry.dirty);
            if dirty && !drop_dirty {
                skipped.push((used, id));
                continue;
            }
            if let Some(entry) = self.entries.remove(&id) {
                self.bytes -= size_of(&entry.account);
                self.stats.passivations += 1;
            }
        }
        self.by_use.extend(skipped);
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.by_use.clear();
        self.bytes = 0;
    }
}
