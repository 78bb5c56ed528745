//! The Raft log store: redb, because it really syncs (fdatasync on commit; sled's `flush()` is
//! `sync_file_range` on Linux) and measured 6× faster than sled for this pattern (see
//! ARCHITECTURE.md). One write transaction per IO round carries every shard's entries, hard
//! states and compactions: one sync for all shards (group commit).

use crate::record::{open, seal, RecordError};
use protobuf::Message as _;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use settle_cluster::ids::ShardId;
use settle_cluster::raft::eraftpb::{Entry, HardState};
use settle_cluster::recovery::DurableShard;
use settle_cluster::replica::ShardWrite;
use std::collections::BTreeMap;
use std::path::Path;

/// (shard, index) → sealed protobuf `Entry`.
const ENTRIES: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("entries");
/// shard → sealed `ShardMeta` (hard state and compaction point).
const META: TableDefinition<u32, &[u8]> = TableDefinition::new("shard_meta");

#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error("log store: {0}")]
    Redb(String),
    #[error("log store shard {shard}: {source}")]
    Record { shard: ShardId, source: RecordError },
    #[error("log store shard {shard}: undecodable record: {detail}")]
    Decode { shard: ShardId, detail: String },
}

fn redb_error(error: impl std::fmt::Display) -> LogStoreError {
    LogStoreError::Redb(error.to_string())
}

/// What the log store keeps per shard besides entries.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct ShardMeta {
    hard_state: Vec<u8>,
    compacted_index: u64,
    compacted_term: u64,
}

pub struct LogStore {
    db: Database,
    /// Per shard meta as last written, so a round that changes only entries need not read it.
    meta: BTreeMap<ShardId, ShardMeta>,
}

impl LogStore {
    pub fn open(path: &Path) -> Result<LogStore, LogStoreError> {
        let db = Database::create(path).map_err(redb_error)?;
        let mut store = LogStore { db, meta: BTreeMap::new() };
        store.meta = store.read_meta()?;
        Ok(store)
    }

    fn read_meta(&self) -> Result<BTreeMap<ShardId, ShardMeta>, LogStoreError> {
        let read = self.db.begin_read().map_err(redb_error)?;
        let table = match read.open_table(META) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(BTreeMap::new()),
            Err(error) => return Err(redb_error(error)),
        };
        let mut meta = BTreeMap::new();
        for row in table.iter().map_err(redb_error)? {
            let (shard, value) = row.map_err(redb_error)?;
            let shard = shard.value();
            let payload = open(value.value()).map_err(|source| LogStoreError::Record { shard, source })?;
            let decoded: ShardMeta = settle_cluster::message::decode(payload)
                .map_err(|error| LogStoreError::Decode { shard, detail: error.to_string() })?;
            meta.insert(shard, decoded);
        }
        Ok(meta)
    }

    /// Reads every shard's durable log (checkpoints come from the state store).
    pub fn load(&self) -> Result<BTreeMap<ShardId, DurableShard>, LogStoreError> {
        let mut shards: BTreeMap<ShardId, DurableShard> = BTreeMap::new();
        for (shard, meta) in &self.meta {
            let hard_state = HardState::parse_from_bytes(&meta.hard_state)
                .map_err(|error| LogStoreError::Decode { shard: *shard, detail: error.to_string() })?;
            let durable = shards.entry(*shard).or_default();
            durable.hard_state = hard_state;
            durable.compacted_index = meta.compacted_index;
            durable.compacted_term = meta.compacted_term;
        }
        let read = self.db.begin_read().map_err(redb_error)?;
        let table = match read.open_table(ENTRIES) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(shards),
            Err(error) => return Err(redb_error(error)),
        };
        for row in table.iter().map_err(redb_error)? {
            let (key, value) = row.map_err(redb_error)?;
            let (shard, index) = key.value();
            let durable = shards.entry(shard).or_default();
            if index <= durable.compacted_index {
                continue;
            }
            // A record that fails its checksum or does not decode is never served: the whole
            // replica is quarantined (recovery.rs) and the shard runs on its other replicas.
            let entry = open(value.value())
                .ok()
                .and_then(|payload| Entry::parse_from_bytes(payload).ok())
                .filter(|entry| entry.index == index);
            match entry {
                Some(entry) if durable.corrupt.is_none() => durable.entries.push(entry),
                Some(_) => {}
                None => {
                    tracing::error!(shard, index, "log record failed its checksum; quarantining the replica");
                    durable.corrupt.get_or_insert_with(|| format!("log record {index} failed its checksum"));
                }
            }
        }
        Ok(shards)
    }

    /// Makes the writes of one or more rounds durable in one transaction and one sync.
    pub fn write(&mut self, writes: &[&ShardWrite]) -> Result<(), LogStoreError> {
        let mut transaction = self.db.begin_write().map_err(redb_error)?;
        transaction.set_durability(Durability::Immediate).map_err(redb_error)?;
        let mut touched: BTreeMap<ShardId, ShardMeta> = BTreeMap::new();
        {
            let mut entries = transaction.open_table(ENTRIES).map_err(redb_error)?;
            for write in writes {
                let shard = write.shard;
                let meta = touched.entry(shard).or_insert_with(|| self.meta.get(&shard).cloned().unwrap_or_default());
                if let Some(snapshot) = &write.snapshot {
                    entries.retain_in((shard, 0)..=(shard, u64::MAX), |_, _| false).map_err(redb_error)?;
                    meta.compacted_index = snapshot.get_metadata().index;
                    meta.compacted_term = snapshot.get_metadata().term;
                }
                if let Some(first) = write.entries.first() {
                    // Raft's append replaces any conflicting tail.
                    entries.retain_in((shard, first.index)..=(shard, u64::MAX), |_, _| false).map_err(redb_error)?;
                    for entry in &write.entries {
                        let bytes = entry.write_to_bytes().map_err(redb_error)?;
                        entries.insert((shard, entry.index), seal(&bytes).as_slice()).map_err(redb_error)?;
                    }
                }
                if let Some(hard_state) = &write.hard_state {
                    meta.hard_state = hard_state.write_to_bytes().map_err(redb_error)?;
                }
                if let Some((index, term)) = write.compact_to {
                    if index > meta.compacted_index {
                        entries.retain_in((shard, 0)..=(shard, index), |_, _| false).map_err(redb_error)?;
                        meta.compacted_index = index;
                        meta.compacted_term = term;
                    }
                }
            }
            let mut meta_table = transaction.open_table(META).map_err(redb_error)?;
            for (shard, meta) in &touched {
                let payload = settle_cluster::message::encode(meta);
                meta_table.insert(*shard, seal(&payload).as_slice()).map_err(redb_error)?;
            }
        }
        transaction.commit().map_err(redb_error)?;
        self.meta.extend(touched);
        Ok(())
    }
}
