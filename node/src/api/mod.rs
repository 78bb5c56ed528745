//! HTTP API v1 on actix-web. Handlers validate, hand a `Request` to the node driver, and map
//! its `Reply` to status codes, the typed answers of `settle_client::api` and the error shape.
//! Any node serves any account: the core routes to shard leaders.

pub mod admin;
pub mod amount;
pub mod auth;
pub mod backup;
pub mod body;
pub mod customers;
pub mod errors;
pub mod holds;
pub mod keys;
pub mod membership;
pub mod pii;
pub mod refunds;
pub mod statements;
pub mod stops;
pub mod types;
pub mod verify;

use crate::metrics::{DiskUsage, Metrics};
use crate::settings::NodeSettings;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use errors::ApiError;
use serde::Deserialize;
use serde_json::{json, Value};
use settle_actors::{DriverHandle, PeerStatus};
use settle_client::api;
use settle_cluster::ledger::{AccountOutcome, AccountView, TransferStatus};
use settle_cluster::message::{AccountResult, Reply, Request, TransferResult};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The request id of the request being handled (set by the middleware for the handlers).
#[derive(Clone)]
pub struct RequestId(pub String);

pub struct AppState {
    pub driver: DriverHandle,
    pub settings: Arc<NodeSettings>,
    pub metrics: Arc<Metrics>,
    pub started: Instant,
    /// Generated request ids: node id plus this counter, which starts at a random value so ids
    /// do not repeat across restarts.
    pub request_counter: AtomicU64,
    /// The key cache and rate-limit buckets (`auth.rs`).
    pub auth: auth::Auth,
    /// The key personal data is sealed with (`pii.rs`), if configured.
    pub pii: Option<Arc<pii::PiiKey>>,
}

type Result<T> = std::result::Result<T, ApiError>;

/// Request bodies larger than this are refused (a full batch is about 1.2 MB).
pub const BODY_BYTES_MAX: usize = 8 << 20;

/// Routes, the JSON 404 and the request-id/metrics middleware.
pub fn app(
    state: web::Data<AppState>,
) -> actix_web::App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = ServiceResponse<actix_web::body::BoxBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let middleware_state = state.clone();
    actix_web::App::new()
        // Inside the request-id layer below (middleware registered later wraps what came before).
        .wrap(actix_web::middleware::from_fn(guard))
        .app_data(state)
        .app_data(web::PayloadConfig::new(BODY_BYTES_MAX))
        // Extractor failures answer in the one error shape, like everything else.
        .app_data(
            web::QueryConfig::default()
                .error_handler(|error, _| ApiError::invalid_request("query", format!("the query string is not valid: {error}")).into()),
        )
        .app_data(
            web::PathConfig::default()
                .error_handler(|error, _| ApiError::invalid_request("path", format!("the path is not valid: {error}")).into()),
        )
        .wrap_fn(move |request, service| {
            let state = middleware_state.clone();
            let started = Instant::now();
            let request_id = request
                .headers()
                .get("request-id")
                .and_then(|value| value.to_str().ok())
                .filter(|value| !value.is_empty() && value.len() <= 128)
                .map(str::to_string)
                .unwrap_or_else(|| {
                    let counter = state.request_counter.fetch_add(1, Ordering::Relaxed);
                    format!("n{}-{counter:016x}", state.settings.node_id)
                });
            let endpoint = request.match_pattern().unwrap_or_else(|| "unmatched".to_string());
            request.extensions_mut().insert(RequestId(request_id.clone()));
            let future = service.call(request);
            async move {
                let mut response: ServiceResponse = future.await?;
                let elapsed = started.elapsed();
                state.metrics.http_requests.with_label_values(&[&endpoint, response.status().as_str()]).inc();
                state.metrics.http_latency.with_label_values(&[&endpoint]).observe(elapsed.as_secs_f64());
                let latency_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
                let status = response.status().as_u16();
                let (method, path) = (response.request().method(), response.request().path());
                if status >= 500 {
                    tracing::warn!(request_id = %request_id, %method, path, status, latency_ms, "request failed");
                } else {
                    tracing::debug!(request_id = %request_id, %method, path, status, latency_ms, "request");
                }
                if let Ok(value) = HeaderValue::from_str(&request_id) {
                    response.headers_mut().insert(HeaderName::from_static("request-id"), value);
                }
                Ok(response)
            }
        })
        // Each path is one resource: a method it does not serve answers 405 (with `Allow`).
        .service(resource("/health/live").route(web::get().to(live)))
        .service(resource("/health/ready").route(web::get().to(ready)))
        .service(resource("/metrics").route(web::get().to(metrics)))
        .service(resource("/v1/cluster").route(web::get().to(cluster)))
        .service(resource("/v1/accounts").route(web::post().to(create_account)))
        .service(resource("/v1/accounts/batch").route(web::post().to(batch_accounts)))
        .service(resource("/v1/accounts/{id}").route(web::get().to(get_account)))
        .service(resource("/v1/accounts/{id}/transfers").route(web::get().to(list_transfers)))
        .service(resource("/v1/accounts/{id}/statement").route(web::get().to(statements::statement)))
        .service(resource("/v1/accounts/{id}/balance").route(web::get().to(statements::balance)))
        .service(resource("/v1/transfers").route(web::post().to(create_transfer)))
        .service(resource("/v1/transfers/batch").route(web::post().to(batch_transfers)))
        .service(resource("/v1/transfers/{id}").route(web::get().to(get_transfer)))
        .service(resource("/v1/api_keys").route(web::post().to(keys::create)).route(web::get().to(keys::list)))
        .service(resource("/v1/api_keys/{id}").route(web::get().to(keys::show)).route(web::delete().to(keys::revoke)))
        .service(resource("/v1/audit").route(web::get().to(keys::audit)))
        .service(resource("/v1/transfers/{id}/capture").route(web::post().to(holds::capture)))
        .service(resource("/v1/transfers/{id}/void").route(web::post().to(holds::void)))
        .service(resource("/v1/transfers/{id}/revoke").route(web::post().to(holds::revoke)))
        .service(resource("/v1/transfers/{id}/verify").route(web::post().to(verify::verify)))
        .service(resource("/v1/transfers/{id}/verification").route(web::get().to(verify::show)))
        .service(resource("/v1/customers/{id}/security").route(web::post().to(customers::security)))
        .service(resource("/v1/transfers/{id}/refunds").route(web::post().to(refunds::create)).route(web::get().to(refunds::list)))
        .service(resource("/v1/risk/stops").route(web::post().to(stops::place)))
        .service(resource("/v1/risk/stops/{id}/lift").route(web::post().to(stops::lift)))
        .service(resource("/v1/accounts/{id}/stops").route(web::get().to(stops::list)))
        .service(resource("/v1/customers").route(web::post().to(customers::create)))
        .service(resource("/v1/customers/{id}").route(web::get().to(customers::show)))
        .service(resource("/v1/customers/{id}/verifications").route(web::post().to(customers::verify)))
        .service(resource("/v1/risk/limits").route(web::get().to(customers::get_limits)).route(web::put().to(customers::put_limits)))
        .service(
            resource("/admin/faults")
                .route(web::get().to(admin::get_faults))
                .route(web::post().to(admin::set_faults))
                .route(web::delete().to(admin::clear_faults)),
        )
        .service(resource("/admin/shards/{id}/transfer-leader").route(web::post().to(admin::transfer_leader)))
        .service(resource("/admin/drain").route(web::post().to(admin::drain)).route(web::delete().to(admin::drain)))
        .service(resource("/admin/backup/fence").route(web::post().to(backup::fence)))
        .service(resource("/admin/shards/{id}/move").route(web::post().to(membership::move_replica)))
        .service(resource("/admin/nodes").route(web::post().to(membership::register)).route(web::get().to(membership::list)))
        .service(resource("/admin/rebalance").route(web::post().to(membership::rebalance)))
        .service(resource("/admin/nodes/{id}/decommission").route(web::post().to(membership::decommission)))
        .service(resource("/admin/nodes/{id}/replace").route(web::post().to(membership::replace)))
        .service(resource("/admin/backup/shards/{id}").route(web::get().to(backup::chunk)))
        .default_service(web::to(|request: HttpRequest| async move { ApiError::not_found(request.path()).error_response() }))
}

/// Authentication, rate limit, the role table, and the audit record of every authenticated
/// mutating request (appended before the answer leaves; see `auth.rs`).
async fn guard(
    mut request: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<actix_web::body::BoxBody>,
) -> std::result::Result<ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let Some(state) = request.app_data::<web::Data<AppState>>().cloned() else {
        return Ok(request.error_response(ApiError::unavailable()));
    };
    let method = request.method().clone();
    let pattern = request.match_pattern().unwrap_or_else(|| "unmatched".to_string());
    let access = auth::access(&method, &pattern);
    if access == auth::Access::Public {
        return next.call(request).await;
    }
    let address = request.peer_addr().map(|address| address.ip());
    if let Some(wait_s) = address.and_then(|address| state.auth.throttled(address)) {
        state.metrics.auth_failures.with_label_values(&["auth_throttled"]).inc();
        let message = format!("too many failed authentications from this address; retry in {wait_s} s");
        let mut response = request.error_response(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "auth_throttled", message));
        if let Ok(value) = HeaderValue::from_str(&wait_s.to_string()) {
            response.headers_mut().insert(actix_web::http::header::RETRY_AFTER, value);
        }
        return Ok(response);
    }
    let (principal, limit) = match auth::authenticate(&state, &mut request).await {
        Ok(authenticated) => authenticated,
        Err(error) => {
            if error.status == StatusCode::UNAUTHORIZED {
                state.metrics.auth_failures.with_label_values(&[error.code]).inc();
                if let Some(address) = address {
                    state.auth.failed(address);
                }
            }
            return Ok(request.error_response(error));
        }
    };
    let limit = limit.unwrap_or_else(|| state.settings.rate_limits.for_role(principal.role));
    let decision = auth::rate_check(&state.auth, &principal.key_id, limit);
    let checked = if decision.allowed {
        auth::authorize(&principal, access, &method, &pattern)
    } else {
        state.metrics.rate_limited.with_label_values(&[principal.role.name()]).inc();
        let message =
            format!("key {} is over its rate limit of {}/s; retry after {} s", principal.key_id, limit.per_second, decision.reset_s);
        Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message))
    };
    let client = request.peer_addr().map(|address| address.to_string()).unwrap_or_default();
    let request_id = request.extensions().get::<RequestId>().map(|id| id.0.clone()).unwrap_or_default();
    let mut response = match checked {
        Ok(()) => {
            request.extensions_mut().insert(principal.clone());
            next.call(request).await?
        }
        Err(error) => request.error_response(error),
    };
    let headers = response.headers_mut();
    for (name, value) in [
        ("ratelimit-limit", decision.limit.to_string()),
        ("ratelimit-remaining", decision.remaining.to_string()),
        ("ratelimit-reset", decision.reset_s.to_string()),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    if !decision.allowed {
        if let Ok(value) = HeaderValue::from_str(&decision.reset_s.to_string()) {
            headers.insert(actix_web::http::header::RETRY_AFTER, value);
        }
    }
    let mutating = !(method == actix_web::http::Method::GET || method == actix_web::http::Method::HEAD);
    // A read of personal data is recorded like a change.
    if mutating || pattern == "/v1/customers/{id}" || pattern == "/v1/transfers/{id}/verification" {
        let targets = response.request().extensions().get::<auth::AuditTargets>().map(|targets| targets.0.clone()).unwrap_or_default();
        let status = response.status().as_u16();
        let outcome = response.response().extensions().get::<auth::AnsweredCode>().map_or("ok", |code| code.0).to_string();
        let event = auth::audit_event(&state, &principal, request_id, client, format!("{method} {pattern}"), targets, status, outcome);
        if pattern.starts_with("/admin/") {
            // Node-local operations (faults, drain) are for when the cluster is degraded: their
            // answer does not wait for a quorum. The record is logged here and appended when
            // the system shard can take it.
            tracing::info!(key_id = %event.key_id, operation = %event.operation, status, "admin operation");
            let state = state.clone();
            actix_web::rt::spawn(async move { auth::audit(&state, event).await });
        } else {
            auth::audit(&state, event).await;
        }
    }
    Ok(response)
}

impl AppState {
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.settings.request_timeout_ms)
    }

    /// Reads and parses a JSON object body within the body limits.
    pub(crate) async fn read_object(&self, request: &HttpRequest, payload: web::Payload) -> Result<serde_json::Map<String, Value>> {
        let timeout = Duration::from_millis(self.settings.http_body_timeout_ms);
        let bytes = body::read(request.headers(), payload, BODY_BYTES_MAX, timeout).await?;
        body::parse_object(&bytes)
    }

    pub(crate) async fn call_with(&self, request_id: &RequestId, request: Request) -> Result<Reply> {
        match self.driver.call_traced(request, self.timeout(), Some(request_id.0.clone())).await {
            Reply::Unavailable => Err(ApiError::unavailable()),
            Reply::Overloaded => Err(ApiError::overloaded()),
            reply => Ok(reply),
        }
    }
}

/// A resource whose unserved methods answer 405 in the error shape.
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(|request: HttpRequest| async move {
        let message = format!("{} is not served on {}", request.method(), request.path());
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", message).error_response()
    }))
}

/// Live while the driver (the core's thread) answers: a node whose core died is not live, so a
/// supervisor restarts it (the crash-only hook normally ends such a process first).
async fn live(state: web::Data<AppState>) -> HttpResponse {
    match tokio::time::timeout(LIVE_TIMEOUT, state.driver.status()).await {
        Ok(Some(_)) => HttpResponse::Ok().json(json!({ "status": "live" })),
        _ => HttpResponse::ServiceUnavailable().json(json!({ "status": "core not answering" })),
    }
}

/// How long `/health/live` waits for the driver.
const LIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Ready when this node hears from a quorum of the cluster (itself included) and every shard
/// with a replica here knows its leader. A node cut off from the others turns unready within a
/// few seconds, and ready again once it is back.
async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let Some(status) = state.driver.status().await else {
        return HttpResponse::ServiceUnavailable().json(json!({ "ready": false, "reason": "driver stopped" }));
    };
    let hosted: Vec<_> = status.shards.iter().filter(|shard| shard.role.hosted()).collect();
    let leaderless = hosted.iter().filter(|shard| shard.leader.is_none()).count();
    let members = status.peers.len() + 1;
    let heard = 1 + status.peers.iter().filter(|peer| reachable(peer)).count();
    let quorum = heard * 2 > members;
    let ready = quorum && leaderless == 0;
    let body = json!({
        "ready": ready,
        "shards": hosted.len(),
        "shards_without_leader": leaderless,
        "nodes_reachable": heard,
        "nodes": members,
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// A peer not heard from for this long counts as unreachable (for readiness and `/v1/cluster`).
const PEER_SILENCE_MS: u64 = 3_000;

pub(crate) fn reachable(peer: &PeerStatus) -> bool {
    peer.last_heard_ms.is_some_and(|ms| ms <= PEER_SILENCE_MS)
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let status = state.driver.status().await;
    // Walking the data dir and statvfs block: keep them off the few HTTP workers.
    let data_dir = state.settings.data_dir.clone();
    let store = state.driver.state_store.clone();
    let disk = match web::block(move || DiskUsage::measure(&data_dir, &store)).await {
        Ok(disk) => Some(disk),
        Err(error) => {
            tracing::warn!(%error, "measuring the data dir failed; its gauges are left out of this scrape");
            None
        }
    };
    let text = state.metrics.render(&state.driver, status.as_ref(), disk.as_ref());
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(text)
}

async fn cluster(state: web::Data<AppState>) -> Result<HttpResponse> {
    let status = state.driver.status().await.ok_or_else(ApiError::unavailable)?;
    let now = settle_actors::now_ms();
    let uptime_ms = u64::try_from(state.started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let version = env!("CARGO_PKG_VERSION");
    // This node and every peer: the bootstrap members and the nodes registered since.
    let mut members: Vec<(u64, String)> =
        status.peers.iter().map(|peer| (peer.id, peer.address.map(|address| address.to_string()).unwrap_or_default())).collect();
    members.push((status.node, state.settings.peer.to_string()));
    members.sort_unstable();
    let nodes: Vec<api::NodeView> = members
        .iter()
        .map(|(id, peer)| {
            let leads = status.shards.iter().filter(|shard| shard.leader == Some(*id)).count();
            let mut node = api::NodeView {
                id: *id,
                is_self: *id == status.node,
                leader_of: u64::try_from(leads).unwrap_or(u64::MAX),
                peer: peer.to_string(),
                ..api::NodeView::default()
            };
            // This node knows its own details; of a peer, what it last introduced itself with
            // (null until it has); of a node it has no link to, nothing more.
            if *id == status.node {
                node.http = Some(Some(format!("{}://{}", state.settings.http_scheme(), state.settings.http)));
                node.version = Some(Some(version.to_string()));
                node.uptime_ms = Some(Some(uptime_ms));
                node.reachable = Some(true);
            } else if let Some(info) = status.peers.iter().find(|peer| peer.id == *id) {
                node.http = Some(info.http.clone());
                node.version = Some(info.version.clone());
                node.uptime_ms = Some(info.started_ms.map(|started| now.saturating_sub(started)));
                node.reachable = Some(reachable(info));
                node.last_heard_ms = Some(info.last_heard_ms);
            }
            node
        })
        .collect();
    let shards: Vec<api::ShardView> = status
        .shards
        .iter()
        .map(|shard| api::ShardView {
            applied_index: shard.applied_index,
            commit_index: shard.commit_index,
            id: shard.id,
            last_index: shard.last_index,
            leader: shard.leader,
            pending_oldest_ms: shard.pending_oldest_ms,
            pending_transfers: u64::try_from(shard.pending_transfers).unwrap_or(u64::MAX),
            replicas: shard.replicas.clone(),
            learners: shard.learners.clone(),
            role: shard.role.as_str().to_string(),
            term: shard.term,
        })
        .collect();
    let body = api::ClusterView { node: status.node, nodes, shards, uptime_ms, version: version.to_string() };
    Ok(HttpResponse::Ok().json(body))
}

async fn create_account(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
    request_id: web::ReqData<RequestId>,
) -> Result<HttpResponse> {
    let object = state.read_object(&request, payload).await?;
    let create = types::create_account(&object)?;
    let id = create.id.to_string();
    request.extensions_mut().insert(auth::AuditTargets(vec![id.clone()]));
    match state.call_with(&request_id, Request::CreateAccount(create)).await? {
        Reply::Account { outcome, account } => {
            let (status, body) = account_outcome(&id, outcome, account.as_ref())?;
            Ok(HttpResponse::build(status).json(body))
        }
        other => Err(unexpected(other)),
    }
}

/// The status and body (or error) of one account creation, as `POST /v1/accounts` answers it.
fn account_outcome(id: &str, outcome: AccountOutcome, account: Option<&AccountView>) -> Result<(StatusCode, Value)> {
    let body = json!(account.map(types::account_json));
    match outcome {
        AccountOutcome::Created => Ok((StatusCode::CREATED, body)),
        AccountOutcome::AlreadyExists => Ok((StatusCode::OK, body)),
        AccountOutcome::Conflict => Err(ApiError::account_exists(id)),
        // Only a misbehaving proposer gets this; the outcome is unknown to the client.
        AccountOutcome::WrongShard => Err(ApiError::unavailable()),
        AccountOutcome::CustomerNotFound => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "customer_not_found",
            format!("account {id} is named for a customer (<customer>::<name>) that does not exist; register the customer first"),
        )),
    }
}

/// What a batch endpoint does before calling the cluster: reads `{"<field>": [...]}` (at most
/// `max` items), parses each item alone, answers invalid ones in place (`results`) and returns
/// the valid ones with their positions.
async fn batch_items<T>(
    state: &AppState,
    request: &HttpRequest,
    payload: web::Payload,
    field: &'static str,
    max: usize,
    noun: &'static str,
    parse: impl Fn(&serde_json::Map<String, Value>) -> std::result::Result<T, ApiError>,
) -> Result<(Vec<Option<Value>>, Vec<T>, Vec<usize>)> {
    let object = state.read_object(request, payload).await?;
    body::only_fields(&object, &[field])?;
    let Some(Value::Array(items)) = object.get(field) else {
        return Err(ApiError::invalid_request(field, format!("{field} must be an array")));
    };
    if items.len() > max {
        return Err(ApiError::invalid_request(field, format!("a batch carries at most {max} {field}")));
    }
    let mut results: Vec<Option<Value>> = vec![None; items.len()];
    let mut valid = Vec::new();
    let mut positions = Vec::new();
    for (position, item) in items.iter().enumerate() {
        let parsed = match item {
            Value::Object(object) => parse(object),
            _ => Err(ApiError::invalid_body(format!("each {noun} must be a JSON object"))),
        };
        match parsed {
            Ok(value) => {
                valid.push(value);
                positions.push(position);
            }
            Err(error) => results[position] = Some(item_error(&error)),
        }
    }
    Ok((results, valid, positions))
}

/// `POST /v1/accounts/batch {"accounts": [...]}`: up to 8,000 accounts, each validated and
/// answered alone (`{"results": [{"status": 201, "account": {...}} | {"status": 4xx, "error": ...}]}`),
/// in order, with the same rules and codes as `POST /v1/accounts`.
async fn batch_accounts(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
    request_id: web::ReqData<RequestId>,
) -> Result<HttpResponse> {
    let (mut results, valid, positions) =
        batch_items(&state, &request, payload, "accounts", types::BATCH_ACCOUNTS_MAX, "account", types::create_account).await?;
    if !valid.is_empty() {
        let ids: Vec<String> = valid.iter().map(|create| create.id.to_string()).collect();
        request.extensions_mut().insert(auth::AuditTargets(ids.clone()));
        let answers = match state.call_with(&request_id, Request::CreateAccounts(valid)).await? {
            Reply::Accounts(answers) if answers.len() == ids.len() => answers,
            other => return Err(unexpected(other)),
        };
        for ((position, id), answer) in positions.into_iter().zip(ids).zip(answers) {
            let outcome = match answer {
                AccountResult::Done { outcome, account } => account_outcome(&id, outcome, account.as_ref()),
                AccountResult::Unavailable => Err(ApiError::unavailable()),
            };
            results[position] = Some(match outcome {
                Ok((status, account)) => json!({ "status": status.as_u16(), "account": account }),
                Err(error) => item_error(&error),
            });
        }
    }
    let results: Vec<Value> = results.into_iter().map(|result| result.expect("every item answered")).collect();
    Ok(HttpResponse::Ok().json(json!({ "results": results })))
}

async fn get_account(
    state: web::Data<AppState>,
    path: web::Path<String>,
    request_id: web::ReqData<RequestId>,
    principal: web::ReqData<auth::Principal>,
) -> Result<HttpResponse> {
    let id = types::account_id(&path, "id")?;
    principal.check_account(&id)?;
    match state.call_with(&request_id, Request::ReadAccount(id.clone())).await? {
        Reply::AccountState(Some(view)) => Ok(HttpResponse::Ok().json(types::account_json(&view))),
        Reply::AccountState(None) => Err(ApiError::account_not_found(id.as_str())),
        other => Err(unexpected(other)),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

/// A page's `limit` query parameter: `default` when absent, else 1..=`max`.
pub(crate) fn page_limit(text: Option<&str>, default: u32, max: u32) -> Result<u32> {
    match text {
        None => Ok(default),
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|limit| (1..=max).contains(limit))
            .ok_or_else(|| ApiError::invalid_request("limit", format!("limit must be 1..={max}"))),
    }
}

/// Transfers listed per page at most.
const LIST_LIMIT_MAX: u32 = 500;

async fn list_transfers(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<ListQuery>,
    request_id: web::ReqData<RequestId>,
    principal: web::ReqData<auth::Principal>,
) -> Result<HttpResponse> {
    let id = types::account_id(&path, "id")?;
    principal.check_account(&id)?;
    let limit = page_limit(query.limit.as_deref(), 50, LIST_LIMIT_MAX)?;
    let before = match &query.cursor {
        None => None,
        Some(text) => Some(text.parse::<u64>().map_err(|_| ApiError::invalid_request("cursor", "cursor is not one this API returned"))?),
    };
    match state.call_with(&request_id, Request::History { account: id.clone(), before, limit }).await? {
        Reply::History(Some(page)) => {
            let transfers = page.transfers.iter().map(types::transfer_json).collect();
            let next_cursor = page.next_cursor.map(|cursor| cursor.to_string());
            Ok(HttpResponse::Ok().json(api::TransferPage { next_cursor, transfers }))
        }
        Reply::History(None) => Err(ApiError::account_not_found(id.as_str())),
        other => Err(unexpected(other)),
    }
}

#[derive(Deserialize)]
struct TransferQuery {
    from: Option<String>,
}

async fn get_transfer(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<TransferQuery>,
    request_id: web::ReqData<RequestId>,
    principal: web::ReqData<auth::Principal>,
) -> Result<HttpResponse> {
    let id = types::transfer_id(&path, "id")?;
    let payer = query.from.as_deref().map(|from| types::account_id(from, "from")).transpose()?;
    match state.call_with(&request_id, Request::ReadTransfer { id: id.clone(), payer }).await? {
        // A key bound to accounts sees the transfers of those accounts only.
        Reply::Transfer(Some(view)) if !principal.may_act_for(&view.from) && !principal.may_act_for(&view.to) => {
            principal.check_account(&view.from).map(|()| HttpResponse::Ok().finish())
        }
        Reply::Transfer(Some(view)) => Ok(HttpResponse::Ok().json(types::transfer_json(&view))),
        Reply::Transfer(None) => Err(ApiError::transfer_not_found(id.as_str())),
        other => Err(unexpected(other)),
    }
}

async fn create_transfer(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
    request_id: web::ReqData<RequestId>,
    principal: web::ReqData<auth::Principal>,
) -> Result<HttpResponse> {
    let object = state.read_object(&request, payload).await?;
    let transfer = types::transfer_with(&object, &["mode", "hold_timeout_seconds", "delay_hours"])?;
    let hold_terms = types::hold_terms(&object)?;
    request.extensions_mut().insert(auth::AuditTargets(vec![transfer.id.to_string(), transfer.from.to_string(), transfer.to.to_string()]));
    principal.check_account(&transfer.from)?;
    let call = match hold_terms {
        Some((timeout_ms, settle_on_expiry)) => {
            Request::Hold(settle_cluster::message::HoldRequest { transfer, timeout_ms, settle_on_expiry })
        }
        None => Request::Transfers(vec![transfer]),
    };
    let payer = match &call {
        Request::Hold(hold) => hold.transfer.from.clone(),
        Request::Transfers(items) => items[0].from.clone(),
        _ => unreachable!("built above"),
    };
    let result = call_one(&state, &request_id, call).await?;
    let mut outcome = transfer_outcome(&state.metrics, result);
    if let Err(error) = &mut outcome {
        limit_details(&state, &request_id, &payer, error).await;
    }
    if let Ok((_, body)) = &mut outcome {
        if body.status == "requires_verification" {
            verify::challenge_answer(&state, &request_id, body, &payer).await?;
        }
    }
    // The id as the body gave it (`types::transfer` took it unchanged), borrowed for the log.
    let transfer_id = object.get("id").and_then(Value::as_str).unwrap_or_default();
    let answer = match &outcome {
        Ok((status, _)) => status.as_str(),
        Err(error) => error.code,
    };
    tracing::debug!(request_id = %request_id.0, transfer_id, answer, "transfer answered");
    outcome.map(|(status, body)| HttpResponse::build(status).json(body))
}

async fn batch_transfers(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
    request_id: web::ReqData<RequestId>,
    principal: web::ReqData<auth::Principal>,
) -> Result<HttpResponse> {
    let (mut results, valid, positions) =
        batch_items(&state, &request, payload, "transfers", types::BATCH_TRANSFERS_MAX, "transfer", types::transfer).await?;
    request.extensions_mut().insert(auth::AuditTargets(valid.iter().map(|transfer| transfer.id.to_string()).collect()));
    // A scoped key's batch debits only its accounts, all or nothing.
    for transfer in &valid {
        principal.check_account(&transfer.from)?;
    }
    if !valid.is_empty() {
        let answers = match state.call_with(&request_id, Request::Transfers(valid)).await? {
            Reply::Transfers(answers) => answers,
            other => return Err(unexpected(other)),
        };
        for (position, answer) in positions.into_iter().zip(answers) {
            let payer = match &answer {
                TransferResult::Done(view) => Some(view.from.clone()),
                _ => None,
            };
            let mut outcome = transfer_outcome(&state.metrics, answer);
            if let (Ok((_, body)), Some(payer)) = (&mut outcome, payer) {
                if body.status == "requires_verification" {
                    // As the single endpoint: the code is issued and the next action named.
                    if let Err(error) = verify::challenge_answer(&state, &request_id, body, &payer).await {
                        outcome = Err(error);
                    }
                }
            }
            results[position] = Some(match outcome {
                Ok((status, transfer)) => json!({ "status": status.as_u16(), "transfer": transfer }),
                Err(error) => item_error(&error),
            });
        }
    }
    let results: Vec<Value> = results.into_iter().map(|result| result.expect("every item answered")).collect();
    Ok(HttpResponse::Ok().json(json!({ "results": results })))
}

/// Adds what the payer's customer may still pay to a KYC limit's refusal (`details.remaining`).
async fn limit_details(state: &AppState, request_id: &RequestId, payer: &settle_cluster::ids::AccountId, error: &mut ApiError) {
    let kyc =
        error.detail.iter().any(|(key, value)| *key == "details" && value["limit"].as_str().is_some_and(|limit| limit.starts_with("kyc_")));
    if !kyc {
        return;
    }
    if let Some(remaining) = customers::remaining_of(state, request_id, payer).await {
        let currency = settle_cluster::money::Currency::from_code(settle_cluster::ledger::RISK_CURRENCY).expect("CNY is known");
        let limit = error.detail.iter().find(|(key, _)| *key == "details").map(|(_, value)| value["limit"].clone()).unwrap_or_default();
        *error = error.clone().with_detail("details", json!({ "limit": limit, "remaining": currency.format(remaining) }));
    }
}

fn item_error(error: &ApiError) -> Value {
    let mut body = error.body();
    body["status"] = json!(error.status.as_u16());
    body
}

/// Maps the core's answer for one transfer to a status and body, and counts it by outcome; a
/// posted transfer's amount (in minor units) is added to the volume by currency from the core's
/// view, before it becomes the API's.
pub(crate) fn transfer_outcome(metrics: &Metrics, result: TransferResult) -> Result<(StatusCode, api::TransferView)> {
    let outcome = match result {
        TransferResult::Done(view) => match &view.status {
            TransferStatus::Posted => {
                // A metric, not money: the float keeps the sum monotonic whatever its size.
                #[allow(clippy::cast_precision_loss)]
                let minor = view.amount as f64;
                metrics.transfer_volume.with_label_values(&[view.currency.code()]).inc_by(minor);
                Ok((StatusCode::CREATED, types::transfer_json(&view)))
            }
            TransferStatus::Pending => Ok((StatusCode::ACCEPTED, types::transfer_json(&view))),
            // A hold made (or replayed), or one already released (a retried hold request).
            TransferStatus::Held => Ok((StatusCode::CREATED, types::transfer_json(&view))),
            TransferStatus::Voided | TransferStatus::Expired => Ok((StatusCode::OK, types::transfer_json(&view))),
            // Waiting for its payer's proof (`verify.rs` adds what to do next).
            TransferStatus::RequiresVerification => Ok((StatusCode::ACCEPTED, types::transfer_json(&view))),
            TransferStatus::Rejected(code) => Err(ApiError::rejected(*code).with_detail("transfer", json!(types::transfer_json(&view)))),
        },
        TransferResult::Refused(code) => Err(ApiError::rejected(code)),
        TransferResult::Unavailable => Err(ApiError::unavailable()),
    };
    let label = match &outcome {
        Ok((_, view)) => match view.status.as_str() {
            "posted" => "posted",
            "held" | "scheduled" => "held",
            "requires_verification" => "requires_verification",
            "voided" | "expired" | "revoked" => "released",
            _ => "pending",
        },
        Err(error) => error.code,
    };
    metrics.transfers.with_label_values(&[label]).inc();
    outcome
}

/// Calls the cluster with a request about one transfer (a transfer, hold, capture, void or
/// refund) and returns its one result.
pub(crate) async fn call_one(state: &AppState, request_id: &RequestId, request: Request) -> Result<TransferResult> {
    match state.call_with(request_id, request).await? {
        Reply::Transfers(mut results) if results.len() == 1 => Ok(results.remove(0)),
        other => Err(unexpected(other)),
    }
}

pub(crate) fn unexpected(reply: Reply) -> ApiError {
    tracing::error!(?reply, "unexpected reply from the core");
    ApiError::unavailable()
}
