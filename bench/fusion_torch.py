#!/usr/bin/env python3
"""The fusion of kernels/fusion.hpp written in PyTorch: the peer of dp_bench_fusion.

Same work per frame as the CUDA kernel: each spatial teacher resampled bilinearly to the grid
(align_corners=False), its per-channel moments folded into EMA statistics, standardised with the
statistics as they stood before the frame, cast to the fused dtype and written at its offset;
vector teachers standardised per element; the mask written last. Timed with CUDA events, median
over iterations, eager and (where it works) torch.compile.

Usage: fusion_torch.py --spec '<json>' [--iters N] [--warmup N]
Prints one JSON object on stdout: {"torch": version, "device": name, "eager_ms": ..., "compile_ms": ...
or null, "compile_error": ...}.
"""
import argparse
import json
import statistics
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", required=True, help="workload JSON, as dp_bench_fusion writes it")
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    args = ap.parse_args()
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        print(json.dumps({"error": f"torch is not importable: {e}"}))
        return 3
    if not torch.cuda.is_available():
        print(json.dumps({"error": "torch sees no CUDA device"}))
        return 3
    spec = json.loads(args.spec)
    dt = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
    dev = torch.device("cuda")
    gh, gw = spec["grid"]
    out_dtype = dt[spec["dtype"]]
    m = float(spec["momentum"])
    eps = float(spec["eps"])
    teachers = spec["teachers"]
    inputs = [torch.randn(t["shape"], device=dev).to(dt[t["dtype"]]) for t in teachers]
    sizes = [t["shape"][0] * gh * gw if len(t["shape"]) == 3 else t["shape"][0] for t in teachers]
    total = sum(sizes) + len(teachers)
    out = torch.empty(total, device=dev, dtype=out_dtype)
    m1 = [torch.zeros(t["shape"][0], device=dev, dtype=torch.float64) for t in teachers]
    m2 = [torch.ones(t["shape"][0], device=dev, dtype=torch.float64) for t in teachers]

    def fuse(inputs, m1, m2):
        off = 0
        for i, x in enumerate(inputs):
            if x.dim() == 3:
                v = F.interpolate(x.float()[None], size=(gh, gw), mode="bilinear", align_corners=False)[0]
                e1 = v.mean(dim=(1, 2), dtype=torch.float64)
                e2 = (v.double() * v.double()).mean(dim=(1, 2))
                mean = m1[i].float()[:, None, None]
                scale = torch.rsqrt((m2[i] - m1[i] * m1[i]).clamp_min(0) + eps).float()[:, None, None]
            else:
                v = x.float()
                e1 = v.double()
                e2 = v.double() * v.double()
                mean = m1[i].float()
                scale = torch.rsqrt((m2[i] - m1[i] * m1[i]).clamp_min(0) + eps).float()
            n = v.numel()
            out[off:off + n] = ((v - mean) * scale).flatten().to(out_dtype)
            off += n
            m1[i].mul_(1 - m).add_(e1, alpha=m)
            m2[i].mul_(1 - m).add_(e2, alpha=m)
        out[off:] = 1
        return out

    def timed(fn):
        for _ in range(args.warmup):
            fn(inputs, m1, m2)
        torch.cuda.synchronize()
        times = []
        for _ in range(args.iters):
            a = torch.cuda.Event(enable_timing=True)
            b = torch.cuda.Event(enable_timing=True)
            a.record()
            fn(inputs, m1, m2)
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        return statistics.median(times)

    result = {"torch": torch.__version__, "device": torch.cuda.get_device_name(), "eager_ms": timed(fuse),
              "compile_ms": None}
    if not args.no_compile:
        try:
            result["compile_ms"] = timed(torch.compile(fuse))
        except Exception as e:  # noqa: BLE001 - report any failure of the compiler, keep the eager figure
            result["compile_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
