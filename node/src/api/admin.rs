//! Admin endpoints for SREs and drills: fault injection (`/admin/faults`, only on nodes started
//! with faults enabled), planned leader transfer, and draining a node before maintenance. Who may
//! call them is the role table in `auth.rs` (admin keys; operators for drain and leader
//! transfer; the node's `--admin-token` too).

use super::errors::ApiError;
use super::AppState;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use settle_cluster::AdminError;
use std::sync::atomic::Ordering;

type Result<T> = std::result::Result<T, ApiError>;

fn faults_allowed(state: &AppState) -> Result<()> {
    if !state.settings.faults_enabled {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "faults_disabled", "this node was started without --faults-enabled"));
    }
    Ok(())
}

fn faults_json(state: &AppState) -> Value {
    let driver = &state.driver;
    let peers: serde_json::Map<String, Value> = driver
        .peers
        .all()
        .into_iter()
        .map(|(peer, entry)| {
            let faults = &entry.faults;
            let value = json!({
                "drop_outbound": faults.drop_outbound.load(Ordering::Relaxed),
                "drop_inbound": faults.drop_inbound.load(Ordering::Relaxed),
                "delay_ms": faults.delay_ms.load(Ordering::Relaxed),
                "loss_percent": faults.loss_per_million.load(Ordering::Relaxed) / 10_000,
            });
            (peer.to_string(), value)
        })
        .collect();
    json!({ "peers": peers, "disk_delay_ms": driver.io_stats.sync_delay_ms.load(Ordering::Relaxed) })
}

pub async fn get_faults(state: web::Data<AppState>) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(faults_json(&state)))
}

/// `{"peers": {"2": {"drop_outbound": true, "drop_inbound": true, "delay_ms": 50, "loss_percent": 10}}, "disk_delay_ms": 20}`:
/// sets the given fields; anything not mentioned stays as it is.
pub async fn set_faults(state: web::Data<AppState>, request: HttpRequest, payload: web::Payload) -> Result<HttpResponse> {
    faults_allowed(&state)?;
    let object = state.read_object(&request, payload).await?;
    let driver = &state.driver;
    if let Some(peers) = object.get("peers") {
        let peers = peers.as_object().ok_or_else(|| ApiError::invalid_request("peers", "peers must be an object of node id → faults"))?;
        for (peer, faults) in peers {
            let peer: u64 = peer.parse().map_err(|_| ApiError::invalid_request("peers", format!("{peer:?} is not a node id")))?;
            let entry = driver
                .peers
                .get(peer)
                .ok_or_else(|| ApiError::invalid_request("peers", format!("node {peer} is not a peer of this node")))?;
            let link = &entry.faults;
            let flag = |name: &str| faults.get(name).and_then(Value::as_bool);
            let number = |name: &str| faults.get(name).and_then(Value::as_u64);
            if let Some(value) = flag("drop_outbound") {
                link.drop_outbound.store(value, Ordering::Relaxed);
            }
            if let Some(value) = flag("drop_inbound") {
                link.drop_inbound.store(value, Ordering::Relaxed);
            }
            if let Some(value) = number("delay_ms") {
                link.delay_ms.store(value.min(60_000), Ordering::Relaxed);
            }
            if let Some(value) = number("loss_percent") {
                link.loss_per_million.store(value.min(100) * 10_000, Ordering::Relaxed);
            }
        }
    }
    if let Some(delay) = object.get("disk_delay_ms") {
        let delay = delay.as_u64().ok_or_else(|| ApiError::invalid_request("disk_delay_ms", "disk_delay_ms must be a number"))?;
        driver.io_stats.sync_delay_ms.store(delay.min(60_000), Ordering::Relaxed);
    }
    tracing::warn!(faults = %faults_json(&state), "faults injected");
    Ok(HttpResponse::Ok().json(faults_json(&state)))
}

/// Removes every injected fault (the drill's kill switch).
pub async fn clear_faults(state: web::Data<AppState>) -> Result<HttpResponse> {
    let driver = &state.driver;
    for (_, entry) in driver.peers.all() {
        let link = &entry.faults;
        link.drop_outbound.store(false, Ordering::Relaxed);
        link.drop_inbound.store(false, Ordering::Relaxed);
        link.delay_ms.store(0, Ordering::Relaxed);
        link.loss_per_million.store(0, Ordering::Relaxed);
    }
    driver.io_stats.sync_delay_ms.store(0, Ordering::Relaxed);
    tracing::warn!("faults cleared");
    Ok(HttpResponse::Ok().json(faults_json(&state)))
}

/// `POST /admin/shards/{id}/transfer-leader {"to": N}` on the shard's current leader.
pub async fn transfer_leader(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<u32>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let object = state.read_object(&request, payload).await?;
    let to = object.get("to").and_then(Value::as_u64).ok_or_else(|| ApiError::invalid_request("to", "to must be a node id"))?;
    let shard = path.into_inner();
    if shard >= state.settings.shards {
        return Err(ApiError::invalid_request("id", format!("shard {shard} does not exist")));
    }
    match state.driver.transfer_leader(shard, to).await {
        Some(Ok(())) => Ok(HttpResponse::Ok().json(json!({ "shard": shard, "to": to }))),
        Some(Err(AdminError::NotLeader { leader })) => {
            Err(ApiError::new(StatusCode::CONFLICT, "not_leader", "this node does not lead the shard").with_detail("leader", json!(leader)))
        }
        Some(Err(AdminError::NotAReplica)) => Err(ApiError::invalid_request("to", format!("node {to} has no replica of shard {shard}"))),
        Some(Err(AdminError::NoReplica)) => Err(ApiError::new(StatusCode::CONFLICT, "not_leader", "this node has no replica of the shard")),
        None => Err(ApiError::unavailable()),
    }
}

/// `POST /admin/drain` starts draining (leaders move away, none come back); `DELETE` stops.
pub async fn drain(state: web::Data<AppState>, request: HttpRequest) -> Result<HttpResponse> {
    let draining = request.method() == actix_web::http::Method::POST;
    let leading = state.driver.drain(draining).await.ok_or_else(ApiError::unavailable)?;
    Ok(HttpResponse::Ok().json(json!({ "draining": draining, "leading": leading })))
}
