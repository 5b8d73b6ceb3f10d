#!/bin/sh
# Build, once, the emulated aarch64 Python (qemu-user + arm64 sysroot + real aarch64 wheels of
# onnxruntime, ai-edge-litert and openvino) and install openssh-server, for the remote-runner
# tests. Needs root and apt. Cache: $EDGEKIT_ARM_CACHE (default ~/.cache/edgekit/arm).
set -eu
PY="${PYTHON:-$(dirname "$0")/../.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec "$PY" -m edgekit.bench.arm_emulation "$@"
