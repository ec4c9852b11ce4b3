#!/usr/bin/env bash
# make demo: builds Lifeguard and the demo driver (release, so the per-check latencies shown are representative),
# then tells the story through a real Envoy. The driver starts the stub LLM upstream, `lifeguard serve` and Envoy
# on free loopback ports and stops them all by PID at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p lifeguard -p lifeguard-e2e --bin lifeguard --bin lifeguard-demo
LIFEGUARD_BIN="$PWD/target/release/lifeguard" exec target/release/lifeguard-demo
