#!/usr/bin/env bash
# Regenerate data/catalog/kernels/ (measured kernel curves per GPU and engine) from
# AIConfigurator's perf database in its published wheel (PyPI aiconfigurator-core 0.12.0,
# Apache-2.0, (c) NVIDIA CORPORATION & AFFILIATES). Needs python3 and pip; the wheel goes to
# target/ and pandas/pyarrow to a venv under target/ (never at run time: the curves are
# committed and embedded in the binary).
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.12.0
dir=target/aic-core-$version
if [ ! -d "$dir/aiconfigurator_core" ]; then
  mkdir -p "$dir"
  python3 -m pip download -q --no-deps -d "$dir" "aiconfigurator-core==$version"
  python3 -m zipfile -e "$dir"/aiconfigurator_core-$version-*.whl "$dir"
fi
VENV="${KERNEL_VENV:-target/kernel-venv}"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import pandas, pyarrow' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet pandas pyarrow
fi
"$VENV/bin/python" scripts/kernel_curves.py "$dir" data/catalog/kernels
