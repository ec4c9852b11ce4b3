#!/usr/bin/env bash
# make demo: builds Lifeguard and the demo driver, then tells the story through a real Envoy. The driver starts
# the stub LLM upstream, `lifeguard serve` and Envoy on free loopback ports and stops them all by PID at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet -p lifeguard -p lifeguard-e2e --bin lifeguard --bin lifeguard-demo
exec target/debug/lifeguard-demo
