//! Admission of client requests: at most `limits.max_inflight_requests`
//! served at once per node, and a fair, bounded wait for the rest.
//!
//! A request that finds no free slot may wait for one, first come first
//! served (tokio's semaphore is FIFO), for at most [`MAX_WAIT`], but only
//! while its connection has fewer than [`WAITING_PER_CONNECTION`] requests
//! waiting; otherwise it is refused at once (`RESOURCE_EXHAUSTED` with a
//! retry hint). So a flood of requests on some connections cannot keep
//! another connection's requests from their turn: each connection holds at
//! most a few places in the queue, and the queue (so the memory waiting
//! requests hold) is bounded by the connections' count times that.
//!
//! What a node has read for clients is bounded too ([`ResponseBudget`]): a
//! read reserves room for its result (at most `limits.max_response_bytes`
//! over all connections, a quarter of that per connection) before it reads,
//! and keeps the reservation until the response has left the node, i.e.
//! until HTTP/2 flow control let the client take it ([`ResponseHoldLayer`]).
//! A client that asks for much and reads slowly (or not at all) so holds at
//! most its share; more of its reads are refused at once, and other
//! clients' reads wait for room as for a slot.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};

/// How long a request may wait for a slot before it is refused.
pub const MAX_WAIT: Duration = Duration::from_millis(1000);
/// Requests one connection may have waiting at once.
pub const WAITING_PER_CONNECTION: usize = 2;

#[derive(Debug)]
pub struct Admission {
    slots: Semaphore,
    limit: usize,
    /// Requests waiting, per connection (absent: none).
    waiting: Mutex<HashMap<Option<SocketAddr>, usize>>,
}

/// A place in the queue; given back when dropped.
struct Waiting<'a> {
    admission: &'a Admission,
    conn: Option<SocketAddr>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut waiting = self.admission.waiting.lock().expect("admission lock");
        if let Some(n) = waiting.get_mut(&self.conn) {
            *n -= 1;
            if *n == 0 {
                waiting.remove(&self.conn);
            }
        }
    }
}

impl Admission {
    pub fn new(limit: usize) -> Admission {
        Admission { slots: Semaphore::new(limit), limit, waiting: Mutex::default() }
    }

    /// Requests being served now.
    pub fn in_use(&self) -> usize {
        self.limit.saturating_sub(self.slots.available_permits())
    }

    /// A slot for a request that came on connection `conn`, or `None`:
    /// refuse it (see the module docs).
    pub async fn admit(&self, conn: Option<SocketAddr>) -> Option<SemaphorePermit<'_>> {
        if let Ok(permit) = self.slots.try_acquire() {
            return Some(permit);
        }
        let _place = {
            let mut waiting = self.waiting.lock().expect("admission lock");
            let n = waiting.entry(conn).or_default();
            if *n >= WAITING_PER_CONNECTION {
                return None;
            }
            *n += 1;
            Waiting { admission: self, conn }
        };
        tokio::time::timeout(MAX_WAIT, self.slots.acquire()).await.ok()?.ok()
    }
}

/// Room for read results not yet taken by their clients, node-wide and per
/// connection (see the module docs). Counted in KiB.
#[derive(Debug)]
pub struct ResponseBudget {
    kib: Arc<Semaphore>,
    total_kib: u32,
    per_connection_kib: u64,
    /// KiB held (or waited for), per connection (absent: none).
    held: Arc<Mutex<HashMap<Option<SocketAddr>, u64>>>,
}

/// Why a reservation was refused (the request is refused with
/// `RESOURCE_EXHAUSTED`, nothing done).
#[derive(Debug, PartialEq, Eq)]
pub enum OverBudget {
    /// The connection holds its share already: its client reads slowly.
    Connection { held_bytes: u64, share_bytes: u64 },
    /// The node had no room within [`MAX_WAIT`].
    Node { limit_bytes: u64 },
}

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OverBudget::Connection { held_bytes, share_bytes } => write!(
                f,
                "this connection's earlier responses ({} KiB) are not taken yet, and another would pass its share of \
                 {} KiB (a quarter of limits.max_response_bytes): read them first",
                held_bytes >> 10,
                share_bytes >> 10
            ),
            OverBudget::Node { limit_bytes } => write!(
                f,
                "the node holds its limit of {} KiB of responses not yet taken by clients (limits.max_response_bytes)",
                limit_bytes >> 10
            ),
        }
    }
}

/// Room reserved for one response; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    permit: OwnedSemaphorePermit,
    held: Arc<Mutex<HashMap<Option<SocketAddr>, u64>>>,
    conn: Option<SocketAddr>,
}

fn kib_of(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX).max(1)
}

fn give_back(held: &Mutex<HashMap<Option<SocketAddr>, u64>>, conn: Option<SocketAddr>, kib: u64) {
    let mut held = held.lock().expect("response budget lock");
    if let Some(n) = held.get_mut(&conn) {
        *n = n.saturating_sub(kib);
        if *n == 0 {
            held.remove(&conn);
        }
    }
}

impl ResponseBudget {
    pub fn new(limit_bytes: usize) -> ResponseBudget {
        let total_kib = kib_of(limit_bytes).min(Semaphore::MAX_PERMITS as u32);
        ResponseBudget {
            kib: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
            per_connection_kib: u64::from(total_kib / 4).max(1),
            held: Arc::default(),
        }
    }

    /// Bytes reserved now, over all connections.
    pub fn in_use_bytes(&self) -> u64 {
        u64::from(self.total_kib.saturating_sub(self.kib.available_permits() as u32)) << 10
    }

    /// Room for a response of up to `bytes` to connection `conn` (more than
    /// the whole budget is reserved as the whole budget). Refused at once
    /// when the connection already holds responses and this one would pass
    /// its share; otherwise waits for room up to [`MAX_WAIT`].
    pub async fn reserve(&self, conn: Option<SocketAddr>, bytes: usize) -> Result<Reservation, OverBudget> {
        self.reserve_within(conn, bytes, bytes).await
    }

    /// Room for a response that may be cut short (a scan page): as much of
    /// `max_bytes` as is free now, within the connection's share, and at
    /// least `min_bytes`, for which it waits as [`ResponseBudget::reserve`]
    /// does. So under pressure pages get shorter before reads are refused.
    pub async fn reserve_within(
        &self,
        conn: Option<SocketAddr>,
        min_bytes: usize,
        max_bytes: usize,
    ) -> Result<Reservation, OverBudget> {
        let max_kib = kib_of(max_bytes).min(self.total_kib);
        let min_kib = kib_of(min_bytes).min(max_kib);
        let waited_for = {
            let mut held = self.held.lock().expect("response budget lock");
            let n = held.entry(conn).or_default();
            let room_in_share = self.per_connection_kib.saturating_sub(*n);
            if *n > 0 && room_in_share < u64::from(min_kib) {
                let refusal =
                    OverBudget::Connection { held_bytes: *n << 10, share_bytes: self.per_connection_kib << 10 };
                return Err(refusal);
            }
            let want = if *n > 0 { max_kib.min(room_in_share as u32) } else { max_kib };
            let free = (self.kib.available_permits() as u32).min(want);
            let taken =
                self.kib.clone().try_acquire_many_owned(want).ok().or_else(|| {
                    (free >= min_kib).then(|| self.kib.clone().try_acquire_many_owned(free).ok()).flatten()
                });
            match taken {
                Some(permit) => {
                    *n += permit.num_permits() as u64;
                    return Ok(Reservation { permit, held: self.held.clone(), conn });
                }
                None => {
                    *n += u64::from(min_kib);
                    min_kib
                }
            }
        };
        match tokio::time::timeout(MAX_WAIT, self.kib.clone().acquire_many_owned(waited_for)).await {
            Ok(Ok(permit)) => Ok(Reservation { permit, held: self.held.clone(), conn }),
            _ => {
                give_back(&self.held, conn, u64::from(waited_for));
                Err(OverBudget::Node { limit_bytes: u64::from(self.total_kib) << 10 })
            }
        }
    }
}

impl Reservation {
    /// Gives back what a response of `bytes` does not need.
    pub fn shrink_to(&mut self, bytes: usize) {
        let keep = kib_of(bytes) as usize;
        let have = self.permit.num_permits();
        if keep < have {
            drop(self.permit.split(have - keep));
            give_back(&self.held, self.conn, (have - keep) as u64);
        }
    }

    pub fn bytes(&self) -> u64 {
        (self.permit.num_permits() as u64) << 10
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        give_back(&self.held, self.conn, self.permit.num_permits() as u64);
    }
}

/// The reservation of one response, carried in its extensions from the
/// handler to [`ResponseHoldLayer`] (extensions must be `Clone`).
#[derive(Clone, Debug, Default)]
pub struct ResponseHold(Arc<Mutex<Option<Reservation>>>);

impl ResponseHold {
    pub fn set(&self, reservation: Reservation) {
        *self.0.lock().expect("hold lock") = Some(reservation);
    }

    /// Gives back what a response of `bytes` does not need.
    pub fn shrink_to(&self, bytes: usize) {
        if let Some(r) = self.0.lock().expect("hold lock").as_mut() {
            r.shrink_to(bytes);
        }
    }

    /// `response`, carrying this hold to [`ResponseHoldLayer`].
    pub fn attach<T>(self, mut response: tonic::Response<T>) -> tonic::Response<T> {
        if self.0.lock().expect("hold lock").is_some() {
            response.extensions_mut().insert(self);
        }
        response
    }

    fn take(&self) -> Option<Reservation> {
        self.0.lock().expect("hold lock").take()
    }
}

/// Keeps a response's [`Reservation`] (from its [`ResponseHold`]) until
/// its body is dropped: hyper drops the body once it has handed the last
/// of it to HTTP/2 and that found room in the client's flow-control window,
/// or when the stream or connection ends.
#[derive(Clone, Copy, Debug, Default)]
pub struct ResponseHoldLayer;

impl<S> tower::Layer<S> for ResponseHoldLayer {
    type Service = ResponseHoldService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ResponseHoldService { inner }
    }
}

#[derive(Clone, Debug)]
pub struct ResponseHoldService<S> {
    inner: S,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for ResponseHoldService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            let Some(reservation) = response.extensions_mut().remove::<ResponseHold>().and_then(|h| h.take()) else {
                return Ok(response);
            };
            Ok(response.map(|body| {
                tonic::body::Body::new(body.map_frame(move |frame| {
                    let _kept_until_the_body_is_dropped = &reservation;
                    frame
                }))
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(port: u16) -> Option<SocketAddr> {
        Some(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// With every slot taken, a connection queues at most its share and
    /// waits its turn; another connection still gets a place, and is
    /// served first come first served when a slot frees.
    #[tokio::test]
    async fn a_busy_connection_cannot_take_every_place_in_the_queue() {
        let admission = std::sync::Arc::new(Admission::new(1));
        let held = admission.admit(conn(1)).await.expect("a free slot");
        assert_eq!(admission.in_use(), 1);
        // Connection 1 fills its places in the queue; one more is refused at once.
        let mut queued = Vec::new();
        for _ in 0..WAITING_PER_CONNECTION {
            let a = admission.clone();
            queued.push(tokio::spawn(async move { a.admit(conn(1)).await.is_some() }));
        }
        tokio::task::yield_now().await;
        let refused_at_once = tokio::time::timeout(Duration::from_millis(50), admission.admit(conn(1))).await;
        assert!(matches!(refused_at_once, Ok(None)), "no wait beyond the connection's share");
        // Connection 2 still queues, and a free slot serves the queue in order.
        let a = admission.clone();
        let other = tokio::spawn(async move { a.admit(conn(2)).await.is_some() });
        drop(held);
        let mut served = 0;
        for q in queued {
            served += usize::from(q.await.unwrap());
        }
        assert!(served >= 1, "the first in line got the slot");
        let _ = other.await.unwrap();
        assert!(admission.waiting.lock().unwrap().is_empty(), "every place given back");
    }

    /// A connection holding responses cannot take more than its share
    /// (refused at once, not queued), another connection still gets room,
    /// and what a response did not need or no longer holds is given back.
    #[tokio::test]
    async fn a_slow_reader_holds_at_most_its_share_of_the_response_budget() {
        let budget = ResponseBudget::new(16 << 20);
        let share = 4 << 20;
        let mut first = budget.reserve(conn(1), 3 << 20).await.expect("room");
        assert_eq!(budget.in_use_bytes(), 3 << 20);
        let over = budget.reserve(conn(1), 2 << 20).await.expect_err("over the share");
        assert_eq!(over, OverBudget::Connection { held_bytes: 3 << 20, share_bytes: share });
        let other = budget.reserve(conn(2), 4 << 20).await.expect("another connection has room");
        // A response smaller than reserved gives the rest back at once.
        first.shrink_to(100);
        assert_eq!(first.bytes(), 1024);
        assert_eq!(budget.in_use_bytes(), (4 << 20) + 1024);
        let second = budget.reserve(conn(1), 2 << 20).await.expect("within the share again");
        // A page that may be cut short takes what the share leaves.
        let page = budget.reserve_within(conn(1), 1 << 20, 5 << 20).await.expect("the rest of the share");
        assert_eq!(page.bytes(), (2 << 20) - 1024);
        drop(page);
        // Alone, a connection may hold one response larger than its share.
        drop((first, second, other));
        assert_eq!(budget.in_use_bytes(), 0);
        assert!(budget.held.lock().unwrap().is_empty(), "nothing counted once given back");
        let large = budget.reserve(conn(1), 64 << 20).await.expect("one response, clamped to the budget");
        assert_eq!(large.bytes(), 16 << 20);
    }

    /// With the node's budget taken, a read waits for room (served once it
    /// frees) and is refused after the bound.
    #[tokio::test]
    async fn a_read_waits_for_room_then_is_refused() {
        let budget = std::sync::Arc::new(ResponseBudget::new(16 << 20));
        let mut held = Vec::new();
        for port in 1..=4 {
            held.push(budget.reserve(conn(port), 4 << 20).await.expect("room"));
        }
        let started = std::time::Instant::now();
        let refused = budget.reserve(conn(5), 1 << 20).await.expect_err("no room");
        assert_eq!(refused, OverBudget::Node { limit_bytes: 16 << 20 });
        assert!(started.elapsed() >= MAX_WAIT);
        assert!(!budget.held.lock().unwrap().contains_key(&conn(5)), "a refused wait holds nothing");
        // A page that may be short takes whatever is free now, if enough.
        drop(held.pop());
        let page = budget.reserve_within(conn(6), 1 << 20, 5 << 20).await.expect("what is free");
        assert_eq!(page.bytes(), 4 << 20);
        held.push(page);
        let b = budget.clone();
        let waiting = tokio::spawn(async move { b.reserve(conn(5), 1 << 20).await.map(|r| r.bytes()) });
        tokio::task::yield_now().await;
        held.pop();
        assert_eq!(waiting.await.unwrap(), Ok(1 << 20), "served once room freed");
    }

    /// Nobody waits longer than the bound.
    #[tokio::test]
    async fn a_wait_ends_in_refusal_after_the_bound() {
        let admission = Admission::new(1);
        let _held = admission.admit(None).await.unwrap();
        let started = std::time::Instant::now();
        assert!(admission.admit(None).await.is_none());
        assert!(started.elapsed() >= MAX_WAIT);
    }
}
