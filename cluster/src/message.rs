//! What crosses the boundaries of the core: log entry payloads, messages between nodes, client
//! requests and replies, and their binary encoding (bincode behind a format byte; raft's own
//! messages stay protobuf inside).

use crate::ids::{AccountId, NodeId, ShardId, TransferId};
use crate::ledger::{
    Account, AccountKind, AccountOutcome, Command, CreateAccount, CreditCmd, FinalizeCmd, RejectCode, ReserveCmd, ReserveOutcome,
    TransferCmd, TransferView,
};
use crate::money::{Currency, Minor};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// The first byte of every encoded payload; bumped when a format changes incompatibly.
/// 2: transfer-id reservations (`Command::Reserve`), finalizes and decisions carry the body.
pub const FORMAT_VERSION: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty payload")]
    Empty,
    #[error("unknown format version {0}")]
    Version(u8),
    #[error("undecodable payload: {0}")]
    Decode(#[from] bincode::Error),
}

/// Encodes a value behind the format byte.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = Vec::new();
    encode_into(&mut bytes, value);
    bytes
}

/// Appends what `encode` returns to `buffer`, so a caller can reuse one buffer and frame the
/// payload in place (a header before it) without copying it.
pub fn encode_into<T: Serialize>(buffer: &mut Vec<u8>, value: &T) {
    buffer.push(FORMAT_VERSION);
    bincode::serialize_into(&mut *buffer, value).expect("in-memory serialisation cannot fail");
}

/// Decodes a value written by `encode`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if *version != FORMAT_VERSION {
        return Err(CodecError::Version(*version));
    }
    Ok(bincode::deserialize(body)?)
}

/// Who proposed an entry: the node and its incarnation (a fresh number at every start), so the
/// proposal tags of an earlier run never match the waiters of this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposer {
    pub node: NodeId,
    pub incarnation: u64,
}

/// A command with the proposer's tag (0 when nobody waits for its outcome).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tagged {
    pub tag: u64,
    pub command: Command,
}

/// The data of one Raft log entry: a batch of commands and the proposer's clock reading, which
/// is the only timestamp the ledger ever sees (so every replica applies identically).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryPayload {
    pub proposer: Proposer,
    pub timestamp_ms: u64,
    pub commands: Vec<Tagged>,
}

/// An account as readers see it (without its history).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    pub id: AccountId,
    pub currency: Currency,
    pub kind: AccountKind,
    pub balance: Minor,
    pub available: Minor,
    pub debits_pending: Minor,
    pub created_at_ms: u64,
    pub transfer_count: u64,
}

impl From<&Account> for AccountView {
    fn from(account: &Account) -> AccountView {
        AccountView {
            id: account.id.clone(),
            currency: account.currency,
            kind: account.kind,
            balance: account.balance,
            available: account.available(),
            debits_pending: account.debits_pending,
            created_at_ms: account.created_at_ms,
            transfer_count: u64::try_from(account.history.len()).expect("fits u64"),
        }
    }
}

/// What a client asks of the cluster. `Transfers` may name payers on many shards (the batch
/// endpoint); the node splits it into one leg per shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    CreateAccount(CreateAccount),
    Transfers(Vec<TransferCmd>),
    /// Internal to legs: bind transfer ids to their bodies on their home shard (the origin's
    /// first step for every transfer whose payer does not live on the id's home shard).
    Reserve(Vec<ReserveCmd>),
    ReadAccount(AccountId),
    /// Without a payer hint every shard is asked (a transfer id alone does not name its shard).
    ReadTransfer {
        id: TransferId,
        payer: Option<AccountId>,
    },
    History {
        account: AccountId,
        before: Option<u64>,
        limit: u32,
    },
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
    /// The home shard's answer to `Request::Reserve`, item by item.
    Reservations(Vec<ReserveOutcome>),
    AccountState(Option<AccountView>),
    Transfer(Option<TransferView>),
    History(Option<HistoryPage>),
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
        leg: u64,
        shard: ShardId,
        timeout_ms: u64,
        request: Request,
        request_id: Option<String>,
    },
    LegReply {
        leg: u64,
        reply: Reply,
    },
    /// Coordinator → payee shard leader: decide these credits. `hops` counts forwards by nodes
    /// that did not lead the shard (bounded, so two stale views cannot bounce it forever).
    Credits {
        shard: ShardId,
        credits: Vec<CreditCmd>,
        hops: u8,
    },
    /// Payee shard leader → payer shard leader: these are the decisions, each with the body it
    /// was made for (the payer finalizes only a record with that body).
    Decisions {
        shard: ShardId,
        decisions: Vec<FinalizeCmd>,
        hops: u8,
    },
    /// "I do not lead `shard`; `leader` does": lets a node without a replica of the shard
    /// find its leader.
    LeaderHint {
        shard: ShardId,
        leader: NodeId,
    },
    /// A node introduces itself to its peers (handled by the driver, not the core).
    NodeInfo {
        http: String,
        version: String,
        started_ms: u64,
        draining: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Payloads survive encode → decode, and a wrong format byte is refused, not misread.
    #[test]
    fn payload_round_trips_and_version_is_checked() {
        let payload = EntryPayload {
            proposer: Proposer { node: 2, incarnation: 7 },
            timestamp_ms: 123,
            commands: vec![Tagged {
                tag: 9,
                command: Command::Transfer(TransferCmd {
                    id: TransferId::new("t1").unwrap(),
                    from: AccountId::new("a").unwrap(),
                    to: AccountId::new("b").unwrap(),
                    amount: i128::MAX,
                    currency: Currency::from_code("KWD").unwrap(),
                }),
            }],
        };
        let bytes = encode(&payload);
        assert_eq!(decode::<EntryPayload>(&bytes).unwrap(), payload);
        let mut wrong = bytes.clone();
        wrong[0] = 99;
        assert!(matches!(decode::<EntryPayload>(&wrong), Err(CodecError::Version(99))));
        assert!(matches!(decode::<EntryPayload>(&[]), Err(CodecError::Empty)));
        assert!(decode::<EntryPayload>(&bytes[..bytes.len() - 3]).is_err());
    }

    /// `encode_into` appends the format byte and the bincode bytes after what the buffer holds.
    #[test]
    fn encode_into_appends_the_format_byte_and_the_bincode_bytes() {
        let payload = EntryPayload { proposer: Proposer { node: 1, incarnation: 3 }, timestamp_ms: 42, commands: vec![] };
        let mut expected = vec![FORMAT_VERSION];
        expected.extend(bincode::serialize(&payload).unwrap());
        let mut buffer = vec![0xAA; 8];
        encode_into(&mut buffer, &payload);
        assert_eq!(&buffer[..8], &[0xAA; 8]);
        assert_eq!(&buffer[8..], &expected[..]);
        assert_eq!(encode(&payload), expected);
        assert_eq!(decode::<EntryPayload>(&buffer[8..]).unwrap(), payload);
    }
}
