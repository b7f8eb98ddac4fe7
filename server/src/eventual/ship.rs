//! Shipping an eventual shard's writes to one peer.
//!
//! One task per (shard, peer) keeps a bidirectional `EcReplicate` stream
//! open and sends, in order, the outbox entries after the peer's last
//! acknowledged sequence, up to `ship_window` messages (of at most
//! `ship_batch_entries` writes and `ship_batch_bytes`) ahead of the
//! acknowledgements (pipelined: a write reaches the peer one one-way delay
//! after it is durable here, not a round trip). Only durable entries are
//! sent, so a crash can never make this node reuse a sequence a peer holds.
//!
//! When the peer's position is older than the first entry the outbox still
//! keeps, the task sends the whole range instead (resync) — every record
//! stamped no later than a watermark taken together with the outbox
//! position — then a marker saying the peer now holds everything up to that
//! position, and continues from the outbox.
//!
//! With nothing to send it sends a heartbeat every `heartbeat_interval_ms`
//! so the peer learns how far this node's clock has got (for tombstone
//! collection and staleness bounds). Any failure ends the stream; the task
//! reconnects with capped exponential backoff and resumes from the
//! acknowledged position: a partition or a restart on either side replays
//! exactly what the peer is missing.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use geokv_proto::raft::RaftMessage;
use geokv_proto::raft::raft_client::RaftClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{EcShard, EcWrite, Hlc, Ship, ShipAck, ShipBody};
use crate::node::Node;
use crate::raft::network::SHARD_METADATA_KEY;
use crate::raft::{decode, encode};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Where the next message comes from.
enum Position {
    /// Outbox entries from this sequence on.
    Outbox { next: u64 },
    /// Resync pages from `from_key` on, of records stamped `<= clock`; then
    /// a marker for outbox position `seq`.
    Resync { from_key: Vec<u8>, seq: u64, clock: Hlc },
}

/// What an in-flight message's acknowledgement moves.
enum Sent {
    Entries { last: u64 },
    ResyncPage,
    ResyncDone { seq: u64 },
    Heartbeat,
}

/// Ships `shard`'s writes to `peer` until the node stops, the peer is no
/// longer a member of the shard, or this replica left it.
pub async fn run(node: Arc<Node>, shard: Arc<EcShard>, peer: u64) {
    let mut backoff = BACKOFF_MIN;
    while shipping(&node, &shard, peer) {
        match session(&node, &shard, peer).await {
            Ok(()) => backoff = BACKOFF_MIN,
            Err(cause) => {
                let first = {
                    let mut peers = shard.peers.lock().expect("ec peers");
                    let p = peers.entry(peer).or_default();
                    let first = !p.failing;
                    p.failing = true;
                    p.recovering_since = None;
                    first
                };
                if first {
                    tracing::info!(shard = shard.id(), peer, %cause, "eventual replication to peer interrupted");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Whether this node still ships `shard` to `peer`.
fn shipping(node: &Node, shard: &Arc<EcShard>, peer: u64) -> bool {
    node.is_ready()
        && shard.is_member(peer)
        && node.eventual_shard(shard.id()).is_some_and(|running| Arc::ptr_eq(&running, shard))
}

/// One stream's life: returns `Ok` when the peer asked to rewind (reconnect
/// at once) or is no longer shipped to, `Err` on any failure.
async fn session(node: &Arc<Node>, shard: &Arc<EcShard>, peer: u64) -> Result<(), String> {
    let cfg = &shard.node().config;
    let addr = node.shard_map().node(peer).map(|n| n.addr.clone()).ok_or(format!("node {peer} not in the map"))?;
    let mut client = RaftClient::new(node.peers.channel(&addr))
        .max_decoding_message_size(geokv_proto::MAX_GRPC_MESSAGE_BYTES)
        .max_encoding_message_size(geokv_proto::MAX_GRPC_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel::<RaftMessage>(cfg.ship_window + 1);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.metadata_mut().insert(SHARD_METADATA_KEY, shard.id().into());
    let ack_timeout = node.request_timeout();
    let mut acks = tokio::time::timeout(ack_timeout, client.ec_replicate(request))
        .await
        .map_err(|_| "peer did not open the stream in time".to_string())?
        .map_err(|s| format!("open: {}", s.message()))?
        .into_inner();

    let acked = shard.peers.lock().expect("ec peers").get(&peer).map_or(0, |p| p.acked);
    let mut position = Position::Outbox { next: acked + 1 };
    if acked == 0 && shard.adding() == Some(peer) {
        // A replica being added is seeded with the whole range, whatever
        // the outbox still keeps, then follows the outbox.
        let (seq, clock) = shard.watermark();
        tracing::info!(shard = shard.id(), peer, "seeding a new replica: full resync");
        if let Some(p) = shard.peers.lock().expect("ec peers").get_mut(&peer) {
            p.resyncing = true;
        }
        position = Position::Resync { from_key: shard.desc.start.clone(), seq, clock };
    }
    let mut in_flight: VecDeque<(Sent, Instant)> = VecDeque::new();
    let mut durable_rx = shard.durable_rx();
    let mut heartbeat = tokio::time::interval(Duration::from_millis(cfg.heartbeat_interval_ms));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut idle_since = Instant::now();
    while shipping(node, shard, peer) {
        while in_flight.len() < cfg.ship_window {
            let Some((body, sent)) = next_message(shard, peer, &mut position)? else { break };
            send(shard, &tx, body).await?;
            in_flight.push_back((sent, Instant::now()));
            idle_since = Instant::now();
        }
        let ack_deadline = in_flight.front().map(|(_, at)| *at + ack_timeout);
        tokio::select! {
            reply = acks.message() => {
                let reply = reply.map_err(|s| format!("stream: {}", s.message()))?.ok_or("stream closed by peer")?;
                if !reply.error.is_empty() {
                    return Err(format!("peer refused: {}", reply.error));
                }
                let ack: ShipAck = decode(&reply.payload).map_err(|e| format!("bad ack: {e}"))?;
                let (sent, _) = in_flight.pop_front().ok_or("ack without a message in flight")?;
                if !on_ack(shard, peer, sent, &ack)? {
                    return Ok(());
                }
            }
            _ = durable_rx.changed(), if in_flight.len() < cfg.ship_window => {}
            _ = heartbeat.tick() => {
                let caught_up = matches!(position, Position::Outbox { next } if next > *durable_rx.borrow());
                if in_flight.is_empty() && caught_up && idle_since.elapsed() >= heartbeat.period() / 2 {
                    let (seq, clock) = shard.watermark();
                    if seq == *durable_rx.borrow() {
                        send(shard, &tx, ShipBody::Heartbeat { seq, clock }).await?;
                        in_flight.push_back((Sent::Heartbeat, Instant::now()));
                    }
                }
            }
            _ = sleep_until(ack_deadline) => return Err(format!("no acknowledgement within {ack_timeout:?}")),
        }
    }
    Ok(())
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

async fn send(shard: &EcShard, tx: &mpsc::Sender<RaftMessage>, body: ShipBody) -> Result<(), String> {
    let ec = shard.node();
    let ship = Ship { from: ec.me, incarnation: ec.incarnation, clock: ec.clock.now(), stable: shard.stable(), body };
    let msg = RaftMessage { shard_id: shard.id(), payload: encode(&ship), error: String::new() };
    tx.send(msg).await.map_err(|_| "stream closed".to_string())
}

/// The next message for `peer`, if there is one to send now.
fn next_message(shard: &EcShard, peer: u64, position: &mut Position) -> Result<Option<(ShipBody, Sent)>, String> {
    let cfg = &shard.node().config;
    let (_, first_kept, durable) = shard.positions();
    if let Position::Outbox { next } = *position {
        if next > durable {
            return Ok(None);
        }
        let mut entries = if next < first_kept {
            Vec::new()
        } else {
            shard.read_outbox(next, durable, cfg.ship_batch_entries).map_err(|e| e.to_string())?
        };
        let mut bytes = 0;
        let fits = entries
            .iter()
            .position(|(_, w)| {
                bytes += w.key.len() + w.record.value.as_ref().map_or(0, Vec::len);
                bytes > cfg.ship_batch_bytes
            })
            .map_or(entries.len(), |over| over.max(1));
        entries.truncate(fits);
        if let (Some((first, _)), Some((last, _))) = (entries.first(), entries.last())
            && *first == next
        {
            let last = *last;
            *position = Position::Outbox { next: last + 1 };
            return Ok(Some((ShipBody::Entries(entries), Sent::Entries { last })));
        }
        // The peer is behind what the outbox keeps: send the whole range.
        let (seq, clock) = shard.watermark();
        tracing::warn!(shard = shard.id(), peer, next, first_kept, "peer fell behind the outbox: full resync");
        shard.node().metrics.ec_resync(shard.id(), peer);
        if let Some(p) = shard.peers.lock().expect("ec peers").get_mut(&peer) {
            p.resyncing = true;
        }
        *position = Position::Resync { from_key: shard.desc.start.clone(), seq, clock };
    }
    let Position::Resync { from_key, seq, clock } = position else { unreachable!("handled above") };
    // Resync only once every write up to the watermark is durable here.
    if durable < *seq {
        return Ok(None);
    }
    let rows =
        shard.scan(from_key, cfg.ship_batch_entries, cfg.ship_batch_bytes).map_err(|e| format!("resync scan: {e}"))?;
    if rows.is_empty() {
        // The peer applies messages in order: once it has the marker, the
        // outbox entries after the watermark follow.
        let (seq, clock) = (*seq, *clock);
        *position = Position::Outbox { next: seq + 1 };
        return Ok(Some((ShipBody::ResyncDone { seq, clock }, Sent::ResyncDone { seq })));
    }
    let mut last_key = Vec::new();
    let mut writes = Vec::with_capacity(rows.len());
    let mut bytes = 0;
    for (key, value) in rows {
        if bytes > 0 && bytes + key.len() + value.len() > cfg.ship_batch_bytes {
            break;
        }
        bytes += key.len() + value.len();
        let record: super::EcRecord = decode(&value).map_err(|e| format!("resync decode: {e}"))?;
        if record.hlc <= *clock {
            writes.push(EcWrite { key: key.clone(), record });
        }
        last_key = key;
    }
    last_key.push(0);
    *from_key = last_key;
    Ok(Some((ShipBody::Resync(writes), Sent::ResyncPage)))
}

/// Applies an acknowledgement; `false` asks for a reconnect (rewind).
fn on_ack(shard: &EcShard, peer: u64, sent: Sent, ack: &ShipAck) -> Result<bool, String> {
    let durable = shard.positions().2;
    let mut peers = shard.peers.lock().expect("ec peers");
    let p = peers.entry(peer).or_default();
    p.stable = p.stable.max(ack.stable);
    if p.failing {
        p.failing = false;
        p.recovering_since = Some(Instant::now());
        tracing::info!(shard = shard.id(), peer, "eventual replication to peer resumed");
    }
    let previous = p.acked;
    if !ack.accepted {
        // The peer holds less than we thought (its data was lost or created
        // anew): start again from what it holds.
        tracing::warn!(shard = shard.id(), peer, acked = p.acked, peer_has = ack.seq, "peer asked to rewind");
        p.acked = ack.seq;
    } else {
        match sent {
            Sent::Entries { last } => p.acked = p.acked.max(last.min(ack.seq)),
            Sent::ResyncDone { seq } => {
                p.acked = p.acked.max(seq.min(ack.seq));
                p.resyncing = false;
            }
            Sent::ResyncPage | Sent::Heartbeat => {}
        }
    }
    if p.acked >= durable
        && let Some(since) = p.recovering_since.take()
    {
        shard.node().metrics.ec_catchup(shard.id(), since.elapsed());
    }
    let (acked, accepted) = (p.acked, ack.accepted);
    drop(peers);
    if acked != previous {
        shard.save_acked(peer, acked).map_err(|e| e.to_string())?;
    }
    Ok(accepted)
}
