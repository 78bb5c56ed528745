//! What the core counts for monitoring: plain counters and fixed-bucket latency histograms (the
//! core has no metrics library; the node turns these into Prometheus families at scrape time),
//! and each shard's status as `/v1/cluster` and `settle status` show it.

use super::NodeCore;
use crate::ids::{NodeId, ShardId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Upper bounds of the latency buckets, in milliseconds.
const LATENCY_BOUNDS_MS: [u64; 12] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000];

/// A cumulative-friendly histogram: counts per upper bound (the last bucket is +Inf).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buckets {
    pub bounds_ms: Vec<u64>,
    /// `counts[i]` observations ≤ `bounds_ms[i]` and > the previous bound; one extra for +Inf.
    pub counts: Vec<u64>,
    pub sum_ms: u64,
    pub count: u64,
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets { bounds_ms: LATENCY_BOUNDS_MS.to_vec(), counts: vec![0; LATENCY_BOUNDS_MS.len() + 1], sum_ms: 0, count: 0 }
    }
}

impl Buckets {
    pub fn observe(&mut self, value_ms: u64) {
        let slot = self.bounds_ms.iter().position(|bound| value_ms <= *bound).unwrap_or(self.bounds_ms.len());
        self.counts[slot] += 1;
        self.sum_ms = self.sum_ms.saturating_add(value_ms);
        self.count += 1;
    }
}

/// Counters of one node's core since it started. Serialize only: the reasons are static
/// strings, so a copy is never allocated per dropped proposal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CoreStats {
    /// Commands handed to raft (one log entry carries a round's worth per shard).
    pub proposals: u64,
    /// Commands raft or leadership loss dropped before they were logged, by reason
    /// (`raft`, `not_leader`).
    pub proposals_dropped: BTreeMap<&'static str, u64>,
    /// From proposing an entry on the leader to applying it there.
    pub propose_apply_ms: Buckets,
    /// From asking for a read index to holding it.
    pub read_index_ms: Buckets,
    pub snapshots_sent: u64,
    pub snapshots_installed: u64,
    /// Credit requests re-sent for pending transfers, and those asking to prevent.
    pub redrives: u64,
    pub prevents: u64,
    /// Holds released at their expiry on shards this node leads.
    pub holds_expired: u64,
    /// Legs sent to another node's leader.
    pub legs_forwarded: u64,
    /// Client calls that ran out of time (answered `Unavailable` for what was missing).
    pub calls_timed_out: u64,
    pub calls_overloaded: u64,
    /// Peer messages dropped before the core acted on them, by reason (`validate.rs`).
    pub peer_messages_rejected: BTreeMap<&'static str, u64>,
    /// Peer messages dropped because they met a membership this node has not caught up with
    /// (or the sender has not), by reason (`validate::STALE_MEMBERSHIP`).
    pub peer_messages_stale: BTreeMap<&'static str, u64>,
    /// Committed entries that did not decode: applied as nothing, the same on every replica.
    pub entries_undecodable: u64,
    /// Replicas stopped while running because their ledger met a stored record that does not
    /// decode (`NodeCore::quarantine_damaged`), and the last such damage.
    pub replicas_quarantined_damaged: u64,
    pub last_damage: Option<String>,
    /// Snapshot streams this node started fetching, and bytes of snapshot records it sent and
    /// received.
    pub snapshot_streams_started: u64,
    pub snapshot_bytes_sent: u64,
    pub snapshot_bytes_received: u64,
    /// Replicas this node started because a shard took it as a new member, and replicas it
    /// stopped because a shard removed it (`core/membership.rs`).
    pub replicas_added: u64,
    /// Quarantined replicas here dropped for an empty one the shard added back (a rebuild).
    pub replicas_rebuilt: u64,
    /// Legs from a node whose view of a shard's members was older than this voter's: it was
    /// sent the members (`correct_router`).
    pub routers_corrected: u64,
    pub replicas_removed: u64,
}

/// A node's role in one shard, as `/v1/cluster`, metrics and `settle status` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShardRole {
    Leader,
    Follower,
    Candidate,
    PreCandidate,
    /// This node hosts no replica of the shard.
    None,
    /// This node's replica is kept out: a stored record failed its checksum.
    Quarantined,
}

impl ShardRole {
    pub fn as_str(&self) -> &'static str {
        match self {
            ShardRole::Leader => "leader",
            ShardRole::Follower => "follower",
            ShardRole::Candidate => "candidate",
            ShardRole::PreCandidate => "precandidate",
            ShardRole::None => "none",
            ShardRole::Quarantined => "quarantined",
        }
    }

    /// Whether this node runs a replica of the shard.
    pub fn hosted(&self) -> bool {
        !matches!(self, ShardRole::None | ShardRole::Quarantined)
    }

    fn of(role: raft::StateRole) -> ShardRole {
        match role {
            raft::StateRole::Leader => ShardRole::Leader,
            raft::StateRole::Follower => ShardRole::Follower,
            raft::StateRole::Candidate => ShardRole::Candidate,
            raft::StateRole::PreCandidate => ShardRole::PreCandidate,
        }
    }
}

/// A shard as `/v1/cluster` and `settle status` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardStatus {
    pub id: ShardId,
    pub leader: Option<NodeId>,
    /// The shard's voters, and its learners (replicas being added by a move), as this node
    /// knows them (`core/membership.rs`).
    pub replicas: Vec<NodeId>,
    #[serde(default)]
    pub learners: Vec<NodeId>,
    pub term: u64,
    pub role: ShardRole,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_index: u64,
    /// Entries held in the log (since the last compaction).
    pub log_entries: u64,
    /// Times this replica saw the shard's leader change.
    pub leader_changes: u64,
    pub accounts: u64,
    /// Cross-shard transfers prepared here and not finalized (in doubt).
    pub pending_transfers: usize,
    /// On the leader: how long the oldest of them has been pending, in milliseconds.
    pub pending_oldest_ms: u64,
    /// The account cache of this replica (accounts are virtual actors): accounts active now and
    /// the bytes they are counted for; activations, passivations and hits since it started.
    pub cache: crate::ledger::CacheStats,
}

impl NodeCore {
    pub fn stats(&self) -> &CoreStats {
        &self.stats
    }

    /// Every shard's state as this node sees it.
    pub fn shard_status(&self) -> Vec<ShardStatus> {
        let placement = &self.config.placement;
        placement
            .shard_ids()
            .map(|shard| {
                let (replicas, learners) = (self.voters_of(shard), self.learners_of(shard));
                match self.peers.get(&shard) {
                    Some(peer) => {
                        let replica = &peer.replica;
                        let oldest_since = peer.drives.values().filter_map(|drive| drive.since_ms).min();
                        let pending_oldest_ms = match oldest_since {
                            Some(since) if replica.is_leader() => self.time.since_ms(since),
                            _ => 0,
                        };
                        ShardStatus {
                            id: shard,
                            leader: replica.leader(),
                            replicas,
                            learners,
                            term: replica.term(),
                            role: ShardRole::of(replica.role()),
                            commit_index: replica.commit_index(),
                            applied_index: replica.applied_index(),
                            last_index: replica.last_index(),
                            log_entries: u64::try_from(replica.log_entry_count()).unwrap_or(u64::MAX),
                            leader_changes: replica.leader_changes(),
                            accounts: replica.ledger().account_count(),
                            pending_transfers: replica.ledger().pending_count(),
                            pending_oldest_ms,
                            cache: replica.ledger().cache_stats(),
                        }
                    }
                    None => ShardStatus {
                        id: shard,
                        leader: self.router.leader_hint(shard),
                        replicas,
                        learners,
                        term: 0,
                        role: if self.quarantined.contains(&shard) { ShardRole::Quarantined } else { ShardRole::None },
                        commit_index: 0,
                        applied_index: 0,
                        last_index: 0,
                        log_entries: 0,
                        leader_changes: 0,
                        accounts: 0,
                        pending_transfers: 0,
                        pending_oldest_ms: 0,
                        cache: crate::ledger::CacheStats::default(),
                    },
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Observations land in the first bucket whose bound holds them; the rest go to +Inf.
    #[test]
    fn buckets_count_by_upper_bound() {
        let mut buckets = Buckets::default();
        for value in [0, 1, 2, 7, 6_000] {
            buckets.observe(value);
        }
        assert_eq!(buckets.counts[0], 2);
        assert_eq!(buckets.counts[1], 1);
        assert_eq!(buckets.counts[3], 1);
        assert_eq!(*buckets.counts.last().unwrap(), 1);
        assert_eq!((buckets.count, buckets.sum_ms), (5, 6_010));
    }
}
