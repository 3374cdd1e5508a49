#!/usr/bin/env python3
"""Summarizes bench/run.sh's raw.tsv: min/median/max per measurement, the
cardgate/nginx ratios and the counter checks, as Markdown on stdout.

Rows with run 0 are warm-ups and are left out.
"""

import csv
import os
import statistics
import sys
from collections import defaultdict


def spread(values, digits):
    """Formats min / median / max of `values` with `digits` decimals."""
    ordered = sorted(values)
    parts = (ordered[0], statistics.median(ordered), ordered[-1])
    return " / ".join(f"{v:.{digits}f}" for v in parts)


def failure_kinds(path):
    """Returns the (target, connections, run) keys of the rows in the
    errors.tsv beside `path`, which bench/run.sh writes with oha."""
    errors = os.path.join(os.path.dirname(path), "errors.tsv")
    if not os.path.exists(errors):
        return set()
    return {(r["target"], r["connections"], r["run"])
            for r in csv.DictReader(open(errors), delimiter="\t")}


def main(path):
    rows = [r for r in csv.DictReader(open(path), delimiter="\t") if r["run"] != "0"]
    kinds = failure_kinds(path)
    groups = defaultdict(list)
    for row in rows:
        groups[(row["section"], row["target"], int(row["connections"]))].append(row)

    print("| section | target | connections | runs | requests/s (min / median / max) "
          "| p50 ms | p99 ms | errors | generator CPU % | front CPU µs/request "
          "| k_server CPU µs/request | increments per flush | load (1 min) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    problems = []
    for (section, target, conns), group in sorted(groups.items()):
        def numbers(key):
            return [float(r[key]) for r in group]

        seconds = numbers("seconds")
        requests = numbers("requests")
        generator = [100 * c / s for c, s in zip(numbers("generator_cpu_s"), seconds)]
        front = ("–" if section == "server" else
                 spread([1e6 * c / n for c, n in zip(numbers("proxy_cpu_s"), requests)], 1))
        server = spread([1e6 * c / n for c, n in zip(numbers("server_cpu_s"), requests)], 1)
        per_flush = spread([i / b for i, b in zip(numbers("increments"), numbers("batches"))
                            if b > 0] or [0], 1)
        loads = spread(numbers("load1"), 2)
        print(f"| {section} | {target} | {conns} | {len(group)} | {spread(numbers('rps'), 1)} "
              f"| {spread(numbers('p50_ms'), 3)} | {spread(numbers('p99_ms'), 3)} "
              f"| {int(sum(numbers('errors')))} | {spread(generator, 0)} | {front} | {server} "
              f"| {per_flush} | {loads} |")

        # Every value k_server reserved in the window went to a request of
        # this run: at least one per successful response, and at most one
        # more per connection (requests cut off when wrk stops; oha waits
        # for them).
        for r in group:
            ok = int(r["requests"]) - int(r["errors"])
            increments = int(r["increments"])
            slack = 0 if section == "server" else conns
            if int(r["values"]) != increments or not ok <= increments <= ok + slack:
                problems.append(f"{section} {target} c={conns} run {r['run']}: {ok} successful "
                                f"responses but k_server handed out {increments} values")
            if int(r["errors"]) != 0:
                key = (target, str(conns), r["run"])
                where = " (kinds in errors.tsv)" if key in kinds else ""
                problems.append(f"{section} {target} c={conns} run {r['run']}: "
                                f"{r['errors']} errors{where}")

    def median(group, key):
        return statistics.median(float(r[key]) for r in group)

    def runs_ahead(a, b):
        """Counts the runs in which `a` beat `b` on throughput and on p99.
        Targets take turns within a run number, so the rows of one number
        saw the same conditions."""
        by_run = {r["run"]: r for r in b}
        paired = [(r, by_run[r["run"]]) for r in a if r["run"] in by_run]
        faster = sum(float(x["rps"]) > float(y["rps"]) for x, y in paired)
        lower = sum(float(x["p99_ms"]) < float(y["p99_ms"]) for x, y in paired)
        return f"{faster} of {len(paired)}", f"{lower} of {len(paired)}"

    for first, second in (("cardgate", "nginx"), ("baseline", "nginx"), ("cardgate", "baseline")):
        pairs = []
        for conns in sorted({c for (s, _, c) in groups if s == "proxy"}):
            a, b = groups.get(("proxy", first, conns)), groups.get(("proxy", second, conns))
            if a and b:
                pairs.append((conns, median(a, "rps") / median(b, "rps"),
                              median(a, "p99_ms") / median(b, "p99_ms"), *runs_ahead(a, b)))
        if not pairs:
            continue
        print()
        print(f"| connections | throughput {first}/{second} (medians) "
              f"| p99 {first}/{second} (medians) | runs {first} faster "
              f"| runs {first} lower p99 |")
        print("|---|---|---|---|---|")
        for conns, throughput, p99, faster, lower in pairs:
            print(f"| {conns} | {throughput:.3f} | {p99:.3f} | {faster} | {lower} |")

    print()
    if problems:
        print("Counter or error checks FAILED:")
        for p in problems:
            print(f"- {p}")
        sys.exit(1)
    print("Counter checks passed: every value k_server handed out in a run went to a "
          "request of that run, and no run had an error.")


if __name__ == "__main__":
    main(sys.argv[1])
