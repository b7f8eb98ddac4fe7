//! `Admin.ExportShard`: one shard, consistently, for `kvctl backup`.
//!
//! A Raft shard's leader confirms its leadership with a quorum round (the
//! linearizable read's barrier), waits until it has applied that index and
//! pins the database: everything streamed comes from that one view, as of
//! the applied index it records. Pairs go out in ~1 MiB chunks, read on a
//! blocking thread into a channel of two chunks, so memory stays at a few
//! chunks whatever the shard's size. An eventual shard is read from this
//! replica as it is.

use std::sync::Arc;

use geokv_proto::admin::{ExportChunk, ExportHeader, ExportPair, ExportSession, ExportTrailer};
use geokv_proto::kv::Hlc as PbHlc;
use openraft::async_runtime::WatchReceiver;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::node::Node;
use crate::raft::command::Record;
use crate::raft::read_index::RoundError;
use crate::raft::state_machine::RangeRecord;
use crate::raft::{LogId, decode};
use crate::shards::ShardDesc;
use crate::storage::{MetaFamily, Pin, Section, apply_meta_tag};

/// About this many bytes of keys and values per chunk.
const CHUNK_BYTES: usize = 1 << 20;

pub type ExportStream = ReceiverStream<Result<ExportChunk, Status>>;

/// The running digest of a shard's pairs (see `ExportTrailer.sha256`).
struct Digest(ring::digest::Context);

impl Digest {
    fn new() -> Digest {
        Digest(ring::digest::Context::new(&ring::digest::SHA256))
    }

    fn add(&mut self, pair: &ExportPair) {
        geokv_proto::export_pair_digest_input(pair, |bytes| self.0.update(bytes));
    }
}

/// Fills and sends chunks; `false` once the receiver is gone.
struct Sender {
    tx: mpsc::Sender<Result<ExportChunk, Status>>,
    chunk: ExportChunk,
    bytes: usize,
    digest: Digest,
    pairs: u64,
    sessions: u64,
}

impl Sender {
    fn new(tx: mpsc::Sender<Result<ExportChunk, Status>>, header: ExportHeader) -> Sender {
        let chunk = ExportChunk { header: Some(header), ..Default::default() };
        Sender { tx, chunk, bytes: 0, digest: Digest::new(), pairs: 0, sessions: 0 }
    }

    fn pair(&mut self, pair: ExportPair) -> bool {
        self.digest.add(&pair);
        self.pairs += 1;
        self.bytes += pair.key.len() + pair.value.len();
        self.chunk.pairs.push(pair);
        self.flush_if_full()
    }

    fn session(&mut self, key: &[u8], value: &[u8]) -> bool {
        self.sessions += 1;
        self.bytes += key.len() + value.len();
        self.chunk.sessions.push(ExportSession { key: key.to_vec(), value: value.to_vec() });
        self.flush_if_full()
    }

    fn flush_if_full(&mut self) -> bool {
        if self.bytes < CHUNK_BYTES {
            return true;
        }
        self.bytes = 0;
        self.tx.blocking_send(Ok(std::mem::take(&mut self.chunk))).is_ok()
    }

    fn finish(mut self) {
        let sha256 = self.digest.0.finish().as_ref().to_vec();
        self.chunk.trailer = Some(ExportTrailer { pairs: self.pairs, sessions: self.sessions, sha256 });
        let _ = self.tx.blocking_send(Ok(self.chunk));
    }

    fn fail(self, status: Status) {
        let _ = self.tx.blocking_send(Err(status));
    }
}

fn hlc(h: crate::eventual::hlc::Hlc) -> PbHlc {
    PbHlc { physical_ms: h.physical_ms, logical: h.logical, node_id: h.node }
}

/// Starts exporting `desc` from this node (see the module docs).
pub async fn export(node: &Arc<Node>, desc: ShardDesc) -> Result<ExportStream, Status> {
    let shard = desc.id;
    let header = |applied_index, epoch, start: Vec<u8>, end: Option<Vec<u8>>| ExportHeader {
        shard_id: shard,
        epoch,
        unbounded_end: end.is_none(),
        start,
        end: end.unwrap_or_default(),
        eventual: desc.is_eventual(),
        applied_index,
        node_id: node.config.node_id,
        preferred_leader_region: desc.preferred_leader_region.clone().unwrap_or_default(),
    };
    let (tx, rx) = mpsc::channel(2);
    if desc.is_eventual() {
        let ec = node
            .eventual_shard(shard)
            .ok_or_else(|| Status::not_found(format!("this node holds no replica of eventual shard {shard}")))?;
        let mut out = Sender::new(tx, header(0, desc.epoch, desc.start.clone(), desc.end.clone()));
        tokio::task::spawn_blocking(move || {
            let mut from = desc.start.clone();
            loop {
                let page = match ec.scan(&from, 1024, CHUNK_BYTES) {
                    Ok(page) => page,
                    Err(e) => return out.fail(Status::internal(format!("eventual shard {shard}: {e}"))),
                };
                for (key, bytes) in &page {
                    let record: crate::eventual::EcRecord = match decode(bytes) {
                        Ok(r) => r,
                        Err(e) => return out.fail(Status::data_loss(format!("eventual shard {shard}: {e}"))),
                    };
                    let Some(value) = record.value else { continue };
                    let pair = ExportPair { key: key.clone(), value, version: 0, hlc: Some(hlc(record.hlc)) };
                    if !out.pair(pair) {
                        return;
                    }
                }
                match page.last() {
                    // A page ends at 1,024 records or at CHUNK_BYTES: an
                    // empty page ends the range.
                    Some((last, _)) => from = [last.as_slice(), &[0]].concat(),
                    None => break,
                }
            }
            out.finish();
        });
        return Ok(ReceiverStream::new(rx));
    }

    let raft = node.group(shard).await.ok_or_else(|| Status::not_found(format!("no replica of shard {shard} here")))?;
    let index = match node.leader_read_index(shard, &raft).await {
        Ok(index) => index,
        Err(RoundError::Raft(e)) => {
            let leader = raft.metrics().borrow_watched().current_leader;
            let hint = leader.and_then(|l| node.shard_map().node(l).map(|n| format!(": ask node {l} at {}", n.addr)));
            return Err(Status::failed_precondition(format!(
                "node {} does not lead shard {shard}{} ({e})",
                node.config.node_id,
                hint.unwrap_or_default()
            )));
        }
        Err(e) => return Err(Status::unavailable(format!("shard {shard}: {e:?}"))),
    };
    node.wait_applied(&raft, index).await.map_err(|e| Status::unavailable(format!("shard {shard}: {e}")))?;
    let pin = node.storage.pin();
    let meta = |tag| pin.get_meta(MetaFamily::Apply, shard, tag).map_err(|e| Status::internal(e.to_string()));
    let applied = match meta(apply_meta_tag::APPLIED)? {
        Some(bytes) => decode::<LogId>(&bytes).map_err(|e| Status::data_loss(e.to_string()))?.index,
        None => 0,
    };
    let (start, end, epoch) = match meta(apply_meta_tag::RANGE)? {
        Some(bytes) => decode::<RangeRecord>(&bytes).map_err(|e| Status::data_loss(e.to_string()))?,
        None => (desc.start.clone(), desc.end.clone(), desc.epoch),
    };
    let out = Sender::new(tx, header(applied, epoch, start.clone(), end.clone()));
    tokio::task::spawn_blocking(move || stream_pinned(pin, shard, (start, end), out));
    Ok(ReceiverStream::new(rx))
}

fn stream_pinned(pin: Pin, shard: u64, (start, end): (Vec<u8>, Option<Vec<u8>>), mut out: Sender) {
    let mut failure = None;
    let mut open = true;
    let scanned = pin.scan(Section::Data, shard, (&start, end.as_deref()), &mut |key, bytes| {
        match decode::<Record>(bytes) {
            Ok(record) => {
                open =
                    out.pair(ExportPair { key: key.to_vec(), value: record.value, version: record.version, hlc: None });
            }
            Err(e) => failure = Some(Status::data_loss(format!("shard {shard}: a record does not decode: {e}"))),
        }
        open && failure.is_none()
    });
    if let Err(e) = scanned {
        failure = Some(Status::internal(format!("shard {shard}: {e}")));
    }
    if let Some(status) = failure {
        return out.fail(status);
    }
    if !open {
        return;
    }
    let scanned = pin.scan(Section::Sessions, shard, (&start, end.as_deref()), &mut |key, value| {
        open = out.session(key, value);
        open
    });
    match scanned {
        Err(e) => out.fail(Status::internal(format!("shard {shard}: {e}"))),
        Ok(()) if open => out.finish(),
        Ok(()) => {}
    }
}
