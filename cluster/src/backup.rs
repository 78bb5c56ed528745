//! Online backups: what a backup reads from a shard and how a backed-up cut becomes a new
//! cluster's starting state.
//!
//! A backup fences every shard (`ledger/fence.rs`: one consistent cut across shards), then
//! reads each shard's cut in chunks (`Request::BackupChunk`, served from the read view every
//! replica kept when its fence applied). `restore_shard` writes a shard's records into a fresh
//! node's state store: its applied mark keeps index and term but not the voters (the new
//! cluster's placement names them), so the node starts the shard at the cut's index with an
//! empty log, the way a node whose state store ran ahead of its log restarts
//! (`recovery::recover_shard`). `check_cut` checks a whole backup: every shard's own invariants
//! (`Ledger::verify`) and the cross-shard ones the cut must keep.

use crate::ids::ShardId;
use crate::ledger::{keys, AppliedMark, Decision, Ledger, TransferStatus};
use crate::money::{Currency, Minor};
use crate::placement::Placement;
use crate::store::{Key, KvStore, StoreError, Value, WriteBatch};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The version byte in front of a chunk as the backup endpoint serves it and of the records
/// in a backup's shard files.
pub const BACKUP_FORMAT_VERSION: u8 = 1;

pub fn encode_chunk(chunk: &BackupChunk) -> Vec<u8> {
    crate::codec::encode(BACKUP_FORMAT_VERSION, chunk)
}

pub fn decode_chunk(bytes: &[u8]) -> Result<BackupChunk, crate::codec::CodecError> {
    crate::codec::decode(BACKUP_FORMAT_VERSION, bytes)
}

/// One answer to `Request::BackupChunk`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackupChunk {
    /// Records of the cut after the key asked for (keys without the generation prefix), in key
    /// order; `done` on the last chunk.
    Records { entries: Vec<(Key, Value)>, done: bool },
    /// The shard's leader has not applied the fence yet (its epoch is `epoch`): ask again.
    NotYet { epoch: u64 },
    /// The cut is not held any more (a later fence, a restart, a snapshot install, or nobody
    /// read it for `replica::BACKUP_VIEW_IDLE_MS`): take the backup again.
    Gone { epoch: u64 },
}

/// Writes one shard's backed-up records into `store` (which holds nothing of the shard yet) as
/// the shard's state at the cut, then opens it and checks it. Returns the cut's applied mark.
pub fn restore_shard(
    store: &Arc<dyn KvStore>,
    shard: ShardId,
    shard_count: u32,
    records: impl IntoIterator<Item = (Key, Value)>,
) -> Result<AppliedMark, StoreError> {
    let prefix = keys::generation_prefix(shard, 0);
    let existing = store.scan(&keys::shard_prefix(shard), &crate::store::prefix_end(&keys::shard_prefix(shard)), 1, false);
    if !existing.is_empty() || store.get(&keys::generation_key(shard)).is_some() {
        return Err(StoreError(format!("shard {shard}: the state store already holds this shard")));
    }
    let mut batch = WriteBatch::default();
    let mut mark = None;
    let mut pending = 0usize;
    for (suffix, value) in records {
        Ledger::check_record(&suffix, &value).map_err(|error| StoreError(format!("shard {shard}: a backed-up record: {error}")))?;
        if suffix.first() == Some(&keys::APPLIED) {
            let stored: AppliedMark = crate::ledger::decode_value(&value)
                .map_err(|error| StoreError(format!("shard {shard}: the backed-up applied mark: {error}")))?;
            // The voters are the new cluster's: its placement names them.
            let restored = AppliedMark { conf_state: Vec::new(), ..stored };
            batch.put([prefix.as_slice(), &suffix].concat(), crate::ledger::encode_value(&restored));
            mark = Some(restored);
        } else {
            batch.put([prefix.as_slice(), &suffix].concat(), value);
        }
        pending += 1;
        if pending >= 10_000 {
            store.write(std::mem::take(&mut batch))?;
            pending = 0;
        }
    }
    store.write(batch)?;
    let mark = mark.ok_or_else(|| StoreError(format!("shard {shard}: the backup holds no applied mark")))?;
    let (ledger, opened) = Ledger::open(shard, shard_count, store.clone(), crate::CACHE_BYTES_DEFAULT)?;
    if opened != mark {
        return Err(StoreError(format!("shard {shard}: the restored applied mark reads back as {opened:?}")));
    }
    ledger.verify().map_err(|broken| StoreError(format!("shard {shard}: the backed-up state is inconsistent: {broken}")))?;
    Ok(mark)
}

/// Checks that a backup's shards form one consistent cut (every shard opened from the backup):
/// every recorded transfer's id is reserved on its home shard; a posted cross-shard transfer's
/// payee shard holds its credit; a credit's payer shard holds its
/// transfer (pending or final, never rejected while credited); and the money in flight balances
/// — the shards' net inflows sum to what was credited for transfers still pending on their payer
/// shard. Needs every shard; `placement` routes ids as the backed-up cluster did.
pub fn check_cut(placement: &Placement, ledgers: &BTreeMap<ShardId, Ledger>) -> Result<(), String> {
    let mut in_flight: BTreeMap<Currency, Minor> = BTreeMap::new();
    for (shard, ledger) in ledgers {
        for record in ledger.transfers() {
            // Every id is reserved on its home shard before its payer's shard records it.
            let home = crate::placement::home_shard_of(&record.id, placement.shard_count());
            if home != *shard {
                let Some(home_ledger) = ledgers.get(&home) else {
                    return Err(format!("the backup lacks shard {home}"));
                };
                // (A hold captured in part keeps the captured amount: at most what was reserved.)
                let reserved = home_ledger.reservation(&record.id).is_some_and(|body| {
                    body.from == record.from && body.to == record.to && body.currency == record.currency && record.amount <= body.amount
                });
                if !reserved {
                    return Err(format!(
                        "transfer {} is recorded on shard {shard} but its home shard {home} holds no reservation of it",
                        record.id
                    ));
                }
            }
            if !record.cross_shard {
                continue;
            }
            let payee_shard = placement.shard_of(&record.to);
            let Some(payee) = ledgers.get(&payee_shard) else {
                return Err(format!("the backup lacks shard {payee_shard}"));
            };
            let credit = payee.credit(&record.id).filter(|credit| credit.body() == record.body());
            let credited = credit.as_ref().is_some_and(|credit| matches!(credit.decision, Decision::Credited));
            match record.status {
                TransferStatus::Posted if !credited => {
                    return Err(format!(
                        "transfer {} is posted on shard {shard} but shard {payee_shard} holds no credit for it",
                        record.id
                    ));
                }
                TransferStatus::Pending if credited => {
                    *in_flight.entry(record.currency).or_default() += record.amount;
                }
                TransferStatus::Rejected(_) if credited => {
                    return Err(format!("transfer {} is rejected on shard {shard} but credited on shard {payee_shard}", record.id));
                }
                _ => {}
            }
        }
        for credit in ledger.credits() {
            if !matches!(credit.decision, Decision::Credited) {
                continue;
            }
            let payer_shard = credit.payer_shard;
            let Some(payer) = ledgers.get(&payer_shard) else {
                return Err(format!("the backup lacks shard {payer_shard}"));
            };
            if payer.transfer(&credit.id).is_none_or(|record| record.body() != credit.body()) {
                return Err(format!("transfer {} is credited on shard {shard} but shard {payer_shard} holds no record of it", credit.id));
            }
        }
    }
    let mut inflow: BTreeMap<Currency, Minor> = BTreeMap::new();
    for ledger in ledgers.values() {
        for (currency, amount) in ledger.net_inflow() {
            *inflow.entry(*currency).or_default() += amount;
        }
    }
    inflow.retain(|_, amount| *amount != 0);
    in_flight.retain(|_, amount| *amount != 0);
    if inflow != in_flight {
        return Err(format!("money in flight does not balance: net inflow {inflow:?}, credited and pending {in_flight:?}"));
    }
    Ok(())
}
