//! Holds and delayed transfers on real processes: a cross-shard hold captured in part through another node, retries
//! answered the same (also when the id's home shard is the payee's), a second capture or a void after it refused; a same-shard hold voided
//! right after its shard's leader is killed; a short hold expiring by itself through the log;
//! bad requests refused with their codes.

mod common;

use common::TestCluster;
use serde_json::{json, Value};
use settle_cluster::ids::{AccountId, TransferId};
use settle_cluster::placement::Placement;
use std::time::{Duration, Instant};

const SHARDS: u32 = 4;

fn hold(id: &str, from: &str, to: &str, amount: &str) -> Value {
    json!({ "id": id, "from": from, "to": to, "amount": amount, "currency": "USD", "mode": "hold" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_capture_void_and_expire_through_any_node() {
    let mut cluster = TestCluster::start(3, SHARDS).await;
    let placement = Placement::new(vec![1, 2, 3], SHARDS);
    let shard = |name: &str| placement.shard_of(&AccountId::new(name).unwrap());
    let shop = (0..).map(|n| format!("shop-{n}")).find(|name| shard(name) != shard("alice")).unwrap();
    let kiosk = (0..).map(|n| format!("kiosk-{n}")).find(|name| shard(name) == shard("alice")).unwrap();
    for (id, kind) in [("bank", "settlement"), ("alice", "customer"), (shop.as_str(), "merchant"), (kiosk.as_str(), "merchant")] {
        cluster.create_account(1, id, "USD", kind).await;
    }
    let fund = json!({ "id": "fund", "from": "bank", "to": "alice", "amount": "100.00", "currency": "USD" });
    assert_eq!(cluster.post_settled(1, "/v1/transfers", &fund).await.0, 201);

    // Bad requests change nothing.
    let mut bogus = hold("bad-1", "alice", &shop, "1.00");
    bogus["mode"] = json!("later");
    let (status, body) = cluster.post_json(1, "/v1/transfers", &bogus).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("mode")), "{body}");
    let mut bogus = hold("bad-2", "alice", &shop, "1.00");
    bogus["hold_timeout_seconds"] = json!(0);
    assert_eq!(cluster.post_json(1, "/v1/transfers", &bogus).await.0, 400);
    let (status, body) = cluster.post_json(1, "/v1/transfers/fund/capture", &json!({})).await;
    assert_eq!((status, common::error_code(&body)), (409, "transfer_not_a_hold"), "{body}");

    // A cross-shard hold, captured in part through another node. Its id's home is the shop's
    // shard, which holds the credit once the capture is decided: a retry still finds the hold.
    let h1 = (0..)
        .map(|n| format!("h1-{n}"))
        .find(|id| placement.home_shard_of(&TransferId::new(id.as_str()).unwrap()) == shard(&shop))
        .unwrap();
    let (status, body) = cluster.post_settled(1, "/v1/transfers", &hold(&h1, "alice", &shop, "80.00")).await;
    assert_eq!((status, body["status"].as_str()), (201, Some("held")), "{body}");
    assert!(body["hold_expires_at"].as_str().is_some_and(|at| at.ends_with('Z')), "{body}");
    let (_, alice) = cluster.get_json(2, "/v1/accounts/alice").await;
    assert_eq!((alice["balance"].as_str(), alice["available"].as_str()), (Some("100.00"), Some("20.00")), "{alice}");
    let (status, body) = cluster.post_settled(2, &format!("/v1/transfers/{h1}/capture"), &json!({ "amount": "80.01" })).await;
    assert_eq!((status, common::error_code(&body)), (422, "capture_exceeds_hold"), "{body}");
    let (status, body) = cluster.post_settled(2, &format!("/v1/transfers/{h1}/capture"), &json!({ "amount": "50.00" })).await;
    assert_eq!((status, body["status"].as_str(), body["amount"].as_str()), (200, Some("posted"), Some("50.00")), "{body}");
    assert_eq!((body["hold"]["captured"].as_str(), body["hold"]["released"].as_str()), (Some("50.00"), Some("30.00")), "{body}");
    let (status, again) = cluster.post_settled(3, &format!("/v1/transfers/{h1}/capture"), &json!({ "amount": "50.00" })).await;
    assert_eq!((status, again["amount"].as_str()), (200, Some("50.00")), "a retry answers the same: {again}");
    let (status, body) = cluster.post_settled(3, &format!("/v1/transfers/{h1}/capture"), &json!({ "amount": "60.00" })).await;
    assert_eq!((status, common::error_code(&body)), (409, "hold_not_active"), "{body}");
    let (status, body) = cluster.post_settled(1, &format!("/v1/transfers/{h1}/void"), &json!({})).await;
    assert_eq!(
        (status, common::error_code(&body), body["error"]["transfer"]["status"].as_str()),
        (409, "hold_not_active", Some("posted")),
        "{body}"
    );

    // A same-shard hold, voided just after its shard's leader dies.
    let (status, _) = cluster.post_settled(1, "/v1/transfers", &hold("h2", "alice", &kiosk, "30.00")).await;
    assert_eq!(status, 201);
    let view = cluster.cluster_view(1).await;
    let leader = view["shards"][usize::try_from(shard("alice")).unwrap()]["leader"].as_u64().expect("a leader");
    cluster.kill(leader);
    let survivor = (1..=3).find(|node| *node != leader).unwrap();
    let (status, body) = cluster.post_settled(survivor, "/v1/transfers/h2/void", &json!({})).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("voided")), "{body}");
    let (status, body) = cluster.post_settled(survivor, "/v1/transfers/h2/void", &json!({})).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("voided")), "a second void answers the first: {body}");
    let (status, body) = cluster.post_settled(survivor, "/v1/transfers/h2/capture", &json!({})).await;
    assert_eq!((status, common::error_code(&body)), (409, "hold_not_active"), "{body}");

    // A one-second hold expires by itself: the leader proposes the expiry once it is due.
    let mut short = hold("h3", "alice", &kiosk, "10.00");
    short["hold_timeout_seconds"] = json!(1);
    assert_eq!(cluster.post_settled(survivor, "/v1/transfers", &short).await.0, 201);
    let deadline = Instant::now() + Duration::from_secs(20);
    let expired = loop {
        let (_, view) = cluster.get_json(survivor, "/v1/transfers/h3").await;
        if view["status"] == "expired" || Instant::now() > deadline {
            break view;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((expired["status"].as_str(), expired["hold"]["released"].as_str()), (Some("expired"), Some("10.00")), "{expired}");
    cluster.restart(leader).await;

    let (_, alice) = cluster.get_json(leader, "/v1/accounts/alice").await;
    assert_eq!((alice["balance"].as_str(), alice["available"].as_str()), (Some("50.00"), Some("50.00")), "{alice}");
    let (_, shop_account) = cluster.get_json(1, &format!("/v1/accounts/{shop}")).await;
    assert_eq!(shop_account["balance"], "50.00", "{shop_account}");
    let (_, kiosk_account) = cluster.get_json(2, &format!("/v1/accounts/{kiosk}")).await;
    assert_eq!(kiosk_account["balance"], "0.00", "{kiosk_account}");
}

/// Delayed transfers (mode delayed, 2 or 24 hours): scheduled with their arrival time, the
/// money out of the payer's available balance; revoked by the payer through another node after
/// the payer shard's leader is killed (a retry answers the same); never captured early; a
/// plain hold is not revoked. (Arrival itself, by the log's expiry sweep, is covered by the
/// ledger's tests and the simulator, whose delays are short.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_transfers_are_scheduled_and_revocable_through_a_failover() {
    let mut cluster = TestCluster::start(3, SHARDS).await;
    let placement = Placement::new(vec![1, 2, 3], SHARDS);
    let shard = |name: &str| placement.shard_of(&AccountId::new(name).unwrap());
    let shop = (0..).map(|n| format!("shop-{n}")).find(|name| shard(name) != shard("alice")).unwrap();
    for (id, kind) in [("bank", "settlement"), ("alice", "customer"), (shop.as_str(), "merchant")] {
        cluster.create_account(1, id, "USD", kind).await;
    }
    let fund = json!({ "id": "fund", "from": "bank", "to": "alice", "amount": "100.00", "currency": "USD" });
    assert_eq!(cluster.post_settled(1, "/v1/transfers", &fund).await.0, 201);
    let delayed = |id: &str, hours: u64| json!({ "id": id, "from": "alice", "to": shop, "amount": "40.00", "currency": "USD", "mode": "delayed", "delay_hours": hours });
    let (status, body) = cluster.post_json(1, "/v1/transfers", &delayed("d0", 3)).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("delay_hours")), "{body}");

    let (status, body) = cluster.post_settled(1, "/v1/transfers", &delayed("d1", 2)).await;
    assert_eq!((status, body["status"].as_str()), (201, Some("scheduled")), "{body}");
    let arrives =
        time::OffsetDateTime::parse(body["arrives_at"].as_str().expect("arrives_at"), &time::format_description::well_known::Rfc3339)
            .expect("RFC 3339");
    let in_two_hours = time::OffsetDateTime::now_utc() + time::Duration::hours(2);
    assert!((arrives - in_two_hours).abs() < time::Duration::minutes(1), "arrives {arrives}, expected about {in_two_hours}");
    assert!(body.get("hold").is_none(), "a delayed transfer is not shown as a hold: {body}");
    let (_, alice) = cluster.get_json(2, "/v1/accounts/alice").await;
    assert_eq!((alice["balance"].as_str(), alice["available"].as_str()), (Some("100.00"), Some("60.00")), "{alice}");
    let (status, body) = cluster.post_settled(2, "/v1/transfers/d1/capture", &json!({})).await;
    assert_eq!((status, common::error_code(&body)), (409, "transfer_not_a_hold"), "{body}");

    // The payer shard's leader dies; the payer revokes through a survivor.
    let view = cluster.cluster_view(1).await;
    let leader = view["shards"][usize::try_from(shard("alice")).unwrap()]["leader"].as_u64().expect("a leader");
    cluster.kill(leader);
    let survivor = (1..=3).find(|node| *node != leader).unwrap();
    let (status, body) = cluster.post_settled(survivor, "/v1/transfers/d1/revoke", &json!({})).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("revoked")), "{body}");
    let (status, body) = cluster.post_settled(survivor, "/v1/transfers/d1/revoke", &json!({})).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("revoked")), "a retry answers the same: {body}");
    let hold = json!({ "id": "h1", "from": "alice", "to": shop, "amount": "5.00", "currency": "USD", "mode": "hold" });
    assert_eq!(cluster.post_settled(survivor, "/v1/transfers", &hold).await.0, 201);
    let (status, body) = cluster.post_settled(survivor, "/v1/transfers/h1/revoke", &json!({})).await;
    assert_eq!((status, common::error_code(&body)), (409, "transfer_not_delayed"), "{body}");
    let (status, body) = cluster.post_settled(survivor, "/v1/transfers/fund/revoke", &json!({})).await;
    assert_eq!((status, common::error_code(&body)), (409, "transfer_not_delayed"), "a plain transfer: {body}");
    let (_, alice) = cluster.get_json(survivor, "/v1/accounts/alice").await;
    assert_eq!((alice["balance"].as_str(), alice["available"].as_str()), (Some("100.00"), Some("95.00")), "{alice}");
    let (_, shop_account) = cluster.get_json(survivor, &format!("/v1/accounts/{shop}")).await;
    assert_eq!(shop_account["balance"], "0.00", "{shop_account}");
}
