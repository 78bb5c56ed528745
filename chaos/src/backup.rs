//! Online backups in the simulator: a driver takes backups while the workload runs under the
//! seed's faults, through the same requests `settle backup` sends (`Request::Fence` on every
//! shard, then `Request::BackupChunk` until each shard's cut is read), restores every shard
//! into a fresh store (`backup::restore_shard`, which checks each shard's own invariants) and
//! checks the shards form one consistent cut (`backup::check_cut`): the checker
//! `backup_cut_consistent`. A backup that cannot finish (a shard's view lost to a restart, a
//! call unanswered) is abandoned and counted, never a violation: `settle backup` fails the same way.

use crate::checkers::Violation;
use crate::sim::SimCluster;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use settle_cluster::backup::{check_cut, restore_shard, BackupChunk};
use settle_cluster::ids::{NodeId, ShardId};
use settle_cluster::ledger::Ledger;
use settle_cluster::message::{Reply, Request};
use settle_cluster::store::{Key, KvStore, MemStore, Value};
use settle_cluster::CallId;
use std::collections::BTreeMap;
use std::sync::Arc;

/// How long after the previous backup (or the start) the next one begins, at most.
const BACKUP_GAP_MS_MAX: u64 = 3_000;
/// A backup not finished this long after it began is abandoned.
const BACKUP_DEADLINE_MS: u64 = 8_000;
const CALL_TIMEOUT_MS: u64 = 1_000;

enum Phase {
    Idle {
        next_at_ms: u64,
    },
    /// Fences sent: per shard, the call in flight (`None`: fenced).
    Fencing {
        calls: BTreeMap<ShardId, Option<CallId>>,
    },
    /// Reading shard `shard` after key `after`.
    Reading {
        shard: ShardId,
        after: Option<Key>,
        call: Option<CallId>,
    },
}

pub struct BackupDriver {
    rng: SmallRng,
    phase: Phase,
    epoch: u64,
    started_ms: u64,
    records: BTreeMap<ShardId, Vec<(Key, Value)>>,
    /// Backups read and checked in full, and backups abandoned.
    pub checked: u64,
    pub abandoned: u64,
}

impl BackupDriver {
    pub fn new(seed: u64) -> BackupDriver {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0xb4c_0b4c);
        let next_at_ms = rng.gen_range(0..BACKUP_GAP_MS_MAX);
        BackupDriver { rng, phase: Phase::Idle { next_at_ms }, epoch: 0, started_ms: 0, records: BTreeMap::new(), checked: 0, abandoned: 0 }
    }

    /// Advances the backup in progress; begins a new one when it is time and `begin` allows.
    pub fn step(&mut self, cluster: &mut SimCluster, begin: bool) -> Result<(), Violation> {
        let now = cluster.now_ms();
        if !matches!(self.phase, Phase::Idle { .. }) && now.saturating_sub(self.started_ms) > BACKUP_DEADLINE_MS {
            cluster.note(format!("backup {}: abandoned at its deadline", self.epoch));
            self.abandoned += 1;
            self.idle(now);
        }
        match &mut self.phase {
            Phase::Idle { next_at_ms } => {
                if begin && now >= *next_at_ms {
                    self.epoch += 1;
                    self.started_ms = now;
                    self.records.clear();
                    cluster.note(format!("backup {}: fencing", self.epoch));
                    let shards = cluster.placement().shard_count();
                    self.phase = Phase::Fencing { calls: (0..shards).map(|shard| (shard, None)).collect() };
                    if let Phase::Fencing { calls } = &mut self.phase {
                        for (shard, call) in calls.iter_mut() {
                            *call = Some(submit(cluster, &mut self.rng, Request::Fence { shard: *shard, epoch: self.epoch }));
                        }
                    }
                }
                Ok(())
            }
            Phase::Fencing { calls } => {
                let epoch = self.epoch;
                for (shard, call) in calls.iter_mut() {
                    let Some(pending) = *call else {
                        continue;
                    };
                    match cluster.take_reply(pending) {
                        None => {}
                        Some(Reply::Fenced(outcome)) if outcome.epoch == epoch => *call = None,
                        Some(Reply::Fenced(outcome)) => {
                            return Err(Violation::new(
                                "backup_cut_consistent",
                                format!("shard {shard} answered fence {epoch} with epoch {}", outcome.epoch),
                            ));
                        }
                        Some(_) => *call = Some(submit(cluster, &mut self.rng, Request::Fence { shard: *shard, epoch })),
                    }
                }
                if calls.values().all(Option::is_none) {
                    cluster.note(format!("backup {epoch}: every shard fenced; reading"));
                    self.phase = Phase::Reading { shard: 0, after: None, call: None };
                }
                Ok(())
            }
            Phase::Reading { shard, after, call } => {
                let request = Request::BackupChunk { shard: *shard, epoch: self.epoch, after: after.clone() };
                let Some(pending) = *call else {
                    *call = Some(submit(cluster, &mut self.rng, request));
                    return Ok(());
                };
                match cluster.take_reply(pending) {
                    None => Ok(()),
                    Some(Reply::BackupChunk(chunk)) => match *chunk {
                        BackupChunk::Records { entries, done } => {
                            *after = entries.last().map(|(key, _)| key.clone()).or(after.take());
                            self.records.entry(*shard).or_default().extend(entries);
                            *call = None;
                            if done {
                                *after = None;
                                *shard += 1;
                                if *shard == cluster.placement().shard_count() {
                                    let result = self.check(cluster);
                                    self.checked += 1;
                                    self.idle(now);
                                    return result;
                                }
                            }
                            Ok(())
                        }
                        BackupChunk::NotYet { .. } => {
                            *call = None;
                            Ok(())
                        }
                        BackupChunk::Gone { epoch } => {
                            cluster.note(format!("backup {}: shard {shard}'s cut is gone (epoch {epoch}); abandoned", self.epoch));
                            self.abandoned += 1;
                            self.idle(now);
                            Ok(())
                        }
                    },
                    Some(_) => {
                        *call = Some(submit(cluster, &mut self.rng, request));
                        Ok(())
                    }
                }
            }
        }
    }

    fn idle(&mut self, now: u64) {
        self.phase = Phase::Idle { next_at_ms: now + self.rng.gen_range(0..BACKUP_GAP_MS_MAX) };
    }

    /// Restores every shard of the finished backup into a fresh store and checks the cut.
    fn check(&mut self, cluster: &mut SimCluster) -> Result<(), Violation> {
        let violation = |message: String| Violation::new("backup_cut_consistent", message);
        let store: Arc<dyn KvStore> = Arc::new(MemStore::new());
        let shard_count = cluster.placement().shard_count();
        let mut ledgers = BTreeMap::new();
        for (shard, records) in std::mem::take(&mut self.records) {
            restore_shard(&store, shard, shard_count, records).map_err(|error| violation(format!("backup {}: {error}", self.epoch)))?;
            let (ledger, _) = Ledger::open(shard, shard_count, store.clone(), 1 << 20).map_err(|error| violation(error.to_string()))?;
            ledgers.insert(shard, ledger);
        }
        check_cut(cluster.placement(), &ledgers).map_err(|broken| violation(format!("backup {}: {broken}", self.epoch)))?;
        cluster.note(format!("backup {}: restored and checked", self.epoch));
        Ok(())
    }
}

/// Sends a backup request through a random live node (a dead one if none is live).
fn submit(cluster: &mut SimCluster, rng: &mut SmallRng, request: Request) -> CallId {
    let live = cluster.live_nodes();
    let nodes: Vec<NodeId> = if live.is_empty() { cluster.node_ids() } else { live };
    let node = nodes[rng.gen_range(0..nodes.len())];
    cluster.submit(node, request, CALL_TIMEOUT_MS)
}
