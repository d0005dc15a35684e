#!/usr/bin/env bash
# Side-by-side HTTP benchmark, in one run, under the same load from the same
# tool (tokenload, on vegeta):
#   ceiling    a minimal echo handler serving a static body of a token's size
#   hit_local  tokencache, local cache on
#   hit_redis  tokencache, local cache off: every hit is a Redis GET
#   miss       tokencache, every request a new user, simulator at 100 ms
#   miss_paced the same at a steady 200 requests/s (open loop) instead of
#              32 workers that all send again the moment their answers land
#   upstream   the simulator itself, asked as tokencache asks it, under each
#              miss run's load (upstream, upstream_paced): the miss overhead
#              is measured over what the upstream really takes
#   peer_*     the same three runs against bench/peer: echo + go-redis/cache
#              Once, with its TinyLFU local cache (peer_local) or Redis only
#   fleet_*    a stampede of one new key over 3 instances of each service,
#              counting the Polyv calls it cost
# It prints the table and writes it into docs/benchmarks.md. It makes no
# pass/fail claim: the numbers are ratios on whatever machine runs it.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
WORKERS=${WORKERS:-32}
SIM_LATENCY=${SIM_LATENCY:-100ms}
PACED_RATE=${PACED_RATE:-200}
CHANNELS=10
USERS=100

work=$(mktemp -d)
pids=()
declare -A pid_of # port -> the server process listening there
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

echo "building..." >&2
CGO_ENABLED=0 go build -trimpath -o "$work/" ./cmd/...
(cd bench/peer && CGO_ENABLED=0 go build -trimpath -o "$work/peer" .)
bin=$work

port() { echo $((20000 + RANDOM % 20000)); }
wait_http() { for _ in $(seq 100); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }

rp=$(port); redis-server --port "$rp" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 & pids+=($!)
fast=$(port); "$bin/polyvsim" -addr "127.0.0.1:$fast" 2>"$work/sim-fast.log" & pids+=($!)
slow=$(port); "$bin/polyvsim" -addr "127.0.0.1:$slow" -latency "$SIM_LATENCY" 2>"$work/sim-slow.log" & pids+=($!); pid_of[$slow]=$!
wait_http "http://127.0.0.1:$fast/stats"; wait_http "http://127.0.0.1:$slow/stats"

start_tc() { # name port sim-port extra-env...
  local name=$1 p=$2 sp=$3; shift 3
  env TOKENCACHE_ADDR="127.0.0.1:$p" POLYV_APP_ID=sim-app POLYV_APP_SECRET=sim-secret \
    POLYV_BASE_URL="http://127.0.0.1:$sp" REDIS_URL="redis://127.0.0.1:$rp" TOKENCACHE_API_KEYS=bench \
    POLYV_RATE_LIMIT=100000 "$@" "$bin/tokencache" >/dev/null 2>"$work/$name.log" & pids+=($!); pid_of[$p]=$!
  wait_http "http://127.0.0.1:$p/healthz"
}
pb=$(port); start_tc hit_local "$pb" "$fast"
pc=$(port); start_tc hit_redis "$pc" "$fast" TOKENCACHE_LOCAL_SIZE=0
pd=$(port); start_tc miss "$pd" "$slow" TOKENCACHE_KEY_PREFIX=miss:

start_peer() { # name port sim-port redis-db extra-flags...
  local name=$1 p=$2 sp=$3 db=$4; shift 4
  "$bin/peer" -addr "127.0.0.1:$p" -redis "redis://127.0.0.1:$rp/$db" -polyv "http://127.0.0.1:$sp" "$@" 2>"$work/$name.log" & pids+=($!); pid_of[$p]=$!
  wait_http "http://127.0.0.1:$p/healthz"
}
qa=$(port); start_peer peer_local "$qa" "$fast" 1
qb=$(port); start_peer peer_redis "$qb" "$fast" 1 -local 0
qc=$(port); start_peer peer_miss "$qc" "$slow" 2


echo "warming $((CHANNELS * USERS)) tokens..." >&2
"$bin/tokenload" warm -quiet -target "http://127.0.0.1:$pb" -key bench -generate $((CHANNELS * USERS)) -channels $CHANNELS -out "$work/pool.jsonl" >&2

curl -fsS -H 'Authorization: Bearer bench' \
  "http://127.0.0.1:$pb/v1/channels/load-0/chat-token?userId=user-0&role=$(head -1 "$work/pool.jsonl" | sed 's/.*"role":"\([a-z]*\)".*/\1/')&origin=web" \
  >"$work/body.json" || true
[ -s "$work/body.json" ] || head -1 "$work/pool.jsonl" >"$work/body.json"
pa=$(port); "$bin/tokenload" baseline -addr "127.0.0.1:$pa" -body-file "$work/body.json" 2>"$work/baseline.log" & pids+=($!); pid_of[$pa]=$!
wait_http "http://127.0.0.1:$pa/healthz"

attack() { # name round port extra-args...
  local name=$1 round=$2 p=$3; shift 3
  echo "round $round: attack $name ($DURATION, $WORKERS concurrent)..." >&2
  "$bin/tokenload" attack -quiet -json -name "$name" -target "http://127.0.0.1:$p" -key bench -server-pid "${pid_of[$p]}" \
    -rate 0 -workers "$WORKERS" -max-workers "$WORKERS" -duration "$DURATION" \
    -channels $CHANNELS -users $USERS -popularity uniform "$@" >"$work/$name.$round.json"
}
# The peer has no bulk route to warm from: a short attack over the same
# known users fetches them all (each about 10 times over).
echo "warming the peer..." >&2
"$bin/tokenload" attack -quiet -target "http://127.0.0.1:$qa" -rate 0 -workers "$WORKERS" -max-workers "$WORKERS" \
  -duration 3s -channels $CHANNELS -users $USERS -popularity uniform >/dev/null

# Rounds of every run in turn: each row's ratio is the median of its
# rounds' ratios to the ceiling's round, so drift in the machine's speed
# during the run skews no row.
for round in $(seq "$ROUNDS"); do
  attack ceiling "$round" "$pa"
  attack hit_local "$round" "$pb"
  attack hit_redis "$round" "$pc"
  attack miss "$round" "$pd" -miss-ratio 1
  attack miss_paced "$round" "$pd" -miss-ratio 1 -rate "$PACED_RATE" -max-workers 1000
  POLYV_APP_ID=sim-app POLYV_APP_SECRET=sim-secret attack upstream "$round" "$slow" -polyv -miss-ratio 1
  POLYV_APP_ID=sim-app POLYV_APP_SECRET=sim-secret attack upstream_paced "$round" "$slow" -polyv -miss-ratio 1 -rate "$PACED_RATE" -max-workers 1000
  attack peer_local "$round" "$qa"
  attack peer_redis "$round" "$qb"
  attack peer_miss "$round" "$qc" -miss-ratio 1
  attack peer_miss_paced "$round" "$qc" -miss-ratio 1 -rate "$PACED_RATE" -max-workers 1000
done

# The fleets, started only now so that they idle through no other run: 3
# instances of each service on one Redis, with a simulator of their own so
# that its call count is theirs alone.
fsim=$(port); "$bin/polyvsim" -addr "127.0.0.1:$fsim" -latency "$SIM_LATENCY" 2>"$work/sim-fleet.log" & pids+=($!)
wait_http "http://127.0.0.1:$fsim/stats"
tc_fleet=() peer_fleet=()
for i in 1 2 3; do
  p=$(port); start_tc "fleet_tc_$i" "$p" "$fsim" TOKENCACHE_KEY_PREFIX=fleet:; tc_fleet+=("http://127.0.0.1:$p")
  p=$(port); start_peer "fleet_peer_$i" "$p" "$fsim" 3; peer_fleet+=("http://127.0.0.1:$p")
done
stampede() { # name targets
  echo "stampede $1 (3 instances, 1 key, 300 concurrent)..." >&2
  "$bin/tokenload" attack -quiet -json -name "$1" -target "$2" -key bench -stats "http://127.0.0.1:$fsim" \
    -rate 0 -workers 300 -max-workers 300 -duration 1s -channels 1 -users 1 >"$work/$1.1.json"
}
stampede fleet_tokencache "$(IFS=,; echo "${tc_fleet[*]}")"
stampede fleet_peer "$(IFS=,; echo "${peer_fleet[*]}")"

runs=(ceiling hit_local hit_redis miss miss_paced upstream upstream_paced peer_local peer_redis peer_miss peer_miss_paced fleet_tokencache fleet_peer)
table=$("$bin/tokenload" compare -markdown -sim-latency "$SIM_LATENCY" \
  -miss miss:upstream,miss_paced:upstream_paced,peer_miss:upstream,peer_miss_paced:upstream_paced \
  $(for r in "${runs[@]}"; do echo "$r=$(ls "$work/$r".*.json | paste -sd,)"; done))
echo "$table"

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
section=$(cat <<MD
<!-- bench-http:start -->
## HTTP paths side by side (\`make bench-http\`)

One run of \`scripts/bench-http.sh\` on $(date -u +%Y-%m-%d): $(nproc) vCPU ($cpu), $(free -g | awk '/Mem:/{print $2}') GB,
redis-server $(redis-server --version | cut -d' ' -f3 | sed 's/v=//'). Every run is \`tokenload attack\` with $WORKERS concurrent requests for $DURATION
over loopback, against one server process, $ROUNDS times in turn; the load generator shares the machine's cores with the
server, the same for every row. A row's ratio is the median of its rounds' ratios to the ceiling's round; its
throughput is the median round's, its latencies the median round's. Hit runs read $((CHANNELS * USERS)) tokens warmed beforehand; the miss runs ask for a new user every
time, from a simulator answering after $SIM_LATENCY: \`miss\` from $WORKERS workers that each send again as soon as answered,
so that they move in waves, \`miss_paced\` at a steady $PACED_RATE requests/s. \`upstream\` and \`upstream_paced\` ask that
simulator itself (\`tokenload attack -polyv\`, signed as tokencache signs) under the same two loads: a miss's overhead
is its run's median latency minus its upstream run's, what the upstream really takes, and also over the nominal
$SIM_LATENCY. "vs ceiling" is throughput divided by the ceiling's, measured in
the same run. "server CPU/request" is the CPU time the server process used per request (from /proc), and "CPU vs
ceiling" the ceiling's divided by it: the server's own cost, whatever the load generator beside it costs. \`peer_*\` is bench/peer, the go-redis/cache service (echo + \`cache.Once\`, TinyLFU local cache or
Redis only, no logging, metrics or auth). \`fleet_*\` is 300 concurrent requests for one new key spread over 3
instances of each service on one Redis, for 1 s; "Polyv calls" is what that cost at the simulator.

$table
<!-- bench-http:end -->
MD
)
doc=docs/benchmarks.md
if grep -q '<!-- bench-http:start -->' "$doc"; then
  awk -v section="$section" '
    /<!-- bench-http:start -->/ {print section; skip=1; next}
    /<!-- bench-http:end -->/ {skip=0; next}
    !skip {print}' "$doc" >"$work/doc.md" && cp "$work/doc.md" "$doc"
else
  printf '\n%s\n' "$section" >>"$doc"
fi
echo "written to $doc" >&2
