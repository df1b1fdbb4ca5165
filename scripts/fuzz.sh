#!/usr/bin/env bash
# Long kernel-call fuzzing run on both backends: ROUNDS rounds of CALLS hostile kernel calls
# aimed at real capabilities (ktest capfuzz), under fluke-vmm (KVM) and QEMU TCG.
# Usage: scripts/fuzz.sh [SEED] [CALLS] [ROUNDS]   (default: 1 1000000 10, i.e. 10^7 calls)
# Exits 0 only if both runs report every round survived (", 0 failed; kernel alive").
set -euo pipefail
cd "$(dirname "$0")/.."
seed=${1:-1}
calls=${2:-1000000}
rounds=${3:-10}
scripts/setup.sh
cargo build --release -q -p fluke-vmm
# The default image the build packed (the one fluke-vmm embeds), for QEMU.
# (.cargo/config.toml names the target, so builds land under target/x86_64-unknown-linux-gnu.)
out=target/x86_64-unknown-linux-gnu/release
image=$(ls -t $out/build/fluke-images-*/out/default.img | head -1)
cmdline="fluke.init=ktest,capfuzz,$seed,$calls,$rounds"
ok=0
summary() { grep -v '^victim: ' | grep -E 'capfuzz|KERNEL|panic|killed' || true; }
echo "fuzz: fluke-vmm ($cmdline)"
set +e
kvm_out=$($out/fluke-vmm run "$image" --timeout 3600 --cmdline "$cmdline" 2>&1)
echo "$kvm_out" | summary
grep -q ", 0 failed; kernel alive" <<<"$kvm_out" || { echo "fuzz: fluke-vmm run FAILED"; ok=1; }
echo "fuzz: qemu ($cmdline)"
# isa-debug-exit makes QEMU's own status (init's << 1) | 1: the console says how it went.
qemu_out=$(timeout 3600 qemu-system-x86_64 -accel tcg -cpu max -m 128M -nodefaults -display none \
    -no-reboot -serial stdio -device isa-debug-exit,iobase=0xf4,iosize=0x04 -kernel "$image" \
    -append "$cmdline" </dev/null 2>&1)
echo "$qemu_out" | summary
grep -q ", 0 failed; kernel alive" <<<"$qemu_out" || { echo "fuzz: qemu run FAILED"; ok=1; }
exit $ok
