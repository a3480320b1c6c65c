#!/usr/bin/env python3
"""Interoperability checks run by crates/server/tests/python_interop.rs against live
`switchyard serve` / `switchyard worker` instances on loopback, using third-party clients:

  openai      the official `openai` client streams chat and completions through serve
  subscribe   a pyzmq + msgpack subscriber decodes a worker's KV events (vLLM wire format)
  publish     a pyzmq + msgpack publisher emits vLLM-format KV events (positional or map)
  replay      a pyzmq DEALER fetches a worker's buffered KV events over vLLM's replay protocol
  publish-replay
              a publisher with vLLM's replay socket (ROUTER) that loses one batch on the
              live stream: the subscriber must recover it by replay

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
        worker = raw.headers.get("x-switchyard-worker-id")
        check(worker, "missing x-switchyard-worker-id header")
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


END_SEQ = (-1).to_bytes(8, "big", signed=True)


def cmd_replay(a):
    import msgpack
    import zmq

    prompts = [list(range(50_000 + 1000 * i, 50_000 + 1000 * i + 48)) for i in range(2)]
    for p in prompts:  # 3 blocks of 16 each, cached before anyone asks for events
        post(a.http + "/v1/completions", {"model": a.model, "prompt": p, "max_tokens": 2})
    ctx = zmq.Context()
    d = ctx.socket(zmq.DEALER)
    d.connect(a.endpoint)
    # vLLM's request: [b"", start_seq as 8 bytes big-endian] (a REQ socket adds the b"").
    d.send_multipart([b"", (0).to_bytes(8, "big")])
    seqs, stored = [], []
    while True:
        check(d.poll(5000), "replay did not answer within 5 s")
        frames = d.recv_multipart()
        check(len(frames) == 3 and frames[0] == b"", f"expected [b'', seq, payload], got {frames!r:.200}")
        if frames[1] == END_SEQ:
            check(frames[2] == b"", "end marker with a payload")
            break
        seq = int.from_bytes(frames[1], "big")
        seqs.append(seq)
        ts, events, rank = msgpack.unpackb(frames[2], raw=False, strict_map_key=False)
        for ev in events:
            if ev[0] == "BlockStored":
                stored.append(ev[3])
    check(seqs == list(range(len(seqs))) and seqs, f"replayed seqs {seqs} not 0..n")
    check(all(p in stored for p in prompts), f"prompts not among stored token_ids ({len(stored)} events)")
    # From the last one only.
    d.send_multipart([b"", seqs[-1].to_bytes(8, "big")])
    got = []
    while True:
        check(d.poll(5000), "second replay did not answer")
        f = d.recv_multipart()
        if f[1] == END_SEQ:
            break
        got.append(int.from_bytes(f[1], "big"))
    check(got == [seqs[-1]], f"replay from {seqs[-1]} gave {got}")
    print(f"replay: ok, {len(seqs)} batches")


def cmd_publish_replay(a):
    """vLLM's publisher semantics: every batch is buffered, the ROUTER answers
    [id, b"", start] with [id, b"", seq, payload]... then [id, b"", END_SEQ, b""]."""
    import msgpack
    import zmq

    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.bind(a.bind)
    router = ctx.socket(zmq.ROUTER)
    router.bind(a.replay)
    buffer = []

    def stored(hashes, parent, tokens):
        return ["BlockStored", hashes, parent, tokens, 16, None, "GPU"]

    def emit(events, send=True):
        seq = len(buffer)
        payload = msgpack.packb([time.time(), events, 0])
        buffer.append((seq, payload))
        if send:
            pub.send_multipart([b"", seq.to_bytes(8, "big"), payload])

    def blocks(first, base):
        toks = list(range(first, first + 8 * 16))
        hs = [base + i for i in range(8)]
        return toks, hs

    ta, ha = blocks(a.first_token, 2**63 + 1000)
    tb, hb = blocks(a.first_token + 10_000, 2**63 + 2000)
    # Published before any subscriber: only a replay from 0 can deliver them.
    emit([stored(ha[:4], None, ta[:64])])
    emit([stored(ha[4:], ha[3], ta[64:])])
    served, dropped_at = 0, None
    end = time.time() + a.seconds
    print("publishing", flush=True)
    while time.time() < end:
        if router.poll(20):
            frames = router.recv_multipart()
            if len(frames) != 3:
                continue
            client, _, start = frames
            start = int.from_bytes(start, "big")
            for seq, payload in buffer:
                if seq >= start:
                    router.send_multipart([client, b"", seq.to_bytes(8, "big"), payload])
            router.send_multipart([client, b"", END_SEQ, b""])
            served += 1
            if dropped_at is None:
                dropped_at = time.time() + 1.5
        if dropped_at is not None and time.time() >= dropped_at and len(buffer) == 2:
            # The subscriber is connected by now. Batch 2 is lost on the way (buffered
            # only); batch 3 arrives and names batch 2's last block as its parent.
            emit([stored(hb[:4], None, tb[:64])], send=False)
            emit([stored(hb[4:], hb[3], tb[64:])])
            print("dropped batch 2, sent batch 3", flush=True)


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
    r = sp.add_parser("replay")
    r.add_argument("--endpoint", required=True)
    r.add_argument("--http", required=True)
    r.add_argument("--model", default="Qwen3-32B")
    pr = sp.add_parser("publish-replay")
    pr.add_argument("--bind", required=True)
    pr.add_argument("--replay", required=True)
    pr.add_argument("--first-token", type=int, default=1)
    pr.add_argument("--seconds", type=float, default=20)
    a = p.parse_args()
    {
        "openai": cmd_openai,
        "subscribe": cmd_subscribe,
        "publish": cmd_publish,
        "replay": cmd_replay,
        "publish-replay": cmd_publish_replay,
    }[a.cmd](a)


if __name__ == "__main__":
    main()
