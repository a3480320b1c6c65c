#!/usr/bin/env python3
"""Interoperability checks run by crates/server/tests/python_interop.rs against live
`switchyard serve` / `switchyard worker` instances on loopback, using third-party clients:

  openai      the official `openai` client streams chat and completions through serve
  subscribe   a pyzmq + msgpack subscriber decodes a worker's KV events (vLLM wire format)
  publish     a pyzmq + msgpack publisher emits vLLM-format KV events (positional or map)

Each subcommand exits non-zero with a message on the first failed check.
"""

import argparse
import json
import struct
import sys
import time
import urllib.request


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def cmd_openai(a):
    import openai

    client = openai.OpenAI(base_url=a.base + "/v1", api_key="unused", max_retries=0)
    models = [m.id for m in client.models.list().data]
    check(a.model in models, f"model list {models}")

    # Streaming chat with usage.
    stream = client.chat.completions.create(
        model=a.model,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}],
        max_completion_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    check(usage is not None and usage.completion_tokens == 12, f"chat usage {usage}")
    check(finish == "length", f"finish_reason {finish}")
    check(len(text.split()) == 12, f"chat text {text!r}")

    # Non-streaming chat.
    r = client.chat.completions.create(
        model=a.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=5
    )
    check(r.choices[0].message.role == "assistant", "role")
    check(r.usage.completion_tokens == 5 and r.usage.prompt_tokens > 0, f"usage {r.usage}")

    # Streaming completions with a token-id prompt; repeating it hits the prefix cache (once
    # the KV events of the first run reached the router, repeats go where it is cached).
    prompt = list(range(2000, 2000 + 256))
    cached, workers = 0, []
    for attempt in range(20):
        raw = client.completions.with_raw_response.create(
            model=a.model, prompt=prompt, max_tokens=8, stream=True,
            stream_options={"include_usage": True},
        )
        worker = raw.headers.get("x-switchyard-worker")
        check(worker, "missing x-switchyard-worker header")
        workers.append(worker)
        n, usage = 0, None
        for chunk in raw.parse():
            if chunk.usage is not None:
                usage = chunk.usage
            n += len(chunk.choices)
        check(n == 8, f"completion chunks {n}")
        check(usage.prompt_tokens == 256 and usage.completion_tokens == 8, f"usage {usage}")
        cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
        if attempt > 0 and cached == 240:
            break
        time.sleep(0.1)
    # 16 blocks cached; the last is recomputed (vLLM computes at least one prompt token).
    check(cached == 240, f"repeated prompt never hit the cache (workers {workers})")

    # A long prompt (in a disaggregated deployment: prefilled remotely, then decoded).
    long = list(range(50_000, 50_000 + 2048))
    n, usage = 0, None
    for chunk in client.completions.create(
        model=a.model, prompt=long, max_tokens=8, stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.usage is not None:
            usage = chunk.usage
        n += len(chunk.choices)
    check(n == 8, f"long prompt: {n} chunks")
    check(usage.prompt_tokens == 2048 and usage.completion_tokens == 8, f"long prompt usage {usage}")

    # Errors surface as the client's typed exceptions.
    try:
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
        fail("unknown model accepted")
    except openai.NotFoundError:
        pass
    try:
        client.completions.create(model=a.model, prompt="x", max_tokens=-1)
        fail("negative max_tokens accepted")
    except openai.BadRequestError:
        pass
    print("openai: ok")


def post(url, body):
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def cmd_subscribe(a):
    import msgpack
    import zmq

    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(a.endpoint)
    deadline = time.time() + 15
    last_seq, stored, prompts, i = None, None, [], 0
    while stored is None and time.time() < deadline:
        # A fresh prompt each time: PUB drops events until the subscription is set up, and a
        # repeated prompt would hit the cache and store nothing new.
        prompt = list(range(7000 + 100 * i, 7000 + 100 * i + 48))  # 3 blocks of 16
        prompts.append(prompt)
        i += 1
        post(a.http + "/v1/completions", {"model": a.model, "prompt": prompt, "max_tokens": 2})
        while sub.poll(300):
            frames = sub.recv_multipart()
            check(len(frames) == 3, f"expected [topic, seq, payload], got {len(frames)} frames")
            check(len(frames[1]) == 8, "seq is not 8 bytes")
            (seq,) = struct.unpack(">Q", frames[1])
            check(last_seq is None or seq == last_seq + 1, f"seq {last_seq} -> {seq}")
            last_seq = seq
            batch = msgpack.unpackb(frames[2], raw=False, strict_map_key=False)
            if a.encoding == "positional":
                check(isinstance(batch, list) and len(batch) == 3, f"batch {batch!r:.200}")
                ts, events, rank = batch
                for ev in events:
                    check(isinstance(ev, list), f"event {ev!r:.200}")
                    if ev[0] == "BlockStored":
                        hashes, parent, tokens, bs = ev[1], ev[2], ev[3], ev[4]
                        stored = dict(hashes=hashes, parent=parent, tokens=tokens, bs=bs)
            else:
                check(isinstance(batch, dict), f"batch {batch!r:.200}")
                ts, events, rank = batch["ts"], batch["events"], batch["data_parallel_rank"]
                for ev in events:
                    check(isinstance(ev, dict) and "type" in ev, f"event {ev!r:.200}")
                    if ev["type"] == "BlockStored":
                        stored = dict(hashes=ev["block_hashes"], parent=ev["parent_block_hash"],
                                      tokens=ev["token_ids"], bs=ev["block_size"])
            check(isinstance(ts, float) and abs(ts - time.time()) < 60, f"ts {ts}")
            check(rank == 0, f"dp rank {rank}")
    check(stored is not None, "no BlockStored received")
    check(stored["bs"] == 16, f"block_size {stored['bs']}")
    check(stored["tokens"] in prompts, f"token_ids {stored['tokens'][:8]}...")
    check(len(stored["hashes"]) == 3, f"hashes {stored['hashes']}")
    check(all(isinstance(h, int) and 0 <= h < 2**64 for h in stored["hashes"]), "hash range")
    check(stored["parent"] is None, "parent of the first block")
    print(f"subscribe ({a.encoding}): ok, hashes {stored['hashes']}")


def cmd_publish(a):
    import msgpack
    import zmq

    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.bind(a.bind)
    tokens = list(range(a.first_token, a.first_token + a.blocks * 16))
    # Engine hashes are opaque to the router; use values above i64::MAX on purpose.
    hashes = [2**63 + 12345 + i for i in range(a.blocks)]
    half = a.blocks // 2
    # Two chained events: the second names the first's last block as its parent.
    if a.encoding == "positional":
        events = [
            ["BlockStored", hashes[:half], None, tokens[: half * 16], 16, None, "GPU"],
            ["BlockStored", hashes[half:], hashes[half - 1], tokens[half * 16:], 16, None, "GPU",
             None, None, 0],  # extra newer fields: lora_name, extra_keys, group_idx
        ]
        make = lambda evs: [time.time(), evs, 0]
    else:
        events = [
            {"type": "BlockStored", "block_hashes": hashes[:half], "parent_block_hash": None,
             "token_ids": tokens[: half * 16], "block_size": 16, "lora_id": None,
             "medium": "GPU"},
            {"type": "BlockStored", "block_hashes": hashes[half:],
             "parent_block_hash": hashes[half - 1], "token_ids": tokens[half * 16:],
             "block_size": 16, "medium": "GPU", "group_idx": 0, "kv_cache_spec_kind": "full"},
        ]
        make = lambda evs: {"ts": time.time(), "events": evs, "data_parallel_rank": 0}
    seq = 0
    end = time.time() + a.seconds
    print("publishing", flush=True)
    while time.time() < end:
        # Re-publish periodically: subscribers may join late (PUB drops until they do).
        pub.send_multipart([b"", struct.pack(">Q", seq), msgpack.packb(make(events))])
        seq += 1
        time.sleep(0.05)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sp = p.add_subparsers(dest="cmd", required=True)
    o = sp.add_parser("openai")
    o.add_argument("--base", required=True)
    o.add_argument("--model", default="Qwen3-32B")
    s = sp.add_parser("subscribe")
    s.add_argument("--endpoint", required=True)
    s.add_argument("--http", required=True)
    s.add_argument("--model", default="Qwen3-32B")
    s.add_argument("--encoding", choices=["positional", "map"], default="positional")
    b = sp.add_parser("publish")
    b.add_argument("--bind", required=True)
    b.add_argument("--encoding", choices=["positional", "map"], default="positional")
    b.add_argument("--first-token", type=int, default=1)
    b.add_argument("--blocks", type=int, default=8)
    b.add_argument("--seconds", type=float, default=20)
    a = p.parse_args()
    {"openai": cmd_openai, "subscribe": cmd_subscribe, "publish": cmd_publish}[a.cmd](a)


if __name__ == "__main__":
    main()
