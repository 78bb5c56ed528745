//! What a node keeps durably per shard and how it starts again from it. Two stores: the log
//! store (entries, hard state, compaction point: `DurableShard`, the reference meaning of what
//! production's raft-engine store and the simulator keep), and the state store (the ledger's
//! records with each shard's applied point: `store::KvStore`). `recover_shard` rebuilds a
//! replica from whatever survived a crash, `recover_node` every replica of a node. The log is
//! only ever compacted behind an applied point the state store made durable, so the state
//! store's applied point plus the log after it is always the whole shard.

use crate::ids::ShardId;
use crate::ledger::Ledger;
use crate::placement::Placement;
use crate::replica::ShardWrite;
use crate::storage::ShardStorage;
use crate::store::{KvStore, StoreError};
use crate::RecoveredShard;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One shard's durable log on one node.
#[derive(Debug, Clone, Default)]
pub struct DurableShard {
    pub hard_state: HardState,
    pub compacted_index: u64,
    pub compacted_term: u64,
    /// Entries after the compaction point, contiguous.
    pub entries: Vec<Entry>,
    /// A stored record of this shard failed its checksum (a torn or flipped write).
    pub corrupt: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// The replica is quarantined: it may have acknowledged entries it no longer holds, so it
    /// must neither serve nor vote. The shard runs on its other replicas.
    #[error("shard {shard}: {reason}; the replica is quarantined")]
    Corrupt { shard: ShardId, reason: String },
    #[error("shard {shard}: the log was compacted to {compacted} beyond the state store's applied index {applied}")]
    CompactedBeyondState { shard: ShardId, compacted: u64, applied: u64 },
    #[error("shard {shard}: commit index {commit} beyond the last log index {last}")]
    CommitBeyondLog { shard: ShardId, commit: u64, last: u64 },
    #[error("shard {shard}: the log has a gap at index {index}")]
    LogGap { shard: ShardId, index: u64 },
    #[error("shard {shard}: {source}")]
    State { shard: ShardId, source: StoreError },
}

impl DurableShard {
    pub fn last_index(&self) -> u64 {
        self.compacted_index + u64::try_from(self.entries.len()).expect("fits u64")
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.compacted_index == 0 && self.hard_state == HardState::default() && self.corrupt.is_none()
    }

    /// Applies one shard's part of a persist round, in the order the log store must.
    pub fn apply_write(&mut self, write: &ShardWrite) {
        if write.clean {
            *self = DurableShard::default();
        }
        if let Some(snapshot) = &write.snapshot {
            let metadata = snapshot.get_metadata();
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
}

/// Rebuilds a shard replica's starting state from what survived: its log and the state store.
/// A shard with nothing in either starts fresh, as at bootstrap.
pub fn recover_shard(
    placement: &Placement,
    shard: ShardId,
    mut durable: DurableShard,
    store: &Arc<dyn KvStore>,
    cache_bytes_max: usize,
) -> Result<RecoveredShard, RecoveryError> {
    if let Some(reason) = durable.corrupt.take() {
        return Err(RecoveryError::Corrupt { shard, reason });
    }
    for (offset, entry) in durable.entries.iter().enumerate() {
        let expected = durable.compacted_index + 1 + u64::try_from(offset).expect("fits u64");
        if entry.index != expected {
            return Err(RecoveryError::LogGap { shard, index: expected });
        }
    }
    let (ledger, mark) = Ledger::open(shard, placement.shard_count(), store.clone(), cache_bytes_max)
        .map_err(|source| RecoveryError::State { shard, source })?;
    clear_unused_generations(store, shard, ledger.generation()).map_err(|source| RecoveryError::State { shard, source })?;
    let applied_index = mark.index;
    if applied_index < durable.compacted_index {
        return Err(RecoveryError::CompactedBeyondState { shard, compacted: durable.compacted_index, applied: applied_index });
    }
    if applied_index > durable.last_index() {
        // The state store's last write outran the log store's before the crash: every entry up
        // to it was applied, so the log restarts at the applied point.
        durable.entries.clear();
        durable.compacted_index = applied_index;
        durable.compacted_term = mark.term;
    }
    let last_index = durable.last_index();
    let DurableShard { mut hard_state, compacted_index, compacted_term, entries, .. } = durable;
    hard_state.commit = hard_state.commit.max(applied_index);
    if hard_state.commit > last_index {
        return Err(RecoveryError::CommitBeyondLog { shard, commit: hard_state.commit, last: last_index });
    }
    hard_state.term = hard_state.term.max(compacted_term);
    let voters = if mark.conf_state.is_empty() {
        ConfState::from((placement.replicas(shard), vec![]))
    } else {
        ConfState::parse_from_bytes(&mark.conf_state)
            .map_err(|error| RecoveryError::State { shard, source: StoreError(format!("stored voters: {error}")) })?
    };
    let storage = ShardStorage::recovered(hard_state, voters, compacted_index, compacted_term, entries);
    Ok(RecoveredShard { storage, ledger, applied_index })
}

/// A node's replicas as recovered: those that start, and the quarantined ones with the reason.
pub type RecoveredNode = (BTreeMap<ShardId, RecoveredShard>, BTreeMap<ShardId, String>);

/// Rebuilds every shard replica a node hosts from what survived: the replicas that start, and
/// the quarantined ones (a stored log record failed its checksum, or a state record does not decode) with the reason. Any other error
/// means the node cannot start. Production (`actors::io`) and the simulator both start nodes this
/// way.
/// Deletes every record of `shard` outside its current generation: what an install's
/// background delete of the old generation, or an abandoned snapshot stream, left when the node
/// stopped. Done before the replica runs, so a snapshot stream never stages into a generation
/// that holds anything (the background deletes of a running node only ever meet ranges
/// nothing writes to any more).
pub fn clear_unused_generations(store: &Arc<dyn KvStore>, shard: ShardId, generation: u32) -> Result<(), StoreError> {
    const BATCH_KEYS: usize = 10_000;
    let shard_start = crate::ledger::keys::shard_prefix(shard);
    let shard_end = crate::store::prefix_end(&shard_start);
    let current = crate::ledger::keys::generation_prefix(shard, generation);
    let current_end = crate::store::prefix_end(&current);
    for (start, end) in [(shard_start, current), (current_end, shard_end)] {
        loop {
            let found = store.scan(&start, &end, BATCH_KEYS, false);
            if found.is_empty() {
                break;
            }
            let mut batch = crate::store::WriteBatch::default();
            for (key, _) in found {
                batch.delete(key);
            }
            store.write(batch)?;
        }
    }
    Ok(())
}

pub fn recover_node(
    placement: &Placement,
    node: crate::ids::NodeId,
    mut durable: BTreeMap<ShardId, DurableShard>,
    store: &Arc<dyn KvStore>,
    cache_bytes_max: usize,
) -> Result<RecoveredNode, RecoveryError> {
    let mut recovered = BTreeMap::new();
    let mut quarantined = BTreeMap::new();
    // The shards of the bootstrap placement, and every shard with anything stored (a replica
    // added since, or a removed one's tombstone).
    let mut shards: std::collections::BTreeSet<ShardId> = placement.shards_on(node).into_iter().collect();
    shards.extend(durable.iter().filter(|(_, shard)| !shard.is_empty()).map(|(shard, _)| *shard));
    shards.extend(placement.shard_ids().filter(|shard| has_records(store, *shard)));
    for shard in shards {
        let state = durable.remove(&shard).unwrap_or_default();
        match recover_shard(placement, shard, state, store, cache_bytes_max) {
            Ok(replica) if is_tombstone(&replica, node) => {
                // Removed from the shard: the records go, the applied mark without this node
                // stays (so the placement's bootstrap does not start the shard here again).
                clear_tombstone(store, shard, replica.ledger.generation()).map_err(|source| RecoveryError::State { shard, source })?;
            }
            Ok(replica) => {
                recovered.insert(shard, replica);
            }
            Err(RecoveryError::Corrupt { reason, .. }) => {
                quarantined.insert(shard, reason);
            }
            // A stored record of the shard's state that does not decode: the same damage, met
            // in the state store (crash-looping on it would take the node's other shards down).
            Err(RecoveryError::State { source, .. }) => {
                quarantined.insert(shard, source.to_string());
            }
            Err(other) => return Err(other),
        }
    }
    Ok((recovered, quarantined))
}

/// Whether a stored membership (an applied mark's encoded `ConfState`) leaves `node` out: the
/// shard was moved away from it.
pub fn removed_here(conf_state: &[u8], node: crate::ids::NodeId) -> bool {
    use protobuf::Message as _;
    if conf_state.is_empty() {
        return false;
    }
    raft::eraftpb::ConfState::parse_from_bytes(conf_state)
        .is_ok_and(|conf| !conf.voters.is_empty() && !conf.voters.contains(&node) && !conf.learners.contains(&node))
}

/// The voters of a stored membership (an applied mark's encoded `ConfState`), if it decodes.
pub fn stored_voters(conf_state: &[u8]) -> Option<Vec<crate::ids::NodeId>> {
    use protobuf::Message as _;
    raft::eraftpb::ConfState::parse_from_bytes(conf_state).ok().map(|conf| conf.voters)
}

/// A replica whose applied membership does not name its node, with nothing in its log after
/// that point: the shard was moved away from this node.
fn is_tombstone(replica: &RecoveredShard, node: crate::ids::NodeId) -> bool {
    let conf = replica.storage.conf_state();
    let named = conf.voters.contains(&node) || conf.learners.contains(&node);
    !named && !conf.voters.is_empty() && replica.storage.last_index() <= replica.applied_index
}

/// Whether the state store holds anything of `shard`.
pub fn has_records(store: &Arc<dyn KvStore>, shard: ShardId) -> bool {
    let start = crate::ledger::keys::shard_prefix(shard);
    !store.scan(&start, &crate::store::prefix_end(&start), 1, false).is_empty()
}

/// Deletes every key in `[start, end)`, in bounded batches.
fn delete_range(store: &Arc<dyn KvStore>, start: &[u8], end: &[u8]) -> Result<(), StoreError> {
    const BATCH_KEYS: usize = 10_000;
    loop {
        let found = store.scan(start, end, BATCH_KEYS, false);
        if found.is_empty() {
            return Ok(());
        }
        let mut batch = crate::store::WriteBatch::default();
        for (key, _) in found {
            batch.delete(key);
        }
        store.write(batch)?;
    }
}

/// Deletes a removed replica's records but its applied mark (which says it is no member).
fn clear_tombstone(store: &Arc<dyn KvStore>, shard: ShardId, generation: u32) -> Result<(), StoreError> {
    use crate::ledger::keys;
    let prefix = keys::generation_prefix(shard, generation);
    let mut mark = prefix.clone();
    mark.push(keys::APPLIED);
    let mut after_mark = prefix.clone();
    after_mark.push(keys::APPLIED + 1);
    clear_unused_generations(store, shard, generation)?;
    delete_range(store, &prefix, &mark)?;
    delete_range(store, &after_mark, &crate::store::prefix_end(&prefix))
}

/// Deletes everything of `shard` in the state store (a new replica starts where an earlier
/// one was).
pub fn clear_shard(store: &Arc<dyn KvStore>, shard: ShardId) -> Result<(), StoreError> {
    let start = crate::ledger::keys::shard_prefix(shard);
    delete_range(store, &start, &crate::store::prefix_end(&start))?;
    let mut batch = crate::store::WriteBatch::default();
    batch.delete(crate::ledger::keys::generation_key(shard));
    store.write(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::AppliedMark;
    use crate::store::MemStore;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, ..Entry::default() }
    }

    fn store() -> Arc<dyn KvStore> {
        Arc::new(MemStore::new())
    }

    /// A shard whose stored applied mark does not decode is quarantined at start (the node and
    /// its other shards start), not a reason for the whole node to stop and crash-loop.
    #[test]
    fn an_undecodable_state_record_quarantines_only_its_shard() {
        let placement = Placement::new(vec![1, 2, 3], 4);
        let store = store();
        let mut batch = crate::store::WriteBatch::default();
        batch.put(crate::ledger::keys::applied(2, 0), b"\xffnot a mark".to_vec());
        store.write(batch).unwrap();

        let (recovered, quarantined) = recover_node(&placement, 1, BTreeMap::new(), &store, 1 << 20).unwrap();

        assert_eq!(recovered.keys().copied().collect::<Vec<_>>(), vec![0, 1, 3]);
        assert!(quarantined[&2].contains("does not decode"), "{quarantined:?}");
    }

    /// A node's shards split into replicas that start (from their log, or fresh) and
    /// quarantined ones (with the reason); a state store ahead of the log restarts that log at
    /// the state's applied point.
    #[test]
    fn recover_node_splits_recovered_and_quarantined_shards() {
        let placement = Placement::new(vec![1, 2, 3], 4);
        let store = store();
        // Shard 3's state store is at index 5, ahead of its log.
        let (mut ledger, _) = Ledger::open(3, 4, store.clone(), 1 << 20).unwrap();
        ledger.commit_round(&AppliedMark { index: 5, term: 2, conf_state: Vec::new() }).unwrap();
        let mut durable = BTreeMap::new();
        let mut logged = DurableShard { entries: vec![entry(1, 1), entry(2, 1)], ..DurableShard::default() };
        logged.hard_state.term = 1;
        logged.hard_state.commit = 2;
        durable.insert(0, logged);
        durable.insert(1, DurableShard { corrupt: Some("checksum".to_string()), ..DurableShard::default() });
        durable.insert(3, DurableShard { entries: vec![entry(1, 1)], ..DurableShard::default() });

        let (recovered, quarantined) = recover_node(&placement, 1, durable, &store, 1 << 20).unwrap();

        assert_eq!(recovered.keys().copied().collect::<Vec<_>>(), vec![0, 2, 3]);
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
        assert!(matches!(recover_node(&placement, 1, durable, &store(), 1 << 20), Err(RecoveryError::LogGap { shard: 0, index: 2 })));
    }

    /// A log compacted past what the state store holds cannot be recovered: the entries between
    /// are gone from both (the rule that compaction follows the state store's durable point).
    #[test]
    fn a_log_compacted_beyond_the_state_is_refused() {
        let placement = Placement::new(vec![1, 2, 3], 4);
        let durable = BTreeMap::from([(0, DurableShard { compacted_index: 7, compacted_term: 1, ..DurableShard::default() })]);
        let refused = recover_node(&placement, 1, durable, &store(), 1 << 20);
        assert!(matches!(refused, Err(RecoveryError::CompactedBeyondState { shard: 0, compacted: 7, applied: 0 })), "{:?}", refused.err());
    }
}
