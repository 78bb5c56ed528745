//! The leader side of a leg: a task. Writes become tagged proposals (batched into one entry per
//! shard per round) and are answered when they apply; a cross-shard transfer waits for its
//! finalize. Reads go through ReadIndex (one request per shard per round) and are answered once
//! the replica has applied up to the read index: linearizable, never from a deposed leader.

use super::NodeCore;
use crate::ids::{NodeId, ShardId, TransferId};
use crate::ledger::{Applied, Command, ReserveOutcome, TransferOutcome, TransferStatus, TransferView};
use crate::message::{AccountView, HistoryPage, PeerMessage, Reply, Request, Tagged, TransferResult};
use crate::placement::{home_shard_of, shard_of};
use crate::planted::{planted, PlantedBug};
use crate::replica::AppliedCommand;
use raft::ReadState;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

/// Past its deadline a task is dropped after this grace (its origin has answered already).
const TASK_GRACE_MS: u64 = 1_000;

/// Where a leg came from: this node's own call, or another node's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    Local(u64),
    Remote(NodeId, u64),
}

#[derive(Default)]
pub(super) struct Tasks {
    tasks: BTreeMap<u64, Task>,
    next_task: u64,
    next_tag: u64,
    /// Proposal tag → (task, slot), until the proposal applies or its task goes.
    tags: BTreeMap<u64, (u64, usize)>,
    by_shard: BTreeMap<ShardId, BTreeSet<u64>>,
    /// Cross-shard transfers whose waiters need the finalize.
    finalize_waiters: BTreeMap<(ShardId, TransferId), Vec<(u64, usize)>>,
    /// Read tasks waiting for this round's ReadIndex request.
    reads_queued: BTreeMap<ShardId, Vec<u64>>,
    /// ReadIndex requests in flight by context, with when they were asked (monotonic ms).
    reads_requested: BTreeMap<u64, (ShardId, Vec<u64>, u64)>,
    /// Reads with a read index, waiting for the replica to apply up to it.
    reads_indexed: BTreeMap<ShardId, Vec<(u64, Vec<u64>)>>,
    next_read_context: u64,
}

struct Task {
    origin: Origin,
    shard: ShardId,
    deadline_ms: u64,
    /// The request of a read, answered once the read index is applied (writes are answered
    /// from what their proposals applied, so they keep no copy).
    read: Option<Request>,
    /// The tags of the task's proposals: drawn one after another, so a range (empty for reads).
    tags: Range<u64>,
    slots: Slots,
    reply: Option<Reply>,
    open: usize,
}

/// The per-item results of a write task, filled as its proposals apply.
enum Slots {
    Transfers(Vec<Option<TransferResult>>),
    Reservations(Vec<Option<ReserveOutcome>>),
}

impl NodeCore {
    /// Takes a leg for a shard this node should lead.
    pub(super) fn accept_leg(&mut self, origin: Origin, shard: ShardId, deadline_ms: u64, request: Request) {
        let Some(replica) = self.replicas.get(&shard) else {
            let hint = self.leader_of(shard).filter(|leader| *leader != self.config.node);
            self.reply_to_origin(origin, Reply::NotLeader { leader: hint });
            return;
        };
        if !replica.is_leader() {
            let hint = replica.leader().filter(|leader| *leader != self.config.node);
            self.reply_to_origin(origin, Reply::NotLeader { leader: hint });
            return;
        }
        let shard_count = self.config.placement.shard_count();
        let misrouted = match &request {
            Request::CreateAccount(create) => shard_of(&create.id, shard_count) != shard,
            Request::Transfers(items) => items.iter().any(|item| shard_of(&item.from, shard_count) != shard),
            Request::Reserve(items) => items.iter().any(|item| home_shard_of(&item.id, shard_count) != shard),
            Request::ReadAccount(account) | Request::History { account, .. } => shard_of(account, shard_count) != shard,
            Request::ReadTransfer { .. } => false,
        };
        if misrouted {
            // Another node computed a different placement: refuse rather than corrupt the shard.
            self.reply_to_origin(origin, Reply::Unavailable);
            return;
        }
        let task_id = self.tasks.next_task;
        self.tasks.next_task += 1;
        let first_tag = self.tasks.next_tag + 1;
        let mut task = Task {
            origin,
            shard,
            deadline_ms,
            read: None,
            tags: first_tag..first_tag,
            slots: Slots::Transfers(Vec::new()),
            reply: None,
            open: 1,
        };
        let replica = self.replicas.get_mut(&shard).expect("checked above");
        match request {
            Request::CreateAccount(create) => {
                let tag = next_tag(&mut self.tasks.next_tag);
                self.tasks.tags.insert(tag, (task_id, 0));
                replica.queue_proposal(Tagged { tag, command: Command::CreateAccount(create) });
            }
            Request::Transfers(items) => {
                task.open = items.len();
                task.slots = Slots::Transfers(vec![None; items.len()]);
                for (slot, item) in items.into_iter().enumerate() {
                    let tag = next_tag(&mut self.tasks.next_tag);
                    self.tasks.tags.insert(tag, (task_id, slot));
                    replica.queue_proposal(Tagged { tag, command: Command::Transfer(item) });
                }
            }
            Request::Reserve(items) => {
                task.open = items.len();
                task.slots = Slots::Reservations(vec![None; items.len()]);
                for (slot, item) in items.into_iter().enumerate() {
                    let tag = next_tag(&mut self.tasks.next_tag);
                    self.tasks.tags.insert(tag, (task_id, slot));
                    replica.queue_proposal(Tagged { tag, command: Command::Reserve(item) });
                }
            }
            read @ (Request::ReadAccount(_) | Request::ReadTransfer { .. } | Request::History { .. }) => {
                if planted(self.config.planted, PlantedBug::StaleLeaderRead) {
                    let reply = self.read_reply(shard, &read);
                    self.reply_to_origin(origin, reply);
                    return;
                }
                task.read = Some(read);
                self.tasks.reads_queued.entry(shard).or_default().push(task_id);
            }
        }
        task.tags = first_tag..self.tasks.next_tag + 1;
        if task.open == 0 {
            // An empty list: nothing to wait for.
            let reply = match task.slots {
                Slots::Transfers(_) => Reply::Transfers(Vec::new()),
                Slots::Reservations(_) => Reply::Reservations(Vec::new()),
            };
            self.reply_to_origin(origin, reply);
            return;
        }
        self.tasks.tasks.insert(task_id, task);
        self.tasks.by_shard.entry(shard).or_default().insert(task_id);
        self.touch(shard);
    }

    /// Proposes the shard's queued commands as one entry; if that fails, their tasks are told.
    pub(super) fn flush_shard_proposals(&mut self, shard: ShardId) {
        let replica = self.replicas.get_mut(&shard).expect("known shard");
        if !replica.has_proposals() {
            return;
        }
        let result = replica.flush_proposals(self.proposer, self.now_ms, self.clock_ms);
        if let Ok(count) = result {
            self.stats.proposals += u64::try_from(count).unwrap_or(u64::MAX);
        }
        if let Err(dropped) = result {
            let replica = &self.replicas[&shard];
            let reason = if replica.is_leader() { "raft" } else { "not_leader" };
            *self.stats.proposals_dropped.entry(reason).or_insert(0) += u64::try_from(dropped.len()).unwrap_or(u64::MAX);
            let hint = replica.leader().filter(|leader| *leader != self.config.node);
            let mut failed = BTreeSet::new();
            for tagged in dropped {
                if let Some((task, _)) = self.tasks.tags.remove(&tagged.tag) {
                    failed.insert(task);
                }
            }
            for task in failed {
                self.fail_task(task, hint);
            }
        }
    }

    /// Sends one ReadIndex request for every read queued on the shard this round.
    pub(super) fn flush_shard_reads(&mut self, shard: ShardId) {
        let Some(queued) = self.tasks.reads_queued.remove(&shard) else {
            return;
        };
        let replica = self.replicas.get_mut(&shard).expect("known shard");
        if !replica.is_leader() {
            let hint = replica.leader().filter(|leader| *leader != self.config.node);
            for task in queued {
                self.fail_task(task, hint);
            }
            return;
        }
        let context = self.tasks.next_read_context;
        self.tasks.next_read_context += 1;
        replica.read_index(context.to_be_bytes().to_vec());
        self.tasks.reads_requested.insert(context, (shard, queued, self.clock_ms));
    }

    pub(super) fn read_states(&mut self, shard: ShardId, states: Vec<ReadState>) {
        for state in states {
            let Ok(bytes) = <[u8; 8]>::try_from(state.request_ctx.as_slice()) else {
                continue;
            };
            let context = u64::from_be_bytes(bytes);
            if let Some((read_shard, tasks, asked_ms)) = self.tasks.reads_requested.remove(&context) {
                assert_eq!(read_shard, shard, "read index answered on its own shard");
                self.stats.read_index_ms.observe(self.clock_ms.saturating_sub(asked_ms));
                self.tasks.reads_indexed.entry(shard).or_default().push((state.index, tasks));
            }
        }
    }

    /// Answers reads whose read index the replica has applied.
    pub(super) fn serve_applied_reads(&mut self, shard: ShardId) {
        let applied = self.replicas[&shard].applied_index();
        let Some(waiting) = self.tasks.reads_indexed.get_mut(&shard) else {
            return;
        };
        let (ready, later): (Vec<_>, Vec<_>) = waiting.drain(..).partition(|(index, _)| *index <= applied);
        *waiting = later;
        for (_, tasks) in ready {
            for task_id in tasks {
                let Some(task) = self.tasks.tasks.get(&task_id) else {
                    continue;
                };
                let reply = self.read_reply(shard, task.read.as_ref().expect("a read task holds its request"));
                self.tasks.tasks.get_mut(&task_id).expect("present").reply = Some(reply);
                self.close_slot(task_id);
            }
        }
    }

    fn read_reply(&self, shard: ShardId, request: &Request) -> Reply {
        let ledger = self.replicas[&shard].ledger();
        match request {
            Request::ReadAccount(account) => Reply::AccountState(ledger.account(account).map(AccountView::from)),
            Request::ReadTransfer { id, .. } => {
                let payer_side = ledger.transfer(id).map(TransferView::from);
                Reply::Transfer(payer_side.or_else(|| ledger.credit(id).map(TransferView::from)))
            }
            Request::History { account, before, limit } => {
                let limit = usize::try_from(*limit).expect("u32 fits usize");
                let page = ledger.history(account, *before, limit);
                Reply::History(page.map(|(transfers, next_cursor)| HistoryPage { transfers, next_cursor }))
            }
            Request::CreateAccount(_) | Request::Transfers(_) | Request::Reserve(_) => unreachable!("writes are not reads"),
        }
    }

    /// Everything a shard applied this round: answer waiters, feed the coordinator.
    pub(super) fn applied(&mut self, shard: ShardId, applied: Vec<AppliedCommand>) {
        let leads = self.replicas[&shard].is_leader();
        for item in applied {
            match (&item.command, &item.applied) {
                (Command::CreateAccount(create), Applied::Account(outcome)) => {
                    if let Some((task, _)) = self.tasks.tags.remove(&item.tag) {
                        let account = self.replicas[&shard].ledger().account(&create.id).map(AccountView::from);
                        if let Some(task) = self.tasks.tasks.get_mut(&task) {
                            task.reply = Some(Reply::Account { outcome: *outcome, account });
                        }
                        self.close_slot(task);
                    }
                }
                (Command::Transfer(transfer), Applied::Transfer(outcome)) => {
                    if leads && *outcome == TransferOutcome::Recorded(TransferStatus::Pending) {
                        self.transfer_prepared(shard, &transfer.id);
                    }
                    let Some((task, slot)) = self.tasks.tags.remove(&item.tag) else {
                        continue;
                    };
                    match outcome {
                        TransferOutcome::Recorded(TransferStatus::Pending) | TransferOutcome::Replayed(TransferStatus::Pending) => {
                            let key = (shard, transfer.id.clone());
                            self.tasks.finalize_waiters.entry(key).or_default().push((task, slot));
                        }
                        TransferOutcome::Recorded(_) | TransferOutcome::Replayed(_) => {
                            let record = self.replicas[&shard].ledger().transfer(&transfer.id).expect("stored");
                            let result = TransferResult::Done(TransferView::from(record));
                            self.fill_slot(task, slot, result);
                        }
                        TransferOutcome::Refused(code) => self.fill_slot(task, slot, TransferResult::Refused(*code)),
                    }
                }
                (Command::Credit(credit), Applied::Credit(outcome)) => {
                    if leads {
                        self.credit_decided(shard, credit, outcome.decision.clone());
                    }
                }
                (Command::Reserve(_), Applied::Reserve(outcome)) => {
                    if let Some((task, slot)) = self.tasks.tags.remove(&item.tag) {
                        self.fill_reservation(task, slot, *outcome);
                    }
                }
                (Command::Finalize(finalize), Applied::Finalize(outcome)) => {
                    let Some(status) = &outcome.status else {
                        continue;
                    };
                    if *status == TransferStatus::Pending {
                        continue;
                    }
                    self.transfer_finalized(shard, &finalize.id);
                    let waiters = self.tasks.finalize_waiters.remove(&(shard, finalize.id.clone()));
                    let record = self.replicas[&shard].ledger().transfer(&finalize.id).expect("finalized record");
                    let view = TransferView::from(record);
                    for (task, slot) in waiters.unwrap_or_default() {
                        self.fill_slot(task, slot, TransferResult::Done(view.clone()));
                    }
                }
                (command, applied) => panic!("command {command:?} applied as {applied:?}"),
            }
        }
    }

    fn fill_slot(&mut self, task_id: u64, slot: usize, result: TransferResult) {
        self.fill(task_id, |slots| match slots {
            Slots::Transfers(slots) => put_once(&mut slots[slot], result),
            Slots::Reservations(_) => false,
        });
    }

    fn fill_reservation(&mut self, task_id: u64, slot: usize, outcome: ReserveOutcome) {
        self.fill(task_id, |slots| match slots {
            Slots::Reservations(slots) => put_once(&mut slots[slot], outcome),
            Slots::Transfers(_) => false,
        });
    }

    /// Fills one slot of a task (`put` answers whether it filled an empty one) and closes it.
    fn fill(&mut self, task_id: u64, put: impl FnOnce(&mut Slots) -> bool) {
        let Some(task) = self.tasks.tasks.get_mut(&task_id) else {
            return;
        };
        if put(&mut task.slots) {
            self.close_slot(task_id);
        }
    }

    fn close_slot(&mut self, task_id: u64) {
        let Some(task) = self.tasks.tasks.get_mut(&task_id) else {
            return;
        };
        task.open -= 1;
        if task.open > 0 {
            return;
        }
        let task = self.remove_task(task_id).expect("present");
        let reply = match (task.reply, task.slots) {
            (Some(reply), _) => reply,
            (None, Slots::Transfers(slots)) => Reply::Transfers(slots.into_iter().map(|slot| slot.expect("every slot filled")).collect()),
            (None, Slots::Reservations(slots)) => {
                Reply::Reservations(slots.into_iter().map(|slot| slot.expect("every slot filled")).collect())
            }
        };
        self.reply_to_origin(task.origin, reply);
    }

    fn remove_task(&mut self, task_id: u64) -> Option<Task> {
        let task = self.tasks.tasks.remove(&task_id)?;
        if let Some(set) = self.tasks.by_shard.get_mut(&task.shard) {
            set.remove(&task_id);
        }
        for tag in task.tags.clone() {
            self.tasks.tags.remove(&tag);
        }
        Some(task)
    }

    fn fail_task(&mut self, task_id: u64, hint: Option<NodeId>) {
        if let Some(task) = self.remove_task(task_id) {
            self.reply_to_origin(task.origin, Reply::NotLeader { leader: hint });
        }
    }

    /// Every task on the shard is answered NotLeader (their origins retry with the new leader).
    pub(super) fn fail_shard_tasks(&mut self, shard: ShardId, hint: Option<NodeId>) {
        let tasks: Vec<u64> = self.tasks.by_shard.remove(&shard).unwrap_or_default().into_iter().collect();
        for task in tasks {
            self.fail_task(task, hint);
        }
        self.tasks.reads_queued.remove(&shard);
        self.tasks.reads_indexed.remove(&shard);
        self.tasks.reads_requested.retain(|_, (read_shard, _, _)| *read_shard != shard);
        self.tasks.finalize_waiters.retain(|(waiting_shard, _), _| *waiting_shard != shard);
    }

    pub(super) fn reply_to_origin(&mut self, origin: Origin, reply: Reply) {
        match origin {
            Origin::Local(leg) => self.leg_replied(leg, None, reply),
            Origin::Remote(node, leg) => self.send(node, PeerMessage::LegReply { leg, reply }),
        }
    }

    /// Drops tasks long past their deadline and the bookkeeping that pointed at them.
    pub(super) fn tasks_tick(&mut self) {
        let now = self.clock_ms;
        let expired: Vec<u64> =
            self.tasks.tasks.iter().filter(|(_, task)| task.deadline_ms.saturating_add(TASK_GRACE_MS) <= now).map(|(id, _)| *id).collect();
        if expired.is_empty() {
            return;
        }
        for task in expired {
            self.remove_task(task);
        }
        // An expired task may still wait for finalizes. No other way a task goes leaves a
        // waiter behind: a closed task had every slot filled, a task failed before its proposals
        // applied had none, and fail_shard_tasks clears the shard's.
        let tasks = &self.tasks.tasks;
        for waiters in self.tasks.finalize_waiters.values_mut() {
            waiters.retain(|(task, _)| tasks.contains_key(task));
        }
        self.tasks.finalize_waiters.retain(|_, waiters| !waiters.is_empty());
    }
}

/// Fills an empty slot; false (and nothing changes) if it was filled already.
fn put_once<T>(slot: &mut Option<T>, value: T) -> bool {
    if slot.is_some() {
        return false;
    }
    *slot = Some(value);
    true
}

fn next_tag(counter: &mut u64) -> u64 {
    // Tag 0 means "nobody waits", so tags start at 1.
    *counter += 1;
    *counter
}
