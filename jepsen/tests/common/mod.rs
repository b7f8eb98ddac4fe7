//! A compact way to write histories in tests, one event a line:
//!
//! ```text
//! p0 invoke write 1 @0
//! p0 ok write 1 @10
//! p1 invoke cas [1,2] key=a @12
//! p1 fail cas [1,2] error=cas-mismatch @15
//! nemesis start "isolate n1" @20
//! ```
//!
//! `pN TYPE F [VALUE] [key=K] [error=E] [stale=MS] @TIME`, VALUE in JSON.
#![allow(dead_code)]

use geokv_jepsen::checker::{CheckConfig, CheckResult, check_keys};
use geokv_jepsen::history::{Clock, Event, EventType, History};
use geokv_jepsen::register::register_operations;
use serde_json::Value;

pub fn events(text: &str) -> Vec<Event> {
    let mut events = Vec::new();
    for raw in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (body, time) = raw.rsplit_once('@').unwrap_or_else(|| panic!("no @time in {raw:?}"));
        let time: u64 = time.trim().parse().unwrap_or_else(|_| panic!("bad time in {raw:?}"));
        let mut words = body.split_whitespace();
        let who = words.next().expect("process");
        let (process, kind) = if who == "nemesis" {
            (None, EventType::Nemesis)
        } else {
            let process = who.strip_prefix('p').expect("pN").parse().expect("process number");
            let kind = match words.next().expect("type") {
                "invoke" => EventType::Invoke,
                "ok" => EventType::Ok,
                "fail" => EventType::Fail,
                "info" => EventType::Info,
                other => panic!("unknown type {other}"),
            };
            (Some(process), kind)
        };
        let f = words.next().expect("f");
        let mut event = Event::new(process, kind, f, "", Value::Null, time);
        for word in words {
            if let Some(key) = word.strip_prefix("key=") {
                event.key = key.to_string();
            } else if let Some(error) = word.strip_prefix("error=") {
                event.error = Some(error.to_string());
            } else if let Some(ms) = word.strip_prefix("stale=") {
                event.staleness_bound_ms = Some(ms.parse().expect("ms"));
            } else {
                event.value = serde_json::from_str(word).unwrap_or_else(|_| panic!("bad value {word:?}"));
            }
        }
        events.push(event);
    }
    events
}

pub fn history(text: &str) -> History {
    History::from_events(events(text), Clock::Nanoseconds).expect("well-formed test history")
}

pub fn check_with(history: &History, config: &CheckConfig) -> CheckResult {
    let ops = register_operations(history).expect("register operations");
    check_keys(&ops.model, ops.keys, config)
}

pub fn check(text: &str) -> CheckResult {
    check_with(&history(text), &CheckConfig::default())
}
