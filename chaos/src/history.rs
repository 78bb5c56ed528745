//! The history checkers of the tools that drive a real cluster (`drill`, `bench`): what their
//! clients were told about each transfer (`ClientHistory`), held against what the cluster reads
//! back through the HTTP API once the load has stopped (`ReadBack`). `check` returns what it
//! found (`Findings`), and `Findings::verdicts` the named verdicts.
//!
//! This is the outside view of the simulator's `checkers.rs`, under the same names. The
//! simulator sees every replica's ledger and checks invariants inside the cluster; a drill or a
//! bench sees only the API, so here each invariant is what a client can observe:
//!
//! - `acknowledged_durable` (RPO 0): every transfer a client was told is posted reads back posted.
//! - `rejected_never_posted`: a transfer answered with a final 4xx never reads back posted.
//! - `conservation`: the tool's accounts and its bank (the settlement account that funded them)
//!   sum to zero.
//! - `at_most_once`: every account's balance is its funding plus the transfers that read back
//!   posted, each counted once; a transfer applied twice, or money moved without a posted
//!   record, shows as a difference.
//! - `no_overdraft`: no customer account reads back below zero.
//! - `linearizable_reads`: found by the tool's reader as its reads return (an acknowledged
//!   transfer read back as not posted) and recorded in the history; this module reports them.
//!
//! `one_body_per_id`, `liveness` and `replicas_converge` need the inside view and stay the
//! simulator's; here, a transfer whose id reads back holding another body is "reused"
//! (`settle_client::final_status`) and never counts as posted.

use futures_util::stream::{self, StreamExt, TryStreamExt};
use settle_client::{balance, final_status, Transfer};
use std::collections::BTreeMap;

/// The read-back keeps this many reads in flight (answers are taken in order).
pub const READS_IN_FLIGHT: usize = 32;

/// What a client was told about one transfer, once it stopped asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Told {
    /// 201: posted.
    Posted,
    /// A final 4xx, with its error code: definitely not applied.
    Rejected(String),
    /// No definitive answer (the client gave up retrying): the read-back decides.
    Unknown,
}

impl Told {
    /// How reports name it: `posted`, the rejection's code, or `unknown`.
    pub fn label(&self) -> &str {
        match self {
            Told::Posted => "posted",
            Told::Rejected(code) => code,
            Told::Unknown => "unknown",
        }
    }
}

/// The client side of a run: the tool's accounts and what its clients were told.
#[derive(Debug, Clone, Default)]
pub struct ClientHistory {
    /// The settlement account that funded every account.
    pub bank: String,
    pub accounts: Vec<String>,
    /// What the bank paid each account before the load started, in cents.
    pub funding_minor: i128,
    /// The transfers kept one by one, with what their client was told; each is read back.
    pub transfers: Vec<(Transfer, Told)>,
    /// Per account (as `accounts`): the net of the transfers told posted that were not kept one
    /// by one, in cents. A load generator sends too many to read each back, so these count as
    /// posted; if one was not, `at_most_once` and `conservation` find the difference. Empty
    /// when every transfer is kept.
    pub acknowledged_net_minor: Vec<i128>,
    /// What the tool's reader found as its reads returned (`linearizable_reads`).
    pub read_anomalies: Vec<String>,
}

/// The cluster's side: what it reads back once the load has stopped.
#[derive(Debug, Clone, Default)]
pub struct ReadBack {
    /// Per kept transfer (as `ClientHistory::transfers`): `final_status`'s answer.
    pub statuses: Vec<String>,
    pub bank_minor: i128,
    /// Per account (as `ClientHistory::accounts`), in cents.
    pub balances_minor: Vec<i128>,
}

impl ReadBack {
    /// Reads every kept transfer's final status, then the bank's and every account's balance,
    /// each read retrying across nodes through failovers (`settle_client`).
    pub async fn read(client: &reqwest::Client, urls: &[String], history: &ClientHistory) -> anyhow::Result<ReadBack> {
        let lookups = history.transfers.iter().map(|(transfer, _)| final_status(client, urls, transfer, &history.accounts));
        let statuses: Vec<String> = stream::iter(lookups).buffered(READS_IN_FLIGHT).try_collect().await?;
        let bank_minor = balance(client, urls, &history.bank).await?;
        let reads = history.accounts.iter().map(|account| balance(client, urls, account));
        let balances_minor: Vec<i128> = stream::iter(reads).buffered(READS_IN_FLIGHT).try_collect().await?;
        Ok(ReadBack { statuses, bank_minor, balances_minor })
    }
}

/// An account whose balance is not what the history says it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub account: String,
    pub got_minor: i128,
    pub expected_minor: i128,
}

/// What the checkers found; `verdicts` names them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    /// Transfers told posted that do not read back posted (`acknowledged_durable`).
    pub acknowledged_lost: Vec<String>,
    /// Transfers told rejected that read back posted, with the code the client was given
    /// (`rejected_never_posted`).
    pub rejected_posted: Vec<(String, String)>,
    /// The bank plus every account, in cents (`conservation`: zero).
    pub total_minor: i128,
    /// The bank, when it does not hold minus what it paid out in funding.
    pub bank_mismatch: Option<Mismatch>,
    /// Accounts whose balance is not their funding plus their posted transfers (`at_most_once`).
    pub mismatched: Vec<Mismatch>,
    /// Accounts below zero (`no_overdraft`).
    pub overdrawn: Vec<String>,
    /// `linearizable_reads`.
    pub read_anomalies: Vec<String>,
}

/// Holds the cluster's read-back to what the clients were told.
pub fn check(history: &ClientHistory, read_back: &ReadBack) -> Findings {
    assert_eq!(read_back.statuses.len(), history.transfers.len(), "one status per kept transfer");
    assert_eq!(read_back.balances_minor.len(), history.accounts.len(), "one balance per account");
    let mut findings = Findings { read_anomalies: history.read_anomalies.clone(), ..Findings::default() };
    let mut net = vec![0i128; history.accounts.len()];
    for (index, acknowledged) in history.acknowledged_net_minor.iter().enumerate() {
        net[index] += acknowledged;
    }
    for ((transfer, told), status) in history.transfers.iter().zip(&read_back.statuses) {
        let posted = status == "posted";
        match told {
            Told::Posted if !posted => findings.acknowledged_lost.push(transfer.id.clone()),
            Told::Rejected(code) if posted => findings.rejected_posted.push((transfer.id.clone(), code.clone())),
            _ => {}
        }
        if posted {
            net[transfer.from] -= transfer.amount;
            net[transfer.to] += transfer.amount;
        }
    }
    let account_count = i128::try_from(history.accounts.len()).expect("fewer accounts than i128::MAX");
    let bank_expected = -history.funding_minor * account_count;
    if read_back.bank_minor != bank_expected {
        findings.bank_mismatch =
            Some(Mismatch { account: history.bank.clone(), got_minor: read_back.bank_minor, expected_minor: bank_expected });
    }
    findings.total_minor = read_back.bank_minor;
    for (index, (account, got)) in history.accounts.iter().zip(&read_back.balances_minor).enumerate() {
        findings.total_minor += got;
        let expected = history.funding_minor + net[index];
        if *got != expected {
            findings.mismatched.push(Mismatch { account: account.clone(), got_minor: *got, expected_minor: expected });
        }
        if *got < 0 {
            findings.overdrawn.push(account.clone());
        }
    }
    findings
}

impl Findings {
    /// Every named verdict: pass, or what was found. `tool` names the accounts in messages
    /// ("the drill accounts sum to ...").
    pub fn verdicts(&self, tool: &str) -> BTreeMap<&'static str, Result<(), String>> {
        let mut verdicts = BTreeMap::new();
        let durable = if self.acknowledged_lost.is_empty() {
            Ok(())
        } else {
            Err(format!("{} acknowledged transfers are not posted", self.acknowledged_lost.len()))
        };
        verdicts.insert("acknowledged_durable", durable);
        let never_posted = if self.rejected_posted.is_empty() {
            Ok(())
        } else {
            let listed: Vec<String> = self.rejected_posted.iter().map(|(id, code)| format!("{id} ({code})")).collect();
            Err(format!("rejected but posted: {}", listed.join(", ")))
        };
        verdicts.insert("rejected_never_posted", never_posted);
        let conservation =
            if self.total_minor == 0 { Ok(()) } else { Err(format!("the {tool} accounts sum to {}, not 0", self.total_minor)) };
        verdicts.insert("conservation", conservation);
        let at_most_once = if self.mismatched.is_empty() {
            Ok(())
        } else {
            let listed: Vec<String> = self
                .mismatched
                .iter()
                .map(|mismatch| format!("{}: {} != {}", mismatch.account, mismatch.got_minor, mismatch.expected_minor))
                .collect();
            Err(format!("balances differ from posted transfers: {}", listed.join("; ")))
        };
        verdicts.insert("at_most_once", at_most_once);
        let no_overdraft = if self.overdrawn.is_empty() { Ok(()) } else { Err(format!("overdrawn: {}", self.overdrawn.join(", "))) };
        verdicts.insert("no_overdraft", no_overdraft);
        let reads = if self.read_anomalies.is_empty() { Ok(()) } else { Err(self.read_anomalies.join("; ")) };
        verdicts.insert("linearizable_reads", reads);
        verdicts
    }

    /// How many transfers a client was told are posted and are not (the RPO).
    pub fn acknowledged_lost_count(&self) -> u64 {
        u64::try_from(self.acknowledged_lost.len()).unwrap_or(u64::MAX)
    }

    /// The tool's own money adds up: the bank holds exactly what it paid out, every account its
    /// funding plus its posted transfers, and together they sum to zero (`conservation` and
    /// `at_most_once`, the bench's one verdict).
    pub fn conserved(&self) -> bool {
        self.bank_mismatch.is_none() && self.mismatched.is_empty() && self.total_minor == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer(id: &str, from: usize, to: usize, amount: i128) -> Transfer {
        Transfer { id: id.to_string(), from, to, amount, shard: 0 }
    }

    /// Two accounts funded with 100 each by a bank, and the transfers a client sent.
    fn history(transfers: Vec<(Transfer, Told)>) -> ClientHistory {
        ClientHistory {
            bank: "bank".to_string(),
            accounts: vec!["a".to_string(), "b".to_string()],
            funding_minor: 100,
            transfers,
            ..ClientHistory::default()
        }
    }

    fn read_back(statuses: &[&str], balances_minor: Vec<i128>) -> ReadBack {
        ReadBack { statuses: statuses.iter().map(|status| status.to_string()).collect(), bank_minor: -200, balances_minor }
    }

    fn failed(findings: &Findings) -> Vec<&'static str> {
        findings.verdicts("drill").into_iter().filter(|(_, verdict)| verdict.is_err()).map(|(name, _)| name).collect()
    }

    /// A history the cluster agrees with passes every checker: a posted transfer, a rejected one
    /// that stayed unposted, and an unknown one that did post, all in the balances.
    #[test]
    fn a_consistent_history_passes_every_checker() {
        let sent = vec![
            (transfer("t1", 0, 1, 30), Told::Posted),
            (transfer("t2", 0, 1, 500), Told::Rejected("insufficient_funds".to_string())),
            (transfer("t3", 1, 0, 10), Told::Unknown),
        ];
        let findings = check(&history(sent), &read_back(&["posted", "rejected", "posted"], vec![80, 120]));
        assert!(failed(&findings).is_empty(), "{findings:?}");
        assert!(findings.conserved());
        assert_eq!(findings.verdicts("drill").len(), 6);
    }

    /// Each broken promise fails its own checker, with the message the drill reports print.
    #[test]
    fn each_broken_promise_fails_its_named_checker() {
        let lost = check(&history(vec![(transfer("t1", 0, 1, 30), Told::Posted)]), &read_back(&["absent"], vec![100, 100]));
        assert_eq!(failed(&lost), ["acknowledged_durable"]);
        assert_eq!(lost.verdicts("drill")["acknowledged_durable"], Err("1 acknowledged transfers are not posted".to_string()));
        assert_eq!(lost.acknowledged_lost_count(), 1);

        let rejected = vec![(transfer("t1", 0, 1, 30), Told::Rejected("insufficient_funds".to_string()))];
        let posted_anyway = check(&history(rejected), &read_back(&["posted"], vec![70, 130]));
        assert_eq!(failed(&posted_anyway), ["rejected_never_posted"]);
        assert_eq!(
            posted_anyway.verdicts("drill")["rejected_never_posted"],
            Err("rejected but posted: t1 (insufficient_funds)".to_string())
        );

        // The payee was credited twice: its balance is off and the money does not add up.
        let twice = check(&history(vec![(transfer("t1", 0, 1, 30), Told::Posted)]), &read_back(&["posted"], vec![70, 160]));
        assert_eq!(failed(&twice), ["at_most_once", "conservation"]);
        assert_eq!(twice.verdicts("bench")["conservation"], Err("the bench accounts sum to 30, not 0".to_string()));
        assert_eq!(twice.verdicts("drill")["at_most_once"], Err("balances differ from posted transfers: b: 160 != 130".to_string()));
        assert!(!twice.conserved());

        let overdrawn = check(&history(vec![(transfer("t1", 0, 1, 130), Told::Posted)]), &read_back(&["posted"], vec![-30, 230]));
        assert_eq!(failed(&overdrawn), ["no_overdraft"]);

        let reads = ClientHistory { read_anomalies: vec!["linearizable_reads: t1 read back 404".to_string()], ..history(Vec::new()) };
        assert_eq!(failed(&check(&reads, &read_back(&[], vec![100, 100]))), ["linearizable_reads"]);
    }

    /// Transfers told posted but not kept one by one (the bench's bulk) count through their net;
    /// a bank that paid out something else breaks conservation of the tool's money.
    #[test]
    fn acknowledged_net_counts_as_posted_and_the_bank_must_match_the_funding() {
        let bulk = ClientHistory { acknowledged_net_minor: vec![-25, 25], ..history(Vec::new()) };
        let findings = check(&bulk, &read_back(&[], vec![75, 125]));
        assert!(findings.conserved(), "{findings:?}");
        let stale = check(&bulk, &read_back(&[], vec![100, 100]));
        assert_eq!(stale.mismatched.len(), 2);
        assert!(!stale.conserved());
        let bank_off = check(&history(Vec::new()), &ReadBack { bank_minor: -190, ..read_back(&[], vec![100, 100]) });
        assert_eq!(bank_off.bank_mismatch.as_ref().map(|mismatch| mismatch.expected_minor), Some(-200));
        assert!(!bank_off.conserved());
    }
}
