#!/usr/bin/env bash
# Run NVIDIA AIConfigurator's own estimator (aiconfigurator 0.12.0, `cli_estimate`, agg mode,
# current perf database) on the held-out TEST rows of data/calibration/silicon_agg.csv.gz
# (split as in crates/calibrate/src/split.rs) and write its TTFT/TPOT predictions to
# data/calibration/aic_predictions.csv (id,aic_ttft_ms,aic_tpot_ms,error).
#
# NOT part of CI: it installs a large Python venv (~1.5 min of pip the first time) and runs
# AIC on ~900 rows (about 2.5 min on a 2-core machine; it would be tens of minutes without the
# DB-version caching in aic_estimate.py). Run it by hand when the comparison needs refreshing.
#
# AIConfigurator is Apache-2.0 licensed, (c) NVIDIA CORPORATION & AFFILIATES; it is installed
# from PyPI into a local venv and is not vendored here.
#
# Usage: scripts/aic-estimate.sh [--systems h100_sxm,h200_sxm,b200_sxm,gb200]
#   AIC_VENV=/path/to/venv  use an existing venv with aiconfigurator==0.12.0 instead of
#                           target/aic-venv (default target/aic-venv, created if missing)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${AIC_VENV:-target/aic-venv}"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import aiconfigurator.cli.api' 2>/dev/null; then
    echo "creating $VENV with aiconfigurator==0.12.0" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet 'aiconfigurator==0.12.0'
fi

# Only the model configs bundled with aiconfigurator-core are used; no Hugging Face downloads.
export HF_HUB_OFFLINE=1
exec nice -n 10 "$VENV/bin/python" scripts/aic_estimate.py \
    data/calibration/silicon_agg.csv.gz data/calibration/aic_predictions.csv "$@"
