#!/usr/bin/env bash
# Builds fluke-vmm and boots the default guest image under KVM. Extra arguments go to
# `fluke-vmm run`, e.g. scripts/run.sh --log-level info --boot-timer
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --no-qemu
exec cargo run --release -p fluke-vmm -- run "$@"
