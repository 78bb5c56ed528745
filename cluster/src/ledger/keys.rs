//! Where a shard's state lives in the node's store. Every key starts with `D`, the shard and a
//! generation (so installing a snapshot is switching generations, not rewriting keys in place,
//! and the old generation is deleted in the background), then the kind of record:
//!
//! | kind | key after the prefix | value |
//! |---|---|---|
//! | `a` | account id | `StoredAccount` |
//! | `t` | transfer id | `TransferRecord` (payer side) |
//! | `c` | transfer id | `CreditRecord` (payee side) |
//! | `r` | transfer id | `TransferBody` (the id's reservation) |
//! | `h` | account id length, account id, position (u64 BE) | `HistoryItem` |
//! | `p` | transfer id | nothing (the pending set) |
//! | `i` | currency code | net cross-shard inflow (`Minor`) |
//! | `x` | — | `AppliedMark` (applied index, its term, the voters) |
//! | `n` | — | how many accounts the shard has (`u64`) |
//! | `k` | key id | `ApiKeyRecord` (system shard) |
//! | `o` | nonce name | its expiry (`u64` ms) |
//! | `e` | expiry (u64 BE), nonce name | nothing (nonces by expiry, for pruning) |
//! | `l` | sequence (u64 BE) | `AuditRecord` (system shard) |
//! | `g` | — | `AuditHead` (system shard) |
//! | `s` | account id length, account id, stop id | `StopRecord` |
//! | `f` | account id length, account id, stop id | nothing (the active stops) |
//! | `u` | original transfer id | `RefundTotal` (on the original payee's shard) |
//! | `v` | refund transfer id | the original transfer id it refunds |
//! | `w` | transfer id | `HoldRecord` (a transfer made with mode hold, on its payer's shard) |
//! | `y` | expiry (u64 BE), transfer id | nothing (the active holds by expiry) |
//! | `q` | account id length, account id, time (u64 BE), sequence (u64 BE) | `Movement` |
//! | `z` | — | `ShardClock` (the shard's time and movement count) |
//! | `m` | customer id | `CustomerRecord` (on the customer's shard) |
//! | `b` | customer id | `CustomerSpend` (what its accounts paid, for the risk limits) |
//! | `j` | — | `RiskLimits` (the limits this shard applies) |
//! | `d` | transfer id | `Challenge` (a transfer awaiting verification) |
//! | `C` | expiry (u64 BE), transfer id | nothing (open challenges by expiry) |
//! | `F` | — | the backup fence epoch this shard applied last (`u64`, `fence.rs`) |
//!
//! The generation in use is `M`, the shard, `generation` (outside any generation). Values are
//! bincode behind `LEDGER_FORMAT_VERSION`.

use crate::ids::{AccountId, ShardId, TransferId};
use crate::money::Currency;
use crate::store::{prefix_end, Key};

pub const ACCOUNT: u8 = b'a';
pub const TRANSFER: u8 = b't';
pub const CREDIT: u8 = b'c';
pub const RESERVATION: u8 = b'r';
pub const HISTORY: u8 = b'h';
pub const PENDING: u8 = b'p';
pub const INFLOW: u8 = b'i';
pub const APPLIED: u8 = b'x';
pub const ACCOUNT_COUNT: u8 = b'n';
pub const API_KEY: u8 = b'k';
pub const NONCE: u8 = b'o';
pub const NONCE_EXPIRY: u8 = b'e';
pub const AUDIT: u8 = b'l';
pub const AUDIT_HEAD: u8 = b'g';
pub const STOP: u8 = b's';
pub const STOP_ACTIVE: u8 = b'f';
pub const REFUND_TOTAL: u8 = b'u';
pub const REFUND_OF: u8 = b'v';
pub const HOLD: u8 = b'w';
pub const HOLD_EXPIRY: u8 = b'y';
pub const MOVEMENT: u8 = b'q';
pub const CLOCK: u8 = b'z';
pub const CUSTOMER: u8 = b'm';
pub const SPEND: u8 = b'b';
pub const LIMITS: u8 = b'j';
pub const CHALLENGE: u8 = b'd';
pub const CHALLENGE_EXPIRY: u8 = b'C';
pub const FENCE: u8 = b'F';
/// A node registered after bootstrap (system shard), by id.
pub const NODE: u8 = b'N';
/// The node registry's epoch (system shard): how many registrations it applied.
pub const REGISTRY_HEAD: u8 = b'R';

/// Every record kind of a generation (what a snapshot may carry).
pub const KINDS: [u8; 30] = [
    ACCOUNT,
    TRANSFER,
    CREDIT,
    RESERVATION,
    HISTORY,
    PENDING,
    INFLOW,
    APPLIED,
    ACCOUNT_COUNT,
    API_KEY,
    NONCE,
    NONCE_EXPIRY,
    AUDIT,
    AUDIT_HEAD,
    STOP,
    STOP_ACTIVE,
    REFUND_TOTAL,
    REFUND_OF,
    HOLD,
    HOLD_EXPIRY,
    MOVEMENT,
    CLOCK,
    CUSTOMER,
    SPEND,
    LIMITS,
    CHALLENGE,
    CHALLENGE_EXPIRY,
    FENCE,
    NODE,
    REGISTRY_HEAD,
];

/// The prefix of every data key of one generation of a shard.
pub fn generation_prefix(shard: ShardId, generation: u32) -> Key {
    let mut key = Vec::with_capacity(9);
    key.push(b'D');
    key.extend_from_slice(&shard.to_be_bytes());
    key.extend_from_slice(&generation.to_be_bytes());
    key
}

/// The prefix of every data key of a shard, whatever the generation.
pub fn shard_prefix(shard: ShardId) -> Key {
    let mut key = vec![b'D'];
    key.extend_from_slice(&shard.to_be_bytes());
    key
}

/// The key naming the generation a shard uses.
pub fn generation_key(shard: ShardId) -> Key {
    let mut key = vec![b'M'];
    key.extend_from_slice(&shard.to_be_bytes());
    key.extend_from_slice(b"generation");
    key
}

/// A data key: prefix, kind, rest.
pub fn key(shard: ShardId, generation: u32, kind: u8, rest: &[u8]) -> Key {
    let mut key = generation_prefix(shard, generation);
    key.push(kind);
    key.extend_from_slice(rest);
    key
}

pub fn account(shard: ShardId, generation: u32, id: &AccountId) -> Key {
    key(shard, generation, ACCOUNT, id.as_str().as_bytes())
}

pub fn transfer(shard: ShardId, generation: u32, kind: u8, id: &TransferId) -> Key {
    key(shard, generation, kind, id.as_str().as_bytes())
}

/// The history prefix of one account (its entries follow in position order).
pub fn history_prefix(shard: ShardId, generation: u32, account: &AccountId) -> Key {
    let bytes = account.as_str().as_bytes();
    let mut rest = Vec::with_capacity(1 + bytes.len());
    rest.push(u8::try_from(bytes.len()).expect("ids are at most 64 bytes"));
    rest.extend_from_slice(bytes);
    key(shard, generation, HISTORY, &rest)
}

pub fn history(shard: ShardId, generation: u32, account: &AccountId, position: u64) -> Key {
    let mut key = history_prefix(shard, generation, account);
    key.extend_from_slice(&position.to_be_bytes());
    key
}

/// The movements prefix of one account (its movements follow in time and sequence order).
pub fn movement_prefix(shard: ShardId, generation: u32, account: &AccountId) -> Key {
    let bytes = account.as_str().as_bytes();
    let mut rest = Vec::with_capacity(1 + bytes.len());
    rest.push(u8::try_from(bytes.len()).expect("ids are at most 64 bytes"));
    rest.extend_from_slice(bytes);
    key(shard, generation, MOVEMENT, &rest)
}

pub fn movement(shard: ShardId, generation: u32, account: &AccountId, at_ms: u64, seq: u64) -> Key {
    let mut key = movement_prefix(shard, generation, account);
    key.extend_from_slice(&at_ms.to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// An active hold in the expiry index: ordered by when it expires.
pub fn hold_expiry(shard: ShardId, generation: u32, expires_at_ms: u64, id: &TransferId) -> Key {
    let mut rest = expires_at_ms.to_be_bytes().to_vec();
    rest.extend_from_slice(id.as_str().as_bytes());
    key(shard, generation, HOLD_EXPIRY, &rest)
}

pub fn inflow(shard: ShardId, generation: u32, currency: Currency) -> Key {
    key(shard, generation, INFLOW, currency.code().as_bytes())
}

pub fn applied(shard: ShardId, generation: u32) -> Key {
    key(shard, generation, APPLIED, &[])
}

pub fn account_count(shard: ShardId, generation: u32) -> Key {
    key(shard, generation, ACCOUNT_COUNT, &[])
}

/// The range `[start, end)` of one kind of record in a generation.
pub fn kind_range(shard: ShardId, generation: u32, kind: u8) -> (Key, Key) {
    let start = key(shard, generation, kind, &[]);
    let end = prefix_end(&start);
    (start, end)
}

/// The part of a data key after its generation prefix (kind and rest): what a snapshot carries,
/// re-prefixed with the receiver's generation.
pub fn strip_generation(key: &[u8]) -> Option<&[u8]> {
    if key.len() < 10 || key[0] != b'D' {
        return None;
    }
    Some(&key[9..])
}

/// The shard of a data key.
pub fn shard_of_key(key: &[u8]) -> Option<ShardId> {
    if key.len() < 9 || key[0] != b'D' {
        return None;
    }
    Some(ShardId::from_be_bytes(key[1..5].try_into().ok()?))
}
