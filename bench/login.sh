#!/usr/bin/env bash
# Enrollment and login latency with the simulated card, and the share of
# CTAPHID framing, ECDSA and sled: runs bench/login.rs RUNS times (each a
# fresh process) and prints min / median / max per figure. The header of
# bench/login.rs states the method.
#
# Settings (environment): RUNS=3, ITERATIONS=200, OUT=bench/results/DATE
set -euo pipefail

cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
ITERATIONS=${ITERATIONS:-200}
OUT=${OUT:-bench/results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"

cargo build --release --examples
printf 'run\tpath\tmetric\tvalue\tload1\n' >"$OUT/login.tsv"
for run in $(seq "$RUNS"); do
    load=$(cut -d' ' -f1 /proc/loadavg)
    target/release/examples/login "$ITERATIONS" |
        while IFS=$'\t' read -r path metric value; do
            printf '%s\t%s\t%s\t%s\t%s\n' "$run" "$path" "$metric" "$value" "$load"
        done >>"$OUT/login.tsv"
done

python3 - "$OUT/login.tsv" <<'PY' | tee "$OUT/login.md"
import csv, statistics, sys
from collections import defaultdict
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
groups = defaultdict(list)
for r in rows:
    groups[(r["path"], r["metric"])].append(float(r["value"]))
print("| path | figure (µs, or % of the end-to-end median) | min / median / max | runs |")
print("|---|---|---|---|")
for (path, metric), values in groups.items():
    v = sorted(values)
    print(f"| {path} | {metric} | {v[0]:.2f} / {statistics.median(v):.2f} / {v[-1]:.2f} | {len(v)} |")
PY
