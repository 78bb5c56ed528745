//! `ShardStorage`: what raft-rs reads through its `Storage` trait for one shard replica. It is the
//! in-memory image of that shard's durable log (entries after the compaction point, the hard
//! state, the conf state). The node driver makes it durable: every change reaches the log store
//! through a `PersistRound` before raft is told it is persisted.

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use std::cell::Cell;

/// One shard's log as raft sees it.
#[derive(Debug, Default)]
pub struct ShardStorage {
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the last entry dropped by compaction (or of the applied snapshot).
    compacted_index: u64,
    compacted_term: u64,
    /// `entries[i].index == compacted_index + 1 + i`.
    entries: Vec<Entry>,
    /// The snapshot offered to followers that fell behind the compaction point; built on request
    /// by the replica (raft asks through `snapshot`, we answer "temporarily unavailable" and set
    /// `snapshot_wanted` so the replica serialises its ledger in the next round).
    snapshot: Option<Snapshot>,
    snapshot_wanted: Cell<bool>,
}

impl ShardStorage {
    /// A fresh replica of a new shard with its voters.
    pub fn bootstrap(voters: Vec<u64>) -> ShardStorage {
        ShardStorage { conf_state: ConfState::from((voters, vec![])), ..ShardStorage::default() }
    }

    /// A replica rebuilt from its durable log after a restart. `entries` must follow
    /// `compacted_index` without a gap: `recovery::recover_shard`, the only caller, checks that
    /// (answering `RecoveryError::LogGap`), so it is not checked again here.
    pub fn recovered(
        hard_state: HardState,
        conf_state: ConfState,
        compacted_index: u64,
        compacted_term: u64,
        entries: Vec<Entry>,
    ) -> ShardStorage {
        ShardStorage { hard_state, conf_state, compacted_index, compacted_term, entries, snapshot: None, snapshot_wanted: Cell::new(false) }
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// The voters and learners after an applied membership change.
    pub fn set_conf_state(&mut self, conf_state: ConfState) {
        self.conf_state = conf_state;
    }

    pub fn set_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = hard_state;
    }

    pub fn compacted_index(&self) -> u64 {
        self.compacted_index
    }

    pub fn last_index(&self) -> u64 {
        self.compacted_index + u64::try_from(self.entries.len()).expect("fits u64")
    }

    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// Appends entries from a Ready, replacing any conflicting tail (raft's append semantics).
    pub fn append(&mut self, new_entries: &[Entry]) {
        let Some(first) = new_entries.first() else {
            return;
        };
        assert!(first.index > self.compacted_index, "append at {} behind compaction {}", first.index, self.compacted_index);
        assert!(first.index <= self.last_index() + 1, "append at {} leaves a gap after {}", first.index, self.last_index());
        let keep = usize::try_from(first.index - self.compacted_index - 1).expect("fits usize");
        self.entries.truncate(keep);
        self.entries.extend_from_slice(new_entries);
    }

    /// Installs a snapshot received from the leader: the whole log is replaced by it.
    pub fn apply_snapshot(&mut self, snapshot: &Snapshot) {
        let metadata = snapshot.get_metadata();
        self.entries.clear();
        self.compacted_index = metadata.index;
        self.compacted_term = metadata.term;
        self.conf_state = metadata.get_conf_state().clone();
        self.hard_state.commit = self.hard_state.commit.max(metadata.index);
        if self.hard_state.term < metadata.term {
            self.hard_state.term = metadata.term;
        }
        self.snapshot = None;
    }

    /// Drops entries up to and including `index`, which must be applied and checkpointed.
    pub fn compact(&mut self, index: u64) {
        if index <= self.compacted_index {
            return;
        }
        assert!(index <= self.last_index(), "compact to {index} beyond last index {}", self.last_index());
        let term = self.term_of(index).expect("index is in the log");
        let drop = usize::try_from(index - self.compacted_index).expect("fits usize");
        self.entries.drain(..drop);
        self.compacted_index = index;
        self.compacted_term = term;
    }

    /// The lowest index `i` (not below the compaction point) such that the entries after `i` up
    /// to `upto` hold at most `bytes` of payload: how far back a byte budget reaches.
    pub fn index_keeping_bytes(&self, upto: u64, bytes: u64) -> u64 {
        let upto = upto.min(self.last_index());
        let mut kept = 0u64;
        let mut index = upto;
        while index > self.compacted_index {
            let offset = usize::try_from(index - self.compacted_index - 1).expect("fits usize");
            kept += entry_bytes(&self.entries[offset]);
            if kept > bytes {
                break;
            }
            index -= 1;
        }
        index
    }

    /// Term of an entry still known (in the log or the compaction point).
    pub fn term_of(&self, index: u64) -> Option<u64> {
        if index == self.compacted_index {
            return Some(self.compacted_term);
        }
        if index < self.compacted_index || index > self.last_index() {
            return None;
        }
        let offset = usize::try_from(index - self.compacted_index - 1).expect("fits usize");
        Some(self.entries[offset].term)
    }

    /// Whether raft asked for a snapshot we have not built yet; clears the request.
    pub fn take_snapshot_request(&self) -> bool {
        self.snapshot_wanted.replace(false)
    }

    /// The snapshot offered now, if any.
    pub fn offered_snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }

    /// Stops offering the snapshot (what it refers to is gone): raft asks for a new one.
    pub fn clear_snapshot(&mut self) {
        self.snapshot = None;
    }

    /// Offers a snapshot of the ledger at `index` (which must be applied) to lagging followers.
    pub fn set_snapshot(&mut self, index: u64, data: Vec<u8>) {
        let term = self.term_of(index).expect("snapshot index is in the log");
        let mut metadata = SnapshotMetadata::default();
        metadata.index = index;
        metadata.term = term;
        metadata.set_conf_state(self.conf_state.clone());
        let mut snapshot = Snapshot::default();
        snapshot.set_metadata(metadata);
        snapshot.data = data.into();
        self.snapshot = Some(snapshot);
    }
}

impl raft::Storage for ShardStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.clone(), self.conf_state.clone()))
    }

    fn entries(&self, low: u64, high: u64, max_size: impl Into<Option<u64>>, _context: GetEntriesContext) -> raft::Result<Vec<Entry>> {
        if low <= self.compacted_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        assert!(high <= self.last_index() + 1, "entries [{low}, {high}) beyond last index {}", self.last_index());
        let start = usize::try_from(low - self.compacted_index - 1).expect("fits usize");
        let end = usize::try_from(high - self.compacted_index - 1).expect("fits usize");
        let mut selected = self.entries[start..end].to_vec();
        raft::util::limit_size(&mut selected, max_size.into());
        Ok(selected)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index < self.compacted_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.term_of(index).ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.compacted_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(ShardStorage::last_index(self))
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        match &self.snapshot {
            Some(snapshot) if snapshot.get_metadata().index >= request_index && snapshot.get_metadata().index >= self.compacted_index => {
                Ok(snapshot.clone())
            }
            _ => {
                self.snapshot_wanted.set(true);
                Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
            }
        }
    }
}

/// What an entry costs in memory, roughly: its payload and a fixed overhead.
fn entry_bytes(entry: &Entry) -> u64 {
    u64::try_from(entry.data.len() + entry.context.len()).unwrap_or(u64::MAX).saturating_add(ENTRY_OVERHEAD_BYTES)
}

/// The per-entry overhead counted by `index_keeping_bytes` (the struct and its allocation).
const ENTRY_OVERHEAD_BYTES: u64 = 64;

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        let mut entry = Entry::default();
        entry.index = index;
        entry.term = term;
        entry
    }

    /// Appends replace a conflicting tail; compaction keeps the term of the compaction point.
    #[test]
    fn append_truncates_conflicts_and_compaction_keeps_terms() {
        let mut storage = ShardStorage::bootstrap(vec![1, 2, 3]);
        storage.append(&[entry(1, 1), entry(2, 1), entry(3, 1)]);
        storage.append(&[entry(3, 2), entry(4, 2)]);
        assert_eq!(storage.last_index(), 4);
        assert_eq!(Storage::term(&storage, 3).unwrap(), 2);
        storage.compact(2);
        assert_eq!(Storage::first_index(&storage).unwrap(), 3);
        assert_eq!(Storage::term(&storage, 2).unwrap(), 1);
        assert!(Storage::term(&storage, 1).is_err());
        let entries = Storage::entries(&storage, 3, 5, None, GetEntriesContext::empty(false)).unwrap();
        assert_eq!(entries.iter().map(|e| e.index).collect::<Vec<_>>(), vec![3, 4]);
        assert!(Storage::entries(&storage, 2, 5, None, GetEntriesContext::empty(false)).is_err());
    }

    /// A byte budget reaches back over whole entries only, and never past the compaction point.
    #[test]
    fn a_byte_budget_keeps_the_newest_entries_that_fit() {
        let mut storage = ShardStorage::bootstrap(vec![1, 2, 3]);
        let sized = |index: u64| {
            let mut entry = entry(index, 1);
            entry.data = vec![0; 936].into();
            entry
        };
        storage.append(&(1..=10).map(sized).collect::<Vec<_>>());
        storage.compact(2);
        // Each entry counts 1,000 bytes (936 of payload and the fixed overhead).
        assert_eq!(storage.index_keeping_bytes(10, 3_000), 7, "entries 8..=10 fit in 3,000 bytes");
        assert_eq!(storage.index_keeping_bytes(10, 2_999), 8);
        assert_eq!(storage.index_keeping_bytes(9, 0), 9, "nothing fits in 0 bytes");
        assert_eq!(storage.index_keeping_bytes(10, u64::MAX), 2, "never below the compaction point");
    }

    /// A snapshot is built on request: the first ask is refused and flags the request.
    #[test]
    fn snapshot_is_built_on_request() {
        let mut storage = ShardStorage::bootstrap(vec![1, 2, 3]);
        storage.append(&[entry(1, 1), entry(2, 1)]);
        assert!(Storage::snapshot(&storage, 0, 2).is_err());
        assert!(storage.take_snapshot_request());
        assert!(!storage.take_snapshot_request());
        storage.set_snapshot(2, b"ledger".to_vec());
        let snapshot = Storage::snapshot(&storage, 0, 2).unwrap();
        assert_eq!(snapshot.get_metadata().index, 2);
        assert_eq!(&snapshot.data[..], b"ledger");
    }
}
