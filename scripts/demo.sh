#!/usr/bin/env bash
# Placeholder: the lead replaces this with the real demo (Envoy + Lifeguard + stub LLM).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
echo "demo: coming"
