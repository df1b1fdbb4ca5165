#!/usr/bin/env bash
# Installs what building and testing fluke-vmm needs beyond a Rust toolchain:
#   - the x86_64-unknown-none target (RUSTUP_AUTO_INSTALL=0 machines do not add it on their own),
#   - QEMU (Debian/Ubuntu package qemu-system-x86), which the tests use for the native backend,
#   - libclang (libclang-dev), which the userfaultfd crate's bindings are generated with,
#   - gdb (Debian package gdb), which tests/vm_gdb.rs drives against the VMM's gdb stub,
#   - strace, with which vmm/tests/channel.rs delays one VMM's system call to force a race.
# Idempotent: does nothing when all are present. Usage: scripts/setup.sh [--no-qemu]
set -euo pipefail

want_qemu=1
[ "${1:-}" = "--no-qemu" ] && want_qemu=0

# Installs Debian package $1 (apt, as root or through sudo).
install_package() {
    echo "setup: installing $1" >&2
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$1" >/dev/null
}

if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-none; then
    echo "setup: adding the x86_64-unknown-none target" >&2
    rustup target add x86_64-unknown-none
fi

if [ "$want_qemu" = 1 ] && ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
    install_package qemu-system-x86
fi

has_libclang() {
    compgen -G "/usr/lib/x86_64-linux-gnu/libclang-[0-9]*.so*" >/dev/null ||
        compgen -G "/usr/lib/x86_64-linux-gnu/libclang.so*" >/dev/null ||
        compgen -G "/usr/lib/llvm-*/lib/libclang.so*" >/dev/null
}
if ! has_libclang; then
    install_package libclang-dev
fi

command -v gdb >/dev/null 2>&1 || install_package gdb
command -v strace >/dev/null 2>&1 || install_package strace
