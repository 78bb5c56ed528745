//! One seed, start to verdict: build the cluster, set up and fund accounts, run the workload
//! through the seed's fault plan, heal, let the cluster settle, and run the checkers. A panic in
//! the core (a broken assertion) is a failure too, reported as `core_assertion`.

use crate::backup::BackupDriver;
use crate::checkers::{self, Checkers, Violation};
use crate::faults::{self, FaultClass, FaultPlan};
use crate::membership::MembershipDriver;
use crate::sim::{SimCluster, SimConfig};
use crate::workload::{Workload, WorkloadConfig};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use settle_cluster::planted::PlantedBug;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub seed: u64,
    pub nodes: u64,
    pub shards: u32,
    pub faults: FaultClass,
    /// Virtual time with faults and the workload.
    pub chaos_ms: u64,
    /// Virtual time allowed after healing for the cluster to settle (the liveness bound).
    pub settle_ms: u64,
    pub planted: PlantedBug,
    /// Keep the whole trace instead of its tail.
    pub verbose: bool,
}

impl RunOptions {
    pub fn new(seed: u64) -> RunOptions {
        RunOptions {
            seed,
            nodes: 3,
            shards: 4,
            faults: FaultClass::All,
            chaos_ms: 10_000,
            settle_ms: 30_000,
            planted: PlantedBug::None,
            verbose: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunReport {
    pub seed: u64,
    pub violation: Option<Violation>,
    /// The last notable events (faults, acknowledgements), for the failure report.
    pub trace: Vec<String>,
    pub trace_hash: u64,
    pub virtual_ms: u64,
    pub events: u64,
    pub operations: u64,
    pub posted: usize,
    pub rejected: usize,
    pub corruptions: u64,
    /// Replicas quarantined while running because a stored record did not decode.
    pub damaged_quarantines: u64,
    /// Over the cores running at the end: accounts activated and passivated, snapshot streams
    /// started (the state on disk is exercised, not just present).
    pub activations: u64,
    pub passivations: u64,
    pub snapshot_streams: u64,
    /// Online backups taken, restored and checked during the run, and abandoned ones.
    pub backups_checked: u64,
    pub backups_abandoned: u64,
    /// Replica moves finished during the run, and moves abandoned at their deadline.
    pub moves_done: u64,
    pub moves_abandoned: u64,
    /// Quarantined replicas rebuilt (removed, added back empty, promoted) during the run.
    pub replicas_rebuilt: u64,
    pub wall: Duration,
}

impl RunReport {
    pub fn passed(&self) -> bool {
        self.violation.is_none()
    }
}

/// How often the periodic checkers and the fault schedule look at the cluster.
const STEP_MS: u64 = 10;
const CHECK_EVERY_MS: u64 = 250;

pub fn run_seed(options: &RunOptions) -> RunReport {
    let started = Instant::now();
    let mut config = SimConfig::new(options.nodes, options.shards, options.seed);
    config.planted = options.planted;
    config.verbose = options.verbose;
    // Shorter periods than production so a 10-second run exercises re-drive, prevent,
    // checkpoints, compaction and snapshots.
    config.limits.redrive_interval_ms = 300;
    config.limits.prevent_after_ms = 1_500;
    config.limits.checkpoint_entries = 40;
    config.limits.checkpoint_interval_ms = 2_000;
    // The log keeps only a couple of entries behind a checkpoint, so compaction follows the
    // durable state closely (and a bug that compacts past it shows at once).
    config.limits.compaction_lag_entries = 2;
    // About an entry's worth: the byte bound on the lag cuts in too.
    config.limits.compaction_lag_bytes = 512;
    config.limits.leader_balance_interval_ms = 1_500;
    let mut cluster = SimCluster::new(config);
    let mut workload = Workload::new(WorkloadConfig::default(), options.seed);
    let mut backups = BackupDriver::new(options.seed);
    let mut moves = MembershipDriver::new(options.seed);
    let outcome = catch_unwind(AssertUnwindSafe(|| drive(options, &mut cluster, &mut workload, &mut backups, &mut moves)));
    let violation = match outcome {
        Ok(result) => result.err(),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
                .unwrap_or_else(|| "panic".to_string());
            Some(Violation::new("core_assertion", message))
        }
    };
    let (activations, passivations, snapshot_streams) = cluster.cache_and_snapshot_counts();
    RunReport {
        seed: options.seed,
        violation,
        trace: cluster.trace_lines(),
        trace_hash: cluster.trace_hash(),
        virtual_ms: cluster.now_ms(),
        events: cluster.events_handled(),
        operations: workload.operations,
        posted: workload.posted.len(),
        rejected: workload.rejected.len(),
        corruptions: cluster.corruptions(),
        damaged_quarantines: cluster.damaged_quarantines(),
        activations,
        passivations,
        snapshot_streams,
        backups_checked: backups.checked,
        backups_abandoned: backups.abandoned,
        moves_done: moves.done,
        moves_abandoned: moves.abandoned,
        replicas_rebuilt: moves.rebuilt,
        wall: started.elapsed(),
    }
}

fn drive(
    options: &RunOptions,
    cluster: &mut SimCluster,
    workload: &mut Workload,
    backups: &mut BackupDriver,
    moves: &mut MembershipDriver,
) -> Result<(), Violation> {
    let elected = cluster.run_until(20_000, all_shards_led);
    if !elected {
        return Err(Violation::new("liveness", "no leader for every shard 20 s after start"));
    }
    if !workload.setup(cluster) {
        return Err(Violation::new("liveness", "could not create and fund the accounts without faults"));
    }
    let mut plan_rng = SmallRng::seed_from_u64(options.seed.rotate_left(17) ^ 0x5eed);
    let plan = FaultPlan::generate(&mut plan_rng, options.faults, options.nodes, options.chaos_ms);
    let mut checkers = Checkers::default();
    let start = cluster.now_ms();
    let mut started = vec![false; plan.faults.len()];
    let mut ended = vec![false; plan.faults.len()];
    let mut elapsed = 0;
    while elapsed < options.chaos_ms {
        for (index, scheduled) in plan.faults.iter().enumerate() {
            if !started[index] && elapsed >= scheduled.start_ms {
                started[index] = true;
                cluster.note(format!("fault: {:?}", scheduled.fault));
                faults::apply(cluster, scheduled.fault);
            }
            if started[index] && !ended[index] && elapsed >= scheduled.end_ms {
                ended[index] = true;
                faults::undo(cluster, scheduled.fault);
            }
        }
        workload.step(cluster, true);
        backups.step(cluster, true)?;
        moves.step(cluster, true)?;
        cluster.inject_hostile();
        cluster.run_for(STEP_MS);
        elapsed = cluster.now_ms() - start;
        if elapsed % CHECK_EVERY_MS < STEP_MS {
            check(&mut checkers, cluster, workload)?;
        }
    }
    faults::heal_all(cluster);
    cluster.note("healed everything; settling".to_string());
    settle(options, cluster, workload, backups, moves, &mut checkers)
}

fn check(checkers: &mut Checkers, cluster: &SimCluster, workload: &Workload) -> Result<(), Violation> {
    if let Some(violation) = &workload.first_violation {
        return Err(violation.clone());
    }
    if let Some(violation) = cluster.durable_violation() {
        return Err(violation.clone());
    }
    checkers.periodic(cluster)
}

/// After healing: clients finish their retries, every shard has a leader, nothing is pending,
/// replicas agree — within `settle_ms` — then the final checks.
fn settle(
    options: &RunOptions,
    cluster: &mut SimCluster,
    workload: &mut Workload,
    backups: &mut BackupDriver,
    moves: &mut MembershipDriver,
    checkers: &mut Checkers,
) -> Result<(), Violation> {
    let start = cluster.now_ms();
    loop {
        workload.step(cluster, false);
        backups.step(cluster, false)?;
        moves.step(cluster, false)?;
        cluster.run_for(STEP_MS);
        let elapsed = cluster.now_ms() - start;
        if elapsed % CHECK_EVERY_MS < STEP_MS {
            check(checkers, cluster, workload)?;
            let settled = workload.quiet()
                && all_shards_led(cluster)
                && checkers::latest_ledgers(cluster).values().all(|ledger| ledger.pending_count() == 0)
                && applied_indexes_agree(cluster);
            if settled {
                checkers::replicas_converged(cluster)?;
                return checkers::final_checks(cluster, workload);
            }
        }
        if elapsed > options.settle_ms {
            return Err(Violation::new("liveness", unsettled(options, cluster, workload)));
        }
    }
}

pub fn all_shards_led(cluster: &SimCluster) -> bool {
    cluster.live_nodes().iter().all(|node| cluster.sound_replicas(*node).all(|replica| replica.leader().is_some()))
}

/// Every live replica of each shard has applied up to the same index.
pub fn applied_indexes_agree(cluster: &SimCluster) -> bool {
    let mut applied = std::collections::BTreeMap::new();
    for node in cluster.live_nodes() {
        for replica in cluster.sound_replicas(node) {
            let index = applied.entry(replica.ledger().shard()).or_insert(replica.applied_index());
            if *index != replica.applied_index() {
                return false;
            }
        }
    }
    true
}

/// Describes what kept the cluster from settling.
fn unsettled(options: &RunOptions, cluster: &SimCluster, workload: &Workload) -> String {
    let ledgers = checkers::latest_ledgers(cluster);
    let pending: usize = ledgers.values().map(|ledger| ledger.pending_count()).sum();
    let mut message = format!(
        "not settled {} ms after healing: {} ambiguous transfers, {pending} pending, all shards led: {}, replicas agree: {}, clients quiet: {}",
        options.settle_ms,
        workload.ambiguous.len(),
        all_shards_led(cluster),
        applied_indexes_agree(cluster),
        workload.quiet(),
    );
    if !applied_indexes_agree(cluster) {
        for node in cluster.live_nodes() {
            let stats = cluster.core(node).expect("live").stats();
            message.push_str(&format!(
                "; node {node}: snapshots sent {}, installed {}, streams started {}, bytes sent {} received {}, rejected {:?}",
                stats.snapshots_sent,
                stats.snapshots_installed,
                stats.snapshot_streams_started,
                stats.snapshot_bytes_sent,
                stats.snapshot_bytes_received,
                stats.peer_messages_rejected
            ));
        }
        for node in cluster.live_nodes() {
            for replica in cluster.sound_replicas(node) {
                message.push_str(&format!(
                    "; node {node} shard {}: {:?} applied {} commit {} last {}",
                    replica.shard(),
                    replica.role(),
                    replica.applied_index(),
                    replica.commit_index(),
                    replica.last_index()
                ));
            }
        }
    }
    for node in cluster.live_nodes() {
        for replica in cluster.sound_replicas(node) {
            if replica.leader().is_none() {
                message.push_str(&format!(
                    "; node {node} shard {}: {:?} term {} last {} commit {}",
                    replica.shard(),
                    replica.role(),
                    replica.term(),
                    replica.last_index(),
                    replica.commit_index(),
                ));
            }
        }
    }
    for command in workload.ambiguous.values().take(3) {
        let (id, shard) = (&command.id, cluster.placement().shard_of(&command.from));
        let status = ledgers.get(&shard).and_then(|ledger| ledger.transfer(id)).map(|record| record.status.clone());
        message.push_str(&format!("; {id} (shard {shard}) is {status:?}"));
    }
    for ledger in ledgers.values() {
        if let Some(record) = ledger.pending().first().cloned() {
            let payee_shard = cluster.placement().shard_of(&record.to);
            let decision = ledgers.get(&payee_shard).and_then(|l| l.credit(&record.id)).map(|c| c.decision.clone());
            message.push_str(&format!("; pending {} on shard {} -> shard {payee_shard} decision {decision:?}", record.id, ledger.shard()));
        }
    }
    message
}
