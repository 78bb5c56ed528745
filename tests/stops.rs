//! Stop orders on accounts, on real processes: an operator freezes an account through one node,
//! no debit passes through any node — not after the leader of the account's shard is killed
//! either — credits still arrive unless the stop blocks them, retries replay the stored
//! refusal, and lifting the stop (recorded with who, when and why) lets money move again.

mod common;

use common::TestCluster;
use serde_json::{json, Value};
use settle_cluster::ids::AccountId;
use settle_cluster::placement::Placement;
use std::time::Duration;

const SHARDS: u32 = 4;

fn transfer(id: &str, from: &str, to: &str, amount: &str) -> Value {
    json!({ "id": id, "from": from, "to": to, "amount": amount, "currency": "USD" })
}

/// The whole life of a stop, across a leader failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_freezes_an_account_on_every_node_and_across_failover() {
    let mut cluster = TestCluster::start(3, SHARDS).await;
    for (id, kind) in [("bank", "settlement"), ("alice", "customer"), ("bob", "customer")] {
        cluster.create_account(1, id, "USD", kind).await;
    }
    assert_eq!(cluster.post_settled(1, "/v1/transfers", &transfer("fund", "bank", "alice", "100.00")).await.0, 201);
    let (status, created) = cluster.post_json(1, "/v1/api_keys", &json!({ "role": "operator", "label": "risk desk" })).await;
    assert_eq!(status, 201, "{created}");
    let operator_id = created["id"].as_str().unwrap().to_string();
    let operator = reqwest::Client::builder()
        .default_headers(common::bearer(created["key"].as_str().unwrap()))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    let stop = json!({ "id": "stop-1", "target": "account", "account": "alice", "reason": "suspected fraud", "authority_ref": "PSB-118" });
    let response = operator.post(format!("{}/v1/risk/stops", cluster.node(2).url())).json(&stop).send().await.unwrap();
    assert_eq!(response.status(), 201);
    let placed: Value = response.json().await.unwrap();
    assert_eq!((placed["status"].as_str(), placed["placed_by"].as_str()), (Some("active"), Some(operator_id.as_str())), "{placed}");
    let again = operator.post(format!("{}/v1/risk/stops", cluster.node(3).url())).json(&stop).send().await.unwrap();
    assert_eq!(again.status(), 200, "the same order again replays");
    let mut other = stop.clone();
    other["reason"] = json!("another order");
    let conflict = operator.post(format!("{}/v1/risk/stops", cluster.node(1).url())).json(&other).send().await.unwrap();
    assert_eq!(conflict.status(), 409);

    for node in 1..=3 {
        let (status, body) = cluster.post_json(node, "/v1/transfers", &transfer(&format!("out-{node}"), "alice", "bob", "1.00")).await;
        assert_eq!((status, common::error_code(&body)), (422, "account_frozen"), "node {node}: {body}");
    }
    let (status, body) = cluster.post_json(1, "/v1/transfers", &transfer("in-1", "bank", "alice", "5.00")).await;
    assert_eq!(status, 201, "credits still arrive: {body}");

    // Kill the leader of alice's shard: the new leader holds the stop too.
    let shard = Placement::new(vec![1, 2, 3], SHARDS).shard_of(&AccountId::new("alice").unwrap());
    let view = cluster.cluster_view(1).await;
    let leader = view["shards"][usize::try_from(shard).unwrap()]["leader"].as_u64().expect("a leader");
    cluster.kill(leader);
    let survivor = (1..=3).find(|node| *node != leader).unwrap();
    let (status, body) = cluster.post_settled(survivor, "/v1/transfers", &transfer("out-after", "alice", "bob", "1.00")).await;
    assert_eq!((status, common::error_code(&body)), (422, "account_frozen"), "after failover: {body}");
    let (status, body) = cluster.post_settled(survivor, "/v1/transfers", &transfer("out-1", "alice", "bob", "1.00")).await;
    assert_eq!((status, common::error_code(&body)), (422, "account_frozen"), "a retry replays the stored refusal: {body}");
    cluster.restart(leader).await;

    // A second stop that blocks credits, then lift both.
    let blocking = json!({ "id": "stop-2", "target": "account", "account": "alice", "reason": "court order", "block_credits": true });
    assert_eq!(operator.post(format!("{}/v1/risk/stops", cluster.node(1).url())).json(&blocking).send().await.unwrap().status(), 201);
    let (status, body) = cluster.post_settled(2, "/v1/transfers", &transfer("in-2", "bank", "alice", "5.00")).await;
    assert_eq!((status, common::error_code(&body)), (422, "account_frozen"), "{body}");
    for id in ["stop-1", "stop-2"] {
        let lift = json!({ "account": "alice", "reason": "cleared by the bank" });
        let response = operator.post(format!("{}/v1/risk/stops/{id}/lift", cluster.node(3).url())).json(&lift).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let lifted: Value = response.json().await.unwrap();
        assert_eq!(lifted["lifted"]["by"].as_str(), Some(operator_id.as_str()), "{lifted}");
    }
    let (status, body) = cluster.post_settled(1, "/v1/transfers", &transfer("out-lifted", "alice", "bob", "1.00")).await;
    assert_eq!(status, 201, "money moves again: {body}");

    let (status, stops) = cluster.get_json(2, "/v1/accounts/alice/stops").await;
    assert_eq!(status, 200, "{stops}");
    assert_eq!(stops["frozen"], json!({ "debits": false, "credits": false }));
    assert_eq!(stops["stops"].as_array().unwrap().len(), 2);
    assert!(stops["stops"].as_array().unwrap().iter().all(|stop| stop["status"] == "lifted"));
    let (_, alice) = cluster.get_json(1, "/v1/accounts/alice").await;
    assert_eq!(alice["balance"], "104.00", "100 funded + 5 credited while frozen - 1 after the lift: {alice}");
}
