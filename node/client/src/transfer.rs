//! A tool's transfer between two of its own USD accounts, named by their index in its account
//! list (the bench's and the drills' workloads, and the history they are checked against).

use crate::amount::cents;
use crate::api::TransferRequest;

/// A transfer between two of a tool's accounts (indexes into its account list).
#[derive(Debug, Clone)]
pub struct Transfer {
    pub id: String,
    pub from: usize,
    pub to: usize,
    pub amount: i128,
    /// The payer's shard (where the transfer is recorded).
    pub shard: u32,
}

impl Transfer {
    /// The request body of POST /v1/transfers (and of one batch item), in USD.
    pub fn body(&self, accounts: &[String]) -> TransferRequest {
        TransferRequest {
            amount: cents(self.amount),
            currency: "USD".to_string(),
            from: accounts[self.from].clone(),
            id: self.id.clone(),
            to: accounts[self.to].clone(),
        }
    }
}
