// The server's parts without HTTP: request parsing (every body, however mangled, is either a request
// within the limits or an ApiError 400: never a crash, never another exception; these also run under
// the sanitizers) and the session store (one request at a time, eviction to state files and back).
// The HTTP server itself is tested with OpenAI's client in tests/server/openai.test.mjs.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/rng.h"
#include "mamba/mamba.h"
#include "server/chat_template.h"
#include "server/protocol.h"
#include "server/sessions.h"
#include "test_util.h"

namespace mamba::server {
namespace {

using nlohmann::json;

const std::filesystem::path kBytes = test::fixtures_dir() / "bytes-tiny";  // byte-level, V = 257

Limits limits() {
  Limits l;
  l.vocab = 257;
  l.max_prompt_tokens = 64;
  l.max_tokens = 1000;
  l.max_choices = 4;
  return l;
}

Codec bytes_codec() {
  Codec c;
  c.encode = [](std::string_view text) {
    std::vector<int32_t> ids;
    for (unsigned char ch : text) ids.push_back(ch);
    return ids;
  };
  c.decode = [](std::span<const int32_t> ids) { return std::string(ids.begin(), ids.end()); };
  return c;
}

// A JSON value of a random kind, sometimes extreme.
json random_value(Rng& rng, int depth = 0) {
  switch (rng.below(depth > 2 ? 8 : 10)) {
    case 0: return nullptr;
    case 1: return rng.below(2) == 1;
    case 2: return static_cast<int64_t>(rng.below(2000)) - 1000;
    case 3: return rng.uniform() * 4 - 1;
    case 4: return json::parse("18446744073709551615");
    case 5: return -9223372036854775807LL - 1;
    case 6: return std::string(rng.below(5), static_cast<char>('a' + rng.below(26)));
    case 7: return std::string("\xff\xfe\x00x", 4);
    case 8: {
      json a = json::array();
      for (uint64_t i = rng.below(4); i > 0; i--) a.push_back(random_value(rng, depth + 1));
      return a;
    }
    default: {
      json o = json::object();
      for (uint64_t i = rng.below(3); i > 0; i--) o[std::string(1, static_cast<char>('a' + rng.below(3)))] = random_value(rng, depth + 1);
      return o;
    }
  }
}

TEST(ServerProtocol, EveryMangledRequestIsARequestOrA400) {
  const Codec codec = bytes_codec();
  const json valid = {{"model", "m"}, {"prompt", "Hello"}, {"max_tokens", 5}, {"temperature", 0.5}, {"top_p", 0.9},
                      {"top_k", 4}, {"min_p", 0.1}, {"seed", 3}, {"n", 2}, {"stop", {"\n"}}, {"logprobs", 2},
                      {"stream", true}, {"stream_options", {{"include_usage", true}}}, {"ignore_eos", false},
                      {"repetition_penalty", 1.1}, {"echo", false}, {"user", "u"}};
  const std::vector<std::string> keys = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "min_p",
                                         "seed", "n", "stop", "logprobs", "stream", "stream_options", "ignore_eos",
                                         "session", "echo", "best_of", "suffix", "logit_bias", "presence_penalty",
                                         "unknown"};
  Rng rng(11);
  int accepted = 0, refused = 0;
  for (int trial = 0; trial < 4000; trial++) {
    json body = valid;
    for (uint64_t edits = 1 + rng.below(3); edits > 0; edits--) {
      const std::string& key = keys[rng.below(keys.size())];
      if (rng.below(4) == 0) {
        body.erase(key);
      } else {
        body[key] = random_value(rng);
      }
    }
    try {
      const CompletionRequest r = parse_completion(body, limits(), codec, 7);
      accepted++;
      ASSERT_GE(r.generation.max_new_tokens, 1);
      ASSERT_LE(r.generation.max_new_tokens, 1000);
      ASSERT_LE(r.choices(), 4);
      for (const auto& p : r.prompts) {
        ASSERT_LE(p.size(), 64u);
        for (int32_t id : p) ASSERT_TRUE(id >= 0 && id < 257);
      }
    } catch (const ApiError& e) {
      refused++;
      ASSERT_EQ(e.status(), 400) << e.what();
      ASSERT_FALSE(std::string(e.what()).empty());
      ASSERT_EQ(e.body()["error"]["type"], "invalid_request_error");
    }
  }
  EXPECT_GT(accepted, 100);
  EXPECT_GT(refused, 1000);
  // Bodies that are not JSON objects at all.
  for (std::string text : {"", "{", "[]", "null", "\"x\"", "{\"a\":}", "{\"a\": 1e99999}", "\xff\xff"}) {
    EXPECT_THROW(parse_body(text), ApiError) << text;
  }
  for (int trial = 0; trial < 500; trial++) {
    std::string text = valid.dump();
    for (uint64_t edits = 1 + rng.below(4); edits > 0; edits--) text[rng.below(text.size())] = static_cast<char>(rng.below(256));
    try {
      parse_completion(parse_body(text), limits(), codec, 7);
    } catch (const ApiError& e) {
      ASSERT_EQ(e.status(), 400);
    }
  }
}

TEST(ServerProtocol, OptionsBecomeTheLibrarysOptions) {
  const Codec codec = bytes_codec();
  CompletionRequest r = parse_completion(json{{"prompt", "ab"}}, limits(), codec, 99);
  EXPECT_EQ(r.prompts, (std::vector<std::vector<int32_t>>{{'a', 'b'}}));
  EXPECT_EQ(r.generation.max_new_tokens, 16);  // OpenAI's default for completions
  EXPECT_EQ(r.sampling.temperature, 1.0);
  EXPECT_EQ(r.sampling.seed, 99u);  // none given: the server's random one
  EXPECT_TRUE(r.generation.stop_at_eos);
  EXPECT_EQ(r.logprobs, -1);

  r = parse_completion(json::parse(R"({"prompt": [[1, 2], [3]], "seed": -1, "top_k": -1, "stop": "x",
                                       "ignore_eos": true, "n": 2, "logprobs": 0, "temperature": 0})"),
                       limits(), codec, 0);
  EXPECT_EQ(r.prompts, (std::vector<std::vector<int32_t>>{{1, 2}, {3}}));
  EXPECT_EQ(r.prompt_texts[1], "\x03");
  EXPECT_EQ(r.sampling.seed, UINT64_MAX);
  EXPECT_EQ(r.sampling.top_k, 0);
  EXPECT_EQ(r.generation.stop, std::vector<std::string>{"x"});
  EXPECT_FALSE(r.generation.stop_at_eos);
  EXPECT_EQ(r.choices(), 4);
  EXPECT_EQ(r.logprobs, 0);

  try {
    parse_completion(json{{"prompt", std::string(65, 'x')}}, limits(), codec, 0);
    FAIL();
  } catch (const ApiError& e) {
    EXPECT_EQ(e.code(), "context_length_exceeded");
    EXPECT_EQ(e.param(), "prompt");
  }
  const TokenLogprobs t = token_logprobs(std::vector<float>{0, 2, 2, -1}, 1, 2);
  EXPECT_NEAR(t.logprob, 2 - std::log(1 + 2 * std::exp(2.0) + std::exp(-1.0)), 1e-6);
  ASSERT_EQ(t.top.size(), 2u);
  EXPECT_EQ(t.top[0].first, 1);  // a tie goes to the lower id, as greedy sampling's does
  EXPECT_EQ(t.top[1].first, 2);
}

// One request at a time holds a session; past the memory budget the least recently used go to their
// state files, and come back from them as they were.
TEST(ServerSessions, HeldOnceEvictedToFilesAndBack) {
  test::TempDir dir;
  api::Model model(kBytes);
  api::SamplingOptions greedy;
  greedy.temperature = 0;
  api::GenerationOptions eight;
  eight.max_new_tokens = 8;
  SessionStore store(model, /*budget: one session*/ 1, dir.path());

  EXPECT_FALSE(store.acquire("a").has_value());
  EXPECT_THROW(store.acquire("a"), ApiError);
  api::Session a = model.session(greedy, eight);
  a.feed(model.encode("Mamba is"));
  a.generate();
  api::Session a_copy = a;
  store.release("a", std::move(a));
  EXPECT_EQ(store.count(), 0);  // over the budget at once: to its file
  EXPECT_TRUE(std::filesystem::exists(dir / "a.safetensors"));

  std::optional<api::Session> back = store.acquire("a");
  ASSERT_TRUE(back.has_value());
  EXPECT_FALSE(std::filesystem::exists(dir / "a.safetensors"));  // memory has the one copy
  back->set_options(greedy, eight);  // a request gives its own
  back->feed(model.encode(" and"));
  a_copy.feed(model.encode(" and"));
  EXPECT_EQ(back->generate().ids, a_copy.generate().ids);
  store.release("a", std::move(*back));
  EXPECT_EQ(store.list().size(), 1u);

  EXPECT_FALSE(store.acquire("b").has_value());
  store.abandon("b");
  EXPECT_EQ(store.list().size(), 1u);
  EXPECT_TRUE(store.erase("a"));
  EXPECT_FALSE(store.erase("a"));
  EXPECT_TRUE(store.list().empty());

  // Without a folder, sessions past the budget are forgotten.
  SessionStore forgetful(model, 0, {});
  forgetful.acquire("x");
  forgetful.release("x", model.session());
  EXPECT_FALSE(forgetful.acquire("x").has_value());
}

TEST(ServerSessions, IdsNameFiles) {
  EXPECT_TRUE(valid_session_id("chat-1_a.b"));
  for (const char* bad : {"", ".hidden", "..", "a/b", "a b", "é"}) EXPECT_FALSE(valid_session_id(bad)) << bad;
  EXPECT_FALSE(valid_session_id(std::string(129, 'a')));
}

// Chat templates render as Hugging Face's Jinja environment renders them (trim_blocks, lstrip_blocks).
TEST(ServerChat, TemplatesRenderAsHuggingFaceDoes) {
  const std::vector<ChatMessage> chat = {{"system", "Be brief."}, {"user", " hi "}, {"assistant", "yo"}, {"user", "and?"}};
  // havenhq/mamba-chat's (zephyr's) template, as its tokenizer_config.json has it.
  const ChatTemplate zephyr(
      "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n"
      "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
      "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
      "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}",
      "<s>", "</s>");
  EXPECT_EQ(zephyr.render(chat),
            "<|system|>\nBe brief.</s>\n<|user|>\n hi </s>\n<|assistant|>\nyo</s>\n<|user|>\nand?</s>\n<|assistant|>\n");
  const ChatTemplate chatml(
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
      "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}");
  EXPECT_EQ(chatml.render({{"user", "hi"}}), "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
  // Slices, filters, methods, loop, set, whitespace control, tests, `in`, conditional expressions.
  const ChatTemplate mixed(
      "{{ bos_token }}{% set first = messages[0] %}{% if first.role == 'system' %}[{{ first.content.upper() }}]{% endif %}\n"
      "  {%- for m in messages[1:] %}\n"
      "    {{- m.role|upper ~ ': ' ~ m.content|trim }}{% if not loop.last %} | {% endif %}\n"
      "  {%- endfor %}{{ ' #' ~ (messages|length) if 'and?' in messages[-1].content and x is not defined else '' }}",
      "<s>");
  EXPECT_EQ(mixed.render(chat), "<s>[BE BRIEF.]USER: hi | ASSISTANT: yo | USER: and? #4");
  const ChatTemplate refuses("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}");
  try {
    refuses.render(chat);
    FAIL();
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status(), 400);
    EXPECT_NE(std::string(e.what()).find("System role not supported"), std::string::npos);
  }
  for (const char* unknown : {"{% macro f() %}{% endmacro %}", "{{ range(3) }}", "{{ messages|dictsort }}", "{% if x %}"}) {
    EXPECT_THROW(ChatTemplate(unknown).render(chat), ApiError) << unknown;
  }

  test::TempDir dir;
  EXPECT_FALSE(ChatTemplate::find(dir.path()).has_value());
  std::ofstream(dir / "tokenizer_config.json") << R"({"eos_token": {"content": "</s>"}, "chat_template": "{{ messages[0].content + eos_token }}"})";
  const auto found = ChatTemplate::find(dir.path());
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->render(chat), "Be brief.</s>");
}

}  // namespace
}  // namespace mamba::server
