//! `settle backup` and `settle restore`.
//!
//! A backup directory holds one file per shard (`shard-NNNN.records`: the chunks as the backup
//! endpoint served them, each behind a u32 big-endian length) and `manifest.json`, written last
//! (a directory without one is an unfinished backup): the format, the epoch, the shard count,
//! and per shard its file's SHA-256, size, record count and the cut's applied index and term.
//! `settle restore` checks every file against the manifest before it writes anything.

use anyhow::{bail, Context};
use ring::digest;
use serde::{Deserialize, Serialize};
use settle_actors::identity::{self, DataDirIdentity};
use settle_actors::state_store::StateStore;
use settle_cluster::backup::{check_cut, decode_chunk, restore_shard, BackupChunk};
use settle_cluster::ledger::{keys, Ledger};
use settle_cluster::placement::Placement;
use settle_cluster::store::{Key, KvStore, Value};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The manifest's format (and the shard files').
pub const MANIFEST_FORMAT: u32 = 1;
const MANIFEST: &str = "manifest.json";
/// How long a shard's cut may stay not ready (its leader catching up to the fence) or a call
/// unanswered before the backup gives up.
const RETRY_FOR: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, clap::Args)]
pub struct BackupFlags {
    /// The directory to write the backup to (created; must be empty if it exists).
    #[arg(long)]
    pub to: PathBuf,
    /// Nodes of the cluster (comma-separated or repeated): each call goes to the first that answers.
    #[arg(long, value_delimiter = ',', default_value = "https://127.0.0.1:8080")]
    pub target: Vec<String>,
    /// The cluster CA (PEM) to verify an HTTPS cluster's certificates with.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// An admin API key, or SETTLE_API_KEY.
    #[arg(long, env = "SETTLE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The backup epoch (default: the time in ms; any number above every earlier backup's).
    #[arg(long)]
    pub epoch: Option<u64>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RestoreFlags {
    /// The backup directory (`settle backup --to`).
    #[arg(long)]
    pub from: PathBuf,
    /// Only check the backup: every file against the manifest, every shard's invariants and
    /// the cut across shards, in a scratch store under the system's temporary directory that is
    /// removed afterwards (no node flags needed; nothing is prepared).
    #[arg(long)]
    pub check: bool,
    /// The node to prepare, as `settle start` would be given it (--node-id, --data-dir,
    /// --cluster, --shards or --config): its data dir must not exist or be empty.
    #[command(flatten)]
    pub node: crate::settings::StartFlags,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub settle_version: String,
    pub created_at: String,
    pub epoch: u64,
    pub shards: u32,
    pub files: Vec<ShardFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardFile {
    pub shard: u32,
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
    pub records: u64,
    pub applied_index: u64,
    pub applied_term: u64,
}

pub fn backup(flags: BackupFlags) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run_backup(&flags))
}

struct Cluster {
    client: reqwest::Client,
    targets: Vec<String>,
}

impl Cluster {
    /// Sends a request built for each target in turn until one answers (any HTTP status).
    async fn send(&self, build: impl Fn(&str) -> reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let mut last = None;
        for target in &self.targets {
            match build(target).send().await {
                Ok(response) => return Ok(response),
                Err(error) => last = Some(format!("{target}: {error}")),
            }
        }
        bail!("no --target answers ({})", last.unwrap_or_default())
    }
}

async fn error_text(response: reqwest::Response) -> String {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    format!("{status}: {body}")
}

async fn run_backup(flags: &BackupFlags) -> anyhow::Result<()> {
    let started = Instant::now();
    if flags.to.exists() && std::fs::read_dir(&flags.to)?.next().is_some() {
        bail!("{} is not empty: back up into a new directory", flags.to.display());
    }
    std::fs::create_dir_all(&flags.to).with_context(|| format!("creating {}", flags.to.display()))?;
    let client =
        settle_chaos::http::client_builder(flags.ca_cert.as_deref(), flags.api_key.as_deref())?.timeout(Duration::from_secs(30)).build()?;
    let targets = flags.target.iter().map(|target| target.trim_end_matches('/').to_string()).filter(|t| !t.is_empty()).collect();
    let cluster = Cluster { client, targets };
    let view: settle_client::api::ClusterView = {
        let response = cluster.send(|target| cluster.client.get(format!("{target}/v1/cluster"))).await?;
        if !response.status().is_success() {
            bail!("/v1/cluster: {}", error_text(response).await);
        }
        response.json().await?
    };
    let shards = u32::try_from(view.shards.len())?;
    let mut epoch = flags.epoch.unwrap_or_else(settle_actors::driver::now_ms);
    let deadline = Instant::now() + RETRY_FOR;
    loop {
        let body = serde_json::json!({ "epoch": epoch });
        let response = cluster.send(|target| cluster.client.post(format!("{target}/admin/backup/fence")).json(&body)).await?;
        match response.status().as_u16() {
            200 => break,
            409 if flags.epoch.is_none() => {
                let answer: serde_json::Value = response.json().await.unwrap_or_default();
                let highest = answer.pointer("/error/details/epoch").and_then(serde_json::Value::as_u64).unwrap_or(epoch);
                epoch = highest.checked_add(1).context("a shard's backup epoch is at its maximum")?;
            }
            503 | 429 if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            _ => bail!("fencing the shards at epoch {epoch}: {}", error_text(response).await),
        }
    }
    println!("backup epoch {epoch}: every one of {shards} shards fenced; reading their cuts");
    let mut files = Vec::new();
    let (mut records_total, mut bytes_total) = (0u64, 0u64);
    for shard in 0..shards {
        let file = read_shard(&cluster, &flags.to, shard, epoch).await?;
        records_total += file.records;
        bytes_total += file.bytes;
        files.push(file);
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        settle_version: env!("CARGO_PKG_VERSION").to_string(),
        created_at: time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?,
        epoch,
        shards,
        files,
    };
    let temporary = flags.to.join(format!("{MANIFEST}.tmp"));
    std::fs::write(&temporary, serde_json::to_vec_pretty(&manifest)?)?;
    std::fs::File::open(&temporary)?.sync_all()?;
    std::fs::rename(&temporary, flags.to.join(MANIFEST))?;
    std::fs::File::open(&flags.to)?.sync_all()?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "backup complete: {} — epoch {epoch}, {shards} shards, {records_total} records, {:.1} MiB in {seconds:.1} s ({:.1} MiB/s)",
        flags.to.display(),
        bytes_total as f64 / (1 << 20) as f64,
        bytes_total as f64 / (1 << 20) as f64 / seconds.max(1e-9),
    );
    Ok(())
}

/// Reads one shard's cut chunk by chunk into its file.
async fn read_shard(cluster: &Cluster, dir: &Path, shard: u32, epoch: u64) -> anyhow::Result<ShardFile> {
    let name = format!("shard-{shard:04}.records");
    let mut file = std::io::BufWriter::new(std::fs::File::create(dir.join(&name))?);
    let mut sha = digest::Context::new(&digest::SHA256);
    let (mut bytes, mut records) = (0u64, 0u64);
    let mut mark = None;
    let mut after: Option<Key> = None;
    let mut deadline = Instant::now() + RETRY_FOR;
    loop {
        let query = after.as_ref().map(hex::encode).unwrap_or_default();
        let response =
            cluster.send(|target| cluster.client.get(format!("{target}/admin/backup/shards/{shard}?epoch={epoch}&after={query}"))).await?;
        let status = response.status().as_u16();
        if matches!(status, 503 | 429 | 408) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        if status != 200 {
            bail!("shard {shard}: {}", error_text(response).await);
        }
        let body = response.bytes().await?;
        let Ok(BackupChunk::Records { entries, done }) = decode_chunk(&body) else {
            bail!("shard {shard}: the node answered a chunk that does not decode");
        };
        deadline = Instant::now() + RETRY_FOR;
        for (suffix, value) in &entries {
            if suffix.first() == Some(&keys::APPLIED) {
                mark = Some(Ledger::decode_mark(value).map_err(|error| anyhow::anyhow!("shard {shard}: {error}"))?);
            }
        }
        records += u64::try_from(entries.len())?;
        after = entries.last().map(|(key, _)| key.clone()).or(after);
        let length = u32::try_from(body.len())?.to_be_bytes();
        for part in [&length[..], &body[..]] {
            file.write_all(part)?;
            sha.update(part);
            bytes += u64::try_from(part.len())?;
        }
        if done {
            break;
        }
    }
    file.into_inner().map_err(|error| error.into_error())?.sync_all()?;
    let mark = mark.with_context(|| format!("shard {shard}: the cut holds no applied mark"))?;
    println!("  shard {shard}: {records} records at index {} (term {})", mark.index, mark.term);
    Ok(ShardFile {
        shard,
        file: name,
        sha256: hex::encode(sha.finish().as_ref()),
        bytes,
        records,
        applied_index: mark.index,
        applied_term: mark.term,
    })
}

/// Reads and checks a backup's manifest, and every shard file against it.
pub fn read_manifest(dir: &Path) -> anyhow::Result<Manifest> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read(&path).with_context(|| format!("{}: not a finished backup", path.display()))?;
    let manifest: Manifest = serde_json::from_slice(&text).with_context(|| format!("{} does not parse", path.display()))?;
    if manifest.format != MANIFEST_FORMAT {
        bail!("{} is backup format {}; this build reads format {MANIFEST_FORMAT}", path.display(), manifest.format);
    }
    let shards: Vec<u32> = manifest.files.iter().map(|file| file.shard).collect();
    if shards != (0..manifest.shards).collect::<Vec<_>>() {
        bail!("{}: the manifest does not list every shard once, in order", path.display());
    }
    for file in &manifest.files {
        if file.file != format!("shard-{:04}.records", file.shard) {
            bail!("{}: shard {} names the file {:?}", path.display(), file.shard, file.file);
        }
        let mut reader = std::io::BufReader::with_capacity(
            1 << 20,
            std::fs::File::open(dir.join(&file.file)).with_context(|| format!("reading {}", file.file))?,
        );
        let mut context = digest::Context::new(&digest::SHA256);
        let mut length = 0u64;
        loop {
            let buffer = std::io::BufRead::fill_buf(&mut reader)?;
            if buffer.is_empty() {
                break;
            }
            context.update(buffer);
            let read = buffer.len();
            length += u64::try_from(read)?;
            std::io::BufRead::consume(&mut reader, read);
        }
        let sha = hex::encode(context.finish().as_ref());
        if sha != file.sha256 || length != file.bytes {
            let bytes = length;
            bail!(
                "{}: checksum mismatch (the manifest says {} bytes, sha256 {}; the file has {} bytes, sha256 {sha})",
                file.file,
                file.bytes,
                file.sha256,
                bytes
            );
        }
    }
    Ok(manifest)
}

/// The records of one shard file, in order, read chunk by chunk (a shard is never held in
/// memory whole). A read error ends the records and is kept for `finish`.
struct ShardRecords {
    name: String,
    reader: std::io::BufReader<std::fs::File>,
    chunk: std::vec::IntoIter<(Key, Value)>,
    read: u64,
    expected: u64,
    error: Option<anyhow::Error>,
    /// The bytes read so far and their SHA-256: what was restored is what the manifest names.
    sha: digest::Context,
    bytes: u64,
    expected_sha: String,
    expected_bytes: u64,
}

impl ShardRecords {
    fn open(dir: &Path, file: &ShardFile) -> anyhow::Result<ShardRecords> {
        let reader = std::io::BufReader::new(std::fs::File::open(dir.join(&file.file)).with_context(|| format!("opening {}", file.file))?);
        Ok(ShardRecords {
            name: file.file.clone(),
            reader,
            chunk: Vec::new().into_iter(),
            read: 0,
            expected: file.records,
            error: None,
            sha: digest::Context::new(&digest::SHA256),
            bytes: 0,
            expected_sha: file.sha256.clone(),
            expected_bytes: file.bytes,
        })
    }

    /// The next chunk's records; `None` at the end of the file.
    fn read_chunk(&mut self) -> anyhow::Result<Option<Vec<(Key, Value)>>> {
        let mut length = [0u8; 4];
        match self.reader.read_exact(&mut length) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(error) => return Err(error.into()),
        }
        self.sha.update(&length);
        let length = usize::try_from(u32::from_be_bytes(length))?;
        if length > 64 << 20 {
            bail!("{}: a chunk of {length} bytes", self.name);
        }
        let mut chunk = vec![0u8; length];
        self.reader.read_exact(&mut chunk)?;
        self.sha.update(&chunk);
        self.bytes += u64::try_from(length)? + 4;
        match decode_chunk(&chunk) {
            Ok(BackupChunk::Records { entries, .. }) => Ok(Some(entries)),
            _ => bail!("{}: a chunk that does not decode", self.name),
        }
    }

    /// Whether the file was read whole and held as many records as the manifest says.
    fn finish(self) -> anyhow::Result<u64> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let sha = hex::encode(self.sha.finish().as_ref());
        if sha != self.expected_sha || self.bytes != self.expected_bytes {
            bail!("{}: checksum mismatch while restoring (the file changed after it was checked)", self.name);
        }
        if self.read != self.expected {
            bail!("{}: {} records, the manifest says {}", self.name, self.read, self.expected);
        }
        Ok(self.read)
    }
}

impl Iterator for &mut ShardRecords {
    type Item = (Key, Value);

    fn next(&mut self) -> Option<(Key, Value)> {
        loop {
            if let Some(record) = self.chunk.next() {
                self.read += 1;
                return Some(record);
            }
            if self.error.is_some() {
                return None;
            }
            match self.read_chunk() {
                Ok(Some(entries)) => self.chunk = entries.into_iter(),
                Ok(None) => return None,
                Err(error) => {
                    self.error = Some(error);
                    return None;
                }
            }
        }
    }
}

/// Restores one shard file into `store`; a file that did not read whole is reported before
/// whatever the restore made of what it read.
fn restore_file(store: &Arc<dyn KvStore>, dir: &Path, file: &ShardFile, shard_count: u32) -> anyhow::Result<u64> {
    let mut records = ShardRecords::open(dir, file)?;
    let restored = restore_shard(store, file.shard, shard_count, &mut records);
    let read = records.finish()?;
    let mark = restored?;
    if (mark.index, mark.term) != (file.applied_index, file.applied_term) {
        bail!(
            "shard {}: the cut is at index {} term {}, the manifest says {} term {}",
            file.shard,
            mark.index,
            mark.term,
            file.applied_index,
            file.applied_term
        );
    }
    Ok(read)
}

/// `settle restore --check`: the whole backup restored into a scratch store and checked.
fn check_backup(dir: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let manifest = read_manifest(dir)?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
    let scratch = std::env::temp_dir().join(format!("settle-restore-check-{}-{nanos}", std::process::id()));
    let result = (|| -> anyhow::Result<u64> {
        let store: Arc<dyn KvStore> = Arc::new(StateStore::open(&scratch)?);
        let mut records = 0u64;
        let mut ledgers = BTreeMap::new();
        for file in &manifest.files {
            records += restore_file(&store, dir, file, manifest.shards)?;
            let (ledger, _) = Ledger::open(file.shard, manifest.shards, store.clone(), 1 << 20)?;
            ledgers.insert(file.shard, ledger);
        }
        // The cluster's nodes do not matter to the checks: ids are placed by the shard count.
        let placement = Placement::new(vec![1], manifest.shards);
        check_cut(&placement, &ledgers).map_err(|broken| anyhow::anyhow!("the backup is not a consistent cut: {broken}"))?;
        Ok(records)
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    let records = result?;
    println!(
        "backup {} (epoch {}, taken {}): every file matches the manifest; {} shards, {records} records, each shard's invariants and the cut across them checked in {:.1} s",
        dir.display(),
        manifest.epoch,
        manifest.created_at,
        manifest.shards,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Restores the shards `hosted` into a new data dir at `dir` and checks them (and the cut, when
/// they are every shard), then writes the identity. Returns the records restored.
fn restore_into(
    dir: &Path,
    from: &Path,
    manifest: &Manifest,
    placement: &Placement,
    hosted: &[u32],
    identity: &DataDirIdentity,
) -> anyhow::Result<u64> {
    let store = Arc::new(StateStore::open(&dir.join("state"))?);
    let kv: Arc<dyn KvStore> = store.clone();
    let mut records = 0u64;
    for file in manifest.files.iter().filter(|file| hosted.contains(&file.shard)) {
        records += restore_file(&kv, from, file, manifest.shards)?;
    }
    if hosted.len() == usize::try_from(manifest.shards)? {
        let ledgers = hosted
            .iter()
            .map(|shard| Ledger::open(*shard, manifest.shards, kv.clone(), 1 << 20).map(|(ledger, _)| (*shard, ledger)))
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        check_cut(placement, &ledgers).map_err(|broken| anyhow::anyhow!("the backup is not a consistent cut: {broken}"))?;
        println!("every shard of the backup checked, and the cut across them");
    }
    kv.persist()?;
    drop(kv);
    drop(store);
    identity::check_or_write(dir, identity)?;
    Ok(records)
}

pub fn restore(flags: RestoreFlags) -> anyhow::Result<()> {
    if flags.check {
        return check_backup(&flags.from);
    }
    let started = Instant::now();
    let settings = crate::settings::NodeSettings::load(&flags.node)?;
    if settings.join.is_some() {
        bail!("a restore bootstraps a new cluster: give every node the same --cluster, not --join");
    }
    let manifest = read_manifest(&flags.from)?;
    if settings.shards != manifest.shards {
        bail!(
            "the backup has {} shards; the node is configured with {} (give --shards {})",
            manifest.shards,
            settings.shards,
            manifest.shards
        );
    }
    let data_dir = &settings.data_dir;
    if data_dir.exists() && std::fs::read_dir(data_dir)?.next().is_some() {
        bail!("{} is not empty: restore into a new data dir", data_dir.display());
    }
    let members: Vec<u64> = settings.members.keys().copied().collect();
    let placement = Placement::new(members.clone(), settings.shards);
    let hosted = placement.shards_on(settings.node_id);
    // Everything is written beside the data dir and moved into place only once every check
    // passed: a failed or interrupted restore never leaves a data dir `settle start` would run.
    let name = data_dir.file_name().context("the data dir has no name")?.to_string_lossy().to_string();
    let staging = data_dir.with_file_name(format!("{name}.restoring"));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).with_context(|| format!("removing an earlier attempt, {}", staging.display()))?;
    }
    let identity = DataDirIdentity::new(settings.node_id, settings.shards, members);
    let records = match restore_into(&staging, &flags.from, &manifest, &placement, &hosted, &identity) {
        Ok(records) => records,
        Err(error) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(error);
        }
    };
    if data_dir.exists() {
        std::fs::remove_dir(data_dir).with_context(|| format!("{} is not empty any more", data_dir.display()))?;
    }
    std::fs::rename(&staging, data_dir).with_context(|| format!("moving {} to {}", staging.display(), data_dir.display()))?;
    if let Some(parent) = data_dir.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        std::fs::File::open(parent)?.sync_all()?;
    }
    println!(
        "restored node {} from {} (epoch {}): {} of {} shards, {records} records in {:.1} s; start it with `settle start` and the same flags",
        settings.node_id,
        flags.from.display(),
        manifest.epoch,
        hosted.len(),
        manifest.shards,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
