//! `timeline.html`: one self-contained page (inline CSS, SVG and a few lines
//! of JS; nothing fetched from the network) that draws a history.
//!
//! Keys are stacked top to bottom (invalid keys first), each with one lane per
//! process that touched it. Every operation is a bar from invoke to completion:
//! green ok, grey-red fail, orange info (drawn to the end of the history: its
//! effect may land any time). Nemesis fault windows are shaded across all
//! lanes. On an invalid key the operation that cannot be placed is outlined in
//! black, the operations concurrent with it in blue, and the longest
//! linearizable prefix is numbered in the tooltips. Hovering a bar shows the
//! operation, its times and its line in the history file.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use crate::checker::{CheckResult, KeyVerdict, Verdict};
use crate::history::{Clock, History, Outcome, value_text};
use crate::report::{self, Source};

/// Operations drawn at most; keys beyond it are listed, not drawn, so the page
/// stays small enough for a browser.
pub const MAX_TIMELINE_OPERATIONS: usize = 20_000;

/// Width of the plot in SVG user units (the page scales it).
const PLOT_UNITS: f64 = 1000.0;
/// Height of a process lane, in pixels.
const LANE_PX: usize = 14;
/// Height of a key's header row, in pixels.
const HEADER_PX: usize = 20;

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

enum Row {
    Key { key: String, verdict: Verdict, operations: usize },
    Lane { key: String, process: u64 },
}

const STYLE: &str = r#"
body { font: 13px/1.4 system-ui, sans-serif; margin: 16px; color: #222; }
h1 { font-size: 18px; margin: 0 0 4px; }
.verdict-valid { color: #1d7a3f; } .verdict-invalid { color: #b3261e; }
.verdict-unknown, .verdict-inconclusive { color: #a15c00; }
.legend span { display: inline-block; margin-right: 14px; }
.swatch { display: inline-block; width: 22px; height: 10px; margin-right: 4px; vertical-align: middle; }
.chart { display: flex; border: 1px solid #ccc; margin-top: 8px; }
.labels { flex: 0 0 180px; border-right: 1px solid #ccc; font-size: 11px; }
.labels div { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; padding: 0 4px; }
.labels .key { font-weight: 600; background: #f3f3f3; }
.scroll { flex: 1 1 auto; overflow-x: auto; }
.inner { position: relative; width: 100%; }
.axis { position: relative; height: 16px; font-size: 10px; color: #666; border-bottom: 1px solid #ddd; }
.axis span { position: absolute; transform: translateX(-50%); white-space: nowrap; }
svg { display: block; width: 100%; }
rect.ok { fill: #3a9d5d; } rect.fail { fill: #d9a0a0; } rect.info { fill: #f0a830; fill-opacity: 0.55; }
rect.fault { fill: #e25b5b; fill-opacity: 0.13; } rect.keyrow { fill: #f3f3f3; }
rect.unplaceable { stroke: #000; stroke-width: 3; fill-opacity: 1; }
rect.concurrent { stroke: #1f5fbf; stroke-width: 1.5; }
rect.op:hover { stroke: #333; stroke-width: 2; }
pre { background: #f7f7f7; padding: 8px; overflow-x: auto; }
table { border-collapse: collapse; margin: 6px 0; } td, th { border: 1px solid #ddd; padding: 2px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
button { margin-right: 4px; }
"#;

const SCRIPT: &str = r#"
(function () {
  var zoom = 1, inner = document.getElementById('inner'), label = document.getElementById('zoom');
  function set(z) { zoom = Math.max(1, Math.min(256, z)); inner.style.width = (zoom * 100) + '%'; label.textContent = zoom + 'x'; }
  document.getElementById('zoom-in').onclick = function () { set(zoom * 2); };
  document.getElementById('zoom-out').onclick = function () { set(zoom / 2); };
  document.getElementById('zoom-reset').onclick = function () { set(1); };
  var bad = document.querySelector('rect.unplaceable');
  document.getElementById('find').onclick = function () {
    if (!bad) return;
    set(Math.max(zoom, 8));
    var scroll = document.getElementById('scroll');
    var x = parseFloat(bad.getAttribute('x')) / 1000 * inner.clientWidth;
    scroll.scrollLeft = Math.max(0, x - scroll.clientWidth / 2);
    bad.scrollIntoView({ block: 'center' });
  };
})();
"#;

/// Renders the page.
pub fn render(history: &History, check: &CheckResult, source: &Source) -> String {
    let verdict = report::report_verdict(history, check);
    let t0 = history.start_time();
    let span = (history.end_time().saturating_sub(t0)).max(1) as f64;
    let x = |t: u64| (t.saturating_sub(t0)) as f64 / span * PLOT_UNITS;

    // Witness roles per operation id.
    let mut prefix_position: HashMap<usize, usize> = HashMap::new();
    let mut concurrent: BTreeSet<usize> = BTreeSet::new();
    let mut unplaceable: BTreeSet<usize> = BTreeSet::new();
    for key in &check.keys {
        if let KeyVerdict::Invalid { witness } = &key.verdict {
            for (i, op) in witness.linearized.iter().enumerate() {
                prefix_position.insert(op.id, i + 1);
            }
            concurrent.extend(witness.concurrent.iter().map(|op| op.id));
            unplaceable.insert(witness.unplaceable.id);
        }
    }

    // Keys: invalid first, then unknown, then valid; then the history's order.
    let verdict_of: HashMap<&str, Verdict> = check.keys.iter().map(|k| (k.key.as_str(), k.verdict.verdict())).collect();
    let mut keys = history.keys();
    keys.sort_by_key(|k| std::cmp::Reverse(verdict_of.get(k.as_str()).copied().unwrap_or(Verdict::Valid)));
    let mut ops_by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for op in &history.operations {
        ops_by_key.entry(op.key.as_str()).or_default().push(op.index);
    }
    let mut rows = Vec::new();
    let mut drawn = 0usize;
    let mut omitted: Vec<&str> = Vec::new();
    for key in &keys {
        let ops = &ops_by_key[key.as_str()];
        if drawn + ops.len() > MAX_TIMELINE_OPERATIONS && drawn > 0 {
            omitted.push(key);
            continue;
        }
        drawn += ops.len();
        let verdict = verdict_of.get(key.as_str()).copied().unwrap_or(Verdict::Valid);
        rows.push(Row::Key { key: key.clone(), verdict, operations: ops.len() });
        let processes: BTreeSet<u64> = ops.iter().map(|&i| history.operations[i].process).collect();
        rows.extend(processes.into_iter().map(|process| Row::Lane { key: key.clone(), process }));
    }

    let mut labels = String::new();
    let mut svg_rows = String::new();
    let mut lane_y: HashMap<(&str, u64), usize> = HashMap::new();
    let mut y = 0usize;
    for row in &rows {
        match row {
            Row::Key { key, verdict, operations } => {
                let name = if key.is_empty() { "(single register)".to_string() } else { key.clone() };
                let _ = write!(
                    labels,
                    "<div class=\"key\" style=\"height:{HEADER_PX}px;line-height:{HEADER_PX}px\" title=\"{}\">{} \
                     <span class=\"verdict-{}\">{}</span> · {operations} ops</div>",
                    escape(&name),
                    escape(&name),
                    verdict.as_str(),
                    verdict.as_str()
                );
                let _ = write!(
                    svg_rows,
                    "<rect class=\"keyrow\" x=\"0\" y=\"{y}\" width=\"{PLOT_UNITS}\" height=\"{HEADER_PX}\"/>"
                );
                y += HEADER_PX;
            }
            Row::Lane { key, process } => {
                let _ =
                    write!(labels, "<div style=\"height:{LANE_PX}px;line-height:{LANE_PX}px\">process {process}</div>");
                lane_y.insert((key.as_str(), *process), y);
                y += LANE_PX;
            }
        }
    }
    let height = y.max(1);

    let mut bars = String::new();
    for op in &history.operations {
        let Some(&lane) = lane_y.get(&(op.key.as_str(), op.process)) else { continue };
        let invoke = history.invoke_of(op);
        let completion = history.completion_of(op);
        let end = match op.outcome {
            Outcome::Info => history.end_time(),
            _ => op.complete_time.expect("ok/fail complete"),
        };
        let (x1, x2) = (x(op.invoke_time), x(end));
        let mut classes = vec!["op", op.outcome.as_str()];
        if unplaceable.contains(&op.index) {
            classes.push("unplaceable");
        } else if concurrent.contains(&op.index) {
            classes.push("concurrent");
        }
        let mut tip = format!("process {} {} {}", op.process, op.f, value_text(&invoke.value));
        match completion {
            Some(done) => {
                let _ = write!(tip, " → {} {}", op.outcome.as_str(), value_text(&done.value));
                if let Some(error) = &done.error {
                    let _ = write!(tip, " ({error})");
                }
            }
            None => tip.push_str(" → pending at the end (unknown)"),
        }
        let unit = if history.clock == Clock::Nanoseconds { " ns" } else { "" };
        let _ = write!(tip, "\ninvoke {}{unit}", op.invoke_time);
        if let Some(done) = op.complete_time {
            let _ = write!(tip, ", complete {done}{unit}");
            if history.clock == Clock::Nanoseconds {
                let _ = write!(tip, " ({:.3} ms)", (done - op.invoke_time) as f64 / 1e6);
            }
        }
        if let Some(done) = completion {
            for (name, value) in [("node", &done.node), ("region", &done.region), ("consistency", &done.consistency)] {
                if let Some(value) = value {
                    let _ = write!(tip, "\n{name}: {value}");
                }
            }
        }
        let _ = write!(tip, "\nline {}", history.line_of(op));
        if let Some(position) = prefix_position.get(&op.index) {
            let _ = write!(tip, "\nwitness: #{position} of the longest linearizable prefix");
        }
        if unplaceable.contains(&op.index) {
            tip.push_str("\nwitness: THIS OPERATION CANNOT BE PLACED");
        } else if concurrent.contains(&op.index) {
            tip.push_str("\nwitness: concurrent with the operation that cannot be placed");
        }
        let _ = write!(
            bars,
            "<rect class=\"{}\" x=\"{x1:.3}\" y=\"{}\" width=\"{:.3}\" height=\"{}\" vector-effect=\"non-scaling-stroke\"><title>{}</title></rect>",
            classes.join(" "),
            lane + 2,
            (x2 - x1).max(0.4),
            LANE_PX - 4,
            escape(&tip)
        );
    }

    let mut faults = String::new();
    for window in &history.nemesis_windows {
        let (x1, x2) = (x(window.start_time), x(window.stop_time.unwrap_or(history.end_time())));
        let _ = write!(
            faults,
            "<rect class=\"fault\" x=\"{x1:.3}\" y=\"0\" width=\"{:.3}\" height=\"{height}\"><title>fault: {}</title></rect>",
            (x2 - x1).max(0.4),
            escape(&window.description)
        );
    }
    for (time, f) in &history.nemesis_marks {
        let _ = write!(
            faults,
            "<line x1=\"{0:.3}\" x2=\"{0:.3}\" y1=\"0\" y2=\"{height}\" stroke=\"#e25b5b\" vector-effect=\"non-scaling-stroke\"><title>nemesis: {1}</title></line>",
            x(*time),
            escape(f)
        );
    }

    let mut axis = String::new();
    for i in 0..=10 {
        let t = t0 as f64 + span * i as f64 / 10.0;
        let text = match history.clock {
            Clock::Nanoseconds => format!("{:.1} ms", (t - t0 as f64) / 1e6),
            Clock::EventOrder => format!("event {}", t.round()),
        };
        let _ = write!(axis, "<span style=\"left:{}%\">{text}</span>", i * 10);
    }

    let mut details = String::new();
    let _ = writeln!(details, "<h2>Verdicts</h2><pre>{}</pre>", escape(&report::render_text(history, source, check)));
    if !omitted.is_empty() {
        let _ = writeln!(
            details,
            "<p>Not drawn (over {MAX_TIMELINE_OPERATIONS} operations): {} keys: {}</p>",
            omitted.len(),
            escape(&omitted.join(", "))
        );
    }
    details.push_str("<h2>Operations</h2><table><tr><th>f</th><th>ok</th><th>fail</th><th>info</th></tr>");
    for (f, by_outcome) in report::op_counts(history) {
        let get = |o: &str| by_outcome.get(o).copied().unwrap_or(0);
        let _ = write!(
            details,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&f),
            get("ok"),
            get("fail"),
            get("info")
        );
    }
    details.push_str("</table>");
    let latency = report::latencies(history);
    if !latency.is_empty() {
        details.push_str(
            "<h2>Latency of ok operations (ms)</h2><table><tr><th>f</th><th>count</th><th>p50</th><th>p90</th><th>p99</th><th>max</th></tr>",
        );
        for l in latency {
            let _ = write!(
                details,
                "<tr><td>{}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td></tr>",
                escape(&l.f),
                l.count,
                l.p50_ms,
                l.p90_ms,
                l.p99_ms,
                l.max_ms
            );
        }
        details.push_str("</table>");
    }

    let title = format!("geokv-jepsen: {}", source.path);
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title><style>{STYLE}</style></head><body>\n\
         <h1>{title}</h1>\n\
         <p class=\"verdict-{verdict}\"><b>{verdict_upper}</b>: {summary}</p>\n\
         <p class=\"legend\"><span><i class=\"swatch\" style=\"background:#3a9d5d\"></i>ok</span>\
         <span><i class=\"swatch\" style=\"background:#d9a0a0\"></i>fail (did not happen)</span>\
         <span><i class=\"swatch\" style=\"background:#f0a830;opacity:.55\"></i>info (unknown: may take effect any time later)</span>\
         <span><i class=\"swatch\" style=\"background:#e25b5b;opacity:.2\"></i>fault window</span>\
         <span><i class=\"swatch\" style=\"border:3px solid #000\"></i>cannot be placed</span>\
         <span><i class=\"swatch\" style=\"border:2px solid #1f5fbf\"></i>concurrent with it</span></p>\n\
         <p><button id=\"zoom-out\">−</button><button id=\"zoom-in\">+</button><button id=\"zoom-reset\">reset</button> \
         zoom <span id=\"zoom\">1x</span> <button id=\"find\">show the failing operation</button></p>\n\
         <div class=\"chart\"><div class=\"labels\"><div style=\"height:17px\"></div>{labels}</div>\
         <div class=\"scroll\" id=\"scroll\"><div class=\"inner\" id=\"inner\"><div class=\"axis\">{axis}</div>\
         <svg viewBox=\"0 0 {PLOT_UNITS} {height}\" preserveAspectRatio=\"none\" style=\"height:{height}px\">\
         {svg_rows}{faults}{bars}</svg></div></div></div>\n{details}\n<script>{SCRIPT}</script></body></html>\n",
        verdict = verdict.as_str(),
        verdict_upper = verdict.as_str().to_uppercase(),
        summary = escape(&report::summary(history, check)),
    )
}
