//! The IO thread: drains persist rounds and checkpoints queued by the driver, writes them as one
//! group (checkpoints to the state store first, then every round's log writes in one
//! raft-engine batch, one sync), and reports what is durable. Rounds complete in order.

use crate::log_store::{LogStore, LogStoreError};
use crate::state_store::{StateStore, StateStoreError};
use settle_cluster::ids::ShardId;
use settle_cluster::placement::Placement;
use settle_cluster::recovery::{checkpoint_from_snapshot, recover_node, CheckpointView, RecoveredNode, RecoveryError};
use settle_cluster::replica::Checkpoint;
use settle_cluster::PersistRound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Jobs taken in one IO round at most (a bound on one transaction's size).
pub const IO_ROUND_JOBS_MAX: usize = 1_024;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    Log(#[from] LogStoreError),
    #[error(transparent)]
    State(#[from] StateStoreError),
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
    #[error("data dir: {0}")]
    Io(#[from] std::io::Error),
}

pub enum IoJob {
    Persist(PersistRound),
    Checkpoint(Checkpoint),
}

pub enum IoDone {
    Persisted { round: u64 },
    Checkpointed { shard: ShardId, index: u64 },
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
    state: StateStore,
}

impl Storage {
    pub fn open(data_dir: &Path) -> Result<Storage, StorageError> {
        std::fs::create_dir_all(data_dir)?;
        let log = LogStore::open(&data_dir.join("raft-log"))?;
        let state = StateStore::open(&data_dir.join("state.sled"))?;
        Ok(Storage { log, state })
    }

    /// Rebuilds every shard replica's starting state from both stores; replicas with corrupt
    /// records come back in the second map (quarantined, with the reason).
    pub fn recover(&self, placement: &Placement) -> Result<RecoveredNode, StorageError> {
        let mut durable = self.log.load()?;
        for (shard, checkpoint) in self.state.load()? {
            let entry = durable.entry(shard).or_default();
            match checkpoint {
                Ok(checkpoint) => entry.checkpoint = Some(checkpoint),
                Err(error) => {
                    tracing::error!(shard, %error, "checkpoint failed its checksum; quarantining the replica");
                    entry.corrupt = Some(error.to_string());
                }
            }
        }
        let (recovered, quarantined) = recover_node(placement, durable)?;
        for (shard, reason) in &quarantined {
            tracing::error!(shard, %reason, "replica quarantined: it will not serve or vote until rebuilt");
        }
        Ok((recovered, quarantined))
    }

    /// Writes one group of jobs durably.
    pub fn write_group(&mut self, jobs: &[IoJob]) -> Result<(), StorageError> {
        // Borrowed views: the ledger bytes are copied once, into the stored record.
        let mut checkpoints: Vec<CheckpointView<'_>> = Vec::new();
        let mut writes = Vec::new();
        for job in jobs {
            match job {
                IoJob::Checkpoint(checkpoint) => checkpoints.push(CheckpointView::from(checkpoint)),
                IoJob::Persist(round) => {
                    for write in &round.writes {
                        if let Some(snapshot) = &write.snapshot {
                            // The ledger state must be stored before the log drops what it replaces.
                            checkpoints.push(checkpoint_from_snapshot(write.shard, snapshot));
                        }
                        writes.push(write);
                    }
                }
            }
        }
        self.state.save(&checkpoints)?;
        if !writes.is_empty() {
            self.log.write(&writes)?;
        }
        Ok(())
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
                IoJob::Checkpoint(checkpoint) => {
                    done.push(IoDone::Checkpointed { shard: checkpoint.shard, index: checkpoint.index });
                }
            }
        }
        stats.group_entries.observe(group_entries as f64);
        stats.group_shards.observe(group_shards.len() as f64);
        if !report(done) {
            break;
        }
    }
}
