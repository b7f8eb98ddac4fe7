//! Results: per-cell records, summaries across rounds, the terminal table,
//! `results.json` and the HTML/SVG report.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cluster::System;
use crate::load::{CellOutcome, Target};
use crate::machine::CpuUse;

/// Percentiles the CDF plots and `results.json` carry.
const CDF_PERCENTILES: &[f64] =
    &[0.0, 1.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.99, 100.0];

/// Latency figures of one histogram, in ms.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

/// `(percentile, latency ms)` points of a histogram.
pub fn cdf(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    CDF_PERCENTILES.iter().map(|&p| (p, h.value_at_percentile(p) as f64 / 1000.0)).collect()
}

/// One measured cell: a target at a client count in one round.
#[derive(Debug, Clone, Serialize)]
pub struct CellResult {
    pub round: usize,
    pub workload: String,
    pub target: String,
    pub system: System,
    pub clients: usize,
    /// The client's region (WAN scenarios).
    pub region: Option<String>,
    pub ops: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Open loop: arrivals dropped because the in-flight bound was reached.
    pub overflow: u64,
    pub throughput_ops_s: f64,
    pub latency: Latency,
    pub cpu: CpuUse,
    /// Operations per CPU-second of the measured system's servers.
    pub ops_per_server_cpu_s: Option<f64>,
    /// Cores used by other processes during the cell.
    pub others_cores: f64,
    /// Why the cell is suspect, if it is.
    pub noisy: Option<String>,
}

impl CellResult {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        round: usize,
        workload: &str,
        target: Target,
        clients: usize,
        region: Option<String>,
        outcome: &CellOutcome,
        cpu: CpuUse,
        wall_s: f64,
        noise_cores: f64,
    ) -> CellResult {
        let ops = outcome.histogram.len();
        let others_cores = cpu.others_s / wall_s.max(1e-9);
        let mut noisy = None;
        if others_cores > noise_cores {
            noisy = Some(format!("other processes used {others_cores:.2} cores (limit {noise_cores})"));
        }
        if outcome.errors > 0 {
            noisy.get_or_insert(format!("{} errors", outcome.errors));
        }
        if outcome.overflow > 0 {
            noisy.get_or_insert(format!("{} arrivals dropped at the in-flight bound", outcome.overflow));
        }
        CellResult {
            round,
            workload: workload.to_string(),
            target: target.name(),
            system: target.system,
            clients,
            region,
            ops,
            errors: outcome.errors,
            first_error: outcome.first_error.clone(),
            overflow: outcome.overflow,
            throughput_ops_s: outcome.throughput(),
            latency: Latency::of(&outcome.histogram),
            ops_per_server_cpu_s: (cpu.target_servers_s > 0.0).then(|| ops as f64 / cpu.target_servers_s),
            cpu,
            others_cores,
            noisy,
        }
    }
}

/// Median, min and max of values across rounds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Spread { median: f64::NAN, min: f64::NAN, max: f64::NAN };
        }
        v.sort_by(f64::total_cmp);
        let median = if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 };
        Spread { median, min: v[0], max: v[v.len() - 1] }
    }

    /// `12.3 [11.9–13.0]`, with `digits` decimals.
    pub fn show(&self, digits: usize) -> String {
        if self.median.is_nan() {
            return "-".into();
        }
        format!("{:.d$} [{:.d$}–{:.d$}]", self.median, self.min, self.max, d = digits)
    }
}

/// One target at one client count (and region), over all rounds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub workload: String,
    pub target: String,
    pub system: System,
    pub clients: usize,
    pub region: Option<String>,
    pub rounds: usize,
    pub noisy_rounds: usize,
    /// Open loop: arrivals dropped at the in-flight bound, all rounds.
    pub overflow: u64,
    pub p50_ms: Spread,
    pub p99_ms: Spread,
    pub throughput_ops_s: Spread,
    pub ops_per_server_cpu_s: Spread,
    /// All rounds merged.
    pub merged: Latency,
    /// CDF of all rounds merged: (percentile, ms).
    pub cdf: Vec<(f64, f64)>,
}

/// A geokv/etcd ratio for one workload and client count, per round.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub workload: String,
    pub clients: usize,
    /// geokv p50 / etcd p50 (below 1: geokv faster).
    pub p50: Spread,
    pub p99: Spread,
    /// geokv throughput / etcd throughput (above 1: geokv more).
    pub throughput: Spread,
    /// geokv ops per server CPU-second / etcd's.
    pub ops_per_cpu: Spread,
}

type Key = (String, String, usize, Option<String>);

/// Collects cells and merged histograms as the run goes.
#[derive(Default)]
pub struct Collector {
    pub cells: Vec<CellResult>,
    merged: BTreeMap<Key, Histogram<u64>>,
}

impl Collector {
    pub fn add(&mut self, cell: CellResult, histogram: &Histogram<u64>) {
        let key = (cell.workload.clone(), cell.target.clone(), cell.clients, cell.region.clone());
        self.merged.entry(key).or_insert_with(crate::load::new_histogram).add(histogram).expect("same bounds");
        self.cells.push(cell);
    }

    /// Summaries in the order targets first ran.
    pub fn summaries(&self) -> Vec<Summary> {
        let mut order: Vec<Key> = Vec::new();
        for c in &self.cells {
            let key = (c.workload.clone(), c.target.clone(), c.clients, c.region.clone());
            if !order.contains(&key) {
                order.push(key);
            }
        }
        order
            .into_iter()
            .map(|key| {
                let cells: Vec<&CellResult> = self
                    .cells
                    .iter()
                    .filter(|c| (&c.workload, &c.target, c.clients, &c.region) == (&key.0, &key.1, key.2, &key.3))
                    .collect();
                let merged = &self.merged[&key];
                let spread =
                    |f: &dyn Fn(&CellResult) -> f64| Spread::of(&cells.iter().map(|c| f(c)).collect::<Vec<_>>());
                Summary {
                    workload: key.0.clone(),
                    target: key.1.clone(),
                    system: cells[0].system,
                    clients: key.2,
                    region: key.3.clone(),
                    rounds: cells.len(),
                    noisy_rounds: cells.iter().filter(|c| c.noisy.is_some()).count(),
                    overflow: cells.iter().map(|c| c.overflow).sum(),
                    p50_ms: spread(&|c| c.latency.p50_ms),
                    p99_ms: spread(&|c| c.latency.p99_ms),
                    throughput_ops_s: spread(&|c| c.throughput_ops_s),
                    ops_per_server_cpu_s: spread(&|c| c.ops_per_server_cpu_s.unwrap_or(f64::NAN)),
                    merged: Latency::of(merged),
                    cdf: cdf(merged),
                }
            })
            .collect()
    }

    /// geokv/etcd ratios per workload, client count and region, paired by
    /// round.
    pub fn ratios(&self) -> Vec<Ratio> {
        let mut out: Vec<Ratio> = Vec::new();
        let mut seen = Vec::new();
        for c in &self.cells {
            let key = (c.workload.clone(), c.clients, c.region.clone());
            if seen.contains(&key) {
                continue;
            }
            seen.push(key.clone());
            let same = |x: &CellResult| x.workload == key.0 && x.clients == key.1 && x.region == key.2;
            let pairs: Vec<(&CellResult, &CellResult)> = self
                .cells
                .iter()
                .filter(|g| g.system == System::Geokv && same(g))
                .filter_map(|g| {
                    let e = self.cells.iter().find(|e| e.system == System::Etcd && same(e) && e.round == g.round)?;
                    Some((g, e))
                })
                .collect();
            if pairs.is_empty() {
                continue;
            }
            let ratio = |f: &dyn Fn(&CellResult) -> f64| {
                Spread::of(&pairs.iter().map(|(g, e)| f(g) / f(e)).collect::<Vec<_>>())
            };
            out.push(Ratio {
                workload: match &key.2 {
                    Some(region) => format!("{} from {region}", key.0),
                    None => key.0,
                },
                clients: key.1,
                p50: ratio(&|c| c.latency.p50_ms),
                p99: ratio(&|c| c.latency.p99_ms),
                throughput: ratio(&|c| c.throughput_ops_s),
                ops_per_cpu: ratio(&|c| c.ops_per_server_cpu_s.unwrap_or(f64::NAN)),
            });
        }
        out
    }
}

/// The terminal table of summaries.
pub fn summary_table(summaries: &[Summary]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<26} {:>4} {:<10} {:>22} {:>22} {:>9} {:>9} {:>24} {:>18} noisy",
        "target",
        "cli",
        "region",
        "p50 ms [range]",
        "p99 ms [range]",
        "p99.9",
        "max",
        "ops/s [range]",
        "ops/server-cpu-s",
    );
    for s in summaries {
        let _ = writeln!(
            out,
            "{:<26} {:>4} {:<10} {:>22} {:>22} {:>9.2} {:>9.1} {:>24} {:>18} {}",
            s.target,
            s.clients,
            s.region.as_deref().unwrap_or("-"),
            s.p50_ms.show(2),
            s.p99_ms.show(2),
            s.merged.p999_ms,
            s.merged.max_ms,
            s.throughput_ops_s.show(0),
            if s.ops_per_server_cpu_s.median.is_nan() {
                "-".into()
            } else {
                format!("{:.0}", s.ops_per_server_cpu_s.median)
            },
            match (s.noisy_rounds, s.overflow) {
                (0, _) => String::new(),
                (n, 0) => format!("{n}/{}", s.rounds),
                (n, dropped) => format!("{n}/{} ({dropped} arrivals dropped)", s.rounds),
            }
        );
    }
    out
}

/// The terminal table of geokv/etcd ratios.
pub fn ratio_table(ratios: &[Ratio]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<44} {:>4} {:>22} {:>22} {:>22} {:>22}",
        "geokv / etcd", "cli", "p50 (<1 faster)", "p99", "throughput (>1 more)", "ops per CPU-s"
    );
    for r in ratios {
        let _ = writeln!(
            out,
            "{:<44} {:>4} {:>22} {:>22} {:>22} {:>22}",
            r.workload,
            r.clients,
            r.p50.show(2),
            r.p99.show(2),
            r.throughput.show(2),
            r.ops_per_cpu.show(2)
        );
    }
    out
}

const COLORS: &[&str] = &["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A line chart with a log-scale x axis. `series`: (name, points (x, y)).
fn svg_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    y_max: Option<f64>,
) -> String {
    let (w, h, left, right, top, bottom) = (640.0, 360.0, 60.0, 190.0, 30.0, 45.0);
    let xs: Vec<f64> = series.iter().flat_map(|(_, p)| p.iter().map(|(x, _)| *x)).filter(|x| *x > 0.0).collect();
    let ys: Vec<f64> = series.iter().flat_map(|(_, p)| p.iter().map(|(_, y)| *y)).collect();
    if xs.is_empty() {
        return String::new();
    }
    let x_min = xs.iter().copied().fold(f64::INFINITY, f64::min).log10().floor();
    let x_max = xs.iter().copied().fold(0.0, f64::max).log10().ceil().max(x_min + 1.0);
    let y_max = y_max.unwrap_or_else(|| ys.iter().copied().fold(0.0, f64::max) * 1.1).max(1e-9);
    let px = |x: f64| left + (x.max(1e-9).log10() - x_min) / (x_max - x_min) * (w - left - right);
    let py = |y: f64| h - bottom - y / y_max * (h - top - bottom);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(s, r#"<text x="{}" y="18" font-size="13" font-weight="bold">{}</text>"#, left, esc(title));
    let _ = write!(
        s,
        r##"<rect x="{left}" y="{top}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
        w - left - right,
        h - top - bottom
    );
    let mut decade = x_min;
    while decade <= x_max {
        let x = px(10f64.powf(decade));
        let _ = write!(
            s,
            r##"<line x1="{x}" y1="{top}" x2="{x}" y2="{}" stroke="#eee"/><text x="{x}" y="{}" text-anchor="middle">{}</text>"##,
            h - bottom,
            h - bottom + 14.0,
            10f64.powf(decade)
        );
        decade += 1.0;
    }
    for i in 0..=4 {
        let y = y_max * i as f64 / 4.0;
        let _ = write!(
            s,
            r##"<line x1="{left}" y1="{0}" x2="{1}" y2="{0}" stroke="#eee"/><text x="{2}" y="{3}" text-anchor="end">{4:.0}</text>"##,
            py(y),
            w - right,
            left - 4.0,
            py(y) + 4.0,
            y
        );
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (left + w - right) / 2.0,
        h - 8.0,
        esc(x_label)
    );
    let _ = write!(
        s,
        r#"<text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">{}</text>"#,
        h / 2.0,
        h / 2.0,
        esc(y_label)
    );
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = points.iter().map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y))).collect();
        let _ = write!(s, r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#, path.join(" "));
        for (x, y) in points {
            let _ = write!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="2" fill="{color}"/>"#, px(*x), py(*y));
        }
        let ly = top + 12.0 + i as f64 * 16.0;
        let _ = write!(
            s,
            r#"<rect x="{}" y="{}" width="12" height="3" fill="{color}"/><text x="{}" y="{}">{}</text>"#,
            w - right + 10.0,
            ly - 4.0,
            w - right + 26.0,
            ly,
            esc(name)
        );
    }
    s.push_str("</svg>");
    s
}

/// The HTML report: CDFs per workload/clients/region, throughput vs clients.
pub fn html(title: &str, notes: &str, summaries: &[Summary], table_text: &str) -> String {
    let mut body = String::new();
    let mut groups: Vec<(String, usize, Option<String>)> = Vec::new();
    for s in summaries {
        let g = (s.workload.clone(), s.clients, s.region.clone());
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    for (workload, clients, region) in &groups {
        let series: Vec<(String, Vec<(f64, f64)>)> = summaries
            .iter()
            .filter(|s| &s.workload == workload && s.clients == *clients && &s.region == region)
            .map(|s| (s.target.clone(), s.cdf.iter().map(|(p, ms)| (*ms, *p)).collect()))
            .collect();
        let where_ = region.as_deref().map(|r| format!(", clients in {r}")).unwrap_or_default();
        body.push_str(&svg_chart(
            &format!("{workload}: latency CDF, {clients} clients{where_}"),
            "latency ms (log)",
            "percentile",
            &series,
            Some(100.0),
        ));
        body.push('\n');
    }
    let mut targets: Vec<(String, Option<String>)> = Vec::new();
    for s in summaries {
        if !targets.contains(&(s.target.clone(), s.region.clone())) {
            targets.push((s.target.clone(), s.region.clone()));
        }
    }
    let throughput: Vec<(String, Vec<(f64, f64)>)> = targets
        .iter()
        .map(|(t, r)| {
            let name = match r {
                Some(r) => format!("{t} ({r})"),
                None => t.clone(),
            };
            let points = summaries
                .iter()
                .filter(|s| &s.target == t && &s.region == r)
                .map(|s| (s.clients as f64, s.throughput_ops_s.median))
                .collect();
            (name, points)
        })
        .collect();
    body.push_str(&svg_chart("throughput vs clients (median of rounds)", "clients (log)", "ops/s", &throughput, None));
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head><body>\
         <h1>{t}</h1><pre>{n}</pre><h2>Results</h2><pre>{tab}</pre>\
         <h2>Plots</h2>{body}</body></html>",
        t = esc(title),
        n = esc(notes),
        tab = esc(table_text)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_median_min_max() {
        let s = Spread::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(&[1.0, 2.0, 3.0, 10.0]).median, 2.5);
        assert!(Spread::of(&[]).median.is_nan());
        assert_eq!(Spread::of(&[1.0, 2.0]).show(1), "1.5 [1.0–2.0]");
    }

    #[test]
    fn charts_render_series() {
        let svg = svg_chart("t", "x", "y", &[("a".into(), vec![(1.0, 10.0), (100.0, 20.0)])], None);
        assert!(svg.starts_with("<svg") && svg.contains("polyline") && svg.ends_with("</svg>"));
    }
}
