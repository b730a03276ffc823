#!/usr/bin/env bash
# The main job until training lands: a random model of the published 130m shape is initialised,
# scored and benchmarked on the CPU.
set -euo pipefail
cli=${1:-build/mambacpp}
model=cache/models/random-130m
echo "== init: a random 130m-shaped Mamba (official initialisation) in $model"
"$cli" init --preset 130m --seed 1 --out "$model"
echo "== info"
"$cli" info "$model"
echo "== score: logits of 8 tokens written to cache/logits.npy"
"$cli" score "$model" --ids 510,1234,50,7,9000,42,3,17 --out cache/logits.npy
echo "== bench: prefill 1×512 and 128 decode steps"
"$cli" bench "$model" --prompt 512 --steps 128
