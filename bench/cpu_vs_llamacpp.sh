#!/usr/bin/env bash
# mamba.cpp beside llama.cpp on the CPU, on the same random-weight model, interleaved, one table.
#
#   bench/cpu_vs_llamacpp.sh LLAMA_BUILD_DIR [--src LLAMA_SRC] [--preset 130m] [--runs 3] [--threads 2]
#                            [--prompt 512] [--steps 128] [--batches "1 4 16"] [--llama-args "--poll 0"]
#
# LLAMA_BUILD_DIR: a build of llama.cpp (its bin/llama-bench), from LLAMA_SRC (default: the folder above
# it), whose convert_hf_to_gguf.py and gguf-py convert the model; this script builds nothing. The figures
# in docs/performance.md used llama.cpp at the commit below, built with
#   cmake -S LLAMA_SRC -B LLAMA_SRC/build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF
#   cmake --build LLAMA_SRC/build --target llama-bench
# The converter needs Debian's python3-numpy, python3-torch and python3-tqdm (no transformers: the config.json
# is read directly, and a missing transformers is stood in for).
#
# What runs, per precision (fp32, bf16, f16, int8 = llama.cpp's q8_0), RUNS times in turn: `mambacpp
# bench` (prefill PROMPT tokens with the last position's logits, then STEPS greedy decode steps) and
# `llama-bench -p PROMPT -n STEPS`, each a fresh process whose peak RSS is taken; then ours at the
# larger batches. The floors come from build/cpu_floors on the same threads: the read bandwidth (decode
# reads every weight once per step) and OpenBLAS's sgemm rate (prefill's projections).
set -euo pipefail

LLAMA_COMMIT=b97ebdc98f  # the llama.cpp sources the figures were measured with

here=$(cd "$(dirname "$0")/.." && pwd)
llama_build=${1:?usage: $0 LLAMA_BUILD_DIR [--src DIR] [--preset NAME] [--runs N] [--threads N]}
shift
llama_src=$(cd "$llama_build/.." && pwd)
preset=130m runs=3 threads=2 prompt=512 steps=128 batches="1 4 16" llama_args=""
while (($#)); do
  case $1 in
    --src) llama_src=$2 ;;
    --preset) preset=$2 ;;
    --runs) runs=$2 ;;
    --threads) threads=$2 ;;
    --prompt) prompt=$2 ;;
    --steps) steps=$2 ;;
    --batches) batches=$2 ;;
    --llama-args) llama_args=$2 ;;  # more llama-bench flags, e.g. "--poll 0" on a busy machine
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift 2
done

mambacpp=$here/build/mambacpp
floors=$here/build/cpu_floors
llama_bench=$llama_build/bin/llama-bench
for f in "$mambacpp" "$floors" "$llama_bench" "$llama_src/convert_hf_to_gguf.py"; do
  [[ -e $f ]] || { echo "missing $f (build mamba.cpp with cmake into build/, and llama.cpp as above)" >&2; exit 1; }
done
commit=$(git -C "$llama_src" rev-parse --short=10 HEAD 2>/dev/null || echo unknown)
[[ $commit == "$LLAMA_COMMIT"* ]] || echo "note: llama.cpp at $commit, the figures in the docs used $LLAMA_COMMIT" >&2

work=$here/cache/bench/$preset
out=$work/results-$(date +%Y%m%d-%H%M%S).jsonl
mkdir -p "$work/gguf"

# ---- the same random-weight model in every type ----
if [[ ! -f $work/f32/model.safetensors ]]; then
  "$mambacpp" init --preset "$preset" --out "$work/f32" --seed 1 >/dev/null
fi
for t in bf16 f16; do
  [[ -f $work/$t/model.safetensors ]] || "$mambacpp" init --preset "$preset" --out "$work/$t" --seed 1 --dtype "$t" >/dev/null
done
[[ -f $work/int8/model.safetensors ]] || "$mambacpp" quantize "$work/f32" --out "$work/int8" >/dev/null

# llama.cpp's converter imports transformers only to try AutoConfig first (it falls back to config.json),
# and names torch dtypes newer than Debian's torch 1.13: stand-ins for both, in a folder of their own.
stub=$work/pystub
mkdir -p "$stub/transformers"
cat >"$stub/transformers/__init__.py" <<'EOF'
class AutoConfig:
    @staticmethod
    def from_pretrained(*args, **kwargs):
        raise RuntimeError("transformers is not installed: config.json is read instead")
EOF
cat >"$stub/sitecustomize.py" <<'EOF'
import torch
for _name in ("uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2"):
    if not hasattr(torch, _name):
        setattr(torch, _name, object())  # named in a table only, never met in this model
EOF
# Older converters (before mid 2025) read the checkpoint through the safetensors package, which Debian 12
# lacks: a reader of the format's header and raw tensors stands in (with --no-lazy, get_tensor only). Those
# converters also kept the conv weight's middle axis of 1, which their llama.cpp then refused to load
# (ggml_ssm_conv asserts a matrix): the stand-in drops it, as the later converters do.
mkdir -p "$stub/safetensors"
cat >"$stub/safetensors/__init__.py" <<'EOF'
import json, struct
import numpy as np, torch

class _File:
    def __init__(self, path):
        raw = open(path, "rb").read()
        (n,) = struct.unpack("<Q", raw[:8])
        self.header = {k: v for k, v in json.loads(raw[8:8 + n]).items() if k != "__metadata__"}
        self.data = raw[8 + n:]
    def __enter__(self): return self
    def __exit__(self, *args): return False
    def keys(self): return list(self.header)
    def get_tensor(self, name):
        h = self.header[name]
        begin, end = h["data_offsets"]
        kinds = {"F32": (np.float32, None), "F16": (np.float16, None), "BF16": (np.int16, torch.bfloat16)}
        np_dtype, view = kinds[h["dtype"]]
        t = torch.from_numpy(np.frombuffer(self.data[begin:end], dtype=np_dtype).copy().reshape(h["shape"]))
        if name.endswith("conv1d.weight"):  # (d_inner, 1, d_conv) -> (d_inner, d_conv), as llama.cpp loads it
            t = t.squeeze(1)
        return t.view(view) if view else t

def safe_open(path, framework="pt", device="cpu"):
    return _File(path)
EOF
pypath=$llama_src/gguf-py
/usr/bin/python3 -c 'import transformers' 2>/dev/null || pypath=$stub:$pypath
lazy=()
if ! /usr/bin/python3 -c 'import safetensors' 2>/dev/null; then
  [[ $pypath == "$stub":* ]] || pypath=$stub:$pypath
  lazy=(--no-lazy)
fi
for t in f32 bf16 f16 q8_0; do
  [[ -f $work/gguf/$t.gguf ]] && continue
  echo "converting to GGUF $t" >&2
  PYTHONPATH=$pypath /usr/bin/python3 "$llama_src/convert_hf_to_gguf.py" "$work/f32" --outtype "$t" "${lazy[@]}" \
    --outfile "$work/gguf/$t.gguf" >"$work/gguf/$t.log" 2>&1 || { tail "$work/gguf/$t.log" >&2; exit 1; }
done

# ---- floors, then the runs, interleaved ----
echo "{\"floors\": $("$floors" --threads "$threads")}" | tee -a "$out" >&2
rss() {  # runs a command; its peak RSS in KiB goes to the file named first
  local file=$1
  shift
  /usr/bin/time -f %M -o "$file" "$@"
}
declare -A ours=([fp32]=f32 [bf16]=bf16 [f16]=f16 [int8]=int8) theirs=([fp32]=f32 [bf16]=bf16 [f16]=f16 [int8]=q8_0)
for ((r = 1; r <= runs; r++)); do
  for p in fp32 bf16 f16 int8; do
    echo "run $r/$runs $p" >&2
    rss "$work/rss" "$mambacpp" -t "$threads" bench "$work/${ours[$p]}" --prompt "$prompt" --steps "$steps" --repeats 1 |
      while read -r line; do echo "{\"who\": \"mamba.cpp\", \"precision\": \"$p\", \"run\": $r, \"result\": $line}"; done >>"$out"
    echo "{\"who\": \"mamba.cpp\", \"precision\": \"$p\", \"run\": $r, \"max_rss_kib\": $(cat "$work/rss")}" >>"$out"
    rss "$work/rss" "$llama_bench" -m "$work/gguf/${theirs[$p]}.gguf" -p "$prompt" -n "$steps" -t "$threads" -r 1 -o jsonl $llama_args 2>/dev/null |
      while read -r line; do echo "{\"who\": \"llama.cpp\", \"precision\": \"$p\", \"run\": $r, \"result\": $line}"; done >>"$out"
    echo "{\"who\": \"llama.cpp\", \"precision\": \"$p\", \"run\": $r, \"max_rss_kib\": $(cat "$work/rss")}" >>"$out"
    if [[ $p == bf16 ]]; then  # and with bf16 products (a no-op on CPUs without AVX-512 BF16)
      "$mambacpp" -t "$threads" --bf16-products bench "$work/bf16" --prompt "$prompt" --steps "$steps" --repeats 1 |
        while read -r line; do echo "{\"who\": \"mamba.cpp\", \"precision\": \"bf16p\", \"run\": $r, \"result\": $line}"; done >>"$out"
    fi
    for b in $batches; do
      ((b > 1)) || continue
      "$mambacpp" -t "$threads" bench "$work/${ours[$p]}" --batch "$b" --prompt 16 --steps $((steps / 2)) --repeats 1 |
        grep '"decode"' | while read -r line; do echo "{\"who\": \"mamba.cpp\", \"precision\": \"$p\", \"run\": $r, \"batch\": $b, \"result\": $line}"; done >>"$out"
    done
  done
done
echo "results: $out" >&2

# ---- one table ----
python3 - "$out" "$preset" "$threads" "$prompt" "$work/f32/config.json" <<'EOF'
import json, statistics, sys
path, preset, threads, prompt, config_path = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
rows = [json.loads(l) for l in open(path)]
floors = next(r["floors"] for r in rows if "floors" in r)
bw, gflops = floors["read_gb_per_s"], floors["sgemm_gflop_per_s"]
prec = ["fp32", "bf16", "f16", "int8"]
def pick(who, p, kind, batch=None):
    v = []
    for r in rows:
        if r.get("who") != who or r.get("precision") != p or "result" not in r:
            continue
        res = r["result"]
        if who == "mamba.cpp":
            if res.get("bench") == kind and r.get("batch") == batch:
                v.append(res["tokens_per_s"])
        elif batch is None:
            if (kind == "prefill" and res.get("n_prompt") == prompt and res.get("n_gen") == 0) or \
               (kind == "decode" and res.get("n_gen", 0) > 0 and res.get("n_prompt") == 0):
                v.append(res["avg_ts"])
    return v
def rss(who, p):
    v = [r["max_rss_kib"] / 1024 for r in rows if r.get("who") == who and r.get("precision") == p and "max_rss_kib" in r]
    return max(v) if v else None
def fmt(v):
    if not v: return "–"
    return f"{statistics.median(v):,.0f} ({min(v):,.0f}–{max(v):,.0f})"
wbytes = {}
params = None
for r in rows:
    if r.get("who") == "mamba.cpp" and "result" in r and r.get("batch") is None:
        wbytes[r["precision"]] = r["result"]["weight_bytes"]
        params = r["result"]["params"]
print(f"\n{preset}, {threads} threads, tokens/s: median (min–max) of the runs; floors from {bw:.1f} GB/s read, {gflops:.0f} GFLOP/s sgemm\n")
print("| figure | " + " | ".join(f"{w} {p}" for p in prec for w in ("llama.cpp", "mamba.cpp")) + " |")
print("|---" * (1 + 2 * len(prec)) + "|")
line = "| prefill " + str(prompt) + " | "
line += " | ".join(f"{fmt(pick('llama.cpp', p, 'prefill'))} | {fmt(pick('mamba.cpp', p, 'prefill'))}" for p in prec) + " |"
print(line)
line = "| decode | " + " | ".join(f"{fmt(pick('llama.cpp', p, 'decode'))} | {fmt(pick('mamba.cpp', p, 'decode'))}" for p in prec) + " |"
print(line)
line = "| max RSS, MiB | " + " | ".join(f"{rss('llama.cpp', p) or 0:,.0f} | {rss('mamba.cpp', p) or 0:,.0f}" for p in prec) + " |"
print(line)
if pick("mamba.cpp", "bf16p", "prefill"):
    print(f"| mamba.cpp bf16, --bf16-products: prefill {prompt} | – | – | – | {fmt(pick('mamba.cpp', 'bf16p', 'prefill'))} | – | – | – | – |")
    print(f"| mamba.cpp bf16, --bf16-products: decode | – | – | – | {fmt(pick('mamba.cpp', 'bf16p', 'decode'))} | – | – | – | – |")
batches = sorted({r["batch"] for r in rows if r.get("batch")})
for b in batches:
    print(f"| decode, batch {b} | " + " | ".join(f"– | {fmt(pick('mamba.cpp', p, 'decode', b))}" for p in prec) + " |")
cfg = json.load(open(config_path))
d_model = cfg.get("d_model", cfg.get("hidden_size"))
nonemb = params - cfg["vocab_size"] * d_model
prefill_floor = gflops * 1e9 / (2 * nonemb)
if "bf16_gemm_gflop_per_s" in floors:
    print(f"\nbf16 products: {floors['bf16_gemm_gflop_per_s']:.0f} GFLOP/s; prefill floor with them "
          f"{floors['bf16_gemm_gflop_per_s'] * 1e9 / (2 * nonemb):,.0f} tokens/s")
print(f"OpenBLAS's own sgemm here: {floors['openblas_sgemm_gflop_per_s']:.0f} GFLOP/s ({floors['blas']}); the products ran on {floors['gemm']}")
print(f"\nfloors: decode = weight bytes per step / {bw:.1f} GB/s; prefill = 2 · {nonemb / 1e6:.1f} M non-embedding "
      f"parameters per token / {gflops:.0f} GFLOP/s = {prefill_floor:,.0f} tokens/s (the scan and the rest come on top)\n")
print("| precision | weight MB | decode floor | mamba.cpp / floor | llama.cpp / floor | prefill: mamba.cpp / floor |")
print("|---|---|---|---|---|---|")
for p in prec:
    if p not in wbytes: continue
    floor = bw * 1e9 / wbytes[p]
    med = lambda v: statistics.median(v) if v else float("nan")
    print(f"| {p} | {wbytes[p] / 1e6:,.0f} | {floor:,.0f} | {med(pick('mamba.cpp', p, 'decode')) / floor:.2f} | "
          f"{med(pick('llama.cpp', p, 'decode')) / floor:.2f} | {med(pick('mamba.cpp', p, 'prefill')) / prefill_floor:.2f} |")
EOF
