#!/usr/bin/env bash
# The demo: Postgres + broker + receiver + consumer, the X simulator sending
# signed activity of every kind, and what landed in Postgres.
#   scripts/demo.sh            run, show, keep the stack up until Ctrl-C
#   scripts/demo.sh --once     run, show, stop
#   scripts/demo.sh --count N  activities the simulator generates (default 500)
#   scripts/demo.sh --aaa      accounts on the legacy Account Activity API (ends 2027-01-01)
#                              instead of the X Activity API (the default)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$AAA_ROOT"

once=
count=500
product=xaa
while [ $# -gt 0 ]; do
  case $1 in
    --once) once=1 ;;
    --count) count=$2; shift ;;
    --aaa) product=aaa ;;
    --xaa) product=xaa ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done

ensure_toolchain
ensure_postgres
ensure_nisshi
apt_install curl jq
say "building aaa"
quietly cargo build --locked --bin aaa
aaa=${CARGO_TARGET_DIR:-$AAA_ROOT/target}/debug/aaa

state=$AAA_ROOT/.stack
pids=()
# Postgres runs as the postgres user, which may not enter the work tree (a
# clone under /root or a private temp dir): its data lives in a temp dir of its own.
pgdir=
cleanup() {
  for pid in "${pids[@]}"; do stop_pid "$pid"; done
  if [ -n "$pgdir" ]; then pg_stop "$pgdir/pg"; rm -rf "$pgdir"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# A previous demo that was killed hard may have left its cluster running.
if [ -f "$state/pgdir" ]; then old=$(cat "$state/pgdir"); pg_stop "$old/pg"; rm -rf "$old"; fi
if [ -f "$state/broker/pid" ]; then stop_pid "$(cat "$state/broker/pid")"; fi
rm -rf "$state"; mkdir -p "$state"; chmod 755 "$state"

say "starting Postgres and the broker"
pgdir=$(mktemp -d /tmp/aaa-demo-pg.XXXXXX)
chmod 755 "$pgdir"
echo "$pgdir" >"$state/pgdir"
pg_start "$pgdir/pg"
psql -q "$PG_URL" -c "CREATE DATABASE aaa" >/dev/null
export AAA_DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/aaa"
broker_start "$state/broker"
pids+=("$BROKER_PID")
broker_topic aaa.raw 6

export AAA_KAFKA_BROKERS=$BROKER_ADDR AAA_LOG_FORMAT=json
# Every process shares one scaled clock: a real second is five simulated
# minutes, so X's 31-minute replay rule is met after about six real seconds.
export AAA_CLOCK_SPEED=300 AAA_CLOCK_REAL_EPOCH AAA_HEARTBEAT_INTERVAL_SECS=60
AAA_CLOCK_REAL_EPOCH=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)
"$aaa" migrate >/dev/null

# The webhook's consumer secret lives only in the environment.
export DEMO_CONSUMER_SECRET
DEMO_CONSUMER_SECRET=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
cat >"$state/webhooks.toml" <<TOML
[[webhooks]]
id = "1146654567674912769"
path = "/webhooks/x"
consumer_secret_env = ["DEMO_CONSUMER_SECRET"]
TOML

receiver_port=$(free_port); receiver_admin=$(free_port); consumer_admin=$(free_port)
say "starting receiver (:$receiver_port) and consumer"
start_receiver() {
  AAA_LISTEN=127.0.0.1:$receiver_port AAA_ADMIN_LISTEN=127.0.0.1:$receiver_admin \
    AAA_WEBHOOKS_FILE=$state/webhooks.toml "$aaa" receiver >>"$state/receiver.log" 2>&1 &
  receiver_pid=$!
  pids+=("$receiver_pid")
}
start_receiver
AAA_ADMIN_LISTEN=127.0.0.1:$consumer_admin "$aaa" consumer >"$state/consumer.log" 2>&1 &
pids+=($!)
for port in "$receiver_admin" "$consumer_admin"; do
  for _ in $(seq 1 300); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null || die "service on :$port not ready (logs in $state)"
done

target=http://127.0.0.1:$receiver_port/webhooks/x
sim_port=$(free_port)
sim=http://127.0.0.1:$sim_port
say "starting the X simulator (:$sim_port): it registers the webhook (CRC first) and subscribes 40 of its 50 accounts ($([ "$product" = xaa ] && echo 'X Activity API: one tagged subscription per event type and account' || echo 'legacy Account Activity API'))"
AAA_SIM_CONSUMER_SECRET=$DEMO_CONSUMER_SECRET "$aaa" sim serve --listen "127.0.0.1:$sim_port" \
  --accounts 50 --subscribe 40 --seed 7 --register-webhook "$target" --register-webhook-id 1146654567674912769 \
  --duplicate-share 0.05 --reorder-ms 20 --format subscribed --subscribe-product "$product" \
  >"$state/sim.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 300); do
  grep -q 'webhook registered and accounts subscribed' "$state/sim.log" 2>/dev/null && break
  kill -0 "${pids[-1]}" 2>/dev/null || { cat "$state/sim.log" >&2; die "simulator exited"; }
  sleep 0.1
done

watermark_admin=$(free_port)
say "starting the watermark (gap detection and replay)"
# Receivers on loopback report within 3 real seconds (their 2.5 s produce
# timeout): the default margin (10 s) would hold each replay job 10 s more.
AAA_ADMIN_LISTEN=127.0.0.1:$watermark_admin AAA_WATERMARK_WEBHOOKS=1146654567674912769 AAA_WATERMARK_TICK_MS=1000 \
  AAA_WATERMARK_RECEIVER_MARGIN_MS=3000 AAA_X_API_BASE_URL=$sim AAA_X_BEARER_TOKEN=sim-bearer-token "$aaa" watermark >"$state/watermark.log" 2>&1 &
pids+=($!)

# Everything an operator needs to drive the simulated X with `aaa webhooks|subscriptions|replay`.
(
  umask 077
  curl -fsS "$sim/sim/accounts" | jq -r --arg url "$sim" --arg db "$AAA_DATABASE_URL" --arg secret "$DEMO_CONSUMER_SECRET" \
    --arg speed "$AAA_CLOCK_SPEED" --arg epoch "$AAA_CLOCK_REAL_EPOCH" '
    "export AAA_X_API_BASE_URL=\($url)",
    "export AAA_X_BEARER_TOKEN=\(.app.bearer_token)",
    "export AAA_X_CONSUMER_KEY=\(.app.consumer_key)",
    "export AAA_X_CONSUMER_SECRET=\($secret)",
    "export AAA_X_ACCESS_TOKEN=\(.accounts[-1].access_token)",
    "export AAA_X_ACCESS_TOKEN_SECRET=\(.accounts[-1].access_token_secret)",
    "export AAA_DATABASE_URL=\($db)",
    "export AAA_CLOCK_SPEED=\($speed) AAA_CLOCK_REAL_EPOCH=\($epoch)",
    "export PATH=\"'"$(dirname "$aaa")"':$PATH\""' >"$state/operator.env"
)

say "simulator: generating $count activities of every kind (5% sent twice, some reordered)"
owed=$(curl -fsS -X POST "$sim/sim/generate" -H 'content-type: application/json' -d "{\"count\": $count}" | jq .owed)
for _ in $(seq 1 600); do
  [ "$(curl -fsS "$sim/sim/truth/summary" | jq .pending)" = 0 ] && break
  sleep 0.1
done
summary=$(curl -fsS "$sim/sim/truth/summary")
delivered=$(jq .delivered <<<"$summary")
stored=0
for _ in $(seq 1 600); do
  stored=$(psql -tA "$AAA_DATABASE_URL" -c "SELECT count(*) FROM events")
  [ "$stored" -ge "$delivered" ] && break
  sleep 0.1
done

say "ground truth from the simulator"
jq -c '{activities, owed, delivered, delivered_live, missing, pending, attempts}' <<<"$summary"
echo "owed deliveries: $owed   delivered (2xx): $delivered   rows in Postgres: $stored"
[ "$stored" = "$delivered" ] || die "Postgres holds $stored rows but X delivered $delivered (logs in $state)"

query="SELECT kind, count(*) AS events, count(DISTINCT for_user_id) AS accounts, min(event_time) AS first, max(event_time) AS last FROM events GROUP BY kind ORDER BY events DESC"
say "what landed in Postgres"
psql "$AAA_DATABASE_URL" -c "$query"
psql "$AAA_DATABASE_URL" -c "SELECT count(*) AS dead_letters FROM dead_letters"
if [ "$product" = xaa ]; then
  say "X Activity API events by type, each under the tag of the subscription that matched it"
  psql "$AAA_DATABASE_URL" -c "SELECT event_type, count(*) AS events, count(DISTINCT subscription_tag) AS subscriptions, min(subscription_tag) AS a_tag FROM v_xaa_events GROUP BY 1 ORDER BY 2 DESC"
fi
say "what X will bill for this (v_x_charges_daily; prices: AAA_X_PRICES over X's 2026 pay-per-use prices)"
psql "$AAA_DATABASE_URL" -c "SELECT day, event_type, billable, duplicates_absorbed, estimated_usd FROM v_x_charges_daily ORDER BY estimated_usd DESC, event_type"


say "injecting an outage: the receiver crashes for 20 simulated minutes while X keeps sending"
( while :; do curl -fsS -X POST "$sim/sim/generate" -H 'content-type: application/json' -d '{"count": 3}' >/dev/null 2>&1; sleep 0.1; done ) &
traffic=$!
pids+=("$traffic")
sleep 1
{ kill -9 "$receiver_pid"; wait "$receiver_pid" || true; } 2>/dev/null
sleep 4   # 20 simulated minutes
start_receiver
outage_end_real=$(date +%s.%N)
sleep 1
kill "$traffic" 2>/dev/null || true
for _ in $(seq 1 50); do [ "$(curl -fsS "$sim/sim/truth/summary" | jq .pending)" = 0 ] && break; sleep 0.1; done
lost=$(curl -fsS "$sim/sim/truth/summary" | jq .missing)
echo "X could not deliver $lost activities during the outage and gave up on them (its retries end after 5 minutes)."
say "waiting for the watermark to find the gap, replay it and reconcile"
for _ in $(seq 1 600); do
  open=$(psql -tA "$AAA_DATABASE_URL" -c "SELECT count(*) FROM replay_windows WHERE state IN ('pending','submitted')")
  done_=$(psql -tA "$AAA_DATABASE_URL" -c "SELECT count(*) FROM replay_windows WHERE state = 'reconciled'")
  missing=$(curl -fsS "$sim/sim/truth/summary" | jq .missing)
  [ "$open" = 0 ] && [ "$done_" -gt 0 ] && [ "$missing" = 0 ] && break
  sleep 0.2
done
recovery_real=$(python3 -c "import time; print(f'{time.time() - $outage_end_real:.1f}')")
"$aaa" gaps list
summary=$(curl -fsS "$sim/sim/truth/summary")
delivered=$(jq .delivered <<<"$summary")
stored=$(psql -tA "$AAA_DATABASE_URL" -c "SELECT count(*) FROM events")
recovered=$(psql -tA "$AAA_DATABASE_URL" -c "SELECT coalesce(sum(recovered), 0) FROM replay_windows")
echo "ground truth: $(jq -c '{owed, delivered, delivered_by_replay_only, missing}' <<<"$summary")"
echo "lost during the outage: $lost   recovered by replay: $recovered   X delivered: $delivered   rows in Postgres: $stored"
echo "outage end to recovery: $recovery_real real seconds (x300: about $(python3 -c "print(round($recovery_real * 5))") simulated minutes)"
[ "$stored" = "$delivered" ] && [ "$(jq .missing <<<"$summary")" = 0 ] || die "not recovered (logs in $state)"

say "rows per table"
counts=""
for t in events dead_letters webhooks subscriptions users tweets mentions favorites direct_messages apps \
         dm_read_receipts relationship_events relationships tweet_deletions replay_jobs; do
  counts+="${counts:+ UNION ALL }SELECT '$t' AS table_name, count(*) AS rows FROM $t"
done
psql "$AAA_DATABASE_URL" -c "$counts"
echo "Re-run it yourself:"
echo "  psql '$AAA_DATABASE_URL' -c '$query'"
echo "Metrics: http://127.0.0.1:$receiver_admin/metrics  http://127.0.0.1:$consumer_admin/metrics  http://127.0.0.1:$watermark_admin/metrics  $sim/metrics"
echo "Ground truth: curl $sim/sim/truth/summary   curl $sim/sim/truth.jsonl"
echo "More activity: curl -X POST $sim/sim/generate -H 'content-type: application/json' -d '{\"count\": 100}'"
echo "Logs:    $state/*.log"
echo "Operate the simulated X (see README, 'Operating'): source $state/operator.env && aaa webhooks list"

if [ -z "$once" ]; then
  say "stack is running; Ctrl-C stops it"
  # Until Ctrl-C, or until a component stops by itself. (Not the first
  # receiver's pid: the outage step killed it.)
  live=()
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && live+=("$pid"); done
  wait -n "${live[@]}" || true
  die "a component of the stack stopped by itself (logs in $state)"
fi
