//! Issue 9 on real processes: a transfer id is a global idempotency key. Reusing an id with
//! another payer (same or another shard), payee or amount — one after the other, in a batch,
//! or racing through two nodes at once — is refused with a final `422 idempotency_key_reused`
//! and moves nothing, and the refusal and the balances survive a restart of every node.

mod common;

use common::TestCluster;
use serde_json::{json, Value};
use settle_cluster::ids::{AccountId, TransferId};
use settle_cluster::placement::{home_shard_of, shard_of};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const SHARDS: u32 = 64;

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

fn shard(account: &str) -> u32 {
    shard_of(&AccountId::new(account).expect("valid"), SHARDS)
}

/// The first name `prefix-N` whose shard is not in `taken`.
fn account_off(prefix: &str, taken: &BTreeSet<u32>) -> String {
    (0..).map(|n| format!("{prefix}-{n}")).find(|name| !taken.contains(&shard(name))).expect("some shard is free")
}

/// Posts a transfer until the answer is final (anything but 408, 429 and 5xx), as a client that
/// retries an unknown outcome with the same id and body does.
async fn post_final(cluster: &TestCluster, node: u64, path: &str, body: &Value) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, reply) = cluster.post_json(node, path, body).await;
        if status != 408 && status != 429 && status < 500 {
            return (status, reply);
        }
        assert!(Instant::now() < deadline, "{body}: still {status} {reply}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn balance(cluster: &TestCluster, node: u64, account: &str) -> String {
    let (status, body) = cluster.get_json(node, &format!("/v1/accounts/{account}")).await;
    assert_eq!(status, 200, "{account}: {body}");
    body["balance"].as_str().expect("balance").to_string()
}

/// Every node reads each account's expected balance (in cents), and they sum to zero.
async fn check_balances(cluster: &TestCluster, expected: &[(String, i64)]) {
    for node in 1..=3 {
        let mut sum = 0;
        for (account, cents) in expected {
            let sign = if *cents < 0 { "-" } else { "" };
            let text = format!("{sign}{}.{:02}", cents.abs() / 100, cents.abs() % 100);
            assert_eq!(balance(cluster, node, account).await, text, "{account} through node {node}");
            sum += cents;
        }
        assert_eq!(sum, 0, "money is conserved");
    }
}

fn transfer(id: &str, from: &str, to: &str, amount: &str) -> Value {
    json!({ "id": id, "from": from, "to": to, "amount": amount, "currency": "USD" })
}

/// The reproduction of the issue and its variants, one request after the other, then racing
/// through two nodes; every node agrees on the balances before and after a full restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_transfer_id_never_moves_money_twice() {
    let mut cluster = TestCluster::start(3, SHARDS).await;
    // p1, p2 and q on three different shards, none of them the home shard of "dup" (so the id
    // is reserved remotely); p1b shares p1's shard; r is a fourth payee.
    let mut taken: BTreeSet<u32> = [home_shard_of(&TransferId::new("dup").unwrap(), SHARDS)].into();
    let p1 = account_off("p1", &taken);
    taken.insert(shard(&p1));
    let p2 = account_off("p2", &taken);
    taken.insert(shard(&p2));
    let q = account_off("q", &taken);
    taken.insert(shard(&q));
    let r = account_off("r", &taken);
    let p1b = (0..).map(|n| format!("p1b-{n}")).find(|name| shard(name) == shard(&p1)).expect("a same-shard payer");
    cluster.create_account(1, "bank", "USD", "settlement").await;
    for account in [&p1, &p2, &p1b, &q, &r] {
        cluster.create_account(2, account, "USD", "customer").await;
    }
    for payer in [&p1, &p2, &p1b] {
        let (status, reply) = post_final(&cluster, 3, "/v1/transfers", &transfer(&format!("fund-{payer}"), "bank", payer, "10.00")).await;
        assert_eq!(status, 201, "{reply}");
    }

    // The issue's reproduction: the first body posts, the second payer's is refused.
    let (status, reply) = post_final(&cluster, 1, "/v1/transfers", &transfer("dup", &p1, &q, "1.00")).await;
    assert_eq!((status, reply["status"].as_str()), (201, Some("posted")), "{reply}");
    let (status, reply) = post_final(&cluster, 2, "/v1/transfers", &transfer("dup", &p2, &q, "5.00")).await;
    assert_eq!((status, error_code(&reply)), (422, "idempotency_key_reused"), "{reply}");
    // Every other way of changing the body is refused too, through any node; the same body
    // replays the stored outcome.
    let variants = [
        transfer("dup", &p1b, &q, "1.00"),
        transfer("dup", &p1, &r, "1.00"),
        transfer("dup", &p1, &q, "1.01"),
        transfer("dup", &p2, &r, "1.00"),
        json!({ "id": "dup", "from": p1, "to": q, "amount": "1.00", "currency": "EUR" }),
    ];
    for (n, body) in variants.iter().enumerate() {
        let node = u64::try_from(n % 3).unwrap() + 1;
        let (status, reply) = post_final(&cluster, node, "/v1/transfers", body).await;
        assert_eq!((status, error_code(&reply)), (422, "idempotency_key_reused"), "{body}: {reply}");
    }
    let (status, reply) = post_final(&cluster, 3, "/v1/transfers", &transfer("dup", &p1, &q, "1.00")).await;
    assert_eq!((status, reply["status"].as_str()), (201, Some("posted")), "the same body replays: {reply}");
    // A batch that reuses the id for another payer: that item is refused, the rest post.
    let batch = json!({ "transfers": [transfer("dup", &p2, &q, "2.00"), transfer("fresh-1", &p2, &q, "2.00")] });
    let (status, reply) = post_final(&cluster, 2, "/v1/transfers/batch", &batch).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["results"][0]["status"], 422, "{reply}");
    assert_eq!(error_code(&reply["results"][0]), "idempotency_key_reused", "{reply}");
    assert_eq!(reply["results"][1]["status"], 201, "{reply}");

    // Races: each round sends one id with two payers through two nodes at the same moment.
    let rounds = 20;
    let mut posted_by_p1 = 0u32;
    for round in 0..rounds {
        let id = format!("race-{round}");
        let first = transfer(&id, &p1, &q, "0.01");
        let second = transfer(&id, &p2, &q, "0.02");
        let (a, b) = tokio::join!(post_final(&cluster, 1, "/v1/transfers", &first), post_final(&cluster, 2, "/v1/transfers", &second));
        let outcomes = [(a.0, error_code(&a.1).to_string()), (b.0, error_code(&b.1).to_string())];
        let posted: Vec<usize> = (0..2).filter(|k| outcomes[*k].0 == 201).collect();
        assert_eq!(posted.len(), 1, "round {round}: exactly one body posts: {outcomes:?}");
        let loser = 1 - posted[0];
        assert_eq!(outcomes[loser], (422, "idempotency_key_reused".to_string()), "round {round}");
        if posted[0] == 0 {
            posted_by_p1 += 1;
        }
    }
    let posted_by_p2 = rounds - posted_by_p1;
    println!("races: {posted_by_p1} won by the payer through node 1, {posted_by_p2} by the payer through node 2");

    // Balances in cents: funding 10.00 each; dup 1.00 p1 -> q; fresh-1 2.00 p2 -> q; races.
    let expected = [
        (p1.clone(), 1000 - 100 - i64::from(posted_by_p1)),
        (p2.clone(), 1000 - 200 - 2 * i64::from(posted_by_p2)),
        (p1b.clone(), 1000),
        (q.clone(), 100 + 200 + i64::from(posted_by_p1) + 2 * i64::from(posted_by_p2)),
        (r.clone(), 0),
        ("bank".to_string(), -3000),
    ];
    check_balances(&cluster, &expected).await;

    // Everything above survives a restart of every node.
    for node in 1..=3 {
        cluster.terminate(node);
    }
    for node in 1..=3 {
        cluster.spawn(node);
    }
    for node in 1..=3 {
        cluster.wait_ready(node, Duration::from_secs(60)).await;
    }
    check_balances(&cluster, &expected).await;
    let (status, reply) = post_final(&cluster, 1, "/v1/transfers", &transfer("dup", &p2, &q, "5.00")).await;
    assert_eq!((status, error_code(&reply)), (422, "idempotency_key_reused"), "after restart: {reply}");
}
