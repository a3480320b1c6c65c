#!/usr/bin/env python3
"""Derive Switchyard's calibration data set from AIConfigurator's published wheel.

Reads `aiconfigurator_core/systems/silicon_sample.csv` (measured end-to-end TTFT/TPOT of real
serving runs, Apache-2.0, NVIDIA) out of an unpacked `aiconfigurator-core` wheel and writes
`data/calibration/silicon_agg.csv.gz`: the aggregated-serving rows, normalised (one column per
parallel degree, the client concurrency parsed out of the provenance string, "unset" zeros as
blanks). Nothing is fitted or dropped here; the Rust side (crates/calibrate) decides which rows
it can model and says why it skips the others.

Usage: python3 scripts/calibration_data.py WHEEL_DIR OUT_DIR   (see scripts/calibration-data.sh)
"""
import csv
import gzip
import io
import os
import re
import sys

COLUMNS = [
    "id", "system", "backend", "backend_version", "model_path", "precision",
    "gemm_quant_mode", "moe_quant_mode", "isl", "osl", "concurrency", "batch_size",
    "tp", "attention_dp", "moe_tp", "moe_ep", "ttft_ms", "tpot_ms",
]


def num(v):
    """Integer-valued float column -> int string; blank or 0 ('unset') -> ''."""
    if v is None or v == "" or v.lower() == "nan":
        return ""
    x = float(v)
    return "" if x == 0 else str(int(round(x)))


def main():
    wheel, out = sys.argv[1], sys.argv[2]
    src = os.path.join(wheel, "aiconfigurator_core", "systems", "silicon_sample.csv")
    rows = []
    with open(src, newline="") as f:
        for r in csv.DictReader(f):
            if r["mode"] != "agg":
                continue
            m = re.search(r"silicon_concurrency=(\d+)", r["silicon_data_source"])
            conc = m.group(1) if m else ""
            if not conc:
                m = re.search(r"_c(\d+)_", r["id"])
                conc = m.group(1) if m else ""
            rows.append({
                "id": r["id"],
                "system": r["system"],
                "backend": r["backend"],
                "backend_version": r["backend_version"],
                "model_path": r["model_path"],
                "precision": r["precision"],
                "gemm_quant_mode": r["gemm_quant_mode"],
                "moe_quant_mode": r["moe_quant_mode"],
                "isl": r["isl"],
                "osl": r["osl"],
                "concurrency": conc,
                "batch_size": num(r["batch_size"]),
                "tp": num(r["tp_size"]),
                "attention_dp": num(r["attention_dp_size"]),
                "moe_tp": num(r["moe_tp_size"]),
                "moe_ep": num(r["moe_ep_size"]),
                "ttft_ms": "%.4f" % float(r["silicon_ttft_ms"]),
                "tpot_ms": "%.4f" % float(r["silicon_tpot_ms"]),
            })
    rows.sort(key=lambda r: r["id"])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "silicon_agg.csv.gz")
    # mtime=0: the same input gives the same bytes.
    with gzip.GzipFile(path, "wb", mtime=0, compresslevel=9) as g:
        g.write(buf.getvalue().encode())
    print(f"{path}: {len(rows)} aggregated rows, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
