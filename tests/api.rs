//! The HTTP API contract on a real 3-node cluster: status codes, error codes, idempotency,
//! amounts at each currency's exponent, batches, pagination, headers, clean shutdown.

mod common;

use common::TestCluster;
use serde_json::{json, Value};

async fn transfer(cluster: &TestCluster, node: u64, body: Value) -> (u16, Value) {
    cluster.post_json(node, "/v1/transfers", &body).await
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

/// Accounts: 201 on create, 200 for the same body again, 409 for a different one, 404 when
/// missing, and each validation problem has its stable code and field; the batch endpoint
/// answers each item the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_and_validation_follow_the_contract() {
    let cluster = TestCluster::start(3, 8).await;
    let create = json!({ "id": "alice", "currency": "CNY" });
    assert_eq!(cluster.post_json(1, "/v1/accounts", &create).await.0, 201);
    let (status, body) = cluster.post_json(2, "/v1/accounts", &create).await;
    assert_eq!(status, 200, "same body again");
    assert_eq!(body["kind"], "customer", "kind defaults to customer");
    let (status, body) = cluster.post_json(3, "/v1/accounts", &json!({ "id": "alice", "currency": "USD" })).await;
    assert_eq!((status, error_code(&body)), (409, "account_exists"));

    let (status, body) = cluster.get_json(3, "/v1/accounts/nobody").await;
    assert_eq!((status, error_code(&body)), (404, "account_not_found"));
    let (status, body) = cluster.get_json(1, "/v1/transfers/never").await;
    assert_eq!((status, error_code(&body)), (404, "transfer_not_found"));

    let cases = [
        (json!({ "currency": "USD" }), 400, "invalid_request", Some("id")),
        (json!({ "id": "x y", "currency": "USD" }), 400, "invalid_request", Some("id")),
        (json!({ "id": "bob", "currency": "XYZ" }), 400, "unknown_currency", Some("currency")),
        (json!({ "id": "bob", "currency": "USD", "kind": "wizard" }), 400, "invalid_request", Some("kind")),
    ];
    for (body, status, code, field) in cases {
        let (got_status, reply) = cluster.post_json(1, "/v1/accounts", &body).await;
        assert_eq!((got_status, error_code(&reply)), (status, code), "{body}");
        assert_eq!(reply["error"]["field"].as_str(), field, "{body}");
        assert_eq!(reply["error"]["retryable"], false);
    }
    let response = cluster.client.post(format!("{}/v1/accounts", cluster.node(1).url())).body("{not json").send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(cluster.get_json(1, "/v1/accounts/bob").await.0, 404, "nothing invalid was created");

    // The batch endpoint answers each account as the single one would, in order.
    let batch = json!({ "accounts": [
        { "id": "carol", "currency": "EUR", "kind": "merchant" },
        { "id": "alice", "currency": "CNY" },
        { "id": "alice", "currency": "USD" },
        { "id": "x y", "currency": "USD" },
        "not an object",
        { "id": "dave", "currency": "XYZ" },
    ] });
    let (status, body) = cluster.post_json(3, "/v1/accounts/batch", &batch).await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().expect("results");
    let statuses: Vec<u64> = results.iter().map(|item| item["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [201, 200, 409, 400, 400, 400], "{body}");
    assert_eq!(results[0]["account"]["kind"], "merchant");
    assert_eq!(results[2]["error"]["code"], "account_exists");
    assert_eq!(results[5]["error"]["code"], "unknown_currency");
    assert_eq!(cluster.get_json(1, "/v1/accounts/carol").await.1["currency"], "EUR", "created through the batch");
    assert_eq!(cluster.get_json(1, "/v1/accounts/dave").await.0, 404, "an invalid item creates nothing");
    let too_many: Vec<Value> = (0..8_001).map(|n| json!({ "id": format!("m{n}"), "currency": "USD" })).collect();
    let (status, body) = cluster.post_json(2, "/v1/accounts/batch", &json!({ "accounts": too_many })).await;
    assert_eq!((status, error_code(&body)), (400, "invalid_request"), "over 8,000 accounts");
    let many: Vec<Value> = (0..8_000).map(|n| json!({ "id": format!("m{n}"), "currency": "USD" })).collect();
    let (status, body) = cluster.post_json(2, "/v1/accounts/batch", &json!({ "accounts": many })).await;
    assert_eq!(status, 200);
    let created = body["results"].as_array().unwrap().iter().filter(|item| item["status"] == 201).count();
    assert_eq!(created, 8_000, "every account of a full batch created once");
    assert_eq!(cluster.get_json(3, "/v1/accounts/m7999").await.1["balance"], "0.00");

    let transfer_cases = [
        (json!({ "id": "t", "from": "alice", "to": "bank", "amount": 1.5, "currency": "CNY" }), "invalid_amount"),
        (json!({ "id": "t", "from": "alice", "to": "bank", "amount": "1.5", "currency": "CNY" }), "invalid_amount"),
        (json!({ "id": "t", "from": "alice", "to": "bank", "amount": "1.005", "currency": "CNY" }), "invalid_amount"),
        (json!({ "id": "t", "from": "alice", "to": "bank", "amount": "0.00", "currency": "CNY" }), "invalid_amount"),
        (json!({ "id": "t", "from": "alice", "to": "bank", "amount": "-1.00", "currency": "CNY" }), "invalid_amount"),
        (json!({ "id": "t", "from": "alice", "to": "bank", "amount": "1.00", "currency": "ABC" }), "unknown_currency"),
        (json!({ "id": "t", "from": "alice", "to": "alice", "amount": "1.00", "currency": "CNY" }), "same_account"),
        (json!({ "from": "alice", "to": "bank", "amount": "1.00", "currency": "CNY" }), "invalid_request"),
    ];
    for (body, code) in transfer_cases {
        let (status, reply) = transfer(&cluster, 2, body.clone()).await;
        assert_eq!((status, error_code(&reply)), (400, code), "{body}");
    }
    assert_eq!(cluster.get_json(1, "/v1/transfers/t").await.0, 404, "no invalid transfer was stored");
}

/// Transfers: posted with 201, idempotent by id, rejections stored and replayed, currency
/// mismatch refused, amounts formatted at JPY's and KWD's exponents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_are_idempotent_and_rejections_are_final() {
    let cluster = TestCluster::start(3, 8).await;
    cluster.create_account(1, "bank", "USD", "settlement").await;
    cluster.create_account(2, "alice", "USD", "customer").await;
    cluster.create_account(3, "shop", "USD", "merchant").await;
    cluster.create_account(1, "euro", "EUR", "customer").await;

    let fund = json!({ "id": "fund-1", "from": "bank", "to": "alice", "amount": "50.00", "currency": "USD" });
    let (status, body) = transfer(&cluster, 1, fund.clone()).await;
    assert_eq!((status, body["status"].as_str()), (201, Some("posted")), "{body}");
    let (status, _) = transfer(&cluster, 3, fund.clone()).await;
    assert_eq!(status, 201, "a retry with the same id and body answers the stored outcome");
    assert_eq!(cluster.get_json(2, "/v1/accounts/alice").await.1["balance"], "50.00", "the retry did not post twice");
    let mut changed = fund.clone();
    changed["amount"] = json!("51.00");
    let (status, body) = transfer(&cluster, 2, changed).await;
    assert_eq!((status, error_code(&body)), (422, "idempotency_key_reused"));

    let too_much = json!({ "id": "pay-1", "from": "alice", "to": "shop", "amount": "80.00", "currency": "USD" });
    let (status, body) = transfer(&cluster, 2, too_much.clone()).await;
    assert_eq!((status, error_code(&body)), (422, "insufficient_funds"));
    assert_eq!(body["error"]["transfer"]["status"], "rejected");
    transfer(&cluster, 1, json!({ "id": "fund-2", "from": "bank", "to": "alice", "amount": "100.00", "currency": "USD" })).await;
    let (status, body) = transfer(&cluster, 3, too_much).await;
    assert_eq!((status, error_code(&body)), (422, "insufficient_funds"), "a stored rejection never posts later");
    let (_, stored) = cluster.get_json(1, "/v1/transfers/pay-1").await;
    assert_eq!((stored["status"].as_str(), stored["rejection"]["code"].as_str()), (Some("rejected"), Some("insufficient_funds")));

    let mismatch = json!({ "id": "fx-1", "from": "alice", "to": "euro", "amount": "1.00", "currency": "USD" });
    let (status, body) = transfer(&cluster, 1, mismatch).await;
    assert_eq!((status, error_code(&body)), (422, "currency_mismatch"));
    let missing = json!({ "id": "lost-1", "from": "alice", "to": "ghost", "amount": "1.00", "currency": "USD" });
    let (status, body) = transfer(&cluster, 1, missing).await;
    assert_eq!((status, error_code(&body)), (404, "account_not_found"));

    let (_, alice) = cluster.get_json(3, "/v1/accounts/alice").await;
    assert_eq!((alice["balance"].as_str(), alice["available"].as_str()), (Some("150.00"), Some("150.00")));
    assert_eq!(cluster.get_json(3, "/v1/accounts/bank").await.1["balance"], "-150.00");

    cluster.create_account(2, "yen-bank", "JPY", "settlement").await;
    cluster.create_account(2, "yen", "JPY", "customer").await;
    let (status, body) =
        transfer(&cluster, 2, json!({ "id": "jpy-1", "from": "yen-bank", "to": "yen", "amount": "500", "currency": "JPY" })).await;
    assert_eq!((status, body["amount"].as_str()), (201, Some("500")));
    cluster.create_account(2, "kwd-bank", "KWD", "settlement").await;
    cluster.create_account(2, "kwd", "KWD", "customer").await;
    let (status, body) =
        transfer(&cluster, 3, json!({ "id": "kwd-1", "from": "kwd-bank", "to": "kwd", "amount": "1.005", "currency": "KWD" })).await;
    assert_eq!((status, body["amount"].as_str()), (201, Some("1.005")));
}

/// Batches answer per item in order; history pages newest first; every response carries a
/// Request-Id (the client's own when it sent one); /metrics serves Prometheus text; SIGTERM
/// stops a node cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_history_headers_metrics_and_clean_shutdown() {
    let mut cluster = TestCluster::start(3, 8).await;
    cluster.create_account(1, "bank", "USD", "settlement").await;
    for n in 0..4 {
        cluster.create_account(2, &format!("a{n}"), "USD", "customer").await;
    }
    let mut items: Vec<Value> = (0..4)
        .map(|n| json!({ "id": format!("b-fund-{n}"), "from": "bank", "to": format!("a{n}"), "amount": "10.00", "currency": "USD" }))
        .collect();
    items.push(json!({ "id": "b-bad", "from": "a0", "to": "a1", "amount": "1", "currency": "USD" }));
    let (status, body) = cluster.post_json(3, "/v1/transfers/batch", &json!({ "transfers": items })).await;
    assert_eq!(status, 200);
    let results = body["results"].as_array().expect("results");
    let statuses: Vec<u64> = results.iter().map(|r| r["status"].as_u64().expect("status")).collect();
    assert_eq!(statuses, vec![201, 201, 201, 201, 400], "{body}");
    assert_eq!(results[4]["error"]["code"], "invalid_amount");
    // Items of one payer apply in batch order (items of different payers are independent).
    let spend = json!({ "transfers": [
        { "id": "b-poor", "from": "a0", "to": "a1", "amount": "99.00", "currency": "USD" },
        { "id": "b-ok", "from": "a0", "to": "a1", "amount": "2.50", "currency": "USD" },
        { "id": "b-rest", "from": "a0", "to": "a2", "amount": "7.50", "currency": "USD" },
        { "id": "b-over", "from": "a0", "to": "a3", "amount": "0.01", "currency": "USD" },
    ] });
    let (_, body) = cluster.post_json(1, "/v1/transfers/batch", &spend).await;
    let statuses: Vec<u64> = body["results"].as_array().unwrap().iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, vec![422, 201, 201, 422], "{body}");
    assert_eq!(cluster.get_json(2, "/v1/accounts/a0").await.1["balance"], "0.00");

    let too_many: Vec<Value> =
        (0..8_001).map(|n| json!({ "id": format!("x{n}"), "from": "a0", "to": "a1", "amount": "0.01", "currency": "USD" })).collect();
    let (status, body) = cluster.post_json(1, "/v1/transfers/batch", &json!({ "transfers": too_many })).await;
    assert_eq!((status, error_code(&body)), (400, "invalid_request"));

    for n in 0..5 {
        let body = json!({ "id": format!("h{n}"), "from": "a2", "to": "a3", "amount": "0.10", "currency": "USD" });
        assert_eq!(transfer(&cluster, 1, body).await.0, 201);
    }
    let (_, page) = cluster.get_json(2, "/v1/accounts/a2/transfers?limit=4").await;
    let ids: Vec<&str> = page["transfers"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["h4", "h3", "h2", "h1"]);
    let cursor = page["next_cursor"].as_str().expect("a next page").to_string();
    let (_, page) = cluster.get_json(3, &format!("/v1/accounts/a2/transfers?limit=4&cursor={cursor}")).await;
    let ids: Vec<&str> = page["transfers"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["h0", "b-rest", "b-fund-2"]);
    assert!(page["next_cursor"].is_null());

    let url = cluster.node(1).url();
    let response = cluster.client.get(format!("{url}/v1/accounts/a0")).send().await.unwrap();
    assert!(response.headers().get("request-id").is_some_and(|id| !id.is_empty()));
    let response = cluster.client.get(format!("{url}/v1/accounts/a0")).header("Request-Id", "client-42").send().await.unwrap();
    assert_eq!(response.headers()["request-id"], "client-42");
    let metrics = cluster.client.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("settle_http_requests_total{endpoint=\"/v1/accounts/{id}\""), "{metrics}");
    assert!(metrics.contains("settle_transfers_total"));

    let (status, view) = cluster.get_json(2, "/v1/cluster").await;
    assert_eq!(status, 200);
    assert_eq!(view["shards"].as_array().unwrap().len(), 8);
    assert!(view["shards"].as_array().unwrap().iter().all(|s| s["replicas"].as_array().unwrap().len() == 3));
    // Clients read the view with the client library's types, and lose or add nothing.
    let typed: settle_client::api::ClusterView = serde_json::from_value(view.clone()).expect("the typed cluster view reads it");
    assert_eq!(serde_json::to_value(&typed).unwrap(), view);
    assert_eq!(typed.this_node().map(|node| node.id), Some(2));

    let exit = cluster.terminate(2);
    assert!(exit.success(), "SIGTERM exits cleanly: {exit:?}");
}

/// Admin endpoints: refused without a token (403) or with a wrong one (401); fault injection
/// refused on a node without --faults-enabled; a planned leader transfer moves the shard's
/// leadership; draining leaves the node leading nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_are_authenticated_and_move_leadership() {
    let cluster = TestCluster::start_with_env(3, 4, &[("SETTLE_ADMIN_TOKEN", "s3cret")]).await;
    let url = cluster.node(1).url();
    let client = &cluster.client;
    let anonymous = reqwest::Client::new().get(format!("{url}/admin/faults")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(error_code(&body), "unauthorized");
    let wrong = client.get(format!("{url}/admin/faults")).bearer_auth("nope").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let refused =
        client.post(format!("{url}/admin/faults")).bearer_auth("s3cret").json(&json!({ "disk_delay_ms": 5 })).send().await.unwrap();
    assert_eq!(refused.status(), 403, "faults need --faults-enabled");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(error_code(&body), "faults_disabled");

    let view = cluster.cluster_view(1).await;
    let shard = &view["shards"][0];
    let leader = shard["leader"].as_u64().unwrap();
    let to = shard["replicas"].as_array().unwrap().iter().filter_map(Value::as_u64).find(|node| *node != leader).unwrap();
    let not_leader = if leader == 1 { 2 } else { 1 };
    let answer = client
        .post(format!("{}/admin/shards/0/transfer-leader", cluster.node(not_leader).url()))
        .bearer_auth("s3cret")
        .json(&json!({ "to": to }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 409, "only the leader hands leadership over");
    let answer = client
        .post(format!("{}/admin/shards/0/transfer-leader", cluster.node(leader).url()))
        .bearer_auth("s3cret")
        .json(&json!({ "to": to }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if cluster.cluster_view(leader).await["shards"][0]["leader"].as_u64() == Some(to) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "shard 0 moved to node {to}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let drain = |method: reqwest::Method| client.request(method, format!("{url}/admin/drain")).bearer_auth("s3cret").send();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let body: Value = drain(reqwest::Method::POST).await.unwrap().json().await.unwrap();
        if body["leading"] == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "node 1 still leads {body}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let body: Value = drain(reqwest::Method::DELETE).await.unwrap().json().await.unwrap();
    assert_eq!(body["draining"], false);
}
