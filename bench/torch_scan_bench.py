"""mambacpp.torch.selective_scan_fn beside mamba_ssm's selective_scan_fn on one GPU, in one process: the
forward and forward + backward of the selective scan (delta_softplus, D, z, delta_bias: what Mamba's block
calls), the official kernel benchmark's shapes, bf16, median milliseconds by triton's do_bench; and how far
the two outputs and gradients are from each other and from an fp32 run of ours. JSON lines on stdout.

   PYTHONPATH=build/python:/tmp/mbuild/ss:.official/src/mamba python3 bench/torch_scan_bench.py

(mamba_ssm from ../shared/official, built by its build.py; without it only our figures are printed.)"""
import json
import sys

import torch
from triton.testing import do_bench

from mambacpp.torch import selective_scan_fn as ours

try:
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as official
except ImportError as e:  # noqa: F841
    official = None

dev = "cuda"
gpu = torch.cuda.get_device_name()


def emit(**kw):
    kw["gpu"] = gpu
    print(json.dumps(kw), flush=True)


def inputs(b, d, l, n, dtype, grad=False):
    """The official bench.py's inputs (seed 0), in the layouts of mamba_ssm: u, delta, z (b, d, l)."""
    g = torch.Generator(device=dev).manual_seed(0)
    u = torch.randn(b, d, l, device=dev, generator=g).to(dtype)
    delta = (0.5 * torch.rand(b, d, l, device=dev, generator=g) - 0.25).to(dtype)
    A = -torch.exp(torch.randn(d, n, device=dev, generator=g) * 0.5)
    B = torch.randn(b, n, l, device=dev, generator=g).to(dtype)
    C = torch.randn(b, n, l, device=dev, generator=g).to(dtype)
    D = torch.randn(d, device=dev, generator=g)
    z = torch.randn(b, d, l, device=dev, generator=g).to(dtype)
    bias = torch.rand(d, device=dev, generator=g) - 4.0
    ts = [u, delta, A, B, C, D, z, bias]
    if grad:
        for t in ts:
            t.requires_grad_(True)
    return ts


def run(fn, ts, gout=None):
    out = fn(*ts[:7], delta_bias=ts[7], delta_softplus=True)
    if gout is None:
        return out
    grads = torch.autograd.grad(out, ts, gout)
    return out, grads


def rel(a, b):
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


SHAPES = [(8, 1536, 2048, 16), (8, 4096, 2048, 16), (1, 1536, 8192, 16)]
impls = [("mambacpp", ours)] + ([("official_cuda", official)] if official else [])
if not official:
    emit(note="mamba_ssm is not importable: our figures alone")

# Agreement at one shape: bf16 outputs and gradients of both against our fp32 run.
ts32 = inputs(2, 256, 1024, 16, torch.float32, grad=True)
g32 = torch.randn(2, 256, 1024, device=dev)
ref_out, ref_grads = run(ours, ts32, g32)
for name, fn in impls:
    ts = [t.detach().clone().to(torch.bfloat16) if t.dtype == torch.float32 and t.dim() == 3 else t.detach().clone()
          for t in ts32]
    for t in ts:
        t.requires_grad_(True)
    out, grads = run(fn, ts, g32.to(torch.bfloat16))
    emit(check="vs_mambacpp_fp32", impl=name, dtype="bf16", out_rel=rel(out, ref_out),
         grad_rel={k: rel(g, r) for k, g, r in zip("u delta A B C D z bias".split(), grads, ref_grads)})

for (b, d, l, n) in SHAPES:
    for name, fn in impls:
        ts = inputs(b, d, l, n, torch.bfloat16)
        ms = do_bench(lambda: run(fn, ts), warmup=50, rep=300, return_mode="median")
        emit(figure="scan_fwd", impl=name, B=b, D=d, L=l, N=n, dtype="bf16", ms=ms)
        ts = inputs(b, d, l, n, torch.bfloat16, grad=True)
        gout = torch.randn(b, d, l, device=dev, dtype=torch.bfloat16)
        ms2 = do_bench(lambda: run(fn, ts, gout), warmup=20, rep=200, return_mode="median")
        emit(figure="scan_fwd_bwd", impl=name, B=b, D=d, L=l, N=n, dtype="bf16", ms=ms2)
        del ts, gout
        torch.cuda.empty_cache()
# Where the time of one call goes at each shape: the CUDA kernels of a forward and of a forward and
# backward, summed by name (torch.profiler), for each implementation.
for (b, d, l, n) in SHAPES:
    for name, fn in impls:
        for what in ("fwd", "fwd_bwd"):
            ts = inputs(b, d, l, n, torch.bfloat16, grad=what == "fwd_bwd")
            gout = torch.randn(b, d, l, device=dev, dtype=torch.bfloat16) if what == "fwd_bwd" else None
            for _ in range(3):
                run(fn, ts, gout)
            torch.cuda.synchronize()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                run(fn, ts, gout)
                torch.cuda.synchronize()
            kernels = {}
            for e in prof.events():
                if e.device_type == torch.autograd.DeviceType.CUDA:
                    k = kernels.setdefault(e.name[:90], [0, 0.0])
                    k[0] += 1
                    k[1] += getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0)) / 1000  # us -> ms
            total = round(sum(v[1] for v in kernels.values()), 4)
            emit(profile=what, impl=name, B=b, D=d, L=l, N=n, dtype="bf16", total_ms=total,
                 kernels=sorted(([k, c, round(ms, 4)] for k, (c, ms) in kernels.items()), key=lambda r: -r[2]))
            del ts, gout
sys.exit(0)
