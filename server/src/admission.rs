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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

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
