//! Backup fences: how an online backup gets one consistent cut across shards.
//!
//! A backup picks an epoch and proposes `Command::Fence(epoch)` on every shard. A shard's cut is
//! its state at the end of the entry in which its fence epoch rose to the backup's epoch (every
//! replica keeps a read view of that state, `ShardReplica::backup_view`). The shards' fences
//! apply at different moments, so the cross-shard protocol carries the sender shard's fence
//! epoch on its messages (credit requests, decisions: `PeerMessage::Credits/Decisions::fence`;
//! reservation answers, whose cleared transfers reach their payer shard as `Request::Fenced`),
//! and a shard acts on such a message only once its own fence epoch is at least as high: if it
//! is lower, its leader proposes that fence first and parks the message until the fence applies
//! (bounded; what does not fit is dropped, and the protocol re-sends it). This is Chandy–Lamport's marker rule over the protocol's messages: no state in a cut
//! depends on a message sent after the sender's cut. So a posted cross-shard transfer in its
//! payer's cut has its credit in its payee's cut, and a credit in a payee's cut has its pending
//! or final record in the payer's cut (a transfer prepared but not yet decided in the cut is
//! re-driven by the restored cluster, as after any failover), and a recorded transfer has its
//! id's reservation on its home shard.

use super::{keys, Ledger};
use serde::{Deserialize, Serialize};

/// How far ahead of a node's wall clock a backup fence epoch may be (epochs are backup start
/// times in ms by default): neither a peer nor a client can push a shard's epoch so high that
/// no later backup can follow.
pub const FENCE_AHEAD_MS_MAX: u64 = 24 * 60 * 60 * 1000;

/// What `Command::Fence` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceOutcome {
    /// The shard's fence epoch after the command.
    pub epoch: u64,
    /// Whether this command raised it (this entry ends the shard's cut for `epoch`).
    pub raised: bool,
}

impl Ledger {
    /// Raises the shard's fence epoch to `epoch` if it is higher; a lower or equal epoch
    /// changes nothing (fences for one backup reach a shard from the backup and from peers).
    pub(super) fn fence_command(&mut self, epoch: u64) -> FenceOutcome {
        if epoch <= self.fence_epoch {
            return FenceOutcome { epoch: self.fence_epoch, raised: false };
        }
        self.fence_epoch = epoch;
        self.write(keys::key(self.shard, self.generation, keys::FENCE, &[]), &epoch);
        FenceOutcome { epoch, raised: true }
    }

    /// The last backup fence this shard applied (0: none).
    pub fn fence_epoch(&self) -> u64 {
        self.fence_epoch
    }

    pub(super) fn load_fence(&mut self) -> Result<(), crate::store::StoreError> {
        self.fence_epoch = match self.store.get(&keys::key(self.shard, self.generation, keys::FENCE, &[])) {
            Some(bytes) => super::decode_value(&bytes)
                .map_err(|error| crate::store::StoreError(format!("shard {}: stored fence epoch does not decode: {error}", self.shard)))?,
            None => 0,
        };
        Ok(())
    }
}

/// A stored fence record decodes as its kind says (`Ledger::check_record`).
pub(super) fn check_fence_record(kind: u8, value: &[u8]) -> Option<Result<(), String>> {
    (kind == keys::FENCE).then(|| super::decode_value::<u64>(value).map(|_| ()).map_err(|error| error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Applied, AppliedMark, Command};

    /// A fence only ever raises the epoch, and the epoch survives a reopen of the store.
    #[test]
    fn fences_only_raise_the_epoch_and_are_stored() {
        let mut ledger = Ledger::new(0, 4);
        assert_eq!(ledger.apply(1, &Command::Fence(5)), Applied::Fence(FenceOutcome { epoch: 5, raised: true }));
        assert_eq!(ledger.apply(2, &Command::Fence(5)), Applied::Fence(FenceOutcome { epoch: 5, raised: false }));
        assert_eq!(ledger.apply(3, &Command::Fence(3)), Applied::Fence(FenceOutcome { epoch: 5, raised: false }));
        ledger.commit_round(&AppliedMark::default()).unwrap();
        let (reopened, _) = Ledger::open(0, 4, ledger.store().clone(), 1 << 20).unwrap();
        assert_eq!(reopened.fence_epoch(), 5);
    }
}
