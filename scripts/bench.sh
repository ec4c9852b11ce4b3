#!/usr/bin/env bash
# Lifeguard's benchmark suite: builds --release, then runs `lifeguard-bench suite`, which starts Lifeguard,
# the echo floor, a stub upstream and Envoy, drives them, and writes BENCHMARKS.md.
#
# Pinning (2 cores): Lifeguard, the echo floor and Envoy on CPU 0 (taskset -c 0, set by the suite), the load
# tool and the stub upstream on CPU 1. With fewer than 2 CPUs, nothing is pinned.
#
# Environment:
#   BENCH_ARGS       extra arguments for `lifeguard-bench suite` (e.g. "--runs 1 --seconds 1 --only grpc")
#   BENCH_CRITERION  =1 also runs `cargo bench --workspace` first, so the report carries criterion results
#   ENVOY_BIN        Envoy binary (default .venv/bin/envoy; the through-Envoy section is skipped without it)
#   CARGO            cargo command (default cargo)
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO=${CARGO:-cargo}
ENVOY_BIN=${ENVOY_BIN:-$PWD/.venv/bin/envoy}

$CARGO build --release -p lifeguard -p lifeguard-bench

if [[ "${BENCH_CRITERION:-0}" == 1 ]]; then
    $CARGO bench --workspace
fi

pin_load=()
server_cpus=()
if [[ "$(nproc)" -ge 2 ]] && command -v taskset >/dev/null; then
    pin_load=(taskset -c 1)
    server_cpus=(--server-cpus 0 --load-cpus 1)
else
    echo "bench: fewer than 2 CPUs or no taskset: running unpinned" >&2
    server_cpus=(--server-cpus "" --load-cpus "")
fi

# shellcheck disable=SC2086 # BENCH_ARGS is a list of words on purpose
"${pin_load[@]}" target/release/lifeguard-bench suite \
    --lifeguard target/release/lifeguard \
    --envoy "$ENVOY_BIN" \
    --envoy-template deploy/envoy/lifeguard.yaml \
    --out BENCHMARKS.md \
    --command "make bench${BENCH_ARGS:+ BENCH_ARGS=\"$BENCH_ARGS\"}" \
    "${server_cpus[@]}" \
    ${BENCH_ARGS:-}

# The hand-written analysis of what limits the missed budgets follows the generated figures.
cat crates/bench/ANALYSIS.md >> BENCHMARKS.md
