#!/usr/bin/env bash
# Resident memory of the proxy with 0, 10,000 and 100,000 live sessions:
# runs bench/memory.rs RUNS times (each a fresh process) and prints
# min / median / max per step. See the header of bench/memory.rs for how
# the sessions are made.
#
# Settings (environment): RUNS=3, STEPS=10000,100000, OUT=bench/results/DATE
set -euo pipefail

cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
STEPS=${STEPS:-10000,100000}
OUT=${OUT:-bench/results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"

cargo build --release --bins --examples
printf 'run\tsessions\tvm_rss_kib\tstep\tload1\n' >"$OUT/memory.tsv"
for run in $(seq "$RUNS"); do
    load=$(cut -d' ' -f1 /proc/loadavg)
    target/release/examples/memory --steps "$STEPS" |
        while IFS=$'\t' read -r sessions rss step; do
            printf '%s\t%s\t%s\t%s\t%s\n' "$run" "$sessions" "$rss" "$step" "$load"
        done >>"$OUT/memory.tsv"
done

python3 - "$OUT/memory.tsv" <<'PY' | tee "$OUT/memory.md"
import csv, statistics, sys
from collections import defaultdict
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
groups = defaultdict(list)
for r in rows:
    groups[(int(r["sessions"]), r["step"])].append(int(r["vm_rss_kib"]) / 1024)
print("| live sessions | step | VmRSS MiB (min / median / max) | runs |")
print("|---|---|---|---|")
for (sessions, step), values in groups.items():
    v = sorted(values)
    print(f"| {sessions} | {step} | {v[0]:.1f} / {statistics.median(v):.1f} / {v[-1]:.1f} | {len(v)} |")
PY
