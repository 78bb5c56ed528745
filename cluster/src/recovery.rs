//! What a node keeps durably per shard and how it starts again from it. `DurableShard` is the
//! reference meaning of the two stores: the log store (entries, hard state, compaction point)
//! and the state store (the latest checkpoint). The production stores in `actors` and the
//! simulator's memory store both implement exactly these operations; `recover_shard` rebuilds a
//! replica from whatever survived a crash.

use crate::ids::ShardId;
use crate::ledger::Ledger;
use crate::message::{decode, CodecError};
use crate::placement::Placement;
use crate::replica::{Checkpoint, ShardWrite};
use crate::storage::ShardStorage;
use crate::RecoveredShard;
use raft::eraftpb::{ConfState, Entry, HardState};

/// One shard's durable state on one node.
#[derive(Debug, Clone, Default)]
pub struct DurableShard {
    pub hard_state: HardState,
    pub compacted_index: u64,
    pub compacted_term: u64,
    /// Entries after the compaction point, contiguous.
    pub entries: Vec<Entry>,
    pub checkpoint: Option<Checkpoint>,
    /// A stored record of this shard failed its checksum (a torn or flipped write).
    pub corrupt: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// The replica is quarantined: it may have acknowledged entries it no longer holds, so it
    /// must neither serve nor vote. The shard runs on its other replicas.
    #[error("shard {shard}: {reason}; the replica is quarantined")]
    Corrupt { shard: ShardId, reason: String },
    #[error("shard {shard}: the log was compacted to {compacted} beyond the checkpoint at {checkpoint}")]
    CompactedBeyondCheckpoint { shard: ShardId, compacted: u64, checkpoint: u64 },
    #[error("shard {shard}: commit index {commit} beyond the last log index {last}")]
    CommitBeyondLog { shard: ShardId, commit: u64, last: u64 },
    #[error("shard {shard}: the log has a gap at index {index}")]
    LogGap { shard: ShardId, index: u64 },
    #[error("shard {shard}: checkpoint does not decode: {source}")]
    Checkpoint { shard: ShardId, source: CodecError },
}

impl DurableShard {
    pub fn last_index(&self) -> u64 {
        self.compacted_index + u64::try_from(self.entries.len()).expect("fits u64")
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
            && self.checkpoint.is_none()
            && self.compacted_index == 0
            && self.hard_state == HardState::default()
            && self.corrupt.is_none()
    }

    /// Applies one shard's part of a persist round, in the order the log store must.
    pub fn apply_write(&mut self, write: &ShardWrite) {
        if let Some(snapshot) = &write.snapshot {
            let metadata = snapshot.get_metadata();
            self.checkpoint = Some(Checkpoint {
                shard: write.shard,
                index: metadata.index,
                term: metadata.term,
                conf_state: metadata.get_conf_state().clone(),
                ledger: snapshot.data.to_vec(),
            });
            self.entries.clear();
            self.compacted_index = metadata.index;
            self.compacted_term = metadata.term;
        }
        if let Some(first) = write.entries.first() {
            let keep = first.index.saturating_sub(self.compacted_index + 1);
            self.entries.truncate(usize::try_from(keep).expect("fits usize"));
            self.entries.extend(write.entries.iter().cloned());
        }
        if let Some(hard_state) = &write.hard_state {
            self.hard_state = hard_state.clone();
        }
        if let Some((index, term)) = write.compact_to {
            if index > self.compacted_index {
                let drop = usize::try_from(index - self.compacted_index).expect("fits usize").min(self.entries.len());
                self.entries.drain(..drop);
                self.compacted_index = index;
                self.compacted_term = term;
            }
        }
    }

    /// Stores a checkpoint (the state store's only write); older ones are ignored.
    pub fn apply_checkpoint(&mut self, checkpoint: &Checkpoint) {
        let newer = self.checkpoint.as_ref().is_none_or(|existing| checkpoint.index > existing.index);
        if newer {
            self.checkpoint = Some(checkpoint.clone());
        }
    }
}

/// Rebuilds a shard replica's starting state from what survived. `None` when nothing did (the
/// shard starts fresh, as at bootstrap).
pub fn recover_shard(placement: &Placement, shard: ShardId, durable: DurableShard) -> Result<Option<RecoveredShard>, RecoveryError> {
    if durable.is_empty() {
        return Ok(None);
    }
    let DurableShard { mut hard_state, mut compacted_index, mut compacted_term, mut entries, checkpoint, corrupt } = durable;
    if let Some(reason) = corrupt {
        return Err(RecoveryError::Corrupt { shard, reason });
    }
    for (offset, entry) in entries.iter().enumerate() {
        let expected = compacted_index + 1 + u64::try_from(offset).expect("fits u64");
        if entry.index != expected {
            return Err(RecoveryError::LogGap { shard, index: expected });
        }
    }
    let (ledger, applied_index, conf_state) = match checkpoint {
        Some(checkpoint) => {
            let ledger: Ledger = decode(&checkpoint.ledger).map_err(|source| RecoveryError::Checkpoint { shard, source })?;
            ledger.check_invariants();
            (ledger, checkpoint.index, Some((checkpoint.conf_state, checkpoint.term)))
        }
        None => (Ledger::new(shard, placement.shard_count()), 0, None),
    };
    if applied_index < compacted_index {
        return Err(RecoveryError::CompactedBeyondCheckpoint { shard, compacted: compacted_index, checkpoint: applied_index });
    }
    let last_index = compacted_index + u64::try_from(entries.len()).expect("fits u64");
    if applied_index > last_index {
        // The checkpoint (state store) outran the log store's last write before the crash: every
        // entry up to it was applied, so the log restarts at the checkpoint.
        let term = conf_state.as_ref().map_or(0, |(_, term)| *term);
        entries.clear();
        compacted_index = applied_index;
        compacted_term = term;
    }
    let last_index = compacted_index + u64::try_from(entries.len()).expect("fits u64");
    hard_state.commit = hard_state.commit.max(applied_index);
    if hard_state.commit > last_index {
        return Err(RecoveryError::CommitBeyondLog { shard, commit: hard_state.commit, last: last_index });
    }
    hard_state.term = hard_state.term.max(compacted_term);
    let voters = match conf_state {
        Some((conf_state, _)) => conf_state,
        None => ConfState::from((placement.replicas(shard), vec![])),
    };
    let storage = ShardStorage::recovered(hard_state, voters, compacted_index, compacted_term, entries);
    Ok(Some(RecoveredShard { storage, ledger, applied_index }))
}
