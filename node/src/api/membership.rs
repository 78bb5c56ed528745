//! Replica moves for SREs (admin keys only; `settle node` drives them):
//!
//! - `POST /admin/shards/{id}/move {"from": N, "to": M}` takes one step of moving the shard's
//!   replica on node `N` to node `M` (`core/operation/membership.rs`) and answers where the
//!   move stands: 200 `{"shard", "stage", "voters", "learners", "matched", "last_index"}`.
//!   Repeat until `stage` is `done`; every step is idempotent, and a move interrupted by a
//!   failover continues from the shard's applied membership. `from == to` rebuilds that node's
//!   replica (removed, added back empty, promoted) — what each node does by itself for its
//!   quarantined replicas (`scheduler.rs`); repeat until the node runs a voter again.
//! - `POST /admin/nodes/{id}/decommission` takes one step for every shard with a replica on
//!   node `id`, each towards the live node with the fewest replicas that has none of the shard
//!   (or the learner a move already added), and answers 200 `{"node", "done", "moves": [...]}`
//!   (`done`: no shard has a replica on the node any more; it may be stopped). 409
//!   `no_target` when a shard has no node to move to (the cluster would drop below its
//!   replication).
//! - `POST /admin/nodes/{id}/replace {"with": M}`: the same for a dead node, each replica
//!   going to `M` (or, for a shard `M` already holds, to another node as above).
//! - `POST /admin/nodes {"id": N, "peer": "IP:port"}` registers a new node in the node registry
//!   (replicated on the system shard): every member links to it, and it may then start with
//!   `--join`. 201 `{"id", "peer", "epoch", "registered_at_ms"}` (200 when it was registered
//!   before with the same address); 409 `node_conflict` for a bootstrap member's id or an id
//!   registered with another address.
//! - `GET /admin/nodes`: every node, bootstrap and registered, with its peer address, whether
//!   this node hears from it, whether it is retired, and the replicas it holds, and the nodes
//!   asking to join through this node that are not registered yet: `{"epoch", "nodes": [...],
//!   "asking_to_join": [{"id", "peer"}]}`.
//! - decommission and replace **retire** the node once no shard names it (`"retired": true`
//!   in the answer that says `done`): through the system shard, every member stops linking to
//!   it and drops what it sends, and its id is never used again.
//! - `POST /admin/rebalance` takes one step of evening out replicas over the live nodes (moves
//!   in flight first, then up to `REBALANCE_MOVES_MAX` new ones, from the most loaded nodes to
//!   the least loaded): `{"done", "moves": [...]}`, `done` once no live node holds two
//!   replicas more than another. `settle node add` repeats it after a node joined.

use super::errors::ApiError;
use super::{unexpected, AppState, RequestId};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use settle_actors::NodeStatus;
use settle_cluster::ledger::{SystemCmd, SystemOutcome, SystemRead, SystemReadReply};
use settle_cluster::message::{MoveStage, MoveStatus, Reply, Request};
use settle_cluster::placement::REPLICAS_PER_SHARD;
use settle_cluster::ShardStatus;
use std::collections::BTreeMap;

type Result<T> = std::result::Result<T, ApiError>;

/// Moves a rebalance step starts at most (each from and to a different node).
const REBALANCE_MOVES_MAX: usize = 4;

/// This node's view of the cluster's nodes: itself and every peer (bootstrap members and the
/// nodes registered since).
async fn node_status(state: &AppState) -> Result<NodeStatus> {
    state.driver.status().await.ok_or_else(ApiError::unavailable)
}

/// The nodes this node hears from, and itself.
fn live_nodes(status: &NodeStatus) -> Vec<u64> {
    let mut live: Vec<u64> = status.peers.iter().filter(|peer| super::reachable(peer)).map(|peer| peer.id).collect();
    live.push(status.node);
    live.sort_unstable();
    live
}

fn node_id(status: &NodeStatus, field: &'static str, value: Option<u64>) -> Result<u64> {
    let node = value.ok_or_else(|| ApiError::invalid_request(field, format!("{field} must be a node id")))?;
    if node != status.node && !status.peers.iter().any(|peer| peer.id == node) {
        return Err(ApiError::invalid_request(field, format!("node {node} is not a member of the cluster")));
    }
    Ok(node)
}

/// A node to empty: a member, or one retired already (emptying it again finds nothing to move:
/// a repeated command whose last answer was lost still ends `done`).
fn leaving_node_id(status: &NodeStatus, value: Option<u64>) -> Result<u64> {
    match value {
        Some(node) if status.retired.contains(&node) => Ok(node),
        _ => node_id(status, "id", value),
    }
}

fn status_json(status: &MoveStatus) -> Value {
    json!({
        "shard": status.shard,
        "stage": status.stage,
        "voters": status.voters,
        "learners": status.learners,
        "matched": status.matched,
        "last_index": status.last_index,
    })
}

async fn step(state: &AppState, request_id: &RequestId, shard: u32, from: u64, to: u64) -> Result<MoveStatus> {
    match state.call_with(request_id, Request::MoveReplica { shard, from, to }).await? {
        Reply::Moved(status) => Ok(status),
        other => Err(unexpected(other)),
    }
}

pub async fn move_replica(
    state: web::Data<AppState>,
    request: HttpRequest,
    request_id: web::ReqData<RequestId>,
    path: web::Path<u32>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let shard = path.into_inner();
    if shard >= state.settings.shards {
        return Err(ApiError::invalid_request("id", format!("shard {shard} does not exist")));
    }
    let object = state.read_object(&request, payload).await?;
    let status = node_status(&state).await?;
    let from = node_id(&status, "from", object.get("from").and_then(Value::as_u64))?;
    let to = node_id(&status, "to", object.get("to").and_then(Value::as_u64))?;
    let status = step(&state, &request_id, shard, from, to).await?;
    Ok(HttpResponse::Ok().json(status_json(&status)))
}

pub async fn decommission(state: web::Data<AppState>, request_id: web::ReqData<RequestId>, path: web::Path<u64>) -> Result<HttpResponse> {
    let status = node_status(&state).await?;
    let node = leaving_node_id(&status, Some(path.into_inner()))?;
    move_all(&state, &request_id, status, node, None).await
}

pub async fn replace(
    state: web::Data<AppState>,
    request: HttpRequest,
    request_id: web::ReqData<RequestId>,
    path: web::Path<u64>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let status = node_status(&state).await?;
    let node = leaving_node_id(&status, Some(path.into_inner()))?;
    let object = state.read_object(&request, payload).await?;
    let with = node_id(&status, "with", object.get("with").and_then(Value::as_u64))?;
    if with == node {
        return Err(ApiError::invalid_request("with", "with must differ from the node replaced"));
    }
    move_all(&state, &request_id, status, node, Some(with)).await
}

/// One step of moving every replica on `node` away (to `with` where it can).
async fn move_all(state: &AppState, request_id: &RequestId, status: NodeStatus, node: u64, with: Option<u64>) -> Result<HttpResponse> {
    let mut load = replica_load(&status.shards, &live_nodes(&status));
    let mut moves = Vec::new();
    for shard in status.shards.iter().filter(|shard| shard.replicas.contains(&node) || shard.learners.contains(&node)) {
        let to = target(shard, node, with, &load).ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "no_target",
                format!("no live node without a replica of shard {} can take the one on node {node}", shard.id),
            )
            .with_detail("details", json!({ "shard": shard.id }))
        })?;
        if let Some(count) = load.get_mut(&to) {
            *count += 1;
        }
        moves.push((shard.id, to));
    }
    let steps = moves.iter().map(|(shard, to)| step(state, request_id, *shard, node, *to));
    let mut answered = Vec::new();
    for result in futures_util::future::join_all(steps).await {
        answered.push(result?);
    }
    // Done when no shard names the node: a move refused as invalid counts only if the node is
    // no member of that shard (a stale view here may have asked for a move already made).
    let moved = answered.iter().all(|status| match status.stage {
        MoveStage::Done => true,
        MoveStage::Invalid => !status.voters.contains(&node) && !status.learners.contains(&node),
        _ => false,
    });
    // Once this node sees no shard naming the node (the round after the last move finished),
    // the node is retired: no member links to it or listens to it any more.
    let retired = if answered.is_empty() { Some(retire(state, request_id, node).await?) } else { None };
    let moves: Vec<Value> = answered.iter().map(status_json).collect();
    let done = moved && retired.is_some();
    Ok(HttpResponse::Ok()
        .json(json!({ "node": node, "done": done, "retired": retired.is_some(), "registry_epoch": retired, "moves": moves })))
}

/// Retires a node that holds no replica (through the system shard); the registry's epoch after.
async fn retire(state: &AppState, request_id: &RequestId, node: u64) -> Result<u64> {
    match state.call_with(request_id, Request::System(SystemCmd::RetireNode { id: node })).await? {
        Reply::System(SystemOutcome::NodeRetired { epoch, .. }) => {
            tracing::warn!(node, epoch, "node retired from the cluster");
            Ok(epoch)
        }
        Reply::System(SystemOutcome::Invalid(reason)) => Err(ApiError::new(StatusCode::CONFLICT, "node_conflict", reason)),
        other => Err(unexpected(other)),
    }
}

/// Replicas (voters and learners) per live node.
fn replica_load(shards: &[ShardStatus], live: &[u64]) -> BTreeMap<u64, usize> {
    let mut load: BTreeMap<u64, usize> = live.iter().map(|id| (*id, 0)).collect();
    for shard in shards {
        for member in shard.replicas.iter().chain(shard.learners.iter()) {
            if let Some(count) = load.get_mut(member) {
                *count += 1;
            }
        }
    }
    load
}

/// One step of evening out replicas over the `live` nodes, as (shard, from, to):
/// - a move in flight (a learner, or a voter more than the shard keeps) is continued, from its
///   most loaded voter (the one it was started from: loads of a shard's voters do not change
///   while only its own move runs);
/// - with none in flight, up to `REBALANCE_MOVES_MAX` moves start, each from the most loaded
///   node to the least loaded one (every node used once) while they differ by two or more, on
///   a shard whose members are all live and which the target does not hold.
fn rebalance_plan(shards: &[ShardStatus], live: &[u64]) -> Vec<(u32, u64, u64)> {
    let mut load = replica_load(shards, live);
    let heaviest =
        |voters: &[u64], load: &BTreeMap<u64, usize>| voters.iter().copied().max_by_key(|id| (load.get(id).copied().unwrap_or(0), *id));
    let mut plan = Vec::new();
    let all_live = |shard: &ShardStatus| shard.replicas.iter().chain(shard.learners.iter()).all(|id| load.contains_key(id));
    // Moves with a member down (a learner left on a dead node, a dead voter) are `replace`'s.
    let in_flight = shards.iter().filter(|shard| !shard.learners.is_empty() || shard.replicas.len() > REPLICAS_PER_SHARD);
    for shard in in_flight.filter(|shard| all_live(shard)) {
        let to = match shard.learners.first() {
            Some(learner) => Some(*learner),
            None => shard.replicas.iter().copied().min_by_key(|id| (load.get(id).copied().unwrap_or(0), *id)),
        };
        let from = heaviest(&shard.replicas, &load);
        if let (Some(from), Some(to)) = (from, to) {
            if from != to {
                plan.push((shard.id, from, to));
            }
        }
    }
    if !plan.is_empty() {
        return plan;
    }
    let mut used = std::collections::BTreeSet::new();
    while plan.len() < REBALANCE_MOVES_MAX {
        let Some((lightest, light)) =
            load.iter().filter(|(id, _)| !used.contains(*id)).min_by_key(|(id, count)| (**count, **id)).map(|(id, count)| (*id, *count))
        else {
            break;
        };
        // The shard whose heaviest voter is heaviest, among those the lightest node may take.
        let candidate = shards
            .iter()
            .filter(|shard| !shard.replicas.contains(&lightest) && shard.replicas.iter().all(|id| load.contains_key(id)))
            .filter(|shard| !plan.iter().any(|(planned, _, _)| *planned == shard.id))
            .filter_map(|shard| Some((shard.id, heaviest(&shard.replicas, &load)?)))
            .filter(|(_, from)| !used.contains(from))
            .max_by_key(|(shard, from)| (load[from], *from, std::cmp::Reverse(*shard)));
        let Some((shard, from)) = candidate else {
            break;
        };
        if load[&from] < light + 2 {
            break;
        }
        plan.push((shard, from, lightest));
        used.insert(from);
        used.insert(lightest);
        *load.get_mut(&from).expect("a live node") -= 1;
        *load.get_mut(&lightest).expect("a live node") += 1;
    }
    plan
}

pub async fn rebalance(state: web::Data<AppState>, request_id: web::ReqData<RequestId>) -> Result<HttpResponse> {
    let status = node_status(&state).await?;
    let plan = rebalance_plan(&status.shards, &live_nodes(&status));
    let steps = plan.iter().map(|(shard, from, to)| step(&state, &request_id, *shard, *from, *to));
    let mut moves = Vec::new();
    for result in futures_util::future::join_all(steps).await {
        moves.push(status_json(&result?));
    }
    let load: serde_json::Map<String, Value> =
        replica_load(&status.shards, &live_nodes(&status)).into_iter().map(|(id, count)| (id.to_string(), json!(count))).collect();
    Ok(HttpResponse::Ok().json(json!({ "done": plan.is_empty(), "moves": moves, "replicas": load })))
}

/// `POST /admin/nodes {"id", "peer"}`: registers a node through the system shard.
pub async fn register(
    state: web::Data<AppState>,
    request: HttpRequest,
    request_id: web::ReqData<RequestId>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let object = state.read_object(&request, payload).await?;
    super::body::only_fields(&object, &["id", "peer"])?;
    let id = object
        .get("id")
        .and_then(Value::as_u64)
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::invalid_request("id", "id must be a node id (1 or more)"))?;
    let peer = object.get("peer").and_then(Value::as_str).unwrap_or_default().to_string();
    if !settle_cluster::ledger::valid_peer_address(&peer) {
        return Err(ApiError::invalid_request("peer", "peer must be the node's peer address, IP:port"));
    }
    // The form a joining node gives (`SocketAddr` printed), so the two compare equal.
    let peer = peer.parse::<std::net::SocketAddr>().map(|address| address.to_string()).unwrap_or(peer);
    let status = node_status(&state).await?;
    if status.bootstrap.contains(&id) {
        return Err(ApiError::new(StatusCode::CONFLICT, "node_conflict", format!("node {id} is a bootstrap member of the cluster")));
    }
    match state.call_with(&request_id, Request::System(SystemCmd::RegisterNode { id, peer })).await? {
        Reply::System(SystemOutcome::NodeRegistered { record, epoch }) => {
            tracing::warn!(node = record.id, peer = %record.peer, epoch, "node registered");
            Ok(HttpResponse::Created()
                .json(json!({ "id": record.id, "peer": record.peer, "epoch": epoch, "registered_at_ms": record.registered_at_ms })))
        }
        Reply::System(SystemOutcome::NodeExists { record, epoch }) => Ok(HttpResponse::Ok()
            .json(json!({ "id": record.id, "peer": record.peer, "epoch": epoch, "registered_at_ms": record.registered_at_ms }))),
        Reply::System(SystemOutcome::Invalid(reason)) => Err(ApiError::new(StatusCode::CONFLICT, "node_conflict", reason)),
        other => Err(unexpected(other)),
    }
}

/// `GET /admin/nodes`: the registry as the system shard holds it, beside this node's view.
pub async fn list(state: web::Data<AppState>, request_id: web::ReqData<RequestId>) -> Result<HttpResponse> {
    let (epoch, registered) = match state.call_with(&request_id, Request::SystemRead(SystemRead::Nodes)).await? {
        Reply::SystemRead(SystemReadReply::Nodes { epoch, nodes }) => (epoch, nodes),
        other => return Err(unexpected(other)),
    };
    let status = node_status(&state).await?;
    let load = replica_load(&status.shards, &live_nodes(&status));
    let mut ids: Vec<u64> = status.peers.iter().map(|peer| peer.id).chain(registered.iter().map(|record| record.id)).collect();
    ids.push(status.node);
    ids.sort_unstable();
    ids.dedup();
    let nodes: Vec<Value> = ids
        .iter()
        .map(|id| {
            let record = registered.iter().find(|record| record.id == *id);
            let live = *id == status.node || status.peers.iter().any(|peer| peer.id == *id && super::reachable(peer));
            let peer = status.peers.iter().find(|peer| peer.id == *id).and_then(|peer| peer.address).map(|address| address.to_string());
            let peer = if *id == status.node { Some(state.settings.peer.to_string()) } else { peer };
            json!({
                "id": id,
                "bootstrap": status.bootstrap.contains(id),
                "peer": peer.or_else(|| record.map(|record| record.peer.clone()).filter(|peer| !peer.is_empty())),
                "live": live,
                "retired": record.is_some_and(|record| record.retired_at_ms.is_some()),
                "replicas": load.get(id).copied().unwrap_or(0),
            })
        })
        .collect();
    let asking: Vec<Value> = status.join_requests.iter().map(|(id, peer)| json!({ "id": id, "peer": peer })).collect();
    Ok(HttpResponse::Ok().json(json!({ "epoch": epoch, "nodes": nodes, "asking_to_join": asking })))
}

/// Where a shard's replica on `node` goes: the learner a move already added, else `with` if it
/// has none of the shard, else the live node with the fewest replicas that has none (else,
/// mid-move, the voter it already has in excess).
fn target(shard: &ShardStatus, node: u64, with: Option<u64>, load: &BTreeMap<u64, usize>) -> Option<u64> {
    if let Some(learner) = shard.learners.iter().copied().find(|learner| *learner != node) {
        return Some(learner);
    }
    let free = |id: &u64| *id != node && !shard.replicas.contains(id) && !shard.learners.contains(id);
    if let Some(with) = with.filter(free) {
        return Some(with);
    }
    if let Some(fresh) = load.iter().filter(|(id, _)| free(id)).min_by_key(|(id, count)| (**count, **id)).map(|(id, _)| *id) {
        return Some(fresh);
    }
    // A move past its promotion: the shard has a voter more than it keeps, and the step with
    // any other voter as `to` removes `node` (once that voter holds the promotion).
    if shard.replicas.len() > settle_cluster::placement::REPLICAS_PER_SHARD {
        return shard.replicas.iter().copied().find(|voter| *voter != node);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use settle_cluster::ShardRole;

    fn shard(id: u32, voters: &[u64], learners: &[u64]) -> ShardStatus {
        ShardStatus {
            id,
            leader: voters.first().copied(),
            replicas: voters.to_vec(),
            learners: learners.to_vec(),
            term: 1,
            role: ShardRole::None,
            commit_index: 0,
            applied_index: 0,
            last_index: 0,
            log_entries: 0,
            leader_changes: 0,
            accounts: 0,
            pending_transfers: 0,
            pending_oldest_ms: 0,
            cache: Default::default(),
        }
    }

    /// Applies a plan as if every move finished: `from` loses the shard, `to` gains it.
    fn apply(shards: &mut [ShardStatus], plan: &[(u32, u64, u64)]) {
        for (id, from, to) in plan {
            let shard = shards.iter_mut().find(|shard| shard.id == *id).unwrap();
            shard.replicas.retain(|voter| voter != from);
            shard.replicas.push(*to);
            shard.learners.clear();
        }
    }

    /// Two nodes joining three full ones: rounds of moves end with replicas even over the
    /// five (no node two more than another), three distinct voters per shard, and an empty
    /// plan once balanced.
    #[test]
    fn rebalancing_spreads_replicas_evenly_onto_joined_nodes() {
        let mut shards: Vec<ShardStatus> = (0..8).map(|id| shard(id, &[1, 2, 3], &[])).collect();
        let live = [1, 2, 3, 4, 5];
        for _ in 0..20 {
            let plan = rebalance_plan(&shards, &live);
            if plan.is_empty() {
                break;
            }
            let targets: std::collections::BTreeSet<u64> = plan.iter().map(|(_, _, to)| *to).collect();
            assert_eq!(targets.len(), plan.len(), "each move of a round goes to another node: {plan:?}");
            apply(&mut shards, &plan);
        }
        assert!(rebalance_plan(&shards, &live).is_empty());
        let load = replica_load(&shards, &live);
        let (least, most) = (load.values().min().unwrap(), load.values().max().unwrap());
        assert!(most - least <= 1, "{load:?}");
        for shard in &shards {
            let mut voters = shard.replicas.clone();
            voters.sort_unstable();
            voters.dedup();
            assert_eq!(voters.len(), 3, "{shard:?}");
        }
    }

    /// A move in flight is continued (from its heaviest voter to its learner) before any new
    /// one starts; a shard with a member that is not live is left alone.
    #[test]
    fn moves_in_flight_come_first_and_dead_members_are_left_alone() {
        let shards = vec![shard(0, &[1, 2, 3], &[4]), shard(1, &[1, 2, 3], &[])];
        assert_eq!(rebalance_plan(&shards, &[1, 2, 3, 4]), vec![(0, 3, 4)]);
        let promoted = vec![shard(0, &[1, 2, 3, 4], &[]), shard(1, &[1, 2, 3], &[])];
        assert_eq!(rebalance_plan(&promoted, &[1, 2, 3, 4]), vec![(0, 3, 4)]);
        // Node 3 is down: no shard it holds is moved by a rebalance (that is `replace`).
        let all_on_three: Vec<ShardStatus> = (0..4).map(|id| shard(id, &[1, 2, 3], &[])).collect();
        assert!(rebalance_plan(&all_on_three, &[1, 2, 4]).is_empty());
        // A learner left on a node that died is not continued (nor its shard moved).
        let dead_learner = vec![shard(0, &[1, 2, 3], &[5]), shard(1, &[1, 2, 3], &[])];
        assert!(rebalance_plan(&dead_learner, &[1, 2, 3]).is_empty());
    }
}
