//! The data dir's identity file (`cluster.json`): which node of which cluster layout wrote the
//! data dir, and in which format. Written once, atomically, when a node bootstraps; checked at
//! every start, so a data dir is never opened by the wrong node, under another shard count, or by
//! a build that cannot read its format.

use serde::{Deserialize, Serialize};
use settle_cluster::ids::NodeId;
use std::path::{Path, PathBuf};

/// The layout of everything under a data dir this build writes and reads. Bumped whenever a
/// stored format changes incompatibly (log entries, ledger checkpoints, store keys).
/// 2: transfer-id reservations in the ledger and the log.
/// 3: ledger records of format 4 (holds, per-account movements, the shard clock).
/// 4: ledger records of format 5 (customers, limits, delayed transfers, verifications); an
///    account id `<customer>::<name>` is placed by its customer.
pub const DATA_DIR_FORMAT_VERSION: u32 = 4;

const IDENTITY_FILE: &str = "cluster.json";

/// Who this data dir belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataDirIdentity {
    /// Absent in data dirs written before the format was recorded (format 1).
    #[serde(default = "format_one")]
    pub format_version: u32,
    pub node_id: NodeId,
    pub shards: u32,
    pub members: Vec<NodeId>,
}

fn format_one() -> u32 {
    1
}

impl DataDirIdentity {
    pub fn new(node_id: NodeId, shards: u32, members: Vec<NodeId>) -> DataDirIdentity {
        DataDirIdentity { format_version: DATA_DIR_FORMAT_VERSION, node_id, shards, members }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} does not parse: {detail}")]
    Unreadable { path: PathBuf, detail: String },
    #[error(
        "{path} was written in data dir format {found}; this build reads format {expected}. Start this node with an empty data \
         dir (it catches up from its peers) or restore a backup taken by a build of format {expected}"
    )]
    Format { path: PathBuf, found: u32, expected: u32 },
    #[error("{path} belongs to node {stored_node} of a cluster with {stored_shards} shards and members {stored_members:?}, not node {node} with {shards} shards and members {members:?}")]
    Mismatch {
        path: PathBuf,
        stored_node: NodeId,
        stored_shards: u32,
        stored_members: Vec<NodeId>,
        node: NodeId,
        shards: u32,
        members: Vec<NodeId>,
    },
}

/// Writes the identity on first start (returns true: a fresh bootstrap), or checks it on a
/// restart (returns false).
pub fn check_or_write(data_dir: &Path, identity: &DataDirIdentity) -> Result<bool, IdentityError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| IdentityError::Io { path, source }
    };
    std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    let path = data_dir.join(IDENTITY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let stored: DataDirIdentity = serde_json::from_slice(&bytes)
                .map_err(|error| IdentityError::Unreadable { path: path.clone(), detail: error.to_string() })?;
            if stored.format_version != DATA_DIR_FORMAT_VERSION {
                return Err(IdentityError::Format { path, found: stored.format_version, expected: DATA_DIR_FORMAT_VERSION });
            }
            if stored != *identity {
                return Err(IdentityError::Mismatch {
                    path,
                    stored_node: stored.node_id,
                    stored_shards: stored.shards,
                    stored_members: stored.members,
                    node: identity.node_id,
                    shards: identity.shards,
                    members: identity.members.clone(),
                });
            }
            Ok(false)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let temporary = data_dir.join(format!("{IDENTITY_FILE}.tmp"));
            let text = serde_json::to_vec_pretty(identity).expect("an identity serialises");
            std::fs::write(&temporary, text).map_err(io(&temporary))?;
            std::fs::File::open(&temporary).and_then(|file| file.sync_all()).map_err(io(&temporary))?;
            std::fs::rename(&temporary, &path).map_err(io(&path))?;
            std::fs::File::open(data_dir).and_then(|dir| dir.sync_all()).map_err(io(data_dir))?;
            Ok(true)
        }
        Err(error) => Err(IdentityError::Io { path, source: error }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first start writes the identity; a restart with the same one passes; another node id
    /// or shard count is refused; a data dir of another format is refused with what to do.
    #[test]
    fn identity_is_written_once_and_checked_after() {
        let dir = tempfile::tempdir().unwrap();
        let identity = DataDirIdentity::new(2, 8, vec![1, 2, 3]);
        assert!(check_or_write(dir.path(), &identity).unwrap());
        assert!(!check_or_write(dir.path(), &identity).unwrap());
        let other = DataDirIdentity::new(3, 8, vec![1, 2, 3]);
        assert!(matches!(check_or_write(dir.path(), &other), Err(IdentityError::Mismatch { .. })));

        let old = tempfile::tempdir().unwrap();
        std::fs::write(old.path().join(IDENTITY_FILE), r#"{"node_id":2,"shards":8,"members":[1,2,3]}"#).unwrap();
        let refused = check_or_write(old.path(), &identity).unwrap_err();
        assert!(matches!(refused, IdentityError::Format { found: 1, .. }), "{refused}");
        assert!(refused.to_string().contains("empty data dir"), "{refused}");
    }
}
