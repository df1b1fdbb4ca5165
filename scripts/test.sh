#!/usr/bin/env bash
# Runs the whole test suite: host unit tests, and integration tests that boot real guests
# under fluke-vmm (KVM) and under QEMU (TCG, the native backend).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo test --workspace --all-targets "$@"
