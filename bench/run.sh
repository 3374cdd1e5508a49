#!/usr/bin/env bash
# Throughput and latency of cardgate on one machine, on loopback only.
#
# Starts k_server, k_proxy (with the in-process simulated card) and nginx
# (a TLS reverse proxy with mutual TLS to the same k_server) in a fresh
# folder, measures them with oha (or wrk) and ab, and stops exactly the
# processes it started. Raw rows go to $OUT/raw.tsv, oha's failed requests
# by kind to $OUT/errors.tsv, the summary to $OUT/summary.md.
#
# Needs: oha, nginx, ab (apache2-utils), curl, jq, python3, /usr/bin/time,
# and wrk with GENERATOR=wrk.
# On Debian: apt-get install -y wrk nginx apache2-utils curl jq time
#            cargo install oha --locked --version 1.16.0
#
# Settings (environment):
#   RUNS=3              repetitions of every measurement
#   DURATION=10         seconds of one load run
#   GENERATOR=oha       load generator of the proxy runs: oha or wrk. wrk's
#                       latencies at 1 connection are not consistent with
#                       its own request count (see BENCHMARKS.md)
#   CONNECTIONS="1 64 512"   concurrent connections of the proxy runs
#   SERVER_CONNECTIONS="1 512"  concurrent clients of the k_server runs
#   SERVER_REQUESTS_1=2000      requests of one k_server run with 1 client
#   SERVER_REQUESTS_N=50000     requests of one k_server run with more clients
#   WRK_THREADS=1       wrk threads (one event loop per thread)
#   WORKERS=0           HTTP workers of proxy and server; 0 is one per core
#   POOL_SIZE=          the proxy's upstream.pool_size; empty keeps its default
#   SECTIONS="proxy server"     which parts to run
#   OUT=bench/results/DATE      where results go
#   BIN=target/release/cardgate
#   LOG=info            RUST_LOG of proxy and server (info is their default)
#   BASELINE_BIN=       another cardgate binary (an older build) whose proxy
#                       runs as target "baseline" in the same runs, for a
#                       before/after comparison under the same conditions
#   BASELINE_POOL_SIZE= upstream.pool_size of the baseline proxy; empty
#                       keeps its default
set -euo pipefail

cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-"1 64 512"}
SERVER_CONNECTIONS=${SERVER_CONNECTIONS:-"1 512"}
SERVER_REQUESTS_1=${SERVER_REQUESTS_1:-2000}
SERVER_REQUESTS_N=${SERVER_REQUESTS_N:-50000}
WRK_THREADS=${WRK_THREADS:-1}
GENERATOR=${GENERATOR:-oha}
WORKERS=${WORKERS:-0}
POOL_SIZE=${POOL_SIZE:-}
BASELINE_POOL_SIZE=${BASELINE_POOL_SIZE:-}
SECTIONS=${SECTIONS:-"proxy server"}
OUT=${OUT:-bench/results/$(date +%Y%m%d-%H%M%S)}
BIN=${BIN:-target/release/cardgate}
LOG=${LOG:-info}

case $GENERATOR in
    oha | wrk) ;;
    *) echo "bench: GENERATOR must be oha or wrk, not $GENERATOR" >&2; exit 1 ;;
esac
for tool in "$GENERATOR" nginx ab curl jq python3 /usr/bin/time; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (see the header of $0)" >&2; exit 1; }
done
if [[ ! -x $BIN || -n ${BUILD:-} ]]; then
    cargo build --release
fi
BIN=$(realpath "$BIN")
if [[ -n ${BASELINE_BIN:-} ]]; then BASELINE_BIN=$(realpath "$BASELINE_BIN"); fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# The stores must be on a real disk: group commit waits for fsync.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cardgate-bench.XXXXXX")
chmod 755 "$WORK"
STARTED_PIDS=()

stop_started() {
    for pid in "${STARTED_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED_PIDS[@]}"; do
        # Bounded wait: 100 × 0.1 s, then SIGKILL for that PID only.
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
}
# The folder with configs, stores and logs is removed at the end unless
# KEEP=1.
cleanup() {
    stop_started
    if [[ -z ${KEEP:-} ]]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for_port() {
    for _ in $(seq 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "bench: nothing listens on port $1 after 20 s; logs are in $WORK" >&2
    exit 1
}

# CPU seconds (user + system) used so far by the given PIDs.
cpu_seconds() {
    local ticks=0 pid
    for pid in "$@"; do
        if [[ -r /proc/$pid/stat ]]; then
            # Fields 14 and 15 after the command name in parentheses.
            ticks=$((ticks + $(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')))
        fi
    done
    python3 -c "print($ticks / $(getconf CLK_TCK))"
}

SERVER_PORT=$(free_port)
PROXY_PORT=$(free_port)
NGINX_PORT=$(free_port)
CERTS=$WORK/certs
"$BIN" certs init --out "$CERTS" >/dev/null
cat "$CERTS/proxy-client.crt" "$CERTS/proxy-client.key" >"$WORK/client.pem"
: >"$WORK/empty"

cat >"$WORK/server.toml" <<EOF
listen = "127.0.0.1:$SERVER_PORT"
[tls]
cert = "certs/server.crt"
key = "certs/server.key"
client_ca = "certs/ca.crt"
[store]
path = "server-store"
[http]
workers = $WORKERS
[metrics]
listen = ""
EOF

# Writes the config of a proxy on port $1 whose state lives in folder $2,
# with upstream.pool_size $3 when it is not empty.
proxy_toml() {
cat <<EOF
listen = "127.0.0.1:$1"
[tls]
cert = "certs/proxy.crt"
key = "certs/proxy.key"
[upstream]
url = "https://127.0.0.1:$SERVER_PORT"
ca = "certs/ca.crt"
client_cert = "certs/proxy-client.crt"
client_key = "certs/proxy-client.key"
${3:+pool_size = $3}
[card]
device = "sim"
sim_presence = "approve"
sim_state = "$2/card"
[store]
path = "$2/store"
[webauthn]
rp_id = "localhost"
origin = "https://localhost:$1"
[http]
workers = $WORKERS
[metrics]
listen = ""
EOF
}
proxy_toml "$PROXY_PORT" proxy-state "$POOL_SIZE" >"$WORK/proxy.toml"

# nginx forwards to the same k_server with the proxy's client certificate
# and keeps up to 512 idle connections per worker open, so that it does not
# close and reopen upstream connections at 512 concurrent clients.
cat >"$WORK/nginx.conf" <<EOF
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx-tmp/body;
    proxy_temp_path $WORK/nginx-tmp/proxy;
    fastcgi_temp_path $WORK/nginx-tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx-tmp/uwsgi;
    scgi_temp_path $WORK/nginx-tmp/scgi;
    keepalive_requests 1000000;
    upstream k_server {
        server 127.0.0.1:$SERVER_PORT;
        keepalive 512;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT ssl;
        ssl_certificate $CERTS/proxy.crt;
        ssl_certificate_key $CERTS/proxy.key;
        location = /resource/counter {
            proxy_pass https://k_server;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_ssl_certificate $CERTS/proxy-client.crt;
            proxy_ssl_certificate_key $CERTS/proxy-client.key;
            proxy_ssl_trusted_certificate $CERTS/ca.crt;
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
            proxy_ssl_session_reuse on;
        }
    }
}
EOF
mkdir -p "$WORK/nginx-tmp"

(cd "$WORK" && RUST_LOG=$LOG exec "$BIN" server --config server.toml >server.log 2>&1) &
SERVER_PID=$!
STARTED_PIDS+=("$SERVER_PID")
wait_for_port "$SERVER_PORT"
(cd "$WORK" && RUST_LOG=$LOG exec "$BIN" proxy --config proxy.toml >proxy.log 2>&1) &
PROXY_PID=$!
STARTED_PIDS+=("$PROXY_PID")
wait_for_port "$PROXY_PORT"
if [[ -n ${BASELINE_BIN:-} ]]; then
    BASELINE_PORT=$(free_port)
    proxy_toml "$BASELINE_PORT" baseline-state "$BASELINE_POOL_SIZE" >"$WORK/baseline.toml"
    (cd "$WORK" && RUST_LOG=$LOG exec "$BASELINE_BIN" proxy --config baseline.toml >baseline.log 2>&1) &
    BASELINE_PID=$!
    STARTED_PIDS+=("$BASELINE_PID")
    wait_for_port "$BASELINE_PORT"
fi
nginx -p "$WORK" -c "$WORK/nginx.conf" -g 'daemon off;' >"$WORK/nginx.log" 2>&1 &
NGINX_PID=$!
STARTED_PIDS+=("$NGINX_PID")
wait_for_port "$NGINX_PORT"

server_stats() {
    curl -sf --cacert "$CERTS/ca.crt" --cert "$CERTS/proxy-client.crt" --key "$CERTS/proxy-client.key" \
        "https://127.0.0.1:$SERVER_PORT/health" | jq -c .counter
}

# One session per proxy, reused by every request of the proxy runs.
api() { curl -sf --cacert "$CERTS/ca.crt" -H 'Content-Type: application/json' "$@"; }
session_token() {
    for _ in $(seq 100); do
        state=$(api "https://localhost:$1/health" | jq -r .card.state || true)
        [[ $state == connected ]] && break
        sleep 0.1
    done
    api -d '{"username":"bench"}' "https://localhost:$1/enroll/register" >/dev/null
    api -d '{"username":"bench"}' "https://localhost:$1/session/login" | jq -r .session_token
}
CARDGATE_TOKEN=$(session_token "$PROXY_PORT")
if [[ -n ${BASELINE_BIN:-} ]]; then BASELINE_TOKEN=$(session_token "$BASELINE_PORT"); fi

cat >"$WORK/bearer.lua" <<'EOF'
-- POST with the session token; prints one JSON line of results at the end.
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        '{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,' ..
        '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\n',
        summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
        latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
EOF

RAW=$OUT/raw.tsv
printf 'target\tconnections\trun\tcount\terror\n' >"$OUT/errors.tsv"
printf 'section\ttarget\tconnections\trun\trequests\tseconds\trps\tp50_ms\tp99_ms\terrors\tgenerator_cpu_s\tproxy_cpu_s\tserver_cpu_s\tvalues\tincrements\tbatches\tlargest_batch\tload1\n' >"$RAW"

load1() { cut -d' ' -f1 /proc/loadavg; }

nginx_pids() { echo "$NGINX_PID" $(ps -o pid= --ppid "$NGINX_PID"); }

# Runs $GENERATOR against one target under /usr/bin/time (CPU seconds to
# $WORK/load.time) and writes one JSON line of results to $WORK/load.out,
# in the format of bearer.lua's: requests completed, duration, p50 and p99
# in µs, and errors by kind. oha waits for the requests in flight at the
# deadline (-w), so every value k_server hands out has a response.
generate() {
    local connections=$1 threads=$2 port=$3 token=$4
    local url="https://localhost:$port/resource/counter"
    local timed=(/usr/bin/time -f '%U %S' -o "$WORK/load.time")
    case $GENERATOR in
        wrk)
            TOKEN=$token "${timed[@]}" wrk -t"$threads" -c"$connections" -d"${DURATION}s" \
                --timeout 10s -s "$WORK/bearer.lua" "$url" >"$WORK/load.out"
            ;;
        oha)
            "${timed[@]}" oha --no-tui --output-format json -c "$connections" -z "${DURATION}s" \
                -w -t 10s -m POST -H "Authorization: Bearer $token" --cacert "$CERTS/ca.crt" \
                "$url" >"$WORK/oha.json"
            jq -c '{
                requests: ([.statusCodeDistribution[]] | add // 0),
                duration_us: (.summary.total * 1e6 | floor),
                p50_us: ((.latencyPercentiles.p50 // 0) * 1e6 | floor),
                p99_us: ((.latencyPercentiles.p99 // 0) * 1e6 | floor),
                max_us: ((.summary.slowest // 0) * 1e6 | floor),
                connect: 0, write: 0, timeout: 0,
                read: ([.errorDistribution // {} | .[]] | add // 0),
                status: ([.statusCodeDistribution | to_entries[]
                          | select(.key | startswith("2") | not) | .value] | add // 0)
            }' "$WORK/oha.json" >"$WORK/load.out"
            ;;
    esac
}

# One load run against one target; appends a row to raw.tsv.
load_run() {
    local target=$1 port=$2 connections=$3 run=$4 threads=$WRK_THREADS
    ((threads > connections)) && threads=$connections
    local front_pids token=""
    case $target in
        cardgate) front_pids=$PROXY_PID token=$CARDGATE_TOKEN ;;
        baseline) front_pids=$BASELINE_PID token=$BASELINE_TOKEN ;;
        *) front_pids=$(nginx_pids) ;;
    esac
    local load before front0 server0
    load=$(load1)
    before=$(server_stats)
    front0=$(cpu_seconds $front_pids)
    server0=$(cpu_seconds "$SERVER_PID")
    generate "$connections" "$threads" "$port" "$token"
    if [[ $GENERATOR == oha && $run != 0 ]]; then
        # oha names each kind of failure; keep them next to the totals,
        # with replies other than 2xx as "status N".
        jq -r --arg t "$target" --arg c "$connections" --arg r "$run" '
            ((.errorDistribution // {} | to_entries[])
             , (.statusCodeDistribution // {} | to_entries[]
                | select(.key | startswith("2") | not) | .key |= "status \(.)"))
            | [$t, $c, $r, .value, .key] | @tsv' \
            "$WORK/oha.json" >>"$OUT/errors.tsv"
    fi
    local after front1 server1
    after=$(server_stats)
    front1=$(cpu_seconds $front_pids)
    server1=$(cpu_seconds "$SERVER_PID")
    python3 - "$target" "$connections" "$run" "$load" "$before" "$after" "$front0" "$front1" \
        "$server0" "$server1" "$WORK/load.out" "$WORK/load.time" >>"$RAW" <<'EOF'
import json, sys
target, conns, run, load, before, after, f0, f1, s0, s1, out, cpu = sys.argv[1:]
before, after = json.loads(before), json.loads(after)
lines = [l for l in open(out) if l.startswith("{")]
w = json.loads(lines[-1])
user, system = map(float, open(cpu).read().split()[-2:])
seconds = w["duration_us"] / 1e6
errors = w["connect"] + w["read"] + w["write"] + w["status"] + w["timeout"]
print("\t".join(map(str, [
    "proxy", target, conns, run, w["requests"], f"{seconds:.3f}", f"{w['requests'] / seconds:.1f}",
    f"{w['p50_us'] / 1000:.3f}", f"{w['p99_us'] / 1000:.3f}", errors, f"{user + system:.2f}",
    f"{float(f1) - float(f0):.2f}", f"{float(s1) - float(s0):.2f}",
    after["value"] - before["value"], after["increments"] - before["increments"],
    after["batches"] - before["batches"], after["largest_batch"], load])))
EOF
    tail -n1 "$RAW"
}

# ab against k_server directly, with the proxy's client certificate.
ab_run() {
    local connections=$1 run=$2 requests
    if ((connections == 1)); then requests=$SERVER_REQUESTS_1; else requests=$SERVER_REQUESTS_N; fi
    local load before server0
    load=$(load1)
    before=$(server_stats)
    server0=$(cpu_seconds "$SERVER_PID")
    /usr/bin/time -f '%U %S' -o "$WORK/ab.time" \
        ab -q -k -p "$WORK/empty" -T application/json -E "$WORK/client.pem" -e "$WORK/ab.csv" -c "$connections" -n "$requests" -s 10 \
        "https://127.0.0.1:$SERVER_PORT/resource/counter" >"$WORK/ab.out" 2>&1
    local after server1
    after=$(server_stats)
    server1=$(cpu_seconds "$SERVER_PID")
    python3 - "$connections" "$run" "$load" "$before" "$after" "$server0" "$server1" \
        "$WORK/ab.out" "$WORK/ab.time" "$WORK/ab.csv" >>"$RAW" <<'EOF'
import csv, json, re, sys
conns, run, load, before, after, s0, s1, out, cpu, percentiles = sys.argv[1:]
before, after = json.loads(before), json.loads(after)
text = open(out).read()
def field(pattern, cast=float, default=None):
    m = re.search(pattern, text, re.M)
    if m is None:
        if default is None:
            sys.exit(f"bench: ab output has no {pattern!r}:\n{text}")
        return default
    return cast(m.group(1))
requests = field(r"^Complete requests:\s+(\d+)", int)
seconds = field(r"^Time taken for tests:\s+([\d.]+)")
# Bodies differ in length as the value grows, which ab counts as "Length"
# failures; only connection, receive and exception failures are errors.
failed = sum(field(rf"^Failed requests:.*{kind}: (\d+)", int, 0)
             for kind in ("Connect", "Receive", "Exceptions"))
failed += field(r"^Non-2xx responses:\s+(\d+)", int, 0)
served = {int(float(r[0])): float(r[1]) for r in list(csv.reader(open(percentiles)))[1:]}
p50, p99 = served[50], served[99]
user, system = map(float, open(cpu).read().split()[-2:])
print("\t".join(map(str, [
    "server", "k_server", conns, run, requests, f"{seconds:.3f}", f"{requests / seconds:.1f}",
    f"{p50:.3f}", f"{p99:.3f}", failed, f"{user + system:.2f}", "", f"{float(s1) - float(s0):.2f}",
    after["value"] - before["value"], after["increments"] - before["increments"],
    after["batches"] - before["batches"], after["largest_batch"], load])))
EOF
    tail -n1 "$RAW"
}

{
    echo "# machine"
    lscpu | grep -E '^(Model name|CPU\(s\)|Thread|Core|Socket|CPU max MHz)' || true
    free -m
    uname -srvm
    uptime
    echo "generator=$GENERATOR workers=$WORKERS wrk_threads=$WRK_THREADS duration=${DURATION}s runs=$RUNS log=$LOG pool_size=$POOL_SIZE"
    echo "cardgate=$BIN baseline=${BASELINE_BIN:-none}"
    git rev-parse --short HEAD 2>/dev/null || true
} >"$OUT/machine.txt"

echo "bench: results in $OUT, servers and logs in $WORK"
for section in $SECTIONS; do
    case $section in
        proxy)
            # A warm-up per target (run 0, left out of the summary) opens the
            # pooled connections.
            DURATION=2 load_run cardgate "$PROXY_PORT" 64 0 >/dev/null
            if [[ -n ${BASELINE_BIN:-} ]]; then
                DURATION=2 load_run baseline "$BASELINE_PORT" 64 0 >/dev/null
            fi
            DURATION=2 load_run nginx "$NGINX_PORT" 64 0 >/dev/null
            for connections in $CONNECTIONS; do
                for run in $(seq "$RUNS"); do
                    load_run cardgate "$PROXY_PORT" "$connections" "$run"
                    if [[ -n ${BASELINE_BIN:-} ]]; then
                        load_run baseline "$BASELINE_PORT" "$connections" "$run"
                    fi
                    load_run nginx "$NGINX_PORT" "$connections" "$run"
                done
            done
            ;;
        server)
            for connections in $SERVER_CONNECTIONS; do
                for run in $(seq "$RUNS"); do
                    ab_run "$connections" "$run"
                done
            done
            ;;
        *) echo "bench: unknown section $section" >&2; exit 1 ;;
    esac
done

python3 bench/summarize.py "$RAW" >"$OUT/summary.md"
cat "$OUT/summary.md"
