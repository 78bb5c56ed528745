//! `NodeCore`: everything one node does, as a deterministic state machine. It is a thin
//! router and scheduler over the node's shard peers:
//! - `peer.rs`: `ShardPeer`, one per hosted shard — the replica and everything waiting on it
//!   (tasks, proposal tags, ReadIndex requests, the shard's part of the cross-shard protocol);
//! - `router.rs`: the origin side of client calls (split into legs, routed to shard leaders,
//!   retried, assembled);
//! - `operation/`: one module per operation (account, transfer, reserve, credit, finalize,
//!   read), each owning its leg validation, routing, proposals and after-apply handling.
//!
//! Inputs are method calls (`tick`, `receive`, `submit`, `persisted`, `checkpointed`) and
//! `poll` turns pending work into `Effect`s the driver carries out: messages to send, rounds to
//! make durable, checkpoints to store, replies to clients. No IO, no clock, no threads: time is
//! the `Time` passed to `tick`/`advance_clock` (a wall clock only stamps entries; every timer
//! and deadline runs on the monotonic one), randomness a seeded RNG.

mod membership;
mod operation;
mod peer;
mod router;
mod snapshot;
mod stats;
mod validate;

use crate::ids::{CallId, NodeId, ShardId};
use crate::ledger::{CreditCmd, FinalizeCmd, Ledger};
use crate::log::Proposer;
use crate::message::{PeerMessage, Reply, Request};
use crate::placement::Placement;
use crate::planted::{planted, PlantedBug};
use crate::replica::{RaftSettings, ShardReplica, ShardWrite};
use crate::storage::ShardStorage;
use crate::store::Key;
use crate::time::Time;
use peer::{Origin, ShardPeer};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

pub use stats::{Buckets, CoreStats, ShardRole, ShardStatus};

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
    /// Make the state store durable (its incremental checkpoint: one fsync of its journal) once
    /// a shard applied this many entries since the last time...
    pub checkpoint_entries: u64,
    /// ...or after this long with anything applied. The log is compacted behind it.
    pub checkpoint_interval_ms: u64,
    /// Bytes of snapshot records this node serves to lagging followers per second.
    pub snapshot_bytes_per_sec: u64,
    /// Entries kept in the log behind a checkpoint, so a briefly lagging follower needs no snapshot...
    pub compaction_lag_entries: u64,
    /// ...and at most this many bytes of them per shard (the log is held in memory).
    pub compaction_lag_bytes: u64,
    /// How often a leader checks whether to hand its shard back to the preferred leader.
    pub leader_balance_interval_ms: u64,
    /// Client calls in flight on this node; more are refused with `Reply::Overloaded`.
    pub calls_inflight_max: usize,
    /// Transfers in flight on this node (the items of all calls).
    pub transfers_inflight_max: usize,
    /// Persist rounds handed to the driver and not yet durable; at the cap no new Ready is taken.
    pub rounds_inflight_max: usize,
    /// Committed entry bytes one `poll` applies over all shards; the rest waits for the next
    /// poll (`has_more_work`), so one driver-loop iteration stays short and heartbeats, IO
    /// completions and new calls get their turn in between.
    pub apply_bytes_per_poll_max: u64,
}

impl Default for CoreLimits {
    fn default() -> Self {
        CoreLimits {
            leg_attempt_timeout_ms: 2_000,
            redrive_interval_ms: 1_000,
            prevent_after_ms: 30_000,
            checkpoint_entries: 20_000,
            checkpoint_interval_ms: 5_000,
            snapshot_bytes_per_sec: 32 << 20,
            compaction_lag_entries: 1_000,
            compaction_lag_bytes: 256 << 10,
            leader_balance_interval_ms: 3_000,
            calls_inflight_max: 20_000,
            transfers_inflight_max: 400_000,
            rounds_inflight_max: 32,
            apply_bytes_per_poll_max: 128 << 10,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node: NodeId,
    pub placement: Placement,
    pub raft: RaftSettings,
    pub limits: CoreLimits,
    /// The node's account cache budget in bytes (`cache_mb`), split over its shards.
    pub cache_bytes_max: usize,
}

/// The default account cache budget of a node: 256 MiB.
pub const CACHE_BYTES_DEFAULT: usize = 256 << 20;

/// How a node's account cache budget (`cache_mb`) is split: evenly over the shards it hosts.
pub fn cache_bytes_per_shard(node_cache_bytes: usize, placement: &Placement, node: NodeId) -> usize {
    node_cache_bytes / placement.shards_on(node).len().max(1)
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
    /// Make the state store durable (fsync), then report `state_persisted(marks)`: each shard's
    /// state at its mark is then durable and its log may be compacted behind it.
    PersistState {
        marks: Vec<(ShardId, u64)>,
    },
    /// Delete a range of the state store that no shard uses any more (an old generation after
    /// a snapshot install, or a stale staging area), in the background.
    DeleteRange {
        start: Key,
        end: Key,
    },
    Reply {
        call: CallId,
        reply: Reply,
    },
    /// The node registry changed: link to its nodes and keep it on disk.
    Registry(crate::placement::NodeRegistry),
}

/// What the peers and operations produced for the node to route: replies to the legs' origins
/// and the cross-shard protocol's messages, by the shard they are for. Drained by the node
/// after every step, so peers never call into the router or each other.
#[derive(Default)]
struct Outbox {
    replies: Vec<(Origin, Reply)>,
    /// Credit requests, by payee shard.
    credits: BTreeMap<ShardId, Vec<CreditCmd>>,
    /// Decisions, by payer shard (each with the body it was made for).
    decisions: BTreeMap<ShardId, Vec<FinalizeCmd>>,
    /// The backup fence epoch the shards that produced the credits (decisions) for a shard had
    /// applied: the receiving shard applies it before acting on them (`ledger/fence.rs`).
    credit_fences: BTreeMap<ShardId, u64>,
    decision_fences: BTreeMap<ShardId, u64>,
    /// Shards whose presumed leader stayed silent: the router guesses another replica.
    silent_shards: Vec<ShardId>,
}

impl Outbox {
    /// A credit request for `payee_shard` from a payer shard whose fence epoch is `fence`.
    fn credit(&mut self, payee_shard: ShardId, credit: CreditCmd, fence: u64) {
        self.credits.entry(payee_shard).or_default().push(credit);
        raise(&mut self.credit_fences, payee_shard, fence);
    }

    /// A decision for `payer_shard` from a payee shard whose fence epoch is `fence`.
    fn decision(&mut self, payer_shard: ShardId, decision: FinalizeCmd, fence: u64) {
        self.decisions.entry(payer_shard).or_default().push(decision);
        raise(&mut self.decision_fences, payer_shard, fence);
    }
}

/// Raises `fences[shard]` to at least `fence`.
fn raise(fences: &mut BTreeMap<ShardId, u64>, shard: ShardId, fence: u64) {
    let entry = fences.entry(shard).or_default();
    *entry = (*entry).max(fence);
}

/// What an operation may read and where it leaves its output, lent by the node for one step.
struct Ctx<'a> {
    node: NodeId,
    time: Time,
    placement: &'a Placement,
    limits: &'a CoreLimits,
    planted: PlantedBug,
    stats: &'a mut CoreStats,
    out: &'a mut Outbox,
}

/// Persist rounds handed to the driver and what waits for them.
#[derive(Default)]
struct Rounds {
    next: u64,
    /// Rounds not yet durable: per shard the Ready number and the messages that may only leave
    /// once it is durable.
    inflight: BTreeMap<u64, Vec<(ShardId, u64, Vec<Message>)>>,
    /// Log compactions to pass to the log store with the next round.
    compactions: BTreeMap<ShardId, (u64, u64)>,
}

/// Leadership placement: draining for maintenance and handing shards back to their preferred
/// leader.
#[derive(Default)]
struct Leadership {
    /// Shards this node should campaign for at the first tick (fresh bootstrap, preferred leader).
    campaign_at_start: BTreeSet<ShardId>,
    /// Draining for maintenance: hand every led shard away and refuse leader transfers here.
    draining: bool,
    /// Peers that said they are draining: no shard is handed to them.
    peers_draining: BTreeSet<NodeId>,
    last_balance_ms: u64,
}

/// What the current `poll` has applied, and where the next one starts after a cut.
#[derive(Debug, Default)]
struct PollBudget {
    applied_bytes: u64,
    /// This poll stopped at `CoreLimits::apply_bytes_per_poll_max`.
    cut: bool,
    /// The shard the next poll starts from.
    next_shard: ShardId,
}

pub struct NodeCore {
    config: NodeConfig,
    proposer: Proposer,
    time: Time,
    rng: SmallRng,
    peers: BTreeMap<ShardId, ShardPeer>,
    /// Replicas of this node kept out because their stored records failed a checksum.
    quarantined: BTreeSet<ShardId>,
    router: router::Router,
    outbox: Outbox,
    effects: Vec<Effect>,
    outgoing: BTreeMap<NodeId, Vec<PeerMessage>>,
    rounds: Rounds,
    /// Whether a state persist is in flight, and when the last one was asked for.
    state_persist_inflight: bool,
    last_state_persist_ms: u64,
    /// Bytes of snapshot chunks this node may serve now (refilled every tick).
    snapshot_budget_bytes: u64,
    snapshot_fetches_waiting: std::collections::VecDeque<(NodeId, ShardId, u64, Option<Key>)>,
    /// Shards touched by an input since they were last polled: only these can have work.
    dirty: BTreeSet<ShardId>,
    poll_budget: PollBudget,
    leadership: Leadership,
    stats: CoreStats,
    /// Test-only (inert without the `planted-bugs` feature).
    planted: PlantedBug,
    /// Shards' members this node learned, and log regions to drop (`membership.rs`).
    membership: membership::Membership,
    /// The node's state store and logger, for replicas started while it runs.
    store: std::sync::Arc<dyn crate::store::KvStore>,
    logger: slog::Logger,
}

impl NodeCore {
    /// Builds the core from recovered shards (a shard missing from `recovered` starts fresh on
    /// `store`; a `quarantined` one is not run here at all). `incarnation` must differ between
    /// starts of the same node; `seed` drives election timers.
    pub fn new(
        config: NodeConfig,
        mut recovered: BTreeMap<ShardId, RecoveredShard>,
        quarantined: BTreeSet<ShardId>,
        store: std::sync::Arc<dyn crate::store::KvStore>,
        incarnation: u64,
        seed: u64,
        logger: &slog::Logger,
    ) -> Result<NodeCore, raft::Error> {
        let node = config.node;
        let shard_count = config.placement.shard_count();
        let mut peers = BTreeMap::new();
        let mut leadership = Leadership::default();
        // The bootstrap placement's shards (fresh ones start here) and every shard recovered
        // from the stores (a replica added since bootstrap).
        let mut hosted: BTreeSet<ShardId> = config.placement.shards_on(node).into_iter().collect();
        hosted.extend(recovered.keys().copied());
        for shard in hosted {
            if quarantined.contains(&shard) {
                continue;
            }
            let state = match recovered.remove(&shard) {
                Some(state) => state,
                None => {
                    let budget = cache_bytes_per_shard(config.cache_bytes_max, &config.placement, node);
                    let (ledger, mark) = Ledger::open(shard, shard_count, store.clone(), budget)
                        .map_err(|error| raft::Error::Store(raft::StorageError::Other(Box::new(error))))?;
                    if crate::recovery::removed_here(&mark.conf_state, node) {
                        // A tombstone: the shard was moved away from this node.
                        continue;
                    }
                    let storage = ShardStorage::bootstrap(config.placement.replicas(shard));
                    RecoveredShard { storage, ledger, applied_index: 0 }
                }
            };
            let fresh = state.applied_index == 0 && state.storage.last_index() == 0 && state.storage.hard_state().term == 0;
            if fresh && config.placement.preferred_leader(shard) == node {
                leadership.campaign_at_start.insert(shard);
            }
            let replica = ShardReplica::new(node, shard, state.storage, state.ledger, state.applied_index, &config.raft, logger)?;
            peers.insert(shard, ShardPeer::new(replica));
        }
        let mut core = NodeCore {
            proposer: Proposer { node, incarnation },
            time: Time::default(),
            rng: SmallRng::seed_from_u64(seed),
            peers,
            quarantined,
            router: router::Router::starting_at(incarnation),
            outbox: Outbox::default(),
            effects: Vec::new(),
            outgoing: BTreeMap::new(),
            rounds: Rounds { next: 1, ..Rounds::default() },
            state_persist_inflight: false,
            last_state_persist_ms: 0,
            snapshot_budget_bytes: 0,
            snapshot_fetches_waiting: std::collections::VecDeque::new(),
            dirty: BTreeSet::new(),
            poll_budget: PollBudget::default(),
            leadership,
            stats: CoreStats::default(),
            planted: PlantedBug::None,
            membership: membership::Membership::default(),
            store,
            logger: logger.clone(),
            config,
        };
        let shards: Vec<ShardId> = core.peers.keys().copied().collect();
        for shard in shards {
            core.redraw_election_timeout(shard);
        }
        core.learn_from_tombstones();
        Ok(core)
    }

    /// Test-only: plants a known bug in this node and its replicas (inert without the
    /// `planted-bugs` feature), so the simulator can show its checkers find it.
    pub fn plant_bug(&mut self, bug: PlantedBug) {
        self.planted = bug;
        for peer in self.peers.values_mut() {
            peer.replica.plant_bug(bug);
        }
    }

    /// The bootstrap layout (shard count, bootstrap members).
    pub fn placement(&self) -> &Placement {
        &self.config.placement
    }

    pub fn node(&self) -> NodeId {
        self.config.node
    }

    /// The account cache budget of this node, over all its shards.
    pub fn cache_bytes_max(&self) -> usize {
        self.config.cache_bytes_max
    }

    pub fn replicas(&self) -> impl Iterator<Item = &ShardReplica> {
        self.peers.values().map(|peer| &peer.replica)
    }

    /// Calls waiting for replies on this node (origin side).
    pub fn calls_inflight(&self) -> usize {
        self.router.len()
    }

    pub fn rounds_inflight(&self) -> usize {
        self.rounds.inflight.len()
    }

    /// Moves the clocks forward without a raft tick, so entries proposed between ticks carry a
    /// fresh timestamp. Neither clock goes back.
    pub fn advance_clock(&mut self, time: Time) {
        self.time = self.time.advanced_to(time);
    }

    /// Lends the parts an operation needs for one step.
    fn ctx(&mut self) -> (Ctx<'_>, &mut BTreeMap<ShardId, ShardPeer>) {
        let ctx = Ctx {
            node: self.config.node,
            time: self.time,
            placement: &self.config.placement,
            limits: &self.config.limits,
            planted: self.planted,
            stats: &mut self.stats,
            out: &mut self.outbox,
        };
        (ctx, &mut self.peers)
    }

    /// Advances time by one tick: raft timers, retries, deadlines, re-drive, checkpoints.
    pub fn tick(&mut self, time: Time) {
        self.advance_clock(time);
        let campaign: Vec<ShardId> = std::mem::take(&mut self.leadership.campaign_at_start).into_iter().collect();
        for shard in campaign {
            if let Some(peer) = self.peers.get_mut(&shard) {
                // A failed campaign only means an election later; nothing to handle.
                let _ = peer.replica.campaign();
            }
        }
        let shards: Vec<ShardId> = self.peers.keys().copied().collect();
        for shard in &shards {
            self.peers.get_mut(shard).expect("listed").replica.tick();
            self.redraw_election_timeout(*shard);
        }
        self.dirty.extend(shards);
        self.calls_tick();
        let (mut ctx, peers) = self.ctx();
        for peer in peers.values_mut() {
            peer.expire_tasks(&mut ctx);
            operation::transfer::redrive(peer, &mut ctx);
            operation::holds::expire_due(peer, &mut ctx);
            operation::backup::tick(peer, &mut ctx);
        }
        self.deliver_outbox();
        self.snapshot_tick();
        self.checkpoint_tick();
        self.balance_tick();
        self.drain_tick();
        self.announce_tick();
        self.leaving_tick();
    }

    /// Asks the local leader of `shard` to hand leadership to `to` (a planned operation). Errors
    /// name who leads instead.
    pub fn transfer_leader(&mut self, shard: ShardId, to: NodeId) -> Result<(), AdminError> {
        let node = self.config.node;
        let voters = self.voters_of(shard);
        let Some(peer) = self.peers.get_mut(&shard) else {
            return Err(AdminError::NoReplica);
        };
        if !peer.replica.is_leader() {
            return Err(AdminError::NotLeader { leader: peer.replica.leader() });
        }
        if to == node {
            return Ok(());
        }
        if !voters.contains(&to) {
            return Err(AdminError::NotAReplica);
        }
        peer.replica.transfer_leader(to);
        self.dirty.insert(shard);
        Ok(())
    }

    /// Draining: this node hands every shard it leads to a caught-up replica (at every tick)
    /// and refuses leadership handed to it, until undrained. For maintenance and rolling
    /// restarts without a write pause.
    pub fn set_draining(&mut self, draining: bool) {
        self.leadership.draining = draining;
        if draining {
            self.drain_tick();
        }
    }

    pub fn draining(&self) -> bool {
        self.leadership.draining
    }

    /// A peer announced whether it is draining.
    pub fn set_peer_draining(&mut self, peer: NodeId, draining: bool) {
        if draining {
            self.leadership.peers_draining.insert(peer);
        } else {
            self.leadership.peers_draining.remove(&peer);
        }
    }

    /// Shards this node leads right now.
    pub fn led_shards(&self) -> usize {
        self.peers.values().filter(|peer| peer.replica.is_leader()).count()
    }

    fn drain_tick(&mut self) {
        if !self.leadership.draining {
            return;
        }
        let node = self.config.node;
        for (shard, peer) in self.peers.iter_mut() {
            if !peer.replica.is_leader() {
                continue;
            }
            let candidates = peer.replica.voters();
            if let Some(target) = caught_up_target(&peer.replica, candidates, node, &self.leadership.peers_draining) {
                peer.replica.transfer_leader(target);
                self.dirty.insert(*shard);
            }
        }
    }

    /// The transport lost its connection to `peer` (the process died or the link broke):
    /// replicas that follow it start an election sooner (see `ShardReplica::leader_unreachable`).
    pub fn peer_unreachable(&mut self, node: NodeId) {
        for (shard, peer) in self.peers.iter_mut() {
            if peer.replica.leader() == Some(node) {
                peer.replica.leader_unreachable();
                self.dirty.insert(*shard);
            }
        }
    }

    /// A message from another node. Checked first (`validate.rs`): what is not well-formed
    /// for this cluster and this node is dropped and counted, never acted on.
    pub fn receive(&mut self, from: NodeId, message: PeerMessage) {
        let checked = match self.check_peer_message(from, message) {
            Ok(checked) => checked,
            Err(reason) if validate::STALE_MEMBERSHIP.contains(&reason) => {
                *self.stats.peer_messages_stale.entry(reason).or_insert(0) += 1;
                return;
            }
            Err(reason) => {
                *self.stats.peer_messages_rejected.entry(reason).or_insert(0) += 1;
                return;
            }
        };
        let message = match checked {
            validate::Checked::Snapshot { shard, message, descriptor } => {
                self.snapshot_offered(from, shard, message, descriptor);
                return;
            }
            validate::Checked::Raft { shard, message } => {
                let Some(peer) = self.peers.get_mut(&shard) else {
                    // A replica this node hosts but does not run (quarantined).
                    return;
                };
                if self.leadership.draining && message.get_msg_type() == MessageType::MsgTimeoutNow {
                    // A draining node does not take leadership handed to it.
                    return;
                }
                // An acknowledgement of entries in this term (a response that only carries a higher
                // term, index 0, must reach raft: it is how a stale leader steps down).
                let acknowledges = message.get_msg_type() == MessageType::MsgAppendResponse
                    && !message.reject
                    && message.index > 0
                    && message.term == peer.replica.term();
                if acknowledges && peer.replica.acknowledges_before_addition(from, message.index) {
                    // From the replica that node had before the shard removed it: counting it
                    // would credit the new, empty one with entries it does not hold.
                    *self.stats.peer_messages_stale.entry("ack_before_addition").or_insert(0) += 1;
                    return;
                }
                // Raft refuses messages of stale terms; nothing to do then.
                let _ = peer.replica.step(message);
                self.redraw_election_timeout(shard);
                self.dirty.insert(shard);
                return;
            }
            validate::Checked::Other(message) => message,
        };
        match message {
            PeerMessage::Raft { .. } => {}
            PeerMessage::Leg { leg, shard, timeout_ms, request, request_id: _, members_epoch } => {
                self.correct_router(from, shard, members_epoch);
                let deadline_ms = self.time.monotonic_ms.saturating_add(timeout_ms);
                self.accept_leg(Origin::Remote(from, leg), shard, deadline_ms, request);
            }
            PeerMessage::LegReply { leg, reply } => self.leg_replied(leg, Some(from), reply),
            PeerMessage::Credits { shard, credits, hops, fence } => self.credits_received(from, shard, credits, hops, fence),
            PeerMessage::Decisions { shard, decisions, hops, fence } => self.decisions_received(from, shard, decisions, hops, fence),
            PeerMessage::LeaderHint { shard, leader } => self.learn_leader(shard, leader),
            PeerMessage::SnapshotFetch { shard, snapshot_id, after } => self.snapshot_fetch_received(from, shard, snapshot_id, after),
            PeerMessage::SnapshotChunk { shard, snapshot_id, entries, done, unknown } => {
                self.snapshot_chunk_received(from, shard, snapshot_id, entries, done, unknown)
            }
            PeerMessage::Members { shard, epoch, voters, learners } => {
                self.members_received(from, shard, membership::Members { epoch, voters, learners })
            }
            PeerMessage::Registry { epoch, nodes, retired } => self.registry_received(epoch, nodes, retired),
            PeerMessage::NodeInfo { .. } | PeerMessage::Join { .. } | PeerMessage::Welcome { .. } => {}
        }
    }

    /// A client request arriving at this node; answered later by `Effect::Reply` with `call`,
    /// at the latest `timeout_ms` after now (then `Unavailable` for what is missing).
    pub fn submit(&mut self, call: CallId, request: Request, timeout_ms: u64) {
        self.submit_traced(call, request, timeout_ms, None);
    }

    /// `submit` with the client's request id, carried to every node a leg goes to.
    pub fn submit_traced(&mut self, call: CallId, request: Request, timeout_ms: u64, request_id: Option<String>) {
        let deadline_ms = self.time.monotonic_ms.saturating_add(timeout_ms);
        self.start_call(call, request, deadline_ms, request_id);
    }

    /// Takes a leg for a shard this node should lead: checks it may, then hands it to its
    /// operation.
    fn accept_leg(&mut self, origin: Origin, shard: ShardId, deadline_ms: u64, request: Request) {
        let node = self.config.node;
        let leader = match self.peers.get(&shard) {
            None => Some(self.leader_of(shard)),
            Some(peer) if !peer.replica.is_leader() => Some(peer.replica.leader()),
            Some(_) => None,
        };
        if let Some(hint) = leader {
            let reply = Reply::NotLeader { leader: hint.filter(|leader| *leader != node) };
            self.outbox.replies.push((origin, reply));
            self.deliver_outbox();
            return;
        }
        let (mut ctx, peers) = self.ctx();
        let peer = peers.get_mut(&shard).expect("checked above");
        operation::accept(peer, origin, deadline_ms, request, &mut ctx);
        self.dirty.insert(shard);
        self.deliver_outbox();
    }

    /// Routes what the peers produced: replies to the legs' origins (local ones straight to the
    /// router, remote ones over the wire) and silent shards to the router's hints. Credits and
    /// decisions wait in the outbox for the next poll (`route_protocol`).
    fn deliver_outbox(&mut self) {
        for shard in std::mem::take(&mut self.outbox.silent_shards) {
            self.rotate_hint(shard);
        }
        // Delivering a local reply can start more legs (a call's second step), which can
        // answer at once: loop until nothing is left.
        while !self.outbox.replies.is_empty() {
            for (origin, reply) in std::mem::take(&mut self.outbox.replies) {
                match origin {
                    Origin::Local(leg) => self.leg_replied(leg, None, reply),
                    Origin::Remote(node, leg) => self.send(node, PeerMessage::LegReply { leg, reply }),
                }
            }
        }
    }

    /// The driver made round `id` durable (and every earlier one).
    pub fn persisted(&mut self, id: u64) {
        self.cleans_persisted(id);
        let done = match id.checked_add(1) {
            Some(next) => {
                let later = self.rounds.inflight.split_off(&next);
                std::mem::replace(&mut self.rounds.inflight, later)
            }
            None => std::mem::take(&mut self.rounds.inflight),
        };
        for (shard, number, messages) in done.into_values().flatten() {
            self.release(shard, number, messages);
            // Raft may have more to do now (a leader counts its own vote once durable).
            self.dirty.insert(shard);
        }
    }

    /// The state store is durable up to these marks (an `Effect::PersistState` completed):
    /// compact each shard's log behind its mark.
    pub fn state_persisted(&mut self, marks: &[(ShardId, u64)]) {
        self.state_persist_inflight = false;
        let removed = std::mem::take(&mut self.membership.removed_persisting);
        self.membership.cleans.extend(removed);
        let (lag_entries, lag_bytes) = (self.config.limits.compaction_lag_entries, self.config.limits.compaction_lag_bytes);
        for (shard, index) in marks {
            let Some(peer) = self.peers.get_mut(shard) else {
                continue;
            };
            // A shard about to take a new member compacts all it can (`operation/membership.rs`).
            let (lag_entries, lag_bytes) = if peer.compact_fully { (0, 0) } else { (lag_entries, lag_bytes) };
            if let Some(compact_to) = peer.replica.checkpointed(*index, lag_entries, lag_bytes) {
                self.rounds.compactions.insert(*shard, compact_to);
            }
            if peer.replica.compacted_index() > 0 {
                peer.compact_fully = false;
            }
        }
    }

    /// Turns pending work into effects. Call after every batch of inputs.
    pub fn poll(&mut self) {
        // Applying can queue more local work (a credit for a shard this node also leads), so
        // go round a few times; anything left waits for the next poll.
        self.poll_budget.applied_bytes = 0;
        self.poll_budget.cut = false;
        for _ in 0..4 {
            let progressed = self.poll_once();
            if !progressed || self.poll_budget.cut {
                break;
            }
        }
        self.quarantine_damaged();
        self.flush_outgoing();
    }

    /// The last `poll` stopped at its work budget with shards still to handle: poll again soon,
    /// after taking new inputs.
    pub fn has_more_work(&self) -> bool {
        self.poll_budget.cut && !self.dirty.is_empty()
    }

    /// Takes the effects produced so far.
    pub fn drain_effects(&mut self) -> Vec<Effect> {
        self.flush_outgoing();
        std::mem::take(&mut self.effects)
    }

    /// Routes the cross-shard protocol's messages the peers produced (credits to payee shards,
    /// decisions to payer shards): proposals where this node leads, messages elsewhere.
    fn route_protocol(&mut self) {
        self.route_credits();
        self.route_decisions();
    }

    fn poll_once(&mut self) -> bool {
        self.route_protocol();
        let mut shards: Vec<ShardId> = std::mem::take(&mut self.dirty).into_iter().filter(|shard| self.peers.contains_key(shard)).collect();
        // Round-robin from where the last cut poll stopped, so no shard waits behind others.
        let start = shards.partition_point(|shard| *shard < self.poll_budget.next_shard);
        shards.rotate_left(start);
        let proposer = self.proposer;
        {
            let (mut ctx, peers) = self.ctx();
            for shard in &shards {
                let peer = peers.get_mut(shard).expect("listed");
                peer.flush_proposals(proposer, &mut ctx);
                operation::read::flush_reads(peer, &mut ctx);
                peer.replica.serve_snapshot_request(ctx.time.monotonic_ms);
            }
        }
        self.deliver_outbox();
        let mut round = Vec::new();
        let mut writes = Vec::new();
        let mut conf_changed = Vec::new();
        let io_backlogged = self.rounds.inflight.len() >= self.config.limits.rounds_inflight_max;
        if io_backlogged {
            // No round may start: take no Ready and keep the compactions for a later round, and
            // look at these shards again once IO catches up.
            self.dirty.extend(shards.iter().copied());
        } else {
            for shard in &shards {
                if self.poll_budget.applied_bytes >= self.config.limits.apply_bytes_per_poll_max {
                    // Over budget: this shard's Ready waits for the next poll.
                    if !self.poll_budget.cut {
                        self.poll_budget.cut = true;
                        self.poll_budget.next_shard = *shard;
                    }
                    self.dirty.insert(*shard);
                    continue;
                }
                let Some(output) = self.peers.get_mut(shard).expect("listed").replica.handle_ready(proposer, self.time.monotonic_ms) else {
                    continue;
                };
                if output.damaged {
                    // Quarantined at the end of this poll (`quarantine_damaged`).
                    continue;
                }
                self.poll_budget.applied_bytes += output.applied_bytes;
                for latency in &output.apply_latencies_ms {
                    self.stats.propose_apply_ms.observe(*latency);
                }
                if output.installed_snapshot {
                    self.stats.snapshots_installed += 1;
                }
                if output.conf_changed {
                    conf_changed.push(*shard);
                }
                self.stats.entries_undecodable += output.entries_undecodable;
                for (start, end) in output.obsolete_ranges {
                    self.effects.push(Effect::DeleteRange { start, end });
                }
                self.send_raft(*shard, output.messages);
                if output.installed_snapshot {
                    self.shard_reset(*shard);
                }
                {
                    let (mut ctx, peers) = self.ctx();
                    let peer = peers.get_mut(shard).expect("listed");
                    operation::read::read_states(peer, output.read_states, &mut ctx);
                    for applied in output.applied {
                        operation::applied(peer, applied, &mut ctx);
                    }
                }
                self.deliver_outbox();
                if !output.write.is_empty() {
                    writes.push(output.write);
                }
                round.push((*shard, output.number, output.persisted_messages));
            }
            for (shard, compact_to) in std::mem::take(&mut self.rounds.compactions) {
                match writes.iter_mut().find(|write| write.shard == shard) {
                    Some(write) => write.compact_to = Some(compact_to),
                    None => writes.push(ShardWrite { shard, compact_to: Some(compact_to), ..ShardWrite::default() }),
                }
            }
            self.take_cleans(&mut writes);
        }
        let progressed = !round.is_empty() || !writes.is_empty();
        if progressed {
            self.emit_round(round, writes);
        }
        for shard in &shards {
            {
                let (mut ctx, peers) = self.ctx();
                operation::read::serve_applied_reads(peers.get_mut(shard).expect("listed"), &mut ctx);
            }
            self.deliver_outbox();
            self.check_leadership(*shard);
            if self.peers[shard].replica.has_ready() {
                self.dirty.insert(*shard);
            }
        }
        for shard in conf_changed {
            self.conf_changed(shard);
        }
        self.leaving_tick();
        progressed
    }

    fn emit_round(&mut self, round: Vec<(ShardId, u64, Vec<Message>)>, writes: Vec<ShardWrite>) {
        let id = self.rounds.next;
        self.rounds.next += 1;
        if writes.is_empty() && self.rounds.inflight.is_empty() {
            // Nothing to make durable and nothing ahead of it: durable already.
            for (shard, number, messages) in round {
                self.release(shard, number, messages);
            }
            return;
        }
        if planted(self.planted, PlantedBug::AckBeforeFlush) {
            for (shard, number, messages) in round {
                self.release(shard, number, messages);
            }
            self.effects.push(Effect::Persist(PersistRound { id, writes }));
            return;
        }
        self.rounds.inflight.insert(id, round);
        self.effects.push(Effect::Persist(PersistRound { id, writes }));
    }

    /// Ready `number` of `shard` is durable: raft may count it, and the messages that waited
    /// for it leave.
    fn release(&mut self, shard: ShardId, number: u64, messages: Vec<Message>) {
        let Some(peer) = self.peers.get_mut(&shard) else {
            // The replica was quarantined since the round was handed over.
            return;
        };
        peer.replica.on_persisted(number);
        self.send_raft(shard, messages);
    }

    /// Stops running every replica whose ledger met a stored record that does not decode, as
    /// recovery does at start for a record that fails its checksum: its waiters are told to
    /// look elsewhere, it neither serves nor votes, and the shard runs on its other replicas
    /// (repair: restore the node's data or rebuild it; see the runbooks). The node and its other
    /// shards keep running, and a restart meets the damage again without crash-looping.
    fn quarantine_damaged(&mut self) {
        let damaged: Vec<(ShardId, String)> =
            self.peers.iter().filter_map(|(shard, peer)| peer.replica.ledger().damage().map(|reason| (*shard, reason))).collect();
        for (shard, reason) in damaged {
            {
                let (mut ctx, peers) = self.ctx();
                peers.get_mut(&shard).expect("listed").reset(None, &mut ctx);
            }
            self.deliver_outbox();
            self.peers.remove(&shard);
            self.dirty.remove(&shard);
            self.rounds.compactions.remove(&shard);
            self.quarantined.insert(shard);
            self.stats.replicas_quarantined_damaged += 1;
            self.stats.last_damage = Some(reason);
        }
    }

    fn send_raft(&mut self, shard: ShardId, messages: Vec<Message>) {
        for message in messages {
            let to = message.to;
            if message.get_msg_type() == MessageType::MsgSnapshot {
                self.stats.snapshots_sent += 1;
                if let Ok(descriptor) = crate::snapshot::SnapshotDescriptor::decode(&message.get_snapshot().data) {
                    let now = self.time.monotonic_ms;
                    if let Some(peer) = self.peers.get_mut(&shard) {
                        peer.replica.snapshot_offered_to(descriptor.snapshot_id, to, now);
                    }
                }
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
        let replica = &mut self.peers.get_mut(&shard).expect("known shard").replica;
        if replica.election_timer_reset() {
            let ticks = self.rng.gen_range(election..election * 2);
            replica.set_election_timeout(ticks);
        }
    }

    /// Notices leadership gained or lost since the last poll and cleans up after a loss.
    fn check_leadership(&mut self, shard: ShardId) {
        let peer = self.peers.get_mut(&shard).expect("known shard");
        let now_leading = if peer.replica.is_leader() { Some(peer.replica.term()) } else { None };
        let before = std::mem::replace(&mut peer.leading, now_leading);
        if before.is_some() && before != now_leading {
            self.shard_reset(shard);
        }
    }

    /// This node stopped leading `shard` (or its ledger was replaced): every waiter on it is
    /// told to look for the new leader, and what it drove is the new leader's job now.
    fn shard_reset(&mut self, shard: ShardId) {
        let node = self.config.node;
        let (mut ctx, peers) = self.ctx();
        let peer = peers.get_mut(&shard).expect("known shard");
        let hint = peer.replica.leader().filter(|leader| *leader != node);
        peer.reset(hint, &mut ctx);
        self.deliver_outbox();
    }

    /// Asks the runtime to make the state store durable (its incremental checkpoint) when a
    /// shard applied `checkpoint_entries` since its last durable mark, or after
    /// `checkpoint_interval_ms` with anything applied. One persist at a time, for every shard.
    fn checkpoint_tick(&mut self) {
        if self.state_persist_inflight {
            return;
        }
        let limits = &self.config.limits;
        let now = self.time.monotonic_ms;
        let mut due = false;
        let mut marks = Vec::new();
        for (shard, peer) in self.peers.iter_mut() {
            let behind = peer.replica.applied_index().saturating_sub(peer.replica.checkpoint_index());
            if behind == 0 && peer.compact_fully && peer.replica.checkpoint_index() > 0 {
                // A quiet shard about to take a new member: its state is durable at its
                // checkpoint already, so its log is compacted there now.
                let index = peer.replica.checkpoint_index();
                if let Some(compact_to) = peer.replica.checkpointed(index, 0, 0) {
                    self.rounds.compactions.insert(*shard, compact_to);
                }
                if peer.replica.compacted_index() > 0 {
                    peer.compact_fully = false;
                }
                self.dirty.insert(*shard);
            }
            let replica = &peer.replica;
            if behind == 0 {
                continue;
            }
            marks.push((*shard, replica.state_mark_index()));
            due |= behind >= limits.checkpoint_entries || peer.compact_fully;
        }
        let stale = now.saturating_sub(self.last_state_persist_ms) >= limits.checkpoint_interval_ms;
        let removals = !self.membership.removed_unpersisted.is_empty();
        if (marks.is_empty() && !removals) || !(due || stale || removals) {
            return;
        }
        let removed = std::mem::take(&mut self.membership.removed_unpersisted);
        self.membership.removed_persisting.extend(removed);
        self.state_persist_inflight = true;
        self.last_state_persist_ms = now;
        if planted(self.planted, PlantedBug::CompactBeforeDurable) {
            let (lag_entries, lag_bytes) = (limits.compaction_lag_entries, limits.compaction_lag_bytes);
            for (shard, index) in &marks {
                if let Some(compact_to) =
                    self.peers.get_mut(shard).and_then(|peer| peer.replica.checkpointed(*index, lag_entries, lag_bytes))
                {
                    self.rounds.compactions.insert(*shard, compact_to);
                }
            }
        }
        self.effects.push(Effect::PersistState { marks });
    }

    /// Hands shards back to their preferred leader once it has caught up, so leaders stay
    /// spread evenly after a failover.
    fn balance_tick(&mut self) {
        let now = self.time.monotonic_ms;
        if now.saturating_sub(self.leadership.last_balance_ms) < self.config.limits.leader_balance_interval_ms {
            return;
        }
        self.leadership.last_balance_ms = now;
        if self.leadership.draining {
            // Draining hands shards away (drain_tick), never back to the preferred leader.
            return;
        }
        let node = self.config.node;
        for (shard, peer) in self.peers.iter_mut() {
            let moving = peer.replica.voters().len() > crate::placement::REPLICAS_PER_SHARD || !peer.replica.learners().is_empty();
            if !peer.replica.leader_ready() || peer.replica.conf_change_pending() || moving {
                // A membership change in flight (a move may be handing leadership away from
                // the preferred leader it is about to remove).
                continue;
            }
            let preferred = self.config.placement.preferred_leader(*shard);
            if !peer.replica.voters().contains(&preferred) {
                // Moved away since bootstrap: no preference.
                continue;
            }
            if let Some(target) = caught_up_target(&peer.replica, [preferred], node, &self.leadership.peers_draining) {
                peer.replica.transfer_leader(target);
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
