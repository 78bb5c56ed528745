//! What crosses the core's boundaries besides the log: client requests and replies (the
//! driver's and the simulator's interface) and the messages between nodes, with the peer
//! frames' own format version (raft's messages stay protobuf inside).

use crate::codec;
pub use crate::codec::CodecError;
use crate::ids::LegId;
use crate::ids::{AccountId, CustomerId, NodeId, ShardId, TransferId};
pub use crate::ledger::AccountView;
use crate::ledger::{
    AccountKind, AccountOutcome, ChallengeReport, CreditCmd, CustomerCmd, CustomerOutcome, CustomerReport, FinalizeCmd, RefundTotal,
    RejectCode, ReserveCmd, ReserveOutcome, RiskLimits, RiskOutcome, StatementPage, StopCmd, StopOutcome, StopRecord, SystemCmd,
    SystemOutcome, SystemRead, SystemReadReply, TransferBody, TransferView, VerifyCmd,
};
pub use crate::log::{EntryPayload, Proposer, Tagged};
use crate::money::{Currency, Minor};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// The layout of peer frames this build speaks (both ends must agree; a frame of another
/// version is refused by the transport, never misread).
/// 2: transfer-id reservations, decisions carry the body they decide.
/// 3: reservation answers carry the reservation they answer.
/// 4: transfer views carry their hold; holds, captures and voids.
/// 5: customers, risk limits, delayed transfers, verifications.
/// 7: shard members announced (replica moves).
/// 8: the node registry (`Registry`), joining (`Join`, `Welcome`), legs carry the sender's members epoch.
pub const PEER_FORMAT_VERSION: u8 = 8;

/// Encodes a peer frame's payload.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    codec::encode(PEER_FORMAT_VERSION, value)
}

/// Appends an encoded frame payload to `buffer` (so the transport frames it in place).
pub fn encode_into<T: Serialize>(buffer: &mut Vec<u8>, value: &T) {
    codec::encode_into(buffer, PEER_FORMAT_VERSION, value)
}

/// Decodes a frame payload written by `encode`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    codec::decode(PEER_FORMAT_VERSION, bytes)
}

/// A client's new account, as the core receives it (the edge has validated the fields). Its
/// operation (`core/operation/account.rs`) turns it into the log's `CreateAccount`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRequest {
    pub id: AccountId,
    pub currency: Currency,
    pub kind: AccountKind,
}

/// A client's transfer, as the core receives it; its operation (`core/operation/transfer.rs`)
/// turns it into the log's `TransferCmd`. Separate from the log type so that the client
/// interface and the log's layout can change apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRequest {
    pub id: TransferId,
    pub from: AccountId,
    pub to: AccountId,
    pub amount: Minor,
    pub currency: Currency,
}

impl TransferRequest {
    pub fn body(&self) -> TransferBody {
        TransferBody { from: self.from.clone(), to: self.to.clone(), amount: self.amount, currency: self.currency }
    }
}

/// A refund of a posted transfer: the refund transfer (payer = the original's payee, payee =
/// the original's payer, its own id) and the original it refunds. Routed like a transfer (its
/// id reserved on its home shard first), applied on its payer's shard as `Command::Refund`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRequest {
    pub transfer: TransferRequest,
    pub original: TransferId,
    pub reason: String,
}

/// A hold (a transfer made with mode hold): routed like a transfer (its id reserved on its home
/// shard first), applied on its payer's shard as `Command::Hold`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRequest {
    pub transfer: TransferRequest,
    pub timeout_ms: u64,
    /// A delayed transfer: it settles when the timeout passes (unless revoked before).
    pub settle_on_expiry: bool,
}

/// What a client asks of the cluster. `Transfers` may name payers on many shards (the batch
/// endpoint); the node splits it into one leg per shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    CreateAccount(AccountRequest),
    /// Many accounts at once (the batch endpoint): one leg per shard, each item answered alone.
    CreateAccounts(Vec<AccountRequest>),
    Transfers(Vec<TransferRequest>),
    /// Internal to legs: bind transfer ids to their bodies on their home shard (the origin's
    /// first step for every transfer whose payer does not live on the id's home shard).
    Reserve(Vec<ReserveCmd>),
    ReadAccount(AccountId),
    /// Without a payer hint the id's home shard is asked first: it holds the record when the
    /// payer lives there, else the id's reservation, which names the payer's shard.
    ReadTransfer {
        id: TransferId,
        payer: Option<AccountId>,
    },
    History {
        account: AccountId,
        before: Option<u64>,
        limit: u32,
    },
    /// API keys, nonces, audit events (`ledger/system.rs`): one command, on its shard.
    System(SystemCmd),
    /// A linearizable read of keys or the audit log (system shard).
    SystemRead(SystemRead),
    /// Places or lifts a stop order on an account (the account's shard).
    Stop(StopCmd),
    /// Every stop placed on an account, active and lifted.
    ReadStops(AccountId),
    Refund(RefundRequest),
    /// What was refunded of an original, read on its payee's shard.
    ReadRefunds {
        original: TransferId,
        payee: AccountId,
    },
    Hold(HoldRequest),
    /// Captures a hold on its payer's shard (all of it when `amount` is `None`).
    Capture {
        id: TransferId,
        payer: AccountId,
        amount: Option<Minor>,
    },
    /// Voids a hold on its payer's shard.
    Void {
        id: TransferId,
        payer: AccountId,
    },
    /// One page of an account's movements with `from_ms <= at < to_ms`, after `after`.
    Statement {
        account: AccountId,
        from_ms: u64,
        to_ms: u64,
        after: Option<(u64, u64)>,
        limit: u32,
    },
    /// An account's posted balance after its last movement at or before `at_ms`.
    BalanceAsOf {
        account: AccountId,
        at_ms: u64,
    },
    /// Registers a customer or records an identity check (the customer's shard).
    Customer(CustomerCmd),
    /// A customer with its class, what its accounts paid and what it may still pay.
    ReadCustomer(CustomerId),
    /// A change of the risk limits on one named shard (the edge sends it to the system shard
    /// first, then to every other shard).
    SetRiskLimits {
        shard: ShardId,
        limits: RiskLimits,
    },
    /// The risk limits one named shard applies.
    ReadRiskLimits {
        shard: ShardId,
    },
    /// A verification attempt's result or a one-time code issued, on the payer's shard;
    /// answered like a transfer.
    VerifyTransfer {
        payer: AccountId,
        command: VerifyCmd,
    },
    /// A transfer awaiting verification, its challenge and its payer's password hash.
    ReadChallenge {
        id: TransferId,
        payer: AccountId,
    },
    /// A backup fence on one named shard (`ledger/fence.rs`), answered once applied.
    Fence {
        shard: ShardId,
        epoch: u64,
    },
    /// Records of one shard's cut for backup `epoch`, after the key `after`, from its leader.
    BackupChunk {
        shard: ShardId,
        epoch: u64,
        after: Option<Vec<u8>>,
    },
    /// One step of moving the shard's replica on `from` to `to` (an admin operation, answered by
    /// the shard's leader with where the move stands; repeated until `MoveStage::Done`).
    MoveReplica {
        shard: ShardId,
        from: NodeId,
        to: NodeId,
    },
    /// Internal to legs: a payer-shard leg (transfers, a refund, a hold) whose ids a home shard
    /// at backup fence `fence` reserved; the payer shard applies that fence before accepting it.
    Fenced {
        fence: u64,
        request: FencedRequest,
    },
}

/// The steps of moving a replica, in order (`core/operation/membership.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveStage {
    /// The leader compacts its log first, so the new member starts from a snapshot.
    Preparing,
    /// A membership change is in flight; nothing new was proposed.
    Waiting,
    /// Proposed: the new node joins as a learner (it receives the log, does not vote).
    AddingLearner,
    /// The learner is catching up (by snapshot, then the log).
    CatchingUp,
    /// Proposed: the caught-up learner becomes a voter.
    Promoting,
    /// The node leaving leads the shard: leadership is being handed to another voter.
    HandingOff,
    /// Proposed: the old node is removed.
    Removing,
    /// The new node votes and the old one is no member.
    Done,
    /// The request describes no move (nothing changed): `from` is no member and `to` none
    /// either, or `to` votes already while the shard has no voter to spare (removing `from`
    /// would leave it short).
    Invalid,
}

/// Where a replica move stands, as the shard's leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveStatus {
    pub shard: ShardId,
    pub stage: MoveStage,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// The new node's match index and the leader's last index (catch-up progress).
    pub matched: u64,
    pub last_index: u64,
}

/// What a `Request::Fenced` leg carries: only payer-shard legs (not a `Request`, so a frame
/// cannot nest them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FencedRequest {
    Transfers(Vec<TransferRequest>),
    Refund(RefundRequest),
    Hold(HoldRequest),
}

impl FencedRequest {
    /// A payer-shard leg as a fenced one (any other request back as it was).
    pub fn wrap(request: Request) -> Result<FencedRequest, Box<Request>> {
        match request {
            Request::Transfers(items) => Ok(FencedRequest::Transfers(items)),
            Request::Refund(refund) => Ok(FencedRequest::Refund(refund)),
            Request::Hold(hold) => Ok(FencedRequest::Hold(hold)),
            other => Err(Box::new(other)),
        }
    }

    pub fn into_request(self) -> Request {
        match self {
            FencedRequest::Transfers(items) => Request::Transfers(items),
            FencedRequest::Refund(refund) => Request::Refund(refund),
            FencedRequest::Hold(hold) => Request::Hold(hold),
        }
    }
}

/// The outcome of one account of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountResult {
    Done {
        outcome: AccountOutcome,
        account: Option<AccountView>,
    },
    /// No leader answered in time: whether it was created is unknown; retry (creation is
    /// idempotent for the same currency and kind).
    Unavailable,
}

/// The outcome of one transfer of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferResult {
    /// The stored record: posted, or a stored rejection (a retry returns the same).
    Done(TransferView),
    /// Refused without storing anything (the id names another transfer, invalid command).
    Refused(RejectCode),
    /// No leader answered in time: the outcome is unknown, retry with the same id.
    Unavailable,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    pub transfers: Vec<TransferView>,
    pub next_cursor: Option<u64>,
}

/// The answer to a `Request` (or to one leg of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Account {
        outcome: AccountOutcome,
        account: Option<AccountView>,
    },
    Transfers(Vec<TransferResult>),
    /// One result per account of `Request::CreateAccounts`, in order.
    Accounts(Vec<AccountResult>),
    /// The home shard's answer to `Request::Reserve`, item by item, each with the reservation
    /// it answers (so the origin matches it against what it asked, never trusting a leg id
    /// alone: a replayed or misdirected reply must not clear a transfer).
    /// `fence`: the home shard's backup fence epoch; the transfers it cleared go to their payer
    /// shards wrapped in `Request::Fenced` with it (`ledger/fence.rs`).
    Reservations {
        answers: Vec<(ReserveCmd, ReserveOutcome)>,
        fence: u64,
    },
    AccountState(Option<AccountView>),
    Transfer(Option<TransferView>),
    /// The home shard's answer to a lookup without payer when the record lives on the payer's
    /// shard: the body the id is reserved for (the router asks the payer's shard next).
    Reserved(TransferBody),
    History(Option<HistoryPage>),
    System(SystemOutcome),
    SystemRead(SystemReadReply),
    Stop(StopOutcome),
    /// An account's stops; `None` when the account does not exist.
    Stops(Option<Vec<StopRecord>>),
    /// An original's refunds; `None` when nothing was refunded of it.
    Refunds(Option<RefundTotal>),
    /// A statement page; `None` when the account does not exist.
    Statement(Option<StatementPage>),
    /// A balance as of a time; `None` when the account does not exist.
    Balance(Option<(Currency, Minor)>),
    Customer(Box<CustomerOutcome>),
    /// A customer as read; `None` when it does not exist.
    CustomerState(Option<Box<CustomerReport>>),
    Risk(RiskOutcome),
    RiskLimits(RiskLimits),
    /// `None` when the transfer has no challenge on this shard.
    Challenge(Option<Box<ChallengeReport>>),
    /// A fence applied: the shard's fence epoch after it.
    Fenced(crate::ledger::FenceOutcome),
    BackupChunk(Box<crate::backup::BackupChunk>),
    /// Where a replica move stands after the step a `Request::MoveReplica` took.
    Moved(MoveStatus),
    /// No leader reached in time: the outcome is unknown.
    Unavailable,
    /// This node has too much in flight; nothing was started. Retry later.
    Overloaded,
    /// Internal to legs: the receiver does not lead the shard (with a hint if it knows who does).
    NotLeader {
        leader: Option<NodeId>,
    },
}

/// Everything one node sends another. Raft messages stay protobuf-encoded inside.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PeerMessage {
    Raft {
        shard: ShardId,
        message: Vec<u8>,
    },
    /// A leg of a client request for the shard's leader; `leg` names it at the origin, and the
    /// leader may drop it `timeout_ms` after it arrives (clocks of two nodes are not compared).
    /// `request_id` is the client's Request-Id, carried so every node's logs can name it.
    Leg {
        leg: LegId,
        shard: ShardId,
        timeout_ms: u64,
        request: Request,
        request_id: Option<String>,
        /// The sender's membership epoch for the shard (its replica's applied index, else the
        /// newest announcement's, else 0): a voter that is not the leader and knows a newer
        /// configuration corrects the sender's routing (`core/membership.rs`).
        members_epoch: u64,
    },
    LegReply {
        leg: LegId,
        reply: Reply,
    },
    /// Coordinator → payee shard leader: decide these credits. `hops` counts forwards by nodes
    /// that did not lead the shard (bounded, so two stale views cannot bounce it forever).
    /// `fence`: the highest backup fence epoch of the payer shards that sent them; the payee
    /// shard applies that fence before deciding (`ledger/fence.rs`).
    Credits {
        shard: ShardId,
        credits: Vec<CreditCmd>,
        hops: u8,
        fence: u64,
    },
    /// Payee shard leader → payer shard leader: these are the decisions, each with the body it
    /// was made for (the payer finalizes only a record with that body).
    /// `fence`: the payee shard's backup fence epoch; the payer shard applies that fence before
    /// finalizing.
    Decisions {
        shard: ShardId,
        decisions: Vec<FinalizeCmd>,
        hops: u8,
        fence: u64,
    },
    /// "I do not lead `shard`; `leader` does": lets a node without a replica of the shard
    /// find its leader.
    LeaderHint {
        shard: ShardId,
        leader: NodeId,
    },
    /// Follower → leader: the next chunk of an offered snapshot, after the key `after`.
    SnapshotFetch {
        shard: ShardId,
        snapshot_id: u64,
        after: Option<Vec<u8>>,
    },
    /// Leader → follower: records of an offered snapshot (keys without their generation), in key
    /// order; `done` on the last chunk; `unknown` when the snapshot is not offered any more.
    SnapshotChunk {
        shard: ShardId,
        snapshot_id: u64,
        entries: Vec<(Vec<u8>, Vec<u8>)>,
        done: bool,
        unknown: bool,
    },
    /// Shard leader → every node: the shard's members as of the leader's applied index
    /// `epoch`, so nodes without a replica route to the right ones and a node added as a
    /// learner starts its replica (`core/membership.rs`).
    Members {
        shard: ShardId,
        epoch: u64,
        voters: Vec<NodeId>,
        learners: Vec<NodeId>,
    },
    /// The node registry as a replica of the system shard applied it: every node registered
    /// after bootstrap with its peer address, and the registry's epoch. Each node keeps the
    /// newest it heard (`core/membership.rs`) and links to every node in it.
    Registry {
        epoch: u64,
        nodes: Vec<(NodeId, String)>,
        retired: Vec<NodeId>,
    },
    /// A node started with `--join` asks a member for the cluster's layout (handled by the
    /// driver: answered with `Welcome` only when the registry holds the sender at `peer`).
    Join {
        peer: String,
    },
    /// The answer to `Join`: the shard count, the bootstrap members, the registry's epoch and
    /// every node's peer address (bootstrap members and registered ones).
    Welcome {
        shards: u32,
        bootstrap: Vec<NodeId>,
        epoch: u64,
        nodes: Vec<(NodeId, String)>,
        retired: Vec<NodeId>,
    },
    /// A node introduces itself to its peers (handled by the driver, not the core).
    NodeInfo {
        http: String,
        version: String,
        started_ms: u64,
        draining: bool,
    },
}
