//! Customers, KYC classes and risk limits on real processes: personal data sealed on disk and
//! opened through any node; a customer's accounts placed on its shard; an unverified customer
//! refused; a class I customer stopped at its lifetime limit with what remains; the limits
//! changed on every shard by `PUT /v1/risk/limits`; the counters and limits still in force
//! after the customer shard's leader is killed.

mod common;

use common::TestCluster;
use serde_json::{json, Value};
use settle_cluster::ids::{AccountId, CustomerId};
use settle_cluster::placement::Placement;
use std::time::{Duration, Instant};

const SHARDS: u32 = 4;
const NAME: &str = "Zhang Wei-Settle-Test";

fn pay(id: &str, from: &str, to: &str, amount: &str) -> Value {
    json!({ "id": id, "from": from, "to": to, "amount": amount, "currency": "CNY" })
}

/// Every file under `dir`, recursively.
fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("readable dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files(&path));
        } else {
            found.push(path);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_classes_and_limits_hold_through_a_failover() {
    let mut cluster = TestCluster::start(3, SHARDS).await;
    let placement = Placement::new(vec![1, 2, 3], SHARDS);
    let home = placement.customer_shard_of(&CustomerId::new("cust-1").unwrap());
    assert_eq!(placement.shard_of(&AccountId::new("cust-1::wallet").unwrap()), home);

    // Registration: validated, idempotent, personal data shown decrypted.
    let customer = json!({
        "id": "cust-1",
        "name": NAME,
        "id_document": { "type": "national_id", "number": "110101199003070011" },
        "phone": "+86 138 0000 0000",
    });
    let (status, body) = cluster.post_json(1, "/v1/customers", &json!({ "id": "a::b", "name": "x" })).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("id")), "{body}");
    let (status, body) = cluster.post_settled(1, "/v1/customers", &customer).await;
    assert_eq!((status, body["name"].as_str(), body["kyc_class"].clone()), (201, Some(NAME), Value::Null), "{body}");
    let (status, body) = cluster.post_settled(2, "/v1/customers", &customer).await;
    assert_eq!(status, 200, "the same registration again: {body}");
    let mut other = customer.clone();
    other["name"] = json!("Someone Else");
    let (status, body) = cluster.post_settled(3, "/v1/customers", &other).await;
    assert_eq!((status, common::error_code(&body)), (409, "customer_conflict"), "{body}");

    // Accounts: a customer's are named <customer>::<name>; a missing customer is refused.
    let (status, body) = cluster.post_json(1, "/v1/accounts", &json!({ "id": "wallet-x", "currency": "CNY", "customer": "cust-1" })).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("id")), "{body}");
    let (status, body) = cluster.post_settled(1, "/v1/accounts", &json!({ "id": "ghost::wallet", "currency": "CNY" })).await;
    assert_eq!((status, common::error_code(&body)), (422, "customer_not_found"), "{body}");
    let (status, body) =
        cluster.post_settled(1, "/v1/accounts", &json!({ "id": "cust-1::wallet", "currency": "CNY", "customer": "cust-1" })).await;
    assert_eq!((status, body["customer"].as_str()), (201, Some("cust-1")), "{body}");
    cluster.create_account(1, "bank", "CNY", "settlement").await;
    cluster.create_account(1, "shop", "CNY", "merchant").await;
    assert_eq!(cluster.post_settled(1, "/v1/transfers", &pay("fund", "bank", "cust-1::wallet", "5000.00")).await.0, 201);

    // Unverified: nothing may be paid (a stored rejection with the limit named).
    let (status, body) = cluster.post_settled(2, "/v1/transfers", &pay("p0", "cust-1::wallet", "shop", "1.00")).await;
    assert_eq!(
        (status, common::error_code(&body), body["error"]["details"]["limit"].as_str()),
        (422, "limit_exceeded", Some("kyc_unverified")),
        "{body}"
    );

    // One non-face-to-face check: class I, 1,000 CNY since registration.
    let check = json!({ "id": "v1", "channel": "bank_card", "reference": "bank-answer-77" });
    let (status, body) = cluster.post_settled(2, "/v1/customers/cust-1/verifications", &check).await;
    assert_eq!((status, body["kyc_class"].as_str()), (201, Some("I")), "{body}");
    let (status, body) = cluster.post_json(2, "/v1/customers/cust-1/verifications", &json!({ "id": "v2", "channel": "telepathy" })).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("channel")), "{body}");
    assert_eq!(cluster.post_settled(3, "/v1/transfers", &pay("p1", "cust-1::wallet", "shop", "600.00")).await.0, 201);
    let (status, body) = cluster.post_settled(3, "/v1/transfers", &pay("p2", "cust-1::wallet", "shop", "500.00")).await;
    assert_eq!(
        (status, common::error_code(&body), body["error"]["details"]["limit"].as_str(), body["error"]["details"]["remaining"].as_str()),
        (422, "limit_exceeded", Some("kyc_class_i_lifetime"), Some("400.00")),
        "{body}"
    );
    let (status, body) = cluster.get_json(1, "/v1/customers/cust-1").await;
    assert_eq!(
        (status, body["limits"]["paid_lifetime"].as_str(), body["limits"]["remaining"].as_str()),
        (200, Some("600.00"), Some("400.00")),
        "{body}"
    );

    // Personal data is on disk only sealed: no file of any node holds the name in clear.
    for node in 1..=3 {
        for path in files(&cluster.data_dir(node)) {
            let bytes = std::fs::read(&path).unwrap_or_default();
            assert!(!bytes.windows(NAME.len()).any(|window| window == NAME.as_bytes()), "{} holds the name in clear", path.display());
        }
    }

    // The operator raises the class I limit: every shard takes the new version.
    let (status, body) = cluster.put_json(1, "/v1/risk/limits", &json!({ "class_i_lifetime": "1500.00" })).await;
    assert_eq!(
        (status, body["version"].as_u64(), body["class_i_lifetime"].as_str(), body["shards"]["applied"].as_u64()),
        (200, Some(1), Some("1500.00"), Some(u64::from(SHARDS))),
        "{body}"
    );
    let (status, body) = cluster.put_json(1, "/v1/risk/limits", &json!({ "utc_offset_minutes": 2000 })).await;
    assert_eq!(status, 400, "{body}");

    // The customer's shard loses its leader: the counters and the limits are in the log.
    let view = cluster.cluster_view(1).await;
    let leader = view["shards"][usize::try_from(home).unwrap()]["leader"].as_u64().expect("a leader");
    cluster.kill(leader);
    let survivor = (1..=3).find(|node| *node != leader).unwrap();
    let (status, body) = cluster.post_settled(survivor, "/v1/transfers", &pay("p3", "cust-1::wallet", "shop", "500.00")).await;
    assert_eq!((status, body["status"].as_str()), (201, Some("posted")), "{body}");
    let (status, body) = cluster.post_settled(survivor, "/v1/transfers", &pay("p4", "cust-1::wallet", "shop", "400.01")).await;
    assert_eq!((status, body["error"]["details"]["remaining"].as_str()), (422, Some("400.00")), "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let (status, body) = cluster.get_json(survivor, "/v1/customers/cust-1").await;
        if status == 200 || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((body["name"].as_str(), body["limits"]["paid_lifetime"].as_str()), (Some(NAME), Some("1100.00")), "{body}");
    let (status, body) = cluster.get_json(survivor, "/v1/risk/limits").await;
    assert_eq!((status, body["version"].as_u64(), body["class_i_lifetime"].as_str()), (200, Some(1), Some("1500.00")), "{body}");
}

/// The verification step on real processes: above the threshold a payment answers 202
/// `requires_verification` with what to prove; the one-time code reaches the delivery service
/// (an operator's read); a wrong password is counted; the right password and code, sent through
/// a survivor after the payer shard's leader is killed, post it; a retry answers the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_above_the_threshold_are_verified_through_a_failover() {
    let mut cluster = TestCluster::start(3, SHARDS).await;
    let placement = Placement::new(vec![1, 2, 3], SHARDS);
    let home = placement.customer_shard_of(&CustomerId::new("cust-2").unwrap());
    let customer = json!({ "id": "cust-2", "name": "Li Na", "id_document": { "type": "passport", "number": "E12345678" } });
    assert_eq!(cluster.post_settled(1, "/v1/customers", &customer).await.0, 201);
    let check = json!({ "id": "v1", "channel": "face_to_face", "reference": "branch-7" });
    assert_eq!(cluster.post_settled(1, "/v1/customers/cust-2/verifications", &check).await.0, 201);
    let (status, body) = cluster.post_json(1, "/v1/customers/cust-2/security", &json!({ "payment_password": "123" })).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("payment_password")), "{body}");
    let (status, body) = cluster.post_settled(2, "/v1/customers/cust-2/security", &json!({ "payment_password": "246810" })).await;
    assert_eq!((status, body["payment_password_set"].as_bool()), (200, Some(true)), "{body}");
    cluster.create_account(1, "cust-2::wallet", "CNY", "customer").await;
    cluster.create_account(1, "bank", "CNY", "settlement").await;
    cluster.create_account(1, "shop", "CNY", "merchant").await;
    assert_eq!(cluster.post_settled(1, "/v1/transfers", &pay("fund", "bank", "cust-2::wallet", "3000.00")).await.0, 201);
    let (status, body) = cluster.put_json(3, "/v1/risk/limits", &json!({ "verification_threshold": "100.00" })).await;
    assert_eq!((status, body["verification_threshold"].as_str()), (200, Some("100.00")), "{body}");

    assert_eq!(cluster.post_settled(1, "/v1/transfers", &pay("small", "cust-2::wallet", "shop", "100.00")).await.0, 201);
    let (status, body) = cluster.post_settled(1, "/v1/transfers", &pay("big", "cust-2::wallet", "shop", "250.00")).await;
    assert_eq!((status, body["status"].as_str()), (202, Some("requires_verification")), "{body}");
    assert_eq!(body["next_action"]["methods"], json!(["payment_password", "otp"]), "{body}");
    assert_eq!(body["next_action"]["url"].as_str(), Some("/v1/transfers/big/verify"), "{body}");
    let (status, again) = cluster.post_settled(2, "/v1/transfers", &pay("big", "cust-2::wallet", "shop", "250.00")).await;
    assert_eq!((status, again["status"].as_str()), (202, Some("requires_verification")), "a retry: {again}");
    let (status, delivery) = cluster.get_json(2, "/v1/transfers/big/verification").await;
    let code = delivery["otp"].as_str().unwrap_or_default().to_string();
    assert_eq!((status, code.len()), (200, 6), "{delivery}");
    let (_, shop) = cluster.get_json(3, "/v1/accounts/shop").await;
    assert_eq!(shop["balance"], "100.00", "nothing moved before the proof: {shop}");

    let wrong = json!({ "payment_password": "000000", "otp": code });
    let (status, body) = cluster.post_settled(3, "/v1/transfers/big/verify", &wrong).await;
    assert_eq!(
        (status, common::error_code(&body), body["error"]["attempts_remaining"].as_u64()),
        (422, "verification_incorrect", Some(4)),
        "{body}"
    );

    let view = cluster.cluster_view(1).await;
    let leader = view["shards"][usize::try_from(home).unwrap()]["leader"].as_u64().expect("a leader");
    cluster.kill(leader);
    let survivor = (1..=3).find(|node| *node != leader).unwrap();
    let right = json!({ "payment_password": "246810", "otp": code });
    let (status, body) = cluster.post_settled(survivor, "/v1/transfers/big/verify", &right).await;
    assert_eq!((status, body["status"].as_str()), (201, Some("posted")), "{body}");
    let (status, body) = cluster.post_settled(survivor, "/v1/transfers/big/verify", &right).await;
    assert_eq!((status, body["status"].as_str()), (201, Some("posted")), "a retry answers the same: {body}");
    let (status, body) = cluster.post_settled(survivor, "/v1/transfers/small/verify", &right).await;
    assert_eq!((status, common::error_code(&body)), (409, "transfer_not_awaiting_verification"), "{body}");
    let (_, shop) = cluster.get_json(survivor, "/v1/accounts/shop").await;
    assert_eq!(shop["balance"], "350.00", "{shop}");
}
