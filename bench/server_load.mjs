// Load on an OpenAI-compatible /v1/completions endpoint (mambacpp serve, llama-server, vLLM): C clients
// at once, each sending R streamed requests one after another, every request a different prompt of P
// random token ids (so that no server can reuse a cached prefix) for exactly N new tokens (ignore_eos).
//
// What is timed: the stream's events that carry a token. A server sends one event per token, but not
// always with text: a token can decode to nothing or end inside a UTF-8 character (random weights make
// any token likely). llama-server then sends the event with empty text (or none while a character is
// incomplete); `mambacpp serve` sends none and its next event carries the held text with its own, so
// one event of ours can stand for several tokens. An event carries a token when it has a `choices`
// entry that is not the closing one (finish_reason set, no text). The number of tokens a request
// produced is taken from the stream's `usage` (asked for with stream_options.include_usage;
// llama-server sends it in its closing event), not from the events. An event's time is when the bytes
// that hold it arrived.
//
// Prints one JSON line:
//   tokens_per_s    all new tokens (by usage) / wall time from the first request to the last reply
//   ttft_*          time to first token: request sent → first event carrying a token, seconds
//   tpot_*          time per output token of a request after its first: (last − first token event) /
//                   (tokens − 1), tokens by usage; so a token that came merged into a later event is
//                   counted, and its wait shows in the gap before that event (when the first event
//                   carries k tokens the span holds tokens − k steps, and tpot reads low by that
//                   much; none: a request whose tokens all came in one event)
//   itl_*           gaps between a request's successive token events, seconds; a gap before an event
//                   that carries k tokens spans k decode steps
//   events_per_token  token events / tokens (1 when every token has its own event)
//   load_1m         the machine's 1-minute load average at the end (anything else running shows here)
// with percentiles p50, p90, p99 over requests (ttft, tpot) or gaps (itl). It fails, naming the request,
// only when a request produced no token at all.
//
//   node bench/server_load.mjs --url http://127.0.0.1:8080 --clients 4 --requests 2 --prompt 64 --tokens 32
//        [--vocab 50277] [--seed 1] [--model NAME] [--label mambacpp]
import { loadavg } from 'node:os';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, a, i, all) => (a.startsWith('--') ? [...pairs, [a.slice(2), all[i + 1]]] : pairs), []),
);
const url = args.url ?? 'http://127.0.0.1:8080';
const label = args.label ?? url;
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

// One streamed request: the times of its token events and the number of tokens it produced.
async function one(prompt, which) {
  const start = performance.now();
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: 'Bearer none' },
    body: JSON.stringify({
      model: args.model ?? 'model', prompt, max_tokens: newTokens, temperature: 0, ignore_eos: true, stream: true,
      stream_options: { include_usage: true },
    }),
  });
  if (!res.ok) throw new Error(`${label}, ${which}: ${res.status}: ${await res.text()}`);
  const times = [];
  let closed = null;  // when the closing event came
  let usage = null;
  let buffer = '';
  const decoder = new TextDecoder();
  for await (const bytes of res.body) {
    const now = performance.now();
    buffer += decoder.decode(bytes, { stream: true });
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (!event.startsWith('data: ') || event === 'data: [DONE]') continue;
      const chunk = JSON.parse(event.slice(6));
      if (chunk.error) throw new Error(`${label}, ${which}: ${JSON.stringify(chunk.error)}`);
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices?.[0];
      if (!choice) continue;
      if (choice.finish_reason != null && !choice.text) {
        closed = now;
      } else {
        times.push(now);
      }
    }
  }
  const tokens = usage?.completion_tokens ?? times.length;
  if (!tokens) {
    throw new Error(`${label}, ${which}: no token produced (${times.length} token events, usage ${JSON.stringify(usage)})`);
  }
  // Every token held back to the end: the closing event is when the client got them.
  if (!times.length) times.push(closed ?? performance.now());
  const gaps = times.slice(1).map((t, i) => (t - times[i]) / 1000);
  return {
    tokens,
    events: times.length,
    ttft: (times[0] - start) / 1000,
    tpot: times.length > 1 ? (times.at(-1) - times[0]) / 1000 / (tokens - 1) : null,
    gaps,
  };
}

function percentiles(values, name) {
  const v = values.filter((x) => x != null).sort((a, b) => a - b);
  const at = (p) => (v.length ? v[Math.min(v.length - 1, Math.floor((p / 100) * v.length))] : null);
  return { [`${name}_p50`]: at(50), [`${name}_p90`]: at(90), [`${name}_p99`]: at(99) };
}

const start = performance.now();
const results = (
  await Promise.all(
    Array.from({ length: clients }, async (_, c) => {
      const mine = [];
      for (let r = 0; r < requests; r++) mine.push(await one(prompts[c * requests + r], `client ${c} request ${r}`));
      return mine;
    }),
  ).catch((e) => {
    console.error(e.message);
    process.exit(1);
  })
).flat();
const wall = (performance.now() - start) / 1000;
const tokens = results.reduce((sum, r) => sum + r.tokens, 0);
const short = results.filter((r) => r.tokens !== newTokens).length;
if (short) console.error(`${label}: ${short} of ${results.length} requests produced other than ${newTokens} tokens`);
const round = (x) => Math.round(x * 1e4) / 1e4;
const out = {
  label,
  clients,
  requests: results.length,
  prompt_tokens: promptTokens,
  new_tokens: newTokens,
  wall_s: wall,
  tokens_per_s: tokens / wall,
  ...percentiles(results.map((r) => r.ttft), 'ttft'),
  ...percentiles(results.map((r) => r.tpot), 'tpot'),
  ...percentiles(results.flatMap((r) => r.gaps), 'itl'),
  events_per_token: results.reduce((sum, r) => sum + r.events, 0) / tokens,
  load_1m: loadavg()[0],
};
for (const k of Object.keys(out)) if (typeof out[k] === 'number') out[k] = round(out[k]);
console.log(JSON.stringify(out));
