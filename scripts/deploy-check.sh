#!/usr/bin/env bash
# Checks the Kubernetes artefacts as far as this machine allows: no cluster, no helm CLI, no
# container engine. Installs its Python tools idempotently (pinned, in their own venvs under
# .tools/, which git ignores), then:
#   1. helm lint (helm-sdkpy: Helm's Go library; lint only, it cannot render templates for us)
#      of helm/lifeguard with its default values and with each helm/lifeguard/ci/*-values.yaml
#      merged over them; any WARNING or ERROR fails, like `helm lint --strict`.
#   2. kubernetes-validate --strict of helm/lifeguard/rendered-example.yaml (the hand-written
#      render of the defaults) and deploy/istio/*.yaml. It has schemas for core kinds only: Istio
#      and Prometheus Operator kinds get a "couldn't find schema" warning and are otherwise
#      skipped (tests/deploy.rs checks the EnvoyFilters' Envoy configs with `envoy --mode validate`).
#   3. yamllint (relaxed, strict exit) of deploy/istio/ and the chart's plain YAML files. Not
#      templates/ (Go template text, not YAML) and not deploy/envoy/ (its `${VAR}` placeholders
#      make it YAML only once rendered; tests/envoy_configs.rs validates it rendered).
#      `indent-sequences: whatever` because rendered-example.yaml keeps Helm's toYaml style
#      (a list at its parent key's indentation).
# Run by tests/deploy.rs; exits non-zero on the first failing step.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
TOOLS="$ROOT/.tools"
HELM_VENV="$TOOLS/venv-helm"
LINT_VENV="$TOOLS/venv-deploy"
HELM_SDKPY="helm-sdkpy==0.1.32"
LINT_PKGS=(kubernetes-validate==1.37.0 yamllint==1.38.0)
CHART="$ROOT/helm/lifeguard"

mkdir -p "$TOOLS"
# One installer at a time (parallel test runs share .tools/).
exec 9>"$TOOLS/.deploy-check.lock"
flock 9

# ensure_venv DIR PIP_ARGS...: (re)creates DIR when the marker of these exact pins is missing.
ensure_venv() {
    local dir="$1"; shift
    local marker="$dir/.installed"
    if [[ -f "$marker" && "$(cat "$marker")" == "$*" ]]; then
        return 0
    fi
    echo "deploy-check: installing $* into ${dir#"$ROOT"/}" >&2
    rm -rf "$dir"
    "$PYTHON" -m venv "$dir" || {
        echo "error: '$PYTHON -m venv' failed (on Debian: apt-get install python3-venv)" >&2
        exit 1
    }
    "$dir/bin/pip" install --disable-pip-version-check --quiet "$@"
    echo "$*" >"$marker"
}
# helm-sdkpy declares a newer Python than some machines have; its cffi binding works on 3.11.
ensure_venv "$HELM_VENV" --ignore-requires-python "$HELM_SDKPY"
ensure_venv "$LINT_VENV" "${LINT_PKGS[@]}"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/lifeguard-deploy-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# helm_lint LABEL CHART_DIR
helm_lint() {
    echo "== helm lint ($1)"
    "$HELM_VENV/bin/python" - "$2" <<'PY'
import asyncio, sys
import helm_sdkpy as helm

SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}
result = asyncio.run(helm.Lint(helm.Configuration()).run(sys.argv[1]))
messages = result.get("Messages") or []
bad = [m for m in messages if m.get("Severity", 0) >= 2]
for m in messages:
    print(f"   {SEVERITY.get(m.get('Severity'), m.get('Severity'))}: {m.get('Path')}")
if bad or result.get("Errors"):
    # helm-sdkpy serializes Go errors as {}: the message text is lost, only path and severity remain.
    print("   helm lint failed (helm-sdkpy drops the message text; the path above says which file)")
    sys.exit(1)
print(f"   ok ({len(messages)} info message(s))")
PY
}

helm_lint "default values" "$CHART"
for scenario in "$CHART"/ci/*-values.yaml; do
    [[ -e "$scenario" ]] || continue
    name="$(basename "$scenario" .yaml)"
    # helm-sdkpy's Lint takes no value overrides: lint a copy whose values.yaml is the merge.
    mkdir -p "$WORK/$name"
    cp -r "$CHART" "$WORK/$name/lifeguard"
    "$LINT_VENV/bin/python" - "$CHART/values.yaml" "$scenario" "$WORK/$name/lifeguard/values.yaml" <<'PY'
import sys, yaml

def merge(base, over):
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(base.get(k), v)
        return out
    return over

with open(sys.argv[1]) as f:
    base = yaml.safe_load(f)
with open(sys.argv[2]) as f:
    over = yaml.safe_load(f) or {}
with open(sys.argv[3], "w") as f:
    yaml.safe_dump(merge(base, over), f, sort_keys=False)
PY
    helm_lint "$name" "$WORK/$name/lifeguard"
done

echo "== kubernetes-validate --strict"
"$LINT_VENV/bin/kubernetes-validate" --strict "$CHART/rendered-example.yaml" deploy/istio/*.yaml

echo "== yamllint (relaxed)"
"$LINT_VENV/bin/yamllint" --strict -f parsable \
    -d '{extends: relaxed, rules: {line-length: {max: 140}, indentation: {indent-sequences: whatever}}}' \
    deploy/istio "$CHART/Chart.yaml" "$CHART/values.yaml" "$CHART/ci" "$CHART/rendered-example.yaml"

echo "deploy-check: ok"
