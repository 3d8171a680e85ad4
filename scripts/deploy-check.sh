#!/usr/bin/env bash
# Offline validation of deploy/: every overlay renders (kustomize), every
# rendered object validates against the Kubernetes schemas (strict) and the
# CRDs' schemas, the deployment policy holds, the Dockerfile lints clean.
# Self-checks make sure the validator and the policy can fail at all.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$AAA_ROOT"
ensure_deploy_tools

out=$(mktemp -d /tmp/aaa-deploy.XXXXXX)
trap 'rm -rf "$out"' EXIT
validate() {
  "$DEPLOY_VENV/bin/python" deploy/validate/validate.py --node-modules "$DEPLOY_NODE_MODULES" \
    -k "${AAA_K8S_MIN_VERSION:-1.30}" -k "${AAA_K8S_MAX_VERSION:-1.37}" "$@"
}

for overlay in deploy/overlays/*/; do
  name=$(basename "$overlay")
  "$KUBECTL_BIN" kustomize "$overlay" >"$out/$name.yaml" || die "kustomize build $overlay failed"
  echo "$name: $(grep -c '^kind:' "$out/$name.yaml") objects rendered"
  validate "$out/$name.yaml" | sed "s/^/    /" || die "$overlay: schema validation failed"
  "$DEPLOY_VENV/bin/python" deploy/validate/policy.py "$out/$name.yaml" | sed "s/^/    /" \
    || die "$overlay: policy check failed"
done

# The validator must reject each known-bad object (3 of them).
if validate deploy/validate/testdata/invalid.yaml >"$out/invalid.log"; then
  cat "$out/invalid.log"; die "the validator accepted deploy/validate/testdata/invalid.yaml"
fi
rejected=$(grep -oE '^ERROR [^:]+: [A-Za-z]+/[a-z-]+' "$out/invalid.log" | sort -u | wc -l)
[ "$rejected" = 3 ] || { cat "$out/invalid.log"; die "expected 3 rejections of invalid.yaml, got $rejected"; }
echo "validator self-check: rejected all $rejected known-bad objects"

(cd deploy/validate && AAA_RENDERED="$out/prod.yaml" "$DEPLOY_VENV/bin/python" -m unittest -q policy_test 2>&1 | tail -n 1 | sed 's/^/policy tests: /') \
  || die "policy tests failed"

"$DEPLOY_VENV/bin/hadolint" Dockerfile || die "hadolint found problems in the Dockerfile"
echo "Dockerfile: hadolint clean"
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  docker build --quiet -t aaa:check . >/dev/null || die "docker build failed"
  echo "image: built"
else
  echo "image: not built (no container engine on this machine; the Dockerfile is linted only)"
fi
