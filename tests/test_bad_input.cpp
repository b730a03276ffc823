// Bad input gives a clear error (naming the file and the tensor or field), never a crash or garbage:
// broken safetensors, broken configs, shapes that contradict the config, out-of-range token ids,
// bad flags. The CLI cases check the exit status and message of the real binary.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/npy.h"
#include "core/safetensors.h"
#include "model/engine.h"
#include "test_util.h"

namespace mamba {
namespace {

const std::filesystem::path kCase = test::fixtures_dir() / "hf_f32_L3_bias_untied";

// Copies a fixture model into `dir`, so that one file can be spoiled.
void copy_model(const std::filesystem::path& dir) {
  std::filesystem::copy(kCase / "config.json", dir / "config.json");
  std::filesystem::copy(kCase / "model.safetensors", dir / "model.safetensors");
}

std::string read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_text(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

// The safetensors header of the fixture, parsed, and a way to write a file with a changed header.
nlohmann::json fixture_header(std::string* data) {
  std::string bytes = read_bytes(kCase / "model.safetensors");
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  *data = bytes.substr(8 + n);
  return nlohmann::json::parse(bytes.substr(8, n));
}

void write_with_header(const std::filesystem::path& path, const nlohmann::json& header, const std::string& data) {
  std::string text = header.dump();
  uint64_t n = text.size();
  std::string bytes(reinterpret_cast<const char*>(&n), 8);
  write_text(path, bytes + text + data);
}

// Expects Model::load to throw an Error whose message contains every one of `parts`.
void expect_load_error(const std::filesystem::path& dir, std::initializer_list<std::string> parts) {
  try {
    Model::load(dir);
    ADD_FAILURE() << "loading " << dir << " succeeded";
  } catch (const Error& e) {
    for (const std::string& part : parts) EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

TEST(BadCheckpoint, Truncated) {
  test::TempDir tmp;
  copy_model(tmp.path());
  std::string bytes = read_bytes(kCase / "model.safetensors");
  write_text(tmp / "model.safetensors", bytes.substr(0, 5));
  expect_load_error(tmp.path(), {"model.safetensors", "truncated"});
  write_text(tmp / "model.safetensors", bytes.substr(0, bytes.size() - 100));
  expect_load_error(tmp.path(), {"model.safetensors", "out of range"});
}

TEST(BadCheckpoint, HeaderLengthPastTheEnd) {
  test::TempDir tmp;
  copy_model(tmp.path());
  std::string bytes = read_bytes(kCase / "model.safetensors");
  uint64_t huge = bytes.size();
  std::memcpy(bytes.data(), &huge, 8);
  write_text(tmp / "model.safetensors", bytes);
  expect_load_error(tmp.path(), {"model.safetensors", "header length", "past the end"});
}

TEST(BadCheckpoint, HeaderNotJson) {
  test::TempDir tmp;
  copy_model(tmp.path());
  std::string bytes = read_bytes(kCase / "model.safetensors");
  bytes[9] = '#';
  write_text(tmp / "model.safetensors", bytes);
  expect_load_error(tmp.path(), {"model.safetensors", "JSON"});
}

TEST(BadCheckpoint, OverlappingAndOutOfRangeOffsets) {
  test::TempDir tmp;
  copy_model(tmp.path());
  std::string data;
  nlohmann::json header = fixture_header(&data);
  nlohmann::json overlap = header;
  // Point D at the bytes of A_log (same size class is not needed for overlap detection).
  auto a = overlap["backbone.layers.0.mixer.D"]["data_offsets"];
  uint64_t size = a[1].get<uint64_t>() - a[0].get<uint64_t>();
  uint64_t begin = overlap["backbone.layers.0.mixer.A_log"]["data_offsets"][0].get<uint64_t>() + 4;
  overlap["backbone.layers.0.mixer.D"]["data_offsets"] = {begin, begin + size};
  write_with_header(tmp / "model.safetensors", overlap, data);
  expect_load_error(tmp.path(), {"model.safetensors", "overlap"});

  nlohmann::json out_of_range = header;
  out_of_range["backbone.norm_f.weight"]["data_offsets"] = {data.size() + 8, data.size() + 8 + 64};
  write_with_header(tmp / "model.safetensors", out_of_range, data);
  expect_load_error(tmp.path(), {"backbone.norm_f.weight", "out of range"});
}

TEST(BadCheckpoint, UnknownDtype) {
  test::TempDir tmp;
  copy_model(tmp.path());
  std::string data;
  nlohmann::json header = fixture_header(&data);
  header["backbone.norm_f.weight"]["dtype"] = "F8_E4M3";
  write_with_header(tmp / "model.safetensors", header, data);
  expect_load_error(tmp.path(), {"backbone.norm_f.weight", "unsupported dtype", "F8_E4M3"});
}

TEST(BadCheckpoint, ShapeContradictsConfig) {
  test::TempDir tmp;
  copy_model(tmp.path());
  nlohmann::json config = nlohmann::json::parse(read_bytes(kCase / "config.json"));
  config["state_size"] = config["state_size"].get<int>() + 1;
  write_text(tmp / "config.json", config.dump());
  expect_load_error(tmp.path(), {"model.safetensors", "x_proj.weight", "shape", "config.json implies"});
}

TEST(BadCheckpoint, MissingTensor) {
  test::TempDir tmp;
  copy_model(tmp.path());
  std::string data;
  nlohmann::json header = fixture_header(&data);
  header.erase("backbone.layers.1.mixer.dt_proj.bias");
  write_with_header(tmp / "model.safetensors", header, data);
  expect_load_error(tmp.path(), {"missing tensor", "backbone.layers.1.mixer.dt_proj.bias"});
}

TEST(BadCheckpoint, NoWeightsFile) {
  test::TempDir tmp;
  std::filesystem::copy(kCase / "config.json", tmp / "config.json");
  expect_load_error(tmp.path(), {"no model.safetensors"});
}

TEST(BadCheckpoint, ShardedIndexNamesMissingShard) {
  test::TempDir tmp;
  std::filesystem::copy(kCase / "config.json", tmp / "config.json");
  std::filesystem::copy(kCase / "model.safetensors", tmp / "part-1.safetensors");
  SafeTensorsReader one = SafeTensorsReader::open_file(tmp / "part-1.safetensors");
  nlohmann::json index;
  for (auto& [name, t] : one.tensors()) index["weight_map"][name] = "part-1.safetensors";
  index["weight_map"]["backbone.norm_f.weight"] = "part-2.safetensors";
  write_text(tmp / "model.safetensors.index.json", index.dump());
  expect_load_error(tmp.path(), {"part-2.safetensors"});
}

TEST(Sharded, ShardsLoadLikeOneFile) {
  test::TempDir tmp;
  std::filesystem::copy(kCase / "config.json", tmp / "config.json");
  SafeTensorsReader one = SafeTensorsReader::open_file(kCase / "model.safetensors");
  // Split the tensors in two shard files, as transformers does for large models.
  std::vector<std::vector<float>> storage;
  std::vector<TensorToWrite> first, second;
  nlohmann::json index;
  int i = 0;
  for (auto& [name, t] : one.tensors()) {
    storage.emplace_back(static_cast<size_t>(t.numel()));
    convert_to_f32(storage.back().data(), t.data, t.dtype, storage.back().size());
    const bool in_first = i++ % 2 == 0;
    (in_first ? first : second).push_back({name, t.shape, storage.back().data()});
    index["weight_map"][name] = in_first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  write_safetensors(tmp / "model-00001-of-00002.safetensors", first);
  write_safetensors(tmp / "model-00002-of-00002.safetensors", second);
  write_text(tmp / "model.safetensors.index.json", index.dump());
  Model sharded = Model::load(tmp.path());
  Model single = Model::load(kCase);
  for (size_t k = 0; k < single.specs().size(); k++) {
    const ParamSpec& s = single.specs()[k];
    EXPECT_EQ(0, std::memcmp(single.param(s).f32(), sharded.param(sharded.specs()[k]).f32(), sizeof(float) * s.numel))
        << s.name;
  }
}

TEST(BadConfig, NotJson) {
  test::TempDir tmp;
  copy_model(tmp.path());
  write_text(tmp / "config.json", "{\"hidden_size\": 16,");
  expect_load_error(tmp.path(), {"config.json", "not valid JSON"});
}

TEST(BadConfig, MissingField) {
  test::TempDir tmp;
  copy_model(tmp.path());
  nlohmann::json config = nlohmann::json::parse(read_bytes(kCase / "config.json"));
  config.erase("num_hidden_layers");
  write_text(tmp / "config.json", config.dump());
  expect_load_error(tmp.path(), {"config.json", "num_hidden_layers", "missing"});
}

TEST(BadConfig, NegativeAndWrongTypeFields) {
  test::TempDir tmp;
  copy_model(tmp.path());
  nlohmann::json config = nlohmann::json::parse(read_bytes(kCase / "config.json"));
  config["hidden_size"] = -16;
  write_text(tmp / "config.json", config.dump());
  expect_load_error(tmp.path(), {"config.json", "hidden_size", "positive"});
  config["hidden_size"] = "sixteen";
  write_text(tmp / "config.json", config.dump());
  expect_load_error(tmp.path(), {"config.json", "hidden_size", "integer"});
}

TEST(BadConfig, NeitherFormat) {
  test::TempDir tmp;
  copy_model(tmp.path());
  write_text(tmp / "config.json", "{\"model_type\": \"gpt2\"}");
  expect_load_error(tmp.path(), {"config.json", "neither"});
}

TEST(BadTokens, OutOfRangeIdIsAnError) {
  Model model = Model::load(kCase);
  Engine engine(model);
  State state(model.config(), 1);
  std::vector<float> logits(static_cast<size_t>(3) * model.config().vocab_size);
  int32_t tokens[3] = {1, model.config().vocab_size, 2};
  try {
    engine.forward(tokens, 1, 3, state, logits.data());
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("out of range"), std::string::npos) << e.what();
  }
  int32_t negative[1] = {-1};
  EXPECT_THROW(engine.step(negative, 1, state, logits.data()), Error);
}

TEST(BadState, WrongModel) {
  test::TempDir tmp;
  Model model = Model::load(kCase);
  State state(model.config(), 1);
  state.save(tmp / "state.safetensors");
  Model other = Model::load(test::fixtures_dir() / "hf_f32_L17_k2_untied");
  EXPECT_THROW(State::load(tmp / "state.safetensors", other.config()), Error);
  write_text(tmp / "garbage.safetensors", "not a state");
  EXPECT_THROW(State::load(tmp / "garbage.safetensors", model.config()), Error);
}

// Runs the CLI; returns its exit status and puts stderr+stdout in *output.
int run_cli(const std::string& args, std::string* output) {
  std::string command = std::string(MAMBA_CLI_PATH) + " " + args + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  std::array<char, 4096> buffer;
  output->clear();
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) output->append(buffer.data(), n);
  int status = pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

TEST(Cli, ErrorsExitNonZeroWithAMessage) {
  test::TempDir tmp;
  std::string out;
  EXPECT_EQ(run_cli("score " + kCase.string() + " --ids 1,99999 --out " + (tmp / "x.npy").string(), &out), 1);
  EXPECT_NE(out.find("out of range"), std::string::npos) << out;
  EXPECT_EQ(run_cli("score " + kCase.string() + " --ids 1,x --out " + (tmp / "x.npy").string(), &out), 1);
  EXPECT_NE(out.find("not a token id"), std::string::npos) << out;
  EXPECT_EQ(run_cli("info " + (tmp / "nothing").string(), &out), 1);
  EXPECT_NE(out.find("config.json"), std::string::npos) << out;
  EXPECT_NE(run_cli("init --preset 7b --out " + (tmp / "m").string(), &out), 0);
  EXPECT_NE(out.find("unknown preset"), std::string::npos) << out;
  EXPECT_NE(run_cli("score --bogus-flag", &out), 0);
  EXPECT_NE(run_cli("frobnicate", &out), 0);
  write_text(tmp / "ids.npy", "garbage");
  EXPECT_EQ(run_cli("score " + kCase.string() + " --ids-file " + (tmp / "ids.npy").string() + " --out " +
                        (tmp / "x.npy").string(), &out), 1);
  EXPECT_NE(out.find("ids.npy"), std::string::npos) << out;
}

TEST(Cli, TasksTrainSavesEveryNSteps) {
  test::TempDir tmp;
  std::string out;
  const std::string dir = (tmp / "ih").string();
  const std::string train = "-t 1 tasks train induction-heads --length 16 --batch 2 --eval-sequences 4 --steps 6 ";
  EXPECT_EQ(run_cli(train + "--eval-every 2 --save-every 3 --out " + dir, &out), 1);
  EXPECT_NE(out.find("--save-every 3 must be a multiple of --eval-every 2"), std::string::npos) << out;
  ASSERT_EQ(run_cli(train + "--eval-every 2 --save-every 4 --out " + dir, &out), 0) << out;
  EXPECT_TRUE(std::filesystem::exists(tmp / "ih" / "step-4" / "model.safetensors"));
  EXPECT_FALSE(std::filesystem::exists(tmp / "ih" / "step-2"));
  EXPECT_FALSE(std::filesystem::exists(tmp / "ih" / "step-6"));
  // The saved step is a complete task model: eval reads its task.json.
  ASSERT_EQ(run_cli("-t 1 tasks eval " + (tmp / "ih" / "step-4").string() + " --lengths 16 --sequences 4", &out), 0) << out;
  EXPECT_EQ(Model::load(tmp / "ih" / "step-4").config().d_model, 64);
}

TEST(Cli, InitInfoScoreRoundTrip) {
  test::TempDir tmp;
  std::string out;
  const std::string model = (tmp / "model").string();
  ASSERT_EQ(run_cli("init --d-model 32 --n-layer 2 --vocab 50 --seed 3 --dtype bf16 --out " + model, &out), 0) << out;
  ASSERT_EQ(run_cli("info " + model, &out), 0) << out;
  EXPECT_NE(out.find("BF16"), std::string::npos) << out;
  ASSERT_EQ(run_cli("score " + model + " --ids 1,2,3,4 --out " + (tmp / "logits.npy").string(), &out), 0) << out;
  NpyArray logits = read_npy(tmp / "logits.npy");
  EXPECT_EQ(logits.shape, (std::vector<int64_t>{4, 50}));
  // The CLI's logits equal the library's.
  Model m = Model::load(model);
  Engine engine(m);
  State state(m.config(), 1);
  int32_t tokens[4] = {1, 2, 3, 4};
  std::vector<float> expected(4 * 50);
  engine.forward(tokens, 1, 4, state, expected.data());
  EXPECT_EQ(logits.as_f32(), expected);
}

}  // namespace
}  // namespace mamba
