//! Which nodes run a replica of each shard. The bootstrap placement (`placement.rs`) names a
//! shard's first voters; after that a shard's members are its raft configuration, changed only
//! through its own log (`operation/membership.rs` moves a replica one change at a time). So:
//! - a node with a replica reads the members from it (the applied configuration);
//! - every shard leader announces its members to every node (`PeerMessage::Members`) after a
//!   change and every `leader_balance_interval_ms`; a node without a replica routes by the
//!   newest announcement it has (by the leader's applied index), else by the placement;
//! - a node named in an announcement without a replica starts one, empty: the leader's log is
//!   compacted before a member is added (`MoveStage::Preparing`), so it starts from a snapshot;
//! - a replica whose applied configuration no longer names its node is stopped and its log
//!   dropped; its state stays as a tombstone (an applied mark without the node) until the node
//!   next starts (`recovery.rs` deletes the records then) or the shard comes back to it.

use super::NodeCore;
use crate::ids::{NodeId, ShardId};
use crate::ledger::{Ledger, SYSTEM_SHARD};
use crate::message::PeerMessage;
use crate::placement::NodeRegistry;
use crate::replica::{ShardReplica, ShardWrite};
use crate::storage::ShardStorage;
use std::collections::BTreeMap;

/// A shard's members as announced by its leader at applied index `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Members {
    pub epoch: u64,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

/// What this node learned of shards it has no replica of, and what waits to be written.
#[derive(Default)]
pub(super) struct Membership {
    pub learned: BTreeMap<ShardId, Members>,
    /// Log regions to drop with the next persist round.
    pub cleans: Vec<ShardId>,
    /// Removed replicas whose log is dropped only once the state store holds their tombstone
    /// (the applied mark without this node) durably: waiting for the next state persist, and
    /// in the one under way. Until then the log still counts as a copy of what it held.
    pub removed_unpersisted: Vec<ShardId>,
    pub removed_persisting: Vec<ShardId>,
    /// Replicas whose applied configuration leaves this node out, stopping once they applied
    /// their whole log (`leave_if_done`).
    pub leaving: std::collections::BTreeSet<ShardId>,
    /// Shards whose log region is being dropped before a replica starts where an earlier one
    /// was, with the persist round that drops it; and those whose drop is durable (the state
    /// may go now: a crash can no longer leave a compacted log without its state).
    pub cleaning: BTreeMap<ShardId, u64>,
    pub cleaned: std::collections::BTreeSet<ShardId>,
    pub last_announce_ms: u64,
    /// The newest node registry this node has seen (`registry_tick`, `registry_received`).
    pub registry: NodeRegistry,
}

impl NodeCore {
    /// The shard's voters and learners as this node knows them: its replica's applied
    /// configuration, else the newest announcement, else the bootstrap placement.
    fn known_members(&self, shard: ShardId) -> (Vec<NodeId>, Vec<NodeId>) {
        if let Some(replica) = self.peers.get(&shard).map(|peer| &peer.replica).filter(|replica| !replica.voters().is_empty()) {
            return (replica.voters(), replica.learners());
        }
        match self.membership.learned.get(&shard) {
            Some(members) => (members.voters.clone(), members.learners.clone()),
            None => (self.config.placement.replicas(shard), Vec::new()),
        }
    }

    pub(super) fn voters_of(&self, shard: ShardId) -> Vec<NodeId> {
        self.known_members(shard).0
    }

    /// The learners of a shard as this node knows them (replicas being added).
    pub(super) fn learners_of(&self, shard: ShardId) -> Vec<NodeId> {
        self.known_members(shard).1
    }

    /// Voters and learners: every node that should run a replica of the shard.
    pub(super) fn members_of(&self, shard: ShardId) -> Vec<NodeId> {
        let (mut members, learners) = self.known_members(shard);
        members.extend(learners);
        members
    }

    /// At start: the shards this node was removed from route by the members its tombstone
    /// recorded (until a leader's announcement brings newer ones), not by the placement.
    pub(super) fn learn_from_tombstones(&mut self) {
        use protobuf::Message as _;
        let node = self.config.node;
        for shard in self.config.placement.shard_ids() {
            if self.peers.contains_key(&shard) || self.quarantined.contains(&shard) {
                continue;
            }
            let store = &self.store;
            let Ok(mark) = Ledger::stored_mark(shard, |key| store.get(key)) else {
                continue;
            };
            if !crate::recovery::removed_here(&mark.conf_state, node) {
                continue;
            }
            if let Ok(conf) = raft::eraftpb::ConfState::parse_from_bytes(&mark.conf_state) {
                self.membership.learned.insert(shard, Members { epoch: mark.index, voters: conf.voters, learners: conf.learners });
            }
        }
    }

    /// A leader tells every other node of the cluster its shard's members.
    pub(super) fn announce_members(&mut self, shard: ShardId) {
        let Some(peer) = self.peers.get(&shard) else {
            return;
        };
        let node = self.config.node;
        if !peer.replica.is_leader() || !peer.replica.voters().contains(&node) {
            // A leader that applied its own removal hands the shard over and says nothing.
            return;
        }
        let (epoch, voters, learners) = (peer.replica.applied_index(), peer.replica.voters(), peer.replica.learners());
        let mut nodes: Vec<NodeId> = self.cluster_nodes();
        nodes.extend(voters.iter().chain(learners.iter()).copied());
        nodes.sort_unstable();
        nodes.dedup();
        for to in nodes.into_iter().filter(|to| *to != node) {
            self.send(to, PeerMessage::Members { shard, epoch, voters: voters.clone(), learners: learners.clone() });
        }
    }

    /// How new this node's view of a shard's members is: its replica's applied index, else the
    /// newest announcement's epoch, else 0 (the placement). Carried by every leg it sends.
    pub(super) fn members_epoch(&self, shard: ShardId) -> u64 {
        match self.peers.get(&shard) {
            Some(peer) => peer.replica.applied_index(),
            None => self.membership.learned.get(&shard).map_or(0, |members| members.epoch),
        }
    }

    /// A leg reached this node, which does not lead the shard: if it runs a voter of the shard
    /// whose configuration is newer than the sender's view, the sender gets the members first
    /// (then the NotLeader answer with the leader hint), so a stale router is corrected at once
    /// instead of at the next announcement.
    pub(super) fn correct_router(&mut self, to: NodeId, shard: ShardId, their_epoch: u64) {
        let node = self.config.node;
        let Some(replica) = self.peers.get(&shard).map(|peer| &peer.replica) else {
            return;
        };
        if replica.is_leader() || !replica.voters().contains(&node) || replica.applied_index() <= their_epoch {
            return;
        }
        let (epoch, voters, learners) = (replica.applied_index(), replica.voters(), replica.learners());
        self.stats.routers_corrected += 1;
        self.send(to, PeerMessage::Members { shard, epoch, voters, learners });
    }

    /// Every node of the cluster: the bootstrap members and every node registered since, in
    /// id order.
    pub fn cluster_nodes(&self) -> Vec<NodeId> {
        let registry = &self.membership.registry;
        let mut nodes = self.config.placement.nodes().to_vec();
        nodes.extend(registry.nodes.keys().copied());
        nodes.retain(|node| !registry.retired.contains(node));
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// Whether a node is a bootstrap member or registered, and not retired.
    pub fn is_cluster_node(&self, node: NodeId) -> bool {
        let registry = &self.membership.registry;
        (self.config.placement.nodes().contains(&node) || registry.nodes.contains_key(&node)) && !registry.retired.contains(&node)
    }

    /// The newest node registry this node has seen.
    pub fn registry(&self) -> &NodeRegistry {
        &self.membership.registry
    }

    /// The registry this node kept from its last run (the driver reads it from the data dir
    /// before the first tick); a newer one replaces it as soon as it is heard of.
    pub fn set_registry(&mut self, registry: NodeRegistry) {
        if registry.epoch > self.membership.registry.epoch {
            self.membership.registry = registry;
        }
    }

    /// Takes a newer registry and tells the driver (which links to new nodes and keeps it on
    /// disk). An older or equal one changes nothing. Whether it took it.
    fn adopt_registry(&mut self, registry: NodeRegistry) -> bool {
        if registry.epoch <= self.membership.registry.epoch {
            return false;
        }
        self.membership.registry = registry.clone();
        self.effects.push(super::Effect::Registry(registry));
        true
    }

    /// A replica of the system shard reads the registry it applied (one store read a tick);
    /// its leader tells every node after a change, and every node that knows a registry passes
    /// it on every `leader_balance_interval_ms` (a node that missed a registration while down
    /// may know none of the system shard's voters any more).
    fn registry_tick(&mut self, periodic: bool) {
        let known = self.membership.registry.epoch;
        let applied = self.peers.get(&SYSTEM_SHARD).filter(|peer| peer.replica.ledger().registry_epoch() > known).map(|peer| {
            let (epoch, records) = peer.replica.ledger().node_registry();
            let retired = records.iter().filter(|record| record.retired_at_ms.is_some()).map(|record| record.id).collect();
            let nodes =
                records.into_iter().filter(|record| record.retired_at_ms.is_none()).map(|record| (record.id, record.peer)).collect();
            (peer.replica.is_leader(), NodeRegistry { epoch, nodes, retired })
        });
        let leader_changed = match applied {
            Some((leading, registry)) => self.adopt_registry(registry) && leading,
            None => false,
        };
        if (leader_changed || periodic) && self.membership.registry.epoch > 0 {
            let registry = &self.membership.registry;
            let message = PeerMessage::Registry {
                epoch: registry.epoch,
                nodes: registry.nodes.iter().map(|(id, peer)| (*id, peer.clone())).collect(),
                retired: registry.retired.iter().copied().collect(),
            };
            let node = self.config.node;
            for to in self.cluster_nodes().into_iter().filter(|to| *to != node) {
                self.send(to, message.clone());
            }
        }
    }

    /// A registry from a replica of the system shard (checked in `validate.rs`).
    pub(super) fn registry_received(&mut self, epoch: u64, nodes: Vec<(NodeId, String)>, retired: Vec<NodeId>) {
        self.adopt_registry(NodeRegistry { epoch, nodes: nodes.into_iter().collect(), retired: retired.into_iter().collect() });
    }

    /// Every `leader_balance_interval_ms`, each leader announces its shard's members (a node
    /// that restarted or missed a change learns them within one period).
    pub(super) fn announce_tick(&mut self) {
        let now = self.time.monotonic_ms;
        let periodic = now.saturating_sub(self.membership.last_announce_ms) >= self.config.limits.leader_balance_interval_ms;
        self.registry_tick(periodic);
        if !periodic {
            return;
        }
        self.membership.last_announce_ms = now;
        let led: Vec<ShardId> = self.peers.iter().filter(|(_, peer)| peer.replica.is_leader()).map(|(shard, _)| *shard).collect();
        for shard in led {
            self.announce_members(shard);
        }
    }

    /// A leader's announcement (checked in `validate.rs`: `from` is one of the voters it names).
    pub(super) fn members_received(&mut self, from: NodeId, shard: ShardId, members: Members) {
        let node = self.config.node;
        let named = members.voters.contains(&node) || members.learners.contains(&node);
        if let Some(peer) = self.peers.get(&shard) {
            // A replica knows its members from its own log. One that was removed while it
            // could not hear of it (down, partitioned) is told here: the leader no longer
            // sends it anything.
            // Newer than anything the replica applied, and than the announcement that started it
            // (a replica waiting for its first snapshot has applied nothing): not a stale one
            // that overtook the news of its addition.
            let started_by = self.membership.learned.get(&shard).map_or(0, |known| known.epoch);
            let known = peer.replica.applied_index().max(started_by);
            if !named && members.epoch > known && !peer.replica.is_leader() {
                // Its own applied mark must say so before its log goes (else a restart would
                // run it again from its old mark with no log).
                let written = self.peers.get_mut(&shard).expect("looked up").replica.write_tombstone(&members.voters, &members.learners);
                if written.is_err() {
                    return;
                }
                self.remove_replica(shard);
                self.membership.learned.insert(shard, members);
            }
            return;
        }
        if self.quarantined.contains(&shard) {
            if !self.rebuild_admits(shard, &members) {
                return;
            }
            self.quarantined.remove(&shard);
            self.stats.replicas_rebuilt += 1;
        }
        if self.membership.learned.get(&shard).is_some_and(|known| known.epoch >= members.epoch) {
            return;
        }
        self.membership.learned.insert(shard, members);
        if named {
            self.start_replica(shard);
        } else {
            // Only a leader announces: a node without a replica now knows where to send legs.
            self.learn_leader(shard, from);
        }
    }

    /// Whether an announcement lets this node drop its quarantined replica of `shard` for an
    /// empty one: the damaged replica was a **voter** (its stored applied mark says so), and the
    /// announcement, made after the damaged replica's last applied point, names this node a
    /// learner — a voter becomes a learner only by being removed and added back, so the shard
    /// removed the damaged replica after the damage (a rebuild). An older announcement (from
    /// before this node was promoted, relayed late), a damaged learner (the leader would count
    /// what it acknowledged before), or an unreadable mark leave it quarantined.
    fn rebuild_admits(&self, shard: ShardId, members: &Members) -> bool {
        let node = self.config.node;
        if !members.learners.contains(&node) || members.voters.contains(&node) {
            return false;
        }
        let Ok(mark) = Ledger::stored_mark(shard, |key| self.store.get(key)) else {
            return false;
        };
        let was_voter = match crate::recovery::stored_voters(&mark.conf_state) {
            Some(voters) if !voters.is_empty() => voters.contains(&node),
            // No configuration recorded: the bootstrap voters.
            _ if mark.conf_state.is_empty() => self.config.placement.replicas(shard).contains(&node),
            _ => false,
        };
        was_voter && members.epoch > mark.index
    }

    /// After a membership change applied on this node's replica: a leader announces it, and a
    /// replica whose node is no member any more stops.
    pub(super) fn conf_changed(&mut self, shard: ShardId) {
        let node = self.config.node;
        let Some(peer) = self.peers.get(&shard) else {
            return;
        };
        let members = peer.replica.members();
        if !members.is_empty() && !members.contains(&node) {
            self.membership.leaving.insert(shard);
            self.leave_if_done(shard);
            return;
        }
        self.membership.leaving.remove(&shard);
        self.announce_members(shard);
    }

    /// A replica whose applied configuration leaves its node out stops once it has applied
    /// everything in its log (a later entry could add the node again, and it may have
    /// acknowledged it: its log must not go while a leader may count it). A leader hands its
    /// shard to a caught-up voter first. Checked after every poll and tick; a replica left with
    /// entries it will never apply is stopped by the next announcement.
    pub(super) fn leave_if_done(&mut self, shard: ShardId) {
        let node = self.config.node;
        let Some(peer) = self.peers.get_mut(&shard) else {
            self.membership.leaving.remove(&shard);
            return;
        };
        let members = peer.replica.members();
        if members.is_empty() || members.contains(&node) {
            self.membership.leaving.remove(&shard);
            return;
        }
        if peer.replica.is_leader() {
            let voters = peer.replica.voters();
            if let Some(target) = super::caught_up_target(&peer.replica, voters, node, &self.leadership.peers_draining) {
                peer.replica.transfer_leader(target);
                self.dirty.insert(shard);
            }
            return;
        }
        if peer.replica.applied_index() < peer.replica.last_index() {
            return;
        }
        // A replica replaying the log towards the announcement that started it passes through
        // configurations without its node: not a reason to leave.
        let started_by = self.membership.learned.get(&shard).map_or(0, |known| known.epoch);
        if peer.replica.applied_index() < started_by {
            return;
        }
        let learned = Members { epoch: peer.replica.applied_index(), voters: peer.replica.voters(), learners: peer.replica.learners() };
        self.membership.leaving.remove(&shard);
        self.remove_replica(shard);
        self.membership.learned.insert(shard, learned);
    }

    /// The persist round `id` (and every earlier one) is durable: log drops it carried are done.
    pub(super) fn cleans_persisted(&mut self, id: u64) {
        let done: Vec<ShardId> = self.membership.cleaning.iter().filter(|(_, round)| **round <= id).map(|(shard, _)| *shard).collect();
        let node = self.config.node;
        for shard in done {
            self.membership.cleaning.remove(&shard);
            self.membership.cleaned.insert(shard);
            // The announcement that named this node waits for no other: start now.
            let named = self
                .membership
                .learned
                .get(&shard)
                .is_some_and(|members| members.voters.contains(&node) || members.learners.contains(&node));
            if named && !self.peers.contains_key(&shard) && !self.quarantined.contains(&shard) {
                self.start_replica(shard);
            }
        }
    }

    /// `leave_if_done` for every replica waiting to leave.
    pub(super) fn leaving_tick(&mut self) {
        let leaving: Vec<ShardId> = self.membership.leaving.iter().copied().collect();
        for shard in leaving {
            self.leave_if_done(shard);
        }
    }

    /// Starts an empty replica of a shard this node was added to. Whatever an earlier replica
    /// of the shard left in the state store is deleted first; it waits for the leader's
    /// snapshot.
    fn start_replica(&mut self, shard: ShardId) {
        // A removal's log drop still waiting must not meet the new replica's log.
        self.membership.removed_unpersisted.retain(|removed| *removed != shard);
        self.membership.removed_persisting.retain(|removed| *removed != shard);
        if crate::recovery::has_records(&self.store, shard) && !self.membership.cleaned.contains(&shard) {
            // An earlier replica of the shard was here: its log goes first, durably, then its
            // state (the next announcement starts the replica). The other order could leave a
            // compacted log without the state it was compacted behind.
            if !self.membership.cleaning.contains_key(&shard) {
                self.membership.cleans.push(shard);
            }
            return;
        }
        self.membership.cleaned.remove(&shard);
        if let Err(error) = crate::recovery::clear_shard(&self.store, shard) {
            slog::warn!(self.logger, "cannot clear the shard's old records; the replica is not started"; "shard" => shard, "error" => %error);
            return;
        }
        let budget = super::cache_bytes_per_shard(self.config.cache_bytes_max, &self.config.placement, self.config.node);
        let ledger = match Ledger::open(shard, self.config.placement.shard_count(), self.store.clone(), budget) {
            Ok((ledger, _)) => ledger,
            Err(error) => {
                slog::warn!(self.logger, "cannot open the shard's ledger; the replica is not started"; "shard" => shard, "error" => %error);
                return;
            }
        };
        // The bootstrap voters, as every replica of the shard started: if the leader sends the
        // log from its first entry instead of a snapshot (a new leader that never compacted),
        // replaying it rebuilds the configuration change by change. From an empty
        // configuration it would end with this node as the only voter.
        let storage = ShardStorage::bootstrap(self.config.placement.replicas(shard));
        let replica = match ShardReplica::new(self.config.node, shard, storage, ledger, 0, &self.config.raft, &self.logger) {
            Ok(replica) => replica,
            Err(error) => {
                slog::warn!(self.logger, "cannot start the replica"; "shard" => shard, "error" => %error);
                return;
            }
        };
        let mut peer = super::peer::ShardPeer::new(replica);
        peer.replica.plant_bug(self.planted);
        self.peers.insert(shard, peer);
        // A log region an earlier replica left goes with the first round.
        self.membership.cleans.push(shard);
        self.stats.replicas_added += 1;
        self.redraw_election_timeout(shard);
        self.dirty.insert(shard);
    }

    /// Stops this node's replica of a shard it is no member of any more: its waiters look
    /// elsewhere, its log is dropped once its tombstone is durable.
    fn remove_replica(&mut self, shard: ShardId) {
        let node = self.config.node;
        {
            let (mut ctx, peers) = self.ctx();
            if let Some(peer) = peers.get_mut(&shard) {
                let hint = peer.replica.leader().filter(|leader| *leader != node);
                peer.reset(hint, &mut ctx);
            }
        }
        self.deliver_outbox();
        let leader = self.peers.remove(&shard).and_then(|peer| peer.replica.leader());
        self.dirty.remove(&shard);
        self.rounds.compactions.remove(&shard);
        // Its rounds still in flight are written (the clean comes after them) but never
        // released: their Ready numbers and messages belong to this replica, not to one a later
        // addition starts.
        for shards in self.rounds.inflight.values_mut() {
            shards.retain(|(round_shard, _, _)| *round_shard != shard);
        }
        self.membership.leaving.remove(&shard);
        self.membership.removed_unpersisted.push(shard);
        self.stats.replicas_removed += 1;
        if let Some(leader) = leader {
            self.learn_leader(shard, leader);
        }
    }

    /// The log regions to drop, as writes of the round being built.
    pub(super) fn take_cleans(&mut self, writes: &mut Vec<ShardWrite>) {
        let round = self.rounds.next;
        for shard in std::mem::take(&mut self.membership.cleans) {
            if !self.peers.contains_key(&shard) {
                self.membership.cleaning.insert(shard, round);
            }
            // A clean goes first in its shard's write (a new replica's first entries follow it).
            writes.insert(0, ShardWrite { shard, clean: true, ..ShardWrite::default() });
        }
    }
}
