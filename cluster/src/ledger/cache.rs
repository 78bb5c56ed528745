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
    /// Accounts changed since the last commit (each once).
    dirty: Vec<AccountId>,
    clock: u64,
    bytes: usize,
    budget_bytes: usize,
    stats: CacheStats,
    planted: PlantedBug,
}

fn size_of(account: &Account) -> usize {
    ACCOUNT_OVERHEAD_BYTES + 2 * account.id.as_str().len()
}

/// Passivation goes down to this share of the budget (in percent), so that it runs once per
/// many activations rather than at every one.
const PASSIVATE_DOWN_TO_PERCENT: usize = 90;

impl AccountCache {
    pub fn new(budget_bytes: usize) -> AccountCache {
        AccountCache {
            entries: BTreeMap::new(),
            dirty: Vec::new(),
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

    /// An account for a command (`hit`: it was in the cache already): counted as a use, and
    /// dirty from now until the round commits.
    pub fn get_mut(&mut self, id: &AccountId, hit: bool) -> Option<&mut Account> {
        let entry = self.entries.get_mut(id)?;
        if hit {
            self.stats.hits += 1;
        }
        self.clock += 1;
        entry.used = self.clock;
        if !entry.dirty {
            entry.dirty = true;
            self.dirty.push(id.clone());
        }
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
        self.clock += 1;
        if dirty {
            self.dirty.push(id.clone());
        }
        if let Some(old) = self.entries.insert(id, Entry { account, dirty, used: self.clock }) {
            self.bytes -= size_of(&old.account);
        }
    }

    /// The dirty accounts, now clean: what the round writes back.
    pub fn take_dirty(&mut self) -> Vec<(AccountId, Account)> {
        let mut written = Vec::with_capacity(self.dirty.len());
        for id in std::mem::take(&mut self.dirty) {
            if let Some(entry) = self.entries.get_mut(&id) {
                if entry.dirty {
                    entry.dirty = false;
                    written.push((id, entry.account.clone()));
                }
            }
        }
        written
    }

    /// Passivates the least recently used clean accounts once the cache is over its budget,
    /// down to `PASSIVATE_DOWN_TO_PERCENT` of it (one pass over the cache per many
    /// activations). `including_dirty` is the planted bug `PassivateUnflushed` (an update not
    /// yet written back is lost with its account).
    pub fn passivate_over_budget(&mut self, including_dirty: bool) {
        if self.bytes <= self.budget_bytes {
            return;
        }
        let drop_dirty = including_dirty && planted(self.planted, PlantedBug::PassivateUnflushed);
        let target = self.budget_bytes / 100 * PASSIVATE_DOWN_TO_PERCENT;
        let mut candidates: Vec<(u64, AccountId)> =
            self.entries.iter().filter(|(_, entry)| drop_dirty || !entry.dirty).map(|(id, entry)| (entry.used, id.clone())).collect();
        candidates.sort_unstable();
        for (_, id) in candidates {
            if self.bytes <= target {
                break;
            }
            if let Some(entry) = self.entries.remove(&id) {
                self.bytes -= size_of(&entry.account);
                self.stats.passivations += 1;
            }
        }
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.dirty.clear();
        self.bytes = 0;
    }
}
