"""Added latency of a router hop: sequential non-streamed completions over one kept-alive
connection, straight to a worker and through each router; prints p50/p99 and the added p50.
Used by scripts/router-compare.sh (stdlib only)."""
import http.client
import json
import statistics
import sys
import time
from urllib.parse import urlparse


def latencies(url, body, n):
    u = urlparse(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    out = []
    for i in range(n + 20):
        t = time.perf_counter()
        c.request("POST", "/v1/completions", body=body, headers={"content-type": "application/json"})
        r = c.getresponse()
        data = r.read()
        if r.status != 200:
            raise SystemExit(f"{url}: {r.status} {data[:200]!r}")
        if i >= 20:  # warm-up
            out.append((time.perf_counter() - t) * 1e6)
    c.close()
    return out


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(p / 100 * len(v)))]


def main():
    direct, n = sys.argv[1], int(sys.argv[2])
    routers = [a.split("=", 1) for a in sys.argv[3:]]
    prompts = {
        "6-token": "Say hello to the world now",
        "1,050-token": " ".join(f"word{i % 97}" for i in range(520)),
    }
    print(f"{'prompt':<12} {'path':<26} {'p50 us':>8} {'p99 us':>8} {'added p50 us':>13}")
    for name, text in prompts.items():
        body = json.dumps({"model": "Qwen3-32B", "prompt": text, "max_tokens": 1})
        # Interleave rounds so that machine noise hits every path alike.
        samples = {"direct": [], **{r: [] for r, _ in routers}}
        for _ in range(3):
            samples["direct"] += latencies(direct, body, n)
            for r, url in routers:
                samples[r] += latencies(url, body, n)
        base = statistics.median(samples["direct"])
        for path, v in samples.items():
            added = "" if path == "direct" else f"{statistics.median(v) - base:>13.0f}"
            print(f"{name:<12} {path:<26} {statistics.median(v):>8.0f} {pct(v, 99):>8.0f} {added}")


if __name__ == "__main__":
    main()
