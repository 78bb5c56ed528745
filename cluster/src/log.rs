//! What a Raft log entry holds: a batch of ledger commands with the proposer's identity and
//! clock reading, behind the log's own format version. Log entries live for as long as the log
//! is not compacted and travel to followers, so a new build must read the entries an older
//! build wrote: `decode_entry` dispatches on the version byte, and a change of layout adds a new
//! version with an upgrade from the old one here (the types of the old layout kept beside it),
//! never an in-place edit of a type that is already on disk.

use crate::codec::{self, CodecError};
use crate::ids::{NodeId, ProposalTag};
use crate::ledger::Command;
use serde::{Deserialize, Serialize};

/// The layout of log entries this build writes.
/// 2: transfer-id reservations (`Command::Reserve`), finalizes carry the body they decide.
/// 3: holds, credits carry the payer's kind.
/// 4: customers, risk limits, delayed transfers, verifications.
pub const ENTRY_FORMAT_VERSION: u8 = 4;

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
    pub tag: ProposalTag,
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

impl EntryPayload {
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(ENTRY_FORMAT_VERSION, self)
    }
}

/// Reads an entry of any layout this build knows (today only the current one).
pub fn decode_entry(bytes: &[u8]) -> Result<EntryPayload, CodecError> {
    let (version, _) = codec::split_version(bytes)?;
    match version {
        ENTRY_FORMAT_VERSION => codec::decode(ENTRY_FORMAT_VERSION, bytes),
        found => Err(CodecError::Version { found, expected: ENTRY_FORMAT_VERSION }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{AccountId, TransferId};
    use crate::ledger::TransferCmd;
    use crate::money::Currency;

    /// Entries survive encode → decode, and a layout this build does not know is refused.
    #[test]
    fn entries_round_trip_and_unknown_layouts_are_refused() {
        let payload = EntryPayload {
            proposer: Proposer { node: 2, incarnation: 7 },
            timestamp_ms: 123,
            commands: vec![Tagged {
                tag: ProposalTag(9),
                command: Command::Transfer(TransferCmd {
                    id: TransferId::new("t1").unwrap(),
                    from: AccountId::new("a").unwrap(),
                    to: AccountId::new("b").unwrap(),
                    amount: i128::MAX,
                    currency: Currency::from_code("KWD").unwrap(),
                }),
            }],
        };
        let bytes = payload.encode();
        assert_eq!(bytes[0], ENTRY_FORMAT_VERSION);
        assert_eq!(decode_entry(&bytes).unwrap(), payload);
        let mut older = bytes.clone();
        older[0] = 1;
        assert!(matches!(decode_entry(&older), Err(CodecError::Version { found: 1, .. })));
        assert!(decode_entry(&bytes[..bytes.len() - 3]).is_err());
    }
}
