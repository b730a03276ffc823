#!/usr/bin/env python3
"""Independent float64 PyTorch reference for Mamba-1 and golden-fixture generator.

Written directly from the equations of Gu & Dao, "Mamba: Linear-Time Sequence
Modeling with Selective State Spaces" (arXiv 2312.00752), following the layer
layout of the official `mamba_ssm` Mamba-1 model / Hugging Face
`MambaForCausalLM` (no code taken from either library):

    hidden = E[ids]
    for each layer i:
        residual = hidden                 (layer 0)
                 = hidden + residual      (layers > 0)
        hidden   = mixer_i(RMSNorm_i(residual))
    residual = hidden + residual
    logits   = RMSNorm_f(residual) @ W_head^T      (W_head = E when tied)

    RMSNorm(v) = v * rsqrt(mean(v^2, -1) + eps) * w,  eps = 1e-5

    mixer(h):
        x, z   = split(h @ W_in^T (+ b_in), d_inner)
        xc[t]  = b_conv + sum_k w_conv[:, 0, k] * x[t - (K-1) + k]   (causal, depthwise;
                 x at negative t from the initial conv state, zeros by default)
        x      = SiLU(xc)
        dt, B, C = split(x @ W_x^T, [dt_rank, N, N])
        delta  = softplus(dt @ W_dt^T + b_dt)
        A      = -exp(A_log)
        h_t    = exp(delta_t * A) * h_{t-1} + delta_t * B_t * x_t    (h_0 = 0)
        y_t    = h_t @ C_t + D * x_t
        out    = (y * SiLU(z)) @ W_out^T (+ b_out)

Final per-layer states: ssm_state (B, d_inner, N) = h after the last token;
conv_state (B, K-1, d_inner) = last K-1 rows of [initial zeros ++ pre-conv x].

Run `/usr/bin/python3 tools/mamba_ref.py --out tests/fixtures` to regenerate
all fixtures deterministically (see tools/README.md).
"""

import argparse
import json
import math
import os
import struct

import numpy as np
import torch

F64 = torch.float64
EPS = 1e-5


# ----------------------------------------------------------------------------
# Model math (float64)
# ----------------------------------------------------------------------------

def rmsnorm(v, w, eps=EPS):
    return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps) * w


def silu(v):
    return v * torch.sigmoid(v)


def softplus(v):
    # torch semantics (beta=1, threshold=20): identity above 20.
    return torch.where(v > 20, v, torch.log1p(torch.exp(torch.clamp(v, max=20))))


def linear(v, w, b=None):
    out = v @ w.t()
    if b is not None:
        out = out + b
    return out


def mixer_inputs(p, h, cfg, conv_state=None):
    """The selective scan's inputs from the mixer's input h (B, L, d_model):
    x (after conv and SiLU), z, delta, B, C, and the new conv_state."""
    Bsz, L, _ = h.shape
    di, N, K, R = cfg["d_inner"], cfg["d_state"], cfg["d_conv"], cfg["dt_rank"]
    xz = linear(h, p["in_proj.weight"], p.get("in_proj.bias"))
    x, z = xz[..., :di], xz[..., di:]
    if conv_state is None:
        conv_state = torch.zeros(Bsz, K - 1, di, dtype=F64)
    window = torch.cat([conv_state, x], dim=1)            # (B, K-1+L, di)
    wc = p["conv1d.weight"][:, 0, :]                      # (di, K)
    xc = torch.zeros(Bsz, L, di, dtype=F64)
    if "conv1d.bias" in p:
        xc = xc + p["conv1d.bias"]
    for k in range(K):
        # output t uses window row t + k  (== x[t - (K-1) + k])
        xc = xc + wc[:, k] * window[:, k:k + L, :]
    new_conv_state = window[:, -(K - 1):, :].clone()
    x = silu(xc)
    x_dbl = linear(x, p["x_proj.weight"])
    dt, Bm, Cm = x_dbl[..., :R], x_dbl[..., R:R + N], x_dbl[..., R + N:R + 2 * N]
    delta = softplus(linear(dt, p["dt_proj.weight"], p["dt_proj.bias"]))  # (B, L, di)
    return x, z, delta, Bm, Cm, new_conv_state


def mixer_forward(p, h, cfg, conv_state=None, ssm_state=None):
    """Full-sequence mixer. h: (B, L, d_model). Returns out, conv_state, ssm_state.

    conv_state (B, K-1, d_inner) and ssm_state (B, d_inner, N) are optional
    initial states (zeros if None)."""
    Bsz, L, _ = h.shape
    di, N = cfg["d_inner"], cfg["d_state"]
    x, z, delta, Bm, Cm, new_conv_state = mixer_inputs(p, h, cfg, conv_state)
    A = -torch.exp(p["A_log"])                                          # (di, N)
    hs = torch.zeros(Bsz, di, N, dtype=F64) if ssm_state is None else ssm_state.clone()
    ys = []
    for t in range(L):
        dA = torch.exp(delta[:, t, :, None] * A)                              # (B, di, N)
        dBx = delta[:, t, :, None] * Bm[:, t, None, :] * x[:, t, :, None]     # (B, di, N)
        hs = dA * hs + dBx
        ys.append((hs * Cm[:, t, None, :]).sum(-1) + p["D"] * x[:, t, :])
    y = torch.stack(ys, dim=1)
    y = y * silu(z)
    out = linear(y, p["out_proj.weight"], p.get("out_proj.bias"))
    return out, new_conv_state, hs


def model_forward(params, cfg, ids, states=None):
    """params: canonical dict (see canonical_names). ids: (B, L) long.
    states: optional list of (conv_state, ssm_state) per layer.
    Returns logits (B, L, V), list of (conv_state, ssm_state)."""
    hidden = params["embedding"][ids]
    residual = None
    new_states = []
    for i in range(cfg["n_layer"]):
        residual = hidden if residual is None else hidden + residual
        h = rmsnorm(residual, params[f"layers.{i}.norm.weight"])
        lp = {k[len(f"layers.{i}.mixer."):]: v for k, v in params.items()
              if k.startswith(f"layers.{i}.mixer.")}
        cs, ss = (None, None) if states is None else states[i]
        hidden, cs, ss = mixer_forward(lp, h, cfg, cs, ss)
        new_states.append((cs, ss))
    residual = hidden + residual
    out = rmsnorm(residual, params["norm_f.weight"])
    head = params["embedding"] if cfg["tied"] else params["lm_head.weight"]
    return out @ head.t(), new_states


# ----------------------------------------------------------------------------
# Independent checks
# ----------------------------------------------------------------------------

def mixer_forward_quadratic(p, h, cfg):
    """Alternative mixer: conv via F.conv1d, scan in closed (materialized) form
    y_t = sum_{s<=t} C_t . (exp(sum_{r=s+1..t} delta_r A)) delta_s B_s x_s + D x_t."""
    di, N, K, R = cfg["d_inner"], cfg["d_state"], cfg["d_conv"], cfg["dt_rank"]
    L = h.shape[1]
    xz = linear(h, p["in_proj.weight"], p.get("in_proj.bias"))
    x, z = xz[..., :di], xz[..., di:]
    xc = torch.nn.functional.conv1d(x.transpose(1, 2), p["conv1d.weight"], p.get("conv1d.bias"),
                                    padding=K - 1, groups=di)[..., :L].transpose(1, 2)
    x = silu(xc)
    x_dbl = linear(x, p["x_proj.weight"])
    dt, Bm, Cm = x_dbl[..., :R], x_dbl[..., R:R + N], x_dbl[..., R + N:]
    delta = torch.nn.functional.softplus(linear(dt, p["dt_proj.weight"], p["dt_proj.bias"]))
    A = -torch.exp(p["A_log"])
    cum = torch.cumsum(delta[..., None] * A, dim=1)              # (B, L, di, N)
    seg = cum[:, :, None] - cum[:, None, :]                       # (B, t, s, di, N)
    mask = torch.tril(torch.ones(L, L, dtype=torch.bool))[None, :, :, None, None]
    decay = torch.where(mask, torch.exp(torch.where(mask, seg, torch.zeros(()))), torch.zeros((), dtype=F64))
    u = delta * x                                                 # (B, L, di)
    y = torch.einsum("btn,btsdn,bsd,bsn->btd", Cm, decay, u, Bm) + p["D"] * x
    ssm = torch.einsum("bsdn,bsd,bsn->bdn", decay[:, -1], u, Bm)
    y = y * silu(z)
    return linear(y, p["out_proj.weight"], p.get("out_proj.bias")), ssm


def check_case(params, cfg, ids, logits, states):
    """Returns (max |diff| token-by-token vs full, max |diff| quadratic vs full)."""
    # 1) recurrent, one token at a time with carried states
    st = None
    outs = []
    for t in range(ids.shape[1]):
        lg, st = model_forward(params, cfg, ids[:, t:t + 1], st)
        outs.append(lg)
    d_rec = (torch.cat(outs, 1) - logits).abs().max().item()
    for (c1, s1), (c2, s2) in zip(st, states):
        d_rec = max(d_rec, (c1 - c2).abs().max().item(), (s1 - s2).abs().max().item())
    # 2) closed-form quadratic scan + library conv (only for modest L)
    d_quad = float("nan")
    if ids.shape[1] <= 64:
        hidden = params["embedding"][ids]
        residual = None
        d_quad = 0.0
        for i in range(cfg["n_layer"]):
            residual = hidden if residual is None else hidden + residual
            h = rmsnorm(residual, params[f"layers.{i}.norm.weight"])
            lp = {k[len(f"layers.{i}.mixer."):]: v for k, v in params.items()
                  if k.startswith(f"layers.{i}.mixer.")}
            hidden, ss = mixer_forward_quadratic(lp, h, cfg)
            d_quad = max(d_quad, (ss - states[i][1]).abs().max().item())
        residual = hidden + residual
        head = params["embedding"] if cfg["tied"] else params["lm_head.weight"]
        lq = rmsnorm(residual, params["norm_f.weight"]) @ head.t()
        d_quad = max(d_quad, (lq - logits).abs().max().item())
    return d_rec, d_quad


# ----------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------

def inv_softplus(v):
    return v + torch.log(-torch.expm1(-v))


def make_params(cfg, g):
    """Official-style init, then every parameter randomly perturbed. float64."""
    dm, di, N, K, R = cfg["d_model"], cfg["d_inner"], cfg["d_state"], cfg["d_conv"], cfg["dt_rank"]
    V = cfg["v_rows"]

    def randn(*s):
        return torch.randn(*s, generator=g, dtype=F64)

    def rand(*s):
        return torch.rand(*s, generator=g, dtype=F64)

    p = {"embedding": 2.0 / math.sqrt(dm) * randn(V, dm)}  # keeps tied logits O(1)
    for i in range(cfg["n_layer"]):
        pre = f"layers.{i}."
        p[pre + "norm.weight"] = 1.0 + 0.2 * randn(dm)
        m = pre + "mixer."
        p[m + "in_proj.weight"] = randn(2 * di, dm) / math.sqrt(dm)
        if cfg["use_bias"]:
            p[m + "in_proj.bias"] = 0.1 * randn(2 * di)
        p[m + "conv1d.weight"] = (2 * rand(di, 1, K) - 1) / math.sqrt(K) * 1.5
        if cfg["use_conv_bias"]:
            p[m + "conv1d.bias"] = 0.2 * randn(di)
        p[m + "x_proj.weight"] = randn(R + 2 * N, di) / math.sqrt(di)
        s = R ** -0.5
        p[m + "dt_proj.weight"] = (2 * rand(di, R) - 1) * s + 0.1 * s * randn(di, R)
        dt = torch.exp(rand(di) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        p[m + "dt_proj.bias"] = inv_softplus(dt) + 0.3 * randn(di)
        A_log = torch.log(torch.arange(1, N + 1, dtype=F64)).repeat(di, 1)
        p[m + "A_log"] = A_log + 0.3 * randn(di, N)
        p[m + "D"] = 1.0 + 0.3 * randn(di)
        p[m + "out_proj.weight"] = randn(dm, di) / math.sqrt(di)
        if cfg["use_bias"]:
            p[m + "out_proj.bias"] = 0.1 * randn(dm)
    p["norm_f.weight"] = 1.0 + 0.2 * randn(dm)
    if not cfg["tied"]:
        p["lm_head.weight"] = randn(V, dm) / math.sqrt(dm)
    return p


TORCH_DT = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def round_params(p, dtype):
    """Round to the storage dtype. Returns (float64 params, storage tensors)."""
    stored = {k: v.to(TORCH_DT[dtype]) for k, v in p.items()}
    return {k: v.to(F64) for k, v in stored.items()}, stored


def file_name(canon, fmt):
    if canon == "embedding":
        return "backbone.embeddings.weight" if fmt == "hf" else "backbone.embedding.weight"
    if canon == "lm_head.weight":
        return canon
    return "backbone." + canon


# ----------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------

def tensor_bytes(t):
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().astype("<i2").tobytes()
    if t.dtype == torch.float16:
        return t.contiguous().numpy().astype("<f2").tobytes()
    return t.contiguous().numpy().astype("<f4").tobytes()


def write_safetensors(path, tensors, dtype):
    header = {}
    blobs = []
    off = 0
    for name in sorted(tensors):
        b = tensor_bytes(tensors[name])
        header[name] = {"dtype": dtype, "shape": list(tensors[name].shape),
                        "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {"format": "pt"}
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((-(8 + len(hj))) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)


def config_json(c):
    if c["format"] == "hf":
        return {
            "model_type": "mamba",
            "architectures": ["MambaForCausalLM"],
            "hidden_size": c["d_model"],
            "num_hidden_layers": c["n_layer"],
            "state_size": c["d_state"],
            "expand": c["expand"],
            "conv_kernel": c["d_conv"],
            "time_step_rank": c["dt_rank_cfg"],
            "use_bias": c["use_bias"],
            "use_conv_bias": c["use_conv_bias"],
            "layer_norm_epsilon": EPS,
            "vocab_size": c["vocab_size"],
            "tie_word_embeddings": c["tied"],
            "intermediate_size": c["d_inner"],
            "residual_in_fp32": True,
        }
    return {
        "d_model": c["d_model"],
        "n_layer": c["n_layer"],
        "vocab_size": c["vocab_size"],
        "ssm_cfg": {"d_state": c["d_state"], "d_conv": c["d_conv"],
                    "expand": c["expand"], "dt_rank": c["dt_rank_cfg"]},
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": c["pad"],
        "tie_embeddings": c["tied"],
    }


# ----------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------

CASES = [
    # name, format, dtype, B, L, d_model, d_state, d_conv, dt_rank, vocab, tied, use_bias, conv_bias, n_layer
    ("hf_f32_L1_tied",          "hf",       "F32",  1, 1,   16, 4,  4, "auto", 61, True,  False, True,  2),
    ("hf_f32_L3_bias_untied",   "hf",       "F32",  3, 3,   16, 16, 4, 3,      53, False, True,  True,  2),
    ("hf_f32_L17_k2_untied",    "hf",       "F32",  1, 17,  64, 16, 2, "auto", 64, False, False, True,  3),
    ("hf_bf16_L64_b3_tied",     "hf",       "BF16", 3, 64,  64, 16, 4, "auto", 61, True,  False, True,  2),
    ("hf_f16_L300_bias_untied", "hf",       "F16",  1, 300, 16, 4,  4, 5,      53, False, True,  True,  2),
    ("hf_f32_L17_noconvbias",   "hf",       "F32",  3, 17,  16, 4,  4, 5,      40, True,  False, False, 2),
    ("hf_f32_L1_b3_k2_bias",    "hf",       "F32",  3, 1,   64, 4,  2, 3,      61, False, True,  True,  2),
    ("official_f32_L17_tied",   "official", "F32",  1, 17,  64, 16, 4, "auto", 61, True,  False, True,  2),
    ("official_bf16_L3_untied", "official", "BF16", 3, 3,   16, 4,  2, 3,      53, False, False, True,  3),
    ("official_f32_L300_b3",    "official", "F32",  3, 300, 16, 16, 4, "auto", 50, True,  False, True,  2),
    ("official_f16_L64_untied", "official", "F16",  1, 64,  64, 4,  2, 5,      61, False, False, True,  2),
]


def build_case(row, seed):
    (name, fmt, dtype, B, L, dm, N, K, R, vocab, tied, use_bias, conv_bias, n_layer) = row
    expand = 2
    pad = 8 if fmt == "official" else None
    v_rows = vocab if fmt == "hf" else int(math.ceil(vocab / pad) * pad)
    cfg = {
        "name": name, "format": fmt, "dtype": dtype, "B": B, "L": L,
        "d_model": dm, "n_layer": n_layer, "d_state": N, "d_conv": K, "expand": expand,
        "d_inner": expand * dm, "dt_rank_cfg": R,
        "dt_rank": int(math.ceil(dm / 16)) if R == "auto" else R,
        "vocab_size": vocab, "v_rows": v_rows, "pad": pad, "tied": tied,
        "use_bias": use_bias, "use_conv_bias": conv_bias,
    }
    g = torch.Generator().manual_seed(seed)
    params, stored = round_params(make_params(cfg, g), dtype)
    ids = torch.randint(0, vocab, (B, L), generator=g)
    return cfg, params, stored, ids


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures")
    ap.add_argument("--no-check", action="store_true", help="skip the self-checks")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    os.makedirs(args.out, exist_ok=True)
    index = []
    for ci, row in enumerate(CASES):
        cfg, params, stored, ids = build_case(row, seed=1000 + ci)
        name = cfg["name"]
        d = os.path.join(args.out, name)
        os.makedirs(d, exist_ok=True)
        with torch.no_grad():
            logits, states = model_forward(params, cfg, ids)
            msg = ""
            if not args.no_check:
                d_rec, d_quad = check_case(params, cfg, ids, logits, states)
                msg = f" rec-vs-full {d_rec:.1e} quad-vs-full {d_quad:.1e}"
                assert d_rec < 1e-10 and not (d_quad >= 1e-9), (name, d_rec, d_quad)
        ssm = torch.stack([s for _, s in states])     # (n_layer, B, di, N)
        conv = torch.stack([c for c, _ in states])    # (n_layer, B, K-1, di)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(config_json(cfg), f, indent=2)
            f.write("\n")
        write_safetensors(os.path.join(d, "model.safetensors"),
                          {file_name(k, cfg["format"]): v for k, v in stored.items()}, cfg["dtype"])
        np.save(os.path.join(d, "ids.npy"), ids.numpy().astype(np.int32))
        np.save(os.path.join(d, "logits.npy"), logits.numpy().astype(np.float32))
        np.save(os.path.join(d, "ssm_state.npy"), ssm.numpy().astype(np.float32))
        np.save(os.path.join(d, "conv_state.npy"), conv.numpy().astype(np.float32))
        entry = {k: cfg[k] for k in ("name", "format", "dtype", "B", "L", "d_model", "n_layer",
                                     "d_state", "d_conv", "expand", "d_inner", "dt_rank",
                                     "vocab_size", "tied", "use_bias", "use_conv_bias")}
        entry["dt_rank_config"] = cfg["dt_rank_cfg"]
        entry["vocab_rows"] = cfg["v_rows"]
        entry["pad_vocab_size_multiple"] = cfg["pad"]
        entry["max_abs_logit"] = round(logits.abs().max().item(), 6)
        entry["logit_std"] = round(logits.std().item(), 6)
        index.append(entry)
        print(f"{name:26s} max|logit| {logits.abs().max().item():7.3f} std {logits.std().item():6.3f}"
              f" max|ssm| {ssm.abs().max().item():7.3f}{msg}", flush=True)
    with open(os.path.join(args.out, "cases.json"), "w") as f:
        json.dump({"generator": "tools/mamba_ref.py", "eps": EPS, "cases": index}, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
