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
        #[doc = concat!("The client-chosen id of ", $what, ".")]
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

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
}
