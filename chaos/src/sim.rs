//! `SimCluster`: every node's `NodeCore` in one thread, on a virtual clock, with a seeded RNG
//! choosing message latencies, drops, duplicates and IO completion times. Storage is the
//! reference `DurableShard`: a persist round becomes durable only when its IO completes, so a
//! crash loses exactly the rounds still in flight. Same seed and same calls, same run.
//!
//! Fault primitives: `crash`/`start`, `pause`/`resume` (events for a paused node wait; it comes
//! back with a stale view), `block` (one direction of a link) / `isolate` / `heal`, per-node clock
//! offsets (`jump_clock`), network and disk settings changed at run time (`network_mut`), and
//! `fail_next_flush` (the node's next IO fails, which stops the node like a real storage error).

use crate::checkers::Violation;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use settle_cluster::ids::{NodeId, ShardId};
use settle_cluster::ledger::{keys, Ledger};
use settle_cluster::message::{PeerMessage, Reply, Request};
use settle_cluster::placement::Placement;
use settle_cluster::planted::PlantedBug;
use settle_cluster::recovery::{recover_node, DurableShard};
use settle_cluster::replica::RaftSettings;
use settle_cluster::replica::ShardReplica;
use settle_cluster::store::{KvStore, MemStore, WriteBatch};
use settle_cluster::{cache_bytes_per_shard, CallId, CoreLimits, Effect, NodeConfig, NodeCore, PersistRound, Time};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// The longest a background range deletion takes to run after it was asked for.
const DELETE_RANGE_DELAY_MS_MAX: u64 = 300;

/// How the simulated network and disks behave; changeable during a run.
#[derive(Debug, Clone)]
pub struct NetworkSettings {
    pub latency_ms_min: u64,
    pub latency_ms_max: u64,
    /// Probability (per million) that a frame is dropped / delivered twice.
    pub drop_per_million: u32,
    pub duplicate_per_million: u32,
    pub io_latency_ms_min: u64,
    pub io_latency_ms_max: u64,
    /// Probability (per million) that one state store persist takes up to `io_stall_ms_max`
    /// more: the long tail of a journal fsync behind a memtable flush, which opens the windows
    /// where the log store's IO overtakes the state store's.
    pub io_stall_per_million: u32,
    pub io_stall_ms_max: u64,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        NetworkSettings {
            latency_ms_min: 1,
            latency_ms_max: 5,
            drop_per_million: 0,
            duplicate_per_million: 0,
            io_latency_ms_min: 1,
            io_latency_ms_max: 3,
            io_stall_per_million: 100_000,
            io_stall_ms_max: 150,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub nodes: u64,
    pub shards: u32,
    pub seed: u64,
    pub network: NetworkSettings,
    pub limits: CoreLimits,
    pub raft: RaftSettings,
    /// Each node's account cache budget: small, so accounts are activated and passivated all
    /// the time.
    pub cache_bytes_max: usize,
    pub planted: PlantedBug,
    /// Keep every trace line (for `settle sim --trace`), not just the last ones.
    pub verbose: bool,
}

impl SimConfig {
    pub fn new(nodes: u64, shards: u32, seed: u64) -> SimConfig {
        SimConfig {
            nodes,
            shards,
            seed,
            network: NetworkSettings::default(),
            limits: CoreLimits::default(),
            raft: RaftSettings::default(),
            // About one account per shard replica: nearly every command activates one.
            cache_bytes_max: 1024,
            planted: PlantedBug::None,
            verbose: false,
        }
    }
}

#[derive(Debug)]
enum Event {
    Deliver {
        from: NodeId,
        to: NodeId,
        messages: Vec<PeerMessage>,
    },
    /// Hostile input the simulator makes up (malformed or replayed), claiming `from`.
    Hostile {
        from: NodeId,
        to: NodeId,
        messages: Vec<PeerMessage>,
    },
    Tick {
        node: NodeId,
        incarnation: u64,
    },
    PersistDone {
        node: NodeId,
        incarnation: u64,
        round: PersistRound,
        /// A round that installs a snapshot also makes the state store durable (up to the
        /// batches written when it was handed over), as the IO actor does.
        state_until: Option<u64>,
    },
    /// A key range deleted on the node's background thread, some time after it was asked for
    /// (as the IO actor's deleting thread does).
    DeleteRangeDone {
        node: NodeId,
        incarnation: u64,
        start: Vec<u8>,
        end: Vec<u8>,
    },
    /// The state store's persist asked for when `state_until` was the last batch written.
    StatePersistDone {
        node: NodeId,
        incarnation: u64,
        marks: Vec<(ShardId, u64)>,
        state_until: u64,
    },
}

impl Event {
    fn node(&self) -> NodeId {
        match self {
            Event::Deliver { to, .. } | Event::Hostile { to, .. } => *to,
            Event::Tick { node, .. }
            | Event::PersistDone { node, .. }
            | Event::StatePersistDone { node, .. }
            | Event::DeleteRangeDone { node, .. } => *node,
        }
    }
}

struct SimNode {
    core: Option<NodeCore>,
    /// The log store: what survived of each shard's log.
    durable: BTreeMap<ShardId, DurableShard>,
    /// The state store: written data is readable, a crash keeps what a persist covered.
    store: MemStore,
    incarnation: u64,
    /// When this node's log store finishes the IO queued so far. Each store completes in order
    /// (one journal, one fsync covers what came before) but on its own schedule: a log round
    /// handed over after a state persist may become durable first.
    log_free_at_ms: u64,
    /// When this node's state store finishes the persists queued so far.
    state_free_at_ms: u64,
    paused: bool,
    /// Events that arrived while paused, delivered in order on resume.
    deferred: Vec<Event>,
    /// Whether `deferred` holds a tick (one is enough: a paused node's ticks do not pile up).
    tick_deferred: bool,
    clock_offset_ms: i64,
    /// The node's timers do not fire (its ticks are skipped) while it keeps receiving and
    /// serving: a deposed leader that does not know it yet.
    timers_stalled: bool,
    fail_next_flush: bool,
    /// Per shard, the last index this node holds durably, in its log or its applied state
    /// (refreshed by `check_durable` whenever durable state changes).
    durable_held: BTreeMap<ShardId, u64>,
    /// Hostile messages delivered to this incarnation.
    hostile_received: u64,
}

/// Real messages kept for the hostile fault to replay.
const RECENT_MESSAGES_MAX: usize = 128;

/// Lines kept for the failure report.
const TRACE_LINES_MAX: usize = 64;

pub struct SimCluster {
    /// Per leader replica (node, shard): its voters at the last check and before its last
    /// membership change (`committed_on_quorum`).
    voters_seen: BTreeMap<(NodeId, ShardId), (Vec<NodeId>, Vec<NodeId>)>,
    config: SimConfig,
    placement: Placement,
    now_ms: u64,
    rng: SmallRng,
    nodes: BTreeMap<NodeId, SimNode>,
    events: BTreeMap<(u64, u64), Event>,
    sequence: u64,
    replies: BTreeMap<CallId, Reply>,
    calls_open: BTreeMap<CallId, NodeId>,
    next_call: CallId,
    /// Directed links that drop everything (from, to).
    blocked: BTreeSet<(NodeId, NodeId)>,
    /// Nodes that receive hostile input (`inject_hostile`) while the fault lasts.
    hostile_targets: BTreeSet<NodeId>,
    /// A sample of recent real traffic (from, to, message), for replays.
    recent: VecDeque<(NodeId, NodeId, PeerMessage)>,
    transmits: u64,
    trace_hash: u64,
    trace: VecDeque<String>,
    trace_capacity: usize,
    events_handled: u64,
    corruptions: u64,
    /// The first broken invariant of durable state (`check_durable`).
    durable_violation: Option<Violation>,
    /// Replicas (node, shard) whose state store holds a damaged record (`corrupt_state_record`):
    /// the checkers do not hold them to the others (the core quarantines them when it meets
    /// the damage).
    state_damaged: BTreeSet<(NodeId, ShardId)>,
    /// Replicas quarantined at run time by cores no longer running.
    damaged_quarantines_past: u64,
    /// Account activations, passivations and snapshot streams of nodes' earlier incarnations
    /// (a crash ends a core and its counters).
    cache_and_snapshot_counts_past: (u64, u64, u64),
    logger: slog::Logger,
}

/// The two stores of a node, each with its own IO queue.
#[derive(Debug, Clone, Copy)]
enum StoreQueue {
    Log,
    State,
}

impl SimCluster {
    pub fn new(config: SimConfig) -> SimCluster {
        let node_ids: Vec<NodeId> = (1..=config.nodes).collect();
        let placement = Placement::new(node_ids.clone(), config.shards);
        let mut cluster = SimCluster {
            rng: SmallRng::seed_from_u64(config.seed),
            placement,
            now_ms: 0,
            nodes: BTreeMap::new(),
            events: BTreeMap::new(),
            sequence: 0,
            replies: BTreeMap::new(),
            calls_open: BTreeMap::new(),
            next_call: CallId(1),
            blocked: BTreeSet::new(),
            hostile_targets: BTreeSet::new(),
            recent: VecDeque::new(),
            transmits: 0,
            trace_hash: 0xcbf2_9ce4_8422_2325,
            trace: VecDeque::new(),
            trace_capacity: if config.verbose { usize::MAX } else { TRACE_LINES_MAX },
            events_handled: 0,
            corruptions: 0,
            durable_violation: None,
            state_damaged: BTreeSet::new(),
            damaged_quarantines_past: 0,
            cache_and_snapshot_counts_past: (0, 0, 0),
            voters_seen: BTreeMap::new(),
            logger: std::env::var("SETTLE_SIM_RAFT_LOG")
                .map_or_else(|_| slog::Logger::root(slog::Discard, slog::o!()), |_| slog::Logger::root(DebugDrain, slog::o!())),
            config,
        };
        for node in node_ids {
            let sim_node = SimNode {
                core: None,
                durable: BTreeMap::new(),
                store: MemStore::new(),
                incarnation: 0,
                log_free_at_ms: 0,
                state_free_at_ms: 0,
                paused: false,
                deferred: Vec::new(),
                tick_deferred: false,
                timers_stalled: false,
                clock_offset_ms: 0,
                fail_next_flush: false,
                durable_held: BTreeMap::new(),
                hostile_received: 0,
            };
            cluster.nodes.insert(node, sim_node);
            cluster.start(node);
        }
        cluster
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    pub fn rng(&mut self) -> &mut SmallRng {
        &mut self.rng
    }

    /// A hash of every event handled so far: equal for two runs of one seed.
    pub fn trace_hash(&self) -> u64 {
        self.trace_hash
    }

    pub fn events_handled(&self) -> u64 {
        self.events_handled
    }

    /// Stored records corrupted so far.
    pub fn corruptions(&self) -> u64 {
        self.corruptions
    }

    /// Notes a line for the failure report (faults, client outcomes).
    pub fn note(&mut self, line: String) {
        if self.trace.len() == self.trace_capacity {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("{:>8} ms  {line}", self.now_ms));
    }

    pub fn trace_lines(&self) -> Vec<String> {
        self.trace.iter().cloned().collect()
    }

    pub fn network_mut(&mut self) -> &mut NetworkSettings {
        &mut self.config.network
    }

    /// Hostile messages (malformed or replayed, see the `hostile` fault class) delivered to
    /// `node` since it last started.
    pub fn hostile_messages_sent_to(&self, node: NodeId) -> u64 {
        self.nodes.get(&node).map_or(0, |sim_node| sim_node.hostile_received)
    }

    /// Account activations and passivations, and snapshot streams started, over the cores
    /// running now (since each started).
    /// Account activations, passivations and snapshot streams started over the whole run (every
    /// incarnation of every node).
    pub fn cache_and_snapshot_counts(&self) -> (u64, u64, u64) {
        let mut counts = self.cache_and_snapshot_counts_past;
        for core in self.nodes.values().filter_map(|node| node.core.as_ref()) {
            let (activations, passivations, streams) = core_counts(core);
            counts = (counts.0 + activations, counts.1 + passivations, counts.2 + streams);
        }
        counts
    }

    pub fn core(&self, node: NodeId) -> Option<&NodeCore> {
        self.nodes[&node].core.as_ref()
    }

    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// How many times the node was started (a restart is a new incarnation).
    pub fn incarnation(&self, node: NodeId) -> u64 {
        self.nodes.get(&node).map_or(0, |sim_node| sim_node.incarnation)
    }

    pub fn is_up(&self, node: NodeId) -> bool {
        self.nodes[&node].core.is_some()
    }

    pub fn is_paused(&self, node: NodeId) -> bool {
        self.nodes[&node].paused
    }

    /// Nodes that are running and not paused.
    pub fn live_nodes(&self) -> Vec<NodeId> {
        self.nodes.iter().filter(|(_, node)| node.core.is_some() && !node.paused).map(|(id, _)| *id).collect()
    }

    /// Starts (or restarts) a node from its durable state.
    pub fn start(&mut self, node: NodeId) {
        let seed = self.rng.gen();
        let sim_node = self.nodes.get_mut(&node).expect("known node");
        assert!(sim_node.core.is_none(), "node {node} is already up");
        sim_node.incarnation += 1;
        sim_node.paused = false;
        sim_node.deferred.clear();
        sim_node.tick_deferred = false;
        sim_node.fail_next_flush = false;
        sim_node.hostile_received = 0;
        let incarnation = sim_node.incarnation;
        let store: Arc<dyn KvStore> = Arc::new(sim_node.store.clone());
        let per_shard = cache_bytes_per_shard(self.config.cache_bytes_max, &self.placement, node);
        let (recovered, quarantined) = match recover_node(&self.placement, node, sim_node.durable.clone(), &store, per_shard) {
            Ok(recovered) => recovered,
            Err(error) => panic!("node {node} cannot recover: {error}"),
        };
        let config = NodeConfig {
            node,
            placement: self.placement.clone(),
            raft: self.config.raft.clone(),
            limits: self.config.limits.clone(),
            cache_bytes_max: self.config.cache_bytes_max,
        };
        let mut core = NodeCore::new(config, recovered, quarantined.into_keys().collect(), store, incarnation, seed, &self.logger)
            .expect("core starts");
        core.plant_bug(self.config.planted);
        sim_node.core = Some(core);
        sim_node.log_free_at_ms = self.now_ms;
        sim_node.state_free_at_ms = self.now_ms;
        let offset = self.rng.gen_range(0..self.config.raft.tick_ms);
        self.schedule(self.now_ms + offset, Event::Tick { node, incarnation });
        self.note(format!("node {node} started (incarnation {incarnation})"));
    }

    /// A process crash (`kill -9`, a panic): what the node had handed to the operating system
    /// survives although it was never fsynced — a prefix of the rounds queued at its log store
    /// and of the batches written to its state store, each store cut at its own point (a torn
    /// last record fails its checksum and is dropped, so a cut falls between records). Then as
    /// `crash`.
    pub fn kill(&mut self, node: NodeId) {
        let incarnation = self.nodes[&node].incarnation;
        // The rounds in the order the IO actor writes them: first those whose completion a
        // pause held back (they were due earlier), then those still queued.
        let deferred = std::mem::take(&mut self.nodes.get_mut(&node).expect("known node").deferred);
        let mut inflight: Vec<(PersistRound, Option<u64>)> = deferred
            .into_iter()
            .filter_map(|event| match event {
                Event::PersistDone { incarnation: i, round, state_until, .. } if i == incarnation => Some((round, state_until)),
                _ => None,
            })
            .collect();
        let queued: Vec<(u64, u64)> = self
            .events
            .iter()
            .filter(|(_, event)| matches!(event, Event::PersistDone { node: n, incarnation: i, .. } if *n == node && *i == incarnation))
            .map(|(key, _)| *key)
            .collect();
        for key in queued {
            let Some(Event::PersistDone { round, state_until, .. }) = self.events.remove(&key) else {
                unreachable!("listed above");
            };
            inflight.push((round, state_until));
        }
        let kept_rounds = self.rng.gen_range(0..=inflight.len());
        let store = self.nodes[&node].store.clone();
        let mut keep_seq = self.rng.gen_range(store.persisted_seq()..=store.written_seq());
        let total = inflight.len();
        for (round, state_until) in inflight.into_iter().take(kept_rounds) {
            // The IO actor fsyncs the state store before it writes a round that needs it.
            keep_seq = keep_seq.max(state_until.unwrap_or(0));
            let sim_node = self.nodes.get_mut(&node).expect("known node");
            for write in &round.writes {
                sim_node.durable.entry(write.shard).or_default().apply_write(write);
            }
        }
        store.crash_keeping(keep_seq);
        self.note(format!("node {node} killed: {kept_rounds} of {total} queued log rounds and state batches to {keep_seq} survive"));
        self.check_durable(node);
        self.crash(node);
    }

    /// Kills a node as a power loss does: everything not yet durable is lost, its clients' calls
    /// fail (the connection dropped: the outcome is unknown).
    pub fn crash(&mut self, node: NodeId) {
        // Its peers' connections to it break (as TCP does when a process dies).
        let peers: Vec<NodeId> = self.nodes.keys().copied().filter(|peer| *peer != node).collect();
        for peer in peers {
            if let Some(core) = self.nodes.get_mut(&peer).and_then(|n| n.core.as_mut()) {
                core.peer_unreachable(node);
            }
        }
        let sim_node = self.nodes.get_mut(&node).expect("known node");
        if let Some(core) = sim_node.core.take() {
            self.damaged_quarantines_past += core.stats().replicas_quarantined_damaged;
            let (activations, passivations, streams) = core_counts(&core);
            let past = &mut self.cache_and_snapshot_counts_past;
            *past = (past.0 + activations, past.1 + passivations, past.2 + streams);
        }
        // Whatever the state store had not made durable is gone with the process.
        sim_node.store.crash();
        sim_node.paused = false;
        sim_node.deferred.clear();
        sim_node.tick_deferred = false;
        let calls: Vec<CallId> = self.calls_open.iter().filter(|(_, origin)| **origin == node).map(|(call, _)| *call).collect();
        for call in calls {
            self.calls_open.remove(&call);
            self.replies.insert(call, Reply::Unavailable);
        }
        self.note(format!("node {node} crashed"));
    }

    /// Stops delivering anything to a node until `resume` (a GC pause, SIGSTOP).
    pub fn pause(&mut self, node: NodeId) {
        if self.is_up(node) {
            self.nodes.get_mut(&node).expect("known node").paused = true;
            self.note(format!("node {node} paused"));
        }
    }

    pub fn resume(&mut self, node: NodeId) {
        let sim_node = self.nodes.get_mut(&node).expect("known node");
        if !sim_node.paused {
            return;
        }
        sim_node.paused = false;
        sim_node.tick_deferred = false;
        let deferred = std::mem::take(&mut sim_node.deferred);
        for event in deferred {
            self.schedule(self.now_ms, event);
        }
        self.note(format!("node {node} resumed"));
    }

    /// Moves a node's clock (the timestamps it stamps and its deadlines) by `delta_ms`.
    pub fn jump_clock(&mut self, node: NodeId, delta_ms: i64) {
        self.nodes.get_mut(&node).expect("known node").clock_offset_ms += delta_ms;
        self.note(format!("node {node} clock jumped {delta_ms} ms"));
    }

    /// Cancels every pending flush failure (healing).
    pub fn clear_flush_failures(&mut self) {
        for node in self.nodes.values_mut() {
            node.fail_next_flush = false;
        }
    }

    /// The node's next IO fails; a storage error stops the node.
    pub fn fail_next_flush(&mut self, node: NodeId) {
        self.nodes.get_mut(&node).expect("known node").fail_next_flush = true;
        self.note(format!("node {node}: next flush will fail"));
    }

    /// Whether another node has a corrupt (quarantined) replica, or one being rebuilt (a
    /// learner not yet promoted). The simulator corrupts one node at a time: two replicas of a
    /// shard lost together is a double fault the cluster is not built to survive.
    fn corrupt_elsewhere(&self, node: NodeId) -> bool {
        let rebuilding = self.nodes.iter().filter(|(id, _)| **id != node).any(|(id, other)| {
            other.core.as_ref().is_some_and(|core| {
                core.shard_status().iter().any(|shard| shard.role == settle_cluster::ShardRole::Quarantined)
                    || core.replicas().any(|replica| replica.applied_index() == 0 || replica.learners().contains(id))
            })
        });
        rebuilding
            || self
                .nodes
                .iter()
                .filter(|(id, _)| **id != node)
                .any(|(_, other)| other.durable.values().any(|durable| durable.corrupt.is_some()))
            || self.state_damaged.iter().any(|(damaged, _)| *damaged != node)
    }

    /// Damages one account record in a running node's state store (its first byte flipped, in
    /// what is written and what is durable): the node does not know until its ledger reads the
    /// record, then quarantines that replica while it and its other shards keep running.
    pub fn corrupt_state_record(&mut self, node: NodeId) {
        if self.corrupt_elsewhere(node) {
            return;
        }
        let Some(core) = self.nodes[&node].core.as_ref() else {
            return;
        };
        let shards: Vec<(ShardId, u32)> = core.replicas().map(|replica| (replica.shard(), replica.ledger().generation())).collect();
        if shards.is_empty() {
            return;
        }
        let (shard, generation) = shards[self.rng.gen_range(0..shards.len())];
        let (prefix, _) = keys::kind_range(shard, generation, keys::ACCOUNT);
        let pick = self.rng.gen_range(0..usize::MAX);
        if self.nodes[&node].store.corrupt_durable(&prefix, pick) {
            self.state_damaged.insert((node, shard));
            self.corruptions += 1;
            self.note(format!("node {node} shard {shard}: an account record damaged in the state store"));
        }
    }

    /// Whether a replica's state store was damaged (`corrupt_state_record`).
    pub fn is_damaged(&self, node: NodeId, shard: ShardId) -> bool {
        self.state_damaged.contains(&(node, shard))
    }

    /// The replicas a node runs whose state is sound (not damaged by the simulator): what the
    /// checkers hold to each other.
    pub fn sound_replicas(&self, node: NodeId) -> impl Iterator<Item = &ShardReplica> {
        let damaged = &self.state_damaged;
        self.nodes[&node].core.iter().flat_map(|core| core.replicas()).filter(move |replica| !damaged.contains(&(node, replica.shard())))
    }

    /// Replicas quarantined at run time because a stored record did not decode, over the run.
    pub fn damaged_quarantines(&self) -> u64 {
        self.damaged_quarantines_past
            + self.nodes.values().filter_map(|node| node.core.as_ref()).map(|core| core.stats().replicas_quarantined_damaged).sum::<u64>()
    }

    /// Flips bits in one stored record of a node (stopping it first): on restart the record
    /// fails its checksum and that replica is quarantined, never served.
    pub fn corrupt_record(&mut self, node: NodeId) {
        if self.corrupt_elsewhere(node) {
            return;
        }
        if self.is_up(node) {
            self.crash(node);
        }
        let candidates: Vec<ShardId> =
            self.nodes[&node].durable.iter().filter(|(_, durable)| !durable.is_empty()).map(|(shard, _)| *shard).collect();
        if candidates.is_empty() {
            return;
        }
        let shard = candidates[self.rng.gen_range(0..candidates.len())];
        let durable = self.nodes.get_mut(&node).expect("known node").durable.get_mut(&shard).expect("listed");
        durable.corrupt = Some("a stored record failed its checksum".to_string());
        self.corruptions += 1;
        self.note(format!("node {node} shard {shard}: a stored record corrupted"));
    }

    /// Starts or stops feeding `node` hostile input (`inject_hostile`).
    /// Stops (or restarts) a node's timers: no raft ticks, so a leader neither sends heartbeats
    /// nor notices it lost its quorum, while it keeps answering what reaches it.
    pub fn stall_timers(&mut self, node: NodeId, stalled: bool) {
        let sim_node = self.nodes.get_mut(&node).expect("known node");
        if sim_node.timers_stalled != stalled {
            sim_node.timers_stalled = stalled;
            self.note(format!("node {node} timers {}", if stalled { "stalled" } else { "running" }));
        }
    }

    pub fn set_hostile(&mut self, node: NodeId, hostile: bool) {
        if hostile {
            self.hostile_targets.insert(node);
            self.note(format!("node {node} receives hostile input"));
        } else {
            self.hostile_targets.remove(&node);
        }
    }

    /// One round of hostile input for every target: frames that are merely malformed (a
    /// sender that is the node itself or not a member, shards out of range, raft bytes that
    /// do not parse, raft messages for another node, credits and decisions that cannot be
    /// right for their shard, impossible amounts) or real frames replayed to another node or
    /// again. Never a well-formed lie (a forged decision, say): that is a lying member, which
    /// authentication keeps out and this fault does not model. Nodes must drop all of it.
    pub fn inject_hostile(&mut self) {
        let targets: Vec<NodeId> = self.hostile_targets.iter().copied().filter(|node| self.is_up(*node)).collect();
        for target in targets {
            let count = self.rng.gen_range(1..=3);
            for _ in 0..count {
                let Some((from, message)) = self.hostile_message(target) else {
                    continue;
                };
                let at = self.now_ms + self.rng.gen_range(1..=5);
                self.schedule(at, Event::Hostile { from, to: target, messages: vec![message] });
            }
        }
    }

    fn hostile_message(&mut self, target: NodeId) -> Option<(NodeId, PeerMessage)> {
        if self.recent.is_empty() {
            return None;
        }
        let (sender, _, original) = self.recent[self.rng.gen_range(0..self.recent.len())].clone();
        let shards = self.placement.shard_count();
        let members: Vec<NodeId> = self.node_ids().into_iter().filter(|node| *node != target).collect();
        let member = members[self.rng.gen_range(0..members.len())];
        let message = match self.rng.gen_range(0..8) {
            // A real frame replayed, to this node, from its real sender.
            0 | 1 if sender != target => return Some((sender, original)),
            0 | 1 => return None,
            // Claims to come from the node itself, or from a node that is not a member.
            2 => return Some((target, original)),
            3 => return Some((9_999, original)),
            // Shard out of range.
            4 => match original {
                PeerMessage::Raft { message, .. } => PeerMessage::Raft { shard: shards + 3, message },
                PeerMessage::Credits { credits, hops, fence, .. } => PeerMessage::Credits { shard: shards + 1, credits, hops, fence },
                PeerMessage::Decisions { decisions, hops, fence, .. } => {
                    PeerMessage::Decisions { shard: shards + 2, decisions, hops, fence }
                }
                _ => PeerMessage::LeaderHint { shard: shards, leader: member },
            },
            // Raft bytes that do not parse, for a shard this node hosts.
            5 => {
                let length = self.rng.gen_range(1..64);
                let bytes = (0..length).map(|_| self.rng.gen::<u8>()).collect();
                PeerMessage::Raft { shard: self.rng.gen_range(0..shards), message: bytes }
            }
            // Credits and decisions that cannot be right for the shard they name.
            6 => match original {
                PeerMessage::Credits { shard, mut credits, hops, fence } if !credits.is_empty() => {
                    match self.rng.gen_range(0..3) {
                        0 => credits[0].amount = -credits[0].amount.abs() - 1,
                        1 => credits[0].payer_shard = shard,
                        _ => return Some((member, PeerMessage::Credits { shard: (shard + 1) % shards, credits, hops, fence })),
                    }
                    PeerMessage::Credits { shard, credits, hops, fence }
                }
                PeerMessage::Decisions { shard, mut decisions, hops, fence } if !decisions.is_empty() => {
                    decisions[0].body.amount = 0;
                    PeerMessage::Decisions { shard, decisions, hops, fence }
                }
                _ => return None,
            },
            // A real raft message delivered to a node it was not addressed to.
            _ => match original {
                PeerMessage::Raft { shard, message } => return Some((sender, PeerMessage::Raft { shard, message })),
                _ => return None,
            },
        };
        Some((member, message))
    }

    /// Cuts the link from `from` to `to` (one direction).
    pub fn block(&mut self, from: NodeId, to: NodeId) {
        self.blocked.insert((from, to));
        self.note(format!("link {from} -> {to} cut"));
    }

    /// Isolates a node from every other in both directions.
    pub fn isolate(&mut self, node: NodeId) {
        for other in self.node_ids() {
            if other != node {
                self.blocked.insert((node, other));
                self.blocked.insert((other, node));
            }
        }
        self.note(format!("node {node} isolated"));
    }

    /// Removes every cut link, except those of a node whose timers are stalled: that fault
    /// (a deposed leader that does not know it) lasts until its own end.
    pub fn heal_network(&mut self) {
        self.blocked.clear();
        self.note("network healed".to_string());
        let stalled: Vec<NodeId> = self.nodes.iter().filter(|(_, node)| node.timers_stalled).map(|(id, _)| *id).collect();
        for node in stalled {
            self.isolate(node);
        }
    }

    /// Submits a client request to a node; the reply shows up in `take_reply(call)`.
    pub fn submit(&mut self, node: NodeId, request: Request, timeout_ms: u64) -> CallId {
        let call = self.next_call;
        self.next_call = CallId(call.0 + 1);
        let sim_node = self.nodes.get_mut(&node).expect("known node");
        let Some(core) = sim_node.core.as_mut().filter(|_| !sim_node.paused) else {
            self.replies.insert(call, Reply::Unavailable);
            return call;
        };
        core.submit(call, request, timeout_ms);
        self.calls_open.insert(call, node);
        self.after_input(node);
        call
    }

    pub fn take_reply(&mut self, call: CallId) -> Option<Reply> {
        self.replies.remove(&call)
    }

    /// Whether `call` was submitted and has no reply yet.
    pub fn is_open(&self, call: CallId) -> bool {
        self.calls_open.contains_key(&call)
    }

    /// Runs events until `done` holds or `max_ms` of virtual time passed; true if `done` held.
    pub fn run_until(&mut self, max_ms: u64, mut done: impl FnMut(&SimCluster) -> bool) -> bool {
        let end = self.now_ms + max_ms;
        loop {
            if done(self) {
                return true;
            }
            let Some(next) = self.events.first_entry() else {
                self.now_ms = end;
                return done(self);
            };
            let (at, _) = *next.key();
            if at > end {
                self.now_ms = end;
                return done(self);
            }
            let (_, event) = next.remove_entry();
            self.now_ms = at;
            self.handle(event);
        }
    }

    /// Runs for `duration_ms` of virtual time.
    pub fn run_for(&mut self, duration_ms: u64) {
        self.run_until(duration_ms, |_| false);
    }

    /// Runs until a reply for `call` arrives (or `max_ms` passes) and returns it.
    pub fn wait(&mut self, call: CallId, max_ms: u64) -> Option<Reply> {
        self.run_until(max_ms, |cluster| cluster.replies.contains_key(&call));
        self.take_reply(call)
    }

    /// A node's clocks: the wall clock carries its offset (clock jumps), the monotonic one is
    /// the simulation's own time.
    fn node_now(&self, node: NodeId) -> Time {
        let offset = self.nodes[&node].clock_offset_ms;
        Time { wall_ms: self.now_ms.saturating_add_signed(offset), monotonic_ms: self.now_ms }
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.sequence += 1;
        self.events.insert((at, self.sequence), event);
    }

    fn mix(&mut self, value: u64) {
        self.trace_hash ^= value;
        self.trace_hash = self.trace_hash.wrapping_mul(0x0000_0100_0000_01b3);
    }

    fn handle(&mut self, event: Event) {
        self.events_handled += 1;
        let node = event.node();
        let sim_node = self.nodes.get_mut(&node).expect("known node");
        if sim_node.paused {
            let is_tick = matches!(event, Event::Tick { .. });
            if !(is_tick && sim_node.tick_deferred) {
                sim_node.tick_deferred |= is_tick;
                sim_node.deferred.push(event);
            }
            return;
        }
        self.mix(self.now_ms);
        match event {
            Event::Deliver { from, to, messages } => {
                self.mix(from * 31 + to);
                let Some(core) = self.nodes.get_mut(&to).and_then(|n| n.core.as_mut()) else {
                    return;
                };
                for message in messages {
                    core.receive(from, message);
                }
                self.after_input(to);
            }
            Event::Hostile { from, to, messages } => {
                self.mix(from * 37 + to);
                let sim_node = self.nodes.get_mut(&to).expect("known node");
                let Some(core) = sim_node.core.as_mut() else {
                    return;
                };
                sim_node.hostile_received += u64::try_from(messages.len()).expect("fits");
                for message in messages {
                    core.receive(from, message);
                }
                self.after_input(to);
            }
            Event::Tick { node, incarnation } => {
                let now = self.node_now(node);
                let sim_node = self.nodes.get_mut(&node).expect("known node");
                if sim_node.incarnation != incarnation {
                    return;
                }
                let stalled = sim_node.timers_stalled;
                let Some(core) = sim_node.core.as_mut() else {
                    return;
                };
                if !stalled {
                    core.tick(now);
                    self.after_input(node);
                }
                let next = self.now_ms + self.config.raft.tick_ms;
                self.schedule(next, Event::Tick { node, incarnation });
            }
            Event::PersistDone { node, incarnation, round, state_until } => {
                self.mix(round.id);
                if !self.io_done(node, incarnation) {
                    return;
                }
                let sim_node = self.nodes.get_mut(&node).expect("known node");
                if let Some(seq) = state_until {
                    sim_node.store.persist_until(seq);
                }
                for write in &round.writes {
                    sim_node.durable.entry(write.shard).or_default().apply_write(write);
                }
                sim_node.core.as_mut().expect("up").persisted(round.id);
                self.check_durable(node);
                self.after_input(node);
            }
            Event::DeleteRangeDone { node, incarnation, start, end } => {
                let sim_node = self.nodes.get_mut(&node).expect("known node");
                if sim_node.incarnation != incarnation || sim_node.core.is_none() {
                    return;
                }
                let store = sim_node.store.clone();
                let mut batch = WriteBatch::default();
                for (key, _) in store.scan(&start, &end, usize::MAX, false) {
                    batch.delete(key);
                }
                if !batch.is_empty() {
                    store.write(batch).expect("the memory store takes writes");
                }
            }
            Event::StatePersistDone { node, incarnation, marks, state_until } => {
                self.mix(state_until);
                if !self.io_done(node, incarnation) {
                    return;
                }
                let sim_node = self.nodes.get_mut(&node).expect("known node");
                sim_node.store.persist_until(state_until);
                sim_node.core.as_mut().expect("up").state_persisted(&marks);
                self.check_durable(node);
                self.after_input(node);
            }
        }
    }

    /// Whether an IO completion still applies: same incarnation, node up, flush not failing.
    fn io_done(&mut self, node: NodeId, incarnation: u64) -> bool {
        let sim_node = self.nodes.get_mut(&node).expect("known node");
        if sim_node.incarnation != incarnation || sim_node.core.is_none() {
            return false;
        }
        if sim_node.fail_next_flush {
            // A real node stops on a storage error (actors::io); nothing of this IO is durable.
            self.crash(node);
            self.note(format!("node {node} stopped: flush failed"));
            return false;
        }
        true
    }

    /// Polls a node after an input and carries out its effects.
    fn after_input(&mut self, node: NodeId) {
        let now = self.node_now(node);
        let sim_node = self.nodes.get_mut(&node).expect("known node");
        let incarnation = sim_node.incarnation;
        let store = sim_node.store.clone();
        let Some(core) = sim_node.core.as_mut() else {
            return;
        };
        core.advance_clock(now);
        core.poll();
        let effects = core.drain_effects();
        for effect in effects {
            match effect {
                Effect::Send { to, messages } => self.transmit(node, to, messages),
                Effect::Persist(round) => {
                    let at = self.io_completion(node, StoreQueue::Log);
                    let installs = round.writes.iter().any(|write| write.snapshot.is_some());
                    let state_until = installs.then(|| store.written_seq());
                    self.schedule(at, Event::PersistDone { node, incarnation, round, state_until });
                }
                Effect::PersistState { marks } => {
                    let at = self.io_completion(node, StoreQueue::State);
                    let state_until = store.written_seq();
                    self.schedule(at, Event::StatePersistDone { node, incarnation, marks, state_until });
                }
                Effect::DeleteRange { start, end } => {
                    // Deleting unused keys runs on a thread of its own, ordered with nothing:
                    // it happens a while later, whatever was written meanwhile.
                    let at = self.now_ms + self.rng.gen_range(0..=DELETE_RANGE_DELAY_MS_MAX);
                    self.schedule(at, Event::DeleteRangeDone { node, incarnation, start, end });
                }
                Effect::Reply { call, reply } => {
                    self.calls_open.remove(&call);
                    self.mix(call.0);
                    self.replies.insert(call, reply);
                }
                // The simulated network reaches every node already; nothing joins it.
                Effect::Registry(_) => {}
            }
        }
        self.check_committed_durable(node);
    }

    fn io_completion(&mut self, node: NodeId, queue: StoreQueue) -> u64 {
        let network = &self.config.network;
        let mut latency = self.rng.gen_range(network.io_latency_ms_min..=network.io_latency_ms_max);
        if matches!(queue, StoreQueue::State) && self.rng.gen_range(0..1_000_000) < network.io_stall_per_million {
            latency += self.rng.gen_range(0..=network.io_stall_ms_max);
        }
        let sim_node = self.nodes.get_mut(&node).expect("known node");
        let free_at = match queue {
            StoreQueue::Log => &mut sim_node.log_free_at_ms,
            StoreQueue::State => &mut sim_node.state_free_at_ms,
        };
        let at = (*free_at).max(self.now_ms) + latency;
        *free_at = at;
        at
    }

    /// The first broken invariant of durable state, if any.
    pub fn durable_violation(&self) -> Option<&Violation> {
        self.durable_violation.as_ref()
    }

    fn durable_violated(&mut self, violation: Violation) {
        if self.durable_violation.is_none() {
            self.note(format!("violation: {}: {}", violation.checker, violation.message));
            self.durable_violation = Some(violation);
        }
    }

    /// The applied index a node's state store holds durably for a shard.
    fn durable_applied(&self, node: NodeId, shard: ShardId) -> u64 {
        let store = &self.nodes[&node].store;
        // A mark that does not decode is the corruption fault's business (recovery quarantines).
        Ledger::stored_mark(shard, |key| store.durable_get(key)).map_or(0, |mark| mark.index)
    }

    /// Checked after every IO completion: no shard's durable log is compacted past the state
    /// the node's state store holds durably (`compaction_behind_state`): else a crash now leaves
    /// entries that are in neither.
    fn check_durable(&mut self, node: NodeId) {
        let mut broken = None;
        let mut held = BTreeMap::new();
        for (shard, durable) in &self.nodes[&node].durable {
            let applied = self.durable_applied(node, *shard);
            held.insert(*shard, durable.last_index().max(applied));
            if durable.compacted_index > applied && broken.is_none() {
                broken = Some(format!(
                    "node {node} shard {shard}: the durable log is compacted to {} but the durable state is at {applied}",
                    durable.compacted_index
                ));
            }
        }
        self.nodes.get_mut(&node).expect("known node").durable_held = held;
        if let Some(message) = broken {
            self.durable_violated(Violation::new("compaction_behind_state", message));
        }
    }

    /// Checked after every input a node handles: no leader's commit index is ahead of what a
    /// quorum of the shard's voters holds durably (in its log or its applied state) —
    /// `committed_on_quorum`: what a node acknowledges survives any minority's power loss.
    fn check_committed_durable(&mut self, node: NodeId) {
        let Some(core) = self.nodes[&node].core.as_ref() else {
            return;
        };
        let mut broken = None;
        let mut seen = Vec::new();
        // A leader's commit index is counted over its own voters (its configuration, which
        // replica moves change): over the voters it has now, or the ones it had before its last
        // membership change (the entry that changed them was committed by those). A follower
        // only learns a commit index a leader reached.
        for replica in core.replicas().filter(|replica| replica.is_leader()) {
            let shard = replica.shard();
            let commit = replica.commit_index();
            let voters = replica.voters();
            let previous = match self.voters_seen.get(&(node, shard)) {
                Some((current, _)) if *current != voters => current.clone(),
                Some((_, previous)) => previous.clone(),
                None => voters.clone(),
            };
            // Membership changes apply on each replica when it applies them, so the
            // configuration that committed an entry may be one the leader has not applied yet
            // (or has left behind): the leader's voters now and before its last change, every
            // live replica's, and the one a removed node recorded when it applied its removal.
            let mut configs = vec![voters.clone(), previous.clone()];
            for other in self.nodes.values() {
                if let Some(replica) = other.core.as_ref().and_then(|core| core.replicas().find(|replica| replica.shard() == shard)) {
                    configs.push(replica.voters());
                }
            }
            for (holder, other) in &self.nodes {
                let mark = Ledger::stored_mark(shard, |key| other.store.durable_get(key));
                if let Some(mark) = mark.ok().filter(|mark| settle_cluster::recovery::removed_here(&mark.conf_state, *holder)) {
                    configs.extend(settle_cluster::recovery::stored_voters(&mark.conf_state));
                }
            }
            let quorum_holds = |replicas: &[NodeId]| {
                if replicas.is_empty() {
                    return 0;
                }
                let mut held: Vec<u64> =
                    replicas.iter().map(|holder| self.nodes[holder].durable_held.get(&shard).copied().unwrap_or(0)).collect();
                held.sort_unstable_by(|a, b| b.cmp(a));
                held[replicas.len() / 2]
            };
            let holds = quorum_holds(&voters);
            if configs.iter().all(|config| commit > quorum_holds(config)) {
                let held: Vec<(NodeId, u64)> =
                    voters.iter().map(|holder| (*holder, self.nodes[holder].durable_held.get(&shard).copied().unwrap_or(0))).collect();
                broken = Some(format!(
                    "node {node} shard {shard}: commit index {commit} but a quorum of voters {voters:?} holds only up to {holds} durably ({held:?}), and no other configuration's quorum does ({configs:?})"
                ));
                break;
            }
            seen.push((shard, voters, previous));
        }
        for (shard, voters, previous) in seen {
            self.voters_seen.insert((node, shard), (voters, previous));
        }
        if let Some(message) = broken {
            self.durable_violated(Violation::new("committed_on_quorum", message));
        }
    }

    fn transmit(&mut self, from: NodeId, to: NodeId, messages: Vec<PeerMessage>) {
        // Keep a sample of real traffic for the hostile fault to replay (every fourth frame's
        // first message; no RNG draw, so runs without that fault are unchanged).
        self.transmits += 1;
        if self.transmits.is_multiple_of(4) {
            if let Some(first) = messages.first() {
                if self.recent.len() >= RECENT_MESSAGES_MAX {
                    self.recent.pop_front();
                }
                self.recent.push_back((from, to, first.clone()));
            }
        }
        if self.blocked.contains(&(from, to)) {
            return;
        }
        let network = self.config.network.clone();
        if self.rng.gen_range(0..1_000_000) < network.drop_per_million {
            return;
        }
        let duplicate = self.rng.gen_range(0..1_000_000) < network.duplicate_per_million;
        let latency = self.rng.gen_range(network.latency_ms_min..=network.latency_ms_max);
        if duplicate {
            let again = self.rng.gen_range(network.latency_ms_min..=network.latency_ms_max * 4);
            self.schedule(self.now_ms + again, Event::Deliver { from, to, messages: messages.clone() });
        }
        self.schedule(self.now_ms + latency, Event::Deliver { from, to, messages });
    }
}

/// Debugging aid: raft's own log on stderr when SETTLE_SIM_RAFT_LOG is set.
struct DebugDrain;

impl slog::Drain for DebugDrain {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, record: &slog::Record<'_>, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        struct Collect(String);
        impl slog::Serializer for Collect {
            fn emit_arguments(&mut self, key: slog::Key, value: &std::fmt::Arguments<'_>) -> slog::Result {
                self.0.push_str(&format!(" {key}={value}"));
                Ok(())
            }
        }
        let mut collect = Collect(String::new());
        let _ = slog::KV::serialize(values, record, &mut collect);
        let _ = slog::KV::serialize(&record.kv(), record, &mut collect);
        eprintln!("{} {}{}", record.level(), record.msg(), collect.0);
        Ok(())
    }
}

/// One core's account activations, passivations and snapshot streams started.
fn core_counts(core: &NodeCore) -> (u64, u64, u64) {
    let (mut activations, mut passivations) = (0, 0);
    for shard in core.shard_status() {
        activations += shard.cache.activations;
        passivations += shard.cache.passivations;
    }
    (activations, passivations, core.stats().snapshot_streams_started)
}
