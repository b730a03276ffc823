#!/usr/bin/env python3
"""Fits the polynomial p of softplus in src/ops/cuda/common.cuh: log1p(y) ≈ y·p(y) on [0, 1].

Iteratively reweighted least squares on Chebyshev nodes (towards the minimax fit of the relative error),
then the error of the fp32 Horner evaluation on a fine grid, as the kernel computes it.
usage: python3 dev/cuda/fit_log1p.py [degree]
"""
import sys

import numpy as np

deg = int(sys.argv[1]) if len(sys.argv) > 1 else 8
x = np.cos(np.pi * (np.arange(4000) + 0.5) / 4000) * 0.5 + 0.5
fx = np.log1p(x) / x
w = np.ones_like(x)
for _ in range(30):
    c, *_ = np.linalg.lstsq(np.vander(x, deg + 1) * w[:, None], fx * w, rcond=None)
    err = np.abs(np.polyval(c, x) - fx) / fx
    w = w * (err / err.max()) ** 0.3 + 1e-3
c32 = c.astype(np.float32)
y = np.linspace(0, 1, 200001).astype(np.float32)[1:]
p = np.full_like(y, c32[0])
for k in c32[1:]:
    p = (p * y + k).astype(np.float32)
rel = np.abs((y * p).astype(np.float64) - np.log1p(y.astype(np.float64))) / np.log1p(y.astype(np.float64))
print(f"degree {deg}: max relative error {rel.max():.3g} (fp32 Horner)")
print("coefficients, highest power first:", ", ".join(repr(float(v)) for v in c32))
