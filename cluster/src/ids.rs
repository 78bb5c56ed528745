//! Identifiers: accounts and transfers are named by clients; nodes and shards by the cluster.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A node of the cluster (also its Raft peer id: raft-rs peer ids are the node ids).
pub type NodeId = u64;

/// A shard: one Raft group owning the accounts that hash to it.
pub type ShardId = u32;

/// The longest account or transfer id, in bytes.
pub const ID_BYTES_MAX: usize = 64;

/// Why an id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {ID_BYTES_MAX} bytes")]
    TooLong,
    #[error("may only contain A-Z a-z 0-9 and . _ : -")]
    BadCharacter,
}

/// Checks a client-chosen id: 1..=64 bytes of `[A-Za-z0-9._:-]` (safe in URLs and logs).
pub fn validate_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > ID_BYTES_MAX {
        return Err(IdError::TooLong);
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-');
    if !id.bytes().all(allowed) {
        return Err(IdError::BadCharacter);
    }
    Ok(())
}

macro_rules! string_id {
    ($name:ident, $what:literal) => {
        #[doc = concat!("The client-chosen id of ", $what, ". Validated wherever one is made, decoding")]
        /// included: an id from a peer frame, a log entry or a checkpoint is checked like one
        /// from a client.
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(id: String) -> Result<Self, IdError> {
                $name::new(id)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl $name {
            /// Validates and wraps an id.
            pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
                let id = id.into();
                validate_id(&id)?;
                Ok($name(id))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(AccountId, "an account");
string_id!(TransferId, "a transfer (also its idempotency key)");
string_id!(StopId, "a stop order on an account (also its idempotency key)");
string_id!(CustomerId, "a customer (the person or business accounts may belong to)");
string_id!(VerificationId, "an identity check recorded for a customer (also its idempotency key)");

/// What separates a customer's id from the rest of an account id that belongs to it:
/// `cust-42::wallet` is placed by `cust-42`, so a customer's accounts share its shard.
pub const CUSTOMER_SEPARATOR: &str = "::";

impl AccountId {
    /// The part of the id that decides its shard: the customer prefix before `::` when there is
    /// a non-empty one, else the whole id.
    pub fn placement_key(&self) -> &str {
        match self.0.split_once(CUSTOMER_SEPARATOR) {
            Some((customer, _)) if !customer.is_empty() => customer,
            _ => &self.0,
        }
    }

    /// Whether this id names an account of `customer` (`<customer>::<name>`).
    pub fn of_customer(&self, customer: &CustomerId) -> bool {
        self.0.split_once(CUSTOMER_SEPARATOR).is_some_and(|(prefix, rest)| prefix == customer.as_str() && !rest.is_empty())
    }
}

macro_rules! number_id {
    ($name:ident, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

number_id!(CallId, "A client request on the node it arrived at; the driver's handle for its reply.");
number_id!(LegId, "One leg of a call: the part of it sent to one shard's leader. Unique per node incarnation.");
number_id!(
    ProposalTag,
    "Names a command a node proposed, so the node can answer its waiter when the command applies; 0 when nobody waits."
);

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids are bounded and restricted to URL-safe characters.
    #[test]
    fn ids_are_validated() {
        assert!(AccountId::new("alice-01").is_ok());
        assert!(AccountId::new("merchant:42.eu_1").is_ok());
        assert_eq!(AccountId::new(""), Err(IdError::Empty));
        assert_eq!(AccountId::new("a".repeat(65)), Err(IdError::TooLong));
        assert!(AccountId::new("a".repeat(64)).is_ok());
        assert_eq!(TransferId::new("a b"), Err(IdError::BadCharacter));
        assert_eq!(TransferId::new("a/b"), Err(IdError::BadCharacter));
    }

    /// Decoding checks an id like `new` does: a peer frame or a record cannot smuggle one in.
    #[test]
    fn decoded_ids_are_validated() {
        let encoded = bincode::serialize(&"a b".to_string()).unwrap();
        assert!(bincode::deserialize::<TransferId>(&encoded).is_err());
        let encoded = bincode::serialize(&"x".repeat(65)).unwrap();
        assert!(bincode::deserialize::<AccountId>(&encoded).is_err());
        let good = AccountId::new("alice").unwrap();
        assert_eq!(bincode::deserialize::<AccountId>(&bincode::serialize(&good).unwrap()).unwrap(), good);
    }
}
