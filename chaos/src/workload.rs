//! The simulated clients: transfers (same- and cross-shard, hot accounts, amounts that often
//! exceed balances) and reads, over the simulated network, retrying an ambiguous transfer with
//! the same id like a real client. The workload records what clients were told, which is what
//! the checkers hold the cluster to, and checks each read against it as the read returns.
//!
//! Some transfers reuse an id already used with another body (`reuse_percent`): another payer
//! on the same or another shard, another payee, or another amount; half of them pick an id
//! another client has in flight at that moment, so the two requests race through different
//! nodes. The cluster must post at most one body per id (`one_body_per_id`).
//!
//! The workload aims at the edges: amounts of exactly a payer's last read available balance or
//! one minor unit more (`boundary_percent`), and payees that do not exist or hold another
//! currency, so payee shards refuse credits and payers must release their holds
//! (`missing_payee_percent`).

use crate::checkers::Violation;
use crate::sim::SimCluster;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use settle_cluster::ids::StopId;
use settle_cluster::ids::{AccountId, CustomerId, NodeId, TransferId, VerificationId};
use settle_cluster::ledger::{
    AccountKind, AuditEvent, Channel, CustomerCmd, CustomerOutcome, LiftStop, OtpHash, PlaceStop, RecordVerification, RegisterCustomer,
    RejectCode, RiskLimits, RiskOutcome, SealedPii, SetSecurity, StopCmd, StopOutcome, SystemCmd, SystemOutcome, TransferBody,
    TransferStatus, VerifyCmd,
};
use settle_cluster::message::{AccountRequest, AccountResult, HoldRequest, RefundRequest, Reply, Request, TransferRequest, TransferResult};
use settle_cluster::money::{Currency, Minor};
use settle_cluster::CallId;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub clients: usize,
    /// Clients that only read (dashboards polling balances), from the latest acknowledgement
    /// on: they keep asking every node while writers wait out timeouts, so a node answering
    /// stale is asked often.
    pub readers: usize,
    pub accounts: usize,
    /// Share (percent) of transfers that touch one of the first `hot_accounts` accounts.
    pub hot_percent: u32,
    pub hot_accounts: usize,
    pub funding_minor: Minor,
    /// Transfer amounts are drawn from 1..=amount_max_minor (often above a balance).
    pub amount_max_minor: Minor,
    /// Share (percent) of operations that are reads.
    pub read_percent: u32,
    /// Share (percent) of transfers that reuse a known id with another body.
    pub reuse_percent: u32,
    /// Share (percent) of transfers whose amount is a boundary of the payer's last read
    /// `available`: exactly it, or one minor unit more.
    pub boundary_percent: u32,
    /// Share (percent) of transfers to a payee that refuses them: half to an account that does
    /// not exist, half to one in another currency (payee-side refusals, usually on another
    /// shard).
    pub missing_payee_percent: u32,
    pub call_timeout_ms: u64,
    pub think_ms_max: u64,
    /// Share (percent) of writers' operations that are system commands: spending a request
    /// nonce (from a small pool of names, so the same one is spent again and again, through
    /// any node) or appending an audit event.
    pub system_percent: u32,
    /// How many nonce names the writers share.
    pub nonce_names: u32,
    /// Share (percent) of writers' operations that place or lift a stop order on a customer
    /// account (debits from it are then refused until it is lifted).
    pub stop_percent: u32,
    /// Share (percent) of writers' operations that refund part of an acknowledged transfer
    /// (amounts drawn up to the whole original, so refunds of one often exceed it together).
    pub refund_percent: u32,
    /// Share (percent) of writers' operations on holds: make one (lasting 100 ms to 2 s, so
    /// many expire), capture one (all, part, or more than held), void one, or void one again.
    pub hold_percent: u32,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            clients: 6,
            readers: 2,
            accounts: 12,
            hot_percent: 30,
            hot_accounts: 2,
            funding_minor: 1_000,
            amount_max_minor: 400,
            read_percent: 30,
            reuse_percent: 12,
            boundary_percent: 15,
            missing_payee_percent: 6,
            call_timeout_ms: 1_500,
            think_ms_max: 40,
            system_percent: 8,
            nonce_names: 12,
            stop_percent: 4,
            refund_percent: 5,
            hold_percent: 8,
        }
    }
}

/// What a client was told about a transfer.
#[derive(Debug, Clone)]
pub struct Acknowledged {
    pub command: TransferRequest,
    pub at_ms: u64,
    /// Its position among acknowledgements (a read started after `seq` acknowledgements must
    /// see the first `seq`).
    pub seq: u64,
}

#[derive(Debug, Clone)]
enum Operation {
    Transfer {
        command: TransferRequest,
    },
    ReadTransfer {
        id: TransferId,
        body: TransferBody,
        expect_posted: bool,
        started_ms: u64,
    },
    /// `acks_before`: how many acknowledgements (of any transfer) had been received when the
    /// read started; the balance model counts those touching the account as certainly posted.
    /// Spends a request nonce, as a signed request's edge node does.
    UseNonce {
        name: String,
        expires_ms: u64,
    },
    /// Appends an audit event whose request id is `marker`.
    Audit {
        marker: String,
    },
    /// Refunds part of an acknowledged transfer: `command` is the refund transfer.
    Refund {
        command: TransferRequest,
        original: TransferId,
    },
    /// Places or lifts a stop order.
    Stop {
        command: StopCmd,
    },
    /// Makes a hold (`command` is what it holds), or a delayed transfer that arrives by itself
    /// after `timeout_ms` unless revoked.
    Hold {
        command: TransferRequest,
        timeout_ms: u64,
        delayed: bool,
    },
    /// Answers the verification of a transfer awaiting it: an attempt (passed or failed, as the
    /// edge would have found the proofs), or a new one-time code.
    VerifyPayment {
        command: TransferRequest,
        attempt: Option<bool>,
    },
    /// Captures `command.amount` of the hold `held` (the capture is the transfer `command`).
    Capture {
        command: TransferRequest,
        held: Minor,
    },
    /// Voids a hold.
    Void {
        hold: TransferRequest,
    },
    ReadAccount {
        account: AccountId,
        started_ms: u64,
        acked_before: u64,
        seen_before: u64,
        acks_before: u64,
    },
}

struct Client {
    id: usize,
    rng: SmallRng,
    next_transfer: u64,
    /// The operation in flight and its call, or the time of the next operation.
    current: Option<(Operation, Option<CallId>)>,
    next_at_ms: u64,
}

pub struct Workload {
    config: WorkloadConfig,
    currency: Currency,
    pub accounts: Vec<AccountId>,
    /// Accounts in another currency than the workload's (never funded): payees that refuse.
    foreign: Vec<AccountId>,
    clients: Vec<Client>,
    /// Transfers a client was told are posted (one body per id, or the run fails).
    pub posted: BTreeMap<TransferId, Acknowledged>,
    /// Transfers a client was told were rejected (a 4xx: definitely not applied), by id and body:
    /// a reused id may be refused for one body while another body under it posts.
    pub rejected: BTreeMap<(TransferId, TransferBody), RejectCode>,
    /// Per client, the transfer whose last answer was "unknown"; the client keeps retrying it.
    pub ambiguous: BTreeMap<usize, TransferRequest>,
    /// Transfers sent with an id that was already in use with another body.
    pub reused: u64,
    /// Shards of the cluster, so reuses can pick payers on the same or another shard.
    shards: u32,
    /// Per account: how many acknowledged transfers touch it.
    acknowledged_touching: BTreeMap<AccountId, u64>,
    /// Per account: the largest transfer count a completed read returned.
    read_count_max: BTreeMap<AccountId, u64>,
    /// Per customer account: `available` as its last completed read returned it (boundary
    /// amounts are drawn from it).
    last_available: BTreeMap<usize, Minor>,
    /// Per account, every transfer (id and body) ever sent touching it: the balance model's
    /// candidates.
    sent_touching: BTreeMap<AccountId, BTreeSet<(TransferId, TransferBody)>>,
    /// The accounts of the latest acknowledged transfer: reads aim there half the time, where a
    /// stale answer shows.
    last_acked: Option<(AccountId, AccountId)>,
    /// The first read that broke an invariant (the run stops at it).
    pub first_violation: Option<Violation>,
    pub operations: u64,
    /// Per nonce name, how many times a use was answered fresh (at most once, cluster-wide).
    pub nonces_fresh: BTreeMap<String, u64>,
    /// Audit events the cluster acknowledged: their sequence number and marker.
    pub audited: Vec<(u64, String)>,
    /// How many audit events were sent (markers are unique).
    audit_sent: u64,
    /// Stops placed so far (ids are unique), and the ones a client saw placed and not lifted.
    stops_sent: u64,
    stops_active: Vec<(StopId, AccountId)>,
    /// Holds a client saw made and not yet captured or voided (some expire meanwhile), and
    /// holds it saw voided (voided again now and then: nothing may be released twice).
    holds_open: Vec<TransferRequest>,
    holds_voided: Vec<TransferRequest>,
    /// Delayed transfers a client saw scheduled: revoked now and then (a revoke racing the
    /// arrival finds it posted).
    delayed_open: Vec<(TransferRequest, u64)>,
    /// Transfers answered `requires_verification` (customer c1 verifies every payment): a
    /// writer proves them, fails, or asks for a new code.
    awaiting_verification: Vec<TransferRequest>,
    /// Every hold id sent: not reused for plain transfers (another mode under the same id is
    /// refused as reused even with the captured body, which the balance model would count as
    /// "never posts"; `ledger/holds_tests.rs` covers that refusal).
    hold_ids: BTreeSet<TransferId>,
}

impl Workload {
    pub fn new(config: WorkloadConfig, seed: u64) -> Workload {
        // Every third account belongs to a customer (`c<k>::acct-<n>`), so its debits count
        // against the customer's KYC limits; see `SIM_CUSTOMERS`.
        let accounts: Vec<AccountId> = (0..config.accounts.max(3))
            .map(|n| match n % 3 {
                1 => AccountId::new(format!("c{}::acct-{n}", (n / 3) % SIM_CUSTOMERS.len())).expect("valid"),
                _ => AccountId::new(format!("acct-{n}")).expect("valid"),
            })
            .collect();
        let clients = (0..config.clients + config.readers)
            .map(|id| Client {
                id,
                rng: SmallRng::seed_from_u64(seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(u64::try_from(id).expect("small") + 1))),
                next_transfer: 0,
                current: None,
                next_at_ms: 0,
            })
            .collect();
        Workload {
            config,
            // CNY, the currency the risk limits count in.
            currency: Currency::from_code("CNY").expect("CNY"),
            accounts,
            foreign: (0..2).map(|n| AccountId::new(format!("eur-{n}")).expect("valid")).collect(),
            clients,
            posted: BTreeMap::new(),
            rejected: BTreeMap::new(),
            ambiguous: BTreeMap::new(),
            reused: 0,
            shards: 1,
            acknowledged_touching: BTreeMap::new(),
            read_count_max: BTreeMap::new(),
            last_available: BTreeMap::new(),
            sent_touching: BTreeMap::new(),
            last_acked: None,
            first_violation: None,
            nonces_fresh: BTreeMap::new(),
            audited: Vec::new(),
            audit_sent: 0,
            stops_sent: 0,
            stops_active: Vec::new(),
            holds_open: Vec::new(),
            holds_voided: Vec::new(),
            delayed_open: Vec::new(),
            awaiting_verification: Vec::new(),
            hold_ids: BTreeSet::new(),
            operations: 0,
        }
    }

    /// The settlement account that funds everyone.
    pub fn bank(&self) -> &AccountId {
        &self.accounts[0]
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// Creates and funds the accounts before any fault; false if the cluster could not.
    pub fn setup(&mut self, cluster: &mut SimCluster) -> bool {
        self.shards = cluster.placement().shard_count();
        if !self.setup_customers(cluster) {
            return false;
        }
        // The bank alone, then the customers as one batch (both creation paths are exercised).
        let bank =
            Request::CreateAccount(AccountRequest { id: self.bank().clone(), currency: self.currency, kind: AccountKind::Settlement });
        if !retry(cluster, bank, |reply| matches!(reply, Reply::Account { .. })) {
            return false;
        }
        let euro = Currency::from_code("EUR").expect("EUR");
        let customers: Vec<AccountRequest> = self.accounts[1..]
            .iter()
            .map(|account| AccountRequest { id: account.clone(), currency: self.currency, kind: AccountKind::Customer })
            .chain(self.foreign.iter().map(|account| AccountRequest { id: account.clone(), currency: euro, kind: AccountKind::Customer }))
            .collect();
        let created = |reply: &Reply| matches!(reply, Reply::Accounts(results) if results.iter().all(|result| matches!(result, AccountResult::Done { .. })));
        if !customers.is_empty() && !retry(cluster, Request::CreateAccounts(customers), created) {
            return false;
        }
        for account in self.accounts.clone().iter().skip(1) {
            let command = TransferRequest {
                id: TransferId::new(format!("fund-{account}")).expect("valid"),
                from: self.bank().clone(),
                to: account.clone(),
                amount: self.config.funding_minor,
                currency: self.currency,
            };
            let posted = |reply: &Reply| matches!(reply, Reply::Transfers(results) if matches!(&results[0], TransferResult::Done(view) if view.status == TransferStatus::Posted));
            self.sent(&command);
            if !retry(cluster, Request::Transfers(vec![command.clone()]), posted) {
                return false;
            }
            self.acknowledge(command, cluster.now_ms());
        }
        true
    }

    /// Advances every client: collect replies, start the next operation when due.
    pub fn step(&mut self, cluster: &mut SimCluster, issue_new: bool) {
        for index in 0..self.clients.len() {
            self.step_client(index, cluster, issue_new);
        }
    }

    /// Whether every client is idle (nothing in flight, nothing ambiguous).
    pub fn quiet(&self) -> bool {
        self.ambiguous.is_empty() && self.clients.iter().all(|client| client.current.is_none())
    }

    fn step_client(&mut self, index: usize, cluster: &mut SimCluster, issue_new: bool) {
        let now = cluster.now_ms();
        let Some((operation, call)) = self.clients[index].current.clone() else {
            if issue_new && now >= self.clients[index].next_at_ms {
                let operation = self.next_operation(index, now);
                self.send(index, operation, cluster);
            }
            return;
        };
        let Some(call) = call else {
            // Waiting to retry.
            if now >= self.clients[index].next_at_ms {
                self.send(index, operation, cluster);
            }
            return;
        };
        let Some(reply) = cluster.take_reply(call) else {
            return;
        };
        let finished = self.handle_reply(index, &operation, reply, now, cluster);
        let client = &mut self.clients[index];
        let think = client.rng.gen_range(0..=self.config.think_ms_max);
        client.next_at_ms = now + think;
        client.current = if finished { None } else { Some((operation, None)) };
    }

    fn send(&mut self, index: usize, operation: Operation, cluster: &mut SimCluster) {
        let live = cluster.live_nodes();
        let all = cluster.node_ids();
        let client = &mut self.clients[index];
        // Clients pick a node at random, like a load balancer would; a dead one just fails.
        let node: NodeId = if !live.is_empty() && client.rng.gen_range(0..10) < 9 {
            live[client.rng.gen_range(0..live.len())]
        } else {
            all[client.rng.gen_range(0..all.len())]
        };
        if let Operation::Transfer { command }
        | Operation::Refund { command, .. }
        | Operation::Capture { command, .. }
        | Operation::Hold { command, delayed: true, .. } = &operation
        {
            // A delayed transfer may post (in full) without another request.
            self.sent(command);
        }
        let client = &mut self.clients[index];
        let request = match &operation {
            Operation::Transfer { command, .. } => Request::Transfers(vec![command.clone()]),
            Operation::Refund { command, original } => {
                Request::Refund(RefundRequest { transfer: command.clone(), original: original.clone(), reason: "simulated".to_string() })
            }
            // Half the lookups name the payer; the others go through the id's home shard.
            Operation::ReadTransfer { id, body, .. } => {
                let payer = client.rng.gen_bool(0.5).then(|| body.from.clone());
                Request::ReadTransfer { id: id.clone(), payer }
            }
            Operation::ReadAccount { account, .. } => Request::ReadAccount(account.clone()),
            Operation::Stop { command } => Request::Stop(command.clone()),
            Operation::Hold { command, timeout_ms, delayed } => {
                Request::Hold(HoldRequest { transfer: command.clone(), timeout_ms: *timeout_ms, settle_on_expiry: *delayed })
            }
            Operation::Capture { command, .. } => {
                Request::Capture { id: command.id.clone(), payer: command.from.clone(), amount: Some(command.amount) }
            }
            Operation::Void { hold } => Request::Void { id: hold.id.clone(), payer: hold.from.clone() },
            Operation::VerifyPayment { command, attempt } => {
                let verify = match attempt {
                    Some(passed) => VerifyCmd::Attempt { id: command.id.clone(), passed: *passed, password_wrong: false },
                    None => {
                        let sealed = SealedPii { key_id: "sim".to_string(), nonce: [0; 12], ciphertext: vec![1], fingerprint: [0; 32] };
                        VerifyCmd::IssueOtp { id: command.id.clone(), otp: Box::new(OtpHash { salt: [0; 16], hash: [0; 32], sealed }) }
                    }
                };
                Request::VerifyTransfer { payer: command.from.clone(), command: verify }
            }
            Operation::UseNonce { name, expires_ms } => {
                Request::System(SystemCmd::UseNonce { name: name.clone(), expires_ms: *expires_ms })
            }
            Operation::Audit { marker } => Request::System(SystemCmd::Audit(vec![AuditEvent {
                at_ms: 0,
                node,
                key_id: format!("client-{index}"),
                role: "operator".to_string(),
                request_id: marker.clone(),
                client: String::new(),
                operation: "POST /v1/transfers".to_string(),
                targets: vec![marker.clone()],
                status: 201,
                outcome: "ok".to_string(),
            }])),
        };
        let call = cluster.submit(node, request, self.config.call_timeout_ms);
        self.operations += 1;
        self.clients[index].current = Some((operation, Some(call)));
    }

    fn next_operation(&mut self, index: usize, now: u64) -> Operation {
        let accounts = self.accounts.len();
        let hot = self.config.hot_accounts.clamp(1, accounts - 1);
        let reader = index >= self.config.clients;
        if !reader && !self.awaiting_verification.is_empty() && self.clients[index].rng.gen_bool(0.3) {
            let client = &mut self.clients[index];
            let command = self.awaiting_verification.swap_remove(client.rng.gen_range(0..self.awaiting_verification.len()));
            // Mostly right, sometimes wrong (five wrong ones reject it), now and then a new code.
            let attempt = match client.rng.gen_range(0..10) {
                0 => None,
                1..=2 => Some(false),
                _ => Some(true),
            };
            return Operation::VerifyPayment { command, attempt };
        }
        // A writer revokes a delayed transfer that is about due half the time it sees one: a
        // revoke racing the arrival is where a wrong rule shows.
        if !reader {
            let due = self.delayed_open.iter().position(|(_, due_ms)| *due_ms <= now + 20);
            if let Some(position) = due.filter(|_| self.clients[index].rng.gen_bool(0.5)) {
                let (hold, _) = self.delayed_open.swap_remove(position);
                return Operation::Void { hold };
            }
        }
        let read = reader || self.clients[index].rng.gen_range(0..100) < self.config.read_percent;
        if read && !self.posted.is_empty() {
            let client = &mut self.clients[index];
            if client.rng.gen_bool(0.5) {
                // Half the reads ask about an account of the latest acknowledgement: a replica
                // that missed it answers stale there first.
                let latest = self.last_acked.as_ref().filter(|_| client.rng.gen_bool(0.5));
                let account = match latest {
                    Some((from, to)) => {
                        if client.rng.gen_bool(0.5) {
                            from.clone()
                        } else {
                            to.clone()
                        }
                    }
                    None => self.accounts[client.rng.gen_range(1..accounts)].clone(),
                };
                let acked_before = self.acknowledged_touching.get(&account).copied().unwrap_or(0);
                let seen_before = self.read_count_max.get(&account).copied().unwrap_or(0);
                let acks_before = u64::try_from(self.posted.len()).expect("fits");
                return Operation::ReadAccount { account, started_ms: now, acked_before, seen_before, acks_before };
            }
            let pick_rejected = !self.rejected.is_empty() && client.rng.gen_bool(0.3);
            let (id, body, expect_posted) = if pick_rejected {
                let position = client.rng.gen_range(0..self.rejected.len());
                let ((id, body), _) = self.rejected.iter().nth(position).expect("in range");
                (id.clone(), body.clone(), false)
            } else {
                let position = client.rng.gen_range(0..self.posted.len());
                let (_, acked) = self.posted.iter().nth(position).expect("in range");
                // Half the time the latest acknowledgement instead.
                let latest = client.rng.gen_bool(0.5).then(|| self.posted.values().max_by_key(|acked| acked.seq)).flatten();
                let acked = latest.unwrap_or(acked);
                (acked.command.id.clone(), acked.command.body(), true)
            };
            return Operation::ReadTransfer { id, body, expect_posted, started_ms: now };
        }
        if !reader && !self.posted.is_empty() && self.clients[index].rng.gen_range(0..100) < self.config.refund_percent {
            let client = &mut self.clients[index];
            // Half the time the latest acknowledged transfer, so refunds of one original meet
            // (and their sum presses against its amount).
            let original = if client.rng.gen_bool(0.5) {
                self.posted.values().max_by_key(|acked| acked.seq).expect("not empty").command.clone()
            } else {
                let position = client.rng.gen_range(0..self.posted.len());
                self.posted.values().nth(position).expect("in range").command.clone()
            };
            let id = TransferId::new(format!("rf{}-{}", client.id, client.next_transfer)).expect("valid");
            client.next_transfer += 1;
            // Often the whole amount: a second such refund of an original must be refused.
            let amount = if client.rng.gen_bool(0.5) { original.amount } else { client.rng.gen_range(1..=original.amount) };
            let command = TransferRequest { id, from: original.to.clone(), to: original.from.clone(), amount, currency: original.currency };
            return Operation::Refund { command, original: original.id };
        }
        if !reader && self.clients[index].rng.gen_range(0..100) < self.config.hold_percent {
            return self.hold_operation(index);
        }
        if !reader && self.clients[index].rng.gen_range(0..100) < self.config.stop_percent {
            let client = &mut self.clients[index];
            // Lift a stop a client saw placed, or place a new one (at most two at a time, so
            // money keeps moving).
            if self.stops_active.len() >= 2 || (!self.stops_active.is_empty() && client.rng.gen_bool(0.5)) {
                let (id, account) = self.stops_active.remove(client.rng.gen_range(0..self.stops_active.len()));
                let lift = LiftStop { id, account, reason: "cleared".to_string(), actor: format!("client-{index}") };
                return Operation::Stop { command: StopCmd::Lift(lift) };
            }
            self.stops_sent += 1;
            let account = self.accounts[client.rng.gen_range(1..accounts)].clone();
            let place = PlaceStop {
                id: StopId::new(format!("stop-{}", self.stops_sent)).expect("valid"),
                account,
                block_credits: client.rng.gen_bool(0.3),
                reason: "simulated order".to_string(),
                authority_ref: String::new(),
                actor: format!("client-{index}"),
            };
            return Operation::Stop { command: StopCmd::Place(place) };
        }
        if !reader && self.clients[index].rng.gen_range(0..100) < self.config.system_percent {
            let client = &mut self.clients[index];
            if client.rng.gen_bool(0.5) {
                let name = format!("key-{}:nonce-{}", client.rng.gen_range(0..2), client.rng.gen_range(0..self.config.nonce_names.max(1)));
                // Long past the run: a name is spent once for the whole run.
                return Operation::UseNonce { name, expires_ms: now + 1_800_000 };
            }
            self.audit_sent += 1;
            return Operation::Audit { marker: format!("audit-{}-{}", client.id, self.audit_sent) };
        }
        if self.clients[index].rng.gen_range(0..100) < self.config.reuse_percent {
            if let Some(reuse) = self.reuse(index) {
                return reuse;
            }
        }
        let client = &mut self.clients[index];
        let pick = |rng: &mut SmallRng| {
            if rng.gen_range(0..100) < self.config.hot_percent {
                rng.gen_range(1..=hot)
            } else {
                rng.gen_range(1..accounts)
            }
        };
        let from = pick(&mut client.rng);
        let mut to = pick(&mut client.rng);
        if to == from {
            to = if from + 1 < accounts { from + 1 } else { 1 };
        }
        // Now and then the settlement account pays out, so money keeps flowing in.
        let from = if client.rng.gen_range(0..20) == 0 { 0 } else { from };
        let mut amount = client.rng.gen_range(1..=self.config.amount_max_minor);
        // The edge of the overdraft rule: all of the payer's last seen available balance, or
        // one minor unit more.
        if from != 0 && client.rng.gen_range(0..100) < self.config.boundary_percent {
            if let Some(available) = self.last_available.get(&from).copied().filter(|available| *available > 0) {
                amount = if client.rng.gen_bool(0.5) { available } else { available + 1 };
            }
        }
        let id = TransferId::new(format!("c{}-{}", client.id, client.next_transfer)).expect("valid");
        client.next_transfer += 1;
        let payee = if client.rng.gen_range(0..100) < self.config.missing_payee_percent {
            if client.rng.gen_bool(0.5) {
                AccountId::new(format!("missing-{}", client.rng.gen_range(0..8))).expect("valid")
            } else {
                self.foreign[client.rng.gen_range(0..self.foreign.len())].clone()
            }
        } else {
            self.accounts[to].clone()
        };
        let command = TransferRequest { id, from: self.accounts[from].clone(), to: payee, amount, currency: self.currency };
        Operation::Transfer { command }
    }

    /// An operation on holds: capture or void an open one, void a voided one again, or make one.
    fn hold_operation(&mut self, index: usize) -> Operation {
        let client = &mut self.clients[index];
        if !self.holds_open.is_empty() && client.rng.gen_bool(0.6) {
            let hold = self.holds_open.swap_remove(client.rng.gen_range(0..self.holds_open.len()));
            if client.rng.gen_bool(0.35) {
                return Operation::Void { hold };
            }
            // All of it, part of it, or (refused) one unit more.
            let amount = match client.rng.gen_range(0..10) {
                0..=3 => hold.amount,
                4..=8 => client.rng.gen_range(1..=hold.amount),
                _ => hold.amount + 1,
            };
            let held = hold.amount;
            return Operation::Capture { command: TransferRequest { amount, ..hold }, held };
        }
        if !self.delayed_open.is_empty() && client.rng.gen_bool(0.2) {
            let (hold, _) = self.delayed_open.swap_remove(client.rng.gen_range(0..self.delayed_open.len()));
            return Operation::Void { hold };
        }
        if !self.holds_voided.is_empty() && client.rng.gen_bool(0.25) {
            let hold = self.holds_voided[client.rng.gen_range(0..self.holds_voided.len())].clone();
            return Operation::Void { hold };
        }
        let accounts = self.accounts.len();
        let from = client.rng.gen_range(1..accounts);
        let to = if from + 1 < accounts { from + 1 } else { 1 };
        let id = TransferId::new(format!("hd{}-{}", client.id, client.next_transfer)).expect("valid");
        client.next_transfer += 1;
        let amount = client.rng.gen_range(1..=self.config.amount_max_minor);
        let command =
            TransferRequest { id, from: self.accounts[from].clone(), to: self.accounts[to].clone(), amount, currency: self.currency };
        let timeout_ms = client.rng.gen_range(100..=2_000);
        let delayed = client.rng.gen_bool(0.3);
        self.hold_ids.insert(command.id.clone());
        Operation::Hold { command, timeout_ms, delayed }
    }

    /// A transfer under an id already used with another body: an id another client has in
    /// flight now (a race) or one already answered, with another payer (same shard or another
    /// one), payee or amount. `None` when no id is known yet.
    fn reuse(&mut self, index: usize) -> Option<Operation> {
        let in_flight: Vec<TransferRequest> = self
            .clients
            .iter()
            .filter(|client| client.id != index)
            .filter_map(|client| match &client.current {
                Some((Operation::Transfer { command }, _)) => Some(command.clone()),
                _ => None,
            })
            .collect();
        let rng = &mut self.clients[index].rng;
        let original = if !in_flight.is_empty() && rng.gen_bool(0.5) {
            in_flight[rng.gen_range(0..in_flight.len())].clone()
        } else if !self.posted.is_empty() && rng.gen_bool(0.7) {
            let position = rng.gen_range(0..self.posted.len());
            self.posted.values().nth(position).expect("in range").command.clone()
        } else if !self.rejected.is_empty() {
            let position = rng.gen_range(0..self.rejected.len());
            let ((id, body), _) = self.rejected.iter().nth(position).expect("in range");
            TransferRequest { id: id.clone(), from: body.from.clone(), to: body.to.clone(), amount: body.amount, currency: body.currency }
        } else {
            return None;
        };
        if self.hold_ids.contains(&original.id) {
            return None;
        }
        let shard_of = |account: &AccountId| settle_cluster::placement::shard_of(account, self.shards);
        let mut command = original.clone();
        let customers = &self.accounts[1..];
        match rng.gen_range(0..4) {
            0 | 1 => {
                // Another payer: on the original payer's shard, or on another one.
                let same_shard = rng.gen_bool(0.5);
                let payers: Vec<&AccountId> = customers
                    .iter()
                    .filter(|account| **account != original.from && **account != original.to)
                    .filter(|account| (shard_of(account) == shard_of(&original.from)) == same_shard)
                    .collect();
                let Some(payer) = payers.get(rng.gen_range(0..payers.len().max(1))) else {
                    command.amount = original.amount + 1;
                    return Some(self.reused(command));
                };
                command.from = (*payer).clone();
            }
            2 => {
                let payees: Vec<&AccountId> =
                    customers.iter().filter(|account| **account != original.from && **account != original.to).collect();
                command.to = payees[rng.gen_range(0..payees.len())].clone();
            }
            _ => command.amount = original.amount + rng.gen_range(1..=self.config.amount_max_minor),
        }
        Some(self.reused(command))
    }

    fn reused(&mut self, command: TransferRequest) -> Operation {
        self.reused += 1;
        Operation::Transfer { command }
    }

    /// Handles a reply; true when the operation is finished.
    fn handle_reply(&mut self, client: usize, operation: &Operation, reply: Reply, now: u64, cluster: &mut SimCluster) -> bool {
        match operation {
            Operation::Transfer { command } | Operation::Refund { command, .. } => {
                let result = match reply {
                    Reply::Transfers(mut results) if results.len() == 1 => results.remove(0),
                    _ => TransferResult::Unavailable,
                };
                match result {
                    TransferResult::Done(view) if view.status == TransferStatus::Posted => {
                        self.ambiguous.remove(&client);
                        cluster.note(format!("ack {} posted ({} -> {} {})", command.id, command.from, command.to, command.amount));
                        self.acknowledge(command.clone(), now);
                        true
                    }
                    TransferResult::Done(view) => match view.status {
                        TransferStatus::Rejected(code) => {
                            self.ambiguous.remove(&client);
                            cluster.note(format!("ack {} rejected {}", command.id, code.code()));
                            self.rejected.insert((command.id.clone(), command.body()), code);
                            true
                        }
                        TransferStatus::RequiresVerification => {
                            self.ambiguous.remove(&client);
                            cluster.note(format!("ack {} requires verification", command.id));
                            if !self.awaiting_verification.contains(command) {
                                self.awaiting_verification.push(command.clone());
                            }
                            true
                        }
                        _ => {
                            self.ambiguous.insert(client, command.clone());
                            false
                        }
                    },
                    TransferResult::Refused(code) => {
                        self.ambiguous.remove(&client);
                        cluster.note(format!("ack {} refused {}", command.id, code.code()));
                        self.rejected.insert((command.id.clone(), command.body()), code);
                        true
                    }
                    TransferResult::Unavailable => {
                        // Unknown outcome: retry the same id.
                        self.ambiguous.insert(client, command.clone());
                        false
                    }
                }
            }
            Operation::ReadTransfer { id, body, expect_posted, started_ms } => {
                if let Reply::Transfer(found) = reply {
                    // The payer's shard may hold another body under a reused id: only a record
                    // with this body speaks about this transfer.
                    let found_body = found.as_ref().map(|view| TransferBody {
                        from: view.from.clone(),
                        to: view.to.clone(),
                        amount: view.amount,
                        currency: view.currency,
                    });
                    if *expect_posted && found_body.as_ref().is_some_and(|found| found != body) {
                        self.violated(Violation::new(
                            "one_body_per_id",
                            format!("{id} was acknowledged posted as {body:?} but reads back as {found_body:?}"),
                        ));
                    }
                    let status = found.filter(|_| found_body.as_ref() == Some(body)).map(|view| view.status);
                    let posted = status == Some(TransferStatus::Posted);
                    if *expect_posted && !posted {
                        self.violated(Violation::new(
                            "linearizable_reads",
                            format!("read of {id} started at {started_ms} ms after its acknowledgement returned {status:?}"),
                        ));
                    }
                    if !*expect_posted && posted {
                        self.violated(Violation::new(
                            "rejected_never_posted",
                            format!("{id} was rejected with a 4xx but reads back posted"),
                        ));
                    }
                }
                true
            }
            Operation::Stop { command } => {
                match (command, reply) {
                    (StopCmd::Place(place), Reply::Stop(StopOutcome::Placed(_) | StopOutcome::Replayed(_))) => {
                        cluster.note(format!("ack stop {} on {}", place.id, place.account));
                        self.stops_active.push((place.id.clone(), place.account.clone()));
                    }
                    (StopCmd::Lift(lift), Reply::Stop(StopOutcome::Lifted(_) | StopOutcome::Replayed(_))) => {
                        cluster.note(format!("ack lift {} on {}", lift.id, lift.account));
                    }
                    (StopCmd::Lift(lift), _) => {
                        // Unknown: lift it again later.
                        self.stops_active.push((lift.id.clone(), lift.account.clone()));
                    }
                    // An unknown placement may hold or not: the checkers read the stops.
                    _ => {}
                }
                true
            }
            Operation::Hold { command, delayed, timeout_ms } => match single_result(reply) {
                TransferResult::Done(view) => {
                    if view.status == TransferStatus::Held && *delayed {
                        cluster.note(format!("ack delayed {} scheduled", command.id));
                        // Due about `timeout_ms` after the hold applied (a little before now).
                        self.delayed_open.push((command.clone(), view.created_at_ms.saturating_add(*timeout_ms)));
                    } else if view.status == TransferStatus::Held {
                        cluster.note(format!("ack hold {} held", command.id));
                        self.holds_open.push(command.clone());
                    }
                    true
                }
                TransferResult::Refused(_) => true,
                TransferResult::Unavailable => false,
            },
            Operation::Capture { command, held } => {
                let refused = match single_result(reply) {
                    TransferResult::Done(view) => match view.status {
                        TransferStatus::Posted => {
                            cluster.note(format!("ack capture {} posted {} of {held}", command.id, command.amount));
                            self.acknowledge(command.clone(), now);
                            return true;
                        }
                        TransferStatus::Pending => return false,
                        TransferStatus::Rejected(code) => code,
                        // Voided or expired before the capture: nothing moved.
                        _ => RejectCode::HoldNotActive,
                    },
                    TransferResult::Refused(code) => code,
                    TransferResult::Unavailable => return false,
                };
                cluster.note(format!("ack capture {} refused {}", command.id, refused.code()));
                self.rejected.insert((command.id.clone(), command.body()), refused);
                true
            }
            Operation::VerifyPayment { command, attempt } => {
                match single_result(reply) {
                    TransferResult::Done(view) if view.status == TransferStatus::Posted => {
                        cluster.note(format!("ack verified {} posted", command.id));
                        self.acknowledge(command.clone(), now);
                    }
                    TransferResult::Done(view) => match view.status {
                        TransferStatus::Rejected(code) => {
                            cluster.note(format!("ack verify {} rejected {}", command.id, code.code()));
                            self.rejected.insert((command.id.clone(), command.body()), code);
                        }
                        // Still waiting (a failed attempt, a new code), or pending across
                        // shards: ask again later (a passed retry answers what it became).
                        _ => self.awaiting_verification.push(command.clone()),
                    },
                    TransferResult::Refused(_) => {}
                    TransferResult::Unavailable => {
                        if attempt.is_some() {
                            self.awaiting_verification.push(command.clone());
                        }
                    }
                }
                true
            }
            Operation::Void { hold } => match single_result(reply) {
                TransferResult::Done(view) => {
                    if view.status == TransferStatus::Voided && !self.holds_voided.contains(hold) {
                        cluster.note(format!("ack void {}", hold.id));
                        self.holds_voided.push(hold.clone());
                    }
                    true
                }
                TransferResult::Refused(_) => true,
                TransferResult::Unavailable => false,
            },
            Operation::UseNonce { name, .. } => {
                if let Reply::System(SystemOutcome::NonceFresh) = reply {
                    cluster.note(format!("ack nonce {name} fresh"));
                    let fresh = {
                        let count = self.nonces_fresh.entry(name.clone()).or_insert(0);
                        *count += 1;
                        *count
                    };
                    if fresh > 1 {
                        self.violated(Violation::new("nonce_used_once", format!("nonce {name} was answered fresh {fresh} times")));
                    }
                }
                // An unknown outcome is not retried: the nonce may or may not be spent.
                true
            }
            Operation::Audit { marker } => {
                if let Reply::System(SystemOutcome::Audited { first_seq, count }) = reply {
                    if count != 1 {
                        self.violated(Violation::new("audit_acknowledged", format!("{marker}: one event acknowledged as {count}")));
                    }
                    cluster.note(format!("ack audit {marker} at {first_seq}"));
                    self.audited.push((first_seq, marker.clone()));
                }
                true
            }
            Operation::ReadAccount { account, started_ms, acked_before, seen_before, acks_before } => {
                if let Reply::AccountState(Some(view)) = reply {
                    let (low, high) = self.balance_bounds(account, *acks_before);
                    if view.balance < low || view.balance > high {
                        let message = format!(
                            "read of {account} started at {started_ms} ms saw balance {}; the acknowledged and possible transfers allow {low}..={high}",
                            view.balance
                        );
                        self.violated(Violation::new("reads_match_model", message));
                    }
                    // A read sees at least what was acknowledged, and what any earlier read saw,
                    // before it started.
                    let lower_bounds = [
                        (*acked_before, format!("{acked_before} were acknowledged before")),
                        (*seen_before, format!("an earlier read saw {seen_before}")),
                    ];
                    for (lower_bound, explanation) in lower_bounds {
                        if view.transfer_count < lower_bound {
                            let message = format!(
                                "read of {account} started at {started_ms} ms saw {} transfers; {explanation}",
                                view.transfer_count
                            );
                            self.violated(Violation::new("linearizable_reads", message));
                        }
                    }
                    let seen = self.read_count_max.entry(account.clone()).or_insert(0);
                    *seen = (*seen).max(view.transfer_count);
                    if let Some(position) = self.accounts.iter().position(|known| known == account) {
                        self.last_available.insert(position, view.available);
                    }
                }
                true
            }
        }
    }

    fn acknowledge(&mut self, command: TransferRequest, at_ms: u64) {
        if let Some(earlier) = self.posted.get(&command.id) {
            if earlier.command != command {
                let message = format!("{} was acknowledged posted as {:?} and as {:?}", command.id, earlier.command, command);
                self.violated(Violation::new("one_body_per_id", message));
            }
            // Another client's request for the same transfer: one posting, counted once.
            return;
        }
        for account in [&command.from, &command.to] {
            *self.acknowledged_touching.entry(account.clone()).or_insert(0) += 1;
        }
        self.last_acked = Some((command.from.clone(), command.to.clone()));
        let seq = u64::try_from(self.posted.len()).expect("fits");
        self.posted.insert(command.id.clone(), Acknowledged { command, at_ms, seq });
    }

    /// Records a transfer sent (for the balance model).
    fn sent(&mut self, command: &TransferRequest) {
        for account in [&command.from, &command.to] {
            self.sent_touching.entry(account.clone()).or_default().insert((command.id.clone(), command.body()));
        }
    }

    /// The balance model: the range an account's posted balance may read, for a read started
    /// after `acks_before` acknowledgements. Every transfer acknowledged before it counts; each
    /// one sent and neither acknowledged before it nor known not to post (rejected with a 4xx,
    /// or its id posted with another body) may or may not count.
    fn balance_bounds(&self, account: &AccountId, acks_before: u64) -> (Minor, Minor) {
        let (mut low, mut high) = (0, 0);
        for (id, body) in self.sent_touching.get(account).into_iter().flatten() {
            let signed = if body.from == *account { -body.amount } else { body.amount };
            match self.posted.get(id) {
                Some(acked) if acked.command.body() == *body && acked.seq < acks_before => {
                    low += signed;
                    high += signed;
                    continue;
                }
                Some(acked) if acked.command.body() != *body => continue,
                _ => {}
            }
            if self.rejected.contains_key(&(id.clone(), body.clone())) {
                continue;
            }
            if signed < 0 {
                low += signed;
            } else {
                high += signed;
            }
        }
        (low, high)
    }

    /// Keeps the first violation a read found.
    fn violated(&mut self, violation: Violation) {
        self.first_violation.get_or_insert(violation);
    }
}

/// The one result of a one-transfer reply (`Unavailable` for anything else).
fn single_result(reply: Reply) -> TransferResult {
    match reply {
        Reply::Transfers(mut results) if results.len() == 1 => results.remove(0),
        _ => TransferResult::Unavailable,
    }
}

/// Submits a request until `accepted` holds for its reply (setup before faults).
/// The simulator's customers: how many distinct channels verified each (c0: class I, c1: class
/// II, c2: none, so its accounts never pay), and the limits every run sets (low, so the
/// workload's amounts reach them).
pub const SIM_CUSTOMERS: [usize; 3] = [1, 3, 0];
pub const SIM_CLASS_I_LIFETIME: Minor = 1_500;
pub const SIM_CLASS_II_YEARLY: Minor = 3_000;

impl Workload {
    /// Registers the customers with their checks and sets the limits on every shard (the system
    /// shard first, as the edge does).
    fn setup_customers(&mut self, cluster: &mut SimCluster) -> bool {
        for (k, checks) in SIM_CUSTOMERS.iter().enumerate() {
            let customer = CustomerId::new(format!("c{k}")).expect("valid");
            let pii = SealedPii {
                key_id: "sim".to_string(),
                nonce: [0; 12],
                ciphertext: vec![1],
                fingerprint: [u8::try_from(k).expect("small"); 32],
            };
            let register = CustomerCmd::Register(RegisterCustomer { id: customer.clone(), pii, actor: "sim".to_string() });
            let done = |reply: &Reply| matches!(reply, Reply::Customer(outcome) if matches!(outcome.as_ref(), CustomerOutcome::Registered(_) | CustomerOutcome::Replayed(_)));
            if !retry(cluster, Request::Customer(register), done) {
                return false;
            }
            for channel in Channel::ALL.iter().skip(1).take(*checks) {
                let verify = CustomerCmd::Verify(RecordVerification {
                    customer: customer.clone(),
                    id: VerificationId::new(channel.as_str()).expect("valid"),
                    channel: *channel,
                    reference: String::new(),
                    actor: "sim".to_string(),
                });
                let done = |reply: &Reply| matches!(reply, Reply::Customer(outcome) if matches!(outcome.as_ref(), CustomerOutcome::Verified(_) | CustomerOutcome::Replayed(_)));
                if !retry(cluster, Request::Customer(verify), done) {
                    return false;
                }
            }
        }
        // c1 verifies every payment (with the one-time code alone: no password set).
        let always = CustomerCmd::SetSecurity(SetSecurity {
            customer: CustomerId::new("c1").expect("valid"),
            password: None,
            always_verify: Some(true),
            actor: "sim".to_string(),
        });
        let done = |reply: &Reply| matches!(reply, Reply::Customer(outcome) if matches!(outcome.as_ref(), CustomerOutcome::Updated(_)));
        if !retry(cluster, Request::Customer(always), done) {
            return false;
        }
        let limits = RiskLimits {
            version: 1,
            class_i_lifetime: SIM_CLASS_I_LIFETIME,
            class_ii_yearly: SIM_CLASS_II_YEARLY,
            ..RiskLimits::default()
        };
        let system = settle_cluster::ledger::SYSTEM_SHARD;
        let shards = std::iter::once(system).chain((0..self.shards).filter(|shard| *shard != system));
        for shard in shards.collect::<Vec<_>>() {
            let set = Request::SetRiskLimits { shard, limits: limits.clone() };
            let done = |reply: &Reply| matches!(reply, Reply::Risk(RiskOutcome::Set(_) | RiskOutcome::Unchanged(_)));
            if !retry(cluster, set, done) {
                return false;
            }
        }
        true
    }
}

fn retry(cluster: &mut SimCluster, request: Request, accepted: impl Fn(&Reply) -> bool) -> bool {
    for attempt in 0..50 {
        let nodes = cluster.live_nodes();
        let node = nodes[attempt % nodes.len()];
        let call = cluster.submit(node, request.clone(), 3_000);
        if let Some(reply) = cluster.wait(call, 5_000) {
            if accepted(&reply) {
                return true;
            }
        }
        cluster.run_for(200);
    }
    false
}
