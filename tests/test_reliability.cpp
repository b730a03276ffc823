// No input may crash the program, make it run away with memory, or make it compute garbage in silence
// (issue 21): each case found by trying, as a user and as an adversary would, is refused here with a
// clear error naming the file, field or flag, and a non-zero exit. Also: the checksums of checkpoint
// tensors, the memory checks and their figures, and the training options added with them.
#include <gtest/gtest.h>
#include <omp.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/error.h"
#include "core/json.h"
#include "core/limits.h"
#include "core/npy.h"
#include "core/safetensors.h"
#include "model/backprop.h"
#include "model/data.h"
#include "model/engine.h"
#include "model/generator.h"
#include "model/trainer.h"
#include "model/validate.h"
#include "small_model.h"
#include "test_util.h"

namespace mamba {
namespace {

using nlohmann::json;

const std::filesystem::path kF32 = test::fixtures_dir() / "hf_f32_L3_bias_untied";     // 2 layers, no checksums
const std::filesystem::path kBF16 = test::fixtures_dir() / "official_bf16_L3_untied";  // 3 layers, BF16

// ---- helpers ----

std::string read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

void copy_model(const std::filesystem::path& from, const std::filesystem::path& to) {
  std::filesystem::create_directories(to);
  std::filesystem::copy(from / "config.json", to / "config.json");
  std::filesystem::copy(from / "model.safetensors", to / "model.safetensors");
}

// A safetensors file's header and the absolute offset of byte `index` × dtype size into a tensor.
json header_of(const std::string& bytes, uint64_t* data_start) {
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  *data_start = 8 + n;
  return json::parse(bytes.substr(8, n));
}

uint64_t element_offset(const std::filesystem::path& file, const std::string& tensor, int64_t index) {
  uint64_t start;
  const json header = header_of(read_bytes(file), &start);
  const json& t = header.at(tensor);
  const uint64_t size = t["dtype"] == "F32" ? 4 : 2;
  return start + t["data_offsets"][0].get<uint64_t>() + static_cast<uint64_t>(index) * size;
}

// Overwrites element `index` of a tensor with `value`, in the tensor's dtype.
void set_element(const std::filesystem::path& file, const std::string& tensor, int64_t index, float value) {
  std::string bytes = read_bytes(file);
  uint64_t start;
  const bool f32 = header_of(bytes, &start).at(tensor)["dtype"] == "F32";
  const uint64_t at = element_offset(file, tensor, index);
  if (f32) {
    std::memcpy(bytes.data() + at, &value, 4);
  } else {
    const uint16_t h = f32_to_bf16(value);
    std::memcpy(bytes.data() + at, &h, 2);
  }
  write_bytes(file, bytes);
}

void flip_bit(const std::filesystem::path& file, uint64_t byte, int bit) {
  std::string bytes = read_bytes(file);
  bytes[byte] = static_cast<char>(bytes[byte] ^ (1 << bit));
  write_bytes(file, bytes);
}

// Runs the CLI; returns its exit status (128 + signal for a crash) with stdout and stderr in *output.
int run_cli(const std::string& args, std::string* output) {
  const std::string command = std::string(MAMBA_CLI_PATH) + " " + args + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  std::array<char, 4096> buffer;
  output->clear();
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) output->append(buffer.data(), n);
  const int status = pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Expects the CLI to exit with status 1 and a message holding every one of `parts`.
void expect_cli_error(const std::string& args, std::initializer_list<std::string> parts) {
  std::string out;
  EXPECT_EQ(run_cli(args, &out), 1) << args << "\n" << out;
  for (const std::string& part : parts) EXPECT_NE(out.find(part), std::string::npos) << args << "\n" << out;
}

template <typename F>
void expect_error(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    for (const std::string& part : parts) EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

// A few text documents for byte-level training runs.
std::filesystem::path text_folder(const test::TempDir& tmp, int documents) {
  const auto dir = tmp / "text";
  std::filesystem::create_directories(dir);
  for (int d = 0; d < documents; d++) {
    std::ofstream out(dir / ("doc" + std::to_string(d) + ".txt"));
    for (int i = 0; i < 20; i++) out << "the quick brown fox " << d << " jumps " << i << ". ";
  }
  return dir;
}

// A tiny byte-level model's training command, in tmp/run, with `options` (kShape: its batches).
const std::string kShape = " --seq-len 16 --batch 2 ";
std::string tiny_train(const test::TempDir& tmp, int documents, const std::string& options) {
  return "-t 1 train --data " + text_folder(tmp, documents).string() +
         " --d-model 8 --n-layer 1 --eval-batches 1 --progress off --out " + (tmp / "run").string() + " " + options;
}

// ---- limits ----

TEST(Limits, SaturatingArithmeticNeverWraps) {
  EXPECT_EQ(sat_mul(int64_t{1} << 40, int64_t{1} << 40), INT64_MAX);
  EXPECT_EQ(sat_mul(3, 4), 12);
  EXPECT_EQ(sat_mul(INT64_MAX, 0), 0);
  EXPECT_EQ(sat_add(INT64_MAX, 1), INT64_MAX);
  EXPECT_EQ(format_bytes(INT64_MAX), "more than 8 EiB");
  EXPECT_EQ(format_bytes(3 << 20), "3.0 MiB");
}

TEST(Limits, ParseBytes) {
  EXPECT_EQ(parse_bytes("4G", "--max-memory"), int64_t{4} << 30);
  EXPECT_EQ(parse_bytes("512MiB", "--max-memory"), int64_t{512} << 20);
  EXPECT_EQ(parse_bytes("1000", "--max-memory"), 1000);
  EXPECT_EQ(parse_bytes("1.5k", "--max-memory"), 1536);
  for (const char* bad : {"", "G", "-1G", "4X", "nan", "1e300"}) {
    expect_error([&] { parse_bytes(bad, "--max-memory"); }, {"--max-memory", "is not a size"});
  }
}

TEST(Limits, CheckMemoryNamesTheWorkTheFigureAndTheLimit) {
  set_memory_limit(int64_t{1} << 30);
  expect_error([] { check_memory(int64_t{3} << 30, "the thing"); },
               {"the thing", "3.0 GiB needed", "1.0 GiB allowed", "--max-memory"});
  check_memory(int64_t{1} << 29, "a smaller thing");
  set_memory_limit(0);  // the machine's figure again
  EXPECT_GT(memory_limit(), 0);
  expect_error([] { check_memory(INT64_MAX, "everything"); }, {"everything", "more than 8 EiB"});
}

TEST(Limits, EstimatesCoverWhatIsAllocated) {
  Model model = test::small_model(5);
  const Config& c = model.config();
  Engine engine(model, 64);
  State state(c, 3);
  auto tokens = test::random_tokens(3 * 40, c.vocab_size, 1);
  std::vector<float> logits(static_cast<size_t>(3) * 40 * c.vocab_size);
  engine.forward(tokens.data(), 3, 40, state, logits.data());
  EXPECT_GE(engine_bytes(c, 3 * 21), engine.activation_bytes());  // chunks of 64 / 3 = 21 tokens
  EXPECT_EQ(state_bytes(c, 3), static_cast<int64_t>(state.conv().size() + state.ssm().size()) * 4);
  for (int L : {1, 17, 300}) {
    for (DType dtype : {DType::F32, DType::BF16, DType::F16}) {  // bf16, fp16: the CPU's staging and the copies
      Backprop bp(c, 2, L, 7, Backend::cpu(), dtype);
      EXPECT_GE(Backprop::bytes_needed(c, 2, L, 7, dtype), bp.activation_bytes() + bp.weight_copy_bytes())
          << L << " " << dtype_name(dtype);
    }
  }
  EXPECT_EQ(Backprop::bytes_needed(c, int64_t{1} << 40, int64_t{1} << 40, 256), INT64_MAX);
}

// A tensor of a file may start at any byte (after an int8 tensor of odd length): checked through
// copies, the NaN found at its index, with no misaligned read (UBSan runs this too).
TEST(Limits, NonFiniteValuesFoundInMisalignedTensors) {
  std::vector<float> values(5000, 1.0f);
  values[4321] = std::numeric_limits<float>::quiet_NaN();
  std::vector<char> bytes(values.size() * 4 + 1);
  std::memcpy(bytes.data() + 1, values.data(), values.size() * 4);
  expect_error([&] { check_finite(WeightView{bytes.data() + 1, DType::F32}, 1, 5000, "t"); }, {"t", "at index 4321 of 5000"});
  std::vector<uint16_t> halves(300, f32_to_bf16(1.0f));
  halves[7] = f32_to_bf16(std::numeric_limits<float>::infinity());
  std::memcpy(bytes.data() + 1, halves.data(), halves.size() * 2);
  expect_error([&] { check_finite(WeightView{bytes.data() + 1, DType::BF16}, 3, 100, "h"); }, {"h", "at index 7 of 300"});
}

// ---- JSON ----

TEST(Json, DeepNestingIsRefusedBeforeParsing) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  expect_error([&] { parse_json(deep, "x.json"); }, {"x.json", "nested deeper than 64"});
  EXPECT_NO_THROW(parse_json("{\"a\": \"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"}", "x"));
  EXPECT_EQ(json_brief(json::parse("[1, 2, 3]")), "an array of 3");
  EXPECT_LE(json_brief(std::string(10000, 'x')).size(), 80u);
}

TEST(Json, DeepConfigIsAnErrorNotAStackOverflow) {
  test::TempDir tmp;
  copy_model(kF32, tmp / "m");
  write_bytes(tmp / "m" / "config.json", "{\"hidden_size\": " + std::string(200000, '[') + std::string(200000, ']') + "}");
  expect_cli_error("info " + (tmp / "m").string(), {"config.json", "nested deeper"});
}

// ---- half precision without _Float16 ----

TEST(HalfPrecision, IntegerConversionEqualsTheHardware) {
#if defined(__FLT16_MAX__)
  for (uint32_t h = 0; h < 65536; h++) {
    const float a = f16_to_f32(static_cast<uint16_t>(h)), b = f16_to_f32_soft(static_cast<uint16_t>(h));
    ASSERT_EQ(0, std::memcmp(&a, &b, 4)) << std::hex << h;
  }
  Rng rng(7);
  for (int i = 0; i < 2000000; i++) {
    // Every exponent, with random mantissas: rounding, subnormals, overflow, NaN.
    const uint32_t bits = static_cast<uint32_t>(rng.next());
    float f;
    std::memcpy(&f, &bits, 4);
    ASSERT_EQ(f32_to_f16(f), f32_to_f16_soft(f)) << std::hex << bits;
  }
#else
  GTEST_SKIP() << "no _Float16 to compare with";
#endif
}

// ---- checksums ----

// A small model saved by this program: checksummed.
std::filesystem::path saved_model(const test::TempDir& tmp, DType dtype = DType::F32) {
  const auto dir = tmp / "saved";
  test::small_model(3).save(dir, dtype);
  return dir;
}

TEST(Checksums, EveryTensorWrittenCarriesOne) {
  test::TempDir tmp;
  const auto dir = saved_model(tmp);
  uint64_t start;
  const json header = header_of(read_bytes(dir / "model.safetensors"), &start);
  const json& meta = header.at("__metadata__");
  EXPECT_EQ(meta.at("checksum"), "xxh3_64");
  int tensors = 0;
  for (auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    tensors++;
    ASSERT_TRUE(meta.contains("xxh3_64:" + name)) << name;
    EXPECT_EQ(meta["xxh3_64:" + name].get<std::string>().size(), 16u);
  }
  EXPECT_EQ(tensors, static_cast<int>(param_specs(test::small_model(3).config()).size()));
}

TEST(Checksums, AFlippedBitInTensorDataIsNamed) {
  for (DType dtype : {DType::F32, DType::BF16}) {
    test::TempDir tmp;
    const auto dir = saved_model(tmp, dtype);
    Model::load(dir);  // intact
    // A low mantissa bit: the value stays finite and plausible, only the checksum can tell.
    const uint64_t at = element_offset(dir / "model.safetensors", "backbone.layers.1.mixer.in_proj.weight", 7);
    flip_bit(dir / "model.safetensors", at, 0);
    expect_error([&] { Model::load(dir); }, {"model.safetensors", "backbone.layers.1.mixer.in_proj.weight", "checksum"});
    std::string out;
    EXPECT_EQ(run_cli("info " + dir.string(), &out), 1) << out;
    EXPECT_NE(out.find("checksum mismatch"), std::string::npos) << out;
  }
}

TEST(Checksums, StateAndOptimizerFilesAreVerified) {
  test::TempDir tmp;
  Model model = test::small_model(4);
  State state(model.config(), 2);
  std::vector<float> h = state.ssm();
  for (size_t i = 0; i < h.size(); i++) h[i] = 0.001f * static_cast<float>(i % 97);
  state.set(state.conv(), h);
  state.save(tmp / "state.safetensors");
  EXPECT_EQ(State::load(tmp / "state.safetensors", model.config()).ssm(), h);
  flip_bit(tmp / "state.safetensors", element_offset(tmp / "state.safetensors", "ssm", 11), 3);
  expect_error([&] { State::load(tmp / "state.safetensors", model.config()); }, {"state.safetensors", "ssm", "checksum"});

  // A training checkpoint's optimizer state.
  std::string out;
  ASSERT_EQ(run_cli(tiny_train(tmp, 4, kShape + "--steps 2"), &out), 0) << out;
  const auto opt = tmp / "run" / "checkpoints" / "step-00000002" / "optimizer.safetensors";
  flip_bit(opt, element_offset(opt, "v", 5), 2);
  expect_cli_error(tiny_train(tmp, 4, "--resume " + (tmp / "run").string() + " --steps 3"),
                   {"optimizer.safetensors", "tensor v", "checksum mismatch"});
}

TEST(Checksums, FilesWithoutThemStillLoadAndADeclaredOneMustBeThere) {
  test::TempDir tmp;
  const auto dir = saved_model(tmp);
  std::vector<float> original;  // copied: the file is rewritten in place below, under its memory map
  {
    Model m = Model::load(dir);
    original = m.params_f32();
  }
  std::string bytes = read_bytes(dir / "model.safetensors");
  uint64_t start;
  json header = header_of(bytes, &start);
  const std::string data = bytes.substr(start);
  auto rewrite = [&](const json& h) {
    std::string text = h.dump();
    const uint64_t n = text.size();
    write_bytes(dir / "model.safetensors", std::string(reinterpret_cast<const char*>(&n), 8) + text + data);
  };
  // As another program writes it: no checksums at all.
  json plain = header;
  plain["__metadata__"] = {{"format", "pt"}};
  rewrite(plain);
  Model loaded = Model::load(dir);
  EXPECT_EQ(loaded.params_f32(), original);
  // Declared but one missing: the file was edited.
  json missing = header;
  missing["__metadata__"].erase("xxh3_64:backbone.norm_f.weight");
  rewrite(missing);
  expect_error([&] { Model::load(dir); }, {"backbone.norm_f.weight", "has no checksum"});
  // An algorithm this program does not know.
  json other = header;
  other["__metadata__"]["checksum"] = "crc32c";
  rewrite(other);
  expect_error([&] { Model::load(dir); }, {"checksum", "crc32c"});
}

// ---- the cases of the issue ----

TEST(IssueCases, ReversedLengthRangeInTasksEval) {
  test::TempDir tmp;
  const std::string model = (test::source_dir() / "docs" / "models" / "induction-heads-256").string();
  const std::string out = " --json " + (tmp / "e.json").string() + " --svg " + (tmp / "e.svg").string();
  expect_cli_error("tasks eval " + model + " --lengths 64..32" + out, {"--lengths", "64..32", "empty"});
  expect_cli_error("tasks eval " + model + " --lengths ," + out, {"--lengths"});
  expect_cli_error("tasks eval " + model + " --lengths 64..32,128" + out, {"--lengths", "64..32"});
}

// trainer.json of a sequential run, edited; resuming must refuse each edit naming the field.
class TrainerJsonEdits : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string out;
    ASSERT_EQ(run_cli(tiny_train(tmp_, 4, kShape + "--steps 2 --sequential"), &out), 0) << out;
    file_ = tmp_ / "run" / "checkpoints" / "step-00000002" / "trainer.json";
    original_ = json::parse(read_bytes(file_));
  }
  // Applies `edit` to the original trainer.json and expects resuming to fail naming `parts`.
  template <typename F>
  void expect_refused(F&& edit, std::initializer_list<std::string> parts) {
    json j = original_;
    edit(j);
    write_bytes(file_, j.dump());
    std::vector<std::string> all{"trainer.json"};
    all.insert(all.end(), parts.begin(), parts.end());
    std::string out;
    EXPECT_EQ(run_cli(tiny_train(tmp_, 4, "--resume " + (tmp_ / "run").string() + " --steps 4"), &out), 1)
        << j.dump() << "\n" << out;
    for (const std::string& part : all) EXPECT_NE(out.find(part), std::string::npos) << out;
  }
  test::TempDir tmp_;
  std::filesystem::path file_;
  json original_;
};

TEST_F(TrainerJsonEdits, NegativeSamplerCursor) {
  expect_refused([](json& j) { j["sampler_cursor"] = -100000; }, {"sampler_cursor", "-100000", "at least 0"});
  expect_refused([](json& j) { j["sampler_cursor"] = -1; }, {"sampler_cursor", "-1"});
}

TEST_F(TrainerJsonEdits, OptionsOutOfRangeOrOfTheWrongType) {
  expect_refused([](json& j) { j["options"]["seq_len"] = 0; }, {"seq_len", "at least 1"});
  expect_refused([](json& j) { j["options"]["seq_len"] = 1e8; }, {"seq_len", "must be an integer"});
  expect_refused([](json& j) { j["options"]["schedule"] = "foo"; }, {"schedule", "foo"});
  expect_refused([](json& j) { j["step"] = -5; }, {"step", "-5"});
  expect_refused([](json& j) { j["options"]["batch"] = -1; }, {"batch", "-1"});
  expect_refused([](json& j) { j["options"]["beta2"] = 1.5; }, {"beta2", "[0, 1)"});
  expect_refused([](json& j) { j["adam_steps"] = 99; }, {"adam_steps", "at most 2"});
  expect_refused([](json& j) { j["options"].erase("lr"); }, {"lr", "missing"});
  expect_refused([](json& j) { j["options"] = json::array({1, 2}); }, {"options", "JSON object"});
}

TEST_F(TrainerJsonEdits, SeqLenThatDoesNotFitIsRefusedWithTheFigure) {
  json j = original_;
  j["options"]["seq_len"] = 100000000;
  write_bytes(file_, j.dump());
  expect_cli_error("--max-memory 2G " + tiny_train(tmp_, 4, "--resume " + (tmp_ / "run").string() + " --steps 4"),
                   {"2 × 100000000 tokens", "needed", "2.0 GiB allowed"});
}

TEST(IssueCases, BillionLayerConfigIsRefusedByTheFileSize) {
  test::TempDir tmp;
  copy_model(kF32, tmp / "m");
  json config = json::parse(read_bytes(kF32 / "config.json"));
  config["num_hidden_layers"] = 1000000000;
  write_bytes(tmp / "m" / "config.json", config.dump());
  const std::string m = (tmp / "m").string();
  for (const std::string& command : {"info " + m, "score " + m + " --ids 1,2 --out " + (tmp / "l.npy").string(),
                                     "generate " + m + " --ids 1 -n 2",
                                     "train --init-from " + m + " --tokens " + m + "/config.json --out " + (tmp / "r").string()}) {
    expect_cli_error(command, {"config.json describes 1000000000 layers", "missing tensor"});
  }
  // Layers that exist but are too large for the bytes of the file.
  config["num_hidden_layers"] = 2;
  config["hidden_size"] = 4096;
  config["intermediate_size"] = 8192;
  write_bytes(tmp / "m" / "config.json", config.dump());
  expect_cli_error("info " + m, {"config.json: describes", "parameters", "of weights", "holds"});
}

TEST(IssueCases, TrainShapesThatCannotFitAreRefusedWithTheFigure) {
  test::TempDir tmp;
  const std::string base = "train --data " + text_folder(tmp, 3).string() + " --out " + (tmp / "r").string();
  expect_cli_error(base + " --d-model 1000000 --n-layer 1000", {"train:", "parameters", "PiB needed", "allowed"});
  expect_cli_error(base + " --d-model 16 --n-layer 1 --seq-len 2000000000", {"8 × 2000000000 tokens", "needed"});
  expect_cli_error(base + " --d-model 16 --n-layer 1 --batch 2000000000", {"2000000000 × 256 tokens", "needed"});
  expect_cli_error("init --d-model 1000000 --n-layer 1000 --out " + (tmp / "i").string(), {"init:", "needed"});
  expect_cli_error("--max-memory 1M " + base + " --d-model 64 --n-layer 2", {"needed", "1.0 MiB allowed (by --max-memory)"});
  EXPECT_FALSE(std::filesystem::exists(tmp / "r" / "checkpoints"));
}

TEST(IssueCases, TokenizerIdFarBeyondItsTokensIsRefusedWithTheFigure) {
  test::TempDir tmp;
  json tok = json::parse(read_bytes(test::source_dir() / "tests" / "fuzz" / "corpus" / "tokenizer_json" / "tiny.json"));
  tok["model"]["vocab"]["Ġthe"] = 2147483647;
  write_bytes(tmp / "tokenizer.json", tok.dump());
  expect_cli_error("--max-memory 4G tokenize " + (tmp / "tokenizer.json").string() + " hello",
                   {"tokenizer.json", "token ids up to 2147483647", "68.0 GiB needed"});
}

// A model whose tensor `name` has `value` at `index`, in dir (from the F32 or BF16 fixture).
std::filesystem::path poisoned(const test::TempDir& tmp, const std::filesystem::path& fixture, const std::string& name,
                               int64_t index, float value) {
  const auto dir = tmp / ("poisoned-" + std::to_string(std::hash<std::string>{}(name + std::to_string(value))));
  copy_model(fixture, dir);
  set_element(dir / "model.safetensors", name, index, value);
  return dir;
}

TEST(IssueCases, NonFiniteWeightsAreNamedAtLoad) {
  test::TempDir tmp;
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  for (const auto& [name, value] : std::vector<std::pair<std::string, float>>{
           {"backbone.embeddings.weight", nan}, {"backbone.layers.0.mixer.A_log", inf},
           {"backbone.norm_f.weight", -inf}, {"backbone.layers.1.mixer.in_proj.weight", nan}}) {
    const auto dir = poisoned(tmp, kF32, name, 5, value);
    expect_error([&] { Model::load(dir); }, {"model.safetensors", name, "non-finite", "at index 5"});
    expect_cli_error("score " + dir.string() + " --ids 1,2 --out " + (tmp / "l.npy").string(), {name, "non-finite"});
    expect_cli_error("generate " + dir.string() + " --ids 1 -n 3 --temperature 0", {name, "non-finite"});
  }
  const auto bf16 = poisoned(tmp, kBF16, "backbone.layers.2.mixer.A_log", 3, nan);
  expect_error([&] { Model::load(bf16); }, {"backbone.layers.2.mixer.A_log", "non-finite", "at index 3"});
  // A matrix kept in its own type is checked in that type: bf16 as it is, and as int8 after quantizing.
  const auto bf16_matrix = poisoned(tmp, kBF16, "backbone.layers.1.mixer.in_proj.weight", 7, inf);
  expect_error([&] { Model::load(bf16_matrix); }, {"in_proj.weight", "non-finite", "at index 7"});
  expect_error([&] { Model::load(bf16_matrix, DType::I8); }, {"in_proj.weight", "non-finite", "at index 7"});
}

TEST(IssueCases, NonFiniteLogitsStopScoringGenerationAndPerplexity) {
  test::TempDir tmp;
  // Finite weights whose logits overflow: the final norm scaled to the edge of fp32.
  auto dir = tmp / "m";
  copy_model(kF32, dir);
  const int d = json::parse(read_bytes(kF32 / "config.json"))["hidden_size"];
  for (int i = 0; i < d; i++) set_element(dir / "model.safetensors", "backbone.norm_f.weight", i, 3e38f);
  const std::string m = dir.string();
  expect_cli_error("score " + m + " --ids 1,2,3 --out " + (tmp / "l.npy").string(), {"score", "logits are not finite"});
  EXPECT_FALSE(std::filesystem::exists(tmp / "l.npy"));
  for (const char* sampling : {"--temperature 0", "--temperature 0.8 --seed 1", "--top-k 3 --top-p 0.5"}) {
    expect_cli_error("generate " + m + " --ids 1,2 -n 5 " + std::string(sampling), {"logits are not finite"});
  }
  write_npy(tmp / "ids.npy", std::vector<int32_t>{1, 2, 3}.data(), {3});
  expect_cli_error("perplexity " + m + " --ids-file " + (tmp / "ids.npy").string(), {"perplexity", "not finite"});
}

TEST(IssueCases, NonFiniteSavedStateIsNamed) {
  test::TempDir tmp;
  Model model = test::small_model(6);
  State state(model.config(), 1);
  std::vector<float> conv = state.conv();
  conv[4] = std::numeric_limits<float>::infinity();
  state.set(conv, state.ssm());
  state.save(tmp / "s.safetensors");
  expect_error([&] { State::load(tmp / "s.safetensors", model.config()); }, {"s.safetensors", "tensor conv", "index 4"});
}

TEST(IssueCases, FoldersGivenAsInputFilesAreClearErrors) {
  test::TempDir tmp;
  const std::string m = kF32.string(), dir = tmp.path().string();
  expect_cli_error("generate " + m + " --prompt-file " + dir, {dir, "is a folder, not a file"});
  expect_cli_error("perplexity " + m + " -f " + dir, {dir, "is a folder"});
  expect_cli_error("score " + m + " --ids-file " + dir + " --out " + (tmp / "x.npy").string(), {dir, "is a folder"});
  expect_cli_error("tokenize " + (test::source_dir() / "tests/fuzz/corpus/tokenizer_json/tiny.json").string() + " -f " + dir,
                   {dir, "is a folder"});
  expect_cli_error("generate " + m + " --batch-file " + dir, {dir, "is a folder"});
}

TEST(IssueCases, ResumeAppliesWhatCanChangeAndRefusesTheRest) {
  test::TempDir tmp;
  std::string out;
  ASSERT_EQ(run_cli(tiny_train(tmp, 4, kShape + "--steps 2 --lr 0.001"), &out), 0) << out;
  const std::string resume = "--resume " + (tmp / "run").string();
  // What fixes the data stream cannot change; the same value again is accepted.
  expect_cli_error(tiny_train(tmp, 4, resume + " --steps 4 --batch 4 --seq-len 16"), {"--batch 4 cannot change", "it is 2 there"});
  expect_cli_error(tiny_train(tmp, 4, resume + " --steps 4 --seq-len 32"), {"--seq-len 32 cannot change"});
  expect_cli_error(tiny_train(tmp, 4, resume + " --steps 4 --seed 9"), {"--seed 9 cannot change"});
  expect_cli_error(tiny_train(tmp, 4, resume + " --steps 4 --val-every 2"), {"--val-every 2 cannot change"});
  std::string shape = tiny_train(tmp, 4, resume + " --steps 4");
  shape.replace(shape.find("--d-model 8"), 11, "--d-model 9");
  expect_cli_error(shape, {"the model comes from the checkpoint", "cannot change"});
  // The schedule, the optimizer and the intervals change, and say so.
  ASSERT_EQ(run_cli(tiny_train(tmp, 4, resume + kShape + "--steps 4 --lr 0.002 --eval-every 1 --adam-eps 1e-6"), &out), 0)
      << out;
  EXPECT_NE(out.find("resuming at step 2 of 4"), std::string::npos) << out;
  EXPECT_NE(out.find("applied --lr 0.002 (was 0.001)"), std::string::npos) << out;
  EXPECT_NE(out.find("applied --steps 4 (was 2)"), std::string::npos) << out;
  EXPECT_NE(out.find("applied --adam-eps"), std::string::npos) << out;
  EXPECT_EQ(out.find("applied --batch"), std::string::npos) << out;  // given equal: not a change
  const json saved = json::parse(read_bytes(tmp / "run" / "checkpoints" / "step-00000004" / "trainer.json"));
  EXPECT_EQ(saved["options"]["lr"], 0.002);
  EXPECT_EQ(saved["options"]["adam_eps"], 1e-6);
  std::ifstream log(tmp / "run" / "log.jsonl");
  bool noted = false;
  for (std::string line; std::getline(log, line);) {
    const json j = json::parse(line);
    if (j.contains("resume")) noted = j["resume"] == 2 && j["changed"]["lr"] == json::array({0.001, 0.002});
  }
  EXPECT_TRUE(noted);
}

TEST(IssueCases, ResumingAFinishedRunIsAnError) {
  test::TempDir tmp;
  std::string out;
  ASSERT_EQ(run_cli(tiny_train(tmp, 4, kShape + "--steps 2"), &out), 0) << out;
  expect_cli_error(tiny_train(tmp, 4, "--resume " + (tmp / "run").string()), {"the run has finished (step 2 of 2)", "--steps"});
  expect_cli_error(tiny_train(tmp, 4, "--resume " + (tmp / "run").string() + " --steps 1"), {"has finished"});
  EXPECT_EQ(out.find("loss 0.0000"), std::string::npos);
}

TEST(IssueCases, ValidationOnTrainingDataIsSaid) {
  test::TempDir tmp;
  std::string out;
  ASSERT_EQ(run_cli(tiny_train(tmp, 3, kShape + "--steps 2 --eval-every 1"), &out), 0) << out;  // 3 documents, --val-every 20
  EXPECT_NE(out.find("no validation data"), std::string::npos) << out;
  EXPECT_NE(out.find("on training data"), std::string::npos) << out;
  std::ifstream log(tmp / "run" / "log.jsonl");
  int marked = 0;
  for (std::string line; std::getline(log, line);) marked += json::parse(line).value("val_data", "") == "train";
  EXPECT_EQ(marked, 2);
  // With validation documents, nothing is marked.
  test::TempDir other;
  ASSERT_EQ(run_cli(tiny_train(other, 6, kShape + "--steps 2 --eval-every 1 --val-every 3"), &out), 0) << out;
  EXPECT_EQ(out.find("no validation data"), std::string::npos) << out;
  EXPECT_EQ(read_bytes(other / "run" / "log.jsonl").find("val_data"), std::string::npos);
}

TEST(IssueCases, NoBadAllocOrCrashFromSizesInInput) {
  test::TempDir tmp;
  const std::string m = kF32.string();
  // A (B, L) ids file whose logits (B·L·V floats, 212 MB) do not fit.
  std::vector<int32_t> ids(1000 * 1000, 1);
  write_npy(tmp / "ids.npy", ids.data(), {1000, 1000});
  expect_cli_error("--max-memory 64M score " + m + " --ids-file " + (tmp / "ids.npy").string() + " --out " +
                       (tmp / "l.npy").string(),
                   {"score: logits of 1000 × 1000 tokens × 53", "needed", "64.0 MiB allowed"});
  expect_cli_error("--max-memory 1M bench " + m + " --batch 100000 --prompt 100000", {"bench", "needed"});
  expect_cli_error("--max-memory 64M tasks eval " + (test::source_dir() / "docs/models/induction-heads-256").string() +
                       " --lengths 64 --sequences 2000000000 --json " + (tmp / "e.json").string() + " --svg " +
                       (tmp / "e.svg").string(),
                   {"test sets of 2000000000 sequences", "needed"});
  expect_cli_error("--max-memory 64M tasks train induction-heads --batch 2000000000 --out " + (tmp / "t").string(),
                   {"task training", "needed"});
  expect_cli_error("--max-memory 1M perplexity " + m + " -f " + (kF32 / "config.json").string() + " --chunk 65536",
                   {"--chunk 65536", "needed"});
  expect_cli_error("--max-memory banana info " + m, {"--max-memory", "not a size"});
}

// ---- options added with the issue ----

TEST(TrainOptions, AdamEpsReachesTheOptimizer) {
  test::TempDir tmp;
  std::string out;
  // A huge ε makes each step tiny: the parameters after one step differ from the default's.
  ASSERT_EQ(run_cli(tiny_train(tmp, 4, kShape + "--steps 1 --adam-eps 10"), &out), 0) << out;
  const json saved = json::parse(read_bytes(tmp / "run" / "checkpoints" / "step-00000001" / "trainer.json"));
  EXPECT_EQ(saved["options"]["adam_eps"], 10.0);
  Model big_eps = Model::load(tmp / "run");
  test::TempDir tmp2;
  ASSERT_EQ(run_cli(tiny_train(tmp2, 4, kShape + "--steps 1"), &out), 0) << out;
  Model small_eps = Model::load(tmp2 / "run");
  const ParamSpec& s = big_eps.specs()[1];
  EXPECT_NE(0, std::memcmp(big_eps.param(s).f32(), small_eps.param(small_eps.specs()[1]).f32(), sizeof(float) * s.numel));
  EXPECT_NE(run_cli(tiny_train(tmp, 4, kShape + "--steps 1 --adam-eps 0"), &out), 0) << out;
  EXPECT_NE(out.find("--adam-eps"), std::string::npos) << out;
}

TEST(TrainOptions, FixedBatchAndDumpedGradientsEqualTheBackprop) {
  test::TempDir tmp;
  // The fixture model of the PyTorch parity tests, on random independent rows (B = 3, L + 1 = 12).
  const auto model_dir = test::fixtures_dir() / "train";
  Model model = Model::load(model_dir);
  const Config& c = model.config();
  const int B = 3, L = 11;
  auto rows = test::random_tokens(B * (L + 1), c.vocab_size, 5);
  write_npy(tmp / "rows.npy", rows.data(), {B, L + 1});
  std::string out;
  ASSERT_EQ(run_cli("-t 1 train --init-from " + model_dir.string() + " --fixed-batch " + (tmp / "rows.npy").string() +
                        " --steps 3 --eval-every 1 --progress off --dump-grads " + (tmp / "grads.safetensors").string() +
                        " --out " + (tmp / "run").string(), &out), 0) << out;
  EXPECT_NE(out.find("one fixed batch of 3 rows"), std::string::npos) << out;
  // The same gradients from the library, on inputs row[:L] and targets row[1:].
  std::vector<int32_t> inputs, targets;
  for (int b = 0; b < B; b++) {
    inputs.insert(inputs.end(), rows.begin() + b * (L + 1), rows.begin() + b * (L + 1) + L);
    targets.insert(targets.end(), rows.begin() + b * (L + 1) + 1, rows.begin() + (b + 1) * (L + 1));
  }
  std::vector<float> params = model.params_f32(), grads(params.size(), 0.0f);
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);  // as the command's -t 1: the sums then run in the same order, bitwise
  Backprop bp(c, B, L);
  const double loss = bp.step(params.data(), grads.data(), inputs.data(), targets.data());
  omp_set_num_threads(threads);
  SafeTensorsReader dumped = SafeTensorsReader::open_file(tmp / "grads.safetensors");
  EXPECT_NEAR(std::stod(dumped.metadata().at("loss")), loss, 1e-12 * std::abs(loss));
  EXPECT_EQ(dumped.metadata().at("step"), "0");
  for (const ParamSpec& s : model.specs()) {
    const TensorView* t = dumped.find(s.name);
    ASSERT_NE(t, nullptr) << s.name;
    EXPECT_EQ(t->shape, s.shape);
    EXPECT_EQ(0, std::memcmp(t->data, grads.data() + s.offset, sizeof(float) * s.numel)) << s.name;  // bitwise
  }
  // Every step trained on those rows: the logged validation is the loss of the batch itself.
  std::ifstream log(tmp / "run" / "log.jsonl");
  std::string first;
  std::getline(log, first);
  EXPECT_NEAR(json::parse(first)["loss"].get<double>(), loss, 1e-12 * std::abs(loss));
  // Flags that contradict the file, and rows that cannot be a batch.
  expect_cli_error("train --init-from " + model_dir.string() + " --fixed-batch " + (tmp / "rows.npy").string() +
                       " --batch 4 --out " + (tmp / "r2").string(),
                   {"--fixed-batch", "3 rows of 11 + 1 tokens", "--batch 4"});
  write_npy(tmp / "flat.npy", rows.data(), {B * (L + 1)});
  expect_cli_error("train --init-from " + model_dir.string() + " --fixed-batch " + (tmp / "flat.npy").string() +
                       " --out " + (tmp / "r3").string(),
                   {"flat.npy", "2-D array (B, L + 1)"});
}

TEST(TrainOptions, PerplexityOfIdsEqualsPerplexityOfTheText) {
  test::TempDir tmp;
  test::small_model(8, {.vocab = 257, .byte_level = true}).save(tmp / "m", DType::F32);
  const std::string text = "Fellow-Citizens of the Senate";
  write_bytes(tmp / "t.txt", text);
  std::vector<int32_t> ids(text.begin(), text.end());
  write_npy(tmp / "ids.npy", ids.data(), {static_cast<int64_t>(ids.size())});
  std::string a, b;
  ASSERT_EQ(run_cli("perplexity " + (tmp / "m").string() + " -f " + (tmp / "t.txt").string() + " --json", &a), 0) << a;
  ASSERT_EQ(run_cli("perplexity " + (tmp / "m").string() + " --ids-file " + (tmp / "ids.npy").string() + " --json", &b), 0) << b;
  const json ja = json::parse(a.substr(a.find('{'))), jb = json::parse(b.substr(b.find('{')));
  EXPECT_EQ(ja["nll"], jb["nll"]);
  EXPECT_EQ(ja["tokens"], jb["tokens"]);
  // Two rows: each scored from the start, the totals summed.
  std::vector<int32_t> two = ids;
  two.insert(two.end(), ids.begin(), ids.end());
  write_npy(tmp / "two.npy", two.data(), {2, static_cast<int64_t>(ids.size())});
  ASSERT_EQ(run_cli("perplexity " + (tmp / "m").string() + " --ids-file " + (tmp / "two.npy").string() + " --json", &b), 0) << b;
  const json j2 = json::parse(b.substr(b.find('{')));
  EXPECT_NEAR(j2["nll"].get<double>(), 2 * ja["nll"].get<double>(), 1e-9 * ja["nll"].get<double>());
  EXPECT_EQ(j2["sequences"], 2);
  expect_cli_error("perplexity " + (tmp / "m").string(), {"-f", "--ids-file"});
}

// ---- readers, directly ----

TEST(Readers, NpyShapesThatOverflowOrLieAreErrors) {
  test::TempDir tmp;
  auto npy = [&](const std::string& dict, const std::string& data) {
    std::string header = dict;
    header.append((64 - (10 + header.size() + 1) % 64) % 64, ' ');
    header += '\n';
    const uint16_t n = static_cast<uint16_t>(header.size());
    write_bytes(tmp / "a.npy", std::string("\x93NUMPY\x01\x00", 8) + std::string(reinterpret_cast<const char*>(&n), 2) +
                                   header + data);
    return tmp / "a.npy";
  };
  expect_error([&] { read_npy(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4), }", "")); },
               {"a.npy", "needs more than 8 EiB"});
  expect_error([&] { read_npy(npy("{'descr': '<i4', 'fortran_order': False, 'shape': (99999999999999999999999,), }", "")); },
               {"a.npy", "out of range"});
  expect_error([&] { read_npy(npy("{'descr': '<f4', 'shape': (1,), }", "abcd")); }, {"a.npy", "fortran_order"});
  expect_error([&] { read_npy(npy("{'descr': '<f4', 'fortran_order':", "abcd")); }, {"a.npy"});
  expect_error([&] { read_npy(npy("{'descr': '<f4junk', 'fortran_order': False, 'shape': (1,), }", "abcd")); },
               {"unsupported .npy dtype"});
  // An empty array is an array.
  EXPECT_TRUE(read_npy(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 3), }", "")).as_f32().empty());
}

TEST(Readers, StateShapesAreCheckedBeforeAllocating) {
  test::TempDir tmp;
  Model model = test::small_model(2, {.d_conv = 1});
  const Config& c = model.config();
  // With d_conv 1 the conv tail is empty whatever its batch, so only the ssm tensor bounds the batch
  // by the file's size: a billion sequences in the conv shape must be refused, not allocated.
  const int64_t di = c.d_inner();
  std::vector<float> ssm(static_cast<size_t>(c.n_layer) * di * c.d_state, 0.0f);
  write_safetensors(tmp / "s.safetensors",
                    {{"conv", {c.n_layer, int64_t{1} << 30, 0, di}, ssm.data()},
                     {"ssm", {c.n_layer, 1, di, c.d_state}, ssm.data()}});
  expect_error([&] { State::load(tmp / "s.safetensors", c); }, {"s.safetensors", "do not fit this model"});
}

TEST(Readers, TokenFilesWithLyingCountsAreErrors) {
  test::TempDir tmp;
  std::string bytes = "MAMBATOK";
  const uint32_t version = 1, width = 4;
  const uint64_t count = UINT64_MAX / 2;
  bytes.append(reinterpret_cast<const char*>(&version), 4).append(reinterpret_cast<const char*>(&width), 4);
  bytes.append(reinterpret_cast<const char*>(&count), 8).append("abcdabcd");
  write_bytes(tmp / "a.tok", bytes);
  expect_error([&] { load_token_dataset({tmp / "a.tok"}, 0, 0); }, {"a.tok", "header says"});
}

}  // namespace
}  // namespace mamba
