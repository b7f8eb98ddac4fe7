//! Shard snapshots: taken in O(1), sent in chunks, staged on disk and
//! ingested whole. No side ever holds a shard in memory.
//!
//! - **Taking** one ([`LocalSnapshot`]) pins the database (a RocksDB
//!   snapshot) and reads the shard's few metadata records from the pin. The
//!   applied log id read there describes exactly the data the pin shows.
//!   openraft asks for one when it builds a snapshot (to learn its log id:
//!   the pin is dropped at once) and when it must send one to a follower.
//! - **Sending** ([`produce`]) reads the pin in key order and cuts it into
//!   chunks of about [`CHUNK_BYTES`]: chunk 0 carries the header (vote,
//!   openraft's meta, [`SnapshotHeader`]); then the user data, then the
//!   sessions; the last chunk carries a SHA-256 digest of every pair. The
//!   same snapshot always yields the same chunks, so a sender that lost its
//!   stream asks the receiver how far it got and regenerates from there.
//! - **Receiving** ([`Receiving`]) checks each chunk (sequence, section,
//!   keys strictly increasing and inside the header's range) and writes its
//!   pairs into SST files; at the last chunk it checks the digest and hands
//!   the staged files to openraft as the snapshot to install.
//!
//! Memory per transfer is a few chunks on each side (the sender's channel
//! and the receiver's SST writer's block), whatever the shard's size.

use std::io;
use std::sync::Arc;

use geokv_proto::raft::SnapshotChunk;
use serde::{Deserialize, Serialize};

use super::{SnapshotMeta, Vote, decode, encode};
use crate::storage::{Pin, Section, Staged, Stager, Storage};

/// The pairs' bytes after which a chunk is cut (a chunk holds at least one
/// pair, so it is at most this plus the largest key and value).
pub const CHUNK_BYTES: usize = 1 << 20;

/// What a snapshot carries besides its pairs: the shard's state-machine
/// records as of the snapshot, as they are stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// The data shard's key range as of the snapshot; `None` for the meta
    /// shard. Every data key of the snapshot lies in it.
    pub range: Option<(Vec<u8>, Option<Vec<u8>>)>,
    /// The data shard's range record, when it changed since creation.
    pub range_record: Option<Vec<u8>>,
    /// The data shard's freeze record, when frozen for a merge.
    pub frozen: Option<Vec<u8>>,
    /// The encoded shard map (meta shard only).
    pub shard_map: Option<Vec<u8>>,
    /// The log time of the last session collection.
    pub session_gc: Option<Vec<u8>>,
}

/// A snapshot taken on this node: a pinned view and what it shows.
pub struct LocalSnapshot {
    pub shard: u64,
    /// Names this snapshot's transfers (random).
    pub id: u64,
    pub meta: SnapshotMeta,
    pub header: SnapshotHeader,
    pin: Pin,
}

impl LocalSnapshot {
    pub fn new(shard: u64, meta: SnapshotMeta, header: SnapshotHeader, pin: Pin) -> Self {
        Self { shard, id: rand::random(), meta, header, pin }
    }

    pub fn pin(&self) -> &Pin {
        &self.pin
    }
}

/// openraft's snapshot data for geokv.
pub enum SnapshotData {
    /// Taken here: read lazily from its pin.
    Local(Arc<LocalSnapshot>),
    /// Received from a peer: staged files, ready to ingest.
    Received { header: SnapshotHeader, staged: Staged, pairs: u64 },
}

impl std::fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotData::Local(s) => write!(f, "Local(shard {}, {:?})", s.shard, s.meta.last_log_id),
            SnapshotData::Received { staged, pairs, .. } => {
                write!(f, "Received({pairs} pairs, {} bytes)", staged.bytes)
            }
        }
    }
}

fn section_code(section: Section) -> u32 {
    match section {
        Section::Data => 0,
        Section::Sessions => 1,
    }
}

fn section_of(code: u32) -> Option<Section> {
    match code {
        0 => Some(Section::Data),
        1 => Some(Section::Sessions),
        _ => None,
    }
}

/// The digest of a transfer: SHA-256 over, for each pair in order, the
/// section code (1 byte), the key's and the value's lengths (8 bytes each,
/// little-endian) and the key and value bytes.
struct Digest(ring::digest::Context);

impl Digest {
    fn new() -> Self {
        Self(ring::digest::Context::new(&ring::digest::SHA256))
    }

    fn add(&mut self, section: Section, key: &[u8], value: &[u8]) {
        self.0.update(&[section_code(section) as u8]);
        self.0.update(&(key.len() as u64).to_le_bytes());
        self.0.update(&(value.len() as u64).to_le_bytes());
        self.0.update(key);
        self.0.update(value);
    }

    fn finish(self) -> Vec<u8> {
        self.0.finish().as_ref().to_vec()
    }
}

/// Calls `emit` with the chunks of `snapshot` numbered `from_seq` and on,
/// in order, until `emit` returns `false` or the last chunk is out. Blocking
/// (reads the pin): run it off the async runtime. The chunks before
/// `from_seq` are regenerated (the digest covers them) but not emitted.
pub fn produce(
    snapshot: &LocalSnapshot,
    vote: &Vote,
    from_seq: u64,
    emit: &mut dyn FnMut(SnapshotChunk) -> bool,
) -> io::Result<()> {
    let shard = snapshot.shard;
    let blank = |seq: u64| SnapshotChunk { shard_id: shard, transfer: snapshot.id, seq, ..Default::default() };
    let mut chunk = blank(0);
    chunk.header = encode(&(vote, &snapshot.meta, &snapshot.header));
    if from_seq == 0 && !emit(chunk) {
        return Ok(());
    }
    let mut seq = 1;
    let mut digest = Digest::new();
    let mut stopped = false;
    let range = snapshot.header.range.as_ref();
    let sections: &[Section] = if range.is_some() { &[Section::Data, Section::Sessions] } else { &[Section::Sessions] };
    for &section in sections {
        let mut chunk = blank(seq);
        chunk.section = section_code(section);
        let mut bytes = 0;
        let bounds = range.map_or((&[][..], None), |(s, e)| (s.as_slice(), e.as_deref()));
        snapshot.pin.scan(section, shard, bounds, &mut |key, value| {
            digest.add(section, key, value);
            chunk.keys.push(key.to_vec());
            chunk.values.push(value.to_vec());
            bytes += key.len() + value.len();
            if bytes >= CHUNK_BYTES {
                let next = SnapshotChunk { seq: seq + 1, section: chunk.section, ..blank(0) };
                let full = std::mem::replace(&mut chunk, next);
                seq += 1;
                bytes = 0;
                if full.seq >= from_seq && !emit(full) {
                    stopped = true;
                    return false;
                }
            }
            true
        })?;
        if stopped {
            return Ok(());
        }
        if !chunk.keys.is_empty() {
            seq += 1;
            if chunk.seq >= from_seq && !emit(chunk) {
                return Ok(());
            }
        }
    }
    let mut last = blank(seq);
    last.last = true;
    last.digest = digest.finish();
    if seq >= from_seq {
        emit(last);
    }
    Ok(())
}

/// A snapshot transfer being received: chunks checked and staged in order.
pub struct Receiving {
    pub shard: u64,
    pub transfer: u64,
    /// The chunk expected next.
    pub next_seq: u64,
    pub vote: Vote,
    pub meta: SnapshotMeta,
    pub header: SnapshotHeader,
    stager: Stager,
    digest: Digest,
    section: Section,
    last_key: Option<Vec<u8>>,
    pairs: u64,
    complete: bool,
}

/// Why a chunk was not taken.
#[derive(Debug)]
pub enum Refused {
    /// Not the chunk expected next (a resend, or a gap): the transfer is
    /// kept as it was.
    OutOfOrder { expected: u64 },
    /// The chunk (or the transfer as a whole) is bad: the transfer is void.
    Invalid(String),
}

impl Receiving {
    /// Starts a transfer from its chunk 0. Blocking (creates files).
    pub fn start(storage: &Storage, first: &SnapshotChunk) -> Result<Self, String> {
        if first.seq != 0 {
            return Err(format!("snapshot transfer {:x} must start at chunk 0, not {}", first.transfer, first.seq));
        }
        let (vote, meta, header): (Vote, SnapshotMeta, SnapshotHeader) =
            decode(&first.header).map_err(|e| format!("undecodable snapshot header: {e}"))?;
        if let Some((start, Some(end))) = &header.range
            && start >= end
        {
            return Err(format!("snapshot of shard {} has an empty range", first.shard_id));
        }
        let range = header.range.as_ref().map(|(s, e)| (s.as_slice(), e.as_deref()));
        let stager = storage.stage(first.shard_id, first.transfer, range).map_err(|e| e.to_string())?;
        Ok(Self {
            shard: first.shard_id,
            transfer: first.transfer,
            next_seq: 1,
            vote,
            meta,
            header,
            stager,
            digest: Digest::new(),
            section: Section::Data,
            last_key: None,
            pairs: 0,
            complete: false,
        })
    }

    /// Whether the last chunk arrived and checked out.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Takes the next chunk (blocking: writes files). Returns whether it was
    /// the last one, its digest verified.
    pub fn push(&mut self, chunk: &SnapshotChunk) -> Result<bool, Refused> {
        let invalid =
            |what: String| Refused::Invalid(format!("shard {} snapshot chunk {}: {what}", self.shard, chunk.seq));
        if chunk.shard_id != self.shard || chunk.transfer != self.transfer {
            return Err(invalid(format!("belongs to transfer {:x} of shard {}", chunk.transfer, chunk.shard_id)));
        }
        if self.complete || chunk.seq != self.next_seq {
            return Err(Refused::OutOfOrder { expected: self.next_seq });
        }
        let Some(section) = section_of(chunk.section) else {
            return Err(invalid(format!("unknown section {}", chunk.section)));
        };
        if chunk.keys.len() != chunk.values.len() {
            return Err(invalid(format!("{} keys and {} values", chunk.keys.len(), chunk.values.len())));
        }
        if section == Section::Data && self.section == Section::Sessions && !chunk.keys.is_empty() {
            return Err(invalid("user data after the sessions".into()));
        }
        if section != self.section && !chunk.keys.is_empty() {
            self.section = section;
            self.last_key = None;
        }
        for (key, value) in chunk.keys.iter().zip(&chunk.values) {
            if self.last_key.as_ref().is_some_and(|last| key <= last) {
                return Err(invalid(format!("key {key:?} out of order")));
            }
            if section == Section::Data && !in_range(self.header.range.as_ref(), key) {
                return Err(invalid(format!("key {key:?} is outside the shard's range {:?}", self.header.range)));
            }
            self.stager.put(section, key, value).map_err(|e| invalid(e.to_string()))?;
            self.digest.add(section, key, value);
            self.pairs += 1;
            self.last_key = Some(key.clone());
        }
        self.next_seq += 1;
        if chunk.last {
            let digest = std::mem::replace(&mut self.digest, Digest::new()).finish();
            if digest != chunk.digest {
                return Err(invalid("the digest does not match the pairs received".into()));
            }
            self.complete = true;
        }
        Ok(chunk.last)
    }

    /// The complete transfer: the vote it was sent under, and openraft's
    /// snapshot (blocking: closes the files).
    pub fn finish(self) -> Result<(Vote, SnapshotMeta, SnapshotData), String> {
        let (vote, meta, header, staged, pairs) = self.close()?;
        Ok((vote, meta, SnapshotData::Received { header, staged, pairs }))
    }

    fn close(self) -> Result<(Vote, SnapshotMeta, SnapshotHeader, Staged, u64), String> {
        if !self.complete {
            return Err(format!("shard {}: the snapshot transfer is not complete", self.shard));
        }
        let staged = self.stager.finish().map_err(|e| e.to_string())?;
        Ok((self.vote, self.meta, self.header, staged, self.pairs))
    }
}

fn in_range(range: Option<&(Vec<u8>, Option<Vec<u8>>)>, key: &[u8]) -> bool {
    range.is_some_and(|(start, end)| key >= start.as_slice() && end.as_ref().is_none_or(|e| key < e.as_slice()))
}

/// Stages a snapshot taken on this node exactly as a receiver stages a
/// peer's: its chunks through [`Receiving`]. Blocking. Returns the staged
/// files and how many pairs they hold.
pub fn stage_local(storage: &Storage, snapshot: &LocalSnapshot) -> io::Result<(Staged, u64)> {
    let mut receiving: Option<Receiving> = None;
    let mut failure = None;
    produce(snapshot, &Vote::new(0, 0), 0, &mut |chunk| {
        let taken = match &mut receiving {
            None => Receiving::start(storage, &chunk).map(|r| receiving = Some(r)),
            Some(r) => r.push(&chunk).map(|_| ()).map_err(|e| format!("{e:?}")),
        };
        taken.map_err(|e| failure = Some(e)).is_ok()
    })?;
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
    if let Some(e) = failure {
        return Err(invalid(e));
    }
    let receiving = receiving.ok_or_else(|| invalid(format!("shard {}: an empty snapshot", snapshot.shard)))?;
    let (_, _, _, staged, pairs) = receiving.close().map_err(invalid)?;
    Ok((staged, pairs))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data shard `[b, y)` on a fresh store, with `n` keys of `value_len`
    /// bytes (and keys outside the range, which must not travel), one
    /// session, pinned.
    async fn snapshot_of(dir: &std::path::Path, n: usize, value_len: usize) -> (Arc<Storage>, LocalSnapshot) {
        let storage = Storage::open(dir).unwrap();
        let mut b = storage.batch();
        b.put_data(b"a-outside", b"no");
        for i in 0..n {
            b.put_data(format!("k{i:06}").as_bytes(), &vec![i as u8; value_len]);
        }
        b.put_data(b"z-outside", b"no");
        b.put_session(4, b"client", b"session");
        b.put_session(5, b"client", b"another shard's");
        storage.write_durable(b).unwrap().await.unwrap();
        let header = SnapshotHeader { range: Some((b"b".to_vec(), Some(b"y".to_vec()))), ..Default::default() };
        let local = LocalSnapshot::new(4, SnapshotMeta::default(), header, storage.pin());
        (storage, local)
    }

    fn chunks(local: &LocalSnapshot, from: u64) -> Vec<SnapshotChunk> {
        let mut out = Vec::new();
        produce(local, &Vote::new(0, 0), from, &mut |c| {
            out.push(c);
            true
        })
        .unwrap();
        out
    }

    /// Chunks are bounded, numbered without gaps, deterministic (a resume
    /// regenerates the same tail), and a receiver that takes them all stages
    /// exactly the shard's pairs.
    #[tokio::test]
    async fn a_large_shard_travels_in_bounded_deterministic_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, local) = snapshot_of(dir.path(), 3_000, 1_000).await;
        let all = chunks(&local, 0);
        assert!(all.len() >= 4, "3 MB of pairs in {} chunks", all.len());
        for (i, c) in all.iter().enumerate() {
            assert_eq!(c.seq, i as u64);
            let bytes: usize = c.keys.iter().chain(&c.values).map(Vec::len).sum();
            assert!(bytes <= CHUNK_BYTES + 1_100, "chunk {i}: {bytes} bytes");
        }
        assert!(all.last().unwrap().last && all.iter().filter(|c| c.last).count() == 1);
        let tail = chunks(&local, 3);
        assert_eq!(tail, all[3..].to_vec(), "a resume from chunk 3 sends the same chunks");

        let mut r = Receiving::start(&storage, &all[0]).unwrap();
        for c in &all[1..] {
            r.push(c).unwrap();
        }
        assert!(r.is_complete());
        let (_, _, data) = r.finish().unwrap();
        let SnapshotData::Received { pairs, staged, .. } = data else { panic!("received") };
        assert_eq!(pairs, 3_001, "3000 keys in range and the shard's one session");
        assert!(staged.bytes > 3_000_000);
    }

    /// What a receiver refuses: a gap or a resend (the transfer is kept), a
    /// key outside the header's range, keys out of order, and pairs that do
    /// not match the digest (the transfer is void).
    #[tokio::test]
    async fn a_receiver_refuses_gaps_foreign_keys_disorder_and_a_wrong_digest() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, local) = snapshot_of(dir.path(), 2_000, 1_000).await;
        let all = chunks(&local, 0);
        let start = || Receiving::start(&storage, &all[0]).unwrap();

        let mut r = start();
        r.push(&all[1]).unwrap();
        assert!(matches!(r.push(&all[1]), Err(Refused::OutOfOrder { expected: 2 })));
        assert!(matches!(r.push(&all[3]), Err(Refused::OutOfOrder { expected: 2 })));
        r.push(&all[2]).unwrap();

        let mut foreign = all[1].clone();
        foreign.keys[0] = b"a-outside".to_vec();
        assert!(matches!(start().push(&foreign), Err(Refused::Invalid(e)) if e.contains("outside the shard's range")));

        let mut disorder = all[1].clone();
        disorder.keys.swap(0, 1);
        assert!(matches!(start().push(&disorder), Err(Refused::Invalid(e)) if e.contains("out of order")));

        let mut r = start();
        let mut tampered = all.clone();
        tampered[1].values[5][0] ^= 1;
        let mut refused = None;
        for c in &tampered[1..] {
            if let Err(e) = r.push(c) {
                refused = Some(e);
            }
        }
        assert!(matches!(refused, Some(Refused::Invalid(e)) if e.contains("digest")));
        assert!(!r.is_complete());

        let bad_header = SnapshotChunk { header: vec![1, 2, 3], ..all[0].clone() };
        assert!(Receiving::start(&storage, &bad_header).is_err());
    }
}
