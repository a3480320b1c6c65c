#!/usr/bin/env python3
"""Derive compact measured kernel curves for the engine model from AIConfigurator's perf database.

Usage: kernel_curves.py WHEEL_DIR OUT_DIR
  WHEEL_DIR: the unzipped aiconfigurator-core 0.12.0 wheel (holds aiconfigurator_core/systems/)
  OUT_DIR:   data/catalog/kernels (one TOML file per catalog GPU)

Source data: per-kernel latencies measured on real GPUs (parquet tables under
aiconfigurator_core/systems/data/<system>/<family>/<backend>/<version>/), Apache-2.0,
Copyright (c) 2025-2026 NVIDIA CORPORATION & AFFILIATES. What is derived (the changes):

- gemm: achieved fraction of the catalog GPU's dense peak (BF16, FP8 or FP4 tensor FLOP/s) for
  GEMMs with n and k between 2048 and 32768, per token count m: the median over those shapes
  of 2*m*n*k / (latency * peak). Per engine and weight format.
- moe: the fused-MoE layer's achieved fraction of the peak per tokens routed to each expert
  (tokens * top_k / experts), median over the catalog's MoE shapes (DeepSeek-V3, Qwen3-235B-A22B,
  MiniMax-M2.5) with power-law routing (1.01), one curve per split (moe_tp, moe_ep) over 1 to
  8 GPUs: FLOPs per GPU
  = 2 * 3 * hidden * inter * top_k * tokens / (moe_tp * moe_ep).
- attention: the decode-attention kernel's floor (microseconds per layer): median latency of
  the generation-attention table at batch 1 and at most 127 cached tokens (no sliding window),
  all head layouts. Added per layer to every step with decodes, on top of the KV streaming.
- allreduce: latency (microseconds) of a BF16 all-reduce by message size in bytes, per GPU count
  (the engine's custom all-reduce, CUDA-graph variant where both are measured; NCCL otherwise).

Version per engine: AIConfigurator's "current" (query_versions.yaml defaults: trtllm 1.3.0rc20,
sglang 0.5.14, vllm 0.24.0), else the newest older version that has the table.
"""

import glob
import os
import sys
import tomllib

import numpy as np
import pandas as pd

SYSTEMS = {"h100_sxm": "H100-SXM", "h200_sxm": "H200", "b200_sxm": "B200", "gb200": "GB200"}
GPU_FILES = {"H100-SXM": "h100-sxm", "H200": "h200", "B200": "b200", "GB200": "gb200"}
CURRENT = {"trtllm": "1.3.0rc20", "sglang": "0.5.14", "vllm": "0.24.0"}
# Catalog weight format -> the table's dtype names, in order of preference.
GEMM_DTYPES = {"bf16": ["bfloat16"], "fp8": ["fp8", "fp8_block"], "nvfp4": ["nvfp4"]}
MOE_DTYPES = {"bf16": ["bfloat16"], "fp8": ["fp8_block", "fp8"], "nvfp4": ["nvfp4"]}
# (hidden, moe intermediate, top_k, experts) of the catalog's MoE models.
MOE_SHAPES = [(7168, 2048, 8, 256), (4096, 1536, 8, 128), (3072, 1536, 8, 256)]
# Points below the compute-bound knee are left out: there the GEMM is weight-streaming and the
# engine model's bandwidth roof decides (the curve is held constant below its first point).
GEMM_M = [2**i for i in range(8, 16)]  # 256 .. 32768 tokens
MOE_X = [2.0**i for i in range(3, 11)]  # tokens per expert, 8 .. 1024 (same reason)
AR_BYTES = [2**i for i in range(10, 31)]  # 1 KiB .. 1 GiB


def vkey(v):
    out = []
    for p in v.replace("rc", ".").replace("post", ".").split("."):
        out.append(int(p) if p.isdigit() else 0)
    return out


def table(root, system, family, backend, name):
    """The parquet for the current version, else the newest older one that has it."""
    cur = vkey(CURRENT[backend])
    paths = glob.glob(f"{root}/{system}/{family}/{backend}/*/{name}.parquet")
    cands = [(vkey(p.split("/")[-2]), p) for p in paths]
    older = [c for c in cands if c[0] <= cur]
    if not older:
        return None, None
    v, p = max(older)
    return pd.read_parquet(p), p.split("/")[-2]


def peak(gpu, dtype):
    return {"bf16": gpu["bf16_tflops"], "fp8": gpu["fp8_tflops"], "nvfp4": gpu["fp4_tflops"]}[dtype] * 1e12


def interp_log(xs, ys, grid):
    xs, ys = np.log2(np.asarray(xs, float)), np.asarray(ys, float)
    order = np.argsort(xs)
    xs, ys = xs[order], ys[order]
    g = np.log2(np.asarray(grid, float))
    inside = (g >= xs[0]) & (g <= xs[-1])
    return np.interp(g, xs, ys), inside


def gemm_curve(df, dtype_names, pk):
    for dn in dtype_names:
        d = df[(df.gemm_dtype == dn) & df.n.between(2048, 32768) & df.k.between(2048, 32768)]
        d = d[d.m.isin(GEMM_M)]
        if len(d) < 50:
            continue
        eff = 2.0 * d.m * d.n * d.k / (d.latency * 1e-3) / pk
        med = eff.groupby(d.m).median()
        return dn, [int(m) for m in med.index], [float(f"{e:.4g}") for e in med.values]
    return None


def moe_curves(df, dtype_names, pk):
    """One curve per split (moe_tp, moe_ep) over 1 to 8 GPUs: per-GPU efficiency falls as the
    layer is split over more GPUs, and differs between tensor- and expert-parallel experts."""
    splits = [(t, e) for n in [1, 2, 4, 8] for t in [1, 2, 4, 8] for e in [1, 2, 4, 8] if t * e == n]
    for dn in dtype_names:
        d = df[(df.moe_dtype == dn) & (df.distribution == "power_law_1.01")]
        out = []
        for mtp, mep in splits:
            n = mtp * mep
            pts = []
            for h, i, k, e in MOE_SHAPES:
                s = d[(d.hidden_size == h) & (d.inter_size == i) & (d.topk == k) & (d.num_experts == e)]
                s = s[(s.moe_tp_size == mtp) & (s.moe_ep_size == mep)]
                for _, g in s.groupby(["moe_tp_size", "moe_ep_size", "kernel_source"]):
                    g = g.groupby("num_tokens").latency.min()
                    t = g.index.values.astype(float)
                    eff = 2.0 * 3 * h * i * k * t / n / (g.values * 1e-3) / pk
                    vals, inside = interp_log(t * k / e, eff, MOE_X)
                    pts.append(np.where(inside, vals, np.nan))
            if not pts:
                continue
            stack = np.vstack(pts)
            cnt = (~np.isnan(stack)).sum(axis=0)
            with np.errstate(all="ignore"):
                med = np.array([np.nanmedian(stack[:, j]) if cnt[j] else np.nan for j in range(stack.shape[1])])
            keep = ~np.isnan(med)
            if keep.sum() >= 2:
                out.append((mtp, mep, [float(x) for x in np.asarray(MOE_X)[keep]], [float(f"{v:.4g}") for v in med[keep]]))
        if out:
            return dn, out
    return None


def allreduce_curves(df):
    out = []
    if "backend" in df.columns:
        graph = df[df.backend.astype(str).str.contains("graph")]
        if len(graph):
            df = graph
    if "op_name" in df.columns:
        df = df[df.op_name.astype(str).str.contains("all_reduce")]
    dtype_col = "allreduce_dtype" if "allreduce_dtype" in df.columns else "nccl_dtype"
    df = df[df[dtype_col].astype(str).isin(["bfloat16", "half", "float16"])]
    for n, g in df.groupby("num_gpus"):
        g = g.groupby("message_size").latency.min()
        b = g.index.values.astype(float) * 2.0  # elements -> BF16 bytes
        if len(b) < 5:
            continue
        lat, inside = interp_log(b, g.values * 1e3, AR_BYTES)
        keep = inside
        out.append((int(n), [int(x) for x in np.asarray(AR_BYTES)[keep]], [float(f"{v:.4g}") for v in lat[keep]]))
    return out


def fmt_list(xs):
    return "[" + ", ".join(repr(x) if not isinstance(x, float) else f"{x:g}" for x in xs) + "]"


def main():
    wheel, out = sys.argv[1], sys.argv[2]
    root = os.path.join(wheel, "aiconfigurator_core", "systems", "data")
    catalog = os.path.join(os.path.dirname(out.rstrip("/")), "gpus")
    os.makedirs(out, exist_ok=True)
    for system, gname in SYSTEMS.items():
        with open(os.path.join(catalog, GPU_FILES[gname] + ".toml"), "rb") as f:
            gpu = tomllib.load(f)
        lines = [
            f"# Measured kernel curves for {gname}, derived by scripts/kernel_curves.py (regenerate with",
            "# `bash scripts/kernel-curves.sh`) from AIConfigurator's perf database in the PyPI wheel",
            "# aiconfigurator-core 0.12.0 (aiconfigurator_core/systems/data/" + system + "/).",
            "# Copyright (c) 2025-2026 NVIDIA CORPORATION & AFFILIATES. Licensed under the Apache License,",
            "# Version 2.0 (data/calibration/LICENSE.aiconfigurator). Changes: per-shape latencies reduced",
            "# to medians of achieved efficiency (see the script's docstring); nothing else.",
            f'gpu = "{gname}"',
            "",
        ]
        for backend in ["vllm", "sglang", "trtllm"]:
            gdf, gver = table(root, system, "gemm", backend, "gemm_perf")
            for dt, names in GEMM_DTYPES.items():
                pk = peak(gpu, dt)
                if gdf is None or pk <= 0:
                    continue
                c = gemm_curve(gdf, names, pk)
                if c:
                    lines += ["[[gemm]]", f'engine = "{backend}"', f'dtype = "{dt}"',
                              f'source = "gemm/{backend}/{gver}/gemm_perf.parquet ({c[0]})"',
                              f"tokens = {fmt_list(c[1])}", f"efficiency = {fmt_list(c[2])}", ""]
            mdf, mver = table(root, system, "moe", backend, "moe_perf")
            for dt, names in MOE_DTYPES.items():
                pk = peak(gpu, dt)
                if mdf is None or pk <= 0:
                    continue
                c = moe_curves(mdf, names, pk)
                if c:
                    for mtp, mep, xs, ys in c[1]:
                        lines += ["[[moe]]", f'engine = "{backend}"', f'dtype = "{dt}"', f"tp = {mtp}", f"ep = {mep}",
                                  f'source = "moe/{backend}/{mver}/moe_perf.parquet ({c[0]})"',
                                  f"tokens_per_expert = {fmt_list(xs)}", f"efficiency = {fmt_list(ys)}", ""]
            tdf, tver = table(root, system, "attention", backend, "generation_attention_perf")
            if tdf is not None:
                x = tdf[(tdf.batch_size == 1) & (tdf.step <= 127) & (tdf.window_size == 0)]
                if len(x):
                    lines += ["[[attention]]", f'engine = "{backend}"',
                              f'source = "attention/{backend}/{tver}/generation_attention_perf.parquet"',
                              f"decode_floor_us = {float(x.latency.median() * 1e3):.3g}", ""]
            adf, aver = table(root, system, "comm", backend, "custom_allreduce_perf")
            src = f"comm/{backend}/{aver}/custom_allreduce_perf.parquet"
            if adf is None:
                ps = sorted(glob.glob(f"{root}/{system}/comm/nccl/*/nccl_perf.parquet"), key=lambda p: vkey(p.split("/")[-2]))
                if ps:
                    adf = pd.read_parquet(ps[-1])
                    src = "comm/nccl/" + ps[-1].split("/")[-2] + "/nccl_perf.parquet"
            if adf is not None:
                for n, b, us in allreduce_curves(adf):
                    lines += ["[[allreduce]]", f'engine = "{backend}"', f"gpus = {n}", f'source = "{src}"',
                              f"bytes = {fmt_list(b)}", f"us = {fmt_list(us)}", ""]
        path = os.path.join(out, GPU_FILES[gname] + ".toml")
        with open(path, "w") as f:
            f.write("\n".join(lines))
        print(path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
