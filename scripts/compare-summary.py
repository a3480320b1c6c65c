#!/usr/bin/env python3
"""Compare two `lab ab` results folders: statistics in summary.json (timing fields ignored)
and the per-request records, byte for byte. Exit 1 on any difference."""
import json, sys, pathlib

# Provenance, not statistics: the version, and where the trace came from (a synthesized
# trace reads "(cached)" on a second run).
IGNORE = {"version", "origin"}

def strip(v):
    if isinstance(v, dict):
        return {k: strip(x) for k, x in v.items() if k not in IGNORE}
    if isinstance(v, list):
        return [strip(x) for x in v]
    return v

def main(a, b):
    a, b = pathlib.Path(a), pathlib.Path(b)
    ok = True
    sa = strip(json.loads((a / "summary.json").read_text()))
    sb = strip(json.loads((b / "summary.json").read_text()))
    if sa != sb:
        ok = False
        def diff(x, y, path=""):
            if type(x) != type(y):
                print(f"  {path}: {x!r} != {y!r}"); return
            if isinstance(x, dict):
                for k in sorted(set(x) | set(y)):
                    diff(x.get(k), y.get(k), f"{path}.{k}")
            elif isinstance(x, list):
                if len(x) != len(y):
                    print(f"  {path}: length {len(x)} != {len(y)}")
                for i, (p, q) in enumerate(zip(x, y)):
                    diff(p, q, f"{path}[{i}]")
            elif x != y:
                print(f"  {path}: {x!r} != {y!r}")
        print("summary.json differs:")
        diff(sa, sb)
    for f in ["requests-a.jsonl", "requests-b.jsonl", "series-a.json", "series-b.json"]:
        if (a / f).read_bytes() != (b / f).read_bytes():
            ok = False
            print(f"{f} differs")
    print("identical" if ok else "DIFFERENT")
    return 0 if ok else 1

if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
