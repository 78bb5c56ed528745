//! Which embedded store should hold the ledger's state? This program writes Settle's pattern —
//! per applied round, for each transfer: a dedup lookup (a miss), the payer and payee account
//! read and rewritten, the transfer record, its id reservation, two history index entries, and
//! each shard's applied index — into each candidate, and prints transfers/s, round latency,
//! read latency, disk, RSS and reopen time. Two durability modes: `sync` (every round fsynced
//! before the next) and `group` (rounds written unsynced, one fsync every 10 rounds: the raft
//! log is the source of truth and is compacted only behind what the store made durable).
//!
//! Usage: settle-engine-bench ENGINE MODE DIR [TRANSFERS]
//!   ENGINE: fjall | redb | sled | rocksdb;  MODE: sync | group

use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::time::{Duration, Instant};

const ACCOUNTS: u64 = 100_000;
const SHARDS: u64 = 64;
const TRANSFERS_PER_ROUND: u64 = 2_048;
const ROUNDS_PER_SYNC_GROUP: u64 = 10;

/// One store under test: batched puts, point gets, an explicit durable point.
trait Store {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>>;
    /// Writes one round atomically; `sync`: durable before returning.
    fn write(&mut self, puts: &[(Vec<u8>, Vec<u8>)], sync: bool);
    /// Makes every earlier write durable.
    fn persist(&mut self);
}

struct Fjall {
    db: fjall::Database,
    ledger: fjall::Keyspace,
}

impl Store for Fjall {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.ledger.get(key).expect("fjall get").map(|value| value.to_vec())
    }
    fn write(&mut self, puts: &[(Vec<u8>, Vec<u8>)], sync: bool) {
        let mut batch = self.db.batch();
        for (key, value) in puts {
            batch.insert(&self.ledger, key.clone(), value.clone());
        }
        batch.commit().expect("fjall commit");
        if sync {
            self.persist();
        }
    }
    fn persist(&mut self) {
        self.db.persist(fjall::PersistMode::SyncAll).expect("fjall persist");
    }
}

const REDB_TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("ledger");

struct Redb {
    db: redb::Database,
}

impl Store for Redb {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        use redb::ReadableDatabase;
        let read = self.db.begin_read().expect("redb read");
        let table = match read.open_table(REDB_TABLE) {
            Ok(table) => table,
            Err(_) => return None,
        };
        table.get(key).expect("redb get").map(|value| value.value().to_vec())
    }
    fn write(&mut self, puts: &[(Vec<u8>, Vec<u8>)], sync: bool) {
        let mut write = self.db.begin_write().expect("redb write");
        let durability = if sync { redb::Durability::Immediate } else { redb::Durability::None };
        write.set_durability(durability).expect("redb durability");
        {
            let mut table = write.open_table(REDB_TABLE).expect("redb table");
            for (key, value) in puts {
                table.insert(key.as_slice(), value.as_slice()).expect("redb insert");
            }
        }
        write.commit().expect("redb commit");
    }
    fn persist(&mut self) {
        let mut write = self.db.begin_write().expect("redb write");
        write.set_durability(redb::Durability::Immediate).expect("redb durability");
        write.commit().expect("redb commit");
    }
}

struct Sled {
    db: sled::Db,
}

impl Store for Sled {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.db.get(key).expect("sled get").map(|value| value.to_vec())
    }
    fn write(&mut self, puts: &[(Vec<u8>, Vec<u8>)], sync: bool) {
        let mut batch = sled::Batch::default();
        for (key, value) in puts {
            batch.insert(key.as_slice(), value.as_slice());
        }
        self.db.apply_batch(batch).expect("sled batch");
        if sync {
            self.persist();
        }
    }
    fn persist(&mut self) {
        // sled 0.34's flush is sync_file_range on Linux, not a full fsync (its issues #1452, #1351).
        self.db.flush().expect("sled flush");
    }
}

struct Rocks {
    db: rocksdb::DB,
}

impl Store for Rocks {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.db.get(key).expect("rocksdb get")
    }
    fn write(&mut self, puts: &[(Vec<u8>, Vec<u8>)], sync: bool) {
        let mut batch = rocksdb::WriteBatch::default();
        for (key, value) in puts {
            batch.put(key, value);
        }
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(sync);
        self.db.write_opt(batch, &options).expect("rocksdb write");
    }
    fn persist(&mut self) {
        self.db.flush_wal(true).expect("rocksdb flush_wal");
    }
}

fn open(engine: &str, dir: &Path) -> Box<dyn Store> {
    match engine {
        "fjall" => {
            let db = fjall::Database::builder(dir).manual_journal_persist(true).open().expect("fjall open");
            let ledger = db.keyspace("ledger", fjall::KeyspaceCreateOptions::default).expect("fjall keyspace");
            Box::new(Fjall { db, ledger })
        }
        "redb" => Box::new(Redb { db: redb::Database::create(dir.join("ledger.redb")).expect("redb open") }),
        "sled" => Box::new(Sled { db: sled::Config::new().path(dir).open().expect("sled open") }),
        "rocksdb" => {
            let mut options = rocksdb::Options::default();
            options.create_if_missing(true);
            options.set_compression_type(rocksdb::DBCompressionType::Lz4);
            Box::new(Rocks { db: rocksdb::DB::open(&options, dir).expect("rocksdb open") })
        }
        other => panic!("unknown engine {other}"),
    }
}

fn account_key(account: u64) -> Vec<u8> {
    let shard = account % SHARDS;
    let mut key = vec![b'a'];
    key.extend_from_slice(&shard.to_be_bytes()[4..]);
    key.extend_from_slice(format!("account-{account:08}").as_bytes());
    key
}

fn account_value(balance: u64, history: u64) -> Vec<u8> {
    let mut value = Vec::with_capacity(64);
    value.extend_from_slice(b"USD customer ");
    value.extend_from_slice(&balance.to_le_bytes());
    value.extend_from_slice(&history.to_le_bytes());
    value.extend_from_slice(&[0u8; 32]);
    value
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(metadata) if metadata.is_dir() => dir_bytes(&entry.path()),
            Ok(metadata) => metadata.len(),
            Err(_) => 0,
        })
        .sum()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (engine, mode, dir) = (args[1].as_str(), args[2].as_str(), Path::new(&args[3]));
    let transfers: u64 = args.get(4).map_or(1_000_000, |text| text.parse().expect("a number"));
    let sync_every_round = mode == "sync";
    std::fs::create_dir_all(dir).expect("dir");
    let mut store = open(engine, dir);

    // Accounts first (the ledger starts with them), made durable.
    let mut rng = SmallRng::seed_from_u64(7);
    let mut puts = Vec::new();
    for account in 0..ACCOUNTS {
        puts.push((account_key(account), account_value(1_000_000, 0)));
        if puts.len() == 10_000 {
            store.write(&puts, false);
            puts.clear();
        }
    }
    store.write(&puts, true);
    store.persist();

    let mut rounds = Histogram::<u64>::new(3).expect("histogram");
    let mut reads = Histogram::<u64>::new(3).expect("histogram");
    let started = Instant::now();
    let mut next_id: u64 = 0;
    let round_count = transfers / TRANSFERS_PER_ROUND;
    for round in 0..round_count {
        let round_started = Instant::now();
        let mut puts = Vec::with_capacity(usize::try_from(TRANSFERS_PER_ROUND * 7).expect("fits"));
        for _ in 0..TRANSFERS_PER_ROUND {
            let id = format!("transfer-{next_id:012}");
            next_id += 1;
            let read_started = Instant::now();
            let transfer_key = [b"t".as_slice(), id.as_bytes()].concat();
            let seen = store.get(&transfer_key);
            assert!(seen.is_none(), "ids are new");
            let (from, to) = (rng.gen_range(0..ACCOUNTS), rng.gen_range(0..ACCOUNTS));
            let payer = store.get(&account_key(from)).expect("payer");
            let payee = store.get(&account_key(to)).expect("payee");
            reads.record(u64::try_from(read_started.elapsed().as_nanos()).unwrap_or(u64::MAX)).expect("record");
            let payer_history = u64::from_le_bytes(payer[21..29].try_into().expect("8 bytes"));
            let payee_history = u64::from_le_bytes(payee[21..29].try_into().expect("8 bytes"));
            puts.push((account_key(from), account_value(999_000, payer_history + 1)));
            puts.push((account_key(to), account_value(1_001_000, payee_history + 1)));
            puts.push((transfer_key, format!("{from}->{to} 12.34 USD posted at {round}").into_bytes()));
            puts.push(([b"r".as_slice(), id.as_bytes()].concat(), format!("{from}->{to} 12.34 USD").into_bytes()));
            puts.push(([account_key(from), payer_history.to_be_bytes().to_vec()].concat(), id.clone().into_bytes()));
            puts.push(([account_key(to), payee_history.to_be_bytes().to_vec()].concat(), id.clone().into_bytes()));
        }
        for shard in 0..SHARDS {
            puts.push((format!("m{shard:04}applied").into_bytes(), round.to_le_bytes().to_vec()));
        }
        store.write(&puts, sync_every_round);
        if !sync_every_round && (round + 1) % ROUNDS_PER_SYNC_GROUP == 0 {
            store.persist();
        }
        rounds.record(u64::try_from(round_started.elapsed().as_micros()).unwrap_or(u64::MAX)).expect("record");
    }
    store.persist();
    let elapsed = started.elapsed();
    let written = round_count * TRANSFERS_PER_ROUND;
    let rss = rss_bytes();
    drop(store);
    let reopen_started = Instant::now();
    let reopened = open(engine, dir);
    let probe = reopened.get(&account_key(1)).is_some();
    let reopen = reopen_started.elapsed();
    println!(
        "{engine:8} {mode:5} {written:>9} transfers in {:>6.1} s: {:>7.0} transfers/s; round p50 {:>7.1} ms p99 {:>7.1} ms max {:>7.1} ms; \
         3 reads p50 {:>5.1} us p99 {:>6.1} us; disk {:>5} MiB; RSS {:>5} MiB; reopen {:>6.1} ms ({probe})",
        elapsed.as_secs_f64(),
        written as f64 / elapsed.as_secs_f64(),
        rounds.value_at_quantile(0.5) as f64 / 1000.0,
        rounds.value_at_quantile(0.99) as f64 / 1000.0,
        rounds.max() as f64 / 1000.0,
        reads.value_at_quantile(0.5) as f64 / 1000.0,
        reads.value_at_quantile(0.99) as f64 / 1000.0,
        dir_bytes(dir) >> 20,
        rss >> 20,
        reopen.as_secs_f64() * 1000.0 + Duration::ZERO.as_secs_f64(),
    );
}
