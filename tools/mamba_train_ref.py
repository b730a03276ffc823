#!/usr/bin/env python3
"""Float64 PyTorch training reference for Mamba-1: loss, gradients, AdamW fixtures.

Builds on the forward reference tools/mamba_ref.py (imports its model_forward,
init and safetensors writer; nothing there is changed) and writes golden
training fixtures for the C++ trainer under tests/fixtures/train/:

    config.json, model.safetensors        tiny HF-format model (F32, tied head)
    ids.npy, targets.npy                  int32 (2, 23) batch; targets use -100 = ignore
    loss.npy                              float64 (): mean CE over non-ignored positions
    grads.safetensors                     F32 d loss / d param (float64 autograd), HF names
    trajectory{,_wd,_clip}.npy            float64 (10,): loss before each AdamW step
    final_params{,_wd,_clip}.safetensors  F32 params after 10 AdamW steps
    grad_norms_clip.npy                   float64 (10,): global grad L2 norm before clipping
    meta.json                             all of the above conventions, machine-readable

Run:  /usr/bin/python3 tools/mamba_train_ref.py --out tests/fixtures/train
(deterministic, byte-identical output). See tools/README.md for the conventions.
"""

import argparse
import json
import math
import os
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mamba_ref as mr  # noqa: E402

F64 = torch.float64
IGNORE = -100
SEED = 4242

# Optimizer settings (shared by all three trajectories).
STEPS = 10
LR = 1e-2
BETAS = (0.9, 0.95)
ADAM_EPS = 1e-8
WD = 0.1
CLIP = 0.5
DECAY_SUFFIXES = ("in_proj.weight", "conv1d.weight", "x_proj.weight",
                  "dt_proj.weight", "out_proj.weight")


def is_decay(canon):
    """AdamW 'decay' group: the embedding and the >=2-D projection/conv weights.
    No decay: biases, norm weights, A_log, D."""
    return canon == "embedding" or canon.endswith(DECAY_SUFFIXES)


def make_cfg():
    dm, N, K, R, V, expand = 16, 4, 4, 3, 19, 2
    return {
        "name": "train", "format": "hf", "dtype": "F32", "B": 2, "L": 23,
        "d_model": dm, "n_layer": 2, "d_state": N, "d_conv": K, "expand": expand,
        "d_inner": expand * dm, "dt_rank_cfg": R, "dt_rank": R,
        "vocab_size": V, "v_rows": V, "pad": None, "tied": True,
        "use_bias": False, "use_conv_bias": True,
    }


def make_targets(ids, V, g):
    """Next-token-like random targets in [0, V) with IGNORE at fixed positions:
    whole leading runs (row 0: t=0..3, row 1: t=0..1) plus scattered ones."""
    B, L = ids.shape
    tg = torch.randint(0, V, (B, L), generator=g)
    ignored = {0: [0, 1, 2, 3, 11, 20], 1: [0, 1, 9, 22]}
    for b, ts in ignored.items():
        for t in ts:
            tg[b, t] = IGNORE
    return tg


def loss_fn(params, cfg, ids, targets):
    """Mean cross-entropy over positions with target != IGNORE (sum of -log p
    over those positions, divided by their count). Independent log-softmax."""
    logits, _ = mr.model_forward(params, cfg, ids)
    V = logits.shape[-1]
    lg = logits.reshape(-1, V)
    tg = targets.reshape(-1)
    keep = tg != IGNORE
    lse = torch.logsumexp(lg[keep], dim=-1)
    picked = lg[keep].gather(1, tg[keep][:, None])[:, 0]
    return (lse - picked).sum() / keep.sum()


def leaf_params(p):
    return {k: v.detach().clone().requires_grad_(True) for k, v in p.items()}


def grads_of(params, cfg, ids, targets):
    loss = loss_fn(params, cfg, ids, targets)
    names = sorted(params)
    gs = torch.autograd.grad(loss, [params[k] for k in names])
    return loss.detach(), dict(zip(names, gs))


def run_adamw(p0, cfg, ids, targets, wd, clip):
    """10 steps of torch.optim.AdamW in float64. Returns (losses, norms, params)."""
    params = leaf_params(p0)
    names = sorted(params)
    decay = [params[k] for k in names if is_decay(k)]
    other = [params[k] for k in names if not is_decay(k)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd},
                             {"params": other, "weight_decay": 0.0}],
                            lr=LR, betas=BETAS, eps=ADAM_EPS, weight_decay=0.0,
                            foreach=False)
    losses, norms = [], []
    for _ in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(params, cfg, ids, targets)
        loss.backward()
        losses.append(loss.item())
        if clip is not None:
            norms.append(torch.nn.utils.clip_grad_norm_([params[k] for k in names], clip).item())
        opt.step()
    return np.array(losses), np.array(norms), {k: v.detach() for k, v in params.items()}


def manual_adamw(p0, cfg, ids, targets, wd, clip):
    """Plain re-implementation of the same update (spec for the C++ trainer)."""
    params = {k: v.clone() for k, v in p0.items()}
    m = {k: torch.zeros_like(v) for k, v in params.items()}
    v2 = {k: torch.zeros_like(v) for k, v in params.items()}
    b1, b2 = BETAS
    losses, norms = [], []
    for t in range(1, STEPS + 1):
        lp = leaf_params(params)
        loss, g = grads_of(lp, cfg, ids, targets)
        losses.append(loss.item())
        if clip is not None:
            norm = math.sqrt(sum((x * x).sum().item() for x in g.values()))
            norms.append(norm)
            scale = min(1.0, clip / (norm + 1e-6))
            g = {k: x * scale for k, x in g.items()}
        for k in params:
            w = params[k] * (1 - LR * (wd if is_decay(k) else 0.0))
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v2[k] = b2 * v2[k] + (1 - b2) * g[k] * g[k]
            mhat_step = LR / (1 - b1 ** t)
            denom = v2[k].sqrt() / math.sqrt(1 - b2 ** t) + ADAM_EPS
            params[k] = w - mhat_step * m[k] / denom
    return np.array(losses), np.array(norms), params


def read_safetensors(path):
    """Minimal independent reader (F32 only) -> dict of float64 tensors."""
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    hdr = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, h in hdr.items():
        if name == "__metadata__":
            continue
        assert h["dtype"] == "F32"
        a, b = h["data_offsets"]
        arr = np.frombuffer(data[base + a:base + b], dtype="<f4").reshape(h["shape"])
        out[name] = torch.from_numpy(arr.astype(np.float64))
    return out


def to_file(d):
    return {mr.file_name(k, "hf"): v.to(torch.float32) for k, v in d.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures/train")
    ap.add_argument("--no-check", action="store_true", help="skip the self-checks")
    ap.add_argument("--full-fd", action="store_true",
                    help="finite-difference check of every parameter entry (~minutes)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    out = args.out

    cfg = make_cfg()
    g = torch.Generator().manual_seed(SEED)
    p0, stored = mr.round_params(mr.make_params(cfg, g), "F32")   # float64 of F32-rounded
    ids = torch.randint(0, cfg["vocab_size"], (cfg["B"], cfg["L"]), generator=g)
    targets = make_targets(ids, cfg["vocab_size"], g)
    n_keep = int((targets != IGNORE).sum())

    loss, grads = grads_of(leaf_params(p0), cfg, ids, targets)
    traj, _, fin = run_adamw(p0, cfg, ids, targets, wd=0.0, clip=None)
    traj_wd, _, fin_wd = run_adamw(p0, cfg, ids, targets, wd=WD, clip=None)
    traj_cl, norms_cl, fin_cl = run_adamw(p0, cfg, ids, targets, wd=WD, clip=CLIP)
    with torch.no_grad():
        after = [loss_fn(f, cfg, ids, targets).item() for f in (fin, fin_wd, fin_cl)]

    # ---- write ----
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(mr.config_json(cfg), f, indent=2)
        f.write("\n")
    mr.write_safetensors(os.path.join(out, "model.safetensors"), to_file(stored), "F32")
    mr.write_safetensors(os.path.join(out, "grads.safetensors"), to_file(grads), "F32")
    for suf, fp in (("", fin), ("_wd", fin_wd), ("_clip", fin_cl)):
        mr.write_safetensors(os.path.join(out, f"final_params{suf}.safetensors"), to_file(fp), "F32")
    np.save(os.path.join(out, "ids.npy"), ids.numpy().astype(np.int32))
    np.save(os.path.join(out, "targets.npy"), targets.numpy().astype(np.int32))
    np.save(os.path.join(out, "loss.npy"), np.array(loss.item(), dtype=np.float64))
    np.save(os.path.join(out, "trajectory.npy"), traj.astype(np.float64))
    np.save(os.path.join(out, "trajectory_wd.npy"), traj_wd.astype(np.float64))
    np.save(os.path.join(out, "trajectory_clip.npy"), traj_cl.astype(np.float64))
    np.save(os.path.join(out, "grad_norms_clip.npy"), norms_cl.astype(np.float64))
    meta = {
        "generator": "tools/mamba_train_ref.py", "seed": SEED,
        "B": cfg["B"], "L": cfg["L"], "vocab_size": cfg["vocab_size"],
        "ignore_index": IGNORE, "n_counted_targets": n_keep,
        "loss": "mean over non-ignored (b,t) of logsumexp(logits[b,t]) - logits[b,t,target]; "
                "no shift inside (targets already aligned with ids); tied head",
        "loss_value": loss.item(),
        "optimizer": {"type": "AdamW (torch.optim.AdamW, decoupled wd)", "steps": STEPS,
                      "lr": LR, "betas": list(BETAS), "eps": ADAM_EPS, "amsgrad": False,
                      "lr_schedule": "constant", "dtype": "float64"},
        "runs": {
            "": {"weight_decay": 0.0, "clip_grad_norm": None},
            "_wd": {"weight_decay": WD, "clip_grad_norm": None},
            "_clip": {"weight_decay": WD, "clip_grad_norm": CLIP,
                      "clip_rule": "g *= min(1, max_norm / (total_norm + 1e-6))"},
        },
        "decay_group": sorted(mr.file_name(k, "hf") for k in p0 if is_decay(k)),
        "no_decay_group": sorted(mr.file_name(k, "hf") for k in p0 if not is_decay(k)),
        "loss_after_10_steps": {"": after[0], "_wd": after[1], "_clip": after[2]},
    }
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")

    print(f"loss {loss.item():.12f}  counted targets {n_keep}/{cfg['B'] * cfg['L']}")
    print("trajectory     ", np.array2string(traj, precision=6), f"-> {after[0]:.6f}")
    print("trajectory_wd  ", np.array2string(traj_wd, precision=6), f"-> {after[1]:.6f}")
    print("trajectory_clip", np.array2string(traj_cl, precision=6), f"-> {after[2]:.6f}")
    print("grad_norms_clip", np.array2string(norms_cl, precision=6))
    if args.no_check:
        return
    self_check(cfg, p0, ids, targets, loss, grads, out,
               [(0.0, None, traj, None, fin), (WD, None, traj_wd, None, fin_wd),
                (WD, CLIP, traj_cl, norms_cl, fin_cl)], full_fd=args.full_fd)


def self_check(cfg, p0, ids, targets, loss, grads, out, runs, full_fd=False):
    # 1) forward == mamba_ref forward checks (recurrent and quadratic variants), and the
    #    loss equals torch's F.cross_entropy(ignore_index=-100, reduction='mean').
    with torch.no_grad():
        logits, states = mr.model_forward(p0, cfg, ids)
        d_rec, d_quad = mr.check_case(p0, cfg, ids, logits, states)
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg["vocab_size"]),
                                               targets.reshape(-1), ignore_index=IGNORE)
    print(f"check forward: recurrent-vs-full {d_rec:.1e}  quadratic-vs-full {d_quad:.1e}  "
          f"|loss - F.cross_entropy| {abs(ce.item() - loss.item()):.1e}")
    assert d_rec < 1e-10 and d_quad < 1e-9 and abs(ce.item() - loss.item()) < 1e-12

    # 2) reading the written files back reproduces loss and gradients
    pf = read_safetensors(os.path.join(out, "model.safetensors"))
    inv = {mr.file_name(k, "hf"): k for k in p0}
    pf = {inv[k]: v for k, v in pf.items()}
    assert set(pf) == set(p0) and all(torch.equal(pf[k], p0[k]) for k in p0)
    gf = read_safetensors(os.path.join(out, "grads.safetensors"))
    gerr = max(((gf[mr.file_name(k, "hf")] - grads[k]).abs().max() /
                grads[k].abs().max()).item() for k in grads)
    print(f"check files: params read back exactly; grads F32 rel rounding {gerr:.1e}")

    # 3) central finite differences in float64, Richardson-extrapolated:
    #    fd = (4 D(h/2) - D(h)) / 3 with D(h) = (f(x+h) - f(x-h)) / 2h, error O(h^4).
    g = torch.Generator().manual_seed(7)
    if full_fd:
        entries = [(k, j) for k in sorted(p0) for j in range(p0[k].numel())]
    else:
        picks = ["embedding", "layers.0.mixer.A_log", "layers.1.mixer.conv1d.weight",
                 "layers.0.mixer.dt_proj.bias", "layers.1.mixer.x_proj.weight", "norm_f.weight"]
        entries = [(k, int(torch.randint(0, p0[k].numel(), (1,), generator=g))) for k in picks]
    h = 1e-3

    def f_at(k, j, delta):
        q = dict(p0)
        t = p0[k].reshape(-1).clone()
        t[j] += delta
        q[k] = t.reshape(p0[k].shape)
        with torch.no_grad():
            return loss_fn(q, cfg, ids, targets).item()

    worst_rel, worst_abs = 0.0, 0.0
    for k, j in entries:
        d1 = (f_at(k, j, h) - f_at(k, j, -h)) / (2 * h)
        d2 = (f_at(k, j, h / 2) - f_at(k, j, -h / 2)) / h
        fd = (4 * d2 - d1) / 3
        ad = grads[k].reshape(-1)[j].item()
        ae = abs(fd - ad)
        rel = ae / max(abs(ad), 1e-300)
        worst_abs = max(worst_abs, ae)
        if abs(ad) > 1e-5:
            worst_rel = max(worst_rel, rel)
        if not full_fd:
            print(f"check FD: {k:32s}[{j:3d}] autograd {ad:+.12e} fd {fd:+.12e} "
                  f"abs {ae:.1e} rel {rel:.1e}")
    print(f"check FD ({len(entries)} entries): max abs err {worst_abs:.1e}, "
          f"max rel err (|g| > 1e-5) {worst_rel:.1e}")
    assert worst_abs < 1e-9 and worst_rel < 1e-6

    # 4) the tied-embedding gradient = lookup part + head part
    with torch.enable_grad():
        E1 = p0["embedding"].clone().requires_grad_(True)   # used by the lookup only
        E2 = p0["embedding"].clone().requires_grad_(True)   # used by the head only
        q = dict(p0)
        q["embedding"] = E1
        q["_head"] = E2
        hidden = E1[ids]
        residual = None
        for i in range(cfg["n_layer"]):
            residual = hidden if residual is None else hidden + residual
            hh = mr.rmsnorm(residual, q[f"layers.{i}.norm.weight"])
            lp = {kk[len(f"layers.{i}.mixer."):]: v for kk, v in q.items()
                  if kk.startswith(f"layers.{i}.mixer.")}
            hidden, _, _ = mr.mixer_forward(lp, hh, cfg)
        residual = hidden + residual
        lg = mr.rmsnorm(residual, q["norm_f.weight"]) @ E2.t()
        l2 = torch.nn.functional.cross_entropy(lg.reshape(-1, cfg["vocab_size"]),
                                               targets.reshape(-1), ignore_index=IGNORE)
        g1, g2 = torch.autograd.grad(l2, [E1, E2])
    d_tie = (g1 + g2 - grads["embedding"]).abs().max().item()
    print(f"check tied: |g_lookup + g_head - g_embedding| {d_tie:.1e} "
          f"(|g_lookup| {g1.abs().max().item():.2e}, |g_head| {g2.abs().max().item():.2e})")
    assert d_tie < 1e-12

    # 5) torch.optim.AdamW == plain re-implementation of the update rule
    for wd, clip, traj, norms, fin in runs:
        ml, mn, mp = manual_adamw(p0, cfg, ids, targets, wd, clip)
        dl = np.abs(ml - traj).max()
        dn = np.abs(mn - norms).max() if norms is not None else 0.0
        dp = max((mp[k] - fin[k]).abs().max().item() for k in fin)
        print(f"check AdamW wd={wd} clip={clip}: manual vs torch  loss {dl:.1e} "
              f"norm {dn:.1e} params {dp:.1e}")
        assert dl < 1e-12 and dn < 1e-12 and dp < 1e-12

    f32_diagnostic(cfg, p0, ids, targets, loss, grads, runs)



def f32_diagnostic(cfg, p0, ids, targets, loss, grads, runs):
    """Informational: the same computation in float32 (mamba_ref's math with its
    dtype switched to float32), to size the C++ tests' tolerances."""
    old = mr.F64
    mr.F64 = torch.float32
    try:
        p32 = {k: v.to(torch.float32) for k, v in p0.items()}
        l32, g32 = grads_of(leaf_params(p32), cfg, ids, targets)
        gerr = max(((g32[k].double() - grads[k]).abs().max() / grads[k].abs().max()).item()
                   for k in grads)
        print(f"f32 diag: |loss32 - loss| {abs(l32.item() - loss.item()):.1e}; "
              f"grads max |err| / per-tensor max|g| {gerr:.1e}")
        for wd, clip, traj, norms, fin in runs:
            tl, tn, tp = run_adamw(p32, cfg, ids, targets, wd, clip)
            dp = max((tp[k].double() - fin[k]).abs().max().item() for k in fin)
            dn = np.abs(tn - norms).max() if norms is not None else 0.0
            print(f"f32 diag AdamW wd={wd} clip={clip}: max |traj err| {np.abs(tl - traj).max():.1e}"
                  f"  max |param err| {dp:.1e}  max |norm err| {dn:.1e}")
    finally:
        mr.F64 = old

if __name__ == "__main__":
    main()
