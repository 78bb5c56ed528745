//! The state store on disk: fjall (an LSM tree in pure Rust), one keyspace `ledger` holding every
//! shard's records (`cluster::ledger::keys` has the layout), the production implementation of
//! `cluster::store::KvStore`. Why fjall: measured against redb, sled and RocksDB with Settle's
//! write pattern (ARCHITECTURE.md, BENCHMARKS.md).
//!
//! Writes from the driver actor go into fjall's memtable and journal buffer (the journal is
//! persisted manually: `manual_journal_persist`), so a write costs no syscall; `persist` (the IO
//! actor, at every state checkpoint) writes the journal buffer out and fsyncs the journal files:
//! everything written before it is then durable, also against power loss. The Raft log is
//! compacted only behind what a persist covered, so a crash loses nothing the log cannot replay. fjall checksums its journal and
//! blocks and refuses damaged ones.

use settle_cluster::store::{Key, KvStore, ReadView, StoreError, Value, WriteBatch};
use std::path::Path;

pub struct StateStore {
    database: fjall::Database,
    ledger: fjall::Keyspace,
    path: std::path::PathBuf,
    /// The store's directory, held open to sync new journals' entries (`persist`).
    directory: std::fs::File,
}

/// Bytes of fjall's block cache (the accounts' own cache is the ledger's, `cache_mb`).
const BLOCK_CACHE_BYTES: u64 = 64 << 20;

fn error(error: impl std::fmt::Display) -> StoreError {
    StoreError(error.to_string())
}

impl StateStore {
    pub fn open(path: &Path) -> Result<StateStore, StoreError> {
        let database = fjall::Database::builder(path)
            .manual_journal_persist(true)
            .cache_size(BLOCK_CACHE_BYTES)
            // Three workers. fjall 3.1's worker 0 never compacts: it hands every compaction
            // request back to the queue until another worker is free to take it, a busy loop
            // while every other worker compacts (with two workers that is most of the time under
            // load: ~15% of the machine). A second compacting worker takes those requests, so
            // the loop ends quickly. One worker deadlocks: while it compacts, writers fill its
            // queue (1,000) with rotation requests, and rotating then blocks sending a flush
            // request into that full queue, which only it drains — memtables then grow without
            // bound (the session-11 soak: 8 GB RSS in 17 minutes). BENCHMARKS.md, session 11.
            .worker_threads(3)
            .open()
            .map_err(error)?;
        let ledger = database.keyspace("ledger", fjall::KeyspaceCreateOptions::default).map_err(error)?;
        let directory = std::fs::File::open(path).map_err(error)?;
        Ok(StateStore { database, ledger, path: path.to_path_buf(), directory })
    }

    /// Bytes the store holds on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.database.disk_space().unwrap_or(0)
    }

    /// What the engine's background work looks like now (for `/metrics`). Memtable bytes that
    /// only grow mean flushes have stopped: the node's memory follows them.
    pub fn engine_stats(&self) -> EngineStats {
        EngineStats {
            memtable_bytes: self.database.write_buffer_size(),
            flushes_queued: self.database.outstanding_flushes(),
            journal_bytes: self.database.journal_disk_space().unwrap_or(0),
            compactions: self.database.compactions_completed(),
            compaction_seconds: self.database.time_compacting().as_secs_f64(),
        }
    }
}

/// A sample of the engine's state (`StateStore::engine_stats`).
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineStats {
    /// Bytes in memtables: the active one and those sealed and waiting for a flush.
    pub memtable_bytes: u64,
    /// Sealed memtables queued for a flush.
    pub flushes_queued: usize,
    /// Journal bytes on disk (replayed at the next start for what no flush covered).
    pub journal_bytes: u64,
    /// Compactions finished since the node started, and the time they took.
    pub compactions: usize,
    pub compaction_seconds: f64,
}

fn collect(iter: impl Iterator<Item = fjall::Guard>, limit: usize) -> Vec<(Key, Value)> {
    let mut out = Vec::new();
    for guard in iter.take(limit) {
        match guard.into_inner() {
            Ok((key, value)) => out.push((key.to_vec(), value.to_vec())),
            // A damaged block: the engine refuses it; the node stops (crash-only) rather than
            // serve a partial answer.
            Err(failure) => panic!("state store read failed: {failure}"),
        }
    }
    out
}

impl KvStore for StateStore {
    fn get(&self, key: &[u8]) -> Option<Value> {
        match self.ledger.get(key) {
            Ok(value) => value.map(|value| value.to_vec()),
            Err(failure) => panic!("state store read failed: {failure}"),
        }
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize, reverse: bool) -> Vec<(Key, Value)> {
        if start >= end {
            return Vec::new();
        }
        let range = self.ledger.range(start..end);
        if reverse {
            collect(range.rev(), limit)
        } else {
            collect(range, limit)
        }
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut writes = self.database.batch();
        for (key, value) in batch.puts {
            match value {
                Some(value) => writes.insert(&self.ledger, key, value),
                None => writes.remove(&self.ledger, key),
            }
        }
        writes.commit().map_err(error)
    }

    /// Hands the journal's buffer to the OS under fjall's journal lock (one write, quick), then
    /// fsyncs the journal files through descriptors of our own, without that lock, and the
    /// directory (new journals' entries). fjall's own `SyncAll` fsyncs while holding the lock
    /// every writer needs, which stalled the driver for as long as each fsync took.
    fn persist(&self) -> Result<(), StoreError> {
        self.database.persist(fjall::PersistMode::Buffer).map_err(error)?;
        for entry in std::fs::read_dir(&self.path).map_err(error)? {
            let path = entry.map_err(error)?.path();
            if path.extension().is_none_or(|extension| extension != "jnl") {
                continue;
            }
            match std::fs::File::open(&path) {
                Ok(journal) => journal.sync_data().map_err(error)?,
                // Retired since the listing: its contents are in tables fjall synced itself.
                Err(failure) if failure.kind() == std::io::ErrorKind::NotFound => {}
                Err(failure) => return Err(error(failure)),
            }
        }
        self.directory.sync_all().map_err(error)
    }

    fn read_view(&self) -> Box<dyn ReadView> {
        Box::new(View { snapshot: self.database.snapshot(), ledger: self.ledger.clone() })
    }
}

/// A consistent view (fjall's MVCC snapshot): later writes are invisible to it.
struct View {
    snapshot: fjall::Snapshot,
    ledger: fjall::Keyspace,
}

impl ReadView for View {
    fn scan(&self, start: &[u8], end: &[u8], limit: usize, bytes_max: usize) -> Vec<(Key, Value)> {
        use fjall::Readable;
        let mut out = Vec::new();
        let mut bytes = 0;
        for guard in self.snapshot.range(&self.ledger, start..end) {
            if out.len() >= limit || (!out.is_empty() && bytes >= bytes_max) {
                break;
            }
            match guard.into_inner() {
                Ok((key, value)) => {
                    bytes += key.len() + value.len();
                    out.push((key.to_vec(), value.to_vec()));
                }
                Err(failure) => panic!("state store read failed: {failure}"),
            }
        }
        out
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
