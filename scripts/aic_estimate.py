#!/usr/bin/env python3
"""Run NVIDIA AIConfigurator's own estimator on the held-out TEST rows of the calibration data.

Usage: aic_estimate.py DATA_CSV_GZ OUT_CSV [--systems h100_sxm,h200_sxm,b200_sxm,gb200]

DATA_CSV_GZ is data/calibration/silicon_agg.csv.gz (agg rows of aiconfigurator-core 0.12.0's
silicon_sample.csv). A row is TEST when FNV-1a-64 of its configuration key, mod 10, is < 3; the
key and hash are the ones in crates/calibrate/src/split.rs, reproduced below.

For every TEST row on the chosen systems, `aiconfigurator.cli.api.cli_estimate` is called
in-process (agg mode) with the arguments upstream's
tools/accuracy_regression_testing/predict_silicon_sample.py passes, except that the row's old
backend_version is NOT passed: AIC's current (default) perf database is used. (That version is
resolved once per system/backend with get_latest_database_version, as cli_estimate itself does
when backend_version is None, and then passed explicitly; this only saves ~3 s of YAML parsing
per call.) pp_size is 1.
Parallel and quant fields are passed only when the row sets them.

OUT_CSV gets `id,aic_ttft_ms,aic_tpot_ms,error`, in id order, one line flushed per row, so an
interrupted run still leaves a valid CSV of the rows done. `error` is empty on success, else the
exception's first line (commas replaced by ';', double quotes by ', the local site-packages
prefix dropped from paths).

Needs the `aiconfigurator==0.12.0` package (Apache-2.0, NVIDIA). Set HF_HUB_OFFLINE=1 to use only
the model configs bundled with aiconfigurator-core.
"""

import argparse
import collections
import contextlib
import csv
import gzip
import io
import logging
import os
import re
import signal
import sys
import time
import warnings

KEY_COLUMNS = (
    "system",
    "backend",
    "backend_version",
    "model_path",
    "precision",
    "gemm_quant_mode",
    "moe_quant_mode",
    "isl",
    "osl",
    "tp",
    "attention_dp",
    "moe_tp",
    "moe_ep",
)
# silicon_agg.csv column -> cli_estimate argument (passed only when the column is non-blank,
# like upstream's `if row.get(field)`).
PARALLEL = (
    ("tp", "tp_size"),
    ("attention_dp", "attention_dp_size"),
    ("moe_tp", "moe_tp_size"),
    ("moe_ep", "moe_ep_size"),
)
DEFAULT_SYSTEMS = "h100_sxm,h200_sxm,b200_sxm,gb200"



# Checkpoints whose architecture AIConfigurator bundles under another name (same config.json
# shapes; the instruct/FP8 variants differ only in weights). Without this they fail offline.
BUNDLED_ALIAS = {
    "meta-llama/Llama-3.1-70B": "meta-llama/Meta-Llama-3.1-70B",
    "meta-llama/Llama-3.1-8B-Instruct": "meta-llama/Meta-Llama-3.1-8B",
    "nvidia/Llama-3.1-8B-Instruct-FP8": "meta-llama/Meta-Llama-3.1-8B",
}

def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def config_key(row: dict) -> str:
    # isl/osl are integers in the CSV; str(int(...)) matches Rust's u32::to_string.
    parts = [row[c] for c in KEY_COLUMNS]
    parts[7] = str(int(row["isl"]))
    parts[8] = str(int(row["osl"]))
    return "|".join(parts)


def is_test(row: dict) -> bool:
    return fnv1a64(config_key(row).encode("utf-8")) % 10 < 3


def estimate_args(row: dict) -> dict:
    args = dict(
        model_path=BUNDLED_ALIAS.get(row["model_path"], row["model_path"]),
        system_name=row["system"],
        mode="agg",
        backend_name=row["backend"],
        isl=int(row["isl"]),
        osl=int(row["osl"]),
        batch_size=int(row["batch_size"]),
        pp_size=1,
        gemm_quant_mode=row["gemm_quant_mode"] or None,
        moe_quant_mode=row["moe_quant_mode"] or None,
    )
    for col, arg in PARALLEL:
        if row[col]:
            args[arg] = int(row[col])
    return args


class RowTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise RowTimeout("row timed out")


def first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    msg = lines[0].strip() if lines else ""
    msg = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    # Drop the local install prefix from paths (".../site-packages/aiconfigurator_core/systems/...")
    # so the committed CSV does not depend on where the venv lives.
    msg = re.sub(r"\S*/site-packages/", "", msg)
    return msg.replace(",", ";").replace('"', "'").replace("\r", " ")


def error_kind(err: str) -> str:
    """A coarse grouping of error messages for the summary: numbers and quoted names blanked."""
    k = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", err)
    k = re.sub(r"\d+(\.\d+)?", "N", k)
    k = re.sub(r"\{[^}]*\}", "{…}", k)
    return k[:110]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="silicon_agg.csv.gz")
    ap.add_argument("out", help="output CSV (id,aic_ttft_ms,aic_tpot_ms,error)")
    ap.add_argument("--systems", default=DEFAULT_SYSTEMS, help=f"comma-separated (default {DEFAULT_SYSTEMS})")
    ap.add_argument("--row-timeout", type=int, default=300, help="seconds per row before giving up (0 = none)")
    opts = ap.parse_args()
    systems = {s.strip() for s in opts.systems.split(",") if s.strip()}

    opener = gzip.open if opts.data.endswith(".gz") else open
    with opener(opts.data, "rt", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["system"] in systems and is_test(r)]
    rows.sort(key=lambda r: r["id"])
    out = sys.stdout
    print(f"{len(rows)} TEST rows on {','.join(sorted(systems))}", file=out, flush=True)

    # Quiet the library: its logging and prints go nowhere; our progress goes to the real stdout.
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t_import = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from aiconfigurator.cli.api import cli_estimate
        from aiconfigurator_core.sdk.perf_database import get_latest_database_version
    print(f"imported aiconfigurator in {time.perf_counter() - t_import:.1f} s", file=out, flush=True)

    if opts.row_timeout > 0:
        signal.signal(signal.SIGALRM, _alarm)

    # cli_estimate with backend_version=None re-resolves the current DB version on every call by
    # re-parsing hundreds of YAML files (~3 s a call). Resolve it once per (system, backend) the same
    # way cli_estimate does and pass it explicitly: same database, ~0.03 s a call.
    versions: dict = {}

    def current_version(system: str, backend: str):
        if (system, backend) not in versions:
            try:
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    versions[system, backend] = get_latest_database_version(system=system, backend=backend)
            except Exception:
                versions[system, backend] = None  # let cli_estimate raise its own error
        return versions[system, backend]

    cache: dict = {}  # identical argument sets (as upstream does) are estimated once
    kinds: collections.Counter = collections.Counter()
    ok = 0
    t0 = time.perf_counter()
    with open(opts.out, "w", newline="", encoding="utf-8") as fo:
        w = csv.writer(fo, lineterminator="\n")
        w.writerow(["id", "aic_ttft_ms", "aic_tpot_ms", "error"])
        fo.flush()
        for i, row in enumerate(rows, 1):
            args = estimate_args(row)
            ck = tuple(sorted(args.items()))
            if ck not in cache:
                try:
                    if opts.row_timeout > 0:
                        signal.alarm(opts.row_timeout)
                    try:
                        bv = current_version(args["system_name"], args["backend_name"])
                        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                            res = cli_estimate(backend_version=bv, **args)
                    finally:
                        if opts.row_timeout > 0:
                            signal.alarm(0)
                    ttft, tpot = float(res.ttft), float(res.tpot)
                    cache[ck] = (f"{ttft:.6f}", f"{tpot:.6f}", "")
                except Exception as e:  # every failure is recorded, none stops the run
                    cache[ck] = ("", "", first_line(e))
            ttft_s, tpot_s, err = cache[ck]
            w.writerow([row["id"], ttft_s, tpot_s, err])
            fo.flush()
            if err:
                kinds[error_kind(err)] += 1
            else:
                ok += 1
            if i % 20 == 0 or i == len(rows):
                el = time.perf_counter() - t0
                print(
                    f"[{i}/{len(rows)}] predicted {ok}, failed {i - ok}, {el:.0f} s elapsed, {el / i:.2f} s/row",
                    file=out,
                    flush=True,
                )

    n = len(rows)
    print(f"\nsummary: tried {n}, predicted {ok}, failed {n - ok}, "
          f"{len(cache)} distinct argument sets, {time.perf_counter() - t0:.0f} s", file=out)
    print("AIC database versions used: " + ", ".join(f"{s}/{b}={v}" for (s, b), v in sorted(versions.items())),
          file=out)
    for k, c in kinds.most_common():
        print(f"  {c:5d}  {k}", file=out)
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
