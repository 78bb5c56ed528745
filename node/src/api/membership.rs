//! Replica moves for SREs (admin keys only; `settle node` drives them):
//!
//! - `POST /admin/shards/{id}/move {"from": N, "to": M}` takes one step of moving the shard's
//!   replica on node `N` to node `M` (`core/operation/membership.rs`) and answers where the
//!   move stands: 200 `{"shard", "stage", "voters", "learners", "matched", "last_index"}`.
//!   Repeat until `stage` is `done`; every step is idempotent, and a move interrupted by a
//!   failover continues from the shard's applied membership.
//! - `POST /admin/nodes/{id}/decommission` takes one step for every shard with a replica on
//!   node `id`, each towards the live node with the fewest replicas that has none of the shard
//!   (or the learner a move already added), and answers 200 `{"node", "done", "moves": [...]}`
//!   (`done`: no shard has a replica on the node any more; it may be stopped). 409
//!   `no_target` when a shard has no node to move to (the cluster would drop below its
//!   replication).
//! - `POST /admin/nodes/{id}/replace {"with": M}`: the same for a dead node, each replica
//!   going to `M` (or, for a shard `M` already holds, to another node as above).

use super::errors::ApiError;
use super::{unexpected, AppState, RequestId};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use settle_cluster::message::{MoveStage, MoveStatus, Reply, Request};
use settle_cluster::ShardStatus;
use std::collections::BTreeMap;

type Result<T> = std::result::Result<T, ApiError>;

fn node_id(state: &AppState, field: &'static str, value: Option<u64>) -> Result<u64> {
    let node = value.ok_or_else(|| ApiError::invalid_request(field, format!("{field} must be a node id")))?;
    if !state.settings.members.contains_key(&node) {
        return Err(ApiError::invalid_request(field, format!("node {node} is not a member of the cluster")));
    }
    Ok(node)
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
    let from = node_id(&state, "from", object.get("from").and_then(Value::as_u64))?;
    let to = node_id(&state, "to", object.get("to").and_then(Value::as_u64))?;
    if from == to {
        return Err(ApiError::invalid_request("to", "to must differ from from"));
    }
    let status = step(&state, &request_id, shard, from, to).await?;
    Ok(HttpResponse::Ok().json(status_json(&status)))
}

pub async fn decommission(state: web::Data<AppState>, request_id: web::ReqData<RequestId>, path: web::Path<u64>) -> Result<HttpResponse> {
    let node = node_id(&state, "id", Some(path.into_inner()))?;
    move_all(&state, &request_id, node, None).await
}

pub async fn replace(
    state: web::Data<AppState>,
    request: HttpRequest,
    request_id: web::ReqData<RequestId>,
    path: web::Path<u64>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let node = node_id(&state, "id", Some(path.into_inner()))?;
    let object = state.read_object(&request, payload).await?;
    let with = node_id(&state, "with", object.get("with").and_then(Value::as_u64))?;
    if with == node {
        return Err(ApiError::invalid_request("with", "with must differ from the node replaced"));
    }
    move_all(&state, &request_id, node, Some(with)).await
}

/// One step of moving every replica on `node` away (to `with` where it can).
async fn move_all(state: &AppState, request_id: &RequestId, node: u64, with: Option<u64>) -> Result<HttpResponse> {
    let status = state.driver.status().await.ok_or_else(ApiError::unavailable)?;
    let live: Vec<u64> = state
        .settings
        .members
        .keys()
        .copied()
        .filter(|id| *id == status.node || status.peers.iter().any(|peer| peer.id == *id && super::reachable(peer)))
        .collect();
    let mut load: BTreeMap<u64, usize> = live.iter().map(|id| (*id, 0)).collect();
    for shard in &status.shards {
        for member in shard.replicas.iter().chain(shard.learners.iter()) {
            if let Some(count) = load.get_mut(member) {
                *count += 1;
            }
        }
    }
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
    let done = answered.iter().all(|status| match status.stage {
        MoveStage::Done => true,
        MoveStage::Invalid => !status.voters.contains(&node) && !status.learners.contains(&node),
        _ => false,
    });
    let moves: Vec<Value> = answered.iter().map(status_json).collect();
    Ok(HttpResponse::Ok().json(json!({ "node": node, "done": done, "moves": moves })))
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
