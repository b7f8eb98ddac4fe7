//! Histories: what the clients saw, event by event, and the operations those
//! events pair up into.
//!
//! A history is a sequence of [`Event`]s. A client *process* invokes an
//! operation (`invoke`) and later learns its outcome: `ok` (it happened),
//! `fail` (it definitely did not happen) or `info` (the client cannot know —
//! a timeout, a lost connection). A process runs one operation at a time; after
//! an `info` it is *retired* and never invokes again (the runner continues with
//! a fresh process id), because its unfinished operation may still take effect
//! at any later time. Nemesis events (`type: "nemesis"`) mark when faults start
//! and stop; they carry no process and are not operations.
//!
//! On disk a history is JSON Lines, one event per line:
//!
//! ```text
//! {"process":0,"type":"invoke","f":"write","key":"k1","value":3,"time":1000}
//! {"process":0,"type":"ok","f":"write","key":"k1","value":3,"time":2500,"node":"n1","region":"eu"}
//! {"type":"nemesis","f":"start","value":"isolate n1","time":3000}
//! {"process":1,"type":"invoke","f":"read","key":"k1","value":null,"time":3100}
//! {"process":1,"type":"fail","f":"read","key":"k1","value":null,"time":9100,"error":"timeout"}
//! ```
//!
//! Reading validates the history ([`History::new`]) and refuses, with the line
//! number, anything that is not well-formed: a completion without a pending
//! invoke, a completion whose `f` or `key` differs from its invoke, a process
//! invoking while it has an operation pending, a retired process coming back,
//! a completion earlier than its invoke, a nemesis `stop` with no fault
//! started. An invoke still pending at the end of the history is treated like
//! `info`: its outcome is unknown.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// The `error` a `fail` CAS carries when the CAS *ran* and its comparison
/// did not hold: it changed nothing, and it tells the checker that at its
/// linearization point the register held something other than the expected
/// value. A `fail` CAS without it did not happen at all. (Jepsen's etcd client
/// records compare failures as `:fail`; the EDN reader marks them so.)
pub const CAS_MISMATCH_ERROR: &str = "cas-mismatch";

/// Events longer than this are refused: one event is a few hundred bytes,
/// and a multi-megabyte line is a corrupt file, not a history.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// What an event says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// A process starts an operation.
    Invoke,
    /// The operation happened, with the result in `value`.
    Ok,
    /// The operation definitely did not happen (no effect, nothing observed),
    /// except a CAS with [`CAS_MISMATCH_ERROR`], which ran and changed nothing.
    Fail,
    /// The outcome is unknown: it may take effect at any time after its
    /// invoke, or never. The process is retired.
    Info,
    /// A fault window starts (`f: "start"`) or stops (`f: "stop"`); any other
    /// `f` is a point-in-time nemesis marker. Not an operation.
    Nemesis,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Invoke => "invoke",
            EventType::Ok => "ok",
            EventType::Fail => "fail",
            EventType::Info => "info",
            EventType::Nemesis => "nemesis",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of a history.
///
/// Invariants (checked by [`History::new`]):
/// - `process` is present on every event except nemesis events, where it is absent;
/// - `f` is not empty;
/// - `time` is in nanoseconds from one monotonic clock shared by all processes
///   (or, for histories without a clock such as most EDN files, the event's
///   position in the file — see [`Clock`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// The client process; absent on nemesis events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<u64>,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The operation: `read`, `write`, `cas` for registers (later workloads
    /// add their own), `start`/`stop` for nemesis windows.
    pub f: String,
    /// The register the operation is on; histories are checked per key. Empty
    /// for single-register histories.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// `write`: the value written. `cas`: `[expected, new]`. `read`: `null` on
    /// invoke, the value read on `ok` (`null`: the key was absent).
    #[serde(default)]
    pub value: Value,
    /// Nanoseconds on the history's one monotonic clock.
    pub time: u64,
    /// The node that served the request (completions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The region of that node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The consistency level the read was actually served at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<String>,
    /// The server's upper bound on the staleness of a read, in milliseconds
    /// (0 for linearizable reads). See [`crate::staleness`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staleness_bound_ms: Option<u64>,
    /// Why an operation failed or is unknown (free text), or [`CAS_MISMATCH_ERROR`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Event {
    /// A bare event; the optional runner fields are empty.
    pub fn new(process: Option<u64>, kind: EventType, f: &str, key: &str, value: Value, time: u64) -> Self {
        Event {
            process,
            kind,
            f: f.to_string(),
            key: key.to_string(),
            value,
            time,
            node: None,
            region: None,
            consistency: None,
            staleness_bound_ms: None,
            error: None,
        }
    }
}

/// What the `time` field of a history counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Clock {
    /// Nanoseconds of one monotonic clock (what the runner records).
    Nanoseconds,
    /// The event's position in the file (histories recorded without times:
    /// the order of lines is the real-time order).
    EventOrder,
}

/// How an operation ended, from the checker's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Fail,
    /// `info`, or still pending when the history ends.
    Info,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Info => "info",
        }
    }
}

/// An invoke paired with its completion.
///
/// Invariants:
/// - `events[invoke]` is an `invoke` of `process`, `f` and `key`;
/// - `completion`, when present, is the next event of `process`, later in the
///   file, with the same `f` and `key`, and `complete_time >= invoke_time`;
/// - `completion` is `None` only when the history ended with it pending, and
///   then `outcome` is [`Outcome::Info`].
#[derive(Clone, Debug, PartialEq)]
pub struct Operation {
    /// Position in [`History::operations`].
    pub index: usize,
    pub process: u64,
    pub f: String,
    pub key: String,
    /// Index of the invoke event in [`History::events`].
    pub invoke: usize,
    /// Index of the completion event, if there is one.
    pub completion: Option<usize>,
    pub outcome: Outcome,
    pub invoke_time: u64,
    /// When the client learned the outcome (for `info`: when it gave up).
    /// The checker treats `info` operations as open-ended whatever this says.
    pub complete_time: Option<u64>,
}

/// A fault window from a nemesis `start` to the `stop` that closes it (or to
/// the end of the history).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NemesisWindow {
    pub start_time: u64,
    /// `None`: still open when the history ended.
    pub stop_time: Option<u64>,
    /// The `value` of the start event, as text (what the fault was).
    pub description: String,
}

/// A validated history.
///
/// Invariants:
/// - every operation satisfies [`Operation`]'s invariants;
/// - no process has two operations pending at once, and no process invokes
///   after an `info`;
/// - `lines[i]` is the 1-based source line of `events[i]`.
#[derive(Clone, Debug)]
pub struct History {
    pub events: Vec<Event>,
    pub lines: Vec<usize>,
    pub clock: Clock,
    pub operations: Vec<Operation>,
    pub nemesis_windows: Vec<NemesisWindow>,
    /// Nemesis events that are neither `start` nor `stop`: (time, f).
    pub nemesis_marks: Vec<(u64, String)>,
}

impl History {
    /// Validates events (with their 1-based source lines) into a history.
    pub fn new(events: Vec<Event>, lines: Vec<usize>, clock: Clock) -> Result<History> {
        assert_eq!(events.len(), lines.len(), "one source line per event");
        let mut operations: Vec<Operation> = Vec::new();
        // process -> index into `operations` of its pending operation.
        let mut pending: HashMap<u64, usize> = HashMap::new();
        // process -> line of the info that retired it.
        let mut retired: HashMap<u64, usize> = HashMap::new();
        // process -> time its last operation completed.
        let mut last_complete: HashMap<u64, u64> = HashMap::new();
        let mut nemesis_windows = Vec::new();
        let mut open_windows: Vec<usize> = Vec::new();
        let mut nemesis_marks = Vec::new();

        for (i, event) in events.iter().enumerate() {
            let line = lines[i];
            let malformed = |message: String| Error::Malformed { line, message };
            if event.f.is_empty() {
                return Err(malformed("empty `f`".into()));
            }
            if event.kind == EventType::Nemesis {
                if let Some(process) = event.process {
                    return Err(malformed(format!("a nemesis event has no process (got process {process})")));
                }
                match event.f.as_str() {
                    "start" => {
                        open_windows.push(nemesis_windows.len());
                        nemesis_windows.push(NemesisWindow {
                            start_time: event.time,
                            stop_time: None,
                            description: value_text(&event.value),
                        });
                    }
                    "stop" => {
                        if open_windows.is_empty() {
                            return Err(malformed("nemesis `stop` with no fault started".into()));
                        }
                        let window = &mut nemesis_windows[open_windows.remove(0)];
                        if event.time < window.start_time {
                            return Err(malformed(format!(
                                "nemesis stop at time {} is before its start at {}",
                                event.time, window.start_time
                            )));
                        }
                        window.stop_time = Some(event.time);
                    }
                    other => nemesis_marks.push((event.time, other.to_string())),
                }
                continue;
            }
            let Some(process) = event.process else {
                return Err(malformed(format!("a {} event needs a `process`", event.kind)));
            };
            if event.kind == EventType::Invoke {
                if let Some(&op) = pending.get(&process) {
                    let earlier = lines[operations[op].invoke];
                    return Err(malformed(format!(
                        "process {process} invokes while its invoke on line {earlier} is still pending"
                    )));
                }
                if let Some(&info_line) = retired.get(&process) {
                    return Err(malformed(format!(
                        "process {process} invokes again after its `info` on line {info_line}; \
                         an info retires a process (use a fresh process id)"
                    )));
                }
                if let Some(&done) = last_complete.get(&process)
                    && event.time < done
                {
                    return Err(malformed(format!(
                        "process {process} invokes at time {} before its previous operation completed at {done}",
                        event.time
                    )));
                }
                pending.insert(process, operations.len());
                operations.push(Operation {
                    index: operations.len(),
                    process,
                    f: event.f.clone(),
                    key: event.key.clone(),
                    invoke: i,
                    completion: None,
                    outcome: Outcome::Info,
                    invoke_time: event.time,
                    complete_time: None,
                });
                continue;
            }
            let Some(op) = pending.remove(&process) else {
                let why = match retired.get(&process) {
                    Some(info_line) => format!(" (it was retired by its `info` on line {info_line})"),
                    None => String::new(),
                };
                return Err(malformed(format!(
                    "`{}` for process {process} which has no pending invoke{why}",
                    event.kind
                )));
            };
            let operation = &mut operations[op];
            let invoke_line = lines[operation.invoke];
            if operation.f != event.f {
                return Err(malformed(format!(
                    "`{}` completes f={} but process {process} invoked f={} on line {invoke_line}",
                    event.kind, event.f, operation.f
                )));
            }
            if operation.key != event.key {
                return Err(malformed(format!(
                    "`{}` is on key {:?} but process {process} invoked on key {:?} on line {invoke_line}",
                    event.kind, event.key, operation.key
                )));
            }
            if event.time < operation.invoke_time {
                return Err(malformed(format!(
                    "completion at time {} is before its invoke at {} on line {invoke_line}",
                    event.time, operation.invoke_time
                )));
            }
            operation.completion = Some(i);
            operation.complete_time = Some(event.time);
            operation.outcome = match event.kind {
                EventType::Ok => Outcome::Ok,
                EventType::Fail => Outcome::Fail,
                EventType::Info => {
                    retired.insert(process, line);
                    Outcome::Info
                }
                EventType::Invoke | EventType::Nemesis => unreachable!("handled above"),
            };
            last_complete.insert(process, event.time);
        }
        Ok(History { events, lines, clock, operations, nemesis_windows, nemesis_marks })
    }

    /// Builds a history from events in order (line `i + 1` for event `i`).
    pub fn from_events(events: Vec<Event>, clock: Clock) -> Result<History> {
        let lines = (1..=events.len()).collect();
        History::new(events, lines, clock)
    }

    /// The invoke event of an operation.
    pub fn invoke_of(&self, op: &Operation) -> &Event {
        &self.events[op.invoke]
    }

    /// The completion event of an operation, if any.
    pub fn completion_of(&self, op: &Operation) -> Option<&Event> {
        op.completion.map(|i| &self.events[i])
    }

    /// The source line of an operation's invoke.
    pub fn line_of(&self, op: &Operation) -> usize {
        self.lines[op.invoke]
    }

    /// The latest time in the history (0 when empty).
    pub fn end_time(&self) -> u64 {
        self.events.iter().map(|e| e.time).max().unwrap_or(0)
    }

    /// The earliest time in the history (0 when empty).
    pub fn start_time(&self) -> u64 {
        self.events.iter().map(|e| e.time).min().unwrap_or(0)
    }

    /// Distinct keys, in order of first appearance.
    pub fn keys(&self) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        self.operations.iter().filter(|op| seen.insert(op.key.as_str())).map(|op| op.key.clone()).collect()
    }

    /// Serialises the events as JSON Lines.
    pub fn to_jsonl(&self) -> String {
        write_jsonl(&self.events)
    }
}

/// Serialises events as JSON Lines (one event per line, each ending in `\n`).
pub fn write_jsonl(events: &[Event]) -> String {
    let mut out = String::new();
    for event in events {
        out.push_str(&serde_json::to_string(event).expect("events always serialise"));
        out.push('\n');
    }
    out
}

/// Parses and validates a JSON Lines history. Blank lines are skipped.
pub fn read_jsonl(text: &str) -> Result<History> {
    let mut events = Vec::new();
    let mut lines = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.len() > MAX_LINE_BYTES {
            return Err(Error::Json { line, message: format!("line is {} bytes, over {MAX_LINE_BYTES}", raw.len()) });
        }
        if raw.trim().is_empty() {
            continue;
        }
        let event: Event =
            serde_json::from_str(raw).map_err(|e| Error::Json { line, message: strip_serde_line(&e.to_string()) })?;
        events.push(event);
        lines.push(line);
    }
    History::new(events, lines, Clock::Nanoseconds)
}

/// serde_json ends its messages with "at line 1 column N"; within one line
/// only the column means anything.
fn strip_serde_line(message: &str) -> String {
    match message.rfind(" at line 1 column ") {
        Some(at) => format!("{} (column {})", &message[..at], &message[at + " at line 1 column ".len()..]),
        None => message.to_string(),
    }
}

/// A JSON value as short text: strings without quotes, everything else as JSON.
pub fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "nil".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(process: u64, kind: EventType, f: &str, value: Value, time: u64) -> Event {
        Event::new(Some(process), kind, f, "k", value, time)
    }

    #[test]
    fn jsonl_round_trip_keeps_every_field() {
        let mut read_ok = ev(1, EventType::Ok, "read", json!(3), 40);
        read_ok.node = Some("n2".into());
        read_ok.region = Some("eu-west".into());
        read_ok.consistency = Some("bounded".into());
        read_ok.staleness_bound_ms = Some(250);
        let mut cas_fail = ev(2, EventType::Fail, "cas", json!([1, 2]), 60);
        cas_fail.error = Some(CAS_MISMATCH_ERROR.into());
        let events = vec![
            ev(0, EventType::Invoke, "write", json!(3), 10),
            ev(1, EventType::Invoke, "read", Value::Null, 15),
            ev(0, EventType::Ok, "write", json!(3), 20),
            Event::new(None, EventType::Nemesis, "start", "", json!("isolate n1"), 25),
            read_ok,
            ev(2, EventType::Invoke, "cas", json!([1, 2]), 50),
            cas_fail,
            Event::new(None, EventType::Nemesis, "stop", "", Value::Null, 70),
            ev(3, EventType::Invoke, "write", json!("x"), 80),
            ev(3, EventType::Info, "write", json!("x"), 90),
        ];
        let history = History::from_events(events.clone(), Clock::Nanoseconds).unwrap();
        let text = history.to_jsonl();
        assert_eq!(text.lines().count(), events.len());
        let back = read_jsonl(&text).unwrap();
        assert_eq!(back.events, events);
        assert_eq!(back.operations.len(), 4);
        assert_eq!(
            back.nemesis_windows,
            vec![NemesisWindow { start_time: 25, stop_time: Some(70), description: "isolate n1".into() }]
        );
        assert_eq!(back.operations[3].outcome, Outcome::Info);
    }

    fn error_of(text: &str) -> String {
        read_jsonl(text).unwrap_err().to_string()
    }

    #[test]
    fn bad_json_names_the_line_and_column() {
        let text = "{\"process\":0,\"type\":\"invoke\",\"f\":\"read\",\"time\":1}\n\n{\"process\":0,\"type\":\"ok\",";
        let message = error_of(text);
        assert!(message.starts_with("line 3: not a valid history event"), "{message}");
        assert!(message.contains("column"), "{message}");
    }

    #[test]
    fn unknown_type_and_unknown_field_are_refused() {
        let message = error_of(r#"{"process":0,"type":"okay","f":"read","time":1}"#);
        assert!(message.starts_with("line 1:") && message.contains("okay"), "{message}");
        let message = error_of(r#"{"process":0,"type":"ok","f":"read","time":1,"colour":"red"}"#);
        assert!(message.contains("colour"), "{message}");
    }

    #[test]
    fn completion_without_invoke_is_refused_with_its_line() {
        let text = "{\"process\":0,\"type\":\"invoke\",\"f\":\"read\",\"time\":1}\n\
                    {\"process\":0,\"type\":\"ok\",\"f\":\"read\",\"time\":2}\n\
                    {\"process\":0,\"type\":\"ok\",\"f\":\"read\",\"time\":3}\n";
        assert_eq!(error_of(text), "line 3: malformed history: `ok` for process 0 which has no pending invoke");
    }

    #[test]
    fn concurrent_invokes_of_one_process_are_refused() {
        let text = "{\"process\":4,\"type\":\"invoke\",\"f\":\"read\",\"time\":1}\n\
                    {\"process\":4,\"type\":\"invoke\",\"f\":\"write\",\"value\":1,\"time\":2}\n";
        assert_eq!(
            error_of(text),
            "line 2: malformed history: process 4 invokes while its invoke on line 1 is still pending"
        );
    }

    #[test]
    fn retired_process_may_not_return() {
        let text = "{\"process\":4,\"type\":\"invoke\",\"f\":\"write\",\"value\":1,\"time\":1}\n\
                    {\"process\":4,\"type\":\"info\",\"f\":\"write\",\"value\":1,\"time\":2}\n\
                    {\"process\":4,\"type\":\"invoke\",\"f\":\"read\",\"time\":3}\n";
        let message = error_of(text);
        assert!(message.starts_with("line 3: malformed history: process 4 invokes again after its `info` on line 2"));
    }

    #[test]
    fn mismatched_completion_and_backwards_time_are_refused() {
        let text = "{\"process\":1,\"type\":\"invoke\",\"f\":\"read\",\"time\":5}\n\
                    {\"process\":1,\"type\":\"ok\",\"f\":\"write\",\"time\":6}\n";
        assert!(error_of(text).contains("completes f=write but process 1 invoked f=read on line 1"));
        let text = "{\"process\":1,\"type\":\"invoke\",\"f\":\"read\",\"time\":5}\n\
                    {\"process\":1,\"type\":\"ok\",\"f\":\"read\",\"time\":4}\n";
        assert!(error_of(text).contains("line 2: malformed history: completion at time 4 is before its invoke at 5"));
        let text = "{\"type\":\"nemesis\",\"f\":\"stop\",\"time\":4}\n";
        assert!(error_of(text).contains("no fault started"));
    }

    #[test]
    fn pending_at_end_is_info() {
        let text = "{\"process\":1,\"type\":\"invoke\",\"f\":\"write\",\"value\":2,\"time\":5}\n";
        let history = read_jsonl(text).unwrap();
        assert_eq!(history.operations[0].outcome, Outcome::Info);
        assert_eq!(history.operations[0].completion, None);
    }
}
