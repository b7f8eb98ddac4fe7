//! Generated histories: a simulated sequential register driven by random
//! concurrent clients is linearizable by construction, so the checker must
//! say VALID; each injected anomaly must then be caught.

mod common;

use common::check_with;
use geokv_jepsen::checker::{CheckConfig, Verdict};
use geokv_jepsen::history::{CAS_MISMATCH_ERROR, Clock, Event, EventType, History};
use serde_json::{Value, json};

/// splitmix64: a tiny seeded generator, so the test needs no crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A finished operation of the simulation.
#[derive(Clone, Debug)]
struct Op {
    process: u64,
    f: &'static str,
    /// Invoke value (write: the value; cas: [expected, new]; read: null).
    value: Value,
    /// Completion value (read: what it saw).
    result: Value,
    kind: EventType,
    error: Option<String>,
    invoke: u64,
    complete: u64,
}

enum Phase {
    Idle,
    /// Invoked, not yet applied.
    Invoked {
        f: &'static str,
        value: Value,
        at: u64,
    },
    /// Applied to the register with this outcome.
    Applied {
        f: &'static str,
        value: Value,
        result: Value,
        kind: EventType,
        error: Option<String>,
        at: u64,
    },
}

/// Simulates `clients` concurrent clients against one register. Every
/// operation takes effect atomically at one step strictly inside its
/// interval, so the history is linearizable. Writes and successful CAS use
/// unique values; some operations time out (info: applied or not), some fail.
fn generate(seed: u64, clients: u64, steps: usize) -> Vec<Op> {
    let mut rng = Rng(seed);
    let mut register = Value::Null;
    let mut written: Vec<Value> = Vec::new();
    let mut next_value = 0u64;
    let mut time = 0u64;
    let mut ids: Vec<u64> = (0..clients).collect();
    let mut next_id = clients;
    let mut phases: Vec<Phase> = (0..clients).map(|_| Phase::Idle).collect();
    let mut done = Vec::new();
    for _ in 0..steps {
        // Time advances by 0, 1 or 2: equal times are common, and touching
        // intervals are concurrent, so this must stay valid.
        time += rng.below(3);
        let c = rng.below(clients) as usize;
        let phase = std::mem::replace(&mut phases[c], Phase::Idle);
        phases[c] = match phase {
            Phase::Idle => {
                let (f, value) = match rng.below(3) {
                    0 => ("read", Value::Null),
                    1 => {
                        next_value += 1;
                        ("write", json!(next_value))
                    }
                    _ => {
                        next_value += 1;
                        let expected = if rng.chance(60) || written.is_empty() {
                            register.clone()
                        } else {
                            written[rng.below(written.len() as u64) as usize].clone()
                        };
                        ("cas", json!([expected, next_value]))
                    }
                };
                Phase::Invoked { f, value, at: time }
            }
            Phase::Invoked { f, value, at } => {
                if rng.chance(10) {
                    // Never applied: fail (reads, writes), or time out (info).
                    let kind = if f == "read" || rng.chance(50) { EventType::Fail } else { EventType::Info };
                    time = time.max(at + 1);
                    let process = ids[c];
                    if kind == EventType::Info {
                        ids[c] = next_id;
                        next_id += 1;
                    }
                    done.push(Op {
                        process,
                        f,
                        value,
                        result: Value::Null,
                        kind,
                        error: None,
                        invoke: at,
                        complete: time,
                    });
                    Phase::Idle
                } else {
                    // Take effect now.
                    let (result, kind, error) = match f {
                        "read" => (register.clone(), EventType::Ok, None),
                        "write" => {
                            register = value.clone();
                            written.push(value.clone());
                            (value.clone(), EventType::Ok, None)
                        }
                        _ => {
                            if register == value[0] {
                                register = value[1].clone();
                                written.push(value[1].clone());
                                (value.clone(), EventType::Ok, None)
                            } else {
                                (value.clone(), EventType::Fail, Some(CAS_MISMATCH_ERROR.to_string()))
                            }
                        }
                    };
                    time += 1;
                    Phase::Applied { f, value, result, kind, error, at }
                }
            }
            Phase::Applied { f, value, result, kind, error, at } => {
                // Every operation lasts at least 1 ns (the apply step made sure).
                let process = ids[c];
                // Some writes that took effect are reported as unknown.
                let (kind, error) = if f != "read" && rng.chance(10) {
                    ids[c] = next_id;
                    next_id += 1;
                    (EventType::Info, None)
                } else {
                    (kind, error)
                };
                done.push(Op { process, f, value, result, kind, error, invoke: at, complete: time });
                Phase::Idle
            }
        };
    }
    // Writes that took effect but never completed are in flight at the end:
    // they must be in the history (as unknown), or their values come from nowhere.
    time += 1;
    for (c, phase) in phases.into_iter().enumerate() {
        if let Phase::Applied { f, value, result, at, .. } = phase
            && f != "read"
        {
            let op = Op {
                process: ids[c],
                f,
                value,
                result,
                kind: EventType::Info,
                error: None,
                invoke: at,
                complete: time,
            };
            done.push(op);
        }
    }
    done
}

/// Events sorted by time (completions before invokes at equal times, so a
/// process finishes before it starts again; the
/// checker's closed intervals make that order irrelevant to the verdict).
fn to_history(ops: &[Op]) -> History {
    let mut events: Vec<(u64, u8, usize, Event)> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let invoke = Event::new(Some(op.process), EventType::Invoke, op.f, "", op.value.clone(), op.invoke);
        let mut completion = Event::new(Some(op.process), op.kind, op.f, "", op.result.clone(), op.complete);
        completion.error = op.error.clone();
        events.push((op.invoke, 1, i, invoke));
        events.push((op.complete, 0, i, completion));
    }
    events.sort_by_key(|(time, kind, i, _)| (*time, *kind, *i));
    History::from_events(events.into_iter().map(|(_, _, _, e)| e).collect(), Clock::Nanoseconds)
        .expect("generated histories are well-formed")
}

const SEEDS: u64 = 40;
/// Clients per history: 3 to 8, by seed.
fn clients(seed: u64) -> u64 {
    3 + seed % 6
}
const STEPS: usize = 600;

fn verdict(ops: &[Op]) -> Verdict {
    let config = CheckConfig { key_time_limit_ms: 30_000, ..CheckConfig::default() };
    check_with(&to_history(ops), &config).verdict
}

#[test]
fn generated_linearizable_histories_are_valid() {
    for seed in 0..SEEDS {
        let ops = generate(seed, clients(seed), STEPS);
        assert!(ops.len() > 100, "seed {seed}: only {} ops", ops.len());
        assert_eq!(verdict(&ops), Verdict::Valid, "seed {seed}");
    }
}

/// A read and a write such that the write completed, then another write
/// completed, all before the read was invoked: reading the first write's value
/// is stale.
fn inject_stale_read(ops: &mut [Op]) -> bool {
    let ok_writes: Vec<usize> =
        (0..ops.len()).filter(|&i| ops[i].kind == EventType::Ok && ops[i].f == "write").collect();
    for &read in
        (0..ops.len()).filter(|&i| ops[i].kind == EventType::Ok && ops[i].f == "read").collect::<Vec<_>>().iter()
    {
        for &old in &ok_writes {
            let overwritten = ok_writes
                .iter()
                .any(|&new| ops[old].complete < ops[new].invoke && ops[new].complete < ops[read].invoke);
            if overwritten && ops[read].result != ops[old].value {
                ops[read].result = ops[old].value.clone();
                return true;
            }
        }
    }
    false
}

#[test]
fn injected_stale_reads_are_caught() {
    let mut injected = 0;
    for seed in 0..SEEDS {
        let mut ops = generate(seed, clients(seed), STEPS);
        if inject_stale_read(&mut ops) {
            injected += 1;
            assert_eq!(verdict(&ops), Verdict::Invalid, "seed {seed}");
        }
    }
    assert!(injected >= SEEDS / 2, "too few histories allowed a stale read: {injected}");
}

#[test]
fn injected_reads_of_never_written_values_are_caught() {
    for seed in 0..SEEDS {
        let mut ops = generate(seed, clients(seed), STEPS);
        let read = ops.iter().position(|op| op.kind == EventType::Ok && op.f == "read").expect("an ok read");
        ops[read].result = json!("never written");
        assert_eq!(verdict(&ops), Verdict::Invalid, "seed {seed}");
    }
}

#[test]
fn injected_double_cas_from_one_state_is_caught() {
    for seed in 0..SEEDS {
        let mut ops = generate(seed, clients(seed), STEPS);
        let Some(cas) = ops.iter().position(|op| op.kind == EventType::Ok && op.f == "cas") else { continue };
        // A second client, over exactly the same interval, also swaps from
        // the same expected value to a fresh one and says it succeeded.
        let mut twin = ops[cas].clone();
        twin.process = 1_000_000;
        twin.value = json!([ops[cas].value[0].clone(), "twin"]);
        twin.result = twin.value.clone();
        ops.push(twin);
        assert_eq!(verdict(&ops), Verdict::Invalid, "seed {seed}");
    }
}
