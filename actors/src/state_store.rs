//! The state store on disk: RocksDB (as TiKV uses it), linked from the system's `librocksdb`
//! (Debian's `librocksdb-dev`, `.cargo/config.toml`), one column family holding every shard's
//! records (`cluster::ledger::keys` has the layout), the production implementation of
//! `cluster::store::KvStore`. Why RocksDB, with universal compaction: measured against fjall,
//! redb and sled with Settle's write pattern and over an hour of load (ARCHITECTURE.md,
//! BENCHMARKS.md).
//!
//! Writes from the driver actor go into RocksDB's memtable and its write-ahead log's buffer (the
//! WAL is flushed manually: `manual_wal_flush`), so a write costs no syscall; `persist` (the IO
//! actor, at every state checkpoint) writes the WAL buffer out and fsyncs it (and the directory
//! for new WAL files): everything written before it is then durable, also against power loss.
//! The Raft log is compacted only behind what a persist covered, so a crash loses nothing the
//! log cannot replay. RocksDB checksums its WAL records and table blocks and refuses damaged ones;
//! a torn WAL tail is recovered to the last whole record (`PointInTime`).

use settle_cluster::store::{Key, KvStore, ReadView, StoreError, Value, WriteBatch};
use std::path::Path;
use std::sync::Arc;

type Db = rocksdb::DB;

pub struct StateStore {
    db: Arc<Db>,
    /// Kept for `engine_stats`: RocksDB's statistics object lives in the options it opened with.
    options: rocksdb::Options,
    path: std::path::PathBuf,
}

/// Bytes of RocksDB's block cache, which also holds the tables' index and filter blocks (so the
/// node's memory does not grow with the data on disk). The accounts' own cache is the ledger's
/// (`cache_mb`).
const BLOCK_CACHE_BYTES: usize = 128 << 20;
/// One memtable; up to `MEMTABLES_MAX` of them (the active one and those being flushed).
const MEMTABLE_BYTES: usize = 64 << 20;
const MEMTABLES_MAX: i32 = 4;

fn error(error: impl std::fmt::Display) -> StoreError {
    StoreError(error.to_string())
}

fn options() -> Result<rocksdb::Options, StoreError> {
    let mut options = rocksdb::Options::default();
    options.create_if_missing(true);
    options.set_manual_wal_flush(true);
    options.set_wal_recovery_mode(rocksdb::DBRecoveryMode::PointInTime);
    options.set_paranoid_checks(true);
    // Universal (tiered) compaction: every transfer adds records keyed by random transfer ids or
    // spread over every account, so leveled compaction (fjall's, the previous engine) rewrote each
    // byte once per level and took a growing share of the machine as the data grew (the
    // session-11 soak: throughput 0.37x after an hour). Tiered merges sorted runs of similar
    // size, writing each byte about log(runs) times.
    options.set_compaction_style(rocksdb::DBCompactionStyle::Universal);
    let mut universal = rocksdb::UniversalCompactOptions::default();
    universal.set_size_ratio(1);
    universal.set_min_merge_width(2);
    universal.set_max_size_amplification_percent(200);
    options.set_universal_compaction_options(&universal);
    options.set_level_zero_file_num_compaction_trigger(4);
    options.set_level_zero_slowdown_writes_trigger(24);
    options.set_level_zero_stop_writes_trigger(40);
    options.set_write_buffer_size(MEMTABLE_BYTES);
    options.set_max_write_buffer_number(MEMTABLES_MAX);
    options.set_max_background_jobs(4);
    options.set_bytes_per_sync(1 << 20);
    // A bloom filter over each memtable's keys: the lookup of every new transfer id (a miss)
    // skips the memtables' skiplists.
    options.set_memtable_whole_key_filtering(true);
    options.set_memtable_prefix_bloom_ratio(0.02);
    options.set_compression_type(rocksdb::DBCompressionType::Lz4);
    let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES).map_err(error)?;
    let mut tables = rocksdb::BlockBasedOptions::default();
    tables.set_block_cache(&cache);
    tables.set_block_size(16 << 10);
    // Every new transfer id is first looked up (a miss): bloom filters answer it without reading
    // data blocks. Filters and indexes are partitioned and live in the block cache, so memory
    // stays bounded however much is stored.
    tables.set_bloom_filter(10.0, false);
    tables.set_cache_index_and_filter_blocks(true);
    tables.set_pin_l0_filter_and_index_blocks_in_cache(true);
    tables.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
    tables.set_partition_filters(true);
    tables.set_pin_top_level_index_and_filter(true);
    tables.set_format_version(5);
    options.set_block_based_table_factory(&tables);
    options.enable_statistics();
    Ok(options)
}

impl StateStore {
    pub fn open(path: &Path) -> Result<StateStore, StoreError> {
        let options = options()?;
        let db = Db::open(&options, path).map_err(error)?;
        Ok(StateStore { db: Arc::new(db), options, path: path.to_path_buf() })
    }

    fn property(&self, name: &str) -> u64 {
        self.db.property_int_value(name).ok().flatten().unwrap_or(0)
    }

    /// Bytes of write-ahead log on disk.
    fn wal_bytes(&self) -> u64 {
        let Ok(entries) = std::fs::read_dir(&self.path) else { return 0 };
        entries
            .filter_map(Result::ok)
            .filter(|entry| entry.path().extension().is_some_and(|extension| extension == "log"))
            .filter_map(|entry| entry.metadata().ok())
            .map(|metadata| metadata.len())
            .sum()
    }

    /// What the engine's background work looks like now (for `/metrics`). Memtable bytes that
    /// only grow mean flushes have stopped: the node's memory follows them.
    pub fn engine_stats(&self) -> EngineStats {
        let (compactions, compaction_micros) =
            self.options.get_statistics().map_or((0, 0), |statistics| histogram_count_sum(&statistics, "rocksdb.compaction.times.micros"));
        EngineStats {
            memtable_bytes: self.property("rocksdb.cur-size-all-mem-tables"),
            flushes_queued: usize::try_from(self.property("rocksdb.num-immutable-mem-table")).unwrap_or(usize::MAX),
            journal_bytes: self.wal_bytes(),
            compactions: usize::try_from(compactions).unwrap_or(usize::MAX),
            compaction_seconds: compaction_micros as f64 / 1e6,
        }
    }
}

/// `COUNT` and `SUM` of one histogram in RocksDB's statistics dump (lines such as
/// `rocksdb.compaction.times.micros P50 : 1.0 ... COUNT : 7 SUM : 1234`).
fn histogram_count_sum(statistics: &str, name: &str) -> (u64, u64) {
    let Some(line) = statistics.lines().find(|line| line.split_whitespace().next() == Some(name)) else { return (0, 0) };
    let field = |label: &str| {
        let mut words = line.split_whitespace();
        while let Some(word) = words.next() {
            if word == label && words.next() == Some(":") {
                return words.next().and_then(|value| value.parse::<u64>().ok()).unwrap_or(0);
            }
        }
        0
    };
    (field("COUNT"), field("SUM"))
}

/// A sample of the engine's state (`StateStore::engine_stats`).
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineStats {
    /// Bytes in memtables: the active one and those sealed and waiting for a flush.
    pub memtable_bytes: u64,
    /// Sealed memtables waiting for a flush.
    pub flushes_queued: usize,
    /// Write-ahead log bytes on disk (replayed at the next start for what no flush covered).
    pub journal_bytes: u64,
    /// Compactions finished since the node started, and the time they took.
    pub compactions: usize,
    pub compaction_seconds: f64,
}

/// Reads `[start, end)` through a raw iterator bounded to that range, ascending or descending,
/// while `more` accepts what was read so far. A damaged block: the engine refuses it and the node
/// stops (crash-only) rather than serve a partial answer.
fn read_range<D: rocksdb::DBAccess>(
    mut iterator: rocksdb::DBRawIteratorWithThreadMode<'_, D>,
    reverse: bool,
    mut more: impl FnMut(&[(Key, Value)]) -> bool,
) -> Vec<(Key, Value)> {
    let mut out = Vec::new();
    if reverse {
        iterator.seek_to_last();
    } else {
        iterator.seek_to_first();
    }
    while iterator.valid() && more(&out) {
        if let (Some(key), Some(value)) = (iterator.key(), iterator.value()) {
            out.push((key.to_vec(), value.to_vec()));
        }
        if reverse {
            iterator.prev();
        } else {
            iterator.next();
        }
    }
    if let Err(failure) = iterator.status() {
        panic!("state store read failed: {failure}");
    }
    out
}

fn bounded(start: &[u8], end: &[u8]) -> rocksdb::ReadOptions {
    let mut options = rocksdb::ReadOptions::default();
    options.set_iterate_lower_bound(start.to_vec());
    options.set_iterate_upper_bound(end.to_vec());
    options
}

impl KvStore for StateStore {
    fn get(&self, key: &[u8]) -> Option<Value> {
        match self.db.get(key) {
            Ok(value) => value,
            Err(failure) => panic!("state store read failed: {failure}"),
        }
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize, reverse: bool) -> Vec<(Key, Value)> {
        if start >= end || limit == 0 {
            return Vec::new();
        }
        read_range(self.db.raw_iterator_opt(bounded(start, end)), reverse, |out| out.len() < limit)
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut writes = rocksdb::WriteBatch::default();
        for (key, value) in batch.puts {
            match value {
                Some(value) => writes.put(key, value),
                None => writes.delete(key),
            }
        }
        self.db.write(writes).map_err(error)
    }

    /// Writes the WAL's buffer out and fsyncs the WAL (RocksDB also syncs the directory when a
    /// new WAL file was created since). Writers are not held while the fsync runs.
    fn persist(&self) -> Result<(), StoreError> {
        self.db.flush_wal(true).map_err(error)
    }

    fn read_view(&self) -> Box<dyn ReadView> {
        Box::new(View::new(Arc::clone(&self.db), |db| db.snapshot()))
    }
}

self_cell::self_cell!(
    /// A consistent view (a RocksDB snapshot, which keeps the database it reads alive): later
    /// writes are invisible to it.
    struct View {
        owner: Arc<Db>,
        #[covariant]
        dependent: Snapshot,
    }
);

type Snapshot<'a> = rocksdb::SnapshotWithThreadMode<'a, Db>;

impl ReadView for View {
    fn scan(&self, start: &[u8], end: &[u8], limit: usize, bytes_max: usize) -> Vec<(Key, Value)> {
        if start >= end || limit == 0 {
            return Vec::new();
        }
        let iterator = self.borrow_dependent().raw_iterator_opt(bounded(start, end));
        let mut bytes = 0;
        read_range(iterator, false, |out| {
            if let Some((key, value)) = out.last() {
                bytes += key.len() + value.len();
            }
            out.len() < limit && (out.is_empty() || bytes < bytes_max)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(puts: &[(&str, Option<&str>)]) -> WriteBatch {
        WriteBatch { puts: puts.iter().map(|(key, value)| (key.as_bytes().to_vec(), value.map(|v| v.as_bytes().to_vec()))).collect() }
    }

    /// What was written and persisted reads back after reopening; scans go both ways; a view
    /// does not see later writes.
    #[test]
    fn persisted_writes_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = StateStore::open(dir.path()).unwrap();
            store.write(batch(&[("k1", Some("a")), ("k2", Some("b")), ("k3", Some("c"))])).unwrap();
            store.write(batch(&[("k2", None)])).unwrap();
            let view = store.read_view();
            store.write(batch(&[("k4", Some("d"))])).unwrap();
            assert_eq!(view.scan(b"k", b"l", 10, usize::MAX).len(), 2, "the view does not see k4");
            store.persist().unwrap();
        }
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.get(b"k1"), Some(b"a".to_vec()));
        assert_eq!(store.get(b"k2"), None);
        let keys: Vec<Key> = store.scan(b"k", b"l", 10, true).into_iter().map(|(key, _)| key).collect();
        assert_eq!(keys, vec![b"k4".to_vec(), b"k3".to_vec(), b"k1".to_vec()]);
    }

    /// The engine's gauges follow writes: memtable bytes grow by what was written and not yet
    /// flushed, and the journal holds it once persisted.
    #[test]
    fn engine_stats_count_unflushed_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let before = store.engine_stats();
        let value = "v".repeat(100_000);
        store.write(batch(&[("k1", Some(value.as_str()))])).unwrap();
        store.persist().unwrap();
        let after = store.engine_stats();
        assert!(after.memtable_bytes >= before.memtable_bytes + 100_000, "{before:?} then {after:?}");
        assert!(after.journal_bytes >= 100_000, "{after:?}");
        assert_eq!(after.flushes_queued, 0, "nothing sealed yet: {after:?}");
    }
}
