//! The linearizability checker: Wing & Gong's search with Lowe's
//! memoization, per key, keys in parallel, within a budget.
//!
//! # The search
//!
//! Each operation becomes a *call* entry at its invoke time and, unless its
//! outcome is unknown, a *return* entry at its completion time. Entries are
//! sorted by time with calls before returns at equal times, so operations
//! whose intervals merely touch count as concurrent (closed intervals). They
//! sit in a doubly linked list. The search walks the list from the front:
//!
//! - at a call, it asks the model whether the operation can take effect now
//!   (from the current state, with the result it reported). If so, and the
//!   pair (set of operations linearized so far, new state) has not been seen
//!   before, it *lifts* the operation (call and return) out of the list,
//!   pushes it on a stack and starts again from the front;
//! - at a return, the operation it belongs to had to take effect before this
//!   point and no order found so far allows it: pop the last linearized
//!   operation, put it back in the list and try the next call after it.
//!
//! The history is linearizable when every operation with a known outcome has
//! been lifted; it is not when the stack is empty at a return. The memo
//! (Lowe's improvement) prunes every configuration reached twice: what can
//! still happen depends only on which operations took effect and the state
//! they left, not on the order they took effect in.
//!
//! # Unknown outcomes
//!
//! An `info` operation has no return entry: it may take effect at any point
//! after its invoke, or never. The search may lift it whenever its call comes
//! up, and success does not wait for it. (Porcupine completes such operations
//! at the end of the history with an output any state accepts; leaving them
//! optional is the same thing, stated directly.)
//!
//! # Budgets
//!
//! The search is exponential in the worst case. Each key gets a time limit and
//! a memo size limit ([`CheckConfig`]); running out yields
//! [`KeyVerdict::Unknown`], never valid. Keys are independent registers, so
//! they are checked separately (linearizability is compositional) on a pool of
//! threads; with [`CheckConfig::stop_on_first_invalid`] the first invalid key
//! cancels the rest.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// A sequential specification: a state machine the history must be
/// explainable by.
pub trait Model: Sync {
    /// The model's state. Equal states must behave the same from then on.
    type State: Clone + Eq + Hash + Debug + Send;
    /// An operation with its input and, when known, the result it reported.
    type Op: Clone + Debug + Send + Sync;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// The state after `op` takes effect in `state`, or `None` when `op`
    /// could not have reported what it reported from `state`.
    fn step(&self, state: &Self::State, op: &Self::Op) -> Option<Self::State>;

    /// The operation for humans, e.g. `read -> 3`, `cas 1 -> 2`.
    fn describe_op(&self, op: &Self::Op) -> String;

    /// The state for humans.
    fn describe_state(&self, state: &Self::State) -> String;

    /// Heap bytes a state owns beyond its `size_of`, for the memo's budget.
    fn state_heap_bytes(&self, _state: &Self::State) -> usize {
        0
    }
}

/// One operation of one key, as the checker sees it.
///
/// Invariant: `complete_time`, when present, is `>= invoke_time`.
#[derive(Clone, Debug)]
pub struct Operation<O> {
    /// The operation's index in the history it came from
    /// ([`crate::history::History::operations`]), for reports.
    pub id: usize,
    pub process: u64,
    pub invoke_time: u64,
    /// `None`: the outcome is unknown; the operation may take effect at any
    /// time after its invoke, or never.
    pub complete_time: Option<u64>,
    pub op: O,
}

/// Limits and parallelism for a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckConfig {
    /// Wall-clock time one key's search may take before it is UNKNOWN.
    pub key_time_limit_ms: u64,
    /// Estimated bytes one key's memo may hold before it is UNKNOWN.
    pub key_cache_limit_bytes: usize,
    /// Keys checked at once.
    pub threads: usize,
    /// Cancel the keys not yet decided once one key is invalid.
    pub stop_on_first_invalid: bool,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            key_time_limit_ms: 10_000,
            key_cache_limit_bytes: 256 << 20,
            threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            stop_on_first_invalid: true,
        }
    }
}

/// How often (in search steps) the search looks at the clock and the cancel flag.
const BUDGET_CHECK_INTERVAL_STEPS: u64 = 1024;

/// The overall verdict of a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Valid,
    /// Not decided: a budget ran out, or the key was never checked. Never a pass.
    Unknown,
    Invalid,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::Unknown => "unknown",
            Verdict::Invalid => "invalid",
        }
    }
}

/// Why a key has no verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum UnknownReason {
    /// The search ran longer than [`CheckConfig::key_time_limit_ms`].
    TimeLimit { limit_ms: u64 },
    /// The memo grew past [`CheckConfig::key_cache_limit_bytes`].
    CacheLimit { limit_bytes: usize },
    /// Another key was invalid first and the check stopped.
    Cancelled,
}

impl std::fmt::Display for UnknownReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnknownReason::TimeLimit { limit_ms } => write!(f, "time limit of {limit_ms} ms reached"),
            UnknownReason::CacheLimit { limit_bytes } => {
                write!(f, "memo limit of {} MiB reached", limit_bytes / (1 << 20))
            }
            UnknownReason::Cancelled => write!(f, "not checked: another key was invalid first"),
        }
    }
}

/// An operation named in a witness.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WitnessOp {
    /// Index into the history's operations.
    pub id: usize,
    pub process: u64,
    pub description: String,
    pub invoke_time: u64,
    /// `None`: unknown outcome (open-ended).
    pub complete_time: Option<u64>,
}

/// Why a key is not linearizable, as far as the search got.
///
/// Invariants: `linearized` is a valid linearization of those operations
/// (each could take effect, in this order, within its interval); no order the
/// search tried placed more operations; `unplaceable` is not in it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Witness {
    /// The longest linearizable prefix found, in the order it was linearized.
    pub linearized: Vec<WitnessOp>,
    /// The model's state after that prefix.
    pub state_after: String,
    /// The operation that had to take effect next (it completed before any
    /// other pending one) but cannot from that state.
    pub unplaceable: WitnessOp,
    /// Operations whose intervals overlap the unplaceable one's (any of them
    /// could have been ordered before or after it).
    pub concurrent: Vec<WitnessOp>,
}

/// A key's verdict.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "lowercase")]
pub enum KeyVerdict {
    Valid,
    Invalid { witness: Box<Witness> },
    Unknown { why: UnknownReason },
}

impl KeyVerdict {
    pub fn verdict(&self) -> Verdict {
        match self {
            KeyVerdict::Valid => Verdict::Valid,
            KeyVerdict::Invalid { .. } => Verdict::Invalid,
            KeyVerdict::Unknown { .. } => Verdict::Unknown,
        }
    }
}

/// The result of checking one key.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KeyResult {
    pub key: String,
    /// Operations the checker considered (fails that did not happen excluded).
    pub operations: usize,
    #[serde(flatten)]
    pub verdict: KeyVerdict,
    /// Configurations the search visited (memo size).
    pub states_explored: u64,
    pub elapsed_ms: f64,
}

/// The result of checking a history, key by key.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckResult {
    pub verdict: Verdict,
    /// In key order.
    pub keys: Vec<KeyResult>,
    pub elapsed_ms: f64,
}

impl CheckResult {
    /// The first invalid key, if any.
    pub fn first_invalid(&self) -> Option<&KeyResult> {
        self.keys.iter().find(|k| k.verdict.verdict() == Verdict::Invalid)
    }
}

/// Checks each key's operations separately, in parallel.
pub fn check_keys<M: Model>(
    model: &M,
    keys: Vec<(String, Vec<Operation<M::Op>>)>,
    config: &CheckConfig,
) -> CheckResult {
    let started = Instant::now();
    let cancel = AtomicBool::new(false);
    let next = AtomicUsize::new(0);
    // Largest keys first: they bound the wall time.
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(keys[i].1.len()));
    let results: Mutex<Vec<Option<KeyResult>>> = Mutex::new(vec![None; keys.len()]);
    let threads = config.threads.clamp(1, keys.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let slot = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&index) = order.get(slot) else { break };
                    let (key, ops) = &keys[index];
                    let result = if cancel.load(Ordering::Relaxed) {
                        KeyResult {
                            key: key.clone(),
                            operations: ops.len(),
                            verdict: KeyVerdict::Unknown { why: UnknownReason::Cancelled },
                            states_explored: 0,
                            elapsed_ms: 0.0,
                        }
                    } else {
                        check_operations(model, key, ops, config, &cancel)
                    };
                    if config.stop_on_first_invalid && result.verdict.verdict() == Verdict::Invalid {
                        cancel.store(true, Ordering::Relaxed);
                    }
                    results.lock().expect("no thread panics holding the lock")[index] = Some(result);
                }
            });
        }
    });
    let keys: Vec<KeyResult> = results
        .into_inner()
        .expect("no thread panicked")
        .into_iter()
        .map(|r| r.expect("every key has a result"))
        .collect();
    let verdict = keys.iter().map(|k| k.verdict.verdict()).max().unwrap_or(Verdict::Valid);
    CheckResult { verdict, keys, elapsed_ms: started.elapsed().as_secs_f64() * 1e3 }
}

/// Sentinel for "no entry" in the linked list.
const NIL: usize = usize::MAX;
/// The list's head sentinel.
const HEAD: usize = 0;

/// The WGL list: entries 1..=n sorted by time, linked after a head sentinel.
struct EntryList {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// The operation (index into the key's ops) each entry belongs to.
    op: Vec<usize>,
    is_call: Vec<bool>,
    /// For a call: its return entry, or NIL for an unknown outcome.
    partner: Vec<usize>,
}

impl EntryList {
    fn new<O>(ops: &[Operation<O>]) -> EntryList {
        // (time, 0 = call / 1 = return, op): calls first at equal times.
        let mut sorted: Vec<(u64, u8, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            sorted.push((op.invoke_time, 0, i));
            if let Some(done) = op.complete_time {
                assert!(
                    done >= op.invoke_time,
                    "operation {} completes at {done} before its invoke at {}",
                    op.id,
                    op.invoke_time
                );
                sorted.push((done, 1, i));
            }
        }
        sorted.sort_unstable();
        let n = sorted.len() + 1;
        let mut list = EntryList {
            next: (1..=n).map(|i| if i == n { NIL } else { i }).collect(),
            prev: (0..n).map(|i| if i == 0 { NIL } else { i - 1 }).collect(),
            op: vec![NIL; n],
            is_call: vec![false; n],
            partner: vec![NIL; n],
        };
        let mut call_entry = vec![NIL; ops.len()];
        for (position, &(_, kind, op)) in sorted.iter().enumerate() {
            let entry = position + 1;
            list.op[entry] = op;
            list.is_call[entry] = kind == 0;
            if kind == 0 {
                call_entry[op] = entry;
            } else {
                list.partner[call_entry[op]] = entry;
            }
        }
        list
    }

    fn unlink(&mut self, entry: usize) {
        let (prev, next) = (self.prev[entry], self.next[entry]);
        self.next[prev] = next;
        if next != NIL {
            self.prev[next] = prev;
        }
    }

    fn relink(&mut self, entry: usize) {
        let (prev, next) = (self.prev[entry], self.next[entry]);
        self.next[prev] = entry;
        if next != NIL {
            self.prev[next] = entry;
        }
    }

    /// Removes a call and its return (dancing links: undo in reverse order).
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        if self.partner[call] != NIL {
            self.unlink(self.partner[call]);
        }
    }

    fn unlift(&mut self, call: usize) {
        if self.partner[call] != NIL {
            self.relink(self.partner[call]);
        }
        self.relink(call);
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Bitset(Box<[u64]>);

impl Bitset {
    fn new(bits: usize) -> Self {
        Bitset(vec![0; bits.div_ceil(64)].into_boxed_slice())
    }
    fn set(&mut self, bit: usize) {
        self.0[bit / 64] |= 1 << (bit % 64);
    }
    fn clear(&mut self, bit: usize) {
        self.0[bit / 64] &= !(1 << (bit % 64));
    }
}

/// Searches one key's operations. `cancel` stops it early (UNKNOWN).
pub fn check_operations<M: Model>(
    model: &M,
    key: &str,
    ops: &[Operation<M::Op>],
    config: &CheckConfig,
    cancel: &AtomicBool,
) -> KeyResult {
    let started = Instant::now();
    let time_limit = Duration::from_millis(config.key_time_limit_ms);
    let mut list = EntryList::new(ops);
    let mut remaining_known = ops.iter().filter(|op| op.complete_time.is_some()).count();
    let mut state = model.init();
    let mut linearized = Bitset::new(ops.len());
    // Lowe's memo: linearized set -> the states reached with exactly that set.
    // Keyed by the set so a hit costs no allocation.
    let mut memo: HashMap<Bitset, Vec<M::State>> = HashMap::new();
    let mut memo_states = 0usize;
    let set_bytes = std::mem::size_of::<(Bitset, Vec<M::State>)>() + linearized.0.len() * 8 + 16;
    let state_bytes = std::mem::size_of::<M::State>();
    let mut memo_bytes = 0usize;
    // (call entry, state before it)
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut longest: Vec<usize> = Vec::new();
    let mut longest_state = state.clone();
    let mut steps: u64 = 0;
    let mut entry = list.next[HEAD];

    let finish = |verdict: KeyVerdict, explored: usize| KeyResult {
        key: key.to_string(),
        operations: ops.len(),
        verdict,
        states_explored: explored as u64,
        elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
    };

    loop {
        if remaining_known == 0 {
            return finish(KeyVerdict::Valid, memo_states);
        }
        steps += 1;
        if steps.is_multiple_of(BUDGET_CHECK_INTERVAL_STEPS) {
            if cancel.load(Ordering::Relaxed) {
                return finish(KeyVerdict::Unknown { why: UnknownReason::Cancelled }, memo_states);
            }
            if started.elapsed() > time_limit {
                let why = UnknownReason::TimeLimit { limit_ms: config.key_time_limit_ms };
                return finish(KeyVerdict::Unknown { why }, memo_states);
            }
        }
        if entry != NIL && list.is_call[entry] {
            let op = list.op[entry];
            if let Some(next_state) = model.step(&state, &ops[op].op) {
                linearized.set(op);
                let heap_bytes = model.state_heap_bytes(&next_state);
                let fresh = match memo.get_mut(&linearized) {
                    Some(states) if states.contains(&next_state) => false,
                    Some(states) => {
                        states.push(next_state.clone());
                        memo_bytes += state_bytes + heap_bytes;
                        true
                    }
                    None => {
                        memo.insert(linearized.clone(), vec![next_state.clone()]);
                        memo_bytes += set_bytes + state_bytes + heap_bytes;
                        true
                    }
                };
                if fresh {
                    memo_states += 1;
                    if memo_bytes > config.key_cache_limit_bytes {
                        let why = UnknownReason::CacheLimit { limit_bytes: config.key_cache_limit_bytes };
                        return finish(KeyVerdict::Unknown { why }, memo_states);
                    }
                    stack.push((entry, std::mem::replace(&mut state, next_state)));
                    list.lift(entry);
                    if ops[op].complete_time.is_some() {
                        remaining_known -= 1;
                    }
                    if stack.len() > longest.len() {
                        longest = stack.iter().map(|&(e, _)| list.op[e]).collect();
                        longest_state = state.clone();
                    }
                    entry = list.next[HEAD];
                    continue;
                }
                linearized.clear(op);
            }
            entry = list.next[entry];
        } else {
            // A return (or the end, which is only reachable with unknown
            // operations left): backtrack.
            let Some((call, previous)) = stack.pop() else {
                let witness = witness(model, ops, &list, &longest, &longest_state);
                return finish(KeyVerdict::Invalid { witness: Box::new(witness) }, memo_states);
            };
            let op = list.op[call];
            state = previous;
            linearized.clear(op);
            list.unlift(call);
            if ops[op].complete_time.is_some() {
                remaining_known += 1;
            }
            entry = list.next[call];
        }
    }
}

fn witness_op<M: Model>(model: &M, op: &Operation<M::Op>) -> WitnessOp {
    WitnessOp {
        id: op.id,
        process: op.process,
        description: model.describe_op(&op.op),
        invoke_time: op.invoke_time,
        complete_time: op.complete_time,
    }
}

/// Builds the witness from the longest prefix: the operation that cannot be
/// placed after it is the one whose return comes first among those left.
fn witness<M: Model>(
    model: &M,
    ops: &[Operation<M::Op>],
    list: &EntryList,
    longest: &[usize],
    state_after: &M::State,
) -> Witness {
    let mut in_prefix = vec![false; ops.len()];
    for &op in longest {
        in_prefix[op] = true;
    }
    // Walk the full sorted order (entries 1..) for the first return not in the prefix.
    let unplaceable = (1..list.op.len())
        .find(|&e| !list.is_call[e] && !in_prefix[list.op[e]])
        .map(|e| list.op[e])
        .expect("an invalid key has an operation left to place");
    let target = &ops[unplaceable];
    let end = target.complete_time.expect("returns belong to known outcomes");
    let concurrent = ops
        .iter()
        .enumerate()
        .filter(|&(i, op)| {
            i != unplaceable && op.invoke_time <= end && op.complete_time.is_none_or(|done| target.invoke_time <= done)
        })
        .map(|(_, op)| witness_op(model, op))
        .collect();
    Witness {
        linearized: longest.iter().map(|&i| witness_op(model, &ops[i])).collect(),
        state_after: model.describe_state(state_after),
        unplaceable: witness_op(model, target),
        concurrent,
    }
}
