#!/usr/bin/env bash
# Install Debian's aarch64 cross toolchain, which links artifacts compiled with
# target="llvm -mtriple=aarch64-linux-gnu ..." (memotvm.artifact.export).  Needs root.
set -euo pipefail
if command -v aarch64-linux-gnu-gcc >/dev/null; then exit 0; fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-aarch64-linux-gnu libc6-dev-arm64-cross
