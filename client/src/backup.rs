//! Backups of a running cluster (`kvctl backup DIR`) and restoring one into
//! a new cluster (`geokv restore DIR`). Behind the `backup` feature.
//!
//! A backup directory holds:
//!
//! - `shard-<id>.pb`: one shard's `Admin.ExportShard` stream as it came,
//!   each message length-delimited (protobuf): a header (range, epoch, the
//!   log index the copy is as of), the pairs with their versions, the
//!   shard's session records, a trailer with counts and a SHA-256 of the
//!   pairs, checked as the file is written;
//! - `manifest.json` (written last: a directory without one is not a
//!   backup): the format, when, the source cluster's nodes and shard map,
//!   and per shard its file, index, counts, bytes and the file's SHA-256.
//!
//! Every Raft shard is copied by its leader from one pinned view at a
//! known applied index; the shards are exported at once, so their indexes
//! are fixed within about one quorum round of each other (there is no
//! cross-shard transaction to cut through). Eventual shards are copied from
//! one replica as it is. Restoring checks every file's SHA-256, refuses a
//! cluster that holds data, recreates the shard boundaries (splits, and
//! eventual ranges carved out) and loads the pairs through ordinary batched
//! writes, so the target may have any number of nodes and any regions.
//! Values come back; versions are the new cluster's log indexes, and
//! exactly-once sessions are kept in the backup but not restored (clients
//! of the new cluster start new sessions).

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use futures::StreamExt;
use geokv_proto::admin::{ExportChunk, ExportHeader, ExportPair, ExportShardRequest};
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::client::admin_client;
use crate::{Client, Error, ScanBounds, ShardMode};

/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// The backup format this build writes and reads.
pub const FORMAT: &str = "geokv-backup-1";

/// How many shards are exported, or batches written, at once.
pub const DEFAULT_PARALLEL: usize = 4;

/// What a backup holds (`manifest.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: String,
    pub created_unix_ms: u64,
    /// The source cluster's nodes: id, address, region, state.
    pub nodes: Vec<ManifestNode>,
    pub shards: Vec<ManifestShard>,
    /// Wall time the backup took.
    pub took_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestNode {
    pub id: u64,
    pub address: String,
    pub region: String,
    pub state: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestShard {
    pub shard_id: u64,
    pub eventual: bool,
    pub epoch: u64,
    /// The range, hex; `end_hex` `None`: past every key.
    pub start_hex: String,
    pub end_hex: Option<String>,
    /// Raft shards: the log index the copy is as of.
    pub applied_index: u64,
    pub exported_by: u64,
    pub preferred_leader_region: Option<String>,
    pub pairs: u64,
    pub sessions: u64,
    /// Bytes of keys and values.
    pub bytes: u64,
    pub file: String,
    pub file_sha256: String,
    pub pairs_sha256: String,
}

impl ManifestShard {
    pub fn start(&self) -> Vec<u8> {
        unhex(&self.start_hex).unwrap_or_default()
    }

    pub fn end(&self) -> Option<Vec<u8>> {
        self.end_hex.as_deref().and_then(unhex)
    }
}

/// What a restore did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RestoreSummary {
    pub shards: usize,
    pub pairs: u64,
    pub bytes: u64,
    /// Splits and eventual ranges made so the boundaries match the backup's.
    pub splits: usize,
    pub eventual_ranges: usize,
    /// Preferred leader regions the target has no node in (not set).
    pub regions_missing: Vec<String>,
    pub took_ms: u64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn io_error(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Config(format!("{what} {}: {e}", path.display()))
}

fn sha256_hex(ctx: ring::digest::Context) -> String {
    hex(ctx.finish().as_ref())
}

impl Client {
    /// Opens shard `shard`'s export stream (see `Admin.ExportShard`): from
    /// its leader for a Raft shard (every replica is tried; the others
    /// refuse), from the first replica that answers for an eventual one.
    pub async fn export_shard(&self, shard: u64) -> Result<tonic::Streaming<ExportChunk>, Error> {
        let map = self.refresh_shard_map().await?;
        let desc = map.shard(shard).ok_or_else(|| Error::NotFound(format!("no shard {shard} in the map")))?;
        let mut causes = Vec::new();
        for replica in &desc.replicas {
            let Some(addr) = map.addr_of(replica.node_id) else { continue };
            let channel = match self.channel(addr) {
                Ok(c) => c,
                Err(f) => {
                    causes.push(format!("{addr}: {}", f.describe()));
                    continue;
                }
            };
            match admin_client(channel).export_shard(ExportShardRequest { shard_id: shard }).await {
                Ok(stream) => return Ok(stream.into_inner()),
                Err(status) => causes.push(format!("node {} at {addr}: {}", replica.node_id, status.message())),
            }
        }
        Err(Error::Unavailable { attempts: causes.len() as u32, cause: causes.join("; ") })
    }
}

/// Writes a backup of every shard of the cluster into `dir` (created; it
/// must be empty or absent). `parallel` shards are exported at once.
pub async fn backup(client: &Client, dir: &Path, parallel: usize) -> Result<Manifest, Error> {
    let started = Instant::now();
    if dir.exists() && std::fs::read_dir(dir).map_err(|e| io_error("reading", dir, e))?.next().is_some() {
        return Err(Error::InvalidArgument(format!(
            "{} is not empty: a backup goes into a new or empty directory",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| io_error("creating", dir, e))?;
    let map = client.refresh_shard_map().await?;
    let exports = futures::stream::iter(map.shards.iter().map(|s| export_one(client, dir, s.shard_id)))
        .buffer_unordered(parallel.max(1))
        .collect::<Vec<_>>()
        .await;
    let mut shards = exports.into_iter().collect::<Result<Vec<_>, _>>()?;
    shards.sort_by(|a, b| a.start_hex.cmp(&b.start_hex));
    let manifest = Manifest {
        format: FORMAT.into(),
        created_unix_ms: SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        nodes: map
            .nodes
            .iter()
            .map(|n| ManifestNode {
                id: n.node_id,
                address: n.addr.clone(),
                region: n.region.clone(),
                state: n.state.as_str().into(),
            })
            .collect(),
        shards,
        took_ms: started.elapsed().as_millis() as u64,
    };
    let path = dir.join(MANIFEST);
    let text = serde_json::to_string_pretty(&manifest).expect("a manifest serializes");
    write_synced(&path, text.as_bytes())?;
    Ok(manifest)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut f = std::fs::File::create(path).map_err(|e| io_error("creating", path, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| io_error("writing", path, e))
}

/// Exports shard `shard` into `dir/shard-<id>.pb`, checking the trailer.
async fn export_one(client: &Client, dir: &Path, shard: u64) -> Result<ManifestShard, Error> {
    let file = format!("shard-{shard}.pb");
    let path = dir.join(&file);
    let mut stream = client.export_shard(shard).await?;
    let mut out = BufWriter::new(std::fs::File::create(&path).map_err(|e| io_error("creating", &path, e))?);
    let mut file_digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut pair_digest = ring::digest::Context::new(&ring::digest::SHA256);
    let (mut header, mut pairs, mut sessions, mut bytes) = (None::<ExportHeader>, 0u64, 0u64, 0u64);
    let broken = |why: String| Error::Unavailable { attempts: 1, cause: format!("exporting shard {shard}: {why}") };
    loop {
        let chunk = match stream.next().await {
            Some(Ok(chunk)) => chunk,
            Some(Err(status)) => return Err(broken(status.message().to_string())),
            None => return Err(broken("the stream ended before its trailer".into())),
        };
        let encoded = chunk.encode_length_delimited_to_vec();
        file_digest.update(&encoded);
        out.write_all(&encoded).map_err(|e| io_error("writing", &path, e))?;
        if let Some(h) = &chunk.header {
            header = Some(h.clone());
        }
        for pair in &chunk.pairs {
            geokv_proto::export_pair_digest_input(pair, |bytes| pair_digest.update(bytes));
            bytes += (pair.key.len() + pair.value.len()) as u64;
        }
        pairs += chunk.pairs.len() as u64;
        sessions += chunk.sessions.len() as u64;
        if let Some(trailer) = chunk.trailer {
            let digest = pair_digest.finish();
            if trailer.pairs != pairs || trailer.sessions != sessions || trailer.sha256 != digest.as_ref() {
                return Err(broken(format!(
                    "the trailer says {} pairs and {} sessions with SHA-256 {}, the stream held {pairs} and \
                     {sessions} with {}",
                    trailer.pairs,
                    trailer.sessions,
                    hex(&trailer.sha256),
                    hex(digest.as_ref())
                )));
            }
            let header = header.ok_or_else(|| broken("no header".into()))?;
            let mut f = out.into_inner().map_err(|e| io_error("writing", &path, e.error()))?;
            f.flush().and_then(|_| f.sync_all()).map_err(|e| io_error("writing", &path, e))?;
            return Ok(ManifestShard {
                shard_id: shard,
                eventual: header.eventual,
                epoch: header.epoch,
                start_hex: hex(&header.start),
                end_hex: (!header.unbounded_end).then(|| hex(&header.end)),
                applied_index: header.applied_index,
                exported_by: header.node_id,
                preferred_leader_region: Some(header.preferred_leader_region).filter(|r| !r.is_empty()),
                pairs,
                sessions,
                bytes,
                file,
                file_sha256: sha256_hex(file_digest),
                pairs_sha256: hex(digest.as_ref()),
            });
        }
    }
}

/// Reads `dir`'s manifest and checks every file against it.
pub fn verify(dir: &Path) -> Result<Manifest, Error> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|e| io_error("reading", &path, e))?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| Error::InvalidArgument(format!("{} is not a backup manifest: {e}", path.display())))?;
    if manifest.format != FORMAT {
        return Err(Error::InvalidArgument(format!(
            "{} is a backup of format {:?}; this build reads {FORMAT:?}",
            dir.display(),
            manifest.format
        )));
    }
    for shard in &manifest.shards {
        let path = dir.join(&shard.file);
        let mut f = std::fs::File::open(&path).map_err(|e| io_error("opening", &path, e))?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(|e| io_error("reading", &path, e))?;
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
        }
        let got = sha256_hex(ctx);
        if got != shard.file_sha256 {
            return Err(Error::InvalidArgument(format!(
                "{} is corrupt: SHA-256 {got}, the manifest says {}",
                path.display(),
                shard.file_sha256
            )));
        }
    }
    Ok(manifest)
}

/// The chunks of one backup file, in order.
fn read_chunks(path: &Path) -> Result<impl Iterator<Item = Result<ExportChunk, Error>>, Error> {
    let f = std::fs::File::open(path).map_err(|e| io_error("opening", path, e))?;
    let mut reader = BufReader::new(f);
    let path: PathBuf = path.to_path_buf();
    Ok(std::iter::from_fn(move || {
        let mut len_bytes = Vec::with_capacity(10);
        loop {
            let mut b = [0u8; 1];
            match reader.read(&mut b) {
                Ok(0) if len_bytes.is_empty() => return None,
                Ok(0) => return Some(Err(io_error("reading", &path, "a truncated length"))),
                Ok(_) => {
                    len_bytes.push(b[0]);
                    if b[0] & 0x80 == 0 || len_bytes.len() == 10 {
                        break;
                    }
                }
                Err(e) => return Some(Err(io_error("reading", &path, e))),
            }
        }
        let len = match prost::decode_length_delimiter(&len_bytes[..]) {
            Ok(len) if len <= 64 << 20 => len,
            _ => return Some(Err(io_error("reading", &path, "a bad message length"))),
        };
        let mut body = vec![0u8; len];
        if let Err(e) = reader.read_exact(&mut body) {
            return Some(Err(io_error("reading", &path, e)));
        }
        Some(ExportChunk::decode(&body[..]).map_err(|e| io_error("decoding", &path, e)))
    }))
}

/// Loads the backup in `dir` into the (empty) cluster `client` talks to;
/// see the module docs. `parallel` batches are written at once.
pub async fn restore(client: &Client, dir: &Path, parallel: usize) -> Result<RestoreSummary, Error> {
    let started = Instant::now();
    let manifest = verify(dir)?;
    let any = client.scan(..).limit(1).collect().await?;
    if let Some(kv) = any.first() {
        return Err(Error::FailedPrecondition(format!(
            "the target cluster holds data (key {:?}): restore into a new, empty cluster",
            String::from_utf8_lossy(&kv.key)
        )));
    }
    let mut summary = RestoreSummary {
        shards: manifest.shards.len(),
        pairs: 0,
        bytes: 0,
        splits: 0,
        eventual_ranges: 0,
        regions_missing: Vec::new(),
        took_ms: 0,
    };
    // Eventual ranges first (carved out of whatever Raft shard holds them),
    // then the Raft shards' boundaries.
    for shard in manifest.shards.iter().filter(|s| s.eventual) {
        let map = client.refresh_shard_map().await?;
        let (start, end) = (shard.start(), shard.end());
        let exists = map.shards.iter().any(|s| s.start == start && s.end == end.clone().unwrap_or_default());
        if !exists {
            // A range is carved where a shard begins or ends: split there
            // first when the range starts inside a shard.
            if let Some(holder) = map.shard_for_key(&start).filter(|h| h.start != start) {
                client.split_shard(holder.shard_id, start.clone()).await?;
                summary.splits += 1;
            }
            client.create_shard(ScanBounds { start, end }, ShardMode::Eventual).await?;
            summary.eventual_ranges += 1;
        }
    }
    for shard in manifest.shards.iter().filter(|s| !s.eventual) {
        let start = shard.start();
        if start.is_empty() {
            continue;
        }
        let map = client.refresh_shard_map().await?;
        let Some(holder) = map.shard_for_key(&start) else { continue };
        if holder.start != start {
            client.split_shard(holder.shard_id, start).await?;
            summary.splits += 1;
        }
    }
    let map = client.refresh_shard_map().await?;
    let regions: Vec<&str> = map.nodes.iter().map(|n| n.region.as_str()).collect();
    for shard in &manifest.shards {
        let Some(region) = &shard.preferred_leader_region else { continue };
        let Some(target) = map.shard_for_key(&shard.start()) else { continue };
        if regions.contains(&region.as_str()) {
            client.set_leader_region(target.shard_id, Some(region)).await?;
        } else if !summary.regions_missing.contains(region) {
            summary.regions_missing.push(region.clone());
        }
    }

    // The pairs, in batches of one target shard each.
    let limits = BatchLimits { ops: 128, bytes: 1 << 20 };
    let mut writes = Vec::new();
    for shard in &manifest.shards {
        for chunk in read_chunks(&dir.join(&shard.file))? {
            for pair in chunk?.pairs {
                summary.pairs += 1;
                summary.bytes += (pair.key.len() + pair.value.len()) as u64;
                writes.push(pair);
                if writes.len() >= limits.ops * parallel.max(1) * 4 {
                    load(client, &map, std::mem::take(&mut writes), shard.eventual, &limits, parallel).await?;
                }
            }
        }
        load(client, &map, std::mem::take(&mut writes), shard.eventual, &limits, parallel).await?;
    }
    summary.took_ms = started.elapsed().as_millis() as u64;
    Ok(summary)
}

struct BatchLimits {
    ops: usize,
    bytes: usize,
}

/// Writes `pairs` (key order) with `parallel` requests at once: batches
/// that stay within one target shard, or single puts on eventual shards
/// (which take no batches).
async fn load(
    client: &Client,
    map: &crate::ShardMap,
    pairs: Vec<ExportPair>,
    eventual: bool,
    limits: &BatchLimits,
    parallel: usize,
) -> Result<(), Error> {
    let mut groups: Vec<Vec<ExportPair>> = Vec::new();
    let mut current: Option<u64> = None;
    let mut bytes = 0;
    for pair in pairs {
        let shard = map.shard_for_key(&pair.key).map(|s| s.shard_id);
        let size = pair.key.len() + pair.value.len();
        let full = groups.last().is_some_and(|g| g.len() >= limits.ops || bytes + size > limits.bytes);
        if eventual || groups.is_empty() || shard != current || full {
            groups.push(Vec::new());
            bytes = 0;
            current = shard;
        }
        bytes += size;
        groups.last_mut().expect("pushed above").push(pair);
    }
    let results = futures::stream::iter(groups.into_iter().map(|group| async move {
        if let [pair] = &group[..] {
            return client.put(&pair.key, &pair.value).await.map(|_| ());
        }
        let batch = group.iter().fold(client.batch(), |b, p| b.put(&p.key, &p.value));
        batch.send().await.map(|_| ())
    }))
    .buffer_unordered(parallel.max(1))
    .collect::<Vec<_>>()
    .await;
    results.into_iter().collect::<Result<Vec<()>, Error>>().map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        assert_eq!(hex(b"\x00\xffa"), "00ff61");
        assert_eq!(unhex("00ff61").unwrap(), b"\x00\xffa");
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
    }

    /// A backup file whose bytes changed is refused by name.
    #[test]
    fn a_changed_file_fails_verification() {
        let dir = tempfile_dir();
        let chunk =
            ExportChunk { pairs: vec![ExportPair { key: b"k".to_vec(), ..Default::default() }], ..Default::default() };
        let bytes = chunk.encode_length_delimited_to_vec();
        std::fs::write(dir.join("shard-1.pb"), &bytes).unwrap();
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(&bytes);
        let shard = ManifestShard {
            shard_id: 1,
            eventual: false,
            epoch: 1,
            start_hex: String::new(),
            end_hex: None,
            applied_index: 7,
            exported_by: 1,
            preferred_leader_region: None,
            pairs: 1,
            sessions: 0,
            bytes: 1,
            file: "shard-1.pb".into(),
            file_sha256: sha256_hex(ctx),
            pairs_sha256: String::new(),
        };
        let manifest =
            Manifest { format: FORMAT.into(), created_unix_ms: 0, nodes: vec![], shards: vec![shard], took_ms: 0 };
        std::fs::write(dir.join(MANIFEST), serde_json::to_string(&manifest).unwrap()).unwrap();
        assert_eq!(verify(&dir).unwrap(), manifest);
        let chunks: Vec<_> = read_chunks(&dir.join("shard-1.pb")).unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(chunks, vec![chunk]);
        let mut changed = bytes.clone();
        *changed.last_mut().unwrap() ^= 1;
        std::fs::write(dir.join("shard-1.pb"), &changed).unwrap();
        let err = verify(&dir).unwrap_err().to_string();
        assert!(err.contains("shard-1.pb is corrupt"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("geokv-backup-test-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
