//! Replication delay of geokv's eventual shards, from the nodes' Prometheus
//! text: `geokv_ec_replication_delay_seconds{shard,origin}` is a histogram kept
//! by the *receiver* (apply time − the write's HLC physical time, the origin's
//! clock; every lab node runs on this host, so the clocks are one). The bench
//! scrapes every node before and after its cells and reports the
//! difference, so the preload's writes do not count.

use std::collections::BTreeMap;

use serde::Serialize;

/// The metric family.
pub const FAMILY: &str = "geokv_ec_replication_delay_seconds";

/// One histogram series: cumulative bucket counts by upper bound (ms), its
/// count and sum.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BucketHistogram {
    /// (upper bound, cumulative count), sorted by bound; the last is +Inf.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum: f64,
}

impl BucketHistogram {
    fn add_bucket(&mut self, le: f64, cumulative: u64) {
        match self.buckets.iter_mut().find(|(b, _)| *b == le) {
            Some(bucket) => bucket.1 += cumulative,
            None => {
                self.buckets.push((le, cumulative));
                self.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            }
        }
    }

    /// `self − earlier` (the observations made in between); buckets missing
    /// from `earlier` count as 0.
    pub fn since(&self, earlier: &BucketHistogram) -> BucketHistogram {
        let before = |le: f64| earlier.buckets.iter().find(|(b, _)| *b == le).map_or(0, |(_, n)| *n);
        BucketHistogram {
            buckets: self.buckets.iter().map(|&(le, n)| (le, n.saturating_sub(before(le)))).collect(),
            count: self.count.saturating_sub(earlier.count),
            sum: (self.sum - earlier.sum).max(0.0),
        }
    }

    /// The `q` quantile as Prometheus' `histogram_quantile` estimates it:
    /// linear within the bucket holding it (from 0 for the first bucket;
    /// the last finite bound if it falls in +Inf). `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let target = q * self.count as f64;
        let (mut lower, mut below) = (0.0, 0u64);
        for &(le, cumulative) in &self.buckets {
            if cumulative as f64 >= target {
                if le.is_infinite() {
                    return Some(lower);
                }
                let in_bucket = cumulative.saturating_sub(below) as f64;
                let fraction = if in_bucket > 0.0 { (target - below as f64) / in_bucket } else { 1.0 };
                return Some(lower + (le - lower) * fraction);
            }
            (lower, below) = (le, cumulative);
        }
        None
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }

    /// Width of the bucket holding the `q` quantile (its estimate's
    /// resolution), ms.
    pub fn resolution(&self, q: f64) -> Option<f64> {
        let target = q * self.count as f64;
        let mut lower = 0.0;
        for &(le, cumulative) in &self.buckets {
            if self.count > 0 && cumulative as f64 >= target {
                return le.is_finite().then_some(le - lower);
            }
            lower = le;
        }
        None
    }
}

/// The delay histograms in one node's metrics text, by origin node id
/// (summed over shards: `shards` restricts to those ids when given).
pub fn parse(text: &str, shards: Option<&[u64]>) -> BTreeMap<u64, BucketHistogram> {
    let mut out: BTreeMap<u64, BucketHistogram> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(FAMILY) else { continue };
        let Some((suffix, rest)) = rest.split_once('{') else { continue };
        let Some((labels, value)) = rest.split_once('}') else { continue };
        let Ok(value) = value.trim().parse::<f64>() else { continue };
        let label = |name: &str| {
            labels
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| k.trim() == name)
                .map(|(_, v)| v.trim().trim_matches('"'))
        };
        let Some(origin) = label("origin").and_then(|o| o.parse::<u64>().ok()) else { continue };
        let shard = label("shard").and_then(|s| s.parse::<u64>().ok());
        if let Some(wanted) = shards
            && !shard.is_some_and(|s| wanted.contains(&s))
        {
            continue;
        }
        let h = out.entry(origin).or_default();
        match suffix {
            "_bucket" => {
                // Seconds on the wire, milliseconds here.
                let le = label("le").map_or(f64::INFINITY, |le| le.parse().unwrap_or(f64::INFINITY));
                h.add_bucket(le * 1000.0, value as u64);
            }
            "_count" => h.count += value as u64,
            "_sum" => h.sum += value * 1000.0,
            _ => {}
        }
    }
    out
}

/// One (receiver, origin) pair's delay next to its link's one-way delay.
#[derive(Debug, Clone, Serialize)]
pub struct DelayRow {
    pub receiver: u64,
    pub receiver_region: String,
    pub origin: u64,
    pub origin_region: String,
    /// RTT / 2 from the region matrix.
    pub one_way_ms: f64,
    /// Writes applied at the receiver during the measured cells.
    pub writes: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub mean_ms: Option<f64>,
    /// Width of the buckets the p50 and p99 fell in (their resolution).
    pub p50_bucket_ms: Option<f64>,
    pub p99_bucket_ms: Option<f64>,
}

impl DelayRow {
    pub fn new(
        (receiver, receiver_region): (u64, &str),
        (origin, origin_region): (u64, &str),
        one_way_ms: f64,
        h: &BucketHistogram,
    ) -> DelayRow {
        DelayRow {
            receiver,
            receiver_region: receiver_region.to_string(),
            origin,
            origin_region: origin_region.to_string(),
            one_way_ms,
            writes: h.count,
            p50_ms: h.quantile(0.5),
            p99_ms: h.quantile(0.99),
            mean_ms: h.mean(),
            p50_bucket_ms: h.resolution(0.5),
            p99_bucket_ms: h.resolution(0.99),
        }
    }
}

/// The text table of `rows`.
pub fn table(rows: &[DelayRow]) -> String {
    let show = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    let mut out = format!(
        "{:<30} {:>11} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8}\n",
        "origin -> receiver", "one-way ms", "p50 ms", "p99 ms", "mean ms", "p50-1way", "p99-1way", "writes"
    );
    for r in rows {
        let minus = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:+.1}", v - r.one_way_ms));
        out.push_str(&format!(
            "{:<30} {:>11.1} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8}\n",
            format!("{} ({}) -> {} ({})", r.origin_region, r.origin, r.receiver_region, r.receiver),
            r.one_way_ms,
            show(r.p50_ms),
            show(r.p99_ms),
            show(r.mean_ms),
            minus(r.p50_ms),
            minus(r.p99_ms),
            r.writes
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# TYPE geokv_ec_replication_delay_seconds histogram
geokv_ec_replication_delay_seconds_bucket{shard=\"5\",origin=\"2\",le=\"0.01\"} 0
geokv_ec_replication_delay_seconds_bucket{shard=\"5\",origin=\"2\",le=\"0.02\"} 10
geokv_ec_replication_delay_seconds_bucket{shard=\"5\",origin=\"2\",le=\"0.04\"} 90
geokv_ec_replication_delay_seconds_bucket{shard=\"5\",origin=\"2\",le=\"0.1\"} 100
geokv_ec_replication_delay_seconds_bucket{shard=\"5\",origin=\"2\",le=\"+Inf\"} 100
geokv_ec_replication_delay_seconds_sum{shard=\"5\",origin=\"2\"} 3
geokv_ec_replication_delay_seconds_count{shard=\"5\",origin=\"2\"} 100
geokv_ec_replication_delay_seconds_bucket{shard=\"6\",origin=\"3\",le=\"+Inf\"} 4
geokv_ec_replication_delay_seconds_count{shard=\"6\",origin=\"3\"} 4
geokv_ec_conflicts_total{shard=\"5\"} 0
";

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let all = parse(TEXT, None);
        assert_eq!(all.keys().copied().collect::<Vec<_>>(), [2, 3]);
        let h = &all[&2];
        assert_eq!(h.count, 100);
        // 50th of 100: 40 of the 80 in (20, 40].
        assert_eq!(h.quantile(0.5), Some(30.0));
        // 99th: 9 of the 10 in (40, 100].
        assert!((h.quantile(0.99).unwrap() - 94.0).abs() < 1e-9);
        assert_eq!(h.resolution(0.5), Some(20.0));
        assert_eq!(h.mean(), Some(30.0));
        assert_eq!(all[&3].quantile(0.5), Some(0.0), "all in +Inf: the last finite bound (none: 0)");
        assert_eq!(parse(TEXT, Some(&[6])).keys().copied().collect::<Vec<_>>(), [3]);
        assert_eq!(BucketHistogram::default().quantile(0.5), None);
    }

    #[test]
    fn since_keeps_only_the_new_observations() {
        let after = parse(TEXT, None).remove(&2).unwrap();
        let mut before = BucketHistogram::default();
        before.add_bucket(20.0, 10);
        before.add_bucket(40.0, 10);
        before.add_bucket(100.0, 10);
        before.add_bucket(f64::INFINITY, 10);
        before.count = 10;
        before.sum = 150.0;
        let d = after.since(&before);
        assert_eq!(d.count, 90);
        assert_eq!(d.buckets[1], (20.0, 0));
        // 45th of 90: in (20, 40] which holds 80.
        assert!((d.quantile(0.5).unwrap() - (20.0 + 20.0 * 45.0 / 80.0)).abs() < 1e-9);
        let text = table(&[DelayRow::new((1, "us-east"), (2, "us-west"), 33.0, &d)]);
        assert!(text.contains("us-west (2) -> us-east (1)"), "{text}");
    }
}
