//! What a node keeps durably per shard and how it starts again from it. `DurableShard` is the
//! reference meaning of the two stores: the log store (entries, hard state, compaction point)
//! and the state store (the latest checkpoint). The production stores in `actors` and the
//! simulator's memory store both implement exactly these operations; `recover_shard` rebuilds a
//! replica from whatever survived a crash, `recover_node` every replica of a node.

use crate::codec::CodecError;
use crate::ids::ShardId;
use crate::ledger::Ledger;
use crate::placement::Placement;
use crate::replica::{Checkpoint, ShardWrite};
use crate::storage::ShardStorage;
use crate::RecoveredShard;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use std::collections::BTreeMap;

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
    /// A checkpoint stored under one shard holds another shard's ledger (or another layout's):
    /// never trusted by the key it was found under.
    #[error("shard {shard}: the checkpoint stored for it holds shard {found} of {found_count} shards")]
    WrongShard { shard: ShardId, found: ShardId, found_count: u32 },
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
            let checkpoint = checkpoint_from_snapshot(write.shard, snapshot);
            self.checkpoint = Some(checkpoint.to_checkpoint());
            self.entries.clear();
            self.compacted_index = checkpoint.index;
            self.compacted_term = checkpoint.term;
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

/// A checkpoint borrowed from where it already lives (a `Checkpoint` the core emitted, or the
/// snapshot a leader sent), so that storing it copies no ledger bytes.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointView<'a> {
    pub shard: ShardId,
    pub index: u64,
    pub term: u64,
    pub conf_state: &'a ConfState,
    /// `Ledger::encode`.
    pub ledger: &'a [u8],
}

impl CheckpointView<'_> {
    pub fn to_checkpoint(&self) -> Checkpoint {
        Checkpoint {
            shard: self.shard,
            index: self.index,
            term: self.term,
            conf_state: self.conf_state.clone(),
            ledger: self.ledger.to_vec(),
        }
    }
}

impl<'a> From<&'a Checkpoint> for CheckpointView<'a> {
    fn from(checkpoint: &'a Checkpoint) -> CheckpointView<'a> {
        CheckpointView {
            shard: checkpoint.shard,
            index: checkpoint.index,
            term: checkpoint.term,
            conf_state: &checkpoint.conf_state,
            ledger: &checkpoint.ledger,
        }
    }
}

/// The checkpoint a snapshot installs: the ledger it carries, at its index and term. Both stores
/// keep it before the log drops the entries the snapshot replaces.
pub fn checkpoint_from_snapshot(shard: ShardId, snapshot: &Snapshot) -> CheckpointView<'_> {
    let metadata = snapshot.get_metadata();
    CheckpointView { shard, index: metadata.index, term: metadata.term, conf_state: metadata.get_conf_state(), ledger: &snapshot.data }
}

/// Rebuilds a shard replica's starting state from what survived. `None` when nothing did (the
/// shard starts fresh, as at bootstrap).
pub fn recover_shard(placement: &Placement, shard: ShardId, mut durable: DurableShard) -> Result<Option<RecoveredShard>, RecoveryError> {
    if durable.is_empty() {
        return Ok(None);
    }
    if let Some(reason) = durable.corrupt.take() {
        return Err(RecoveryError::Corrupt { shard, reason });
    }
    for (offset, entry) in durable.entries.iter().enumerate() {
        let expected = durable.compacted_index + 1 + u64::try_from(offset).expect("fits u64");
        if entry.index != expected {
            return Err(RecoveryError::LogGap { shard, index: expected });
        }
    }
    let (ledger, applied_index, conf_state) = match durable.checkpoint.take() {
        Some(checkpoint) => {
            let ledger = Ledger::decode(&checkpoint.ledger).map_err(|source| RecoveryError::Checkpoint { shard, source })?;
            if ledger.shard() != shard || ledger.shard_count() != placement.shard_count() {
                return Err(RecoveryError::WrongShard { shard, found: ledger.shard(), found_count: ledger.shard_count() });
            }
            ledger
                .verify()
                .map_err(|reason| RecoveryError::Corrupt { shard, reason: format!("checkpoint breaks an invariant: {reason}") })?;
            (ledger, checkpoint.index, Some((checkpoint.conf_state, checkpoint.term)))
        }
        None => (Ledger::new(shard, placement.shard_count()), 0, None),
    };
    if applied_index < durable.compacted_index {
        return Err(RecoveryError::CompactedBeyondCheckpoint { shard, compacted: durable.compacted_index, checkpoint: applied_index });
    }
    if applied_index > durable.last_index() {
        // The checkpoint (state store) outran the log store's last write before the crash: every
        // entry up to it was applied, so the log restarts at the checkpoint.
        let term = conf_state.as_ref().map_or(0, |(_, term)| *term);
        durable.entries.clear();
        durable.compacted_index = applied_index;
        durable.compacted_term = term;
    }
    let last_index = durable.last_index();
    let DurableShard { mut hard_state, compacted_index, compacted_term, entries, .. } = durable;
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

/// A node's replicas as recovered: those that start, and the quarantined ones with the reason.
pub type RecoveredNode = (BTreeMap<ShardId, RecoveredShard>, BTreeMap<ShardId, String>);

/// Rebuilds every shard replica of a node from what survived: the replicas that start, and the
/// quarantined ones (a stored record failed its checksum) with the reason. Any other error means
/// the node cannot start. Production (`actors::io`) and the simulator both start nodes this way.
pub fn recover_node(placement: &Placement, durable: BTreeMap<ShardId, DurableShard>) -> Result<RecoveredNode, RecoveryError> {
    let mut recovered = BTreeMap::new();
    let mut quarantined = BTreeMap::new();
    for (shard, state) in durable {
        match recover_shard(placement, shard, state) {
            Ok(Some(replica)) => {
                recovered.insert(shard, replica);
            }
            Ok(None) => {}
            Err(RecoveryError::Corrupt { shard, reason }) => {
                quarantined.insert(shard, reason);
            }
            Err(error) => return Err(error),
        }
    }
    Ok((recovered, quarantined))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, ..Entry::default() }
    }

    fn checkpoint(shard: ShardId, index: u64, term: u64) -> Checkpoint {
        Checkpoint { shard, index, term, conf_state: ConfState::from((vec![1, 2, 3], vec![])), ledger: Ledger::new(shard, 4).encode() }
    }

    /// A node's shards split into replicas that start, quarantined ones (with the reason) and
    /// fresh ones; a checkpoint ahead of the log restarts that log at the checkpoint.
    #[test]
    fn recover_node_splits_recovered_and_quarantined_shards() {
        let placement = Placement::new(vec![1, 2, 3], 4);
        let mut durable = BTreeMap::new();
        let mut logged = DurableShard { entries: vec![entry(1, 1), entry(2, 1)], ..DurableShard::default() };
        logged.hard_state.term = 1;
        logged.hard_state.commit = 2;
        durable.insert(0, logged);
        durable.insert(1, DurableShard { corrupt: Some("checksum".to_string()), ..DurableShard::default() });
        durable.insert(2, DurableShard::default());
        durable.insert(3, DurableShard { entries: vec![entry(1, 1)], checkpoint: Some(checkpoint(3, 5, 2)), ..DurableShard::default() });

        let (recovered, quarantined) = recover_node(&placement, durable).unwrap();

        assert_eq!(recovered.keys().copied().collect::<Vec<_>>(), vec![0, 3]);
        assert_eq!(quarantined, BTreeMap::from([(1, "checksum".to_string())]));
        assert_eq!(recovered[&0].storage.last_index(), 2);
        assert_eq!(recovered[&0].applied_index, 0);
        let ahead = &recovered[&3];
        assert_eq!((ahead.applied_index, ahead.storage.compacted_index(), ahead.storage.last_index()), (5, 5, 5));
        assert_eq!(ahead.storage.hard_state().commit, 5);
        assert_eq!(ahead.storage.hard_state().term, 2);
    }

    /// A shard that cannot be rebuilt (a gap in its log) stops the whole node's recovery.
    #[test]
    fn recover_node_fails_on_a_log_gap() {
        let placement = Placement::new(vec![1, 2, 3], 4);
        let durable = BTreeMap::from([(0, DurableShard { entries: vec![entry(1, 1), entry(3, 1)], ..DurableShard::default() })]);
        assert!(matches!(recover_node(&placement, durable), Err(RecoveryError::LogGap { shard: 0, index: 2 })));
    }

    /// A checkpoint found under one shard's key that holds another shard's ledger is refused,
    /// not installed as that shard's state.
    #[test]
    fn a_checkpoint_of_another_shard_is_refused() {
        let placement = Placement::new(vec![1, 2, 3], 4);
        let mut misplaced = checkpoint(1, 5, 2);
        misplaced.shard = 2;
        let durable = BTreeMap::from([(2, DurableShard { checkpoint: Some(misplaced), ..DurableShard::default() })]);
        let refused = recover_node(&placement, durable);
        assert!(matches!(refused, Err(RecoveryError::WrongShard { shard: 2, found: 1, found_count: 4 })), "{:?}", refused.err());
    }
}
