#!/usr/bin/env bash
# An arm64 "device" on this x86-64 machine: qemu-user and an arm64 Python with the TVM
# runtime, to run aarch64 artifacts through TVM's RPC server (tests/test_rpc.py).
#
#     bash scripts/install_arm64_emulation.sh [DEST]      # needs root (apt)
#     DEST/bin/python3 -m tvm.exec.rpc_server --host 127.0.0.1 --port 9090 --port-end 9091
#
# DEST (default $MEMOTVM_ARM64, else ~/.cache/memotvm/arm64) receives:
#   root/  Debian's arm64 python3.11 and the libraries it needs, unpacked (not installed:
#          nothing arm64 is installed system-wide, only the package index is added)
#   site/  the aarch64 wheels of apache-tvm (the version installed here), numpy and what
#          TVM's RPC server imports (cloudpickle, psutil, tornado)
#   bin/python3  runs root's python3.11 under qemu-aarch64-static; TVM's RPC server
#          starts its workers with sys.executable, which is this script
# Debian bookworm (python3.11) or later; run again to repair, it skips what is there.
set -euo pipefail
DEST="${1:-${MEMOTVM_ARM64:-$HOME/.cache/memotvm/arm64}}"
HERE_PYTHON="${PYTHON:-python3}"
if [ -x "$DEST/bin/python3" ] && "$DEST/bin/python3" -c "import tvm" 2>/dev/null; then
    echo "arm64 emulation ready in $DEST"; exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! command -v qemu-aarch64-static >/dev/null; then
    apt-get update -qq
    apt-get install -y -qq qemu-user-static
fi
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
fi
apt-get update -qq
mkdir -p "$DEST/debs" "$DEST/root" "$DEST/bin"
PACKAGES="python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libexpat1
  zlib1g libffi8 libssl3 libbz2-1.0 liblzma5 libstdc++6 libgcc-s1 libsqlite3-0 libuuid1
  libtinfo6 libncursesw6 libreadline8 libcrypt1 libnsl2 libtirpc3 libdb5.3 libgdbm6
  libzstd1"
(cd "$DEST/debs" && apt-get download -q $(for p in $PACKAGES; do echo "$p:arm64"; done))
for deb in "$DEST"/debs/*.deb; do dpkg -x "$deb" "$DEST/root"; done
TVM_VERSION="$("$HERE_PYTHON" -c 'from importlib.metadata import version; print(version("apache-tvm"))')"
"$HERE_PYTHON" -m pip install -q --upgrade --target "$DEST/site" --python-version 3.11 \
    --implementation cp --only-binary=:all: --platform manylinux_2_28_aarch64 \
    --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
    "apache-tvm==$TVM_VERSION" numpy cloudpickle psutil tornado
cat > "$DEST/bin/python3" <<'WRAPPER'
#!/bin/sh
# arm64 python3.11 under qemu-user (argv[0] is this script: sys.executable runs it too)
DEST="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$DEST/site${PYTHONPATH:+:$PYTHONPATH}"
exec qemu-aarch64-static -L "$DEST/root" -0 "$0" "$DEST/root/usr/bin/python3.11" "$@"
WRAPPER
chmod +x "$DEST/bin/python3"
"$DEST/bin/python3" -c "import platform, tvm; print('arm64 emulation ready in $DEST:', platform.machine(), 'tvm', tvm.__version__)"
