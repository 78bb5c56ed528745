//! The backup endpoints `settle backup` uses (admin keys only):
//!
//! - `POST /admin/backup/fence {"epoch": N}` fences every shard at backup epoch `N`
//!   (`ledger/fence.rs`): 200 `{"epoch", "shards"}` once every shard applied it; 409
//!   `backup_epoch_stale` (with `details.epoch`, the highest epoch a shard holds) when a shard
//!   is past `N` already (pick a higher one); 503 when a shard did not answer (retry: fences
//!   are idempotent).
//! - `GET /admin/backup/shards/{id}?epoch=N&after=HEX` reads the shard's cut for epoch `N` after
//!   the record key `after` (hex): 200 `application/octet-stream`, a `backup::BackupChunk`
//!   encoded behind `BACKUP_FORMAT_VERSION`; 503 `backup_not_ready` while the shard's leader has
//!   not applied the fence (retry); 410 `backup_gone` when the cut is not held any more (take the
//!   backup again).

use super::errors::ApiError;
use super::{unexpected, AppState, RequestId};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use settle_cluster::backup::{encode_chunk, BackupChunk};
use settle_cluster::message::{Reply, Request};

type Result<T> = std::result::Result<T, ApiError>;

pub async fn fence(
    state: web::Data<AppState>,
    request: HttpRequest,
    request_id: web::ReqData<RequestId>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let object = state.read_object(&request, payload).await?;
    let epoch = object
        .get("epoch")
        .and_then(Value::as_u64)
        .filter(|epoch| *epoch > 0)
        .ok_or_else(|| ApiError::invalid_request("epoch", "epoch must be a positive integer"))?;
    let now_ms = settle_actors::driver::now_ms();
    if epoch > now_ms.saturating_add(settle_cluster::ledger::FENCE_AHEAD_MS_MAX) {
        return Err(ApiError::invalid_request("epoch", "epoch is more than a day ahead of the clock (epochs are times in ms)"));
    }
    let calls = (0..state.settings.shards).map(|shard| state.call_with(&request_id, Request::Fence { shard, epoch }));
    let mut highest = 0;
    for reply in futures_util::future::join_all(calls).await {
        match reply? {
            Reply::Fenced(outcome) => highest = highest.max(outcome.epoch),
            other => return Err(unexpected(other)),
        }
    }
    if highest > epoch {
        return Err(ApiError::new(StatusCode::CONFLICT, "backup_epoch_stale", "a shard is past this backup epoch: pick a higher one")
            .with_detail("details", json!({ "epoch": highest })));
    }
    Ok(HttpResponse::Ok().json(json!({ "epoch": epoch, "shards": state.settings.shards })))
}

#[derive(serde::Deserialize)]
pub struct ChunkQuery {
    epoch: u64,
    after: Option<String>,
}

pub async fn chunk(
    state: web::Data<AppState>,
    request_id: web::ReqData<RequestId>,
    path: web::Path<u32>,
    query: web::Query<ChunkQuery>,
) -> Result<HttpResponse> {
    let shard = path.into_inner();
    if shard >= state.settings.shards {
        return Err(ApiError::invalid_request("id", format!("shard {shard} does not exist")));
    }
    let ChunkQuery { epoch, after } = query.into_inner();
    let after = match after.filter(|after| !after.is_empty()) {
        Some(after) => Some(hex::decode(&after).map_err(|_| ApiError::invalid_request("after", "after must be hex"))?),
        None => None,
    };
    if after.as_ref().is_some_and(|after| after.len() > 1024) {
        return Err(ApiError::invalid_request("after", "after is longer than any record key"));
    }
    match state.call_with(&request_id, Request::BackupChunk { shard, epoch, after }).await? {
        Reply::BackupChunk(chunk) => match *chunk {
            BackupChunk::NotYet { epoch: at } => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "backup_not_ready",
                format!("shard {shard}'s leader has not applied fence {epoch} yet (it is at {at}): retry"),
            )),
            BackupChunk::Gone { epoch: at } => Err(ApiError::new(
                StatusCode::GONE,
                "backup_gone",
                format!("shard {shard} no longer holds its cut for epoch {epoch} (it is at {at}): take the backup again"),
            )),
            records => Ok(HttpResponse::Ok().content_type("application/octet-stream").body(encode_chunk(&records))),
        },
        other => Err(unexpected(other)),
    }
}
