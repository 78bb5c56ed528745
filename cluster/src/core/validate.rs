//! Untrusted input: every message from another node is checked here before the core acts on
//! it. Peers are authenticated (mutual TLS binds a frame's sender to its certificate), but a
//! bug, a stale build or a replayed frame must still never move money, stall a shard or reach
//! an assertion: anything that is not well-formed for this cluster's layout and this node is
//! dropped and counted by reason (`CoreStats::peer_messages_rejected`).

use super::NodeCore;
use crate::ids::{NodeId, ShardId};
use crate::ledger::{keys, CreditCmd, FinalizeCmd, ReserveCmd, TransferBody};
use crate::message::{PeerMessage, Request, TransferRequest};
use crate::money::AMOUNT_MINOR_MAX;
use crate::snapshot::{SnapshotDescriptor, SNAPSHOT_CHUNK_BYTES_MAX, SNAPSHOT_CHUNK_ENTRIES_MAX};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};

/// The longest a leg may ask a leader to keep working on it.
/// The longest record key a backup chunk may start after (ids are at most 64 bytes).
const BACKUP_KEY_BYTES_MAX: usize = 1024;
/// The most members (voters and learners) an announcement may name.
const MEMBERS_MAX: usize = 16;
const LEG_TIMEOUT_MS_MAX: u64 = 120_000;
/// The most items one leg may carry (a batch request's limit).
const LEG_ITEMS_MAX: usize = 8_000;
/// The most protocol messages (credits, decisions) one message may carry.
const PROTOCOL_ITEMS_MAX: usize = 65_536;
/// The longest history page a leg may ask for.
const HISTORY_LIMIT_MAX: u32 = 500;
/// Forwards of one protocol message by nodes that do not lead its shard.
const HOPS_MAX: u8 = 2;
/// The longest client request id carried with a leg (the HTTP edge takes at most this).
const REQUEST_ID_BYTES_MAX: usize = 128;

/// Why a peer message was dropped (the label of `settle_peer_messages_rejected_total`).
pub type Rejection = &'static str;

/// Drops an honest node causes too, while the shard's membership changes under it (a message
/// for a replica just removed or not started yet, a hint naming a voter this node has not
/// heard of): counted apart (`CoreStats::peer_messages_stale`), the sender retries or learns.
pub(super) const STALE_MEMBERSHIP: [Rejection; 5] =
    ["raft_no_replica_here", "raft_sender_not_replica", "snapshot_not_replica", "hint_not_replica", "heartbeat_beyond_log"];

/// A message that passed: raft messages come back parsed. (Raft messages for a replica of
/// this node that is quarantined pass too; the node simply does not run that replica.)
pub(super) enum Checked {
    Raft {
        shard: ShardId,
        message: Message,
    },
    /// A raft snapshot offer, with its descriptor (the follower fetches the records first).
    Snapshot {
        shard: ShardId,
        message: Message,
        descriptor: SnapshotDescriptor,
    },
    Other(PeerMessage),
}

/// The longest store key a snapshot chunk may carry (kind, id, position).
const SNAPSHOT_KEY_BYTES_MAX: usize = 256;

impl NodeCore {
    /// A backup fence epoch from a peer is at most `ledger::FENCE_AHEAD_MS_MAX` ahead of the
    /// wall clock.
    fn check_fence(&self, fence: u64) -> Result<(), Rejection> {
        if fence > self.time.wall_ms.saturating_add(crate::ledger::FENCE_AHEAD_MS_MAX) {
            return Err("fence_ahead");
        }
        Ok(())
    }

    /// Checks a message from `from` before the core sees it.
    pub(super) fn check_peer_message(&self, from: NodeId, message: PeerMessage) -> Result<Checked, Rejection> {
        if from == self.config.node {
            return Err("sender_is_self");
        }
        if !self.is_cluster_node(from) {
            return Err("sender_not_member");
        }
        match message {
            PeerMessage::Raft { shard, message } => {
                self.check_shard(shard)?;
                let parsed = Message::parse_from_bytes(&message).map_err(|_| "raft_undecodable")?;
                self.check_raft(from, shard, &parsed)?;
                if parsed.get_msg_type() == MessageType::MsgSnapshot {
                    let snapshot = parsed.get_snapshot();
                    let descriptor = SnapshotDescriptor::decode(&snapshot.data).map_err(|_| "snapshot_undecodable")?;
                    if descriptor.shard != shard || descriptor.mark.index != snapshot.get_metadata().index {
                        return Err("snapshot_wrong_shard");
                    }
                    return Ok(Checked::Snapshot { shard, message: parsed, descriptor });
                }
                Ok(Checked::Raft { shard, message: parsed })
            }
            PeerMessage::Leg { shard, timeout_ms, ref request, ref request_id, .. } => {
                self.check_shard(shard)?;
                if timeout_ms > LEG_TIMEOUT_MS_MAX {
                    return Err("leg_timeout");
                }
                // A request id is logged on this node: bounded and printable, like at the edge.
                if request_id.as_ref().is_some_and(|id| id.len() > REQUEST_ID_BYTES_MAX || id.chars().any(char::is_control)) {
                    return Err("request_id_invalid");
                }
                self.check_request(request)?;
                Ok(Checked::Other(message))
            }
            PeerMessage::LegReply { .. } => Ok(Checked::Other(message)),
            PeerMessage::Credits { shard, ref credits, hops, fence } => {
                self.check_shard(shard)?;
                self.check_fence(fence)?;
                if hops > HOPS_MAX || credits.len() > PROTOCOL_ITEMS_MAX {
                    return Err("protocol_bounds");
                }
                for credit in credits {
                    self.check_credit(shard, credit)?;
                }
                Ok(Checked::Other(message))
            }
            PeerMessage::Decisions { shard, ref decisions, hops, fence } => {
                self.check_shard(shard)?;
                self.check_fence(fence)?;
                if hops > HOPS_MAX || decisions.len() > PROTOCOL_ITEMS_MAX {
                    return Err("protocol_bounds");
                }
                for decision in decisions {
                    self.check_decision(shard, decision)?;
                }
                Ok(Checked::Other(message))
            }
            PeerMessage::LeaderHint { shard, leader } => {
                self.check_shard(shard)?;
                if !self.voters_of(shard).contains(&leader) {
                    return Err("hint_not_replica");
                }
                Ok(Checked::Other(message))
            }
            PeerMessage::SnapshotFetch { shard, ref after, .. } => {
                self.check_shard(shard)?;
                self.check_replica(from, shard)?;
                if after.as_ref().is_some_and(|key| key.len() > SNAPSHOT_KEY_BYTES_MAX) {
                    return Err("snapshot_key_invalid");
                }
                Ok(Checked::Other(message))
            }
            PeerMessage::SnapshotChunk { shard, ref entries, .. } => {
                self.check_shard(shard)?;
                self.check_replica(from, shard)?;
                if entries.len() > SNAPSHOT_CHUNK_ENTRIES_MAX {
                    return Err("snapshot_chunk_bounds");
                }
                let bytes: usize = entries.iter().map(|(key, value)| key.len() + value.len()).sum();
                if bytes > 2 * SNAPSHOT_CHUNK_BYTES_MAX {
                    return Err("snapshot_chunk_bounds");
                }
                let keys_valid = entries
                    .iter()
                    .all(|(key, _)| key.len() <= SNAPSHOT_KEY_BYTES_MAX && key.first().is_some_and(|kind| keys::KINDS.contains(kind)));
                if !keys_valid {
                    return Err("snapshot_key_invalid");
                }
                Ok(Checked::Other(message))
            }
            PeerMessage::Members { shard, ref voters, ref learners, .. } => {
                self.check_shard(shard)?;
                let known = voters.iter().chain(learners.iter()).all(|node| self.is_cluster_node(*node));
                let overlap = learners.iter().any(|learner| voters.contains(learner));
                if voters.is_empty() || voters.len() + learners.len() > MEMBERS_MAX || !known || overlap {
                    return Err("members_invalid");
                }
                // Only a voter of the shard announces its members (the leader does).
                if !voters.contains(&from) {
                    return Err("members_not_from_voter");
                }
                Ok(Checked::Other(message))
            }
            PeerMessage::Registry { epoch, ref nodes, ref retired } => {
                // Any member passes the registry on (a node that missed a registration while
                // down may not know the system shard's voters any more); each registration or
                // retirement raised the epoch by one.
                let bootstrap = self.config.placement.nodes();
                let well_formed =
                    nodes.iter().all(|(id, peer)| *id != 0 && !bootstrap.contains(id) && crate::ledger::valid_peer_address(peer));
                let disjoint = retired.iter().all(|id| *id != 0 && !nodes.iter().any(|(node, _)| node == id));
                let records = nodes.len() + retired.len();
                let count = u64::try_from(records).unwrap_or(u64::MAX);
                if records > crate::ledger::REGISTRY_RECORDS_MAX || count > epoch || !well_formed || !disjoint {
                    return Err("registry_invalid");
                }
                Ok(Checked::Other(message))
            }
            PeerMessage::NodeInfo { .. } => Ok(Checked::Other(message)),
            // The driver answers these before the core sees any message.
            PeerMessage::Join { .. } | PeerMessage::Welcome { .. } => Err("join_not_for_core"),
        }
    }

    /// The sender hosts a replica of the shard (snapshots pass only between its replicas).
    fn check_replica(&self, from: NodeId, shard: ShardId) -> Result<(), Rejection> {
        // A replica here takes them from any node of the cluster (its applied membership may trail the
        // leader's); without one, only between the members it knows.
        if self.peers.contains_key(&shard) {
            return Ok(());
        }
        let members = self.members_of(shard);
        if !members.contains(&from) || !members.contains(&self.config.node) {
            return Err("snapshot_not_replica");
        }
        Ok(())
    }

    fn check_shard(&self, shard: ShardId) -> Result<(), Rejection> {
        if shard >= self.config.placement.shard_count() {
            return Err("shard_out_of_range");
        }
        Ok(())
    }

    /// A raft message must come from a replica of the shard, claim the node that sent it,
    /// be addressed to this node's replica, and carry a snapshot that is a valid ledger of
    /// this shard.
    fn check_raft(&self, from: NodeId, shard: ShardId, message: &Message) -> Result<(), Rejection> {
        if message.from != from {
            return Err("raft_sender_mismatch");
        }
        // A replica here takes messages from any node of the cluster (raft itself knows the shard's
        // configuration, which a lagging replica's applied one may trail); without one, only
        // from the members this node knows, and only if they name it.
        let members = self.members_of(shard);
        let hosted = self.peers.contains_key(&shard);
        if message.to != self.config.node {
            return Err("raft_not_for_this_replica");
        }
        if !hosted && !members.contains(&message.to) {
            return Err("raft_no_replica_here");
        }
        if !members.contains(&from) && !hosted {
            return Err("raft_sender_not_replica");
        }
        // A heartbeat commits what the leader counts this replica as holding: from a leader
        // that still counts what an earlier replica of this node held (removed and added back
        // empty: a rebuild) it reaches past the log, which raft would panic on.
        let beyond_log = |peer: &super::peer::ShardPeer| message.commit > peer.replica.last_index();
        if message.get_msg_type() == MessageType::MsgHeartbeat && self.peers.get(&shard).is_some_and(beyond_log) {
            return Err("heartbeat_beyond_log");
        }
        Ok(())
    }

    fn check_request(&self, request: &Request) -> Result<(), Rejection> {
        match request {
            Request::Transfers(items) => {
                if items.len() > LEG_ITEMS_MAX {
                    return Err("leg_bounds");
                }
                items.iter().try_for_each(check_transfer_request)
            }
            Request::Reserve(items) => {
                if items.len() > LEG_ITEMS_MAX {
                    return Err("leg_bounds");
                }
                items.iter().try_for_each(|ReserveCmd { body, .. }| check_body(body))
            }
            Request::CreateAccounts(items) if items.is_empty() || items.len() > LEG_ITEMS_MAX => Err("leg_bounds"),
            Request::History { limit, .. } if *limit == 0 || *limit > HISTORY_LIMIT_MAX => Err("leg_bounds"),
            Request::System(command) => command.check().map_err(|_| "system_bounds"),
            Request::SystemRead(read) => read.check().map_err(|_| "system_bounds"),
            Request::Stop(command) => command.check().map_err(|_| "stop_bounds"),
            Request::ReadStops(_) | Request::ReadRefunds { .. } => Ok(()),
            Request::Refund(refund) if refund.reason.len() > crate::ledger::REFUND_REASON_BYTES_MAX => Err("leg_bounds"),
            Request::Refund(refund) => check_transfer_request(&refund.transfer),
            Request::Hold(hold) if hold.timeout_ms == 0 || hold.timeout_ms > crate::ledger::HOLD_TIMEOUT_MS_MAX => Err("leg_bounds"),
            Request::Hold(hold) => check_transfer_request(&hold.transfer),
            Request::Capture { amount: Some(amount), .. } if *amount <= 0 || *amount > crate::money::AMOUNT_MINOR_MAX => Err("leg_bounds"),
            Request::Capture { .. } | Request::Void { .. } | Request::BalanceAsOf { .. } => Ok(()),
            Request::Statement { limit, from_ms, to_ms, .. }
                if *limit == 0 || *limit > crate::ledger::STATEMENT_ROWS_MAX || from_ms > to_ms =>
            {
                Err("leg_bounds")
            }
            Request::Statement { .. } => Ok(()),
            Request::Customer(command) => command.check().map_err(|_| "customer_bounds"),
            Request::SetRiskLimits { shard, limits } => {
                if *shard >= self.config.placement.shard_count() {
                    return Err("leg_bounds");
                }
                limits.check().map_err(|_| "risk_bounds")
            }
            Request::ReadRiskLimits { shard } | Request::Fence { shard, .. } if *shard >= self.config.placement.shard_count() => {
                Err("leg_bounds")
            }
            Request::BackupChunk { shard, after, .. } => {
                let too_long = after.as_ref().is_some_and(|after| after.len() > BACKUP_KEY_BYTES_MAX);
                if *shard >= self.config.placement.shard_count() || too_long {
                    return Err("leg_bounds");
                }
                Ok(())
            }
            Request::Fence { epoch, .. } => self.check_fence(*epoch),
            Request::MoveReplica { shard, from, to } => {
                // `from == to` rebuilds that node's replica (`operation/membership.rs`).
                if *shard >= self.config.placement.shard_count() || !self.is_cluster_node(*from) || !self.is_cluster_node(*to) {
                    return Err("leg_bounds");
                }
                Ok(())
            }
            Request::Fenced { fence, request } => {
                self.check_fence(*fence)?;
                self.check_request(&request.clone().into_request())
            }
            Request::ReadCustomer(_) | Request::ReadRiskLimits { .. } | Request::ReadChallenge { .. } => Ok(()),
            Request::VerifyTransfer { command: crate::ledger::VerifyCmd::IssueOtp { otp, .. }, .. } => {
                otp.sealed.check().map_err(|_| "verify_bounds")
            }
            Request::VerifyTransfer { .. } => Ok(()),
            Request::CreateAccount(_)
            | Request::CreateAccounts(_)
            | Request::ReadAccount(_)
            | Request::ReadTransfer { .. }
            | Request::History { .. } => Ok(()),
        }
    }

    /// A credit request for payee shard `shard`: the payee lives there, the payer on the shard
    /// the request names (another one), and the amount is a transfer's.
    fn check_credit(&self, shard: ShardId, credit: &CreditCmd) -> Result<(), Rejection> {
        let placement = &self.config.placement;
        if placement.shard_of(&credit.to) != shard {
            return Err("credit_wrong_shard");
        }
        if credit.payer_shard == shard || placement.shard_of(&credit.from) != credit.payer_shard {
            return Err("credit_wrong_payer_shard");
        }
        check_body(&credit.body())
    }

    /// A decision for payer shard `shard`: the payer lives there.
    fn check_decision(&self, shard: ShardId, decision: &FinalizeCmd) -> Result<(), Rejection> {
        if self.config.placement.shard_of(&decision.body.from) != shard {
            return Err("decision_wrong_shard");
        }
        check_body(&decision.body)
    }
}

fn check_transfer_request(item: &TransferRequest) -> Result<(), Rejection> {
    check_body(&item.body())
}

/// A transfer body: two different accounts and an amount in (0, max].
fn check_body(body: &TransferBody) -> Result<(), Rejection> {
    if body.amount <= 0 || body.amount > AMOUNT_MINOR_MAX {
        return Err("amount_out_of_range");
    }
    if body.from == body.to {
        return Err("same_account");
    }
    Ok(())
}
