//! Stop orders on accounts (emergency stop / rapid freeze, 紧急止付 / 快速冻结): an operator
//! places a stop on an account with a reason and the authority's reference; while any stop on
//! it is active the account accepts no debits (and, if the stop says so, no credits), checked in
//! the same apply as the debit or credit. Lifting records who, when and why. Stops live on the
//! account's shard, so the check is inside one Raft group; each stop is idempotent by its id.
//!
//! In memory the ledger keeps only the accounts with active stops and how many block debits and
//! credits (`frozen`), loaded from the active-stop index at open: bounded by what is frozen now,
//! not by every stop ever placed.

use super::{decode_value, keys, Ledger};
use crate::ids::{AccountId, StopId};
use crate::store::Key;
use serde::{Deserialize, Serialize};

pub const STOP_TEXT_BYTES_MAX: usize = 256;

/// Places a stop on an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceStop {
    pub id: StopId,
    pub account: AccountId,
    /// Credits are refused too (debits always are).
    pub block_credits: bool,
    pub reason: String,
    /// The order's reference at the authority that asked for it (court, police, the bank).
    pub authority_ref: String,
    /// Who placed it (the API key id).
    pub actor: String,
}

/// Lifts a stop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiftStop {
    pub id: StopId,
    pub account: AccountId,
    pub reason: String,
    pub actor: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopCmd {
    Place(PlaceStop),
    Lift(LiftStop),
}

impl StopCmd {
    pub fn account(&self) -> &AccountId {
        match self {
            StopCmd::Place(place) => &place.account,
            StopCmd::Lift(lift) => &lift.account,
        }
    }

    pub fn id(&self) -> &StopId {
        match self {
            StopCmd::Place(place) => &place.id,
            StopCmd::Lift(lift) => &lift.id,
        }
    }

    /// Bounds every stop command meets (the edge checks them, a peer's leg is checked, and the
    /// ledger checks again when applying).
    pub fn check(&self) -> Result<(), String> {
        let texts: Vec<&String> = match self {
            StopCmd::Place(place) => vec![&place.reason, &place.authority_ref, &place.actor],
            StopCmd::Lift(lift) => vec![&lift.reason, &lift.actor],
        };
        if texts.iter().any(|text| text.len() > STOP_TEXT_BYTES_MAX) {
            return Err(format!("reason, authority_ref and actor are at most {STOP_TEXT_BYTES_MAX} bytes"));
        }
        match self {
            StopCmd::Place(place) if place.reason.trim().is_empty() => Err("a stop needs a reason".to_string()),
            StopCmd::Lift(lift) if lift.reason.trim().is_empty() => Err("lifting a stop needs a reason".to_string()),
            _ => Ok(()),
        }
    }
}

/// When a stop was lifted, by whom and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifted {
    pub by: String,
    pub at_ms: u64,
    pub reason: String,
    /// The account's history length when the stop was lifted.
    pub at_position: u64,
}

/// A stop as stored (for ever: lifting marks it, the record stays for the audit trail).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopRecord {
    pub id: StopId,
    pub account: AccountId,
    pub block_credits: bool,
    pub reason: String,
    pub authority_ref: String,
    pub placed_by: String,
    pub placed_at_ms: u64,
    /// The account's history length when the stop was placed: every movement of the account
    /// from this position until `lifted.at_position` happened under the stop (what the
    /// simulator checks, in log order rather than by clocks).
    pub placed_at_position: u64,
    pub lifted: Option<Lifted>,
}

impl StopRecord {
    pub fn active(&self) -> bool {
        self.lifted.is_none()
    }

    /// Whether a placement asks for this very stop (a retry), whoever sends it.
    fn same_order(&self, place: &PlaceStop) -> bool {
        self.account == place.account
            && self.block_credits == place.block_credits
            && self.reason == place.reason
            && self.authority_ref == place.authority_ref
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopOutcome {
    Placed(StopRecord),
    Lifted(StopRecord),
    /// The command was applied before (a retry): the stop as stored.
    Replayed(StopRecord),
    /// The id names another stop: nothing changed.
    Conflict(StopRecord),
    AccountNotFound,
    StopNotFound,
    /// A bound broken, or the wrong shard: nothing changed.
    Invalid(String),
}

/// How many active stops block an account's debits and its credits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Frozen {
    pub debits: u32,
    pub credits: u32,
}

fn stop_rest(account: &AccountId, id: &StopId) -> Vec<u8> {
    let bytes = account.as_str().as_bytes();
    let mut rest = Vec::with_capacity(2 + bytes.len() + id.as_str().len());
    rest.push(u8::try_from(bytes.len()).expect("ids are at most 64 bytes"));
    rest.extend_from_slice(bytes);
    rest.extend_from_slice(id.as_str().as_bytes());
    rest
}

/// The key of a stop record (kind `s`) or of its entry in the active index (kind `f`).
pub(super) fn stop_key(ledger: &Ledger, kind: u8, account: &AccountId, id: &StopId) -> Key {
    keys::key(ledger.shard, ledger.generation, kind, &stop_rest(account, id))
}

/// The account and stop id a stop key (after its kind byte) names.
fn parse_stop_rest(rest: &[u8]) -> Option<(AccountId, StopId)> {
    let (&length, rest) = rest.split_first()?;
    let length = usize::from(length);
    let account = std::str::from_utf8(rest.get(..length)?).ok()?;
    let id = std::str::from_utf8(rest.get(length..)?).ok()?;
    Some((AccountId::new(account).ok()?, StopId::new(id).ok()?))
}

impl Ledger {
    pub(super) fn stop_command(&mut self, now_ms: u64, command: &StopCmd) -> StopOutcome {
        if let Err(reason) = command.check() {
            return StopOutcome::Invalid(reason);
        }
        if self.owner(command.account()) != self.shard {
            return StopOutcome::Invalid("the account lives on another shard".to_string());
        }
        let existing = self.stop(command.account(), command.id());
        match command {
            StopCmd::Place(place) => {
                if let Some(existing) = existing {
                    return if existing.same_order(place) { StopOutcome::Replayed(existing) } else { StopOutcome::Conflict(existing) };
                }
                let Some(account) = self.account(&place.account) else {
                    return StopOutcome::AccountNotFound;
                };
                let record = StopRecord {
                    id: place.id.clone(),
                    account: place.account.clone(),
                    block_credits: place.block_credits,
                    reason: place.reason.clone(),
                    authority_ref: place.authority_ref.clone(),
                    placed_by: place.actor.clone(),
                    placed_at_ms: now_ms,
                    placed_at_position: account.history_len,
                    lifted: None,
                };
                self.write(stop_key(self, keys::STOP, &place.account, &place.id), &record);
                self.overlay.insert(stop_key(self, keys::STOP_ACTIVE, &place.account, &place.id), Some(Vec::new()));
                let frozen = self.frozen.entry(place.account.clone()).or_default();
                frozen.debits += 1;
                frozen.credits += u32::from(place.block_credits);
                StopOutcome::Placed(record)
            }
            StopCmd::Lift(lift) => {
                let Some(mut record) = existing else {
                    return StopOutcome::StopNotFound;
                };
                if !record.active() {
                    return StopOutcome::Replayed(record);
                }
                let at_position = self.account(&lift.account).map_or(0, |account| account.history_len);
                record.lifted = Some(Lifted { by: lift.actor.clone(), at_ms: now_ms, reason: lift.reason.clone(), at_position });
                self.write(stop_key(self, keys::STOP, &lift.account, &lift.id), &record);
                self.overlay.insert(stop_key(self, keys::STOP_ACTIVE, &lift.account, &lift.id), None);
                if let Some(frozen) = self.frozen.get_mut(&lift.account) {
                    frozen.debits = frozen.debits.saturating_sub(1);
                    frozen.credits = frozen.credits.saturating_sub(u32::from(record.block_credits));
                    if frozen.debits == 0 && frozen.credits == 0 {
                        self.frozen.remove(&lift.account);
                    }
                }
                StopOutcome::Lifted(record)
            }
        }
    }

    pub fn stop(&self, account: &AccountId, id: &StopId) -> Option<StopRecord> {
        self.read(&stop_key(self, keys::STOP, account, id))
    }

    /// Every stop ever placed on an account (active and lifted), in id order.
    pub fn stops(&self, account: &AccountId) -> Vec<StopRecord> {
        let mut rest = vec![u8::try_from(account.as_str().len()).expect("ids are at most 64 bytes")];
        rest.extend_from_slice(account.as_str().as_bytes());
        let start = keys::key(self.shard, self.generation, keys::STOP, &rest);
        let end = crate::store::prefix_end(&start);
        self.store.scan(&start, &end, usize::MAX, false).into_iter().filter_map(|(_, value)| self.decoded(&value)).collect()
    }

    /// How an account is frozen now (zeros when it is not).
    pub fn frozen(&self, account: &AccountId) -> Frozen {
        self.frozen.get(account).copied().unwrap_or_default()
    }

    /// Loads the accounts with active stops from the active-stop index (part of `load_meta`).
    pub(super) fn load_frozen(&mut self) -> Result<(), crate::store::StoreError> {
        self.frozen.clear();
        let (start, end) = keys::kind_range(self.shard, self.generation, keys::STOP_ACTIVE);
        for (key, _) in self.store.scan(&start, &end, usize::MAX, false) {
            let bad = || crate::store::StoreError(format!("shard {}: bad active-stop key", self.shard));
            let (account, id) = parse_stop_rest(&key[start.len()..]).ok_or_else(bad)?;
            let record = self.stop(&account, &id).ok_or_else(bad)?;
            let frozen = self.frozen.entry(account).or_default();
            frozen.debits += 1;
            frozen.credits += u32::from(record.block_credits);
        }
        Ok(())
    }

    /// The active-stop index and the frozen counts agree with the stop records (`verify`).
    pub(super) fn verify_stops(&self) -> Result<(), String> {
        let (start, end) = keys::kind_range(self.shard, self.generation, keys::STOP);
        let mut counted: std::collections::BTreeMap<AccountId, Frozen> = std::collections::BTreeMap::new();
        for (key, value) in self.store.scan(&start, &end, usize::MAX, false) {
            let record: StopRecord = decode_value(&value).map_err(|error| format!("a stop record does not decode: {error}"))?;
            let (account, id) = parse_stop_rest(&key[start.len()..]).ok_or("a bad stop key")?;
            if account != record.account || id != record.id {
                return Err(format!("stop {} stored under another key", record.id));
            }
            let indexed = self.store.get(&stop_key(self, keys::STOP_ACTIVE, &account, &id)).is_some();
            if indexed != record.active() {
                return Err(format!("stop {id} on {account}: active {} but indexed {indexed}", record.active()));
            }
            if record.active() {
                let frozen = counted.entry(account).or_default();
                frozen.debits += 1;
                frozen.credits += u32::from(record.block_credits);
            }
        }
        let in_memory: std::collections::BTreeMap<AccountId, Frozen> =
            self.frozen.iter().map(|(account, frozen)| (account.clone(), *frozen)).collect();
        if counted != in_memory {
            return Err(format!("frozen accounts in memory {in_memory:?}, by the stop records {counted:?}"));
        }
        Ok(())
    }
}

/// A stored value of a stop kind decodes as its kind says (`Ledger::check_record`).
pub(super) fn check_stop_record(kind: u8, value: &[u8]) -> Option<Result<(), String>> {
    Some(match kind {
        keys::STOP => decode_value::<StopRecord>(value).map(|_| ()).map_err(|error| error.to_string()),
        keys::STOP_ACTIVE if value.is_empty() => Ok(()),
        keys::STOP_ACTIVE => Err("an active-stop marker with a value".to_string()),
        _ => return None,
    })
}
