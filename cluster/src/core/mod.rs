//! `NodeCore`: everything one node does, as a deterministic state machine. It owns the node's
//! shard replicas and
//! - routes client requests to shard leaders (`calls.rs`: the origin side, split into legs),
//! - serves legs where it leads the shard (`tasks.rs`: proposals, ReadIndex reads, waiters),
//! - drives cross-shard transfers (`coordinator.rs`: credits, decisions, re-drive).
//!
//! Inputs are method calls (`tick`, `receive`, `submit`, `persisted`, `checkpointed`) and
//! `poll` turns pending work into `Effect`s the driver carries out: messages to send, rounds to
//! make durable, checkpoints to store, replies to clients. No IO, no clock, no threads: time is
//! the `Time` passed to `tick`/`advance_clock` (a wall clock only stamps entries; every timer
//! and deadline runs on the monotonic one), randomness a seeded RNG.

mod calls;
mod coordinator;
mod stats;
mod tasks;

use crate::ids::{NodeId, ShardId};
use crate::ledger::Ledger;
use crate::message::{PeerMessage, Proposer, Reply, Request};
use crate::placement::Placement;
use crate::planted::{planted, PlantedBug};
use crate::replica::{Checkpoint, RaftSettings, ShardReplica, ShardWrite};
use crate::storage::ShardStorage;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

pub use calls::CallId;
pub use stats::{Buckets, CoreStats, ShardStatus};

/// The two clocks the driver reads: the wall clock stamps log entries (what clients see as
/// `created_at`); the monotonic clock drives every timer and deadline, so a wall-clock jump
/// cannot stall re-drives or expire calls early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time {
    pub wall_ms: u64,
    pub monotonic_ms: u64,
}

/// Why a planned operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("this node has no replica of the shard")]
    NoReplica,
    #[error("this node does not lead the shard")]
    NotLeader { leader: Option<NodeId> },
    #[error("that node has no replica of the shard")]
    NotAReplica,
}

/// Bounds and periods of the core, all in config with units last.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CoreLimits {
    /// A leg waits this long for the leader it was sent to before it is sent again.
    pub leg_attempt_timeout_ms: u64,
    /// A coordinator re-sends a pending transfer's credit request this often.
    pub redrive_interval_ms: u64,
    /// Past this age a pending transfer's credit request asks the payee to refuse (prevent).
    pub prevent_after_ms: u64,
    /// Checkpoint a shard after this many applied entries...
    pub checkpoint_entries: u64,
    /// ...or after this long with anything applied.
    pub checkpoint_interval_ms: u64,
    /// Entries kept in the log behind a checkpoint, so a briefly lagging follower needs no snapshot.
    pub compaction_lag_entries: u64,
    /// How often a leader checks whether to hand its shard back to the preferred leader.
    pub leader_balance_interval_ms: u64,
    /// Client calls in flight on this node; more are refused with `Reply::Overloaded`.
    pub calls_inflight_max: usize,
    /// Transfers in flight on this node (the items of all calls).
    pub transfers_inflight_max: usize,
    /// Persist rounds handed to the driver and not yet durable; at the cap no new Ready is taken.
    pub rounds_inflight_max: usize,
}

impl Default for CoreLimits {
    fn default() -> Self {
        CoreLimits {
            leg_attempt_timeout_ms: 2_000,
            redrive_interval_ms: 1_000,
            prevent_after_ms: 30_000,
            checkpoint_entries: 20_000,
            checkpoint_interval_ms: 60_000,
            compaction_lag_entries: 1_000,
            leader_balance_interval_ms: 3_000,
            calls_inflight_max: 20_000,
            transfers_inflight_max: 400_000,
            rounds_inflight_max: 32,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node: NodeId,
    pub placement: Placement,
    pub raft: RaftSettings,
    pub limits: CoreLimits,
    /// Test-only (inert without the `planted-bugs` feature).
    pub planted: PlantedBug,
}

/// One shard's durable state as recovered by the driver at start (absent for a fresh shard).
pub struct RecoveredShard {
    pub storage: ShardStorage,
    pub ledger: Ledger,
    pub applied_index: u64,
}

/// A batch of writes to make durable, in order. The driver reports it with `persisted(id)`.
#[derive(Debug, Clone, Default)]
pub struct PersistRound {
    pub id: u64,
    pub writes: Vec<ShardWrite>,
}

/// What the driver must do.
#[derive(Debug)]
pub enum Effect {
    /// Messages for one node, in order (one frame on the wire).
    Send {
        to: NodeId,
        messages: Vec<PeerMessage>,
    },
    Persist(PersistRound),
    Checkpoint(Checkpoint),
    Reply {
        call: CallId,
        reply: Reply,
    },
}

pub struct NodeCore {
    config: NodeConfig,
    proposer: Proposer,
    /// Wall clock (entry timestamps only), never going back.
    now_ms: u64,
    /// Monotonic clock for timers and deadlines.
    clock_ms: u64,
    rng: SmallRng,
    replicas: BTreeMap<ShardId, ShardReplica>,
    effects: Vec<Effect>,
    outgoing: BTreeMap<NodeId, Vec<PeerMessage>>,
    next_round: u64,
    /// Rounds handed to the driver and not yet durable: per shard the Ready number and the
    /// messages that may only leave once it is durable.
    rounds_inflight: BTreeMap<u64, Vec<(ShardId, u64, Vec<Message>)>>,
    /// Log compactions to pass to the log store with the next round.
    compactions: BTreeMap<ShardId, (u64, u64)>,
    checkpoints_inflight: BTreeSet<ShardId>,
    last_checkpoint_ms: BTreeMap<ShardId, u64>,
    /// Shards this node should campaign for at the first tick (fresh bootstrap, preferred leader).
    campaign_at_start: BTreeSet<ShardId>,
    /// Replicas of this node kept out because their stored records failed a checksum.
    quarantined: BTreeSet<ShardId>,
    /// Snapshot messages sent, to report to raft at the next tick.
    snapshots_sent: Vec<(ShardId, NodeId)>,
    /// The term in which this node last saw itself leading each shard.
    leading: BTreeMap<ShardId, u64>,
    /// Shards touched by an input since they were last polled: only these can have work.
    dirty: BTreeSet<ShardId>,
    /// Draining for maintenance: hand every led shard away and refuse leader transfers here.
    draining: bool,
    /// Peers that said they are draining: no shard is handed to them.
    peers_draining: BTreeSet<NodeId>,
    last_balance_ms: u64,
    calls: calls::Calls,
    tasks: tasks::Tasks,
    coordinator: coordinator::Coordinator,
    stats: CoreStats,
}

impl NodeCore {
    /// Builds the core from recovered shards (a shard missing from `recovered` starts fresh;
    /// a `quarantined` one is not run here at all). `incarnation` must differ between starts of
    /// the same node; `seed` drives election timers.
    pub fn new(
        config: NodeConfig,
        mut recovered: BTreeMap<ShardId, RecoveredShard>,
        quarantined: BTreeSet<ShardId>,
        incarnation: u64,
        seed: u64,
        logger: &slog::Logger,
    ) -> Result<NodeCore, raft::Error> {
        let node = config.node;
        let shard_count = config.placement.shard_count();
        let mut replicas = BTreeMap::new();
        let mut campaign_at_start = BTreeSet::new();
        for shard in config.placement.shards_on(node) {
            if quarantined.contains(&shard) {
                continue;
            }
            let replica = match recovered.remove(&shard) {
                Some(state) => {
                    ShardReplica::new(node, shard, state.storage, state.ledger, state.applied_index, &config.raft, config.planted, logger)?
                }
                None => {
                    if config.placement.preferred_leader(shard) == node {
                        campaign_at_start.insert(shard);
                    }
                    let voters = config.placement.replicas(shard);
                    let storage = ShardStorage::bootstrap(voters);
                    let ledger = Ledger::new(shard, shard_count);
                    ShardReplica::new(node, shard, storage, ledger, 0, &config.raft, config.planted, logger)?
                }
            };
            replicas.insert(shard, replica);
        }
        let mut core = NodeCore {
            proposer: Proposer { node, incarnation },
            now_ms: 0,
            clock_ms: 0,
            rng: SmallRng::seed_from_u64(seed),
            replicas,
            effects: Vec::new(),
            outgoing: BTreeMap::new(),
            next_round: 1,
            rounds_inflight: BTreeMap::new(),
            compactions: BTreeMap::new(),
            checkpoints_inflight: BTreeSet::new(),
            last_checkpoint_ms: BTreeMap::new(),
            campaign_at_start,
            quarantined,
            snapshots_sent: Vec::new(),
            leading: BTreeMap::new(),
            dirty: BTreeSet::new(),
            draining: false,
            peers_draining: BTreeSet::new(),
            last_balance_ms: 0,
            calls: calls::Calls::starting_at(incarnation),
            tasks: tasks::Tasks::default(),
            coordinator: coordinator::Coordinator::default(),
            stats: CoreStats::default(),
            config,
        };
        let shards: Vec<ShardId> = core.replicas.keys().copied().collect();
        for shard in shards {
            core.redraw_election_timeout(shard);
        }
        Ok(core)
    }

    pub fn node(&self) -> NodeId {
        self.config.node
    }

    pub fn replicas(&self) -> impl Iterator<Item = &ShardReplica> {
        self.replicas.values()
    }

    /// Calls waiting for replies on this node (origin side).
    pub fn calls_inflight(&self) -> usize {
        self.calls.len()
    }

    pub fn rounds_inflight(&self) -> usize {
        self.rounds_inflight.len()
    }

    /// Moves the clocks forward without a raft tick, so entries proposed between ticks carry a
    /// fresh timestamp. Neither clock goes back.
    pub fn advance_clock(&mut self, time: Time) {
        self.now_ms = self.now_ms.max(time.wall_ms);
        self.clock_ms = self.clock_ms.max(time.monotonic_ms);
    }

    /// Advances time by one tick: raft timers, retries, deadlines, re-drive, checkpoints.
    pub fn tick(&mut self, time: Time) {
        self.advance_clock(time);
        let campaign: Vec<ShardId> = std::mem::take(&mut self.campaign_at_start).into_iter().collect();
        for shard in campaign {
            if let Some(replica) = self.replicas.get_mut(&shard) {
                // A failed campaign only means an election later; nothing to handle.
                let _ = replica.campaign();
            }
        }
        for (shard, peer) in std::mem::take(&mut self.snapshots_sent) {
            if let Some(replica) = self.replicas.get_mut(&shard) {
                replica.report_snapshot_sent(peer);
            }
        }
        let shards: Vec<ShardId> = self.replicas.keys().copied().collect();
        for shard in &shards {
            self.replicas.get_mut(shard).expect("listed").tick();
            self.redraw_election_timeout(*shard);
        }
        self.dirty.extend(shards);
        self.calls_tick();
        self.tasks_tick();
        self.coordinator_tick();
        self.checkpoint_tick();
        self.balance_tick();
        self.drain_tick();
    }

    /// Asks the local leader of `shard` to hand leadership to `to` (a planned operation). Errors
    /// name who leads instead.
    pub fn transfer_leader(&mut self, shard: ShardId, to: NodeId) -> Result<(), AdminError> {
        let node = self.config.node;
        let Some(replica) = self.replicas.get_mut(&shard) else {
            return Err(AdminError::NoReplica);
        };
        if !replica.is_leader() {
            return Err(AdminError::NotLeader { leader: replica.leader() });
        }
        if to == node {
            return Ok(());
        }
        if !self.config.placement.replicas(shard).contains(&to) {
            return Err(AdminError::NotAReplica);
        }
        replica.transfer_leader(to);
        self.dirty.insert(shard);
        Ok(())
    }

    /// Draining: this node hands every shard it leads to a caught-up replica (at every tick)
    /// and refuses leadership handed to it, until undrained. For maintenance and rolling
    /// restarts without a write pause.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
        if draining {
            self.drain_tick();
        }
    }

    pub fn draining(&self) -> bool {
        self.draining
    }

    /// A peer announced whether it is draining.
    pub fn set_peer_draining(&mut self, peer: NodeId, draining: bool) {
        if draining {
            self.peers_draining.insert(peer);
        } else {
            self.peers_draining.remove(&peer);
        }
    }

    /// Shards this node leads right now.
    pub fn led_shards(&self) -> usize {
        self.replicas.values().filter(|replica| replica.is_leader()).count()
    }

    fn drain_tick(&mut self) {
        if !self.draining {
            return;
        }
        let node = self.config.node;
        for (shard, replica) in self.replicas.iter_mut() {
            if !replica.is_leader() {
                continue;
            }
            let candidates = self.config.placement.replicas(*shard);
            if let Some(peer) = caught_up_target(replica, candidates, node, &self.peers_draining) {
                replica.transfer_leader(peer);
                self.dirty.insert(*shard);
            }
        }
    }

    /// The transport lost its connection to `peer` (the process died or the link broke):
    /// replicas that follow it start an election sooner (see `ShardReplica::leader_unreachable`).
    pub fn peer_unreachable(&mut self, peer: NodeId) {
        for (shard, replica) in self.replicas.iter_mut() {
            if replica.leader() == Some(peer) {
                replica.leader_unreachable();
                self.dirty.insert(*shard);
            }
        }
    }

    /// Marks a shard as having work for the next poll.
    pub(super) fn touch(&mut self, shard: ShardId) {
        self.dirty.insert(shard);
    }

    /// A message from another node.
    pub fn receive(&mut self, from: NodeId, message: PeerMessage) {
        match message {
            PeerMessage::Raft { shard, message } => {
                let Ok(raft_message) = Message::parse_from_bytes(&message) else {
                    return;
                };
                if let Some(replica) = self.replicas.get_mut(&shard) {
                    if self.draining && raft_message.get_msg_type() == MessageType::MsgTimeoutNow {
                        // A draining node does not take leadership handed to it.
                        return;
                    }
                    // Raft refuses messages from unknown peers or stale terms; nothing to do then.
                    let _ = replica.step(raft_message);
                    self.redraw_election_timeout(shard);
                    self.dirty.insert(shard);
                }
            }
            PeerMessage::Leg { leg, shard, timeout_ms, request, request_id: _ } => {
                let deadline_ms = self.clock_ms.saturating_add(timeout_ms);
                self.accept_leg(tasks::Origin::Remote(from, leg), shard, deadline_ms, request);
            }
            PeerMessage::LegReply { leg, reply } => self.leg_replied(leg, Some(from), reply),
            PeerMessage::Credits { shard, credits, hops } => self.credits_received(from, shard, credits, hops),
            PeerMessage::Decisions { shard, decisions, hops } => self.decisions_received(from, shard, decisions, hops),
            PeerMessage::LeaderHint { shard, leader } => self.learn_leader(shard, leader),
            PeerMessage::NodeInfo { .. } => {}
        }
    }

    /// A client request arriving at this node; answered later by `Effect::Reply` with `call`,
    /// at the latest `timeout_ms` after now (then `Unavailable` for what is missing).
    pub fn submit(&mut self, call: CallId, request: Request, timeout_ms: u64) {
        self.submit_traced(call, request, timeout_ms, None);
    }

    /// `submit` with the client's request id, carried to every node a leg goes to.
    pub fn submit_traced(&mut self, call: CallId, request: Request, timeout_ms: u64, request_id: Option<String>) {
        let deadline_ms = self.clock_ms.saturating_add(timeout_ms);
        self.start_call(call, request, deadline_ms, request_id);
    }

    /// The driver made round `id` durable (and every earlier one).
    pub fn persisted(&mut self, id: u64) {
        let done = match id.checked_add(1) {
            Some(next) => {
                let later = self.rounds_inflight.split_off(&next);
                std::mem::replace(&mut self.rounds_inflight, later)
            }
            None => std::mem::take(&mut self.rounds_inflight),
        };
        for (shard, number, messages) in done.into_values().flatten() {
            self.release(shard, number, messages);
            // Raft may have more to do now (a leader counts its own vote once durable).
            self.dirty.insert(shard);
        }
    }

    /// The state store holds `shard`'s checkpoint at `index`: compact the log behind it.
    pub fn checkpointed(&mut self, shard: ShardId, index: u64) {
        self.checkpoints_inflight.remove(&shard);
        let lag = self.config.limits.compaction_lag_entries;
        let Some(replica) = self.replicas.get_mut(&shard) else {
            return;
        };
        if let Some(compact_to) = replica.checkpointed(index, lag) {
            self.compactions.insert(shard, compact_to);
        }
    }

    /// Turns pending work into effects. Call after every batch of inputs.
    pub fn poll(&mut self) {
        // Applying can queue more local work (a credit for a shard this node also leads), so
        // go round a few times; anything left waits for the next poll.
        for _ in 0..4 {
            let progressed = self.poll_once();
            if !progressed {
                break;
            }
        }
        self.flush_outgoing();
    }

    /// Takes the effects produced so far.
    pub fn drain_effects(&mut self) -> Vec<Effect> {
        self.flush_outgoing();
        std::mem::take(&mut self.effects)
    }

    fn poll_once(&mut self) -> bool {
        self.coordinator_flush();
        let shards: Vec<ShardId> = std::mem::take(&mut self.dirty).into_iter().filter(|shard| self.replicas.contains_key(shard)).collect();
        for shard in &shards {
            self.flush_shard_proposals(*shard);
            self.flush_shard_reads(*shard);
            let replica = self.replicas.get_mut(shard).expect("listed");
            replica.serve_snapshot_request();
        }
        let mut round = Vec::new();
        let mut writes = Vec::new();
        let io_backlogged = self.rounds_inflight.len() >= self.config.limits.rounds_inflight_max;
        if io_backlogged {
            // No round may start: take no Ready and keep the compactions for a later round, and
            // look at these shards again once IO catches up.
            self.dirty.extend(shards.iter().copied());
        } else {
            for shard in &shards {
                let replica = self.replicas.get_mut(shard).expect("listed");
                let Some(output) = replica.handle_ready(self.proposer, self.clock_ms) else {
                    continue;
                };
                for latency in &output.apply_latencies_ms {
                    self.stats.propose_apply_ms.observe(*latency);
                }
                if output.installed_snapshot {
                    self.stats.snapshots_installed += 1;
                }
                self.send_raft(*shard, output.messages);
                if output.installed_snapshot {
                    self.shard_reset(*shard);
                }
                self.read_states(*shard, output.read_states);
                self.applied(*shard, output.applied);
                if !output.write.is_empty() {
                    writes.push(output.write);
                }
                round.push((*shard, output.number, output.persisted_messages));
            }
            for (shard, compact_to) in std::mem::take(&mut self.compactions) {
                match writes.iter_mut().find(|write| write.shard == shard) {
                    Some(write) => write.compact_to = Some(compact_to),
                    None => writes.push(ShardWrite { shard, compact_to: Some(compact_to), ..ShardWrite::default() }),
                }
            }
        }
        let progressed = !round.is_empty() || !writes.is_empty();
        if progressed {
            self.emit_round(round, writes);
        }
        for shard in &shards {
            self.serve_applied_reads(*shard);
            self.check_leadership(*shard);
            if self.replicas[shard].has_ready() {
                self.dirty.insert(*shard);
            }
        }
        progressed
    }

    fn emit_round(&mut self, round: Vec<(ShardId, u64, Vec<Message>)>, writes: Vec<ShardWrite>) {
        let id = self.next_round;
        self.next_round += 1;
        if writes.is_empty() && self.rounds_inflight.is_empty() {
            // Nothing to make durable and nothing ahead of it: durable already.
            for (shard, number, messages) in round {
                self.release(shard, number, messages);
            }
            return;
        }
        if planted(self.config.planted, PlantedBug::AckBeforeFlush) {
            for (shard, number, messages) in round {
                self.release(shard, number, messages);
            }
            self.effects.push(Effect::Persist(PersistRound { id, writes }));
            return;
        }
        self.rounds_inflight.insert(id, round);
        self.effects.push(Effect::Persist(PersistRound { id, writes }));
    }

    /// Ready `number` of `shard` is durable: raft may count it, and the messages that waited
    /// for it leave.
    fn release(&mut self, shard: ShardId, number: u64, messages: Vec<Message>) {
        self.replicas.get_mut(&shard).expect("a round holds shards of this node").on_persisted(number);
        self.send_raft(shard, messages);
    }

    fn send_raft(&mut self, shard: ShardId, messages: Vec<Message>) {
        for message in messages {
            let to = message.to;
            if message.get_msg_type() == MessageType::MsgSnapshot {
                self.snapshots_sent.push((shard, to));
                self.stats.snapshots_sent += 1;
            }
            let bytes = message.write_to_bytes().expect("in-memory protobuf encoding cannot fail");
            self.send(to, PeerMessage::Raft { shard, message: bytes });
        }
    }

    fn send(&mut self, to: NodeId, message: PeerMessage) {
        assert_ne!(to, self.config.node, "a node never sends to itself");
        self.outgoing.entry(to).or_default().push(message);
    }

    fn flush_outgoing(&mut self) {
        for (to, messages) in std::mem::take(&mut self.outgoing) {
            if !messages.is_empty() {
                self.effects.push(Effect::Send { to, messages });
            }
        }
    }

    /// Re-draws raft's election timeout from the core's seeded RNG whenever raft reset it.
    fn redraw_election_timeout(&mut self, shard: ShardId) {
        let election = self.config.raft.election_ticks;
        let replica = self.replicas.get_mut(&shard).expect("known shard");
        if replica.election_timer_reset() {
            let ticks = self.rng.gen_range(election..election * 2);
            replica.set_election_timeout(ticks);
        }
    }

    /// Notices leadership gained or lost since the last poll and cleans up after a loss.
    fn check_leadership(&mut self, shard: ShardId) {
        let replica = &self.replicas[&shard];
        let now_leading = if replica.is_leader() { Some(replica.term()) } else { None };
        let before = self.leading.get(&shard).copied();
        if before == now_leading {
            return;
        }
        match now_leading {
            Some(term) => {
                self.leading.insert(shard, term);
            }
            None => {
                self.leading.remove(&shard);
            }
        }
        if before.is_some() {
            self.shard_reset(shard);
        }
    }

    /// This node stopped leading `shard` (or its ledger was replaced): every waiter on it is
    /// told to look for the new leader, and the coordinator forgets what it was driving.
    fn shard_reset(&mut self, shard: ShardId) {
        let hint = self.replicas.get(&shard).and_then(|replica| replica.leader());
        let hint = hint.filter(|leader| *leader != self.config.node);
        self.fail_shard_tasks(shard, hint);
        self.coordinator.forget_shard(shard);
    }

    fn checkpoint_tick(&mut self) {
        let limits = &self.config.limits;
        let mut due = Vec::new();
        for (shard, replica) in &self.replicas {
            if self.checkpoints_inflight.contains(shard) {
                continue;
            }
            let behind = replica.applied_index().saturating_sub(replica.checkpoint_index());
            let last = self.last_checkpoint_ms.get(shard).copied().unwrap_or(0);
            let stale = behind > 0 && self.clock_ms.saturating_sub(last) >= limits.checkpoint_interval_ms;
            if behind >= limits.checkpoint_entries || stale {
                due.push(*shard);
            }
        }
        for shard in due {
            let checkpoint = self.replicas[&shard].checkpoint();
            self.checkpoints_inflight.insert(shard);
            self.last_checkpoint_ms.insert(shard, self.clock_ms);
            self.effects.push(Effect::Checkpoint(checkpoint));
        }
    }

    /// Hands shards back to their preferred leader once it has caught up, so leaders stay
    /// spread evenly after a failover.
    fn balance_tick(&mut self) {
        if self.clock_ms.saturating_sub(self.last_balance_ms) < self.config.limits.leader_balance_interval_ms {
            return;
        }
        self.last_balance_ms = self.clock_ms;
        if self.draining {
            // Draining hands shards away (drain_tick), never back to the preferred leader.
            return;
        }
        let node = self.config.node;
        for (shard, replica) in self.replicas.iter_mut() {
            if !replica.leader_ready() {
                continue;
            }
            let preferred = self.config.placement.preferred_leader(*shard);
            if let Some(peer) = caught_up_target(replica, [preferred], node, &self.peers_draining) {
                replica.transfer_leader(peer);
            }
        }
    }
}

/// The first of `candidates` that can take over the shard `replica` leads right now: another
/// node, not draining, that holds every entry of the leader's log.
fn caught_up_target(
    replica: &ShardReplica,
    candidates: impl IntoIterator<Item = NodeId>,
    node: NodeId,
    peers_draining: &BTreeSet<NodeId>,
) -> Option<NodeId> {
    let last = replica.last_index();
    candidates.into_iter().find(|peer| *peer != node && !peers_draining.contains(peer) && replica.peer_matched(*peer) == Some(last))
}
