#!/usr/bin/env python3
"""Helpers of scripts/aiperf-compare.sh (run with the AIPerf venv's python).

  tokenizer TIKTOKEN_FILE HF_HOME   build a Hugging Face tokenizer equivalent to tiktoken's
                                    o200k_base (the simulated worker's tokenizer) from the
                                    local .tiktoken file, offline, as the cached Hub repo
                                    `switchyard/o200k_base` under HF_HOME, and check it token
                                    for token against tiktoken on a text corpus
  slice TRACE OUT [options]         write a Mooncake JSONL slice both tools replay
  compare AIPERF_DIR SWITCHYARD_DIR compare the two runs; exit 1 if a metric differs > tol
  overhead aiperf|switchyard DIR R  one line of scripts/bench-overhead.sh (dispatch lag of a
                                    constant-rate run at R req/s)
"""

import argparse
import glob
import gzip
import json
import math
import os
import sys

# tiktoken's o200k_base pre-tokenizer pattern (as in tiktoken and tiktoken-rs).
O200K_PATTERN = "|".join(
    [
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"\p{N}{1,3}",
        r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
        r"\s*[\r\n]+",
        r"\s+(?!\S)",
        r"\s+",
    ]
)
O200K_SPECIAL = {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"


# ------------------------------------------------------------------------------- tokenizer
TOKENIZER_REPO = "switchyard/o200k_base"
SNAPSHOT = "0" * 40


def tokenizer_snapshot_dir(hf_home):
    """Where the tokenizer lives in HF_HOME's Hub cache layout. AIPerf 0.13 with HF_HUB_OFFLINE
    set loads every tokenizer through snapshot_download(local_files_only=True), which rejects
    plain directory paths, so the tokenizer is installed as an (offline) cached Hub repo."""
    repo = os.path.join(hf_home, "hub", "models--" + TOKENIZER_REPO.replace("/", "--"))
    return repo, os.path.join(repo, "snapshots", SNAPSHOT)


def cmd_tokenizer(a):
    import hashlib

    with open(a.tiktoken_file, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != O200K_SHA256:
        sys.exit(f"{a.tiktoken_file}: not o200k_base (sha256 {digest})")
    repo, out_dir = tokenizer_snapshot_dir(a.hf_home)
    if os.path.exists(os.path.join(out_dir, "tokenizer.json")):
        print(f"tokenizer: {TOKENIZER_REPO} already in {a.hf_home}")
        return
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tok = TikTokenConverter(vocab_file=a.tiktoken_file, pattern=O200K_PATTERN).converted()
    # Special tokens at their tiktoken ids. No BOS/EOS is declared on purpose: AIPerf prepends
    # the BOS (else EOS) to every hash-id block, and the worker tokenizes a prompt's text
    # with special tokens treated as ordinary text, so "<|endoftext|>" would count ~7 tokens
    # per block there and one on AIPerf's side.
    for text, id_ in sorted(O200K_SPECIAL.items(), key=lambda kv: kv[1]):
        while tok.get_vocab_size(with_added_tokens=True) < id_:
            # o200k has unused ids between the last rank and the special tokens.
            tok.add_tokens([AddedToken(f"<|reserved_{tok.get_vocab_size(True)}|>", special=True)])
        tok.add_special_tokens([AddedToken(text, special=True, normalized=False)])
        got = tok.token_to_id(text)
        if got != id_:
            sys.exit(f"special token {text}: id {got}, expected {id_}")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False)
    fast.model_max_length = 1 << 30
    tmp = out_dir + ".tmp"
    os.makedirs(tmp, exist_ok=True)
    fast.save_pretrained(tmp)
    check_tokenizer(tmp, a.tiktoken_file)
    os.replace(tmp, out_dir)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(SNAPSHOT)
    print(f"tokenizer: {TOKENIZER_REPO} (o200k_base, {tok.get_vocab_size(True)} ids) in {a.hf_home}")


def check_tokenizer(out_dir, tiktoken_file):
    """The HF tokenizer must give tiktoken's ids (AIPerf's ISL/OSL counts = the worker's)."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    from transformers import AutoTokenizer

    enc = tiktoken.Encoding(
        name="o200k_base_local",
        pat_str=O200K_PATTERN,
        mergeable_ranks=load_tiktoken_bpe(tiktoken_file),
        special_tokens=O200K_SPECIAL,
    )
    hf = AutoTokenizer.from_pretrained(out_dir)
    texts = [
        " the quick brown fox jumps over a lazy dog and runs far into the green field",
        "Hello, world! It's 2026-11-21; naïve café Ünïcödé 東京 αβγ 12345678 \n\n  \t x",
    ]
    import aiperf

    corpus = glob.glob(
        os.path.join(os.path.dirname(aiperf.__file__), "dataset/generator/assets/*.txt")
    )
    for p in corpus[:1]:
        with open(p, encoding="utf-8") as f:
            texts.append(f.read()[:400_000])
    for t in texts:
        a = hf.encode(t, add_special_tokens=False)
        b = enc.encode_ordinary(t)
        if a != b:
            i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            sys.exit(f"tokenizer mismatch at token {i}: hf {a[i:i + 5]} tiktoken {b[i:i + 5]}")
        if hf.decode(a) != t:
            sys.exit("tokenizer: decode(encode(text)) != text")
    print(f"tokenizer: identical to tiktoken o200k_base on {sum(len(t) for t in texts)} chars")


# ------------------------------------------------------------------------------- slice
def cmd_slice(a):
    """First N rows of the trace; input lengths divided by --isl-div (hash-id blocks of
    512/isl_div tokens keep the trace's block structure), output lengths divided by
    --osl-div (at least --min-osl, so TPOT averages several gaps), timestamps divided by
    --time-div (integer ms) and pushed apart to at least --min-gap-ms, so that both tools put
    the requests on the wire in the same order (a round-robin router then places every
    request on the same replica in both runs)."""
    opener = gzip.open if a.trace.endswith(".gz") else open
    rows = []
    with opener(a.trace, "rt") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
            if len(rows) >= a.requests:
                break
    bs = 512 // a.isl_div
    t0 = rows[0]["timestamp"]
    sizes = {}
    out = []
    prev_ts = None
    for r in rows:
        isl = math.ceil(r["input_length"] / a.isl_div)
        ids = r.get("hash_ids") or []
        n = len(ids)
        final = isl - (n - 1) * bs
        if n and not 0 < final <= bs:
            sys.exit(f"slice: row {r}: last block {final} not in (0, {bs}]")
        for i, h in enumerate(ids):
            s = final if i == n - 1 else bs
            if sizes.setdefault(h, s) != s:
                sys.exit(f"slice: hash id {h} at two sizes ({sizes[h]}, {s}): AIPerf rejects it")
        osl = max(a.min_osl, math.ceil(r["output_length"] / a.osl_div))
        ts = round((r["timestamp"] - t0) / a.time_div)
        if prev_ts is not None:
            ts = max(ts, prev_ts + a.min_gap_ms)
        prev_ts = ts
        out.append({"timestamp": ts, "input_length": isl, "output_length": osl, "hash_ids": ids})
    with open(a.out, "w") as f:
        for r in out:
            f.write(json.dumps(r) + "\n")
    isl = sum(r["input_length"] for r in out)
    osl = sum(r["output_length"] for r in out)
    print(
        f"slice: {len(out)} requests over {out[-1]['timestamp'] / 1000:.1f} s, "
        f"ISL mean {isl / len(out):.0f}, OSL mean {osl / len(out):.0f}, block size {bs}"
    )


# ------------------------------------------------------------------------------- compare
def aiperf_stats(d):
    """Per-request values from AIPerf's profile_export.jsonl (ms), recomputed with the same
    percentile definition for both tools, plus AIPerf's own summary for cross-checking."""
    paths = glob.glob(os.path.join(d, "**/profile_export.jsonl"), recursive=True)
    if not paths:
        sys.exit(f"compare: no profile_export.jsonl under {d}")
    vals = {"ttft": [], "tpot": [], "e2e": [], "isl": [], "osl": [], "srv_isl": [], "cached": []}
    by_id = {}
    errors = 0
    with open(paths[0]) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("error"):
                errors += 1
                continue
            m = rec.get("metrics") or {}

            def get(tag):
                v = m.get(tag)
                return None if v is None else v.get("value")

            for key, tag in [
                ("ttft", "time_to_first_token"),
                ("tpot", "inter_token_latency"),
                ("e2e", "request_latency"),
                ("isl", "input_sequence_length"),
                ("osl", "output_sequence_length"),
                ("srv_isl", "usage_prompt_tokens"),
                ("cached", "usage_prompt_cache_read_tokens"),
            ]:
                v = get(tag)
                if v is not None:
                    vals[key].append(float(v))
            # "session_000042": the trace row (AIPerf numbers fixed-schedule rows in order).
            conv = (rec.get("metadata") or {}).get("conversation_id") or ""
            if conv.rsplit("_", 1)[-1].isdigit():
                by_id[int(conv.rsplit("_", 1)[-1])] = (get("time_to_first_token"), get("request_latency"))
    ids = sorted(k for k, v in by_id.items() if None not in v)
    vals["ids"] = ids
    vals["ttft_by_id"] = [by_id[i][0] for i in ids]
    vals["e2e_by_id"] = [by_id[i][1] for i in ids]
    summ = {}
    js = glob.glob(os.path.join(d, "**/profile_export_aiperf.json"), recursive=True)
    if js:
        with open(js[0]) as f:
            summ = json.load(f)
    return vals, errors, summ


def switchyard_stats(d):
    vals = {"ttft": [], "tpot": [], "e2e": [], "isl": [], "osl": [], "srv_isl": [], "cached": []}
    by_id = {}
    errors = 0
    with open(os.path.join(d, "requests.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r.get("status", "ok") != "ok":
                errors += 1
                continue
            sent, first, last = r.get("sent"), r.get("first_token"), r.get("finish")
            if sent is None or first is None or last is None:
                errors += 1
                continue
            out = r.get("output_tokens") or 0
            vals["ttft"].append((first - sent) * 1e3)
            vals["e2e"].append((last - sent) * 1e3)
            by_id[r.get("id")] = ((first - sent) * 1e3, (last - sent) * 1e3)
            if out >= 2:
                vals["tpot"].append((last - first) * 1e3 / (out - 1))
            # Switchyard's input and cached counts are the server's usage.
            vals["isl"].append(float(r.get("input_tokens") or 0))
            vals["srv_isl"].append(float(r.get("input_tokens") or 0))
            vals["cached"].append(float(r.get("cached_tokens") or 0))
            vals["osl"].append(float(out))
    vals["by_id"] = by_id
    with open(os.path.join(d, "summary.json")) as f:
        summ = json.load(f)
    return vals, errors, summ


def percentile(xs, p):
    """numpy's default (linear interpolation between closest ranks), as both tools use."""
    s = sorted(xs)
    if not s:
        return float("nan")
    k = (len(s) - 1) * p / 100
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def cmd_compare(a):
    av, aerr, asum = aiperf_stats(a.aiperf_dir)
    sv, serr, ssum = switchyard_stats(a.switchyard_dir)
    # Pair the same trace rows (AIPerf's rows that switchyard also completed).
    pairs = [(i, sv["by_id"][i]) for i in av["ids"] if i in sv["by_id"]]
    keep = {i for i, _ in pairs}
    av["ttft_by_id"] = [t for i, t in zip(av["ids"], av["ttft_by_id"]) if i in keep]
    av["e2e_by_id"] = [t for i, t in zip(av["ids"], av["e2e_by_id"]) if i in keep]
    sv["ttft_by_id"] = [p[0] for _, p in pairs]
    sv["e2e_by_id"] = [p[1] for _, p in pairs]
    rows = []
    fail = False
    print()
    print(f"{'metric':<28}{'AIPerf':>11}{'switchyard':>11}{'diff':>8}  verdict")
    print("-" * 66)
    for key, label in [("ttft", "TTFT"), ("tpot", "TPOT (AIPerf ITL)"), ("e2e", "E2E")]:
        for stat in ("mean", "p99"):
            x = av[key]
            y = sv[key]
            f = (lambda v: sum(v) / len(v) if v else float("nan")) if stat == "mean" else (
                lambda v: percentile(v, 99)
            )
            ax, sy = f(x), f(y)
            diff = (sy - ax) / ax if ax else float("inf")
            ok = abs(diff) <= a.tol
            fail |= not ok
            rows.append((f"{label} {stat} (ms)", ax, sy, diff, ok))
            print(
                f"{label + ' ' + stat + ' (ms)':<28}{ax:>11.2f}{sy:>11.2f}{diff * 100:>+7.1f}%  "
                + ("PASS" if ok else "FAIL")
            )
    print("-" * 66)
    n_a, n_s = len(av["e2e"]), len(sv["e2e"])
    for key, label in [
        ("isl", "input tokens/req (tool)"),
        ("srv_isl", "input tokens/req (server)"),
        ("cached", "cached tokens/req (server)"),
        ("osl", "output tokens/req (tool)"),
    ]:
        if not av[key] or not sv[key]:
            continue
        ax = sum(av[key]) / max(1, len(av[key]))
        sy = sum(sv[key]) / max(1, len(sv[key]))
        diff = (sy - ax) / ax if ax else 0.0
        print(f"{label:<28}{ax:>11.1f}{sy:>11.1f}{diff * 100:>+7.1f}%  (info)")
    for key, label in [("ttft", "TTFT"), ("e2e", "E2E")]:
        d = sorted(abs(x - y) for x, y in zip(av[key + "_by_id"], sv[key + "_by_id"]))
        if d:
            print(f"{'same request, |diff| p50 ' + label:<28}{percentile(d, 50):>19.2f} ms  (info)")
    print(f"{'requests ok / failed':<28}{f'{n_a}/{aerr}':>11}{f'{n_s}/{serr}':>11}")
    if aerr or serr or n_a != n_s or n_a == 0:
        print("FAIL: request counts differ or requests failed")
        fail = True
    # The summaries must agree with the per-request recomputation (guards the parsing).
    for key, tag in [("ttft", "time_to_first_token"), ("e2e", "request_latency")]:
        own = (asum.get(tag) or {}).get("avg")
        mine = sum(av[key]) / len(av[key]) if av[key] else None
        if own is not None and mine and abs(own - mine) > 1e-3 * abs(mine) + 0.01:
            print(f"FAIL: AIPerf's own {tag} mean {own:.3f} != recomputed {mine:.3f}")
            fail = True
    lag = (ssum.get("client") or {}).get("dispatch_lag") or {}
    if lag:
        print(
            f"switchyard dispatch lag p50 {lag.get('p50', 0) * 1e3:.3f} ms, "
            f"p99 {lag.get('p99', 0) * 1e3:.3f} ms"
        )
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(
                {
                    "tolerance": a.tol,
                    "rows": [
                        {"metric": r[0], "aiperf": r[1], "switchyard": r[2], "diff": r[3], "ok": r[4]}
                        for r in rows
                    ],
                    "requests": {"aiperf": n_a, "switchyard": n_s},
                },
                f,
                indent=1,
            )
    print()
    print("RESULT: " + ("FAIL" if fail else "PASS") + f" (tolerance {a.tol * 100:.0f}%)")
    sys.exit(1 if fail else 0)


# ------------------------------------------------------------------------------- overhead
def peak_in_flight(spans):
    ev = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    cur = peak = 0
    for _, d in ev:
        cur += d
        peak = max(peak, cur)
    return peak


def cmd_overhead(a):
    rate = float(a.rate)
    if a.tool == "switchyard":
        recs = []
        with open(os.path.join(a.dir, "requests.jsonl")) as f:
            recs = [json.loads(line) for line in f if line.strip()]
        lags = [(r["sent"] - r["scheduled"]) * 1e3 for r in recs]
        starts = sorted(r["sent"] for r in recs)
        spans = [(r["sent"], r["finish"]) for r in recs]
        failed = sum(1 for r in recs if r.get("status", "ok") != "ok")
        with open(os.path.join(a.dir, "summary.json")) as f:
            wake = (json.load(f)["client"].get("dispatcher_wake") or {}).get("p99")
        extra = f"dispatcher wake-up p99 {wake * 1e3:6.3f} ms" if wake is not None else ""
    else:
        paths = glob.glob(os.path.join(a.dir, "**/profile_export.jsonl"), recursive=True)
        if not paths:
            print(f"   aiperf     {a.mode:<8} {rate:>6.0f}/s  no records (see {a.dir}.log)")
            return
        metas, failed = [], 0
        with open(paths[0]) as f:
            for line in f:
                rec = json.loads(line)
                failed += 1 if rec.get("error") else 0
                metas.append(rec["metadata"])
        metas.sort(key=lambda m: (m.get("credit_issued_ns") or m["request_start_ns"]))
        issued = [m.get("credit_issued_ns") or m["request_start_ns"] for m in metas]
        # AIPerf's schedule is absolute (start + i/R) but its start is not exported: anchor it
        # so the earliest credit is exactly on time (its timerfd pacer never issues early).
        c0 = min(c - i * 1e9 / rate for i, c in enumerate(issued))
        sched = [c0 + i * 1e9 / rate for i in range(len(metas))]
        lags = [(m["request_start_ns"] - s) / 1e6 for m, s in zip(metas, sched)]
        credit = [((m.get("credit_issued_ns") or s) - s) / 1e6 for m, s in zip(metas, sched)]
        starts = sorted(m["request_start_ns"] / 1e9 for m in metas)
        spans = [(m["request_start_ns"], m["request_end_ns"]) for m in metas]
        extra = f"credit issue lag p99 {percentile(credit, 99):6.3f} ms"
    n = len(lags)
    span = starts[-1] - starts[0] if n > 1 else 0.0
    sent_rate = (n - 1) / span if span > 0 else float("nan")
    p99 = percentile(lags, 99)
    ok = "OK " if p99 < 1.0 and failed == 0 and sent_rate > 0.95 * rate else "   "
    print(
        f"{ok}{a.tool:<10} {a.mode:<8} {rate:>6.0f}/s  sent {n:>6} ({sent_rate:>7.1f}/s)  failed {failed:>4}  "
        f"in flight peak {peak_in_flight(spans):>5}  lag p50 {percentile(lags, 50):7.3f} ms  "
        f"p99 {p99:8.3f} ms  max {max(lags):8.3f} ms  {extra}",
        flush=True,
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tokenizer")
    t.add_argument("tiktoken_file")
    t.add_argument("hf_home")
    t.set_defaults(func=cmd_tokenizer)
    s = sub.add_parser("slice")
    s.add_argument("trace")
    s.add_argument("out")
    s.add_argument("--requests", type=int, default=200)
    s.add_argument("--isl-div", type=int, default=8)
    s.add_argument("--osl-div", type=int, default=8)
    s.add_argument("--time-div", type=float, default=4.0)
    s.add_argument("--min-osl", type=int, default=2)
    s.add_argument("--min-gap-ms", type=int, default=0)
    s.set_defaults(func=cmd_slice)
    c = sub.add_parser("compare")
    c.add_argument("aiperf_dir")
    c.add_argument("switchyard_dir")
    c.add_argument("--tol", type=float, default=0.05)
    c.add_argument("--json-out")
    c.set_defaults(func=cmd_compare)
    o = sub.add_parser("overhead")
    o.add_argument("tool", choices=["aiperf", "switchyard"])
    o.add_argument("dir")
    o.add_argument("rate")
    o.add_argument("mode", nargs="?", default="")
    o.set_defaults(func=cmd_overhead)
    a = p.parse_args()
    a.func(a)


if __name__ == "__main__":
    main()
