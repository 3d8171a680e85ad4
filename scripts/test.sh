#!/usr/bin/env bash
# Runs every check and test against a real Postgres and a real broker.
# Installs what it needs (idempotently), starts a throwaway Postgres cluster,
# and stops it again however the run ends.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$AAA_ROOT"

ensure_toolchain
ensure_postgres
ensure_nisshi

say "format and lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked --quiet -- -D warnings

work=$(mktemp -d /tmp/aaa-test.XXXXXX)
chmod 755 "$work"
trap 'pg_stop "$work/pg"; rm -rf "$work"' EXIT
say "starting a throwaway Postgres"
pg_start "$work/pg" -c fsync=off -c synchronous_commit=off -c full_page_writes=off

export AAA_TEST_DATABASE_URL=$PG_URL
export AAA_NISSHI_BIN=$NISSHI_BIN
say "tests (unit and end-to-end)"
cargo test --workspace --locked --no-fail-fast "$@"
