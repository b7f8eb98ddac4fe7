#!/usr/bin/env bash
# Runs a series of geokv-jepsen runs and prints one Markdown table row per
# run (the table in docs/jepsen.md is made this way).
#
#   jepsen/scripts/series.sh OUT_DIR WORKLOADS NEMESES SEEDS [EXTRA_FLAGS...]
#
# WORKLOADS, NEMESES and SEEDS are comma-separated; every combination runs,
# one after the other (never two labs at once: two cores). The read level
# follows the seed (1 linearizable, 2 lease, 3 follower, 4 bounded:250ms,
# 5 lease) unless EXTRA_FLAGS set --read-consistency. The append workload
# always runs with --client-retries (it is the exactly-once workload).
# --clients (6) and --time-limit-s (20) may be given in EXTRA_FLAGS too.
# Each run is bounded by its own --time-limit-s and the
# harness's liveness and check limits; its processes die with it.
set -euo pipefail
out=$1 workloads=$2 nemeses=$3 seeds=$4
shift 4
bin=${GEOKV_JEPSEN:-${CARGO_TARGET_DIR:-$HOME/.cache/geokv-target}/debug/geokv-jepsen}
mkdir -p "$out"
level_of() {
  case $1 in
    1) echo linearizable ;; 2) echo lease ;; 3) echo follower ;; 4) echo bounded:250ms ;; *) echo lease ;;
  esac
}
for w in ${workloads//,/ }; do
  for n in ${nemeses//,/ }; do
    for s in ${seeds//,/ }; do
      dir="$out/$w-$n-s$s"
      flags=(--workload "$w" --nemesis "$n" --seed "$s" --ops 100000)
      [[ " $* " == *" --clients "* ]] || flags+=(--clients 6)
      [[ " $* " == *" --time-limit-s "* ]] || flags+=(--time-limit-s 20)
      [[ " $* " == *" --read-consistency "* ]] || flags+=(--read-consistency "$(level_of "$s")")
      [[ $w == append && " $* " != *" --client-retries "* ]] && flags+=(--client-retries)
      start=$(date +%s)
      code=0
      timeout 600 "$bin" run "${flags[@]}" "$@" --out "$dir" >"$dir.log" 2>&1 || code=$?
      wall=$(( $(date +%s) - start ))
      python3 - "$dir/report.json" "$code" "$wall" "${flags[*]} $*" <<'PY'
import json, sys
path, code, wall, flags = sys.argv[1:5]
try:
    r = json.load(open(path))
except Exception as e:
    print(f"| `{flags}` | NO REPORT (exit {code}: {e}) | | | {wall} s |")
    sys.exit(0)
ok = fail = info = 0
for outcomes in r.get("op_counts", {}).values():
    ok += outcomes.get("ok", 0); fail += outcomes.get("fail", 0); info += outcomes.get("info", 0)
checkers = r.get("checkers", {})
b = checkers.get("staleness_bounds", {}).get("verdict", "-")
for w in ("set", "append", "bank"):
    counts = checkers.get(w, {}).get("bounds")
    if counts:
        reported = counts["fresh"] + counts["bounded"]
        held = checkers[w].get("bounds_held")
        b = (f"{held}/{reported} held" if held is not None else f"{reported} reported (unchecked)") + f", {counts['unknown']} none"
summary = r.get("summary", "").replace("|", "/")
print(f"| `{flags}` | {r.get('verdict')}: {summary} | {ok} / {fail} / {info} | bounds {b} | {wall} s |", flush=True)
PY
    done
  done
done
