#!/usr/bin/env bash
# Long fuzzing runs of the parsers of untrusted input (vmm/src/fuzz.rs): the image and bundle,
# the kernel command line, the snapshot format, the control API's requests, one at a time,
# each timed. Usage: scripts/fuzz-parsers.sh [SCALE] [SEED]
# SCALE multiplies each target's mutants: 1 is what the test suite runs (seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
scale=${1:-100}
seed=${2:-1}
scripts/setup.sh --no-qemu
cargo test --release -q -p fluke-vmm --bin fluke-vmm --no-run
for target in image_and_bundle_parsing kernel_command_line_parsing snapshot_vmstate_decoding api_request_parsing_and_routing; do
    start=$(date +%s)
    FLUKE_FUZZ_SCALE=$scale FLUKE_FUZZ_SEED=$seed \
        cargo test --release -q -p fluke-vmm --bin fluke-vmm "fuzz::fuzz_$target" -- --exact >/dev/null
    echo "fuzz-parsers: $target: scale $scale, seed $seed: no panic in $(( $(date +%s) - start )) s"
done
