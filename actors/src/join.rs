//! Joining a running cluster: `settle start --join ADDR` with an empty data dir. The node
//! listens on its peer address, asks the member at `ADDR` (`PeerMessage::Join`, over the join
//! link) until that member answers with the cluster's layout (`PeerMessage::Welcome`), then
//! starts like any member. A member answers only a node the registry holds at the address it
//! gives (`settle node add ID --peer ADDR` registers it first, through the system shard), so
//! a node cannot make itself a member; with TLS the member also checks the joining node's
//! certificate names its id, and the joining node checks the member's covers `ADDR`.

use crate::transport::{self, PeerLimits, JOIN_LINK};
use settle_cluster::ids::NodeId;
use settle_cluster::ledger::valid_peer_address;
use settle_cluster::message::PeerMessage;
use settle_cluster::placement::NodeRegistry;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Bootstrap members a welcome may name, at most.
const BOOTSTRAP_MEMBERS_MAX: usize = 64;
/// Shards a welcome may name, at most (the edge refuses more at bootstrap too).
const SHARDS_MAX: u32 = 4_096;
/// How often the join request is repeated while no member answers.
const ASK_EVERY: Duration = Duration::from_secs(1);

/// What a member told the joining node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub shards: u32,
    pub bootstrap: Vec<NodeId>,
    pub registry: NodeRegistry,
    /// Every node's peer address, bootstrap members and registered ones.
    pub addresses: BTreeMap<NodeId, SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("listening on the peer address {address}: {source}")]
    Listen { address: SocketAddr, source: std::io::Error },
    #[error("peer tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("starting the join runtime: {0}")]
    Runtime(std::io::Error),
    #[error(
        "no member at {member} welcomed node {node} within {waited_s} s: register it first with `settle node add {node} --peer \
         {peer} --target URL` (admin key), and check --join names a member's peer address"
    )]
    NotWelcomed { member: SocketAddr, node: NodeId, peer: SocketAddr, waited_s: u64 },
}

/// Asks the member at `member` to welcome this node, for at most `timeout`.
pub fn join(
    node: NodeId,
    peer: SocketAddr,
    member: SocketAddr,
    limits: PeerLimits,
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
    timeout: Duration,
) -> Result<Welcome, JoinError> {
    let tls = match tls {
        Some((cert, key, ca)) => Some(std::sync::Arc::new(crate::tls::load(&cert, &key, &ca)?)),
        None => None,
    };
    // A runtime of its own: dropping it closes the listener before the node binds it again.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(JoinError::Runtime)?;
    runtime.block_on(async move {
        let (sender, mut inbound) = tokio::sync::mpsc::channel(64);
        let links = BTreeMap::from([(JOIN_LINK, member)]);
        let transport = transport::start(&tokio::runtime::Handle::current(), node, peer, links, limits, sender, tls)
            .map_err(|source| JoinError::Listen { address: peer, source })?;
        let started = Instant::now();
        loop {
            transport.send(JOIN_LINK, vec![PeerMessage::Join { peer: peer.to_string() }]);
            let asked = Instant::now();
            while asked.elapsed() < ASK_EVERY {
                let Ok(Some((from, messages))) = tokio::time::timeout(ASK_EVERY, inbound.recv()).await else {
                    break;
                };
                for message in messages {
                    if let PeerMessage::Welcome { shards, bootstrap, epoch, nodes, retired } = message {
                        match welcome_from(node, shards, bootstrap, epoch, nodes, retired) {
                            // Only the member asked answers (its own address in the welcome).
                            Ok(welcome) if welcome.addresses.get(&from) != Some(&member) => {
                                tracing::warn!(member = from, "join answer from a node other than the one asked; ignored")
                            }
                            Ok(welcome) => {
                                tracing::info!(member = from, shards, epoch, "welcomed into the cluster");
                                return Ok(welcome);
                            }
                            Err(reason) => tracing::warn!(member = from, reason, "join answer refused"),
                        }
                    }
                }
            }
            if started.elapsed() >= timeout {
                return Err(JoinError::NotWelcomed { member, node, peer, waited_s: timeout.as_secs() });
            }
            tracing::info!(%member, node, "waiting to be welcomed (is this node registered with `settle node add`?)");
        }
    })
}

/// A welcome checked like every peer input: bounded, well formed, and naming this node.
fn welcome_from(
    node: NodeId,
    shards: u32,
    bootstrap: Vec<NodeId>,
    epoch: u64,
    nodes: Vec<(NodeId, String)>,
    retired: Vec<NodeId>,
) -> Result<Welcome, &'static str> {
    if retired.len() > settle_cluster::ledger::REGISTRY_RECORDS_MAX || retired.contains(&node) {
        return Err("retired nodes out of bounds, or this node among them");
    }
    if shards == 0 || shards > SHARDS_MAX || bootstrap.is_empty() || bootstrap.len() > BOOTSTRAP_MEMBERS_MAX {
        return Err("layout out of bounds");
    }
    if nodes.len() > BOOTSTRAP_MEMBERS_MAX + settle_cluster::ledger::REGISTERED_NODES_MAX
        || nodes.iter().any(|(id, peer)| *id == 0 || !valid_peer_address(peer))
    {
        return Err("addresses malformed");
    }
    let addresses: BTreeMap<NodeId, SocketAddr> = nodes.iter().filter_map(|(id, peer)| Some((*id, peer.parse().ok()?))).collect();
    // Every bootstrap member that is still one has an address.
    let lacking = bootstrap.iter().any(|id| !retired.contains(id) && !addresses.contains_key(id));
    if lacking || !addresses.contains_key(&node) || bootstrap.contains(&node) {
        return Err("welcome does not name this node as registered or lacks a member's address");
    }
    let registered = nodes.into_iter().filter(|(id, _)| !bootstrap.contains(id)).collect();
    let mut bootstrap = bootstrap;
    bootstrap.sort_unstable();
    bootstrap.dedup();
    let registry = NodeRegistry { epoch, nodes: registered, retired: retired.into_iter().collect() };
    Ok(Welcome { shards, bootstrap, registry, addresses })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(list: &[(NodeId, &str)]) -> Vec<(NodeId, String)> {
        list.iter().map(|(id, peer)| (*id, peer.to_string())).collect()
    }

    /// A welcome naming this node, the bootstrap members and their addresses is taken apart
    /// into the layout and the registry (registered nodes only).
    #[test]
    fn a_welcome_splits_into_layout_and_registry() {
        let all = nodes(&[(1, "127.0.0.1:9001"), (2, "127.0.0.1:9002"), (3, "127.0.0.1:9003"), (4, "127.0.0.1:9004")]);
        let welcome = welcome_from(4, 8, vec![3, 1, 2], 1, all, Vec::new()).unwrap();
        assert_eq!(welcome.bootstrap, vec![1, 2, 3]);
        assert_eq!(welcome.registry.nodes.keys().copied().collect::<Vec<_>>(), vec![4]);
        assert_eq!(welcome.addresses.len(), 4);
    }

    /// A welcome that leaves this node out, lacks a member's address, names node 0, carries a
    /// malformed address or an impossible layout is refused.
    #[test]
    fn a_malformed_welcome_is_refused() {
        let base = [(1, "127.0.0.1:9001"), (2, "127.0.0.1:9002"), (4, "127.0.0.1:9004")];
        assert!(welcome_from(5, 8, vec![1, 2], 1, nodes(&base), Vec::new()).is_err());
        assert!(welcome_from(4, 8, vec![1, 2, 3], 1, nodes(&base), Vec::new()).is_err());
        assert!(welcome_from(
            4,
            8,
            vec![1, 2],
            1,
            nodes(&[(0, "127.0.0.1:1"), (1, "127.0.0.1:9001"), (2, "127.0.0.1:9002"), (4, "127.0.0.1:9004")]),
            Vec::new()
        )
        .is_err());
        assert!(
            welcome_from(4, 8, vec![1, 2], 1, nodes(&[(1, "nowhere"), (2, "127.0.0.1:9002"), (4, "127.0.0.1:9004")]), Vec::new()).is_err()
        );
        assert!(welcome_from(4, 0, vec![1, 2], 1, nodes(&base), Vec::new()).is_err());
        assert!(welcome_from(4, 8, vec![], 1, nodes(&base), Vec::new()).is_err());
        assert!(welcome_from(1, 8, vec![1, 2], 1, nodes(&base), Vec::new()).is_err());
        // A retired bootstrap member needs no address; this node retired is refused.
        assert!(welcome_from(4, 8, vec![1, 2, 3], 3, nodes(&base), vec![3]).is_ok());
        assert!(welcome_from(4, 8, vec![1, 2], 3, nodes(&base), vec![4]).is_err());
    }
}
