//! geokv's Jepsen-style harness: the history format, the linearizability
//! checker, and the reports that need only a history.
//!
//! # What it owns
//!
//! Evidence. A strongly consistent store is only as good as the evidence that
//! it stays consistent under faults; this crate turns what clients saw into a
//! verdict with a witness. It owns the on-disk history format
//! ([`history`], JSON Lines; [`edn`] reads Jepsen/Knossos EDN too), the
//! checker ([`checker`], generic over a sequential [`checker::Model`]; the
//! register model in [`register`]), the bounded-staleness transform
//! ([`staleness`]), and `report.json` / `timeline.html` ([`report`],
//! [`timeline`]). `geokv-jepsen check FILE` runs all of it offline ([`cli`]).
//!
//! `geokv-jepsen run` ([`run`]) produces such histories: it starts a lab
//! cluster of real node processes behind an emulated WAN, runs client
//! processes of a workload (register, set, bank) against it while a seeded
//! nemesis partitions, kills, pauses and slows nodes, heals, checks that
//! every key takes writes again, and checks the history.
//!
//! # History semantics
//!
//! Clients are *processes* that run one operation at a time. Each operation
//! is an `invoke` event followed by one completion: `ok` (it took effect, with
//! this result), `fail` (it definitely did not take effect: a read that timed
//! out, a write refused before it reached the log) or `info` (unknown: a write
//! that timed out may still be committed). Times come from one monotonic clock,
//! taken just before the request is sent and just after the reply arrives, so
//! the real effect lies somewhere inside `[invoke, completion]`.
//!
//! `info` is open-ended on purpose. A write whose reply was lost may sit in a
//! leader's log and commit seconds later, after the client gave up — so the
//! checker lets it take effect at any point after its invoke, however late, or
//! never. Treating it as failed would flag correct systems (a read sees the
//! late write); treating it as succeeded would excuse lost writes. Because its
//! operation is still "in flight", the process that saw `info` never invokes
//! again: the runner continues with a fresh process id, which keeps every
//! process sequential.
//!
//! Registers are partitioned by key. Linearizability is *local* (Herlihy &
//! Wing): a history is linearizable iff each key's sub-history is, so keys are
//! checked independently and in parallel.
//!
//! # The algorithm
//!
//! Wing & Gong's search with Lowe's memoization, as Porcupine implements it:
//! walk the operations in time order, tentatively linearize any operation
//! whose invoke has been reached and whose result the model accepts, and
//! backtrack when a completion is reached whose operation has not been
//! linearized. A memo of (set of linearized operations, model state) prunes
//! every configuration reached twice. Intervals are closed: operations that
//! merely touch are concurrent. See [`checker`] for the details.
//!
//! # Budgets: UNKNOWN, never PASS
//!
//! Linearizability checking is NP-complete; a pathological key can take
//! forever. Each key has a time and a memo budget; a key that exhausts either
//! is UNKNOWN, and a history with an UNKNOWN key is UNKNOWN (exit code 2) —
//! never valid. Likewise a history that cannot be read is an error with its
//! line number, never a pass, and a history without a single ok read is
//! INCONCLUSIVE: nothing was observed that could have been wrong. A VALID
//! verdict is reported as "no anomaly found in N operations", not "correct".

pub mod checker;
pub mod cli;
pub mod edn;
pub mod error;
pub mod history;
pub mod register;
pub mod report;
pub mod run;
pub mod staleness;
pub mod timeline;

pub use checker::{CheckConfig, CheckResult, KeyVerdict, Model, Verdict, check_keys};
pub use error::{Error, Result};
pub use history::{Event, EventType, History, read_jsonl};
pub use register::{RegisterModel, register_operations};

/// Reads, validates and checks a register history given as text (JSON Lines,
/// or EDN when `edn` is set) with the given limits: the whole pipeline of
/// `geokv-jepsen check`, minus the files.
pub fn check_register_text(text: &str, edn: bool, config: &CheckConfig) -> Result<(History, CheckResult)> {
    let history = if edn { edn::read_edn(text, edn::EdnOptions::default())? } else { read_jsonl(text)? };
    let ops = register_operations(&history)?;
    let result = check_keys(&ops.model, ops.keys, config);
    Ok((history, result))
}
