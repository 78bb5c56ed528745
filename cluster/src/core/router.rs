//! The origin side of a client request: split it into one leg per shard, send each leg to the
//! shard's leader (locally or over the peer link), retry on NotLeader, silence or an unknown
//! leader until the call's deadline, and assemble the reply. Every leg is idempotent (transfers
//! and account creation dedup by id; reads have no effect), so a retry is always safe.
//!
//! Transfers go in two steps: first every transfer id whose home shard is not its payer's shard
//! is reserved there (`Request::Reserve`: the id is bound to its body, first body wins, for
//! ever); only the transfers the home shards cleared are then sent to their payer shards. A
//! transfer whose id is bound to another body is refused with `idempotency_key_reused` and
//! moves nothing, whichever nodes and shards the two requests went through.

use super::operation::{account, customer, read, reserve, stop, system, transfer};
use super::peer::Origin;
use super::{Effect, NodeCore};
use crate::ids::{CallId, LegId, NodeId, ShardId, TransferId};
use crate::ledger::{
    CustomerOutcome, RejectCode, ReserveOutcome, StopOutcome, SystemCmd, SystemOutcome, SystemRead, SystemReadReply, TransferView,
};
use crate::message::{
    AccountRequest, AccountResult, HoldRequest, PeerMessage, RefundRequest, Reply, Request, TransferRequest, TransferResult,
};
use crate::money::Minor;
use crate::placement::Placement;
use crate::planted::{planted, PlantedBug};
use std::collections::BTreeMap;

/// Forwards of one credit or decision batch by nodes that do not lead its shard.
const PROTOCOL_HOPS_MAX: u8 = 2;

/// Redirects followed at once for one leg before it waits for the next tick.
const REDIRECTS_PER_TICK_MAX: u32 = 3;

/// The origin side of every call this node received: calls, their legs, and where this node
/// believes the leaders of shards it has no replica of are.
#[derive(Default)]
pub(super) struct Router {
    calls: BTreeMap<CallId, Call>,
    legs: BTreeMap<LegId, Leg>,
    next_leg: u64,
    /// Leaders learned from NotLeader replies, for shards with no replica here.
    hints: BTreeMap<ShardId, Hint>,
    transfers_inflight: usize,
}

/// Who this node believes leads a shard it has no replica of.
struct Hint {
    leader: NodeId,
    /// When (monotonic ms) `rotate_hint` last moved it on: it rotates at most once per shard per
    /// instant, however many silent legs and unanswered credit requests point at the shard.
    rotated_ms: Option<u64>,
}

impl Router {
    /// Leg ids start at a point drawn from the incarnation, so a reply to a leg of an earlier
    /// run of this node (still in flight when it restarted) cannot match a leg of this run
    /// (found by the simulator: seed 1339 acknowledged a transfer with another one's outcome).
    pub(super) fn starting_at(incarnation: u64) -> Router {
        Router { next_leg: incarnation.wrapping_mul(0x9e37_79b9_7f4a_7c15), ..Router::default() }
    }

    pub(super) fn len(&self) -> usize {
        self.calls.len()
    }

    pub(super) fn leader_hint(&self, shard: ShardId) -> Option<NodeId> {
        self.hints.get(&shard).map(|hint| hint.leader)
    }
}

/// What a one-transfer call's payer-shard leg is, when it is not a plain transfer.
enum Wrap {
    /// A refund of `original`, with its reason.
    Refund(TransferId, String),
    /// A hold lasting `timeout_ms` (a delayed transfer when it settles on expiry).
    Hold { timeout_ms: u64, settle_on_expiry: bool },
}

struct Call {
    deadline_ms: u64,
    state: CallState,
    legs: Vec<LegId>,
    transfers: usize,
    /// Transfers held back while the call's reservation legs are out, by item position, with
    /// whether they may go (a home shard cleared them, or their payer's shard is their home).
    held: BTreeMap<usize, (TransferRequest, bool)>,
    /// A refund or hold call: its one transfer's payer-shard leg is a `Refund` or a `Hold`.
    wrap: Option<Wrap>,
    /// The highest backup fence epoch of the home shards that reserved this call's ids: its
    /// payer-shard legs carry it (`Request::Fenced`).
    fence: u64,
    request_id: Option<String>,
}

enum CallState {
    /// One leg whose reply is the call's reply.
    Single(Option<Reply>),
    /// Transfers by item position; each leg fills the positions it carries.
    Batch(Vec<Option<TransferResult>>),
    /// Accounts of a batch by item position; each leg fills the positions it carries.
    Accounts(Vec<Option<AccountResult>>),
    /// A transfer looked up without its payer: the id's home shard first, then (if it names
    /// one through the id's reservation) the payer's shard.
    Lookup(Option<TransferView>),
}

struct Leg {
    call: CallId,
    shard: ShardId,
    request: Request,
    /// For batch legs: the call's item positions, in the order of the leg's transfers.
    items: Vec<usize>,
    deadline_ms: u64,
    /// When the current attempt left, and to whom; `None` means waiting for the next tick.
    sent: Option<(u64, NodeId)>,
    redirects: u32,
    request_id: Option<String>,
}

impl NodeCore {
    pub(super) fn start_call(&mut self, call: CallId, request: Request, deadline_ms: u64, request_id: Option<String>) {
        let limits = &self.config.limits;
        // Items in flight: transfers, and accounts of a batch (both bounded together).
        let transfers = match &request {
            Request::Transfers(items) => items.len(),
            Request::Refund(_) | Request::Hold(_) => 1,
            Request::CreateAccounts(items) => items.len(),
            _ => 0,
        };
        let overloaded = self.router.calls.len() >= limits.calls_inflight_max
            || self.router.transfers_inflight + transfers > limits.transfers_inflight_max;
        if overloaded {
            self.stats.calls_overloaded += 1;
            self.effects.push(Effect::Reply { call, reply: Reply::Overloaded });
            return;
        }
        if matches!(request, Request::Fenced { .. }) {
            // Internal to legs: a client call never starts with one.
            self.effects.push(Effect::Reply { call, reply: Reply::Unavailable });
            return;
        }
        let placement = &self.config.placement;
        let mut legs: Vec<(ShardId, Request, Vec<usize>)> = Vec::new();
        let mut held = BTreeMap::new();
        let mut wrap = None;
        let request = match request {
            Request::Refund(request) => {
                wrap = Some(Wrap::Refund(request.original, request.reason));
                Request::Transfers(vec![request.transfer])
            }
            Request::Hold(request) => {
                wrap = Some(Wrap::Hold { timeout_ms: request.timeout_ms, settle_on_expiry: request.settle_on_expiry });
                Request::Transfers(vec![request.transfer])
            }
            other => other,
        };
        let state = match request {
            Request::CreateAccount(create) => {
                legs.push((account::shard(placement, &create), Request::CreateAccount(create), Vec::new()));
                CallState::Single(None)
            }
            Request::CreateAccounts(items) => {
                let count = items.len();
                let mut by_shard: BTreeMap<ShardId, (Vec<AccountRequest>, Vec<usize>)> = BTreeMap::new();
                for (position, item) in items.into_iter().enumerate() {
                    let entry = by_shard.entry(account::shard(placement, &item)).or_default();
                    entry.0.push(item);
                    entry.1.push(position);
                }
                legs.extend(by_shard.into_iter().map(|(shard, (items, positions))| (shard, Request::CreateAccounts(items), positions)));
                CallState::Accounts(vec![None; count])
            }
            Request::Transfers(items) => {
                let count = items.len();
                let skip = planted(self.planted, PlantedBug::SkipIdReservation) || planted(self.planted, PlantedBug::IdReuseUnchecked);
                let reservations = if skip { Vec::new() } else { reserve::legs(placement, &items) };
                if reservations.is_empty() {
                    legs.extend(wrapped_legs(transfer_legs(placement, items.into_iter().enumerate()), wrap.as_ref()));
                } else {
                    legs.extend(reservations);
                    for (position, item) in items.into_iter().enumerate() {
                        // Transfers reserved by their own payer shard may go as soon as the rest do.
                        let cleared = !reserve::needs_reservation(placement, &item);
                        held.insert(position, (item, cleared));
                    }
                }
                CallState::Batch(vec![None; count])
            }
            Request::Reserve(commands) => {
                // Internal to legs; a caller that submits it directly names ids of one home shard
                // (the home shard's leader refuses a leg with any other as misrouted).
                if let Some(first) = commands.first() {
                    legs.push((reserve::home_shard(placement, &first.id), Request::Reserve(commands), Vec::new()));
                }
                CallState::Single(None)
            }
            read @ (Request::ReadAccount(_) | Request::History { .. } | Request::Statement { .. } | Request::BalanceAsOf { .. }) => {
                legs.push((read::account_shard(placement, &read), read, Vec::new()));
                CallState::Single(None)
            }
            Request::ReadTransfer { id, payer: Some(payer) } => {
                let shard = read::payer_shard(placement, &payer);
                legs.push((shard, Request::ReadTransfer { id, payer: Some(payer) }, Vec::new()));
                CallState::Single(None)
            }
            Request::ReadTransfer { id, payer: None } => {
                legs.push((reserve::home_shard(placement, &id), Request::ReadTransfer { id, payer: None }, Vec::new()));
                CallState::Lookup(None)
            }
            Request::System(command) => {
                legs.push((system::shard(placement, &command), Request::System(command), Vec::new()));
                CallState::Single(None)
            }
            Request::SystemRead(read) => {
                legs.push((crate::ledger::SYSTEM_SHARD, Request::SystemRead(read), Vec::new()));
                CallState::Single(None)
            }
            Request::Stop(command) => {
                legs.push((stop::shard(placement, &command), Request::Stop(command), Vec::new()));
                CallState::Single(None)
            }
            Request::ReadStops(account) => {
                legs.push((placement.shard_of(&account), Request::ReadStops(account), Vec::new()));
                CallState::Single(None)
            }
            Request::ReadRefunds { original, payee } => {
                legs.push((placement.shard_of(&payee), Request::ReadRefunds { original, payee }, Vec::new()));
                CallState::Single(None)
            }
            Request::Capture { id, payer, amount } => {
                legs.push((placement.shard_of(&payer), Request::Capture { id, payer, amount }, Vec::new()));
                CallState::Single(None)
            }
            Request::Void { id, payer } => {
                legs.push((placement.shard_of(&payer), Request::Void { id, payer }, Vec::new()));
                CallState::Single(None)
            }
            Request::Customer(command) => {
                legs.push((customer::shard(placement, &command), Request::Customer(command), Vec::new()));
                CallState::Single(None)
            }
            Request::ReadCustomer(customer) => {
                legs.push((placement.customer_shard_of(&customer), Request::ReadCustomer(customer), Vec::new()));
                CallState::Single(None)
            }
            Request::SetRiskLimits { shard, limits } => {
                legs.push((shard, Request::SetRiskLimits { shard, limits }, Vec::new()));
                CallState::Single(None)
            }
            Request::ReadRiskLimits { shard } => {
                legs.push((shard, Request::ReadRiskLimits { shard }, Vec::new()));
                CallState::Single(None)
            }
            Request::Fence { shard, epoch } => {
                legs.push((shard, Request::Fence { shard, epoch }, Vec::new()));
                CallState::Single(None)
            }
            Request::BackupChunk { shard, epoch, after } => {
                legs.push((shard, Request::BackupChunk { shard, epoch, after }, Vec::new()));
                CallState::Single(None)
            }
            Request::MoveReplica { shard, from, to } => {
                legs.push((shard, Request::MoveReplica { shard, from, to }, Vec::new()));
                CallState::Single(None)
            }
            Request::VerifyTransfer { payer, command } => {
                legs.push((placement.shard_of(&payer), Request::VerifyTransfer { payer, command }, Vec::new()));
                CallState::Single(None)
            }
            Request::ReadChallenge { id, payer } => {
                legs.push((placement.shard_of(&payer), Request::ReadChallenge { id, payer }, Vec::new()));
                CallState::Single(None)
            }
            Request::Refund(_) | Request::Hold(_) => unreachable!("a refund or hold became a transfer call above"),
            Request::Fenced { .. } => unreachable!("refused above"),
        };
        if legs.is_empty() {
            // An empty batch: nothing to route, answer at once.
            let reply = match state {
                CallState::Accounts(_) => Reply::Accounts(Vec::new()),
                _ => Reply::Transfers(Vec::new()),
            };
            self.effects.push(Effect::Reply { call, reply });
            return;
        }
        self.router.transfers_inflight += transfers;
        self.router.calls.insert(call, Call { deadline_ms, state, legs: Vec::new(), transfers, held, wrap, fence: 0, request_id });
        self.start_legs(call, legs);
    }

    /// Adds legs to a call and sends them.
    fn start_legs(&mut self, call_id: CallId, legs: Vec<(ShardId, Request, Vec<usize>)>) {
        let Some(call) = self.router.calls.get_mut(&call_id) else {
            return;
        };
        let mut leg_ids = Vec::new();
        for (shard, request, items) in legs {
            let leg_id = LegId(self.router.next_leg);
            self.router.next_leg = self.router.next_leg.wrapping_add(1);
            let request_id = call.request_id.clone();
            let leg = Leg { call: call_id, shard, request, items, deadline_ms: call.deadline_ms, sent: None, redirects: 0, request_id };
            self.router.legs.insert(leg_id, leg);
            leg_ids.push(leg_id);
        }
        call.legs.extend(leg_ids.iter().copied());
        for leg_id in leg_ids {
            self.dispatch_leg(leg_id);
        }
    }

    /// Who leads `shard` as far as this node knows: its own replica's view, else a learned hint,
    /// else the preferred leader.
    pub(super) fn leader_of(&self, shard: ShardId) -> Option<NodeId> {
        if let Some(peer) = self.peers.get(&shard) {
            return peer.replica.leader();
        }
        if let Some(hint) = self.router.hints.get(&shard) {
            return Some(hint.leader);
        }
        // No replica here (or a quarantined one): guess the first other replica.
        let node = self.config.node;
        self.voters_of(shard).into_iter().find(|replica| *replica != node)
    }

    /// Records who leads a shard this node has no replica of.
    pub(super) fn learn_leader(&mut self, shard: ShardId, leader: NodeId) {
        if !self.peers.contains_key(&shard) && leader != self.config.node {
            // A rotation earlier in this instant still counts: learning does not re-arm it.
            self.router.hints.entry(shard).and_modify(|hint| hint.leader = leader).or_insert(Hint { leader, rotated_ms: None });
        }
    }

    /// For a shard with no replica here whose presumed leader went silent: try the next
    /// replica (any replica answers NotLeader with the leader it knows). At most once per shard
    /// per instant: many silent legs or unanswered credit requests to one shard are one piece
    /// of news, and rotating once for each would skip replicas or come back to the silent one.
    pub(super) fn rotate_hint(&mut self, shard: ShardId) {
        if self.peers.contains_key(&shard) {
            return;
        }
        let now = self.time.monotonic_ms;
        if self.router.hints.get(&shard).is_some_and(|hint| hint.rotated_ms == Some(now)) {
            return;
        }
        let node = self.config.node;
        let replicas: Vec<NodeId> = self.voters_of(shard).into_iter().filter(|replica| *replica != node).collect();
        let Some(first) = replicas.first().copied() else {
            return;
        };
        let current = self.leader_of(shard).unwrap_or(first);
        let position = replicas.iter().position(|replica| *replica == current).unwrap_or(0);
        let next = replicas[(position + 1) % replicas.len()];
        self.router.hints.insert(shard, Hint { leader: next, rotated_ms: Some(now) });
    }

    /// Where to forward a protocol message for a shard this node does not lead: to the leader
    /// it knows, at most `PROTOCOL_HOPS_MAX` times, telling the sender who leads. `None` drops
    /// it (the coordinator re-sends anyway).
    pub(super) fn redirect(&mut self, from: NodeId, shard: ShardId, hops: u8) -> Option<NodeId> {
        let node = self.config.node;
        let leader = self.leader_of(shard).filter(|leader| *leader != node && *leader != from)?;
        if self.peers.contains_key(&shard) {
            self.send(from, PeerMessage::LeaderHint { shard, leader });
        }
        (hops < PROTOCOL_HOPS_MAX).then_some(leader)
    }

    fn dispatch_leg(&mut self, leg_id: LegId) {
        let Some(leg) = self.router.legs.get(&leg_id) else {
            return;
        };
        let shard = leg.shard;
        let node = self.config.node;
        let target = self.leader_of(shard);
        match target {
            Some(leader) if leader == node => {
                let leads = self.peers.get(&shard).is_some_and(|peer| peer.replica.is_leader());
                if !leads {
                    self.router.legs.get_mut(&leg_id).expect("looked up").sent = None;
                    return;
                }
                let leg = self.router.legs.get_mut(&leg_id).expect("looked up");
                leg.sent = Some((self.time.monotonic_ms, node));
                let (deadline_ms, request) = (leg.deadline_ms, leg.request.clone());
                self.accept_leg(Origin::Local(leg_id), shard, deadline_ms, request);
            }
            Some(leader) => {
                let leg = self.router.legs.get_mut(&leg_id).expect("looked up");
                leg.sent = Some((self.time.monotonic_ms, leader));
                self.stats.legs_forwarded += 1;
                let timeout_ms = leg.deadline_ms.saturating_sub(self.time.monotonic_ms);
                let (request, request_id) = (leg.request.clone(), leg.request_id.clone());
                let members_epoch = self.members_epoch(shard);
                self.send(leader, PeerMessage::Leg { leg: leg_id, shard, timeout_ms, request, request_id, members_epoch });
            }
            None => {
                self.router.legs.get_mut(&leg_id).expect("looked up").sent = None;
            }
        }
    }

    /// A leader (this node when `from` is `None`) answered a leg.
    pub(super) fn leg_replied(&mut self, leg_id: LegId, from: Option<NodeId>, reply: Reply) {
        let Some(leg) = self.router.legs.get_mut(&leg_id) else {
            return;
        };
        if from.is_some() && from != leg.sent.map(|(_, to)| to) {
            // Not from the node this leg was last sent to (a late answer from a node it was
            // sent to before, or a replayed frame): ignore it, the leg has its own answer coming.
            return;
        }
        if !reply_fits(&leg.request, &reply) {
            // Not an answer to this leg (a stale reply): ignore it, the leg retries.
            return;
        }
        let fence_limit = self.time.wall_ms.saturating_add(crate::ledger::FENCE_AHEAD_MS_MAX);
        if matches!(&reply, Reply::Reservations { fence, .. } if *fence > fence_limit) {
            // A backup fence no honest home shard holds (input from a peer): ignored, like any
            // reply that does not fit; the leg retries.
            return;
        }
        match reply {
            Reply::NotLeader { leader } => {
                let node = self.config.node;
                let useful = leader.filter(|hint| Some(*hint) != from && *hint != node);
                leg.sent = None;
                let shard = leg.shard;
                match useful {
                    Some(hint) => {
                        let redirect = leg.redirects < REDIRECTS_PER_TICK_MAX;
                        if redirect {
                            leg.redirects += 1;
                        }
                        self.learn_leader(shard, hint);
                        if redirect {
                            self.dispatch_leg(leg_id);
                        }
                    }
                    // A replica that does not know the leader either: ask another one next.
                    None if from.is_some() => self.rotate_hint(shard),
                    None => {}
                }
            }
            Reply::Unavailable | Reply::Overloaded => {
                leg.sent = None;
            }
            reply => self.leg_done(leg_id, reply),
        }
    }

    fn leg_done(&mut self, leg_id: LegId, reply: Reply) {
        let leg = self.router.legs.remove(&leg_id).expect("caller checked");
        let Some(call) = self.router.calls.get_mut(&leg.call) else {
            return;
        };
        call.legs.retain(|id| *id != leg_id);
        let finished = call.legs.is_empty();
        match (&mut call.state, reply) {
            (CallState::Single(slot), reply) => *slot = Some(reply),
            (CallState::Batch(slots), Reply::Transfers(results)) => {
                assert_eq!(results.len(), leg.items.len(), "a leader answered every transfer of a leg");
                for (position, result) in leg.items.iter().zip(results) {
                    slots[*position] = Some(result);
                }
            }
            (CallState::Accounts(slots), Reply::Accounts(results)) => {
                assert_eq!(results.len(), leg.items.len(), "a leader answered every account of a leg");
                for (position, result) in leg.items.iter().zip(results) {
                    slots[*position] = Some(result);
                }
            }
            (CallState::Accounts(_), other) => panic!("an account leg was answered with {other:?}"),
            (CallState::Lookup(found), Reply::Transfer(view)) => *found = view,
            (CallState::Lookup(_), Reply::Reserved(body)) => {
                let placement = &self.config.placement;
                let payer_shard = read::payer_shard(placement, &body.from);
                let id = match &leg.request {
                    Request::ReadTransfer { id, .. } => id.clone(),
                    _ => unreachable!("a lookup's legs read a transfer"),
                };
                // On the home shard itself the record would have been there: not posted.
                if payer_shard != leg.shard {
                    let request = Request::ReadTransfer { id, payer: Some(body.from) };
                    self.start_legs(leg.call, vec![(payer_shard, request, Vec::new())]);
                    return;
                }
            }
            (CallState::Lookup(_), _) => {}
            (CallState::Batch(slots), Reply::Reservations { answers, fence }) => {
                assert_eq!(answers.len(), leg.items.len(), "a home shard answered every reservation of a leg");
                call.fence = call.fence.max(fence);
                for (position, (_, outcome)) in leg.items.iter().zip(answers) {
                    match outcome {
                        ReserveOutcome::Reserved | ReserveOutcome::Replayed => {
                            if let Some((_, cleared)) = call.held.get_mut(position) {
                                *cleared = true;
                            }
                        }
                        ReserveOutcome::Reused => {
                            call.held.remove(position);
                            slots[*position] = Some(TransferResult::Refused(RejectCode::IdempotencyKeyReused));
                        }
                        ReserveOutcome::WrongShard => {
                            // Outcome unknown to the client; a retry reserves again.
                            call.held.remove(position);
                            slots[*position] = Some(TransferResult::Unavailable);
                        }
                    }
                }
            }
            (CallState::Batch(_), other) => panic!("a transfer leg was answered with {other:?}"),
        }
        if finished && !call.held.is_empty() {
            // Every reservation is answered: the cleared transfers go to their payer shards.
            let cleared: Vec<(usize, TransferRequest)> = std::mem::take(&mut call.held)
                .into_iter()
                .filter_map(|(position, (item, cleared))| cleared.then_some((position, item)))
                .collect();
            let legs = fenced_legs(wrapped_legs(transfer_legs(&self.config.placement, cleared), call.wrap.as_ref()), call.fence);
            if !legs.is_empty() {
                self.start_legs(leg.call, legs);
                return;
            }
        }
        if finished {
            self.finish_call(leg.call, false);
        }
    }

    fn finish_call(&mut self, call_id: CallId, timed_out: bool) {
        let Some(call) = self.router.calls.remove(&call_id) else {
            return;
        };
        for leg in &call.legs {
            self.router.legs.remove(leg);
        }
        self.router.transfers_inflight -= call.transfers;
        let reply = match call.state {
            CallState::Single(Some(reply)) => reply,
            CallState::Single(None) => Reply::Unavailable,
            CallState::Batch(slots) => {
                Reply::Transfers(slots.into_iter().map(|slot| slot.unwrap_or(TransferResult::Unavailable)).collect())
            }
            CallState::Accounts(slots) => {
                Reply::Accounts(slots.into_iter().map(|slot| slot.unwrap_or(AccountResult::Unavailable)).collect())
            }
            CallState::Lookup(found) if timed_out && found.is_none() => Reply::Unavailable,
            CallState::Lookup(found) => Reply::Transfer(found),
        };
        self.effects.push(Effect::Reply { call: call_id, reply });
    }

    /// Deadlines and retries: expired calls answer `Unavailable` for what is missing; legs
    /// without an answer are sent again to whoever leads now.
    pub(super) fn calls_tick(&mut self) {
        let now = self.time.monotonic_ms;
        let expired: Vec<CallId> = self.router.calls.iter().filter(|(_, call)| call.deadline_ms <= now).map(|(id, _)| *id).collect();
        for call in expired {
            self.stats.calls_timed_out += 1;
            self.finish_call(call, true);
        }
        let attempt_timeout = self.config.limits.leg_attempt_timeout_ms;
        let mut retry = Vec::new();
        let mut silent = Vec::new();
        for (leg_id, leg) in self.router.legs.iter_mut() {
            leg.redirects = 0;
            if leg.sent.is_some_and(|(sent_ms, target)| target != self.config.node && now.saturating_sub(sent_ms) >= attempt_timeout) {
                silent.push(leg.shard);
            }
            // A local leader answers every task, at the latest by failing it when it loses the
            // shard, so only legs sent to another node need a timeout.
            // A leg sent to a leader that has since been replaced goes to the new one at once.
            let due = match leg.sent {
                None => true,
                Some((_, target)) if target == self.config.node => false,
                Some((sent_ms, target)) => {
                    let replaced = self.peers.get(&leg.shard).and_then(|peer| peer.replica.leader()).is_some_and(|leader| leader != target);
                    replaced || now.saturating_sub(sent_ms) >= attempt_timeout
                }
            };
            if due {
                retry.push(*leg_id);
            }
        }
        for shard in silent {
            self.rotate_hint(shard);
        }
        for leg_id in retry {
            self.dispatch_leg(leg_id);
        }
    }
}

/// A refund or hold call's transfer leg carries what it refunds (`Request::Refund`) or how long
/// it holds (`Request::Hold`).
fn wrapped_legs(legs: Vec<(ShardId, Request, Vec<usize>)>, wrap: Option<&Wrap>) -> Vec<(ShardId, Request, Vec<usize>)> {
    let Some(wrap) = wrap else {
        return legs;
    };
    legs.into_iter()
        .map(|(shard, request, positions)| match request {
            Request::Transfers(mut items) if items.len() == 1 => {
                let transfer = items.remove(0);
                let request = match wrap {
                    Wrap::Refund(original, reason) => {
                        Request::Refund(RefundRequest { transfer, original: original.clone(), reason: reason.clone() })
                    }
                    Wrap::Hold { timeout_ms, settle_on_expiry } => {
                        Request::Hold(HoldRequest { transfer, timeout_ms: *timeout_ms, settle_on_expiry: *settle_on_expiry })
                    }
                };
                (shard, request, positions)
            }
            other => (shard, other, positions),
        })
        .collect()
}

/// Payer-shard legs of transfers a home shard at backup fence `fence` cleared: wrapped so the
/// payer shard applies that fence first (nothing to wrap before any backup).
fn fenced_legs(legs: Vec<(ShardId, Request, Vec<usize>)>, fence: u64) -> Vec<(ShardId, Request, Vec<usize>)> {
    if fence == 0 {
        return legs;
    }
    legs.into_iter()
        .map(|(shard, request, positions)| match crate::message::FencedRequest::wrap(request) {
            Ok(request) => (shard, Request::Fenced { fence, request }, positions),
            Err(other) => (shard, *other, positions),
        })
        .collect()
}

/// One transfer leg per payer shard, carrying the item positions in order.
fn transfer_legs(placement: &Placement, items: impl IntoIterator<Item = (usize, TransferRequest)>) -> Vec<(ShardId, Request, Vec<usize>)> {
    let mut by_shard: BTreeMap<ShardId, (Vec<TransferRequest>, Vec<usize>)> = BTreeMap::new();
    for (position, item) in items {
        let entry = by_shard.entry(transfer::payer_shard(placement, &item)).or_default();
        entry.0.push(item);
        entry.1.push(position);
    }
    by_shard.into_iter().map(|(shard, (commands, positions))| (shard, Request::Transfers(commands), positions)).collect()
}

/// Whether a stored transfer is the one asked for: id, payer, payee, currency, and `amount` (the
/// view's own, or for a hold what it held) equal to the request's.
fn view_answers(view: &TransferView, asked: &TransferRequest, amount: Minor) -> bool {
    view.id == asked.id && view.from == asked.from && view.to == asked.to && view.currency == asked.currency && amount == asked.amount
}

/// Whether a reply answers this request: the right kind, and for transfers the same ids and
/// bodies in order. A mismatch can only be a stale reply and must never reach a client.
fn reply_fits(request: &Request, reply: &Reply) -> bool {
    match (request, reply) {
        (_, Reply::NotLeader { .. } | Reply::Unavailable | Reply::Overloaded) => true,
        (Request::Transfers(commands), Reply::Transfers(results)) => {
            commands.len() == results.len()
                && commands.iter().zip(results).all(|(command, result)| match result {
                    TransferResult::Done(view) => view_answers(view, command, view.amount),
                    TransferResult::Refused(_) | TransferResult::Unavailable => true,
                })
        }
        (Request::Fenced { request, .. }, reply) => reply_fits(&request.clone().into_request(), reply),
        (Request::Reserve(commands), Reply::Reservations { answers, .. }) => {
            commands.len() == answers.len() && commands.iter().zip(answers).all(|(command, (answered, _))| command == answered)
        }
        (Request::CreateAccounts(creates), Reply::Accounts(results)) => {
            creates.len() == results.len()
                && creates.iter().zip(results).all(|(create, result)| match result {
                    AccountResult::Done { account, .. } => account.as_ref().is_none_or(|account| account.id == create.id),
                    AccountResult::Unavailable => true,
                })
        }
        (Request::CreateAccount(create), Reply::Account { account, .. }) => account.as_ref().is_none_or(|account| account.id == create.id),
        (Request::ReadAccount(id), Reply::AccountState(state)) => state.as_ref().is_none_or(|account| account.id == *id),
        (Request::ReadTransfer { id, .. }, Reply::Transfer(view)) => view.as_ref().is_none_or(|view| view.id == *id),
        (Request::ReadTransfer { payer: None, .. }, Reply::Reserved(_)) => true,
        (Request::History { .. }, Reply::History(_)) => true,
        (Request::MoveReplica { shard, .. }, Reply::Moved(status)) => status.shard == *shard,
        (Request::Statement { .. }, Reply::Statement(_)) | (Request::BalanceAsOf { .. }, Reply::Balance(_)) => true,
        (Request::System(command), Reply::System(outcome)) => system_reply_fits(command, outcome),
        (Request::Stop(command), Reply::Stop(outcome)) => match outcome {
            StopOutcome::Placed(record) | StopOutcome::Lifted(record) | StopOutcome::Replayed(record) | StopOutcome::Conflict(record) => {
                record.id == *command.id() && record.account == *command.account()
            }
            StopOutcome::AccountNotFound | StopOutcome::StopNotFound | StopOutcome::Invalid(_) => true,
        },
        (Request::ReadStops(account), Reply::Stops(stops)) => stops.iter().flatten().all(|stop| stop.account == *account),
        (Request::Customer(command), Reply::Customer(outcome)) => match outcome.as_ref() {
            CustomerOutcome::Registered(record)
            | CustomerOutcome::Verified(record)
            | CustomerOutcome::Updated(record)
            | CustomerOutcome::Replayed(record)
            | CustomerOutcome::Conflict(record) => record.id == *command.customer(),
            CustomerOutcome::CustomerNotFound | CustomerOutcome::TooManyVerifications | CustomerOutcome::Invalid(_) => true,
        },
        (Request::ReadCustomer(customer), Reply::CustomerState(report)) => {
            report.as_ref().is_none_or(|report| report.record.id == *customer)
        }
        (Request::SetRiskLimits { .. }, Reply::Risk(_))
        | (Request::ReadRiskLimits { .. }, Reply::RiskLimits(_))
        | (Request::Fence { .. }, Reply::Fenced(_))
        | (Request::BackupChunk { .. }, Reply::BackupChunk(_)) => true,
        (Request::VerifyTransfer { payer, command }, Reply::Transfers(results)) => {
            results.len() == 1
                && match &results[0] {
                    TransferResult::Done(view) => view.id == *command.id() && view.from == *payer,
                    TransferResult::Refused(_) | TransferResult::Unavailable => true,
                }
        }
        (Request::ReadChallenge { id, payer }, Reply::Challenge(report)) => {
            report.as_ref().is_none_or(|report| report.transfer.id == *id && report.transfer.from == *payer)
        }
        (Request::Refund(refund), Reply::Transfers(_)) => reply_fits(&Request::Transfers(vec![refund.transfer.clone()]), reply),
        (Request::Hold(hold), Reply::Transfers(results)) => {
            // A hold's record says what was captured once it is; its hold, what was held.
            let asked = &hold.transfer;
            results.len() == 1
                && match &results[0] {
                    TransferResult::Done(view) => {
                        view_answers(view, asked, view.hold.as_ref().map_or(view.amount, |stored| stored.held))
                            && view.hold.as_ref().is_none_or(|stored| stored.settle_on_expiry == hold.settle_on_expiry)
                    }
                    TransferResult::Refused(_) | TransferResult::Unavailable => true,
                }
        }
        (Request::Capture { id, payer, .. } | Request::Void { id, payer }, Reply::Transfers(results)) => {
            results.len() == 1
                && match &results[0] {
                    TransferResult::Done(view) => view.id == *id && view.from == *payer,
                    TransferResult::Refused(_) | TransferResult::Unavailable => true,
                }
        }
        (Request::ReadRefunds { original, .. }, Reply::Refunds(total)) => {
            total.as_ref().is_none_or(|total| total.original.as_ref() == Some(original))
        }
        (Request::SystemRead(read), Reply::SystemRead(answer)) => matches!(
            (read, answer),
            (SystemRead::Key(_), SystemReadReply::Key(_))
                | (SystemRead::Keys { .. }, SystemReadReply::Keys(_))
                | (SystemRead::Audit { .. }, SystemReadReply::Audit { .. })
                | (SystemRead::Nodes, SystemReadReply::Nodes { .. })
        ),
        _ => false,
    }
}

/// Whether a system outcome answers this command (a key outcome names the key asked about).
fn system_reply_fits(command: &SystemCmd, outcome: &SystemOutcome) -> bool {
    match (command, outcome) {
        (_, SystemOutcome::Invalid(_)) => true,
        (SystemCmd::CreateKey(asked), SystemOutcome::KeyCreated(key) | SystemOutcome::KeyExists(key)) => key.id == asked.id,
        (SystemCmd::RevokeKey { id }, SystemOutcome::KeyRevoked(key)) => key.id == *id,
        (SystemCmd::RevokeKey { .. }, SystemOutcome::KeyNotFound) => true,
        (SystemCmd::UseNonce { .. }, SystemOutcome::NonceFresh | SystemOutcome::NonceReplayed) => true,
        (SystemCmd::Audit(events), SystemOutcome::Audited { count, .. }) => {
            usize::try_from(*count).is_ok_and(|count| count == events.len())
        }
        (SystemCmd::RegisterNode { id, .. }, SystemOutcome::NodeRegistered { record, .. } | SystemOutcome::NodeExists { record, .. }) => {
            record.id == *id
        }
        (SystemCmd::RetireNode { id }, SystemOutcome::NodeRetired { record, .. }) => record.id == *id,
        _ => false,
    }
}
