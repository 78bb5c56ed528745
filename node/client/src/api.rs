//! The JSON shapes of HTTP API v1, as typed values: what the server writes (`ClusterView`,
//! `AccountView`, `TransferView`, `TransferPage`, `ErrorBody`) and what clients send
//! (`CreateAccountRequest`, `TransferRequest`, `BatchRequest`). The server builds its answers
//! from these types and the tools read them back with the same ones, so the two cannot drift.
//!
//! Amounts are decimal strings at the currency's exponent, never numbers; currencies, statuses,
//! kinds and roles are strings, so a client keeps working when a server adds a value.
//!
//! Members are declared in alphabetical order of their JSON names: the server used to write these
//! objects with `serde_json::json!`, whose maps sort their keys, and declaring them in that order
//! keeps the bytes on the wire unchanged. Clients must not depend on the order.
//!
//! Absent and `null` are different answers where the server distinguishes them: a member the
//! server leaves out in some answers is an `Option` skipped when `None`; one that may also be
//! `null` is an `Option<Option<T>>` (`None` absent, `Some(None)` null), with accessors that
//! flatten it for readers.

use serde::{Deserialize, Serialize};

/// `GET /v1/cluster`: the cluster as the answering node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// The answering node's id.
    pub node: u64,
    /// Every member of the cluster, the answering node included (`is_self`).
    pub nodes: Vec<NodeView>,
    /// Every shard of the cluster, as this node's replica of it sees it.
    pub shards: Vec<ShardView>,
    pub uptime_ms: u64,
    /// The answering node's version (`settle --version`).
    pub version: String,
}

impl ClusterView {
    /// The answering node's own entry.
    pub fn this_node(&self) -> Option<&NodeView> {
        self.nodes.iter().find(|node| node.is_self)
    }
}

/// One member of the cluster in a `ClusterView`. The answering node knows its own details; of
/// another node it knows what that node last introduced itself with (`http`, `version`,
/// `uptime_ms`, which are `null` until it has) and when it last heard from it; of a node it has
/// no link to, only the id, peer address and the shards it leads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// The node's HTTP API address (`http://host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "absent_or_null")]
    pub http: Option<Option<String>>,
    pub id: u64,
    /// Milliseconds since a frame last arrived from the node (`null`: never); absent on the
    /// answering node's own entry.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "absent_or_null")]
    pub last_heard_ms: Option<Option<u64>>,
    /// How many shards the answering node sees this node lead.
    pub leader_of: u64,
    /// The node's peer address (`host:port`).
    pub peer: String,
    /// Whether the answering node heard from it lately.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachable: Option<bool>,
    /// This entry is the answering node.
    #[serde(rename = "self")]
    pub is_self: bool,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "absent_or_null")]
    pub uptime_ms: Option<Option<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "absent_or_null")]
    pub version: Option<Option<String>>,
}

impl NodeView {
    /// The node's HTTP address, when the answering node knows it.
    pub fn http_url(&self) -> Option<&str> {
        self.http.as_ref()?.as_deref()
    }

    /// The node's uptime, when the answering node knows it.
    pub fn uptime(&self) -> Option<u64> {
        self.uptime_ms.flatten()
    }

    /// The node's version, when the answering node knows it.
    pub fn version_text(&self) -> Option<&str> {
        self.version.as_ref()?.as_deref()
    }
}

/// One shard in a `ClusterView`, as the answering node's replica sees it. With `role` `none` or
/// `quarantined` the node runs no replica of it: the term and indexes are zero and `leader` is
/// the leader it last heard of.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardView {
    pub applied_index: u64,
    pub commit_index: u64,
    pub id: u32,
    pub last_index: u64,
    /// The leader this replica knows of (`null`: none).
    pub leader: Option<u64>,
    /// Nodes being added to the shard by a replica move (catching up, not voting yet); absent
    /// when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learners: Vec<u64>,
    /// On the leader: how long the oldest in-doubt cross-shard transfer has been pending.
    pub pending_oldest_ms: u64,
    /// Cross-shard transfers prepared on this shard and not finalized (in doubt).
    pub pending_transfers: u64,
    /// The shard's voters: the nodes holding a replica.
    pub replicas: Vec<u64>,

    /// `leader`, `follower`, `candidate`, `precandidate`, `none` or `quarantined`.
    pub role: String,
    pub term: u64,
}

/// An account: the answer to `POST /v1/accounts` and `GET /v1/accounts/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    /// The balance minus the debits of cross-shard transfers still in doubt.
    pub available: String,
    pub balance: String,
    pub created_at_ms: u64,
    pub currency: String,
    /// The customer the account belongs to (its id is `<customer>::<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    pub id: String,
    /// `customer`, `merchant` or `settlement` (only settlement accounts may go negative).
    pub kind: String,
    pub pending_debits: String,
    pub transfer_count: u64,
}

/// A transfer: the answer to `POST /v1/transfers` and `GET /v1/transfers/{id}`, one item of a
/// batch answer, and the `transfer` member of a rejection's error.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferView {
    pub amount: String,
    /// A delayed transfer (mode `delayed`): when it arrives (settles) unless revoked before,
    /// RFC 3339 in UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrives_at: Option<String>,
    pub created_at_ms: u64,
    pub currency: String,
    pub from: String,
    /// A transfer made with mode hold: what was held and what became of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<HoldView>,
    /// A hold's expiry, RFC 3339 in UTC (present with `hold`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_expires_at: Option<String>,
    pub id: String,
    /// Present while `status` is `requires_verification`: how to prove the payment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_action: Option<NextAction>,
    /// Present only when `status` is `rejected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejection: Option<Rejection>,
    /// `posted`, `rejected`, `pending`, `requires_verification`, for holds `held`, `voided`,
    /// `expired`, for delayed transfers `scheduled` (until they arrive) and `revoked`.
    pub status: String,
    pub to: String,
}

/// A hold's amounts (`amount` is what was held until a capture, then what was captured).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldView {
    /// Captured (moved or, while `pending`, moving to the payee).
    pub captured: String,
    pub expires_at_ms: u64,
    pub held: String,
    /// Given back to the payer's available balance (by a partial capture, a void or expiry).
    pub released: String,
}

/// How to complete a transfer awaiting verification.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextAction {
    pub attempts_remaining: u32,
    /// RFC 3339: the transfer is rejected `verification_expired` if not proved by then.
    pub expires_at: String,
    /// What `POST url` must carry: `payment_password` and/or `otp` (the one-time code sent to
    /// the customer).
    pub methods: Vec<String>,
    /// `verify_payment`.
    #[serde(rename = "type")]
    pub kind: String,
    pub url: String,
}

/// Why a transfer was rejected, stored under its id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub code: String,
    pub message: String,
}

/// `GET /v1/accounts/{id}/transfers`: one page of an account's transfers, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferPage {
    /// The `cursor` of the next page (`null`: this is the last one).
    pub next_cursor: Option<String>,
    pub transfers: Vec<TransferView>,
}

/// Every error: `{"error": {...}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong. A 4xx other than 408/429 means "definitely not applied"; 408, 429 and 5xx
/// mean "unknown: retry with the same id" (`retryable`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable, snake_case (`insufficient_funds`, `unavailable`, ...).
    pub code: String,
    /// The request member at fault, for validation errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
    pub retryable: bool,
    /// A business rejection stored under the transfer id: the stored transfer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<Box<TransferView>>,
}

/// `POST /v1/accounts`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateAccountRequest {
    pub currency: String,
    pub id: String,
    /// `customer` when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// `POST /v1/transfers`, and one item of a batch. `id` is the client's idempotency key: a retry
/// with the same id and body never moves money twice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRequest {
    /// A decimal string at exactly the currency's exponent ("12.34" USD).
    pub amount: String,
    pub currency: String,
    pub from: String,
    pub id: String,
    pub to: String,
}

/// `POST /v1/accounts/batch`: up to 8,000 accounts, each answered alone in `results`
/// (`{"status": 201, "account": {...}}`, 200 when it existed alike, or an error with its status).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountBatchRequest {
    pub accounts: Vec<CreateAccountRequest>,
}

/// `POST /v1/transfers/batch`: up to 8,000 transfers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRequest {
    pub transfers: Vec<TransferRequest>,
}

/// Serde for an `Option<Option<T>>` member: `None` is absent (skipped by
/// `skip_serializing_if`, filled in by `default`), `Some(None)` is `null`.
mod absent_or_null {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(value: &Option<Option<T>>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(inner) => inner.serialize(serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(deserializer).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Parses `text`, checks it re-serializes to exactly the same bytes, and returns the value.
    fn round_trip<T: Serialize + for<'de> Deserialize<'de>>(text: &str) -> T {
        let value: T = serde_json::from_str(text).expect("parses");
        assert_eq!(serde_json::to_string(&value).expect("serializes"), text);
        value
    }

    /// A `/v1/cluster` answer as the server wrote it before these types existed (keys sorted by
    /// `json!`) reads back and writes out byte for byte: the node's own entry, a peer that
    /// introduced itself, one that has not yet (null), and one without a link (members absent).
    #[test]
    fn cluster_view_keeps_the_wire_bytes_and_tells_absent_from_null() {
        let text = concat!(
            r#"{"node":1,"nodes":["#,
            r#"{"http":"http://127.0.0.1:8080","id":1,"leader_of":2,"peer":"127.0.0.1:9080","reachable":true,"self":true,"uptime_ms":5000,"version":"0.1.0"},"#,
            r#"{"http":"http://127.0.0.1:8081","id":2,"last_heard_ms":12,"leader_of":1,"peer":"127.0.0.1:9081","reachable":true,"self":false,"uptime_ms":4000,"version":"0.1.0"},"#,
            r#"{"http":null,"id":3,"last_heard_ms":null,"leader_of":0,"peer":"127.0.0.1:9082","reachable":false,"self":false,"uptime_ms":null,"version":null},"#,
            r#"{"id":4,"leader_of":0,"peer":"127.0.0.1:9083","self":false}],"#,
            r#""shards":[{"applied_index":7,"commit_index":7,"id":0,"last_index":7,"leader":1,"pending_oldest_ms":0,"pending_transfers":0,"replicas":[1,2,3],"role":"leader","term":2},"#,
            r#"{"applied_index":0,"commit_index":0,"id":1,"last_index":0,"leader":null,"pending_oldest_ms":0,"pending_transfers":0,"replicas":[2,3,4],"role":"none","term":0}],"#,
            r#""uptime_ms":5000,"version":"0.1.0"}"#
        );
        let view: ClusterView = round_trip(text);
        assert_eq!(view.this_node().map(|node| node.id), Some(1));
        assert_eq!(view.nodes[0].last_heard_ms, None, "absent on the node's own entry");
        assert_eq!(view.nodes[2].last_heard_ms, Some(None), "null: never heard");
        assert_eq!(view.nodes[2].http_url(), None);
        assert_eq!(view.nodes[3].http, None, "absent: no link");
        assert_eq!(view.nodes[1].http_url(), Some("http://127.0.0.1:8081"));
        assert_eq!(view.nodes[1].uptime(), Some(4000));
        assert_eq!(view.shards[1].leader, None);
    }

    /// Accounts, transfers (with and without a rejection), pages and errors keep their bytes.
    #[test]
    fn account_transfer_and_error_shapes_keep_the_wire_bytes() {
        let account = r#"{"available":"40.00","balance":"50.00","created_at_ms":17,"currency":"USD","id":"alice","kind":"customer","pending_debits":"10.00","transfer_count":3}"#;
        round_trip::<AccountView>(account);
        let posted = r#"{"amount":"12.34","created_at_ms":9,"currency":"USD","from":"alice","id":"t1","status":"posted","to":"bob"}"#;
        assert_eq!(round_trip::<TransferView>(posted).rejection, None);
        let rejected = r#"{"amount":"500","created_at_ms":9,"currency":"JPY","from":"alice","id":"t2","rejection":{"code":"insufficient_funds","message":"the payer's available balance is too low"},"status":"rejected","to":"bob"}"#;
        round_trip::<TransferView>(rejected);
        round_trip::<TransferPage>(&format!(r#"{{"next_cursor":"41","transfers":[{posted}]}}"#));
        round_trip::<TransferPage>(r#"{"next_cursor":null,"transfers":[]}"#);
        round_trip::<ErrorBody>(r#"{"error":{"code":"invalid_request","field":"id","message":"id is required","retryable":false}}"#);
        let with_transfer: ErrorBody = round_trip(&format!(
            r#"{{"error":{{"code":"insufficient_funds","message":"the payer's available balance is too low","retryable":false,"transfer":{rejected}}}}}"#
        ));
        assert_eq!(with_transfer.error.transfer.map(|transfer| transfer.id), Some("t2".to_string()));
    }

    /// Request bodies serialize as the tools sent them by hand (an account's `kind` only when
    /// given), and unknown members of an answer are ignored, so servers may add some.
    #[test]
    fn requests_serialize_as_before_and_answers_tolerate_new_members() {
        let transfer = TransferRequest {
            amount: "1.00".to_string(),
            currency: "USD".to_string(),
            from: "a".to_string(),
            id: "t".to_string(),
            to: "b".to_string(),
        };
        let batch = BatchRequest { transfers: vec![transfer] };
        assert_eq!(
            serde_json::to_string(&batch).unwrap(),
            r#"{"transfers":[{"amount":"1.00","currency":"USD","from":"a","id":"t","to":"b"}]}"#
        );
        let customer = CreateAccountRequest { currency: "USD".to_string(), id: "a".to_string(), kind: None };
        assert_eq!(serde_json::to_string(&customer).unwrap(), r#"{"currency":"USD","id":"a"}"#);
        let bank = CreateAccountRequest { kind: Some("settlement".to_string()), ..customer };
        assert_eq!(serde_json::to_value(&bank).unwrap()["kind"], Value::from("settlement"));
        let newer = r#"{"error":{"code":"not_leader","leader":2,"message":"m","retryable":false}}"#;
        assert_eq!(serde_json::from_str::<ErrorBody>(newer).unwrap().error.code, "not_leader");
    }
}
