#!/usr/bin/env bash
# The embedded server against the machine's limit, side by side.
#
# Starts the local server (release build, embedded store, as users run it)
# and bench's bare-204 (a hyper server that answers every request with an
# empty 204, nothing else), registers clients, and runs wrk against each in
# turn for several rounds: the empty poll against the bare server, then, on
# the local server alone, a poll that returns one message, a publish to one
# recipient and an ack, so a change that speeds up the empty poll can be
# seen not to slow down the rest. Prints requests/s, p50 and p99 per
# scenario (the median over rounds) and the empty poll's ratio to the bare
# server. Ratios are what to compare between runs: the machines are shared
# and absolute figures move with their load.
#
#   bench/empty-poll.sh [--rounds N] [--duration SECS] [--connections N] [--clients N] [--server BIN]
#
# --server runs another build of pigeonhole-local (an older commit's, for a
# before/after comparison) instead of this checkout's.
#
# Needs wrk (Debian package `wrk`: installed with apt-get when missing and
# this runs as root).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3 duration=10 connections=32 clients=200 server_bin=
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds="$2"; shift 2 ;;
        --duration) duration="$2"; shift 2 ;;
        --connections) connections="$2"; shift 2 ;;
        --clients) clients="$2"; shift 2 ;;
        --server) server_bin="$2"; shift 2 ;;
        *) echo "usage: $0 [--rounds N] [--duration SECS] [--connections N] [--clients N] [--server BIN]" >&2; exit 2 ;;
    esac
done

if ! command -v wrk >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y -qq wrk >/dev/null
    else
        echo "wrk is missing: sudo apt-get install wrk" >&2
        exit 1
    fi
fi

cargo build --release -q -p pigeonhole-local -p pigeonhole-bench
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
server_bin=${server_bin:-$target_dir/release/pigeonhole-local}
work=$(mktemp -d)
# start() runs in a command substitution, a subshell: it records each
# server's pid in a file, since an array it changed would be the subshell's.
cleanup() {
    if [ -f "$work/pids" ]; then
        while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$work/pids"
    fi
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Starts a server that prints "listening on http://ADDR"; echoes ADDR.
start() {
    local log="$1"; shift
    "$@" >"$log" 2>&1 &
    echo $! >>"$work/pids"
    for _ in $(seq 1 200); do
        if grep -q "listening on http://" "$log"; then
            sed -n 's/.*listening on http:\/\/\([^ ]*\).*/\1/p' "$log" | head -n1
            return
        fi
        sleep 0.05
    done
    echo "server did not start: $log" >&2
    cat "$log" >&2
    exit 1
}

bare=$(start "$work/bare.log" "$target_dir/release/bare-204" 127.0.0.1:0)
# The poll limit stays on (its state is part of what a poll costs) but high
# enough that no poll here is refused; requests are logged as usual.
server=$(ADMIN_TOKEN=bench-admin POLL_RATE_LIMIT=1000000 SEND_RATE_LIMIT=0 \
    start "$work/server.log" "$server_bin" \
    --listen 127.0.0.1:0 --data-dir "$work/data")

# Three sets of clients: one with nothing pending (empty polls), one with a
# message each (polls with cursor=0 read it again and again; acks of 1),
# and one the publishes go to.
python3 - "$server" "$clients" "$work" <<'EOF'
import json, sys, urllib.request
base, count, work = f"http://{sys.argv[1]}/api/v1", int(sys.argv[2]), sys.argv[3]

def call(path, body, headers=None):
    request = urllib.request.Request(
        base + path, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read() or b"null")

def register(prefix):
    return [call("/clients/register", {"fingerprint": f"{prefix}-{i:06d}"}) for i in range(count)]

idle, busy, sink = register("bench-idle"), register("bench-busy"), register("bench-sink")
admin = {"X-Admin-Token": "bench-admin"}
call("/messages/publish",
     {"type": "bench", "payload": {"text": "x" * 200}, "to_client_ids": [c["client_id"] for c in busy]},
     admin)

def lua_list(name, rows):
    items = ",\n".join("  {%s}" % ", ".join(json.dumps(v) for v in row) for row in rows)
    return f"{name} = {{\n{items}\n}}\n"

creds = lambda cs: [(c["client_id"], c["api_token"]) for c in cs]
common = """
local i = 0
local function client(list)
  i = i % #list + 1
  return list[i]
end
local function client_headers(c)
  return {["Authorization"] = "Bearer " .. c[2], ["X-Client-Id"] = c[1]}
end
"""
scripts = {
    "empty-poll": """
request = function()
  return wrk.format("GET", "/api/v1/messages/poll", client_headers(client(idle)))
end
""",
    "poll-one-message": """
request = function()
  return wrk.format("GET", "/api/v1/messages/poll?cursor=0&limit=1", client_headers(client(busy)))
end
""",
    "publish": """
request = function()
  local c = client(sink)
  return wrk.format("POST", "/api/v1/messages/publish",
    {["X-Admin-Token"] = "bench-admin", ["Content-Type"] = "application/json"},
    '{"type":"bench","payload":{"n":1},"to_client_ids":["' .. c[1] .. '"]}')
end
""",
    "ack": """
request = function()
  local h = client_headers(client(busy))
  h["Content-Type"] = "application/json"
  return wrk.format("POST", "/api/v1/messages/ack", h, '{"last_received_id":1}')
end
""",
}
for name, body in scripts.items():
    with open(f"{work}/{name}.lua", "w") as f:
        f.write(lua_list("idle", creds(idle)) + lua_list("busy", creds(busy)) + lua_list("sink", creds(sink)) + common + body)
EOF

# wrk prints Requests/sec and, with --latency, the 50% and 99% lines; this
# keeps "rps p50_ms p99_ms non2xx".
run_wrk() {
    local addr="$1" scenario="$2"
    wrk -t1 -c"$connections" -d"${duration}s" --latency -s "$work/$scenario.lua" "http://$addr" |
        awk '
            function ms(v) {
                if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 }
                if (v ~ /ms$/) { sub(/ms$/, "", v); return v + 0 }
                if (v ~ /s$/)  { sub(/s$/, "", v);  return v * 1000 }
                return v
            }
            /Requests\/sec/ { rps = $2 }
            $1 == "50%" { p50 = ms($2) }
            $1 == "99%" { p99 = ms($2) }
            /Non-2xx or 3xx responses/ { bad = $NF }
            END { printf "%s %.3f %.3f %d\n", rps, p50, p99, bad + 0 }'
}

declare -A results
for round in $(seq 1 "$rounds"); do
    for pair in "bare:empty-poll" "server:empty-poll" "server:poll-one-message" "server:publish" "server:ack"; do
        target=${pair%%:*} scenario=${pair#*:}
        addr=$bare
        [ "$target" = server ] && addr=$server
        line=$(run_wrk "$addr" "$scenario")
        results["$target:$scenario"]+="$line"$'\n'
        echo "round $round  $target $scenario: $line" >&2
    done
done

echo
printf '%-26s %12s %10s %10s %8s\n' "median round of $rounds" "requests/s" "p50 ms" "p99 ms" "non-2xx"
for key in "bare:empty-poll" "server:empty-poll" "server:poll-one-message" "server:publish" "server:ack"; do
    printf '%s' "${results[$key]}" | sort -n -k1 | awk -v key="$key" -v n="$rounds" '
        { rps[NR] = $1; p50[NR] = $2; p99[NR] = $3; bad += $4 }
        END {
            m = int((n + 1) / 2)
            printf "%-26s %12.0f %10.3f %10.3f %8d\n", key, rps[m], p50[m], p99[m], bad
        }'
done
# Paired by round: both ran within seconds of each other.
paste -d' ' <(printf '%s' "${results[server:empty-poll]}" | cut -d' ' -f1) \
    <(printf '%s' "${results[bare:empty-poll]}" | cut -d' ' -f1) |
    awk '{ printf "%.2f\n", $1 / $2 }' > "$work/ratios"
echo
echo "empty poll / bare 204, per round: $(paste -sd' ' "$work/ratios")"
echo "median ratio: $(sort -n "$work/ratios" | awk '{ r[NR] = $1 } END { print r[int((NR + 1) / 2)] }')"
bad=$(for key in "${!results[@]}"; do printf '%s' "${results[$key]}"; done | awk '{ s += $4 } END { print s + 0 }')
if [ "$bad" -gt 0 ]; then
    echo "$bad responses were not 2xx: the figures above do not measure what they say" >&2
    exit 1
fi
