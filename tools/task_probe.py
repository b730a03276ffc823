#!/usr/bin/env python3
"""How an induction-heads model holds its answer: the selection (Δ) it applies to each token.

For a model written by `mambacpp tasks train induction-heads`, runs float64 sequences of the task
(random filler 0..14, the trigger 15 at position p followed by the target, the trigger again at the
end) through the equations of tools/mamba_ref.py and reports, per layer, the channels that separate
the target most sharply from the filler:

    Δ at the target (p + 1),  mean and max Δ over the filler after it,  their ratio.

A channel's state takes in each token with weight Δ_t (the Δ_t·B_t·x_t term) and decays by
exp(Δ_t·A) per token; with A of order one, a stored target survives about 1 / mean(Δ_filler) tokens
of filler, and the filler's own inputs reach the target's weight after about ratio tokens. These are
what limit extrapolation beyond the training length (docs/results.md).

    /usr/bin/python3 tools/task_probe.py MODEL_DIR [--length 1024] [--sequences 16] [--top 5]
"""

import argparse
import json
import os
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mamba_ref as ref  # noqa: E402

F64 = torch.float64
TRIGGER = 15


def load_safetensors(path):
    blob = open(path, "rb").read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            sys.exit(f"{path}: {name} is {info['dtype']}; this tool reads F32 task models")
        begin, end = info["data_offsets"]
        data = np.frombuffer(blob[8 + n + begin:8 + n + end], dtype=np.float32).reshape(info["shape"])
        out[name.replace("backbone.", "").replace("embeddings.weight", "embedding")] = torch.tensor(data, dtype=F64)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--sequences", type=int, default=16)
    ap.add_argument("--position", type=int, default=100, help="trigger position p")
    ap.add_argument("--top", type=int, default=5, help="channels shown per layer")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    hf = json.load(open(os.path.join(a.model, "config.json")))
    if hf.get("ssm_mode", "selective") != "selective":
        sys.exit("task_probe: only selective models have a per-token Δ")
    cfg = {"d_inner": hf["intermediate_size"], "d_conv": hf["conv_kernel"], "dt_rank": hf["time_step_rank"],
           "d_state": hf["state_size"], "n_layer": hf["num_hidden_layers"]}
    P = load_safetensors(os.path.join(a.model, "model.safetensors"))
    L, p = a.length, a.position
    if not 0 <= p < L - 8:
        sys.exit("task_probe: need 0 <= --position < --length - 8")

    g = torch.Generator().manual_seed(a.seed)
    ids = torch.randint(0, 15, (a.sequences, L), generator=g)
    ids[:, p] = TRIGGER
    ids[:, L - 1] = TRIGGER
    filler = slice(p + 5, L - 1)  # past the conv window of the target

    hidden, residual = P["embedding"][ids], None
    print(f"{a.model}: {a.sequences} sequences of {L} tokens, trigger at {p}, filler Δ over [{p + 5}, {L - 1})")
    for i in range(cfg["n_layer"]):
        residual = hidden if residual is None else hidden + residual
        h = ref.rmsnorm(residual, P[f"layers.{i}.norm.weight"])
        lp = {k[len(f"layers.{i}.mixer."):]: v for k, v in P.items() if k.startswith(f"layers.{i}.mixer.")}
        delta = ref.mixer_inputs(lp, h, cfg)[2]
        store = delta[:, p + 1, :].mean(0)
        fill_mean = delta[:, filler, :].mean((0, 1))
        fill_max = delta[:, filler, :].amax((0, 1))
        ratio = store / fill_mean
        a_min = torch.exp(lp["A_log"]).min(1).values
        print(f"layer {i}: channel  Δ(target)  mean Δ(filler)  max Δ(filler)  ratio  min|A|  survives ~tokens")
        for c in torch.argsort(ratio, descending=True)[:a.top].tolist():
            print(f"  {c:12d}  {store[c]:9.2e}  {fill_mean[c]:14.2e}  {fill_max[c]:13.2e}  {ratio[c]:5.0f}  "
                  f"{a_min[c]:6.3f}  {1 / float(fill_mean[c] * a_min[c]):.2e}")
        hidden, _, _ = ref.mixer_forward(lp, h, cfg)


if __name__ == "__main__":
    main()
