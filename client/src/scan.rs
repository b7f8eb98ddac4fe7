//! Range scans across shards.
//!
//! A `Scan` RPC is served by the shard that owns its start key and returns at
//! most one page; the response says where to continue (`resume_key`), which is
//! either inside the same shard (the page was full) or the next shard's start.
//! [`Scan`] follows those resume keys until the range is exhausted or the
//! caller's limit is reached, retrying each page like any other read; it is
//! awaited for a `Vec`, or read page by page as a stream ([`Scan::stream`]). Pages
//! are independent reads: a scan is not a snapshot of the whole range.
//!
//! Every page is checked before it is used: keys strictly increasing, inside
//! the requested range, and after everything already returned; the resume key
//! strictly after the page's start. A server that breaks this gets an
//! [`Error::Protocol`] rather than an endless loop.

use std::future::{Future, IntoFuture};
use std::ops::{Bound, Range, RangeFrom, RangeFull, RangeInclusive, RangeTo, RangeToInclusive};
use std::pin::Pin;

use futures::{Stream, TryStreamExt};
use geokv_proto::kv as pb;

use crate::{Client, Consistency, Error, KeyValue, ReadInfo};

/// A key range in wire form: `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanBounds {
    /// Inclusive start key; empty is the smallest key.
    pub start: Vec<u8>,
    /// Exclusive end key; `None` is unbounded, `Some(empty)` is an empty range.
    pub end: Option<Vec<u8>>,
}

/// Anything that names a key range: `a..b`, `a..`, `..b`, `..`, `a..=b`,
/// `..=b`, or a `(Bound, Bound)` pair, over any `AsRef<[u8]>` key type.
pub trait KeyRange {
    fn into_bounds(self) -> ScanBounds;
}

/// The smallest key after `key`.
fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    next
}

impl<K: AsRef<[u8]>> KeyRange for (Bound<K>, Bound<K>) {
    fn into_bounds(self) -> ScanBounds {
        let start = match &self.0 {
            Bound::Included(key) => key.as_ref().to_vec(),
            Bound::Excluded(key) => successor(key.as_ref()),
            Bound::Unbounded => Vec::new(),
        };
        let end = match &self.1 {
            Bound::Included(key) => Some(successor(key.as_ref())),
            Bound::Excluded(key) => Some(key.as_ref().to_vec()),
            Bound::Unbounded => None,
        };
        ScanBounds { start, end }
    }
}

impl<K: AsRef<[u8]>> KeyRange for Range<K> {
    fn into_bounds(self) -> ScanBounds {
        (Bound::Included(self.start), Bound::Excluded(self.end)).into_bounds()
    }
}

impl<K: AsRef<[u8]>> KeyRange for RangeFrom<K> {
    fn into_bounds(self) -> ScanBounds {
        (Bound::Included(self.start), Bound::Unbounded).into_bounds()
    }
}

impl<K: AsRef<[u8]>> KeyRange for RangeTo<K> {
    fn into_bounds(self) -> ScanBounds {
        (Bound::Unbounded, Bound::Excluded(self.end)).into_bounds()
    }
}

impl<K: AsRef<[u8]>> KeyRange for RangeInclusive<K> {
    fn into_bounds(self) -> ScanBounds {
        let (start, end) = self.into_inner();
        (Bound::Included(start), Bound::Included(end)).into_bounds()
    }
}

impl<K: AsRef<[u8]>> KeyRange for RangeToInclusive<K> {
    fn into_bounds(self) -> ScanBounds {
        (Bound::Unbounded, Bound::Included(self.end)).into_bounds()
    }
}

impl KeyRange for RangeFull {
    fn into_bounds(self) -> ScanBounds {
        ScanBounds { start: Vec::new(), end: None }
    }
}

impl KeyRange for ScanBounds {
    fn into_bounds(self) -> ScanBounds {
        self
    }
}

/// A configured scan; await it (or call [`Scan::collect`]) to run it.
#[must_use = "a scan does nothing until it is awaited"]
#[derive(Debug)]
pub struct Scan<'a> {
    client: &'a Client,
    bounds: ScanBounds,
    limit: Option<usize>,
    consistency: Consistency,
    page_limit: u32,
}

impl<'a> Scan<'a> {
    pub(crate) fn new(client: &'a Client, bounds: ScanBounds) -> Scan<'a> {
        Scan {
            client,
            bounds,
            limit: None,
            consistency: Consistency::Linearizable,
            page_limit: client.config().scan_page_limit,
        }
    }

    /// Returns at most `limit` pairs (default: the whole range).
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Reads every page at this level (default linearizable).
    pub fn consistency(mut self, consistency: Consistency) -> Self {
        self.consistency = consistency;
        self
    }

    /// Asks the server for at most this many pairs per page; 0 lets the
    /// server choose (default: [`ClientConfig::scan_page_limit`](crate::ClientConfig::scan_page_limit)).
    pub fn page_limit(mut self, page_limit: u32) -> Self {
        self.page_limit = page_limit;
        self
    }

    /// Runs the scan: every pair in the range (up to the limit), in key order.
    pub async fn collect(self) -> Result<Vec<KeyValue>, Error> {
        Ok(self.collect_with_info().await?.0)
    }

    /// Runs the scan like [`Scan::collect`], and also says what the pages
    /// promised: the read info of the weakest page (the largest staleness
    /// bound, `None` if any page could not bound its own), with `fell_back`
    /// and `weaker_than_requested` set if any page's were. `None` when no
    /// page was read (an empty range). Each page is its own read: together
    /// they are no snapshot, but every pair was current within that bound of
    /// the scan's start.
    pub async fn collect_with_info(self) -> Result<(Vec<KeyValue>, Option<ReadInfo>), Error> {
        let mut pages = Pages::new(self)?;
        let mut out = Vec::new();
        while let Some(page) = pages.next_page().await? {
            out.extend(page);
        }
        Ok((out, pages.info))
    }

    /// Runs the scan as a stream of pairs in key order, one page fetched at a
    /// time as the stream is polled, so a large range is never held in
    /// memory at once. The first error ends the stream.
    ///
    /// ```no_run
    /// # async fn example(client: geokv_client::Client) -> Result<(), geokv_client::Error> {
    /// use futures::TryStreamExt;
    /// let mut pairs = std::pin::pin!(client.scan("user:".."user;").stream());
    /// while let Some(kv) = pairs.try_next().await? {
    ///     println!("{:?} = {:?}", kv.key, kv.value);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn stream(self) -> impl Stream<Item = Result<KeyValue, Error>> + Send + 'a {
        let pages = futures::stream::try_unfold(Pages::new(self).map(Some), |pages| async move {
            let Some(mut pages) = pages? else { return Ok(None) };
            Ok(pages.next_page().await?.map(|page| (page, Ok(Some(pages)))))
        });
        pages.map_ok(|page| futures::stream::iter(page.into_iter().map(Ok))).try_flatten()
    }
}

/// A scan in progress: where the next page starts and what is still wanted.
///
/// Invariants:
/// - `cursor` is `None` once the range (or the limit) is exhausted;
/// - every key handed out is after `last_key`, which only grows.
struct Pages<'a> {
    client: &'a Client,
    cursor: Option<Vec<u8>>,
    end: Option<Vec<u8>>,
    remaining: Option<usize>,
    last_key: Option<Vec<u8>>,
    consistency: Consistency,
    page_limit: u32,
    /// The weakest page's read info so far (see [`Scan::collect_with_info`]).
    info: Option<ReadInfo>,
}

impl<'a> Pages<'a> {
    fn new(scan: Scan<'a>) -> Result<Pages<'a>, Error> {
        let ScanBounds { start, end } = scan.bounds;
        let mut cursor = Some(start);
        if let (Some(start), Some(end)) = (&cursor, &end) {
            if start > end {
                return Err(Error::InvalidArgument(format!("scan start {start:?} is after its end {end:?}")));
            }
            if start == end {
                cursor = None;
            }
        }
        Ok(Pages {
            client: scan.client,
            cursor,
            end,
            remaining: scan.limit,
            last_key: None,
            consistency: scan.consistency,
            page_limit: scan.page_limit,
            info: None,
        })
    }

    /// The next non-empty page, or `None` when the scan is done.
    async fn next_page(&mut self) -> Result<Option<Vec<KeyValue>>, Error> {
        loop {
            let Some(cursor) = self.cursor.take() else { return Ok(None) };
            if self.remaining == Some(0) {
                return Ok(None);
            }
            let page_limit = page_limit(self.remaining, self.page_limit);
            let request = pb::ScanRequest {
                header: None,
                start: cursor.clone(),
                end: self.end.clone().unwrap_or_default(),
                limit: page_limit,
                consistency: self.consistency.to_proto(),
                max_staleness_ms: self.consistency.max_staleness_ms(),
            };
            let page = self.client.execute(&cursor, self.consistency.needs_leader(), request).await?;
            check_page(&cursor, self.end.as_deref(), self.last_key.as_deref(), page_limit, &page)
                .map_err(Error::Protocol)?;
            let info = ReadInfo::from_proto(page.read.clone()).map_err(Error::Protocol)?;
            self.info = Some(match self.info.take() {
                Some(so_far) => weakest(so_far, info),
                None => info,
            });
            let mut kvs: Vec<KeyValue> = page.kvs.into_iter().map(KeyValue::from).collect();
            if let Some(remaining) = &mut self.remaining {
                kvs.truncate(*remaining);
                *remaining -= kvs.len();
            }
            if let Some(last) = kvs.last() {
                self.last_key = Some(last.key.clone());
            }
            let range_left = self.end.as_ref().is_none_or(|end| page.resume_key < *end);
            if page.more && range_left {
                self.cursor = Some(page.resume_key);
            }
            if !kvs.is_empty() {
                return Ok(Some(kvs));
            }
        }
    }
}

impl<'a> IntoFuture for Scan<'a> {
    type Output = Result<Vec<KeyValue>, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.collect())
    }
}

/// What two pages of one scan promise together: the info of the one with
/// the larger staleness bound (an unknown bound is the largest), flags from
/// either.
fn weakest(a: ReadInfo, b: ReadInfo) -> ReadInfo {
    let looser = |info: &ReadInfo| info.staleness_bound_ms.map_or((1, 0), |ms| (0, ms));
    let fell_back = a.fell_back || b.fell_back;
    let weaker_than_requested = a.weaker_than_requested || b.weaker_than_requested;
    let worst = if looser(&b) > looser(&a) { b } else { a };
    ReadInfo { fell_back, weaker_than_requested, ..worst }
}

/// Below this many pairs still wanted, a scan without a configured page
/// limit asks for just those; above it, for the server's default page (a
/// server refuses pages over its `max_scan_limit`, 10,000 by default, and
/// the client does not know the setting).
const SMALL_REMAINDER: u32 = 1_000;

/// The page size to ask for: what the caller still wants, capped by the
/// configured page limit (0 = the server's default).
fn page_limit(remaining: Option<usize>, configured: u32) -> u32 {
    match remaining {
        None => configured,
        Some(remaining) => {
            let remaining = u32::try_from(remaining).unwrap_or(u32::MAX);
            match configured {
                0 if remaining <= SMALL_REMAINDER => remaining,
                0 => 0,
                _ => remaining.min(configured),
            }
        }
    }
}

/// Checks one page against the request that produced it.
fn check_page(
    start: &[u8],
    end: Option<&[u8]>,
    previous_key: Option<&[u8]>,
    page_limit: u32,
    page: &pb::ScanResponse,
) -> Result<(), String> {
    if page_limit > 0 && page.kvs.len() > page_limit as usize {
        return Err(format!("scan page has {} pairs, asked for at most {page_limit}", page.kvs.len()));
    }
    let mut last = previous_key;
    for kv in &page.kvs {
        if kv.key.as_slice() < start || end.is_some_and(|end| kv.key.as_slice() >= end) {
            return Err(format!("scan returned key {:?} outside the requested range", kv.key));
        }
        if last.is_some_and(|last| kv.key.as_slice() <= last) {
            return Err(format!("scan returned key {:?} out of order", kv.key));
        }
        last = Some(&kv.key);
    }
    if page.more {
        if page.resume_key.as_slice() <= start {
            return Err(format!("scan resume key {:?} does not advance past {start:?}", page.resume_key));
        }
        if last.is_some_and(|last| page.resume_key.as_slice() <= last) {
            return Err(format!("scan resume key {:?} is not after the last key returned", page.resume_key));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(start: &str, end: Option<&str>) -> ScanBounds {
        ScanBounds { start: start.as_bytes().to_vec(), end: end.map(|end| end.as_bytes().to_vec()) }
    }

    #[test]
    fn ranges_become_half_open_bounds() {
        assert_eq!(("a".."m").into_bounds(), bounds("a", Some("m")));
        assert_eq!(("a"..).into_bounds(), bounds("a", None));
        assert_eq!((.."m").into_bounds(), bounds("", Some("m")));
        assert_eq!((..).into_bounds(), bounds("", None));
        assert_eq!(("a"..="m").into_bounds(), bounds("a", Some("m\0")));
        assert_eq!((..="m").into_bounds(), bounds("", Some("m\0")));
        assert_eq!((Bound::Excluded(b"a".to_vec()), Bound::Unbounded).into_bounds(), bounds("a\0", None));
        assert_eq!((b"a"..b"z").into_bounds(), bounds("a", Some("z")));
        // An empty exclusive end is an empty range, not an unbounded one.
        assert_eq!((.."").into_bounds(), bounds("", Some("")));
    }

    #[test]
    fn page_limits() {
        assert_eq!(page_limit(None, 0), 0);
        assert_eq!(page_limit(None, 500), 500);
        assert_eq!(page_limit(Some(10), 0), 10);
        assert_eq!(page_limit(Some(10), 500), 10);
        assert_eq!(page_limit(Some(1000), 500), 500);
        assert_eq!(
            page_limit(Some(usize::MAX), 0),
            0,
            "a huge limit: the server's default pages (once asked for u32::MAX, refused)"
        );
        assert_eq!(page_limit(Some(20_000), 0), 0);
    }

    fn page(keys: &[&str], more: bool, resume_key: &str) -> pb::ScanResponse {
        pb::ScanResponse {
            kvs: keys
                .iter()
                .map(|key| pb::KeyValue {
                    key: key.as_bytes().to_vec(),
                    value: vec![],
                    version: 1,
                    ..Default::default()
                })
                .collect(),
            resume_key: resume_key.as_bytes().to_vec(),
            more,
            read: None,
        }
    }

    #[test]
    fn well_formed_pages_pass() {
        check_page(b"a", Some(b"z"), None, 0, &page(&["a", "b"], true, "b\0")).unwrap();
        check_page(b"b\0", Some(b"z"), Some(b"b"), 2, &page(&["c"], false, "")).unwrap();
        // An empty page that hands over to the next shard.
        check_page(b"a", None, None, 0, &page(&[], true, "m")).unwrap();
    }

    #[test]
    fn malformed_pages_are_protocol_errors() {
        let cases = [
            (page(&["b", "a"], false, ""), "out of order"),
            (page(&["0"], false, ""), "outside"),
            (page(&["z"], false, ""), "outside"),
            (page(&["b"], true, "a"), "does not advance"),
            (page(&["b", "c"], true, "b\0"), "not after the last key"),
            (page(&["b", "c", "d"], false, ""), "at most 2"),
        ];
        for (page, expected) in cases {
            let err = check_page(b"a", Some(b"z"), None, 2, &page).unwrap_err();
            assert!(err.contains(expected), "{err} should mention {expected}");
        }
        let repeated = check_page(b"a", None, Some(b"c"), 0, &page(&["c"], false, ""));
        assert!(repeated.unwrap_err().contains("out of order"));
    }

    #[test]
    fn a_scan_promises_what_its_weakest_page_promised() {
        let info = |bound: Option<u64>, node_id: u64, fell_back: bool| ReadInfo {
            served: crate::Served::Level(Consistency::Stale),
            node_id,
            region: "r".into(),
            applied_index: 1,
            staleness_bound_ms: bound,
            fell_back,
            weaker_than_requested: false,
        };
        let both = weakest(info(Some(10), 1, true), info(Some(40), 2, false));
        assert_eq!((both.staleness_bound_ms, both.node_id, both.fell_back), (Some(40), 2, true));
        let both = weakest(info(Some(40), 1, false), info(Some(10), 2, false));
        assert_eq!((both.staleness_bound_ms, both.node_id), (Some(40), 1));
        let unknown = weakest(info(Some(40), 1, false), info(None, 2, false));
        assert_eq!((unknown.staleness_bound_ms, unknown.node_id), (None, 2));
        let unknown = weakest(info(None, 1, false), info(Some(0), 2, false));
        assert_eq!((unknown.staleness_bound_ms, unknown.node_id), (None, 1));
    }
}
