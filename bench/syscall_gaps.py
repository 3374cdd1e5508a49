#!/usr/bin/env python3
"""Time between system calls, thread by thread: where a request's time goes.

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

With --proxy TIDS --server TIDS (comma-separated thread ids of two
processes recorded together), it prints the hand-offs between the two
instead. One way is from a proxy thread entering a write to the next
server thread leaving a read with data. The other is from a server
thread entering a write to the next proxy thread leaving epoll_wait.
Each is split by whether the two threads ran on the same CPU, because a
thread woken on another CPU takes longer to start.

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
WRITES = {1, 20, 44}
EPOLL_WAIT = 232

LINE = re.compile(
    r"\s*(?P<comm>.+?)\s+(?P<tid>\d+)\s+\[(?P<cpu>\d+)\]\s+(?P<ts>[\d.]+):\s+"
    r"raw_syscalls:sys_(?P<kind>enter|exit): NR (?P<nr>\d+) (?P<rest>.*)"
)


def parse(lines):
    """Return each thread's events, as (microseconds, 'enter' or 'exit',
    call number, fd or return value, CPU), and each thread's command name."""
    threads = defaultdict(list)
    names = {}
    for line in lines:
        match = LINE.match(line)
        if not match:
            continue
        if match["kind"] == "enter":
            value = int(match["rest"].strip("()").split(",")[0], 16)
        else:
            value = int(match["rest"].split("=")[1])
        names[match["tid"]] = match["comm"]
        event = (float(match["ts"]) * 1e6, match["kind"], int(match["nr"]), value,
                 int(match["cpu"]))
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
    for ts, kind, nr, fd, _ in events:
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


def handoffs(threads, proxy, server):
    """Return the hand-off times between proxy and server threads, in
    microseconds, by direction, server thread and same or other CPU."""
    merged = sorted((event, tid) for tid, events in threads.items()
                    if tid in proxy | server for event in events)
    times = defaultdict(list)
    to_server = None
    to_proxy = None
    for (ts, kind, nr, value, cpu), tid in merged:
        if tid in proxy and kind == "enter" and nr in WRITES:
            to_server = (ts, cpu)
        elif tid in server and kind == "exit" and nr in READS and value > 0 and to_server:
            where = "same CPU" if cpu == to_server[1] else "other CPU"
            times[f"proxy -> server {tid}, {where}"].append(ts - to_server[0])
            to_server = None
        elif tid in server and kind == "enter" and nr in WRITES:
            to_proxy = (ts, cpu, tid)
        elif tid in proxy and kind == "exit" and nr == EPOLL_WAIT and to_proxy:
            where = "same CPU" if cpu == to_proxy[1] else "other CPU"
            times[f"server {to_proxy[2]} -> proxy, {where}"].append(ts - to_proxy[0])
            to_proxy = None
    return times


def show(title, groups, limit):
    rows = sorted(groups.items(), key=lambda kv: -len(kv[1]))[:limit]
    for key, values in rows:
        print(f"  {title:8} {key:42} n={len(values):7} "
              f"median={statistics.median(values):7.1f} mean={statistics.mean(values):7.1f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-events", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=10)
    parser.add_argument("--proxy", help="the proxy's thread ids, comma-separated")
    parser.add_argument("--server", help="the server's thread ids, comma-separated")
    args = parser.parse_args()
    threads, names = parse(sys.stdin)
    if args.proxy or args.server:
        if not (args.proxy and args.server):
            sys.exit("--proxy and --server go together: give both thread id lists")
        times = handoffs(threads, set(args.proxy.split(",")), set(args.server.split(",")))
        if not times:
            sys.exit("no hand-off found: check the thread ids against `perf script`")
        show("handoff", times, args.rows)
        return
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
