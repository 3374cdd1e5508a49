#!/usr/bin/env python3
"""Where a request's time goes between system calls, thread by thread.

Reads the text of `perf script` for a recording of the raw system call
tracepoints, for example:

    perf record -e 'raw_syscalls:sys_enter,raw_syscalls:sys_exit' \\
        -p PID -o trace.data -- sleep 4
    perf script -i trace.data | bench/syscall_gaps.py

For each thread with at least --min-events events it prints, as median
and mean in microseconds:
- the time spent inside each call, by call and file descriptor;
- the time between leaving one call and entering the next (user-space
  work), by the pair of calls;
- the time spent blocked in epoll_wait, by the descriptor read next, which
  separates waiting for the client from waiting for the upstream.

perf stamps events in whole microseconds, and each traced call costs some
time of its own, so the figures are for comparing two programs traced the
same way, not absolute.
"""

import argparse
import re
import statistics
import sys
from collections import defaultdict

NAMES = {0: "read", 1: "write", 20: "writev", 44: "sendto", 45: "recvfrom",
         55: "getsockopt", 202: "futex", 232: "epoll_wait"}
READS = {0, 45}
EPOLL_WAIT = 232

LINE = re.compile(
    r"\s*(?P<comm>.+?)\s+(?P<tid>\d+)\s+\[\d+\]\s+(?P<ts>[\d.]+):\s+"
    r"raw_syscalls:sys_(?P<kind>enter|exit): NR (?P<nr>\d+) (?P<rest>.*)"
)


def parse(lines):
    """Return each thread's events, as (microseconds, 'enter' or 'exit',
    call number, fd), and each thread's command name."""
    threads = defaultdict(list)
    names = {}
    for line in lines:
        match = LINE.match(line)
        if not match:
            continue
        fd = None
        if match["kind"] == "enter":
            fd = int(match["rest"].strip("()").split(",")[0], 16)
        names[match["tid"]] = match["comm"]
        event = (float(match["ts"]) * 1e6, match["kind"], int(match["nr"]), fd)
        threads[match["tid"]].append(event)
    return threads, names


def label(nr, fd):
    return f"{NAMES.get(nr, nr)}({fd})"


def summarize(events):
    """Return the time inside calls, between calls and blocked in
    epoll_wait, each as lists of microseconds by label."""
    inside = defaultdict(list)
    between = defaultdict(list)
    waits = defaultdict(list)
    entered = None
    left = None
    for ts, kind, nr, fd in events:
        if kind == "enter":
            if left is not None:
                between[f"{label(*entered)} -> {label(nr, fd)}"].append(ts - left)
            if left is not None and entered[0] == EPOLL_WAIT and nr in READS:
                waits[f"epoll_wait, then {label(nr, fd)}"].append(left - entered_at)
            entered, entered_at, left = (nr, fd), ts, None
        elif entered is not None and nr == entered[0]:
            inside[label(*entered)].append(ts - entered_at)
            left = ts
    return inside, between, waits


def show(title, groups, limit):
    rows = sorted(groups.items(), key=lambda kv: -len(kv[1]))[:limit]
    for key, values in rows:
        print(f"  {title:8} {key:42} n={len(values):7} "
              f"median={statistics.median(values):7.1f} mean={statistics.mean(values):7.1f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-events", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=10)
    args = parser.parse_args()
    threads, names = parse(sys.stdin)
    busy = {tid: ev for tid, ev in threads.items() if len(ev) >= args.min_events}
    if not busy:
        sys.exit(f"no thread has {args.min_events} events: record longer, "
                 "or lower --min-events")
    for tid, events in sorted(busy.items(), key=lambda kv: -len(kv[1])):
        inside, between, waits = summarize(events)
        print(f"thread {tid} ({names[tid]}), {len(events)} events")
        show("inside", inside, args.rows)
        show("between", between, args.rows)
        show("blocked", waits, args.rows)


if __name__ == "__main__":
    main()
