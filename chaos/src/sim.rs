//! `SimCluster`: every node's `NodeCore` in one thread, on a virtual clock, with a seeded RNG
//! choosing message latencies, drops, duplicates and IO completion times. Storage is the
//! reference `DurableShard`: a persist round becomes durable only when its IO completes, so a
//! crash loses exactly the rounds still in flight. Same seed and same calls, same run.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use settle_cluster::ids::{NodeId, ShardId};
use settle_cluster::message::{PeerMessage, Reply, Request};
use settle_cluster::placement::Placement;
use settle_cluster::recovery::{recover_shard, DurableShard};
use settle_cluster::replica::{Checkpoint, RaftSettings};
use settle_cluster::{CallId, CoreLimits, Effect, NodeConfig, NodeCore, PersistRound};
use std::collections::{BTreeMap, BTreeSet};

/// How the simulated network and disks behave.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub nodes: u64,
    pub shards: u32,
    pub seed: u64,
    pub latency_ms_min: u64,
    pub latency_ms_max: u64,
    /// Probability (per million) that a frame is dropped / delivered twice.
    pub drop_per_million: u32,
    pub duplicate_per_million: u32,
    pub io_latency_ms_min: u64,
    pub io_latency_ms_max: u64,
    pub limits: CoreLimits,
}

impl SimConfig {
    pub fn new(nodes: u64, shards: u32, seed: u64) -> SimConfig {
        SimConfig {
            nodes,
            shards,
            seed,
            latency_ms_min: 1,
            latency_ms_max: 5,
            drop_per_million: 0,
            duplicate_per_million: 0,
            io_latency_ms_min: 1,
            io_latency_ms_max: 3,
            limits: CoreLimits::default(),
        }
    }
}

#[derive(Debug)]
enum Event {
    Deliver { from: NodeId, to: NodeId, messages: Vec<PeerMessage> },
    Tick { node: NodeId, incarnation: u64 },
    PersistDone { node: NodeId, incarnation: u64, round: PersistRound },
    CheckpointDone { node: NodeId, incarnation: u64, checkpoint: Checkpoint },
}

struct SimNode {
    core: Option<NodeCore>,
    durable: BTreeMap<ShardId, DurableShard>,
    incarnation: u64,
    /// When this node's disk finishes the IO queued so far (IO completes in order).
    io_free_at_ms: u64,
}

pub struct SimCluster {
    config: SimConfig,
    placement: Placement,
    now_ms: u64,
    rng: SmallRng,
    nodes: BTreeMap<NodeId, SimNode>,
    events: BTreeMap<(u64, u64), Event>,
    sequence: u64,
    replies: BTreeMap<CallId, (NodeId, Reply)>,
    calls_open: BTreeMap<CallId, NodeId>,
    next_call: CallId,
    /// Directed links that drop everything (from, to).
    blocked: BTreeSet<(NodeId, NodeId)>,
    trace_hash: u64,
    logger: slog::Logger,
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
            next_call: 1,
            blocked: BTreeSet::new(),
            trace_hash: 0xcbf2_9ce4_8422_2325,
            logger: slog::Logger::root(slog::Discard, slog::o!()),
            config,
        };
        for node in node_ids {
            cluster.nodes.insert(node, SimNode { core: None, durable: BTreeMap::new(), incarnation: 0, io_free_at_ms: 0 });
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

    /// A hash of every event handled so far: equal for two runs of one seed.
    pub fn trace_hash(&self) -> u64 {
        self.trace_hash
    }

    pub fn core(&self, node: NodeId) -> Option<&NodeCore> {
        self.nodes[&node].core.as_ref()
    }

    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    pub fn is_up(&self, node: NodeId) -> bool {
        self.nodes[&node].core.is_some()
    }

    /// Starts (or restarts) a node from its durable state.
    pub fn start(&mut self, node: NodeId) {
        let seed = self.rng.gen();
        let sim_node = self.nodes.get_mut(&node).expect("known node");
        assert!(sim_node.core.is_none(), "node {node} is already up");
        sim_node.incarnation += 1;
        let incarnation = sim_node.incarnation;
        let mut recovered = BTreeMap::new();
        for (shard, durable) in &sim_node.durable {
            let state = recover_shard(&self.placement, *shard, durable.clone()).expect("durable state recovers");
            if let Some(state) = state {
                recovered.insert(*shard, state);
            }
        }
        let config = NodeConfig {
            node,
            placement: self.placement.clone(),
            raft: RaftSettings::default(),
            limits: self.config.limits.clone(),
        };
        let core = NodeCore::new(config, recovered, incarnation, seed, &self.logger).expect("core starts");
        sim_node.core = Some(core);
        sim_node.io_free_at_ms = self.now_ms;
        let offset = self.rng.gen_range(0..RaftSettings::default().tick_ms);
        self.schedule(self.now_ms + offset, Event::Tick { node, incarnation });
    }

    /// Kills a node: everything not yet durable is lost, in-flight messages to it are dropped.
    pub fn crash(&mut self, node: NodeId) {
        let sim_node = self.nodes.get_mut(&node).expect("known node");
        sim_node.core = None;
        let calls: Vec<CallId> =
            self.calls_open.iter().filter(|(_, origin)| **origin == node).map(|(call, _)| *call).collect();
        for call in calls {
            self.calls_open.remove(&call);
        }
    }

    /// Cuts the link from `from` to `to` (one direction).
    pub fn block(&mut self, from: NodeId, to: NodeId) {
        self.blocked.insert((from, to));
    }

    /// Isolates a node from every other in both directions.
    pub fn isolate(&mut self, node: NodeId) {
        for other in self.node_ids() {
            if other != node {
                self.blocked.insert((node, other));
                self.blocked.insert((other, node));
            }
        }
    }

    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Submits a client request to a node; the reply shows up in `reply(call)`.
    pub fn submit(&mut self, node: NodeId, request: Request, timeout_ms: u64) -> CallId {
        let call = self.next_call;
        self.next_call += 1;
        let deadline = self.now_ms + timeout_ms;
        let Some(core) = self.nodes.get_mut(&node).and_then(|n| n.core.as_mut()) else {
            self.replies.insert(call, (node, Reply::Unavailable));
            return call;
        };
        core.submit(call, request, deadline);
        self.calls_open.insert(call, node);
        self.after_input(node);
        call
    }

    pub fn reply(&self, call: CallId) -> Option<&Reply> {
        self.replies.get(&call).map(|(_, reply)| reply)
    }

    pub fn take_reply(&mut self, call: CallId) -> Option<Reply> {
        self.replies.remove(&call).map(|(_, reply)| reply)
    }

    /// Runs events until `done` holds or `max_ms` of virtual time passed; true if `done` held.
    pub fn run_until(&mut self, max_ms: u64, mut done: impl FnMut(&SimCluster) -> bool) -> bool {
        let end = self.now_ms + max_ms;
        loop {
            if done(self) {
                return true;
            }
            let Some((&(at, sequence), _)) = self.events.iter().next() else {
                return done(self);
            };
            if at > end {
                self.now_ms = end;
                return done(self);
            }
            let event = self.events.remove(&(at, sequence)).expect("peeked");
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

    fn schedule(&mut self, at: u64, event: Event) {
        self.sequence += 1;
        self.events.insert((at, self.sequence), event);
    }

    fn mix(&mut self, value: u64) {
        self.trace_hash ^= value;
        self.trace_hash = self.trace_hash.wrapping_mul(0x0000_0100_0000_01b3);
    }

    fn handle(&mut self, event: Event) {
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
            Event::Tick { node, incarnation } => {
                let sim_node = self.nodes.get_mut(&node).expect("known node");
                if sim_node.incarnation != incarnation {
                    return;
                }
                let Some(core) = sim_node.core.as_mut() else {
                    return;
                };
                core.tick(self.now_ms);
                self.after_input(node);
                let next = self.now_ms + RaftSettings::default().tick_ms;
                self.schedule(next, Event::Tick { node, incarnation });
            }
            Event::PersistDone { node, incarnation, round } => {
                self.mix(round.id);
                let sim_node = self.nodes.get_mut(&node).expect("known node");
                if sim_node.incarnation != incarnation || sim_node.core.is_none() {
                    return;
                }
                for write in &round.writes {
                    sim_node.durable.entry(write.shard).or_default().apply_write(write);
                }
                sim_node.core.as_mut().expect("up").persisted(round.id);
                self.after_input(node);
            }
            Event::CheckpointDone { node, incarnation, checkpoint } => {
                let sim_node = self.nodes.get_mut(&node).expect("known node");
                if sim_node.incarnation != incarnation || sim_node.core.is_none() {
                    return;
                }
                sim_node.durable.entry(checkpoint.shard).or_default().apply_checkpoint(&checkpoint);
                sim_node.core.as_mut().expect("up").checkpointed(checkpoint.shard, checkpoint.index);
                self.after_input(node);
            }
        }
    }

    /// Polls a node after an input and carries out its effects.
    fn after_input(&mut self, node: NodeId) {
        let sim_node = self.nodes.get_mut(&node).expect("known node");
        let incarnation = sim_node.incarnation;
        let Some(core) = sim_node.core.as_mut() else {
            return;
        };
        core.poll();
        let effects = core.drain_effects();
        for effect in effects {
            match effect {
                Effect::Send { to, messages } => self.transmit(node, to, messages),
                Effect::Persist(round) => {
                    let at = self.io_completion(node);
                    self.schedule(at, Event::PersistDone { node, incarnation, round });
                }
                Effect::Checkpoint(checkpoint) => {
                    let at = self.io_completion(node);
                    self.schedule(at, Event::CheckpointDone { node, incarnation, checkpoint });
                }
                Effect::Reply { call, reply } => {
                    self.calls_open.remove(&call);
                    self.mix(call);
                    self.replies.insert(call, (node, reply));
                }
            }
        }
    }

    fn io_completion(&mut self, node: NodeId) -> u64 {
        let latency = self.rng.gen_range(self.config.io_latency_ms_min..=self.config.io_latency_ms_max);
        let sim_node = self.nodes.get_mut(&node).expect("known node");
        let at = sim_node.io_free_at_ms.max(self.now_ms) + latency;
        sim_node.io_free_at_ms = at;
        at
    }

    fn transmit(&mut self, from: NodeId, to: NodeId, messages: Vec<PeerMessage>) {
        if self.blocked.contains(&(from, to)) {
            return;
        }
        if self.rng.gen_range(0..1_000_000) < self.config.drop_per_million {
            return;
        }
        let duplicate = self.rng.gen_range(0..1_000_000) < self.config.duplicate_per_million;
        let latency = self.rng.gen_range(self.config.latency_ms_min..=self.config.latency_ms_max);
        if duplicate {
            let again = self.rng.gen_range(self.config.latency_ms_min..=self.config.latency_ms_max * 4);
            self.schedule(self.now_ms + again, Event::Deliver { from, to, messages: messages.clone() });
        }
        self.schedule(self.now_ms + latency, Event::Deliver { from, to, messages });
    }
}
