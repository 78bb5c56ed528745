//! The Raft log store: tikv's `raft-engine`, built for many Raft groups' logs in one
//! append-only, checksummed file queue with one fsync per write batch. One batch per IO round
//! carries every shard's entries, hard states and compactions (group commit). Measured against
//! the redb layout it replaced in BENCHMARKS.md: redb rewrote B-tree pages for every shard a
//! round touched.
//!
//! Per shard (raft-engine "region" = shard id): the entries, the hard state under `hs`, and
//! `meta` (the compaction point's index and term), sealed with our own checksum.

use crate::record::{open, seal, seal_encoded, RecordError};
use protobuf::Message as _;
use raft_engine::{Command, Config, Engine, LogBatch, MessageExt, ReadableSize, RecoveryMode};
use settle_cluster::ids::ShardId;
use settle_cluster::raft::eraftpb::{Entry, HardState};
use settle_cluster::recovery::DurableShard;
use settle_cluster::replica::ShardWrite;
use std::collections::BTreeMap;
use std::path::Path;

const HARD_STATE_KEY: &[u8] = b"hs";
const META_KEY: &[u8] = b"meta";

#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error("log store: {0}")]
    Engine(#[from] raft_engine::Error),
    #[error("log store shard {shard}: {source}")]
    Record { shard: ShardId, source: RecordError },
    #[error("log store shard {shard}: undecodable record: {detail}")]
    Decode { shard: ShardId, detail: String },
}

struct RaftEntries;

impl MessageExt for RaftEntries {
    type Entry = Entry;
    fn index(entry: &Entry) -> u64 {
        entry.index
    }
}

/// The compaction point of a shard's log.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
struct Meta {
    compacted_index: u64,
    compacted_term: u64,
}

pub struct LogStore {
    engine: Engine,
    writes_since_purge: u64,
}

/// Write batches between attempts to delete log files that compaction emptied.
const PURGE_EVERY_WRITES: u64 = 2_000;

fn region(shard: ShardId) -> u64 {
    u64::from(shard)
}

impl LogStore {
    pub fn open(path: &Path) -> Result<LogStore, LogStoreError> {
        let config = Config {
            dir: path.display().to_string(),
            // A torn last write (a crash mid-append) is cut off; damage anywhere else stops the
            // node at start rather than serving a damaged log.
            recovery_mode: RecoveryMode::TolerateTailCorruption,
            // Entries are small and CPU is the scarce resource on this box: no LZ4.
            batch_compression_threshold: ReadableSize(0),
            target_file_size: ReadableSize::mb(64),
            purge_threshold: ReadableSize::gb(2),
            enable_log_recycle: false,
            ..Config::default()
        };
        let engine = Engine::open(config)?;
        Ok(LogStore { engine, writes_since_purge: 0 })
    }

    /// Reads every shard's durable log (checkpoints come from the state store).
    pub fn load(&self) -> Result<BTreeMap<ShardId, DurableShard>, LogStoreError> {
        let mut shards = BTreeMap::new();
        for region in self.engine.raft_groups() {
            let shard = ShardId::try_from(region).map_err(|_| LogStoreError::Decode { shard: 0, detail: format!("region {region}") })?;
            let mut durable = DurableShard::default();
            if let Some(bytes) = self.engine.get(region, HARD_STATE_KEY) {
                let payload = open(&bytes).map_err(|source| LogStoreError::Record { shard, source })?;
                durable.hard_state =
                    HardState::parse_from_bytes(payload).map_err(|error| LogStoreError::Decode { shard, detail: error.to_string() })?;
            }
            if let Some(bytes) = self.engine.get(region, META_KEY) {
                let payload = open(&bytes).map_err(|source| LogStoreError::Record { shard, source })?;
                let meta: Meta =
                    crate::record::decode_payload(payload).map_err(|error| LogStoreError::Decode { shard, detail: error.to_string() })?;
                durable.compacted_index = meta.compacted_index;
                durable.compacted_term = meta.compacted_term;
            }
            if let (Some(first), Some(last)) = (self.engine.first_index(region), self.engine.last_index(region)) {
                let mut entries = Vec::new();
                self.engine.fetch_entries_to::<RaftEntries>(region, first, last + 1, None, &mut entries)?;
                durable.entries = entries.into_iter().filter(|entry| entry.index > durable.compacted_index).collect();
            }
            if !durable.is_empty() {
                shards.insert(shard, durable);
            }
        }
        Ok(shards)
    }

    /// Makes the writes of one or more rounds durable in one batch and one sync.
    pub fn write(&mut self, writes: &[&ShardWrite]) -> Result<(), LogStoreError> {
        let mut batch = LogBatch::default();
        for write in writes {
            let region = region(write.shard);
            if write.clean {
                // The node's replica of this shard was removed (or a new one starts).
                batch.add_command(region, Command::Clean);
            }
            if let Some(snapshot) = &write.snapshot {
                // The snapshot replaces the whole log: drop everything of this shard first.
                batch.add_command(region, Command::Clean);
                let point = Meta { compacted_index: snapshot.get_metadata().index, compacted_term: snapshot.get_metadata().term };
                batch.put(region, META_KEY.to_vec(), seal_encoded(&point))?;
            }
            if !write.entries.is_empty() {
                // raft-engine replaces any stored tail from the first appended index on.
                batch.add_entries::<RaftEntries>(region, &write.entries)?;
            }
            if let Some(hard_state) = &write.hard_state {
                batch.put(region, HARD_STATE_KEY.to_vec(), seal(&hard_state.write_to_bytes().expect("in-memory encoding")))?;
            }
            if let Some((index, term)) = write.compact_to {
                let point = Meta { compacted_index: index, compacted_term: term };
                batch.put(region, META_KEY.to_vec(), seal_encoded(&point))?;
                batch.add_command(region, Command::Compact { index: index + 1 });
            }
        }
        if !batch.is_empty() {
            self.engine.write(&mut batch, true)?;
        }
        self.writes_since_purge += 1;
        if self.writes_since_purge >= PURGE_EVERY_WRITES {
            self.writes_since_purge = 0;
            // Deleting emptied files is housekeeping: a failure here loses nothing.
            if let Err(error) = self.engine.purge_expired_files() {
                tracing::warn!(%error, "log purge failed");
            }
        }
        Ok(())
    }
}
