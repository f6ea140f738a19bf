#!/usr/bin/env python3
"""The torch.multiprocessing peer of dp_bench_handoff: a CUDA tensor handed from one process to
K others through torch.multiprocessing queues (CUDA IPC under the hood), paced as the native
methods are: a paced phase (one frame at a time) for latency, an unpaced phase (two frames in
flight at most) for frames per second.

The frame is written and read as the native methods' frames are, with the same two kernels
(libdp_bench_clock, loaded through ctypes, runs kernels/timing.hpp on torch's current stream):
the producer's kernel stamps %globaltimer and the frame's number into the tensor's first 16
bytes, the consumer's kernel reads them back. So the figures are:
- latency, CPU clock: from the producer starting to write the frame to the consumer having read
  it (its stream synchronised), time.monotonic_ns() on both sides (CLOCK_MONOTONIC, the clock the
  native methods use);
- latency, GPU clock: the consumer kernel's %globaltimer minus the producer kernel's stamp;
- bad: frames whose number read back is not the one sent.

The producer does not synchronise its stream before it puts a tensor in the queues: when torch
shares the tensor (in the queue's feeder thread) it records an event on that thread's current
stream, the device's default stream, which is the stream the producer stamps on here; a consumer
opening the tensor makes its current stream wait on that event
(torch/multiprocessing/reductions.py), so the consumer's kernel runs after the producer's. (A
producer writing on another stream would have to synchronise, or share from that stream.) (A storage a consumer still holds from an earlier frame is reused without
that wait; this consumer drops each tensor before the next, and the frame number it reads back
would show a frame read too early.)

With --spin-us, consumers poll their queue that long before they block, as the native consumers
poll for a frame.

Usage: handoff_torch.py --bytes N --consumers K --frames F --clock-lib PATH [--spin-us N]
Prints one JSON object: lat_cpu_us_p50, lat_cpu_us_p99, lat_gpu_us_p50, lat_gpu_us_p99, bad,
frames_per_s, cpu_us_per_frame_producer, cpu_us_per_frame_consumer; or {"error": ...} when torch,
CUDA or the clock library is not there.
"""
import argparse
import json
import os
import queue
import sys
import time


def pct(v, p):
    if not v:
        return 0.0
    v = sorted(v)
    return v[min(len(v) - 1, int(p * (len(v) - 1) + 0.5))]


class Clock:
    """libdp_bench_clock through ctypes: the native methods' stamp and read kernels."""

    def __init__(self, path):
        import ctypes
        self.lib = ctypes.CDLL(path)
        self.lib.dp_bench_clock_stamp.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_void_p]
        self.lib.dp_bench_clock_since.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        self.lib.dp_bench_clock_stamp.restype = ctypes.c_int
        self.lib.dp_bench_clock_since.restype = ctypes.c_int
        self.lib.dp_bench_clock_error.restype = ctypes.c_char_p

    def _check(self, rc, what):
        if rc != 0:
            raise RuntimeError(f"{what}: {self.lib.dp_bench_clock_error().decode()}")

    def stamp(self, ptr, seq, stream):
        self._check(self.lib.dp_bench_clock_stamp(ptr, seq, stream), "dp_bench_clock_stamp")

    def since(self, ptr, out, stream):
        self._check(self.lib.dp_bench_clock_since(ptr, out, stream), "dp_bench_clock_since")


def receive(q, spin_us):
    """The next item of q: polled for spin_us microseconds (as the native consumers poll with
    --spin-us), then waited for."""
    if spin_us > 0:
        until = time.monotonic_ns() + spin_us * 1000
        while time.monotonic_ns() < until:
            try:
                return q.get_nowait()
            except queue.Empty:
                pass
    return q.get()


def consumer(index, frames, spin_us, clock_lib, q, acks, results):
    import torch
    torch.cuda.set_device(0)
    clock = Clock(clock_lib)
    stream = torch.cuda.current_stream()
    out = torch.zeros(2 * (2 * frames), dtype=torch.int64, device="cuda")  # [2n]: GPU-clock ns, [2n + 1]: the number read
    lat = []
    cpu_at = None
    c0 = time.process_time()
    for n in range(2 * frames):
        t, t_write = receive(q, spin_us)
        clock.since(t.data_ptr(), out.data_ptr() + 16 * n, stream.cuda_stream)
        stream.synchronize()
        if n < frames:
            lat.append((time.monotonic_ns() - t_write) / 1e3)
        if n == frames - 1:
            cpu_at = (time.process_time() - c0) / frames * 1e6
        del t
        acks.put(index)
    o = out.cpu().tolist()
    bad = sum(1 for n in range(2 * frames) if o[2 * n + 1] != n + 1)
    lat_gpu = [o[2 * n] / 1e3 for n in range(10, frames)]  # the first frames touch the mapping first
    results.put({"index": index, "lat": lat[10:] if len(lat) > 20 else lat, "lat_gpu": lat_gpu, "bad": bad,
                 "cpu_us_per_frame": cpu_at})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bytes", type=int, required=True)
    ap.add_argument("--consumers", type=int, default=1)
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--spin-us", type=int, default=0, help="consumers poll their queue this long before they block")
    ap.add_argument("--clock-lib", required=True, help="libdp_bench_clock.so (built in build/lib)")
    a = ap.parse_args()
    if a.bytes < 16:
        print(json.dumps({"error": f"--bytes {a.bytes}: a frame holds a 16-byte stamp, so at least 16"}))
        return 0
    try:
        import torch
        import torch.multiprocessing as mp
    except ImportError as e:
        print(json.dumps({"error": f"torch is not importable: {e}"}))
        return 0
    if not torch.cuda.is_available():
        print(json.dumps({"error": "torch sees no CUDA device"}))
        return 0
    try:
        clock = Clock(a.clock_lib)
    except OSError as e:
        print(json.dumps({"error": f"cannot load the GPU clock library {a.clock_lib}: {e}"}))
        return 0
    ctx = mp.get_context("spawn")
    queues = [ctx.Queue() for _ in range(a.consumers)]
    acks = ctx.Queue()
    results = ctx.Queue()
    # Daemons: if the producer fails, its exit ends the consumers instead of waiting for them.
    procs = [ctx.Process(target=consumer, args=(i, a.frames, a.spin_us, a.clock_lib, queues[i], acks, results), daemon=True)
             for i in range(a.consumers)]
    for p in procs:
        p.start()
    torch.cuda.set_device(0)
    stream = torch.cuda.current_stream()
    done = [0] * a.consumers  # frames each consumer has finished
    keep = []  # the producer keeps each tensor alive until every consumer has finished it

    def wait_acks(need):
        while min(done) < need:
            done[acks.get()] += 1

    def one(n):
        t_write = time.monotonic_ns()
        t = torch.empty(a.bytes, dtype=torch.uint8, device="cuda")
        clock.stamp(t.data_ptr(), n + 1, stream.cuda_stream)  # what the native producers write (numbers from 1)
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
    lat_gpu_p50 = sorted(pct(r["lat_gpu"], 0.5) for r in res)
    print(json.dumps({
        "torch": torch.__version__,
        "lat_cpu_us_p50": pct(lat_p50, 0.5),
        "lat_cpu_us_p99": max(pct(r["lat"], 0.99) for r in res),
        "lat_gpu_us_p50": pct(lat_gpu_p50, 0.5),
        "lat_gpu_us_p99": max(pct(r["lat_gpu"], 0.99) for r in res),
        "bad": sum(r["bad"] for r in res),
        "frames_per_s": a.frames / secs,
        "cpu_us_per_frame_producer": cpu_p,
        "cpu_us_per_frame_consumer": pct([r["cpu_us_per_frame"] for r in res], 0.5),
    }))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
