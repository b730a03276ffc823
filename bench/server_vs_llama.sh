#!/usr/bin/env bash
# `mambacpp serve` beside llama.cpp's `llama-server` on the same model on the CPU, under the same load:
# C clients at once, each streaming R requests of P random prompt tokens and N new tokens
# (bench/server_load.mjs), the two servers' runs interleaved for each C. Prints a markdown table and
# writes the JSON lines, and the servers' logs beside them, to cache/bench/.
#
#   bench/server_vs_llama.sh LLAMA_BUILD_DIR --model DIR --gguf FILE [--tokenizer JSON] [--threads 2]
#                            [--clients "1 2 4 8 16"] [--requests 4] [--prompt 64] [--tokens 32]
#
# DIR is a model folder (e.g. `mambacpp init --preset 130m --seed 1 --out DIR`: random weights) and FILE
# the same weights as GGUF (llama.cpp's convert_hf_to_gguf.py), for LLAMA_BUILD_DIR/bin/llama-server
# (llama.cpp built with -DLLAMA_BUILD_SERVER=ON). The prompts are token ids, so the tokenizer only has to
# exist (our server wants one for text; default: ../shared/data/gpt-neox-20b/tokenizer.json). Both servers
# stay loaded, and only one is under load at a time (an idle one takes no CPU time). Greedy decoding with
# ignore_eos: every request produces exactly N tokens on both.
#
# The two servers stream differently, and the measurement counts tokens, not text: llama-server sends one
# event per token (its text may be empty, and an incomplete UTF-8 character waits), ours sends an event
# only when there is text, so a token that decodes to nothing or to part of a character comes inside a
# later event. server_load.mjs therefore takes each request's token count from the stream's usage, times
# the events that carry tokens (TTFT: the first of them), divides a request's span by its tokens − 1
# for the per-token latency, and reports events per token (1: every token had its own event).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
llama_build=${1:?usage: $0 LLAMA_BUILD_DIR --model DIR --gguf FILE [options]}
shift
model="" gguf="" tokenizer=$here/../shared/data/gpt-neox-20b/tokenizer.json threads=2
clients="1 2 4 8 16" requests=4 prompt=64 tokens=32
while (($#)); do
  case $1 in
    --model) model=$2 ;;
    --gguf) gguf=$2 ;;
    --tokenizer) tokenizer=$2 ;;
    --threads) threads=$2 ;;
    --clients) clients=$2 ;;
    --requests) requests=$2 ;;
    --prompt) prompt=$2 ;;
    --tokens) tokens=$2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift 2
done
mambacpp=$here/build/mambacpp
llama_server=$llama_build/bin/llama-server
for f in "$mambacpp" "$llama_server" "$model/config.json" "$gguf" "$tokenizer"; do
  [[ -e $f ]] || { echo "missing $f" >&2; exit 1; }
done
max_clients=$(tr ' ' '\n' <<<"$clients" | sort -n | tail -1)
out=$here/cache/bench/server-$(date +%Y%m%d-%H%M%S).jsonl
mkdir -p "$(dirname "$out")"
logs=${out%.jsonl}.logs  # the servers' output, kept: llama-server logs each request's timings
mkdir -p "$logs"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

free_port() { node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})"; }
wait_healthy() {  # URL: /health answers 200 (llama-server answers 503 while it loads)
  for _ in $(seq 600); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "$1/health") == 200 ]] && return 0
    sleep 0.2
  done
  echo "no answer from $1 (the servers' output: $logs)" >&2
  exit 1
}

port=$(free_port)
"$mambacpp" -t "$threads" serve "$model" --tokenizer "$tokenizer" --port "$port" --max-batch "$max_clients" \
  --quiet >"$logs/mambacpp.out" 2>"$logs/mambacpp.err" &
pids+=($!)
mamba_url=http://127.0.0.1:$port
port=$(free_port)
# One slot per client; each slot's context holds its prompt and new tokens (a Mamba slot's state is fixed).
"$llama_server" -m "$gguf" --host 127.0.0.1 --port "$port" -t "$threads" -tb "$threads" -np "$max_clients" \
  -c $((max_clients * (prompt + tokens + 16))) >"$logs/llama.out" 2>"$logs/llama.err" &
pids+=($!)
llama_url=http://127.0.0.1:$port
wait_healthy "$mamba_url"
wait_healthy "$llama_url"

vocab=$(node -e "console.log(Math.min(50277, JSON.parse(require('fs').readFileSync('$model/config.json')).vocab_size))")
load() {  # LABEL URL CLIENTS SEED
  node "$here/bench/server_load.mjs" --label "$1" --url "$2" --clients "$3" --requests "$requests" --prompt "$prompt" \
    --tokens "$tokens" --vocab "$vocab" --seed "$4"
}
# Warm up both (weights paged in, buffers grown), then measure, interleaved.
load warmup "$mamba_url" 2 99 >/dev/null
load warmup "$llama_url" 2 99 >/dev/null
llama_commit=$(git -C "$llama_build/.." rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
cpu_flags=$(grep -o -w 'avx2\|avx512f\|avx512_bf16\|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ')
echo "# $(date -u +%FT%TZ) $(nproc) cores (${cpu_flags% }), load average $(cut -d' ' -f1-3 /proc/loadavg);" \
  "model $model / $gguf; llama.cpp $llama_commit; $threads threads each;" \
  "prompt $prompt tokens, $tokens new tokens, $requests requests per client" | tee "$out"
# Which server goes first alternates from one client count to the next, so that a change in the
# machine's load during the run falls on both alike.
first=mambacpp
for c in $clients; do
  if [[ $first == mambacpp ]]; then
    load mambacpp "$mamba_url" "$c" "$c" | tee -a "$out"
    load llama.cpp "$llama_url" "$c" "$c" | tee -a "$out"
    first=llama.cpp
  else
    load llama.cpp "$llama_url" "$c" "$c" | tee -a "$out"
    load mambacpp "$mamba_url" "$c" "$c" | tee -a "$out"
    first=mambacpp
  fi
done

node - "$out" <<'EOF'
const lines = require('fs').readFileSync(process.argv[2], 'utf8').split('\n').filter((l) => l.startsWith('{')).map(JSON.parse);
const f = (x, d = 1) => (x == null ? '–' : x.toFixed(d));
console.log('\n| clients | server | tokens/s (all clients) | TTFT p50 / p90 (s) | per-token p50 / p90 (ms) | gap p99 (ms) | events/token | load (1 min) |');
console.log('|---:|---|---:|---:|---:|---:|---:|---:|');
lines.sort((a, b) => a.clients - b.clients || (a.label === 'mambacpp' ? -1 : 1));
for (const r of lines) {
  console.log(`| ${r.clients} | ${r.label} | ${f(r.tokens_per_s)} | ${f(r.ttft_p50, 2)} / ${f(r.ttft_p90, 2)} | ` +
    `${f(r.tpot_p50 * 1000)} / ${f(r.tpot_p90 * 1000)} | ${f(r.itl_p99 * 1000)} | ${f(r.events_per_token, 2)} | ${f(r.load_1m, 2)} |`);
}
EOF
echo "JSON lines: $out; servers' logs: $logs"
