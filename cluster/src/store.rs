//! The ledger's state on disk, as the core sees it: one ordered key-value store per node, shared
//! by its shards (every key starts with the shard), written in atomic batches that carry each
//! shard's applied index, and made durable by `persist` — which the runtime runs off the driver
//! thread. Reads see every write made so far, durable or not.
//!
//! Two implementations: `actors::state_store` on fjall (production) and `MemStore` here (tests
//! and the simulator), which keeps written and durable data apart: `crash` drops what no
//! `persist` covered, exactly what a process crash (or a power loss, for the fsynced journal)
//! loses in production.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Keys and values are bytes; the ledger defines their layout (`ledger/keys.rs`).
pub type Key = Vec<u8>;
pub type Value = Vec<u8>;

/// Writes applied together: every put and delete of a batch becomes visible (and later durable)
/// at once or not at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    pub puts: Vec<(Key, Option<Value>)>,
}

impl WriteBatch {
    pub fn put(&mut self, key: Key, value: Value) {
        self.puts.push((key, Some(value)));
    }

    pub fn delete(&mut self, key: Key) {
        self.puts.push((key, None));
    }

    pub fn is_empty(&self) -> bool {
        self.puts.is_empty()
    }

    /// Bytes of keys and values, for metrics and limits.
    pub fn bytes(&self) -> usize {
        self.puts.iter().map(|(key, value)| key.len() + value.as_ref().map_or(0, Vec::len)).sum()
    }
}

/// A consistent read view of the store at one moment (a snapshot): later writes are invisible.
pub trait ReadView: Send {
    /// Up to `limit` entries with keys in `[start, end)`, ascending, and at most about `bytes_max`
    /// bytes (at least one entry when there is one).
    fn scan(&self, start: &[u8], end: &[u8], limit: usize, bytes_max: usize) -> Vec<(Key, Value)>;
}

/// The node's state store.
pub trait KvStore: Send + Sync {
    fn get(&self, key: &[u8]) -> Option<Value>;

    /// Up to `limit` entries with keys in `[start, end)`, ascending or (`reverse`) descending.
    fn scan(&self, start: &[u8], end: &[u8], limit: usize, reverse: bool) -> Vec<(Key, Value)>;

    /// Applies a batch atomically. Not durable until a later `persist` returns.
    fn write(&self, batch: WriteBatch) -> Result<(), StoreError>;

    /// Makes every earlier write durable (fsync). Called by the runtime's IO actor.
    fn persist(&self) -> Result<(), StoreError>;

    /// A consistent view of everything written so far (for snapshots sent to followers).
    fn read_view(&self) -> Box<dyn ReadView>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state store: {0}")]
pub struct StoreError(pub String);

/// Everything after `prefix` in key order: the end of the prefix's range (exclusive).
pub fn prefix_end(prefix: &[u8]) -> Key {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    // A prefix of only 0xFF bytes: nothing sorts after it but longer keys; none are used.
    vec![u8::MAX; prefix.len() + 1]
}

/// An in-memory store with the crash semantics of a real one: writes are visible at once and
/// durable only once a `persist` covers them. For tests and the simulator.
#[derive(Clone, Default)]
pub struct MemStore {
    inner: Arc<Mutex<MemInner>>,
}

#[derive(Default)]
struct MemInner {
    /// What a crash keeps.
    durable: BTreeMap<Key, Value>,
    /// Everything written (durable or not): what reads see.
    current: BTreeMap<Key, Value>,
    /// Batches written since the last persist, in order, with their sequence numbers (replayed
    /// onto `durable` by `persist`).
    unpersisted: Vec<(u64, WriteBatch)>,
    /// The sequence number of the last batch written.
    written_seq: u64,
    /// Test-only: the next persist fails.
    fail_next_persist: bool,
}

fn apply(map: &mut BTreeMap<Key, Value>, batch: &WriteBatch) {
    for (key, value) in &batch.puts {
        match value {
            Some(value) => {
                map.insert(key.clone(), value.clone());
            }
            None => {
                map.remove(key);
            }
        }
    }
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemInner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A crash (process or power): everything not covered by a persist is gone.
    pub fn crash(&self) {
        let mut inner = self.lock();
        inner.unpersisted.clear();
        inner.current = inner.durable.clone();
    }

    /// A process crash (not a power loss): the batches written up to `seq` had reached the
    /// operating system and survive, later ones are gone (a torn last batch fails its checksum
    /// and is dropped, as the real journal does).
    pub fn crash_keeping(&self, seq: u64) {
        self.persist_until(seq);
        self.crash();
    }

    /// The sequence number of the last batch a crash keeps.
    pub fn persisted_seq(&self) -> u64 {
        let inner = self.lock();
        inner.unpersisted.first().map_or(inner.written_seq, |(seq, _)| seq - 1)
    }

    /// A durable value (what a crash keeps under `key`).
    pub fn durable_get(&self, key: &[u8]) -> Option<Value> {
        self.lock().durable.get(key).cloned()
    }

    /// The sequence number of the last batch written (a persist asked for now covers up to it).
    pub fn written_seq(&self) -> u64 {
        self.lock().written_seq
    }

    /// Makes the batches written up to `seq` durable (the simulator's IO completes a persist
    /// asked for when `seq` was the last batch written).
    pub fn persist_until(&self, seq: u64) {
        let mut inner = self.lock();
        let count = inner.unpersisted.iter().take_while(|(batch_seq, _)| *batch_seq <= seq).count();
        let done: Vec<(u64, WriteBatch)> = inner.unpersisted.drain(..count).collect();
        for (_, batch) in &done {
            apply(&mut inner.durable, batch);
        }
    }

    /// The next persist fails (a disk error).
    pub fn fail_next_persist(&self) {
        self.lock().fail_next_persist = true;
    }

    /// Every durable entry, for the simulator's checks of durable state.
    pub fn durable_entries(&self) -> BTreeMap<Key, Value> {
        self.lock().durable.clone()
    }

    /// Flips one bit in a durable value whose key starts with `prefix` (a damaged record).
    pub fn corrupt_durable(&self, prefix: &[u8], pick: usize) -> bool {
        let mut inner = self.lock();
        let keys: Vec<Key> = inner.durable.range(prefix.to_vec()..prefix_end(prefix)).map(|(key, _)| key.clone()).collect();
        if keys.is_empty() {
            return false;
        }
        let key = keys[pick % keys.len()].clone();
        if let Some(value) = inner.durable.get_mut(&key) {
            if let Some(first) = value.first_mut() {
                *first ^= 0x01;
            } else {
                value.push(0x01);
            }
        }
        let damaged = inner.durable[&key].clone();
        inner.current.insert(key, damaged);
        true
    }
}

struct MemView {
    entries: BTreeMap<Key, Value>,
}

impl ReadView for MemView {
    fn scan(&self, start: &[u8], end: &[u8], limit: usize, bytes_max: usize) -> Vec<(Key, Value)> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for (key, value) in self.entries.range(start.to_vec()..end.to_vec()) {
            if out.len() >= limit || (!out.is_empty() && bytes + key.len() + value.len() > bytes_max) {
                break;
            }
            bytes += key.len() + value.len();
            out.push((key.clone(), value.clone()));
        }
        out
    }
}

impl KvStore for MemStore {
    fn get(&self, key: &[u8]) -> Option<Value> {
        self.lock().current.get(key).cloned()
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize, reverse: bool) -> Vec<(Key, Value)> {
        if start >= end {
            return Vec::new();
        }
        let inner = self.lock();
        let range = inner.current.range(start.to_vec()..end.to_vec());
        let entries: Box<dyn Iterator<Item = (&Key, &Value)>> = if reverse { Box::new(range.rev()) } else { Box::new(range) };
        entries.take(limit).map(|(key, value)| (key.clone(), value.clone())).collect()
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut inner = self.lock();
        apply(&mut inner.current, &batch);
        inner.written_seq += 1;
        let seq = inner.written_seq;
        inner.unpersisted.push((seq, batch));
        Ok(())
    }

    fn persist(&self) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.fail_next_persist {
            inner.fail_next_persist = false;
            return Err(StoreError("persist failed (injected)".to_string()));
        }
        let done = std::mem::take(&mut inner.unpersisted);
        for (_, batch) in &done {
            apply(&mut inner.durable, batch);
        }
        Ok(())
    }

    fn read_view(&self) -> Box<dyn ReadView> {
        Box::new(MemView { entries: self.lock().current.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(puts: &[(&str, Option<&str>)]) -> WriteBatch {
        WriteBatch { puts: puts.iter().map(|(key, value)| (key.as_bytes().to_vec(), value.map(|v| v.as_bytes().to_vec()))).collect() }
    }

    /// Reads see every write; a crash keeps exactly what a persist covered.
    #[test]
    fn a_crash_keeps_what_was_persisted() {
        let store = MemStore::new();
        store.write(batch(&[("a", Some("1")), ("b", Some("2"))])).unwrap();
        store.persist().unwrap();
        store.write(batch(&[("a", None), ("c", Some("3"))])).unwrap();
        assert_eq!(store.get(b"a"), None);
        assert_eq!(store.get(b"c"), Some(b"3".to_vec()));
        store.crash();
        assert_eq!(store.get(b"a"), Some(b"1".to_vec()));
        assert_eq!(store.get(b"c"), None);
        assert_eq!(store.scan(b"a", b"z", 10, false).len(), 2);
    }

    /// A partial persist covers only the batches written before it was asked for.
    #[test]
    fn a_partial_persist_covers_the_first_batches() {
        let store = MemStore::new();
        store.write(batch(&[("a", Some("1"))])).unwrap();
        let asked_at = store.written_seq();
        store.write(batch(&[("b", Some("2"))])).unwrap();
        store.persist_until(asked_at);
        store.crash();
        assert_eq!(store.get(b"a"), Some(b"1".to_vec()));
        assert_eq!(store.get(b"b"), None);
    }

    /// Scans go in either direction within the range and stop at the limit; a read view does
    /// not see later writes.
    #[test]
    fn scans_and_views() {
        let store = MemStore::new();
        store.write(batch(&[("k1", Some("a")), ("k2", Some("b")), ("k3", Some("c")), ("l1", Some("d"))])).unwrap();
        let keys = |entries: Vec<(Key, Value)>| entries.into_iter().map(|(key, _)| String::from_utf8(key).unwrap()).collect::<Vec<_>>();
        assert_eq!(keys(store.scan(b"k", &prefix_end(b"k"), 2, false)), vec!["k1", "k2"]);
        assert_eq!(keys(store.scan(b"k", &prefix_end(b"k"), 10, true)), vec!["k3", "k2", "k1"]);
        let view = store.read_view();
        store.write(batch(&[("k4", Some("e"))])).unwrap();
        assert_eq!(keys(view.scan(b"k", &prefix_end(b"k"), 10, usize::MAX)), vec!["k1", "k2", "k3"]);
        assert_eq!(view.scan(b"k", &prefix_end(b"k"), 10, 1).len(), 1, "at least one entry even over the byte cap");
        assert_eq!(prefix_end(b"k\xff"), b"l".to_vec());
    }
}
