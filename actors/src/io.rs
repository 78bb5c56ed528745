//! The IO actor: drains the persist rounds and state persists queued by the driver, makes them
//! durable as one group (the state store's fsync first when the group needs it, then every
//! round's log writes in one raft-engine batch, one sync), and reports what is durable. Rounds
//! complete in order. Deleting ranges of the state store no generation uses any more runs on a
//! thread of its own, off both the driver and this actor.

use crate::log_store::{LogStore, LogStoreError};
use crate::state_store::StateStore;
use settle_cluster::ids::{NodeId, ShardId};
use settle_cluster::placement::Placement;
use settle_cluster::recovery::{recover_node, RecoveredNode, RecoveryError};
use settle_cluster::store::{Key, KvStore, StoreError, WriteBatch};
use settle_cluster::PersistRound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Jobs taken in one IO round at most (a bound on one transaction's size).
pub const IO_ROUND_JOBS_MAX: usize = 1_024;

/// Keys deleted per batch when a range is cleared.
const DELETE_BATCH_KEYS: usize = 4_096;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    Log(#[from] LogStoreError),
    #[error(transparent)]
    State(#[from] StoreError),
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
    #[error("data dir: {0}")]
    Io(#[from] std::io::Error),
}

pub enum IoJob {
    Persist(PersistRound),
    /// Make the state store durable; every shard's state at its mark is then durable.
    PersistState {
        marks: Vec<(ShardId, u64)>,
    },
    /// Clear a range of the state store (in the background).
    DeleteRange {
        start: Key,
        end: Key,
    },
}

pub enum IoDone {
    Persisted { round: u64 },
    StatePersisted { marks: Vec<(ShardId, u64)> },
}

/// What the IO thread measures (Prometheus histograms are lock-free; the node registers them).
pub struct IoStats {
    pub rounds: AtomicU64,
    pub syncs: AtomicU64,
    pub entries: AtomicU64,
    /// Write + sync of one IO group, in seconds.
    pub sync_seconds: prometheus::Histogram,
    /// Raft entries and shards one IO group carried.
    pub group_entries: prometheus::Histogram,
    pub group_shards: prometheus::Histogram,
    /// Fault injection: extra delay before every sync (slow-disk drills).
    pub sync_delay_ms: AtomicU64,
}

impl Default for IoStats {
    fn default() -> Self {
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            prometheus::Histogram::with_opts(prometheus::HistogramOpts::new(name, help).buckets(buckets)).expect("valid histogram")
        };
        IoStats {
            rounds: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            entries: AtomicU64::new(0),
            sync_seconds: histogram(
                "io_sync_seconds",
                "Write and sync of one IO group (every shard's rounds), seconds",
                vec![0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0],
            ),
            group_entries: histogram(
                "io_group_entries",
                "Raft entries made durable by one IO group",
                prometheus::exponential_buckets(1.0, 4.0, 9).expect("buckets"),
            ),
            group_shards: histogram(
                "io_group_shards",
                "Shards whose writes one IO group carried",
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
            ),
            sync_delay_ms: AtomicU64::new(0),
        }
    }
}

/// Both stores of one node.
pub struct Storage {
    log: LogStore,
    state: Arc<StateStore>,
}

impl Storage {
    pub fn open(data_dir: &Path) -> Result<Storage, StorageError> {
        std::fs::create_dir_all(data_dir)?;
        let log = LogStore::open(&data_dir.join("raft-log"))?;
        let state = Arc::new(StateStore::open(&data_dir.join("state"))?);
        Ok(Storage { log, state })
    }

    /// The state store, shared with the core (which reads and writes it on the driver thread).
    pub fn state(&self) -> Arc<StateStore> {
        self.state.clone()
    }

    /// Rebuilds every shard replica's starting state from both stores; replicas with corrupt
    /// records come back in the second map (quarantined, with the reason).
    pub fn recover(&self, placement: &Placement, node: NodeId, cache_bytes_per_shard: usize) -> Result<RecoveredNode, StorageError> {
        let durable = self.log.load()?;
        let state: Arc<dyn KvStore> = self.state.clone();
        let (recovered, quarantined) = recover_node(placement, node, durable, &state, cache_bytes_per_shard)?;
        for (shard, reason) in &quarantined {
            tracing::error!(shard, %reason, "replica quarantined: it will not serve or vote until rebuilt");
        }
        Ok((recovered, quarantined))
    }

    /// Writes one group of jobs durably: the state store's fsync first when a job asks for it
    /// (a state persist, or a round that installs a snapshot: the installed state must be
    /// durable before the log drops what it replaces), then the log writes.
    pub fn write_group(&mut self, jobs: &[IoJob]) -> Result<(), StorageError> {
        let mut writes = Vec::new();
        let mut persist_state = false;
        for job in jobs {
            match job {
                IoJob::PersistState { .. } => persist_state = true,
                IoJob::Persist(round) => {
                    for write in &round.writes {
                        persist_state |= write.snapshot.is_some();
                        writes.push(write);
                    }
                }
                IoJob::DeleteRange { start, end } => {
                    let state = self.state.clone();
                    let (start, end) = (start.clone(), end.clone());
                    std::thread::Builder::new()
                        .name("settle-cleanup".to_string())
                        .spawn(move || delete_range(&state, &start, &end))
                        .map_err(StorageError::Io)?;
                }
            }
        }
        if persist_state {
            self.state.persist()?;
        }
        if !writes.is_empty() {
            self.log.write(&writes)?;
        }
        Ok(())
    }
}

/// Deletes every key in `[start, end)`, a batch at a time. A failure is logged and left: the
/// range is unused, and the node clears every unused generation at its next start.
fn delete_range(state: &StateStore, start: &[u8], end: &[u8]) {
    loop {
        let keys = state.scan(start, end, DELETE_BATCH_KEYS, false);
        if keys.is_empty() {
            return;
        }
        let mut batch = WriteBatch::default();
        for (key, _) in keys {
            batch.delete(key);
        }
        if let Err(error) = state.write(batch) {
            tracing::warn!(%error, "clearing an unused range of the state store failed");
            return;
        }
    }
}

/// The IO actor: one thread that owns both stores; its mailbox is the bounded job channel.
/// Runs until the channel closes. Any storage error is fatal for the node: a
/// replica that cannot persist must stop rather than acknowledge what is not durable.
pub fn io_actor(
    mut storage: Storage,
    jobs: std::sync::mpsc::Receiver<IoJob>,
    mut report: impl FnMut(Vec<IoDone>) -> bool,
    stats: Arc<IoStats>,
) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < IO_ROUND_JOBS_MAX {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let delay = stats.sync_delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        let started = Instant::now();
        if let Err(error) = storage.write_group(&group) {
            tracing::error!(%error, "storage write failed; stopping the node");
            std::process::exit(70);
        }
        stats.sync_seconds.observe(started.elapsed().as_secs_f64());
        stats.syncs.fetch_add(1, Ordering::Relaxed);
        let mut done = Vec::new();
        let mut group_entries = 0usize;
        let mut group_shards = std::collections::BTreeSet::new();
        for job in &group {
            match job {
                IoJob::Persist(round) => {
                    let entries: usize = round.writes.iter().map(|write| write.entries.len()).sum();
                    group_entries += entries;
                    group_shards.extend(round.writes.iter().map(|write| write.shard));
                    stats.rounds.fetch_add(1, Ordering::Relaxed);
                    stats.entries.fetch_add(u64::try_from(entries).unwrap_or(0), Ordering::Relaxed);
                    done.push(IoDone::Persisted { round: round.id });
                }
                IoJob::PersistState { marks } => done.push(IoDone::StatePersisted { marks: marks.clone() }),
                IoJob::DeleteRange { .. } => {}
            }
        }
        stats.group_entries.observe(group_entries as f64);
        stats.group_shards.observe(group_shards.len() as f64);
        if !report(done) {
            break;
        }
    }
}
