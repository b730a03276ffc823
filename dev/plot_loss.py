#!/usr/bin/env python3
"""Loss curves of training runs as one SVG (standard library only): bits per byte against the bytes
trained on (log scale), the training loss as a thin line (a moving average over 10 steps), the
validation points as dots joined by a line.
   usage: dev/plot_loss.py OUT.svg LABEL:LOG.jsonl:BATCH:SEQ_LEN [...]
   e.g.   dev/plot_loss.py docs/sotu-gpu-vs-cpu.svg "GPU, 91 M:run/log.jsonl:8:2048" "CPU demo, 1.8 M:cache/runs/sotu/log.jsonl:8:256"
"""
import json
import math
import sys

W, H = 720, 420
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 40, 60
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
LN2 = math.log(2)


def read(spec):
    label, path, batch, seq = spec.rsplit(":", 3)
    per_step = int(batch) * int(seq)
    train, val = [], []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if "loss" not in r or "step" not in r:
                continue
            x = r["step"] * per_step
            train.append((x, r["loss"] / LN2))
            if "val_bits_per_byte" in r:
                val.append((x, r["val_bits_per_byte"]))
    if not train:
        sys.exit(f"{path}: no steps with a loss")
    smooth = []
    for i in range(len(train)):
        window = train[max(0, i - 9):i + 1]
        smooth.append((train[i][0], sum(y for _, y in window) / len(window)))
    return label, smooth, val


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    runs = [read(spec) for spec in sys.argv[2:]]
    xs = [x for _, t, v in runs for x, _ in t + v]
    ys = [y for _, t, v in runs for _, y in t + v]
    x0, x1 = math.floor(math.log10(min(xs))), math.ceil(math.log10(max(xs)))
    y1 = math.ceil(min(max(ys), 8.0))
    y0 = 0.0

    def px(x):
        return LEFT + (math.log10(x) - x0) / (x1 - x0) * (W - LEFT - RIGHT)

    def py(y):
        return TOP + (1 - (min(y, y1) - y0) / (y1 - y0)) * (H - TOP - BOTTOM)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14">Byte-level Mamba on the State of the Union'
           ' addresses: bits per byte</text>']
    for e in range(x0, x1 + 1):
        x = px(10 ** e)
        out.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{H - BOTTOM}" stroke="#ddd"/>')
        out.append(f'<text x="{x:.1f}" y="{H - BOTTOM + 16}" text-anchor="middle">10^{e}</text>')
    for k in range(int(y0), int(y1) + 1):
        y = py(k)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{k}</text>')
    out.append(f'<text x="{W / 2}" y="{H - 18}" text-anchor="middle">bytes trained on</text>')
    out.append(f'<text x="18" y="{H / 2}" text-anchor="middle" transform="rotate(-90 18 {H / 2})">bits per byte</text>')
    for i, (label, train, val) in enumerate(runs):
        c = COLOURS[i % len(COLOURS)]
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in train)
        out.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-opacity="0.45" stroke-width="1"/>')
        if val:
            pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in val)
            out.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="2"/>')
            for x, y in val:
                out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{c}"/>')
        last = f" (validation {val[-1][1]:.3f})" if val else ""
        ly = TOP + 18 + 18 * i
        out.append(f'<line x1="{W - 330}" y1="{ly - 4}" x2="{W - 305}" y2="{ly - 4}" stroke="{c}" stroke-width="2"/>')
        out.append(f'<text x="{W - 300}" y="{ly}">{label}{last}</text>')
    out.append(f'<text x="{LEFT + 6}" y="{H - BOTTOM - 8}" fill="#666">thin: training (10-step mean); dots: validation</text>')
    out.append("</svg>")
    with open(sys.argv[1], "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
