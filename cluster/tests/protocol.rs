//! Property tests of the transfer protocol at the ledger level: the id's reservation on its home
//! shard, prepare on the payer shard, one decision per id on the payee shard, finalize on the
//! payer, with a message bag that delivers in any order, duplicates, drops, misdelivers
//! decisions to other shards, and coordinators that re-drive (and prevent) at any moment, as a
//! new leader would after a crash. Ids are reused with other payers, payees and amounts.

use proptest::prelude::*;
use settle_cluster::ids::{AccountId, ShardId, TransferId};
use settle_cluster::ledger::*;
use settle_cluster::money::Currency;
use settle_cluster::placement::{home_shard_of, shard_of};
use std::collections::BTreeMap;

const SHARDS: u32 = 3;

#[derive(Debug, Clone)]
enum Message {
    /// The origin's first step: reserve the id on its home shard (then send the transfer).
    Reserve(TransferCmd),
    /// The origin's second step: the transfer, to its payer shard.
    Transfer(TransferCmd),
    Credit(CreditCmd),
    Decision {
        payer_shard: ShardId,
        finalize: FinalizeCmd,
    },
}

#[derive(Debug, Clone)]
enum Step {
    /// A client transfer between two of the accounts (ids are reused on purpose).
    Submit {
        id: u8,
        from: u8,
        to: u8,
        amount: i128,
    },
    /// Deliver the message at this position of the bag; keep a copy when `duplicate`.
    Deliver {
        pick: u16,
        duplicate: bool,
    },
    Drop {
        pick: u16,
    },
    /// Deliver a decision to another shard than its payer's (a misrouted or forged message).
    Misdeliver {
        pick: u16,
        shard: u8,
    },
    /// A (new) coordinator of this shard re-sends every pending transfer's credit request.
    Redrive {
        shard: u8,
        prevent: bool,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0u8..24, 0u8..6, 0u8..6, 1i128..120).prop_map(|(id, from, to, amount)| Step::Submit { id, from, to, amount }),
        6 => (any::<u16>(), prop::bool::weighted(0.2)).prop_map(|(pick, duplicate)| Step::Deliver { pick, duplicate }),
        1 => any::<u16>().prop_map(|pick| Step::Drop { pick }),
        1 => (any::<u16>(), 0u8..3).prop_map(|(pick, shard)| Step::Misdeliver { pick, shard }),
        1 => (0u8..3, prop::bool::weighted(0.3)).prop_map(|(shard, prevent)| Step::Redrive { shard, prevent }),
    ]
}

struct World {
    ledgers: Vec<Ledger>,
    accounts: Vec<AccountId>,
    bag: Vec<Message>,
    usd: Currency,
    clock: u64,
}

impl World {
    fn new() -> World {
        let usd = Currency::from_code("USD").unwrap();
        let mut ledgers: Vec<Ledger> = (0..SHARDS).map(|shard| Ledger::new(shard, SHARDS)).collect();
        // Two accounts per shard, found by name; the first one overall is the settlement account.
        let mut accounts = Vec::new();
        for shard in 0..SHARDS {
            let on_shard =
                (0..).map(|n| AccountId::new(format!("acct-{n}")).unwrap()).filter(|account| shard_of(account, SHARDS) == shard).take(2);
            accounts.extend(on_shard);
        }
        for (n, account) in accounts.iter().enumerate() {
            let kind = if n == 0 { AccountKind::Settlement } else { AccountKind::Customer };
            let shard = shard_of(account, SHARDS);
            let create = Command::CreateAccount(CreateAccount { id: account.clone(), currency: usd, kind });
            ledgers[usize::try_from(shard).unwrap()].apply(0, &create);
        }
        World { ledgers, accounts, bag: Vec::new(), usd, clock: 1 }
    }

    fn ledger(&mut self, shard: ShardId) -> &mut Ledger {
        &mut self.ledgers[usize::try_from(shard).unwrap()]
    }

    fn apply(&mut self, shard: ShardId, command: Command) -> Applied {
        self.clock += 1;
        let clock = self.clock;
        let applied = self.ledger(shard).apply(clock, &command);
        self.ledger(shard).check_invariants();
        applied
    }

    /// A client's transfer reaches an origin: reserve first unless the payer's shard is the
    /// id's home (then the transfer reserves the id itself).
    fn submit(&mut self, id: TransferId, from: &AccountId, to: &AccountId, amount: i128) {
        let command = TransferCmd { id: id.clone(), from: from.clone(), to: to.clone(), amount, currency: self.usd };
        if home_shard_of(&id, SHARDS) == shard_of(from, SHARDS) {
            self.bag.push(Message::Transfer(command));
        } else {
            self.bag.push(Message::Reserve(command));
        }
    }

    fn deliver(&mut self, message: Message) {
        match message {
            Message::Reserve(command) => {
                let reserve = ReserveCmd { id: command.id.clone(), body: command.body() };
                let Applied::Reserve(outcome) = self.apply(home_shard_of(&command.id, SHARDS), Command::Reserve(reserve)) else {
                    panic!("reservation applied as something else");
                };
                if outcome.allows_transfer() {
                    self.bag.push(Message::Transfer(command));
                }
            }
            Message::Transfer(command) => {
                let payer_shard = shard_of(&command.from, SHARDS);
                let id = command.id.clone();
                let applied = self.apply(payer_shard, Command::Transfer(command));
                if applied == Applied::Transfer(TransferOutcome::Recorded(TransferStatus::Pending)) {
                    let record = self.ledger(payer_shard).transfer(&id).unwrap().clone();
                    self.bag.push(Message::Credit(CreditCmd::for_record(&record, AccountKind::Customer, payer_shard, false)));
                }
            }
            Message::Credit(credit) => {
                let payee_shard = shard_of(&credit.to, SHARDS);
                let Applied::Credit(outcome) = self.apply(payee_shard, Command::Credit(credit.clone())) else {
                    panic!("credit applied as something else");
                };
                if let Some(decision) = outcome.decision {
                    let finalize = FinalizeCmd { id: credit.id.clone(), body: credit.body(), decision };
                    self.bag.push(Message::Decision { payer_shard: credit.payer_shard, finalize });
                }
            }
            Message::Decision { payer_shard, finalize } => {
                self.apply(payer_shard, Command::Finalize(finalize));
            }
        }
    }

    fn redrive(&mut self, shard: ShardId, prevent: bool) {
        let pending: Vec<TransferRecord> = self.ledger(shard).pending();
        for record in pending {
            self.bag.push(Message::Credit(CreditCmd::for_record(&record, AccountKind::Customer, shard, prevent)));
        }
    }

    /// Heals everything: re-drive and deliver until nothing is pending or in flight.
    fn settle(&mut self) {
        for _ in 0..20 {
            while let Some(message) = self.bag.pop() {
                self.deliver(message);
            }
            let pending: usize = self.ledgers.iter().map(Ledger::pending_count).sum();
            if pending == 0 {
                return;
            }
            for shard in 0..SHARDS {
                self.redrive(shard, false);
            }
        }
        panic!("transfers still pending after healing");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// Under any delivery order, duplication, loss and re-drive: money is conserved (in flight
    /// counted), nobody is overdrawn, each id has one payer record and at most one decision,
    /// every finalized payer record copies its decision, and balances equal funding plus the
    /// posted transfers.
    #[test]
    fn cross_shard_protocol_is_safe_under_any_interleaving(steps in prop::collection::vec(step(), 1..160)) {
        let mut world = World::new();
        // Fund every customer from the settlement account.
        let accounts = world.accounts.clone();
        for (n, account) in accounts.iter().enumerate().skip(1) {
            world.submit(TransferId::new(format!("fund-{n}")).unwrap(), &accounts[0], account, 200);
            world.settle();
        }
        world.settle();
        for step in steps {
            match step {
                Step::Submit { id, from, to, amount } => {
                    let (from, to) = (usize::from(from), usize::from(to));
                    if from != to {
                        world.submit(TransferId::new(format!("t{id}")).unwrap(), &accounts[from], &accounts[to], amount);
                    }
                }
                Step::Deliver { pick, duplicate } if !world.bag.is_empty() => {
                    let index = usize::from(pick) % world.bag.len();
                    let message = if duplicate { world.bag[index].clone() } else { world.bag.remove(index) };
                    world.deliver(message);
                }
                Step::Drop { pick } if !world.bag.is_empty() => {
                    let index = usize::from(pick) % world.bag.len();
                    world.bag.remove(index);
                }
                Step::Misdeliver { pick, shard } if !world.bag.is_empty() => {
                    let index = usize::from(pick) % world.bag.len();
                    if let Message::Decision { finalize, .. } = world.bag[index].clone() {
                        world.deliver(Message::Decision { payer_shard: ShardId::from(shard), finalize });
                    }
                }
                Step::Redrive { shard, prevent } => world.redrive(ShardId::from(shard), prevent),
                _ => {}
            }
            // Conservation at every step: balances plus credits not yet finalized on the payer.
            let inflow: i128 = world.ledgers.iter().map(|l| l.net_inflow().values().sum::<i128>()).sum();
            let credited_unfinalized: i128 = world
                .ledgers
                .iter()
                .flat_map(|l| l.credits())
                .filter(|credit| credit.decision == Decision::Credited)
                .filter(|credit| world.ledgers[usize::try_from(credit.payer_shard).unwrap()].transfer(&credit.id).unwrap().status == TransferStatus::Pending)
                .map(|credit| credit.amount)
                .sum();
            prop_assert_eq!(inflow, credited_unfinalized);
        }
        world.settle();

        let mut expected: BTreeMap<AccountId, i128> = accounts.iter().map(|a| (a.clone(), 0)).collect();
        let mut posted_bodies: BTreeMap<TransferId, TransferBody> = BTreeMap::new();
        for ledger in &world.ledgers {
            for record in ledger.transfers() {
                // Every stored record is the body its id is reserved for on the id's home shard.
                let home = &world.ledgers[usize::try_from(home_shard_of(&record.id, SHARDS)).unwrap()];
                prop_assert_eq!(home.reservation(&record.id), Some(record.body()), "{} stored without its reservation", record.id);
                let payee_shard = shard_of(&record.to, SHARDS);
                let credit = world.ledgers[usize::try_from(payee_shard).unwrap()].credit(&record.id);
                prop_assert!(credit.as_ref().is_none_or(|c| c.body() == record.body()), "{}: the payee decided on another body", record.id);
                let decision = credit.map(|c| c.decision.clone());
                if record.cross_shard {
                    match (&record.status, &decision) {
                        (TransferStatus::Posted, Some(Decision::Credited)) => {}
                        (TransferStatus::Rejected(code), Some(Decision::Refused(refused))) => prop_assert_eq!(code, refused),
                        // Refused at prepare (funds, payer): the payee was never asked.
                        (TransferStatus::Rejected(_), None) => {}
                        (status, decision) => prop_assert!(false, "{} finalized {status:?} with decision {decision:?}", record.id),
                    }
                }
                if record.status == TransferStatus::Posted {
                    let earlier = posted_bodies.insert(record.id.clone(), record.body());
                    prop_assert!(earlier.is_none(), "{} posted twice", record.id);
                    *expected.get_mut(&record.from).unwrap() -= record.amount;
                    *expected.get_mut(&record.to).unwrap() += record.amount;
                }
            }
        }
        let mut total = 0;
        for ledger in &world.ledgers {
            prop_assert_eq!(ledger.pending_count(), 0);
            for account in ledger.accounts() {
                prop_assert_eq!(account.balance, expected[&account.id], "balance of {}", account.id);
                total += account.balance;
            }
        }
        prop_assert_eq!(total, 0);
    }
}
