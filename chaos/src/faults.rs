//! Fault plans: from a seed and a fault class, a schedule of faults, each applied at its start
//! and undone at its end. Faults may overlap; everything is healed before the final checks.

use crate::sim::SimCluster;
use rand::rngs::SmallRng;
use rand::Rng;
use settle_cluster::ids::NodeId;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultClass {
    All,
    Net,
    Disk,
    Crash,
    /// Malformed and replayed peer input (see `SimCluster::inject_hostile`).
    Hostile,
    None,
}

impl FromStr for FaultClass {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "all" => Ok(FaultClass::All),
            "net" => Ok(FaultClass::Net),
            "disk" => Ok(FaultClass::Disk),
            "crash" => Ok(FaultClass::Crash),
            "hostile" => Ok(FaultClass::Hostile),
            "none" => Ok(FaultClass::None),
            other => Err(format!("unknown fault class {other:?} (all, net, disk, crash, hostile, none)")),
        }
    }
}

impl fmt::Display for FaultClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            FaultClass::All => "all",
            FaultClass::Net => "net",
            FaultClass::Disk => "disk",
            FaultClass::Crash => "crash",
            FaultClass::Hostile => "hostile",
            FaultClass::None => "none",
        };
        f.write_str(name)
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Cut a node off both ways (the node leading most shards when `leader` is set).
    Isolate {
        node: NodeId,
        leader: bool,
    },
    /// Cut one direction of one link.
    OneWay {
        from: NodeId,
        to: NodeId,
    },
    /// Split the nodes in two groups at `split` (nodes `1..=split` vs the rest).
    Split {
        split: NodeId,
    },
    Loss {
        per_million: u32,
    },
    Duplicates {
        per_million: u32,
    },
    Latency {
        max_ms: u64,
    },
    /// Stop a node (the busiest leader when `leader` is set): as a power loss (nothing that
    /// was not fsynced survives) or as a process crash (what reached the operating system
    /// survives, each store cut at its own point: `SimCluster::kill`).
    Crash {
        node: NodeId,
        leader: bool,
        power_loss: bool,
    },
    /// Every node loses power at once.
    CrashAll,
    Pause {
        node: NodeId,
    },
    ClockJump {
        node: NodeId,
        delta_ms: i64,
    },
    FailFlush {
        node: NodeId,
    },
    SlowDisk {
        max_ms: u64,
    },
    /// A bit flip in one stored record: in the log store of a stopped node (restarted at the
    /// end), or in the state store of a running one (`live`).
    Corrupt {
        node: NodeId,
        live: bool,
    },
    /// The node receives malformed and replayed frames while the fault lasts.
    Hostile {
        node: NodeId,
    },
    /// A deposed leader that does not know it: the node (the one leading most shards when
    /// `leader` is set) is cut off from its peers and its timers stop, so it never notices it
    /// lost its quorum, while clients keep calling it.
    StallTimers {
        node: NodeId,
        leader: bool,
    },
}

#[derive(Debug, Clone)]
pub struct ScheduledFault {
    pub start_ms: u64,
    pub end_ms: u64,
    pub fault: Fault,
}

pub struct FaultPlan {
    pub faults: Vec<ScheduledFault>,
}

impl FaultPlan {
    pub fn generate(rng: &mut SmallRng, class: FaultClass, nodes: u64, chaos_ms: u64) -> FaultPlan {
        let mut faults = Vec::new();
        if class == FaultClass::None || chaos_ms < 2_000 {
            return FaultPlan { faults };
        }
        let count = rng.gen_range(3..=8);
        for _ in 0..count {
            let start_ms = rng.gen_range(300..chaos_ms - 1_000);
            let length = rng.gen_range(500..=4_000).min(chaos_ms - start_ms);
            let node = rng.gen_range(1..=nodes);
            let other = 1 + (node + rng.gen_range(0..nodes - 1)) % nodes;
            let kinds: &[u8] = match class {
                FaultClass::Net => &[0, 1, 2, 3, 4, 5, 14],
                FaultClass::Crash => &[6, 7, 8, 9],
                FaultClass::Disk => &[10, 11, 6, 12],
                FaultClass::Hostile => &[13, 13, 4, 6],
                FaultClass::All => &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 14],
                FaultClass::None => unreachable!("returned above"),
            };
            let fault = match kinds[rng.gen_range(0..kinds.len())] {
                0 => Fault::Isolate { node, leader: rng.gen_bool(0.5) },
                1 => Fault::OneWay { from: node, to: other },
                2 => Fault::Split { split: rng.gen_range(1..nodes) },
                3 => Fault::Loss { per_million: rng.gen_range(100_000..=500_000) },
                4 => Fault::Duplicates { per_million: rng.gen_range(50_000..=300_000) },
                5 => Fault::Latency { max_ms: rng.gen_range(20..=300) },
                6 => Fault::Crash { node, leader: rng.gen_bool(0.5), power_loss: rng.gen_bool(0.5) },
                7 => Fault::CrashAll,
                8 => Fault::Pause { node },
                9 => Fault::ClockJump { node, delta_ms: rng.gen_range(-60_000..=120_000) },
                10 => Fault::FailFlush { node },
                11 => Fault::SlowDisk { max_ms: rng.gen_range(20..=200) },
                12 => Fault::Corrupt { node, live: rng.gen_bool(0.5) },
                13 => Fault::Hostile { node },
                _ => Fault::StallTimers { node, leader: rng.gen_bool(0.7) },
            };
            // A deposed leader must outlive the election of its successor (1–2 s) by enough for
            // writes to commit there while it still answers.
            let length = if matches!(fault, Fault::StallTimers { .. }) { length.max(6_000).min(chaos_ms - start_ms) } else { length };
            faults.push(ScheduledFault { start_ms, end_ms: start_ms + length, fault });
        }
        faults.sort_by_key(|fault| fault.start_ms);
        FaultPlan { faults }
    }
}

/// The node leading the most shards, as the live nodes see it.
pub fn busiest_leader(cluster: &SimCluster) -> Option<NodeId> {
    let mut counts = std::collections::BTreeMap::new();
    for node in cluster.live_nodes() {
        for replica in cluster.core(node).expect("live").replicas() {
            if replica.is_leader() {
                *counts.entry(node).or_insert(0usize) += 1;
            }
        }
    }
    counts.into_iter().max_by_key(|(_, count)| *count).map(|(node, _)| node)
}

pub fn apply(cluster: &mut SimCluster, fault: Fault) {
    match fault {
        Fault::Isolate { node, leader } => {
            let node = if leader { busiest_leader(cluster).unwrap_or(node) } else { node };
            cluster.isolate(node);
        }
        Fault::OneWay { from, to } => cluster.block(from, to),
        Fault::Split { split } => {
            for a in cluster.node_ids() {
                for b in cluster.node_ids() {
                    if (a <= split) != (b <= split) {
                        cluster.block(a, b);
                    }
                }
            }
        }
        Fault::Loss { per_million } => {
            cluster.network_mut().drop_per_million = per_million;
            cluster.note(format!("loss {per_million} per million"));
        }
        Fault::Duplicates { per_million } => {
            cluster.network_mut().duplicate_per_million = per_million;
            cluster.note(format!("duplicates {per_million} per million"));
        }
        Fault::Latency { max_ms } => {
            cluster.network_mut().latency_ms_max = max_ms;
            cluster.note(format!("latency up to {max_ms} ms"));
        }
        Fault::Crash { node, leader, power_loss } => {
            let node = if leader { busiest_leader(cluster).unwrap_or(node) } else { node };
            if cluster.is_up(node) {
                if power_loss {
                    cluster.crash(node);
                } else {
                    cluster.kill(node);
                }
            }
        }
        Fault::CrashAll => {
            for node in cluster.node_ids() {
                if cluster.is_up(node) {
                    cluster.crash(node);
                }
            }
        }
        Fault::Pause { node } => cluster.pause(node),
        Fault::ClockJump { node, delta_ms } => cluster.jump_clock(node, delta_ms),
        Fault::FailFlush { node } => cluster.fail_next_flush(node),
        Fault::SlowDisk { max_ms } => {
            cluster.network_mut().io_latency_ms_max = max_ms;
            cluster.note(format!("disk latency up to {max_ms} ms"));
        }
        Fault::Corrupt { node, live: false } => cluster.corrupt_record(node),
        Fault::Corrupt { node, live: true } => cluster.corrupt_state_record(node),
        Fault::Hostile { node } => cluster.set_hostile(node, true),
        Fault::StallTimers { node, leader } => {
            let node = if leader { busiest_leader(cluster).unwrap_or(node) } else { node };
            cluster.isolate(node);
            cluster.stall_timers(node, true);
        }
    }
}

/// Undoes a fault at its end (restarts what it stopped, restores what it changed).
pub fn undo(cluster: &mut SimCluster, fault: Fault) {
    let defaults = crate::sim::NetworkSettings::default();
    match fault {
        Fault::Isolate { .. } | Fault::OneWay { .. } | Fault::Split { .. } => cluster.heal_network(),
        Fault::Loss { .. } => cluster.network_mut().drop_per_million = 0,
        Fault::Duplicates { .. } => cluster.network_mut().duplicate_per_million = 0,
        Fault::Latency { .. } => cluster.network_mut().latency_ms_max = defaults.latency_ms_max,
        Fault::SlowDisk { .. } => cluster.network_mut().io_latency_ms_max = defaults.io_latency_ms_max,
        Fault::Crash { .. } | Fault::CrashAll | Fault::FailFlush { .. } | Fault::Corrupt { .. } => restart_stopped(cluster),
        Fault::Pause { node } => cluster.resume(node),
        Fault::ClockJump { .. } => {}
        Fault::Hostile { node } => cluster.set_hostile(node, false),
        Fault::StallTimers { .. } => {
            for node in cluster.node_ids() {
                cluster.stall_timers(node, false);
            }
            cluster.heal_network();
        }
    }
}

pub fn restart_stopped(cluster: &mut SimCluster) {
    for node in cluster.node_ids() {
        if !cluster.is_up(node) {
            cluster.start(node);
        }
    }
}

/// Removes every fault: network, disk, paused and stopped nodes.
pub fn heal_all(cluster: &mut SimCluster) {
    cluster.clear_flush_failures();
    for node in cluster.node_ids() {
        cluster.set_hostile(node, false);
        cluster.stall_timers(node, false);
    }
    cluster.heal_network();
    *cluster.network_mut() = crate::sim::NetworkSettings::default();
    for node in cluster.node_ids() {
        cluster.resume(node);
    }
    restart_stopped(cluster);
}
