#!/usr/bin/env bash
# Benchmarks: every stage against a baseline measured in the same run.
# Starts its own Postgres (durable settings, as in production) and broker,
# builds in release mode, writes bench/results/<date>.json and <date>.md.
# Arguments go to aaa-bench (see: scripts/bench.sh --help).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$AAA_ROOT"

ensure_toolchain
ensure_postgres
ensure_nisshi
apt_install wrk

target=${CARGO_TARGET_DIR:-$AAA_ROOT/target}
say "building aaa and aaa-bench (release)"
CARGO_INCREMENTAL=0 quietly cargo build --release --locked --workspace --bin aaa --bin aaa-bench
case " $* " in *" --help "*|*" -h "*) exec "$target/release/aaa-bench" "$@" ;; esac

work=$(mktemp -d /tmp/aaa-bench.XXXXXX)
chmod 755 "$work"
trap 'pg_stop "$work/pg"; rm -rf "$work"' EXIT
say "starting Postgres"
# pg_stat_statements: where Postgres spends the consumer scenario.
pg_start "$work/pg" -c shared_preload_libraries=pg_stat_statements

export AAA_TEST_DATABASE_URL=$PG_URL
export AAA_NISSHI_BIN=$NISSHI_BIN
export AAA_BENCH_AAA_BIN=${AAA_BENCH_AAA_BIN:-$target/release/aaa}
export AAA_BENCH_OUT=${AAA_BENCH_OUT:-$AAA_ROOT/bench/results}
"$target/release/aaa-bench" "$@"
