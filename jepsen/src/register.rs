//! The register model: per-key read / write / compare-and-swap.
//!
//! A register holds one value or nothing (`null` / EDN `nil`, the initial
//! state). Turning a history into register operations:
//!
//! | f | ok | fail | info (or pending at the end) |
//! |---|---|---|---|
//! | `read` | returns the current value (the completion's `value`) | dropped: it did not happen | dropped: a read has no effect |
//! | `write v` | sets `v` | dropped | sets `v`, any time after invoke, or never |
//! | `cas [e n]` | current == `e`, sets `n` | dropped; with [`CAS_MISMATCH_ERROR`]: current != `e`, no change | if current == `e` sets `n`, any time after invoke, or never |
//!
//! Values are compared as JSON (so `1` and `"1"` differ) and interned to
//! small integers before the search.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::checker::{Model, Operation};
use crate::error::{Error, Result};
use crate::history::{CAS_MISMATCH_ERROR, History, Outcome, value_text};

/// An interned register value; [`NIL`] is the absent value.
pub type ValueId = u32;

/// The absent value (`null`, `nil`): the register's initial state.
pub const NIL: ValueId = 0;

/// A register operation with what it reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegisterOp {
    /// A read that returned `observed`.
    Read { observed: ValueId },
    /// A write (ok, or info: unknown whether it happened).
    Write { value: ValueId },
    /// A CAS that succeeded.
    Cas { expected: ValueId, new: ValueId },
    /// A CAS that ran and found something other than `expected`.
    CasMismatch { expected: ValueId, new: ValueId },
    /// A CAS with an unknown outcome: swaps if the register holds `expected`.
    CasUnknown { expected: ValueId, new: ValueId },
}

/// The register's sequential specification, with the value table for
/// describing operations.
///
/// Invariant: `values[0]` is `nil`; `values[id]` is the text of `ValueId` `id`.
#[derive(Clone, Debug)]
pub struct RegisterModel {
    values: Vec<String>,
}

impl Model for RegisterModel {
    type State = ValueId;
    type Op = RegisterOp;

    fn init(&self) -> ValueId {
        NIL
    }

    fn step(&self, &state: &ValueId, op: &RegisterOp) -> Option<ValueId> {
        match *op {
            RegisterOp::Read { observed } => (observed == state).then_some(state),
            RegisterOp::Write { value } => Some(value),
            RegisterOp::Cas { expected, new } => (expected == state).then_some(new),
            RegisterOp::CasMismatch { expected, .. } => (expected != state).then_some(state),
            RegisterOp::CasUnknown { expected, new } => Some(if expected == state { new } else { state }),
        }
    }

    fn describe_op(&self, op: &RegisterOp) -> String {
        let v = |id: ValueId| self.values[id as usize].as_str();
        match *op {
            RegisterOp::Read { observed } => format!("read -> {}", v(observed)),
            RegisterOp::Write { value } => format!("write {}", v(value)),
            RegisterOp::Cas { expected, new } => format!("cas {} -> {}", v(expected), v(new)),
            RegisterOp::CasMismatch { expected, new } => {
                format!("cas {} -> {} (compare failed: value was not {})", v(expected), v(new), v(expected))
            }
            RegisterOp::CasUnknown { expected, new } => format!("cas {} -> {} (outcome unknown)", v(expected), v(new)),
        }
    }

    fn describe_state(&self, state: &ValueId) -> String {
        self.values[*state as usize].clone()
    }
}

/// A history turned into register operations, per key.
pub struct RegisterHistory {
    pub model: RegisterModel,
    /// Keys in order of first appearance, each with its operations in history order.
    pub keys: Vec<(String, Vec<Operation<RegisterOp>>)>,
}

struct Interner {
    ids: HashMap<String, ValueId>,
    values: Vec<String>,
}

impl Interner {
    fn intern(&mut self, value: &Value) -> ValueId {
        if value.is_null() {
            return NIL;
        }
        let canonical = value.to_string();
        if let Some(&id) = self.ids.get(&canonical) {
            return id;
        }
        let id = ValueId::try_from(self.values.len()).expect("fewer than 2^32 distinct values");
        self.values.push(value_text(value));
        self.ids.insert(canonical, id);
        id
    }
}

/// Turns a validated history into register operations per key.
///
/// Uses the operations' `invoke_time`/`complete_time` (which a transform such
/// as [`crate::staleness::relax_bounded_staleness`] may have moved), and the
/// events for values.
pub fn register_operations(history: &History) -> Result<RegisterHistory> {
    let mut interner = Interner { ids: HashMap::new(), values: vec!["nil".to_string()] };
    let mut by_key: BTreeMap<&str, Vec<Operation<RegisterOp>>> = BTreeMap::new();
    let mut first_seen: Vec<&str> = Vec::new();
    for op in &history.operations {
        let invoke = history.invoke_of(op);
        let completion = history.completion_of(op);
        let line = history.line_of(op);
        let model_error = |message: String| Error::Model { line, message };
        // Write and CAS completions repeat the invoke's value (or leave it out).
        if let Some(done) = completion
            && matches!(op.f.as_str(), "write" | "cas")
            && !done.value.is_null()
            && done.value != invoke.value
        {
            return Err(Error::Model {
                line: history.lines[op.completion.expect("completion present")],
                message: format!(
                    "{} completes with value {} but was invoked with {} on line {line}",
                    op.f, done.value, invoke.value
                ),
            });
        }
        let register_op = match (op.f.as_str(), op.outcome) {
            ("read", Outcome::Ok) => {
                let done = completion.expect("ok has a completion");
                Some(RegisterOp::Read { observed: interner.intern(&done.value) })
            }
            ("read", Outcome::Fail | Outcome::Info) => None,
            ("write", Outcome::Ok | Outcome::Info) => Some(RegisterOp::Write { value: interner.intern(&invoke.value) }),
            ("write", Outcome::Fail) => None,
            ("cas", outcome) => {
                let pair = match &invoke.value {
                    Value::Array(pair) if pair.len() == 2 => pair,
                    other => return Err(model_error(format!("cas value must be [expected, new], got {other}"))),
                };
                let (expected, new) = (interner.intern(&pair[0]), interner.intern(&pair[1]));
                match outcome {
                    Outcome::Ok => Some(RegisterOp::Cas { expected, new }),
                    Outcome::Info => Some(RegisterOp::CasUnknown { expected, new }),
                    Outcome::Fail => {
                        let mismatch = completion.and_then(|c| c.error.as_deref()) == Some(CAS_MISMATCH_ERROR);
                        mismatch.then_some(RegisterOp::CasMismatch { expected, new })
                    }
                }
            }
            (other, _) => {
                return Err(model_error(format!(
                    "the register workload has no operation f={other} (read, write, cas)"
                )));
            }
        };
        let Some(register_op) = register_op else { continue };
        let ops = by_key.entry(op.key.as_str()).or_insert_with(|| {
            first_seen.push(op.key.as_str());
            Vec::new()
        });
        ops.push(Operation {
            id: op.index,
            process: op.process,
            invoke_time: op.invoke_time,
            complete_time: if op.outcome == Outcome::Info { None } else { op.complete_time },
            op: register_op,
        });
    }
    let keys = first_seen
        .into_iter()
        .map(|key| (key.to_string(), by_key.remove(key).expect("every seen key has ops")))
        .collect();
    Ok(RegisterHistory { model: RegisterModel { values: interner.values }, keys })
}
