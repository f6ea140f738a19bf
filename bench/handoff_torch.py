#!/usr/bin/env python3
"""The torch.multiprocessing peer of dp_bench_handoff: a CUDA tensor handed from one process to
K others through torch.multiprocessing queues (CUDA IPC under the hood), paced as the native
methods are: a paced phase (one frame at a time) for latency, an unpaced phase (two frames in
flight at most) for frames per second.

Latency (CPU clock): from the producer starting to write the frame to the consumer having read
it (a reduction over the tensor, its stream synchronised), time.monotonic_ns() on both sides
(CLOCK_MONOTONIC, the clock the native methods use).

Usage: handoff_torch.py --bytes N --consumers K --frames F
Prints one JSON object: lat_cpu_us_p50, lat_cpu_us_p99, frames_per_s, cpu_us_per_frame_producer,
cpu_us_per_frame_consumer; or {"error": ...} when torch or CUDA is not there.
"""
import argparse
import json
import os
import sys
import time


def pct(v, p):
    if not v:
        return 0.0
    v = sorted(v)
    return v[min(len(v) - 1, int(p * (len(v) - 1) + 0.5))]


def consumer(index, frames, q, acks, results):
    import torch
    torch.cuda.set_device(0)
    lat = []
    cpu_at = None
    c0 = time.process_time()
    for n in range(2 * frames):
        t, t_write = q.get()
        t.sum(dtype=torch.int64).item()  # reads the whole tensor; .item() synchronises
        if n < frames:
            lat.append((time.monotonic_ns() - t_write) / 1e3)
        if n == frames - 1:
            cpu_at = (time.process_time() - c0) / frames * 1e6
        del t
        acks.put(index)
    results.put({"index": index, "lat": lat[10:] if len(lat) > 20 else lat, "cpu_us_per_frame": cpu_at})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bytes", type=int, required=True)
    ap.add_argument("--consumers", type=int, default=1)
    ap.add_argument("--frames", type=int, default=1000)
    a = ap.parse_args()
    try:
        import torch
        import torch.multiprocessing as mp
    except ImportError as e:
        print(json.dumps({"error": f"torch is not importable: {e}"}))
        return 0
    if not torch.cuda.is_available():
        print(json.dumps({"error": "torch sees no CUDA device"}))
        return 0
    ctx = mp.get_context("spawn")
    queues = [ctx.Queue() for _ in range(a.consumers)]
    acks = ctx.Queue()
    results = ctx.Queue()
    procs = [ctx.Process(target=consumer, args=(i, a.frames, queues[i], acks, results)) for i in range(a.consumers)]
    for p in procs:
        p.start()
    torch.cuda.set_device(0)
    done = [0] * a.consumers  # frames each consumer has finished
    keep = []  # the producer keeps each tensor alive until every consumer has finished it

    def wait_acks(need):
        while min(done) < need:
            done[acks.get()] += 1

    def one(n):
        t_write = time.monotonic_ns()
        t = torch.empty(a.bytes, dtype=torch.uint8, device="cuda")
        t.fill_(n & 0xFF)
        torch.cuda.current_stream().synchronize()  # the consumers must see the written tensor
        for q in queues:
            q.put((t, t_write))
        keep.append(t)
        if len(keep) > 3:
            keep.pop(0)

    c0 = time.process_time()
    for n in range(a.frames):
        wait_acks(n)  # one frame at a time
        one(n)
    wait_acks(a.frames)
    cpu_p = (time.process_time() - c0) / a.frames * 1e6
    t0 = time.monotonic_ns()
    for n in range(a.frames, 2 * a.frames):
        wait_acks(n - 1)  # two frames in flight at most
        one(n)
    wait_acks(2 * a.frames)
    secs = (time.monotonic_ns() - t0) / 1e9
    res = [results.get() for _ in procs]
    for p in procs:
        p.join(timeout=60)
    lat_p50 = sorted(pct(r["lat"], 0.5) for r in res)
    print(json.dumps({
        "torch": torch.__version__,
        "lat_cpu_us_p50": pct(lat_p50, 0.5),
        "lat_cpu_us_p99": max(pct(r["lat"], 0.99) for r in res),
        "frames_per_s": a.frames / secs,
        "cpu_us_per_frame_producer": cpu_p,
        "cpu_us_per_frame_consumer": pct([r["cpu_us_per_frame"] for r in res], 0.5),
    }))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
