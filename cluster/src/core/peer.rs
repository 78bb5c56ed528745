//! `ShardPeer`: everything one node holds for one shard — its replica and what waits on it:
//! the tasks of the legs this node serves as the shard's leader, the tags of their proposals,
//! the ReadIndex requests, and the shard's part of the cross-shard protocol (payer side: the
//! drive of each pending transfer; payee side: the credits proposed). Creating or removing a
//! replica is inserting or dropping one peer; nothing about a shard lives anywhere else.
//!
//! The machinery here is generic (tasks, slots, tags, expiry); what a task is for and how its
//! proposals' outcomes fill its slots is each operation's business (`operation/`).

use super::Ctx;
use crate::ids::{LegId, NodeId, ProposalTag, TransferId};
use crate::ledger::{Command, ReserveCmd, ReserveOutcome};
use crate::log::{Proposer, Tagged};
use crate::message::{AccountResult, Reply, Request, TransferResult};
use crate::replica::ShardReplica;
use std::collections::{BTreeMap, BTreeSet};

/// Past its deadline a task is dropped after this grace (its origin has answered already).
const TASK_GRACE_MS: u64 = 1_000;

/// Where a leg came from: this node's own call, or another node's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    Local(LegId),
    Remote(NodeId, LegId),
}

/// A task of this peer (a leg it serves), numbered per peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct TaskId(u64);

/// What a task answers: one whole reply, or one result per item of its leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TaskKind {
    /// One slot holding the whole reply.
    Single,
    /// One `TransferResult` per transfer: `Reply::Transfers`.
    Transfers,
    /// One `ReserveOutcome` per reservation: `Reply::Reservations`.
    Reservations,
    /// One `AccountResult` per account: `Reply::Accounts`.
    Accounts,
}

/// One slot's answer.
#[derive(Debug, Clone)]
pub(super) enum Answer {
    Reply(Reply),
    Transfer(TransferResult),
    Reservation(ReserveCmd, ReserveOutcome),
    /// An account's outcome: a slot of an `Accounts` task, or a `Single` one's whole reply.
    Account(AccountResult),
}

/// A task's slots, typed by its kind, so a reply is assembled without guessing.
enum Slots {
    Single(Option<Reply>),
    Transfers(Vec<Option<TransferResult>>),
    Reservations(Vec<Option<(ReserveCmd, ReserveOutcome)>>),
    Accounts(Vec<Option<AccountResult>>),
}

impl Slots {
    fn new(kind: TaskKind, count: usize) -> Slots {
        match kind {
            TaskKind::Single => Slots::Single(None),
            TaskKind::Transfers => Slots::Transfers(vec![None; count]),
            TaskKind::Reservations => Slots::Reservations(vec![None; count]),
            TaskKind::Accounts => Slots::Accounts(vec![None; count]),
        }
    }

    /// Fills an empty slot with an answer of the slots' kind; false (nothing changes) if the
    /// slot was filled already or the answer is of another kind.
    fn put(&mut self, slot: usize, answer: Answer) -> bool {
        fn put_once<T>(place: Option<&mut Option<T>>, value: T) -> bool {
            match place {
                Some(place @ None) => {
                    *place = Some(value);
                    true
                }
                _ => false,
            }
        }
        match (self, answer) {
            (Slots::Single(place), Answer::Reply(reply)) if slot == 0 => put_once(Some(place), reply),
            (Slots::Transfers(places), Answer::Transfer(result)) => put_once(places.get_mut(slot), result),
            (Slots::Reservations(places), Answer::Reservation(reserve, outcome)) => put_once(places.get_mut(slot), (reserve, outcome)),
            (Slots::Accounts(places), Answer::Account(result)) => put_once(places.get_mut(slot), result),
            (Slots::Single(place), Answer::Account(result)) if slot == 0 => {
                let reply = match result {
                    AccountResult::Done { outcome, account } => Reply::Account { outcome, account },
                    AccountResult::Unavailable => Reply::Unavailable,
                };
                put_once(Some(place), reply)
            }
            _ => false,
        }
    }

    /// The reply once every slot is filled (a missing one would be a bug in `open` counting).
    fn into_reply(self, fence: u64) -> Reply {
        match self {
            Slots::Single(reply) => reply.unwrap_or(Reply::Unavailable),
            Slots::Transfers(results) => {
                Reply::Transfers(results.into_iter().map(|result| result.unwrap_or(TransferResult::Unavailable)).collect())
            }
            Slots::Reservations(outcomes) => Reply::Reservations { answers: outcomes.into_iter().flatten().collect(), fence },
            Slots::Accounts(results) => {
                Reply::Accounts(results.into_iter().map(|result| result.unwrap_or(AccountResult::Unavailable)).collect())
            }
        }
    }
}

struct Task {
    origin: Origin,
    deadline_ms: u64,
    /// The request of a read, answered once the read index is applied (writes are answered
    /// from what their proposals applied, so they keep no copy).
    read: Option<Request>,
    /// The tags of the task's proposals (empty for reads).
    tags: Vec<ProposalTag>,
    slots: Slots,
    /// Slots still empty.
    open: usize,
}

/// The payer-side timers of one pending transfer, on the monotonic clock. An entry lives while
/// any of them is set.
#[derive(Debug, Default)]
pub(super) struct Drive {
    /// Since when this leader has seen the transfer pending (set by the first re-drive pass
    /// that finds it, or when it is prepared here).
    pub since_ms: Option<u64>,
    /// When its credit request last left.
    pub credit_sent_ms: Option<u64>,
    /// When its finalize was proposed, until it applies (so duplicates are not proposed) or
    /// the mark goes stale.
    pub finalize_proposed_ms: Option<u64>,
}

impl Drive {
    pub fn is_idle(&self) -> bool {
        self.since_ms.is_none() && self.credit_sent_ms.is_none() && self.finalize_proposed_ms.is_none()
    }
}

/// ReadIndex bookkeeping: reads batched per round into one request, then served once the
/// replica has applied up to the index.
#[derive(Default)]
pub(super) struct Reads {
    /// Read tasks waiting for this round's ReadIndex request.
    pub queued: Vec<TaskId>,
    /// ReadIndex requests in flight by context, with when they were asked (monotonic ms).
    pub requested: BTreeMap<u64, (Vec<TaskId>, u64)>,
    /// Reads with a read index, waiting for the replica to apply up to it.
    pub indexed: Vec<(u64, Vec<TaskId>)>,
    pub next_context: u64,
}

pub(super) struct ShardPeer {
    pub replica: ShardReplica,
    tasks: BTreeMap<TaskId, Task>,
    next_task: u64,
    next_tag: u64,
    /// Proposal tag → (task, slot), until the proposal applies or its task goes.
    tags: BTreeMap<ProposalTag, (TaskId, usize)>,
    /// Payer side: slots waiting for a pending transfer's finalize.
    pub finalize_waiters: BTreeMap<TransferId, Vec<(TaskId, usize)>>,
    pub reads: Reads,
    /// Payer side: how this leader drives each pending transfer.
    pub drives: BTreeMap<TransferId, Drive>,
    /// Payee side: credits proposed and not yet applied.
    pub credits_proposed_ms: BTreeMap<TransferId, u64>,
    /// The term in which this node last saw itself leading the shard.
    pub leading: Option<u64>,
    /// A snapshot this replica fetches from its leader (`core/snapshot.rs`).
    pub incoming_snapshot: Option<super::snapshot::IncomingSnapshot>,
    /// When this leader last looked for due holds (`operation/holds.rs`), monotonic.
    pub holds_checked_ms: Option<u64>,
    /// The backup fence this leader proposed because a message needed it, and when
    /// (`operation/backup.rs`).
    pub fence_proposed: Option<(u64, u64)>,
    /// Credit requests and decisions waiting for that fence to apply (then acted on at once;
    /// bounded, and what does not fit is dropped: the protocol re-sends it).
    /// Each with the fence it needs.
    pub fenced_credits: Vec<(u64, crate::ledger::CreditCmd)>,
    pub fenced_decisions: Vec<(u64, crate::ledger::FinalizeCmd)>,
    /// Payer-shard legs waiting for the fence they need (`Request::Fenced`), with their origin
    /// and deadline, accepted when it applies.
    pub fenced_legs: Vec<(u64, Origin, u64, crate::message::FencedRequest)>,
    /// A replica move waits for this leader to compact its log (`operation/membership.rs`).
    pub compact_fully: bool,
    /// Nodes this leader added back for a rebuild: once voters again, they are done (a late
    /// request must not remove the rebuilt replica).
    pub rebuilt: std::collections::BTreeSet<crate::ids::NodeId>,
}

impl ShardPeer {
    pub fn new(replica: ShardReplica) -> ShardPeer {
        ShardPeer {
            replica,
            tasks: BTreeMap::new(),
            next_task: 0,
            next_tag: 0,
            tags: BTreeMap::new(),
            finalize_waiters: BTreeMap::new(),
            reads: Reads::default(),
            drives: BTreeMap::new(),
            credits_proposed_ms: BTreeMap::new(),
            leading: None,
            incoming_snapshot: None,
            holds_checked_ms: None,
            fence_proposed: None,
            fenced_credits: Vec::new(),
            fenced_decisions: Vec::new(),
            fenced_legs: Vec::new(),
            compact_fully: false,
            rebuilt: std::collections::BTreeSet::new(),
        }
    }

    /// Opens a task with `slots` slots (at least one).
    pub fn open_task(&mut self, origin: Origin, deadline_ms: u64, kind: TaskKind, slots: usize) -> TaskId {
        let id = TaskId(self.next_task);
        self.next_task += 1;
        let task = Task { origin, deadline_ms, read: None, tags: Vec::new(), slots: Slots::new(kind, slots), open: slots };
        self.tasks.insert(id, task);
        id
    }

    /// Opens a read task, answered by `operation::read` once its read index is applied.
    pub fn open_read(&mut self, origin: Origin, deadline_ms: u64, request: Request) -> TaskId {
        let id = self.open_task(origin, deadline_ms, TaskKind::Single, 1);
        self.tasks.get_mut(&id).expect("just opened").read = Some(request);
        id
    }

    pub fn read_request(&self, task: TaskId) -> Option<&Request> {
        self.tasks.get(&task).and_then(|task| task.read.as_ref())
    }

    /// Queues a command of `task`'s `slot` for this round's proposal (one entry per round).
    pub fn propose(&mut self, task: TaskId, slot: usize, command: Command) {
        // Tag 0 means "nobody waits", so tags start at 1.
        self.next_tag += 1;
        let tag = ProposalTag(self.next_tag);
        self.tags.insert(tag, (task, slot));
        if let Some(task) = self.tasks.get_mut(&task) {
            task.tags.push(tag);
        }
        self.replica.queue_proposal(Tagged { tag, command });
    }

    /// Queues a command nobody waits for (the cross-shard protocol's credits and finalizes).
    pub fn propose_untagged(&mut self, command: Command) {
        self.replica.queue_proposal(Tagged { tag: ProposalTag(0), command });
    }

    /// The slot waiting for a proposal that just applied (the tag is used up).
    pub fn take_tag(&mut self, tag: ProposalTag) -> Option<(TaskId, usize)> {
        if tag == ProposalTag(0) {
            return None;
        }
        self.tags.remove(&tag)
    }

    /// Fills a slot (a slot filled already stays as it was) and answers the task's origin once
    /// every slot is filled.
    pub fn fill(&mut self, task_id: TaskId, slot: usize, answer: Answer, ctx: &mut Ctx) {
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        if !task.slots.put(slot, answer) {
            return;
        }
        task.open -= 1;
        if task.open > 0 {
            return;
        }
        let task = self.remove_task(task_id).expect("present");
        let fence = self.replica.ledger().fence_epoch();
        ctx.out.replies.push((task.origin, task.slots.into_reply(fence)));
    }

    /// Proposes every queued command as one entry; if that fails, their tasks are told to look
    /// for the leader.
    pub fn flush_proposals(&mut self, proposer: Proposer, ctx: &mut Ctx) {
        if !self.replica.has_proposals() {
            return;
        }
        match self.replica.flush_proposals(proposer, ctx.time) {
            Ok(count) => ctx.stats.proposals += u64::try_from(count).unwrap_or(u64::MAX),
            Err(dropped) => {
                let reason = if self.replica.is_leader() { "raft" } else { "not_leader" };
                *ctx.stats.proposals_dropped.entry(reason).or_insert(0) += u64::try_from(dropped.len()).unwrap_or(u64::MAX);
                let hint = self.replica.leader().filter(|leader| *leader != ctx.node);
                let mut failed = BTreeSet::new();
                for tagged in dropped {
                    if let Some((task, _)) = self.tags.remove(&tagged.tag) {
                        failed.insert(task);
                    }
                }
                for task in failed {
                    self.fail_task(task, hint, ctx);
                }
            }
        }
    }

    fn remove_task(&mut self, task_id: TaskId) -> Option<Task> {
        let task = self.tasks.remove(&task_id)?;
        for tag in &task.tags {
            self.tags.remove(tag);
        }
        Some(task)
    }

    pub fn fail_task(&mut self, task_id: TaskId, hint: Option<NodeId>, ctx: &mut Ctx) {
        if let Some(task) = self.remove_task(task_id) {
            ctx.out.replies.push((task.origin, Reply::NotLeader { leader: hint }));
        }
    }

    /// This node no longer leads the shard (or its ledger was replaced by a snapshot): every
    /// task is answered NotLeader (their origins retry with the new leader), and what this
    /// leader drove is the new leader's job now.
    pub fn reset(&mut self, hint: Option<NodeId>, ctx: &mut Ctx) {
        let tasks: Vec<TaskId> = self.tasks.keys().copied().collect();
        for task in tasks {
            self.fail_task(task, hint, ctx);
        }
        self.reads = Reads { next_context: self.reads.next_context, ..Reads::default() };
        self.finalize_waiters.clear();
        self.drives.clear();
        self.credits_proposed_ms.clear();
        self.fence_proposed = None;
        self.fenced_credits.clear();
        self.fenced_decisions.clear();
        for (_, origin, _, _) in std::mem::take(&mut self.fenced_legs) {
            ctx.out.replies.push((origin, Reply::NotLeader { leader: hint }));
        }
    }

    /// Drops tasks long past their deadline and the bookkeeping that pointed at them.
    pub fn expire_tasks(&mut self, ctx: &mut Ctx) {
        let now = ctx.time.monotonic_ms;
        let expired: Vec<TaskId> =
            self.tasks.iter().filter(|(_, task)| task.deadline_ms.saturating_add(TASK_GRACE_MS) <= now).map(|(id, _)| *id).collect();
        if expired.is_empty() {
            return;
        }
        for task in expired {
            self.remove_task(task);
        }
        // An expired task may still wait for finalizes or reads. No other way a task goes leaves
        // a waiter behind: a closed task had every slot filled, a task failed before its
        // proposals applied had none, and `reset` clears the rest.
        let tasks = &self.tasks;
        for waiters in self.finalize_waiters.values_mut() {
            waiters.retain(|(task, _)| tasks.contains_key(task));
        }
        self.finalize_waiters.retain(|_, waiters| !waiters.is_empty());
    }

    /// The drive of a transfer, made empty if there is none.
    pub fn drive(&mut self, id: &TransferId) -> &mut Drive {
        drive_of(&mut self.drives, id)
    }
}

/// The drive of a transfer in `drives`, made empty if there is none (the id is copied only
/// then). A free function so a caller can hold the replica's ledger while it drives.
pub(super) fn drive_of<'d>(drives: &'d mut BTreeMap<TransferId, Drive>, id: &TransferId) -> &'d mut Drive {
    if !drives.contains_key(id) {
        drives.insert(id.clone(), Drive::default());
    }
    drives.get_mut(id).expect("inserted above")
}
