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
/// 5: the state store is RocksDB (`state/`), no longer fjall.
pub const DATA_DIR_FORMAT_VERSION: u32 = 5;

const IDENTITY_FILE: &str = "cluster.json";
const PEERS_FILE: &str = "peers.json";

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
            write_atomically(data_dir, IDENTITY_FILE, &serde_json::to_vec_pretty(identity).expect("an identity serialises"))?;
            Ok(true)
        }
        Err(error) => Err(IdentityError::Io { path, source: error }),
    }
}

/// The identity a data dir holds, if it holds one (a node started with `--join` reads its
/// shard count and bootstrap members from it after the first start).
pub fn read(data_dir: &Path) -> Result<Option<DataDirIdentity>, IdentityError> {
    let path = data_dir.join(IDENTITY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|error| IdentityError::Unreadable { path: path.clone(), detail: error.to_string() }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(IdentityError::Io { path, source }),
    }
}

/// Writes `name` in `dir` so a crash leaves the old file or the new one, never a torn one:
/// a temporary file, synced, renamed over it, and the directory synced.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), IdentityError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| IdentityError::Io { path, source }
    };
    let temporary = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    std::fs::write(&temporary, bytes).map_err(io(&temporary))?;
    std::fs::File::open(&temporary).and_then(|file| file.sync_all()).map_err(io(&temporary))?;
    std::fs::rename(&temporary, &path).map_err(io(&path))?;
    std::fs::File::open(dir).and_then(|dir| dir.sync_all()).map_err(io(dir))?;
    Ok(())
}

/// Every node's peer address this node knew when it last heard of a change (`peers.json`):
/// the node registry (nodes registered after bootstrap, replicated on the system shard) and the
/// bootstrap members' addresses (from `--cluster`, or from the member a joining node asked).
/// Read at start, so a node links to every member without being told again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownPeers {
    pub registry: settle_cluster::placement::NodeRegistry,
    pub bootstrap: std::collections::BTreeMap<NodeId, String>,
}

impl KnownPeers {
    /// Every node's address: the bootstrap members', then the registered ones (a registered
    /// node's address wins); none of a retired node. An address that does not parse is skipped.
    pub fn addresses(&self) -> std::collections::BTreeMap<NodeId, std::net::SocketAddr> {
        let all = self.bootstrap.iter().chain(self.registry.nodes.iter());
        all.filter(|(id, _)| !self.registry.retired.contains(id)).filter_map(|(id, peer)| Some((*id, peer.parse().ok()?))).collect()
    }
}

/// The peers file of a data dir (empty when there is none yet).
pub fn read_peers(data_dir: &Path) -> Result<KnownPeers, IdentityError> {
    let path = data_dir.join(PEERS_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| IdentityError::Unreadable { path, detail: error.to_string() }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(KnownPeers::default()),
        Err(source) => Err(IdentityError::Io { path, source }),
    }
}

/// Replaces the peers file, atomically.
pub fn write_peers(data_dir: &Path, peers: &KnownPeers) -> Result<(), IdentityError> {
    write_atomically(data_dir, PEERS_FILE, &serde_json::to_vec_pretty(peers).expect("known peers serialise"))
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

    /// The peers file round-trips, a missing one reads as empty, and a registered node's
    /// address wins over a bootstrap entry for the same id.
    #[test]
    fn peers_file_round_trips_and_registered_addresses_win() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_peers(dir.path()).unwrap(), KnownPeers::default());
        let mut peers = KnownPeers::default();
        peers.bootstrap.insert(1, "127.0.0.1:9001".to_string());
        peers.bootstrap.insert(4, "127.0.0.1:1".to_string());
        peers.registry.epoch = 1;
        peers.registry.nodes.insert(4, "127.0.0.1:9004".to_string());
        write_peers(dir.path(), &peers).unwrap();
        let read = read_peers(dir.path()).unwrap();
        assert_eq!(read, peers);
        let addresses = read.addresses();
        assert_eq!(addresses[&4].to_string(), "127.0.0.1:9004");
        assert_eq!(addresses.len(), 2);
    }
}
