//! The history recorder: one monotonic clock, one append-only event list.
//!
//! Every event's time is read *while holding the list's lock*, so the file
//! order is the time order and no two processes can interleave a stale time.
//! An invoke is stamped just before its request is sent; a completion just
//! after its reply arrived (the lock is held for microseconds, nothing inside
//! it awaits).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde_json::Value;

use crate::history::{Event, EventType};

/// Most events one run may record; a run that reaches it stops generating
/// operations (a history is kept in memory until it is checked).
pub const MAX_EVENTS: usize = 4_000_000;

/// What a completion reports besides its type and value.
#[derive(Clone, Debug, Default)]
pub struct CompletionMeta {
    pub node: Option<String>,
    pub region: Option<String>,
    pub consistency: Option<String>,
    pub staleness_bound_ms: Option<u64>,
    pub error: Option<String>,
}

/// The shared recorder.
///
/// Invariants: event times never decrease in list order; process ids are
/// handed out once each (a retired process's id is never reused).
pub struct Recorder {
    start: Instant,
    events: Mutex<Vec<Event>>,
    next_process: AtomicU64,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder { start: Instant::now(), events: Mutex::new(Vec::new()), next_process: AtomicU64::new(0) }
    }

    /// A process id never used before.
    pub fn fresh_process(&self) -> u64 {
        self.next_process.fetch_add(1, Ordering::Relaxed)
    }

    /// Nanoseconds since the recorder started, on its monotonic clock.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).expect("a run lasts less than 584 years")
    }

    fn push(&self, mut event: Event) {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        event.time = self.now_ns();
        if let Some(last) = events.last() {
            assert!(last.time <= event.time, "recorder clock went backwards: {} then {}", last.time, event.time);
        }
        if events.len() < MAX_EVENTS {
            events.push(event);
        }
    }

    /// Whether the event limit is reached (stop invoking).
    pub fn full(&self) -> bool {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).len() + 2 >= MAX_EVENTS
    }

    /// Records an invoke (stamped now: call just before sending).
    pub fn invoke(&self, process: u64, f: &str, key: &str, value: Value) {
        self.push(Event::new(Some(process), EventType::Invoke, f, key, value, 0));
    }

    /// Records a completion (stamped now: call just after the reply).
    pub fn complete(&self, process: u64, kind: EventType, f: &str, key: &str, value: Value, meta: CompletionMeta) {
        assert!(matches!(kind, EventType::Ok | EventType::Fail | EventType::Info), "not a completion: {kind}");
        let mut event = Event::new(Some(process), kind, f, key, value, 0);
        event.node = meta.node;
        event.region = meta.region;
        event.consistency = meta.consistency;
        event.staleness_bound_ms = meta.staleness_bound_ms;
        event.error = meta.error;
        self.push(event);
    }

    /// Records a nemesis event (`start` / `stop` / a marker).
    pub fn nemesis(&self, f: &str, value: Value) {
        self.push(Event::new(None, EventType::Nemesis, f, "", value, 0));
    }

    /// The events so far, in time order.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}
