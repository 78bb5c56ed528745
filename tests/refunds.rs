//! Refunds on real processes: partial and multiple refunds of a cross-shard payment through
//! any node, each idempotent by its id, capped by the original's amount — also right after the
//! leader of the payee's shard is killed — and scoped to the key that owns the payee.

mod common;

use common::TestCluster;
use serde_json::json;
use settle_cluster::ids::AccountId;
use settle_cluster::placement::Placement;

const SHARDS: u32 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_are_capped_idempotent_and_survive_failover() {
    let mut cluster = TestCluster::start(3, SHARDS).await;
    let placement = Placement::new(vec![1, 2, 3], SHARDS);
    let shard = |name: &str| placement.shard_of(&AccountId::new(name).unwrap());
    // A payer and a shop on different shards: the refund is itself a cross-shard transfer.
    let shop = (0..).map(|n| format!("shop-{n}")).find(|name| shard(name) != shard("alice")).unwrap();
    for (id, kind) in [("bank", "settlement"), ("alice", "customer"), (shop.as_str(), "merchant")] {
        cluster.create_account(1, id, "USD", kind).await;
    }
    let pay =
        |id: &str, from: &str, to: &str, amount: &str| json!({ "id": id, "from": from, "to": to, "amount": amount, "currency": "USD" });
    assert_eq!(cluster.post_settled(1, "/v1/transfers", &pay("fund", "bank", "alice", "100.00")).await.0, 201);
    assert_eq!(cluster.post_settled(1, "/v1/transfers", &pay("order-1", "alice", &shop, "60.00")).await.0, 201);

    let refund = |id: &str, amount: &str| json!({ "id": id, "amount": amount, "reason": "returned goods" });
    let (status, body) = cluster.post_json(2, "/v1/transfers/order-1/refunds", &refund("refund-1", "25.00")).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (body["refund_of"].as_str(), body["from"].as_str(), body["to"].as_str()),
        (Some("order-1"), Some(shop.as_str()), Some("alice"))
    );
    let (status, again) = cluster.post_json(3, "/v1/transfers/order-1/refunds", &refund("refund-1", "25.00")).await;
    assert_eq!((status, again["amount"].as_str()), (201, Some("25.00")), "a retry answers the same: {again}");

    // The leader of the shop's shard (where the cap lives) dies; the cap holds on its successor.
    let view = cluster.cluster_view(1).await;
    let leader = view["shards"][usize::try_from(shard(&shop)).unwrap()]["leader"].as_u64().expect("a leader");
    cluster.kill(leader);
    let survivor = (1..=3).find(|node| *node != leader).unwrap();
    let (status, body) = cluster.post_settled(survivor, "/v1/transfers/order-1/refunds", &refund("refund-2", "35.01")).await;
    assert_eq!((status, common::error_code(&body)), (422, "refund_exceeds_original"), "{body}");
    let (status, body) = cluster.post_settled(survivor, "/v1/transfers/order-1/refunds", &refund("refund-3", "35.00")).await;
    assert_eq!(status, 201, "exactly the rest: {body}");
    let (status, body) = cluster.post_settled(survivor, "/v1/transfers/order-1/refunds", &refund("refund-4", "0.01")).await;
    assert_eq!((status, common::error_code(&body)), (422, "refund_exceeds_original"), "{body}");
    let (status, body) = cluster.post_settled(survivor, "/v1/transfers/fund/refunds", &refund("refund-5", "1.00")).await;
    assert_eq!(status, 201, "the bank may refund its own funding too: {body}");
    cluster.restart(leader).await;

    let (status, listed) = cluster.get_json(1, "/v1/transfers/order-1/refunds").await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!((listed["refunded"].as_str(), listed["refundable"].as_str()), (Some("60.00"), Some("0.00")), "{listed}");
    assert_eq!(listed["refunds"].as_array().unwrap().len(), 2);
    let (_, alice) = cluster.get_json(1, "/v1/accounts/alice").await;
    assert_eq!(alice["balance"], "99.00", "100 - 60 + 25 + 35 - 1: {alice}");
    let (_, shop_account) = cluster.get_json(2, &format!("/v1/accounts/{shop}")).await;
    assert_eq!(shop_account["balance"], "0.00", "{shop_account}");

    // Scope: alice's own app key may not refund the shop's payment (the shop pays a refund).
    let (status, key) = cluster.post_json(1, "/v1/api_keys", &json!({ "role": "customer_app", "accounts": ["alice"] })).await;
    assert_eq!(status, 201);
    let app = reqwest::Client::builder().default_headers(common::bearer(key["key"].as_str().unwrap())).build().unwrap();
    let response =
        app.post(format!("{}/v1/transfers/order-1/refunds", cluster.node(1).url())).json(&refund("refund-6", "1.00")).send().await.unwrap();
    assert_eq!(response.status(), 403);
}

/// Prepaid cards through the API: issued in CNY only, loaded up to their cap through any node,
/// and a load past it refused with `limit_exceeded` (the card's shard decides, also for a
/// cross-shard load); an anonymous card pays merchants, never a person (no cash-out), on
/// whichever shard the payee lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepaid_cards_are_capped() {
    let cluster = TestCluster::start(3, SHARDS).await;
    let (status, body) = cluster.post_json(1, "/v1/accounts", &json!({ "id": "card-usd", "currency": "USD", "kind": "prepaid" })).await;
    assert_eq!((status, common::error_code(&body)), (400, "invalid_request"), "{body}");
    cluster.create_account(1, "issuer", "CNY", "settlement").await;
    cluster.create_account(2, "card-1", "CNY", "prepaid_anonymous").await;
    let load = |id: &str, amount: &str| json!({ "id": id, "from": "issuer", "to": "card-1", "amount": amount, "currency": "CNY" });
    assert_eq!(cluster.post_settled(2, "/v1/transfers", &load("load-1", "999.99")).await.0, 201);
    let (status, body) = cluster.post_settled(3, "/v1/transfers", &load("load-2", "0.02")).await;
    assert_eq!((status, common::error_code(&body)), (422, "limit_exceeded"), "{body}");
    assert_eq!(cluster.post_settled(1, "/v1/transfers", &load("load-3", "0.01")).await.0, 201, "exactly up to the cap");
    let (_, card) = cluster.get_json(3, "/v1/accounts/card-1").await;
    assert_eq!((card["balance"].as_str(), card["kind"].as_str()), (Some("1000.00"), Some("prepaid_anonymous")), "{card}");

    let placement = Placement::new(vec![1, 2, 3], SHARDS);
    let shard = |name: &str| placement.shard_of(&AccountId::new(name).unwrap());
    let spend = |id: &str, to: &str| json!({ "id": id, "from": "card-1", "to": to, "amount": "10.00", "currency": "CNY" });
    for same_shard in [true, false] {
        let person = (0..).map(|n| format!("person-{n}")).find(|name| (shard(name) == shard("card-1")) == same_shard).unwrap();
        let shop = (0..).map(|n| format!("shop-{n}")).find(|name| (shard(name) == shard("card-1")) == same_shard).unwrap();
        cluster.create_account(1, &person, "CNY", "customer").await;
        cluster.create_account(1, &shop, "CNY", "merchant").await;
        let (status, body) = cluster.post_settled(2, "/v1/transfers", &spend(&format!("cash-{person}"), &person)).await;
        assert_eq!((status, common::error_code(&body)), (422, "prepaid_cash_out_refused"), "same shard {same_shard}: {body}");
        let (status, body) = cluster.post_settled(3, "/v1/transfers", &spend(&format!("buy-{shop}"), &shop)).await;
        assert_eq!(status, 201, "same shard {same_shard}: {body}");
    }
    let (_, card) = cluster.get_json(1, "/v1/accounts/card-1").await;
    assert_eq!(card["balance"], "980.00", "two purchases, no cash-out: {card}");
}
