//! Where accounts and shard replicas live. Pure functions of the bootstrap parameters, so every
//! node computes the same answer without asking anyone.

use crate::ids::{AccountId, CustomerId, NodeId, ShardId, TransferId};

/// Replicas per shard (Raft voters), capped by the number of nodes.
pub const REPLICAS_PER_SHARD: usize = 3;

/// The stable hash behind `shard = hash(account_id) mod shards`: 64-bit FNV-1a over the id's
/// UTF-8 bytes. Chosen because it is tiny, fixed by its spec (offset basis 0xcbf29ce484222325,
/// prime 0x100000001b3) and independent of the Rust version, unlike `DefaultHasher`.
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The shard that owns an account, among `shards` shards: by the account's placement key (its
/// customer's id for `<customer>::<name>`, so a customer's accounts live on its shard).
pub fn shard_of(account: &AccountId, shards: u32) -> ShardId {
    shard_of_key(account.placement_key(), shards)
}

/// The shard that holds a customer's record (and every account named `<customer>::...`).
pub fn customer_shard_of(customer: &CustomerId, shards: u32) -> ShardId {
    shard_of_key(customer.as_str(), shards)
}

fn shard_of_key(key: &str, shards: u32) -> ShardId {
    assert!(shards > 0, "a cluster needs shards");
    ShardId::try_from(fnv1a_64(key.as_bytes()) % u64::from(shards)).expect("a remainder of a u32 modulus fits in u32")
}

/// The home shard of a transfer id: the one shard that records which body the id belongs to
/// (its reservation), so an id reused with another payer, payee or amount is refused however
/// the two requests are routed. Same hash as accounts, over the id's bytes.
pub fn home_shard_of(id: &TransferId, shards: u32) -> ShardId {
    assert!(shards > 0, "a cluster needs shards");
    ShardId::try_from(fnv1a_64(id.as_str().as_bytes()) % u64::from(shards)).expect("a remainder of a u32 modulus fits in u32")
}

/// The nodes that joined after bootstrap, as the system shard's registry holds them: id →
/// peer address, with the registry's epoch (one per registration). Every node keeps the newest
/// it has seen; a node is a cluster member if it is a bootstrap member or registered here.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeRegistry {
    pub epoch: u64,
    pub nodes: std::collections::BTreeMap<NodeId, String>,
    /// Nodes taken out for good (bootstrap members too): no members any more.
    #[serde(default)]
    pub retired: std::collections::BTreeSet<NodeId>,
}

/// The cluster's static layout, fixed at bootstrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Every member node, sorted.
    nodes: Vec<NodeId>,
    shards: u32,
}

impl Placement {
    pub fn new(mut nodes: Vec<NodeId>, shards: u32) -> Placement {
        assert!(!nodes.is_empty(), "a cluster needs nodes");
        assert!(shards > 0, "a cluster needs shards");
        nodes.sort_unstable();
        nodes.dedup();
        Placement { nodes, shards }
    }

    pub fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    pub fn shard_count(&self) -> u32 {
        self.shards
    }

    pub fn shard_ids(&self) -> impl Iterator<Item = ShardId> {
        0..self.shards
    }

    /// The shard that owns an account.
    pub fn shard_of(&self, account: &AccountId) -> ShardId {
        shard_of(account, self.shards)
    }

    /// The shard that holds a customer's record and accounts.
    pub fn customer_shard_of(&self, customer: &CustomerId) -> ShardId {
        customer_shard_of(customer, self.shards)
    }

    /// The shard that holds a transfer id's reservation.
    pub fn home_shard_of(&self, id: &TransferId) -> ShardId {
        home_shard_of(id, self.shards)
    }

    /// The voters of a shard: consecutive nodes starting at `shard mod nodes`, so replicas and
    /// preferred leaders rotate evenly over the members.
    pub fn replicas(&self, shard: ShardId) -> Vec<NodeId> {
        let count = self.nodes.len();
        let start = usize::try_from(shard).expect("u32 fits usize") % count;
        let replicas = REPLICAS_PER_SHARD.min(count);
        (0..replicas).map(|k| self.nodes[(start + k) % count]).collect()
    }

    /// The node that should lead a shard when it is healthy: the first replica. Leadership is
    /// handed back to it after failover, which keeps leaders spread evenly.
    pub fn preferred_leader(&self, shard: ShardId) -> NodeId {
        self.replicas(shard)[0]
    }

    /// The shards with a replica on a node.
    pub fn shards_on(&self, node: NodeId) -> Vec<ShardId> {
        self.shard_ids().filter(|shard| self.replicas(*shard).contains(&node)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FNV-1a matches its published test vectors, so the account→shard map never drifts.
    #[test]
    fn fnv1a_matches_reference_vectors() {
        assert_eq!(fnv1a_64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x85944171f73967e8);
    }

    /// With 3 nodes every node holds every shard and each node is preferred leader of a third.
    #[test]
    fn three_nodes_spread_preferred_leaders_evenly() {
        let placement = Placement::new(vec![3, 1, 2], 64);
        let mut leaders = [0usize; 4];
        for shard in placement.shard_ids() {
            let replicas = placement.replicas(shard);
            assert_eq!(replicas.len(), 3);
            let mut sorted = replicas.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![1, 2, 3]);
            leaders[usize::try_from(placement.preferred_leader(shard)).unwrap()] += 1;
        }
        assert_eq!(&leaders[1..], &[22, 21, 21]);
    }

    /// With 5 nodes each shard has 3 distinct replicas and every node hosts 3/5 of the shards.
    #[test]
    fn five_nodes_have_three_distinct_replicas() {
        let placement = Placement::new(vec![1, 2, 3, 4, 5], 10);
        for shard in placement.shard_ids() {
            let mut replicas = placement.replicas(shard);
            replicas.sort_unstable();
            replicas.dedup();
            assert_eq!(replicas.len(), 3);
        }
        for node in 1..=5 {
            assert_eq!(placement.shards_on(node).len(), 6);
        }
    }

    /// A customer's accounts (`<customer>::<name>`) live on the customer's shard; other ids,
    /// and ids with an empty prefix, are placed by the whole id as before.
    #[test]
    fn customer_accounts_share_the_customer_shard() {
        let customer = CustomerId::new("cust-42").unwrap();
        let home = customer_shard_of(&customer, 64);
        for name in ["wallet", "savings", "card.1"] {
            let account = AccountId::new(format!("cust-42::{name}")).unwrap();
            assert_eq!(shard_of(&account, 64), home, "{account}");
            assert!(account.of_customer(&customer));
        }
        let spread: std::collections::BTreeSet<ShardId> =
            (0..32).map(|n| shard_of(&AccountId::new(format!("plain-{n}")).unwrap(), 64)).collect();
        assert!(spread.len() > 8, "plain ids still spread over the shards");
        let empty_prefix = AccountId::new("::x").unwrap();
        assert_eq!(empty_prefix.placement_key(), "::x");
        assert!(!AccountId::new("cust-42::").unwrap().of_customer(&customer));
        assert!(!AccountId::new("cust-4::x").unwrap().of_customer(&customer));
    }
}
