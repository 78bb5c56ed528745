//! `ShardReplica`: one replica of one shard — a `raft::RawNode` over `ShardStorage` plus the
//! shard's `Ledger`. It turns raft's Ready into plain values (messages to send, writes to make
//! durable, applied commands) and never does IO itself. Readies are persisted asynchronously:
//! `advance_append_async` right away, `on_persist_ready` once the driver reports the write durable.

use crate::backup::BackupChunk;
use crate::ids::{NodeId, ProposalTag, ShardId};
use crate::ledger::{keys, AppliedCommand, AppliedMark, Ledger};
use crate::log::{decode_entry, EntryPayload, Proposer, Tagged};
use crate::planted::{planted, PlantedBug};
use crate::snapshot::{SnapshotDescriptor, SNAPSHOT_CHUNK_ENTRIES_MAX};
use crate::storage::ShardStorage;
use crate::store::{prefix_end, Key, ReadView, Value};
use crate::time::Time;
use raft::eraftpb::{ConfChange, ConfChangeType, Entry, EntryType, HardState, Message, Snapshot};
use raft::{RawNode, ReadState, StateRole};
use serde::{Deserialize, Serialize};

/// Proposal times kept for the propose→apply latency (older ones are simply not timed).
const PROPOSAL_TIMES_MAX: usize = 4_096;

/// Raft options, every one passed explicitly to raft-rs at the call site in `ShardReplica::new`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RaftSettings {
    pub tick_ms: u64,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    pub message_bytes_max: u64,
    pub inflight_messages_max: usize,
    pub uncommitted_bytes_max: u64,
    /// Committed entries one shard applies per Ready: bounds the work of one driver-loop
    /// iteration (the rest is applied in the next one, after heartbeats had their turn).
    pub committed_bytes_per_ready_max: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            tick_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 1,
            message_bytes_max: 1 << 20,
            inflight_messages_max: 256,
            uncommitted_bytes_max: 64 << 20,
            committed_bytes_per_ready_max: 64 << 10,
        }
    }
}

/// What one shard needs made durable from one round, in order.
#[derive(Debug, Clone, Default)]
pub struct ShardWrite {
    pub shard: ShardId,
    /// A snapshot installed from the leader: the ledger state at its index. The state store
    /// must hold it before the log store drops the entries it replaces.
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
    /// Log entries up to this index (and term) may be deleted: the state store made the state
    /// at it durable.
    pub compact_to: Option<(u64, u64)>,
    /// Drop everything of this shard's log first: the node's replica of it was removed, or a
    /// new one starts where an earlier one was (`core/membership.rs`).
    pub clean: bool,
}

impl ShardWrite {
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none() && self.entries.is_empty() && self.hard_state.is_none() && self.compact_to.is_none() && !self.clean
    }
}

/// A consistent view of a shard's state offered to followers that fell behind the compacted
/// log: they fetch it in chunks (`PeerMessage::SnapshotFetch`) while it lives.
struct SnapshotSource {
    view: Box<dyn ReadView>,
    generation: u32,
    /// Followers it was offered to, each with when it last fetched (`None`: not yet) and when
    /// it was offered or last fetched (monotonic ms). A follower that does not start, or stops
    /// fetching, is reported to raft as a failed snapshot, so raft offers a fresh one.
    followers: std::collections::BTreeMap<NodeId, (bool, u64)>,
    /// When it was made (monotonic ms): kept at least `SNAPSHOT_START_MS` for raft to send it.
    created_ms: u64,
}

/// The furthest back a live follower's need holds the leader's log compaction, in entries...
pub const COMPACTION_HOLD_ENTRIES_MAX: u64 = 100_000;
/// ...and in bytes of entries (the log is held in memory; 64 shards could each hold this).
pub const COMPACTION_HOLD_BYTES_MAX: u64 = 8 << 20;

/// An offered snapshot must be fetched from within this long, or raft hears it failed.
pub const SNAPSHOT_START_MS: u64 = 2_000;
/// A follower's stream that stops fetching for this long failed.
pub const SNAPSHOT_STREAM_IDLE_MS: u64 = 10_000;

/// One applied command, with who (if anyone on this node) waits for it.
#[derive(Debug, Clone)]
pub struct AppliedProposal {
    /// The tag if this node (this incarnation) proposed it, else 0.
    pub tag: ProposalTag,
    pub applied: AppliedCommand,
}

/// The plain-value result of handling one Ready.
#[derive(Debug, Default)]
pub struct ReadyOutput {
    pub messages: Vec<Message>,
    pub write: ShardWrite,
    pub applied: Vec<AppliedProposal>,
    pub read_states: Vec<ReadState>,
    /// Ready number to report back in `on_persisted`, with the messages that may only leave after.
    pub number: u64,
    pub persisted_messages: Vec<Message>,
    /// A snapshot from the leader replaced the ledger (waiters on this shard must be re-routed).
    pub installed_snapshot: bool,
    /// Propose→apply latencies (ms) of this replica's own entries applied in this Ready.
    pub apply_latencies_ms: Vec<u64>,
    /// Key ranges of the state store no generation uses any more (after a snapshot install):
    /// deleted in the background.
    pub obsolete_ranges: Vec<(Key, Key)>,
    /// Committed entries whose data did not decode, applied as nothing.
    pub entries_undecodable: u64,
    /// Bytes of committed entries applied in this Ready (the driver's work budget counts them).
    pub applied_bytes: u64,
    /// The ledger met a stored record that does not decode (`Ledger::damage`): nothing of this
    /// Ready may leave (no replies, no messages, no round written); the core quarantines the
    /// replica.
    pub damaged: bool,
    /// A membership change of the shard was applied in this Ready (`core/membership.rs`).
    pub conf_changed: bool,
}

pub struct ShardReplica {
    shard: ShardId,
    raw: RawNode<ShardStorage>,
    ledger: Ledger,
    applied_index: u64,
    /// Commands waiting for this round's proposal (one entry per shard per round).
    proposals: Vec<Tagged>,
    /// Last checkpointed (durable in the state store) applied index.
    checkpoint_index: u64,
    /// The Ready number that installed a snapshot, until it is durable.
    snapshot_ready: Option<u64>,
    /// Offered snapshots by id, and the next id.
    snapshot_sources: std::collections::BTreeMap<u64, SnapshotSource>,
    next_snapshot_id: u64,
    /// A snapshot staged in the state store under a new generation, waiting for raft to
    /// install it: (its index, the generation).
    staged: Option<(u64, u32)>,
    /// The generation the current incoming snapshot stream stages under, once one started.
    /// Each stream takes a generation no earlier stream used (the one before is deleted in the
    /// background, and a background delete must never meet keys written after it was asked
    /// for); reset by an install, whose generation becomes the current one.
    staging: Option<u32>,
    /// Test-only (inert without the `planted-bugs` feature): kept for ledgers from snapshots.
    planted: PlantedBug,
    /// When each of this replica's own proposals was made (entry index, monotonic ms).
    proposed_at: std::collections::VecDeque<(u64, u64)>,
    last_leader: Option<NodeId>,
    leader_changes: u64,
    /// The state at the end of the entry that raised the shard's fence epoch last: this
    /// replica's copy of the shard's cut for that backup (`ledger/fence.rs`).
    backup_view: Option<BackupView>,
    /// The log index of the last membership change this replica applied (0: the bootstrap
    /// voters, or one applied before this replica's last restart or snapshot).
    conf_index: u64,
    /// Per node: the log index of the membership change that last added it (as learner or
    /// voter) on this replica. An acknowledgement from it of an earlier index comes from a
    /// replica of that node the shard removed before (delayed in the network), not from the one
    /// the addition started, which begins empty.
    added_at: std::collections::BTreeMap<NodeId, u64>,
}

/// A read view of the state store at a backup fence.
struct BackupView {
    epoch: u64,
    generation: u32,
    view: Box<dyn ReadView>,
    last_used_ms: u64,
}

/// A backup view nobody read for this long is dropped (a backup reads its chunks back to back).
pub const BACKUP_VIEW_IDLE_MS: u64 = 15 * 60 * 1000;

/// Up to `bytes_max` of a generation's records after `after` in `view`, keys without the
/// generation prefix, and whether they are the last; every record is checked to decode first.
fn scan_generation(
    view: &dyn ReadView,
    shard: ShardId,
    generation: u32,
    after: Option<&[u8]>,
    bytes_max: usize,
) -> Result<(Vec<(Key, Value)>, bool), String> {
    let prefix = keys::generation_prefix(shard, generation);
    let end = prefix_end(&prefix);
    let start = match after {
        // The first key after `after`: `after` followed by a zero byte.
        Some(after) => [prefix.as_slice(), after, &[0u8]].concat(),
        None => prefix.clone(),
    };
    let entries = view.scan(&start, &end, SNAPSHOT_CHUNK_ENTRIES_MAX, bytes_max);
    for (key, value) in &entries {
        Ledger::check_record(&key[prefix.len()..], value).map_err(|error| format!("a stored record does not decode: {error}"))?;
    }
    let done =
        entries.len() < SNAPSHOT_CHUNK_ENTRIES_MAX && entries.iter().map(|(key, value)| key.len() + value.len()).sum::<usize>() < bytes_max;
    let stripped = entries.into_iter().map(|(key, value)| (key[prefix.len()..].to_vec(), value)).collect();
    Ok((stripped, done))
}

impl ShardReplica {
    /// Builds a replica. `applied_index` is the checkpoint the ledger was restored from (0 fresh).
    pub fn new(
        node: NodeId,
        shard: ShardId,
        storage: ShardStorage,
        ledger: Ledger,
        applied_index: u64,
        settings: &RaftSettings,
        logger: &slog::Logger,
    ) -> Result<ShardReplica, raft::Error> {
        let config = raft::Config {
            id: node,
            election_tick: settings.election_ticks,
            heartbeat_tick: settings.heartbeat_ticks,
            applied: applied_index,
            max_size_per_msg: settings.message_bytes_max,
            max_inflight_msgs: settings.inflight_messages_max,
            check_quorum: true,
            pre_vote: true,
            min_election_tick: settings.election_ticks,
            max_election_tick: settings.election_ticks * 2,
            read_only_option: raft::ReadOnlyOption::Safe,
            skip_bcast_commit: false,
            // raft-rs 0.7's batch_append can merge entries into an empty MsgAppend whose index
            // does not precede them; the follower then acknowledges an index it does not have
            // (found by the simulator: seed 51, duplicated messages). We batch per round anyway.
            batch_append: false,
            priority: 0,
            max_uncommitted_size: settings.uncommitted_bytes_max,
            max_committed_size_per_ready: settings.committed_bytes_per_ready_max,
        };
        // RawNode::new validates the config (Raft::new calls Config::validate).
        let logger = logger.new(slog::o!("shard" => shard));
        let raw = RawNode::new(&config, storage, &logger)?;
        Ok(ShardReplica {
            shard,
            raw,
            ledger,
            applied_index,
            proposals: Vec::new(),
            checkpoint_index: applied_index,
            snapshot_ready: None,
            snapshot_sources: std::collections::BTreeMap::new(),
            next_snapshot_id: 1,
            staged: None,
            staging: None,
            planted: PlantedBug::None,
            proposed_at: std::collections::VecDeque::new(),
            last_leader: None,
            leader_changes: 0,
            backup_view: None,
            conf_index: 0,
            added_at: std::collections::BTreeMap::new(),
        })
    }

    /// Test-only: plants a bug in this replica's ledger (inert without the `planted-bugs` feature).
    pub fn plant_bug(&mut self, bug: PlantedBug) {
        self.planted = bug;
        self.ledger.set_planted(bug);
    }

    pub fn shard(&self) -> ShardId {
        self.shard
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    pub fn checkpoint_index(&self) -> u64 {
        self.checkpoint_index
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    pub fn role(&self) -> StateRole {
        self.raw.raft.state
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// The leader this replica knows of, if any.
    pub fn leader(&self) -> Option<NodeId> {
        match self.raw.raft.leader_id {
            0 => None,
            id => Some(id),
        }
    }

    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    pub fn last_index(&self) -> u64 {
        self.raw.raft.raft_log.last_index()
    }

    /// The term of a log entry this replica still holds (None when compacted or absent).
    pub fn entry_term(&self, index: u64) -> Option<u64> {
        self.raw.store().term_of(index).filter(|_| index > self.raw.store().compacted_index())
    }

    pub fn log_entry_count(&self) -> usize {
        self.raw.store().entry_count()
    }

    /// The shard's voters as of this replica's applied point.
    pub fn voters(&self) -> Vec<NodeId> {
        self.raw.store().conf_state().voters.clone()
    }

    /// The shard's learners (replicas catching up, not yet voting) as of the applied point.
    pub fn learners(&self) -> Vec<NodeId> {
        self.raw.store().conf_state().learners.clone()
    }

    /// Voters and learners: every node that should run a replica of the shard.
    pub fn members(&self) -> Vec<NodeId> {
        let conf = self.raw.store().conf_state();
        conf.voters.iter().chain(conf.learners.iter()).copied().collect()
    }

    pub fn conf_index(&self) -> u64 {
        self.conf_index
    }

    /// Whether an acknowledgement from `node` of log index `index` predates `node`'s last
    /// addition to the shard (so it comes from a removed replica of that node).
    pub fn acknowledges_before_addition(&self, node: NodeId, index: u64) -> bool {
        self.added_at.get(&node).is_some_and(|added| index < *added)
    }

    /// Records in the state store that the shard's members (as its leader announced them) leave
    /// this node out, at the replica's applied point: the mark recovery reads as a tombstone.
    pub fn write_tombstone(&mut self, voters: &[NodeId], learners: &[NodeId]) -> Result<(), crate::store::StoreError> {
        use protobuf::Message as _;
        let conf_state = raft::eraftpb::ConfState::from((voters.to_vec(), learners.to_vec()));
        let mark = AppliedMark {
            index: self.applied_index,
            term: self.raw.store().term_of(self.applied_index).unwrap_or(0),
            conf_state: conf_state.write_to_bytes().expect("in-memory protobuf encoding cannot fail"),
        };
        self.ledger.commit_round(&mark)
    }

    /// A membership change was proposed and is not applied yet (raft takes one at a time).
    pub fn conf_change_pending(&self) -> bool {
        self.raw.raft.pending_conf_index > self.applied_index
    }

    /// Proposes one membership change (add a learner, promote it to voter, remove a node).
    pub fn propose_conf_change(&mut self, change: ConfChangeType, node: NodeId) -> Result<(), raft::Error> {
        let mut cc = ConfChange::default();
        cc.set_change_type(change);
        cc.node_id = node;
        self.raw.propose_conf_change(Vec::new(), cc)
    }

    /// The log's compaction point (a new member needs a snapshot only when it is above 0).
    pub fn compacted_index(&self) -> u64 {
        self.raw.store().compacted_index()
    }

    /// A leader may act on its applied state (re-drive transfers, answer known decisions) once
    /// it has applied an entry of its own term: then it has seen every earlier committed entry.
    pub fn leader_ready(&self) -> bool {
        self.is_leader() && self.raw.raft.apply_to_current_term()
    }

    /// The match index of a peer as this leader tracks it (None when not leader or unknown).
    pub fn peer_matched(&self, peer: NodeId) -> Option<u64> {
        if !self.is_leader() {
            return None;
        }
        self.raw.raft.prs().get(peer).map(|progress| progress.matched)
    }

    /// The transport says the leader this replica follows is gone (its connection broke): skip
    /// the rest of the lease so an election starts within the randomized part of the timeout
    /// instead of after all of it. Elections are always safe; a false alarm costs one.
    pub fn leader_unreachable(&mut self) {
        let raft = &mut self.raw.raft;
        if raft.state != StateRole::Leader && raft.leader_id != 0 {
            raft.election_elapsed = raft.election_elapsed.max(raft.election_timeout());
        }
    }

    /// Hands leadership to a caught-up peer (raft's leader transfer).
    pub fn transfer_leader(&mut self, peer: NodeId) {
        self.raw.transfer_leader(peer);
    }

    pub fn campaign(&mut self) -> Result<(), raft::Error> {
        if self.snapshot_ready.is_some() {
            return Ok(());
        }
        self.raw.campaign()
    }

    /// While an installed snapshot is not yet durable, raft's applied index lags our log's
    /// start and raft-rs 0.7 would fail looking for entries to check before a campaign (found by
    /// the simulator: seed 2898). So this replica neither ticks nor takes a leader transfer
    /// until the snapshot is durable — one IO round.
    pub fn tick(&mut self) {
        if self.snapshot_ready.is_none() {
            self.raw.tick();
        }
    }

    pub fn step(&mut self, message: Message) -> Result<(), raft::Error> {
        if self.snapshot_ready.is_some() && message.get_msg_type() == raft::eraftpb::MessageType::MsgTimeoutNow {
            return Ok(());
        }
        self.raw.step(message)
    }

    pub fn read_index(&mut self, context: Vec<u8>) {
        self.raw.read_index(context);
    }

    /// Raft resets its election timer from `thread_rng`; the core re-draws it from its own seeded
    /// RNG instead (through this hook) so that a simulation replays identically.
    pub fn election_timer_reset(&self) -> bool {
        self.raw.raft.election_elapsed == 0
    }

    pub fn set_election_timeout(&mut self, ticks: usize) {
        self.raw.raft.set_randomized_election_timeout(ticks);
    }

    /// Whether raft has a Ready waiting (more committed entries than one Ready carries, say).
    pub fn has_ready(&self) -> bool {
        self.raw.has_ready() || !self.proposals.is_empty()
    }

    pub fn queue_proposal(&mut self, tagged: Tagged) {
        self.proposals.push(tagged);
    }

    pub fn has_proposals(&self) -> bool {
        !self.proposals.is_empty()
    }

    pub fn leader_changes(&self) -> u64 {
        self.leader_changes
    }

    /// Proposes every queued command as one log entry. On failure (not leader, or raft dropped
    /// it) the commands come back so their waiters can be told. The wall clock stamps the entry;
    /// the monotonic one times it to its apply.
    pub fn flush_proposals(&mut self, proposer: Proposer, time: Time) -> Result<usize, Vec<Tagged>> {
        if self.proposals.is_empty() {
            return Ok(0);
        }
        let commands = std::mem::take(&mut self.proposals);
        let count = commands.len();
        if !self.is_leader() {
            return Err(commands);
        }
        let payload = EntryPayload { proposer, timestamp_ms: time.wall_ms, commands };
        let data = payload.encode();
        match self.raw.propose(Vec::new(), data) {
            Ok(()) => {
                if self.proposed_at.len() < PROPOSAL_TIMES_MAX {
                    self.proposed_at.push_back((self.raw.raft.raft_log.last_index(), time.monotonic_ms));
                }
                Ok(count)
            }
            Err(_) => Err(payload.commands),
        }
    }

    /// Offers the snapshot raft asked for (a follower fell behind the compacted log): a
    /// consistent view of the state store at the applied index, which followers fetch in chunks.
    /// Making it costs nothing proportional to the shard (the store's snapshot is a view).
    pub fn serve_snapshot_request(&mut self, clock_ms: u64) {
        if !self.raw.store().take_snapshot_request() {
            return;
        }
        let id = self.next_snapshot_id;
        self.next_snapshot_id += 1;
        let view = self.ledger.store().read_view();
        let source = SnapshotSource {
            view,
            generation: self.ledger.generation(),
            followers: std::collections::BTreeMap::new(),
            created_ms: clock_ms,
        };
        self.snapshot_sources.insert(id, source);
        let descriptor = SnapshotDescriptor { shard: self.shard, snapshot_id: id, mark: self.applied_mark() };
        self.raw.mut_store().set_snapshot(self.applied_index, descriptor.encode());
    }

    /// Up to `bytes_max` of an offered snapshot's records after `after` (keys without the
    /// generation prefix), and whether they are the last. `None`: the snapshot is not offered
    /// (any more).
    pub fn snapshot_chunk(
        &mut self,
        snapshot_id: u64,
        to: NodeId,
        after: Option<&[u8]>,
        bytes_max: usize,
        clock_ms: u64,
    ) -> Option<(Vec<(Key, Value)>, bool)> {
        let source = self.snapshot_sources.get_mut(&snapshot_id)?;
        source.followers.insert(to, (true, clock_ms));
        match scan_generation(source.view.as_ref(), self.shard, source.generation, after, bytes_max) {
            Ok(chunk) => Some(chunk),
            Err(error) => {
                // Damage in this replica's state: send none of it (the core quarantines the
                // replica; another one serves the follower).
                self.ledger.damaged(error);
                None
            }
        }
    }

    /// Up to `bytes_max` of this shard's cut for backup `epoch` after `after` (keys without the
    /// generation prefix), from the view taken when the fence for `epoch` applied here.
    pub fn backup_chunk(&mut self, epoch: u64, after: Option<&[u8]>, bytes_max: usize, clock_ms: u64) -> BackupChunk {
        let fenced = self.ledger.fence_epoch();
        let Some(view) = self.backup_view.as_mut().filter(|view| view.epoch == epoch) else {
            return if fenced < epoch { BackupChunk::NotYet { epoch: fenced } } else { BackupChunk::Gone { epoch: fenced } };
        };
        view.last_used_ms = clock_ms;
        match scan_generation(view.view.as_ref(), self.shard, view.generation, after, bytes_max) {
            Ok((entries, done)) => BackupChunk::Records { entries, done },
            Err(error) => {
                self.ledger.damaged(error);
                BackupChunk::Gone { epoch: fenced }
            }
        }
    }

    /// Drops a backup view nobody read for `BACKUP_VIEW_IDLE_MS` (it pins the store's old
    /// versions).
    pub fn expire_backup_view(&mut self, clock_ms: u64) {
        if self.backup_view.as_ref().is_some_and(|view| clock_ms.saturating_sub(view.last_used_ms) >= BACKUP_VIEW_IDLE_MS) {
            self.backup_view = None;
        }
    }

    /// The epoch of the backup view this replica holds, if any.
    pub fn backup_view_epoch(&self) -> Option<u64> {
        self.backup_view.as_ref().map(|view| view.epoch)
    }

    /// Records that an offered snapshot was sent to `to` (it must fetch it before it expires).
    pub fn snapshot_offered_to(&mut self, snapshot_id: u64, to: NodeId, clock_ms: u64) {
        match self.snapshot_sources.get_mut(&snapshot_id) {
            Some(source) => {
                let started = source.followers.get(&to).is_some_and(|(started, _)| *started);
                source.followers.insert(to, (started, clock_ms));
            }
            // Raft sent a snapshot no longer offered: it fails at once, raft offers a fresh one.
            None => {
                self.forget_offered_snapshot();
                self.raw.report_snapshot(to, raft::SnapshotStatus::Failure);
            }
        }
    }

    /// Reports to raft the followers that did not start fetching an offered snapshot within
    /// `SNAPSHOT_START_MS` (the offer was lost) or stopped for `SNAPSHOT_STREAM_IDLE_MS`: raft
    /// then offers a fresh snapshot. Drops the snapshots nobody fetches any more.
    pub fn expire_snapshot_sources(&mut self, clock_ms: u64) {
        let mut failed = Vec::new();
        for source in self.snapshot_sources.values_mut() {
            source.followers.retain(|follower, (started, at)| {
                let limit = if *started { SNAPSHOT_STREAM_IDLE_MS } else { SNAPSHOT_START_MS };
                let alive = clock_ms.saturating_sub(*at) < limit;
                if !alive {
                    failed.push(*follower);
                }
                alive
            });
        }
        self.snapshot_sources
            .retain(|_, source| !source.followers.is_empty() || clock_ms.saturating_sub(source.created_ms) < SNAPSHOT_START_MS);
        self.forget_offered_snapshot();
        for follower in failed {
            self.raw.report_snapshot(follower, raft::SnapshotStatus::Failure);
        }
    }

    /// Stops raft offering a snapshot whose source is gone, so it asks for a fresh one.
    fn forget_offered_snapshot(&mut self) {
        let offered = self.raw.store().offered_snapshot().and_then(|snapshot| SnapshotDescriptor::decode(&snapshot.data).ok());
        if offered.is_some_and(|descriptor| !self.snapshot_sources.contains_key(&descriptor.snapshot_id)) {
            self.raw.mut_store().clear_snapshot();
        }
    }

    /// The generation the current incoming stream stages under (one past the current
    /// generation for the first stream since the last install, one more for each stream after).
    pub fn staging_generation(&self) -> u32 {
        self.staging.unwrap_or_else(|| self.ledger.generation() + 1)
    }

    /// A new incoming stream begins: it takes a generation no earlier stream wrote to. Returns
    /// the range the previous stream staged into, if any, to delete in the background (nothing
    /// writes there again). At start no generation but the current one holds anything
    /// (`recovery::clear_unused_generations`).
    pub fn begin_staging(&mut self) -> Option<(Key, Key)> {
        if planted(self.planted, PlantedBug::StagingRangeReused) {
            let prefix = keys::generation_prefix(self.shard, self.ledger.generation() + 1);
            let end = prefix_end(&prefix);
            return Some((prefix, end));
        }
        let previous = self.staging;
        self.staging = Some(previous.map_or_else(|| self.ledger.generation() + 1, |generation| generation + 1));
        previous.map(|generation| {
            let prefix = keys::generation_prefix(self.shard, generation);
            let end = prefix_end(&prefix);
            (prefix, end)
        })
    }

    /// Writes a chunk of a snapshot being received into the staging generation.
    pub fn stage_snapshot_chunk(&mut self, entries: Vec<(Key, Value)>) -> Result<(), crate::store::StoreError> {
        let generation = self.staging_generation();
        let mut batch = crate::store::WriteBatch::default();
        for (suffix, value) in entries {
            batch.put([keys::generation_prefix(self.shard, generation).as_slice(), &suffix].concat(), value);
        }
        self.ledger.store().write(batch)
    }

    /// Forgets the staged snapshot unless raft took it (it is installed by the next Ready).
    pub fn drop_staged_unless_pending(&mut self) {
        let staged_index = self.staged.map(|(index, _)| index);
        let pending = self.raw.raft.raft_log.unstable.snapshot.as_ref().map(|snapshot| snapshot.get_metadata().index);
        if pending.is_none() || pending != staged_index {
            self.staged = None;
        }
    }

    /// Whether a fully staged snapshot waits for raft to install it.
    pub fn has_staged(&self) -> bool {
        self.staged.is_some()
    }

    /// A snapshot of `index` is fully staged: the next Ready that carries it installs it.
    pub fn set_staged(&mut self, index: u64) {
        self.staged = Some((index, self.staging_generation()));
    }

    /// The applied point as stored with the state: index, its term, the voters.
    fn applied_mark(&self) -> AppliedMark {
        use protobuf::Message as _;
        let index = self.applied_index;
        let conf_state = self.raw.store().conf_state().write_to_bytes().expect("in-memory protobuf encoding cannot fail");
        AppliedMark { index, term: self.raw.store().term_of(index).unwrap_or(0), conf_state }
    }

    /// The applied index whose state the store holds (durable once the store persists).
    pub fn state_mark_index(&self) -> u64 {
        self.applied_index
    }

    /// The state store holds the ledger at `index`: the log up to it may go except for a lag of
    /// at most `lag_entries` entries and `lag_bytes` bytes (kept for a briefly lagging
    /// follower; the log is held in memory, so bytes bound it too). On a leader, not past what a live follower
    /// still needs: the entries after its match, or after the snapshot it is being sent (else a
    /// follower whose snapshot takes longer to stream than the log takes to move on would need
    /// snapshot after snapshot and never catch up). A follower not heard from within an
    /// election timeout holds nothing, and no hold reaches back more than
    /// `COMPACTION_HOLD_ENTRIES_MAX` entries or `COMPACTION_HOLD_BYTES_MAX` bytes. Returns the
    /// new compaction point.
    pub fn checkpointed(&mut self, index: u64, lag_entries: u64, lag_bytes: u64) -> Option<(u64, u64)> {
        self.checkpoint_index = self.checkpoint_index.max(index);
        let upto =
            if planted(self.planted, PlantedBug::CompactPastCheckpoint) { self.applied_index } else { index.min(self.applied_index) };
        let mut compact_to = upto.saturating_sub(lag_entries).max(self.raw.store().index_keeping_bytes(upto, lag_bytes));
        if self.raw.raft.state == raft::StateRole::Leader {
            let own = self.raw.raft.id;
            let needed = self
                .raw
                .raft
                .prs()
                .iter()
                .filter(|(id, _)| **id != own)
                .filter_map(|(_, progress)| match progress.state {
                    raft::ProgressState::Snapshot => Some(progress.pending_snapshot),
                    _ if progress.recent_active => Some(progress.matched),
                    _ => None,
                })
                .min();
            if let Some(needed) = needed {
                let floor = compact_to
                    .saturating_sub(COMPACTION_HOLD_ENTRIES_MAX)
                    .max(self.raw.store().index_keeping_bytes(compact_to, COMPACTION_HOLD_BYTES_MAX));
                compact_to = compact_to.min(needed.max(floor));
            }
        }
        if compact_to <= self.raw.store().compacted_index() {
            return None;
        }
        self.raw.mut_store().compact(compact_to);
        let term = self.raw.store().term_of(compact_to).expect("compaction point is known");
        Some((compact_to, term))
    }

    /// Handles one Ready if raft has one. `proposer` identifies this node's own proposals.
    pub fn handle_ready(&mut self, proposer: Proposer, clock_ms: u64) -> Option<ReadyOutput> {
        if !self.raw.has_ready() {
            return None;
        }
        let mut ready = self.raw.ready();
        let mut output = ReadyOutput { number: ready.number(), ..ReadyOutput::default() };
        if let Some(soft) = ready.ss() {
            let leader = (soft.leader_id != 0).then_some(soft.leader_id);
            if leader.is_some() && leader != self.last_leader {
                self.leader_changes += 1;
            }
            if leader.is_some() {
                self.last_leader = leader;
            }
        }
        output.write.shard = self.shard;
        output.read_states = ready.take_read_states();
        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            let index = snapshot.get_metadata().index;
            // The core stepped this snapshot only once its records were staged (`core/snapshot.rs`).
            let (staged_index, generation) = self.staged.take().expect("a snapshot is installed only once staged");
            assert_eq!(staged_index, index, "the staged snapshot is the one raft installs");
            let old = keys::generation_prefix(self.shard, self.ledger.generation());
            let mark = self.ledger.install_generation(generation).expect("the state store takes the generation switch");
            // The next stream stages one past the installed generation (every generation a
            // stream staged into before this one is deleted or being deleted).
            self.staging = None;
            assert_eq!(mark.index, index, "the staged records are the state at the snapshot's index");
            output.obsolete_ranges.push((old.clone(), prefix_end(&old)));
            self.raw.mut_store().apply_snapshot(&snapshot);
            self.applied_index = snapshot.get_metadata().index;
            self.checkpoint_index = self.applied_index;
            output.write.snapshot = Some(snapshot);
            output.installed_snapshot = true;
            // The snapshot carries the shard's membership as of its index.
            output.conf_changed = true;
        }
        if !ready.entries().is_empty() {
            let entries = ready.take_entries();
            self.raw.mut_store().append(&entries);
            output.write.entries = entries;
        }
        if let Some(hard_state) = ready.hs() {
            self.raw.mut_store().set_hard_state(hard_state.clone());
            output.write.hard_state = Some(hard_state.clone());
        }
        output.messages = ready.take_messages();
        let committed = ready.take_committed_entries();
        let applied_any = !committed.is_empty();
        output.applied_bytes = committed.iter().map(|entry| u64::try_from(entry.data.len()).unwrap_or(u64::MAX)).sum();
        let conf_index = self.conf_index;
        output.entries_undecodable = self.apply_entries(committed, proposer, clock_ms, &mut output.applied);
        output.conf_changed |= self.conf_index != conf_index;
        if self.ledger.damage().is_some() {
            // What was applied may rest on a record read as absent: none of it leaves.
            output.damaged = true;
            output.applied.clear();
            output.messages.clear();
            output.read_states.clear();
            return Some(output);
        }
        if applied_any {
            // One batch per round: the round's changes with the applied point, so the store's
            // state is always the state at a whole applied index.
            let mark = self.applied_mark();
            self.ledger.commit_round(&mark).expect("the state store takes the round's writes");
        }
        while let Some((index, at)) = self.proposed_at.front().copied() {
            if index > self.applied_index {
                break;
            }
            self.proposed_at.pop_front();
            output.apply_latencies_ms.push(clock_ms.saturating_sub(at));
        }
        output.persisted_messages = ready.take_persisted_messages();
        if output.installed_snapshot {
            self.snapshot_ready = Some(output.number);
        }
        self.raw.advance_append_async(ready);
        if applied_any {
            self.raw.advance_apply_to(self.applied_index);
        }
        Some(output)
    }

    /// The driver made a Ready durable: raft may count it and release follow-up messages.
    pub fn on_persisted(&mut self, number: u64) {
        self.raw.on_persist_ready(number);
        // Raft counts an installed snapshot as applied only once it is durable.
        if self.snapshot_ready.is_some_and(|snapshot| snapshot <= number) {
            self.snapshot_ready = None;
            self.raw.advance_apply_to(self.applied_index);
        }
    }

    /// Applies committed entries in order; returns how many did not decode. Such an entry is
    /// applied as nothing — every replica holds the same bytes, so every replica skips it — and
    /// never stops a replica (a log entry is input too).
    fn apply_entries(&mut self, entries: Vec<Entry>, proposer: Proposer, clock_ms: u64, applied: &mut Vec<AppliedProposal>) -> u64 {
        let mut undecodable = 0;
        // A leader's replica (or the proposer) reports the records its waiters need; followers
        // have no waiters.
        let leads = self.is_leader();
        for entry in entries {
            assert!(entry.index > self.applied_index || entry.index == 0, "entry {} applied twice", entry.index);
            self.applied_index = entry.index;
            if entry.get_entry_type() == EntryType::EntryConfChange && !entry.data.is_empty() {
                self.apply_conf_change(&entry);
                continue;
            }
            if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
                continue;
            }
            let Ok(payload) = decode_entry(&entry.data) else {
                undecodable += 1;
                continue;
            };
            let ours = payload.proposer == proposer;
            let mut fenced = None;
            for tagged in payload.commands {
                let result = self.ledger.apply_command(payload.timestamp_ms, tagged.command, leads || ours);
                if let AppliedCommand::Fence { outcome } = &result {
                    // A later fence of the same entry that raises nothing keeps the cut.
                    if outcome.raised {
                        fenced = Some(outcome.epoch);
                    }
                }
                let tag = if ours { tagged.tag } else { ProposalTag(0) };
                applied.push(AppliedProposal { tag, applied: result });
            }
            if let Some(epoch) = fenced.filter(|_| self.ledger.damage().is_none()) {
                self.take_backup_view(epoch, clock_ms);
            }
        }
        undecodable
    }

    /// Applies a committed membership change. One raft refuses (removing the last voter, say)
    /// or that does not decode is applied as nothing, the same on every replica.
    fn apply_conf_change(&mut self, entry: &Entry) {
        use protobuf::Message as _;
        let Ok(change) = ConfChange::parse_from_bytes(&entry.data) else {
            return;
        };
        let was_member = self.members().contains(&change.node_id);
        if let Ok(conf_state) = self.raw.apply_conf_change(&change) {
            self.raw.mut_store().set_conf_state(conf_state);
            self.conf_index = entry.index;
            if !was_member && self.members().contains(&change.node_id) {
                self.added_at.insert(change.node_id, entry.index);
            }
        }
    }

    /// This entry raised the fence epoch: the state at its end is the shard's cut for `epoch`.
    /// It is committed as a round of its own (a whole applied index, like every round) and a
    /// read view of it kept (a store snapshot: nothing proportional to the shard is copied).
    fn take_backup_view(&mut self, epoch: u64, clock_ms: u64) {
        let mark = self.applied_mark();
        self.ledger.commit_round(&mark).expect("the state store takes the round's writes");
        let view = self.ledger.store().read_view();
        self.backup_view = Some(BackupView { epoch, generation: self.ledger.generation(), view, last_used_ms: clock_ms });
    }
}
