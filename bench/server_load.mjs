// Load on an OpenAI-compatible /v1/completions endpoint (mambacpp serve, llama-server, vLLM): C clients
// at once, each sending R streamed requests one after another, every request a different prompt of P
// random token ids (so that no server can reuse a cached prefix) for exactly N new tokens (ignore_eos).
// Prints one JSON line:
//   tokens_per_s   all new tokens / wall time from the first request to the last reply (aggregate)
//   ttft_*         time to first token: request sent → first streamed text, seconds
//   tpot_*         time per output token of a request after its first: (last − first chunk) / (N − 1)
//   itl_*          gaps between a request's successive chunks (one per token, unless a token ends
//                  inside a UTF-8 character and its text waits for the next)
// with percentiles p50, p90, p99 over requests (ttft, tpot) or gaps (itl).
//
//   node bench/server_load.mjs --url http://127.0.0.1:8080 --clients 4 --requests 2 --prompt 64 --tokens 32
//        [--vocab 50277] [--seed 1] [--model NAME] [--label mambacpp]
const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, a, i, all) => (a.startsWith('--') ? [...pairs, [a.slice(2), all[i + 1]]] : pairs), []),
);
const url = args.url ?? 'http://127.0.0.1:8080';
const clients = Number(args.clients ?? 1);
const requests = Number(args.requests ?? 2);
const promptTokens = Number(args.prompt ?? 64);
const newTokens = Number(args.tokens ?? 32);
const vocab = Number(args.vocab ?? 50277);
let seed = BigInt(args.seed ?? 1);

// SplitMix64: the same prompts for every server given the same seed.
function next() {
  seed = (seed + 0x9e3779b97f4a7c15n) & 0xffffffffffffffffn;
  let z = seed;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & 0xffffffffffffffffn;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & 0xffffffffffffffffn;
  return z ^ (z >> 31n);
}
const prompts = Array.from({ length: clients * requests }, () =>
  Array.from({ length: promptTokens }, () => Number(next() % BigInt(vocab))),
);

async function one(prompt) {
  const start = performance.now();
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: 'Bearer none' },
    body: JSON.stringify({
      model: args.model ?? 'model', prompt, max_tokens: newTokens, temperature: 0, ignore_eos: true, stream: true,
    }),
  });
  if (!res.ok) throw new Error(`${res.status}: ${await res.text()}`);
  const times = [];
  let buffer = '';
  const decoder = new TextDecoder();
  for await (const bytes of res.body) {
    buffer += decoder.decode(bytes, { stream: true });
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (!event.startsWith('data: ') || event === 'data: [DONE]') continue;
      const chunk = JSON.parse(event.slice(6));
      if (chunk.error) throw new Error(JSON.stringify(chunk.error));
      if (chunk.choices?.[0]?.text) times.push(performance.now());
    }
  }
  if (!times.length) throw new Error('no text streamed');
  const gaps = times.slice(1).map((t, i) => (t - times[i]) / 1000);
  return { ttft: (times[0] - start) / 1000, tpot: (times.at(-1) - times[0]) / 1000 / Math.max(1, newTokens - 1), gaps };
}

function percentiles(values, name) {
  const v = [...values].sort((a, b) => a - b);
  const at = (p) => v[Math.min(v.length - 1, Math.floor((p / 100) * v.length))];
  return { [`${name}_p50`]: at(50), [`${name}_p90`]: at(90), [`${name}_p99`]: at(99) };
}

const start = performance.now();
const results = (
  await Promise.all(
    Array.from({ length: clients }, async (_, c) => {
      const mine = [];
      for (let r = 0; r < requests; r++) mine.push(await one(prompts[c * requests + r]));
      return mine;
    }),
  )
).flat();
const wall = (performance.now() - start) / 1000;
const round = (x) => Math.round(x * 1e4) / 1e4;
const out = {
  label: args.label ?? url,
  clients,
  requests: results.length,
  prompt_tokens: promptTokens,
  new_tokens: newTokens,
  wall_s: round(wall),
  tokens_per_s: round((results.length * newTokens) / wall),
  ...percentiles(results.map((r) => r.ttft), 'ttft'),
  ...percentiles(results.map((r) => r.tpot), 'tpot'),
  ...percentiles(results.flatMap((r) => r.gaps), 'itl'),
};
for (const k of Object.keys(out)) if (typeof out[k] === 'number') out[k] = round(out[k]);
console.log(JSON.stringify(out));
