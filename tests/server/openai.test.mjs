// `mambacpp serve` against OpenAI's own client for Node (the npm package `openai`, which no one here
// wrote), on 127.0.0.1 and a free port: completions whole and streamed, the same text as `mambacpp
// generate`, 32 clients at once each getting what it gets alone, kept sessions, a client that leaves,
// and a table of bad requests. The model is tests/fixtures/bytes-tiny (byte-level: no tokenizer file
// needed); a GPT-NeoX tokenizer test runs when ../shared has the tokenizer.
//
//   node tests/server/openai.test.mjs        (ctest runs it with MAMBA_CLI set; exit 77: skipped)
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';

let OpenAI;
try {
  ({ default: OpenAI } = await import('openai'));
} catch {
  console.log('# skipped: the npm package openai is not installed (scripts/setup.sh runs npm ci in tests/server)');
  process.exit(77);
}

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const cli = process.env.MAMBA_CLI ?? path.join(root, 'build/mambacpp');
const model = path.join(root, 'tests/fixtures/bytes-tiny');
const neox = path.join(root, '../shared/data/gpt-neox-20b/tokenizer.json');
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'mambacpp-serve-'));
// Built with AddressSanitizer (`mambacpp --version` says so), the server's resident memory is the
// sanitizer allocator's (freed blocks held in quarantine, per-thread caches, larger stack frames) and
// grows with the requests whatever the code does: there, leaks are LeakSanitizer's to find, at the exit
// of each server (stop() must return 0).
const sanitized = execFileSync(cli, ['--version']).toString().includes('asan');
after(() => fs.rmSync(scratch, { recursive: true, force: true }));

// ---- a server per group of tests ----

const servers = [];
after(async () => {
  for (const s of servers) await s.stop();
});

async function serve(args = [], dir = model) {
  const proc = spawn(cli, ['serve', dir, '--port', '0', '--quiet', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  proc.stderr.on('data', (d) => (stderr += d));
  const port = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`the server did not start in 60 s: ${stderr}`)), 60_000);
    proc.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/listening on http:\/\/127\.0\.0\.1:(\d+)/);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    proc.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the server exited with ${code}: ${stderr}`));
    });
  });
  const url = `http://127.0.0.1:${port}`;
  const s = {
    proc,
    url,
    client: new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 120_000 }),
    stderr: () => stderr,
    // SIGTERM ends it cleanly: exit status 0 (under AddressSanitizer: no leak either).
    async stop() {
      if (proc.exitCode !== null) return proc.exitCode;
      const exited = once(proc, 'exit');
      proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 30_000);
      const [code] = await exited;
      clearTimeout(timer);
      return code;
    },
  };
  servers.push(s);
  return s;
}

async function metrics(s) {
  const text = await (await fetch(`${s.url}/metrics`)).text();
  const value = (name) => Number(text.match(new RegExp(`^${name} (\\S+)$`, 'm'))?.[1]);
  return { text, value };
}

function rss(s) {
  const status = fs.readFileSync(`/proc/${s.proc.pid}/status`, 'utf8');
  return Number(status.match(/VmRSS:\s+(\d+) kB/)[1]) * 1024;
}

// What `mambacpp generate` prints after the prompt, for the same options.
function generate(prompt, { tokens, temperature, seed, dtype }) {
  const args = ['generate', model, '-p', prompt, '-n', String(tokens), '--temperature', String(temperature), '--seed', String(seed)];
  if (dtype) args.push('--dtype', dtype);
  const out = execFileSync(cli, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  assert.ok(out.startsWith(prompt));
  return out.slice(prompt.length, -1);  // the prompt first, a newline last
}

async function complete(s, body) {
  if (!body.stream) return (await s.client.completions.create({ model: 'bytes-tiny', ...body })).choices[0].text;
  let text = '';
  for await (const chunk of await s.client.completions.create({ model: 'bytes-tiny', ...body })) {
    text += chunk.choices[0]?.text ?? '';
  }
  return text;
}

const words = ['The server', 'Mamba is', 'A state', 'Tokens', 'the model', 'Fellow', 'In the', 'selective scan'];

// ---- the basics, through the client ----

test('a completion, a stream, and the same text as mambacpp generate', { timeout: 180_000 }, async () => {
  const s = await serve();
  const whole = await s.client.completions.create({ model: 'bytes-tiny', prompt: 'The server', max_tokens: 24, temperature: 0 });
  assert.equal(whole.object, 'text_completion');
  assert.equal(whole.model, 'bytes-tiny');
  assert.equal(whole.choices.length, 1);
  assert.equal(whole.choices[0].finish_reason, 'length');
  assert.deepEqual(whole.usage, { prompt_tokens: 10, completion_tokens: 24, total_tokens: 34 });
  assert.equal(whole.choices[0].text, generate('The server', { tokens: 24, temperature: 0, seed: 0 }));

  let streamed = '', finish = null, usage = null, chunks = 0;
  const stream = await s.client.completions.create({
    model: 'bytes-tiny', prompt: 'The server', max_tokens: 24, temperature: 0, stream: true, stream_options: { include_usage: true },
  });
  for await (const chunk of stream) {
    chunks++;
    if (chunk.choices.length) {
      streamed += chunk.choices[0].text;
      finish = chunk.choices[0].finish_reason ?? finish;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(streamed, whole.choices[0].text);
  assert.equal(finish, 'length');
  assert.equal(usage.completion_tokens, 24);
  assert.ok(chunks >= 24, `${chunks} chunks: one per token`);

  // The raw stream: server-sent events ending with [DONE].
  const raw = await fetch(`${s.url}/v1/completions`, {
    method: 'POST', body: JSON.stringify({ prompt: 'Mamba is', max_tokens: 5, temperature: 0, stream: true }),
  });
  assert.match(raw.headers.get('content-type'), /^text\/event-stream/);
  const events = (await raw.text()).split('\n\n').filter(Boolean);
  assert.equal(events.at(-1), 'data: [DONE]');
  assert.ok(events.slice(0, -1).every((e) => e.startsWith('data: {')));

  // Sampled text too: the server's sampler and seed are generate's.
  for (const [prompt, temperature, seed] of [['Mamba is', 0, 0], ['A state', 0.8, 7], ['Tokens', 1.0, 12345], ['In the', 0.5, 3]]) {
    const want = generate(prompt, { tokens: 40, temperature, seed });
    assert.equal(await complete(s, { prompt, max_tokens: 40, temperature, seed }), want, `${prompt} T=${temperature} seed=${seed}`);
    assert.equal(await complete(s, { prompt, max_tokens: 40, temperature, seed, stream: true }), want);
  }
  assert.equal(await s.stop(), 0);
});

test('models, health, tokenize, detokenize, metrics', async () => {
  const s = await serve(['--name', 'tiny']);
  const models = await s.client.models.list();
  assert.deepEqual(models.data.map((m) => m.id), ['tiny']);
  assert.equal((await s.client.models.retrieve('tiny')).id, 'tiny');
  assert.deepEqual(await (await fetch(`${s.url}/health`)).json(), { status: 'ok' });
  const post = async (p, body) => (await fetch(`${s.url}${p}`, { method: 'POST', body: JSON.stringify(body) })).json();
  const { tokens } = await post('/tokenize', { content: 'héllo' });
  assert.deepEqual(tokens, [...Buffer.from('héllo')]);
  assert.deepEqual(await post('/detokenize', { tokens }), { content: 'héllo' });
  await s.client.completions.create({ model: 'tiny', prompt: 'x', max_tokens: 3 });
  const m = await metrics(s);
  for (const name of ['mambacpp_generated_tokens_total', 'mambacpp_tokens_per_second', 'mambacpp_batch_occupancy', 'mambacpp_queue_length']) {
    assert.ok(Number.isFinite(m.value(name)), `${name} in /metrics`);
  }
  assert.equal(m.value('mambacpp_generated_tokens_total'), 3);
  assert.match(m.text, /mambacpp_requests_total\{outcome="finished"\} 1/);
  assert.equal(await s.stop(), 0);
});

test('n continuations sample with seed + j; logprobs', async () => {
  const s = await serve();
  const r = await s.client.completions.create({ model: 'bytes-tiny', prompt: 'Fellow', max_tokens: 16, temperature: 0.9, seed: 40, n: 3 });
  assert.deepEqual(r.choices.map((c) => c.index), [0, 1, 2]);
  for (let j = 0; j < 3; j++) {
    assert.equal(r.choices[j].text, generate('Fellow', { tokens: 16, temperature: 0.9, seed: 40 + j }));
  }
  assert.equal(r.usage.completion_tokens, 48);
  const two = await s.client.completions.create({ model: 'bytes-tiny', prompt: ['Fellow', 'Mamba is'], max_tokens: 5, temperature: 0 });
  assert.equal(two.choices[1].text, generate('Mamba is', { tokens: 5, temperature: 0, seed: 0 }));

  const lp = await s.client.completions.create({ model: 'bytes-tiny', prompt: 'The server', max_tokens: 8, temperature: 0, logprobs: 3 });
  const { tokens, token_logprobs, top_logprobs, text_offset } = lp.choices[0].logprobs;
  assert.equal(tokens.join(''), lp.choices[0].text);
  assert.equal(token_logprobs.length, 8);
  assert.deepEqual(text_offset, [0, 1, 2, 3, 4, 5, 6, 7]);
  for (let t = 0; t < 8; t++) {
    assert.ok(token_logprobs[t] <= 0);
    const top = Object.entries(top_logprobs[t]);
    assert.equal(top.length, 3);
    assert.equal(top[0][0], tokens[t], 'greedy takes the most likely token');
    assert.equal(top[0][1], token_logprobs[t]);
  }
  assert.equal(await s.stop(), 0);
});

test('chat completions through the model folder\'s chat template', async () => {
  const dir = path.join(scratch, 'chat');
  fs.mkdirSync(dir);
  for (const f of ['config.json', 'model.safetensors']) fs.copyFileSync(path.join(model, f), path.join(dir, f));
  // havenhq/mamba-chat's template (zephyr's).
  const template = "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}";
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ eos_token: '</s>', chat_template: template }));
  const s = await serve([], dir);
  const messages = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Mamba is' }];
  const prompt = '<|system|>\nBe brief.</s>\n<|user|>\nMamba is</s>\n<|assistant|>\n';
  const want = (await s.client.completions.create({ model: 'chat', prompt, max_tokens: 12, temperature: 0 })).choices[0].text;
  const chat = await s.client.chat.completions.create({ model: 'chat', messages, max_tokens: 12, temperature: 0 });
  assert.equal(chat.object, 'chat.completion');
  assert.equal(chat.choices[0].message.role, 'assistant');
  assert.equal(chat.choices[0].message.content, want);
  assert.equal(chat.usage.prompt_tokens, Buffer.byteLength(prompt));
  let streamed = '', role = null;
  for await (const chunk of await s.client.chat.completions.create({ model: 'chat', messages, max_tokens: 12, temperature: 0, stream: true })) {
    role ??= chunk.choices[0]?.delta?.role;
    streamed += chunk.choices[0]?.delta?.content ?? '';
  }
  assert.equal(role, 'assistant');
  assert.equal(streamed, want);
  await assert.rejects(s.client.chat.completions.create({ model: 'chat', messages: [{ role: 'robot', content: 'x' }] }),
    (e) => e instanceof OpenAI.BadRequestError && /role/.test(e.message));
  assert.equal(await s.stop(), 0);
});

// ---- many clients at once ----

// On bf16 weights the CPU's decode computes each of up to 8 rows exactly as it computes one row
// (docs/server.md): batched streams must equal the same requests run alone, bit for bit, sampled
// ones included. 32 clients on a batch of 8: 24 wait their turn and join as others finish.
test('32 clients at once: each gets what it gets alone, none is lost, memory stays flat', { timeout: 300_000 }, async () => {
  const s = await serve(['--dtype', 'bf16', '--max-batch', '8', '--max-queue', '32']);
  const requests = Array.from({ length: 32 }, (_, i) => ({
    prompt: `${words[i % words.length]} ${i}`,
    max_tokens: 20 + (i % 7) * 6,
    temperature: i % 3 === 0 ? 0 : 0.9,
    seed: 1000 + i,
    stream: i % 2 === 0,
  }));
  const alone = [];
  for (const r of requests) alone.push(await complete(s, r));
  // The same requests alone through `mambacpp generate` (bf16 too): the server's batch of one.
  for (const i of [0, 1, 5]) {
    const r = requests[i];
    assert.equal(alone[i], generate(r.prompt, { tokens: r.max_tokens, temperature: r.temperature, seed: r.seed, dtype: 'bf16' }));
  }
  const sizes = [];
  for (let round = 0; round < 3; round++) {
    const together = await Promise.all(requests.map((r) => complete(s, r)));
    for (let i = 0; i < requests.length; i++) assert.equal(together[i], alone[i], `request ${i}, round ${round}`);
    sizes.push(rss(s));
  }
  const m = await metrics(s);
  assert.equal(m.value('mambacpp_batch_occupancy'), 0);
  assert.equal(m.value('mambacpp_queue_length'), 0);
  assert.match(m.text, /mambacpp_requests_total\{outcome="finished"\} 128/);
  // The first round grows what the batch needs (activations for 8 rows, threads' stacks); after it,
  // nothing is kept per request.
  if (!sanitized) {
    assert.ok(sizes[2] - sizes[0] < 4 << 20, `RSS after the rounds: ${sizes.map((b) => (b / 2 ** 20).toFixed(1)).join(', ')} MiB`);
  }
  assert.equal(await s.stop(), 0);
});

// On fp32 weights OpenBLAS computes a row of a batch in another order than one row alone: logits
// differ by a few 1e-6 (docs/server.md). Greedy streams must then agree token for token, except where
// the two most likely tokens are that close: from such a near-tie on, they may go different ways.
test('fp32: 32 greedy clients at once agree with their lone runs up to near-ties', { timeout: 300_000 }, async () => {
  const s = await serve(['--max-batch', '32']);
  const requests = Array.from({ length: 32 }, (_, i) => ({ prompt: `${words[i % words.length]} ${i * 7}`, max_tokens: 40, temperature: 0, logprobs: 2 }));
  const run = (r) => s.client.completions.create({ model: 'bytes-tiny', ...r }).then((x) => x.choices[0].logprobs);
  const alone = [];
  for (const r of requests) alone.push(await run(r));
  const together = await Promise.all(requests.map(run));
  let diverged = 0;
  for (let i = 0; i < requests.length; i++) {
    const a = alone[i], b = together[i];
    for (let t = 0; t < a.tokens.length; t++) {
      if (a.tokens[t] !== b.tokens[t]) {
        const [first, second] = Object.values(a.top_logprobs[t]);
        assert.ok(first - second < 1e-4, `request ${i} token ${t}: batched and alone differ where the top two are ${first - second} apart`);
        diverged++;
        break;
      }
      assert.ok(Math.abs(a.token_logprobs[t] - b.token_logprobs[t]) < 1e-4, `request ${i} token ${t}`);
    }
  }
  assert.ok(diverged <= 2, `${diverged} of 32 streams met a near-tie`);
  assert.equal(await s.stop(), 0);
});

// ---- sessions ----

test('a session goes on from its state: the next request sends only the new text', { timeout: 120_000 }, async () => {
  // `mambacpp generate --interactive` continues one state over turns, as a session does.
  const cliTurns = execFileSync(cli, ['generate', model, '-p', 'Mamba is', '-n', '12', '--temperature', '0', '--interactive'], {
    input: ' and\n selective\n', encoding: 'utf8', stdio: ['pipe', 'pipe', 'ignore'],
  }).split('\n');
  const want = [cliTurns[0].slice('Mamba is'.length), cliTurns[1], cliTurns[2]];
  const dir = path.join(scratch, 'sessions');
  for (const args of [[], ['--session-memory', '0', '--session-dir', dir]]) {
    const s = await serve(args);
    const turn = (prompt) => s.client.completions.create({ model: 'bytes-tiny', prompt, max_tokens: 12, temperature: 0, session: 'chat-1' });
    const first = await turn('Mamba is');
    assert.equal(first.session, 'chat-1');
    assert.equal(first.choices[0].text, want[0]);
    assert.equal((await turn(' and')).choices[0].text, want[1]);
    assert.equal((await turn(' selective')).choices[0].text, want[2]);
    if (args.length) assert.ok(fs.existsSync(path.join(dir, 'chat-1.safetensors')), 'evicted to its state file');
    const list = await (await fetch(`${s.url}/v1/sessions`)).json();
    assert.deepEqual(list.data.map((x) => x.id), ['chat-1']);
    assert.equal((await fetch(`${s.url}/v1/sessions/chat-1`, { method: 'DELETE' })).status, 200);
    assert.equal((await fetch(`${s.url}/v1/sessions/chat-1`, { method: 'DELETE' })).status, 404);
    // Gone: the same id starts afresh.
    assert.equal((await turn('Mamba is')).choices[0].text, want[0]);
    assert.equal(await s.stop(), 0);
  }
  // Kept across a restart: at shutdown the sessions in memory go to their files.
  const keep = path.join(scratch, 'kept');
  let s = await serve(['--session-dir', keep]);
  await s.client.completions.create({ model: 'bytes-tiny', prompt: 'Mamba is', max_tokens: 12, temperature: 0, session: 'k' });
  assert.equal(await s.stop(), 0);
  s = await serve(['--session-dir', keep]);
  const next = await s.client.completions.create({ model: 'bytes-tiny', prompt: ' and', max_tokens: 12, temperature: 0, session: 'k' });
  assert.equal(next.choices[0].text, want[1]);
  assert.equal(await s.stop(), 0);
});

// ---- clients that leave ----

test('a client that leaves mid-stream, or stops waiting, frees its slot', { timeout: 120_000 }, async () => {
  const s = await serve(['--max-tokens', '100000000']);
  const long = { model: 'bytes-tiny', prompt: 'The server', max_tokens: 100_000_000, temperature: 0.9, ignore_eos: true };
  const stream = await s.client.completions.create({ ...long, stream: true });
  let got = 0;
  for await (const chunk of stream) {
    if (++got === 5) break;  // leaving the loop aborts the request
  }
  const waitFor = async (what, ok) => {
    for (let i = 0; i < 200; i++) {
      const m = await metrics(s);
      if (ok(m)) return m;
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.fail(`${what}: ${(await metrics(s)).text}`);
  };
  await waitFor('the stream is cancelled', (m) => /outcome="cancelled"\} 1/.test(m.text) && m.value('mambacpp_batch_occupancy') === 0);
  // Not streaming: the client gives up waiting.
  const controller = new AbortController();
  const pending = s.client.completions.create(long, { signal: controller.signal });
  await waitFor('the request runs', (m) => m.value('mambacpp_batch_occupancy') === 1);
  controller.abort();
  await assert.rejects(pending);
  await waitFor('the request is cancelled', (m) => /outcome="cancelled"\} 2/.test(m.text) && m.value('mambacpp_batch_occupancy') === 0);
  // And the server goes on serving.
  assert.equal((await s.client.completions.create({ model: 'bytes-tiny', prompt: 'x', max_tokens: 2 })).usage.completion_tokens, 2);
  assert.equal(await s.stop(), 0);
});

// ---- bad requests ----

test('bad requests get a 4xx with a message, in OpenAI\'s shape', { timeout: 120_000 }, async () => {
  const s = await serve(['--max-prompt', '64', '--max-tokens', '1000', '--max-batch', '4']);
  const cases = [
    // [path, body (object or raw text), status, part of the message]
    ['/v1/completions', 'not json', 400, 'not valid JSON'],
    ['/v1/completions', '', 400, 'not valid JSON'],
    ['/v1/completions', '[1, 2]', 400, 'must be a JSON object'],
    ['/v1/completions', '{"prompt": "a", "max_tokens": 2', 400, 'not valid JSON'],
    ['/v1/completions', {}, 400, '"prompt" is required'],
    ['/v1/completions', { prompt: 5 }, 400, '"prompt" must be'],
    ['/v1/completions', { prompt: [] }, 400, 'empty list'],
    ['/v1/completions', { prompt: [1, 'a'] }, 400, '"prompt" must be'],
    ['/v1/completions', { prompt: [[1], 'a'] }, 400, '"prompt" must be'],
    ['/v1/completions', { prompt: [300] }, 400, 'out of range'],
    ['/v1/completions', { prompt: [-1] }, 400, 'out of range'],
    ['/v1/completions', { prompt: [1.5] }, 400, '"prompt" must be'],
    ['/v1/completions', { prompt: 'x'.repeat(65) }, 400, 'more than this server\'s limit of 64'],
    ['/v1/completions', { prompt: 'a', max_tokens: 0 }, 400, 'between 1 and 1000'],
    ['/v1/completions', { prompt: 'a', max_tokens: 1001 }, 400, 'between 1 and 1000'],
    ['/v1/completions', { prompt: 'a', max_tokens: 2.5 }, 400, 'must be an integer'],
    ['/v1/completions', { prompt: 'a', max_tokens: '10' }, 400, 'must be an integer, not a string'],
    ['/v1/completions', '{"prompt": "a", "max_tokens": 1e400}', 400, 'not valid JSON'],
    ['/v1/completions', '{"prompt": "a", "max_tokens": 99999999999999999999}', 400, 'must be an integer'],
    ['/v1/completions', { prompt: 'a', temperature: -0.1 }, 400, 'between 0 and 2'],
    ['/v1/completions', { prompt: 'a', temperature: 'hot' }, 400, 'must be a number'],
    ['/v1/completions', { prompt: 'a', temperature: [1] }, 400, 'must be a number, not an array'],
    ['/v1/completions', { prompt: 'a', top_p: 0 }, 400, '"top_p"'],
    ['/v1/completions', { prompt: 'a', top_p: 1.5 }, 400, '"top_p"'],
    ['/v1/completions', { prompt: 'a', top_k: -2 }, 400, '"top_k"'],
    ['/v1/completions', { prompt: 'a', min_p: 2 }, 400, '"min_p"'],
    ['/v1/completions', { prompt: 'a', repetition_penalty: 0 }, 400, '"repetition_penalty"'],
    ['/v1/completions', { prompt: 'a', n: 0 }, 400, '"n"'],
    ['/v1/completions', { prompt: 'a', n: 5 }, 400, '"n"'],
    ['/v1/completions', { prompt: ['a', 'b', 'c'], n: 2 }, 400, 'more than this server runs at once'],
    ['/v1/completions', { prompt: 'a', stop: '' }, 400, 'must not be empty'],
    ['/v1/completions', { prompt: 'a', stop: [1] }, 400, '"stop" must be'],
    ['/v1/completions', { prompt: 'a', stop: Array(17).fill('x') }, 400, 'at most 16'],
    ['/v1/completions', { prompt: 'a', logprobs: 21 }, 400, '"logprobs"'],
    ['/v1/completions', { prompt: 'a', logprobs: true }, 400, 'must be an integer, not a boolean'],
    ['/v1/completions', { prompt: 'a', stream: 'yes' }, 400, 'must be a boolean'],
    ['/v1/completions', { prompt: 'a', stream_options: { include_usage: true } }, 400, 'only for "stream": true'],
    ['/v1/completions', { prompt: 'a', stream: true, stream_options: { usage: true } }, 400, 'unrecognized field "usage"'],
    ['/v1/completions', { prompt: 'a', seed: 'abc' }, 400, '"seed" must be an integer'],
    ['/v1/completions', { prompt: 'a', echo: true, logprobs: 1 }, 400, 'not supported'],
    ['/v1/completions', { prompt: 'a', session: '../x' }, 400, '"session" must be'],
    ['/v1/completions', { prompt: 'a', session: 's', n: 2 }, 400, 'one prompt and n = 1'],
    ['/v1/completions', { prompt: 'a', max_token: 5 }, 400, 'unrecognized field "max_token"'],
    ['/v1/completions', { prompt: 'a', presence_penalty: 0.5 }, 400, 'not supported'],
    ['/v1/completions', { prompt: 'a', logit_bias: { 5: 1 } }, 400, 'not supported'],
    ['/v1/completions', { prompt: 'a', suffix: 'b' }, 400, 'not supported'],
    ['/v1/chat/completions', { messages: [{ role: 'user', content: 'hi' }] }, 400, 'no chat template'],
    ['/tokenize', { content: 5 }, 400, '"content"'],
    ['/detokenize', { tokens: [999] }, 400, 'not a token id'],
    ['/detokenize', { tokens: 'abc' }, 400, '"tokens"'],
    ['/v1/nothing', {}, 404, 'no such endpoint'],
  ];
  for (const [where, body, status, message] of cases) {
    const res = await fetch(`${s.url}${where}`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: typeof body === 'string' ? body : JSON.stringify(body),
    });
    const label = `${where} ${typeof body === 'string' ? body : JSON.stringify(body)}`.slice(0, 120);
    assert.equal(res.status, status, label);
    const reply = await res.json();
    assert.equal(typeof reply.error?.message, 'string', label);
    assert.ok(reply.error.message.includes(message), `${label}: "${reply.error.message}" lacks "${message}"`);
    assert.equal(reply.error.type, 'invalid_request_error', label);
  }
  assert.equal((await fetch(`${s.url}/v1/sessions/nope`, { method: 'DELETE' })).status, 404);
  assert.equal((await fetch(`${s.url}/v1/models/gpt-4`)).status, 404);
  // The client's own error classes.
  await assert.rejects(s.client.completions.create({ model: 'bytes-tiny', prompt: 'a', temperature: 5 }),
    (e) => e instanceof OpenAI.BadRequestError && e.status === 400 && /temperature/.test(e.message));
  await assert.rejects(s.client.chat.completions.create({ model: 'bytes-tiny', messages: [{ role: 'user', content: 'hi' }] }),
    (e) => e instanceof OpenAI.BadRequestError && /no chat template/.test(e.message));
  // Still serving, and nothing was left running.
  assert.equal((await s.client.completions.create({ model: 'bytes-tiny', prompt: 'ok', max_tokens: 3 })).usage.completion_tokens, 3);
  const m = await metrics(s);
  assert.equal(m.value('mambacpp_batch_occupancy'), 0);
  assert.equal(await s.stop(), 0);
});

test('an API key is asked of every /v1 request', async () => {
  const s = await serve(['--api-key', 'sesame']);
  const as = (key) => new OpenAI({ baseURL: `${s.url}/v1`, apiKey: key, maxRetries: 0 });
  await assert.rejects(as('wrong').completions.create({ model: 'bytes-tiny', prompt: 'a', max_tokens: 2 }),
    (e) => e instanceof OpenAI.AuthenticationError && e.status === 401 && /API key/.test(e.message));
  const none = await fetch(`${s.url}/v1/models`);
  assert.equal(none.status, 401);
  assert.match((await none.json()).error.message, /no API key/);
  assert.equal((await as('sesame').completions.create({ model: 'bytes-tiny', prompt: 'a', max_tokens: 2 })).choices.length, 1);
  assert.equal((await fetch(`${s.url}/health`)).status, 200);
  assert.equal(await s.stop(), 0);
});

// ---- a BPE tokenizer ----

test('text through a tokenizer.json (GPT-NeoX)', { skip: !fs.existsSync(neox) && 'no ../shared/data/gpt-neox-20b/tokenizer.json' }, async () => {
  const dir = path.join(scratch, 'neox');
  execFileSync(cli, ['init', '--d-model', '16', '--n-layer', '1', '--vocab', '50280', '--out', dir, '--seed', '2'], { stdio: 'ignore' });
  const s = await serve(['--tokenizer', neox], dir);
  const post = async (p, body) => (await fetch(`${s.url}${p}`, { method: 'POST', body: JSON.stringify(body) })).json();
  const { tokens } = await post('/tokenize', { content: 'Hello, world' });
  assert.deepEqual(tokens, [12092, 13, 1533]);
  const r = await s.client.completions.create({ model: 'neox', prompt: 'Hello, world', max_tokens: 6, temperature: 0, logprobs: 1 });
  assert.equal(r.usage.prompt_tokens, 3);
  assert.equal(r.choices[0].logprobs.tokens.length, 6);
  assert.equal(await s.stop(), 0);
});
