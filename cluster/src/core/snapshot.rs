//! Streamed snapshots between a shard's leader and a follower that fell behind the compacted
//! log (`crate::snapshot` has the formats). The follower, offered a snapshot by raft, does not
//! hand raft the message at once: it fetches the records chunk by chunk from the leader
//! (`SnapshotFetch` → `SnapshotChunk`, one request in flight, re-sent after silence), stages them
//! in its store under a new generation, and then steps the message, so raft installs a snapshot
//! whose state is already on the node (a generation switch). The leader serves chunks from a
//! consistent view of its store, paced by `snapshot_bytes_per_sec` for the whole node.

use super::NodeCore;
use crate::ids::{NodeId, ShardId};
use crate::ledger::Ledger;
use crate::message::PeerMessage;
use crate::snapshot::{SnapshotDescriptor, SNAPSHOT_CHUNK_BYTES_MAX};
use crate::store::{Key, Value};
use raft::eraftpb::Message;

/// A follower re-sends an unanswered fetch after this long.
const FETCH_RETRY_MS: u64 = 500;
/// A follower gives a stream up (raft offers a snapshot again) after this long without progress.
const STREAM_IDLE_MS: u64 = 20_000;

/// A snapshot this replica is fetching.
pub(super) struct IncomingSnapshot {
    leader: NodeId,
    /// The raft message, stepped once every record is staged.
    message: Message,
    snapshot_id: u64,
    index: u64,
    /// The last key received (without the generation prefix); the next fetch starts after it.
    after: Option<Key>,
    requested_ms: u64,
    progressed_ms: u64,
}

impl NodeCore {
    /// Raft on `shard` was offered a snapshot (already checked: its descriptor decodes and names
    /// this shard and index). A snapshot at or below the commit index is stepped at once (raft
    /// answers it); otherwise this replica fetches it first.
    pub(super) fn snapshot_offered(&mut self, from: NodeId, shard: ShardId, message: Message, descriptor: SnapshotDescriptor) {
        let now = self.time.monotonic_ms;
        let node = self.config.node;
        // A replica started as a learner takes no snapshot from before the announcement that
        // added it which names it a voter: that is an older configuration (before an earlier
        // removal of this node), and installing it would let the empty replica vote in it.
        let started_as_learner =
            self.membership.learned.get(&shard).filter(|members| members.learners.contains(&node) && !members.voters.contains(&node));
        let metadata = message.get_snapshot().get_metadata();
        if started_as_learner.is_some_and(|members| metadata.index < members.epoch && metadata.get_conf_state().voters.contains(&node)) {
            *self.stats.peer_messages_stale.entry("snapshot_before_addition").or_insert(0) += 1;
            return;
        }
        let Some(peer) = self.peers.get_mut(&shard) else {
            return;
        };
        let index = descriptor.mark.index;
        if index <= peer.replica.commit_index() {
            let _ = peer.replica.step(message);
            self.dirty.insert(shard);
            return;
        }
        if let Some(incoming) = &peer.incoming_snapshot {
            if incoming.snapshot_id == descriptor.snapshot_id && incoming.leader == from {
                // The same offer again (raft re-sends while we fetch): keep going.
                return;
            }
            if incoming.index >= index && incoming.leader == from {
                return;
            }
        }
        if peer.replica.has_staged() {
            // A staged snapshot waits for its install: a newer offer comes again after it.
            return;
        }
        // A new stream stages under a generation of its own; what an earlier one staged is
        // deleted in the background (no write goes there again, so the delete races nothing).
        if let Some((start, end)) = peer.replica.begin_staging() {
            self.effects.push(super::Effect::DeleteRange { start, end });
        }
        let fetch = PeerMessage::SnapshotFetch { shard, snapshot_id: descriptor.snapshot_id, after: None };
        let peer = self.peers.get_mut(&shard).expect("checked above");
        peer.incoming_snapshot = Some(IncomingSnapshot {
            leader: from,
            message,
            snapshot_id: descriptor.snapshot_id,
            index,
            after: None,
            requested_ms: now,
            progressed_ms: now,
        });
        self.stats.snapshot_streams_started += 1;
        self.send(from, fetch);
    }

    /// A follower asks for the next chunk of a snapshot this node offered.
    pub(super) fn snapshot_fetch_received(&mut self, from: NodeId, shard: ShardId, snapshot_id: u64, after: Option<Key>) {
        if self.snapshot_budget_bytes < SNAPSHOT_CHUNK_BYTES_MAX as u64 {
            // Paced: served at a later tick, once the budget refilled.
            if self.snapshot_fetches_waiting.len() < SNAPSHOT_FETCHES_WAITING_MAX {
                self.snapshot_fetches_waiting.push_back((from, shard, snapshot_id, after));
            }
            return;
        }
        self.serve_snapshot_fetch(from, shard, snapshot_id, after);
    }

    fn serve_snapshot_fetch(&mut self, from: NodeId, shard: ShardId, snapshot_id: u64, after: Option<Key>) {
        let now = self.time.monotonic_ms;
        let chunk = self
            .peers
            .get_mut(&shard)
            .and_then(|peer| peer.replica.snapshot_chunk(snapshot_id, from, after.as_deref(), SNAPSHOT_CHUNK_BYTES_MAX, now));
        let reply = match chunk {
            Some((entries, done)) => {
                let bytes: usize = entries.iter().map(|(key, value)| key.len() + value.len()).sum();
                self.snapshot_budget_bytes = self.snapshot_budget_bytes.saturating_sub(u64::try_from(bytes).unwrap_or(u64::MAX));
                self.stats.snapshot_bytes_sent += u64::try_from(bytes).unwrap_or(u64::MAX);
                PeerMessage::SnapshotChunk { shard, snapshot_id, entries, done, unknown: false }
            }
            None => PeerMessage::SnapshotChunk { shard, snapshot_id, entries: Vec::new(), done: false, unknown: true },
        };
        self.send(from, reply);
    }

    /// A chunk of the snapshot this replica fetches: staged, then the next fetched — or, after
    /// the last, the raft message is stepped so raft installs the staged state.
    pub(super) fn snapshot_chunk_received(
        &mut self,
        from: NodeId,
        shard: ShardId,
        snapshot_id: u64,
        entries: Vec<(Key, Value)>,
        done: bool,
        unknown: bool,
    ) {
        let now = self.time.monotonic_ms;
        let Some(peer) = self.peers.get_mut(&shard) else {
            return;
        };
        let expected =
            peer.incoming_snapshot.as_ref().is_some_and(|incoming| incoming.leader == from && incoming.snapshot_id == snapshot_id);
        if !expected {
            return;
        }
        if unknown {
            // The leader no longer offers it: give up; raft offers a fresh one.
            peer.incoming_snapshot = None;
            return;
        }
        if entries.iter().any(|(key, value)| Ledger::check_record(key, value).is_err()) {
            // Never staged: give the stream up (raft offers a fresh snapshot, from whichever
            // replica leads by then).
            peer.incoming_snapshot = None;
            *self.stats.peer_messages_rejected.entry("snapshot_record_invalid").or_insert(0) += 1;
            return;
        }
        let last_key = entries.last().map(|(key, _)| key.clone());
        let bytes: usize = entries.iter().map(|(key, value)| key.len() + value.len()).sum();
        if let Err(error) = peer.replica.stage_snapshot_chunk(entries) {
            panic!("shard {shard}: staging a snapshot chunk failed: {error}");
        }
        self.stats.snapshot_bytes_received += u64::try_from(bytes).unwrap_or(u64::MAX);
        let incoming = peer.incoming_snapshot.as_mut().expect("checked above");
        incoming.progressed_ms = now;
        if let Some(key) = last_key {
            incoming.after = Some(key);
        }
        if done {
            let incoming = peer.incoming_snapshot.take().expect("checked above");
            peer.replica.set_staged(incoming.index);
            let _ = peer.replica.step(incoming.message);
            // Raft may decline it (a newer term, a commit past it): then nothing installs it,
            // and the next stream deletes what it staged.
            peer.replica.drop_staged_unless_pending();
            self.dirty.insert(shard);
            return;
        }
        incoming.requested_ms = now;
        let fetch = PeerMessage::SnapshotFetch { shard, snapshot_id, after: incoming.after.clone() };
        self.send(from, fetch);
    }

    /// Per tick: refill the serving budget and serve waiting fetches; re-send fetches that had
    /// no answer; give up streams that made no progress; drop offered snapshots nobody reads.
    pub(super) fn snapshot_tick(&mut self) {
        let now = self.time.monotonic_ms;
        let refill = self.config.limits.snapshot_bytes_per_sec.saturating_mul(self.config.raft.tick_ms) / 1_000;
        let cap = self.config.limits.snapshot_bytes_per_sec.max(SNAPSHOT_CHUNK_BYTES_MAX as u64);
        self.snapshot_budget_bytes = self.snapshot_budget_bytes.saturating_add(refill).min(cap);
        while self.snapshot_budget_bytes >= SNAPSHOT_CHUNK_BYTES_MAX as u64 {
            let Some((from, shard, snapshot_id, after)) = self.snapshot_fetches_waiting.pop_front() else {
                break;
            };
            self.serve_snapshot_fetch(from, shard, snapshot_id, after);
        }
        let mut resend = Vec::new();
        for (shard, peer) in self.peers.iter_mut() {
            peer.replica.expire_snapshot_sources(now);
            peer.replica.expire_backup_view(now);
            let Some(incoming) = peer.incoming_snapshot.as_mut() else {
                continue;
            };
            if now.saturating_sub(incoming.progressed_ms) >= STREAM_IDLE_MS {
                peer.incoming_snapshot = None;
                continue;
            }
            if now.saturating_sub(incoming.requested_ms) >= FETCH_RETRY_MS {
                incoming.requested_ms = now;
                resend.push((
                    incoming.leader,
                    PeerMessage::SnapshotFetch { shard: *shard, snapshot_id: incoming.snapshot_id, after: incoming.after.clone() },
                ));
            }
        }
        for (to, message) in resend {
            self.send(to, message);
        }
    }
}

/// Fetches queued at a leader while its serving budget is spent.
pub(super) const SNAPSHOT_FETCHES_WAITING_MAX: usize = 64;
