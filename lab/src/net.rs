//! The emulated WAN: the link table and the front proxies.
//!
//! Every node has a *front proxy* listening on its advertised address. When
//! the proxy accepts a connection it identifies the sender by the
//! connection's source IP ([`Links::identify`]) and relays bytes both ways:
//! upstream on the directed link `source → node`, downstream on
//! `node → source`. Each direction is its own pipeline:
//!
//! ```text
//!   reader ──(release_at, chunk)──► bounded channel ──► writer
//!           release_at = max(now + delay + jitter,      sleeps until release_at
//!                            previous release_at)        (not at all if it passed),
//!                                                        waits while stalled, writes
//! ```
//!
//! so bytes of one connection are delayed but never reordered, and a stalled
//! direction holds whole chunks (HTTP/2 framing is never cut) until the
//! bounded channel fills and TCP backpressure reaches the sender. A link in
//! *reset* closes the connections that carry it (with an RST) and refuses new
//! ones until it is healed.
//!
//! The link table is shared by every proxy; a change wakes every waiting
//! connection through a `watch` channel, so stalls, heals and resets act on
//! existing connections at once.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use crate::regions::RegionMatrix;
use crate::{Error, Result};

/// Largest chunk a proxy reads at once, in bytes.
pub const CHUNK_BYTES: usize = 16 * 1024;
/// Chunks one direction of one connection may hold in flight (delayed or
/// stalled) before it stops reading: at most `CHUNK_BYTES * CHUNKS_IN_FLIGHT`
/// (512 KiB) buffered per direction.
pub const CHUNKS_IN_FLIGHT: usize = 32;
/// Connections one front proxy relays at once; more are closed on accept.
pub const MAX_CONNECTIONS_PER_PROXY: usize = 256;
/// Time a proxy waits to connect to its node before dropping the client.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One end of a directed link: a node, the clients of a region, or anyone
/// else (no region: no added latency, never partitioned by named shapes).
///
/// Written as `3` or `node3` for a node, `client:eu-west` for the clients of
/// a region, `external` for the rest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    Node(u64),
    Client(String),
    External,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Node(id) => write!(f, "node{id}"),
            Endpoint::Client(region) => write!(f, "client:{region}"),
            Endpoint::External => write!(f, "external"),
        }
    }
}

impl FromStr for Endpoint {
    type Err = Error;

    fn from_str(s: &str) -> Result<Endpoint> {
        let s = s.trim();
        if s == "external" {
            return Ok(Endpoint::External);
        }
        if let Some(region) = s.strip_prefix("client:") {
            if region.is_empty() {
                return Err(Error::Config("`client:` needs a region, e.g. client:eu-west".into()));
            }
            return Ok(Endpoint::Client(region.to_string()));
        }
        let digits = s.strip_prefix("node").or_else(|| s.strip_prefix('n')).unwrap_or(s);
        digits
            .parse()
            .map(Endpoint::Node)
            .map_err(|_| Error::Config(format!("{s:?} is not an endpoint: give a node (3, node3) or client:REGION")))
    }
}

impl Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Endpoint, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A directed link: bytes flowing from `.0` to `.1`.
pub type Link = (Endpoint, Endpoint);

/// Whether a link carries bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Partition {
    /// Bytes flow (after their delay).
    #[default]
    None,
    /// Bytes stop and are held; senders feel TCP backpressure. New
    /// connections are accepted and stalled too. Healing delivers the held
    /// bytes in order.
    Stall,
    /// Connections carrying the link are closed with an RST and new ones are
    /// refused until healed.
    Reset,
}

impl FromStr for Partition {
    type Err = Error;

    fn from_str(s: &str) -> Result<Partition> {
        match s {
            "stall" => Ok(Partition::Stall),
            "reset" => Ok(Partition::Reset),
            "none" => Ok(Partition::None),
            other => Err(Error::Config(format!("partition mode {other:?} is not stall or reset"))),
        }
    }
}

/// What the operator changed on one directed link. A link without an entry
/// has the matrix latency, the lab's jitter and no partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkFault {
    pub partition: Partition,
    /// One-way delay replacing the matrix's RTT/2, in milliseconds.
    pub delay_ms: Option<u64>,
    /// Jitter replacing the lab's default, in milliseconds.
    pub jitter_ms: Option<u64>,
}

impl LinkFault {
    fn is_clear(&self) -> bool {
        *self == LinkFault::default()
    }
}

/// A link's effective behaviour right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkView {
    /// One-way delay added to every byte.
    pub delay: Duration,
    /// Up to this much more, uniformly random per chunk (never reordering).
    pub jitter: Duration,
    pub partition: Partition,
}

struct Table {
    matrix: RegionMatrix,
    /// Region index of every node.
    node_regions: HashMap<u64, usize>,
    /// Who a source IP is.
    sources: HashMap<IpAddr, Endpoint>,
    intra_region_rtt_ms: u64,
    default_jitter_ms: u64,
    faults: BTreeMap<Link, LinkFault>,
}

impl Table {
    fn region_of(&self, endpoint: &Endpoint) -> Option<usize> {
        match endpoint {
            Endpoint::Node(id) => self.node_regions.get(id).copied(),
            Endpoint::Client(region) => self.matrix.index_of(region),
            Endpoint::External => None,
        }
    }
}

/// The link table shared by every proxy: the region matrix, who is where,
/// and the operator's faults. Every change wakes the connections that wait on
/// it.
///
/// Invariants:
/// - every node has a region of the matrix; every client endpoint names one;
/// - links without a fault have no entry (`faults()` lists only real ones).
pub struct Links {
    table: RwLock<Table>,
    changed: watch::Sender<u64>,
}

impl Links {
    /// A table over `matrix` with no nodes yet.
    pub fn new(matrix: RegionMatrix, intra_region_rtt_ms: u64, default_jitter_ms: u64) -> Arc<Links> {
        Arc::new(Links {
            table: RwLock::new(Table {
                matrix,
                node_regions: HashMap::new(),
                sources: HashMap::new(),
                intra_region_rtt_ms,
                default_jitter_ms,
                faults: BTreeMap::new(),
            }),
            changed: watch::channel(0).0,
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn update<T>(&self, change: impl FnOnce(&mut Table) -> T) -> T {
        let result = {
            let mut table = self.table.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            change(&mut table)
        };
        self.changed.send_modify(|generation| *generation += 1);
        result
    }

    /// Places node `id` in `region`; connections from `ip` are from it.
    pub fn add_node(&self, id: u64, region: &str, ip: IpAddr) -> Result<()> {
        let index = self.region_index(region)?;
        self.update(|t| {
            t.node_regions.insert(id, index);
            t.sources.insert(ip, Endpoint::Node(id));
        });
        Ok(())
    }

    /// Connections from `ip` are clients in `region`.
    pub fn add_client_region(&self, region: &str, ip: IpAddr) -> Result<()> {
        self.region_index(region)?;
        self.update(|t| t.sources.insert(ip, Endpoint::Client(region.to_string())));
        Ok(())
    }

    fn region_index(&self, region: &str) -> Result<usize> {
        self.read().matrix.index_of(region).ok_or_else(|| Error::Unknown { what: "region", name: region.into() })
    }

    /// Who connects from `ip`: a node, a region's clients, or external.
    pub fn identify(&self, ip: IpAddr) -> Endpoint {
        self.read().sources.get(&ip).cloned().unwrap_or(Endpoint::External)
    }

    /// Checks that an endpoint names a known node or region.
    pub fn check(&self, endpoint: &Endpoint) -> Result<()> {
        let table = self.read();
        match endpoint {
            Endpoint::Node(id) if !table.node_regions.contains_key(id) => {
                Err(Error::Unknown { what: "node", name: id.to_string() })
            }
            Endpoint::Client(region) if table.matrix.index_of(region).is_none() => {
                Err(Error::Unknown { what: "region", name: region.clone() })
            }
            _ => Ok(()),
        }
    }

    /// How the link `from → to` behaves now.
    pub fn view(&self, from: &Endpoint, to: &Endpoint) -> LinkView {
        let table = self.read();
        let base_delay_ms = match (table.region_of(from), table.region_of(to)) {
            (Some(a), Some(b)) if a == b => table.intra_region_rtt_ms / 2,
            (Some(a), Some(b)) => table.matrix.rtt_ms(a, b) / 2,
            _ => 0,
        };
        let external = *from == Endpoint::External || *to == Endpoint::External;
        let default_jitter_ms = if external { 0 } else { table.default_jitter_ms };
        let fault = table.faults.get(&(from.clone(), to.clone()));
        LinkView {
            delay: Duration::from_millis(fault.and_then(|f| f.delay_ms).unwrap_or(base_delay_ms)),
            jitter: Duration::from_millis(fault.and_then(|f| f.jitter_ms).unwrap_or(default_jitter_ms)),
            partition: fault.map(|f| f.partition).unwrap_or_default(),
        }
    }

    /// Sets the partition state of each directed link.
    pub fn set_partition(&self, links: impl IntoIterator<Item = Link>, partition: Partition) {
        self.edit(links, |fault| fault.partition = partition);
    }

    /// Overrides the one-way delay and/or jitter of each directed link
    /// (`None` keeps the current setting).
    pub fn set_latency(&self, links: impl IntoIterator<Item = Link>, delay_ms: Option<u64>, jitter_ms: Option<u64>) {
        self.edit(links, |fault| {
            if delay_ms.is_some() {
                fault.delay_ms = delay_ms;
            }
            if jitter_ms.is_some() {
                fault.jitter_ms = jitter_ms;
            }
        });
    }

    fn edit(&self, links: impl IntoIterator<Item = Link>, change: impl Fn(&mut LinkFault)) {
        let links: Vec<Link> = links.into_iter().collect();
        self.update(|t| {
            for link in links {
                let fault = t.faults.entry(link.clone()).or_default();
                change(fault);
                if fault.is_clear() {
                    t.faults.remove(&link);
                }
            }
        });
    }

    /// Clears partitions (and, with `latency`, latency overrides) on the given
    /// links, or on every link when `links` is `None`.
    pub fn heal(&self, links: Option<Vec<Link>>, latency: bool) {
        self.update(|t| {
            let targets: Vec<Link> = links.unwrap_or_else(|| t.faults.keys().cloned().collect());
            for link in targets {
                if let Some(fault) = t.faults.get_mut(&link) {
                    fault.partition = Partition::None;
                    if latency {
                        fault.delay_ms = None;
                        fault.jitter_ms = None;
                    }
                    if fault.is_clear() {
                        t.faults.remove(&link);
                    }
                }
            }
        });
    }

    /// Every link with a fault or override.
    pub fn faults(&self) -> Vec<(Link, LinkFault)> {
        self.read().faults.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Resolves once `from → to` is not stalled (it may be reset: the caller
    /// handles that separately).
    async fn wait_flowing(&self, from: &Endpoint, to: &Endpoint) {
        loop {
            let mut changed = self.changed.subscribe();
            if self.view(from, to).partition != Partition::Stall {
                return;
            }
            if changed.changed().await.is_err() {
                return;
            }
        }
    }

    /// Resolves once any of `links` is reset.
    async fn wait_reset(&self, links: &[&Link]) {
        loop {
            let mut changed = self.changed.subscribe();
            if links.iter().any(|(from, to)| self.view(from, to).partition == Partition::Reset) {
                return;
            }
            if changed.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Runs a front proxy for node `node` on `listener`, relaying to `target`,
/// until the task is aborted. Aborting it also drops every connection it
/// relays.
pub async fn run_front_proxy(listener: TcpListener, target: SocketAddr, node: Endpoint, links: Arc<Links>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS_PER_PROXY));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (inbound, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::warn!(%node, cause = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    tracing::warn!(%node, %peer, limit = MAX_CONNECTIONS_PER_PROXY, "too many connections; closing");
                    continue;
                };
                let source = links.identify(peer.ip());
                let (links, node) = (links.clone(), node.clone());
                connections.spawn(async move {
                    relay(inbound, target, source, node, &links).await;
                    drop(permit);
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Closes a socket with an RST rather than a FIN.
fn reset_socket(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

async fn relay(inbound: TcpStream, target: SocketAddr, source: Endpoint, node: Endpoint, links: &Links) {
    let up: Link = (source.clone(), node.clone());
    let down: Link = (node, source);
    let reset = |link: &Link| links.view(&link.0, &link.1).partition == Partition::Reset;
    if reset(&up) || reset(&down) {
        reset_socket(&inbound);
        return;
    }
    let outbound = match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(_)) | Err(_) => {
            // The node is down: the client sees its connection closed, as
            // it would see a refused connection across a real network.
            reset_socket(&inbound);
            return;
        }
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (mut in_read, mut in_write) = inbound.into_split();
    let (mut out_read, mut out_write) = outbound.into_split();
    let both = [&up, &down];
    let was_reset = {
        let transfer = async {
            tokio::join!(
                one_way(&mut in_read, &mut out_write, &up, links),
                one_way(&mut out_read, &mut in_write, &down, links),
            )
        };
        tokio::select! {
            _ = transfer => false,
            _ = links.wait_reset(&both) => true,
        }
    };
    if was_reset {
        reset_socket(in_read.as_ref());
        reset_socket(out_read.as_ref());
    }
}

/// How early [`sleep_until_precisely`] asks to be woken, to spend the rest
/// yielding: a task woken from a timerfd runs ~0.13 ms late at the median
/// on the 2-core VMs this is measured on.
const TIMER_WAKE_EARLY: Duration = Duration::from_micros(150);

/// Waits until `deadline` on a timerfd (nanosecond resolution; one per
/// direction of a connection, kept in `timer` and reset each time), woken
/// [`TIMER_WAKE_EARLY`] before it and yielding to other tasks until it has
/// passed. tokio's own timer works in whole milliseconds and rounds every
/// sleep up to the next tick: measured, that added 1.3 ms to each direction
/// of a delayed link (`lab/examples/proxy_overhead.rs`), far above the
/// lab's 0.2 ms budget for its own cost. Falls back to tokio's timer if a
/// timerfd cannot be had (out of file descriptors).
async fn sleep_until_precisely(timer: &mut Option<tokio_timerfd::Delay>, deadline: Instant) {
    let deadline_std = deadline.into_std().checked_sub(TIMER_WAKE_EARLY).unwrap_or_else(std::time::Instant::now);
    match timer {
        Some(t) => t.reset(deadline_std),
        None => *timer = tokio_timerfd::Delay::new(deadline_std).ok(),
    }
    let precise = match timer.as_mut() {
        Some(t) => t.await.is_ok(),
        None => false,
    };
    if !precise {
        tokio::time::sleep_until(deadline).await;
    }
    while Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
}

/// Relays one direction of a connection with the link's delay, jitter and
/// stalls, until EOF or an error on either side; then half-closes the
/// destination.
async fn one_way(source: &mut OwnedReadHalf, sink: &mut OwnedWriteHalf, link: &Link, links: &Links) {
    let (from, to) = link;
    let (chunks_tx, mut chunks_rx) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS_IN_FLIGHT);
    let read = async move {
        let mut last_release = Instant::now();
        loop {
            let mut chunk = vec![0u8; CHUNK_BYTES];
            let n = match source.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            chunk.truncate(n);
            let view = links.view(from, to);
            let jitter_ms = view.jitter.as_millis() as u64;
            let jitter = if jitter_ms == 0 { 0 } else { rand::rng().random_range(0..=jitter_ms) };
            let release = (Instant::now() + view.delay + Duration::from_millis(jitter)).max(last_release);
            last_release = release;
            if chunks_tx.send((release, chunk)).await.is_err() {
                break;
            }
        }
    };
    let write = async move {
        let mut timer = None;
        while let Some((release, chunk)) = chunks_rx.recv().await {
            // A chunk already due goes out at once: a zero delay adds no
            // timer tick.
            if release > Instant::now() {
                sleep_until_precisely(&mut timer, release).await;
            }
            links.wait_flowing(from, to).await;
            if sink.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = sink.shutdown().await;
    };
    tokio::join!(read, write);
}
