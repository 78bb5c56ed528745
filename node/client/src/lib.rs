//! `settle-client`: a client of Settle's HTTP API v1, for tests, tools and users.
//!
//! - `api` — the JSON shapes the server writes and reads (`ClusterView`, `AccountView`,
//!   `TransferView`, `ErrorBody`, `TransferRequest`, ...). The server builds its answers from
//!   these types, so a client reading them reads exactly what the server wrote.
//! - `classify` — what one answer to a transfer tells a client (`Answer`): posted, final with its
//!   code, or unknown (408, 429 and 5xx), in which case the client retries with the same id.
//! - Calls that wait out failovers by trying every node in turn, each within a bound:
//!   `post_until`, `fund`, `balance`, `final_status`, `cluster_view`, and `node_urls` (node id →
//!   URL, so a list of nodes may be given in any order).
//! - USD amounts as the API writes them (`cents`, `parse_cents`) and a tool's `Transfer` between
//!   two of its own accounts.
//!
//! It depends on neither the server nor the cluster core: a client pulls in no Raft.

pub mod api;

mod amount;
mod answer;
mod calls;
mod nodes;
mod transfer;

pub use amount::{cents, parse_cents};
pub use answer::{classify, classify_item, Answer};
pub use calls::{balance, cluster_view, create_accounts, final_status, fund, post_until};
pub use nodes::{match_advertised, node_urls};
pub use transfer::Transfer;
