// Data-parallel training over MPI on the CPU (dist/comm.h, model/trainer.h): `mpirun -np 2 mambacpp train`
// against one process on the same global batches. The two differ only in the order of sums: each rank's
// weight gradients are sums over its half of the rows, added by the all-reduce, where one process sums all
// rows in one matrix product; the losses are sums of two halves. Hence a tolerance, not bitwise equality.
// Also: resuming with another number of ranks, a batch that does not split, a rank that dies and one that
// hangs (the job must stop within the timeout, its last checkpoint loadable). Skipped without MPI.
#include <signal.h>
#include <sys/wait.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "core/safetensors.h"
#include "model/model.h"
#include "model/trainer.h"
#include "small_model.h"
#include "test_util.h"

namespace mamba {
namespace {

#ifdef MAMBA_MPIEXEC
constexpr const char* kMpiexec = MAMBA_MPIEXEC;
#else
constexpr const char* kMpiexec = "";
#endif

#define REQUIRE_MPI()                                                                           \
  do {                                                                                          \
    if (!*kMpiexec || !std::filesystem::exists(kMpiexec)) GTEST_SKIP() << "no MPI in this build"; \
  } while (0)

struct Outcome {
  int status = 0;
  std::string output;
  double seconds = 0;
};

// A shell command with stderr and stdout captured.
Outcome shell(const std::string& command) {
  Outcome r;
  const auto start = std::chrono::steady_clock::now();
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  std::array<char, 4096> buffer;
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) r.output.append(buffer.data(), n);
  const int status = pclose(pipe);
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

// mpirun as root (CI's containers run as root) with more ranks than cores, one math thread per rank. Under
// the sanitizers the ranks run without LeakSanitizer: OpenMPI unloads its components at MPI_Finalize, and
// what they keep until exit is then reported from unknown modules, which no suppression can name (the
// same training code is leak-checked in one process by test_train; ASan and UBSan stay on here).
std::string mpirun(int ranks) {
  return std::string("env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 ") +
         "OMPI_MCA_btl_vader_single_copy_mechanism=none ASAN_OPTIONS=detect_leaks=0 " + kMpiexec + " -np " +
         std::to_string(ranks) + " ";
}

std::string cli() { return std::string(MAMBA_CLI_PATH) + " -t 1 train "; }

// The corpus and the options every run here shares: 2 layers of width 32, the global batch of 4 × 32
// bytes in 2 micro-batches (the buckets are then reduced during the second one's backward alone).
std::string data(const std::filesystem::path& dir) { return "--data " + (dir / "text").string() + " "; }

std::string common(const std::filesystem::path& dir, int batch = 4) {
  test::text_dataset(dir, 40);
  return data(dir) + "--d-model 32 --n-layer 2 --seq-len 32 --batch " + std::to_string(batch) +
         " --accum 2 --lr 3e-3 --warmup 4 --seed 3 --val-every 3 --eval-every 5 --eval-batches 2 --bucket-mb 0.01 "
         "--progress off ";
}

std::vector<nlohmann::json> steps_of(const std::filesystem::path& run) {
  std::vector<nlohmann::json> steps;
  std::ifstream in(run / "log.jsonl");
  for (std::string line; std::getline(in, line);) {
    nlohmann::json j = nlohmann::json::parse(line);
    if (j.contains("loss")) steps.push_back(j);
  }
  return steps;
}

double relative(double a, double b) { return std::abs(a - b) / std::max(std::abs(a), 1e-30); }

// Step by step from `from`: the losses within 1e-6 relative, the validations too, the gradient norms within
// 1e-5 (a norm sums squares of all the gradients, whose last bits differ).
void expect_same_trajectory(const std::vector<nlohmann::json>& a, const std::vector<nlohmann::json>& b, int64_t from = 1) {
  size_t checked = 0;
  for (const auto& x : a) {
    const int64_t step = x["step"].get<int64_t>();
    if (step < from) continue;
    auto y = std::find_if(b.begin(), b.end(), [&](const nlohmann::json& j) { return j["step"] == step; });
    ASSERT_NE(y, b.end()) << "step " << step << " missing";
    EXPECT_LE(relative(x["loss"].get<double>(), (*y)["loss"].get<double>()), 1e-6) << "loss at step " << step;
    EXPECT_LE(relative(x["grad_norm"].get<double>(), (*y)["grad_norm"].get<double>()), 1e-5) << "norm at step " << step;
    if (x.contains("val_loss")) {
      ASSERT_TRUE(y->contains("val_loss")) << "step " << step;
      EXPECT_LE(relative(x["val_loss"].get<double>(), (*y)["val_loss"].get<double>()), 1e-6) << "val at step " << step;
    }
    checked++;
  }
  EXPECT_GE(checked, 10u);
}

// The parameters of two saved models, element by element: within 1e-5 of the largest magnitude.
void expect_same_model(const std::filesystem::path& a, const std::filesystem::path& b) {
  const std::vector<float> x = Model::load(a).params_f32(), y = Model::load(b).params_f32();
  ASSERT_EQ(x.size(), y.size());
  float largest = 0, worst = 0;
  for (size_t i = 0; i < x.size(); i++) {
    largest = std::max(largest, std::abs(x[i]));
    worst = std::max(worst, std::abs(x[i] - y[i]));
  }
  EXPECT_LE(worst, 1e-5f * largest) << "largest |p| " << largest;
}

TEST(Distributed, TwoRanksFollowOneProcess) {
  REQUIRE_MPI();
  test::TempDir tmp;
  const std::string args = common(tmp.path()) + "--steps 20 ";
  const Outcome one = shell(cli() + args + "--out " + (tmp / "one").string());
  ASSERT_EQ(one.status, 0) << one.output;
  const Outcome two = shell(mpirun(2) + cli() + args + "--out " + (tmp / "two").string());
  ASSERT_EQ(two.status, 0) << two.output;
  EXPECT_NE(two.output.find("data parallel: MPI, rank 0 of 2"), std::string::npos) << two.output;
  // Rank 0 alone reports.
  EXPECT_EQ(two.output.find("rank 1 of 2"), std::string::npos) << two.output;
  const auto a = steps_of(tmp / "one"), b = steps_of(tmp / "two");
  ASSERT_EQ(a.size(), 20u);
  ASSERT_EQ(b.size(), 20u);
  expect_same_trajectory(a, b);
  expect_same_model(tmp / "one", tmp / "two");
  // The checkpoints' moments, gathered from the ranks' slices, match one process's.
  const auto ma = SafeTensorsReader::open_file(tmp / "one/checkpoints/step-00000020/optimizer.safetensors");
  const auto mb = SafeTensorsReader::open_file(tmp / "two/checkpoints/step-00000020/optimizer.safetensors");
  for (const char* name : {"m", "v"}) {
    const TensorView *x = ma.find(name), *y = mb.find(name);
    ASSERT_TRUE(x && y);
    ASSERT_EQ(x->numel(), y->numel());
    const auto* p = reinterpret_cast<const float*>(x->data);
    const auto* q = reinterpret_cast<const float*>(y->data);
    float largest = 0, worst = 0;
    for (int64_t i = 0; i < x->numel(); i++) {
      largest = std::max(largest, std::abs(p[i]));
      worst = std::max(worst, std::abs(p[i] - q[i]));
    }
    EXPECT_LE(worst, 1e-5f * largest) << name;
  }
}

TEST(Distributed, ResumesWithAnotherNumberOfRanks) {
  REQUIRE_MPI();
  test::TempDir tmp;
  // A constant schedule after the warmup: a run of 10 steps resumed to 20 is the run of 20.
  const std::string args = common(tmp.path()) + "--schedule constant ";
  ASSERT_EQ(shell(cli() + args + "--steps 20 --out " + (tmp / "whole").string()).status, 0);
  // 2 ranks, then 1 process.
  Outcome r = shell(mpirun(2) + cli() + args + "--steps 10 --out " + (tmp / "a").string());
  ASSERT_EQ(r.status, 0) << r.output;
  r = shell(cli() + data(tmp.path()) + "--resume " + (tmp / "a").string() + " --steps 20 --progress off");
  ASSERT_EQ(r.status, 0) << r.output;
  // 1 process, then 2 ranks.
  r = shell(cli() + args + "--steps 10 --out " + (tmp / "b").string());
  ASSERT_EQ(r.status, 0) << r.output;
  r = shell(mpirun(2) + cli() + data(tmp.path()) + "--resume " + (tmp / "b").string() + " --steps 20 --progress off");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto whole = steps_of(tmp / "whole");
  expect_same_trajectory(whole, steps_of(tmp / "a"));
  expect_same_trajectory(whole, steps_of(tmp / "b"));
  expect_same_model(tmp / "whole", tmp / "a");
  expect_same_model(tmp / "whole", tmp / "b");
}

TEST(Distributed, ABatchThatDoesNotSplitIsRefused) {
  REQUIRE_MPI();
  test::TempDir tmp;
  const Outcome r = shell(mpirun(2) + cli() + common(tmp.path(), 3) + "--steps 5 --out " + (tmp / "x").string());
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("must be a multiple of 2"), std::string::npos) << r.output;
  EXPECT_LT(r.seconds, 60);
}

// Rank 1 runs under a shell that, after `seconds`, sends the training process `signal`; the job must end
// with an error well within the timeout's reach, saying why, and leave a loadable checkpoint.
void fault(const std::string& signal, const std::string& expect) {
  test::TempDir tmp;
  const std::filesystem::path run = tmp / "run", pid_file = tmp / "rank1.pid";
  const std::string train = cli() + common(tmp.path()) + "--steps 1000000 --save-every 20 --dist-timeout 4 --out " +
                            run.string();
  // Rank 1 stops (or dies) once rank 0 has saved a checkpoint.
  const std::string script = "if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then " + train + " & echo $! > " +
                             pid_file.string() + "; while [ ! -d " + (run / "checkpoints").string() +
                             " ]; do sleep 0.2; done; sleep 1; kill -" + signal + " $!; wait $!; else exec " + train +
                             "; fi";
  std::ofstream(tmp / "rank.sh") << script << "\n";
  const Outcome r = shell("timeout -s KILL 120 " + mpirun(2) + "sh " + (tmp / "rank.sh").string());
  // A stopped process is not killed by the job's end: the test cleans up after itself.
  std::ifstream pid_in(pid_file);
  if (long pid = 0; pid_in >> pid && pid > 0) ::kill(static_cast<pid_t>(pid), SIGKILL);
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_LT(r.seconds, 100) << r.output;
  EXPECT_NE(r.output.find(expect), std::string::npos) << r.output;
  const std::filesystem::path last = Trainer::latest_checkpoint(run);
  ASSERT_FALSE(last.empty()) << r.output;
  EXPECT_NO_THROW(Model::load(last));
  EXPECT_NO_THROW(Trainer::read_progress(last));
}

TEST(Distributed, ARankThatHangsStopsTheJob) {
  REQUIRE_MPI();
  fault("STOP", "rank 0: no progress in");
}

TEST(Distributed, ARankThatDiesStopsTheJob) {
  REQUIRE_MPI();
  fault("KILL", "exited with non-zero status");  // mpirun's own report
}

}  // namespace
}  // namespace mamba
