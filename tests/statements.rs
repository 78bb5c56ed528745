//! Statements and balances as of a time on real processes: an account's movements (a funding,
//! a same-shard and a cross-shard payment, a captured hold) listed oldest first with running
//! balances, paged by cursor, read through a survivor after the account's shard leader is
//! killed; a balance as of each row's time is that row's balance after.

mod common;

use common::TestCluster;
use serde_json::{json, Value};
use settle_cluster::ids::AccountId;
use settle_cluster::placement::Placement;

const SHARDS: u32 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_list_movements_with_running_balances() {
    let mut cluster = TestCluster::start(3, SHARDS).await;
    let placement = Placement::new(vec![1, 2, 3], SHARDS);
    let shard = |name: &str| placement.shard_of(&AccountId::new(name).unwrap());
    let shop = (0..).map(|n| format!("shop-{n}")).find(|name| shard(name) != shard("alice")).unwrap();
    let cafe = (0..).map(|n| format!("cafe-{n}")).find(|name| shard(name) == shard("alice")).unwrap();
    for (id, kind) in [("bank", "settlement"), ("alice", "customer"), (shop.as_str(), "merchant"), (cafe.as_str(), "merchant")] {
        cluster.create_account(1, id, "USD", kind).await;
    }
    let pay =
        |id: &str, from: &str, to: &str, amount: &str| json!({ "id": id, "from": from, "to": to, "amount": amount, "currency": "USD" });
    assert_eq!(cluster.post_settled(1, "/v1/transfers", &pay("fund", "bank", "alice", "100.00")).await.0, 201);
    assert_eq!(cluster.post_settled(2, "/v1/transfers", &pay("coffee", "alice", &cafe, "4.50")).await.0, 201);
    assert_eq!(cluster.post_settled(3, "/v1/transfers", &pay("shoes", "alice", &shop, "30.00")).await.0, 201);
    let (status, _) = cluster.post_settled(3, "/v1/transfers", &pay("too-much", "alice", &shop, "1000.00")).await;
    assert_eq!(status, 422, "a rejection moves nothing");
    let mut hold = pay("hotel", "alice", &cafe, "50.00");
    hold["mode"] = json!("hold");
    assert_eq!(cluster.post_settled(1, "/v1/transfers", &hold).await.0, 201);
    assert_eq!(cluster.post_settled(2, "/v1/transfers/hotel/capture", &json!({ "amount": "40.00" })).await.0, 200);

    let view = cluster.cluster_view(1).await;
    let leader = view["shards"][usize::try_from(shard("alice")).unwrap()]["leader"].as_u64().expect("a leader");
    cluster.kill(leader);
    let survivor = (1..=3).find(|node| *node != leader).unwrap();

    let (status, first) = cluster.get_json(survivor, "/v1/accounts/alice/statement?limit=3").await;
    assert_eq!(status, 200, "{first}");
    let cursor = first["next_cursor"].as_str().expect("a second page").to_string();
    let (status, second) = cluster.get_json(survivor, &format!("/v1/accounts/alice/statement?limit=3&cursor={cursor}")).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!((second["opening_balance"].as_str(), second["next_cursor"].as_str()), (first["closing_balance"].as_str(), None), "{second}");
    let rows: Vec<&Value> = first["rows"].as_array().unwrap().iter().chain(second["rows"].as_array().unwrap()).collect();
    let summary: Vec<(&str, &str, &str, &str)> = rows
        .iter()
        .map(|row| {
            (
                row["transfer"].as_str().unwrap(),
                row["direction"].as_str().unwrap(),
                row["amount"].as_str().unwrap(),
                row["balance_after"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("fund", "credit", "100.00", "100.00"),
            ("coffee", "debit", "4.50", "95.50"),
            ("shoes", "debit", "30.00", "65.50"),
            ("hotel", "debit", "40.00", "25.50"),
        ]
    );
    assert_eq!(rows[2]["counterparty"].as_str(), Some(shop.as_str()));

    // A balance as of each row's time is the balance after the last row at or before it.
    for row in &rows {
        let at_ms = row["at_ms"].as_u64().unwrap();
        let expected = rows.iter().rfind(|other| other["at_ms"].as_u64().unwrap() <= at_ms).unwrap()["balance_after"].clone();
        let (status, balance) =
            cluster.get_json(survivor, &format!("/v1/accounts/alice/balance?as_of={}", row["at"].as_str().unwrap())).await;
        assert_eq!((status, &balance["balance"]), (200, &expected), "{balance}");
    }
    let (_, before) = cluster.get_json(survivor, "/v1/accounts/alice/balance?as_of=1970-01-01T00:00:00Z").await;
    assert_eq!(before["balance"], "0.00", "{before}");
    let (status, body) = cluster.get_json(survivor, "/v1/accounts/alice/balance?as_of=yesterday").await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("as_of")), "{body}");
    // A window: from the coffee on, excluding nothing after.
    let from = rows[1]["at"].as_str().unwrap();
    let (_, window) = cluster.get_json(survivor, &format!("/v1/accounts/alice/statement?from={from}")).await;
    let first_in_window = window["rows"][0]["at_ms"].as_u64().unwrap();
    assert!(first_in_window >= rows[1]["at_ms"].as_u64().unwrap(), "{window}");
    cluster.restart(leader).await;
}
