#!/usr/bin/env bash
# Runs every check and test against a real Postgres and a real broker.
# Installs what it needs (idempotently), starts a throwaway Postgres cluster,
# and stops it again however the run ends.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$AAA_ROOT"
# A one-shot build gains nothing from incremental state, which costs gigabytes.
export CARGO_INCREMENTAL=0

ensure_toolchain
ensure_postgres
ensure_nisshi
ensure_cargo_fuzz
ensure_xdk
apt_install prometheus

say "format and lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked --quiet -- -D warnings
promtool check rules dashboards/alerts.yml >/dev/null
(cd dashboards && promtool test rules alerts.test.yml >/dev/null) || { (cd dashboards && promtool test rules alerts.test.yml); die "alert rule tests failed"; }

say "deployment manifests (offline validation)"
scripts/deploy-check.sh | sed "s/^/    /"

work=$(mktemp -d /tmp/aaa-test.XXXXXX)
chmod 755 "$work"
demo=
trap '[ -z "$demo" ] || { kill -TERM "$demo" 2>/dev/null; wait "$demo" 2>/dev/null; } || true; pg_stop "$work/pg"; rm -rf "$work"' EXIT
say "starting a throwaway Postgres"
pg_start "$work/pg" -c fsync=off -c synchronous_commit=off -c full_page_writes=off

export AAA_TEST_DATABASE_URL=$PG_URL
export AAA_NISSHI_BIN=$NISSHI_BIN
export AAA_PG_BIN=$PG_BIN
export AAA_CHAOS_REPORT=$work/chaos.jsonl
say "tests (unit, end-to-end and fault injection)"
cargo test --workspace --locked --no-fail-fast "$@"
if [ -s "$AAA_CHAOS_REPORT" ]; then
  say "fault injection: per scenario"
  python3 - "$AAA_CHAOS_REPORT" <<'PY'
import json, sys
rows = sorted((json.loads(l) for l in open(sys.argv[1])), key=lambda r: r["scenario"])
cols = ["owed", "delivered_live", "recovered_by_replay", "duplicates_absorbed", "x_failed_attempts", "gap_windows", "audit_windows", "recovered_by_audits", "lost", "expired_minutes", "settle_seconds"]
print("    | scenario | " + " | ".join(cols) + " |")
for r in rows:
    print("    | " + r["scenario"] + " | " + " | ".join(str(r[c]) for c in cols) + " |")
PY
fi

# libFuzzer on the envelope parser and normalizer, seeded with the fixtures.
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP lets the stable toolchain
# accept them for this build only.
say "fuzzing the envelope parser for ${AAA_FUZZ_SECONDS:-60} s"
mkdir -p "$work/corpus"
cp tests/fixtures/*.json "$work/corpus/"
(cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run envelope "$work/corpus" -- \
   -max_total_time="${AAA_FUZZ_SECONDS:-60}" -print_final_stats=1 >"$work/fuzz.log" 2>&1) \
  || { tail -n 60 "$work/fuzz.log"; die "the fuzzer found a crash (artifact under fuzz/artifacts)"; }
echo "fuzz: $(grep -oE '^stat::number_of_executed_units: *[0-9]+' "$work/fuzz.log" | grep -oE '[0-9]+$') inputs, no crash"

# The README's first command must keep working, exactly as written: the
# demo runs end to end (outage, replay and recovery included; it fails on any
# mismatch) and then leaves the stack running until Ctrl-C.
say "demo smoke test"
scripts/demo.sh >"$work/demo.log" 2>&1 &
demo=$!
for _ in $(seq 1 3000); do
  grep -q 'stack is running' "$work/demo.log" && break
  kill -0 "$demo" 2>/dev/null || { tail -n 40 "$work/demo.log"; die "scripts/demo.sh failed"; }
  sleep 0.1
done
grep -q 'stack is running' "$work/demo.log" || { kill -TERM "$demo"; tail -n 40 "$work/demo.log"; die "scripts/demo.sh did not finish its run in 300 s"; }
grep -E '^(lost during the outage|outage end to recovery)' "$work/demo.log" | sed 's/^/    /'
# Still serving: every service answers /metrics, a few times over.
urls=$(grep -oE 'http://127\.0\.0\.1:[0-9]+/metrics' "$work/demo.log" | sort -u)
[ "$(wc -w <<<"$urls")" -ge 4 ] || die "the demo did not print its services' metrics addresses"
for _ in 1 2 3; do
  for url in $urls; do curl -fsS -o /dev/null "$url" || die "the demo stack stopped serving ($url)"; done
  kill -0 "$demo" 2>/dev/null || { tail -n 20 "$work/demo.log"; die "scripts/demo.sh exited instead of keeping the stack up"; }
  sleep 1
done
# (A background job ignores SIGINT in a non-interactive shell: TERM is the
# demo's other stop signal, handled the same way as Ctrl-C.)
kill -TERM "$demo"
wait "$demo" || true
demo=
echo "    the stack stayed up until stopped"
