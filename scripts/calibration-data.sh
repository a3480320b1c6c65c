#!/usr/bin/env bash
# Regenerate data/calibration/ from AIConfigurator's published wheel (PyPI, Apache-2.0).
# Needs only python3 and pip; downloads the wheel into target/ (never at run time of lab).
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.12.0
dir=target/aic-core-$version
if [ ! -d "$dir/aiconfigurator_core" ]; then
  mkdir -p "$dir"
  python3 -m pip download -q --no-deps -d "$dir" "aiconfigurator-core==$version"
  python3 -m zipfile -e "$dir"/aiconfigurator_core-$version-*.whl "$dir"
fi
python3 scripts/calibration_data.py "$dir" data/calibration
